//! The stages of a pipeline run: land the sources, clean, curate. Every stage publishes through
//! the versioned writer, so each stage's output is atomic, versioned and copy-on-write per
//! partition.
//!
//! Time never comes from the clock here: the run window and the run context are parameters.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use chrono::{Datelike, Duration, NaiveDate};
use datafusion::arrow::array::{Array, Date32Array, Int64Array};
use datafusion::arrow::datatypes::DataType;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;
use serde::Serialize;
use strata_land::BatchManifest;
use strata_publish::{Dataset, Lake, PublishOptions, RunContext, Staged, WriterOptions};

use crate::catalog::{RawTable, VersionTable, LAKE_URL};
use crate::error::{Error, Result};
use crate::pipeline::{CleanedDef, ContractColumn, ModelDef, Pipeline, RuleDef};

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
    pub(crate) fn whole_months(&self) -> Window {
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
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct StageReport {
    /// `land`, `clean` or `model`.
    pub stage: String,
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
    pub expected_sums: BTreeMap<String, String>,
    /// The partitions the accepted rows fall in (what must be written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_partitions: Option<Vec<String>>,
}

/// A rule or gate that found something, and what its severity made of it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Finding {
    pub severity: String,
    /// `rule <name>` or `gate <name>`.
    pub source: String,
    pub dataset: String,
    /// Rows (for rules) that failed.
    pub rows: u64,
    pub detail: String,
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
pub(crate) fn session(lake: &Lake, options: &RunOptions) -> Result<SessionContext> {
    let limit = if options.memory_limit == 0 {
        crate::pipeline::DEFAULT_MEMORY_LIMIT
    } else {
        options.memory_limit
    };
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(FairSpillPool::new(limit)))
        .build_arc()?;
    let mut config = SessionConfig::new();
    if options.target_partitions > 0 {
        config = config.with_target_partitions(options.target_partitions);
    }
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    let url = ObjectStoreUrl::parse(LAKE_URL)?;
    ctx.register_object_store(url.as_ref(), lake.store().clone());
    Ok(ctx)
}

/// A fresh context sharing the session's runtime (store, memory pool) with no tables.
fn scratch(session: &SessionContext) -> SessionContext {
    SessionContext::new_with_config_rt(session.copied_config(), session.runtime_env())
}

pub(crate) async fn land_source(
    lake: &Lake,
    pipeline: &Pipeline,
    name: &str,
    source: &crate::pipeline::SourceDef,
    ctx: &RunContext,
) -> Result<StageReport> {
    let started = Instant::now();
    let files =
        strata_land::expand_inputs_allow_empty(&pipeline.dir, std::slice::from_ref(&source.path))
            .map_err(|e| Error::Sql { message: format!("sources.{name}: {e}") })?;
    let options = strata_land::LandOptions {
        format: source.format.as_deref().map(|f| match f {
            "csv" => strata_land::InputFormat::Csv,
            "jsonl" => strata_land::InputFormat::Jsonl,
            _ => strata_land::InputFormat::Parquet,
        }),
        delimiter: source.delimiter.as_deref().and_then(|d| d.bytes().next()).unwrap_or(b','),
        ..Default::default()
    };
    let local: Arc<dyn object_store::ObjectStore> =
        Arc::new(object_store::local::LocalFileSystem::new());
    let mut report =
        StageReport { stage: "land".into(), dataset: name.to_string(), ..Default::default() };
    let (mut new, mut old) = (0, 0);
    for f in files {
        let path = object_store::path::Path::from_absolute_path(&f).map_err(|e| Error::Sql {
            message: format!("cannot use {} as an input: {e}", f.display()),
        })?;
        let input =
            strata_land::Input { store: local.clone(), path, display: f.display().to_string() };
        match strata_land::land(lake, name, &input, &options, ctx).await.map_err(land_error)? {
            strata_land::LandOutcome::Landed(m) => {
                new += 1;
                report.rows_in += m.lines();
                report.rows_out += m.rows;
                report.quarantined += m.rejected;
            }
            strata_land::LandOutcome::AlreadyLanded(_) => old += 1,
        }
    }
    report.note = if new + old == 0 {
        format!("no file matches {}; using the batches already landed", source.path)
    } else {
        format!("{new} new batch(es), {old} already landed")
    };
    report.millis = started.elapsed().as_millis() as u64;
    Ok(report)
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
fn toml_literal(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => literal(s),
        other => toml_text(other),
    }
}

/// A bound of a range rule as text.
fn toml_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        toml::Value::Array(_) | toml::Value::Table(_) => "?".into(),
    }
}

/// The SQL condition a rule requires, over the typed columns.
fn rule_predicate(rule: &RuleDef) -> (String, String) {
    if let Some(c) = &rule.not_null {
        return (
            format!("{} IS NOT NULL", ident(&c.column)),
            format!("concat({}, ' is null')", literal(&c.column)),
        );
    }
    if let Some(r) = &rule.range {
        let col = ident(&r.column);
        let mut conds = Vec::new();
        if let Some(min) = &r.min {
            conds.push(format!("{col} >= {}", toml_literal(min)));
        }
        if let Some(max) = &r.max {
            conds.push(format!("{col} <= {}", toml_literal(max)));
        }
        let bounds = format!(
            "[{}, {}]",
            r.min.as_ref().map(toml_text).unwrap_or_else(|| "-inf".into()),
            r.max.as_ref().map(toml_text).unwrap_or_else(|| "inf".into())
        );
        let cond = if conds.is_empty() { "TRUE".into() } else { conds.join(" AND ") };
        return (
            format!("({col} IS NULL OR ({cond}))"),
            format!(
                "concat({}, ' = ', CAST({col} AS VARCHAR), ' is outside ', {})",
                literal(&r.column),
                literal(&bounds)
            ),
        );
    }
    if let Some(e) = &rule.enum_ {
        let col = ident(&e.column);
        let values: Vec<String> = e.values.iter().map(|v| literal(v)).collect();
        return (
            format!("({col} IS NULL OR CAST({col} AS VARCHAR) IN ({}))", values.join(", ")),
            format!(
                "concat({}, ' = ', CAST({col} AS VARCHAR), ' is not one of ', {})",
                literal(&e.column),
                literal(&e.values.join(", "))
            ),
        );
    }
    if let Some(r) = &rule.regex {
        let col = ident(&r.column);
        return (
            format!(
                "({col} IS NULL OR regexp_like(CAST({col} AS VARCHAR), {}))",
                literal(&r.pattern)
            ),
            format!(
                "concat({}, ' = ', CAST({col} AS VARCHAR), ' does not match ', {})",
                literal(&r.column),
                literal(&r.pattern)
            ),
        );
    }
    let sql = rule.sql.clone().unwrap_or_else(|| "TRUE".into());
    (format!("COALESCE(({sql}), FALSE)"), literal(&format!("not true: {sql}")))
}

/// The SQL of the cleaned stage, over a table `raw`: casts, checks and ranks every row.
/// Columns: `_batch`, `_line`, `<col>__raw` (text as landed), typed `<col>`, `_rule`, `_reason`,
/// `_rn` (1 for the row a key keeps).
pub fn cleaning_sql(
    def: &CleanedDef,
    contract: &[ContractColumn],
    raw_columns: &BTreeSet<String>,
) -> String {
    let mut typed = vec!["_batch".to_string(), "_line".to_string()];
    for c in contract {
        let raw = if raw_columns.contains(&c.name) {
            format!("NULLIF(TRIM(CAST({} AS VARCHAR)), '')", ident(&c.name))
        } else {
            "CAST(NULL AS VARCHAR)".into()
        };
        typed.push(format!("{raw} AS {}", ident(&format!("{}__raw", c.name))));
        typed.push(format!("TRY_CAST({raw} AS {}) AS {}", c.sql_type, ident(&c.name)));
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
    let mut flags = Vec::new();
    for (i, rule) in def.rules.iter().enumerate() {
        let (ok, reason) = rule_predicate(rule);
        if rule.severity() == "QUARANTINE_RECORD" {
            checks.push((format!("NOT {ok}"), rule.name.clone(), reason));
        } else {
            flags.push(format!(", NOT {ok} AS _v{i}"));
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
    let hash_parts: Vec<String> = contract
        .iter()
        .map(|c| format!("COALESCE({}, '\\N')", ident(&format!("{}__raw", c.name))))
        .collect();
    let key: Vec<String> = def.key.iter().map(|k| ident(k)).collect();
    let order = match &def.latest_by {
        Some(l) => format!("{} DESC NULLS LAST, _hash DESC", ident(l)),
        None => "_hash DESC".into(),
    };
    format!(
        "WITH typed AS (SELECT {typed} FROM raw), \
         checked AS (SELECT *, CASE {rule_case} ELSE NULL END AS _rule, \
                            CASE {reason_case} ELSE NULL END AS _reason, \
                            encode(sha256(concat_ws(chr(31), {hash})), 'hex') AS _hash{flags} FROM typed) \
         SELECT *, ROW_NUMBER() OVER (PARTITION BY _rule IS NULL, {key} ORDER BY {order}) AS _rn FROM checked",
        typed = typed.join(", "),
        hash = hash_parts.join(", "),
        flags = flags.concat(),
        key = key.join(", "),
    )
}

fn date_literal(d: NaiveDate) -> String {
    format!("DATE '{}'", d.format("%Y-%m-%d"))
}

/// Partition keys of a day- or month-grain dataset for a window.
pub(crate) fn owned_keys(column: &str, grain: &str, window: Window) -> BTreeSet<String> {
    window
        .days()
        .map(|d| {
            if grain == "month" {
                format!("{column}={}", d.format("%Y-%m"))
            } else {
                format!("{column}={}", d.format("%Y-%m-%d"))
            }
        })
        .collect()
}

/// The partition column of a dataset: the business date, or `<date>_month` for month grain.
pub(crate) fn partition_column(business_date: &str, grain: &str) -> String {
    if grain == "month" {
        format!("{business_date}_month")
    } else {
        business_date.to_string()
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn clean(
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
    let table = RawTable::new(raw, url);
    let raw_columns: BTreeSet<String> = table.schema_fields();
    let df_ctx = scratch(session);
    df_ctx.register_table("raw", Arc::new(table))?;
    let sql = cleaning_sql(def, contract, &raw_columns);
    df_ctx.register_table("ranked", df_ctx.sql(&sql).await?.into_view())?;
    let bd = ident(&def.business_date);
    // The window: as asked (widened to whole months for month grain), or every date present.
    let requested = window;
    let window = match window {
        Some(w) if def.grain == "month" => Some(w.whole_months()),
        Some(w) => Some(w),
        None => {
            let batches = df_ctx
                .sql(&format!("SELECT min({bd}) AS lo, max({bd}) AS hi FROM ranked"))
                .await?
                .collect()
                .await?;
            let lo = batches.first().and_then(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Date32Array>()
                    .filter(|a| !a.is_null(0))
                    .map(|a| a.value_as_date(0))
            });
            let hi = batches.first().and_then(|b| {
                b.column(1)
                    .as_any()
                    .downcast_ref::<Date32Array>()
                    .filter(|a| !a.is_null(0))
                    .map(|a| a.value_as_date(0))
            });
            match (lo.flatten(), hi.flatten()) {
                (Some(from), Some(to)) => Some(Window { from, to }),
                _ => None,
            }
        }
    };
    // With no window asked for, the run covers every date it finds and replaces the dataset whole.
    let in_window = match window {
        Some(w) => format!(
            "({bd} BETWEEN {} AND {} OR {bd} IS NULL)",
            date_literal(w.from),
            date_literal(w.to)
        ),
        None => "TRUE".into(),
    };
    // The counts and the exact sums, computed once, checked against what is written.
    let accepted_cond = "_rule IS NULL AND _rn = 1";
    let mut select = vec![
        "count(*) AS input".to_string(),
        "count(_rule) AS quarantined".to_string(),
        "COALESCE(sum(CASE WHEN _rule IS NULL AND _rn > 1 THEN 1 ELSE 0 END), 0) AS duplicates"
            .to_string(),
        format!("COALESCE(sum(CASE WHEN {accepted_cond} THEN 1 ELSE 0 END), 0) AS accepted"),
    ];
    let flagged: Vec<(usize, &RuleDef)> =
        def.rules.iter().enumerate().filter(|(_, r)| r.severity() != "QUARANTINE_RECORD").collect();
    for (i, _) in &flagged {
        select.push(format!(
            "COALESCE(sum(CASE WHEN {accepted_cond} AND _v{i} THEN 1 ELSE 0 END), 0) AS v{i}"
        ));
    }
    let sum_cols = def.sum_columns(contract);
    for c in &sum_cols {
        for (part, cond) in [
            ("input", "TRUE"),
            ("accepted", accepted_cond),
            ("duplicates", "_rule IS NULL AND _rn > 1"),
            ("quarantined", "_rule IS NOT NULL"),
        ] {
            select.push(format!(
                "CAST(sum(CASE WHEN {cond} THEN {col} END) AS VARCHAR) AS {alias}",
                col = ident(c),
                alias = ident(&format!("{c}__{part}"))
            ));
        }
    }
    let counts = df_ctx
        .sql(&format!("SELECT {} FROM ranked WHERE {in_window}", select.join(", ")))
        .await?
        .collect()
        .await?;
    let Some(row) = counts.first() else {
        return Err(Error::Sql {
            message: format!("cleaned.{name}: the count query returned nothing"),
        });
    };
    let count = |i: usize| -> u64 {
        row.column(i).as_any().downcast_ref::<Int64Array>().map_or(0, |a| a.value(0) as u64)
    };
    let text = |i: usize| -> String {
        let c = row.column(i);
        if c.is_null(0) {
            "0".into()
        } else {
            datafusion::arrow::util::display::array_value_to_string(c, 0).unwrap_or_default()
        }
    };
    let (input, quarantined, duplicates, accepted) = (count(0), count(1), count(2), count(3));
    let mut findings = Vec::new();
    let mut fail_partition_flags = Vec::new();
    for (n, (i, rule)) in flagged.iter().enumerate() {
        let rows = count(4 + n);
        if rows == 0 {
            continue;
        }
        let sev = rule.severity();
        let finding = Finding {
            severity: sev.to_string(),
            source: format!("rule {}", rule.name),
            dataset: name.to_string(),
            rows,
            detail: format!("{rows} accepted row(s) fail rule {:?}", rule.name),
        };
        match sev {
            "FAIL_RUN" => {
                return Err(Error::Quality {
                    message: format!(
                        "cleaned.{name}: {rows} row(s) fail rule {:?}, whose severity is FAIL_RUN; \
                         nothing was published. Fix the input (or the rule), then run again; \
                         `strata query` over the raw batches shows the rows",
                        rule.name
                    ),
                })
            }
            "FAIL_PARTITION" => fail_partition_flags.push(format!("_v{i}")),
            _ => {}
        }
        findings.push(finding);
    }
    let mut sums = BTreeMap::new();
    let base = 4 + flagged.len();
    for (k, c) in sum_cols.iter().enumerate() {
        sums.insert(
            c.clone(),
            SumParts {
                input: text(base + 4 * k),
                accepted: text(base + 4 * k + 1),
                duplicates: text(base + 4 * k + 2),
                quarantined: text(base + 4 * k + 3),
            },
        );
    }
    // The partition of each row, as the writer names it.
    let part_value = if def.grain == "month" {
        format!("to_char({bd}, '%Y-%m')")
    } else {
        format!("CAST({bd} AS VARCHAR)")
    };
    let distinct_parts = |cond: String| {
        let sql = format!(
            "SELECT DISTINCT {part_value} AS p FROM ranked WHERE {accepted_cond} AND {in_window} \
             AND {cond} ORDER BY p"
        );
        let ctx = df_ctx.clone();
        async move {
            let batches = ctx.sql(&sql).await?.collect().await?;
            let mut out = Vec::new();
            for b in &batches {
                for r in 0..b.num_rows() {
                    if !b.column(0).is_null(r) {
                        out.push(
                            datafusion::arrow::util::display::array_value_to_string(b.column(0), r)
                                .unwrap_or_default(),
                        );
                    }
                }
            }
            Ok::<_, Error>(out)
        }
    };
    // FAIL_PARTITION: a partition with a failing row is not published at all.
    let failed_values = if fail_partition_flags.is_empty() {
        Vec::new()
    } else {
        distinct_parts(format!("({})", fail_partition_flags.join(" OR "))).await?
    };
    let not_failed = if failed_values.is_empty() {
        "TRUE".to_string()
    } else {
        format!(
            "{part_value} NOT IN ({})",
            failed_values.iter().map(|v| literal(v)).collect::<Vec<_>>().join(", ")
        )
    };
    let expected_values = distinct_parts(not_failed.clone()).await?;
    let part_col = partition_column(&def.business_date, &def.grain);
    let month_expr = |expr: &str| format!("to_char({expr}, '%Y-%m')");

    // Quarantine: every failing row in the window and every row without a readable date, with
    // its text as landed, the rule, the reason and its raw-batch origin.
    let q_date = if def.grain == "month" { month_expr(&bd) } else { bd.clone() };
    let raw_cols: Vec<String> = contract
        .iter()
        .map(|c| format!("{} AS {}", ident(&format!("{}__raw", c.name)), ident(&c.name)))
        .collect();
    let q_sql = format!(
        "SELECT {q_date} AS quarantine_date, _rule, _reason, _batch, _line, {cols} FROM ranked \
         WHERE _rule IS NOT NULL AND {in_window} ORDER BY _batch, _line",
        cols = raw_cols.join(", ")
    );
    let q_name = format!("{name}.quarantine");
    let mut q_owned =
        window.map(|w| owned_keys("quarantine_date", &def.grain, w)).unwrap_or_default();
    q_owned.insert(format!("quarantine_date={}", strata_publish::names::NULL_PARTITION));
    let q_stream = df_ctx.sql(&q_sql).await?.execute_stream().await?;
    let q_totals = Some(strata_reconcile::TotalsSpec::default());
    let (q_ds, q_staged) =
        stage_stream(lake, &q_name, q_stream, vec!["quarantine_date".into()], q_totals, ctx)
            .await?;

    // Accepted rows: the contract's typed columns, one row per key, in key order.
    let mut cols: Vec<String> = contract.iter().map(|c| ident(&c.name)).collect();
    if def.grain == "month" {
        cols.push(format!("{} AS {}", month_expr(&bd), ident(&part_col)));
    }
    let key_order: Vec<String> = def.key.iter().map(|k| ident(k)).collect();
    let out_window = match window {
        Some(w) => format!("{bd} BETWEEN {} AND {}", date_literal(w.from), date_literal(w.to)),
        None => "TRUE".into(),
    };
    let a_sql = format!(
        "SELECT {} FROM ranked WHERE _rule IS NULL AND _rn = 1 AND {out_window} AND {not_failed} \
         ORDER BY {}",
        cols.join(", "),
        key_order.join(", ")
    );
    // Rows withheld with their failed partitions.
    let withheld = if failed_values.is_empty() {
        0
    } else {
        let b = df_ctx
            .sql(&format!(
                "SELECT count(*) FROM ranked WHERE {accepted_cond} AND {in_window} AND NOT \
                 ({not_failed})"
            ))
            .await?
            .collect()
            .await?;
        b.first()
            .and_then(|b| b.column(0).as_any().downcast_ref::<Int64Array>().map(|a| a.value(0)))
            .unwrap_or(0) as u64
    };
    let failed_keys: BTreeSet<String> =
        failed_values.iter().map(|v| format!("{part_col}={v}")).collect();
    let mut owned = window
        .map(|w| owned_keys(&part_col, &def.grain, w).difference(&failed_keys).cloned().collect());
    let mut full = requested.is_none();
    if full && !failed_keys.is_empty() {
        // A full run normally replaces everything; with failed partitions it owns every other
        // partition instead, so the failed ones keep their published rows.
        let ds = lake.dataset(name)?;
        let mut keys: BTreeSet<String> = ds
            .current_opt()
            .await?
            .map(|r| r.partitions.iter().map(|p| p.key.clone()).collect())
            .unwrap_or_default();
        keys.extend(expected_values.iter().map(|v| format!("{part_col}={v}")));
        owned = Some(keys.difference(&failed_keys).cloned().collect());
        full = false;
    }
    let a_totals = Some(strata_reconcile::TotalsSpec {
        key: def.key.clone(),
        sums: sum_cols.clone(),
        time: Some(def.business_date.clone()),
    });
    let stream = df_ctx.sql(&a_sql).await?.execute_stream().await?;
    let (a_ds, a_staged) =
        match stage_stream(lake, name, stream, vec![part_col.clone()], a_totals, ctx).await {
            Ok(x) => x,
            Err(e) => {
                q_ds.discard(ctx.run_id(), None).await;
                return Err(e);
            }
        };
    // Reconcile before anything is published: what was staged must be exactly what was counted.
    let (written, q_written) = (a_staged.rows, q_staged.rows);
    if written + withheld != accepted
        || q_written != quarantined
        || input != accepted + quarantined + duplicates
    {
        q_ds.discard(ctx.run_id(), None).await;
        a_ds.discard(ctx.run_id(), None).await;
        return Err(Error::Sql {
            message: format!(
                "cleaned.{name}: counts do not reconcile (input {input}, accepted {accepted} but \
                 staged {written} + withheld {withheld}, quarantined {quarantined} but staged \
                 {q_written}, duplicates {duplicates}); nothing was published. Report this with \
                 the run id {}",
                ctx.run_id()
            ),
        });
    }
    let reason = Some(format!("run {}", ctx.run_id()));
    let report = StageReport {
        stage: "clean".into(),
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

/// Staged output of a stage, with how it is to be published.
#[derive(Debug, Clone)]
pub(crate) struct Output {
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
        ds.discard(ctx.run_id(), None).await;
        return Err(e);
    }
    match writer.finish().await {
        Ok(staged) => Ok((ds, staged)),
        Err(e) => {
            ds.discard(ctx.run_id(), None).await;
            Err(e.into())
        }
    }
}

/// Computes a model and stages its output. `inputs` are the records this run prepared for its
/// dependencies (not yet published); other dependencies are read at their current version.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn model(
    lake: &Lake,
    options: &RunOptions,
    pipeline: &Pipeline,
    name: &str,
    def: &ModelDef,
    deps: &BTreeSet<String>,
    window: Option<Window>,
    inputs: &BTreeMap<String, strata_publish::VersionRecord>,
    ctx: &RunContext,
) -> Result<(StageReport, Output)> {
    let started = Instant::now();
    let session = session(lake, options)?;
    let url = ObjectStoreUrl::parse(LAKE_URL)?;
    let window = match window {
        Some(w) if def.grain == "month" => Some(w.whole_months()),
        other => other,
    };
    let mut rows_in = 0;
    for dep in deps {
        let ds = lake.dataset(dep)?;
        let found = match inputs.get(dep) {
            Some(r) => Ok(r.clone()),
            None => ds.current().await,
        };
        let record = match found {
            Ok(r) => r,
            Err(strata_publish::Error::DatasetNotFound { .. }) => {
                return Err(Error::Sql {
                    message: format!(
                        "models.{name} reads {dep:?}, which has no published version yet; run \
                         the pipeline without --only, or run {dep} first"
                    ),
                })
            }
            Err(e) => return Err(e.into()),
        };
        rows_in += record.summary.rows;
        let bd_col = pipeline
            .cleaned
            .get(dep)
            .map(|c| c.business_date.clone())
            .or_else(|| pipeline.models.get(dep).map(|m| m.business_date.clone()));
        let table = Arc::new(VersionTable::new(record, url.clone()));
        let df = session.read_table(table)?;
        // Read only what the window needs: the window plus the model's look-back.
        let df = match (window, bd_col) {
            (Some(w), Some(col)) => {
                let lo = w.from - Duration::days(def.reads_days.into());
                df.filter(between_dates(datafusion::prelude::col(ident(&col)), lo, w.to))?
            }
            _ => df,
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
        expected_sums.insert(check.column.clone(), format!("{v} = sum({})", check.equals));
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
    let part_col = partition_column(&def.business_date, &def.grain);
    if def.grain == "month" {
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
    let owned = window.map(|w| owned_keys(&part_col, &def.grain, w));
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
        stage: "model".into(),
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
