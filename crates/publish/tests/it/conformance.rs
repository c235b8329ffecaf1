//! The publish-protocol conformance suite. Every function takes a fresh, empty lake and must pass
//! on every backend (`backends.rs` calls them for memory, local disk and S3).

#![allow(deprecated)] // ParquetObjectReader: see crates/publish/src/input.rs

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use chrono::{TimeZone, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use parquet::arrow::async_reader::ParquetObjectReader;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use strata_publish::deletion::Holder;
use strata_publish::{
    layout, Dataset, Error, FlipKind, Lake, PublishOptions, Published, RecordHead, RollbackOutcome,
    RunContext, Staged, VersionRecord, WriterOptions,
};

/// A record with all its partitions.
async fn full(ds: &Dataset, record: &RecordHead) -> VersionRecord {
    ds.full(record).await.unwrap()
}

fn ctx(run: &str, minute: u32) -> RunContext {
    RunContext::new(run, Utc.with_ymd_and_hms(2026, 3, 1, 12, minute, 0).unwrap()).unwrap()
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("day", DataType::Utf8, true),
        Field::new("amount", DataType::Int64, false),
    ]))
}

/// Rows `(id, day, amount)`.
fn batch(rows: &[(i64, &str, i64)]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())),
            Arc::new(StringArray::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
            Arc::new(Int64Array::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())),
        ],
    )
    .unwrap()
}

/// `n` rows per day for each day, ids starting at `first_id`, all with `amount`.
fn days(
    days: &[&'static str],
    n: i64,
    first_id: i64,
    amount: i64,
) -> Vec<(i64, &'static str, i64)> {
    let mut rows = Vec::new();
    let mut id = first_id;
    for d in days {
        for _ in 0..n {
            rows.push((id, *d, amount));
            id += 1;
        }
    }
    rows
}

fn by_day() -> WriterOptions {
    WriterOptions { partition_by: vec!["day".into()], ..Default::default() }
}

async fn publish_rows(
    ds: &Dataset,
    ctx: &RunContext,
    rows: &[(i64, &str, i64)],
    writer: WriterOptions,
    options: PublishOptions,
) -> Result<Published, Error> {
    let mut w = ds.writer(ctx, schema(), writer)?;
    w.write(&batch(rows)).await?;
    ds.publish(w.finish().await?, &options, ctx).await
}

/// Stages 3 rows of `day` (ids from `first_id`, all with `amount`) for run `run`, by day, and
/// returns the run's context with what was staged.
async fn stage_day(
    ds: &Dataset,
    run: &str,
    minute: u32,
    day: &'static str,
    first_id: i64,
    amount: i64,
) -> (RunContext, Staged) {
    let c = ctx(run, minute);
    let mut w = ds.writer(&c, schema(), by_day()).unwrap();
    w.write(&batch(&days(&[day], 3, first_id, amount))).await.unwrap();
    let staged = w.finish().await.unwrap();
    (c, staged)
}

async fn publish_days(
    ds: &Dataset,
    run: &str,
    minute: u32,
    rows: &[(i64, &str, i64)],
) -> Published {
    publish_rows(ds, &ctx(run, minute), rows, by_day(), PublishOptions::default()).await.unwrap()
}

/// Every row of a version, read through the store exactly as a reader would, as
/// `(id, day, amount)` sorted by id.
async fn read_rows(lake: &Lake, record: &VersionRecord) -> Vec<(i64, Option<String>, i64)> {
    let mut rows = Vec::new();
    for file in record.files() {
        let reader = ParquetObjectReader::new(lake.store().clone(), Path::from(file.path.as_str()))
            .with_file_size(file.size);
        let stream = ParquetRecordBatchStreamBuilder::new(reader).await.unwrap().build().unwrap();
        let batches: Vec<RecordBatch> = stream.try_collect().await.unwrap();
        let mut n = 0;
        for b in batches {
            let id = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            let day = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
            let amount = b.column(2).as_any().downcast_ref::<Int64Array>().unwrap();
            for i in 0..b.num_rows() {
                let d = (!day.is_null(i)).then(|| day.value(i).to_string());
                rows.push((id.value(i), d, amount.value(i)));
                n += 1;
            }
        }
        assert_eq!(n, file.rows, "row count recorded for {}", file.path);
    }
    rows.sort();
    rows
}

async fn list_all(lake: &Lake) -> Vec<String> {
    let mut all: Vec<String> =
        lake.store().list(None).map_ok(|m| m.location.to_string()).try_collect().await.unwrap();
    all.sort();
    all
}

pub async fn first_publish_creates_version_one(lake: Lake) {
    let ds = lake.dataset("orders").unwrap();
    assert!(ds.head().await.unwrap().is_none());
    assert!(lake.datasets().await.unwrap().is_empty());
    let p = publish_days(&ds, "r1", 0, &days(&["2026-01-01", "2026-01-02"], 3, 1, 7)).await;
    assert_eq!(p.record.version, 1);
    assert_eq!(p.record.parent, None);
    assert_eq!(p.flip.seq, 1);
    assert_eq!(p.record.summary.rows, 6);
    assert_eq!(p.record.summary.partitions, 2);
    assert_eq!(p.record.partition_by, vec!["day".to_string()]);
    for f in full(&ds, &p.record).await.files() {
        assert!(f.path.starts_with("orders/run_id=r1/day=2026-01-0"), "{}", f.path);
        assert_eq!(f.sha256.len(), 64);
    }
    assert_eq!(lake.datasets().await.unwrap(), vec!["orders".to_string()]);
    let current = ds.current().await.unwrap();
    assert_eq!(current, full(&ds, &p.record).await);
    let rows = read_rows(&lake, &current).await;
    assert_eq!(rows.len(), 6);
    assert_eq!(rows[0], (1, Some("2026-01-01".into()), 7));
    // The JSON the protocol promises is on the store, at the documented paths.
    let flip_json = lake.store().get(&layout::pointer_path("orders", 1)).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&flip_json.bytes().await.unwrap()).unwrap();
    assert_eq!(v["format"], "strata.flip.v1");
    assert_eq!(v["to"], 1);
    assert_eq!(v["kind"], "publish");
}

pub async fn readers_see_old_or_new_never_a_mix(lake: Lake) {
    let ds = lake.dataset("orders").unwrap();
    let all_days = ["2026-01-01", "2026-01-02", "2026-01-03"];
    publish_days(&ds, "run-1", 0, &days(&all_days, 20, 1, 1)).await;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (lake, ds, stop, reads) = (lake.clone(), ds.clone(), stop.clone(), reads.clone());
        tokio::spawn(async move {
            let mut seen = std::collections::BTreeSet::new();
            while !stop.load(Ordering::SeqCst) {
                let record = ds.current().await.unwrap();
                let rows = read_rows(&lake, &record).await;
                assert_eq!(rows.len() as u64, record.summary.rows);
                assert_eq!(rows.len(), 60, "every version has 60 rows");
                // Each partition's rows carry the marker of the run that wrote that partition.
                for p in &record.partitions {
                    let marker: i64 = p.run_id.trim_start_matches("run-").parse().unwrap();
                    let day = p.values[0].clone();
                    let in_part: Vec<_> = rows.iter().filter(|r| r.1 == day).collect();
                    assert_eq!(in_part.len(), 20, "partition {} whole", p.key);
                    assert!(in_part.iter().all(|r| r.2 == marker), "partition {} mixed", p.key);
                }
                seen.insert(record.version);
                reads.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
            seen
        })
    };
    // Let the reader finish at least one read between publishes (bounded wait).
    let wait_for_a_read = || async {
        let before = reads.load(Ordering::SeqCst);
        for _ in 0..2000 {
            if reads.load(Ordering::SeqCst) > before {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!("the reader made no progress in 10 s");
    };
    wait_for_a_read().await;
    for k in 2..=6i64 {
        let day = all_days[(k % 3) as usize];
        publish_days(&ds, &format!("run-{k}"), k as u32, &days(&[day], 20, k * 100, k)).await;
        wait_for_a_read().await;
    }
    stop.store(true, Ordering::SeqCst);
    let seen = reader.await.unwrap();
    assert!(seen.len() >= 2, "the reader saw versions {seen:?} while they were published");
    assert_eq!(ds.current().await.unwrap().version, 6);
}

pub async fn staged_files_are_invisible_until_flip(lake: Lake) {
    let ds = lake.dataset("orders").unwrap();
    let v1 = publish_days(&ds, "r1", 0, &days(&["2026-01-01"], 2, 1, 1)).await;
    let c2 = ctx("r2", 1);
    let mut w = ds.writer(&c2, schema(), by_day()).unwrap();
    w.write(&batch(&days(&["2026-01-01"], 5, 10, 2))).await.unwrap();
    let staged = w.finish().await.unwrap();
    assert!(list_all(&lake).await.iter().any(|p| p.starts_with("orders/run_id=r2/")));
    assert_eq!(
        ds.current().await.unwrap(),
        full(&ds, &v1.record).await,
        "staged files change nothing"
    );
    let prepared = ds.prepare(staged, &PublishOptions::default(), &c2).await.unwrap();
    assert_eq!(
        ds.current().await.unwrap(),
        full(&ds, &v1.record).await,
        "a version record changes nothing"
    );
    assert_eq!(ds.versions().await.unwrap().len(), 1);
    let published = ds.flip(prepared, &c2).await.unwrap();
    let whole = full(&ds, &published.record).await;
    assert_eq!(ds.current().await.unwrap(), whole);
    assert_eq!(read_rows(&lake, &whole).await.len(), 5);
}

pub async fn copy_on_write_reuses_untouched_partitions(lake: Lake) {
    let ds = lake.dataset("orders").unwrap();
    let v1 =
        publish_days(&ds, "r1", 0, &days(&["2026-01-01", "2026-01-02", "2026-01-03"], 4, 1, 1))
            .await;
    let v2 = publish_days(&ds, "r2", 1, &days(&["2026-01-02"], 9, 100, 2)).await;
    assert_eq!(v2.record.parent, Some(1));
    let files = |r: &VersionRecord| -> BTreeMap<String, Vec<String>> {
        r.partitions
            .iter()
            .map(|p| (p.key.clone(), p.files.iter().map(|f| f.path.clone()).collect()))
            .collect()
    };
    let (v1, v2r) = (full(&ds, &v1.record).await, full(&ds, &v2.record).await);
    let (f1, f2) = (files(&v1), files(&v2r));
    assert_eq!(f1["day=2026-01-01"], f2["day=2026-01-01"], "reused by reference");
    assert_eq!(f1["day=2026-01-03"], f2["day=2026-01-03"], "reused by reference");
    assert_ne!(f1["day=2026-01-02"], f2["day=2026-01-02"]);
    assert!(f2["day=2026-01-02"][0].starts_with("orders/run_id=r2/day=2026-01-02/"));
    // The second run wrote only the partition it replaced (and the chunk of the record that
    // lists it): nothing was copied.
    let r2_files: Vec<String> =
        list_all(&lake).await.into_iter().filter(|p| p.starts_with("orders/run_id=r2/")).collect();
    let chunks: Vec<String> = v2r.chunks.iter().map(|c| c.path.clone()).collect();
    let mut expected: Vec<String> = chunks.iter().chain(&f2["day=2026-01-02"]).cloned().collect();
    expected.sort();
    assert_eq!(chunks, ["orders/run_id=r2/_strata/partitions-00000000000000000002-00000.json"]);
    assert_eq!(r2_files, expected);
    assert_eq!(v2.record.summary.partitions_written, 1);
    assert_eq!(v2.record.summary.partitions_reused, 2);
    assert_eq!(v2.record.summary.rows, 4 + 9 + 4);
    let reused = v2r.partitions.iter().find(|p| p.key == "day=2026-01-01").unwrap();
    assert_eq!((reused.run_id.as_str(), reused.written_in), ("r1", 1));
    assert_eq!(read_rows(&lake, &v2r).await.len(), 17);
    // The old version is untouched and still readable.
    assert_eq!(read_rows(&lake, &ds.version(1).await.unwrap()).await.len(), 12);
}

pub async fn replace_all_must_be_explicit(lake: Lake) {
    let ds = lake.dataset("orders").unwrap();
    publish_days(&ds, "r1", 0, &days(&["2026-01-01", "2026-01-02"], 2, 1, 1)).await;
    let v2 = publish_rows(
        &ds,
        &ctx("r2", 1),
        &days(&["2026-01-05"], 3, 50, 2),
        by_day(),
        PublishOptions { replace_all: true, reason: Some("restate".into()), ..Default::default() },
    )
    .await
    .unwrap();
    assert_eq!(v2.record.summary.partitions, 1);
    assert_eq!(full(&ds, &v2.record).await.partitions.len(), 1);
    assert_eq!(v2.record.summary.partitions_dropped, 2);
    assert_eq!(v2.record.reason.as_deref(), Some("restate"));
    // Changing the partitioning without --replace-all is refused.
    let err = publish_rows(
        &ds,
        &ctx("r3", 2),
        &days(&["x"], 1, 1, 1),
        WriterOptions::default(),
        PublishOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(err.is_user_error() && err.to_string().contains("--replace-all"), "{err}");
    // An empty publish is refused unless replace-all.
    let w = ds.writer(&ctx("r4", 3), schema(), by_day()).unwrap();
    let err = ds
        .publish(w.finish().await.unwrap(), &PublishOptions::default(), &ctx("r4", 3))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nothing to publish"), "{err}");
    assert_eq!(ds.current().await.unwrap().version, 2);
}

pub async fn eight_concurrent_publishers_one_winner(lake: Lake) {
    let ds = lake.dataset("orders").unwrap();
    publish_days(&ds, "base", 0, &days(&["2026-01-01", "2026-01-02"], 5, 1, 0)).await;
    // All eight prepare on the same parent (racing for version numbers), then all flip at once.
    let prepared_barrier = Arc::new(tokio::sync::Barrier::new(8));
    let flip_barrier = Arc::new(tokio::sync::Barrier::new(8));
    let mut tasks = Vec::new();
    for k in 1..=8i64 {
        let (ds, prepared_barrier, flip_barrier) =
            (ds.clone(), prepared_barrier.clone(), flip_barrier.clone());
        tasks.push(tokio::spawn(async move {
            let c = ctx(&format!("w{k}"), k as u32);
            let mut w = ds.writer(&c, schema(), by_day()).unwrap();
            w.write(&batch(&days(&["2026-01-02"], 3, 1000 * k, k))).await.unwrap();
            let staged = w.finish().await.unwrap();
            prepared_barrier.wait().await;
            let prepared = ds.prepare(staged, &PublishOptions::default(), &c).await.unwrap();
            assert_eq!(prepared.record.parent, Some(1));
            assert_eq!(prepared.record.publish_seq, 2);
            flip_barrier.wait().await;
            (k, ds.flip(prepared, &c).await)
        }));
    }
    let mut winners = Vec::new();
    let mut losers = 0;
    for t in tasks {
        let (k, result) = t.await.unwrap();
        match result {
            Ok(p) => winners.push((k, p)),
            Err(Error::Conflict { found_seq, .. }) => {
                losers += 1;
                assert_eq!(found_seq, 2, "losers see the winner's entry");
            }
            Err(e) => panic!("writer {k}: unexpected error {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one winner");
    assert_eq!(losers, 7);
    let (k, won) = &winners[0];
    let current = ds.current().await.unwrap();
    assert_eq!(current, full(&ds, &won.record).await, "the winner's update is the visible one");
    let rows = read_rows(&lake, &current).await;
    assert_eq!(rows.len(), 5 + 3);
    assert_eq!(rows.iter().filter(|r| r.2 == *k).count(), 3, "winner's rows visible");
    assert!(rows.iter().all(|r| r.2 == 0 || r.2 == *k), "no loser row visible");
    let history = ds.history().await.unwrap();
    assert_eq!(history.len(), 2);
    let versions = ds.versions().await.unwrap();
    assert_eq!(versions.len(), 2, "losers' versions are not listed");
    // Losers left nothing behind: no staged files, no version records besides the winners'.
    let leftovers: Vec<String> = list_all(&lake)
        .await
        .into_iter()
        .filter(|p| p.contains("run_id=w") && !p.contains(&format!("run_id=w{k}/")))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

pub async fn rollback_is_a_pointer_flip(lake: Lake) {
    let ds = lake.dataset("orders").unwrap();
    publish_days(&ds, "r1", 0, &days(&["2026-01-01"], 2, 1, 1)).await;
    let v2 = publish_days(&ds, "r2", 1, &days(&["2026-01-01"], 3, 10, 2)).await;
    let before = list_all(&lake).await;
    let outcome = ds.rollback(1, Some("bad numbers".into()), &ctx("rb1", 2)).await.unwrap();
    let RollbackOutcome::Flipped(flip) = outcome else { panic!("expected a flip") };
    assert_eq!((flip.from, flip.to, flip.kind), (Some(2), 1, FlipKind::Rollback));
    assert_eq!(ds.current().await.unwrap().version, 1);
    assert_eq!(read_rows(&lake, &ds.current().await.unwrap()).await.len(), 2);
    // Exactly one object was added: the pointer entry. No data file was copied.
    let after = list_all(&lake).await;
    let added: Vec<_> = after.iter().filter(|p| !before.contains(p)).collect();
    assert_eq!(added, vec![&layout::pointer_path("orders", 3).to_string()]);
    // Rolling back to the current version writes nothing.
    assert!(matches!(
        ds.rollback(1, None, &ctx("rb2", 3)).await.unwrap(),
        RollbackOutcome::AlreadyCurrent(_)
    ));
    assert_eq!(ds.history().await.unwrap().len(), 3);
    // Forward again to 2.
    ds.rollback(2, None, &ctx("rb3", 4)).await.unwrap();
    assert_eq!(ds.current().await.unwrap(), full(&ds, &v2.record).await);
    // Unknown versions are refused.
    let err = ds.rollback(99, None, &ctx("rb4", 5)).await.unwrap_err();
    assert!(matches!(err, Error::VersionNotFound { version: 99, .. }), "{err}");
    // A publish after a rollback builds on the rolled-back version and takes a new number.
    ds.rollback(1, None, &ctx("rb5", 6)).await.unwrap();
    let v3 = publish_days(&ds, "r3", 7, &days(&["2026-01-02"], 1, 50, 3)).await;
    assert_eq!((v3.record.version, v3.record.parent), (3, Some(1)));
    assert_eq!(v3.record.summary.rows, 2 + 1);
}

pub async fn history_records_every_flip(lake: Lake) {
    let ds = lake.dataset("orders").unwrap();
    let v1 = publish_days(&ds, "r1", 0, &days(&["2026-01-01"], 2, 1, 1)).await;
    publish_rows(
        &ds,
        &ctx("r2", 5),
        &days(&["2026-01-02"], 2, 5, 1),
        by_day(),
        PublishOptions { reason: Some("late file".into()), ..Default::default() },
    )
    .await
    .unwrap();
    ds.rollback(1, Some("oops".into()), &ctx("rb", 9)).await.unwrap();
    let h = ds.history().await.unwrap();
    let summary: Vec<_> = h
        .iter()
        .map(|f| {
            (
                f.seq,
                f.kind,
                f.from,
                f.to,
                f.run_id.as_str(),
                f.reason.as_deref(),
                f.at.format("%H:%M").to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, FlipKind::Publish, None, 1, "r1", None, "12:00".to_string()),
            (2, FlipKind::Publish, Some(1), 2, "r2", Some("late file"), "12:05".to_string()),
            (3, FlipKind::Rollback, Some(2), 1, "rb", Some("oops"), "12:09".to_string()),
        ]
    );
    assert_eq!(h[2].version, v1.record.brief(), "the entry describes the version it points at");
    let versions = ds.versions().await.unwrap();
    assert_eq!(
        versions.iter().map(|v| (v.brief.version, v.current)).collect::<Vec<_>>(),
        vec![(1, true), (2, false)]
    );
}

pub async fn verify_catches_changed_byte_and_missing_file(lake: Lake) {
    let ds = lake.dataset("orders").unwrap();
    let v = publish_days(&ds, "r1", 0, &days(&["2026-01-01", "2026-01-02", "2026-01-03"], 3, 1, 1))
        .await;
    let report = ds.verify(None).await.unwrap();
    assert_eq!(report.files_checked, 3);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let files: Vec<_> = full(&ds, &v.record).await.files().cloned().collect();
    // Flip one byte in the middle of the first file: same size, different hash.
    let p0 = Path::from(files[0].path.as_str());
    let mut bytes = lake.store().get(&p0).await.unwrap().bytes().await.unwrap().to_vec();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    lake.store().put(&p0, PutPayload::from(bytes)).await.unwrap();
    // Remove the second file.
    lake.store().delete(&Path::from(files[1].path.as_str())).await.unwrap();
    let report = ds.verify(Some(1)).await.unwrap();
    let found: Vec<_> = report.problems.iter().map(|p| (p.path.as_str(), p.problem)).collect();
    assert_eq!(
        found,
        vec![(files[0].path.as_str(), "sha256"), (files[1].path.as_str(), "missing")]
    );
}

pub async fn crash_between_stage_and_flip_leaves_current_untouched(lake: Lake) {
    let ds = lake.dataset("orders").unwrap();
    let v1 = publish_days(&ds, "r1", 0, &days(&["2026-01-01", "2026-01-02"], 2, 1, 1)).await;
    let history = ds.history().await.unwrap();
    // A run stages files and writes its version record, then "dies" before the flip.
    let c = ctx("crashed", 1);
    let mut w = ds.writer(&c, schema(), by_day()).unwrap();
    w.write(&batch(&days(&["2026-01-02"], 7, 100, 9))).await.unwrap();
    let prepared =
        ds.prepare(w.finish().await.unwrap(), &PublishOptions::default(), &c).await.unwrap();
    let orphan = prepared.record.version;
    drop(prepared);
    assert_eq!(ds.current().await.unwrap(), full(&ds, &v1.record).await);
    assert_eq!(ds.history().await.unwrap(), history);
    assert_eq!(read_rows(&lake, &ds.current().await.unwrap()).await.len(), 4);
    let err = ds.version(orphan).await.unwrap_err();
    assert!(matches!(err, Error::VersionNotFound { .. }), "{err}");
    assert!(
        err.to_string().contains("never") || err.to_string().contains("lost a conflict"),
        "{err}"
    );
    let err = ds.rollback(orphan, None, &ctx("rb", 2)).await.unwrap_err();
    assert!(matches!(err, Error::VersionNotFound { .. }), "{err}");
    // The next run publishes normally, past the orphan's number.
    let v = publish_days(&ds, "r3", 3, &days(&["2026-01-02"], 1, 500, 3)).await;
    assert!(v.record.version > orphan);
    assert_eq!(v.record.parent, Some(1));
    assert_eq!(ds.versions().await.unwrap().len(), 2);
}

pub async fn retried_flip_that_landed_is_not_a_conflict(lake: Lake) {
    // The "unknown commit outcome" case: the first create of the pointer entry landed but its
    // answer was lost, so the writer sends it again and is told it already exists. Reading back
    // an identical entry must count as success, not as a conflict.
    let ds = lake.dataset("orders").unwrap();
    publish_days(&ds, "r1", 0, &days(&["2026-01-01"], 1, 1, 1)).await;
    let c = ctx("r2", 1);
    let mut w = ds.writer(&c, schema(), by_day()).unwrap();
    w.write(&batch(&days(&["2026-01-01"], 2, 10, 2))).await.unwrap();
    let prepared =
        ds.prepare(w.finish().await.unwrap(), &PublishOptions::default(), &c).await.unwrap();
    let first = ds.flip(prepared.clone(), &c).await.unwrap();
    let again = ds.flip(prepared, &c).await.unwrap();
    assert_eq!(first.flip, again.flip);
    assert_eq!(ds.history().await.unwrap().len(), 2);
    assert_eq!(ds.current().await.unwrap().version, first.record.version);
}

pub async fn corrupt_or_truncated_json_is_reported(lake: Lake) {
    let ds = lake.dataset("orders").unwrap();
    publish_days(&ds, "r1", 0, &days(&["2026-01-01"], 1, 1, 1)).await;
    publish_days(&ds, "r2", 1, &days(&["2026-01-02"], 1, 2, 1)).await;
    // Truncate the current pointer entry.
    let p = layout::pointer_path("orders", 2);
    let bytes = lake.store().get(&p).await.unwrap().bytes().await.unwrap();
    lake.store().put(&p, PutPayload::from(bytes.slice(..bytes.len() / 2))).await.unwrap();
    let err = ds.current().await.unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }) && err.is_user_error(), "{err}");
    assert!(err.to_string().contains("00000000000000000002.json"), "{err}");
    let err = ds.rollback(1, None, &ctx("rb", 2)).await.unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    // Restore it, then break a version record instead.
    lake.store().put(&p, PutPayload::from(bytes)).await.unwrap();
    let v = layout::version_path("orders", 1);
    lake.store()
        .put(&v, PutPayload::from_static(b"{\"format\": \"strata.version.v1\""))
        .await
        .unwrap();
    let err = ds.version(1).await.unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert_eq!(ds.current().await.unwrap().version, 2, "other versions stay readable");
    // A missing pointer entry in the middle of the log is corruption too.
    lake.store().delete(&layout::pointer_path("orders", 1)).await.unwrap();
    let err = ds.history().await.unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
}

/// A version record lists its partitions in chunks: a publish rewrites only the chunks that hold
/// the partitions it writes, and names the others again, unread and uncopied.
pub async fn a_publish_rewrites_only_the_chunks_that_hold_its_partitions(lake: Lake) {
    let ds = lake.dataset("orders").unwrap();
    let n = strata_publish::protocol::CHUNK_PARTITIONS + 6;
    let names: Vec<&'static str> = (0..n)
        .map(|i| {
            let day = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap()
                + chrono::Duration::days(i as i64);
            &*Box::leak(day.to_string().into_boxed_str())
        })
        .collect();
    let v1 = publish_days(&ds, "r1", 0, &days(&names, 1, 1, 1)).await;
    assert_eq!(v1.record.chunks.len(), 2);
    assert_eq!(v1.record.chunks[0].keys.len(), strata_publish::protocol::CHUNK_PARTITIONS);
    // One day in the second chunk: the first is named again.
    let v2 = publish_days(&ds, "r2", 1, &days(&[names[n - 1]], 3, 1000, 2)).await;
    assert_eq!(v2.record.chunks[0], v1.record.chunks[0]);
    assert_ne!(v2.record.chunks[1].path, v1.record.chunks[1].path);
    assert!(v2.record.chunks[1].path.starts_with("orders/run_id=r2/"));
    assert_eq!(v2.record.summary.rows, n as u64 - 1 + 3);
    assert_eq!(
        (v2.record.summary.partitions_written, v2.record.summary.partitions_reused),
        (1, n as u64 - 1)
    );
    // Read by another process: the whole version, and a selection that reads one chunk.
    let other = Lake::from_store(lake.store().clone(), "other");
    let ods = other.dataset("orders").unwrap();
    let whole = ods.current().await.unwrap();
    assert_eq!(whole.partitions.len(), n);
    assert_eq!(read_rows(&other, &whole).await.len(), n - 1 + 3);
    let draft = ods.draft_of_current().await.unwrap().unwrap();
    let last = format!("day={}", names[n - 1]);
    let some = ods.select(&draft, &|k: &str| k == last).await.unwrap();
    assert_eq!(some.partitions.len(), 1);
    assert_eq!(some.partitions[0].rows, 3);
    // A chunk that lost a partition is corruption, reported as such.
    let path = Path::from(v2.record.chunks[0].path.as_str());
    let stored = lake.store().get(&path).await.unwrap().bytes().await.unwrap();
    let mut chunk: serde_json::Value = serde_json::from_slice(&stored).unwrap();
    chunk["partitions"].as_array_mut().unwrap().pop();
    lake.store().put(&path, PutPayload::from(serde_json::to_vec(&chunk).unwrap())).await.unwrap();
    let fresh = Lake::from_store(lake.store().clone(), "fresh");
    let err = fresh.dataset("orders").unwrap().current().await.unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
}

/// A record of the pre-release format (`strata.version.v1`, partitions inline instead of in
/// chunks) is not read: it is reported as corrupt, naming the file and its format, and nothing is
/// published on top of it.
pub async fn records_of_the_pre_release_format_are_refused(lake: Lake) {
    let ds = lake.dataset("orders").unwrap();
    let v1 = publish_days(&ds, "r1", 0, &days(&["2026-01-01", "2026-01-02"], 2, 1, 1)).await;
    let whole = full(&ds, &v1.record).await;
    let path = layout::version_path("orders", 1);
    let mut old = serde_json::to_value(&whole.head).unwrap();
    old["format"] = "strata.version.v1".into();
    old.as_object_mut().unwrap().remove("chunks");
    old["partitions"] = serde_json::to_value(&whole.partitions).unwrap();
    lake.store().put(&path, PutPayload::from(serde_json::to_vec(&old).unwrap())).await.unwrap();
    let other = Lake::from_store(lake.store().clone(), "other");
    let ods = other.dataset("orders").unwrap();
    let err = ods.current().await.unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }) && err.is_user_error(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("00000000000000000001.json") && text.contains("strata.version.v1"),
        "{text}"
    );
    let rows = days(&["2026-01-03"], 1, 10, 1);
    let err = publish_rows(&ods, &ctx("r2", 1), &rows, by_day(), PublishOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert_eq!(ods.history().await.unwrap().len(), 1, "nothing was published");
}

/// Version records are parsed once per process and cached by entity tag: a record changed in
/// the store behind the cache's back is read again, never served stale.
pub async fn records_read_again_are_current(lake: Lake) {
    let ds = lake.dataset("orders").unwrap();
    publish_days(&ds, "r1", 0, &days(&["2026-01-01", "2026-01-02"], 2, 1, 1)).await;
    let first = ds.current().await.unwrap();
    assert_eq!(ds.current().await.unwrap(), first, "a second read is the same record");
    assert_eq!(lake.dataset("orders").unwrap().version(1).await.unwrap(), first);
    // Rewrite the record in place (same version, other content), as another process could.
    let path = layout::version_path("orders", 1);
    let stored = lake.store().get(&path).await.unwrap().bytes().await.unwrap();
    let mut changed: serde_json::Value = serde_json::from_slice(&stored).unwrap();
    changed["summary"]["rows"] = (first.summary.rows + 1).into();
    let body = serde_json::to_vec(&changed).unwrap();
    lake.store().put(&path, PutPayload::from(body)).await.unwrap();
    assert_eq!(ds.current().await.unwrap().summary.rows, first.summary.rows + 1);
    // Deleted: gone, not remembered.
    lake.store().delete(&path).await.unwrap();
    let err = ds.current().await.unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
}

/// A previewed record is written as previewed (with the evidence attached since), and rebuilt
/// when another writer published in between: a stale preview never hides their partitions.
pub async fn previewed_records_are_reused_only_while_current(lake: Lake) {
    let ds = lake.dataset("orders").unwrap();
    publish_days(&ds, "r1", 0, &days(&["2026-01-01", "2026-01-02"], 2, 1, 1)).await;
    let stage = |run, minute, day, first_id| stage_day(&ds, run, minute, day, first_id, 5);
    let options = PublishOptions::default();
    // Nothing published in between: the preview is the record, plus evidence.
    let (c2, mut staged) = stage("r2", 1, "2026-01-02", 100).await;
    let preview = ds.preview(&staged, &options, &c2).await.unwrap();
    staged.evidence = Some(strata_publish::model::Evidence {
        run_id: "r2".into(),
        checks: vec![strata_publish::model::Check::new("orders", "rows", true, "5 = 5".into())],
        findings: Vec::new(),
        warnings: Vec::new(),
        approved: None,
    });
    let prepared = ds.prepare_previewed(staged.clone(), &options, preview.clone(), &c2).await;
    let prepared = prepared.unwrap();
    assert_eq!(
        prepared.record,
        RecordHead { evidence: staged.evidence.clone(), ..preview.record.as_ref().clone() },
        "written as previewed"
    );
    let v2 = ds.commit(prepared, &c2).await.unwrap();
    assert_eq!((v2.record.version, v2.record.parent), (2, Some(1)));
    assert_eq!(ds.current().await.unwrap().evidence, staged.evidence);
    // Another writer publishes a new day between this run's preview and its prepare.
    let (c3, staged) = stage("r3", 2, "2026-01-03", 200).await;
    let stale = ds.preview(&staged, &options, &c3).await.unwrap();
    publish_days(&ds, "r4", 3, &days(&["2026-01-04"], 1, 300, 9)).await;
    let prepared = ds.prepare_previewed(staged, &options, stale.clone(), &c3).await.unwrap();
    assert_ne!(prepared.record, *stale.record);
    assert_eq!((prepared.record.version, prepared.record.parent), (4, Some(3)));
    let whole = full(&ds, &prepared.record).await;
    let keys: Vec<&str> = whole.partitions.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["day=2026-01-01", "day=2026-01-02", "day=2026-01-03", "day=2026-01-04"]);
    let v4 = ds.commit(prepared, &c3).await.unwrap();
    let ids: Vec<i64> =
        read_rows(&lake, &full(&ds, &v4.record).await).await.iter().map(|r| r.0).collect();
    assert_eq!(ids, [1, 2, 100, 101, 102, 200, 201, 202, 300]);
    // A preview of other staged files is not taken for this run's record.
    let (c5, staged) = stage("r5", 4, "2026-01-05", 400).await;
    let (_, other) = stage("r5", 4, "2026-01-06", 500).await;
    let wrong = ds.preview(&other, &options, &c5).await.unwrap();
    let prepared = ds.prepare_previewed(staged, &options, wrong, &c5).await.unwrap();
    let whole = full(&ds, &prepared.record).await;
    let keys: Vec<&str> = whole.partitions.iter().map(|p| p.key.as_str()).collect();
    assert!(keys.contains(&"day=2026-01-05") && !keys.contains(&"day=2026-01-06"), "{keys:?}");
}

pub async fn schema_conflict_is_refused_and_nothing_changes(lake: Lake) {
    let ds = lake.dataset("orders").unwrap();
    publish_days(&ds, "r1", 0, &days(&["2026-01-01"], 2, 1, 1)).await;
    let before = list_all(&lake).await;
    let other = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("day", DataType::Utf8, true),
        Field::new("amount", DataType::Utf8, false),
    ]));
    let err =
        ds.check_compatible(&other, &["day".to_string()], false, "new.parquet").await.unwrap_err();
    assert!(matches!(err, Error::SchemaConflict { .. }) && err.is_user_error(), "{err}");
    assert!(err.to_string().contains("\"amount\" has type Int64"), "{err}");
    // Through the writer as well: staged files are removed again, nothing is published.
    let c = ctx("r2", 1);
    let mut w = ds.writer(&c, other.clone(), by_day()).unwrap();
    let b = RecordBatch::try_new(
        other,
        vec![
            Arc::new(Int64Array::from(vec![1])),
            Arc::new(StringArray::from(vec!["2026-01-01"])),
            Arc::new(StringArray::from(vec!["x"])),
        ],
    )
    .unwrap();
    w.write(&b).await.unwrap();
    let staged = w.finish().await.unwrap();
    let err = ds.publish(staged, &PublishOptions::default(), &c).await.unwrap_err();
    assert!(matches!(err, Error::SchemaConflict { .. }), "{err}");
    ds.discard("r2", 0).await;
    assert_eq!(list_all(&lake).await, before);
}

pub async fn bad_partition_values_are_refused_and_nothing_changes(lake: Lake) {
    let ds = lake.dataset("orders").unwrap();
    publish_days(&ds, "r1", 0, &days(&["2026-01-01"], 2, 1, 1)).await;
    let before = list_all(&lake).await;
    for bad in ["../../etc", "a/b", "a\\b", "x\u{7}y", ".."] {
        let c = ctx("bad", 1);
        let mut w = ds.writer(&c, schema(), by_day()).unwrap();
        let err = w.write(&batch(&[(1, "2026-01-02", 1), (2, bad, 1)])).await.unwrap_err();
        assert!(matches!(err, Error::InvalidName { .. }) && err.is_user_error(), "{bad:?}: {err}");
        drop(w);
        ds.discard("bad", 0).await;
        assert_eq!(list_all(&lake).await, before, "{bad:?}");
    }
    for bad in ["../x", "a/b", "a\\b", "x\ny", ".."] {
        assert!(matches!(lake.dataset(bad).unwrap_err(), Error::InvalidName { .. }), "{bad:?}");
    }
    // Null partition values go to the Hive default partition.
    let c = ctx("nulls", 2);
    let mut w = ds.writer(&c, schema(), by_day()).unwrap();
    let b = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(vec![9])),
            Arc::new(StringArray::from(vec![None::<&str>])),
            Arc::new(Int64Array::from(vec![1])),
        ],
    )
    .unwrap();
    w.write(&b).await.unwrap();
    let p = ds.publish(w.finish().await.unwrap(), &PublishOptions::default(), &c).await.unwrap();
    let whole = full(&ds, &p.record).await;
    let null_part = whole.partitions.iter().find(|p| p.values == vec![None]).unwrap();
    assert_eq!(null_part.key, "day=__HIVE_DEFAULT_PARTITION__");
}

pub async fn unknown_dataset_and_version_are_reported(lake: Lake) {
    let ds = lake.dataset("nope").unwrap();
    for err in [
        ds.current().await.unwrap_err(),
        ds.history().await.unwrap_err(),
        ds.version(1).await.unwrap_err(),
        ds.rollback(1, None, &ctx("rb", 0)).await.unwrap_err(),
    ] {
        assert!(matches!(err, Error::DatasetNotFound { .. }) && err.is_user_error(), "{err}");
        assert!(err.to_string().contains("strata datasets"), "{err}");
    }
    let orders = lake.dataset("orders").unwrap();
    publish_days(&orders, "r1", 0, &days(&["2026-01-01"], 1, 1, 1)).await;
    let err = orders.version(2).await.unwrap_err();
    assert!(matches!(err, Error::VersionNotFound { version: 2, .. }), "{err}");
    assert!(orders.verify(Some(7)).await.is_err());
}

pub async fn pointer_checkpoints_are_a_faithful_cache(lake: Lake) {
    let ds = lake.dataset("orders").unwrap();
    publish_days(&ds, "r1", 0, &days(&["2026-01-01"], 1, 1, 1)).await;
    publish_days(&ds, "r2", 1, &days(&["2026-01-01"], 2, 10, 2)).await;
    for i in 0..200u64 {
        let to = if i % 2 == 0 { 1 } else { 2 };
        let c = RunContext::new(
            format!("rb{i}"),
            Utc.timestamp_opt(1_800_000_000 + i as i64, 0).unwrap(),
        )
        .unwrap();
        ds.rollback(to, None, &c).await.unwrap();
    }
    let all = list_all(&lake).await;
    let cps: Vec<&String> = all.iter().filter(|p| p.ends_with(".checkpoint.json")).collect();
    assert_eq!(cps.len(), 2, "checkpoints at 100 and 200: {cps:?}");
    let history = ds.history().await.unwrap();
    assert_eq!(history.len(), 202);
    assert!(history.iter().enumerate().all(|(i, f)| f.seq == i as u64 + 1));
    assert_eq!(ds.versions().await.unwrap().len(), 2);
    // A damaged checkpoint is passed over; a missing one too. The entries stay the truth.
    let cp200 = layout::checkpoint_path("orders", 200);
    lake.store().put(&cp200, PutPayload::from_static(b"{ truncated")).await.unwrap();
    assert_eq!(ds.history().await.unwrap(), history);
    lake.store().delete(&cp200).await.unwrap();
    lake.store().delete(&layout::checkpoint_path("orders", 100)).await.unwrap();
    assert_eq!(ds.history().await.unwrap(), history);
    assert_eq!(ds.current().await.unwrap().version, 2);
}

fn boundary(items: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
    items
        .iter()
        .map(|(d, keys)| (d.to_string(), keys.iter().map(|k| k.to_string()).collect()))
        .collect()
}

fn lease() -> std::time::Duration {
    std::time::Duration::from_secs(60)
}

async fn put_lock(lake: &Lake, path: &str, info: &strata_publish::locks::LockInfo) {
    let body = serde_json::to_vec(info).unwrap();
    lake.store().put(&Path::from(path), PutPayload::from(body)).await.unwrap();
}

fn holder(e: Error) -> String {
    match e {
        Error::Locked { holder, .. } => holder.run_id,
        other => panic!("expected Locked, got {other}"),
    }
}

pub async fn run_locks_exclude_overlaps_and_take_over_stale_ones(lake: Lake) {
    use strata_publish::locks::{acquire, sweep_stale, LockInfo};
    let now: strata_publish::locks::Clock = Utc::now;
    let a = acquire(&lake, "run-a", &boundary(&[("orders", &["d=1", "d=2"])]), lease(), now)
        .await
        .unwrap();
    // Overlapping partitions: refused, naming the holder; nothing of B is left behind.
    let err = acquire(&lake, "run-b", &boundary(&[("orders", &["d=3", "d=2"])]), lease(), now)
        .await
        .unwrap_err();
    assert_eq!(holder(err), "run-a");
    let d3 = Path::from("_strata/locks/orders/d=3.json");
    assert!(lake.get_opt(&d3).await.unwrap().is_none(), "B released what it took");
    // The whole dataset overlaps every partition of it, both ways.
    let err =
        acquire(&lake, "run-c", &boundary(&[("orders", &[])]), lease(), now).await.unwrap_err();
    assert_eq!(holder(err), "run-a");
    let d =
        acquire(&lake, "run-d", &boundary(&[("orders", &["d=3"])]), lease(), now).await.unwrap();
    a.release().await;
    let err =
        acquire(&lake, "run-e", &boundary(&[("orders", &[])]), lease(), now).await.unwrap_err();
    assert_eq!(holder(err), "run-d");
    d.release().await;
    let e = acquire(&lake, "run-e", &boundary(&[("orders", &[])]), lease(), now).await.unwrap();
    let err = acquire(&lake, "run-f", &boundary(&[("orders", &["d=1"])]), lease(), now)
        .await
        .unwrap_err();
    assert_eq!(holder(err), "run-e");
    e.release().await;
    // Another dataset never overlaps.
    let x = acquire(&lake, "run-x", &boundary(&[("other", &[])]), lease(), now).await.unwrap();
    // A lock on another host whose lease is still running is live; an expired one is stale.
    let mut ghost = LockInfo::for_this_process("ghost", Utc::now(), lease());
    ghost.host = "elsewhere".into();
    put_lock(&lake, "_strata/locks/orders/d=9.json", &ghost).await;
    let err = acquire(&lake, "run-g", &boundary(&[("orders", &["d=9"])]), lease(), now)
        .await
        .unwrap_err();
    assert_eq!(holder(err), "ghost");
    ghost.expires_at = Utc::now() - chrono::Duration::seconds(1);
    put_lock(&lake, "_strata/locks/orders/d=9.json", &ghost).await;
    let g =
        acquire(&lake, "run-g", &boundary(&[("orders", &["d=9"])]), lease(), now).await.unwrap();
    let taken: LockInfo = serde_json::from_slice(
        &lake.get_opt(&Path::from("_strata/locks/orders/d=9.json")).await.unwrap().unwrap(),
    )
    .unwrap();
    assert_eq!(taken.run_id, "run-g", "taken over");
    g.release().await;
    // A lock of a process on this host that is gone is stale at once, lease or not.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let mut dead = LockInfo::for_this_process("dead-run", Utc::now(), lease());
    dead.pid = dead_pid;
    dead.pid_start = None;
    put_lock(&lake, "_strata/locks/orders/d=5.json", &dead).await;
    let h =
        acquire(&lake, "run-h", &boundary(&[("orders", &["d=5"])]), lease(), now).await.unwrap();
    h.release().await;
    // A stale lock of the other kind is removed, not skipped, so that its holder, should it
    // resume, finds it gone: a stale partition lock under a whole-dataset run (a long backfill
    // locks whole), and a stale whole-dataset lock under a partition run.
    let mut paused = LockInfo::for_this_process("paused", Utc::now(), lease());
    paused.host = "elsewhere".into();
    paused.expires_at = Utc::now() - chrono::Duration::seconds(1);
    put_lock(&lake, "_strata/locks/orders/d=7.json", &paused).await;
    let many: Vec<String> = (0..300).map(|i| format!("d=2{i:03}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let w = acquire(&lake, "run-w", &boundary(&[("orders", many.as_slice())]), lease(), now)
        .await
        .unwrap();
    let d7 = Path::from("_strata/locks/orders/d=7.json");
    assert!(lake.get_opt(&d7).await.unwrap().is_none(), "the stale partition lock is gone");
    let whole = Path::from("_strata/locks/orders/_all.json");
    assert!(lake.get_opt(&whole).await.unwrap().is_some(), "300 partitions: locked whole");
    let listed: Vec<_> =
        lake.store().list(Some(&Path::from("_strata/locks/orders"))).try_collect().await.unwrap();
    assert_eq!(listed.len(), 1, "one lock, not 300: {listed:?}");
    w.release().await;
    put_lock(&lake, "_strata/locks/orders/_all.json", &paused).await;
    let p =
        acquire(&lake, "run-p", &boundary(&[("orders", &["d=8"])]), lease(), now).await.unwrap();
    assert!(lake.get_opt(&whole).await.unwrap().is_none(), "the stale whole lock is gone");
    p.release().await;
    // The sweep removes stale locks and keeps live ones.
    put_lock(&lake, "_strata/locks/orders/d=6.json", &dead).await;
    let removed = sweep_stale(&lake, now).await.unwrap();
    assert_eq!(removed, vec!["_strata/locks/orders/d=6.json".to_string()]);
    assert!(lake.get_opt(&Path::from("_strata/locks/other/_all.json")).await.unwrap().is_some());
    x.release().await;
    let left: Vec<_> =
        lake.store().list(Some(&Path::from("_strata/locks"))).try_collect().await.unwrap();
    assert!(left.is_empty(), "every lock released: {left:?}");
}

pub async fn commit_rebases_over_disjoint_partitions_only(lake: Lake) {
    let ds = lake.dataset("orders").unwrap();
    publish_days(&ds, "base", 0, &days(&["2026-01-01", "2026-01-02"], 2, 1, 0)).await;
    let stage = |run: &'static str, minute: u32, day: &'static str, id: i64| {
        let ds = ds.clone();
        async move {
            let (c, staged) = stage_day(&ds, run, minute, day, id, id).await;
            (ds.prepare(staged, &PublishOptions::default(), &c).await.unwrap(), c)
        }
    };
    // Three runs prepare on the same version: two write 01-03 and 01-04, one rewrites 01-01.
    let (p1, c1) = stage("r1", 1, "2026-01-03", 100).await;
    let (p2, c2) = stage("r2", 2, "2026-01-04", 200).await;
    let (p3, c3) = stage("r3", 3, "2026-01-03", 300).await;
    ds.commit(p1, &c1).await.unwrap();
    // r2 touched nothing r1 changed: rebased onto r1's version, both partitions visible.
    let second = ds.commit(p2, &c2).await.unwrap();
    assert_eq!(second.record.parent, Some(2));
    let keys: Vec<String> =
        ds.current().await.unwrap().partitions.iter().map(|p| p.key.clone()).collect();
    assert_eq!(keys, vec!["day=2026-01-01", "day=2026-01-02", "day=2026-01-03", "day=2026-01-04"]);
    // r3 writes the partition r1 changed: a conflict, and its stale record is gone.
    let stale = p3.record.version;
    let err = ds.commit(p3, &c3).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err}");
    assert!(lake.get_opt(&layout::version_path("orders", stale)).await.unwrap().is_none());
    let current = ds.current().await.unwrap();
    assert_eq!(current.summary.rows, 2 * 2 + 3 + 3);
    // Recovery's clean-up removes r3's staged files and keeps what a version names.
    let done = ds
        .discard_run("r3", Default::default(), &Default::default(), Holder::Stopped)
        .await
        .unwrap();
    assert_eq!(done.removed.len(), 1, "{done:?}");
    assert_eq!(done.kept_because, None);
    // r2's files are named by the current version: the authority keeps every one of them.
    let done = ds
        .discard_run("r2", Default::default(), &Default::default(), Holder::Stopped)
        .await
        .unwrap();
    assert!(done.removed.is_empty(), "{done:?}");
    assert!(done.kept_because.is_some());
    assert!(ds.verify(None).await.unwrap().problems.is_empty());
    assert!(
        ds.flips_by("r2", 0).await.unwrap().len() == 1
            && ds.flips_by("r3", 0).await.unwrap().is_empty()
    );
}

pub async fn adopting_checkpointed_files_verifies_and_moves_them(lake: Lake) {
    let ds = lake.dataset("orders").unwrap();
    let crashed = ctx("crashed", 1);
    let mut w = ds.writer(&crashed, schema(), by_day()).unwrap();
    w.write(&batch(&days(&["2026-01-01", "2026-01-02"], 2, 1, 5))).await.unwrap();
    let staged = w.finish().await.unwrap();
    // A rerun adopts them: checked, then moved under its own run; publishing them works.
    let rerun = ctx("rerun", 2);
    let adopted = ds.adopt(&staged, &rerun).await.unwrap().expect("adopted");
    assert!(adopted
        .partitions
        .iter()
        .flat_map(|p| &p.files)
        .all(|f| f.path.contains("run_id=rerun/")));
    ds.publish(adopted, &PublishOptions::default(), &rerun).await.unwrap();
    assert!(ds.verify(None).await.unwrap().problems.is_empty());
    assert_eq!(ds.current().await.unwrap().summary.rows, 4);
    // A checkpoint with a changed file is refused and nothing moves.
    let other = ctx("other", 3);
    let mut w = ds.writer(&other, schema(), by_day()).unwrap();
    w.write(&batch(&days(&["2026-01-03"], 2, 9, 5))).await.unwrap();
    let mut staged = w.finish().await.unwrap();
    staged.partitions[0].files[0].sha256 = "0".repeat(64);
    assert!(ds.adopt(&staged, &ctx("late", 4)).await.unwrap().is_none());
    let still = Path::from(staged.partitions[0].files[0].path.as_str());
    assert!(lake.get_opt(&still).await.unwrap().is_some());
}

/// The current pointer entry is found by probing from a hint, not by listing the log: whatever
/// the hint says (missing, garbage, too low, beyond the log), a reader finds the true head, and
/// a handle that saw an older head finds the newer one.
pub async fn the_head_is_found_from_any_hint(lake: Lake) {
    let ds = lake.dataset("orders").unwrap();
    publish_days(&ds, "r1", 0, &days(&["2026-01-01"], 2, 1, 1)).await;
    publish_days(&ds, "r2", 1, &days(&["2026-01-01"], 3, 10, 2)).await;
    for i in 0..21u64 {
        ds.rollback(1 + (i % 2), None, &ctx(&format!("rb{i}"), 2)).await.unwrap();
    }
    // A fresh handle on the same store stands for another process.
    let fresh = || Lake::from_store(lake.store().clone(), lake.url()).dataset("orders").unwrap();
    let head_seq = |ds: Dataset| async move { ds.head().await.unwrap().map(|h| h.seq) };
    assert_eq!(head_seq(fresh()).await, Some(23));
    let hint = layout::head_hint_path("orders");
    for body in [&b"{\"seq\": 500}"[..], b"{\"seq\": 7}", b"{\"seq\": 0}", b"not json"] {
        lake.store().put(&hint, PutPayload::from(body.to_vec())).await.unwrap();
        assert_eq!(head_seq(fresh()).await, Some(23), "{}", String::from_utf8_lossy(body));
    }
    lake.store().delete(&hint).await.unwrap();
    assert_eq!(head_seq(fresh()).await, Some(23), "no hint");
    // A handle that saw 23 sees the flip another handle makes.
    let stale = fresh();
    assert_eq!(head_seq(stale.clone()).await, Some(23));
    fresh().rollback(2, None, &ctx("rb-other", 3)).await.unwrap();
    assert_eq!(stale.head().await.unwrap().map(|h| (h.seq, h.to)), Some((24, 2)));
    // A dataset never published has no head, hint or not.
    assert_eq!(head_seq(lake.dataset("other").unwrap()).await, None);
    // A gap where the probe stops is corruption, not the end of the log.
    lake.store().put(&hint, PutPayload::from_static(b"{\"seq\": 11}")).await.unwrap();
    lake.store().delete(&layout::pointer_path("orders", 12)).await.unwrap();
    let err = fresh().head().await.unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("00000000000000000012.json"), "{err}");
}

/// The numbered-log primitive the pointer, the raw log and the run logs are built on: a number is
/// taken once however many writers race for it, the end is found by probing from any lower
/// bound, a missing entry before later ones is a gap, a listing orders entries by number and
/// keeps checkpoints apart, and two entries with one number (the old run-log naming) are found.
pub async fn numbered_logs_take_each_number_once_and_find_their_end(lake: Lake) {
    use strata_publish::numbered::{End, Naming, NumberedLog};
    let log = NumberedLog::new("events/_log", Naming::Exact { width: 20 });
    assert_eq!(log.last(&lake, 0).await.unwrap(), 0);
    assert_eq!(log.end(&lake, 0).await.unwrap(), End::Last(0));
    assert!(log.list(&lake).await.unwrap().entries.is_empty());
    assert_eq!(log.read(&lake, 1).await.unwrap(), None);
    // Eight writers race for each of the first 12 numbers: exactly one wins each.
    for n in 1..=12u64 {
        let racers = (0..8).map(|w| {
            let (lake, log) = (lake.clone(), log.clone());
            tokio::spawn(async move {
                let body = format!("{{\"n\": {n}, \"writer\": {w}}}\n").into_bytes();
                log.create(&lake, n, body).await.unwrap()
            })
        });
        let won: Vec<bool> =
            futures::future::join_all(racers).await.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(won.iter().filter(|w| **w).count(), 1, "entry {n}: {won:?}");
        let entry: serde_json::Value = log.read_json(&lake, n).await.unwrap().unwrap();
        assert_eq!(entry["n"], n);
        assert!(won[entry["writer"].as_u64().unwrap() as usize], "the winner's body stands");
    }
    for from in [0, 1, 5, 11, 12] {
        assert_eq!(log.last(&lake, from).await.unwrap(), 12, "from {from}");
        assert_eq!(log.end(&lake, from).await.unwrap(), End::Last(12), "from {from}");
    }
    // A checkpoint and a foreign file are not entries.
    lake.store().put(&log.checkpoint_path(10), PutPayload::from_static(b"{}")).await.unwrap();
    lake.store()
        .put(&Path::from("events/_log/notes.txt"), PutPayload::from_static(b"x"))
        .await
        .unwrap();
    let listing = log.list(&lake).await.unwrap();
    assert_eq!(listing.numbers(), (1..=12).collect::<Vec<u64>>());
    assert_eq!(listing.checkpoints, vec![10]);
    assert_eq!((listing.first_gap(), listing.doubled()), (None, None));
    // An entry missing before later ones is a gap, found by probing and by listing.
    lake.store().delete(&log.path(7)).await.unwrap();
    assert_eq!(log.end(&lake, 3).await.unwrap(), End::Gap(7));
    assert_eq!(log.end(&lake, 6).await.unwrap(), End::Gap(7));
    assert_eq!(log.list(&lake).await.unwrap().first_gap(), Some(7));
    // A log in the naming of earlier run logs: read by number, a doubled number reported.
    let runs = NumberedLog::new("_strata/runs/r1", Naming::Tagged { width: 4 });
    for name in ["0001-PLANNED.json", "0002.json", "0009-RUNNING.json", "0010.json"] {
        let p = Path::from(format!("_strata/runs/r1/{name}"));
        lake.store().put(&p, PutPayload::from_static(b"{}")).await.unwrap();
    }
    assert_eq!(runs.path(11).as_ref(), "_strata/runs/r1/0011.json");
    let listing = runs.list(&lake).await.unwrap();
    assert_eq!(listing.numbers(), vec![1, 2, 9, 10]);
    assert_eq!(listing.doubled(), None);
    assert!(!runs.create(&lake, 10, b"{}".to_vec()).await.unwrap(), "10 is taken");
    lake.store()
        .put(&Path::from("_strata/runs/r1/0010-VALIDATING.json"), PutPayload::from_static(b"{}"))
        .await
        .unwrap();
    let doubled = runs.list(&lake).await.unwrap().doubled().unwrap();
    assert_eq!(doubled.number, 10);
    let names: Vec<&str> = doubled.paths.iter().filter_map(|p| p.filename()).collect();
    assert_eq!(names, ["0010-VALIDATING.json", "0010.json"]);
    // Another run's log with a longer id that starts the same is not listed with it.
    let other = NumberedLog::new("_strata/runs/r10", Naming::Tagged { width: 4 });
    assert!(other.create(&lake, 1, b"{}".to_vec()).await.unwrap());
    assert_eq!(runs.list(&lake).await.unwrap().entries.len(), 5);
}
