//! `strata land`: raw landing of CSV, JSON lines and Parquet, with nothing dropped silently.

use crate::harness::Env;

fn testdata(rel: &str) -> String {
    format!("{}/../../testdata/{rel}", env!("CARGO_MANIFEST_DIR"))
}

/// Reads a Parquet file of the lake: `(line, raw, reason)` rows of a rejects file.
fn rejects(env: &Env, batch_id: &str) -> Vec<(i64, Vec<u8>, String)> {
    use arrow::array::{Array, BinaryArray, Int64Array, StringArray};
    let bytes = read_object(env, &format!("_raw/orders/batch={batch_id}/rejects.parquet"));
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        bytes::Bytes::from(bytes),
    )
    .unwrap()
    .build()
    .unwrap();
    let mut out = Vec::new();
    for b in reader {
        let b = b.unwrap();
        let line = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        let raw = b.column(1).as_any().downcast_ref::<BinaryArray>().unwrap();
        let reason = b.column(2).as_any().downcast_ref::<StringArray>().unwrap();
        for i in 0..b.num_rows() {
            out.push((line.value(i), raw.value(i).to_vec(), reason.value(i).to_string()));
        }
    }
    out
}

fn read_object(env: &Env, path: &str) -> Vec<u8> {
    use object_store::ObjectStoreExt;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let lake =
            strata_publish::Lake::open(&env.lake_url, strata_publish::OpenMode::Existing).unwrap();
        let got = lake.store().get(&object_store::path::Path::from(path)).await.unwrap();
        got.bytes().await.unwrap().to_vec()
    })
}

fn land_messy_csv(env: &Env) {
    let file = testdata("shop/data/orders/orders-2026-01-01.csv");
    let out = env.ok(&["land", "orders", &file, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let r = &v[0];
    assert_eq!(r["status"], "landed");
    assert_eq!(
        (r["rows"].as_u64(), r["rejected"].as_u64(), r["blank_lines"].as_u64()),
        (Some(9), Some(3), Some(1))
    );
    // Every line is accounted for: 1 header + 9 rows + 3 rejected + 1 blank = 14 lines.
    let lines = std::fs::read(&file).unwrap().split(|b| *b == b'\n').count() - 1;
    assert_eq!(lines, 14);
    let batch = r["batch_id"].as_str().unwrap();
    let input_sha = {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(std::fs::read(&file).unwrap()))
    };
    assert_eq!(batch, input_sha, "a batch is named by the sha256 of its input");
    let rej = rejects(env, batch);
    let summary: Vec<(i64, &str)> = rej.iter().map(|(l, _, r)| (*l, r.as_str())).collect();
    assert_eq!(summary[0], (10, "expected 6 fields, found 7"));
    assert_eq!(summary[1].0, 11);
    assert!(summary[1].1.starts_with("broken quoting"), "{summary:?}");
    assert_eq!(summary[2].0, 13);
    assert!(summary[2].1.starts_with("invalid UTF-8"), "{summary:?}");
    assert!(rej[2].1.contains(&0xff), "the raw bytes are kept exactly");
    assert_eq!(rej[0].1, b"1008,5,2026-01-01,8.75,paid,2026-01-01T13:00:00,extra");

    // Landing the same content again is a reported no-op that changes nothing.
    let before = env.snapshot();
    let out = env.ok(&["land", "orders", &file]);
    assert!(out.contains("already landed") && out.contains("nothing to do"), "{out}");
    assert!(
        out.trim_end()
            .ends_with("0 input(s) landed (0 rows, 0 rejected line(s)), 1 already landed"),
        "{out}"
    );
    assert_eq!(env.snapshot(), before);
}

#[test]
fn csv_bad_lines_are_kept_and_relanding_is_a_no_op() {
    land_messy_csv(&Env::new());
}

#[test]
fn csv_bad_lines_are_kept_and_relanding_is_a_no_op_s3() {
    if let Some(env) = Env::s3() {
        land_messy_csv(&env);
    }
}

#[test]
fn directories_globs_json_lines_and_parquet() {
    let env = Env::new();
    let dir = testdata("shop/data/orders");
    let out = env.ok(&["land", "orders", &dir]);
    assert!(
        out.trim_end()
            .ends_with("4 input(s) landed (20 rows, 3 rejected line(s)), 0 already landed"),
        "{out}"
    );
    let pattern = format!("{dir}/orders-2026-01-0*.csv");
    let out = env.ok(&["land", "orders", &pattern]);
    assert!(
        out.trim_end()
            .ends_with("0 input(s) landed (0 rows, 0 rejected line(s)), 3 already landed"),
        "{out}"
    );

    let out =
        env.ok(&["land", "customers", &testdata("shop/data/customers/customers.jsonl"), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v[0]["rows"].as_u64(), v[0]["rejected"].as_u64()), (Some(7), Some(2)));

    let out = env.ok(&["land", "demo_orders", &testdata("demo/orders-2026-01.parquet"), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v[0]["rows"].as_u64(), v[0]["rejected"].as_u64(), v[0]["format"].as_str()),
        (Some(35), Some(0), Some("parquet"))
    );

    // A file with another extension lands with --format.
    std::fs::copy(testdata("shop/data/orders/orders-2026-01-03.csv"), env.path("orders.txt"))
        .unwrap();
    let line = env.user_error(&["land", "orders", "orders.txt"]);
    assert!(line.contains("--format"), "{line}");
    let out = env.ok(&["land", "orders", "orders.txt", "--format", "csv"]);
    assert!(out.contains("already landed"), "same bytes as orders-2026-01-03.csv: {out}");
}

#[test]
fn land_refuses_bad_arguments_without_writing() {
    let env = Env::new();
    let file = testdata("shop/data/orders/orders-2026-01-03.csv");
    for (args, needle) in [
        (vec!["land", "../x", file.as_str()], "invalid dataset name"),
        (vec!["land", "orders", "nope.csv"], "cannot land nope.csv"),
        (vec!["land", "orders", "nothing-*.csv"], "matches no file"),
        (vec!["land", "orders", file.as_str(), "--delimiter", "\""], "--delimiter"),
    ] {
        let line = env.user_error(&args);
        assert!(line.contains(needle), "{args:?}: {line}");
    }
    assert!(!env.lake().exists(), "nothing was created");
    std::fs::write(env.path("empty.csv"), b"").unwrap();
    let line = env.user_error(&["land", "orders", "empty.csv"]);
    assert!(line.contains("no header"), "{line}");
    std::fs::write(env.path("dup.csv"), b"a,a\n1,2\n").unwrap();
    let line = env.user_error(&["land", "orders", "dup.csv"]);
    assert!(line.contains("twice"), "{line}");
}

/// Lands `text` as `name` into `source` and returns the JSON result and the rejects'
/// `(line, raw, reason)`.
fn land_text(
    env: &Env,
    source: &str,
    name: &str,
    text: &[u8],
) -> (serde_json::Value, Vec<(i64, Vec<u8>, String)>) {
    std::fs::write(env.path(name), text).unwrap();
    let out = env.ok(&["land", source, name, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let r = v[0].clone();
    assert_eq!(r["status"], "landed", "{name}: {r}");
    let rej = if r["rejected"].as_u64().unwrap() > 0 {
        let batch = r["batch_id"].as_str().unwrap();
        let bytes = read_object(env, &format!("_raw/{source}/batch={batch}/rejects.parquet"));
        rejects_of(bytes)
    } else {
        Vec::new()
    };
    (r, rej)
}

fn rejects_of(bytes: Vec<u8>) -> Vec<(i64, Vec<u8>, String)> {
    use arrow::array::{Array, BinaryArray, Int64Array, StringArray};
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        bytes::Bytes::from(bytes),
    )
    .unwrap()
    .build()
    .unwrap();
    let mut out = Vec::new();
    for b in reader {
        let b = b.unwrap();
        let line = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        let raw = b.column(1).as_any().downcast_ref::<BinaryArray>().unwrap();
        let reason = b.column(2).as_any().downcast_ref::<StringArray>().unwrap();
        for i in 0..b.num_rows() {
            out.push((line.value(i), raw.value(i).to_vec(), reason.value(i).to_string()));
        }
    }
    out
}

/// The rows of a Parquet file, each as its values cast to text joined by `|`.
fn text_rows(bytes: Vec<u8>) -> Vec<String> {
    use arrow::array::{Array, AsArray};
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        bytes::Bytes::from(bytes),
    )
    .unwrap()
    .build()
    .unwrap();
    let mut out = Vec::new();
    for b in reader {
        let b = b.unwrap();
        let cols: Vec<_> = b
            .columns()
            .iter()
            .map(|c| arrow::compute::cast(c, &arrow::datatypes::DataType::Utf8).unwrap())
            .collect();
        for i in 0..b.num_rows() {
            let row: Vec<&str> = cols
                .iter()
                .map(|c| if c.is_null(i) { "∅" } else { c.as_string::<i32>().value(i) })
                .collect();
            out.push(row.join("|"));
        }
    }
    out
}

fn counts(r: &serde_json::Value) -> (u64, u64, u64) {
    let n = |k: &str| r[k].as_u64().unwrap();
    (n("rows"), n("rejected"), n("blank_lines"))
}

/// Lines ending with a lone CR (classic Mac) are lines, in CSV and JSON lines: every row lands,
/// a bad line is rejected with its own line number, a blank line is counted; CRLF is still one
/// line end, and a CR inside a line of an LF file is still text.
#[test]
fn lone_cr_line_ends_are_line_ends() {
    let env = Env::new();
    let (r, rej) = land_text(&env, "mac", "mac.csv", b"id,amount\r1,10\r2,oops,3\r\r3,30\r");
    assert_eq!(counts(&r), (2, 1, 1), "{r}");
    assert_eq!(rej, vec![(3, b"2,oops,3".to_vec(), "expected 2 fields, found 3".to_string())]);
    let batch = r["batch_id"].as_str().unwrap();
    let data = read_object(&env, &format!("_raw/mac/batch={batch}/part-00000.parquet"));
    assert_eq!(text_rows(data), ["1|10|2", "3|30|5"], "values, then _line");
    let (r, rej) = land_text(&env, "mac", "mac-last.csv", b"id,amount\r4,40\r5,50,x");
    assert_eq!(counts(&r), (1, 1, 0), "no line end at the end: {r}");
    assert_eq!(rej[0].0, 3);
    let (r, rej) =
        land_text(&env, "dos", "dos.csv", b"id,amount\r\n1,10\r\n2,oops,3\r\n\r\n3,30\r\n");
    assert_eq!(counts(&r), (2, 1, 1), "{r}");
    assert_eq!(rej[0].0, 3);
    assert_eq!(rej[0].1, b"2,oops,3");
    let (r, rej) = land_text(&env, "unix", "unix.csv", b"id,note\n1,a\rb\n2,c,d\n");
    assert_eq!(counts(&r), (1, 1, 0), "{r}");
    assert_eq!(rej[0].0, 3);

    let (r, rej) =
        land_text(&env, "events", "mac.jsonl", b"{\"id\":1}\r{broken\r\r{\"id\":2,\"x\":\"y\"}\r");
    assert_eq!(counts(&r), (2, 1, 1), "{r}");
    assert_eq!(rej.len(), 1);
    assert_eq!((rej[0].0, rej[0].1.as_slice()), (2, &b"{broken"[..]));
    let (r, rej) =
        land_text(&env, "events", "dos.jsonl", b"{\"id\":3}\r\n{broken\r\n{\"id\":4}\r\n");
    assert_eq!(counts(&r), (2, 1, 0), "{r}");
    assert_eq!(rej[0].0, 2);
}

/// `strata land <source> <file> --json [extra]`: `(status, batch_id)`.
fn land_one(env: &Env, file: &str, extra: &[&str]) -> (String, String) {
    let mut args = vec!["land", "orders", file, "--json"];
    args.extend_from_slice(extra);
    let v: serde_json::Value = serde_json::from_str(&env.ok(&args)).unwrap();
    (v[0]["status"].as_str().unwrap().into(), v[0]["batch_id"].as_str().unwrap().into())
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

/// A file rewritten in place with its old size and modification time (`cp -p`) lands again;
/// `--rehash` reads every input whatever the raw index remembers about it.
#[test]
fn a_file_rewritten_in_place_with_the_same_size_and_mtime_lands_again() {
    let env = Env::new();
    let (orders, fixed) = (env.path("orders.csv"), env.path("fixed.csv"));
    let (old_text, new_text) = ("id,amount\n1,1000\n", "id,amount\n1,1010\n");
    std::fs::write(&orders, old_text).unwrap();
    std::fs::write(&fixed, new_text).unwrap();
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for f in [&orders, &fixed] {
        std::fs::File::options().write(true).open(f).unwrap().set_modified(hour_ago).unwrap();
    }
    // Landed well after its last change: the index remembers it by its identity.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let first = land_one(&env, "orders.csv", &[]);
    assert_eq!(first, ("landed".into(), sha256_hex(old_text.as_bytes())));
    assert_eq!(land_one(&env, "orders.csv", &[]), ("already_landed".into(), first.1.clone()));

    // Rewritten in place: same inode, size and modification time, new content.
    let inode = |p: &std::path::Path| std::os::unix::fs::MetadataExt::ino(&p.metadata().unwrap());
    let before = inode(&orders);
    let cp = std::process::Command::new("cp").arg("-p").arg(&fixed).arg(&orders).status().unwrap();
    assert!(cp.success());
    let meta = orders.metadata().unwrap();
    assert_eq!((inode(&orders), meta.len(), meta.modified().unwrap()), (before, 17, hour_ago));
    let second = land_one(&env, "orders.csv", &[]);
    assert_eq!(second, ("landed".into(), sha256_hex(new_text.as_bytes())));

    // A raw index that is wrong about the file (here edited to name the first batch for it) is
    // believed without --rehash, and not with it.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert_eq!(land_one(&env, "orders.csv", &[]).1, second.1, "remembered now");
    let index = env.lake().join("_raw/orders/_index.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&index).unwrap()).unwrap();
    for (_, batch) in v["inputs"].as_object_mut().unwrap() {
        *batch = serde_json::json!(first.1);
    }
    std::fs::write(&index, serde_json::to_vec(&v).unwrap()).unwrap();
    assert_eq!(land_one(&env, "orders.csv", &[]).1, first.1, "the index is believed");
    assert_eq!(land_one(&env, "orders.csv", &["--rehash"]), ("already_landed".into(), second.1));
    let help = env.ok(&["land", "--help"]);
    assert!(help.contains("--rehash"), "{help}");
}
