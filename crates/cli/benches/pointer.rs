//! Benchmark: pointer operations at 1,000 versions.
//!
//! Builds a local lake whose `orders` dataset has `STRATA_BENCH_VERSIONS` (default 1,000)
//! published versions, each replacing one of 30 daily partitions copy-on-write, then measures:
//!
//! - `rollback`: one pointer flip, through the library and through the `strata` binary;
//! - `versions`: listing every version, through the library and through the binary.
//!
//! Prints the median and the spread of repeated runs. Run with `cargo bench -p strata-cli`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use chrono::{TimeZone, Utc};
use strata_publish::{Lake, OpenMode, PublishOptions, RunContext, WriterOptions};

fn median(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

fn report(name: &str, samples: Vec<Duration>) {
    let n = samples.len();
    let (min, med, max) = median(samples);
    println!(
        "{name:<44} median {:>8.2} ms   min {:>8.2} ms   max {:>8.2} ms   ({n} runs)",
        med.as_secs_f64() * 1e3,
        min.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a listing; this harness has nothing to list.
    }
    let versions: u64 =
        std::env::var("STRATA_BENCH_VERSIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let runs: usize =
        std::env::var("STRATA_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(25);
    let dir = tempfile::tempdir().expect("tempdir");
    let lake_path = dir.path().join("lake");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let lake = Lake::open(lake_path.to_str().expect("utf-8"), OpenMode::Create).expect("lake");
    let ds = lake.dataset("orders").expect("dataset");
    let schema = Arc::new(Schema::new(vec![
        Field::new("order_id", DataType::Int64, false),
        Field::new("order_date", DataType::Utf8, false),
        Field::new("amount", DataType::Int64, false),
    ]));
    let setup = Instant::now();
    rt.block_on(async {
        for v in 1..=versions {
            let day = format!("2026-01-{:02}", v % 30 + 1);
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from(vec![v as i64; 100])),
                    Arc::new(StringArray::from(vec![day.as_str(); 100])),
                    Arc::new(Int64Array::from((0..100).collect::<Vec<i64>>())),
                ],
            )
            .expect("batch");
            let ctx = RunContext::new(
                format!("run-{v}"),
                Utc.timestamp_opt(1_767_225_600 + v as i64, 0).unwrap(),
            )
            .expect("ctx");
            let opts =
                WriterOptions { partition_by: vec!["order_date".into()], ..Default::default() };
            let mut w = ds.writer(&ctx, schema.clone(), opts).expect("writer");
            w.write(&batch).await.expect("write");
            ds.publish(w.finish().await.expect("finish"), &PublishOptions::default(), &ctx)
                .await
                .expect("publish");
        }
    });
    println!(
        "setup: {versions} versions of `orders` (30 daily partitions, copy-on-write) in {:.1} s",
        setup.elapsed().as_secs_f64()
    );

    let mut lib_rollback = Vec::new();
    let mut lib_versions = Vec::new();
    rt.block_on(async {
        for i in 0..runs {
            let to = if i % 2 == 0 { versions - 1 } else { versions };
            let ctx = RunContext::new(
                format!("rb-{i}"),
                Utc.timestamp_opt(1_800_000_000 + i as i64, 0).unwrap(),
            )
            .expect("ctx");
            let t = Instant::now();
            ds.rollback(to, None, &ctx).await.expect("rollback");
            lib_rollback.push(t.elapsed());
            let t = Instant::now();
            let listed = ds.versions().await.expect("versions");
            lib_versions.push(t.elapsed());
            assert_eq!(listed.len() as u64, versions);
        }
    });
    report(&format!("library: rollback at {versions} versions"), lib_rollback);
    report(&format!("library: versions at {versions} versions"), lib_versions);

    let bin = env!("CARGO_BIN_EXE_strata");
    let run = |args: &[&str]| {
        let t = Instant::now();
        let out = std::process::Command::new(bin)
            .arg("--lake")
            .arg(&lake_path)
            .args(args)
            .output()
            .expect("run strata");
        let took = t.elapsed();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        took
    };
    let mut cli_rollback = Vec::new();
    let mut cli_versions = Vec::new();
    for i in 0..runs {
        let to = if i % 2 == 0 { versions - 1 } else { versions };
        cli_rollback.push(run(&["rollback", "orders", "--to", &to.to_string()]));
        cli_versions.push(run(&["versions", "orders"]));
    }
    report(&format!("strata rollback (process) at {versions} versions"), cli_rollback);
    report(&format!("strata versions (process) at {versions} versions"), cli_versions);
    let baseline: Vec<Duration> = (0..runs).map(|_| run(&["--version"])).collect();
    report("strata --version (process start only)", baseline);
}
