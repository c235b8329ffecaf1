//! `strata run` on the example pipeline (`testdata/shop`), and `strata init`.

use std::path::{Path, PathBuf};

use crate::harness::Env;

/// A copy of the example pipeline in the env's directory, optionally without some input files
/// and with a different lookback. Returns the pipeline file.
pub(crate) fn shop(env: &Env, lookback: u32, skip: &[&str]) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/shop");
    let dst = env.path("shop");
    copy_dir(&src, &dst, skip);
    let toml = dst.join("strata.toml");
    let text = std::fs::read_to_string(&toml)
        .unwrap()
        .replace("lookback_days = 2", &format!("lookback_days = {lookback}"));
    std::fs::write(&toml, text).unwrap();
    toml
}

pub(crate) fn copy_dir(src: &Path, dst: &Path, skip: &[&str]) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().to_string();
        if name == "lake" || skip.contains(&name.as_str()) {
            continue;
        }
        if e.path().is_dir() {
            copy_dir(&e.path(), &dst.join(&name), skip);
        } else {
            std::fs::copy(e.path(), dst.join(&name)).unwrap();
        }
    }
}

fn run_json(env: &Env, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    all.push("--json");
    serde_json::from_str(&env.ok(&all)).unwrap()
}

fn stage<'a>(report: &'a serde_json::Value, stage: &str, dataset: &str) -> &'a serde_json::Value {
    report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == stage && s["dataset"] == dataset)
        .unwrap()
}

pub(crate) fn csv(env: &Env, sql: &str) -> String {
    env.ok(&["query", sql, "--format", "csv"])
}

/// `(partition, sha256)` of every file of a dataset's current version.
fn file_shas(env: &Env, dataset: &str) -> Vec<(String, String)> {
    let v: serde_json::Value =
        serde_json::from_str(&env.ok(&["files", dataset, "--json"])).unwrap();
    v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["partition"].as_str().unwrap().to_string(),
                f["sha256"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn full_run_counts_and_quarantine(env: &Env) {
    let toml = shop(env, 2, &[]);
    let toml = toml.to_str().unwrap();
    let r = run_json(env, &["--pipeline", toml]);
    // Every cleaned run reconciles: input = accepted + quarantined + duplicates.
    for ds in ["orders", "customers"] {
        let s = stage(&r, "clean", ds);
        let (i, a, q, d) = (
            s["rows_in"].as_u64().unwrap(),
            s["rows_out"].as_u64().unwrap(),
            s["quarantined"].as_u64().unwrap(),
            s["duplicates"].as_u64().unwrap(),
        );
        assert_eq!(i, a + q + d, "{ds}: {s}");
    }
    let orders = stage(&r, "clean", "orders");
    assert_eq!(
        (
            orders["rows_in"].as_u64(),
            orders["rows_out"].as_u64(),
            orders["quarantined"].as_u64(),
            orders["duplicates"].as_u64()
        ),
        (Some(20), Some(12), Some(5), Some(3))
    );
    let land = stage(&r, "land", "orders");
    assert_eq!(
        (land["rows_out"].as_u64(), land["quarantined"].as_u64()),
        (Some(20), Some(3)),
        "3 unreadable lines kept at landing"
    );

    // The quarantine is queryable, with the rule, the reason and the raw-batch origin.
    let q = csv(
        env,
        "SELECT order_id, amount, status, _rule, _reason, _line FROM \"orders.quarantine\" \
         ORDER BY order_id",
    );
    // The landed text of every column is kept as it was read (an empty field as null).
    assert_eq!(
        q,
        "order_id,amount,status,_rule,_reason,_line\n\
         1003,,paid,not_null,amount is null,4\n\
         1004,-5.00,paid,amount_positive,\"amount = -5.00 is outside [0, inf]\",5\n\
         1006,12.25,lost,status_known,\"status = lost is not one of paid, shipped, refunded\",8\n\
         1007,\"1,000.00\",paid,contract,\"amount: cannot read 1,000.00 as decimal(12,2)\",9\n\
         2004,9.00,paid,contract,order_date: cannot read 2026-01-0X as date,6\n"
    );
    let origin =
        csv(env, "SELECT DISTINCT _batch FROM \"orders.quarantine\" WHERE order_id = '1004'");
    let sha = {
        use sha2::{Digest, Sha256};
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../testdata/shop/data/orders/orders-2026-01-01.csv");
        hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
    };
    assert_eq!(origin, format!("_batch\n{sha}\n"), "the raw batch the row came from");

    // Dedup kept the latest update: 1005 at 42.00, 1002 corrected to 14.00 by the late file.
    assert_eq!(
        csv(
            env,
            "SELECT order_id, amount FROM orders WHERE order_id IN (1002, 1005) ORDER BY order_id"
        ),
        "order_id,amount\n1002,14.00\n1005,42.00\n"
    );
    assert_eq!(
        csv(env, "SELECT count(*) AS n, count(DISTINCT order_id) AS k FROM orders"),
        "n,k\n12,12\n"
    );
    assert_eq!(
        csv(env, "SELECT order_date, orders, revenue FROM daily_revenue ORDER BY order_date"),
        "order_date,orders,revenue\n2026-01-01,5,188.00\n2026-01-02,3,101.10\n2026-01-03,3,40.70\n"
    );
    assert_eq!(
        csv(env, "SELECT order_date, revenue_7d FROM revenue_7d ORDER BY order_date"),
        "order_date,revenue_7d\n2026-01-01,188.00\n2026-01-02,289.10\n2026-01-03,329.80\n"
    );
    // Month grain: customers are partitioned by signup month.
    let parts: Vec<String> = file_shas(env, "customers").into_iter().map(|(p, _)| p).collect();
    assert!(parts.contains(&"signup_date_month=2025-12".to_string()), "{parts:?}");
}

#[test]
fn full_run_reconciles_and_quarantines_with_reasons() {
    let env = Env::new();
    full_run_counts_and_quarantine(&env);
}

#[test]
fn full_run_reconciles_and_quarantines_with_reasons_s3() {
    if let Some(mut env) = Env::s3() {
        // A pipeline's lake defaults to lake/ beside it; on S3 it is named with --lake.
        env.vars.push(("STRATA_LAKE".into(), env.lake_url.clone()));
        full_run_counts_and_quarantine(&env);
    }
}

#[test]
fn reruns_reland_nothing_and_give_byte_identical_files() {
    let env = Env::new();
    let toml = shop(&env, 2, &[]);
    let toml = toml.to_str().unwrap();
    run_json(&env, &["--pipeline", toml]);
    let before: Vec<_> =
        ["orders", "customers", "daily_revenue", "revenue_7d", "orders.quarantine"]
            .iter()
            .map(|d| file_shas(&env, d))
            .collect();
    let r = run_json(&env, &["--pipeline", toml]);
    assert_eq!(stage(&r, "land", "orders")["note"], "0 new batch(es), 4 already landed");
    let after: Vec<_> = ["orders", "customers", "daily_revenue", "revenue_7d", "orders.quarantine"]
        .iter()
        .map(|d| file_shas(&env, d))
        .collect();
    assert_eq!(before, after, "same inputs and parameters give byte-identical files");
    // And a second lake built from scratch agrees byte for byte.
    let other = Env::new();
    let toml2 = shop(&other, 2, &[]);
    run_json(&other, &["--pipeline", toml2.to_str().unwrap()]);
    assert_eq!(file_shas(&other, "orders"), before[0]);
    assert_eq!(file_shas(&other, "revenue_7d"), before[3]);
}

#[test]
fn one_day_run_replaces_only_its_partition() {
    let env = Env::new();
    let toml = shop(&env, 0, &[]);
    let toml = toml.to_str().unwrap();
    run_json(&env, &["--pipeline", toml]);
    let before = file_shas(&env, "orders");
    let paths_before: serde_json::Value =
        serde_json::from_str(&env.ok(&["files", "orders", "--json"])).unwrap();
    let r = run_json(&env, &["--pipeline", toml, "--date", "2026-01-02"]);
    let s = stage(&r, "clean", "orders");
    assert_eq!(s["window"]["from"], "2026-01-02");
    assert_eq!(s["window"]["to"], "2026-01-02");
    assert_eq!(s["partitions"], 1);
    let paths_after: serde_json::Value =
        serde_json::from_str(&env.ok(&["files", "orders", "--json"])).unwrap();
    let by_part = |v: &serde_json::Value| -> std::collections::BTreeMap<String, String> {
        v["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["partition"].as_str().unwrap().to_string(),
                    f["path"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let (b, a) = (by_part(&paths_before), by_part(&paths_after));
    assert_eq!(
        b["order_date=2026-01-01"], a["order_date=2026-01-01"],
        "untouched: same file, not copied"
    );
    assert_eq!(
        b["order_date=2026-01-03"], a["order_date=2026-01-03"],
        "untouched: same file, not copied"
    );
    assert_ne!(b["order_date=2026-01-02"], a["order_date=2026-01-02"], "replaced by the new run");
    assert_eq!(file_shas(&env, "orders"), before, "same content");
    let versions: serde_json::Value =
        serde_json::from_str(&env.ok(&["versions", "orders", "--json"])).unwrap();
    assert_eq!(versions.as_array().unwrap().len(), 2);
}

#[test]
fn a_late_file_is_picked_up_by_the_lookback() {
    let env = Env::new();
    let toml = shop(&env, 2, &["orders-late-2026-01-01.csv"]);
    let toml_s = toml.to_str().unwrap();
    for d in ["2026-01-01", "2026-01-02", "2026-01-03"] {
        run_json(&env, &["--pipeline", toml_s, "--date", d]);
    }
    assert_eq!(
        csv(&env, "SELECT count(*) AS n FROM orders WHERE order_date = DATE '2026-01-01'"),
        "n\n4\n"
    );
    // The late file for 2026-01-01 arrives with the 2026-01-03 exports.
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../testdata/shop/data/orders/orders-late-2026-01-01.csv"),
        env.path("shop/data/orders/orders-late-2026-01-01.csv"),
    )
    .unwrap();
    let r = run_json(&env, &["--pipeline", toml_s, "--date", "2026-01-03"]);
    assert_eq!(stage(&r, "clean", "orders")["window"]["from"], "2026-01-01", "lookback of 2 days");
    assert_eq!(
        csv(&env, "SELECT count(*) AS n FROM orders WHERE order_date = DATE '2026-01-01'"),
        "n\n5\n"
    );
    assert_eq!(csv(&env, "SELECT amount FROM orders WHERE order_id = 1002"), "amount\n14.00\n");
    assert_eq!(
        csv(&env, "SELECT revenue FROM daily_revenue WHERE order_date = DATE '2026-01-01'"),
        "revenue\n188.00\n"
    );
}

#[test]
fn definition_errors_name_the_file_the_line_and_the_key() {
    let env = Env::new();
    let toml = shop(&env, 2, &[]);
    let text = std::fs::read_to_string(&toml).unwrap();
    let cases = [
        (
            text.replace("grain = \"month\"", "grain = \"weekly\""),
            "grain is \"weekly\"; expected \"day\" or \"month\"",
        ),
        (
            text.replace("latest_by = \"updated_at\"", "latest_by = \"updated\""),
            "latest_by \"updated\" is not a column",
        ),
        (text.replace("lookback_days = 2", "lookback_days = \"two\""), "invalid type"),
        (
            text.replace("[models.daily_revenue]", "[models.daily_revenue]\ncolour = \"red\""),
            "unknown field `colour`",
        ),
        (text.replace("source = \"customers\"", "source = \"clients\""), "no [sources.clients]"),
        (
            text.replace("order_date = \"date not null\"", "order_date = \"bigint not null\""),
            "business_date \"order_date\" is declared bigint, but a business date is a DATE",
        ),
        (
            text.replace("grain = \"month\"", "grain = \"month\"\npolicy = \"as_originally_run\""),
            "cleaned.customers.policy",
        ),
    ];
    for (broken, needle) in cases {
        std::fs::write(&toml, &broken).unwrap();
        let line = env.user_error(&["run", "--pipeline", toml.to_str().unwrap()]);
        assert!(line.contains(needle), "{needle}: {line}");
        let located = format!("{}:", toml.display());
        assert!(line.contains(&located), "names the file and line: {line}");
    }
    std::fs::write(&toml, &text).unwrap();
    let line = env.user_error(&["run", "--pipeline", "nowhere/strata.toml"]);
    assert!(line.contains("strata init"), "{line}");
    let line =
        env.user_error(&["run", "--pipeline", toml.to_str().unwrap(), "--date", "2026-13-01"]);
    assert!(line.contains("YYYY-MM-DD"), "{line}");
    let line = env.user_error(&["run", "--pipeline", toml.to_str().unwrap(), "--only", "nope"]);
    assert!(line.contains("--only names \"nope\""), "{line}");
    // A mistake in a model's SQL names the model and its file.
    let sql = env.path("shop/models/daily_revenue.sql");
    let text = std::fs::read_to_string(&sql).unwrap().replace("sum(amount)", "sum(amount_typo)");
    std::fs::write(&sql, text).unwrap();
    let line = env.user_error(&["run", "--pipeline", toml.to_str().unwrap()]);
    assert!(
        line.contains("models.daily_revenue (models/daily_revenue.sql)")
            && line.contains("amount_typo"),
        "{line}"
    );
}

#[test]
fn init_scaffolds_a_pipeline_that_runs() {
    let env = Env::new();
    let dir = env.path("starter");
    let out = env.ok(&["init", dir.to_str().unwrap()]);
    assert!(out.contains("strata.toml") && out.contains("next: strata run"), "{out}");
    let r = run_json(&env, &["--pipeline", dir.join("strata.toml").to_str().unwrap()]);
    let s = stage(&r, "clean", "orders");
    assert_eq!(
        (
            s["rows_in"].as_u64(),
            s["rows_out"].as_u64(),
            s["quarantined"].as_u64(),
            s["duplicates"].as_u64()
        ),
        (Some(4), Some(2), Some(1), Some(1))
    );
    assert_eq!(csv(&env, "SELECT count(*) AS n FROM daily_revenue"), "n\n2\n");
    let line = env.user_error(&["init", dir.to_str().unwrap()]);
    assert!(line.contains("already exists"), "{line}");
    // Once landed, the raw layer is the source: a run still works after the files are gone.
    std::fs::remove_file(dir.join("data/orders/orders-2026-01-01.csv")).unwrap();
    // The same inputs and parameters as the published run: a no-op that says so.
    let r = run_json(&env, &["--pipeline", dir.join("strata.toml").to_str().unwrap()]);
    assert!(stage(&r, "land", "orders")["note"].as_str().unwrap().starts_with("no file matches"));
    assert!(r["already_published_by"].is_string(), "{r}");
    assert_eq!(r["stages"].as_array().unwrap().len(), 1, "nothing but landing ran: {r}");
    let r = run_json(&env, &["--pipeline", dir.join("strata.toml").to_str().unwrap(), "--force"]);
    assert_eq!(stage(&r, "clean", "orders")["rows_out"], 2);
}

#[test]
fn progress_bar_on_a_terminal_plain_lines_otherwise() {
    let env = Env::new();
    let toml = shop(&env, 2, &[]);
    let plain = env.ok(&["run", "--pipeline", toml.to_str().unwrap()]);
    assert!(!plain.contains("[#") && !plain.contains('\r'), "no bar without a terminal: {plain}");
    assert!(plain.lines().any(|l| l.starts_with("clean  orders")), "{plain}");
    // `script` (util-linux) runs the binary on a pseudo-terminal.
    let cmd = format!(
        "{} --lake {} run --force --pipeline {}",
        env!("CARGO_BIN_EXE_strata"),
        env.lake_url,
        toml.display()
    );
    let out =
        std::process::Command::new("script").args(["-qec", &cmd, "/dev/null"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(tty.contains("[##############################] 6/6 model revenue_7d"), "{tty}");
    assert!(tty.contains("clean  orders"), "{tty}");
}

/// The sha256 (the batch id) of an example input.
fn batch_of(env: &Env, file: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(
        std::fs::read(env.path(&format!("shop/data/{file}"))).unwrap(),
    ))
}

/// The `(source, batch id)` pairs a run read, from its manifest.
fn run_inputs(env: &Env, run: &serde_json::Value) -> Vec<(String, String)> {
    let m: serde_json::Value =
        serde_json::from_str(&env.ok(&["show-run", run["run_id"].as_str().unwrap(), "--json"]))
            .unwrap();
    let last = m.as_array().unwrap().last().unwrap();
    let mut v: Vec<(String, String)> = last["input_boundary"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (b["source"].as_str().unwrap().to_string(), b["batch_id"].as_str().unwrap().to_string())
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_window_run_reads_only_the_batches_that_can_hold_its_dates() {
    let env = Env::new();
    let toml = shop(&env, 0, &[]);
    let toml = toml.to_str().unwrap();
    let full = run_json(&env, &["--pipeline", toml]);
    assert_eq!(run_inputs(&env, &full).len(), 5, "a full run reads every batch");
    let before = csv(&env, "SELECT * FROM orders ORDER BY order_id");
    let q_before = csv(&env, "SELECT * FROM \"orders.quarantine\" ORDER BY _batch, _line");
    let r = run_json(&env, &["--pipeline", toml, "--date", "2026-01-03", "--force"]);
    let mut expected = vec![
        // January holds a signup date, and one record has none (it goes to the quarantine).
        ("customers".to_string(), batch_of(&env, "customers/customers.jsonl")),
        ("orders".to_string(), batch_of(&env, "orders/orders-2026-01-03.csv")),
        // 2026-01-0X cannot be read as a date: quarantined in every window, so read by each.
        ("orders".to_string(), batch_of(&env, "orders/orders-2026-01-02.csv")),
    ];
    expected.sort();
    assert_eq!(
        run_inputs(&env, &r),
        expected,
        "2026-01-01 and the late 2026-01-01 file are skipped"
    );
    assert_eq!(stage(&r, "clean", "orders")["rows_in"], 4, "3 rows of the day + 1 unreadable date");
    assert_eq!(csv(&env, "SELECT * FROM orders ORDER BY order_id"), before, "same result");
    assert_eq!(
        csv(&env, "SELECT * FROM \"orders.quarantine\" ORDER BY _batch, _line"),
        q_before,
        "same quarantine"
    );
    // The index is a cache: damaged or gone, it is rebuilt from the batch manifests, and a
    // window run reads the same batches.
    let index = env.lake().join("_raw/orders/_index.json");
    std::fs::write(&index, b"{ not json").unwrap();
    let r = run_json(&env, &["--pipeline", toml, "--date", "2026-01-03", "--force"]);
    assert_eq!(run_inputs(&env, &r), expected);
    std::fs::remove_file(&index).unwrap();
    // Inputs that changed less than 2 s before they were looked at are not remembered (see
    // docs/pipeline.md): wait until the copies are older than that.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let r = run_json(&env, &["--pipeline", toml, "--date", "2026-01-03", "--force"]);
    assert_eq!(run_inputs(&env, &r), expected);
    let land = stage(&r, "land", "orders");
    assert_eq!(land["note"], "0 new batch(es), 4 already landed");
    // Rebuilt and written back before the run returns: every batch with its date range, every
    // input with the batch it became.
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index).unwrap()).unwrap();
    let chunks = written["chunks"].as_array().unwrap();
    assert_eq!(chunks.len(), 1, "{written}");
    let key = chunks[0]["dates"].as_object().unwrap().keys().next().unwrap().clone();
    assert!(key.starts_with("clean.v1:order_date:"), "{written}");
    let path = env.lake().join(chunks[0]["path"].as_str().unwrap());
    let chunk: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let batches = chunk["batches"].as_array().unwrap();
    assert_eq!(batches.len(), 4, "{chunk}");
    for b in batches {
        let dates = b["dates"].as_object().unwrap();
        assert!(dates.keys().any(|k| k.starts_with("clean.v1:order_date:")), "{b}");
        assert!(b["manifest"]["data"]["path"].as_str().unwrap().ends_with(".parquet"), "{b}");
    }
    assert_eq!(written["inputs"].as_object().unwrap().len(), 4, "{written}");
    // A file changed in place is a new input: it is read, hashed and landed again.
    let day1 = env.path("shop/data/orders/orders-2026-01-03.csv");
    let mut text = std::fs::read_to_string(&day1).unwrap();
    text.push_str("3004,2,2026-01-03,1.00,paid,2026-01-03T10:00:00\n");
    std::fs::write(&day1, text).unwrap();
    let r = run_json(&env, &["--pipeline", toml, "--date", "2026-01-03"]);
    assert_eq!(stage(&r, "land", "orders")["note"], "1 new batch(es), 3 already landed");
    assert!(run_inputs(&env, &r)
        .contains(&("orders".into(), batch_of(&env, "orders/orders-2026-01-03.csv"))));
    assert_eq!(csv(&env, "SELECT amount FROM orders WHERE order_id = 3004"), "amount\n1.00\n");
}

#[test]
fn output_into_a_closed_pipe_is_not_an_error() {
    // `strata runs --json | head -c 10`: the reader goes away; strata stops quietly with 0.
    let env = Env::new();
    let toml = shop(&env, 0, &[]);
    run_json(&env, &["--pipeline", toml.to_str().unwrap()]);
    for args in [&["runs", "--json"][..], &["runs"][..], &["versions", "orders", "--json"][..]] {
        let mut child = env
            .cmd(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {:?} {stderr}", out.status);
        assert!(!stderr.contains("unexpected"), "{args:?}: {stderr}");
    }
}

/// A one-source pipeline in `<dir>/tiny`: source `orders` reads `data/*.<ext>`; cleaned
/// `orders` has `order_id bigint`, `order_date date`, `amount bigint` and `updated_at
/// timestamp` (latest wins), plus `extra` columns, and no default gate (its tests quarantine one
/// row of a few). Returns the pipeline file.
pub(crate) fn tiny(env: &Env, ext: &str, extra: &str) -> PathBuf {
    let dir = env.path("tiny");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let toml = dir.join("strata.toml");
    let text = format!(
        "[pipeline]\nname = \"tiny\"\n\n\
         [sources.orders]\npath = \"data/*.{ext}\"\n\n\
         [cleaned.orders]\nsource = \"orders\"\nkey = [\"order_id\"]\nlatest_by = \"updated_at\"\n\
         business_date = \"order_date\"\n\
         default_gate = false\n\
         columns = {{ order_id = \"bigint not null\", order_date = \"date not null\", \
         amount = \"bigint\", updated_at = \"timestamp\"{extra} }}\n"
    );
    std::fs::write(&toml, text).unwrap();
    toml
}

/// An input file of the tiny pipeline rewritten in place with its old size and modification
/// time (`cp -p`) is landed again by `strata run`, and its new values are published; `strata
/// run --rehash` reads every input again and changes nothing when nothing changed.
#[test]
fn a_file_rewritten_in_place_is_landed_again_by_run() {
    let env = Env::new();
    let toml = tiny(&env, "csv", "");
    let toml = toml.to_str().unwrap();
    let orders = env.path("tiny/data/orders.csv");
    let fixed = env.path("fixed.csv");
    std::fs::write(
        &orders,
        "order_id,order_date,amount,updated_at\n1,2026-01-01,1000,2026-01-01T10:00:00\n",
    )
    .unwrap();
    std::fs::write(
        &fixed,
        "order_id,order_date,amount,updated_at\n1,2026-01-01,1010,2026-01-01T11:00:00\n",
    )
    .unwrap();
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for f in [&orders, &fixed] {
        std::fs::File::options().write(true).open(f).unwrap().set_modified(hour_ago).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(2100));
    run_json(&env, &["--pipeline", toml]);
    assert_eq!(csv(&env, "SELECT amount FROM orders"), "amount\n1000\n");
    let cp = std::process::Command::new("cp").arg("-p").arg(&fixed).arg(&orders).status().unwrap();
    assert!(cp.success());
    assert_eq!(orders.metadata().unwrap().modified().unwrap(), hour_ago);
    let r = run_json(&env, &["--pipeline", toml]);
    assert_eq!(stage(&r, "land", "orders")["note"], "1 new batch(es), 0 already landed");
    assert_eq!(csv(&env, "SELECT amount FROM orders"), "amount\n1010\n");
    // Everything read again: nothing new, nothing to do.
    let r = run_json(&env, &["--pipeline", toml, "--rehash"]);
    assert_eq!(stage(&r, "land", "orders")["note"], "0 new batch(es), 1 already landed");
    assert_eq!(csv(&env, "SELECT amount FROM orders"), "amount\n1010\n");
    assert!(env.ok(&["run", "--help"]).contains("--rehash"));
}

/// Reads, changes and writes back an object of the lake (local disk or S3).
fn rewrite_object(env: &Env, path: &str, change: impl FnOnce(&mut Vec<u8>)) {
    use object_store::ObjectStoreExt;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let lake =
            strata_publish::Lake::open(&env.lake_url, strata_publish::OpenMode::Existing).unwrap();
        let path = object_store::path::Path::from(path);
        let mut bytes = lake.store().get(&path).await.unwrap().bytes().await.unwrap().to_vec();
        change(&mut bytes);
        lake.store().put(&path, bytes.into()).await.unwrap();
    })
}

fn damaged_raw_batch_fails_the_run(env: &Env) {
    let toml = tiny(env, "csv", "");
    let toml = toml.to_str().unwrap();
    let orders = env.path("tiny/data/orders.csv");
    std::fs::write(
        &orders,
        "order_id,order_date,amount,updated_at\n1,2026-01-01,1010,2026-01-01T10:00:00\n",
    )
    .unwrap();
    run_json(env, &["--pipeline", toml]);
    assert_eq!(csv(env, "SELECT amount FROM orders"), "amount\n1010\n");
    let batch = {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(std::fs::read(&orders).unwrap()))
    };
    let data = format!("_raw/orders/batch={batch}/part-00000.parquet");
    // One bit flipped in the middle of the landed file.
    rewrite_object(env, &data, |b| {
        let i = b.len() / 2;
        b[i] ^= 0x01;
    });
    let versions = env.ok(&["versions", "orders"]);
    let line = env.check_failed(&["run", "--pipeline", toml, "--force"]);
    for needle in ["raw batch", &batch[..], "source orders", "orders.csv", &data[..], "sha256"] {
        assert!(line.contains(needle), "{needle}: {line}");
    }
    assert!(line.contains("--rehash") && line.contains("restore"), "{line}");
    assert_eq!(env.ok(&["versions", "orders"]), versions, "nothing published");
    assert_eq!(csv(env, "SELECT amount FROM orders"), "amount\n1010\n");
    // What it says to do works: the batch deleted and its input landed again.
    rewrite_object(env, &data, |b| b.clear());
    let line = env.check_failed(&["run", "--pipeline", toml, "--force"]);
    assert!(line.contains("has 0 bytes where its manifest records"), "{line}");
    for name in ["part-00000.parquet", "_batch.json"] {
        let path = object_store::path::Path::from(format!("_raw/orders/batch={batch}/{name}"));
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            use object_store::ObjectStoreExt;
            let lake =
                strata_publish::Lake::open(&env.lake_url, strata_publish::OpenMode::Existing)
                    .unwrap();
            lake.store().delete(&path).await.unwrap();
        });
    }
    let landed = env.ok(&["land", "orders", orders.to_str().unwrap(), "--rehash"]);
    assert!(landed.contains("1 input(s) landed"), "{landed}");
    run_json(env, &["--pipeline", toml, "--force"]);
    assert_eq!(csv(env, "SELECT amount FROM orders"), "amount\n1010\n");
}

/// A bit flipped in a landed raw batch fails the next run that reads it (exit 2, one line naming
/// the source, the batch and the file, and what to do) instead of publishing what it now says.
#[test]
fn a_damaged_raw_batch_fails_the_run_and_names_it() {
    damaged_raw_batch_fails_the_run(&Env::new());
}

#[test]
fn a_damaged_raw_batch_fails_the_run_and_names_it_s3() {
    if let Some(env) = Env::s3() {
        damaged_raw_batch_fails_the_run(&env);
    }
}

/// Writes a Parquet file of the given columns.
pub(crate) fn write_parquet(path: &Path, columns: Vec<(&str, arrow::array::ArrayRef)>) {
    let batch = arrow::array::RecordBatch::try_from_iter(columns).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

fn texts(values: &[&str]) -> arrow::array::ArrayRef {
    std::sync::Arc::new(arrow::array::StringArray::from(values.to_vec()))
}

/// Two landed Parquet files disagree on the type of `order_id` (int64, then text): the run
/// reads the column as text, casts it per the contract, and quarantines the value that does not
/// cast, with its reason, instead of failing every run.
#[test]
fn parquet_batches_whose_types_differ_are_cast_per_contract() {
    use std::sync::Arc;
    let env = Env::new();
    let toml = tiny(&env, "parquet", "");
    let toml = toml.to_str().unwrap();
    let dates = |n: usize| texts(&vec!["2026-01-01"; n]);
    let stamps = |n: usize| texts(&vec!["2026-01-01T10:00:00"; n]);
    write_parquet(
        &env.path("tiny/data/a.parquet"),
        vec![
            ("order_id", Arc::new(arrow::array::Int64Array::from(vec![1])) as _),
            ("order_date", dates(1)),
            ("amount", Arc::new(arrow::array::Int64Array::from(vec![1000])) as _),
            ("updated_at", stamps(1)),
        ],
    );
    // Batches are read in batch id order: the text one is made to come second, so that the
    // first batch's type is int64 (the order in which the failure was found).
    let sha = |p: &Path| {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
    };
    let (a, b) = (env.path("tiny/data/a.parquet"), env.path("tiny/data/b.parquet"));
    for pad in 0.. {
        write_parquet(
            &b,
            vec![
                ("order_id", texts(&["2", "x"])),
                ("order_date", dates(2)),
                ("amount", Arc::new(arrow::array::Int64Array::from(vec![1010, 5])) as _),
                ("updated_at", stamps(2)),
                ("note", texts(&[&format!("pad {pad}"), ""])),
            ],
        );
        if sha(&b) > sha(&a) {
            break;
        }
    }
    let r = run_json(&env, &["--pipeline", toml]);
    let clean = stage(&r, "clean", "orders");
    assert_eq!((clean["rows_in"].as_u64(), clean["quarantined"].as_u64()), (Some(3), Some(1)));
    assert_eq!(
        csv(&env, "SELECT order_id, amount FROM orders ORDER BY 1"),
        "order_id,amount\n1,1000\n2,1010\n"
    );
    assert_eq!(
        csv(&env, "SELECT order_id, _rule, _reason FROM \"orders.quarantine\""),
        "order_id,_rule,_reason\nx,contract,order_id: cannot read x as bigint\n"
    );
}

/// A dataset records who writes it: a pipeline refuses to write one published by hand (exit 2,
/// nothing landed or written) unless it adopts it with --adopt; a correction published by hand
/// into a pipeline's dataset leaves it the pipeline's.
#[test]
fn a_pipeline_does_not_overwrite_a_dataset_it_does_not_own() {
    // A Parquet file shaped like the pipeline's orders, from another lake.
    let other = Env::new();
    other.ok(&["run", "--pipeline", shop(&other, 2, &[]).to_str().unwrap()]);
    let files: serde_json::Value =
        serde_json::from_str(&other.ok(&["files", "orders", "--json"])).unwrap();
    let file = files["files"][0]["location"].as_str().unwrap().to_string();

    let env = Env::new();
    let toml = shop(&env, 2, &[]);
    let toml = toml.to_str().unwrap();
    env.ok(&["publish", "orders", "--from", &file, "--partition-by", "order_date"]);
    let before = env.snapshot();
    let line = env.user_error(&["run", "--pipeline", toml]);
    assert!(
        line.contains("\"orders\" is written by `strata publish`, not by pipeline shop")
            && line.contains("--adopt orders"),
        "{line}"
    );
    let mut after = env.snapshot();
    // (Recovery, which every run does first, notes that it registered the lake's open runs.)
    after.retain(|path, _| !path.starts_with("_strata/open/"));
    assert_eq!(after, before, "nothing landed or written");
    env.ok(&["run", "--pipeline", toml, "--adopt", "orders"]);
    // A correction by hand keeps the dataset the pipeline's.
    env.ok(&["publish", "orders", "--from", &file, "--partition-by", "order_date"]);
    env.ok(&["run", "--pipeline", toml, "--force"]);
}

/// Writes `users.parquet` in the test directory: user_id → country.
fn users_parquet(env: &Env, rows: &[(i64, &str)]) -> String {
    use arrow::array::{Int64Array, StringArray};
    let batch = arrow::record_batch::RecordBatch::try_from_iter([
        (
            "user_id",
            std::sync::Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))) as _,
        ),
        (
            "country",
            std::sync::Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))) as _,
        ),
    ])
    .unwrap();
    let path = env.path("users.parquet");
    let file = std::fs::File::create(&path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    path.display().to_string()
}

/// A model joins facts with a reference dataset the pipeline does not compute (published with
/// `strata publish`, declared as `[references.users]`): the reference is read whole at its
/// current version, recorded in the run's manifest, so a one-day run gives exactly the rows the
/// full run gives for that day; a new version of the reference makes the next run compute again.
#[test]
fn models_join_a_reference_dataset_read_whole() {
    let env = Env::new();
    let dir = env.path("refs");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::create_dir_all(dir.join("models")).unwrap();
    std::fs::write(
        dir.join("strata.toml"),
        "[pipeline]\nname = \"refs\"\n\n[sources.orders]\npath = \"data/*.csv\"\n\n\
         [references.users]\n\n\
         [cleaned.orders]\nsource = \"orders\"\nkey = [\"order_id\"]\nbusiness_date = \"order_date\"\n\
         columns = { order_id = \"bigint not null\", order_date = \"date not null\", \
         user_id = \"bigint not null\" }\n\n\
         [models.by_country]\nsql = \"models/by_country.sql\"\nbusiness_date = \"order_date\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("models/by_country.sql"),
        "SELECT o.order_date, u.country, count(*) AS orders FROM orders o \
         JOIN users u ON o.user_id = u.user_id GROUP BY o.order_date, u.country",
    )
    .unwrap();
    std::fs::write(
        dir.join("data/orders.csv"),
        "order_id,order_date,user_id\n1,2026-01-01,10\n2,2026-01-02,10\n3,2026-01-02,20\n",
    )
    .unwrap();
    let toml = dir.join("strata.toml");
    let toml = toml.to_str().unwrap();
    // Not published yet: refused before anything is landed.
    let line = env.user_error(&["run", "--pipeline", toml]);
    assert!(line.contains("references.users") && line.contains("strata publish users"), "{line}");
    let users = users_parquet(&env, &[(10, "FR"), (20, "DE")]);
    env.ok(&["publish", "users", "--from", &users]);
    env.ok(&["run", "--pipeline", toml]);
    let q = "SELECT order_date, country, orders FROM by_country ORDER BY 1, 2";
    let full = csv(&env, q);
    assert_eq!(
        full,
        "order_date,country,orders\n2026-01-01,FR,1\n2026-01-02,DE,1\n2026-01-02,FR,1\n"
    );
    let id = crate::quality::latest_run(&env)["run_id"].as_str().unwrap().to_string();
    assert!(env.ok(&["show-run", &id]).contains("reads      users v1"));
    // One day: the reference is read whole, so the day's rows are the full run's.
    env.ok(&["run", "--pipeline", toml, "--date", "2026-01-02", "--force"]);
    assert_eq!(csv(&env, q), full);
    // A new version of the reference: the next run is not a no-op, and binds version 2.
    let users = users_parquet(&env, &[(10, "FR"), (20, "AT")]);
    env.ok(&["publish", "users", "--from", &users, "--replace-all"]);
    let out = env.ok(&["run", "--pipeline", toml]);
    assert!(!out.contains("nothing to do"), "{out}");
    assert!(csv(&env, q).contains("2026-01-02,AT,1"), "{}", csv(&env, q));
    let id = crate::quality::latest_run(&env)["run_id"].as_str().unwrap().to_string();
    assert!(env.ok(&["show-run", &id]).contains("reads      users v2"));
    // A table that is not declared stays an error.
    std::fs::write(dir.join("models/by_country.sql"), "SELECT * FROM customers").unwrap();
    let line = env.user_error(&["run", "--pipeline", toml]);
    assert!(line.contains("[references.customers]"), "{line}");
}

/// Schema drift: a batch missing a nullable column, or with a column the contract does not name,
/// is a WARN finding in the run's summary and manifest (a source may make it FAIL_RUN); a batch
/// missing a required column fails the run (exit 3) naming the file, the batch and the column,
/// and nothing is published.
#[test]
fn schema_drift_is_reported_and_a_missing_required_column_stops_the_run() {
    let env = Env::new();
    let toml = tiny(&env, "csv", "");
    let toml_s = toml.to_str().unwrap();
    std::fs::write(
        env.path("tiny/data/a.csv"),
        "order_id,order_date,amount,updated_at\n1,2026-01-01,5,2026-01-01T10:00:00\n",
    )
    .unwrap();
    std::fs::write(
        env.path("tiny/data/b.csv"),
        "order_id,order_date,updated_at,note\n2,2026-01-01,2026-01-01T10:00:00,hi\n",
    )
    .unwrap();
    let out = env.ok(&["run", "--pipeline", toml_s]);
    assert!(out.contains("schema drift"), "{out}");
    let run = crate::quality::latest_run(&env);
    let details: Vec<&str> = run["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["source"] == "schema drift")
        .map(|f| f["detail"].as_str().unwrap())
        .collect();
    assert_eq!(details.len(), 2, "{details:?}");
    assert!(details[0].starts_with("b.csv (batch ") && details[0].contains("no column amount"));
    assert!(details[1].contains("has column note, which the contract does not name"));
    assert_eq!(csv(&env, "SELECT count(*) AS n FROM orders"), "n\n2\n");
    // The source makes a missing column fail the run.
    let text = std::fs::read_to_string(&toml).unwrap();
    let strict = text.replace(
        "path = \"data/*.csv\"\n",
        "path = \"data/*.csv\"\non_missing_column = \"FAIL_RUN\"\n",
    );
    assert_ne!(strict, text);
    std::fs::write(&toml, &strict).unwrap();
    let line = env.check_failed(&["run", "--pipeline", toml_s, "--force"]);
    assert!(line.contains("schema drift") && line.contains("no column amount"), "{line}");
    std::fs::write(&toml, &text).unwrap();
    // A file without the business date: the run stops before anything is staged.
    std::fs::write(env.path("tiny/data/c.csv"), "order_id,amount\n3,7\n").unwrap();
    let before = csv(&env, "SELECT count(*) AS n FROM orders");
    let line = env.check_failed(&["run", "--pipeline", toml_s]);
    assert!(line.contains("c.csv (batch ") && line.contains("has no column order_date"), "{line}");
    assert!(line.contains("nothing was run"), "{line}");
    assert_eq!(csv(&env, "SELECT count(*) AS n FROM orders"), before, "nothing published");
}

/// The published columns are in the contract's order, whatever their names (a column named `h`
/// or `e` used to sort first, found in `path =` or `name =` elsewhere in the file).
#[test]
fn columns_keep_the_contracts_order() {
    let env = Env::new();
    let toml = tiny(&env, "csv", ", h = \"varchar\", e = \"bigint\"");
    std::fs::write(
        env.path("tiny/data/a.csv"),
        "order_id,order_date,amount,updated_at,h,e\n1,2026-01-01,5,2026-01-01T10:00:00,x,7\n",
    )
    .unwrap();
    env.ok(&["run", "--pipeline", toml.to_str().unwrap()]);
    assert_eq!(
        csv(&env, "SELECT * FROM orders"),
        "order_id,order_date,amount,updated_at,h,e\n1,2026-01-01,5,2026-01-01T10:00:00,x,7\n"
    );
}

/// A window run that reads only batches lacking some columns publishes its quarantine with the
/// same column types as a full run (`_reason` was Utf8 in one and Utf8View in the other, and
/// the window run failed with a schema conflict).
#[test]
fn a_window_over_batches_lacking_columns_publishes_like_a_full_run() {
    let env = Env::new();
    let toml = tiny(&env, "csv", "");
    let toml = toml.to_str().unwrap();
    std::fs::write(
        env.path("tiny/data/a.csv"),
        "order_id,order_date,amount,updated_at\n1,2026-01-01,5,2026-01-01T10:00:00\n\
         2,2026-01-01,x,2026-01-01T10:00:00\n",
    )
    .unwrap();
    env.ok(&["run", "--pipeline", toml]);
    std::fs::write(env.path("tiny/data/b.csv"), "order_id,order_date\n3,2026-01-02\n").unwrap();
    env.ok(&["run", "--pipeline", toml, "--date", "2026-01-02"]);
    assert_eq!(csv(&env, "SELECT count(*) AS n FROM orders"), "n\n2\n");
    assert_eq!(csv(&env, "SELECT _rule FROM \"orders.quarantine\""), "_rule\ncontract\n");
}

/// A typo in a model's SQL is reported before anything is landed, naming the model file
/// (exit 2, the lake untouched); `strata check` lists every problem and runs nothing.
#[test]
fn a_model_typo_fails_before_anything_is_landed() {
    let env = Env::new();
    let toml = shop(&env, 2, &[]);
    let toml = toml.to_str().unwrap();
    let sql = env.path("shop/models/daily_revenue.sql");
    let good = std::fs::read_to_string(&sql).unwrap();
    assert!(good.contains("sum(amount)"), "{good}");
    std::fs::write(&sql, good.replace("sum(amount)", "sum(amount_typo)")).unwrap();
    let before = env.snapshot();
    let line = env.user_error(&["run", "--pipeline", toml]);
    assert!(line.contains("models.daily_revenue (models/daily_revenue.sql)"), "{line}");
    assert!(line.contains("amount_typo") && line.contains("nothing was run"), "{line}");
    assert_eq!(env.snapshot(), before, "nothing landed");
    let out = env.run(&["check", "--pipeline", toml]);
    assert_eq!(out.status.code(), Some(2));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("models.daily_revenue") && stdout.contains("amount_typo"), "{stdout}");
    assert!(!stdout.contains("revenue_7d"), "only the broken model is reported: {stdout}");
    std::fs::write(&sql, good).unwrap();
    let out = env.ok(&["check", "--pipeline", toml]);
    assert!(out.contains("ok:") && out.contains("2 model(s); every model plans"), "{out}");
    assert_eq!(env.snapshot(), before, "check writes nothing");
}

/// Every verb finds the project's strata.toml by walking up from the current directory and
/// uses its lake (`[pipeline] lake`, or lake/ beside it); --lake and STRATA_LAKE override it;
/// outside a project, `strata run` says how to name a pipeline.
#[test]
fn every_verb_finds_the_projects_lake() {
    let env = Env::new();
    let toml = tiny(&env, "csv", "");
    std::fs::write(
        env.path("tiny/data/a.csv"),
        "order_id,order_date,amount,updated_at\n1,2026-01-01,5,2026-01-01T10:00:00\n",
    )
    .unwrap();
    let sub = env.path("tiny/data");
    let strata = |dir: &std::path::Path, args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
            .current_dir(dir)
            .env_remove("STRATA_LAKE")
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    // From a subdirectory of the project: the run and every other verb use tiny/lake.
    let (code, text) = strata(&sub, &["run"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(env.path("tiny/lake/orders").is_dir(), "the lake is beside strata.toml");
    let (code, text) = strata(&sub, &["datasets"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("orders"), "{text}");
    // `[pipeline] lake` names another lake, relative to the file.
    let text = std::fs::read_to_string(&toml).unwrap();
    let moved = text.replace("[pipeline]\n", "[pipeline]\nlake = \"../shared-lake\"\n");
    std::fs::write(&toml, moved).unwrap();
    let (code, text) = strata(&sub, &["run"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(env.path("shared-lake/orders").is_dir(), "{text}");
    let (code, text) = strata(&env.path("tiny"), &["versions", "orders"]);
    assert_eq!(code, Some(0), "{text}");
    // --lake overrides it, for every verb alike.
    let (code, text) = strata(&sub, &["--lake", "/nonexistent/lake", "datasets"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("/nonexistent/lake"), "{text}");
    // Outside any project, `strata run` says what to do.
    let (code, text) = strata(env.path("").as_path(), &["run"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("no strata.toml here or in any parent directory"), "{text}");
    assert!(text.contains("--pipeline") && text.contains("strata init"), "{text}");
}

/// Without `latest_by`, a correction wins: of two rows with the same key, the one from the
/// later-landed batch is kept (and within one batch the later line), whatever the content, in
/// either order of values; the same lake always gives the same winner.
#[test]
fn a_correction_landed_later_wins() {
    for (first, second) in [(1000, 1010), (1010, 1000)] {
        let env = Env::new();
        let toml = tiny(&env, "csv", "");
        let text =
            std::fs::read_to_string(&toml).unwrap().replace("latest_by = \"updated_at\"\n", "");
        std::fs::write(&toml, text).unwrap();
        let toml = toml.to_str().unwrap();
        let row = |amount: i64| format!("order_id,order_date,amount\n1,2026-01-01,{amount}\n");
        std::fs::write(env.path("tiny/data/a.csv"), row(first)).unwrap();
        env.ok(&["run", "--pipeline", toml]);
        let amount = || csv(&env, "SELECT amount FROM orders WHERE order_id = 1");
        assert_eq!(amount(), format!("amount\n{first}\n"));
        // The correction comes in a later file.
        std::fs::write(env.path("tiny/data/b.csv"), row(second)).unwrap();
        env.ok(&["run", "--pipeline", toml]);
        assert_eq!(amount(), format!("amount\n{second}\n"), "{first} then {second}");
        // Recomputed from scratch over the same lake: the same winner.
        env.ok(&["run", "--pipeline", toml, "--force"]);
        assert_eq!(amount(), format!("amount\n{second}\n"));
        // Within one batch, the later line wins.
        std::fs::write(
            env.path("tiny/data/c.csv"),
            format!("order_id,order_date,amount\n1,2026-01-01,7\n1,2026-01-01,{first}\n"),
        )
        .unwrap();
        env.ok(&["run", "--pipeline", toml]);
        assert_eq!(amount(), format!("amount\n{first}\n"), "the later line of c.csv");
    }
}

/// A decimal the contract's type would have to round is quarantined as `contract`, not
/// published rounded; exact values in any notation are read as written, in CSV and JSON lines.
#[test]
fn a_decimal_that_would_be_rounded_is_quarantined() {
    let env = Env::new();
    let toml = tiny(&env, "*", ", price = \"decimal(10,2)\"");
    let toml = toml.to_str().unwrap();
    std::fs::write(
        env.path("tiny/data/a.csv"),
        "order_id,order_date,price\n1,2026-01-01,1.005\n2,2026-01-01,1.50\n3,2026-01-01,.5\n",
    )
    .unwrap();
    std::fs::write(
        env.path("tiny/data/b.jsonl"),
        "{\"order_id\": 4, \"order_date\": \"2026-01-01\", \"price\": 1.25e1}\n\
         {\"order_id\": 5, \"order_date\": \"2026-01-01\", \"price\": 0.125}\n",
    )
    .unwrap();
    env.ok(&["run", "--pipeline", toml]);
    assert_eq!(
        csv(&env, "SELECT order_id, price FROM orders ORDER BY 1"),
        "order_id,price\n2,1.50\n3,0.50\n4,12.50\n"
    );
    assert_eq!(
        csv(&env, "SELECT order_id, _rule, _reason FROM \"orders.quarantine\" ORDER BY 1"),
        "order_id,_rule,_reason\n\
         1,contract,\"price: cannot read 1.005 as decimal(10,2)\"\n\
         5,contract,\"price: cannot read 0.125 as decimal(10,2)\"\n"
    );
}

/// A struct column in one batch and text in another cannot be reconciled as text: a run whose
/// contract reads it fails with exit 2, naming the column, both batches' inputs and both types;
/// a contract that leaves it out runs.
#[test]
fn a_struct_column_that_drifts_is_named_with_both_types() {
    use std::sync::Arc;
    let env = Env::new();
    let toml = tiny(&env, "parquet", ", meta = \"varchar\"");
    let toml = toml.to_str().unwrap();
    let one = |n: i64| Arc::new(arrow::array::Int64Array::from(vec![n])) as arrow::array::ArrayRef;
    let meta = arrow::array::StructArray::from(vec![(
        Arc::new(arrow::datatypes::Field::new("x", arrow::datatypes::DataType::Int64, false)),
        one(7),
    )]);
    let base = |id: i64| {
        vec![
            ("order_id", one(id)),
            ("order_date", texts(&["2026-01-01"])),
            ("amount", one(10)),
            ("updated_at", texts(&["2026-01-01T10:00:00"])),
        ]
    };
    let mut a = base(1);
    a.push(("meta", Arc::new(meta) as _));
    write_parquet(&env.path("tiny/data/a.parquet"), a);
    let mut b = base(2);
    b.push(("meta", texts(&["plain"])));
    write_parquet(&env.path("tiny/data/b.parquet"), b);
    let line = env.user_error(&["run", "--pipeline", toml]);
    for needle in ["\"meta\"", "a.parquet", "b.parquet", "Struct", "Utf8", "contract"] {
        assert!(line.contains(needle), "{needle}: {line}");
    }
    // Without it in the contract, the column is not read, and the run goes through.
    tiny(&env, "parquet", "");
    run_json(&env, &["--pipeline", toml]);
    assert_eq!(csv(&env, "SELECT count(*) AS n FROM orders"), "n\n2\n");
}

/// A flights-shaped pipeline whose business date is derived from `year, month, day`.
fn flights(env: &Env, derive: &str) -> String {
    let dir = env.path("flights");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(
        dir.join("strata.toml"),
        format!(
            "[pipeline]\nname = \"flights\"\n\n[sources.flights]\npath = \"data/*.csv\"\n\n\
             [cleaned.flights]\nsource = \"flights\"\nkey = [\"id\"]\n\
             business_date = \"flight_date\"\ndefault_gate = false\n\
             columns = {{ id = \"bigint not null\", year = \"int\", month = \"int\", \
             day = \"int\", dep_delay = \"int\" }}\n\
             derive = {{ {derive} }}\n\
             rules = [{{ name = \"not_early\", sql = \"late OR dep_delay = 0\" }}]\n"
        ),
    )
    .unwrap();
    dir.join("strata.toml").display().to_string()
}

/// Derived columns: a business date made from `year, month, day` partitions the dataset, and a
/// rule reads a derived column. A row whose expression fails (month 13) or gives no business
/// date is quarantined as `derive`, with the expression in its reason; a one-day run gives the
/// full run's rows. A derived expression that does not plan, or a derived business date that is
/// not a DATE, is reported by `strata check` and stops `strata run` before anything is landed.
#[test]
fn derived_columns_make_the_business_date_and_quarantine_what_they_cannot_compute() {
    let env = Env::new();
    let good = "flight_date = \"make_date(year, month, day)\", late = \"dep_delay > 0\"";
    let toml = flights(&env, good);
    std::fs::write(
        env.path("flights/data/f.csv"),
        "id,year,month,day,dep_delay\n1,2026,1,31,5\n2,2026,13,1,0\n3,2026,2,,7\n\
         4,2026,2,1,-3\n5,2026,2,1,0\n",
    )
    .unwrap();
    env.ok(&["run", "--pipeline", &toml]);
    let q = "SELECT id, flight_date, late FROM flights ORDER BY id";
    let full = csv(&env, q);
    assert_eq!(full, "id,flight_date,late\n1,2026-01-31,true\n5,2026-02-01,false\n");
    let quarantine = csv(&env, "SELECT id, _rule, _reason FROM \"flights.quarantine\" ORDER BY id");
    let lines: Vec<&str> = quarantine.lines().collect();
    assert_eq!(lines.len(), 4, "{quarantine}");
    assert!(
        lines[1].starts_with("2,derive,\"flight_date = make_date(year, month, day) failed: "),
        "{quarantine}"
    );
    assert_eq!(lines[2], "3,derive,\"flight_date = make_date(year, month, day) is null\"");
    assert_eq!(lines[3], "4,not_early,not true: late OR dep_delay = 0");
    let parts = csv(&env, "SELECT count(DISTINCT flight_date) AS n FROM flights");
    assert_eq!(parts, "n\n2\n");
    assert!(env.lake().join("flights").exists() || env.is_s3());
    // One day at a time gives the full run's rows.
    env.ok(&["run", "--pipeline", &toml, "--date", "2026-02-01", "--force"]);
    assert_eq!(csv(&env, q), full);

    // Problems in a derived expression are found before anything is landed.
    std::fs::write(env.path("flights/data/g.csv"), "id,year,month,day,dep_delay\n9,2026,3,1,0\n")
        .unwrap();
    let before = env.snapshot();
    for (derive, expect) in [
        ("flight_date = \"make_date(year, month, dya)\", late = \"dep_delay > 0\"", "dya"),
        ("flight_date = \"year * 100 + month\", late = \"dep_delay > 0\"", "not a DATE"),
        ("flight_date = \"make_date(year, month, day)\", late = \"random() > 0.5\"", "random()"),
    ] {
        let toml = flights(&env, derive);
        let out = env.run(&["check", "--pipeline", &toml]);
        assert_eq!(out.status.code(), Some(2), "{derive}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("cleaned.flights.derive.") && stdout.contains(expect), "{stdout}");
        let line = env.user_error(&["run", "--pipeline", &toml]);
        assert!(line.contains(expect) && line.contains("nothing was run"), "{line}");
        assert_eq!(env.snapshot(), before, "nothing landed: {derive}");
    }
    // strata's own column names cannot be derived.
    let toml = flights(&env, "flight_date = \"make_date(year, month, day)\", _rule = \"1\"");
    let line = env.user_error(&["run", "--pipeline", &toml]);
    assert!(line.contains("strata's own columns"), "{line}");
    // A derived column cannot also be a contract column.
    let toml = flights(&env, "id = \"1\"");
    let line = env.user_error(&["run", "--pipeline", &toml]);
    assert!(line.contains("both a contract column and a derived one"), "{line}");
}

/// Orders joined with users, a month-grain cleaned dataset the model reads whole
/// (`reads = { users = "all" }`).
fn orders_and_users(env: &Env) -> String {
    let dir = env.path("join");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::create_dir_all(dir.join("models")).unwrap();
    std::fs::write(
        dir.join("strata.toml"),
        "[pipeline]\nname = \"join\"\n\n\
         [sources.orders]\npath = \"data/orders*.csv\"\n\n[sources.users]\npath = \"data/users*.csv\"\n\n\
         [cleaned.orders]\nsource = \"orders\"\nkey = [\"order_id\"]\nbusiness_date = \"order_date\"\n\
         columns = { order_id = \"bigint not null\", order_date = \"date not null\", \
         user_id = \"bigint not null\" }\n\n\
         [cleaned.users]\nsource = \"users\"\nkey = [\"user_id\"]\nbusiness_date = \"signup_date\"\n\
         grain = \"month\"\n\
         columns = { user_id = \"bigint not null\", signup_date = \"date not null\", country = \"varchar\" }\n\n\
         [models.by_country]\nsql = \"models/by_country.sql\"\nbusiness_date = \"order_date\"\n\
         reads = { users = \"all\" }\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("models/by_country.sql"),
        "SELECT o.order_date, u.country, count(*) AS orders FROM orders o \
         JOIN users u ON o.user_id = u.user_id GROUP BY o.order_date, u.country",
    )
    .unwrap();
    std::fs::write(
        dir.join("data/users.csv"),
        "user_id,signup_date,country\n10,2026-01-15,FR\n20,2026-02-10,DE\n30,2026-03-01,IT\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("data/orders.csv"),
        "order_id,order_date,user_id\n1,2026-02-02,10\n2,2026-02-02,20\n3,2026-02-03,10\n\
         4,2026-02-03,30\n5,2026-03-05,20\n",
    )
    .unwrap();
    dir.join("strata.toml").display().to_string()
}

/// A model that joins facts with users it reads whole gives, run one day at a time, exactly
/// the rows of a full run: every user is seen whatever its own signup month. A `reads` naming
/// a table the model does not read is refused.
#[test]
fn one_day_runs_of_a_join_equal_the_full_run() {
    let q = "SELECT order_date, country, orders FROM by_country ORDER BY 1, 2";
    let full = Env::new();
    let toml = orders_and_users(&full);
    full.ok(&["run", "--pipeline", &toml]);
    let expected = csv(&full, q);
    assert_eq!(
        expected,
        "order_date,country,orders\n2026-02-02,DE,1\n2026-02-02,FR,1\n2026-02-03,FR,1\n\
         2026-02-03,IT,1\n2026-03-05,DE,1\n"
    );
    let daily = Env::new();
    let toml = orders_and_users(&daily);
    for day in ["2026-02-02", "2026-02-03", "2026-03-05"] {
        daily.ok(&["run", "--pipeline", &toml, "--date", day]);
        let so_far = csv(&daily, q);
        let want: Vec<&str> = expected
            .lines()
            .filter(|l| l.starts_with("order_date") || *l < day || l.starts_with(day))
            .collect();
        assert_eq!(so_far.lines().collect::<Vec<_>>(), want, "after {day}");
    }
    assert_eq!(csv(&daily, q), expected);
    let text = std::fs::read_to_string(&toml).unwrap().replace("users = \"all\"", "usrs = \"all\"");
    std::fs::write(&toml, text).unwrap();
    let line = daily.user_error(&["run", "--pipeline", &toml]);
    assert!(line.contains("models.by_country.reads names \"usrs\""), "{line}");
}

/// Flights (business date derived), airports delivered as snapshots and carriers delivered as
/// changes, both cleaned datasets without a business date, joined by a model.
fn flights_with_references(env: &Env) -> String {
    let dir = env.path("refs");
    for d in ["data", "airports", "carriers", "models"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::write(
        dir.join("strata.toml"),
        "[pipeline]\nname = \"refs\"\n\n\
         [sources.flights]\npath = \"data/*.csv\"\n\n\
         [sources.airports]\npath = \"airports/*.csv\"\ndelivery = \"snapshot\"\n\n\
         [sources.carriers]\npath = \"carriers/*.csv\"\ndelivery = \"changes\"\n\n\
         [cleaned.flights]\nsource = \"flights\"\nkey = [\"id\"]\nbusiness_date = \"flight_date\"\n\
         columns = { id = \"bigint not null\", year = \"int\", month = \"int\", day = \"int\", \
         origin = \"varchar\", carrier = \"varchar\" }\n\
         derive = { flight_date = \"make_date(year, month, day)\" }\n\n\
         [cleaned.airports]\nsource = \"airports\"\nkey = [\"code\"]\ndefault_gate = false\n\
         columns = { code = \"varchar not null\", city = \"varchar not null\" }\n\
         rules = [{ name = \"iata\", regex = { column = \"code\", pattern = \"^[A-Z]{3}$\" } }]\n\n\
         [cleaned.carriers]\nsource = \"carriers\"\nkey = [\"carrier\"]\n\
         columns = { carrier = \"varchar not null\", name = \"varchar\" }\n\n\
         [models.by_city]\nsql = \"models/by_city.sql\"\nbusiness_date = \"flight_date\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("models/by_city.sql"),
        "SELECT f.flight_date, a.city, c.name AS carrier, count(*) AS flights FROM flights f \
         JOIN airports a ON f.origin = a.code JOIN carriers c ON f.carrier = c.carrier \
         GROUP BY 1, 2, 3",
    )
    .unwrap();
    std::fs::write(
        dir.join("data/f1.csv"),
        "id,year,month,day,origin,carrier\n1,2026,1,31,JFK,AA\n2,2026,2,1,SFO,UA\n\
         3,2026,2,1,JFK,UA\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("airports/2026-01.csv"),
        "code,city\nJFK,New York\nSFO,San Francisco\nxx,Nowhere\n",
    )
    .unwrap();
    std::fs::write(dir.join("carriers/a.csv"), "carrier,name\nAA,American\nUA,United\n").unwrap();
    dir.join("strata.toml").display().to_string()
}

/// Reference datasets: a cleaned dataset without a business date is computed and published
/// whole and unpartitioned in every run (a one-day run too), with its contract, rules and
/// quarantine. Delivered as snapshots, the latest-landed file is the whole table (a row missing
/// from it is gone); delivered as changes, every file merges by key and the later-landed wins.
/// A snapshot source cannot feed a dated dataset.
#[test]
fn reference_datasets_are_snapshots_or_merged_changes() {
    let env = Env::new();
    let toml = flights_with_references(&env);
    env.ok(&["run", "--pipeline", &toml]);
    let q = "SELECT flight_date, city, carrier, flights FROM by_city ORDER BY 1, 2, 3";
    assert_eq!(
        csv(&env, q),
        "flight_date,city,carrier,flights\n2026-01-31,New York,American,1\n\
         2026-02-01,New York,United,1\n2026-02-01,San Francisco,United,1\n"
    );
    assert_eq!(
        csv(&env, "SELECT code, _rule FROM \"airports.quarantine\""),
        "code,_rule\nxx,iata\n"
    );
    let files = env.ok(&["files", "airports"]);
    assert_eq!(files.lines().count(), 1, "{files}");
    assert!(!files.contains("code="), "a reference dataset is not partitioned: {files}");
    // A new snapshot replaces the table; a change file corrects one carrier and adds one.
    std::fs::write(env.path("refs/airports/2026-02.csv"), "code,city\nJFK,NYC\nLAX,Los Angeles\n")
        .unwrap();
    std::fs::write(env.path("refs/carriers/b.csv"), "carrier,name\nUA,United Airlines\nDL,Delta\n")
        .unwrap();
    env.ok(&["run", "--pipeline", &toml, "--date", "2026-02-01"]);
    assert_eq!(
        csv(&env, "SELECT code, city FROM airports ORDER BY 1"),
        "code,city\nJFK,NYC\nLAX,Los Angeles\n",
        "the latest snapshot is the whole table"
    );
    assert_eq!(
        csv(&env, "SELECT carrier, name FROM carriers ORDER BY 1"),
        "carrier,name\nAA,American\nDL,Delta\nUA,United Airlines\n",
        "changes merge by key, the later-landed wins"
    );
    assert_eq!(csv(&env, "SELECT count(*) AS n FROM \"airports.quarantine\""), "n\n0\n");
    // The one-day run recomputed its day only, over the new references.
    assert_eq!(
        csv(&env, q),
        "flight_date,city,carrier,flights\n2026-01-31,New York,American,1\n\
         2026-02-01,NYC,United Airlines,1\n"
    );
    // The table goes back to an earlier export, byte for byte: that is an earlier batch, not
    // the latest, so the run stops and says how to choose (exit 3), and retiring the newer
    // snapshot makes the earlier one the table again.
    std::fs::copy(env.path("refs/airports/2026-01.csv"), env.path("refs/airports/2026-03.csv"))
        .unwrap();
    let before = env.snapshot();
    let line = env.check_failed(&["run", "--pipeline", &toml]);
    assert!(
        line.contains("2026-03.csv holds exactly the rows of batch")
            && line.contains("strata retire airports 2026-02.csv"),
        "{line}"
    );
    assert_eq!(env.snapshot(), before, "nothing published");
    env.ok(&["retire", "airports", "2026-02.csv", "--reason", "the March export restores January"]);
    env.ok(&["run", "--pipeline", &toml]);
    assert_eq!(
        csv(&env, "SELECT code, city FROM airports ORDER BY 1"),
        "code,city\nJFK,New York\nSFO,San Francisco\n"
    );
    // A snapshot source cannot feed a dataset with a business date.
    let text = std::fs::read_to_string(&toml)
        .unwrap()
        .replace("path = \"data/*.csv\"\n", "path = \"data/*.csv\"\ndelivery = \"snapshot\"\n");
    std::fs::write(&toml, text).unwrap();
    let line = env.user_error(&["run", "--pipeline", &toml]);
    assert!(
        line.contains("cleaned.flights has a business_date") && line.contains("snapshot"),
        "{line}"
    );
}

/// The first line of `show-run <id>` that names `dataset`'s binding.
pub(crate) fn binding_line(env: &Env, dataset: &str) -> String {
    let id = crate::quality::latest_run(env)["run_id"].as_str().unwrap().to_string();
    let shown = env.ok(&["show-run", &id]);
    shown
        .lines()
        .find(|l| l.starts_with(&format!("reads      {dataset} ")))
        .unwrap_or_else(|| panic!("no binding of {dataset}: {shown}"))
        .to_string()
}

/// Pinning: a reference dataset the run computes is bound to the version it publishes, and
/// `show-run` shows the binding (version, policy, row hash). Pinned `as_originally_run`, a
/// backfill of a date published before reads the version its original run read, even after the
/// snapshot changed; `--refresh-references` reads the latest; a new date reads the latest.
#[test]
fn a_backfill_reads_the_reference_version_its_original_run_read() {
    let env = Env::new();
    let toml = flights_with_references(&env);
    let text = std::fs::read_to_string(&toml)
        .unwrap()
        .replace("[cleaned.airports]\n", "[cleaned.airports]\npolicy = \"as_originally_run\"\n")
        .replace("name = \"refs\"\n", "name = \"refs\"\nlookback_days = 1\n");
    std::fs::write(&toml, text).unwrap();
    env.ok(&["run", "--pipeline", &toml]);
    let first = binding_line(&env, "airports");
    assert!(
        first.starts_with("reads      airports v1 (latest: computed by this run, rows "),
        "{first}"
    );
    let day = "SELECT city FROM by_city WHERE flight_date = DATE '2026-02-01' ORDER BY 1";
    assert_eq!(csv(&env, day), "city\nNew York\nSan Francisco\n");
    // The snapshot changes; the backfill of 2026-02-01 still reads v1, as its original run did.
    std::fs::write(env.path("refs/airports/2026-02.csv"), "code,city\nJFK,NYC\nSFO,SF\n").unwrap();
    env.ok(&["run", "--pipeline", &toml, "--date", "2026-02-01"]);
    assert_eq!(csv(&env, "SELECT city FROM airports ORDER BY 1"), "city\nNYC\nSF\n");
    assert_eq!(csv(&env, day), "city\nNew York\nSan Francisco\n", "as originally run");
    let line = binding_line(&env, "airports");
    assert!(line.contains("airports v1 (as_originally_run: published by run "), "{line}");
    assert!(line.contains(", as run "), "{line}");
    // --refresh-references restates the day with the current snapshot.
    env.ok(&["run", "--pipeline", &toml, "--date", "2026-02-01", "--refresh-references"]);
    assert_eq!(csv(&env, day), "city\nNYC\nSF\n");
    let line = binding_line(&env, "airports");
    assert!(line.contains("(latest: computed by this run, rows "), "{line}");
    // A new date has no original run: it reads the latest.
    std::fs::write(
        env.path("refs/data/f2.csv"),
        "id,year,month,day,origin,carrier\n9,2026,2,2,JFK,AA\n",
    )
    .unwrap();
    env.ok(&["run", "--pipeline", &toml, "--date", "2026-02-02"]);
    assert_eq!(
        csv(&env, "SELECT city FROM by_city WHERE flight_date = DATE '2026-02-02'"),
        "city\nNYC\n",
        "the day asked for is new: the latest, though its lookback day was published before"
    );
    assert!(binding_line(&env, "airports").contains("(latest: computed by this run"));
}

/// A reference of the lake pinned `version = N` is read at that version whatever is current,
/// and a version never published is refused before anything is written.
#[test]
fn a_reference_pinned_to_a_version_reads_that_version() {
    let env = Env::new();
    let dir = env.path("refs");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::create_dir_all(dir.join("models")).unwrap();
    let toml = dir.join("strata.toml");
    let write_toml = |pin: &str| {
        std::fs::write(
            &toml,
            format!(
                "[pipeline]\nname = \"refs\"\n\n[sources.orders]\npath = \"data/*.csv\"\n\n\
                 [references.users]\n{pin}\n\n\
                 [cleaned.orders]\nsource = \"orders\"\nkey = [\"order_id\"]\n\
                 business_date = \"order_date\"\n\
                 columns = {{ order_id = \"bigint not null\", order_date = \"date not null\", \
                 user_id = \"bigint not null\" }}\n\n\
                 [models.by_country]\nsql = \"models/by_country.sql\"\nbusiness_date = \"order_date\"\n"
            ),
        )
        .unwrap()
    };
    write_toml("version = 1");
    std::fs::write(
        dir.join("models/by_country.sql"),
        "SELECT o.order_date, u.country, count(*) AS orders FROM orders o \
         JOIN users u ON o.user_id = u.user_id GROUP BY o.order_date, u.country",
    )
    .unwrap();
    std::fs::write(dir.join("data/orders.csv"), "order_id,order_date,user_id\n1,2026-01-01,10\n")
        .unwrap();
    let toml = toml.to_str().unwrap();
    let users = users_parquet(&env, &[(10, "FR")]);
    env.ok(&["publish", "users", "--from", &users]);
    let users = users_parquet(&env, &[(10, "DE")]);
    env.ok(&["publish", "users", "--from", &users, "--replace-all"]);
    env.ok(&["run", "--pipeline", toml]);
    assert_eq!(
        csv(&env, "SELECT country FROM by_country"),
        "country\nFR\n",
        "v1, not the current v2"
    );
    assert!(binding_line(&env, "users")
        .starts_with("reads      users v1 (version = 1: published by run "));
    write_toml("version = 9");
    let before = env.snapshot();
    let line = env.user_error(&["run", "--pipeline", toml]);
    assert!(
        line.contains("users is pinned to version 9") && line.contains("strata versions users"),
        "{line}"
    );
    assert_eq!(env.snapshot(), before, "nothing written");
    write_toml("version = 1\npolicy = \"as_originally_run\"");
    let line = env.user_error(&["run", "--pipeline", toml]);
    assert!(line.contains("both version = 1 and policy"), "{line}");
}

/// `partition_by`: a cleaned dataset and a model partitioned by a derived tenant below their
/// business date, and a full-refresh model without a business date. A one-day run owns every
/// tenant of its day: a tenant that disappeared from the day is emptied, the other days are
/// kept; the full-refresh model is recomputed whole.
#[test]
fn datasets_partition_by_a_tenant_below_their_date() {
    let env = Env::new();
    let dir = env.path("tenants");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(
        dir.join("strata.toml"),
        "[pipeline]\nname = \"tenants\"\n\n[sources.flights]\npath = \"data/*.csv\"\n\n\
         [cleaned.flights]\nsource = \"flights\"\nkey = [\"id\"]\nbusiness_date = \"flight_date\"\n\
         partition_by = [\"tenant\"]\n\
         columns = { id = \"bigint not null\", year = \"int\", month = \"int\", day = \"int\", \
         origin = \"varchar\" }\n\
         derive = { flight_date = \"make_date(year, month, day)\", tenant = \"lower(origin)\" }\n\n\
         [models.by_tenant]\nsql = \"by_tenant.sql\"\nbusiness_date = \"flight_date\"\n\
         partition_by = [\"tenant\"]\n\n\
         [models.totals]\nsql = \"totals.sql\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("by_tenant.sql"),
        "SELECT flight_date, tenant, count(*) AS flights FROM flights GROUP BY 1, 2",
    )
    .unwrap();
    std::fs::write(
        dir.join("totals.sql"),
        "SELECT tenant, sum(flights) AS flights FROM by_tenant GROUP BY 1",
    )
    .unwrap();
    std::fs::write(
        dir.join("data/a.csv"),
        "id,year,month,day,origin\n1,2026,1,31,JFK\n2,2026,2,1,SFO\n3,2026,2,1,JFK\n",
    )
    .unwrap();
    let toml = dir.join("strata.toml").display().to_string();
    env.ok(&["run", "--pipeline", &toml]);
    let files = env.ok(&["files", "by_tenant"]);
    assert!(
        files.contains("/flight_date=2026-02-01/tenant=sfo/") && files.lines().count() == 3,
        "{files}"
    );
    assert_eq!(
        csv(&env, "SELECT tenant, flights FROM totals ORDER BY 1"),
        "tenant,flights\njfk,2\nsfo,1\n"
    );
    // A correction moves flight 2 to JFK: the day's sfo partition is emptied, 2026-01-31 kept.
    std::fs::write(dir.join("data/b.csv"), "id,year,month,day,origin\n2,2026,2,1,JFK\n").unwrap();
    env.ok(&["run", "--pipeline", &toml, "--date", "2026-02-01"]);
    for ds in ["flights", "by_tenant"] {
        let files = env.ok(&["files", ds]);
        assert!(!files.contains("tenant=sfo"), "{ds}: {files}");
        assert!(files.contains("flight_date=2026-01-31/tenant=jfk"), "{ds}: {files}");
    }
    assert_eq!(
        csv(&env, "SELECT flight_date, tenant, flights FROM by_tenant ORDER BY 1, 2"),
        "flight_date,tenant,flights\n2026-01-31,jfk,1\n2026-02-01,jfk,2\n"
    );
    assert_eq!(
        csv(&env, "SELECT tenant, flights FROM totals ORDER BY 1"),
        "tenant,flights\njfk,3\n"
    );
    // A value that cannot name a directory sets its row aside, not the run.
    let long = "X".repeat(300);
    std::fs::write(
        dir.join("data/c.csv"),
        format!("id,year,month,day,origin\n7,2026,2,1,A/B\n8,2026,2,1,{long}\n9,2026,2,1,JFK\n"),
    )
    .unwrap();
    let text = std::fs::read_to_string(dir.join("strata.toml")).unwrap();
    std::fs::write(
        dir.join("strata.toml"),
        text.replace("[cleaned.flights]\n", "[cleaned.flights]\ndefault_gate = false\n"),
    )
    .unwrap();
    env.ok(&["run", "--pipeline", &toml, "--date", "2026-02-01"]);
    let q = csv(&env, "SELECT id, _rule, _reason FROM \"flights.quarantine\" ORDER BY id");
    assert!(q.contains("7,partition_value,tenant = a/b: it contains '/'"), "{q}");
    assert!(q.contains("8,partition_value,") && q.contains("bytes long"), "{q}");
    assert_eq!(csv(&env, "SELECT count(*) AS n FROM flights WHERE id = 9"), "n\n1\n");
    // A partition column of a type that cannot name directories is found before anything runs.
    std::fs::write(
        dir.join("strata.toml"),
        text.replace("tenant = \"lower(origin)\"", "tenant = \"CAST(id AS DOUBLE)\""),
    )
    .unwrap();
    let line = env.user_error(&["run", "--pipeline", &toml]);
    assert!(line.contains("cleaned.flights.partition_by") && line.contains("Float64"), "{line}");
    std::fs::write(dir.join("strata.toml"), &text).unwrap();
    // A partition column the result does not have is found before anything runs.
    std::fs::write(
        dir.join("by_tenant.sql"),
        "SELECT flight_date, count(*) AS flights FROM flights GROUP BY 1",
    )
    .unwrap();
    let line = env.user_error(&["run", "--pipeline", &toml]);
    assert!(line.contains("\"tenant\" (of its partition_by)"), "{line}");
}

/// A reference dataset is not replaced by garbage: a snapshot whose lines landing cannot read
/// counts them as quarantined, and one that is only a header would empty the table; both fail
/// the run by the default gate (exit 3) and leave the published table as it was.
#[test]
fn a_garbage_or_empty_snapshot_is_not_published() {
    let env = Env::new();
    let dir = env.path("snap");
    std::fs::create_dir_all(dir.join("ref")).unwrap();
    std::fs::write(
        dir.join("strata.toml"),
        "[pipeline]\nname = \"snap\"\n\n[sources.airports]\npath = \"ref/*.csv\"\n\
         delivery = \"snapshot\"\n\n[cleaned.airports]\nsource = \"airports\"\nkey = [\"code\"]\n\
         columns = { code = \"varchar not null\", city = \"varchar not null\" }\n",
    )
    .unwrap();
    std::fs::write(dir.join("ref/1.csv"), "code,city\nJFK,New York\nSFO,San Francisco\n").unwrap();
    let toml = dir.join("strata.toml").display().to_string();
    env.ok(&["run", "--pipeline", &toml]);
    let table = "SELECT code FROM airports ORDER BY 1";
    assert_eq!(csv(&env, table), "code\nJFK\nSFO\n");
    std::fs::write(
        dir.join("ref/2.csv"),
        "code,city\nJFK,New York,extra\nSFO,\"San Francisco\nLAX\n",
    )
    .unwrap();
    let line = env.check_failed(&["run", "--pipeline", &toml]);
    assert!(
        line.contains("landing could not read") || line.contains("would be published empty"),
        "{line}"
    );
    assert_eq!(csv(&env, table), "code\nJFK\nSFO\n");
    env.ok(&["retire", "airports", "2.csv", "--reason", "garbage export"]);
    std::fs::write(dir.join("ref/3.csv"), "code,city\n").unwrap();
    let line = env.check_failed(&["run", "--pipeline", &toml]);
    assert!(line.contains("airports would be published empty (it has 2 rows now)"), "{line}");
    assert_eq!(csv(&env, table), "code\nJFK\nSFO\n");
}

fn planning(env: &Env) {
    let toml = shop(env, 2, &["orders-2026-01-03.csv"]);
    let toml = toml.to_str().unwrap();
    // No local lake yet: nothing to plan against (an S3 prefix always exists, and is empty).
    if !env.is_s3() {
        let line = env.user_error(&["plan", "--pipeline", toml]);
        assert!(line.contains("a first `strata run` creates the lake"), "{line}");
    }
    env.ok(&["run", "--pipeline", toml]);
    let before = env.snapshot();
    let plan = env.ok(&["plan", "--pipeline", toml, "--date", "2026-01-03"]);
    assert_eq!(env.snapshot(), before, "plan writes nothing");
    for expected in [
        "order_date=2026-01-01                    a lookback day (late data)",
        "order_date=2026-01-03                    in the window",
        "order_date=2026-01-09                    rolling-window spillover (reads_days = 6)",
        "signup_date_month=2026-01                month grain: the window's whole month",
        "quarantined rows without a date",
    ] {
        assert!(plan.contains(expected), "{expected}: {plan}");
    }
    // A new file is listed; the run then follows the plan: the partitions it replaces are the
    // ones the plan named.
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/shop/data/orders/orders-2026-01-03.csv");
    std::fs::copy(src, env.path("shop/data/orders/orders-2026-01-03.csv")).unwrap();
    let json = env.ok(&["plan", "--pipeline", toml, "--date", "2026-01-03", "--json"]);
    let p: serde_json::Value = serde_json::from_str(&json).unwrap();
    let orders = p["sources"].as_array().unwrap().iter().find(|s| s["source"] == "orders").unwrap();
    assert!(orders["new_files"].to_string().contains("orders-2026-01-03.csv"), "{orders}");
    assert_eq!(p["noop"]["noop"], "after_landing");
    let planned: Vec<String> =
        p["steps"].as_array().unwrap().iter().find(|s| s["dataset"] == "revenue_7d").unwrap()
            ["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k[0].as_str().unwrap().to_string())
            .collect();
    let run = run_json(env, &["--pipeline", toml, "--date", "2026-01-03"]);
    let id = run["run_id"].as_str().unwrap();
    let log: serde_json::Value =
        serde_json::from_str(&env.ok(&["show-run", id, "--json"])).unwrap();
    let owned = log.as_array().unwrap().last().unwrap()["output_boundary"]["revenue_7d"].clone();
    let owned: Vec<String> =
        owned.as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_string()).collect();
    assert_eq!(planned, owned, "the run replaces what the plan said");
    // Now the same run would be a no-op, and the plan says so.
    let plan = env.ok(&["plan", "--pipeline", toml, "--date", "2026-01-03"]);
    assert!(plan.contains(&format!("a no-op: run {id} already published exactly this")), "{plan}");
    let graph = env.ok(&["plan", "--pipeline", toml, "--graph"]);
    assert!(graph.contains("orders -> daily_revenue") && graph.contains("flowchart LR"), "{graph}");
    // A change of orders and what it affects downstream, with the rolling spillover.
    let args = ["plan", "--pipeline", toml, "--only", "orders", "--downstream", "--json"];
    let json = env.ok(&[&args[..], &["--date", "2026-01-02"]].concat());
    let p: serde_json::Value = serde_json::from_str(&json).unwrap();
    let steps: Vec<(&str, usize)> = p["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["dataset"].as_str().unwrap(), s["partitions"].as_array().map_or(0, Vec::len)))
        .collect();
    assert_eq!(
        steps,
        [("orders", 3), ("orders.quarantine", 4), ("daily_revenue", 3), ("revenue_7d", 9)],
        "customers is not selected; revenue_7d spills over 6 days past the window"
    );
    let line = env.user_error(&["plan", "--pipeline", toml, "--only", "nosuch+"]);
    assert!(line.contains("matches no cleaned dataset or model"), "{line}");
}

#[test]
fn plan_shows_what_a_run_would_replace_and_why_and_writes_nothing() {
    planning(&Env::new());
}

#[test]
fn plan_shows_what_a_run_would_replace_and_why_and_writes_nothing_s3() {
    if let Some(env) = Env::s3() {
        planning(&env);
    }
}
