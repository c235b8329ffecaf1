//! `strata retire`, `unretire` and `retired`: a landed batch taken out of every later run's
//! input and put back, on local disk and S3, and killed at its crash points.

use crate::harness::Env;
use crate::pipeline::{csv, tiny};

/// The tiny pipeline with two files; b.csv holds rows for two days.
fn two_files(env: &Env) -> String {
    let toml = tiny(env, "csv", "");
    std::fs::write(
        env.path("tiny/data/a.csv"),
        "order_id,order_date,amount\n1,2026-01-01,10\n2,2026-01-01,20\n",
    )
    .unwrap();
    std::fs::write(
        env.path("tiny/data/b.csv"),
        "order_id,order_date,amount\n3,2026-01-01,30\n4,2026-01-02,40\n",
    )
    .unwrap();
    toml.display().to_string()
}

fn retiring(env: &Env) {
    let toml = two_files(env);
    env.ok(&["run", "--pipeline", &toml]);
    let ids = "SELECT order_id FROM orders ORDER BY 1";
    assert_eq!(csv(env, ids), "order_id\n1\n2\n3\n4\n");
    let out = env.ok(&["retire", "orders", "b.csv", "--reason", "withdrawn by the sender"]);
    assert!(
        out.starts_with("retired batch ") && out.contains("landed from b.csv, 2 rows"),
        "{out}"
    );
    let retired: serde_json::Value =
        serde_json::from_str(&env.ok(&["retired", "orders", "--json"])).unwrap();
    assert_eq!(retired[0]["reason"], "withdrawn by the sender");
    assert_eq!(retired[0]["input"], "b.csv");
    assert!(retired[0]["by"].as_str().unwrap().contains('@'), "{retired}");
    assert!(retired[0]["at"].is_string(), "{retired}");
    // The next run leaves it out: its rows are gone, its second day too.
    let run = env.ok(&["run", "--pipeline", &toml]);
    assert!(!run.contains("nothing to do"), "{run}");
    assert_eq!(csv(env, ids), "order_id\n1\n2\n");
    assert_eq!(csv(env, "SELECT count(DISTINCT order_date) AS n FROM orders"), "n\n1\n");
    // Again: nothing changes, and it says by whom it was retired.
    let again = env.ok(&["retire", "orders", "b.csv", "--reason", "twice"]);
    assert!(again.contains("was already retired by ") && again.contains("withdrawn"), "{again}");
    // Bad names are usage errors that change nothing.
    let before = env.snapshot();
    let line = env.user_error(&["retire", "orders", "nosuch.csv", "--reason", "x"]);
    assert!(line.contains("no batch \"nosuch.csv\""), "{line}");
    let line = env.user_error(&["retire", "nosource", "b.csv", "--reason", "x"]);
    assert!(line.contains("has no landed batches"), "{line}");
    let line = env.user_error(&["retire", "orders", "b.csv", "--reason", " "]);
    assert!(line.contains("--reason is empty"), "{line}");
    assert_eq!(env.snapshot(), before);
    // Put back: the next run reads it again.
    let out = env.ok(&["unretire", "orders", "b.csv", "--reason", "the sender confirmed it"]);
    assert!(out.starts_with("put batch "), "{out}");
    env.ok(&["run", "--pipeline", &toml]);
    assert_eq!(csv(env, ids), "order_id\n1\n2\n3\n4\n");
    let history: serde_json::Value =
        serde_json::from_str(&env.ok(&["retired", "orders", "--history", "--json"])).unwrap();
    let actions: Vec<&str> =
        history.as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["retire", "unretire"]);
    assert_eq!(env.ok(&["retired", "orders", "--json"]).trim(), "[]");
}

#[test]
fn a_retired_batch_is_left_out_of_later_runs() {
    retiring(&Env::new());
}

#[test]
fn a_retired_batch_is_left_out_of_later_runs_s3() {
    if let Some(env) = Env::s3() {
        retiring(&env);
    }
}

/// Killed before its entry is written, a retire did nothing; killed after, it is done; either
/// way the same command again leaves exactly one retirement.
#[test]
fn a_retire_killed_at_its_crash_points_is_all_or_nothing() {
    for (point, recorded) in [("before-retire-entry", 0), ("after-retire-entry", 1)] {
        let env = Env::new();
        let toml = two_files(&env);
        env.ok(&["run", "--pipeline", &toml]);
        let out = env
            .cmd(&["retire", "orders", "b.csv", "--reason", "withdrawn"])
            .env("STRATA_CRASH_AT", point)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), None, "{point}: killed by a signal");
        let history = || -> Vec<serde_json::Value> {
            let text = env.ok(&["retired", "orders", "--history", "--json"]);
            serde_json::from_str::<serde_json::Value>(&text).unwrap().as_array().unwrap().clone()
        };
        assert_eq!(history().len(), recorded, "{point}");
        env.ok(&["retire", "orders", "b.csv", "--reason", "withdrawn"]);
        assert_eq!(history().len(), 1, "{point}: one retirement");
        env.ok(&["run", "--pipeline", &toml]);
        assert_eq!(csv(&env, "SELECT count(*) AS n FROM orders"), "n\n2\n", "{point}");
    }
}
