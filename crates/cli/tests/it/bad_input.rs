//! Bad input: one clear line on stderr that says what to do, exit code 2, nothing modified.

use crate::harness::{rows, Env};

fn published(env: &Env) {
    env.orders_file("v1.parquet", &rows(1, 3, "2026-01-01", 10));
    env.orders_file("v2.parquet", &rows(10, 3, "2026-01-02", 10));
    env.ok(&["publish", "orders", "--from", "v1.parquet", "--partition-by", "order_date"]);
    env.ok(&["publish", "orders", "--from", "v2.parquet"]);
}

/// Runs `args`, expects a one-line user error containing every `needle`, and checks that the
/// lake is byte-for-byte unchanged.
fn refused(env: &Env, args: &[&str], needles: &[&str]) -> String {
    refused_with(2, env, args, needles)
}

/// Like [`refused`], with exit code `code`.
fn refused_with(code: i32, env: &Env, args: &[&str], needles: &[&str]) -> String {
    let before = env.snapshot();
    let line = env.fails(code, args);
    for n in needles {
        assert!(line.contains(n), "{args:?}: {line:?} should mention {n:?}");
    }
    assert_eq!(env.snapshot(), before, "{args:?} modified the lake");
    line
}

#[test]
fn unknown_dataset_or_version() {
    let env = Env::new();
    published(&env);
    refused(&env, &["versions", "nope"], &["\"nope\" not found", "strata datasets"]);
    refused(&env, &["history", "nope"], &["not found"]);
    refused(&env, &["rollback", "nope", "--to", "1"], &["not found"]);
    refused(&env, &["verify", "nope"], &["not found"]);
    refused(
        &env,
        &["rollback", "orders", "--to", "9"],
        &["no published version 9", "strata versions orders"],
    );
    refused(&env, &["verify", "orders", "--version", "9"], &["no published version 9"]);
    refused(&env, &["files", "orders", "--version", "0"], &["no published version 0"]);
    refused(&env, &["query", "SELECT * FROM \"orders@9\""], &["no published version 9"]);
    refused(&env, &["query", "SELECT * FROM nope"], &["SQL error", "strata datasets"]);
    refused(&env, &["query", "SELEC oops"], &["SQL error"]);
    refused(&env, &["query", "SELECT no_such_column FROM orders"], &["SQL error"]);
    // Read-only: no DDL, DML or COPY through `strata query`.
    refused(&env, &["query", "CREATE TABLE t AS SELECT 1"], &["SQL error"]);
    refused(&env, &["query", "COPY (SELECT 1) TO 'x.csv'"], &["SQL error"]);
    assert!(!env.path("x.csv").exists());
    // A lake that does not exist.
    let line = Env::new().user_error(&["datasets"]);
    assert!(line.contains("does not exist"), "{line}");
}

#[test]
fn corrupted_or_truncated_pointer_and_version_json() {
    let env = Env::new();
    published(&env);
    let pointer = env.lake().join("orders/_strata/pointer/00000000000000000002.json");
    let text = std::fs::read(&pointer).unwrap();
    std::fs::write(&pointer, &text[..text.len() / 3]).unwrap();
    for args in [
        &["versions", "orders"][..],
        &["query", "SELECT count(*) FROM orders"],
        &["rollback", "orders", "--to", "1"],
        &["verify", "orders"],
    ] {
        refused(&env, args, &["00000000000000000002.json is corrupt", "Restore it"]);
    }
    std::fs::write(&pointer, &text).unwrap();
    let record = env.lake().join("orders/_strata/versions/00000000000000000001.json");
    std::fs::write(&record, b"{ not json").unwrap();
    refused(
        &env,
        &["query", "SELECT count(*) FROM \"orders@1\""],
        &["00000000000000000001.json is corrupt"],
    );
    refused(&env, &["rollback", "orders", "--to", "1"], &["is corrupt"]);
    // The current version is unaffected.
    assert_eq!(env.ok(&["query", "SELECT count(*) AS n FROM orders", "--format", "csv"]), "n\n6\n");
}

#[test]
fn missing_or_changed_data_file() {
    let env = Env::new();
    published(&env);
    let files: Vec<String> = env.ok(&["files", "orders"]).lines().map(String::from).collect();
    std::fs::remove_file(&files[0]).unwrap();
    let line =
        refused(&env, &["query", "SELECT count(*) FROM orders"], &["missing", "strata verify"]);
    assert!(!line.contains("panick"), "{line}");
    let out = env.run(&["verify", "orders"]);
    assert_eq!(out.status.code(), Some(3), "verification failed: exit 3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let rel = files[0].split("/lake/").nth(1).unwrap();
    assert!(stdout.contains(&format!("{rel}: missing")), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("1 of 2 file(s)") && stderr.contains("strata rollback"), "{stderr}");
    // A changed byte is named too.
    let mut bytes = std::fs::read(&files[1]).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&files[1], bytes).unwrap();
    let out = env.run(&["verify", "orders", "--json"]);
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let problems: Vec<&str> = v["report"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["problem"].as_str().unwrap())
        .collect();
    assert_eq!(problems.len(), 2);
    assert!(problems.contains(&"missing") && problems.contains(&"sha256"));
}

#[test]
fn unsafe_names_and_partition_values() {
    let env = Env::new();
    published(&env);
    env.orders_file("ok.parquet", &rows(1, 1, "2026-01-05", 1));
    for name in ["../escape", "a/b", "a\\b", "tab\there", "..", "_strata"] {
        refused(&env, &["publish", name, "--from", "ok.parquet"], &["invalid dataset name"]);
        refused(&env, &["versions", name], &["invalid dataset name"]);
    }
    for value in ["../../etc", "a/b", "a\\b", "bell\u{7}", ".."] {
        env.orders_file("bad.parquet", &[(1, "2026-01-03", 1), (2, value, 1)]);
        refused(
            &env,
            &["publish", "orders", "--from", "bad.parquet"],
            &["invalid partition value", "order_date"],
        );
    }
    assert!(!env.dir.path().join("etc").exists());
    // On a fresh lake, a refused name does not even create the lake directory.
    let fresh = Env::new();
    fresh.orders_file("ok.parquet", &rows(1, 1, "2026-01-05", 1));
    fresh.user_error(&["publish", "../x", "--from", "ok.parquet"]);
    assert!(!fresh.lake().exists());
}

#[test]
fn schema_conflicts_and_unreadable_inputs() {
    let env = Env::new();
    published(&env);
    // Same columns, different type.
    {
        use arrow::array::{Int64Array, RecordBatch, StringArray};
        use arrow::datatypes::{DataType, Field, Schema};
        use std::sync::Arc;
        let schema = Arc::new(Schema::new(vec![
            Field::new("order_id", DataType::Int64, false),
            Field::new("order_date", DataType::Utf8, false),
            Field::new("amount", DataType::Utf8, false),
        ]));
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![1])),
                Arc::new(StringArray::from(vec!["2026-01-01"])),
                Arc::new(StringArray::from(vec!["ten"])),
            ],
        )
        .unwrap();
        let f = std::fs::File::create(env.path("typed.parquet")).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(f, schema, None).unwrap();
        w.write(&b).unwrap();
        w.close().unwrap();
    }
    refused(
        &env,
        &["publish", "orders", "--from", "typed.parquet"],
        &["schema of", "\"amount\" has type Int64", "--replace-all"],
    );
    std::fs::write(env.path("junk.parquet"), b"this is not parquet").unwrap();
    refused(
        &env,
        &["publish", "orders", "--from", "junk.parquet"],
        &["junk.parquet", "not a readable Parquet file"],
    );
    refused(&env, &["publish", "orders", "--from", "absent.parquet"], &["absent.parquet"]);
    std::fs::create_dir_all(env.path("empty")).unwrap();
    refused(&env, &["publish", "orders", "--from", "empty"], &["no *.parquet files"]);
    // A link back to a directory that contains it is reported, not followed forever.
    std::fs::create_dir_all(env.path("looped/inner")).unwrap();
    std::fs::copy(env.path("v1.parquet"), env.path("looped/inner/a.parquet")).unwrap();
    std::os::unix::fs::symlink(env.path("looped"), env.path("looped/inner/back")).unwrap();
    refused(&env, &["publish", "orders", "--from", "looped"], &["--from", "looped", "loop"]);
    refused(
        &env,
        &["publish", "orders", "--from", "v1.parquet", "--partition-by", "amount_typo"],
        &["no such column"],
    );
    refused(
        &env,
        &["publish", "orders", "--from", "v1.parquet", "--partition-by", "order_id"],
        &["partitioned by [order_date]", "--replace-all"],
    );
    // clap's own usage errors are exit 2 as well.
    assert_eq!(env.run(&["rollback", "orders"]).status.code(), Some(2));
    assert_eq!(env.run(&["frobnicate"]).status.code(), Some(2));
}

/// Case 8 of issue 21: a flipped byte in a published file (anywhere: data, footer, footer
/// length) or a truncated file makes `query` fail naming the file, never return a wrong value.
#[test]
fn a_damaged_published_file_is_refused_on_read() {
    let env = Env::new();
    published(&env);
    let files: Vec<String> = env.ok(&["files", "orders"]).lines().map(String::from).collect();
    let original = std::fs::read(&files[0]).unwrap();
    let n = original.len();
    for at in [10, n / 2, n - 12, n - 6] {
        let mut bytes = original.clone();
        bytes[at] ^= 0x04;
        std::fs::write(&files[0], &bytes).unwrap();
        let rel = files[0].split("/lake/").nth(1).unwrap();
        // A failed read check: exit 3, the data failed a check.
        let line = refused_with(
            3,
            &env,
            &["query", "SELECT sum(amount) AS s FROM orders"],
            &[rel, "is damaged", "strata verify"],
        );
        assert!(line.contains("CRC-32"), "byte {at}: {line}");
    }
    std::fs::write(&files[0], &original[..n - 100]).unwrap();
    refused_with(3, &env, &["query", "SELECT count(*) FROM orders"], &["is damaged"]);
    std::fs::write(&files[0], &original).unwrap();
    env.ok(&["query", "SELECT count(*) FROM orders"]);
}

/// Item 8 of issue 21: mistakes in a pipeline are one line naming where they are, exit 2, and
/// found before anything is landed.
#[test]
fn pipeline_mistakes_name_where_they_are() {
    let env = Env::new();
    let toml = crate::pipeline::shop(&env, 2, &[]);
    let text = std::fs::read_to_string(&toml).unwrap();
    // An invalid regex: file and line, before landing.
    std::fs::write(&toml, text.replace("^[A-Z]{2}$", "^[A-Z{2$")).unwrap();
    let line = env.user_error(&["run", "--pipeline", toml.to_str().unwrap()]);
    let at = format!("{}:", toml.display());
    assert!(
        line.contains(&at)
            && line.contains("country_code")
            && line.contains("not a valid regular expression"),
        "{line}"
    );
    assert!(!env.lake().exists(), "nothing was landed");
    // Definition mistakes that used to pass silently: each is one line with file and line.
    let cases: [(&str, &str, &str); 4] = [
        (
            "values = [\"paid\", \"shipped\", \"refunded\"]",
            "values = []",
            "enum has no values",
        ),
        ("format = \"csv\"", "format = \"csv\"\ndelimiter = \";;\"", "must be one ASCII character"),
        (
            "{ name = \"amount_sane\",",
            "{ name = \"amount_positive\",",
            "two rules named \"amount_positive\"",
        ),
        (
            "[models.daily_revenue]",
            "[models.orders]\nsql = \"models/daily_revenue.sql\"\nbusiness_date = \"order_date\"\n\n[models.daily_revenue]",
            "both a cleaned dataset and a model",
        ),
    ];
    for (from, to, needle) in cases {
        assert!(text.contains(from), "{from}");
        std::fs::write(&toml, text.replacen(from, to, 1)).unwrap();
        let line = env.user_error(&["run", "--pipeline", toml.to_str().unwrap()]);
        assert!(line.contains(&at) && line.contains(needle), "{needle}: {line}");
        assert!(!env.lake().exists(), "nothing was landed");
    }
    // A memory limit no run can work in.
    std::fs::write(&toml, text.replace("memory_limit = \"512MiB\"", "memory_limit = \"1KiB\""))
        .unwrap();
    let line = env.user_error(&["run", "--pipeline", toml.to_str().unwrap()]);
    assert!(line.contains("memory_limit") && line.contains("256MiB"), "{line}");
    // A model failing on its data is named.
    std::fs::write(&toml, &text).unwrap();
    let sql = env.path("shop/models/daily_revenue.sql");
    let model = std::fs::read_to_string(&sql).unwrap();
    std::fs::write(
        &sql,
        model.replace(
            "count(*) AS orders,",
            "count(*) AS orders, 1 / (count(*) - count(*)) AS boom,",
        ),
    )
    .unwrap();
    let out = env.run(&["run", "--pipeline", toml.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("models.daily_revenue failed on its data") && err.contains("Divide by zero"),
        "{err}"
    );
}
