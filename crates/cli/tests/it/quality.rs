//! Reconciliation and quality gates on the real binary: each severity's effect on what is
//! published, the invariant catching injected lost and duplicated rows, hashes that ignore row
//! order and file splits, and `strata reconcile`.

use crate::harness::{rows, Env};
use crate::pipeline::shop;

fn csv(env: &Env, sql: &str) -> String {
    env.ok(&["query", sql, "--format", "csv"])
}

fn versions(env: &Env, ds: &str) -> usize {
    serde_json::from_str::<serde_json::Value>(&env.ok(&["versions", ds, "--json"]))
        .unwrap()
        .as_array()
        .unwrap()
        .len()
}

/// The shop pipeline with `amount_positive` (which the order 1004 of 2026-01-01, amount -5.00,
/// fails) at `severity`.
pub(crate) fn shop_with(env: &Env, severity: &str) -> String {
    let toml = shop(env, 2, &[]);
    let text = std::fs::read_to_string(&toml).unwrap().replace(
        r#"{ name = "amount_positive", range = { column = "amount", min = 0 } }"#,
        &format!(
            r#"{{ name = "amount_positive", range = {{ column = "amount", min = 0 }}, severity = "{severity}" }}"#
        ),
    );
    assert!(text.contains(severity));
    std::fs::write(&toml, text).unwrap();
    toml.to_str().unwrap().to_string()
}

pub(crate) fn latest_run(env: &Env) -> serde_json::Value {
    let runs: serde_json::Value = serde_json::from_str(&env.ok(&["runs", "--json"])).unwrap();
    runs[0].clone()
}

/// The version record of a local lake's dataset, as stored.
/// A version record as stored, with the partitions of its chunks gathered under `partitions`.
fn record(env: &Env, ds: &str, v: u64) -> serde_json::Value {
    let read = |path: std::path::PathBuf| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    let mut record = read(env.lake().join(ds).join(format!("_strata/versions/{v:020}.json")));
    let mut partitions = Vec::new();
    for chunk in record["chunks"].as_array().cloned().unwrap_or_default() {
        let chunk = read(env.lake().join(chunk["path"].as_str().unwrap()));
        partitions.extend(chunk["partitions"].as_array().unwrap().iter().cloned());
    }
    record["partitions"] = partitions.into();
    record
}

#[test]
fn each_severity_has_its_effect_on_what_is_published() {
    // QUARANTINE_RECORD (the default): the row is set aside with its reason.
    let env = Env::new();
    let toml = shop_with(&env, "QUARANTINE_RECORD");
    env.ok(&["run", "--pipeline", &toml]);
    assert_eq!(csv(&env, "SELECT count(*) AS n FROM orders WHERE order_id = 1004"), "n\n0\n");
    assert_eq!(
        csv(&env, "SELECT _rule FROM \"orders.quarantine\" WHERE order_id = '1004'"),
        "_rule\namount_positive\n"
    );

    // INFO: recorded only; the row is published.
    for sev in ["INFO", "WARN"] {
        let env = Env::new();
        let toml = shop_with(&env, sev);
        let out = env.ok(&["run", "--pipeline", &toml]);
        assert!(out.contains(&format!("{sev:<17} orders rule amount_positive")), "{out}");
        assert_eq!(csv(&env, "SELECT count(*) AS n FROM orders WHERE order_id = 1004"), "n\n1\n");
        assert_eq!(csv(&env, "SELECT count(*) AS n FROM \"orders.quarantine\""), "n\n4\n");
        let run = latest_run(&env);
        assert_eq!(run["findings"][0]["severity"], sev, "{run}");
        let warnings = record(&env, "orders", 1)["evidence"]["warnings"].clone();
        if sev == "WARN" {
            // The warning travels with the output, in its version record.
            assert!(warnings[0].as_str().unwrap().contains("amount_positive"), "{warnings}");
        } else {
            assert_eq!(warnings, serde_json::json!([]));
        }
    }

    // FAIL_PARTITION: 2026-01-01 keeps its published rows; the other days are published.
    let env = Env::new();
    let toml = shop(&env, 2, &[]);
    env.ok(&["run", "--pipeline", toml.to_str().unwrap()]);
    let day1 = csv(
        &env,
        "SELECT count(*) AS n, sum(amount) AS s FROM orders WHERE order_date = DATE '2026-01-01'",
    );
    let toml = shop_with(&env, "FAIL_PARTITION");
    let out = env.ok(&["run", "--pipeline", &toml]);
    assert!(out.contains("withheld") && out.contains("1 failed partition"), "{out}");
    assert_eq!(versions(&env, "orders"), 2, "the other partitions were published");
    assert_eq!(
        csv(&env, "SELECT count(*) AS n, sum(amount) AS s FROM orders WHERE order_date = DATE '2026-01-01'"),
        day1,
        "the failed partition is the published one, untouched"
    );
    let v2 = record(&env, "orders", 2);
    let day1_v2: Vec<&serde_json::Value> = v2["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["key"] == "order_date=2026-01-01")
        .collect();
    assert_eq!(day1_v2[0]["written_in"], 1, "reused from version 1");

    // FAIL_RUN: nothing is published; the run is FAILED and says why.
    let env = Env::new();
    let toml = shop_with(&env, "FAIL_RUN");
    let line = env.check_failed(&["run", "--pipeline", &toml]);
    assert!(
        line.contains("amount_positive")
            && line.contains("FAIL_RUN")
            && line.contains("nothing was published"),
        "{line}"
    );
    assert!(env.run(&["versions", "orders"]).status.code() == Some(2), "no version of orders");
    assert_eq!(latest_run(&env)["state"], "FAILED");

    // MANUAL_REVIEW: staged and held; approve publishes it, reject discards it.
    let env = Env::new();
    let toml = shop_with(&env, "MANUAL_REVIEW");
    let out = env.held(&["run", "--pipeline", &toml]);
    assert!(out.contains("AWAITING_REVIEW") && out.contains("strata approve"), "{out}");
    let held = latest_run(&env);
    assert_eq!(held["state"], "AWAITING_REVIEW");
    let id = held["run_id"].as_str().unwrap().to_string();
    assert!(env.run(&["versions", "orders"]).status.code() == Some(2), "nothing published yet");
    // Recovery leaves a held run alone.
    assert!(env.ok(&["recover"]).contains("nothing to recover"));
    let out = env.ok(&["approve", &id, "--note", "checked with finance"]);
    assert!(out.contains("approved and PUBLISHED"), "{out}");
    assert_eq!(csv(&env, "SELECT count(*) AS n FROM orders WHERE order_id = 1004"), "n\n1\n");
    assert_eq!(record(&env, "orders", 1)["evidence"]["approved"]["note"], "checked with finance");
    let line = env.user_error(&["approve", &id]);
    assert!(line.contains("not AWAITING_REVIEW"), "{line}");
    // Held again (a new run), then rejected: nothing more is published and nothing is left.
    let out = env.held(&["run", "--pipeline", &toml, "--force"]);
    assert!(out.contains("AWAITING_REVIEW"), "{out}");
    let id = latest_run(&env)["run_id"].as_str().unwrap().to_string();
    let out = env.ok(&["reject", &id, "--note", "bad export"]);
    assert!(out.contains("rejected"), "{out}");
    assert_eq!(versions(&env, "orders"), 1);
    assert_eq!(latest_run(&env)["state"], "FAILED");
    let staged =
        walk(&env.lake()).into_iter().filter(|p| p.contains(&format!("run_id={id}"))).count();
    assert_eq!(staged, 0, "the rejected run's staging is gone");
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

/// A stage that withheld a partition (FAIL_PARTITION), reused by the rerun of a run that was
/// killed: the withheld partition keeps its published rows, as in the uninterrupted run.
#[test]
fn a_reused_stage_still_withholds_its_failed_partition() {
    let env = Env::new();
    let toml = shop(&env, 2, &[]);
    env.ok(&["run", "--pipeline", toml.to_str().unwrap()]);
    let day1_sql =
        "SELECT count(*) AS n, sum(amount) AS s FROM orders WHERE order_date = DATE '2026-01-01'";
    let day1 = csv(&env, day1_sql);
    let toml = shop_with(&env, "FAIL_PARTITION");
    let mut cmd = env.cmd(&["run", "--pipeline", &toml]);
    let out = cmd.env("STRATA_CRASH_AT", "before-flips").output().unwrap();
    assert_eq!(out.status.code(), None, "killed: {}", String::from_utf8_lossy(&out.stderr));
    let out = env.ok(&["run", "--pipeline", &toml]);
    assert!(out.contains("reused"), "the rerun reuses the cleaned stage: {out}");
    assert_eq!(csv(&env, day1_sql), day1, "the withheld partition keeps its published rows");
    assert_eq!(versions(&env, "orders"), 2);
}

/// A model checkpoint is reused only over the versions it was computed over: a run killed after
/// its stages, then a publish that changes a partition the run withheld (FAIL_PARTITION), then
/// the rerun: `daily_revenue` is computed again and agrees with the `orders` it is built from.
#[test]
fn a_reused_model_agrees_with_the_orders_published_since() {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let env = Env::new();
    let toml = shop(&env, 2, &[]);
    env.ok(&["run", "--pipeline", toml.to_str().unwrap()]);
    let toml = shop_with(&env, "FAIL_PARTITION");
    let mut cmd = env.cmd(&["run", "--pipeline", &toml, "--date", "2026-01-03"]);
    let out = cmd.env("STRATA_CRASH_AT", "before-flips").output().unwrap();
    assert_eq!(out.status.code(), None, "killed: {}", String::from_utf8_lossy(&out.stderr));
    env.ok(&["recover"]);
    // 2026-01-01 published again by hand, one row fewer.
    let files: serde_json::Value =
        serde_json::from_str(&env.ok(&["files", "orders", "--json"])).unwrap();
    let day1 = files["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["partition"] == "order_date=2026-01-01")
        .unwrap()["location"]
        .as_str()
        .unwrap()
        .to_string();
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(day1).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let batch = reader.map(|b| b.unwrap()).next().unwrap();
    let fewer = batch.slice(1, batch.num_rows() - 1);
    let path = env.path("day1.parquet");
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&path).unwrap(),
        fewer.schema(),
        None,
    )
    .unwrap();
    w.write(&fewer).unwrap();
    w.close().unwrap();
    env.ok(&[
        "publish",
        "orders",
        "--from",
        path.to_str().unwrap(),
        "--partition-by",
        "order_date",
    ]);
    env.ok(&["run", "--pipeline", &toml, "--date", "2026-01-03"]);
    let from_orders = csv(
        &env,
        "SELECT count(*) AS n, sum(amount) AS s FROM orders WHERE order_date = DATE '2026-01-01'",
    );
    let from_model = csv(
        &env,
        "SELECT orders AS n, revenue AS s FROM daily_revenue WHERE order_date = DATE '2026-01-01'",
    );
    assert_eq!(from_model, from_orders, "daily_revenue is computed from the current orders");
}

/// Without a max_quarantine_rate gate a cleaned dataset gets the default one: more than 5% of
/// its rows quarantined fails the run (exit 3), naming the gate and how to choose otherwise, and
/// nothing is published; `default_gate = false` opts out.
#[test]
fn garbage_is_not_published_by_default() {
    let env = Env::new();
    let toml = shop(&env, 2, &[]);
    let text = std::fs::read_to_string(&toml).unwrap();
    let gate =
        "  { name = \"quarantine_rate\", max_quarantine_rate = 0.30, severity = \"WARN\" },\n";
    assert!(text.contains(gate));
    std::fs::write(&toml, text.replace(gate, "")).unwrap();
    let toml = toml.to_str().unwrap();
    let line = env.check_failed(&["run", "--pipeline", toml]);
    for needle in
        ["orders gate default_max_quarantine_rate", "25.00% > 5.00%", "default_gate = false"]
    {
        assert!(line.contains(needle), "{needle}: {line}");
    }
    assert!(line.contains("nothing was published"), "{line}");
    // The summary says why the rows were set aside, and where to look.
    let out = env.run(&["run", "--pipeline", toml]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "quarantine orders: 2 contract, 1 amount_positive, 1 not_null and 1 more rule(s); \
             strata query 'SELECT * FROM \"orders.quarantine\" ORDER BY _rule'"
        ),
        "{stdout}"
    );
    assert_eq!(env.run(&["versions", "orders"]).status.code(), Some(2), "nothing published");
    // Opting out, for orders only.
    let text = std::fs::read_to_string(toml).unwrap();
    let text = text.replacen("grain = \"day\"\n", "grain = \"day\"\ndefault_gate = false\n", 1);
    std::fs::write(toml, text).unwrap();
    env.ok(&["run", "--pipeline", toml]);
    assert_eq!(versions(&env, "orders"), 1);
}

/// An approval killed after it claimed the run and prepared its records, before any flip: the
/// run goes back to AWAITING_REVIEW with its staged output, the prepared records are dropped,
/// and approving again publishes it.
#[test]
fn an_approval_killed_before_its_first_flip_goes_back_to_review() {
    let env = Env::new();
    let toml = shop_with(&env, "MANUAL_REVIEW");
    env.held(&["run", "--pipeline", &toml]);
    let id = latest_run(&env)["run_id"].as_str().unwrap().to_string();
    let out = env.cmd(&["approve", &id]).env("STRATA_CRASH_AT", "before-flips").output().unwrap();
    assert_eq!(out.status.code(), None, "killed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(latest_run(&env)["state"], "COMMITTING");
    let out = env.ok(&["recover"]);
    assert!(out.contains("COMMITTING -> AWAITING_REVIEW"), "{out}");
    assert!(out.contains(&format!("strata approve {id}")), "{out}");
    let run = latest_run(&env);
    assert_eq!(run["state"], "AWAITING_REVIEW");
    assert_eq!(run["prepared"], serde_json::json!({}), "the prepared records are dropped");
    assert!(crate::runs::orphans(&env).iter().all(|p| p.contains(&format!("run_id={id}"))));
    assert!(env.run(&["versions", "orders"]).status.code() == Some(2), "nothing published");
    // Recovery leaves it alone from now on, and approving again publishes the held output.
    assert!(env.ok(&["recover"]).contains("nothing to recover"));
    let out = env.ok(&["approve", &id]);
    assert!(out.contains("approved and PUBLISHED"), "{out}");
    assert_eq!(csv(&env, "SELECT count(*) AS n FROM orders WHERE order_id = 1004"), "n\n1\n");
    assert_eq!(crate::runs::orphans(&env), Vec::<String>::new());
    // Approving (or rejecting) again right after a killed approval settles it first, as
    // `strata recover` would, instead of reporting a race with a process that is gone.
    for (verb, done) in [("approve", "approved and PUBLISHED"), ("reject", "rejected")] {
        env.held(&["run", "--pipeline", &toml, "--force"]);
        let id = latest_run(&env)["run_id"].as_str().unwrap().to_string();
        let mut cmd = env.cmd(&["approve", &id]);
        let out = cmd.env("STRATA_CRASH_AT", "before-flips").output().unwrap();
        assert_eq!(out.status.code(), None, "{}", String::from_utf8_lossy(&out.stderr));
        let out = env.ok(&[verb, &id]);
        assert!(out.contains(done), "{verb}: {out}");
    }
    assert_eq!(crate::runs::orphans(&env), Vec::<String>::new());
}

#[test]
fn gates_on_thresholds() {
    // 5 of 20 orders are quarantined (25%): a 10% gate at FAIL_RUN stops the run.
    let env = Env::new();
    let toml = shop(&env, 2, &[]);
    let text = std::fs::read_to_string(&toml).unwrap().replace(
        r#"max_quarantine_rate = 0.30, severity = "WARN""#,
        r#"max_quarantine_rate = 0.10, severity = "FAIL_RUN""#,
    );
    std::fs::write(&toml, text).unwrap();
    let line = env.check_failed(&["run", "--pipeline", toml.to_str().unwrap()]);
    assert!(line.contains("gate quarantine_rate") && line.contains("25.00% > 10.00%"), "{line}");
    assert!(env.run(&["versions", "orders"]).status.code() == Some(2));
    // At WARN it publishes and says so.
    let text = std::fs::read_to_string(&toml)
        .unwrap()
        .replace(r#"severity = "FAIL_RUN""#, r#"severity = "WARN""#);
    std::fs::write(&toml, text).unwrap();
    let out = env.ok(&["run", "--pipeline", toml.to_str().unwrap()]);
    assert!(out.contains("WARN              orders gate quarantine_rate"), "{out}");
    assert_eq!(out.matches("orders gate quarantine_rate").count(), 1, "said once: {out}");
}

#[test]
fn the_invariant_catches_an_injected_lost_or_duplicated_row() {
    for fault in ["lose-row", "dup-row", "swap-row"] {
        let env = Env::new();
        let toml = shop(&env, 2, &[]);
        let out = env
            .cmd(&["run", "--pipeline", toml.to_str().unwrap()])
            .env("STRATA_INJECT_FAULT", format!("{fault}:orders"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{fault}: the data failed a check: {stderr}");
        assert!(stderr.contains("nothing was published"), "{fault}: {stderr}");
        match fault {
            "lose-row" => assert!(stderr.contains("accepted 12 but staged 11"), "{stderr}"),
            "dup-row" => assert!(stderr.contains("accepted 12 but staged 13"), "{stderr}"),
            // The row count is right; the sums and the keys are not. The copy of the first row
            // comes last, out of key order, so uniqueness cannot be proved.
            _ => assert!(
                stderr.contains("no duplicate keys")
                    && stderr.contains("1 key(s) out of order")
                    && stderr.contains("sum(amount): accepted = written"),
                "{stderr}"
            ),
        }
        assert_eq!(
            env.run(&["versions", "orders"]).status.code(),
            Some(2),
            "{fault}: nothing published"
        );
        assert_eq!(latest_run(&env)["state"], "FAILED");
        // Without the fault the same run publishes.
        env.ok(&["run", "--pipeline", toml.to_str().unwrap()]);
        env.ok(&["reconcile", "orders", "--input"]);
    }
}

#[test]
fn a_model_sum_that_does_not_match_its_input_stops_the_run() {
    let env = Env::new();
    let toml = shop(&env, 2, &[]);
    let text = std::fs::read_to_string(&toml).unwrap().replace(
        r#"key = ["order_date"]"#,
        r#"key = ["order_date"]
reconcile = [{ column = "revenue", equals = "orders.amount" }]"#,
    );
    std::fs::write(&toml, text).unwrap();
    // daily_revenue leaves out refunded orders, so its revenue is not the sum of all amounts.
    let line = env.check_failed(&["run", "--pipeline", toml.to_str().unwrap()]);
    assert!(
        line.contains("daily_revenue: sum(revenue) = sum(orders.amount) (329.80 = 334.80)"),
        "{line}"
    );
    // Without the filter the sums agree and the run publishes.
    let sql = env.path("shop/models/daily_revenue.sql");
    let text =
        std::fs::read_to_string(&sql).unwrap().replace("WHERE status IN ('paid', 'shipped')", "");
    std::fs::write(&sql, text).unwrap();
    env.ok(&["run", "--pipeline", toml.to_str().unwrap()]);
    let r: serde_json::Value =
        serde_json::from_str(&env.ok(&["reconcile", "daily_revenue", "--input", "--json"]))
            .unwrap();
    assert_eq!(r["ok"], true, "{r}");
    assert!(
        r["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["check"] == "sum(revenue) = sum(orders.amount)" && c["ok"] == true),
        "{r}"
    );
}

#[test]
fn reconcile_hashes_ignore_order_and_files_and_catch_changes() {
    let env = Env::new();
    let mut all = rows(1, 40, "2026-01-01", 5);
    all.extend(rows(41, 20, "2026-01-02", 7));
    // The same rows: one file in order, and three files reversed.
    env.orders_file("one.parquet", &all);
    let mut rev = all.clone();
    rev.reverse();
    std::fs::create_dir_all(env.path("split")).unwrap();
    env.orders_file("split/a.parquet", &rev[..7]);
    env.orders_file("split/b.parquet", &rev[7..30]);
    env.orders_file("split/c.parquet", &rev[30..]);
    env.ok(&["publish", "a", "--from", "one.parquet"]);
    env.ok(&["publish", "b", "--from", "split", "--partition-by", "order_date"]);
    let totals = |ds: &str| -> serde_json::Value {
        let v: serde_json::Value =
            serde_json::from_str(&env.ok(&["reconcile", ds, "--json"])).unwrap();
        v["totals"].clone()
    };
    let (a, b) = (totals("a"), totals("b"));
    assert_eq!(a["rows"], 60);
    assert_eq!(a["row_hash"], b["row_hash"], "order and file split do not change the hash");
    // One changed amount: --against reports it and exits 3 (the data failed a check).
    let mut changed = all.clone();
    changed[3].2 = 6;
    env.orders_file("changed.parquet", &changed);
    env.ok(&["publish", "a", "--from", "changed.parquet", "--replace-all"]);
    let out = env.run(&["reconcile", "a", "--against", "1"]);
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("MISMATCH") && text.contains("row hash"), "{text}");
    env.ok(&["reconcile", "a", "--version", "1", "--against", "1"]);
    // A version published without a pipeline has no input checks to show: it cannot be proven
    // against its input, so the check fails.
    assert_eq!(env.run(&["reconcile", "a", "--input"]).status.code(), Some(3));
}

#[test]
fn a_window_with_no_rows_reconciles_and_publishes() {
    let env = Env::new();
    let toml = shop(&env, 0, &[]);
    let toml = toml.to_str().unwrap();
    env.ok(&["run", "--pipeline", toml]);
    // No order has this date: nothing is accepted, nothing written, and that reconciles.
    let out = env.ok(&["run", "--pipeline", toml, "--date", "2026-02-15"]);
    assert!(out.contains("PUBLISHED"), "{out}");
    let run = latest_run(&env);
    assert!(run["checks"].as_array().unwrap().iter().all(|c| c["ok"] == true), "{run}");
    assert_eq!(csv(&env, "SELECT count(*) AS n FROM orders"), "n\n12\n");
}
