//! `strata diff`: classification by a composite key with NULL parts, duplicate keys, float
//! tolerance, the fast path over unchanged partitions, thresholds and exit codes, on local disk
//! and S3.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};

use crate::harness::Env;
use crate::pipeline::write_parquet;

/// A row: key (k1, k2 — k2 may be NULL), value v, partition p.
type Row = (i64, Option<&'static str>, f64, &'static str);

fn write(env: &Env, name: &str, rows: &[Row]) -> String {
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("k1", Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0)))),
        ("k2", Arc::new(StringArray::from(rows.iter().map(|r| r.1).collect::<Vec<_>>()))),
        ("v", Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.2)))),
        ("p", Arc::new(StringArray::from(rows.iter().map(|r| Some(r.3)).collect::<Vec<_>>()))),
    ];
    let path = env.path(name);
    write_parquet(&path, columns);
    path.display().to_string()
}

const KEY: [&str; 4] = ["--key", "k1", "--key", "k2"];

fn diffing(env: &Env) {
    // Version 1: partitions p=x and p=y.
    let v1 = write(
        env,
        "v1.parquet",
        &[
            (1, None, 1.0, "x"),
            (2, Some("a"), 2.0, "x"),
            (3, Some("b"), 3.0, "y"),
            (4, None, 4.0, "y"),
        ],
    );
    env.ok(&["publish", "t", "--from", &v1, "--partition-by", "p"]);
    // Version 2 rewrites p=y only: (3,b) changes by 0.0001, (4,NULL) by 1, (5,c) is added and
    // (6,NULL) is there twice; p=x is reused as it was.
    let v2 = write(
        env,
        "v2.parquet",
        &[
            (3, Some("b"), 3.0001, "y"),
            (4, None, 5.0, "y"),
            (5, Some("c"), 5.0, "y"),
            (6, None, 6.0, "y"),
            (6, None, 6.5, "y"),
        ],
    );
    env.ok(&["publish", "t", "--from", &v2, "--partition-by", "p"]);
    let mut args = vec!["diff", "t@1", "t@2"];
    args.extend(KEY);
    args.push("--json");
    let out = env.run(&args);
    assert_eq!(out.status.code(), Some(3), "they differ: exit 3");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = &report["report"];
    assert_eq!(report["verdict"], "differs");
    // (1,NULL) and (2,a) are identical without being read; (4,NULL) matched its NULL key.
    assert_eq!(r["identical"], 2, "{r}");
    assert_eq!(r["modified"], 2, "(3,b) and (4,NULL): {r}");
    assert_eq!(r["added"], 1, "(5,c): {r}");
    assert_eq!(r["removed"], 0, "{r}");
    assert_eq!(r["duplicate_keys_b"], 1, "(6,NULL) twice: {r}");
    assert_eq!(r["duplicate_rows_b"], 2, "{r}");
    assert_eq!(r["partitions_skipped"], 1, "p=x by its row hash: {r}");
    let dup = &r["samples"]["duplicates"][0];
    assert_eq!(dup["k1"], "6", "{dup}");
    assert_eq!(dup["side"], "B", "{dup}");
    let v = r["columns"].as_array().unwrap().iter().find(|c| c["column"] == "v").unwrap();
    assert_eq!(v["differ"], 2, "{v}");
    // A tolerance makes (3,b) equal; the thresholds then accept what is left.
    let mut args = vec!["diff", "t@1", "t@2", "--tolerance", "v=0.001", "--json"];
    args.extend(KEY);
    let out = env.run(&args);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["report"]["modified"], 1, "{report}");
    assert_eq!(out.status.code(), Some(3));
    let mut args = vec!["diff", "t@1", "t@2", "--tolerance", "v=0.001", "--max-changed-rows", "4"];
    args.extend(KEY);
    let text = env.ok(&args);
    assert!(text.contains("result     different, within the thresholds"), "{text}");
    let mut args = vec!["diff", "t@1", "t@2", "--max-changed-ratio", "0.1"];
    args.extend(KEY);
    let line = env.check_failed(&args);
    assert!(line.contains("t@1 and t@2 differ") && line.contains("--max-changed-ratio"), "{line}");
    // Identical: exit 0.
    let mut args = vec!["diff", "t@2", "t"];
    args.extend(KEY);
    assert!(env.ok(&args).contains("result     identical"));
    // Usage errors.
    let line = env.user_error(&["diff", "t@1", "t@2"]);
    assert!(line.contains("records no key") && line.contains("--key"), "{line}");
    let line = env.user_error(&["diff", "t@1", "t@2", "--key", "k1", "--tolerance", "k2=1"]);
    assert!(line.contains("not a floating-point column"), "{line}");
    let line = env.user_error(&["diff", "t@1", "t@9", "--key", "k1"]);
    assert!(line.contains("version 9"), "{line}");
}

#[test]
fn diff_classifies_rows_by_a_key_with_nulls_and_reports_duplicates() {
    diffing(&Env::new());
}

#[test]
fn diff_classifies_rows_by_a_key_with_nulls_and_reports_duplicates_s3() {
    if let Some(env) = Env::s3() {
        diffing(&env);
    }
}

/// The fast path reads no file of a partition whose row hash is the same on both sides: with
/// that partition's file gone from the store, the diff still succeeds (a read would fail).
#[test]
fn diff_reads_no_file_of_an_unchanged_partition() {
    let env = Env::new();
    let v1 = write(&env, "v1.parquet", &[(1, None, 1.0, "x"), (2, Some("a"), 2.0, "y")]);
    env.ok(&["publish", "t", "--from", &v1, "--partition-by", "p"]);
    let v2 = write(&env, "v2.parquet", &[(2, Some("a"), 2.5, "y")]);
    env.ok(&["publish", "t", "--from", &v2, "--partition-by", "p"]);
    let files = env.ok(&["files", "t", "--version", "1"]);
    let x = files.lines().find(|l| l.contains("/p=x/")).unwrap();
    std::fs::remove_file(x).unwrap();
    let out = env.run(&["diff", "t@1", "t@2", "--key", "k1", "--key", "k2", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["report"]["partitions_skipped"], 1);
    assert_eq!(report["report"]["identical"], 1);
    assert_eq!(report["report"]["modified"], 1);
}

/// A version by time: `"t@<RFC 3339>"` reads the version current then, in `strata query` and
/// `strata diff`, and `strata rollback --to-time` makes it current again; before the first
/// version it is an error naming the first.
#[test]
fn versions_are_named_by_the_time_they_were_current() {
    let mut env = Env::new();
    let v1 = write(&env, "v1.parquet", &[(1, None, 1.0, "x")]);
    let v2 = write(&env, "v2.parquet", &[(1, None, 2.0, "x")]);
    env.vars.push(("STRATA_NOW".into(), "2026-12-01T10:00:00Z".into()));
    env.ok(&["publish", "t", "--from", &v1]);
    env.vars.push(("STRATA_NOW".into(), "2026-12-02T10:00:00Z".into()));
    env.ok(&["publish", "t", "--from", &v2, "--replace-all"]);
    let at = |t: &str| env.ok(&["query", &format!("SELECT v FROM \"t@{t}\""), "--format", "csv"]);
    assert_eq!(at("2026-12-01T12:00:00Z"), "v\n1.0\n");
    assert_eq!(at("2026-12-02T10:00:00Z"), "v\n2.0\n");
    let line = env.user_error(&["query", "SELECT v FROM \"t@2026-11-30T00:00:00Z\""]);
    assert!(
        line.contains("t had no version at 2026-11-30T00:00:00Z")
            && line.contains("2026-12-01T10:00:00Z"),
        "{line}"
    );
    let line = env.check_failed(&["diff", "t@2026-12-01T12:00:00Z", "t", "--key", "k1"]);
    assert!(line.contains("1 row(s) changed (1 modified"), "{line}");
    env.ok(&["rollback", "t", "--to-time", "2026-12-01T12:00:00Z", "--reason", "undo"]);
    assert_eq!(env.ok(&["query", "SELECT v FROM t", "--format", "csv"]), "v\n1.0\n");
    let line = env.user_error(&["rollback", "t", "--to-time", "yesterday"]);
    assert!(line.contains("RFC 3339"), "{line}");
}
