//! Running the `strata` binary against a temporary lake.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;

/// A temporary directory for input files, and a lake: `<dir>/lake` on local disk, or a fresh
/// prefix of the S3 test bucket.
pub struct Env {
    pub dir: tempfile::TempDir,
    /// The lake URL passed with `--lake`.
    pub lake_url: String,
    /// Extra environment for every command.
    pub vars: Vec<(String, String)>,
}

impl Env {
    /// A local lake.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let lake_url = dir.path().join("lake").display().to_string();
        Env { dir, lake_url, vars: Vec::new() }
    }

    /// A lake on the S3 test server, or `None` (with a visible note) when `STRATA_TEST_S3_URL`
    /// is unset: `./scripts/test.sh` starts the server and sets it.
    pub fn s3() -> Option<Self> {
        let Ok(base) = std::env::var("STRATA_TEST_S3_URL") else {
            s3_skipped_note();
            return None;
        };
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let lake_url = format!(
            "{}/cli-{}-{}",
            base.trim_end_matches('/'),
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        Some(Env { dir: tempfile::tempdir().expect("tempdir"), lake_url, vars: Vec::new() })
    }

    pub fn is_s3(&self) -> bool {
        self.lake_url.starts_with("s3://")
    }

    /// The local lake directory (local lakes only).
    pub fn lake(&self) -> PathBuf {
        assert!(!self.is_s3(), "lake() is for local lakes");
        PathBuf::from(&self.lake_url)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A `strata` command with `--lake <dir>/lake`, run in the temp dir.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_strata"));
        c.current_dir(self.dir.path()).env_remove("STRATA_LAKE").env_remove("STRATA_CRASH_AT");
        c.arg("--lake").arg(&self.lake_url);
        c.args(args);
        for (k, v) in &self.vars {
            c.env(k, v);
        }
        c
    }

    /// Runs `strata <args>` and returns its output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run strata")
    }

    /// Runs `strata <args>`, asserts success and returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "strata {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Runs `strata <args>`, asserts exit code 2 with a one-line error, and returns that line.
    pub fn user_error(&self, args: &[&str]) -> String {
        self.fails(2, args)
    }

    /// Runs `strata <args>`, asserts exit code 3 (the data failed a check) with a one-line
    /// error, and returns that line.
    pub fn check_failed(&self, args: &[&str]) -> String {
        self.fails(3, args)
    }

    /// Runs `strata run …` that ends with its output held for review: asserts exit code 5
    /// (needs a person, nothing published) and returns stdout.
    pub fn held(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(5),
            "strata {args:?}: expected exit 5 (held for review), stdout: {}, stderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Runs `strata <args>`, asserts exit code 4 (busy: retry later) with a one-line error.
    pub fn busy(&self, args: &[&str]) -> String {
        self.fails(4, args)
    }

    /// Runs `strata <args>`, asserts exit code 5 (needs a person) with a one-line error.
    pub fn needs_person(&self, args: &[&str]) -> String {
        self.fails(5, args)
    }

    /// Runs `strata <args>`, asserts exit code `code` with a one-line error, and returns it.
    pub fn fails(&self, code: i32, args: &[&str]) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(
            out.status.code(),
            Some(code),
            "strata {args:?}: expected exit {code}, stderr: {stderr}"
        );
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "strata {args:?}: expected one error line, got: {stderr}");
        assert!(lines[0].starts_with("error: "), "{stderr}");
        lines[0].to_string()
    }

    /// Writes an `orders`-shaped Parquet file: `(order_id, order_date, amount)` rows.
    pub fn orders_file(&self, name: &str, rows: &[(i64, &str, i64)]) -> PathBuf {
        let path = self.path(name);
        write_orders(&path, rows);
        path
    }

    /// Every object of the lake with the sha256 of its content.
    pub fn snapshot(&self) -> BTreeMap<String, String> {
        if !self.is_s3() {
            return snapshot(&self.lake());
        }
        use futures::TryStreamExt;
        use object_store::ObjectStoreExt;
        use sha2::{Digest, Sha256};
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            let lake =
                strata_publish::Lake::open(&self.lake_url, strata_publish::OpenMode::Existing)
                    .expect("lake");
            let metas: Vec<_> = lake.store().list(None).try_collect().await.expect("list");
            let mut out = BTreeMap::new();
            for m in metas {
                let bytes =
                    lake.store().get(&m.location).await.expect("get").bytes().await.expect("bytes");
                out.insert(m.location.to_string(), hex::encode(Sha256::digest(&bytes)));
            }
            out
        })
    }
}

/// Says once per test binary, where libtest's capture cannot hide it, that S3 tests were skipped.
pub fn s3_skipped_note() {
    use std::io::Write;
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = writeln!(
            std::io::stderr(),
            "NOTE: S3 end-to-end tests SKIPPED: STRATA_TEST_S3_URL is not set. Run ./scripts/test.sh \
             to start the local S3 test server and run them."
        );
    });
}

pub fn orders_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("order_id", DataType::Int64, false),
        Field::new("order_date", DataType::Utf8, false),
        Field::new("amount", DataType::Int64, false),
    ]))
}

pub fn write_orders(path: &Path, rows: &[(i64, &str, i64)]) {
    let batch = RecordBatch::try_new(
        orders_schema(),
        vec![
            Arc::new(Int64Array::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())),
            Arc::new(StringArray::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
            Arc::new(Int64Array::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())),
        ],
    )
    .expect("batch");
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    let file = std::fs::File::create(path).expect("create parquet");
    let mut w = ArrowWriter::try_new(file, orders_schema(), None).expect("writer");
    w.write(&batch).expect("write");
    w.close().expect("close");
}

pub fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    use sha2::{Digest, Sha256};
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).expect("read");
                let rel = p.strip_prefix(dir).expect("prefix").display().to_string();
                out.insert(rel, hex::encode(Sha256::digest(&bytes)));
            }
        }
    }
    out
}

/// Rows `(order_id, order_date, amount)` for ids `first..first+n` on `date`.
pub fn rows(first: i64, n: i64, date: &'static str, amount: i64) -> Vec<(i64, &'static str, i64)> {
    (first..first + n).map(|id| (id, date, amount)).collect()
}
