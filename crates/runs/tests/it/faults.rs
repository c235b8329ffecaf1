//! Fault enumeration: every store operation a verb makes is, in turn, made to fail, once before
//! it takes effect and once after (it lands and the caller is told it failed). After each fault
//! the lake is settled the way an operator would (recover, then run or approve again) and must
//! hold exactly what an uninterrupted run publishes:
//!
//! - every current version verifies (sizes and sha256 of every file);
//! - the published files are byte-identical to the uninterrupted run's;
//! - no object is orphaned (staged files, version records and chunks no pointer entry names,
//!   raw batch files without their manifest, locks);
//! - no run log has two entries with one number, and no run is left UNKNOWN.
//!
//! This replaces luck with enumeration: every n of every kind is taken. Recovery is enumerated
//! from a few half-committed starting points (every one with `STRATA_STRESS=1`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use futures::TryStreamExt;
use object_store::memory::InMemory;
use object_store::{ObjectStore, ObjectStoreExt};
use strata_medallion::pipeline::Pipeline;
use strata_medallion::stages::RunOptions;
use strata_publish::faults::{Fault, FaultyStore, Op};
use strata_publish::locks::Clock;
use strata_publish::{Lake, RunContext};
use strata_runs::driver::{approve, reject, run_pipeline, RunSummary};
use strata_runs::run_state::RunState;
use strata_runs::{log as runs, recover};

fn stress() -> bool {
    std::env::var("STRATA_STRESS").is_ok_and(|v| v == "1")
}

fn at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 21, 3, 0, 0).unwrap()
}

fn now() -> DateTime<Utc> {
    Utc::now()
}

/// A day later: every lock a faulted attempt left has expired, as it would once its process
/// is gone (the test process itself never dies).
fn a_day_later() -> DateTime<Utc> {
    Utc::now() + chrono::Duration::days(1)
}

/// Later still: the locks a faulted recovery (which ran a day later) left have expired too.
fn two_days_later() -> DateTime<Utc> {
    Utc::now() + chrono::Duration::days(2)
}

/// `strata recover` over the whole lake, as recovery `id` with the wall clock `clock`.
async fn recover_all(
    lake: &Lake,
    id: &str,
    clock: Clock,
) -> strata_runs::Result<recover::RecoveryReport> {
    recover::recover(lake, None, &ctx(id), clock, strata_publish::locks::DEFAULT_LEASE).await
}

/// What the faulted attempt's process would leave once it exits: the locks it could not
/// release name a process that is gone (this test process lives on, and a live process on this
/// host keeps its locks whatever their lease says).
async fn its_process_died(lake: &Lake) {
    let store = lake.store().clone();
    let locks: Vec<object_store::path::Path> = store
        .list(Some(&"_strata/locks".into()))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .unwrap();
    for path in locks.into_iter().filter(|p| p.as_ref().ends_with(".json")) {
        let bytes = store.get(&path).await.unwrap().bytes().await.unwrap();
        let mut info: strata_publish::locks::LockInfo = serde_json::from_slice(&bytes).unwrap();
        info.pid = u32::MAX - 1;
        info.pid_start = None;
        store.put(&path, serde_json::to_vec(&info).unwrap().into()).await.unwrap();
    }
}

/// The example pipeline, copied into a temporary directory, optionally with the
/// `amount_positive` rule (which order 1004 fails) at `severity`.
fn shop(severity: Option<&str>) -> (tempfile::TempDir, Pipeline) {
    fn copy(src: &Path, dst: &Path) {
        std::fs::create_dir_all(dst).unwrap();
        for e in std::fs::read_dir(src).unwrap() {
            let e = e.unwrap();
            if e.file_name() == "lake" {
                continue;
            }
            let to = dst.join(e.file_name());
            if e.path().is_dir() {
                copy(&e.path(), &to);
            } else {
                std::fs::copy(e.path(), to).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/shop");
    copy(&src, dir.path());
    let toml = dir.path().join("strata.toml");
    if let Some(severity) = severity {
        let text = std::fs::read_to_string(&toml).unwrap().replace(
            r#"{ name = "amount_positive", range = { column = "amount", min = 0 } }"#,
            &format!(
                r#"{{ name = "amount_positive", range = {{ column = "amount", min = 0 }}, severity = "{severity}" }}"#
            ),
        );
        assert!(text.contains(severity));
        std::fs::write(&toml, text).unwrap();
    }
    let pipeline = Pipeline::load(&toml).unwrap();
    (dir, pipeline)
}

fn options(clock: Clock) -> RunOptions {
    RunOptions {
        window: None,
        only: Vec::new(),
        memory_limit: 256 << 20,
        target_partitions: 1,
        force: false,
        adopt: Vec::new(),
        refresh_references: false,
        lease: std::time::Duration::from_secs(120),
        clock: Some(clock),
        backfill: Default::default(),
    }
}

fn ctx(id: &str) -> RunContext {
    RunContext::new(id, at()).unwrap()
}

async fn run(lake: &Lake, p: &Pipeline, id: &str, clock: Clock) -> strata_runs::Result<RunSummary> {
    run_pipeline(lake, p, &options(clock), &ctx(id), &mut |_| {}).await
}

fn fresh() -> (Arc<FaultyStore>, Lake) {
    let store = FaultyStore::new(Arc::new(InMemory::new()));
    let lake = Lake::from_store(store.clone(), "memory://");
    (store, lake)
}

/// Per dataset, per partition of its current version: the sha256 of each file.
type Published = BTreeMap<String, BTreeMap<String, Vec<String>>>;

async fn published(lake: &Lake) -> Published {
    let mut out = Published::new();
    for name in lake.datasets().await.unwrap() {
        let record = lake.dataset(&name).unwrap().current().await.unwrap();
        let parts = record
            .partitions
            .iter()
            .map(|p| (p.key.clone(), p.files.iter().map(|f| f.sha256.clone()).collect()))
            .collect();
        out.insert(name, parts);
    }
    out
}

/// Everything that must hold after a fault was settled; `what` names the case in failures.
async fn assert_sound(lake: &Lake, what: &str) {
    let store = lake.store().clone();
    let all: Vec<String> =
        store.list(None).map_ok(|m| m.location.to_string()).try_collect().await.unwrap();
    let mut referenced = BTreeSet::new();
    for name in lake.datasets().await.unwrap() {
        let ds = lake.dataset(&name).unwrap();
        let report = ds.verify(None).await.unwrap();
        assert!(
            report.problems.is_empty(),
            "{what}: {name} does not verify: {:?}",
            report.problems
        );
        for v in ds.versions().await.unwrap() {
            let v = v.brief.version;
            let record = ds.version(v).await.unwrap();
            referenced.insert(strata_publish::layout::version_path(&name, v).to_string());
            referenced.extend(record.files().map(|f| f.path.clone()));
            referenced.extend(record.chunks.iter().map(|c| c.path.clone()));
        }
    }
    // Failed runs whose checkpoints a rerun may still reuse own their staged files.
    let open = runs::open_runs(lake).await.unwrap();
    for m in &open {
        assert_eq!(m.state, RunState::Failed, "{what}: run {} is left {}", m.run_id, m.state);
        referenced.extend(m.checkpoints.iter().flat_map(|c| c.files().map(str::to_string)));
    }
    let manifests: BTreeSet<String> = all
        .iter()
        .filter(|p| p.starts_with("_raw/") && p.ends_with("/_batch.json"))
        .map(|p| p.trim_end_matches("_batch.json").to_string())
        .collect();
    let orphans: Vec<&String> = all
        .iter()
        .filter(|p| {
            if p.contains("/run_id=") || p.contains("/_strata/versions/") {
                !referenced.contains(*p)
            } else if p.starts_with("_strata/locks/") {
                true
            } else if p.starts_with("_raw/") && p.contains("/batch=") {
                !manifests.iter().any(|b| p.starts_with(b.as_str()))
            } else {
                false
            }
        })
        .collect();
    assert!(orphans.is_empty(), "{what}: orphans {orphans:?}");
    for m in runs::list_runs(lake).await.unwrap() {
        let log = runs::run_log(lake, &m.run_id).await.unwrap();
        let numbers: Vec<u32> = log.iter().map(|e| e.entry).collect();
        assert_eq!(numbers, (1..=log.len() as u32).collect::<Vec<_>>(), "{what}: {}", m.run_id);
        assert_ne!(m.state, RunState::Unknown, "{what}: run {} is UNKNOWN", m.run_id);
    }
}

/// The faults to inject for a job that made `counts` operations of each kind.
fn faults(counts: &BTreeMap<Op, u64>) -> Vec<Fault> {
    let mut out = Vec::new();
    for (&op, &n) in counts {
        for nth in 1..=n {
            for lands in [false, true] {
                if lands && matches!(op, Op::List | Op::Read) {
                    continue; // a read that lands is a read that failed
                }
                out.push(Fault { op, nth, lands });
            }
        }
    }
    out
}

fn counts(store: &FaultyStore) -> BTreeMap<Op, u64> {
    Op::ALL.into_iter().map(|op| (op, store.count(op))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_at_any_store_operation_of_a_run_is_settled_by_recovery_and_a_rerun() {
    let (_dir, p) = shop(None);
    // The uninterrupted run, counted.
    let (store, lake) = fresh();
    let done = run(&lake, &p, "r1", now).await.unwrap();
    assert_eq!(done.state, RunState::Published);
    let baseline = published(&lake).await;
    assert_sound(&lake, "uninterrupted").await;
    let plan = faults(&counts(&store));
    eprintln!("a run makes {:?}; {} faults to inject", counts(&store), plan.len());
    assert!(plan.len() > 50, "the run made too few operations to mean anything: {plan:?}");
    let mut fired = 0;
    for fault in plan {
        let (store, lake) = fresh();
        store.arm(fault);
        let first = run(&lake, &p, "r1", now).await;
        let hit = store.fired();
        store.disarm();
        its_process_died(&lake).await;
        let what =
            format!("{fault:?} ({hit:?}, first attempt {:?})", first.as_ref().map(|s| s.state));
        if hit.is_some() {
            fired += 1;
        }
        recover_all(&lake, "recovery", a_day_later)
            .await
            .unwrap_or_else(|e| panic!("{what}: recovery failed: {e}"));
        let again = run(&lake, &p, "r2", a_day_later)
            .await
            .unwrap_or_else(|e| panic!("{what}: the rerun failed: {e}"));
        assert_eq!(again.state, RunState::Published, "{what}");
        assert_eq!(published(&lake).await, baseline, "{what}: published data differs");
        assert_sound(&lake, &what).await;
    }
    assert!(fired > 50, "faults fired {fired} times");
}

/// A held run (MANUAL_REVIEW), its approval and its rejection under every fault: an approval
/// ends PUBLISHED with the uninterrupted data and a rejection FAILED with nothing published and
/// nothing left, never anything in between; one that failed before deciding the run (recovery
/// returns an interrupted approval to review) can simply be repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_during_approve_or_reject_leaves_the_run_decided_or_undecided_never_broken() {
    let (_dir, p) = shop(Some("MANUAL_REVIEW"));
    let (_, reference) = fresh();
    assert_eq!(run(&reference, &p, "held", now).await.unwrap().state, RunState::AwaitingReview);
    approve(&reference, "held", at(), std::time::Duration::from_secs(120), now, None)
        .await
        .unwrap();
    let baseline = published(&reference).await;

    for verb in ["approve", "reject"] {
        // Count the verb's operations once, without a fault.
        let (store, lake) = fresh();
        run(&lake, &p, "held", now).await.unwrap();
        store.disarm();
        its_process_died(&lake).await;
        decide(verb, &lake, now).await.unwrap();
        let plan = faults(&counts(&store));
        for fault in plan {
            let (store, lake) = fresh();
            run(&lake, &p, "held", now).await.unwrap();
            store.arm(fault);
            let first = decide(verb, &lake, now).await;
            let hit = store.fired();
            store.disarm();
            its_process_died(&lake).await;
            its_process_died(&lake).await;
            let what = format!(
                "{verb} {fault:?} ({hit:?}, first attempt {:?})",
                first.as_ref().err().map(|e| e.to_string())
            );
            // Settle as an operator would: recover; if the run is still held, decide again.
            recover_all(&lake, "recovery", a_day_later)
                .await
                .unwrap_or_else(|e| panic!("{what}: recovery failed: {e}"));
            let state = runs::latest_entry(&lake, "held").await.unwrap().unwrap().state;
            if state == RunState::AwaitingReview {
                decide(verb, &lake, a_day_later)
                    .await
                    .unwrap_or_else(|e| panic!("{what}: again: {e}"));
            }
            let state = runs::latest_entry(&lake, "held").await.unwrap().unwrap().state;
            match state {
                RunState::Published => {
                    assert_eq!(published(&lake).await, baseline, "{what}: published data differs")
                }
                RunState::Failed => {
                    assert!(lake.datasets().await.unwrap().is_empty(), "{what}: published")
                }
                other => panic!("{what}: the run is {other}"),
            }
            // An approval that stopped before deciding the run returns it to review, so
            // approving again publishes it; a rejection always ends it.
            let decided = if verb == "reject" { RunState::Failed } else { RunState::Published };
            assert_eq!(state, decided, "{what}");
            assert_sound(&lake, &what).await;
        }
    }
}

async fn decide(verb: &str, lake: &Lake, clock: Clock) -> strata_runs::Result<()> {
    if verb == "approve" {
        approve(lake, "held", at(), std::time::Duration::from_secs(120), clock, None)
            .await
            .map(|_| ())
    } else {
        reject(lake, "held", at(), clock, std::time::Duration::from_secs(120), None)
            .await
            .map(|_| ())
    }
}

/// A rollback under every fault: the dataset's current version is the old or the new one,
/// whole, and its history has no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_during_rollback_leaves_one_whole_version_current() {
    let (_dir, p) = shop(None);
    let setup = || async {
        let (store, lake) = fresh();
        run(&lake, &p, "r1", now).await.unwrap();
        let mut o = options(now);
        o.force = true;
        run_pipeline(&lake, &p, &o, &ctx("r2"), &mut |_| {}).await.unwrap();
        store.disarm();
        its_process_died(&lake).await;
        (store, lake)
    };
    let (store, lake) = setup().await;
    lake.dataset("orders").unwrap().rollback(1, None, &ctx("undo")).await.unwrap();
    let plan = faults(&counts(&store));
    for fault in plan {
        let (store, lake) = setup().await;
        store.arm(fault);
        let first = lake.dataset("orders").unwrap().rollback(1, None, &ctx("undo")).await;
        let hit = store.fired();
        store.disarm();
        its_process_died(&lake).await;
        let what =
            format!("{fault:?} ({hit:?}, {:?})", first.as_ref().err().map(|e| e.to_string()));
        let ds = lake.dataset("orders").unwrap();
        let current = ds.head().await.unwrap().unwrap().to;
        assert!(current == 1 || current == 2, "{what}: current {current}");
        // Repeating the rollback finishes it.
        ds.rollback(1, None, &ctx("undo2")).await.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(ds.head().await.unwrap().unwrap().to, 1, "{what}");
        ds.history().await.unwrap_or_else(|e| panic!("{what}: history: {e}"));
        assert_sound(&lake, &what).await;
    }
}

/// Recovery itself under every fault: a run that failed half-way through its flips (its second
/// flip refused by the store) is recovered with a fault at each operation of the recovery, then
/// recovered again and rerun.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_during_recovery_is_settled_by_recovering_again() {
    let (_dir, p) = shop(None);
    let (_, reference) = fresh();
    run(&reference, &p, "r1", now).await.unwrap();
    let baseline = published(&reference).await;
    // A run left COMMITTING or UNKNOWN with some datasets flipped is the starting point: any
    // write fault of a clean run that leaves it so (searched from the last write back).
    let (store, lake) = fresh();
    run(&lake, &p, "r1", now).await.unwrap();
    let writes = store.count(Op::Write);
    let mut starts = 0;
    for nth in (1..=writes).rev() {
        let (store, lake) = fresh();
        store.arm(Fault { op: Op::Write, nth, lands: false });
        let _ = run(&lake, &p, "r1", now).await;
        store.disarm();
        its_process_died(&lake).await;
        let state = runs::latest_entry(&lake, "r1").await.unwrap().map(|m| m.state);
        if !matches!(state, Some(RunState::Committing | RunState::Unknown)) {
            continue;
        }
        starts += 1;
        // Count recovery's operations on this lake, then enumerate faults over them.
        let snapshot = copy_of(&lake).await;
        let (count_store, count_lake) = snapshot_lake(&snapshot).await;
        recover_all(&count_lake, "recovery", a_day_later).await.unwrap();
        let plan = faults(&counts(&count_store));
        for fault in plan {
            let (store, lake) = snapshot_lake(&snapshot).await;
            store.arm(fault);
            let first = recover_all(&lake, "recovery", a_day_later).await;
            let hit = store.fired();
            store.disarm();
            its_process_died(&lake).await;
            its_process_died(&lake).await;
            let what = format!(
                "write #{nth} failed, then recovery {fault:?} ({hit:?}, {:?})",
                first.as_ref().err().map(|e| e.to_string())
            );
            recover_all(&lake, "recovery2", two_days_later)
                .await
                .unwrap_or_else(|e| panic!("{what}: recovering again failed: {e}"));
            let again = run(&lake, &p, "r2", two_days_later)
                .await
                .unwrap_or_else(|e| panic!("{what}: the rerun failed: {e}"));
            assert_eq!(again.state, RunState::Published, "{what}");
            assert_eq!(published(&lake).await, baseline, "{what}: published data differs");
            assert_sound(&lake, &what).await;
        }
        if starts >= 2 && !stress() {
            break;
        }
    }
    assert!(starts > 0, "no fault left a run half-committed");
}

/// Every object of a lake, to start several lakes from one state.
async fn copy_of(lake: &Lake) -> Vec<(object_store::path::Path, bytes::Bytes)> {
    let store = lake.store().clone();
    let paths: Vec<object_store::path::Path> =
        store.list(None).map_ok(|m| m.location).try_collect().await.unwrap();
    let mut out = Vec::new();
    for p in paths {
        let bytes = store.get(&p).await.unwrap().bytes().await.unwrap();
        out.push((p, bytes));
    }
    out
}

async fn snapshot_lake(
    objects: &[(object_store::path::Path, bytes::Bytes)],
) -> (Arc<FaultyStore>, Lake) {
    let inner = Arc::new(InMemory::new());
    for (p, b) in objects {
        inner.put(p, b.clone().into()).await.unwrap();
    }
    let store = FaultyStore::new(inner);
    let lake = Lake::from_store(store.clone(), "memory://");
    (store, lake)
}

/// `strata publish` (a writer's staged Parquet, then the flip) under every fault: the dataset
/// holds the old version or the new one, whole, and a failed publish leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_during_publish_leaves_the_old_or_the_new_version_and_no_leftovers() {
    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    let schema = Arc::new(Schema::new(vec![
        Field::new("day", DataType::Utf8, false),
        Field::new("amount", DataType::Int64, false),
    ]));
    let batch = |amount: i64| {
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["2026-01-01", "2026-01-02", "2026-01-03"])),
                Arc::new(Int64Array::from(vec![amount, amount + 1, amount + 2])),
            ],
        )
        .unwrap()
    };
    let publish = |lake: Lake, id: &'static str, amount: i64| {
        let (schema, batch) = (schema.clone(), batch(amount));
        async move {
            let ds = lake.dataset("orders").unwrap();
            let options = strata_publish::WriterOptions {
                partition_by: vec!["day".into()],
                ..Default::default()
            };
            // As `strata publish` does: a staging that fails is discarded.
            let mut writer = ds.writer(&ctx(id), schema, options)?;
            let staged = match writer.write(&batch).await {
                Ok(()) => writer.finish().await,
                Err(e) => Err(e),
            };
            match staged {
                Ok(staged) => ds.publish(staged, &Default::default(), &ctx(id)).await,
                Err(e) => {
                    ds.discard(id, 0).await;
                    Err(e)
                }
            }
        }
    };
    let setup = || async {
        let (store, lake) = fresh();
        publish(lake.clone(), "p1", 10).await.unwrap();
        store.disarm();
        its_process_died(&lake).await;
        (store, lake)
    };
    let (store, lake) = setup().await;
    publish(lake.clone(), "p2", 20).await.unwrap();
    let new = published(&lake).await;
    let plan = faults(&counts(&store));
    let (_, old_lake) = setup().await;
    let old = published(&old_lake).await;
    for fault in plan {
        let (store, lake) = setup().await;
        store.arm(fault);
        let first = publish(lake.clone(), "p2", 20).await;
        let hit = store.fired();
        store.disarm();
        its_process_died(&lake).await;
        let what =
            format!("{fault:?} ({hit:?}, {:?})", first.as_ref().err().map(|e| e.to_string()));
        let now = published(&lake).await;
        match &first {
            Ok(_) => assert_eq!(now, new, "{what}"),
            Err(_) => assert!(now == old || now == new, "{what}: neither version: {now:?}"),
        }
        if now == old {
            // The operator publishes again.
            publish(lake.clone(), "p3", 20).await.unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(published(&lake).await, new, "{what}");
        }
        assert_sound(&lake, &what).await;
    }
}
