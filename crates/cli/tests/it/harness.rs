//! Running the `strata` binary against a temporary lake.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;

/// A temporary directory with a lake in it (`<dir>/lake`) and room for input files.
pub struct Env {
    pub dir: tempfile::TempDir,
    /// Extra environment for every command.
    pub vars: Vec<(String, String)>,
}

impl Env {
    pub fn new() -> Self {
        Env { dir: tempfile::tempdir().expect("tempdir"), vars: Vec::new() }
    }

    pub fn lake(&self) -> PathBuf {
        self.dir.path().join("lake")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A `strata` command with `--lake <dir>/lake`, run in the temp dir.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_strata"));
        c.current_dir(self.dir.path()).env_remove("STRATA_LAKE").env_remove("STRATA_CRASH_AT");
        c.arg("--lake").arg(self.lake());
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
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(
            out.status.code(),
            Some(2),
            "strata {args:?}: expected exit 2, stderr: {stderr}"
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

    /// Every file of the lake with the sha256 of its content.
    pub fn snapshot(&self) -> BTreeMap<String, String> {
        snapshot(&self.lake())
    }
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
