//! The stages of a pipeline run: land the sources, clean, curate. Every stage publishes through
//! the versioned writer, so each stage's output is atomic, versioned and copy-on-write per
//! partition.
//!
//! Time never comes from the clock here: the run window and the run context are parameters.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use chrono::{Datelike, Duration, NaiveDate};
use datafusion::arrow;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Date32Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;
use object_store::ObjectStoreExt;
use serde::Serialize;
use strata_land::BatchManifest;
use strata_publish::{Dataset, Lake, PublishOptions, RunContext, Staged, WriterOptions};

use crate::catalog::{may_hold_dates, RawTable, VersionTable, LAKE_URL};
use crate::error::{Error, Result};
use crate::pipeline::{CleanedDef, ContractColumn, ModelDef, Pipeline, RuleDef};
pub use crate::types::Finding;
use crate::types::{Bound, ExpectedSum, Grain, RuleCheck, Severity, StageKind};

/// The business dates a run covers, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Window {
    pub from: NaiveDate,
    pub to: NaiveDate,
}

impl Window {
    pub fn days(&self) -> impl Iterator<Item = NaiveDate> {
        let (from, to) = (self.from, self.to);
        from.iter_days().take_while(move |d| *d <= to)
    }

    /// Widened to whole months (for month grain).
    pub fn whole_months(&self) -> Window {
        let from = NaiveDate::from_ymd_opt(self.from.year(), self.from.month(), 1).expect("valid");
        let next = if self.to.month() == 12 {
            NaiveDate::from_ymd_opt(self.to.year() + 1, 1, 1)
        } else {
            NaiveDate::from_ymd_opt(self.to.year(), self.to.month() + 1, 1)
        }
        .expect("valid");
        Window { from, to: next - Duration::days(1) }
    }
}

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The requested business dates; `None` covers every date found in the input.
    pub window: Option<Window>,
    /// Only these datasets (cleaned or models); empty means all.
    pub only: Vec<String>,
    /// DataFusion memory pool in bytes; it spills to disk beyond it.
    pub memory_limit: usize,
    /// Parallelism; 0 means the number of cores.
    pub target_partitions: usize,
    /// Run even when a published run already computed exactly this.
    pub force: bool,
    /// How long a run lock lasts without renewal.
    pub lease: std::time::Duration,
    /// The wall clock, for lock leases only (never for data).
    pub clock: Option<strata_publish::locks::Clock>,
}

/// What one stage did, as `strata run` prints it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct StageReport {
    pub stage: StageKind,
    pub dataset: String,
    pub rows_in: u64,
    pub rows_out: u64,
    pub quarantined: u64,
    pub duplicates: u64,
    /// The version published (none when nothing was published).
    pub version: Option<u64>,
    /// Partitions written.
    pub partitions: u64,
    /// The business dates covered.
    pub window: Option<Window>,
    pub millis: u64,
    pub note: String,
    /// The run whose checkpointed output this stage reused instead of computing it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reused_from: Option<String>,
    /// Accepted rows not published because their partition failed a FAIL_PARTITION rule.
    #[serde(default)]
    pub withheld: u64,
    /// Partitions a FAIL_PARTITION rule kept from being published.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_partitions: Vec<String>,
    /// What the rules and gates found, by severity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<Finding>,
    /// Exact sums of the declared columns, computed in SQL: column → input, accepted,
    /// duplicates, quarantined (decimal text).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sums: BTreeMap<String, SumParts>,
    /// Model checks: output column → `<value> = sum(<input>.<column>)` its sum must equal.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub expected_sums: BTreeMap<String, ExpectedSum>,
    /// The partitions the accepted rows fall in (what must be written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_partitions: Option<Vec<String>>,
}

/// The parts of an exact sum in the cleaned stage.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SumParts {
    pub input: String,
    pub accepted: String,
    pub duplicates: String,
    pub quarantined: String,
}

/// A DataFusion session with the lake's store, the memory limit and spilling.
pub fn session(lake: &Lake, options: &RunOptions) -> Result<SessionContext> {
    let limit = if options.memory_limit == 0 {
        crate::pipeline::DEFAULT_MEMORY_LIMIT
    } else {
        options.memory_limit
    };
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(FairSpillPool::new(limit)))
        .build_arc()?;
    // Sorts reserve room for their merge phase up front, so that a sort that spilled can always
    // merge its runs back (the default 10 MB is too little for wide rows).
    //
    // A sort is one sort over all input partitions (computed in parallel below it), not one sort
    // per partition merged by a SortPreservingMergeExec: that merge takes memory the partition
    // sorts may already hold, and cannot spill, so under a full pool a large run could fail at
    // random in its last phase ("Resources exhausted ... SortPreservingMergeExec").
    let mut config = SessionConfig::new()
        .with_sort_spill_reservation_bytes(64 * 1024 * 1024)
        .with_repartition_sorts(false);
    if options.target_partitions > 0 {
        config = config.with_target_partitions(options.target_partitions);
    }
    crate::catalog::read_checked(lake, config, runtime)
}

/// A fresh context sharing the session's runtime (store, memory pool) with no tables.
fn scratch(session: &SessionContext) -> SessionContext {
    SessionContext::new_with_config_rt(session.copied_config(), session.runtime_env())
}

/// Lands the files of a source that are new, and returns the source's index of raw batches
/// (not written yet: the caller saves it once the batches' date ranges are in it too).
pub async fn land_source(
    lake: &Lake,
    pipeline: &Pipeline,
    name: &str,
    source: &crate::pipeline::SourceDef,
    ctx: &RunContext,
) -> Result<(StageReport, strata_land::SourceIndex)> {
    let started = Instant::now();
    let options = strata_land::LandOptions {
        format: source.format,
        delimiter: source.delimiter.as_deref().and_then(|d| d.bytes().next()).unwrap_or(b','),
        ..Default::default()
    };
    let mut report =
        StageReport { stage: StageKind::Land, dataset: name.to_string(), ..Default::default() };
    let (mut new, mut old) = (0, 0);
    // The source's index and its input files (a directory walk and a listing), both of a size
    // that grows with history, are read at the same time.
    let (dir, pattern, owned) = (pipeline.dir.clone(), source.path.clone(), name.to_string());
    let inputs = async move {
        tokio::task::spawn_blocking(move || {
            let files =
                strata_land::expand_inputs_allow_empty(&dir, std::slice::from_ref(&pattern))
                    .map_err(|e| Error::Sql { message: format!("sources.{owned}: {e}") })?;
            strata_land::local_inputs(&files).map_err(land_error)
        })
        .await
        .map_err(|e| Error::Sql { message: format!("sources.{name}: listing the inputs: {e}") })?
    };
    let (index, inputs) =
        tokio::join!(strata_land::SourceIndex::load(lake, name), Box::pin(inputs));
    let inputs = inputs?;
    let mut index = index.map_err(land_error)?;
    for (input, identity) in inputs {
        let outcome = strata_land::land_indexed(lake, &mut index, &input, identity, &options, ctx)
            .await
            .map_err(land_error)?;
        match outcome {
            strata_land::Indexed::Read(read) => match *read {
                strata_land::LandOutcome::Landed(m) => {
                    new += 1;
                    report.rows_in += m.lines();
                    report.rows_out += m.rows;
                    report.quarantined += m.rejected;
                }
                strata_land::LandOutcome::AlreadyLanded(_) => old += 1,
            },
            strata_land::Indexed::Known(_) => old += 1,
        }
    }
    report.note = if new + old == 0 {
        format!("no file matches {}; using the batches already landed", source.path)
    } else {
        format!("{new} new batch(es), {old} already landed")
    };
    report.millis = started.elapsed().as_millis() as u64;
    Ok((report, index))
}

/// Makes the next landing of every source of the pipeline read and hash each of its inputs
/// again, instead of recognising them by their identity (`strata run --rehash`): forgets the
/// input identities of every source's index. Batches are kept; landing is content-addressed, so
/// an unchanged input is found already landed and a changed one lands as a new batch.
pub async fn forget_input_identities(lake: &Lake, pipeline: &Pipeline) -> Result<()> {
    for name in pipeline.sources.keys() {
        let mut index = strata_land::SourceIndex::load(lake, name).await.map_err(land_error)?;
        index.forget_inputs();
        index.save(lake).await.map_err(land_error)?;
    }
    Ok(())
}

/// The raw batches the cleaned stage `name` reads for `window`: every batch that can hold a row
/// of the window or a row whose business date is missing or unreadable (those reach the
/// quarantine in every window), all of them without a window. The range of each batch is taken
/// from the source's index (which reads only the chunks that may hold the window); a batch the
/// index has no range for is scanned once, and its range recorded in the index (the caller saves
/// it).
pub async fn batches_for_window(
    session: &SessionContext,
    lake: &Lake,
    pipeline: &Pipeline,
    name: &str,
    def: &CleanedDef,
    index: &mut strata_land::SourceIndex,
    window: Option<Window>,
) -> Result<Vec<BatchManifest>> {
    let Some(window) = window else { return all_batches(lake, index).await };
    let Some(column) = pipeline.contracts[name].iter().find(|c| c.name == def.business_date) else {
        return all_batches(lake, index).await;
    };
    let key = format!("clean.v1:{}:{}", column.name, column.sql_type);
    let wanted = |r: &strata_land::DateRange| r.may_hold(window.from, window.to);
    let candidates = index.batches_where(lake, &key, wanted).await.map_err(land_error)?;
    let missing: Vec<BatchManifest> =
        candidates.iter().filter(|(_, r)| r.is_none()).map(|(m, _)| m.clone()).collect();
    if !missing.is_empty() {
        // Read once here for their dates: checked against their manifests first.
        strata_land::verify_batches(lake, &missing).await.map_err(land_error)?;
        let reads = BTreeSet::from([column.name.clone()]);
        let table = RawTable::new(&missing, ObjectStoreUrl::parse(LAKE_URL)?, &reads)?;
        let found = if table.schema_fields().contains(&column.name) {
            let df_ctx = scratch(session);
            df_ctx.register_table("raw", Arc::new(table))?;
            let sql = format!(
                "SELECT _batch, CAST(min(d) AS DATE), CAST(max(d) AS DATE), count(*) - count(d) \
                 FROM (SELECT _batch, TRY_CAST(NULLIF(TRIM(CAST({} AS VARCHAR)), '') AS {}) AS d \
                 FROM raw) GROUP BY _batch",
                ident(&column.name),
                column.sql_type
            );
            match df_ctx.sql(&sql).await {
                Ok(df) => Some(df.collect().await?),
                // A business date that is not date-like cannot prune; read every batch.
                Err(_) => return all_batches(lake, index).await,
            }
        } else {
            None
        };
        let mut ranges: BTreeMap<String, strata_land::DateRange> = BTreeMap::new();
        for b in found.iter().flatten() {
            let ids = arrow::compute::cast(b.column(0), &DataType::Utf8)?;
            let ids = ids.as_string_opt::<i32>();
            let lo = b.column(1).as_primitive_opt::<arrow::datatypes::Date32Type>();
            let hi = b.column(2).as_primitive_opt::<arrow::datatypes::Date32Type>();
            let nulls = b.column(3).as_primitive_opt::<arrow::datatypes::Int64Type>();
            let (Some(ids), Some(lo), Some(hi), Some(nulls)) = (ids, lo, hi, nulls) else {
                return all_batches(lake, index).await;
            };
            let day = |a: &arrow::array::Date32Array, i: usize| {
                (!a.is_null(i)).then(|| date_of_days(a.value(i)))
            };
            for i in 0..b.num_rows() {
                ranges.insert(
                    ids.value(i).to_string(),
                    strata_land::DateRange {
                        min: day(lo, i),
                        max: day(hi, i),
                        nulls: nulls.value(i).max(0) as u64,
                    },
                );
            }
        }
        for m in &missing {
            let range = match (&found, ranges.get(&m.batch_id)) {
                (_, Some(r)) => *r,
                // The column is in no batch: every row's date is missing.
                (None, None) => strata_land::DateRange { min: None, max: None, nulls: m.rows },
                // No row at all.
                (Some(_), None) => strata_land::DateRange { min: None, max: None, nulls: 0 },
            };
            index.set_dates(&m.batch_id, &key, range);
        }
    }
    Ok(candidates
        .into_iter()
        .filter(|(m, r)| r.or_else(|| index.dates(&m.batch_id, &key)).is_none_or(|r| wanted(&r)))
        .map(|(m, _)| m)
        .collect())
}

async fn all_batches(
    lake: &Lake,
    index: &mut strata_land::SourceIndex,
) -> Result<Vec<BatchManifest>> {
    index.all_batches(lake).await.map_err(land_error)
}

fn land_error(e: strata_land::Error) -> Error {
    match e {
        strata_land::Error::Lake(l) => Error::Lake(l),
        other => Error::Land(other),
    }
}

/// `"name"` with inner quotes doubled.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with inner quotes doubled.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A bound of a range rule as SQL.
fn bound_literal(b: &Bound) -> String {
    if b.is_text() {
        literal(&b.text())
    } else {
        b.text()
    }
}

/// The SQL condition a rule requires, over the typed columns, and the SQL of the reason a
/// failing row gets.
fn rule_predicate(rule: &RuleDef) -> (String, String) {
    match &rule.check {
        RuleCheck::NotNull { column } => (
            format!("{} IS NOT NULL", ident(column)),
            format!("concat({}, ' is null')", literal(column)),
        ),
        RuleCheck::Range { column, min, max } => {
            let col = ident(column);
            let mut conds = Vec::new();
            if let Some(min) = min {
                conds.push(format!("{col} >= {}", bound_literal(min)));
            }
            if let Some(max) = max {
                conds.push(format!("{col} <= {}", bound_literal(max)));
            }
            let bounds = format!(
                "[{}, {}]",
                min.as_ref().map(Bound::text).unwrap_or_else(|| "-inf".into()),
                max.as_ref().map(Bound::text).unwrap_or_else(|| "inf".into())
            );
            let cond = if conds.is_empty() { "TRUE".into() } else { conds.join(" AND ") };
            (
                format!("({col} IS NULL OR ({cond}))"),
                format!(
                    "concat({}, ' = ', CAST({col} AS VARCHAR), ' is outside ', {})",
                    literal(column),
                    literal(&bounds)
                ),
            )
        }
        RuleCheck::Enum { column, values } => {
            let col = ident(column);
            let listed: Vec<String> = values.iter().map(|v| literal(v)).collect();
            (
                format!("({col} IS NULL OR CAST({col} AS VARCHAR) IN ({}))", listed.join(", ")),
                format!(
                    "concat({}, ' = ', CAST({col} AS VARCHAR), ' is not one of ', {})",
                    literal(column),
                    literal(&values.join(", "))
                ),
            )
        }
        RuleCheck::Regex { column, pattern } => {
            let col = ident(column);
            (
                format!(
                    "({col} IS NULL OR regexp_like(CAST({col} AS VARCHAR), {}))",
                    literal(pattern)
                ),
                format!(
                    "concat({}, ' = ', CAST({col} AS VARCHAR), ' does not match ', {})",
                    literal(column),
                    literal(pattern)
                ),
            )
        }
        RuleCheck::Sql(sql) => {
            (format!("COALESCE(({sql}), FALSE)"), literal(&format!("not true: {sql}")))
        }
    }
}

/// The SQL of the cleaned stage, over a table `raw`: casts and checks every row.
/// Columns: `_batch`, `_line`, `_landed` (the text as landed of every contract column, packed
/// by `strata_pack`; null unless the row is quarantined), typed `<col>`, `_rule`, `_reason`, `_hash` (sha256 of the text as landed,
/// binary) and `_v<n>` (rows failing a rule that does not quarantine).
/// Deduplication needs no window function: the stage sorts these rows by key and rank order and
/// keeps the first row of each key as it streams by.
pub fn cleaning_sql(
    def: &CleanedDef,
    contract: &[ContractColumn],
    raw_columns: &BTreeSet<String>,
) -> String {
    let mut typed = vec!["_batch".to_string(), "_line".to_string()];
    for c in contract {
        let raw = if raw_columns.contains(&c.name) {
            format!("strata_text({})", ident(&c.name))
        } else {
            "CAST(NULL AS VARCHAR)".into()
        };
        typed.push(format!("{raw} AS {}", ident(&format!("{}__raw", c.name))));
        let function = crate::udf::decimal_of(&c.sql_type)
            .and_then(|(p, s)| crate::udf::decimal_function(p, s));
        typed.push(match function {
            Some(f) => format!("{f}({raw}) AS {}", ident(&c.name)),
            None => format!("TRY_CAST({raw} AS {}) AS {}", c.sql_type, ident(&c.name)),
        });
    }
    // Checks in order: casts, not-null contract (and the business date), then the rules.
    let mut checks: Vec<(String, String, String)> = Vec::new(); // (failing condition, rule, reason)
    for c in contract {
        let (t, r) = (ident(&c.name), ident(&format!("{}__raw", c.name)));
        checks.push((
            format!("{r} IS NOT NULL AND {t} IS NULL"),
            "contract".into(),
            format!(
                "concat({}, ': cannot read ', {r}, ' as ', {})",
                literal(&c.name),
                literal(&c.sql_type)
            ),
        ));
    }
    for c in contract {
        if !c.nullable || c.name == def.business_date || def.key.contains(&c.name) {
            checks.push((
                format!("{} IS NULL", ident(&c.name)),
                "not_null".into(),
                literal(&format!("{} is null", c.name)),
            ));
        }
    }
    // Rules that quarantine a record decide `_rule`; the others only flag rows (`_v<n>`), and
    // their severity decides what the flags do.
    let (mut flags, mut flag_ids) = (Vec::new(), Vec::new());
    for (i, rule) in def.rules.iter().enumerate() {
        let (ok, reason) = rule_predicate(rule);
        if rule.severity == Severity::QuarantineRecord {
            checks.push((format!("NOT {ok}"), rule.name.clone(), reason));
        } else {
            flags.push(format!(", NOT {ok} AS _v{i}"));
            flag_ids.push(i);
        }
    }
    let rule_case = checks
        .iter()
        .map(|(cond, rule, _)| format!("WHEN {cond} THEN {}", literal(rule)))
        .collect::<Vec<_>>()
        .join(" ");
    let reason_case = checks
        .iter()
        .map(|(cond, _, reason)| format!("WHEN {cond} THEN {reason}"))
        .collect::<Vec<_>>()
        .join(" ");
    // sha256 of the landed texts joined by chr(31), a null as '\N'.
    let hash_parts: Vec<String> =
        contract.iter().map(|c| ident(&format!("{}__raw", c.name))).collect();
    // The text as landed is only kept for the quarantine: accepted rows carry it as null, in one
    // column (a null in each of sixteen text columns would still take 64 bytes a row), so the
    // sort that ranks them moves far fewer bytes.
    let mut out = vec!["_batch".to_string(), "_line".to_string()];
    let raws: Vec<String> = contract.iter().map(|c| ident(&format!("{}__raw", c.name))).collect();
    out.push(format!(
        "CASE WHEN _rule IS NULL THEN NULL ELSE strata_pack({}) END AS _landed",
        raws.join(", ")
    ));
    out.extend(contract.iter().map(|c| ident(&c.name)));
    out.extend(["_rule", "_reason", "_hash"].map(String::from));
    out.extend((0..flags.len()).map(|i| format!("_v{}", flag_ids[i])));
    format!(
        "WITH typed AS (SELECT {typed} FROM raw), \
         ruled AS (SELECT *, CASE {rule_case} ELSE NULL END AS _rule, \
                   CASE {reason_case} ELSE NULL END AS _reason, \
                   strata_text_sha256({hash}) AS _hash{flags} FROM typed) \
         SELECT {out} FROM ruled",
        typed = typed.join(", "),
        hash = hash_parts.join(", "),
        flags = flags.concat(),
        out = out.join(", "),
    )
}

/// The order that ranks the rows of one key: the latest first, then by content, then by origin
/// (which only orders rows identical in every column).
fn rank_order(def: &CleanedDef) -> String {
    match &def.latest_by {
        Some(l) => format!("{} DESC NULLS LAST, _hash DESC, _batch, _line", ident(l)),
        None => "_hash DESC, _batch, _line".into(),
    }
}

fn date_literal(d: NaiveDate) -> String {
    format!("DATE '{}'", d.format("%Y-%m-%d"))
}

/// Partition keys of a day- or month-grain dataset for a window.
pub fn owned_keys(column: &str, grain: Grain, window: Window) -> BTreeSet<String> {
    window
        .days()
        .map(|d| {
            if grain == Grain::Month {
                format!("{column}={}", d.format("%Y-%m"))
            } else {
                format!("{column}={}", d.format("%Y-%m-%d"))
            }
        })
        .collect()
}

/// The partition column of a dataset: the business date, or `<date>_month` for month grain.
pub fn partition_column(business_date: &str, grain: Grain) -> String {
    if grain == Grain::Month {
        format!("{business_date}_month")
    } else {
        business_date.to_string()
    }
}

#[allow(clippy::too_many_arguments)]
pub async fn clean(
    lake: &Lake,
    session: &SessionContext,
    pipeline: &Pipeline,
    name: &str,
    def: &CleanedDef,
    raw: &[BatchManifest],
    window: Option<Window>,
    ctx: &RunContext,
) -> Result<(StageReport, Vec<Output>)> {
    let started = Instant::now();
    let contract = &pipeline.contracts[name];
    let url = ObjectStoreUrl::parse(LAKE_URL)?;
    // Every raw data file read is first checked against the size and sha256 its manifest
    // records: a damaged file fails the run, naming the batch, instead of being published.
    strata_land::verify_batches(lake, raw).await.map_err(land_error)?;
    let reads: BTreeSet<String> = contract.iter().map(|c| c.name.clone()).collect();
    let table = RawTable::new(raw, url, &reads)?;
    let raw_columns: BTreeSet<String> = table.schema_fields();
    let df_ctx = scratch(session);
    df_ctx.register_table("raw", Arc::new(table))?;
    crate::udf::register(
        &df_ctx,
        contract.iter().filter_map(|c| crate::udf::decimal_of(&c.sql_type)),
    );
    let sql = cleaning_sql(def, contract, &raw_columns);
    df_ctx.register_table("checked", df_ctx.sql(&sql).await?.into_view())?;
    let bd = ident(&def.business_date);
    let month = def.grain == Grain::Month;
    // The window: as asked (widened to whole months for month grain), or every date present.
    let requested = window;
    let window = match window {
        Some(w) if month => Some(w.whole_months()),
        other => other,
    };
    let in_window = match window {
        Some(w) => format!(
            "({bd} BETWEEN {} AND {} OR {bd} IS NULL)",
            date_literal(w.from),
            date_literal(w.to)
        ),
        None => "TRUE".into(),
    };
    let part_col = partition_column(&def.business_date, def.grain);
    // One pass over the ranked rows, in a fixed order (key, then origin) so that the files are
    // byte-identical from run to run: each batch is split into accepted rows and quarantined rows
    // on their way to the writers, and counted, summed and bucketed by partition on the way.
    let key_order: Vec<String> = def.key.iter().map(|k| ident(k)).collect();
    // The order is the ranking's own (quarantined rows first, then by key), so the window
    // function's sort serves it and the rows are sorted once.
    let one_pass = format!(
        "SELECT * FROM checked WHERE {in_window} \
         ORDER BY _rule IS NULL, {}, {}",
        key_order.join(", "),
        rank_order(def)
    );
    let mut stream = df_ctx.sql(&one_pass).await?.execute_stream().await?;
    // Month grain: the month of each row (its partition, and its quarantine date) is added to
    // each batch here, from a cache of the days seen.
    let schema = if month {
        let mut fields = stream.schema().fields().to_vec();
        fields.push(Arc::new(Field::new(&part_col, DataType::Utf8, true)));
        Arc::new(Schema::new(fields))
    } else {
        stream.schema()
    };
    let mut months: std::collections::HashMap<i32, String> = std::collections::HashMap::new();
    let idx = |n: &str| {
        schema.index_of(n).map_err(|_| Error::Sql {
            message: format!(
                "cleaned.{name}: internal column {n:?} missing from the cleaning query"
            ),
        })
    };
    let (rule_i, bd_i) = (idx("_rule")?, idx(&def.business_date)?);
    let key_idx: Vec<usize> = def.key.iter().map(|k| idx(k)).collect::<Result<_>>()?;
    let q_cols: Vec<(usize, String)> = vec![
        (if month { idx(&part_col)? } else { bd_i }, "quarantine_date".to_string()),
        (rule_i, "_rule".into()),
        (idx("_reason")?, "_reason".into()),
        (idx("_batch")?, "_batch".into()),
        (idx("_line")?, "_line".into()),
    ];
    let landed_i = idx("_landed")?;
    let mut a_cols: Vec<(usize, String)> =
        contract.iter().map(|c| Ok((idx(&c.name)?, c.name.clone()))).collect::<Result<_>>()?;
    if month {
        a_cols.push((idx(&part_col)?, part_col.clone()));
    }
    // Dictionary columns (the batch id) are written as plain text.
    let plain = |t: &DataType| match t {
        DataType::Dictionary(_, v) => v.as_ref().clone(),
        other => other.clone(),
    };
    let project = |cols: &[(usize, String)]| -> SchemaRef {
        Arc::new(Schema::new(
            cols.iter()
                .map(|(i, n)| {
                    let f = schema.field(*i);
                    f.as_ref().clone().with_name(n).with_data_type(plain(f.data_type()))
                })
                .collect::<Vec<_>>(),
        ))
    };
    // The quarantine keeps the landed text as string views, as it always has.
    // Then the landed text of each contract column, as string views, unpacked from `_landed`.
    let q_base = project(&q_cols);
    let mut q_fields = q_base.fields().to_vec();
    q_fields
        .extend(contract.iter().map(|c| Arc::new(Field::new(&c.name, DataType::Utf8View, true))));
    let q_schema = Arc::new(Schema::new(q_fields));
    let a_schema = project(&a_cols);
    let flagged: Vec<(usize, &RuleDef)> = def
        .rules
        .iter()
        .enumerate()
        .filter(|(_, r)| r.severity != Severity::QuarantineRecord)
        .collect();
    let flag_cols: Vec<usize> =
        flagged.iter().map(|(i, _)| idx(&format!("_v{i}"))).collect::<Result<_>>()?;
    let sum_cols = def.sum_columns(contract);
    let sum_idx: Vec<usize> = sum_cols.iter().map(|c| idx(c)).collect::<Result<_>>()?;
    let q_name = format!("{name}.quarantine");
    let (a_ds, q_ds) = (lake.dataset(name)?, lake.dataset(&q_name)?);
    let a_totals = Some(strata_reconcile::TotalsSpec {
        key: def.key.clone(),
        sums: sum_cols.clone(),
        time: Some(def.business_date.clone()),
    });
    let mut a_writer = a_ds.writer(
        ctx,
        a_schema.clone(),
        WriterOptions {
            partition_by: vec![part_col.clone()],
            totals: a_totals,
            // Accepted rows leave the one pass sorted by key: uniqueness is proved in constant
            // memory.
            keys_in_order: true,
            ..Default::default()
        },
    )?;
    let mut q_writer = q_ds.writer(
        ctx,
        q_schema.clone(),
        WriterOptions {
            partition_by: vec!["quarantine_date".into()],
            totals: Some(strata_reconcile::TotalsSpec::default()),
            ..Default::default()
        },
    )?;
    let mut pass = CleanPass {
        sums: vec![[(0i128, 0i8); 4]; sum_cols.len()],
        flag_rows: vec![0; flagged.len()],
        keys: Some(KeyRanker::new(&schema, &key_idx)?),
        ..Default::default()
    };
    let fail_partition: Vec<bool> =
        flagged.iter().map(|(_, r)| r.severity == Severity::FailPartition).collect();
    // The writers (control totals, Parquet encoding) run in their own task, so that they use
    // the second core while this one merges, ranks and splits the rows.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Option<RecordBatch>, Option<RecordBatch>)>(2);
    let writing = tokio::spawn(async move {
        let mut result: Result<()> = Ok(());
        while let Some((q, a)) = rx.recv().await {
            if let Some(q) = q {
                result = q_writer.write(&q).await.map_err(Error::from);
            }
            if let (Ok(()), Some(a)) = (&result, a) {
                result = a_writer.write(&a).await.map_err(Error::from);
            }
            if result.is_err() {
                break;
            }
        }
        (result, a_writer, q_writer)
    });
    let result: Result<()> = async {
        let (mut pending, mut pending_rows) = (Vec::new(), 0usize);
        while let Some(batch) = stream.next().await {
            let mut batch = batch?;
            if month {
                let mut cols = batch.columns().to_vec();
                cols.push(month_strings(batch.column(bd_i), &mut months)?);
                batch = RecordBatch::try_new(schema.clone(), cols)?;
            }
            let (acc, quar, dup) = pass.masks(&batch, rule_i)?;
            pass.add(
                &batch,
                (&acc, &quar, &dup),
                bd_i,
                &flag_cols,
                &fail_partition,
                &sum_idx,
                &sum_cols,
            )?;
            let take = |cols: &[(usize, String)], s: &SchemaRef, mask: &BooleanArray| {
                let filter = arrow::compute::FilterBuilder::new(mask).optimize().build();
                let picked: Vec<ArrayRef> = cols
                    .iter()
                    .zip(s.fields())
                    .map(|((i, _), f)| {
                        let c = filter.filter(batch.column(*i))?;
                        if c.data_type() == f.data_type() {
                            Ok(c)
                        } else {
                            arrow::compute::cast(&c, f.data_type())
                        }
                    })
                    .collect::<std::result::Result<_, _>>()?;
                Ok::<_, Error>(RecordBatch::try_new(s.clone(), picked)?)
            };
            let q = (quar.true_count() > 0)
                .then(|| {
                    let base = take(&q_cols, &q_base, &quar)?;
                    let landed = arrow::compute::filter(batch.column(landed_i), &quar)?;
                    let mut columns = base.columns().to_vec();
                    columns.extend(crate::udf::unpack(&landed, contract.len())?);
                    Ok::<_, Error>(RecordBatch::try_new(q_schema.clone(), columns)?)
                })
                .transpose()?;
            if acc.true_count() > 0 {
                let a = take(&a_cols, &a_schema, &acc)?;
                pending_rows += a.num_rows();
                pending.push(a);
            }
            // Accepted rows go to the writers in batches of 64k: each batch is split by
            // partition there, and bigger batches mean fewer, bigger writes per partition.
            let a = if pending_rows >= 65536 {
                pending_rows = 0;
                Some(arrow::compute::concat_batches(&a_schema, &std::mem::take(&mut pending))?)
            } else {
                None
            };
            if (q.is_some() || a.is_some()) && tx.send((q, a)).await.is_err() {
                // The writers stopped on an error; it is reported below.
                break;
            }
        }
        if !pending.is_empty() {
            let a = arrow::compute::concat_batches(&a_schema, &pending)?;
            let _ = tx.send((None, Some(a))).await;
        }
        Ok(())
    }
    .await;
    drop(tx);
    let (written, a_writer, q_writer) = match writing.await {
        Ok(x) => x,
        Err(e) => {
            a_ds.discard(ctx.run_id(), 0).await;
            q_ds.discard(ctx.run_id(), 0).await;
            return Err(Error::Internal {
                message: format!("cleaned.{name}: the writer task failed: {e}"),
            });
        }
    };
    let result = written.and(result);
    let staged = match result {
        Ok(()) => match (a_writer.finish().await, q_writer.finish().await) {
            (Ok(a), Ok(q)) => Ok((a, q)),
            (Err(e), _) | (_, Err(e)) => Err(e.into()),
        },
        Err(e) => Err(e),
    };
    let (mut a_staged, q_staged) = match staged {
        Ok(x) => x,
        Err(e) => {
            a_ds.discard(ctx.run_id(), 0).await;
            q_ds.discard(ctx.run_id(), 0).await;
            return Err(e);
        }
    };
    let (input, quarantined, duplicates, accepted) =
        (pass.input, pass.quarantined, pass.duplicates, pass.accepted);
    // Findings of the rules that do not quarantine.
    let mut findings = Vec::new();
    for ((_, rule), rows) in flagged.iter().zip(&pass.flag_rows) {
        if *rows == 0 {
            continue;
        }
        let sev = rule.severity;
        if sev == Severity::FailRun {
            a_ds.discard(ctx.run_id(), 0).await;
            q_ds.discard(ctx.run_id(), 0).await;
            return Err(Error::Quality {
                message: format!(
                    "cleaned.{name}: {rows} row(s) fail rule {:?}, whose severity is FAIL_RUN; \
                     nothing was published. Fix the input (or the rule), then run again; \
                     `strata query` over the raw batches shows the rows",
                    rule.name
                ),
            });
        }
        findings.push(Finding {
            severity: sev,
            source: format!("rule {}", rule.name),
            dataset: name.to_string(),
            rows: *rows,
            detail: format!("{rows} accepted row(s) fail rule {:?}", rule.name),
        });
    }
    let key_of = |day: i32| {
        let d = date_of_days(day);
        if month {
            format!("{part_col}={}", d.format("%Y-%m"))
        } else {
            format!("{part_col}={}", d.format("%Y-%m-%d"))
        }
    };
    // FAIL_PARTITION: a partition with a failing row is not published at all; its staged files
    // are dropped and its rows counted as withheld.
    let failed_keys: BTreeSet<String> = pass.failed_days.iter().map(|d| key_of(*d)).collect();
    let mut withheld = 0;
    if !failed_keys.is_empty() {
        let (dropped, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut a_staged.partitions)
            .into_iter()
            .partition(|p| failed_keys.contains(&p.key));
        for p in &dropped {
            withheld += p.rows;
            for f in &p.files {
                let _ = lake.store().delete(&object_store::path::Path::from(f.path.as_str())).await;
            }
        }
        a_staged.partitions = kept;
        a_staged.rows -= withheld;
    }
    let expected_keys: BTreeSet<String> = pass
        .accepted_days
        .iter()
        .map(|d| key_of(*d))
        .filter(|k| !failed_keys.contains(k))
        .collect();
    let window = window.or_else(|| match (pass.min_day, pass.max_day) {
        (Some(lo), Some(hi)) => Some(Window { from: date_of_days(lo), to: date_of_days(hi) }),
        _ => None,
    });
    let mut sums = BTreeMap::new();
    for (c, parts) in sum_cols.iter().zip(&pass.sums) {
        let text = |(v, s): (i128, i8)| strata_reconcile::decimal_text(v, s);
        sums.insert(
            c.clone(),
            SumParts {
                input: text(parts[0]),
                accepted: text(parts[1]),
                duplicates: text(parts[2]),
                quarantined: text(parts[3]),
            },
        );
    }
    let mut q_owned = window
        .filter(|_| requested.is_some())
        .map(|w| owned_keys("quarantine_date", def.grain, w))
        .unwrap_or_default();
    q_owned.insert(format!("quarantine_date={}", strata_publish::names::NULL_PARTITION));
    let mut owned = requested.and(window).map(|w| {
        owned_keys(&part_col, def.grain, w)
            .difference(&failed_keys)
            .cloned()
            .collect::<BTreeSet<_>>()
    });
    let mut full = requested.is_none();
    if full && !failed_keys.is_empty() {
        // A full run normally replaces everything; with failed partitions it owns every other
        // partition instead, so the failed ones keep their published rows.
        let mut keys: BTreeSet<String> = a_ds
            .current_opt()
            .await?
            .map(|r| r.partitions.iter().map(|p| p.key.clone()).collect())
            .unwrap_or_default();
        keys.extend(expected_keys.iter().cloned());
        owned = Some(keys.difference(&failed_keys).cloned().collect());
        full = false;
    }
    // Reconcile before anything is published: what was staged must be exactly what was counted.
    let (written, q_written) = (a_staged.rows, q_staged.rows);
    if written + withheld != accepted
        || q_written != quarantined
        || input != accepted + quarantined + duplicates
    {
        q_ds.discard(ctx.run_id(), 0).await;
        a_ds.discard(ctx.run_id(), 0).await;
        return Err(Error::Reconciliation {
            message: format!(
                "cleaned.{name}: counts do not reconcile (input {input}, accepted {accepted} but \
                 staged {written} + withheld {withheld}, quarantined {quarantined} but staged \
                 {q_written}, duplicates {duplicates}); nothing was published. Report this with \
                 the run id {}",
                ctx.run_id()
            ),
        });
    }
    let expected_values: Vec<String> = expected_keys
        .iter()
        .map(|k| k.split_once('=').map(|(_, v)| v.to_string()).unwrap_or_default())
        .collect();
    let reason = Some(format!("run {}", ctx.run_id()));
    let report = StageReport {
        stage: StageKind::Clean,
        dataset: name.to_string(),
        rows_in: input,
        rows_out: written,
        quarantined,
        duplicates,
        version: None,
        partitions: a_staged.partitions.len() as u64,
        window,
        millis: started.elapsed().as_millis() as u64,
        withheld,
        failed_partitions: failed_keys.iter().cloned().collect(),
        findings,
        sums,
        expected_partitions: Some(
            expected_values.iter().map(|v| format!("{part_col}={v}")).collect(),
        ),
        ..Default::default()
    };
    let outputs = vec![
        Output {
            ds: a_ds,
            staged: a_staged,
            options: PublishOptions {
                replace_all: full,
                owned: if full { None } else { owned },
                reason: reason.clone(),
            },
        },
        Output {
            ds: q_ds,
            staged: q_staged,
            options: PublishOptions {
                replace_all: full,
                owned: if full { None } else { Some(q_owned) },
                reason,
            },
        },
    ];
    Ok((report, outputs))
}

/// `YYYY-MM` of each date (null where the date is null), formatting each distinct day once.
fn month_strings(
    dates: &ArrayRef,
    cache: &mut std::collections::HashMap<i32, String>,
) -> Result<ArrayRef> {
    let days = arrow::compute::cast(dates, &DataType::Date32)?;
    let days = days.as_primitive::<arrow::datatypes::Date32Type>();
    let mut out = arrow::array::StringBuilder::with_capacity(days.len(), days.len() * 7);
    for d in days.iter() {
        match d {
            None => out.append_null(),
            Some(d) => out.append_value(
                cache.entry(d).or_insert_with(|| date_of_days(d).format("%Y-%m").to_string()),
            ),
        }
    }
    Ok(Arc::new(out.finish()))
}

/// What one pass over a cleaned stage's ranked rows counts.
#[derive(Debug, Default)]
struct CleanPass {
    input: u64,
    quarantined: u64,
    duplicates: u64,
    accepted: u64,
    /// Per non-quarantining rule: accepted rows that fail it.
    flag_rows: Vec<u64>,
    /// Per sum column: (units, scale) of input, accepted, duplicates, quarantined.
    sums: Vec<[(i128, i8); 4]>,
    accepted_days: std::collections::HashSet<i32>,
    failed_days: std::collections::HashSet<i32>,
    min_day: Option<i32>,
    max_day: Option<i32>,
    keys: Option<KeyRanker>,
}

/// Finds the first row of each key in rows sorted by key, across batches.
struct KeyRanker {
    converter: arrow::row::RowConverter,
    key_idx: Vec<usize>,
    last: Option<arrow::row::OwnedRow>,
}

impl std::fmt::Debug for KeyRanker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRanker").field("key_idx", &self.key_idx).finish()
    }
}

impl KeyRanker {
    fn new(schema: &SchemaRef, key_idx: &[usize]) -> Result<Self> {
        let fields = key_idx
            .iter()
            .map(|&i| arrow::row::SortField::new(schema.field(i).data_type().clone()))
            .collect();
        Ok(KeyRanker {
            converter: arrow::row::RowConverter::new(fields)?,
            key_idx: key_idx.to_vec(),
            last: None,
        })
    }

    /// For the rows of `b` selected by `ok` (sorted by key among themselves): true where the
    /// row is the first of its key.
    fn first_of_key(&mut self, b: &RecordBatch, ok: &BooleanArray) -> Result<BooleanArray> {
        let cols: Vec<ArrayRef> = self.key_idx.iter().map(|&i| b.column(i).clone()).collect();
        let rows = self.converter.convert_columns(&cols)?;
        let mut out = Vec::with_capacity(b.num_rows());
        for i in 0..b.num_rows() {
            if !ok.value(i) {
                out.push(false);
                continue;
            }
            let row = rows.row(i);
            let first = self.last.as_ref().is_none_or(|l| l.row() != row);
            if first {
                self.last = Some(row.owned());
            }
            out.push(first);
        }
        Ok(BooleanArray::from(out))
    }
}

impl CleanPass {
    /// (accepted, quarantined, duplicates) masks of a batch of rows sorted by `_rule IS NULL`,
    /// key and rank order: a row is accepted when it passed every check and is the first of its
    /// key.
    fn masks(
        &mut self,
        b: &RecordBatch,
        rule_i: usize,
    ) -> Result<(BooleanArray, BooleanArray, BooleanArray)> {
        let rule = b.column(rule_i);
        let quar = arrow::compute::is_not_null(rule)?;
        let ok = arrow::compute::is_null(rule)?;
        let ranker = self
            .keys
            .as_mut()
            .ok_or_else(|| Error::Internal { message: "no key ranker".into() })?;
        let acc = ranker.first_of_key(b, &ok)?;
        let dup = arrow::compute::and(&ok, &arrow::compute::not(&acc)?)?;
        Ok((acc, quar, dup))
    }

    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        b: &RecordBatch,
        (acc, quar, dup): (&BooleanArray, &BooleanArray, &BooleanArray),
        bd_i: usize,
        flag_cols: &[usize],
        fail_partition: &[bool],
        sum_idx: &[usize],
        sum_cols: &[String],
    ) -> Result<()> {
        self.input += b.num_rows() as u64;
        self.quarantined += quar.true_count() as u64;
        self.accepted += acc.true_count() as u64;
        self.duplicates += dup.true_count() as u64;
        let days = b.column(bd_i).as_any().downcast_ref::<Date32Array>();
        if let Some(days) = days {
            for d in days.iter().flatten() {
                self.min_day = Some(self.min_day.map_or(d, |m| m.min(d)));
                self.max_day = Some(self.max_day.map_or(d, |m| m.max(d)));
            }
            let acc_days = arrow::compute::filter(days, acc)?;
            let acc_days = acc_days.as_any().downcast_ref::<Date32Array>().expect("date32");
            self.accepted_days.extend(acc_days.iter().flatten());
        }
        for (k, &ci) in flag_cols.iter().enumerate() {
            let flag = b.column(ci).as_any().downcast_ref::<BooleanArray>().ok_or_else(|| {
                Error::Internal { message: "a rule's flag column is not boolean".into() }
            })?;
            let failing = arrow::compute::and(flag, acc)?;
            self.flag_rows[k] += failing.true_count() as u64;
            if fail_partition[k] && failing.true_count() > 0 {
                if let Some(days) = days {
                    let f = arrow::compute::filter(days, &failing)?;
                    let f = f.as_any().downcast_ref::<Date32Array>().expect("date32");
                    self.failed_days.extend(f.iter().flatten());
                }
            }
        }
        for (k, &ci) in sum_idx.iter().enumerate() {
            let col = b.column(ci);
            // Slot 0 is every row: the column itself, unfiltered.
            for (slot, mask) in [None, Some(acc), Some(dup), Some(quar)].into_iter().enumerate() {
                let part = match mask {
                    None => strata_reconcile::sum_column(col, &sum_cols[k])?,
                    Some(m) => strata_reconcile::sum_column(
                        &arrow::compute::filter(col, m)?,
                        &sum_cols[k],
                    )?,
                };
                let acc_sum = &mut self.sums[k][slot];
                let scale = part.1;
                acc_sum.1 = scale;
                acc_sum.0 = acc_sum.0.checked_add(part.0).ok_or_else(|| Error::Sql {
                    message: format!("the sum of {} overflows 128 bits", sum_cols[k]),
                })?;
            }
        }
        Ok(())
    }
}

/// Staged output of a stage, with how it is to be published.
#[derive(Debug, Clone)]
pub struct Output {
    pub ds: Dataset,
    pub staged: Staged,
    pub options: PublishOptions,
}

/// Streams a query's batches into the staging writer of `dataset`. Nothing is visible yet.
async fn stage_stream(
    lake: &Lake,
    dataset: &str,
    mut stream: SendableRecordBatchStream,
    partition_by: Vec<String>,
    totals: Option<strata_reconcile::TotalsSpec>,
    ctx: &RunContext,
) -> Result<(Dataset, Staged)> {
    let ds: Dataset = lake.dataset(dataset)?;
    let schema = stream.schema();
    let mut writer =
        ds.writer(ctx, schema, WriterOptions { partition_by, totals, ..Default::default() })?;
    let result: Result<()> = async {
        while let Some(batch) = stream.next().await {
            writer.write(&batch?).await?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        ds.discard(ctx.run_id(), 0).await;
        return Err(e);
    }
    match writer.finish().await {
        Ok(staged) => Ok((ds, staged)),
        Err(e) => {
            ds.discard(ctx.run_id(), 0).await;
            Err(e.into())
        }
    }
}

/// Computes a model and stages its output. `inputs` are the records this run prepared for its
/// dependencies (not yet published); other dependencies are read at their current version.
#[allow(clippy::too_many_arguments)]
pub async fn model(
    lake: &Lake,
    options: &RunOptions,
    pipeline: &Pipeline,
    name: &str,
    def: &ModelDef,
    deps: &BTreeSet<String>,
    window: Option<Window>,
    inputs: &BTreeMap<String, strata_publish::Draft>,
    ctx: &RunContext,
) -> Result<(StageReport, Output)> {
    let started = Instant::now();
    let session = session(lake, options)?;
    let url = ObjectStoreUrl::parse(LAKE_URL)?;
    let window = match window {
        Some(w) if def.grain == Grain::Month => Some(w.whole_months()),
        other => other,
    };
    let mut rows_in = 0;
    for dep in deps {
        let ds = lake.dataset(dep)?;
        let found = match inputs.get(dep) {
            Some(d) => Some(d.clone()),
            None => ds.draft_of_current().await?,
        };
        let Some(draft) = found else {
            return Err(Error::Sql {
                message: format!(
                    "models.{name} reads {dep:?}, which has no published version yet; run \
                     the pipeline without --only, or run {dep} first"
                ),
            });
        };
        rows_in += draft.record.summary.rows;
        let bd_col = pipeline
            .cleaned
            .get(dep)
            .map(|c| c.business_date.clone())
            .or_else(|| pipeline.models.get(dep).map(|m| m.business_date.clone()));
        // Read only what the window needs: the window plus the model's look-back, skipping
        // the partitions outside it (and the chunks of the record that hold none of them).
        let df = match (window, bd_col) {
            (Some(w), Some(col)) => {
                let lo = w.from - Duration::days(def.reads_days.into());
                let by = draft.record.partition_by.clone();
                let keep = |key: &str| {
                    may_hold_dates(&by, &strata_publish::model::key_values(key), &col, lo, w.to)
                };
                let record = ds.select(&draft, &keep).await?;
                let table = VersionTable::new(record, url.clone()).only_dates(&col, lo, w.to);
                session.read_table(Arc::new(table))?.filter(between_dates(
                    datafusion::prelude::col(ident(&col)),
                    lo,
                    w.to,
                ))?
            }
            _ => {
                let record = ds.select(&draft, &|_| true).await?;
                session.read_table(Arc::new(VersionTable::new(record, url.clone())))?
            }
        };
        session.register_table(ident(dep).as_str(), df.into_view())?;
    }
    // What the output's declared sums must equal: the inputs' sums over the same dates.
    let mut expected_sums = BTreeMap::new();
    for check in &def.reconcile {
        let Some((dep, col)) = check.equals.split_once('.').filter(|(d, _)| deps.contains(*d))
        else {
            return Err(Error::Sql {
                message: format!(
                    "models.{name}.reconcile: equals = {:?} must be <input>.<column> with an input \
                     of the model ({})",
                    check.equals,
                    deps.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            });
        };
        let bd_col = pipeline
            .cleaned
            .get(dep)
            .map(|c| c.business_date.clone())
            .or_else(|| pipeline.models.get(dep).map(|m| m.business_date.clone()))
            .unwrap_or_default();
        let filter = match window {
            Some(w) => format!(
                " WHERE {} BETWEEN {} AND {}",
                ident(&bd_col),
                date_literal(w.from),
                date_literal(w.to)
            ),
            None => String::new(),
        };
        let b = session
            .sql(&format!(
                "SELECT CAST(sum({}) AS VARCHAR) FROM {}{filter}",
                ident(col),
                ident(dep)
            ))
            .await?
            .collect()
            .await?;
        let v = b
            .first()
            .filter(|b| b.num_rows() > 0 && !b.column(0).is_null(0))
            .map(|b| {
                datafusion::arrow::util::display::array_value_to_string(b.column(0), 0)
                    .unwrap_or_default()
            })
            .unwrap_or_else(|| "0".into());
        expected_sums.insert(
            check.column.clone(),
            ExpectedSum { value: v.to_string(), of: check.equals.clone() },
        );
    }
    let sql = &pipeline.model_sql[name];
    let mut df = session.sql(sql).await.map_err(|e| match Error::from(e) {
        Error::Sql { message } => Error::Sql {
            message: format!(
                "models.{name} ({}): {}",
                def.sql,
                message.trim_start_matches("SQL error: ")
            ),
        },
        other => other,
    })?;
    if sql.contains("$from") || sql.contains("$to") {
        let (from, to) = match window {
            Some(w) => (w.from, w.to),
            None => (NaiveDate::MIN, NaiveDate::MAX),
        };
        df = df.with_param_values(datafusion::common::ParamValues::Map(
            [
                (
                    "from".to_string(),
                    datafusion::common::ScalarValue::Date32(Some(days_since_epoch(from))).into(),
                ),
                (
                    "to".to_string(),
                    datafusion::common::ScalarValue::Date32(Some(days_since_epoch(to))).into(),
                ),
            ]
            .into_iter()
            .collect(),
        ))?;
    }
    let schema = df.schema().as_arrow().clone();
    let Ok(field) = schema.field_with_name(&def.business_date) else {
        return Err(Error::Sql {
            message: format!(
                "models.{name}: the SQL's result has no column {:?} (its business_date); columns: {}",
                def.business_date,
                schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ")
            ),
        });
    };
    if field.data_type() != &DataType::Date32 {
        return Err(Error::Sql {
            message: format!(
                "models.{name}: column {:?} is {}, but a business date must be DATE; cast it in the SQL",
                def.business_date,
                field.data_type()
            ),
        });
    }
    let bd = datafusion::prelude::col(ident(&def.business_date));
    if let Some(w) = window {
        df = df.filter(between_dates(bd.clone(), w.from, w.to))?;
    }
    let part_col = partition_column(&def.business_date, def.grain);
    if def.grain == Grain::Month {
        df = df.with_column(
            &part_col,
            datafusion::functions::expr_fn::to_char(bd, datafusion::prelude::lit("%Y-%m")),
        )?;
    }
    // A fixed row order makes the files byte-identical from run to run.
    let sort: Vec<_> = df
        .schema()
        .columns()
        .into_iter()
        .map(|c| datafusion::prelude::col(c).sort(true, false))
        .collect();
    let df = df.sort(sort)?;
    let stream = df.execute_stream().await?;
    let owned = window.map(|w| owned_keys(&part_col, def.grain, w));
    let full = window.is_none();
    let mut sums = def.sums.clone();
    sums.extend(def.reconcile.iter().map(|c| c.column.clone()));
    sums.sort();
    sums.dedup();
    let totals = Some(strata_reconcile::TotalsSpec {
        key: def.key.clone(),
        sums,
        time: Some(def.business_date.clone()),
    });
    let (ds, staged) = stage_stream(lake, name, stream, vec![part_col], totals, ctx).await?;
    let report = StageReport {
        stage: StageKind::Model,
        dataset: name.to_string(),
        rows_in,
        rows_out: staged.rows,
        partitions: staged.partitions.len() as u64,
        window,
        millis: started.elapsed().as_millis() as u64,
        expected_sums,
        ..Default::default()
    };
    let options =
        PublishOptions { replace_all: full, owned, reason: Some(format!("run {}", ctx.run_id())) };
    Ok((report, Output { ds, staged, options }))
}

/// `expr BETWEEN from AND to`, for DATE columns.
fn between_dates(
    expr: datafusion::prelude::Expr,
    from: NaiveDate,
    to: NaiveDate,
) -> datafusion::prelude::Expr {
    let date = |d| {
        datafusion::prelude::lit(datafusion::common::ScalarValue::Date32(Some(days_since_epoch(d))))
    };
    expr.between(date(from), date(to))
}

fn days_since_epoch(d: NaiveDate) -> i32 {
    (d - NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")).num_days() as i32
}

/// The date of an Arrow `Date32` value (days since 1970-01-01).
fn date_of_days(days: i32) -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch") + Duration::days(days.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sort is one sort over all partitions: no SortPreservingMergeExec, whose memory cannot
    /// spill, sits above per-partition sorts.
    #[tokio::test]
    async fn sorts_do_not_merge_partitions_under_memory_pressure() {
        let lake = Lake::from_store(Arc::new(object_store::memory::InMemory::new()), "memory://");
        let options = RunOptions { target_partitions: 4, ..Default::default() };
        let ctx = session(&lake, &options).unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let part = |v: i64| {
            vec![RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(arrow::array::Int64Array::from(vec![v, v + 10]))],
            )
            .unwrap()]
        };
        let table = datafusion::datasource::MemTable::try_new(
            schema.clone(),
            vec![part(3), part(1), part(2), part(0)],
        )
        .unwrap();
        ctx.register_table("t", Arc::new(table)).unwrap();
        let df = ctx.sql("SELECT k + 1 AS k FROM t ORDER BY k").await.unwrap();
        let plan = datafusion::physical_plan::displayable(
            df.clone().create_physical_plan().await.unwrap().as_ref(),
        )
        .indent(false)
        .to_string();
        assert!(!plan.contains("SortPreservingMergeExec"), "{plan}");
        assert!(plan.contains("SortExec"), "{plan}");
        let rows = df.collect().await.unwrap();
        let got: Vec<i64> = rows
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<arrow::array::Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        assert_eq!(got, vec![1, 2, 3, 4, 11, 12, 13, 14]);
    }
}
