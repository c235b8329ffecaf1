//! The publish protocol as a user drives it from the command line.

use crate::harness::{rows, write_orders, Env};

fn setup_two_versions(env: &Env) {
    let mut v1 = rows(1, 3, "2026-01-01", 10);
    v1.extend(rows(4, 2, "2026-01-02", 20));
    env.orders_file("in/v1.parquet", &v1);
    env.orders_file("in/v2.parquet", &rows(100, 4, "2026-01-02", 25));
    let out =
        env.ok(&["publish", "orders", "--from", "in/v1.parquet", "--partition-by", "order_date"]);
    assert!(out.starts_with("published orders version 1 "), "{out}");
    assert!(out.contains("2 partition(s) written, 0 reused"), "{out}");
    // The second publish keeps the partitioning without --partition-by and reuses 2026-01-01.
    let out =
        env.ok(&["publish", "orders", "--from", "in/v2.parquet", "--reason", "late corrections"]);
    assert!(out.starts_with("published orders version 2 "), "{out}");
    assert!(out.contains("1 partition(s) written, 1 reused"), "{out}");
}

#[test]
fn publish_list_rollback_query_verify_local() {
    publish_list_rollback_query_verify(&Env::new());
}

#[test]
fn publish_list_rollback_query_verify_s3() {
    if let Some(env) = Env::s3() {
        publish_list_rollback_query_verify(&env);
    }
}

fn publish_list_rollback_query_verify(env: &Env) {
    setup_two_versions(env);

    let datasets = env.ok(&["datasets"]);
    assert!(datasets.lines().next().unwrap().starts_with("DATASET"), "{datasets}");
    assert!(datasets.lines().nth(1).unwrap().starts_with("orders   2 "), "{datasets}");

    let versions = env.ok(&["versions", "orders"]);
    let lines: Vec<&str> = versions.lines().collect();
    assert!(lines[0].starts_with("VERSION"), "{versions}");
    assert!(lines[1].starts_with("1 "), "{versions}");
    assert!(lines[2].starts_with("2 *"), "{versions}");
    let json: serde_json::Value =
        serde_json::from_str(&env.ok(&["versions", "orders", "--json"])).unwrap();
    assert_eq!(json[0]["version"], 1);
    assert_eq!(json[0]["rows"], 5);
    assert_eq!(json[1]["rows"], 3 + 4);
    assert_eq!(json[1]["current"], true);
    assert_eq!(json[1]["parent"], 1);

    let q = |sql: &str| env.ok(&["query", sql, "--format", "csv"]);
    assert_eq!(q("SELECT count(*) AS n, sum(amount) AS total FROM orders"), "n,total\n7,130\n");
    assert_eq!(q("SELECT count(*) AS n FROM \"orders@1\""), "n\n5\n");
    assert_eq!(
        q("SELECT order_date, count(*) AS n FROM orders GROUP BY order_date ORDER BY order_date"),
        "order_date,n\n2026-01-01,3\n2026-01-02,4\n"
    );

    let out = env.ok(&["rollback", "orders", "--to", "1", "--reason", "bad corrections"]);
    assert_eq!(
        out.trim(),
        format!(
            "rolled back orders from version 2 to version 1 (pointer #3, run {})",
            run_id_of(&out)
        )
    );
    assert_eq!(q("SELECT count(*) AS n FROM orders"), "n\n5\n");
    assert_eq!(
        q("SELECT count(*) AS n FROM \"orders@2\""),
        "n\n7\n",
        "older versions stay readable"
    );
    let out = env.ok(&["rollback", "orders", "--to", "1"]);
    assert_eq!(out.trim(), "orders is already at version 1; nothing changed");

    let history = env.ok(&["history", "orders"]);
    let kinds: Vec<Vec<&str>> =
        history.lines().skip(1).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(kinds.len(), 3, "{history}");
    assert_eq!((kinds[0][0], kinds[0][3], kinds[0][4], kinds[0][5]), ("1", "publish", "-", "1"));
    assert_eq!((kinds[2][0], kinds[2][3], kinds[2][4], kinds[2][5]), ("3", "rollback", "2", "1"));
    assert!(
        history.contains("bad corrections") && history.contains("late corrections"),
        "{history}"
    );
    let hjson: serde_json::Value =
        serde_json::from_str(&env.ok(&["history", "orders", "--json"])).unwrap();
    assert_eq!(hjson[2]["kind"], "rollback");
    assert_eq!(hjson[2]["reason"], "bad corrections");

    let out = env.ok(&["verify", "orders"]);
    assert!(out.starts_with("ok: orders version 1: 2 file(s)"), "{out}");
    let out = env.ok(&["verify", "orders", "--version", "2", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["report"]["files_checked"], 2);
    let files = env.ok(&["files", "orders"]);
    let prefix = if env.is_s3() {
        env.lake_url.clone()
    } else {
        std::fs::canonicalize(env.lake()).unwrap().display().to_string()
    };
    assert!(files.lines().all(|l| l.starts_with(&format!("{prefix}/orders/run_id="))), "{files}");
}

fn run_id_of(line: &str) -> String {
    line.trim().trim_end_matches(')').rsplit(' ').next().unwrap().to_string()
}

#[test]
fn lake_flag_before_or_after_the_verb_and_from_the_environment() {
    let env = Env::new();
    env.orders_file("a.parquet", &rows(1, 2, "2026-01-01", 1));
    let lake = env.lake();
    let lake = lake.to_str().unwrap();
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_strata"));
    c.current_dir(env.dir.path()).args([
        "publish",
        "orders",
        "--from",
        "a.parquet",
        "--lake",
        lake,
    ]);
    assert!(c.output().unwrap().status.success());
    for args in
        [vec!["--lake", lake, "datasets", "--json"], vec!["datasets", "--json", "--lake", lake]]
    {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_strata"));
        let out = c.current_dir(env.dir.path()).args(&args).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v[0]["dataset"], "orders", "{args:?}");
    }
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_strata"));
    let out =
        c.current_dir("/").env("STRATA_LAKE", lake).args(["datasets", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["current_version"], 1);
    // The default lake is ./lake.
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_strata"));
    let out = c
        .current_dir(env.dir.path())
        .env_remove("STRATA_LAKE")
        .args(["datasets"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("orders"));
}

#[test]
fn every_verb_teaches_with_help() {
    let env = Env::new();
    let top = env.ok(&["--help"]);
    for verb in
        ["publish", "datasets", "versions", "history", "rollback", "query", "verify", "files"]
    {
        assert!(top.contains(verb), "top-level help lists {verb}");
        let help = env.ok(&[verb, "--help"]);
        assert!(help.contains("Usage: strata"), "{verb}: {help}");
        assert!(help.contains("--lake"), "{verb} help shows the global --lake");
    }
    assert!(env.ok(&["query", "--help"]).contains("\"<dataset>@<version>\""));
    assert!(env.ok(&["publish", "--help"]).contains("--replace-all"));
    assert!(top.contains("Exit codes"));
}

#[test]
fn query_formats_and_files_agree_with_a_direct_parquet_read() {
    let env = Env::new();
    setup_two_versions(&env);
    let json = env.ok(&[
        "query",
        "SELECT order_id, amount FROM orders WHERE order_id < 3 ORDER BY order_id",
        "--format",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        v,
        serde_json::json!([{"order_id": 1, "amount": 10}, {"order_id": 2, "amount": 10}])
    );
    let table = env.ok(&["query", "SELECT order_id FROM orders WHERE order_id = 1"]);
    assert!(table.contains("| order_id |") && table.contains("| 1        |"), "{table}");
    let empty = env.ok(&["query", "SELECT order_id FROM orders WHERE order_id < 0"]);
    assert_eq!(empty.trim(), "(no rows; columns: order_id)");

    // `strata files` names exactly the current version's files; reading them directly gives the
    // same rows as `strata query`.
    let files = env.ok(&["files", "orders"]);
    let paths: Vec<&str> = files.lines().collect();
    assert_eq!(paths.len(), 2);
    let mut direct_rows = 0;
    let mut direct_sum = 0;
    for p in &paths {
        assert!(std::path::Path::new(p).is_absolute(), "{p}");
        let file = std::fs::File::open(p).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        for b in reader {
            let b = b.unwrap();
            direct_rows += b.num_rows();
            let amount = b.column(2).as_any().downcast_ref::<arrow::array::Int64Array>().unwrap();
            direct_sum += amount.iter().flatten().sum::<i64>();
        }
    }
    assert_eq!(
        env.ok(&["query", "SELECT count(*) AS n, sum(amount) AS s FROM orders", "--format", "csv"]),
        format!("n,s\n{direct_rows},{direct_sum}\n")
    );
    let j: serde_json::Value =
        serde_json::from_str(&env.ok(&["files", "orders", "--version", "1", "--json"])).unwrap();
    assert_eq!(j["version"], 1);
    assert_eq!(j["files"].as_array().unwrap().len(), 2);
    assert_eq!(j["files"][0]["partition"], "order_date=2026-01-01");
    let quoted = env.ok(&["files", "orders", "--quoted"]);
    assert!(quoted.starts_with('\'') && quoted.contains("', '"), "{quoted}");
}

#[test]
fn publish_reads_directories_and_replace_all_is_explicit() {
    let env = Env::new();
    write_orders(&env.path("exports/day1/a.parquet"), &rows(1, 2, "2026-01-01", 1));
    write_orders(&env.path("exports/day2/b.parquet"), &rows(3, 2, "2026-01-02", 1));
    std::fs::write(env.path("exports/README.txt"), "not parquet").unwrap();
    env.ok(&["publish", "orders", "--from", "exports", "--partition-by", "order_date"]);
    assert_eq!(env.ok(&["query", "SELECT count(*) AS n FROM orders", "--format", "csv"]), "n\n4\n");
    env.orders_file("only.parquet", &rows(50, 1, "2026-02-01", 5));
    let out = env.ok(&["publish", "orders", "--from", "only.parquet", "--replace-all", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["summary"]["partitions_dropped"], 2);
    assert_eq!(v["summary"]["rows"], 1);
    assert_eq!(env.ok(&["query", "SELECT count(*) AS n FROM orders", "--format", "csv"]), "n\n1\n");
}

#[test]
fn same_input_gives_byte_identical_files() {
    let env = Env::new();
    let mut input = rows(1, 50, "2026-01-01", 3);
    input.extend(rows(51, 50, "2026-01-02", 4));
    env.orders_file("in.parquet", &input);
    let other = Env::new();
    other.orders_file("in.parquet", &input);
    env.ok(&["publish", "orders", "--from", "in.parquet", "--partition-by", "order_date"]);
    other.ok(&["publish", "orders", "--from", "in.parquet", "--partition-by", "order_date"]);
    let shas = |e: &Env| -> Vec<String> {
        let v: serde_json::Value =
            serde_json::from_str(&e.ok(&["files", "orders", "--json"])).unwrap();
        v["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["sha256"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(shas(&env), shas(&other));
    assert_eq!(shas(&env).len(), 2);
}

#[test]
fn concurrent_publish_processes_never_lose_an_update() {
    concurrent_publishes(&Env::new());
}

#[test]
fn concurrent_publish_processes_never_lose_an_update_s3() {
    if let Some(env) = Env::s3() {
        concurrent_publishes(&env);
    }
}

fn concurrent_publishes(env: &Env) {
    env.orders_file("base.parquet", &rows(1, 2, "2026-01-01", 0));
    env.ok(&["publish", "orders", "--from", "base.parquet", "--partition-by", "order_date"]);
    for k in 1..=8 {
        env.orders_file(&format!("p{k}.parquet"), &rows(100 * k, 3, "2026-01-02", k));
    }
    let children: Vec<_> = (1..=8)
        .map(|k| {
            let file = format!("p{k}.parquet");
            env.cmd(&["publish", "orders", "--from", &file])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut succeeded = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        match out.status.code() {
            Some(0) => succeeded += 1,
            Some(4) => {
                let err = String::from_utf8_lossy(&out.stderr);
                // Busy: another publish held the dataset, or flipped first.
                let held = err.contains("is locked by run");
                let moved = err.starts_with("error: conflict: dataset \"orders\" moved")
                    && err.contains("nothing from")
                    && err.contains("re-run");
                assert!(held || moved, "{err}");
            }
            other => panic!("unexpected exit {other:?}: {}", String::from_utf8_lossy(&out.stderr)),
        }
    }
    assert!(succeeded >= 1);
    // Every success is exactly one publish in the history: no lost and no invisible update.
    let history: serde_json::Value =
        serde_json::from_str(&env.ok(&["history", "orders", "--json"])).unwrap();
    let publishes = history.as_array().unwrap().iter().filter(|f| f["kind"] == "publish").count();
    assert_eq!(publishes, 1 + succeeded);
    // The current version holds the base partition and exactly one writer's 2026-01-02.
    let csv = env.ok(&["query", "SELECT count(*) AS n, count(DISTINCT amount) AS writers FROM orders WHERE order_date = '2026-01-02'", "--format", "csv"]);
    assert_eq!(csv, "n,writers\n3,1\n");
    env.ok(&["verify", "orders"]);
}

#[test]
fn names_from_datasets_work_in_sql_double_quoted_where_needed() {
    let env = Env::new();
    env.orders_file("a.parquet", &rows(1, 2, "2026-01-01", 1));
    env.orders_file("b.parquet", &rows(1, 3, "2026-01-01", 1));
    env.ok(&["publish", "cleaned.orders", "--from", "a.parquet"]);
    env.ok(&["publish", "Orders-2", "--from", "b.parquet"]);
    env.ok(&["publish", "daily_revenue", "--from", "a.parquet"]);
    let names: Vec<String> = env
        .ok(&["datasets"])
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    assert_eq!(names, vec!["Orders-2", "cleaned.orders", "daily_revenue"]);
    let count = |sql: &str| env.ok(&["query", sql, "--format", "csv"]);
    assert_eq!(count("SELECT count(*) AS n FROM \"cleaned.orders\""), "n\n2\n");
    assert_eq!(count("SELECT count(*) AS n FROM \"Orders-2\""), "n\n3\n");
    assert_eq!(count("SELECT count(*) AS n FROM daily_revenue"), "n\n2\n");
    assert_eq!(count("SELECT count(*) AS n FROM \"cleaned.orders@1\""), "n\n2\n");
    let tables = count("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name");
    assert_eq!(tables, "table_name\nOrders-2\ncleaned.orders\ndaily_revenue\n");
}

/// `strata files` gives each file where another engine finds it: a partition value outside
/// ASCII is stored percent-encoded on local disk (`k=%C3%A9`), and that is the path printed.
#[test]
fn files_are_listed_where_they_are_stored() {
    let env = Env::new();
    let input = env.path("in.parquet");
    crate::harness::write_orders(&input, &[(1, "é", 5), (2, "a b", 6)]);
    env.ok(&[
        "publish",
        "orders",
        "--from",
        input.to_str().unwrap(),
        "--partition-by",
        "order_date",
    ]);
    let listed = env.ok(&["files", "orders"]);
    let paths: Vec<&str> = listed.lines().collect();
    assert_eq!(paths.len(), 2, "{listed}");
    for p in &paths {
        assert!(std::path::Path::new(p).is_file(), "{p} is not a file; listed:\n{listed}");
    }
    let j: serde_json::Value =
        serde_json::from_str(&env.ok(&["files", "orders", "--json"])).unwrap();
    for f in j["files"].as_array().unwrap() {
        let location = f["location"].as_str().unwrap();
        assert!(std::path::Path::new(location).is_file(), "{location}");
    }
    let quoted = env.ok(&["files", "orders", "--quoted"]);
    for p in &paths {
        assert!(quoted.contains(&format!("'{p}'")), "{quoted}");
    }
}
