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
//! without reaching a terminal state; see `strata_publish::recover`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;
use sha2::{Digest, Sha256};
use strata_land::BatchManifest;
use strata_publish::run_state::RunState;
use strata_publish::runs::{self, Base, InputBatch, RunLog, RunManifest, StagedCheckpoint};
use strata_publish::{locks, Dataset, Lake, RunContext, VersionRecord};

use crate::error::{Error, Result};
use crate::pipeline::Pipeline;
use crate::stages::{
    clean, land_source, model, owned_keys, partition_column, session, Output, RunOptions,
    StageReport, Window,
};

/// How a run ended.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunSummary {
    pub run_id: String,
    pub state: RunState,
    /// Set when nothing was run because this published run already computed exactly this.
    pub already_published_by: Option<String>,
    pub stages: Vec<StageReport>,
    /// Dataset → version published.
    pub published: BTreeMap<String, u64>,
}

/// What a run will do, fixed before it starts: per dataset, the window it recomputes.
#[derive(Debug, Clone)]
struct Plan {
    cleaned: Vec<(String, Option<Window>)>,
    models: Vec<(String, Option<Window>)>,
    sources: Vec<String>,
    /// Dataset → owned partition keys (empty: the whole dataset).
    boundary: BTreeMap<String, Vec<String>>,
}

fn plan(pipeline: &Pipeline, options: &RunOptions) -> Result<Plan> {
    for name in &options.only {
        if !pipeline.cleaned.contains_key(name) && !pipeline.models.contains_key(name) {
            return Err(Error::Sql {
                message: format!(
                    "--only names {name:?}, which is neither a cleaned dataset nor a model of {} \
                     (datasets: {})",
                    pipeline.file.display(),
                    pipeline
                        .cleaned
                        .keys()
                        .chain(pipeline.models.keys())
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
    }
    let selected = |name: &str| options.only.is_empty() || options.only.iter().any(|o| o == name);
    let mut boundary = BTreeMap::new();
    let mut windows: BTreeMap<String, Option<Window>> = BTreeMap::new();
    let mut cleaned = Vec::new();
    let mut sources = BTreeSet::new();
    for (name, def) in &pipeline.cleaned {
        if !selected(name) {
            continue;
        }
        sources.insert(def.source.clone());
        let w = match options.window {
            Some(w) if def.grain == "month" => Some(w.whole_months()),
            other => other,
        };
        let part = partition_column(&def.business_date, &def.grain);
        let keys: Vec<String> =
            w.map(|w| owned_keys(&part, &def.grain, w).into_iter().collect()).unwrap_or_default();
        let mut q_keys: Vec<String> = w
            .map(|w| owned_keys("quarantine_date", &def.grain, w).into_iter().collect())
            .unwrap_or_default();
        if w.is_some() {
            q_keys.push(format!("quarantine_date={}", strata_publish::names::NULL_PARTITION));
        }
        boundary.insert(name.clone(), keys);
        boundary.insert(format!("{name}.quarantine"), q_keys);
        windows.insert(name.clone(), w);
        cleaned.push((name.clone(), w));
    }
    let mut models = Vec::new();
    for name in &pipeline.model_order {
        if !selected(name) {
            continue;
        }
        let def = &pipeline.models[name];
        // The dates to recompute: where the inputs change, plus the model's look-back spill;
        // everything when there is no window.
        let w = options.window.map(|w| {
            let ranges: Vec<Window> = pipeline.model_deps[name]
                .iter()
                .filter_map(|d| windows.get(d).copied().flatten())
                .collect();
            let (from, to) = if ranges.is_empty() {
                (w.from, w.to)
            } else {
                (
                    ranges.iter().map(|r| r.from).min().expect("non-empty"),
                    ranges.iter().map(|r| r.to).max().expect("non-empty"),
                )
            };
            let w = Window { from, to: to + chrono::Duration::days(def.reads_days.into()) };
            if def.grain == "month" {
                w.whole_months()
            } else {
                w
            }
        });
        let part = partition_column(&def.business_date, &def.grain);
        boundary.insert(
            name.clone(),
            w.map(|w| owned_keys(&part, &def.grain, w).into_iter().collect()).unwrap_or_default(),
        );
        windows.insert(name.clone(), w);
        models.push((name.clone(), w));
    }
    let sources = if options.only.is_empty() {
        pipeline.sources.keys().cloned().collect()
    } else {
        sources.into_iter().collect()
    };
    Ok(Plan { cleaned, models, sources, boundary })
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
    let mut reports = Vec::new();
    // Land: content-addressed and idempotent, so it needs no run state of its own.
    let mut batches: BTreeMap<String, Vec<BatchManifest>> = BTreeMap::new();
    for name in &plan.sources {
        let report = land_source(lake, pipeline, name, &pipeline.sources[name], ctx).await?;
        progress(&report);
        reports.push(report);
        batches
            .insert(name.clone(), strata_land::list_batches(lake, name).await.map_err(land_error)?);
    }
    let input_boundary: Vec<InputBatch> = batches
        .iter()
        .flat_map(|(source, bs)| {
            bs.iter().map(|b| InputBatch {
                source: source.clone(),
                batch_id: b.batch_id.clone(),
                rows: b.rows,
            })
        })
        .collect();
    let params = json!({
        "window": options.window,
        "only": options.only,
        "force": options.force,
    });
    let run_key = hash_json(&json!({
        "pipeline": pipeline.version,
        "window": options.window,
        "only": options.only,
        "inputs": input_boundary,
    }));
    if !options.force {
        if let Some(previous) = already_published(lake, &run_key).await? {
            return Ok(RunSummary {
                run_id: ctx.run_id().to_string(),
                state: RunState::Published,
                already_published_by: Some(previous.run_id.clone()),
                stages: reports,
                published: previous.published,
            });
        }
    }
    let clock = options.clock.unwrap_or(chrono::Utc::now);
    let lock = locks::acquire(lake, ctx.run_id(), &plan.boundary, options.lease, clock).await?;
    strata_publish::crash::point("after-lock");
    let mut manifest = RunManifest::planned(
        ctx.run_id(),
        if options.window.is_some() { "window" } else { "full" },
        params,
    );
    manifest.pipeline = Some((pipeline.settings.name.clone(), pipeline.version.clone()));
    manifest.output_boundary = plan.boundary.clone();
    manifest.run_key = Some(run_key);
    manifest.process = Some(format!("{}@{}", std::process::id(), locks::this_host()));
    let mut log = match RunLog::begin(lake, manifest, ctx.now()).await {
        Ok(l) => l,
        Err(e) => {
            lock.release().await;
            return Err(e.into());
        }
    };
    let result = drive(
        lake,
        pipeline,
        options,
        ctx,
        &plan,
        &batches,
        input_boundary,
        &mut log,
        &lock,
        progress,
        &mut reports,
    )
    .await;
    match result {
        Ok(published) => {
            lock.release().await;
            release_superseded_checkpoints(lake, &plan.boundary, ctx).await;
            Ok(RunSummary {
                run_id: ctx.run_id().to_string(),
                state: RunState::Published,
                already_published_by: None,
                stages: reports,
                published,
            })
        }
        Err(e) => {
            let state = log.manifest().state;
            let message = e.to_string();
            if state == RunState::Unknown {
                // Leave everything for recovery: the store may have taken a flip.
                return Err(e);
            }
            if !log.manifest().published.is_empty() || state == RunState::Committing {
                let flipped = !log.manifest().published.is_empty();
                if flipped {
                    let _ = log
                        .advance(RunState::Unknown, ctx.now(), |m| m.error = Some(message.clone()))
                        .await;
                    return Err(e);
                }
            }
            // Nothing was flipped: clean up, keep finished stages for a rerun, record FAILED.
            let keep: BTreeSet<String> = log
                .manifest()
                .checkpoints
                .iter()
                .flat_map(|c| c.files().map(str::to_string))
                .collect();
            for ds in plan.boundary.keys() {
                if let Ok(ds) = lake.dataset(ds) {
                    let above = log.manifest().bases.get(ds.name()).map_or(0, |b| b.max_version);
                    let _ = ds.discard_run(ctx.run_id(), above, &keep).await;
                }
            }
            let _ =
                log.advance(RunState::Failed, ctx.now(), |m| m.error = Some(message.clone())).await;
            lock.release().await;
            Err(e)
        }
    }
}

/// The checkpoints finished stages of failed runs left, by stage key and dataset.
type Checkpoints = BTreeMap<(String, String), StagedCheckpoint>;

async fn failed_checkpoints(lake: &Lake) -> Result<Checkpoints> {
    let mut found = Checkpoints::new();
    for m in runs::list_runs(lake).await? {
        if m.state == RunState::Failed {
            for c in m.checkpoints {
                found.insert((c.stage_key.clone(), c.dataset.clone()), c);
            }
        }
    }
    Ok(found)
}

/// Adopts the checkpoints of `stage_key` for `datasets`, if every one is there and verifies.
async fn reuse(
    lake: &Lake,
    found: &Checkpoints,
    stage_key: &str,
    datasets: &[String],
    ctx: &RunContext,
) -> Result<Option<(Vec<strata_publish::Staged>, StagedCheckpoint)>> {
    let mut cps = Vec::new();
    for d in datasets {
        match found.get(&(stage_key.to_string(), d.clone())) {
            Some(c) => cps.push(c.clone()),
            None => return Ok(None),
        }
    }
    let mut adopted = Vec::new();
    for c in &cps {
        let ds = lake.dataset(&c.dataset)?;
        match ds.adopt(&c.staged(), ctx).await? {
            Some(s) => adopted.push(s),
            None => return Ok(None),
        }
    }
    Ok(Some((adopted, cps[0].clone())))
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    lake: &Lake,
    pipeline: &Pipeline,
    options: &RunOptions,
    ctx: &RunContext,
    plan: &Plan,
    batches: &BTreeMap<String, Vec<BatchManifest>>,
    input_boundary: Vec<InputBatch>,
    log: &mut RunLog,
    lock: &locks::RunLocks,
    progress: &mut (dyn FnMut(&StageReport) + Send),
    reports: &mut Vec<StageReport>,
) -> Result<BTreeMap<String, u64>> {
    log.advance(RunState::InputLocked, ctx.now(), |m| m.input_boundary = input_boundary).await?;
    log.advance(RunState::Running, ctx.now(), |_| {}).await?;
    let found = failed_checkpoints(lake).await?;
    let session = session(lake, options)?;
    let mut outputs: Vec<Output> = Vec::new();
    let mut previews: BTreeMap<String, VersionRecord> = BTreeMap::new();
    let mut stage_keys: BTreeMap<String, String> = BTreeMap::new();
    for (name, window) in &plan.cleaned {
        let def = &pipeline.cleaned[name];
        let raw = batches.get(&def.source).map(Vec::as_slice).unwrap_or_default();
        let ids: Vec<&str> = raw.iter().map(|b| b.batch_id.as_str()).collect();
        let key = hash_json(&json!({
            "pipeline": pipeline.version, "stage": "clean", "dataset": name,
            "window": window, "full": options.window.is_none(), "inputs": ids,
        }));
        stage_keys.insert(name.clone(), key.clone());
        let names = vec![name.clone(), format!("{name}.quarantine")];
        let (report, outs) = match reuse(lake, &found, &key, &names, ctx).await? {
            Some((adopted, cp)) => {
                let stat = |k: &str| cp.stats.get(k).copied().unwrap_or(0);
                let report = StageReport {
                    stage: "clean",
                    dataset: name.clone(),
                    rows_in: stat("input"),
                    rows_out: adopted[0].rows,
                    quarantined: stat("quarantined"),
                    duplicates: stat("duplicates"),
                    partitions: adopted[0].partitions.len() as u64,
                    window: *window,
                    reused_from: Some(cp.run_id.clone()),
                    note: format!("reused the checksummed output of run {}", cp.run_id),
                    ..Default::default()
                };
                let reason = Some(format!("run {}", ctx.run_id()));
                let full = options.window.is_none();
                let outs = adopted
                    .into_iter()
                    .zip(&names)
                    .map(|(staged, n)| {
                        Ok(Output {
                            ds: lake.dataset(n)?,
                            staged,
                            options: strata_publish::PublishOptions {
                                replace_all: full,
                                owned: (!full).then(|| plan.boundary[n].iter().cloned().collect()),
                                reason: reason.clone(),
                            },
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                (report, outs)
            }
            None => clean(lake, &session, pipeline, name, def, raw, *window, ctx).await?,
        };
        record_stage(log, ctx, &report, &key, &outs, Vec::new()).await?;
        for o in &outs {
            previews
                .insert(o.ds.name().to_string(), o.ds.preview(&o.staged, &o.options, ctx).await?);
        }
        progress(&report);
        reports.push(report);
        outputs.extend(outs);
    }
    for (name, window) in &plan.models {
        let def = &pipeline.models[name];
        let deps = &pipeline.model_deps[name];
        // Inputs this run does not compute are read at their current version, pinned here and
        // recorded as the run's reference-data bindings.
        let mut bindings = Vec::new();
        for d in deps {
            if previews.contains_key(d) {
                continue;
            }
            let record = match lake.dataset(d)?.current().await {
                Ok(r) => r,
                Err(strata_publish::Error::DatasetNotFound { .. }) => {
                    return Err(Error::Sql {
                        message: format!(
                            "models.{name} reads {d:?}, which has no published version yet; run \
                             the pipeline without --only, or run {d} first"
                        ),
                    })
                }
                Err(e) => return Err(e.into()),
            };
            bindings
                .push(json!({"dataset": d, "version": record.version, "run_id": record.run_id}));
            stage_keys.insert(d.clone(), format!("{d}@{}", record.version));
            previews.insert(d.clone(), record);
        }
        let dep_keys: Vec<&String> = deps.iter().map(|d| &stage_keys[d]).collect();
        let key = hash_json(&json!({
            "pipeline": pipeline.version, "stage": "model", "dataset": name,
            "window": window, "deps": dep_keys,
        }));
        stage_keys.insert(name.clone(), key.clone());
        let adopted = reuse(lake, &found, &key, std::slice::from_ref(name), ctx).await?;
        let (report, out) = match adopted {
            Some((mut staged, cp)) => {
                let staged = staged.remove(0);
                let full = window.is_none();
                let report = StageReport {
                    stage: "model",
                    dataset: name.clone(),
                    rows_in: cp.stats.get("input").copied().unwrap_or(0),
                    rows_out: staged.rows,
                    partitions: staged.partitions.len() as u64,
                    window: *window,
                    reused_from: Some(cp.run_id.clone()),
                    note: format!("reused the checksummed output of run {}", cp.run_id),
                    ..Default::default()
                };
                let out = Output {
                    ds: lake.dataset(name)?,
                    staged,
                    options: strata_publish::PublishOptions {
                        replace_all: full,
                        owned: (!full).then(|| plan.boundary[name].iter().cloned().collect()),
                        reason: Some(format!("run {}", ctx.run_id())),
                    },
                };
                (report, out)
            }
            None => {
                model(lake, options, pipeline, name, def, deps, *window, &previews, ctx).await?
            }
        };
        record_stage(log, ctx, &report, &key, std::slice::from_ref(&out), bindings).await?;
        previews.insert(name.clone(), out.ds.preview(&out.staged, &out.options, ctx).await?);
        progress(&report);
        reports.push(report);
        outputs.push(out);
    }
    // VALIDATING: the pointers as they are now are the bases recovery measures from.
    let mut bases = BTreeMap::new();
    for o in &outputs {
        if let Some(h) = o.ds.head().await? {
            bases.insert(o.ds.name().to_string(), Base { seq: h.seq, max_version: h.max_version });
        }
    }
    log.advance(RunState::Validating, ctx.now(), |m| m.bases = bases).await?;
    let mut checks = Vec::new();
    for r in reports.iter().filter(|r| r.stage == "clean") {
        let ok = r.rows_in == r.rows_out + r.quarantined + r.duplicates;
        checks.push(json!({
            "check": "input = accepted + quarantined + duplicates", "dataset": r.dataset, "ok": ok,
            "detail": format!("{} = {} + {} + {}", r.rows_in, r.rows_out, r.quarantined, r.duplicates),
        }));
    }
    for o in &outputs {
        let parts: u64 = o.staged.partitions.iter().map(|p| p.rows).sum();
        let files: u64 = o.staged.partitions.iter().flat_map(|p| &p.files).map(|f| f.rows).sum();
        checks.push(json!({
            "check": "rows written = rows in partitions = rows in files", "dataset": o.ds.name(),
            "ok": parts == o.staged.rows && files == o.staged.rows,
            "detail": format!("{} / {parts} / {files}", o.staged.rows),
        }));
    }
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| format!("{} {} ({})", c["dataset"], c["check"], c["detail"]))
        .collect();
    log.record(ctx.now(), |m| m.checks = checks).await?;
    if !failed.is_empty() {
        return Err(Error::Sql {
            message: format!(
                "validation failed, nothing was published: {}. Report this with run id {}",
                failed.join("; "),
                ctx.run_id()
            ),
        });
    }
    // COMMITTING: prepare every record first, so that the flips are the only work left.
    let mut prepared = Vec::new();
    for o in outputs {
        let p = o.ds.prepare(o.staged, &o.options, ctx).await?;
        prepared.push((o.ds, p));
    }
    lock.check()?;
    let versions: BTreeMap<String, u64> =
        prepared.iter().map(|(ds, p)| (ds.name().to_string(), p.record.version)).collect();
    log.advance(RunState::Committing, ctx.now(), |m| m.prepared = versions).await?;
    strata_publish::crash::point("before-flips");
    let mut published = BTreeMap::new();
    for (ds, p) in prepared {
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
    for r in reports.iter_mut() {
        if let Some(v) = published.get(&r.dataset) {
            r.version = Some(*v);
        }
    }
    Ok(published)
}

async fn record_stage(
    log: &mut RunLog,
    ctx: &RunContext,
    report: &StageReport,
    key: &str,
    outs: &[Output],
    bindings: Vec<serde_json::Value>,
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
            c
        })
        .collect();
    let stage = serde_json::to_value(report).unwrap_or_default();
    log.record(ctx.now(), |m| {
        m.stages.push(stage);
        m.checkpoints.extend(cps);
        m.reference_data.extend(bindings);
    })
    .await?;
    Ok(())
}

/// A published run with this run key whose versions are all still current.
async fn already_published(lake: &Lake, run_key: &str) -> Result<Option<RunManifest>> {
    let mut runs: Vec<RunManifest> = runs::list_runs(lake)
        .await?
        .into_iter()
        .filter(|m| m.state == RunState::Published && m.run_key.as_deref() == Some(run_key))
        .collect();
    runs.sort_by(|a, b| b.run_id.cmp(&a.run_id));
    for m in runs {
        let mut current = !m.published.is_empty();
        for (ds, v) in &m.published {
            let head = lake.dataset(ds)?.head().await?;
            if head.map(|h| h.to) != Some(*v) {
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
    boundary: &BTreeMap<String, Vec<String>>,
    ctx: &RunContext,
) {
    let Ok(all) = runs::list_runs(lake).await else { return };
    for m in all {
        if m.state != RunState::Failed || m.run_id == ctx.run_id() {
            continue;
        }
        for c in &m.checkpoints {
            if !boundary.contains_key(&c.dataset) {
                continue;
            }
            if let Ok(ds) = lake.dataset(&c.dataset) {
                let ds: Dataset = ds;
                let _ = ds.discard_run(&m.run_id, u64::MAX, &BTreeSet::new()).await;
            }
        }
    }
}

fn land_error(e: strata_land::Error) -> Error {
    match e {
        strata_land::Error::Lake(l) => Error::Lake(l),
        other => Error::Land(other),
    }
}
