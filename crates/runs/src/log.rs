//! Durable run manifests: one append-only log per run.
//!
//! ```text
//! _strata/runs/<run_id>/0001.json      PLANNED
//! _strata/runs/<run_id>/0002.json      INPUT_LOCKED
//! _strata/runs/<run_id>/0003.json      RUNNING …
//! ```
//!
//! Every entry is a full snapshot of the manifest at that state, created with create-if-absent
//! *before* the work the state announces begins. The run's state is its highest-numbered entry.
//! An entry's name is its number alone, so at most one entry can ever exist for each number,
//! whatever state it records: of two processes that read entry n and try to move the run, exactly
//! one creates n+1 and the other gets [`Error::RunMoved`] before doing anything else. Nothing is
//! overwritten, so a crash at any point leaves the last state that was reached.
//!
//! Lakes written by earlier versions of strata name entries `<n>-<STATE>.json`; they are read
//! the same way (by number). Two entries with one number (which that naming allowed) are
//! reported as a corrupt log that needs a person.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use strata_medallion::stages::{StageReport, Window};
use strata_medallion::types::{Backfill, Finding};
pub use strata_publish::model::Base;
use strata_publish::numbered::{Doubled, Naming, NumberedLog};
use strata_publish::Lake;

use crate::error::{Error, Result};
use crate::run_state::{transition, RunState};
use crate::validate::{Check, Evidence};

/// `format` of a run manifest entry.
pub const RUN_FORMAT: &str = "strata.run.v1";
/// Where run logs live, relative to the lake root.
pub const RUNS_DIR: &str = "_strata/runs";
/// The register of open runs: one empty object `_strata/open/<run_id>` per run that may still
/// need something done (see [`open_runs`]).
pub const OPEN_DIR: &str = "_strata/open";
/// Present once every run of the lake is in the register: lakes written before it existed are
/// registered by the first [`open_runs`].
const OPEN_SEAL: &str = "_strata/open/_all-registered";

/// One raw batch a run reads: its input boundary is the list of these, fixed before any
/// transform runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputBatch {
    pub source: String,
    pub batch_id: String,
    pub rows: u64,
}

/// Output a run staged and checksummed for one stage, kept for reuse if the run fails: a rerun
/// whose stage has the same `stage_key` adopts these files instead of computing them again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StagedCheckpoint {
    /// Identifies the stage's work: pipeline version, stage, dataset, inputs and window.
    pub stage_key: String,
    pub dataset: String,
    pub run_id: String,
    pub partition_by: Vec<String>,
    pub schema: arrow::datatypes::Schema,
    pub partitions: Vec<strata_publish::model::PartitionEntry>,
    pub rows: u64,
    /// The stage's counts (input, quarantined, duplicates…), reported again on reuse.
    #[serde(default)]
    pub stats: BTreeMap<String, u64>,
    /// Key counts over the staged partitions.
    #[serde(default)]
    pub keys: Option<strata_reconcile::KeyCounts>,
    /// The stage's whole report (counts, sums, findings), to validate a reuse like a run.
    #[serde(default)]
    pub report: Option<StageReport>,
    /// How the stage decided its output is published (the partitions it owns; a partition a
    /// FAIL_PARTITION rule withheld is not owned), so a reuse publishes it the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<PublishPlan>,
}

impl StagedCheckpoint {
    pub fn new(stage_key: &str, dataset: &str, staged: &strata_publish::Staged) -> Self {
        StagedCheckpoint {
            stage_key: stage_key.into(),
            dataset: dataset.into(),
            run_id: staged.run_id.clone(),
            partition_by: staged.partition_by.clone(),
            schema: staged.schema.as_ref().clone(),
            partitions: staged.partitions.clone(),
            rows: staged.rows,
            stats: BTreeMap::new(),
            keys: staged.keys,
            report: None,
            scope: None,
        }
    }

    pub fn staged(&self) -> strata_publish::Staged {
        strata_publish::Staged {
            run_id: self.run_id.clone(),
            schema: std::sync::Arc::new(self.schema.clone()),
            partition_by: self.partition_by.clone(),
            partitions: self.partitions.clone(),
            rows: self.rows,
            evidence: None,
            keys: self.keys,
        }
    }

    pub fn files(&self) -> impl Iterator<Item = &str> {
        self.partitions.iter().flat_map(|p| p.files.iter().map(|f| f.path.as_str()))
    }
}

/// The manifest of a run: what it intended, read, wrote and published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunManifest {
    pub format: String,
    pub run_id: String,
    pub state: RunState,
    /// The number of this entry in the run's log (1 = PLANNED).
    pub entry: u32,
    /// Pipeline name and version (a hash of its definition and SQL), if any.
    #[serde(default)]
    pub pipeline: Option<(String, String)>,
    /// `full`, `window`, `publish`, …
    pub mode: String,
    /// Parameters as given (window, datasets…).
    #[serde(default, deserialize_with = "null_as_default")]
    pub params: RunParams,
    /// The exact raw batches read.
    #[serde(default)]
    pub input_boundary: Vec<InputBatch>,
    /// Dataset → the partition keys this run owns (empty: the whole dataset).
    #[serde(default)]
    pub output_boundary: BTreeMap<String, Vec<String>>,
    /// Reference data the run is pinned to.
    #[serde(default)]
    pub reference_data: Vec<Binding>,
    /// When each state was entered, from the run's clock.
    #[serde(default)]
    pub times: BTreeMap<String, DateTime<Utc>>,
    /// Per-stage counts and results.
    #[serde(default)]
    pub stages: Vec<StageReport>,
    /// Identifies what the run computes: pipeline version, parameters and input boundary. Two
    /// runs with the same key publish the same data.
    #[serde(default)]
    pub run_key: Option<String>,
    /// The process that drove the run (`pid@host`).
    #[serde(default)]
    pub process: Option<String>,
    /// Dataset → its pointer before the run prepared anything (from VALIDATING on).
    #[serde(default)]
    pub bases: BTreeMap<String, Base>,
    /// Dataset → the version record prepared for it (from COMMITTING on).
    #[serde(default)]
    pub prepared: BTreeMap<String, u64>,
    /// Validation results (from VALIDATING on): each check, the dataset, whether it held.
    #[serde(default)]
    pub checks: Vec<Check>,
    /// What rules and gates found (severity, source, dataset, rows, detail).
    #[serde(default)]
    pub findings: Vec<Finding>,
    /// Dataset → how its staged output is to be published (for a run awaiting review).
    #[serde(default)]
    pub publish_plan: BTreeMap<String, PublishPlan>,
    /// Finished stages' staged output, reusable by a rerun while the run is not published.
    #[serde(default)]
    pub checkpoints: Vec<StagedCheckpoint>,
    /// Dataset → version published.
    #[serde(default)]
    pub published: BTreeMap<String, u64>,
    #[serde(default)]
    pub error: Option<String>,
    /// A FAILED run whose staging is still to be removed (it was recorded FAILED first, so that
    /// no other process could move it meanwhile); recovery finishes the removal.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cleanup: bool,
    /// What recovery found and did, when recovery moved the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<Recovery>,
    /// For a shadow run (from SHADOWED on): the shadow it published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowInfo>,
    /// For a shadow being promoted (from the promotion's COMMITTING on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<Promotion>,
    /// Diffs kept as evidence: what `--mode compare-only` found against the published
    /// versions, and reports `strata diff --save` attached to a shadow run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub diffs: Vec<strata_medallion::diff::DiffReport>,
}

/// The shadow a shadow run published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowInfo {
    pub name: String,
    /// Dataset → the version the shadow holds.
    pub versions: BTreeMap<String, u64>,
    /// Dataset → the pointer the shadow was built on (the run's bases when it was shadowed).
    pub bases: BTreeMap<String, Base>,
}

/// A promotion of a shadow run's versions to the pointers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    /// The `strata promote` operation's own id.
    pub by: String,
    pub at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The parameters a run was started with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunParams {
    /// The business dates asked for; none: every date found in the input.
    #[serde(default)]
    pub window: Option<Window>,
    /// `--only`: the datasets asked for; empty: all.
    #[serde(default)]
    pub only: Vec<String>,
    /// `--force`: run even when a published run already computed exactly this.
    #[serde(default)]
    pub force: bool,
    /// `--adopt`: datasets the run may take over from another owner.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adopt: Vec<String>,
    /// `--refresh-references`: references pinned `as_originally_run` read the latest.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refresh_references: bool,
    /// `--mode`: how the run publishes.
    #[serde(default, skip_serializing_if = "Backfill::is_replace")]
    pub backfill: Backfill,
}

/// A dataset a run's models read at one exact version: every reference (of the lake, or a
/// reference dataset the run computes), and every input the run did not compute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub dataset: String,
    pub version: u64,
    /// The run that published that version (this run, for a reference it computes).
    pub run_id: String,
    /// How the version was chosen.
    #[serde(default)]
    pub policy: strata_medallion::types::Pin,
    /// Order-independent hash of every row of that version (the sum of its partitions'
    /// control-total row hashes), when its partitions carry totals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row_hash: Option<String>,
    /// With `as_originally_run`: the earlier runs whose binding this one repeats.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub as_in: Vec<String>,
}

/// How a held run's staged output of one dataset is to be published once approved.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PublishPlan {
    #[serde(default)]
    pub replace_all: bool,
    /// The partitions the run owns (none: the whole dataset).
    #[serde(default)]
    pub owned: Option<BTreeSet<String>>,
    #[serde(default)]
    pub reason: Option<String>,
    /// The evidence its version record will carry.
    #[serde(default)]
    pub evidence: Option<Evidence>,
    /// Who writes it, and whether the run adopts the dataset from its owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer: Option<strata_publish::model::Owner>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopt: bool,
    /// For a dataset partitioned below its date: the dates owned, from which `owned` was
    /// expanded over the partitions published when the stage ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owned_dates: Option<BTreeSet<String>>,
    /// For a restatement of a closed period: what its version records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restatement: Option<strata_publish::closing::Restatement>,
}

/// What recovery found and did, recorded in the manifest of a run it moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recovery {
    /// The recovery's own run id.
    pub by: String,
    /// The state the run had stopped in.
    pub from: RunState,
    /// What the pointers and staging showed, and what was done.
    pub evidence: Vec<String>,
}

/// A `null` (as manifests of earlier runs hold for parameters they did not have) reads as the
/// default.
fn null_as_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl RunManifest {
    /// A manifest in state PLANNED.
    pub fn planned(run_id: &str, mode: &str, params: RunParams) -> Self {
        RunManifest {
            format: RUN_FORMAT.into(),
            run_id: run_id.into(),
            state: RunState::Planned,
            entry: 1,
            pipeline: None,
            mode: mode.into(),
            params,
            input_boundary: Vec::new(),
            output_boundary: BTreeMap::new(),
            reference_data: Vec::new(),
            times: BTreeMap::new(),
            stages: Vec::new(),
            run_key: None,
            process: None,
            bases: BTreeMap::new(),
            prepared: BTreeMap::new(),
            checks: Vec::new(),
            findings: Vec::new(),
            publish_plan: BTreeMap::new(),
            checkpoints: Vec::new(),
            published: BTreeMap::new(),
            error: None,
            cleanup: false,
            recovery: None,
            shadow: None,
            promotion: None,
            diffs: Vec::new(),
        }
    }
}

/// How a run's log names its entries: by their number alone, four digits at least; names of
/// earlier strata (`0011-COMMITTING.json`) are read by their number.
const ENTRY_NAMES: Naming = Naming::Tagged { width: 4 };

/// The log of a run: a numbered log ([`strata_publish::numbered`]).
fn log_of(run_id: &str) -> NumberedLog {
    NumberedLog::new(format!("{RUNS_DIR}/{run_id}"), ENTRY_NAMES)
}

/// The path of entry `entry` of a run's log: the number alone, whatever the state.
pub fn entry_path(run_id: &str, entry: u32) -> Path {
    log_of(run_id).path(entry.into())
}

/// The number of a log entry from its file name: `0011.json`, or `0011-COMMITTING.json` as
/// lakes written by earlier versions name them. `None` for anything else.
pub fn parse_entry_name(name: &str) -> Option<u32> {
    ENTRY_NAMES.parse(name).and_then(|n| u32::try_from(n).ok())
}

/// The entries of a run's log by number, oldest first (one listing). Two files with one number
/// are a log that an older strata let two processes write at once: a corrupt log that names
/// them.
async fn entry_paths(lake: &Lake, run_id: &str) -> Result<Vec<(u32, Path)>> {
    let log = log_of(run_id);
    let listing = log.list(lake).await?;
    if let Some(Doubled { number: n, paths }) = listing.doubled() {
        return Err(strata_publish::Error::Corrupt {
            path: format!("{}/", log.dir()),
            detail: format!(
                "the log of run {run_id} has {} entries numbered {n} ({}): two processes moved \
                 the run at once under an earlier strata. A person must decide which holds; \
                 `strata show-run {run_id}` and `strata history <dataset>` show the evidence",
                paths.len(),
                paths
                    .iter()
                    .map(|p| p.filename().unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
        .into());
    }
    // Numbers past u32 are not entries strata wrote (it counts entries in u32).
    Ok(listing.entries.into_iter().filter_map(|(n, p)| Some((u32::try_from(n).ok()?, p))).collect())
}

/// The log of one run, open for appending.
#[derive(Debug)]
pub struct RunLog {
    lake: Lake,
    manifest: RunManifest,
}

impl RunLog {
    /// Records a new run in state PLANNED. Fails if a run with this id was already recorded.
    pub async fn begin(
        lake: &Lake,
        mut manifest: RunManifest,
        at: DateTime<Utc>,
    ) -> Result<RunLog> {
        manifest.state = RunState::Planned;
        manifest.entry = 1;
        manifest.times.insert(RunState::Planned.to_string(), at);
        // Registered before its first entry, so no run is ever outside the register.
        put_empty(lake, &open_marker(&manifest.run_id)).await?;
        let log = RunLog { lake: lake.clone(), manifest };
        match log.write().await {
            Ok(()) => Ok(log),
            Err(Error::RunMoved { run_id, .. }) => Err(Error::AlreadyRecorded(run_id)),
            Err(e) => Err(e),
        }
    }

    pub fn manifest(&self) -> &RunManifest {
        &self.manifest
    }

    /// The lake the log is in.
    pub fn lake(&self) -> &Lake {
        &self.lake
    }

    /// Continues the log of a run from its latest entry (recovery).
    pub fn resume(lake: &Lake, latest: RunManifest) -> RunLog {
        RunLog { lake: lake.clone(), manifest: latest }
    }

    /// Records progress within the current state (a new entry in the same state): finished
    /// stages, checkpoints. Terminal states take no further entries.
    pub async fn record(
        &mut self,
        at: DateTime<Utc>,
        update: impl FnOnce(&mut RunManifest),
    ) -> Result<()> {
        if self.manifest.state.is_terminal() {
            return Err(Error::WrongState {
                run_id: self.manifest.run_id.clone(),
                state: self.manifest.state,
                message: format!(
                    "run {} is {}; its log takes no more entries",
                    self.manifest.run_id, self.manifest.state
                ),
            });
        }
        let mut m = self.manifest.clone();
        update(&mut m);
        m.entry += 1;
        m.times.insert(format!("{}#{}", m.state, m.entry), at);
        let previous = std::mem::replace(&mut self.manifest, m);
        if let Err(e) = self.write().await {
            self.manifest = previous;
            return Err(e);
        }
        Ok(())
    }

    /// Moves the run to `to` (if the state machine allows it), applies `update`, and records
    /// the new state durably. On an invalid transition nothing is written.
    pub async fn advance(
        &mut self,
        to: RunState,
        at: DateTime<Utc>,
        update: impl FnOnce(&mut RunManifest),
    ) -> Result<()> {
        let next = transition(self.manifest.state, to).map_err(|_| Error::InvalidTransition {
            run_id: self.manifest.run_id.clone(),
            from: self.manifest.state,
            to,
        })?;
        let mut m = self.manifest.clone();
        update(&mut m);
        m.state = next;
        m.entry += 1;
        m.times.insert(next.to_string(), at);
        let previous = std::mem::replace(&mut self.manifest, m);
        if let Err(e) = self.write().await {
            self.manifest = previous;
            return Err(e);
        }
        if !needs_attention(&self.manifest) {
            close(&self.lake, &self.manifest.run_id).await;
        }
        Ok(())
    }

    /// Creates the manifest's entry; [`Error::RunMoved`] if another process created it first.
    async fn write(&self) -> Result<()> {
        let m = &self.manifest;
        let mut body = serde_json::to_vec_pretty(m)
            .map_err(|source| Error::Serialize { run_id: m.run_id.clone(), source })?;
        body.push(b'\n');
        if log_of(&m.run_id).create(&self.lake, m.entry.into(), body).await? {
            Ok(())
        } else {
            Err(Error::RunMoved { run_id: m.run_id.clone(), entry: m.entry })
        }
    }
}

/// Every entry of a run's log, oldest first.
pub async fn run_log(lake: &Lake, run_id: &str) -> Result<Vec<RunManifest>> {
    strata_publish::names::validate_dataset_name(run_id)
        .map_err(|_| Error::NotARunId(run_id.to_string()))?;
    let paths = entry_paths(lake, run_id).await?;
    let mut entries = Vec::with_capacity(paths.len());
    for (_, p) in paths {
        let Some(m) = lake.read_json::<RunManifest>(&p).await? else { continue };
        entries.push(m);
    }
    if entries.is_empty() {
        return Err(Error::NoSuchRun { run_id: run_id.to_string(), lake: lake.url().to_string() });
    }
    Ok(entries)
}

/// The latest entry of every run, by run id.
pub async fn list_runs(lake: &Lake) -> Result<Vec<RunManifest>> {
    let prefix = Path::from(RUNS_DIR);
    let listing = lake
        .store()
        .list_with_delimiter(Some(&prefix))
        .await
        .map_err(|e| strata_publish::Error::store("list", &prefix, e))?;
    let mut ids: Vec<String> =
        listing.common_prefixes.iter().filter_map(|p| p.filename().map(str::to_string)).collect();
    ids.sort();
    let reads = ids.iter().map(|id| latest_entry(lake, id));
    let found: Vec<Option<RunManifest>> =
        futures::stream::iter(reads).buffered(16).try_collect().await?;
    Ok(found.into_iter().flatten().collect())
}

/// Whether a run, as its latest entry shows it, may still need something done: it has not
/// finished (recovery, review), or it failed keeping checkpoints that a rerun may reuse.
pub fn needs_attention(m: &RunManifest) -> bool {
    !m.state.is_terminal()
        || (m.state == RunState::Failed && (!m.checkpoints.is_empty() || m.cleanup))
        || (m.state == RunState::Discarded && m.cleanup)
}

fn open_marker(run_id: &str) -> Path {
    Path::from(format!("{OPEN_DIR}/{run_id}"))
}

async fn put_empty(lake: &Lake, path: &Path) -> Result<()> {
    lake.store()
        .put(path, PutPayload::new())
        .await
        .map(|_| ())
        .map_err(|e| strata_publish::Error::store("create", path, e).into())
}

/// Takes a run out of the register of open runs (best effort: [`open_runs`] also drops runs that
/// need nothing). For a failed run with checkpoints, call it once they are released.
pub async fn close(lake: &Lake, run_id: &str) {
    let _ = lake.store().delete(&open_marker(run_id)).await;
}

/// The latest entry of every run that may still need something done ([`needs_attention`]):
/// runs to recover, runs awaiting review, failed runs whose checkpoints a rerun may reuse.
///
/// Reads the register `_strata/open/` and those runs' logs only, so its cost does not grow with
/// the lake's history. A run is registered before its first entry and leaves the register after
/// its last, so the register holds every run that needs something (a run whose marker outlived
/// it is dropped here). A lake written before the register existed is registered on the first
/// call: all runs are listed once.
pub async fn open_runs(lake: &Lake) -> Result<Vec<RunManifest>> {
    let seal = Path::from(OPEN_SEAL);
    if !lake.exists(&seal).await? {
        for m in list_runs(lake).await?.iter().filter(|m| needs_attention(m)) {
            put_empty(lake, &open_marker(&m.run_id)).await?;
        }
        put_empty(lake, &seal).await?;
    }
    let prefix = Path::from(OPEN_DIR);
    let listing = lake
        .store()
        .list_with_delimiter(Some(&prefix))
        .await
        .map_err(|e| strata_publish::Error::store("list", &prefix, e))?;
    let mut ids: Vec<String> = listing
        .objects
        .iter()
        .filter_map(|o| o.location.filename().map(str::to_string))
        .filter(|id| !id.starts_with('_'))
        .collect();
    ids.sort();
    let found: Vec<Option<RunManifest>> =
        futures::stream::iter(ids.iter().map(|id| latest_entry(lake, id)))
            .buffered(16)
            .try_collect()
            .await?;
    let mut open = Vec::new();
    // A marker without a log is a run being begun: left alone.
    for m in found.into_iter().flatten() {
        if needs_attention(&m) {
            open.push(m);
        } else {
            close(lake, &m.run_id).await;
        }
    }
    Ok(open)
}

/// The latest entry of one run's log (one listing and one read).
pub async fn latest_entry(lake: &Lake, run_id: &str) -> Result<Option<RunManifest>> {
    let Some((_, last)) = entry_paths(lake, run_id).await?.pop() else { return Ok(None) };
    Ok(lake.read_json(&last).await?)
}
