//! A pipeline run as a durable state machine.
//!
//! ```text
//! land sources (content-addressed, idempotent)
//! lock the output boundary               (fails fast naming the holder)
//! PLANNED       parameters, output boundary, run key
//! INPUT_LOCKED  the exact raw batches (sha256) the run reads
//! RUNNING       stages compute and stage Parquet; each finished stage is recorded as a
//!               checkpoint (files with sha256) in a progress entry
//! VALIDATING    staged output re-checked; each dataset's pointer recorded as the base
//! COMMITTING    every dataset's version record prepared; then the pointer flips
//! PUBLISHED     every flip landed
//! ```
//!
//! Each state is written before the work it announces. A definite failure before the first flip
//! removes the staging (keeping finished stages' checkpoints) and records FAILED; a flip whose
//! outcome the store did not report records UNKNOWN. `strata recover` settles runs that stopped
//! without reaching a terminal state; see [`crate::recover`].

use std::collections::{BTreeMap, BTreeSet};

use datafusion::prelude::SessionContext;
use serde_json::json;
use sha2::{Digest, Sha256};
use strata_land::BatchManifest;
use strata_medallion::pipeline::Pipeline;
use strata_medallion::stages::{
    batches_for_window, clean, land_source, model, session, Output, RunOptions, StageReport, Window,
};
use strata_medallion::types::{Backfill, Finding, GateMeasure, Pin, StageKind};
use strata_publish::deletion::Holder;
use strata_publish::model::Owner;
use strata_publish::{locks, Draft, Lake, RunContext};

use crate::error::{Error, Result};
use crate::log::{
    self as runs, Base, Binding, InputBatch, PublishPlan, RunLog, RunManifest, RunParams,
    StagedCheckpoint,
};
use crate::pins;
use crate::plan::{plan, Plan};
use crate::run_state::RunState;
use crate::validate::{self, Approval, Check, GateCounts, Verdict};

/// How a run ended.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunSummary {
    pub run_id: String,
    pub state: RunState,
    /// Set when nothing was run because this published run already computed exactly this.
    pub already_published_by: Option<String>,
    pub stages: Vec<StageReport>,
    /// Dataset → version published (to the shadow, for a shadow run).
    pub published: BTreeMap<String, u64>,
    /// The shadow the versions were published to (`--mode shadow`).
    pub shadow: Option<String>,
    /// What `--mode compare-only` found against the published versions.
    pub diffs: Vec<strata_medallion::diff::DiffReport>,
    /// Anything the run could not do that it was asked to (a dataset compare-only could not
    /// diff), or why it is held for review.
    pub notes: Vec<String>,
}

/// How a run that did not fail ended.
enum Ended {
    /// Published to the pointers (or to a shadow: see the state): dataset → version.
    Published(RunState, BTreeMap<String, u64>),
    /// Held for review, for these reasons.
    Held(Vec<String>),
    /// Computed and validated, nothing kept (dry-run, compare-only).
    Discarded { diffs: Vec<strata_medallion::diff::DiffReport>, notes: Vec<String> },
}

fn hash_json(value: &serde_json::Value) -> String {
    hex::encode(Sha256::digest(value.to_string().as_bytes()))
}

/// Runs the pipeline: lands every source, then cleans, curates, validates and publishes within
/// the window, recording every step in the run's manifest. `progress` is called after each stage.
pub async fn run_pipeline(
    lake: &Lake,
    pipeline: &Pipeline,
    options: &RunOptions,
    ctx: &RunContext,
    progress: &mut (dyn FnMut(&StageReport) + Send),
) -> Result<RunSummary> {
    let plan = plan(pipeline, options)?;
    if let Backfill::Shadow { name } = &options.backfill {
        strata_publish::shadow::validate_shadow_name(name)?;
        if let Some(taken) = lake.shadow(name).await? {
            return Err(Error::ShadowExists { name: name.clone(), run_id: taken.run_id });
        }
    }
    let mut reports = Vec::new();
    let session = session(lake, options)?;
    // Which version of each reference the models read: decided before anything is written.
    let pins =
        pins::resolve(lake, pipeline, &plan, options.window, options.refresh_references).await?;
    let job = Job { lake, pipeline, options, ctx, plan: &plan, session: &session, pins: &pins };
    // Before anything is landed: a pipeline never writes a dataset someone else owns.
    owns_its_outputs(&job).await?;
    let (gathered, side_work) = gather(&job, progress, &mut reports).await?;
    let params = RunParams {
        window: options.window,
        only: options.only.clone(),
        force: options.force,
        adopt: options.adopt.clone(),
        refresh_references: options.refresh_references,
        backfill: options.backfill.clone(),
    };
    // The versions of the references the models read: a run over a reference that changed is
    // not the run that published before. One the run computes is in its inputs already.

    let run_key = run_key(pipeline, options, &gathered.boundary, &pins);
    // The open runs (not the whole history): the checkpoints of failed runs to reuse, and to
    // release after publishing.
    let earlier = runs::open_runs(lake).await?;
    // A dry run or a comparison is asked for to be done, whatever was published before.
    if !options.force && options.backfill.flips_pointers() {
        if let Some(previous) = already_published(lake, &plan.boundary, &run_key).await? {
            side_work.done().await;
            return Ok(RunSummary {
                run_id: ctx.run_id().to_string(),
                state: RunState::Published,
                already_published_by: Some(previous.run_id.clone()),
                stages: reports,
                published: previous.published,
                shadow: None,
                diffs: Vec::new(),
                notes: Vec::new(),
            });
        }
    }
    let (mut log, lock) = match begin(&job, params, run_key).await {
        Ok(x) => x,
        Err(e) => {
            side_work.done().await;
            return Err(e);
        }
    };
    let inputs = Inputs {
        batches: &gathered.batches,
        boundary: gathered.boundary,
        found: failed_checkpoints(&earlier),
    };
    // Boxed: the stages' futures are large, and every caller would carry them inline.
    let result = Box::pin(drive(&job, inputs, &mut log, &lock, progress, &mut reports)).await;
    side_work.done().await;
    let result = match result {
        Ok(published) => Ok(published),
        Err(e) => Err(after_error(&job, &mut log, e).await),
    };
    lock.release().await;
    let mut summary = RunSummary {
        run_id: ctx.run_id().to_string(),
        state: RunState::Published,
        already_published_by: None,
        stages: reports,
        published: BTreeMap::new(),
        shadow: match &options.backfill {
            Backfill::Shadow { name } => Some(name.clone()),
            _ => None,
        },
        diffs: Vec::new(),
        notes: Vec::new(),
    };
    match result? {
        Ended::Published(state, published) => {
            if state == RunState::Published {
                release_superseded_checkpoints(lake, &earlier, &plan.boundary).await;
            }
            summary.state = state;
            summary.published = published;
        }
        Ended::Held(review) => {
            summary.state = RunState::AwaitingReview;
            summary.notes = review;
        }
        Ended::Discarded { diffs, notes } => {
            summary.state = RunState::Discarded;
            summary.diffs = diffs;
            summary.notes = notes;
        }
    }
    Ok(summary)
}

/// What the run reads, gathered before it begins.
struct Gathered {
    /// Cleaned dataset → the raw batches it reads.
    batches: BTreeMap<String, Vec<BatchManifest>>,
    /// Every batch read, once.
    boundary: Vec<InputBatch>,
}

/// Work started on the side while the run goes on: the source indexes being saved, and the
/// current records of the datasets the run touches being read ahead.
struct SideWork {
    saving: Vec<tokio::task::JoinHandle<strata_land::Result<()>>>,
    warming: Vec<tokio::task::JoinHandle<strata_publish::Result<()>>>,
}

impl SideWork {
    /// Waits for the index writes, and stops any record still being read ahead.
    async fn done(self) {
        for s in self.saving {
            let _ = s.await;
        }
        for w in self.warming {
            w.abort();
        }
    }
}

/// Lands every source (content-addressed and idempotent, so it needs no run state of its own)
/// and fixes the input boundary: the batches each cleaned stage reads (within a window, only
/// those that can hold a row of it).
async fn gather(
    job: &Job<'_>,
    progress: &mut (dyn FnMut(&StageReport) + Send),
    reports: &mut Vec<StageReport>,
) -> Result<(Gathered, SideWork)> {
    let (lake, pipeline, plan, ctx) = (job.lake, job.pipeline, job.plan, job.ctx);
    // The current records of the datasets the run writes or reads are read and parsed on the
    // side while the sources land; later stages find them in the lake's cache (checked against
    // the store on every read, so never stale).
    let read: BTreeSet<&String> = plan
        .boundary
        .keys()
        .chain(plan.models.iter().flat_map(|(m, _)| &pipeline.model_deps[m]))
        .collect();
    let warming: Vec<_> = read
        .into_iter()
        .filter_map(|d| lake.dataset(d).ok())
        .map(|ds| tokio::spawn(async move { ds.warm().await }))
        .collect();
    let mut indexes: BTreeMap<String, strata_land::SourceIndex> = BTreeMap::new();
    for name in &plan.sources {
        let landed = land_source(lake, pipeline, name, &pipeline.sources[name], ctx).await;
        let (report, index) = match landed {
            Ok(x) => x,
            Err(e) => {
                SideWork { saving: Vec::new(), warming }.done().await;
                return Err(e.into());
            }
        };
        progress(&report);
        reports.push(report);
        indexes.insert(name.clone(), index);
    }
    let mut batches: BTreeMap<String, Vec<BatchManifest>> = BTreeMap::new();
    let mut chosen = Ok(());
    for (name, window) in &plan.cleaned {
        let def = &pipeline.cleaned[name];
        let Some(index) = indexes.get_mut(&def.source) else { continue };
        match batches_for_window(job.session, lake, pipeline, name, def, index, *window).await {
            Ok(read) => {
                batches.insert(name.clone(), read);
            }
            Err(e) => {
                chosen = Err(e);
                break;
            }
        }
    }
    // The indexes are caches (a lost update costs a re-read, never a wrong answer), so they are
    // written while the run goes on; the run waits for them before it returns.
    let saving: Vec<_> = std::mem::take(&mut indexes)
        .into_values()
        .map(|mut index| {
            let lake = lake.clone();
            tokio::spawn(async move { index.save(&lake).await })
        })
        .collect();
    let side_work = SideWork { saving, warming };
    if let Err(e) = chosen {
        side_work.done().await;
        return Err(e.into());
    }
    let boundary = input_boundary(pipeline, &batches);
    Ok((Gathered { batches, boundary }, side_work))
}

/// Every raw batch the cleaned stages read, once, in (source, batch) order: the input boundary.
pub(crate) fn input_boundary(
    pipeline: &Pipeline,
    batches: &BTreeMap<String, Vec<BatchManifest>>,
) -> Vec<InputBatch> {
    let mut read: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for (name, bs) in batches {
        for b in bs {
            read.insert((pipeline.cleaned[name].source.as_str(), b.batch_id.as_str()), b.rows);
        }
    }
    read.into_iter()
        .map(|((source, id), rows)| InputBatch {
            source: source.to_string(),
            batch_id: id.to_string(),
            rows,
        })
        .collect()
}

/// What identifies what a run computes: the pipeline's version, the parameters, the input
/// boundary and the version bound for every input it does not compute. Two runs with the same
/// key publish the same data.
pub(crate) fn run_key(
    pipeline: &Pipeline,
    options: &RunOptions,
    boundary: &[InputBatch],
    pins: &BTreeMap<String, pins::Resolved>,
) -> String {
    let references: BTreeMap<&String, u64> = pins
        .iter()
        .filter_map(|(r, resolved)| match resolved {
            pins::Resolved::Version { version, .. } => Some((r, *version)),
            pins::Resolved::Latest => None,
        })
        .collect();
    let mut key = json!({
        "pipeline": pipeline.version,
        "window": options.window,
        "only": options.only,
        "inputs": boundary,
        "references": references,
    });
    if !options.backfill.is_replace() {
        key["backfill"] = json!(options.backfill);
    }
    hash_json(&key)
}

/// Locks the run's output boundary, checks that no stopped run is half-way through publishing
/// it, and writes the run's first entry (PLANNED).
async fn begin(
    job: &Job<'_>,
    params: RunParams,
    run_key: String,
) -> Result<(RunLog, locks::RunLocks)> {
    let (lake, options, ctx, plan) = (job.lake, job.options, job.ctx, job.plan);
    let clock = options.clock.unwrap_or(chrono::Utc::now);
    let lock = locks::acquire(lake, ctx.run_id(), &plan.boundary, options.lease, clock).await?;
    strata_publish::crash::point("after-lock");
    if let Err(e) = no_unsettled_flips(lake, &plan.boundary).await {
        lock.release().await;
        return Err(e);
    }
    let mode = if options.window.is_some() { "window" } else { "full" };
    let mut manifest = RunManifest::planned(ctx.run_id(), mode, params);
    manifest.pipeline = Some((job.pipeline.settings.name.clone(), job.pipeline.version.clone()));
    manifest.output_boundary = plan.boundary.clone();
    manifest.run_key = Some(run_key);
    manifest.process = Some(format!("{}@{}", std::process::id(), locks::this_host()));
    match RunLog::begin(lake, manifest, ctx.now()).await {
        Ok(log) => Ok((log, lock)),
        Err(e) => {
            lock.release().await;
            Err(e)
        }
    }
}

/// After a run's error: what its log's state says ([`after_failure`]) is done, unless another
/// process took the run over meanwhile. Returns the error to report.
async fn after_error(job: &Job<'_>, log: &mut RunLog, e: Error) -> Error {
    let (lake, ctx) = (job.lake, job.ctx);
    if let Some(taken) = taken_over(lake, log.manifest()).await {
        // Another process settled the run meanwhile: what it left is its to keep.
        return taken;
    }
    let message = e.to_string();
    match after_failure(log.manifest().state) {
        AfterFailure::Leave => {}
        AfterFailure::MarkUnknown => {
            // A flip may have landed: nothing is deleted, recovery settles it. If even UNKNOWN
            // cannot be written, the log says COMMITTING, which recovery treats the same way.
            let _ = log
                .advance(RunState::Unknown, ctx.now(), |m| m.error = Some(message.clone()))
                .await;
        }
        AfterFailure::CleanUpAndFail => {
            // Nothing was flipped: clean up, keep finished stages for a rerun, record FAILED. A
            // cleanup that cannot finish leaves the run for recovery.
            let m = log.manifest();
            let keep = crate::recover::checkpoint_files(m);
            let discarded =
                crate::recover::discard_stopped(lake, m, &keep, Holder::Caller, |_| false).await;
            let cleaned = discarded.is_ok_and(|(_, kept_because)| kept_because.is_empty());
            if cleaned {
                let _ = log
                    .advance(RunState::Failed, ctx.now(), |m| m.error = Some(message.clone()))
                    .await;
            }
        }
    }
    e
}

/// Who writes the run's outputs: its pipeline.
fn writer(job: &Job<'_>) -> Owner {
    Owner::Pipeline(job.pipeline.settings.name.clone())
}

/// Whether the run adopts `dataset` (or the cleaned dataset whose quarantine it is).
fn adopts(job: &Job<'_>, dataset: &str) -> bool {
    let base = dataset.strip_suffix(".quarantine").unwrap_or(dataset);
    job.options.adopt.iter().any(|a| a == dataset || a == base)
}

/// Refuses a run that would write a dataset another writer owns ([`Owner::may_write`]).
async fn owns_its_outputs(job: &Job<'_>) -> Result<()> {
    let me = writer(job);
    for name in job.plan.boundary.keys() {
        let Some(head) = job.lake.dataset(name)?.current_head().await? else { continue };
        if !me.may_write(head.owner.as_ref(), adopts(job, name)) {
            return Err(Error::NotOwner {
                dataset: name.strip_suffix(".quarantine").unwrap_or(name).to_string(),
                owner: head.owner.as_ref().map(|o| o.to_string()).unwrap_or_default(),
                pipeline: job.pipeline.settings.name.clone(),
            });
        }
    }
    Ok(())
}

/// Marks the run's outputs as written by its pipeline (adopting where asked).
fn stamp(job: &Job<'_>, outs: &mut [Output]) {
    for o in outs {
        o.options.writer = Some(writer(job));
        o.options.adopt = adopts(job, o.ds.name());
    }
}

/// When another process wrote a later entry of this run's log (it took over a run that stalled
/// past its lease, and recovery settled it), the error that says so, with what was published.
async fn taken_over(lake: &Lake, mine: &RunManifest) -> Option<Error> {
    let now = runs::latest_entry(lake, &mine.run_id).await.ok()??;
    // Only recovery moves a run whose process is alive (after taking its stale locks over); an
    // entry of this process's own that the store reported lost is not a takeover.
    if now.entry <= mine.entry || now.recovery.is_none() || now.recovery == mine.recovery {
        return None;
    }
    let what = if now.published.is_empty() {
        "nothing of it is published".to_string()
    } else {
        let names: Vec<String> = now.published.iter().map(|(d, v)| format!("{d} v{v}")).collect();
        format!("published: {}", names.join(", "))
    };
    Some(Error::TakenOver { run_id: mine.run_id.clone(), state: now.state, what })
}

/// Refuses to go on while a stopped run that may have flipped some of these partitions is not
/// settled. Recovery settles such runs before a run starts, holding their locks; a recovery by
/// another process that backed off (or is settling it right now) leaves one for this check,
/// which runs once this run holds its own locks, so no recovery can be half-way through.
async fn no_unsettled_flips(lake: &Lake, boundary: &BTreeMap<String, Vec<String>>) -> Result<()> {
    let unsettled = runs::open_runs(lake)
        .await?
        .into_iter()
        .find(|m| m.state == RunState::Committing && locks::overlap(&m.output_boundary, boundary));
    match unsettled {
        Some(m) => Err(Error::Unsettled { run_id: m.run_id, state: m.state }),
        None => Ok(()),
    }
}

/// An error computing a model's SQL over its data (a division by zero, a cast that fails) is
/// the model's: it is named, with the cause, so the user knows which SQL to fix.
fn in_model(name: &str, sql: &str, e: strata_medallion::Error) -> Error {
    match e {
        strata_medallion::Error::FailedOnData { cause } => {
            Error::ModelFailed { model: name.to_string(), cause, sql: sql.to_string() }
        }
        strata_medallion::Error::DataFusion(df) => {
            let cause = df.strip_backtrace();
            let cause = cause.lines().next().unwrap_or_default().to_string();
            Error::ModelFailed { model: name.to_string(), cause, sql: sql.to_string() }
        }
        other => other.into(),
    }
}

/// What a run does after an error, by the state its log reached (pure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterFailure {
    /// Settled or UNKNOWN already: leave everything for recovery.
    Leave,
    /// A flip may have been attempted: record UNKNOWN and delete nothing.
    MarkUnknown,
    /// No flip was attempted: remove the staging (keeping checkpoints) and record FAILED.
    CleanUpAndFail,
}

fn after_failure(state: RunState) -> AfterFailure {
    match state {
        RunState::Unknown
        | RunState::Published
        | RunState::Failed
        | RunState::Shadowed
        | RunState::Discarded => AfterFailure::Leave,
        RunState::Committing => AfterFailure::MarkUnknown,
        RunState::Planned
        | RunState::InputLocked
        | RunState::Running
        | RunState::Validating
        | RunState::AwaitingReview => AfterFailure::CleanUpAndFail,
    }
}

/// The checkpoints finished stages of failed runs left, by stage key and dataset.
type Checkpoints = BTreeMap<(String, String), StagedCheckpoint>;

fn failed_checkpoints(runs: &[RunManifest]) -> Checkpoints {
    runs.iter()
        .filter(|m| m.state == RunState::Failed)
        .flat_map(|m| &m.checkpoints)
        .map(|c| ((c.stage_key.clone(), c.dataset.clone()), c.clone()))
        .collect()
}

/// Adopts the checkpoints of `stage_key` for `datasets`, if every one is there and verifies:
/// the stage's report (as the checkpointing run recorded it) and its outputs, ready to publish.
async fn reuse(
    job: &Job<'_>,
    found: &Checkpoints,
    stage_key: &str,
    stage: StageKind,
    datasets: &[String],
    window: Option<Window>,
) -> Result<Option<(StageReport, Vec<Output>)>> {
    let (lake, plan, ctx) = (job.lake, job.plan, job.ctx);
    let mut cps = Vec::new();
    for d in datasets {
        match found.get(&(stage_key.to_string(), d.clone())) {
            Some(c) => cps.push(c.clone()),
            None => return Ok(None),
        }
    }
    // A checkpoint recorded before stages kept their publish scope, by a stage that withheld
    // partitions, cannot say which partitions it owns: computed again rather than guessed.
    let withheld =
        |c: &StagedCheckpoint| c.report.as_ref().is_some_and(|r| !r.failed_partitions.is_empty());
    if cps.iter().any(|c| c.scope.is_none() && withheld(c)) {
        return Ok(None);
    }
    let mut adopted = Vec::new();
    for c in &cps {
        let ds = lake.dataset(&c.dataset)?;
        match ds.adopt(&c.staged(), ctx).await? {
            Some(s) => adopted.push(s),
            None => return Ok(None),
        }
    }
    let cp = &cps[0];
    let stat = |k: &str| cp.stats.get(k).copied().unwrap_or(0);
    let mut report = cp.report.clone().unwrap_or_else(|| StageReport {
        stage,
        dataset: datasets[0].clone(),
        rows_in: stat("input"),
        rows_out: adopted[0].rows,
        quarantined: stat("quarantined"),
        duplicates: stat("duplicates"),
        partitions: adopted[0].partitions.len() as u64,
        window,
        ..Default::default()
    });
    report.reused_from = Some(cp.run_id.clone());
    report.note = format!("reused the checksummed output of run {}", cp.run_id);
    report.millis = 0;
    let mut outs = Vec::new();
    for (staged, cp) in adopted.into_iter().zip(&cps) {
        let n = &cp.dataset;
        let ds = lake.dataset(n)?;
        // As the stage decided (a withheld partition is not owned); checkpoints recorded
        // before the decision was kept are published as the plan says.
        // An empty boundary is the whole dataset (a full run, or a dataset computed whole).
        let full = plan.boundary.get(n).is_none_or(Vec::is_empty);
        let (replace_all, mut owned) = match &cp.scope {
            Some(scope) => (scope.replace_all, scope.owned.clone()),
            None => (full, (!full).then(|| plan.boundary[n].iter().cloned().collect())),
        };
        // Partitioned below its date: the partitions of the owned dates are those published
        // now, which may differ from when the checkpoint was taken (a rollback since).
        let owned_dates = cp.scope.as_ref().and_then(|s| s.owned_dates.clone());
        if let Some(dates) = &owned_dates {
            let published = strata_medallion::stages::published_keys_of(&ds, dates).await?;
            let staged_keys = staged.partitions.iter().map(|p| p.key.clone()).collect();
            owned = Some(strata_medallion::stages::scope::expand_owned(
                dates,
                &published,
                &staged_keys,
            ));
        }
        let reason = Some(format!("run {}", ctx.run_id()));
        outs.push(Output {
            ds,
            staged,
            options: strata_publish::PublishOptions {
                replace_all,
                owned,
                reason,
                ..Default::default()
            },
            owned_dates,
        });
    }
    Ok(Some((report, outs)))
}

/// What every step of one run reads.
struct Job<'a> {
    lake: &'a Lake,
    pipeline: &'a Pipeline,
    options: &'a RunOptions,
    ctx: &'a RunContext,
    plan: &'a Plan,
    session: &'a SessionContext,
    /// The version each reference the models read is bound to.
    pins: &'a BTreeMap<String, pins::Resolved>,
}

/// The run's inputs, fixed before it starts: the raw batches each cleaned stage reads, and the
/// checkpoints of failed runs it may reuse.
struct Inputs<'a> {
    batches: &'a BTreeMap<String, Vec<BatchManifest>>,
    boundary: Vec<InputBatch>,
    found: Checkpoints,
}

/// What the stages computed: each staged output, and the version record each dataset will
/// have (or has, for a dataset read but not computed), which later stages and the checks read.
#[derive(Default)]
struct Computed {
    outputs: Vec<Output>,
    previews: BTreeMap<String, Draft>,
    /// Dataset → what identifies its content (a stage key, or `<dataset>@<version>`).
    stage_keys: BTreeMap<String, String>,
    /// Inputs the models read at a version bound before they ran (pinned references, and
    /// datasets the run does not compute).
    bound: BTreeMap<String, Draft>,
    /// Datasets whose binding is recorded in the manifest.
    recorded: BTreeSet<String>,
}

/// INPUT_LOCKED, RUNNING, VALIDATING, then COMMITTING or AWAITING_REVIEW. Returns the versions
/// published, or `None` when the run is held for review.
async fn drive(
    job: &Job<'_>,
    mut inputs: Inputs<'_>,
    log: &mut RunLog,
    lock: &locks::RunLocks,
    progress: &mut (dyn FnMut(&StageReport) + Send),
    reports: &mut Vec<StageReport>,
) -> Result<Ended> {
    let ctx = job.ctx;
    let boundary = std::mem::take(&mut inputs.boundary);
    let mut computed = Computed::default();
    // Every reference not computed by this run is bound now, with the inputs.
    let mut bindings = Vec::new();
    for (name, resolved) in job.pins {
        let pins::Resolved::Version { version, how, as_in } = resolved else { continue };
        let draft = job.lake.dataset(name)?.draft_of_version(*version).await?;
        bindings.push(binding(job.lake, name, &draft, *how, as_in.clone()).await?);
        computed.recorded.insert(name.clone());
        computed.bound.insert(name.clone(), draft);
    }
    log.advance(RunState::InputLocked, ctx.now(), |m| {
        m.input_boundary = boundary;
        m.reference_data = bindings;
    })
    .await?;
    log.advance(RunState::Running, ctx.now(), |_| {}).await?;
    for (name, window) in &job.plan.cleaned {
        let report = clean_stage(job, &inputs, name, *window, log, &mut computed).await?;
        progress(&report);
        reports.push(report);
    }
    for (name, window) in &job.plan.models {
        let report = model_stage(job, &inputs.found, name, *window, log, &mut computed).await?;
        progress(&report);
        reports.push(report);
    }
    let Computed { mut outputs, previews, .. } = computed;
    let verdict = check(job, log, reports, &mut outputs, &previews).await?;
    if matches!(job.options.backfill, Backfill::DryRun | Backfill::CompareOnly) {
        // Held for review or not, nothing of a dry run or a comparison is published.
        let (diffs, notes) = match job.options.backfill {
            Backfill::CompareOnly => compare(job, &outputs, &previews).await?,
            _ => (Vec::new(), Vec::new()),
        };
        discard(job, log, diffs.clone(), &notes).await?;
        return Ok(Ended::Discarded { diffs, notes });
    }
    if let Verdict::Hold(review) = verdict {
        hold(log, ctx, &outputs, &review).await?;
        return Ok(Ended::Held(review));
    }
    let (state, published) = Box::pin(commit_outputs(log, outputs, previews, lock, ctx)).await?;
    for r in reports.iter_mut() {
        if let Some(v) = published.get(&r.dataset) {
            r.version = Some(*v);
        }
    }
    Ok(Ended::Published(state, published))
}

/// `--mode compare-only`: each dataset the run computed (not its quarantine) diffed against its
/// published version, by the dataset's key. A dataset with no key, or never published, is
/// named in the notes instead.
async fn compare(
    job: &Job<'_>,
    outputs: &[Output],
    previews: &BTreeMap<String, Draft>,
) -> Result<(Vec<strata_medallion::diff::DiffReport>, Vec<String>)> {
    use strata_medallion::diff::{self, DiffOptions, Side};
    let session =
        strata_medallion::session_for_lake(job.lake, strata_medallion::QueryOptions::default())
            .await?;
    let (mut diffs, mut notes) = (Vec::new(), Vec::new());
    for o in outputs.iter().filter(|o| !o.ds.name().ends_with(".quarantine")) {
        let name = o.ds.name();
        let Some(preview) = previews.get(name) else { continue };
        let Some(published) = o.ds.current_opt().await? else {
            notes.push(format!("{name}: never published; nothing to compare with"));
            continue;
        };
        let a = Side { label: format!("{name}@{}", published.version), record: published };
        let b = Side {
            label: format!("{name} (run {})", job.ctx.run_id()),
            record: o.ds.select(preview, &|_| true).await?,
        };
        let options = DiffOptions { samples: 5, ..Default::default() };
        match diff::diff(&session, &a, &b, &options).await {
            Ok(report) => diffs.push(report),
            Err(e) => notes.push(format!("{name}: not compared: {e}")),
        }
    }
    Ok((diffs, notes))
}

/// DISCARDED: the run's staging is removed; its manifest keeps the checks, the findings and the
/// diffs. Recorded first (with the cleanup still to do), so that recovery finishes a removal
/// cut short.
async fn discard(
    job: &Job<'_>,
    log: &mut RunLog,
    diffs: Vec<strata_medallion::diff::DiffReport>,
    notes: &[String],
) -> Result<()> {
    let note = (!notes.is_empty()).then(|| notes.join("; "));
    log.advance(RunState::Discarded, job.ctx.now(), |m| {
        m.diffs = diffs;
        m.checkpoints.clear();
        m.cleanup = true;
        m.error = note;
    })
    .await?;
    crate::recover::clean_up_failed(job.lake, log.manifest()).await?;
    Ok(())
}

/// VALIDATING: records each dataset's pointer as the run's base, checks the staged output and
/// the gates, and records the results. A failed check or a FAIL_RUN gate is an error; otherwise
/// each output carries its evidence, and the verdict says whether to publish or hold.
async fn check(
    job: &Job<'_>,
    log: &mut RunLog,
    reports: &mut [StageReport],
    outputs: &mut [Output],
    previews: &BTreeMap<String, Draft>,
) -> Result<Verdict> {
    let ctx = job.ctx;
    // The pointers as they are now are the bases recovery measures from.
    let mut bases = BTreeMap::new();
    for o in outputs.iter() {
        if let Some(h) = o.ds.head().await? {
            bases.insert(o.ds.name().to_string(), Base { seq: h.seq, max_version: h.max_version });
        }
    }
    log.advance(RunState::Validating, ctx.now(), |m| m.bases = bases).await?;
    let (checks, findings) = validate(job.lake, job.pipeline, reports, outputs, previews).await?;
    let verdict = validate::verdict(&checks, &findings);
    let proven_bad = matches!(verdict, Verdict::FailChecks(_));
    log.record(ctx.now(), |m| {
        m.checks = checks.clone();
        m.findings = findings.clone();
        if proven_bad {
            // Output that failed reconciliation must never be reused by a rerun.
            m.checkpoints.clear();
        }
    })
    .await?;
    match verdict {
        Verdict::FailChecks(failed) => {
            return Err(Error::Reconciliation {
                run_id: ctx.run_id().to_string(),
                failed: failed.join("; "),
            })
        }
        Verdict::FailGate(f) => {
            return Err(Error::GateFailed {
                dataset: f.dataset,
                source_name: f.source,
                detail: f.detail,
            })
        }
        Verdict::Publish | Verdict::Hold(_) => {}
    }
    // The evidence each version record carries: its checks, and the findings on its dataset.
    for o in outputs.iter_mut() {
        let e = validate::evidence_for(o.ds.name(), ctx.run_id(), &checks, &findings);
        o.staged.evidence = Some(e);
    }
    let restating = closed_periods(job, log.manifest(), outputs, previews).await?;
    if restating && job.pipeline.settings.restatement_review {
        if let Verdict::Publish = verdict {
            return Ok(Verdict::Hold(vec![
                "a restatement of a closed period (`restatement_review = true`)".into(),
            ]));
        }
    }
    Ok(verdict)
}

/// Which closed partitions the run changes: refused unless the run is a restatement, whose
/// versions then record it ([`strata_publish::closing::Restatement`]); a shadow is checked
/// when promoted, and a dry run or a comparison publishes nothing. Returns whether the run
/// restates anything.
async fn closed_periods(
    job: &Job<'_>,
    m: &RunManifest,
    outputs: &mut [Output],
    previews: &BTreeMap<String, Draft>,
) -> Result<bool> {
    use strata_publish::closing::{BatchRef, Restatement};
    let mut restating = false;
    if matches!(
        job.options.backfill,
        Backfill::DryRun | Backfill::CompareOnly | Backfill::Shadow { .. }
    ) {
        return Ok(false);
    }
    for o in outputs.iter_mut() {
        let Some(preview) = previews.get(o.ds.name()) else { continue };
        let Some((closing, partitions)) = o.ds.closed_changes(preview).await? else { continue };
        match &job.options.backfill {
            Backfill::Replace => {
                return Err(strata_publish::Error::ClosedPeriod {
                    dataset: o.ds.name().to_string(),
                    closing: closing.describe(),
                    what: format!("run {}", job.ctx.run_id()),
                    partitions: partitions.into_iter().map(|p| p.key).collect(),
                }
                .into())
            }
            Backfill::Restatement { reason, approver } => {
                let prior = preview.record.parent;
                let prior_run = match prior {
                    Some(v) => Some(o.ds.published_head(v).await?.run_id.clone()),
                    None => None,
                };
                let read_before: BTreeSet<(String, String)> = match prior_run {
                    Some(r) => runs::latest_entry(job.lake, &r)
                        .await?
                        .map(|p| {
                            p.input_boundary.into_iter().map(|b| (b.source, b.batch_id)).collect()
                        })
                        .unwrap_or_default(),
                    None => BTreeSet::new(),
                };
                let inputs_added = m
                    .input_boundary
                    .iter()
                    .filter(|b| !read_before.contains(&(b.source.clone(), b.batch_id.clone())))
                    .map(|b| BatchRef {
                        source: b.source.clone(),
                        batch_id: b.batch_id.clone(),
                        rows: b.rows,
                    })
                    .collect();
                o.options.kind = strata_publish::model::FlipKind::Restatement;
                o.options.restatement = Some(Restatement {
                    reason: reason.clone(),
                    approver: approver.clone(),
                    prior_version: prior,
                    closing,
                    partitions,
                    inputs_added,
                });
                restating = true;
            }
            Backfill::DryRun | Backfill::CompareOnly | Backfill::Shadow { .. } => {}
        }
    }
    Ok(restating)
}

/// AWAITING_REVIEW: the staged output waits for `strata approve` or `strata reject`, with how
/// each dataset is to be published.
async fn hold(
    log: &mut RunLog,
    ctx: &RunContext,
    outputs: &[Output],
    review: &[String],
) -> Result<()> {
    let plan: BTreeMap<String, PublishPlan> = outputs
        .iter()
        .map(|o| {
            let plan = PublishPlan {
                replace_all: o.options.replace_all,
                owned: o.options.owned.clone(),
                reason: o.options.reason.clone(),
                evidence: o.staged.evidence.clone(),
                writer: o.options.writer.clone(),
                adopt: o.options.adopt,
                owned_dates: o.owned_dates.clone(),
                restatement: o.options.restatement.clone(),
            };
            (o.ds.name().to_string(), plan)
        })
        .collect();
    let why = review.join("; ");
    log.advance(RunState::AwaitingReview, ctx.now(), |m| {
        m.publish_plan = plan;
        m.error = Some(format!("held for review: {why}"));
    })
    .await
}

/// What identifies the content a later stage reads of a dataset this run computed: the stage's
/// work, and the version its output is merged onto. A window run replaces some partitions and
/// keeps the others (and the partitions a FAIL_PARTITION rule withheld) as published, so a model
/// over it must be computed again when that version changed, even if the stage's work did not.
fn content_key(stage_key: &str, preview: &Draft) -> String {
    format!("{stage_key} onto {:?}", preview.record.parent)
}

/// The cleaned stage `name`: computed, or adopted from a failed run's checkpoint of the same
/// work, and recorded with its checkpoint.
async fn clean_stage(
    job: &Job<'_>,
    inputs: &Inputs<'_>,
    name: &str,
    window: Option<Window>,
    log: &mut RunLog,
    computed: &mut Computed,
) -> Result<StageReport> {
    let (lake, pipeline, ctx) = (job.lake, job.pipeline, job.ctx);
    let def = &pipeline.cleaned[name];
    let raw = inputs.batches.get(name).map(Vec::as_slice).unwrap_or_default();
    let ids: Vec<&str> = raw.iter().map(|b| b.batch_id.as_str()).collect();
    let key = hash_json(&json!({
        "pipeline": pipeline.version, "stage": "clean", "dataset": name,
        "window": window, "full": job.options.window.is_none(), "inputs": ids,
    }));
    let names = vec![name.to_string(), format!("{name}.quarantine")];
    let reused = reuse(job, &inputs.found, &key, StageKind::Clean, &names, window).await?;
    let (report, mut outs) = match reused {
        Some(x) => x,
        None => Box::pin(clean(lake, job.session, pipeline, name, def, raw, window, ctx)).await?,
    };
    stamp(job, &mut outs);
    record_stage(log, ctx, &report, &key, &outs, Vec::new()).await?;
    for o in &outs {
        let preview = o.ds.preview(&o.staged, &o.options, ctx).await?;
        computed.stage_keys.insert(o.ds.name().to_string(), content_key(&key, &preview));
        computed.previews.insert(o.ds.name().to_string(), preview);
    }
    computed.outputs.extend(outs);
    Ok(report)
}

/// The model `name`: computed over the previews of its inputs (those this run does not
/// compute are pinned at their current version, and recorded as the run's reference-data
/// bindings), or adopted from a checkpoint of the same work.
async fn model_stage(
    job: &Job<'_>,
    found: &Checkpoints,
    name: &str,
    window: Option<Window>,
    log: &mut RunLog,
    computed: &mut Computed,
) -> Result<StageReport> {
    let (lake, pipeline, ctx) = (job.lake, job.pipeline, job.ctx);
    let def = &pipeline.models[name];
    let deps = &pipeline.model_deps[name];
    let mut bindings = Vec::new();
    for d in deps {
        if computed.bound.contains_key(d) {
            continue;
        }
        if let Some(preview) = computed.previews.get(d) {
            // A reference this run computes is bound to the version it publishes.
            if pipeline.pin_of(d).is_some() && computed.recorded.insert(d.clone()) {
                bindings.push(binding(lake, d, preview, Pin::Latest, Vec::new()).await?);
            }
            continue;
        }
        let Some(draft) = lake.dataset(d)?.draft_of_current().await? else {
            let next = if pipeline.references.contains_key(d) {
                format!("publish it first (`strata publish {d} --from FILE`)")
            } else {
                format!("run the pipeline without --only, or run {d} first")
            };
            return Err(Error::Plan(format!(
                "models.{name} reads {d:?}, which has no published version yet; {next}"
            )));
        };
        bindings.push(binding(lake, d, &draft, Pin::Latest, Vec::new()).await?);
        computed.recorded.insert(d.clone());
        computed.bound.insert(d.clone(), draft);
    }
    // What the model reads: bound versions first, then what this run computed.
    let mut reads = computed.previews.clone();
    let mut dep_keys = Vec::new();
    for d in deps {
        match computed.bound.get(d) {
            Some(draft) => {
                dep_keys.push(format!("{d}@{}", draft.record.version));
                reads.insert(d.clone(), draft.clone());
            }
            None => dep_keys.push(computed.stage_keys[d].clone()),
        }
    }
    let key = hash_json(&json!({
        "pipeline": pipeline.version, "stage": "model", "dataset": name,
        "window": window, "deps": dep_keys,
    }));
    let names = [name.to_string()];
    let (report, mut out) = match reuse(job, found, &key, StageKind::Model, &names, window).await? {
        Some((report, mut outs)) => (report, outs.remove(0)),
        None => model(lake, job.options, pipeline, name, def, deps, window, &reads, ctx)
            .await
            .map_err(|e| in_model(name, &def.sql, e))?,
    };
    stamp(job, std::slice::from_mut(&mut out));
    record_stage(log, ctx, &report, &key, std::slice::from_ref(&out), bindings).await?;
    let preview = out.ds.preview(&out.staged, &out.options, ctx).await?;
    computed.stage_keys.insert(name.to_string(), content_key(&key, &preview));
    computed.previews.insert(name.to_string(), preview);
    computed.outputs.push(out);
    Ok(report)
}

/// The binding of `dataset` at the version of `draft`, with the hash of its rows.
async fn binding(
    lake: &Lake,
    dataset: &str,
    draft: &Draft,
    policy: Pin,
    as_in: Vec<String>,
) -> Result<Binding> {
    let record = lake.dataset(dataset)?.select(draft, &|_| true).await?;
    let totals: Option<Vec<_>> = record.partitions.iter().map(|p| p.totals.as_ref()).collect();
    let row_hash =
        totals.and_then(|t| strata_reconcile::ControlTotals::combine(t).ok()).map(|t| t.row_hash);
    Ok(Binding {
        dataset: dataset.to_string(),
        version: draft.record.version,
        run_id: draft.record.run_id.clone(),
        policy,
        row_hash,
        as_in,
    })
}

/// COMMITTING: prepares every record first, so that the flips are the only work left, then
/// flips them; PUBLISHED when all landed. A record previewed for a later stage or for the
/// checks is written as it is, unless another writer published in between.
async fn commit_outputs(
    log: &mut RunLog,
    outputs: Vec<Output>,
    mut previews: BTreeMap<String, Draft>,
    lock: &locks::RunLocks,
    ctx: &RunContext,
) -> Result<(RunState, BTreeMap<String, u64>)> {
    let mut prepared = Vec::new();
    for o in outputs {
        let p = match previews.remove(o.ds.name()) {
            Some(preview) => o.ds.prepare_previewed(o.staged, &o.options, preview, ctx).await?,
            None => o.ds.prepare(o.staged, &o.options, ctx).await?,
        };
        prepared.push((o.ds, p));
    }
    lock.check()?;
    let versions: BTreeMap<String, u64> =
        prepared.iter().map(|(ds, p)| (ds.name().to_string(), p.record.version)).collect();
    // The references this run computes are bound to the versions it publishes: a record
    // prepared may have taken a later number than its preview.
    let prepare = |m: &mut RunManifest| {
        for b in m.reference_data.iter_mut().filter(|b| b.run_id == m.run_id) {
            if let Some(v) = versions.get(&b.dataset) {
                b.version = *v;
            }
        }
        m.prepared = versions.clone();
    };
    if log.manifest().state == RunState::Committing {
        // An approval claimed the run first; the prepared versions are progress.
        log.record(ctx.now(), prepare).await?;
    } else {
        log.advance(RunState::Committing, ctx.now(), prepare).await?;
    }
    if let Backfill::Shadow { name } = log.manifest().params.backfill.clone() {
        let versions = publish_shadow(log, &name, &prepared, ctx).await?;
        return Ok((RunState::Shadowed, versions));
    }
    strata_publish::crash::point("before-flips");
    let mut published = BTreeMap::new();
    for (ds, p) in prepared {
        // Still ours? A process paused past its lease may have been taken over meanwhile.
        if let Err(e) = lock.confirm(ds.name()).await {
            if !published.is_empty() {
                let so_far = published.clone();
                let _ = log.record(ctx.now(), |m| m.published = so_far).await;
            }
            return Err(e.into());
        }
        match ds.commit(p, ctx).await {
            Ok(done) => {
                published.insert(ds.name().to_string(), done.record.version);
            }
            Err(e @ strata_publish::Error::UnknownCommit { .. }) => {
                let message = e.to_string();
                let so_far = published.clone();
                log.advance(RunState::Unknown, ctx.now(), |m| {
                    m.published = so_far;
                    m.error = Some(message);
                })
                .await?;
                return Err(e.into());
            }
            Err(e) => {
                if !published.is_empty() {
                    let so_far = published.clone();
                    let _ = log.record(ctx.now(), |m| m.published = so_far).await;
                }
                return Err(e.into());
            }
        }
    }
    let done = published.clone();
    log.advance(RunState::Published, ctx.now(), |m| {
        m.published = done;
        m.checkpoints.clear();
    })
    .await?;
    Ok((RunState::Published, published))
}

/// SHADOWED: the prepared versions are published to the shadow ref `name` (one object, created
/// if absent: the shadow appears whole or not at all), and the pointers are left alone. A name
/// another run took meanwhile fails the run, removing what it prepared.
async fn publish_shadow(
    log: &mut RunLog,
    name: &str,
    prepared: &[(strata_publish::Dataset, strata_publish::Prepared)],
    ctx: &RunContext,
) -> Result<BTreeMap<String, u64>> {
    use strata_publish::shadow::{ShadowRef, ShadowVersion, SHADOW_FORMAT};
    let lake = log.lake().clone();
    let datasets: BTreeMap<String, ShadowVersion> = prepared
        .iter()
        .map(|(ds, p)| {
            let version = ShadowVersion {
                version: p.record.version,
                base_version: p.record.parent,
                base_seq: p.publish_seq() - 1,
            };
            (ds.name().to_string(), version)
        })
        .collect();
    let versions: BTreeMap<String, u64> =
        datasets.iter().map(|(d, v)| (d.clone(), v.version)).collect();
    let shadow = ShadowRef {
        format: SHADOW_FORMAT.into(),
        name: name.to_string(),
        run_id: ctx.run_id().to_string(),
        created_at: ctx.now(),
        datasets,
    };
    strata_publish::crash::point("before-shadow-ref");
    if !lake.create_shadow(&shadow).await? {
        let taken = lake.shadow(name).await?.map(|s| s.run_id).unwrap_or_default();
        let e = Error::ShadowExists { name: name.to_string(), run_id: taken };
        let (_, kept) = crate::recover::discard_stopped(
            &lake,
            log.manifest(),
            &BTreeSet::new(),
            Holder::Caller,
            |_| false,
        )
        .await?;
        if kept.is_empty() {
            let message = e.to_string();
            log.advance(RunState::Failed, ctx.now(), |m| m.error = Some(message)).await?;
        }
        return Err(e);
    }
    strata_publish::crash::point("after-shadow-ref");
    let shadowed = versions.clone();
    log.advance(RunState::Shadowed, ctx.now(), |m| {
        m.shadow = Some(runs::ShadowInfo {
            name: name.to_string(),
            versions: shadowed,
            bases: m.bases.clone(),
        });
        m.checkpoints.clear();
    })
    .await?;
    Ok(versions)
}

/// VALIDATING: gathers what the checks and gates compare (the stages' counts, what the writer
/// staged, the current row counts the gates measure change against) and lets
/// [`crate::validate`] decide.
async fn validate(
    lake: &Lake,
    pipeline: &Pipeline,
    reports: &mut [StageReport],
    outputs: &[Output],
    previews: &BTreeMap<String, Draft>,
) -> Result<(Vec<Check>, Vec<Finding>)> {
    let by_name: BTreeMap<&str, &Output> = outputs.iter().map(|o| (o.ds.name(), o)).collect();
    let mut checks = Vec::new();
    let mut findings = Vec::new();
    for r in reports.iter().filter(|r| r.stage != StageKind::Land) {
        let Some(out) = by_name.get(r.dataset.as_str()) else { continue };
        let quarantine = by_name.get(format!("{}.quarantine", r.dataset).as_str());
        checks.extend(validate::stage_checks(r, &out.staged, quarantine.map(|q| &q.staged)));
        if let Some(def) = pipeline.cleaned.get(&r.dataset).filter(|d| !d.gates.is_empty()) {
            let measures_change = def.gates.iter().any(|g| {
                matches!(g.measure, GateMeasure::MaxRowChange(_))
                    || g.name == strata_medallion::pipeline::DEFAULT_GATE
            });
            let rows_before = match measures_change {
                true => lake.dataset(&r.dataset)?.current_head().await?.map(|c| c.summary.rows),
                false => None,
            };
            let counts = GateCounts {
                rows_in: r.rows_in,
                quarantined: r.quarantined,
                rejected: r.rejected_at_landing,
                rows_before,
                rows_after: previews.get(&r.dataset).map_or(0, |p| p.record.summary.rows),
            };
            findings.extend(validate::gate_findings(&r.dataset, &def.gates, counts));
        }
        findings.extend(r.findings.iter().cloned());
    }
    checks.extend(outputs.iter().map(|o| validate::output_check(o.ds.name(), &o.staged)));
    validate::attach_gate_findings(reports, &findings);
    Ok((checks, findings))
}

async fn record_stage(
    log: &mut RunLog,
    ctx: &RunContext,
    report: &StageReport,
    key: &str,
    outs: &[Output],
    bindings: Vec<Binding>,
) -> Result<()> {
    let stats: BTreeMap<String, u64> = [
        ("input".to_string(), report.rows_in),
        ("accepted".to_string(), report.rows_out),
        ("quarantined".to_string(), report.quarantined),
        ("duplicates".to_string(), report.duplicates),
    ]
    .into_iter()
    .collect();
    let cps: Vec<StagedCheckpoint> = outs
        .iter()
        .map(|o| {
            let mut c = StagedCheckpoint::new(key, o.ds.name(), &o.staged);
            c.stats = stats.clone();
            c.report = Some(report.clone());
            c.scope = Some(PublishPlan {
                replace_all: o.options.replace_all,
                owned: o.options.owned.clone(),
                owned_dates: o.owned_dates.clone(),
                ..Default::default()
            });
            c
        })
        .collect();
    log.record(ctx.now(), |m| {
        m.stages.push(report.clone());
        m.checkpoints.extend(cps);
        m.reference_data.extend(bindings);
    })
    .await?;
    Ok(())
}

/// A published run with this run key whose versions are all still current.
///
/// Such a run published to the datasets of this run's boundary (the same key means the same plan),
/// so it wrote the versions their pointers name now: only those runs are read, never the whole
/// history of runs.
pub(crate) async fn already_published(
    lake: &Lake,
    boundary: &BTreeMap<String, Vec<String>>,
    run_key: &str,
) -> Result<Option<RunManifest>> {
    // Dataset → its current version, read once.
    let mut current_of: BTreeMap<String, Option<u64>> = BTreeMap::new();
    let mut writers = BTreeSet::new();
    for ds in boundary.keys() {
        let head = lake.dataset(ds)?.head().await?;
        current_of.insert(ds.clone(), head.as_ref().map(|h| h.to));
        if let Some(head) = head {
            writers.insert(head.version.run_id);
        }
    }
    for id in writers.iter().rev() {
        let Some(m) = runs::latest_entry(lake, id).await? else { continue };
        if m.state != RunState::Published || m.run_key.as_deref() != Some(run_key) {
            continue;
        }
        let mut current = !m.published.is_empty();
        for (ds, v) in &m.published {
            let now = match current_of.get(ds) {
                Some(now) => *now,
                None => lake.dataset(ds)?.head().await?.map(|h| h.to),
            };
            if now != Some(*v) {
                current = false;
                break;
            }
        }
        if current {
            return Ok(Some(m));
        }
    }
    Ok(None)
}

/// After a publish, checkpoints of failed runs on the same datasets will never be reused (this
/// run's output supersedes them): remove their files.
async fn release_superseded_checkpoints(
    lake: &Lake,
    runs: &[RunManifest],
    boundary: &BTreeMap<String, Vec<String>>,
) {
    for m in runs.iter().filter(|m| m.state == RunState::Failed) {
        let datasets: BTreeSet<&String> = m
            .checkpoints
            .iter()
            .map(|c| &c.dataset)
            .filter(|d| boundary.contains_key(*d))
            .collect();
        let mut released = true;
        for d in &datasets {
            released &= match lake.dataset(d) {
                Ok(ds) => {
                    // Only its staged files: no record of a failed run is above u64::MAX.
                    let base = runs::Base {
                        seq: m.bases.get(ds.name()).map_or(0, |b| b.seq),
                        max_version: u64::MAX,
                    };
                    ds.discard_run(&m.run_id, base, &BTreeSet::new(), Holder::Stopped)
                        .await
                        .is_ok_and(|d| d.kept_because.is_none())
                }
                Err(_) => false,
            };
        }
        // Checkpoints on datasets outside this boundary stay reusable, and the run open.
        if released && m.checkpoints.iter().all(|c| boundary.contains_key(&c.dataset)) {
            runs::close(lake, &m.run_id).await;
        }
    }
}

/// Publishes a run held for review (AWAITING_REVIEW): its staged files are checked against their
/// sha256, its bases against the pointers (nothing it writes may have changed since it was
/// validated), its partitions locked again, and its versions committed as the run planned them.
///
/// The approval claims the run by writing COMMITTING before it prepares anything, so of two
/// approvals, or an approval and a rejection, exactly one goes ahead; the other gets
/// [`strata_publish::Error::RunMoved`] having changed nothing.
pub async fn approve(
    lake: &Lake,
    run_id: &str,
    now: chrono::DateTime<chrono::Utc>,
    lease: std::time::Duration,
    clock: locks::Clock,
    note: Option<String>,
) -> Result<BTreeMap<String, u64>> {
    if let Some(settled) = settle_stopped_approval(lake, run_id, clock, lease).await? {
        if settled.state == RunState::Published {
            // An earlier approval had flipped a dataset before it stopped: recovery finished it.
            return Ok(settled.published);
        }
    }
    let m = held_run(lake, run_id).await?;
    let ctx = RunContext::new(run_id, now)?;
    let mut outputs = Vec::new();
    for cp in &m.checkpoints {
        let ds = lake.dataset(&cp.dataset)?;
        let mut staged = cp.staged();
        let problems =
            ds.check_files(cp.partitions.iter().flat_map(|p| p.files.clone()).collect()).await?;
        if let Some(p) = problems.first() {
            // A rejection that won the run meanwhile removes its staging: that is a lost race,
            // not damage.
            if let Some(moved) = moved_meanwhile(lake, &m).await? {
                return Err(moved);
            }
            return Err(Error::StagedDamaged {
                run_id: run_id.to_string(),
                path: p.path.clone(),
                problem: p.problem.to_string(),
                expected: p.expected.to_string(),
                found: p.found.to_string(),
            });
        }
        let plan = m.publish_plan.get(&cp.dataset).cloned().unwrap_or_default();
        let mut evidence = plan
            .evidence
            .unwrap_or_else(|| validate::evidence_for(&cp.dataset, run_id, &m.checks, &m.findings));
        evidence.approved = Some(Approval { at: now, note: note.clone() });
        staged.evidence = Some(evidence);
        outputs.push(Output {
            ds,
            staged,
            owned_dates: plan.owned_dates,
            options: strata_publish::PublishOptions {
                replace_all: plan.replace_all,
                owned: plan.owned,
                reason: Some(format!("run {run_id}, approved")),
                writer: plan.writer,
                adopt: plan.adopt,
                kind: match plan.restatement {
                    Some(_) => strata_publish::model::FlipKind::Restatement,
                    None => Default::default(),
                },
                restatement: plan.restatement,
            },
        });
    }
    let stays = format!(
        "the run stays AWAITING_REVIEW. `strata reject {run_id}` discards it; then run the \
         pipeline again to compute it on the current data"
    );
    if let Err(e) = check_bases(&m, &outputs, &stays).await {
        // Another approval that is publishing this very run moves the pointers too: that is a
        // lost race, not a stale run.
        return Err(moved_meanwhile(lake, &m).await?.unwrap_or(e));
    }
    let lock = locks::acquire(lake, run_id, &m.output_boundary, lease, clock).await?;
    let mut log = RunLog::resume(lake, m);
    // The claim: whoever writes the next entry first decides the run.
    if let Err(e) = log.advance(RunState::Committing, ctx.now(), |m| m.error = None).await {
        lock.release().await;
        return Err(e);
    }
    // The pointers may have moved between the check and the claim.
    let failed = "the run was marked FAILED; run the pipeline again";
    let result = match check_bases(log.manifest(), &outputs, failed).await {
        Ok(()) => Box::pin(commit_outputs(&mut log, outputs, BTreeMap::new(), &lock, &ctx))
            .await
            .map(|(_, published)| published),
        // The store failed, not the check: recovery returns the run to review.
        Err(e) if !matches!(e, Error::BaseMoved { .. }) => Err(e),
        Err(e) => {
            // Recorded FAILED first, as a rejection is, so that a cleanup cut short is finished
            // by recovery instead of returning the run to review with part of its output gone.
            let message = e.to_string();
            let failed = log
                .advance(RunState::Failed, ctx.now(), |m| {
                    m.error = Some(message);
                    m.checkpoints.clear();
                    m.cleanup = true;
                })
                .await;
            if failed.is_ok() {
                let _ = crate::recover::clean_up_failed(lake, log.manifest()).await;
            }
            Err(e)
        }
    };
    if result.is_err() {
        if let Some(taken) = taken_over(lake, log.manifest()).await {
            lock.release().await;
            return Err(taken);
        }
    }
    if result.is_err() && log.manifest().state == RunState::Committing {
        // A flip may have been attempted: recovery settles it; nothing is deleted here.
        let message = result.as_ref().err().map(|e| e.to_string());
        let _ = log.advance(RunState::Unknown, ctx.now(), |m| m.error = message).await;
    }
    lock.release().await;
    result
}

/// [`Error::RunMoved`] if another process moved the run past the entry `m`.
async fn moved_meanwhile(lake: &Lake, m: &RunManifest) -> Result<Option<Error>> {
    let now = runs::latest_entry(lake, &m.run_id).await?;
    Ok(now
        .filter(|now| now.entry != m.entry)
        .map(|_| Error::RunMoved { run_id: m.run_id.clone(), entry: m.entry + 1 }))
}

/// Fails with [`Error::BaseMoved`] when what the run writes to any of its
/// datasets changed since it recorded that dataset's pointer as its base; `next` says what
/// happens to the run.
async fn check_bases(m: &RunManifest, outputs: &[Output], next: &str) -> Result<()> {
    for o in outputs {
        let base = m.bases.get(o.ds.name()).map_or(0, |b| b.seq);
        if let Some(detail) = o.ds.changed_since(base, &o.staged, &o.options).await? {
            return Err(Error::BaseMoved {
                run_id: m.run_id.clone(),
                dataset: o.ds.name().to_string(),
                detail,
                next: next.to_string(),
            });
        }
    }
    Ok(())
}

/// Discards a run held for review: it is marked FAILED first (so that an approval racing with
/// it stops), then its staging is removed. A rejection killed in between leaves the staging to
/// recovery, which finishes it.
pub async fn reject(
    lake: &Lake,
    run_id: &str,
    now: chrono::DateTime<chrono::Utc>,
    clock: locks::Clock,
    lease: std::time::Duration,
    note: Option<String>,
) -> Result<u64> {
    settle_stopped_approval(lake, run_id, clock, lease).await?;
    let m = held_run(lake, run_id).await?;
    let mut log = RunLog::resume(lake, m);
    let why = format!("rejected at review{}", note.map(|n| format!(": {n}")).unwrap_or_default());
    log.advance(RunState::Failed, now, |m| {
        m.error = Some(why);
        m.checkpoints.clear();
        m.cleanup = true;
    })
    .await?;
    crate::recover::clean_up_failed(lake, log.manifest()).await
}

/// Settles an approval of `run_id` that stopped half-way (killed, or its store failed), as
/// `strata recover` would: the run goes back to AWAITING_REVIEW if nothing was flipped, or is
/// rolled forward to PUBLISHED. A run whose approval is still running is left alone (busy).
/// Returns the run's latest entry if it settled one, `None` when there was nothing to settle.
async fn settle_stopped_approval(
    lake: &Lake,
    run_id: &str,
    clock: locks::Clock,
    lease: std::time::Duration,
) -> Result<Option<RunManifest>> {
    let Some(m) = runs::latest_entry(lake, run_id).await? else { return Ok(None) };
    let stopped = matches!(m.state, RunState::Committing | RunState::Unknown);
    if !stopped || m.publish_plan.is_empty() {
        return Ok(None);
    }
    let by = format!("settle {run_id} {}", std::process::id());
    let ctx = RunContext::generate(clock(), by.as_bytes());
    match crate::recover::recover(lake, Some(run_id), &ctx, clock, lease).await {
        // Its approval is alive: another approve or reject is publishing it right now, and
        // this one lost the race.
        Err(Error::StillRunning { .. }) => {
            return Err(Error::RunMoved { run_id: run_id.to_string(), entry: m.entry })
        }
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    runs::latest_entry(lake, run_id).await
}

async fn held_run(lake: &Lake, run_id: &str) -> Result<RunManifest> {
    let m = runs::run_log(lake, run_id).await?.pop().expect("run_log is never empty");
    if m.state == RunState::Committing {
        // Another approval claimed it a moment ago: a lost race, not a mistake.
        return Err(Error::RunMoved { run_id: run_id.to_string(), entry: m.entry });
    }
    if m.state != RunState::AwaitingReview {
        return Err(Error::WrongState {
            run_id: run_id.to_string(),
            state: m.state,
            message: format!(
                "run {run_id} is {}, not AWAITING_REVIEW; only a run held by a MANUAL_REVIEW gate \
                 can be approved or rejected (`strata runs --status AWAITING_REVIEW` lists them)",
                m.state
            ),
        });
    }
    Ok(m)
}
