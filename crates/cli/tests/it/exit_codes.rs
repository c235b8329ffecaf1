//! The exit-code contract, end to end: one case per class a scheduler must tell apart, each on
//! the real binary.

use crate::harness::Env;
use crate::quality::shop_with;

/// 0: the run published.
#[test]
fn exit_0_when_the_run_published() {
    let env = Env::new();
    let toml = crate::pipeline::shop(&env, 2, &[]);
    let out = env.ok(&["run", "--pipeline", toml.to_str().unwrap()]);
    assert!(out.contains("PUBLISHED"), "{out}");
}

/// 2: a usage or definition error, one line that says what to do.
#[test]
fn exit_2_for_a_usage_or_definition_error() {
    let env = Env::new();
    let toml = crate::pipeline::shop(&env, 2, &[]);
    let toml = toml.to_str().unwrap();
    let line = env.user_error(&["run", "--pipeline", toml, "--only", "nosuch"]);
    assert!(line.contains("--only names \"nosuch\""), "{line}");
    // A window of millennia is a typo in a year: refused before anything is locked or landed.
    let before = env.snapshot();
    let line =
        env.user_error(&["run", "--pipeline", toml, "--from", "0026-01-01", "--to", "2026-01-31"]);
    assert!(line.contains("spans 730516 days") && line.contains("Check the years"), "{line}");
    assert_eq!(env.snapshot(), before, "nothing was written");
    env.ok(&["run", "--pipeline", toml]);
    let line = env.user_error(&["versions", "nosuch"]);
    assert!(line.contains("not found") && line.contains("strata datasets"), "{line}");
    let line = env.user_error(&["show-run", "nosuch"]);
    assert!(line.contains("strata runs"), "{line}");
    // A query that fails on the data is the query's to fix, not a bug of strata.
    let line = env.user_error(&["query", "SELECT CAST(status AS INT) FROM orders"]);
    assert!(line.contains("failed on its data") && line.contains("TRY_CAST"), "{line}");
}

/// 3: the data failed a check; nothing was published.
#[test]
fn exit_3_when_the_data_failed_a_check() {
    let env = Env::new();
    let toml = shop_with(&env, "FAIL_RUN");
    let line = env.check_failed(&["run", "--pipeline", &toml]);
    assert!(line.contains("FAIL_RUN") && line.contains("nothing was published"), "{line}");
    assert!(!env.lake().join("orders").exists(), "nothing of orders was published");
}

/// 4: busy. A live process holds the partitions the run writes: retry later.
#[test]
fn exit_4_when_another_process_holds_the_partitions() {
    let env = Env::new();
    let toml = crate::pipeline::shop(&env, 2, &[]);
    let toml = toml.to_str().unwrap();
    env.ok(&["run", "--pipeline", toml]);
    // This test process holds the whole of `orders` (it is alive, and its lease runs).
    let holder = strata_publish::locks::LockInfo::for_this_process(
        "another-run",
        chrono::Utc::now(),
        std::time::Duration::from_secs(600),
    );
    let lock = env.lake().join("_strata/locks/orders/_all.json");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    std::fs::write(&lock, serde_json::to_vec(&holder).unwrap()).unwrap();
    let line = env.busy(&["run", "--pipeline", toml, "--force"]);
    assert!(line.contains("is locked by run another-run"), "{line}");
    // An operator's rollback or publish waits for the run too: never in the middle of its
    // commit.
    let line = env.busy(&["rollback", "orders", "--to", "1"]);
    assert!(line.contains("is locked by run another-run"), "{line}");
    let lake_files: Vec<String> = env.ok(&["files", "orders"]).lines().map(String::from).collect();
    let line = env.busy(&["publish", "orders", "--from", &lake_files[0]]);
    assert!(line.contains("is locked by run another-run"), "{line}");
    let versions: serde_json::Value =
        serde_json::from_str(&env.ok(&["versions", "orders", "--json"])).unwrap();
    assert_eq!(versions.as_array().unwrap().len(), 1, "nothing was published or rolled back");
    std::fs::remove_file(&lock).unwrap();
    env.ok(&["run", "--pipeline", toml, "--force"]);
}

/// 5: needs a person. A run held for review publishes nothing and must not look like success.
#[test]
fn exit_5_when_a_run_is_held_for_review() {
    let env = Env::new();
    let toml = shop_with(&env, "MANUAL_REVIEW");
    let out = env.held(&["run", "--pipeline", &toml]);
    assert!(out.contains("AWAITING_REVIEW") && out.contains("strata approve"), "{out}");
    let line = env.user_error(&["versions", "orders"]);
    assert!(line.contains("not found"), "nothing published: {line}");
}

/// 1: an internal error (here a panic injected into the writer), printed with a request to
/// report it; nothing half-done is visible, and recovery and a rerun settle it.
#[test]
fn exit_1_for_an_unexpected_failure() {
    let env = Env::new();
    let toml = crate::pipeline::shop(&env, 2, &[]);
    let toml = toml.to_str().unwrap();
    let out = env
        .cmd(&["run", "--pipeline", toml])
        .env("STRATA_INJECT_FAULT", "panic:orders")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("This is unexpected") && stderr.contains("report it"), "{stderr}");
    let line = env.user_error(&["versions", "orders"]);
    assert!(line.contains("not found"), "nothing published: {line}");
    env.ok(&["recover"]);
    env.ok(&["run", "--pipeline", toml]);
}
