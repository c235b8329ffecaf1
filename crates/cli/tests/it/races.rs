//! Operators racing each other on the real binary (issue 21): approve against reject, approve
//! against approve, approving a held run after a newer run published, and recovery after an
//! operator rolled back part of a half-published run. After each: every current version
//! verifies, no entry number of any run log is doubled, nothing is orphaned, and exactly one of
//! the racers went ahead.

use std::process::{Output, Stdio};

use crate::harness::Env;
use crate::quality::{latest_run, shop_with};
use crate::runs::{block_on, open, orphans};

const DATASETS: [&str; 6] = [
    "customers",
    "customers.quarantine",
    "daily_revenue",
    "orders",
    "orders.quarantine",
    "revenue_7d",
];

/// How many times each race is run: a few by default, many with `STRATA_STRESS=1`.
fn trials(default: usize) -> usize {
    if std::env::var("STRATA_STRESS").is_ok_and(|v| v == "1") {
        default * 10
    } else {
        default
    }
}

/// A lake with one run held by a MANUAL_REVIEW gate; returns its run id.
fn held(env: &Env) -> String {
    let toml = shop_with(env, "MANUAL_REVIEW");
    let out = env.ok(&["run", "--pipeline", &toml]);
    assert!(out.contains("AWAITING_REVIEW"), "{out}");
    latest_run(env)["run_id"].as_str().unwrap().to_string()
}

/// Starts `strata <a>` and `strata <b>` at the same moment and waits for both.
fn race(env: &Env, a: &[&str], b: &[&str]) -> (Output, Output) {
    let spawn = |args: &[&str]| {
        env.cmd(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
    };
    let (ca, cb) = (spawn(a), spawn(b));
    (ca.wait_with_output().unwrap(), cb.wait_with_output().unwrap())
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// The loser of a race on one run: it found the run moved (exit 4), or it started after the
/// winner finished and found the run no longer held (exit 2). Either way it says so in one line.
fn assert_lost(o: &Output) {
    let err = stderr(o);
    match o.status.code() {
        Some(4) => assert!(
            err.contains("moved by another process") || err.contains("locked by run"),
            "{err}"
        ),
        Some(2) => assert!(err.contains("not AWAITING_REVIEW"), "{err}"),
        other => panic!("the loser exited {other:?}: {err}"),
    }
    assert_eq!(err.lines().count(), 1, "one line: {err}");
}

/// The invariants every race must leave: current versions verify, the logs have one entry per
/// number, and nothing is orphaned.
fn assert_sound(env: &Env) {
    for ds in DATASETS {
        let out = env.run(&["verify", ds]);
        match out.status.code() {
            Some(0) => {}
            // Never published (a rejected run): the dataset does not exist.
            Some(2) if stderr(&out).contains("not found") => {}
            other => panic!("verify {ds}: exit {other:?}: {}", stderr(&out)),
        }
    }
    block_on(async {
        let lake = open(env);
        for m in strata_publish::runs::list_runs(&lake).await.unwrap() {
            let log = strata_publish::runs::run_log(&lake, &m.run_id).await.unwrap();
            let numbers: Vec<u32> = log.iter().map(|e| e.entry).collect();
            assert_eq!(numbers, (1..=log.len() as u32).collect::<Vec<_>>(), "{}", m.run_id);
        }
    });
    assert_eq!(orphans(env), Vec::<String>::new(), "orphans");
}

fn approve_and_reject_race_on(make: impl Fn() -> Env, n: usize) {
    for trial in 0..n {
        let env = make();
        let id = held(&env);
        let (approve, reject) = if trial % 2 == 0 {
            race(&env, &["approve", &id], &["reject", &id])
        } else {
            let (r, a) = race(&env, &["reject", &id], &["approve", &id]);
            (a, r)
        };
        let won = (approve.status.success(), reject.status.success());
        match won {
            (true, false) => {
                assert_lost(&reject);
                assert_eq!(latest_run(&env)["state"], "PUBLISHED");
                env.ok(&["versions", "orders"]);
            }
            (false, true) => {
                assert_lost(&approve);
                assert_eq!(latest_run(&env)["state"], "FAILED");
                let line = env.user_error(&["versions", "orders"]);
                assert!(line.contains("not found"), "{line}");
            }
            _ => panic!(
                "exactly one of approve and reject must win: approve {:?} {}, reject {:?} {}",
                approve.status,
                stderr(&approve),
                reject.status,
                stderr(&reject)
            ),
        }
        assert_sound(&env);
    }
}

#[test]
fn approve_and_reject_racing_cannot_both_win() {
    approve_and_reject_race_on(Env::new, trials(8));
}

#[test]
fn approve_and_reject_racing_cannot_both_win_s3() {
    if Env::s3().is_some() {
        approve_and_reject_race_on(|| Env::s3().unwrap(), trials(2));
    }
}

fn double_approve_on(make: impl Fn() -> Env, n: usize) {
    for _ in 0..n {
        let env = make();
        let id = held(&env);
        let (a, b) = race(&env, &["approve", &id], &["approve", &id]);
        match (a.status.success(), b.status.success()) {
            (true, false) => assert_lost(&b),
            (false, true) => assert_lost(&a),
            _ => panic!("exactly one approval must win: {} / {}", stderr(&a), stderr(&b)),
        }
        assert_eq!(latest_run(&env)["state"], "PUBLISHED");
        let v: serde_json::Value =
            serde_json::from_str(&env.ok(&["versions", "orders", "--json"])).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 1, "published once");
        assert_sound(&env);
    }
}

#[test]
fn two_approvals_of_one_run_publish_it_once() {
    double_approve_on(Env::new, trials(8));
}

#[test]
fn two_approvals_of_one_run_publish_it_once_s3() {
    if Env::s3().is_some() {
        double_approve_on(|| Env::s3().unwrap(), trials(2));
    }
}

/// Case 4: a run held for review, then a newer run publishes a new order. Approving the held
/// run would publish its older rows over the newer ones: it is refused (exit 5, naming the
/// dataset and what moved), the new order stays, and the held run can still be rejected.
#[test]
fn approving_a_held_run_after_a_newer_run_published_is_refused() {
    let env = Env::new();
    let id = held(&env);
    // The newer run: a new order, and the gate no longer holds (a person changed it).
    let toml = env.path("shop/strata.toml");
    let text = std::fs::read_to_string(&toml).unwrap().replace("MANUAL_REVIEW", "WARN");
    std::fs::write(&toml, text).unwrap();
    let csv = env.path("shop/data/orders/orders-2026-01-04.csv");
    std::fs::write(
        &csv,
        "order_id,customer_id,order_date,amount,status,updated_at\n\
         2001,1,2026-01-03,12.50,paid,2026-01-03T10:00:00\n",
    )
    .unwrap();
    env.ok(&["run", "--pipeline", toml.to_str().unwrap()]);
    let count = |env: &Env| {
        env.ok(&[
            "query",
            "SELECT count(*) AS n FROM orders WHERE order_id = 2001",
            "--format",
            "csv",
        ])
    };
    assert_eq!(count(&env), "n\n1\n");
    let line = env.needs_person(&["approve", &id]);
    assert!(
        line.contains(&format!("run {id} cannot publish"))
            && line.contains("pointer moved")
            && line.contains("stays AWAITING_REVIEW"),
        "{line}"
    );
    assert_eq!(count(&env), "n\n1\n", "the newer order is still published");
    let runs: serde_json::Value =
        serde_json::from_str(&env.ok(&["runs", "--status", "AWAITING_REVIEW", "--json"])).unwrap();
    assert_eq!(runs[0]["run_id"], id.as_str());
    env.ok(&["reject", &id]);
    assert_sound(&env);
}

/// Case 5: a run dies after its first flip (customers); an operator rolls customers back; then
/// recovery must not roll the run's other datasets forward onto that base. Nothing of the run
/// is visible, so it is marked FAILED, the rolled-back version's files are kept for history,
/// and a rerun publishes normally.
#[test]
fn recovery_does_not_roll_forward_onto_a_base_that_was_rolled_back() {
    let env = Env::new();
    let toml = crate::pipeline::shop(&env, 2, &[]);
    let toml = toml.to_str().unwrap();
    env.ok(&["run", "--pipeline", toml]);
    let out = env
        .cmd(&["run", "--pipeline", toml, "--force"])
        .env("STRATA_CRASH_AT", "after-flip#1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), None, "killed at the first flip: {}", stderr(&out));
    let current = |ds: &str| -> u64 {
        let v: serde_json::Value =
            serde_json::from_str(&env.ok(&["versions", ds, "--json"])).unwrap();
        v.as_array().unwrap().iter().find(|v| v["current"] == true).unwrap()["version"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(current("customers"), 2, "the first flip landed");
    env.ok(&["rollback", "customers", "--to", "1"]);
    let out = env.ok(&["recover"]);
    assert!(out.contains("-> FAILED"), "{out}");
    assert!(
        out.contains("customers: version 2 of this run was published, then the pointer moved"),
        "{out}"
    );
    assert!(out.contains("nothing of the run is visible now"), "{out}");
    for ds in DATASETS {
        assert_eq!(current(ds), 1, "{ds}: nothing of the killed run is current");
    }
    // The rolled-back version is still whole: history names it, so its files were kept.
    env.ok(&["verify", "customers", "--version", "2"]);
    env.ok(&["run", "--pipeline", toml, "--force"]);
    assert_sound(&env);
}
