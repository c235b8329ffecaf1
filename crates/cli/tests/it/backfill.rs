//! Backfill modes on the example pipeline: a model bug fixed and backfilled in a shadow, diffed
//! against the published output and promoted; promote conflicts and rebases; a promote killed at
//! each crash point; dry-run and compare-only; dropping a shadow. On local disk and S3.

use serde_json::Value;

use crate::harness::Env;
use crate::pipeline::{csv, shop};

fn json(env: &Env, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    serde_json::from_str(&env.ok(&all)).unwrap()
}

/// The shop pipeline published once; returns its strata.toml.
fn published_shop(env: &Env, lookback: u32) -> String {
    let toml = shop(env, lookback, &[]).display().to_string();
    env.ok(&["run", "--pipeline", &toml]);
    toml
}

/// The model bug of the walk-through: refunded orders were left out of daily revenue.
fn fix_the_model(env: &Env) {
    let sql = env.path("shop/models/daily_revenue.sql");
    let text = std::fs::read_to_string(&sql).unwrap();
    let fixed = text.replace("('paid', 'shipped')", "('paid', 'shipped', 'refunded')");
    assert_ne!(text, fixed);
    std::fs::write(&sql, fixed).unwrap();
}

fn current(env: &Env, dataset: &str) -> u64 {
    let versions = json(env, &["versions", dataset]);
    versions.as_array().unwrap().iter().find(|v| v["current"] == true).unwrap()["version"]
        .as_u64()
        .unwrap()
}

fn shadow_of<'a>(shadows: &'a Value, name: &str) -> &'a Value {
    shadows["shadows"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap()
}

const REVENUE: &str = "SELECT order_date, revenue FROM daily_revenue ORDER BY order_date";

fn shadow_then_promote(env: &Env) {
    let toml = published_shop(env, 2);
    let before = csv(env, REVENUE);
    let history = env.ok(&["history", "daily_revenue", "--json"]);
    fix_the_model(env);
    let out = env.ok(&[
        "run",
        "--pipeline",
        &toml,
        "--only",
        "daily_revenue+",
        "--mode",
        "shadow",
        "--shadow",
        "fix-1",
    ]);
    assert!(out.contains("SHADOWED") && out.contains("as shadow fix-1"), "{out}");
    // Invisible to every current read.
    assert_eq!(csv(env, REVENUE), before);
    assert_eq!(env.ok(&["history", "daily_revenue", "--json"]), history);
    let shadows = json(env, &["shadows"]);
    let s = shadow_of(&shadows, "fix-1");
    assert_eq!(s["state"], "SHADOWED");
    let held = &s["datasets"]["daily_revenue"];
    assert_eq!(held["base_version"], 1);
    assert_eq!(held["current"], 1);
    let shadow_version = held["version"].as_u64().unwrap();
    assert!(shadow_version > 1);
    assert!(s["datasets"]["revenue_7d"].is_object(), "downstream is in the shadow too");
    // Readable, verifiable and reconcilable like any version.
    let fixed = csv(
        env,
        "SELECT order_date, revenue FROM \"daily_revenue@shadow:fix-1\" ORDER BY order_date",
    );
    assert_ne!(fixed, before, "the refund on 2026-01-02 now counts");
    env.ok(&["verify", "daily_revenue", "--shadow", "fix-1"]);
    env.ok(&["reconcile", "daily_revenue", "--shadow", "fix-1"]);
    // Diffed against the published output, and the report kept with the shadow run.
    let out = env.run(&["diff", "daily_revenue", "daily_revenue@shadow:fix-1", "--save"]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("modified 1"), "{text}");
    assert!(text.contains("kept the report with shadow fix-1"), "{text}");
    assert_eq!(shadow_of(&json(env, &["shadows"]), "fix-1")["diffs"], 1);
    let log = json(env, &["show-run", s["run_id"].as_str().unwrap()]);
    let run = log.as_array().unwrap().last().unwrap();
    assert_eq!(run["diffs"][0]["modified"], 1, "{run}");
    // Promoted: current now, without recomputing; history says so.
    let out = env.ok(&["promote", "fix-1", "--reason", "refunds count as revenue"]);
    assert!(out.contains(&format!("daily_revenue: v{shadow_version} is current")), "{out}");
    assert_eq!(current(env, "daily_revenue"), shadow_version);
    assert_eq!(csv(env, REVENUE), fixed.replace("daily_revenue@shadow:fix-1", "daily_revenue"));
    let history = json(env, &["history", "daily_revenue"]);
    let last = history.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["kind"], "promote", "{last}");
    assert!(last["reason"].as_str().unwrap().contains("refunds count as revenue"), "{last}");
    env.ok(&["verify", "daily_revenue"]);
    // Promoting again does nothing; rollback undoes it.
    assert!(env.ok(&["promote", "fix-1"]).contains("promoted already"));
    assert_eq!(shadow_of(&json(env, &["shadows"]), "fix-1")["state"], "PUBLISHED");
    env.ok(&["rollback", "daily_revenue", "--to", "1"]);
    assert_eq!(csv(env, REVENUE), before);
    // A promoted shadow's name can go; its versions stay published.
    assert!(env.ok(&["drop-shadow", "fix-1"]).contains("stay published"));
    env.ok(&["rollback", "daily_revenue", "--to", &shadow_version.to_string()]);
    env.ok(&["verify", "daily_revenue"]);
}

#[test]
fn a_shadow_is_invisible_until_promoted() {
    shadow_then_promote(&Env::new());
}

#[test]
fn a_shadow_is_invisible_until_promoted_s3() {
    if let Some(env) = Env::s3() {
        shadow_then_promote(&env);
    }
}

fn conflicts_and_rebases(env: &Env) {
    let toml = published_shop(env, 0);
    let run = |date: &str, extra: &[&str]| {
        let mut args = vec!["run", "--pipeline", &toml, "--date", date, "--only", "orders"];
        args.extend_from_slice(extra);
        env.ok(&args)
    };
    // Shadow a: 2026-01-02. Meanwhile production republishes 2026-01-03 only: a rebase.
    run("2026-01-02", &["--mode", "shadow", "--shadow", "a", "--force"]);
    run("2026-01-03", &["--force"]);
    let before = current(env, "orders");
    let a = json(env, &["promote", "a"]);
    let orders = &a["datasets"]["orders"];
    assert_eq!(orders["rebased"], true, "{a}");
    let now = current(env, "orders");
    assert!(now > before && orders["published"] == now, "a new version on the moved pointer");
    // Its 2026-01-02 is the shadow run's files, its 2026-01-03 production's.
    let files = json(env, &["files", "orders"]);
    let run_of = |day: &str| {
        files["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["partition"] == format!("order_date={day}"))
            .unwrap()["path"]
            .as_str()
            .unwrap()
            .split('/')
            .nth(1)
            .unwrap()
            .to_string()
    };
    assert_eq!(run_of("2026-01-02"), format!("run_id={}", a["run_id"].as_str().unwrap()));
    assert_ne!(run_of("2026-01-03"), run_of("2026-01-02"));
    env.ok(&["verify", "orders"]);
    // Shadow b: 2026-01-03; then a late file changes that very day in production: a conflict,
    // nothing moves.
    run("2026-01-03", &["--mode", "shadow", "--shadow", "b", "--force"]);
    std::fs::write(
        env.path("shop/data/orders/orders-late-2026-01-03.csv"),
        "order_id,customer_id,order_date,amount,status,updated_at\n\
         3099,2,2026-01-03,12.00,paid,2026-01-03T23:00:00\n",
    )
    .unwrap();
    run("2026-01-03", &[]);
    let history = env.ok(&["history", "orders", "--json"]);
    let line = env.needs_person(&["promote", "b"]);
    assert!(line.contains("orders's pointer moved"), "{line}");
    assert!(line.contains("order_date=2026-01-03"), "{line}");
    assert!(line.contains("Nothing was promoted"), "{line}");
    assert_eq!(env.ok(&["history", "orders", "--json"]), history, "nothing flipped");
    assert_eq!(shadow_of(&json(env, &["shadows"]), "b")["state"], "SHADOWED", "still promotable");
    // The name of a shadow is taken until it is dropped; dropping removes its files.
    let line = env.user_error(&[
        "run",
        "--pipeline",
        &toml,
        "--date",
        "2026-01-03",
        "--only",
        "orders",
        "--mode",
        "shadow",
        "--shadow",
        "b",
    ]);
    assert!(line.contains("exists already"), "{line}");
    let b_run = shadow_of(&json(env, &["shadows"]), "b")["run_id"].as_str().unwrap().to_string();
    env.ok(&["drop-shadow", "b"]);
    let leftovers: Vec<String> =
        env.snapshot().into_keys().filter(|p| p.contains(&format!("run_id={b_run}"))).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let line = env.user_error(&["query", "SELECT count(*) FROM \"orders@shadow:b\""]);
    assert!(line.contains("no shadow named"), "{line}");
    assert_eq!(env.ok(&["history", "orders", "--json"]), history);
}

#[test]
fn promote_rebases_when_the_base_moved_elsewhere_and_conflicts_when_it_moved_here() {
    conflicts_and_rebases(&Env::new());
}

#[test]
fn promote_rebases_when_the_base_moved_elsewhere_and_conflicts_when_it_moved_here_s3() {
    if let Some(env) = Env::s3() {
        conflicts_and_rebases(&env);
    }
}

/// A promote of two datasets killed at `point`, then settled by `settle` (`recover` or
/// `promote`): all or nothing at every step, and promoted in the end.
fn killed_promote(make: &dyn Fn() -> Env, point: &str, settle: &str) {
    let env = make();
    let toml = published_shop(&env, 2);
    fix_the_model(&env);
    let shadow = ["--only", "daily_revenue+", "--mode", "shadow", "--shadow", "fix"];
    let mut args = vec!["run", "--pipeline", &toml];
    args.extend_from_slice(&shadow);
    env.ok(&args);
    let s = shadow_of(&json(&env, &["shadows"]), "fix").clone();
    let want = |d: &str| s["datasets"][d]["version"].as_u64().unwrap();
    let out = env.cmd(&["promote", "fix"]).env("STRATA_CRASH_AT", point).output().unwrap();
    assert_eq!(
        out.status.code(),
        None,
        "{point}: killed, {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let visible = |env: &Env| {
        let promoted: Vec<bool> =
            ["daily_revenue", "revenue_7d"].iter().map(|d| current(env, d) == want(d)).collect();
        promoted
    };
    match settle {
        "recover" => {
            env.ok(&["recover"]);
            let v = visible(&env);
            assert!(v[0] == v[1], "{point}: all or nothing after recovery: {v:?}");
            env.ok(&["promote", "fix"]);
        }
        _ => {
            env.ok(&["promote", "fix"]);
        }
    }
    assert_eq!(visible(&env), vec![true, true], "{point}/{settle}: promoted");
    for d in ["daily_revenue", "revenue_7d"] {
        env.ok(&["verify", d]);
        let history = json(&env, &["history", d]);
        let promotes =
            history.as_array().unwrap().iter().filter(|f| f["kind"] == "promote").count();
        assert_eq!(promotes, 1, "{point}/{settle}: {d} promoted exactly once: {history}");
    }
    assert_eq!(shadow_of(&json(&env, &["shadows"]), "fix")["state"], "PUBLISHED");
    let runs = json(&env, &["runs"]);
    assert!(
        runs.as_array().unwrap().iter().all(|r| r["state"] != "UNKNOWN"),
        "{point}/{settle}: {runs}"
    );
}

fn promote_crash_points(make: &dyn Fn() -> Env, settles: &[&str]) {
    for point in ["before-promote-flips", "after-flip", "after-flip#2"] {
        for settle in settles {
            killed_promote(make, point, settle);
        }
    }
}

#[test]
fn a_promote_killed_at_each_crash_point_is_all_or_nothing() {
    promote_crash_points(&Env::new, &["recover", "promote"]);
}

#[test]
fn a_promote_killed_at_each_crash_point_is_all_or_nothing_s3() {
    if Env::s3().is_some() {
        promote_crash_points(&|| Env::s3().unwrap(), &["recover"]);
    }
}

fn killed_shadow_run(make: &dyn Fn() -> Env) {
    for (point, settled) in [("before-shadow-ref", "FAILED"), ("after-shadow-ref", "SHADOWED")] {
        let env = make();
        let toml = published_shop(&env, 2);
        fix_the_model(&env);
        let out = env
            .cmd(&["run", "--pipeline", &toml, "--mode", "shadow", "--shadow", "s"])
            .env("STRATA_CRASH_AT", point)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), None, "{point}");
        let history = env.ok(&["history", "daily_revenue", "--json"]);
        let report = json(&env, &["recover"]);
        let recovered = &report["recovered"][0];
        assert_eq!(recovered["to"], settled, "{point}: {report}");
        assert_eq!(env.ok(&["history", "daily_revenue", "--json"]), history);
        let shadows = json(&env, &["shadows"]);
        if settled == "SHADOWED" {
            assert_eq!(shadow_of(&shadows, "s")["state"], "SHADOWED");
            env.ok(&["promote", "s"]);
        } else {
            assert!(shadows["shadows"].as_array().unwrap().is_empty(), "{shadows}");
            let run = recovered["run_id"].as_str().unwrap();
            // Only the finished stages' checksummed files stay, for a rerun to reuse: no
            // record, no chunk.
            let left: Vec<String> = env
                .snapshot()
                .into_keys()
                .filter(|p| p.contains(&format!("run_id={run}")))
                .collect();
            assert!(left.iter().all(|p| p.ends_with(".parquet")), "{point}: {left:?}");
            assert_eq!(recovered["kept"].as_u64().unwrap(), left.len() as u64, "{report}");
            let versions = json(&env, &["versions", "daily_revenue"]);
            assert_eq!(versions.as_array().unwrap().len(), 1, "{versions}");
        }
    }
}

#[test]
fn a_shadow_run_killed_around_its_ref_is_shadowed_or_failed() {
    killed_shadow_run(&Env::new);
}

#[test]
fn a_shadow_run_killed_around_its_ref_is_shadowed_or_failed_s3() {
    if Env::s3().is_some() {
        killed_shadow_run(&|| Env::s3().unwrap());
    }
}

#[test]
fn dry_run_and_compare_only_keep_nothing_but_their_reports() {
    let env = Env::new();
    let toml = published_shop(&env, 2);
    fix_the_model(&env);
    let pointers = |env: &Env| -> Vec<String> {
        env.snapshot().into_keys().filter(|p| p.contains("/_strata/pointer/")).collect()
    };
    let before = pointers(&env);
    for mode in ["dry-run", "compare-only"] {
        let r = json(&env, &["run", "--pipeline", &toml, "--mode", mode]);
        assert_eq!(r["state"], "DISCARDED", "{mode}: {r}");
        assert_eq!(pointers(&env), before, "{mode}: no pointer moved");
        let run = r["run_id"].as_str().unwrap();
        let left: Vec<String> =
            env.snapshot().into_keys().filter(|p| p.contains(&format!("run_id={run}"))).collect();
        assert!(left.is_empty(), "{mode}: staging removed: {left:?}");
        let log = json(&env, &["show-run", run]);
        let m = log.as_array().unwrap().last().unwrap();
        assert_eq!(m["state"], "DISCARDED");
        if mode == "compare-only" {
            let d = m["diffs"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["a"].as_str().unwrap().starts_with("daily_revenue@"))
                .unwrap();
            assert_eq!(d["modified"], 1, "{d}");
            assert_eq!(d["identical"], 2, "{d}");
            let orders = m["diffs"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["a"].as_str().unwrap().starts_with("orders@"))
                .unwrap();
            assert_eq!(orders["modified"], 0, "orders did not change: {orders}");
        }
    }
    let line = env.user_error(&["run", "--pipeline", &toml, "--mode", "shadow"]);
    assert!(line.contains("--shadow NAME"), "{line}");
    let line = env.user_error(&["run", "--pipeline", &toml, "--shadow", "x"]);
    assert!(line.contains("--mode shadow"), "{line}");
    let line = env.user_error(&["run", "--pipeline", &toml, "--mode", "shadow", "--shadow", "a/b"]);
    assert!(line.contains("shadow name"), "{line}");
}

fn late_order(env: &Env, file: &str, line: &str) {
    std::fs::write(
        env.path(&format!("shop/data/orders/{file}")),
        format!("order_id,customer_id,order_date,amount,status,updated_at\n{line}\n"),
    )
    .unwrap();
}

fn restating(env: &Env) {
    let toml = published_shop(env, 2);
    let out = env.ok(&["close", "orders", "--through", "2026-01-02", "--reason", "filed"]);
    assert!(out.contains("closed through 2026-01-02"), "{out}");
    let line = env.user_error(&["close", "orders", "--through", "2026-01-01"]);
    assert!(line.contains("never moves back"), "{line}");
    for verb in ["versions", "history"] {
        let out = env.ok(&[verb, "orders"]);
        assert!(out.contains("closed through 2026-01-02") && out.contains("filed"), "{out}");
    }
    let plan = env.ok(&["plan", "--pipeline", &toml, "--date", "2026-01-03"]);
    assert!(plan.contains("closed   orders is closed through 2026-01-02"), "{plan}");
    assert!(plan.contains("order_date=2026-01-01, order_date=2026-01-02"), "{plan}");
    // Recomputing closed days to the same rows (the lookback) is not a change.
    env.ok(&["run", "--pipeline", &toml, "--date", "2026-01-03", "--force"]);
    // A late order for a closed day: refused, nothing published.
    late_order(
        env,
        "orders-late-2026-01-02.csv",
        "2099,2,2026-01-02,12.00,paid,2026-01-03T23:00:00",
    );
    let history = env.ok(&["history", "orders", "--json"]);
    let line = env.needs_person(&["run", "--pipeline", &toml, "--date", "2026-01-03"]);
    assert!(line.contains("closed through 2026-01-02"), "{line}");
    assert!(line.contains("1 closed partition(s): order_date=2026-01-02"), "{line}");
    assert!(line.contains("--mode restatement"), "{line}");
    assert_eq!(env.ok(&["history", "orders", "--json"]), history);
    let line = env.user_error(&[
        "run",
        "--pipeline",
        &toml,
        "--date",
        "2026-01-03",
        "--mode",
        "restatement",
    ]);
    assert!(line.contains("--reason CODE"), "{line}");
    // As a restatement: published, and recorded.
    env.ok(&[
        "run",
        "--pipeline",
        &toml,
        "--date",
        "2026-01-03",
        "--mode",
        "restatement",
        "--reason",
        "LATE-ORDER",
        "--approver",
        "cfo",
    ]);
    let history = json(env, &["history", "orders"]);
    let last = history.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["kind"], "restatement", "{last}");
    assert!(env.ok(&["history", "orders"]).contains("RESTATEMENT"));
    let r = json(env, &["restatements"]);
    let all = r["restatements"].as_array().unwrap();
    assert_eq!(all.len(), 1, "{r}");
    let r = &all[0];
    assert_eq!((r["dataset"].as_str(), r["reason"].as_str()), (Some("orders"), Some("LATE-ORDER")));
    assert_eq!(r["approver"], "cfo");
    assert_eq!(r["prior_version"].as_u64().unwrap() + 1, r["version"].as_u64().unwrap());
    let parts = r["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 1, "{r}");
    assert_eq!(parts[0]["key"], "order_date=2026-01-02");
    assert_eq!(
        parts[0]["rows_after"].as_u64().unwrap(),
        parts[0]["rows_before"].as_u64().unwrap() + 1
    );
    assert_ne!(parts[0]["sums_after"]["amount"], parts[0]["sums_before"]["amount"], "{r}");
    assert_eq!(r["inputs_added"].as_array().unwrap().len(), 1, "the late file: {r}");
    assert_eq!(r["closing"]["through"], "2026-01-02");
    env.ok(&["verify", "orders"]);
    // A shadow that changes a closed day cannot be promoted: that takes a restatement.
    late_order(
        env,
        "orders-late-2026-01-01.csv",
        "1099,2,2026-01-01,7.00,paid,2026-01-03T23:30:00",
    );
    env.ok(&[
        "run",
        "--pipeline",
        &toml,
        "--date",
        "2026-01-03",
        "--mode",
        "shadow",
        "--shadow",
        "late",
    ]);
    let history = env.ok(&["history", "orders", "--json"]);
    let line = env.needs_person(&["promote", "late"]);
    assert!(
        line.contains("promoting shadow late") && line.contains("order_date=2026-01-01"),
        "{line}"
    );
    assert_eq!(env.ok(&["history", "orders", "--json"]), history);
    assert_eq!(shadow_of(&json(env, &["shadows"]), "late")["state"], "SHADOWED");
}

#[test]
fn a_closed_period_changes_only_by_a_recorded_restatement() {
    restating(&Env::new());
}

#[test]
fn a_closed_period_changes_only_by_a_recorded_restatement_s3() {
    if let Some(env) = Env::s3() {
        restating(&env);
    }
}

#[test]
fn a_restatement_can_be_held_for_review() {
    let env = Env::new();
    let toml = published_shop(&env, 2);
    let text = std::fs::read_to_string(&toml).unwrap();
    let text = text.replace("lookback_days = 2", "lookback_days = 2\nrestatement_review = true");
    std::fs::write(&toml, text).unwrap();
    env.ok(&["run", "--pipeline", &toml]);
    env.ok(&["close", "orders", "--through", "2026-01-02"]);
    late_order(
        &env,
        "orders-late-2026-01-02.csv",
        "2099,2,2026-01-02,12.00,paid,2026-01-03T23:00:00",
    );
    let args = [
        "run",
        "--pipeline",
        &toml,
        "--date",
        "2026-01-03",
        "--mode",
        "restatement",
        "--reason",
        "R1",
    ];
    let out = env.held(&args);
    assert!(out.contains("AWAITING_REVIEW") && out.contains("restatement"), "{out}");
    let runs = json(&env, &["runs", "--status", "AWAITING_REVIEW"]);
    let id = runs[0]["run_id"].as_str().unwrap().to_string();
    env.ok(&["approve", &id]);
    let history = json(&env, &["history", "orders"]);
    assert_eq!(history.as_array().unwrap().last().unwrap()["kind"], "restatement");
    let r = json(&env, &["restatements", "orders"]);
    assert_eq!(r["restatements"][0]["reason"], "R1");
}

#[test]
fn a_drop_killed_half_way_is_finished_by_recovery() {
    let env = Env::new();
    let toml = published_shop(&env, 2);
    fix_the_model(&env);
    env.ok(&[
        "run",
        "--pipeline",
        &toml,
        "--only",
        "daily_revenue",
        "--mode",
        "shadow",
        "--shadow",
        "x",
    ]);
    let run = shadow_of(&json(&env, &["shadows"]), "x")["run_id"].as_str().unwrap().to_string();
    let out =
        env.cmd(&["drop-shadow", "x"]).env("STRATA_CRASH_AT", "after-drop-mark").output().unwrap();
    assert_eq!(out.status.code(), None);
    // Marked dropped: it cannot be promoted any more.
    let line = env.user_error(&["promote", "x"]);
    assert!(line.contains("dropped"), "{line}");
    env.ok(&["recover"]);
    assert!(json(&env, &["shadows"])["shadows"].as_array().unwrap().is_empty());
    let left: Vec<String> =
        env.snapshot().into_keys().filter(|p| p.contains(&format!("run_id={run}"))).collect();
    assert!(left.is_empty(), "{left:?}");
}
