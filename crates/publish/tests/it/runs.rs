//! Run manifests: an append-only, create-if-absent log per run, moved only by the state machine.

use chrono::{TimeZone, Utc};
use object_store::ObjectStoreExt;
use strata_publish::run_state::RunState;
use strata_publish::runs::{list_runs, run_log, InputBatch, RunLog, RunManifest};
use strata_publish::{Lake, OpenMode};

fn at(minute: u32) -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, minute, 0).unwrap()
}

#[tokio::test]
async fn a_run_log_records_every_state_and_refuses_invalid_moves() {
    let lake = Lake::open("memory://", OpenMode::Create).unwrap();
    let m = RunManifest::planned("run-a", "window", serde_json::json!({"date": "2026-01-03"}));
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
        .head(&object_store::path::Path::from("_strata/runs/run-a/0006-PUBLISHED.json"))
        .await
        .is_ok());

    // A second run that fails; listing shows each run's latest state.
    let mut b =
        RunLog::begin(&lake, RunManifest::planned("run-b", "full", serde_json::Value::Null), at(9))
            .await
            .unwrap();
    b.advance(RunState::Failed, at(10), |m| m.error = Some("disk full".into())).await.unwrap();
    let runs = list_runs(&lake).await.unwrap();
    let summary: Vec<(&str, RunState)> =
        runs.iter().map(|r| (r.run_id.as_str(), r.state)).collect();
    assert_eq!(summary, vec![("run-a", Published), ("run-b", Failed)]);
    assert!(run_log(&lake, "nope").await.unwrap_err().to_string().contains("strata runs"));
}
