//! Operators racing each other on the real binary (issue 21): approve against reject, approve
//! against approve, approving a held run after a newer run published, and recovery after an
//! operator rolled back part of a half-published run. After each: every current version
//! verifies, no entry number of any run log is doubled, nothing is orphaned, and exactly one of
//! the racers went ahead.

use std::process::{Output, Stdio};

use crate::harness::Env;
use crate::quality::{latest_run, shop_with};
use crate::runs::{block_on, open, orphans, DATASETS};

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
    let out = env.held(&["run", "--pipeline", &toml]);
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
        for m in strata_runs::log::list_runs(&lake).await.unwrap() {
            let log = strata_runs::log::run_log(&lake, &m.run_id).await.unwrap();
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
fn stale_approval_on(make: impl Fn() -> Env) {
    let env = make();
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

#[test]
fn approving_a_held_run_after_a_newer_run_published_is_refused() {
    stale_approval_on(Env::new);
}

#[test]
fn approving_a_held_run_after_a_newer_run_published_is_refused_s3() {
    if Env::s3().is_some() {
        stale_approval_on(|| Env::s3().unwrap());
    }
}

/// Case 5: a run dies after its first flip (customers); an operator rolls customers back; then
/// recovery must not roll the run's other datasets forward onto that base. Nothing of the run
/// is visible, so it is marked FAILED, the rolled-back version's files are kept for history,
/// and a rerun publishes normally.
fn no_roll_forward_onto_rolled_back_base_on(make: impl Fn() -> Env) {
    let env = make();
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

#[test]
fn recovery_does_not_roll_forward_onto_a_base_that_was_rolled_back() {
    no_roll_forward_onto_rolled_back_base_on(Env::new);
}

#[test]
fn recovery_does_not_roll_forward_onto_a_base_that_was_rolled_back_s3() {
    if Env::s3().is_some() {
        no_roll_forward_onto_rolled_back_base_on(|| Env::s3().unwrap());
    }
}

/// Runs over disjoint windows at once (`--only daily_revenue --date D`, no lookback) all
/// publish: each re-merges onto the versions the others published, and the result is what the
/// same runs one after another publish.
fn disjoint_windows_on(make: impl Fn() -> Env, n: usize) {
    let days = ["2026-01-01", "2026-01-02", "2026-01-03"];
    let sequential = {
        let env = make();
        let toml = crate::pipeline::shop(&env, 0, &[]);
        let toml = toml.to_str().unwrap();
        env.ok(&["run", "--pipeline", toml]);
        for d in days {
            env.ok(&["run", "--pipeline", toml, "--only", "daily_revenue", "--date", d, "--force"]);
        }
        revenue(&env)
    };
    for _ in 0..n {
        let env = make();
        let toml = crate::pipeline::shop(&env, 0, &[]);
        let toml = toml.to_str().unwrap();
        env.ok(&["run", "--pipeline", toml]);
        let children: Vec<_> = days
            .iter()
            .map(|d| {
                env.cmd(&[
                    "run",
                    "--pipeline",
                    toml,
                    "--only",
                    "daily_revenue",
                    "--date",
                    d,
                    "--force",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
            })
            .collect();
        for c in children {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success(), "a disjoint run failed: {}", stderr(&out));
        }
        assert_eq!(revenue(&env), sequential);
        let v: serde_json::Value =
            serde_json::from_str(&env.ok(&["versions", "daily_revenue", "--json"])).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 4, "one version per run");
        assert_sound(&env);
    }
}

fn revenue(env: &Env) -> String {
    env.ok(&["query", "SELECT * FROM daily_revenue ORDER BY 1", "--format", "csv"])
}

#[test]
fn runs_over_disjoint_windows_all_publish() {
    disjoint_windows_on(Env::new, trials(4));
}

#[test]
fn runs_over_disjoint_windows_all_publish_s3() {
    if Env::s3().is_some() {
        disjoint_windows_on(|| Env::s3().unwrap(), trials(2));
    }
}

/// A run killed after its first flip; then `strata recover` and a new `strata run` (which
/// recovers first) race. Whoever settles the killed run, it is settled once, and the lake ends
/// with what an uninterrupted run publishes.
fn recover_and_run_on(make: impl Fn() -> Env, n: usize) {
    for _ in 0..n {
        let env = make();
        let toml = crate::pipeline::shop(&env, 2, &[]);
        let toml = toml.to_str().unwrap();
        let out = env
            .cmd(&["run", "--pipeline", toml])
            .env("STRATA_CRASH_AT", "after-flip#2")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), None, "killed: {}", stderr(&out));
        let (rec, run) = race(&env, &["recover"], &["run", "--pipeline", toml]);
        for (what, o) in [("recover", &rec), ("run", &run)] {
            assert!(
                matches!(o.status.code(), Some(0 | 4)),
                "{what}: exit {:?}: {}",
                o.status.code(),
                stderr(o)
            );
        }
        env.ok(&["recover"]);
        env.ok(&["run", "--pipeline", toml]);
        let states: serde_json::Value = serde_json::from_str(&env.ok(&["runs", "--json"])).unwrap();
        for r in states.as_array().unwrap() {
            assert!(matches!(r["state"].as_str(), Some("PUBLISHED" | "FAILED")), "{r}");
        }
        assert_sound(&env);
    }
}

#[test]
fn recover_and_run_racing_settle_a_killed_run_once() {
    recover_and_run_on(Env::new, trials(3));
}

#[test]
fn recover_and_run_racing_settle_a_killed_run_once_s3() {
    if Env::s3().is_some() {
        recover_and_run_on(|| Env::s3().unwrap(), trials(1));
    }
}

/// A run killed after its first flip (customers); then an operator's rollback of customers and
/// `strata recover` race. Recovery never finishes the run on a base the rollback moved: the run
/// ends PUBLISHED (recovery finished first, then the rollback applied) or FAILED (the rollback
/// came first), never UNKNOWN, and everything current verifies.
fn rollback_and_recover_on(make: impl Fn() -> Env, n: usize) {
    for _ in 0..n {
        let env = make();
        let toml = crate::pipeline::shop(&env, 2, &[]);
        let toml = toml.to_str().unwrap();
        env.ok(&["run", "--pipeline", toml]);
        let out = env
            .cmd(&["run", "--pipeline", toml, "--force"])
            .env("STRATA_CRASH_AT", "after-flip#1")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), None, "killed: {}", stderr(&out));
        let (rb, rec) = race(&env, &["rollback", "customers", "--to", "1"], &["recover"]);
        // The rollback waits (exit 4) while recovery holds the run's partitions; then again.
        assert!(matches!(rb.status.code(), Some(0 | 4)), "rollback: {}", stderr(&rb));
        assert!(matches!(rec.status.code(), Some(0 | 4)), "recover: {}", stderr(&rec));
        env.ok(&["recover"]);
        if !rb.status.success() {
            env.ok(&["rollback", "customers", "--to", "1"]);
        }
        let killed =
            &serde_json::from_str::<serde_json::Value>(&env.ok(&["runs", "--json"])).unwrap()[0];
        assert!(matches!(killed["state"].as_str(), Some("PUBLISHED" | "FAILED")), "{killed}");
        // Every version the killed run made current is whole, the rolled-back one included.
        for ds in DATASETS {
            let v: serde_json::Value =
                serde_json::from_str(&env.ok(&["versions", ds, "--json"])).unwrap();
            for version in v.as_array().unwrap() {
                let n = version["version"].to_string();
                env.ok(&["verify", ds, "--version", &n]);
            }
        }
        env.ok(&["run", "--pipeline", toml, "--force"]);
        assert_sound(&env);
    }
}

#[test]
fn rollback_and_recover_racing_never_leave_a_run_on_a_moved_base() {
    rollback_and_recover_on(Env::new, trials(3));
}

#[test]
fn rollback_and_recover_racing_never_leave_a_run_on_a_moved_base_s3() {
    if Env::s3().is_some() {
        rollback_and_recover_on(|| Env::s3().unwrap(), trials(1));
    }
}

/// An approval of a held run races a newer run that publishes a new order: the new order is
/// never lost. Either the approval goes first and the newer run publishes on top of it, or the
/// newer run goes first and the approval is refused (exit 5), or one of them finds the other
/// holding the partitions (exit 4).
fn old_approval_and_newer_run_on(make: impl Fn() -> Env, n: usize) {
    for _ in 0..n {
        let env = make();
        let id = held(&env);
        let toml = env.path("shop/strata.toml");
        let text = std::fs::read_to_string(&toml).unwrap().replace("MANUAL_REVIEW", "WARN");
        std::fs::write(&toml, text).unwrap();
        std::fs::write(
            env.path("shop/data/orders/orders-2026-01-04.csv"),
            "order_id,customer_id,order_date,amount,status,updated_at\n\
             2001,1,2026-01-03,12.50,paid,2026-01-03T10:00:00\n",
        )
        .unwrap();
        let toml = toml.to_str().unwrap();
        let (approve, run) = race(&env, &["approve", &id], &["run", "--pipeline", toml]);
        for (what, o) in [("approve", &approve), ("run", &run)] {
            assert!(
                matches!(o.status.code(), Some(0 | 4 | 5)),
                "{what}: exit {:?}: {}",
                o.status.code(),
                stderr(o)
            );
        }
        if run.status.success() {
            let n = env.ok(&[
                "query",
                "SELECT count(*) AS n FROM orders WHERE order_id = 2001",
                "--format",
                "csv",
            ]);
            assert_eq!(n, "n\n1\n", "the newer run's order is published");
        }
        // Settle: a held run left is rejected, then everything runs once more.
        if latest_state(&env, &id) == "AWAITING_REVIEW" {
            env.ok(&["reject", &id]);
        }
        env.ok(&["run", "--pipeline", toml]);
        assert_sound(&env);
    }
}

#[test]
fn approving_an_old_held_run_while_a_newer_run_publishes_never_loses_the_newer_data() {
    old_approval_and_newer_run_on(Env::new, trials(3));
}

#[test]
fn approving_an_old_held_run_while_a_newer_run_publishes_never_loses_the_newer_data_s3() {
    if Env::s3().is_some() {
        old_approval_and_newer_run_on(|| Env::s3().unwrap(), trials(1));
    }
}

fn latest_state(env: &Env, id: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(&env.ok(&["show-run", id, "--json"])).unwrap();
    let entries =
        v.as_array().cloned().unwrap_or_else(|| v["entries"].as_array().cloned().unwrap());
    entries.last().unwrap()["state"].as_str().unwrap().to_string()
}

/// A run stopped (SIGSTOP, as a suspended VM or a frozen container would) while COMMITTING,
/// past its lock's lease: its process is alive on this host, so recovery leaves it alone
/// instead of removing what it is about to publish; resumed, it publishes, and nothing is lost.
#[test]
fn a_run_paused_past_its_lease_is_left_alone_and_publishes_when_resumed() {
    let env = Env::new();
    let toml = crate::pipeline::shop(&env, 2, &[]);
    let toml = toml.to_str().unwrap();
    let child = env
        .cmd(&["run", "--pipeline", toml])
        .env("STRATA_LOCK_LEASE_SECS", "1")
        .env("STRATA_PAUSE_AT", "before-flips:2000")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    };
    let started = std::time::Instant::now();
    loop {
        let runs = env.run(&["runs", "--json"]);
        let text = String::from_utf8_lossy(&runs.stdout);
        if text.contains("COMMITTING") {
            break;
        }
        assert!(started.elapsed().as_secs() < 120, "the run never reached COMMITTING: {text}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    signal("-STOP");
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let out = env.ok(&["recover"]);
    assert!(out.contains("alone") && out.contains("still running"), "{out}");
    signal("-CONT");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the resumed run: {}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("PUBLISHED"));
    assert_eq!(latest_state(&env, latest_run(&env)["run_id"].as_str().unwrap()), "PUBLISHED");
    assert_sound(&env);
}
