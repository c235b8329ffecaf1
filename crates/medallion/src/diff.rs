//! `strata diff`: two versions of a dataset (or of two datasets) compared row by row, by key.
//!
//! - **Fast path** ([`split`], pure): a partition whose recorded row hash is the same on both
//!   sides holds the same rows, and is reported identical without reading a file. Diffing a
//!   one-day change in a year of history reads one day's partitions.
//! - The other partitions are read and joined on the key with null-safe equality, so a
//!   composite key with a NULL part matches its counterpart. A key that appears more than once
//!   on a side is reported as a duplicate and its rows are not classified (a join would pair
//!   them arbitrarily).
//! - Each matched row is identical or modified (per column, with an optional tolerance for
//!   floating-point columns); unmatched rows are added (only in B) or removed (only in A).
//! - [`verdict`] (pure) turns the counts and the thresholds into identical / within thresholds /
//!   differs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::prelude::SessionContext;
use serde::{Deserialize, Serialize};
use strata_publish::model::PartitionEntry;
use strata_publish::VersionRecord;

use crate::catalog::{VersionTable, LAKE_URL};
use crate::error::{Error, Result};
use crate::stages::ident;

/// One side of a diff: a name as the user wrote it, and the version it resolved to.
#[derive(Debug, Clone)]
pub struct Side {
    pub label: String,
    pub record: VersionRecord,
}

/// What to compare, and how.
#[derive(Debug, Clone, Default)]
pub struct DiffOptions {
    /// The key columns; empty: the key the versions' control totals record.
    pub key: Vec<String>,
    /// Only these columns (besides the key); none: every column both sides have.
    pub columns: Option<Vec<String>>,
    /// A SQL condition both sides are filtered by.
    pub filter: Option<String>,
    /// Sample rows shown per class.
    pub samples: usize,
    /// Column → the absolute difference below which two floating-point values are equal.
    pub tolerance: BTreeMap<String, f64>,
}

/// Columns added, removed or retyped from A to B.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaDiff {
    pub added: Vec<(String, String)>,
    pub removed: Vec<(String, String)>,
    /// Name, type in A, type in B.
    pub retyped: Vec<(String, String, String)>,
}

impl SchemaDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.retyped.is_empty()
    }
}

/// The schema difference (pure).
pub fn schema_diff(a: &Schema, b: &Schema) -> SchemaDiff {
    let mut d = SchemaDiff::default();
    for f in a.fields() {
        match b.field_with_name(f.name()) {
            Err(_) => d.removed.push((f.name().clone(), f.data_type().to_string())),
            Ok(g) if g.data_type() != f.data_type() => d.retyped.push((
                f.name().clone(),
                f.data_type().to_string(),
                g.data_type().to_string(),
            )),
            Ok(_) => {}
        }
    }
    for f in b.fields() {
        if a.field_with_name(f.name()).is_err() {
            d.added.push((f.name().clone(), f.data_type().to_string()));
        }
    }
    d
}

/// The partitions of both sides, split by the fast path (pure).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Split {
    /// Partitions the same on both sides by their recorded row hashes: key → rows.
    pub same: BTreeMap<String, u64>,
    /// The partitions of each side that must be read.
    pub read_a: Vec<PartitionEntry>,
    pub read_b: Vec<PartitionEntry>,
}

/// Which partitions must be read (pure): all of them, unless both versions are partitioned the
/// same way with the same schema, when a partition whose row hash (over the same row encoding)
/// is equal on both sides is the same and is not read.
pub fn split(a: &VersionRecord, b: &VersionRecord) -> Split {
    let comparable = a.head.partition_by == b.head.partition_by && a.head.schema == b.head.schema;
    let by_key: BTreeMap<&str, &PartitionEntry> =
        b.partitions.iter().map(|p| (p.key.as_str(), p)).collect();
    let mut out = Split::default();
    let mut same_keys = BTreeSet::new();
    if comparable {
        for p in &a.partitions {
            let Some(q) = by_key.get(p.key.as_str()) else { continue };
            let equal = match (&p.totals, &q.totals) {
                (Some(x), Some(y)) => {
                    x.encoding == y.encoding && x.row_hash == y.row_hash && x.rows == y.rows
                }
                _ => false,
            };
            if equal {
                same_keys.insert(p.key.clone());
                out.same.insert(p.key.clone(), p.rows);
            }
        }
    }
    out.read_a = a.partitions.iter().filter(|p| !same_keys.contains(&p.key)).cloned().collect();
    out.read_b = b.partitions.iter().filter(|p| !same_keys.contains(&p.key)).cloned().collect();
    out
}

/// One column's comparison over the rows whose key is on both sides.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ColumnDiff {
    pub column: String,
    /// Rows matched by key (identical or modified) that were compared.
    pub compared: u64,
    /// Of those, rows whose value differs.
    pub differ: u64,
    /// `1 - differ / compared` (1 with nothing compared).
    pub match_rate: f64,
    /// Nulls among the rows read on each side.
    pub nulls_a: u64,
    pub nulls_b: u64,
    /// Numeric columns: the exact sum over the rows read on each side, and B − A.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sum_a: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sum_b: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<String>,
}

/// One partition of either side.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionDiff {
    pub key: String,
    pub rows_a: u64,
    pub rows_b: u64,
    /// Rows added, removed or modified in it (0: identical).
    pub changed: u64,
    /// Found identical by the row hashes recorded, without reading a file.
    pub by_hash: bool,
}

/// A sample row: column → value as text (`None`: null). Modified rows hold both sides, as
/// `a.<column>` and `b.<column>`.
pub type Row = BTreeMap<String, Option<String>>;

/// Sample rows of each class.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Samples {
    pub modified: Vec<Row>,
    pub added: Vec<Row>,
    pub removed: Vec<Row>,
    pub duplicates: Vec<Row>,
}

/// What `strata diff` found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiffReport {
    pub a: String,
    pub b: String,
    pub key: Vec<String>,
    pub schema: SchemaDiff,
    pub rows_a: u64,
    pub rows_b: u64,
    pub identical: u64,
    pub modified: u64,
    pub added: u64,
    pub removed: u64,
    /// Keys with more than one row on a side (their rows are not classified), and those rows.
    pub duplicate_keys_a: u64,
    pub duplicate_keys_b: u64,
    pub duplicate_rows_a: u64,
    pub duplicate_rows_b: u64,
    pub columns: Vec<ColumnDiff>,
    pub partitions: Vec<PartitionDiff>,
    /// Partitions found identical by their row hashes, without reading a file.
    pub partitions_skipped: u64,
    pub samples: Samples,
}

impl DiffReport {
    /// Rows added, removed or modified, plus rows under duplicate keys.
    pub fn changed_rows(&self) -> u64 {
        self.modified + self.added + self.removed + self.duplicate_rows_a + self.duplicate_rows_b
    }
}

/// Limits under which a difference passes (`--max-changed-rows`, `--max-changed-ratio`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Thresholds {
    pub max_changed_rows: Option<u64>,
    pub max_changed_ratio: Option<f64>,
}

/// What a diff concludes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Identical,
    /// Different, within every threshold given.
    WithinThresholds,
    Differs,
}

/// The verdict (pure): identical when no row changed and the schema is the same; with a
/// difference, within thresholds only when thresholds are given and it is within each.
pub fn verdict(r: &DiffReport, t: Thresholds) -> Verdict {
    let changed = r.changed_rows();
    if changed == 0 && r.schema.is_empty() {
        return Verdict::Identical;
    }
    if t.max_changed_rows.is_none() && t.max_changed_ratio.is_none() || !r.schema.is_empty() {
        return Verdict::Differs;
    }
    let total = r.rows_a.max(r.rows_b);
    let ratio = if total == 0 { 0.0 } else { changed as f64 / total as f64 };
    let rows_ok = t.max_changed_rows.is_none_or(|m| changed <= m);
    let ratio_ok = t.max_changed_ratio.is_none_or(|m| ratio <= m);
    if rows_ok && ratio_ok {
        Verdict::WithinThresholds
    } else {
        Verdict::Differs
    }
}

/// Parses `--tolerance price=0.001`.
pub fn parse_tolerance(s: &str) -> std::result::Result<(String, f64), String> {
    let (col, v) = s
        .split_once('=')
        .ok_or_else(|| format!("--tolerance {s:?} is not COLUMN=VALUE, e.g. price=0.001"))?;
    let v: f64 = v
        .trim()
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| format!("--tolerance {s:?}: {v:?} is not a number of 0 or more"))?;
    Ok((col.trim().to_string(), v))
}

fn is_float(t: &DataType) -> bool {
    matches!(t, DataType::Float16 | DataType::Float32 | DataType::Float64)
}

fn is_exact(t: &DataType) -> bool {
    t.is_integer() || matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..))
}

/// Compares `b` against `a`: reads only the partitions the fast path cannot settle.
pub async fn diff(
    session: &SessionContext,
    a: &Side,
    b: &Side,
    options: &DiffOptions,
) -> Result<DiffReport> {
    let sql_err = |m: String| Error::Sql { message: m };
    let (sa, sb) = (a.record.head.schema.clone(), b.record.head.schema.clone());
    let key = if options.key.is_empty() {
        recorded_key(&a.record).or_else(|| recorded_key(&b.record)).ok_or_else(|| {
            sql_err(format!(
                "{} records no key; name the columns that identify a row with --key",
                b.label
            ))
        })?
    } else {
        options.key.clone()
    };
    for k in &key {
        if sa.field_with_name(k).is_err() || sb.field_with_name(k).is_err() {
            return Err(sql_err(format!(
                "the key column {k:?} is not in both {} and {}; --key names columns both have",
                a.label, b.label
            )));
        }
    }
    let common: Vec<String> = sa
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|n| sb.field_with_name(n).is_ok() && !key.contains(n))
        .filter(|n| options.columns.as_ref().is_none_or(|c| c.contains(n)))
        .collect();
    if let Some(cols) = &options.columns {
        if let Some(missing) = cols.iter().find(|c| !common.contains(c) && !key.contains(c)) {
            return Err(sql_err(format!(
                "--columns names {missing:?}, which is not a column of both {} and {}",
                a.label, b.label
            )));
        }
    }
    for col in options.tolerance.keys() {
        let float = sa.field_with_name(col).map(|f| is_float(f.data_type())).unwrap_or(false);
        if !common.contains(col) || !float {
            return Err(sql_err(format!(
                "--tolerance names {col:?}, which is not a floating-point column compared; a \
                 tolerance is for float and double columns (decimals compare exactly)"
            )));
        }
    }
    // The fast path: partitions whose row hashes agree are identical, unread. A filter reads
    // everything, as it may select part of a partition.
    let parts = if options.filter.is_some() {
        Split {
            same: BTreeMap::new(),
            read_a: a.record.partitions.clone(),
            read_b: b.record.partitions.clone(),
        }
    } else {
        split(&a.record, &b.record)
    };
    let ctx = SessionContext::new_with_config_rt(session.copied_config(), session.runtime_env());
    let url = ObjectStoreUrl::parse(LAKE_URL)?;
    let table = |r: &VersionRecord, p: &[PartitionEntry]| {
        Arc::new(VersionTable::new(r.with_partitions(p.to_vec()), url.clone()))
    };
    ctx.register_table("_a", table(&a.record, &parts.read_a))?;
    ctx.register_table("_b", table(&b.record, &parts.read_b))?;
    let filter = options.filter.as_deref().map(|f| format!(" WHERE {f}")).unwrap_or_default();
    let keys: Vec<String> = key.iter().map(|k| ident(k)).collect();
    let by = keys.join(", ");
    for (side, t) in [("a", "_a"), ("b", "_b")] {
        let q = format!(
            "SELECT *, TRUE AS _present, count(*) OVER (PARTITION BY {by}) AS _n FROM {t}{filter}"
        );
        let df = ctx.sql(&q).await.map_err(|e| match Error::from(e) {
            Error::Sql { message } => sql_err(format!("--where {filter:?}: {message}")),
            other => other,
        })?;
        ctx.register_table(side, df.into_view())?;
    }
    let on: Vec<String> =
        key.iter().map(|k| format!("(a.{c} IS NOT DISTINCT FROM b.{c})", c = ident(k))).collect();
    let differs: Vec<String> = common
        .iter()
        .map(|c| {
            let (x, y) = (format!("a.{}", ident(c)), format!("b.{}", ident(c)));
            let retyped = sa.field_with_name(c).ok().map(|f| f.data_type())
                != sb.field_with_name(c).ok().map(|f| f.data_type());
            match options.tolerance.get(c) {
                Some(t) => format!(
                    "NOT (({x} IS NULL AND {y} IS NULL) OR abs(CAST({x} AS DOUBLE) - \
                     CAST({y} AS DOUBLE)) <= {t})"
                ),
                None if retyped => {
                    format!("(CAST({x} AS VARCHAR) IS DISTINCT FROM CAST({y} AS VARCHAR))")
                }
                None => format!("({x} IS DISTINCT FROM {y})"),
            }
        })
        .collect();
    let any_differs = if differs.is_empty() { "FALSE".to_string() } else { differs.join(" OR ") };
    let mut select = vec![format!(
        "CASE WHEN a._present IS NULL THEN 'added' WHEN b._present IS NULL THEN 'removed' \
         WHEN {any_differs} THEN 'modified' ELSE 'identical' END AS _class"
    )];
    for (i, k) in key.iter().enumerate() {
        select.push(format!("coalesce(a.{c}, b.{c}) AS _k{i}", c = ident(k)));
    }
    for (i, c) in common.iter().enumerate() {
        select.push(format!("a.{} AS _a{i}", ident(c)));
        select.push(format!("b.{} AS _b{i}", ident(c)));
        select.push(format!("{} AS _d{i}", differs[i]));
    }
    // The partition of each row, for the per-partition counts (B's layout, else A's).
    let layout = if b.record.partitions.is_empty() { &a.record.head } else { &b.record.head }
        .partition_by
        .clone();
    let layout: Vec<String> = layout
        .into_iter()
        .filter(|p| sa.field_with_name(p).is_ok() && sb.field_with_name(p).is_ok())
        .collect();
    for (i, p) in layout.iter().enumerate() {
        select.push(format!("CAST(coalesce(b.{c}, a.{c}) AS VARCHAR) AS _p{i}", c = ident(p)));
    }
    let joined = format!(
        "SELECT {} FROM (SELECT * FROM a WHERE _n = 1) a FULL OUTER JOIN \
         (SELECT * FROM b WHERE _n = 1) b ON {}",
        select.join(", "),
        on.join(" AND ")
    );
    ctx.register_table("j", ctx.sql(&joined).await?.into_view())?;

    let mut report = DiffReport {
        a: a.label.clone(),
        b: b.label.clone(),
        key: key.clone(),
        schema: schema_diff(&sa, &sb),
        ..Default::default()
    };
    let same_rows: u64 = parts.same.values().sum();
    // Rows and duplicates, per side.
    for side in ["a", "b"] {
        // One pass: a key with n rows adds n times 1/n to the count of duplicated keys.
        let q = format!(
            "SELECT count(*) AS n, \
             CAST(round(coalesce(sum(CASE WHEN _n > 1 THEN 1.0 / _n END), 0)) AS BIGINT) AS dk, \
             sum(CASE WHEN _n > 1 THEN 1 ELSE 0 END) AS dr FROM {side}"
        );
        let v = scalars(&ctx, &q).await?;
        let (n, dk, dr) = (nth(&v, 0), nth(&v, 1), nth(&v, 2));
        if side == "a" {
            (report.rows_a, report.duplicate_keys_a, report.duplicate_rows_a) =
                (n + same_rows, dk, dr);
        } else {
            (report.rows_b, report.duplicate_keys_b, report.duplicate_rows_b) =
                (n + same_rows, dk, dr);
        }
    }
    // The changed rows, kept: the samples and the per-partition counts read them, not the join
    // again (they are the difference, usually a small part of what was read).
    let changed = ctx.sql("SELECT * FROM j WHERE _class <> 'identical'").await?;
    let changed_schema = Arc::new(changed.schema().as_arrow().clone());
    let changed = changed.collect().await?;
    ctx.register_table(
        "jc",
        Arc::new(datafusion::datasource::MemTable::try_new(changed_schema, vec![changed])?),
    )?;
    // Per column: one pass over the joined rows, and one over each side.
    let casts: Vec<Option<String>> = common
        .iter()
        .map(|c| {
            let ta = sa.field_with_name(c).ok()?.data_type().clone();
            let tb = sb.field_with_name(c).ok()?.data_type().clone();
            let numeric = |t: &DataType| is_exact(t) || is_float(t);
            if !(numeric(&ta) && numeric(&tb)) {
                return None;
            }
            if is_float(&ta) || is_float(&tb) {
                return Some("DOUBLE".to_string());
            }
            let scale = |t: &DataType| match t {
                DataType::Decimal128(_, s) | DataType::Decimal256(_, s) => *s,
                _ => 0,
            };
            Some(format!("DECIMAL(38, {})", scale(&ta).max(scale(&tb)).max(0)))
        })
        .collect();
    let matched = "_class IN ('identical', 'modified')";
    let mut aggs = vec![format!("sum(CASE WHEN {matched} THEN 1 ELSE 0 END)")];
    for class in ["identical", "modified", "added", "removed"] {
        aggs.push(format!("sum(CASE WHEN _class = '{class}' THEN 1 ELSE 0 END)"));
    }
    aggs.extend(
        (0..common.len()).map(|i| format!("sum(CASE WHEN {matched} AND _d{i} THEN 1 ELSE 0 END)")),
    );
    let joined_counts = scalars(&ctx, &format!("SELECT {} FROM j", aggs.join(", "))).await?;
    let compared = nth(&joined_counts, 0);
    report.identical = nth(&joined_counts, 1) + same_rows;
    report.modified = nth(&joined_counts, 2);
    report.added = nth(&joined_counts, 3);
    report.removed = nth(&joined_counts, 4);
    let side_stats = |side: &str| {
        let mut cols = Vec::new();
        for (i, c) in common.iter().enumerate() {
            cols.push(format!("count(*) - count({}) AS n{i}", ident(c)));
            if let Some(cast) = &casts[i] {
                cols.push(format!(
                    "CAST(coalesce(sum(CAST({} AS {cast})), 0) AS VARCHAR) AS s{i}",
                    ident(c)
                ));
            }
        }
        if cols.is_empty() {
            cols.push("count(*)".into());
        }
        format!("SELECT {} FROM {side}", cols.join(", "))
    };
    let (stats_a, stats_b) =
        (texts(&ctx, &side_stats("a")).await?, texts(&ctx, &side_stats("b")).await?);
    let mut at = 0usize;
    for (i, c) in common.iter().enumerate() {
        let count = |v: &[Option<String>], k: usize| {
            v.get(k).cloned().flatten().and_then(|t| t.parse().ok()).unwrap_or(0u64)
        };
        let differ = nth(&joined_counts, i + 5);
        let mut col = ColumnDiff {
            column: c.clone(),
            compared,
            differ,
            match_rate: if compared == 0 { 1.0 } else { 1.0 - differ as f64 / compared as f64 },
            nulls_a: count(&stats_a, at),
            nulls_b: count(&stats_b, at),
            ..Default::default()
        };
        at += 1;
        if let Some(cast) = &casts[i] {
            let (sum_a, sum_b) =
                (stats_a.get(at).cloned().flatten(), stats_b.get(at).cloned().flatten());
            at += 1;
            if let (Some(x), Some(y)) = (&sum_a, &sum_b) {
                let q = format!(
                    "SELECT CAST(CAST('{y}' AS {cast}) - CAST('{x}' AS {cast}) AS VARCHAR)"
                );
                col.delta = texts(&ctx, &q).await?.first().cloned().flatten();
            }
            (col.sum_a, col.sum_b) = (sum_a, sum_b);
        }
        report.columns.push(col);
    }
    // Per partition.
    let mut partitions: BTreeMap<String, PartitionDiff> = BTreeMap::new();
    for (k, rows) in &parts.same {
        partitions.insert(
            k.clone(),
            PartitionDiff {
                key: k.clone(),
                rows_a: *rows,
                rows_b: *rows,
                changed: 0,
                by_hash: true,
            },
        );
    }
    for p in &parts.read_a {
        partitions
            .entry(p.key.clone())
            .or_insert_with(|| PartitionDiff { key: p.key.clone(), ..Default::default() })
            .rows_a = p.rows;
    }
    for p in &parts.read_b {
        partitions
            .entry(p.key.clone())
            .or_insert_with(|| PartitionDiff { key: p.key.clone(), ..Default::default() })
            .rows_b = p.rows;
    }
    if !layout.is_empty() {
        let cols: Vec<String> = (0..layout.len()).map(|i| format!("_p{i}")).collect();
        let q = format!("SELECT {c}, count(*) FROM jc GROUP BY {c}", c = cols.join(", "));
        for batch in ctx.sql(&q).await?.collect().await? {
            for i in 0..batch.num_rows() {
                let key: Vec<String> = layout
                    .iter()
                    .enumerate()
                    .map(|(j, p)| {
                        let v = batch.column(j);
                        let v = if v.is_null(i) {
                            strata_publish::names::NULL_PARTITION.to_string()
                        } else {
                            array_value_to_string(v, i).unwrap_or_default()
                        };
                        format!("{p}={v}")
                    })
                    .collect();
                let n: u64 =
                    array_value_to_string(batch.column(layout.len()), i)?.parse().unwrap_or(0);
                if let Some(p) = partitions.get_mut(&key.join("/")) {
                    p.changed += n;
                }
            }
        }
    } else if let Some(p) = partitions.get_mut("") {
        p.changed = report.modified + report.added + report.removed;
    }
    report.partitions = partitions.into_values().collect();
    report.partitions_skipped = parts.same.len() as u64;
    // Samples.
    if options.samples > 0 {
        let n = options.samples;
        let key_cols: Vec<String> = (0..key.len()).map(|i| format!("_k{i}")).collect();
        let order = key_cols.join(", ");
        let sample = |class: &str| {
            format!("SELECT * FROM jc WHERE _class = '{class}' ORDER BY {order} LIMIT {n}")
        };
        let rows = |batches: Vec<RecordBatch>, class: &str| -> Vec<Row> {
            let mut out = Vec::new();
            for b in &batches {
                for i in 0..b.num_rows() {
                    let mut row = Row::new();
                    let value = |name: &str| {
                        let col = b.column_by_name(name)?;
                        (!col.is_null(i)).then(|| array_value_to_string(col, i).unwrap_or_default())
                    };
                    for (j, k) in key.iter().enumerate() {
                        row.insert(k.clone(), value(&format!("_k{j}")));
                    }
                    for (j, c) in common.iter().enumerate() {
                        let differs = b
                            .column_by_name(&format!("_d{j}"))
                            .and_then(|d| {
                                d.as_any()
                                    .downcast_ref::<datafusion::arrow::array::BooleanArray>()
                                    .map(|d| d.is_valid(i) && d.value(i))
                            })
                            .unwrap_or(false);
                        match class {
                            "modified" if differs => {
                                row.insert(format!("a.{c}"), value(&format!("_a{j}")));
                                row.insert(format!("b.{c}"), value(&format!("_b{j}")));
                            }
                            "modified" => {}
                            "added" => {
                                row.insert(c.clone(), value(&format!("_b{j}")));
                            }
                            _ => {
                                row.insert(c.clone(), value(&format!("_a{j}")));
                            }
                        }
                    }
                    out.push(row);
                }
            }
            out
        };
        for class in ["modified", "added", "removed"] {
            let batches = ctx.sql(&sample(class)).await?.collect().await?;
            let found = rows(batches, class);
            match class {
                "modified" => report.samples.modified = found,
                "added" => report.samples.added = found,
                _ => report.samples.removed = found,
            }
        }
        for side in ["a", "b"] {
            let q = format!(
                "SELECT {by}, count(*) AS rows FROM {side} WHERE _n > 1 GROUP BY {by} \
                 ORDER BY {by} LIMIT {n}"
            );
            for batch in ctx.sql(&q).await?.collect().await? {
                for i in 0..batch.num_rows() {
                    let mut row = Row::new();
                    row.insert("side".into(), Some(side.to_uppercase()));
                    for (j, f) in batch.schema().fields().iter().enumerate() {
                        let c = batch.column(j);
                        row.insert(
                            f.name().clone(),
                            (!c.is_null(i))
                                .then(|| array_value_to_string(c, i).unwrap_or_default()),
                        );
                    }
                    report.samples.duplicates.push(row);
                }
            }
        }
    }
    Ok(report)
}

/// The key a version's control totals record (the dataset's key), if any.
fn recorded_key(r: &VersionRecord) -> Option<Vec<String>> {
    r.partitions
        .iter()
        .filter_map(|p| p.totals.as_ref())
        .map(|t| t.key.clone())
        .find(|k| !k.is_empty())
}

/// Value `i` of a row of counts (0 when absent or null).
fn nth(v: &[Option<u64>], i: usize) -> u64 {
    v.get(i).copied().flatten().unwrap_or(0)
}

/// The first row of a query, as unsigned integers.
async fn scalars(ctx: &SessionContext, sql: &str) -> Result<Vec<Option<u64>>> {
    Ok(texts(ctx, sql).await?.into_iter().map(|t| t.and_then(|t| t.parse().ok())).collect())
}

/// The first row of a query, as text.
async fn texts(ctx: &SessionContext, sql: &str) -> Result<Vec<Option<String>>> {
    let batches = ctx.sql(sql).await?.collect().await?;
    let Some(b) = batches.iter().find(|b| b.num_rows() > 0) else { return Ok(Vec::new()) };
    (0..b.num_columns())
        .map(|j| {
            let c = b.column(j);
            Ok((!c.is_null(0)).then(|| array_value_to_string(c, 0)).transpose()?)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(modified: u64, added: u64, rows: u64) -> DiffReport {
        DiffReport { modified, added, rows_a: rows, rows_b: rows + added, ..Default::default() }
    }

    #[test]
    fn thresholds_turn_a_difference_into_a_pass() {
        let none = Thresholds::default();
        assert_eq!(verdict(&report(0, 0, 10), none), Verdict::Identical);
        assert_eq!(verdict(&report(1, 0, 10), none), Verdict::Differs);
        let rows = Thresholds { max_changed_rows: Some(2), ..Default::default() };
        assert_eq!(verdict(&report(1, 1, 10), rows), Verdict::WithinThresholds);
        assert_eq!(verdict(&report(2, 1, 10), rows), Verdict::Differs);
        let ratio = Thresholds { max_changed_ratio: Some(0.1), ..Default::default() };
        assert_eq!(verdict(&report(1, 0, 10), ratio), Verdict::WithinThresholds);
        assert_eq!(verdict(&report(2, 0, 10), ratio), Verdict::Differs);
        let mut retyped = report(0, 0, 10);
        retyped.schema.retyped.push(("x".into(), "Int64".into(), "Utf8".into()));
        assert_eq!(verdict(&retyped, rows), Verdict::Differs, "a schema change is never a pass");
        let mut dup = report(0, 0, 10);
        dup.duplicate_rows_b = 2;
        assert_eq!(verdict(&dup, none), Verdict::Differs, "duplicates are a difference");
    }

    #[test]
    fn tolerances_parse() {
        assert_eq!(parse_tolerance("price=0.001").unwrap(), ("price".into(), 0.001));
        assert!(parse_tolerance("price").is_err());
        assert!(parse_tolerance("price=-1").is_err());
        assert!(parse_tolerance("price=abc").is_err());
    }
}
