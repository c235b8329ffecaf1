//! Run manifests: an append-only, create-if-absent log per run, moved only by the state machine.

use chrono::{TimeZone, Utc};
use object_store::ObjectStoreExt;
use strata_publish::{Lake, OpenMode};
use strata_runs::log::{
    close, list_runs, open_runs, run_log, InputBatch, RunLog, RunManifest, RunParams,
    StagedCheckpoint, OPEN_DIR,
};
use strata_runs::run_state::RunState;

fn at(minute: u32) -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, minute, 0).unwrap()
}

#[tokio::test]
async fn a_run_log_records_every_state_and_refuses_invalid_moves() {
    let lake = Lake::open("memory://", OpenMode::Create).unwrap();
    let m = RunManifest::planned(
        "run-a",
        "window",
        RunParams { only: vec!["orders".into()], ..Default::default() },
    );
    let mut log = RunLog::begin(&lake, m.clone(), at(0)).await.unwrap();
    // The same run id cannot be begun twice.
    let err = RunLog::begin(&lake, m, at(1)).await.unwrap_err();
    assert!(err.to_string().contains("already recorded"), "{err}");
    log.advance(RunState::InputLocked, at(1), |m| {
        m.input_boundary.push(InputBatch {
            source: "orders".into(),
            batch_id: "abc".into(),
            rows: 9,
        })
    })
    .await
    .unwrap();
    // Skipping a state is refused and writes nothing.
    let err = log.advance(RunState::Published, at(2), |_| {}).await.unwrap_err();
    assert!(err.to_string().contains("cannot go from INPUT_LOCKED to PUBLISHED"), "{err}");
    for (st, minute) in
        [(RunState::Running, 2), (RunState::Validating, 3), (RunState::Committing, 4)]
    {
        log.advance(st, at(minute), |_| {}).await.unwrap();
    }
    log.advance(RunState::Published, at(5), |m| {
        m.published.insert("orders".into(), 3);
    })
    .await
    .unwrap();
    let entries = run_log(&lake, "run-a").await.unwrap();
    let states: Vec<RunState> = entries.iter().map(|e| e.state).collect();
    use RunState::*;
    assert_eq!(states, vec![Planned, InputLocked, Running, Validating, Committing, Published]);
    let last = entries.last().unwrap();
    assert_eq!(last.entry, 6);
    assert_eq!(last.input_boundary[0].batch_id, "abc", "carried forward");
    assert_eq!(last.published["orders"], 3);
    assert_eq!(last.times["COMMITTING"], at(4));
    assert!(lake
        .store()
        .head(&object_store::path::Path::from("_strata/runs/run-a/0006.json"))
        .await
        .is_ok());

    // A second run that fails; listing shows each run's latest state.
    let mut b =
        RunLog::begin(&lake, RunManifest::planned("run-b", "full", RunParams::default()), at(9))
            .await
            .unwrap();
    b.advance(RunState::Failed, at(10), |m| m.error = Some("disk full".into())).await.unwrap();
    let runs = list_runs(&lake).await.unwrap();
    let summary: Vec<(&str, RunState)> =
        runs.iter().map(|r| (r.run_id.as_str(), r.state)).collect();
    assert_eq!(summary, vec![("run-a", Published), ("run-b", Failed)]);
    assert!(run_log(&lake, "nope").await.unwrap_err().to_string().contains("strata runs"));
}

fn ids(runs: &[RunManifest]) -> Vec<(&str, RunState)> {
    runs.iter().map(|r| (r.run_id.as_str(), r.state)).collect()
}

async fn markers(lake: &Lake) -> Vec<String> {
    let mut names: Vec<String> = lake
        .list_paths(&object_store::path::Path::from(OPEN_DIR))
        .await
        .unwrap()
        .iter()
        .filter_map(|p| p.filename().map(str::to_string))
        .collect();
    names.sort();
    names
}

fn checkpoint(run_id: &str) -> StagedCheckpoint {
    StagedCheckpoint {
        stage_key: "k".into(),
        dataset: "orders".into(),
        run_id: run_id.into(),
        partition_by: vec![],
        schema: arrow::datatypes::Schema::empty(),
        partitions: vec![],
        rows: 0,
        stats: Default::default(),
        keys: None,
        report: None,
        scope: None,
    }
}

#[tokio::test]
async fn the_register_of_open_runs_holds_exactly_the_runs_that_need_something() {
    use RunState::*;
    let lake = Lake::open("memory://", OpenMode::Create).unwrap();
    let begin = |id: &str| {
        RunLog::begin(&lake, RunManifest::planned(id, "full", RunParams::default()), at(0))
    };
    let mut done = begin("r1-done").await.unwrap();
    let mut failed = begin("r2-failed").await.unwrap();
    let mut kept = begin("r3-kept").await.unwrap();
    let mut crashed = begin("r4-crashed").await.unwrap();
    assert_eq!(open_runs(&lake).await.unwrap().len(), 4, "registered from their first entry");
    for st in [InputLocked, Running, Validating, Committing, Published] {
        done.advance(st, at(1), |_| {}).await.unwrap();
    }
    failed.advance(Failed, at(1), |_| {}).await.unwrap();
    kept.advance(Failed, at(1), |m| m.checkpoints.push(checkpoint("r3-kept"))).await.unwrap();
    crashed.advance(InputLocked, at(1), |_| {}).await.unwrap();
    // A finished run leaves the register as it finishes; a failed run keeping checkpoints and a
    // run that stopped midway stay.
    assert_eq!(markers(&lake).await, ["_all-registered", "r3-kept", "r4-crashed"]);
    assert_eq!(
        ids(&open_runs(&lake).await.unwrap()),
        [("r3-kept", Failed), ("r4-crashed", InputLocked)]
    );
    // Once its checkpoints are released, the failed run is closed.
    close(&lake, "r3-kept").await;
    assert_eq!(ids(&open_runs(&lake).await.unwrap()), [("r4-crashed", InputLocked)]);
    // A marker that outlived its run (a crash before it was removed) is dropped when read; a
    // marker whose run has no entry yet (being begun) is left alone.
    for id in ["r1-done", "r5-beginning"] {
        let p = object_store::path::Path::from(format!("{OPEN_DIR}/{id}"));
        lake.store().put(&p, object_store::PutPayload::new()).await.unwrap();
    }
    assert_eq!(ids(&open_runs(&lake).await.unwrap()), [("r4-crashed", InputLocked)]);
    assert_eq!(markers(&lake).await, ["_all-registered", "r4-crashed", "r5-beginning"]);
    // `list_runs` still lists every run.
    assert_eq!(list_runs(&lake).await.unwrap().len(), 4);
}

#[tokio::test]
async fn a_lake_from_before_the_register_is_registered_once() {
    use RunState::*;
    let lake = Lake::open("memory://", OpenMode::Create).unwrap();
    for (id, to) in [("r1", Failed), ("r2", InputLocked), ("r3", Failed)] {
        let mut log =
            RunLog::begin(&lake, RunManifest::planned(id, "full", RunParams::default()), at(0))
                .await
                .unwrap();
        log.advance(to, at(1), |m| {
            if m.run_id == "r3" {
                m.checkpoints.push(checkpoint("r3"));
            }
        })
        .await
        .unwrap();
    }
    // The lake as an older strata left it: logs, no register.
    for m in markers(&lake).await {
        let p = object_store::path::Path::from(format!("{OPEN_DIR}/{m}"));
        lake.store().delete(&p).await.unwrap();
    }
    assert_eq!(ids(&open_runs(&lake).await.unwrap()), [("r2", InputLocked), ("r3", Failed)]);
    assert_eq!(markers(&lake).await, ["_all-registered", "r2", "r3"]);
}

/// Case 1 of issue 21: two processes that read the same latest entry of a held run (an approval
/// and a rejection) both try to write the next one. Entry names carry the number alone, so
/// exactly one create succeeds, whatever state each records; the other learns it lost before it
/// has done anything.
#[tokio::test]
async fn two_processes_moving_one_run_cannot_both_write_an_entry() {
    use RunState::*;
    let lake = Lake::open("memory://", OpenMode::Create).unwrap();
    let mut log =
        RunLog::begin(&lake, RunManifest::planned("held", "full", RunParams::default()), at(0))
            .await
            .unwrap();
    for st in [InputLocked, Running, Validating, AwaitingReview] {
        log.advance(st, at(1), |_| {}).await.unwrap();
    }
    for round in 0..20u32 {
        let latest = run_log(&lake, "held").await.unwrap().pop().unwrap();
        let mut approve = RunLog::resume(&lake, latest.clone());
        let mut reject = RunLog::resume(&lake, latest);
        // Raced on a multi-threaded runtime, in both orders.
        let (a, r) = if round % 2 == 0 {
            tokio::join!(
                approve.record(at(2), |m| m.error = Some("approve".into())),
                reject.record(at(2), |m| m.error = Some("reject".into()))
            )
        } else {
            let r = reject.record(at(2), |m| m.error = Some("reject".into())).await;
            (approve.record(at(2), |m| m.error = Some("approve".into())).await, r)
        };
        assert!(a.is_ok() != r.is_ok(), "exactly one wins: {a:?} {r:?}");
        let lost = a.err().or(r.err()).unwrap();
        assert!(matches!(lost, strata_runs::Error::RunMoved { .. }), "{lost}");
        assert_eq!(lost.class(), strata_publish::ErrorClass::Busy);
    }
    // A state change races the same way: COMMITTING against FAILED.
    let latest = run_log(&lake, "held").await.unwrap().pop().unwrap();
    let mut approve = RunLog::resume(&lake, latest.clone());
    let mut reject = RunLog::resume(&lake, latest);
    let (a, r) = tokio::join!(
        approve.advance(Committing, at(3), |_| {}),
        reject.advance(Failed, at(3), |_| {})
    );
    assert!(a.is_ok() != r.is_ok(), "exactly one wins: {a:?} {r:?}");
    let entries = run_log(&lake, "held").await.unwrap();
    let numbers: Vec<u32> = entries.iter().map(|m| m.entry).collect();
    assert_eq!(numbers, (1..=entries.len() as u32).collect::<Vec<_>>(), "one entry per number");
}

/// Lakes written by earlier versions name entries `<n>-<STATE>.json`: they read by number, a
/// new entry continues the numbering, and two entries with one number (which that naming let
/// two processes write) are a corrupt log that names both files.
#[tokio::test]
async fn a_log_in_the_old_naming_is_read_by_number() {
    let lake = Lake::open("memory://", OpenMode::Create).unwrap();
    let mut m = RunManifest::planned("old", "full", RunParams::default());
    let put = |name: &str, m: &RunManifest| {
        let path = object_store::path::Path::from(format!("_strata/runs/old/{name}"));
        let body = serde_json::to_vec(m).unwrap();
        let store = lake.store().clone();
        async move { store.put(&path, body.into()).await.unwrap() }
    };
    put("0001-PLANNED.json", &m).await;
    for (n, st) in [(2, RunState::InputLocked), (9, RunState::Running), (10, RunState::Validating)]
    {
        m.entry = n;
        m.state = st;
        put(&format!("{n:04}-{st}.json"), &m).await;
    }
    let entries = run_log(&lake, "old").await.unwrap();
    assert_eq!(entries.iter().map(|m| m.entry).collect::<Vec<_>>(), [1, 2, 9, 10]);
    let mut log = RunLog::resume(&lake, entries.last().unwrap().clone());
    log.advance(RunState::Failed, at(1), |_| {}).await.unwrap();
    let latest = strata_runs::log::latest_entry(&lake, "old").await.unwrap().unwrap();
    assert_eq!((latest.entry, latest.state), (11, RunState::Failed));
    // The doubled entry an older strata could write.
    m.entry = 11;
    m.state = RunState::Committing;
    put("0011-COMMITTING.json", &m).await;
    let err = run_log(&lake, "old").await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("0011-COMMITTING.json") && text.contains("0011.json"), "{text}");
    assert!(strata_runs::log::latest_entry(&lake, "old").await.is_err());
}

#[test]
fn entry_names_parse_by_number() {
    use strata_runs::log::parse_entry_name;
    assert_eq!(parse_entry_name("0011.json"), Some(11));
    assert_eq!(parse_entry_name("0011-COMMITTING.json"), Some(11));
    assert_eq!(parse_entry_name("12345.json"), Some(12345));
    for bad in ["x.json", ".json", "0011", "-FAILED.json", "00a1.json"] {
        assert_eq!(parse_entry_name(bad), None, "{bad}");
    }
}
