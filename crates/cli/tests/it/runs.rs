//! Run manifests, recovery, locking and reruns, on the real binary: killed at every named crash
//! point and at random moments, then recovered and rerun, on local disk and on S3.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};
use strata_publish::{Lake, OpenMode};

use crate::harness::Env;
use crate::pipeline::shop;

pub(crate) const DATASETS: [&str; 6] = [
    "customers",
    "customers.quarantine",
    "daily_revenue",
    "orders",
    "orders.quarantine",
    "revenue_7d",
];

/// Per dataset: rows, sha256 of its rows sorted (order-independent content), and the sha256 of
/// every file of the current version (byte identity).
type Published = BTreeMap<String, (usize, String, Vec<String>)>;

fn published(env: &Env) -> Published {
    let mut out = BTreeMap::new();
    for ds in DATASETS {
        let csv = env.ok(&["query", &format!("SELECT * FROM \"{ds}\""), "--format", "csv"]);
        let mut lines: Vec<&str> = csv.lines().skip(1).collect();
        lines.sort_unstable();
        let content = hex::encode(Sha256::digest(lines.join("\n").as_bytes()));
        let files: serde_json::Value =
            serde_json::from_str(&env.ok(&["files", ds, "--json"])).unwrap();
        let mut shas: Vec<String> = files["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["sha256"].as_str().unwrap().to_string())
            .collect();
        shas.sort();
        out.insert(ds.to_string(), (lines.len(), content, shas));
    }
    out
}

fn assert_no_duplicates(env: &Env, what: &str) {
    for (ds, key) in [("orders", "order_id"), ("customers", "customer_id")] {
        let sql = format!("SELECT count(*) - count(DISTINCT {key}) AS dups FROM {ds}");
        assert_eq!(env.ok(&["query", &sql, "--format", "csv"]), "dups\n0\n", "{what}: {ds}");
    }
}

pub(crate) fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

pub(crate) fn open(env: &Env) -> Lake {
    Lake::open(&env.lake_url, OpenMode::Existing).unwrap()
}

/// Every object of the lake that nothing accounts for: staged files no published version lists,
/// version records never published, locks left behind, raw batches without their manifest.
pub(crate) fn orphans(env: &Env) -> Vec<String> {
    block_on(async {
        let lake = open(env);
        let all: Vec<String> =
            lake.store().list(None).map_ok(|m| m.location.to_string()).try_collect().await.unwrap();
        let mut referenced = BTreeSet::new();
        for name in lake.datasets().await.unwrap() {
            let ds = lake.dataset(&name).unwrap();
            for v in ds.versions().await.unwrap() {
                let record = ds.version(v.brief.version).await.unwrap();
                referenced.insert(
                    strata_publish::layout::version_path(&name, v.brief.version).to_string(),
                );
                referenced.extend(record.files().map(|f| f.path.clone()));
                referenced.extend(record.chunks.iter().map(|c| c.path.clone()));
            }
        }
        let batches: BTreeSet<String> = all
            .iter()
            .filter(|p| p.starts_with("_raw/") && p.ends_with("/_batch.json"))
            .map(|p| p.trim_end_matches("_batch.json").to_string())
            .collect();
        // A log entry must announce a batch that was committed (a crash may announce one twice).
        let mut announced = BTreeSet::new();
        for p in all.iter().filter(|p| p.starts_with("_raw/") && p.contains("/_log/")) {
            let bytes = lake.store().get(&p.as_str().into()).await.unwrap().bytes().await.unwrap();
            let entry: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            let source = p.split('/').nth(1).unwrap();
            let batch = format!("_raw/{source}/batch={}/", entry["batch_id"].as_str().unwrap());
            if batches.contains(&batch) {
                announced.insert(p.clone());
            }
        }
        // A source's index names its chunks. An index write killed between its chunks and its
        // index file leaves a whole chunk it does not name (a later write sweeps it once it is
        // an hour old); anything else under `_index/` is not accounted for.
        let mut indexed = BTreeSet::new();
        for p in all.iter().filter(|p| p.starts_with("_raw/") && p.ends_with("/_index.json")) {
            let bytes = lake.store().get(&p.as_str().into()).await.unwrap().bytes().await.unwrap();
            let index: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            for c in index["chunks"].as_array().into_iter().flatten() {
                indexed.insert(c["path"].as_str().unwrap().to_string());
            }
        }
        let unnamed: Vec<&String> =
            all.iter().filter(|p| p.contains("/_index/") && !indexed.contains(*p)).collect();
        for p in unnamed {
            let bytes = lake.store().get(&p.as_str().into()).await.unwrap().bytes().await.unwrap();
            let chunk: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            let ids = chunk["batches"].as_array().cloned().unwrap_or_default();
            let whole = chunk["format"] == strata_land::INDEX_CHUNK_FORMAT
                && !ids.is_empty()
                && ids.iter().all(|b| {
                    let id = b["manifest"]["batch_id"].as_str().unwrap_or_default();
                    batches.iter().any(|d| d.ends_with(&format!("/batch={id}/")))
                });
            if whole {
                indexed.insert(p.clone());
            }
        }
        all.into_iter()
            .filter(|p| {
                if p.contains("/run_id=") || p.contains("/_strata/versions/") {
                    !referenced.contains(p)
                } else if p.starts_with("_strata/locks/") {
                    true
                } else if p.starts_with("_raw/") && p.contains("/_log/") {
                    !announced.contains(p)
                } else if p.starts_with("_raw/") && p.contains("/_index/") {
                    !indexed.contains(p)
                } else if p.starts_with("_raw/") && !p.ends_with("/_index.json") {
                    // The index of a source is a cache of its batches, not a batch.
                    !batches.iter().any(|b| p.starts_with(b.as_str()))
                } else {
                    false
                }
            })
            .collect()
    })
}

pub(crate) fn run_ids(env: &Env, status: &str) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(&env.ok(&["runs", "--status", status, "--json"])).unwrap();
    v.as_array().unwrap().iter().map(|r| r["run_id"].as_str().unwrap().to_string()).collect()
}

fn killed(out: &std::process::Output, what: &str) {
    assert_eq!(
        out.status.code(),
        None,
        "{what}: expected the process to be killed; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The state an uninterrupted run publishes.
fn baseline(make: &impl Fn() -> Env) -> Published {
    let env = make();
    let toml = shop(&env, 2, &[]);
    env.ok(&["run", "--pipeline", toml.to_str().unwrap()]);
    published(&env)
}

#[test]
fn crash_matrix() {
    crash_matrix_on(Env::new);
}

#[test]
fn crash_matrix_s3() {
    if Env::s3().is_some() {
        crash_matrix_on(|| Env::s3().unwrap());
    }
}

fn crash_matrix_on(make: impl Fn() -> Env) {
    let expected = baseline(&make);
    // `#n`: the n-th time the point is reached. The shop pipeline lands 5 batches, stages 6
    // datasets (2 per cleaned dataset, 1 per model), prepares 6 records and flips 6 pointers.
    let points = [
        "mid-file-write",       // landing the first batch
        "land-before-manifest", // a batch's files written, its manifest not
        "after-lock",           // locks taken, no manifest yet
        "mid-file-write#9",     // RUNNING: writing the first staged data file
        "after-stage",          // RUNNING: one dataset staged
        "after-stage#3",        // RUNNING: a cleaned stage done, the next half-way
        "after-stage#6",        // RUNNING: every stage staged
        "after-version-record", // COMMITTING: first record prepared
        "after-version-record#4",
        "before-flips", // COMMITTING: every record prepared, no flip
        "after-flip",   // COMMITTING: one pointer flipped
        "after-flip#5", // COMMITTING: all but one flipped
    ];
    for point in points {
        let env = make();
        let toml = shop(&env, 2, &[]);
        let toml = toml.to_str().unwrap();
        let out =
            env.cmd(&["run", "--pipeline", toml]).env("STRATA_CRASH_AT", point).output().unwrap();
        killed(&out, point);
        let rec: serde_json::Value = serde_json::from_str(&env.ok(&["recover", "--json"])).unwrap();
        let recovered = rec["recovered"].as_array().unwrap();
        match point {
            // Killed before the run's manifest existed: nothing to recover.
            "mid-file-write" | "land-before-manifest" | "after-lock" => {
                assert!(recovered.is_empty(), "{point}: {rec}")
            }
            // Killed after a flip: recovery rolls the rest forward.
            "after-flip" | "after-flip#5" => {
                assert_eq!(recovered[0]["to"], "PUBLISHED", "{point}: {rec}")
            }
            _ => assert_eq!(recovered[0]["to"], "FAILED", "{point}: {rec}"),
        }
        env.ok(&["run", "--pipeline", toml]);
        assert_eq!(
            published(&env),
            expected,
            "{point}: the rerun publishes what an uninterrupted run does"
        );
        assert_no_duplicates(&env, point);
        assert_eq!(
            orphans(&env),
            Vec::<String>::new(),
            "{point}: orphans after recovery and rerun"
        );
        assert!(run_ids(&env, "RUNNING").is_empty() && run_ids(&env, "COMMITTING").is_empty());
    }
    // Killed during recovery itself: recovering again finishes the job.
    let env = make();
    let toml = shop(&env, 2, &[]);
    let toml = toml.to_str().unwrap();
    let out = env
        .cmd(&["run", "--pipeline", toml])
        .env("STRATA_CRASH_AT", "before-flips")
        .output()
        .unwrap();
    killed(&out, "before-flips");
    let out = env.cmd(&["recover"]).env("STRATA_CRASH_AT", "during-recovery").output().unwrap();
    killed(&out, "during-recovery");
    assert_eq!(run_ids(&env, "COMMITTING").len(), 1, "the interrupted recovery recorded nothing");
    let again = env.ok(&["recover"]);
    assert!(again.contains("COMMITTING -> FAILED"), "{again}");
    env.ok(&["run", "--pipeline", toml]);
    assert_eq!(published(&env), expected, "after an interrupted recovery");
    assert_eq!(orphans(&env), Vec::<String>::new());
}

/// A tiny deterministic generator, seeded per test run (printed, and settable with
/// STRATA_TEST_SEED to replay a failure).
struct Rng(u64);

impl Rng {
    fn from_env() -> Self {
        let seed = std::env::var("STRATA_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("random kills: STRATA_TEST_SEED={seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }
}

#[test]
fn random_kills_with_a_concurrent_reader() {
    random_kills_on(Env::new, 6);
}

#[test]
fn random_kills_with_a_concurrent_reader_s3() {
    if Env::s3().is_some() {
        random_kills_on(|| Env::s3().unwrap(), 3);
    }
}

fn random_kills_on(make: impl Fn() -> Env, rounds: usize) {
    let expected = baseline(&make);
    let orders_rows = expected["orders"].0;
    // How long a whole run takes here, to spread the kills over it.
    let probe = make();
    let toml = shop(&probe, 2, &[]);
    let started = Instant::now();
    probe.ok(&["run", "--pipeline", toml.to_str().unwrap()]);
    let full = started.elapsed().as_millis() as u64;
    let mut rng = Rng::from_env();
    for round in 0..rounds {
        let env = Arc::new(make());
        let toml = shop(&env, 2, &[]);
        let toml = toml.to_str().unwrap().to_string();
        // A reader queries all along: it sees no dataset yet, or the whole published version.
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let (env, stop, seen) = (env.clone(), stop.clone(), seen.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let out =
                        env.run(&["query", "SELECT count(*) AS n FROM orders", "--format", "csv"]);
                    let text = if out.status.success() {
                        String::from_utf8_lossy(&out.stdout).to_string()
                    } else {
                        String::from_utf8_lossy(&out.stderr).to_string()
                    };
                    seen.lock().unwrap().push((out.status.code(), text));
                }
            })
        };
        let delay = rng.below(full + full / 2);
        let mut child = env
            .cmd(&["run", "--pipeline", &toml])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        let _ = child.kill(); // SIGKILL
        let status = child.wait().unwrap();
        let what = format!("round {round}: SIGKILL after {delay} ms (exit {:?})", status.code());
        env.ok(&["run", "--pipeline", &toml]); // recovers first, then runs (or finds it done)
        stop.store(true, Ordering::SeqCst);
        reader.join().unwrap();
        assert_eq!(published(&env), expected, "{what}");
        assert_no_duplicates(&env, &what);
        assert_eq!(orphans(&env), Vec::<String>::new(), "{what}");
        for (code, text) in seen.lock().unwrap().iter() {
            match code {
                Some(0) => assert_eq!(text, &format!("n\n{orders_rows}\n"), "{what}: partial version seen"),
                _ => assert!(
                    text.contains("not found") || text.contains("does not exist") || text.contains("no published version"),
                    "{what}: the reader failed for another reason than 'nothing published yet': {text}"
                ),
            }
        }
    }
}

fn put_lock(env: &Env, path: &str, run: &str, host: &str, expires_in: i64) {
    block_on(async {
        let lake = Lake::open(&env.lake_url, OpenMode::Create).unwrap();
        let now = chrono::Utc::now();
        let info = serde_json::json!({
            "format": "strata.lock.v1", "run_id": run, "host": host, "pid": 1,
            "acquired_at": now - chrono::Duration::hours(1),
            "expires_at": now + chrono::Duration::seconds(expires_in),
        });
        lake.store()
            .put(&Path::from(path), PutPayload::from(serde_json::to_vec(&info).unwrap()))
            .await
            .unwrap();
    });
}

#[test]
fn locks_live_stale_and_dead() {
    locks_on(Env::new);
}

#[test]
fn locks_live_stale_and_dead_s3() {
    if Env::s3().is_some() {
        locks_on(|| Env::s3().unwrap());
    }
}

fn locks_on(make: impl Fn() -> Env) {
    let env = make();
    let toml = shop(&env, 2, &[]);
    let toml = toml.to_str().unwrap();
    // A live run on another host holds the whole of `orders`: fail fast, naming it.
    put_lock(&env, "_strata/locks/orders/_all.json", "ghost-run", "elsewhere", 3600);
    let line = env.busy(&["run", "--pipeline", toml]);
    assert!(line.contains("locked by run ghost-run") && line.contains("elsewhere"), "{line}");
    assert!(run_ids(&env, "PLANNED").is_empty(), "nothing was recorded: {line}");
    // Its lease expired: the lock is taken over.
    put_lock(&env, "_strata/locks/orders/_all.json", "ghost-run", "elsewhere", -60);
    env.ok(&["run", "--pipeline", toml]);
    assert_eq!(orphans(&env), Vec::<String>::new(), "the run released its locks");
    // A lock whose process on this host is gone is taken over at once, lease or not.
    let out = env
        .cmd(&["run", "--pipeline", toml, "--date", "2026-01-02"])
        .env("STRATA_CRASH_AT", "after-lock")
        .output()
        .unwrap();
    killed(&out, "after-lock");
    let out = env.ok(&["run", "--pipeline", toml, "--date", "2026-01-02"]);
    assert!(out.contains("PUBLISHED"), "{out}");
    assert_eq!(orphans(&env), Vec::<String>::new());
}

#[test]
fn overlapping_runs_exclude_each_other_and_disjoint_ones_both_publish() {
    let env = Env::new();
    let toml = shop(&env, 2, &[]);
    let toml = toml.to_str().unwrap();
    env.ok(&["run", "--pipeline", toml]);
    let before = published(&env);
    let only = ["--only", "orders", "daily_revenue", "revenue_7d"];
    // Run A pauses with everything prepared, holding its locks.
    let mut a_args = vec!["run", "--pipeline", toml, "--date", "2026-01-02"];
    a_args.extend_from_slice(&only);
    let a = env
        .cmd(&a_args)
        .env("STRATA_PAUSE_AT", "before-flips:6000")
        // A one-second lease: A's lock stays live through its pause only if it is renewed.
        .env("STRATA_LOCK_LEASE_SECS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let a_id = loop {
        if let Some(id) = run_ids(&env, "COMMITTING").pop() {
            break id;
        }
        assert!(Instant::now() < deadline, "run A never reached COMMITTING");
        std::thread::sleep(Duration::from_millis(50));
    };
    // B overlaps A: it fails at once, naming A; recovery leaves the live A alone.
    let mut b_args = vec!["run", "--pipeline", toml, "--date", "2026-01-03"];
    b_args.extend_from_slice(&only);
    let line = env.busy(&b_args);
    assert!(line.contains(&format!("locked by run {a_id}")), "{line}");
    assert_eq!(run_ids(&env, "COMMITTING"), vec![a_id.clone()], "A untouched");
    // C writes other partitions: it publishes while A waits.
    // (Not `orders` itself: every window run of a cleaned dataset also rewrites the quarantine
    // of rows with no readable date, so two of them always overlap.)
    let c_args = vec![
        "run",
        "--pipeline",
        toml,
        "--date",
        "2026-02-20",
        "--only",
        "daily_revenue",
        "revenue_7d",
    ];
    env.ok(&c_args);
    // A then publishes on top of C (its partitions were untouched): both are in the history.
    let a_out = a.wait_with_output().unwrap();
    assert!(a_out.status.success(), "A: {}", String::from_utf8_lossy(&a_out.stderr));
    for ds in ["orders", "daily_revenue", "revenue_7d"] {
        let history = env.ok(&["history", ds, "--json"]);
        assert!(history.contains(&a_id), "{ds}: {history}");
    }
    let history = env.ok(&["history", "revenue_7d", "--json"]);
    let c_id =
        run_ids(&env, "PUBLISHED").into_iter().find(|r| history.contains(r.as_str()) && *r != a_id);
    assert!(c_id.is_some(), "C published too: {history}");
    assert_eq!(published(&env)["orders"].1, before["orders"].1, "same rows as before");
    assert_no_duplicates(&env, "after concurrent runs");
    assert_eq!(orphans(&env), Vec::<String>::new());
}

#[test]
fn rerun_after_a_late_crash_reuses_finished_stages() {
    let env = Env::new();
    let expected = baseline(&Env::new);
    let toml = shop(&env, 2, &[]);
    let toml = toml.to_str().unwrap();
    let stages = |r: &serde_json::Value| -> Vec<serde_json::Value> {
        r["stages"].as_array().unwrap().iter().filter(|s| s["stage"] != "land").cloned().collect()
    };
    // An early crash (the first data file) leaves nothing to reuse: every stage is computed.
    let out = env
        .cmd(&["run", "--pipeline", toml])
        .env("STRATA_CRASH_AT", "after-stage")
        .output()
        .unwrap();
    killed(&out, "after-stage");
    let early: serde_json::Value =
        serde_json::from_str(&env.ok(&["run", "--pipeline", toml, "--force", "--json"])).unwrap();
    assert_eq!(stages(&early).len(), 4);
    assert!(stages(&early).iter().all(|s| s.get("reused_from").is_none()), "{early}");
    // A late crash (everything staged, nothing flipped): the rerun computes no stage again.
    let out = env
        .cmd(&["run", "--pipeline", toml, "--force"])
        .env("STRATA_CRASH_AT", "before-flips")
        .output()
        .unwrap();
    killed(&out, "before-flips");
    let crashed = run_ids(&env, "COMMITTING").pop().unwrap();
    let late: serde_json::Value =
        serde_json::from_str(&env.ok(&["run", "--pipeline", toml, "--force", "--json"])).unwrap();
    let reused: Vec<String> = stages(&late)
        .iter()
        .filter_map(|s| s["reused_from"].as_str().map(str::to_string))
        .collect();
    assert_eq!(reused, vec![crashed.clone(); 4], "{late}");
    assert_eq!(published(&env), expected, "reused output is the same output");
    assert_eq!(orphans(&env), Vec::<String>::new());
}

#[test]
fn operator_commands_and_idempotent_reruns() {
    let env = Env::new();
    let toml = shop(&env, 2, &[]);
    let toml = toml.to_str().unwrap();
    let out = env
        .cmd(&["run", "--pipeline", toml])
        .env("STRATA_CRASH_AT", "before-flips")
        .output()
        .unwrap();
    killed(&out, "before-flips");
    let id = run_ids(&env, "COMMITTING").pop().unwrap();
    let line = env.user_error(&["recover", "--run", "no-such-run"]);
    assert!(line.contains("no run \"no-such-run\""), "{line}");
    let shown = env.ok(&["show-run", &id]);
    for part in [
        "state      COMMITTING",
        "INPUT_LOCKED",
        "inputs     5 raw batch(es)",
        "orders: the whole dataset  (prepared v1, not published)",
        "checkpoints",
    ] {
        assert!(shown.contains(part), "{part:?} in {shown}");
    }
    let log: serde_json::Value =
        serde_json::from_str(&env.ok(&["show-run", &id, "--json"])).unwrap();
    let states: Vec<&str> =
        log.as_array().unwrap().iter().map(|e| e["state"].as_str().unwrap()).collect();
    assert_eq!(states.first(), Some(&"PLANNED"));
    assert_eq!(states.last(), Some(&"COMMITTING"));
    let line = env.user_error(&["runs", "--status", "DONE"]);
    assert!(line.contains("INPUT_LOCKED"), "{line}");
    let rec: serde_json::Value =
        serde_json::from_str(&env.ok(&["recover", "--run", &id, "--json"])).unwrap();
    assert_eq!(rec["recovered"][0]["to"], "FAILED");
    let line = env.user_error(&["recover", "--run", &id]);
    assert!(line.contains("already FAILED"), "{line}");
    let line = env.user_error(&["show-run", "no-such-run"]);
    assert!(line.contains("strata runs"), "{line}");
    assert_eq!(run_ids(&env, "FAILED"), vec![id.clone()]);
    assert!(env.ok(&["recover"]).contains("nothing to recover"));
    // The run, then the same run again: a no-op that says so; --force publishes byte-identical.
    env.ok(&["run", "--pipeline", toml]);
    let first = published(&env);
    let again = env.ok(&["run", "--pipeline", toml]);
    assert!(again.contains("nothing to do") && again.contains("--force"), "{again}");
    assert_eq!(run_ids(&env, "PUBLISHED").len(), 1, "the no-op recorded no run");
    let versions = |ds: &str| -> usize {
        serde_json::from_str::<serde_json::Value>(&env.ok(&["versions", ds, "--json"]))
            .unwrap()
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(versions("orders"), 1);
    env.ok(&["run", "--pipeline", toml, "--force"]);
    assert_eq!(versions("orders"), 2, "--force published a new version");
    assert_eq!(published(&env), first, "byte-identical");
    assert_eq!(run_ids(&env, "PUBLISHED").len(), 2);
    // A run of the models alone pins the cleaned versions it reads, in its manifest.
    let out =
        env.ok(&["run", "--pipeline", toml, "--only", "daily_revenue", "--date", "2026-01-02"]);
    let id = out.split_whitespace().nth(1).unwrap().to_string();
    let shown = env.ok(&["show-run", &id]);
    assert!(shown.contains("reads      orders v2 (latest: published by run "), "{shown}");
    assert!(shown.contains(", rows "), "the binding holds the hash of its rows: {shown}");
    assert!(shown.contains("checks     2 of 2 passed"), "{shown}");
    let log: serde_json::Value =
        serde_json::from_str(&env.ok(&["show-run", &id, "--json"])).unwrap();
    let last = log.as_array().unwrap().last().unwrap();
    assert_eq!(last["reference_data"][0]["dataset"], "orders");
    assert_eq!(last["reference_data"][0]["version"], 2);
    let table = env.ok(&["runs"]);
    assert!(
        table.starts_with("RUN") && table.contains("FAILED") && table.contains("PUBLISHED"),
        "{table}"
    );
}
