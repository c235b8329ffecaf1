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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
#[derive(Debug, Clone, Default, Serialize)]
pub struct StageReport {
    /// `land`, `clean` or `model`.
    pub stage: &'static str,
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
    let mut report = StageReport { stage: "land", dataset: name.to_string(), ..Default::default() };
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
    for rule in &def.rules {
        let (ok, reason) = rule_predicate(rule);
        checks.push((format!("NOT {ok}"), rule.name.clone(), reason));
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
                            encode(sha256(concat_ws(chr(31), {hash})), 'hex') AS _hash FROM typed) \
         SELECT *, ROW_NUMBER() OVER (PARTITION BY _rule IS NULL, {key} ORDER BY {order}) AS _rn FROM checked",
        typed = typed.join(", "),
        hash = hash_parts.join(", "),
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
    let full = requested.is_none();
    let in_window = match window {
        Some(w) => format!(
            "({bd} BETWEEN {} AND {} OR {bd} IS NULL)",
            date_literal(w.from),
            date_literal(w.to)
        ),
        None => "TRUE".into(),
    };
    // The counts, computed once, checked against what is written.
    let counts = df_ctx
        .sql(&format!(
            "SELECT count(*) AS input, count(_rule) AS quarantined, \
                    COALESCE(sum(CASE WHEN _rule IS NULL AND _rn > 1 THEN 1 ELSE 0 END), 0) AS duplicates, \
                    COALESCE(sum(CASE WHEN _rule IS NULL AND _rn = 1 THEN 1 ELSE 0 END), 0) AS accepted \
             FROM ranked WHERE {in_window}"
        ))
        .await?
        .collect()
        .await?;
    let count = |i: usize| -> u64 {
        counts
            .first()
            .and_then(|b| {
                b.column(i).as_any().downcast_ref::<Int64Array>().map(|a| a.value(0) as u64)
            })
            .unwrap_or(0)
    };
    let (input, quarantined, duplicates, accepted) = (count(0), count(1), count(2), count(3));
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
    let (q_ds, q_staged) =
        stage_stream(lake, &q_name, q_stream, vec!["quarantine_date".into()], ctx).await?;

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
        "SELECT {} FROM ranked WHERE _rule IS NULL AND _rn = 1 AND {out_window} ORDER BY {}",
        cols.join(", "),
        key_order.join(", ")
    );
    let owned = window.map(|w| owned_keys(&part_col, &def.grain, w));
    let stream = df_ctx.sql(&a_sql).await?.execute_stream().await?;
    let (a_ds, a_staged) = match stage_stream(lake, name, stream, vec![part_col], ctx).await {
        Ok(x) => x,
        Err(e) => {
            q_ds.discard(ctx.run_id(), None).await;
            return Err(e);
        }
    };
    // Reconcile before anything is published: what was staged must be exactly what was counted.
    let (written, q_written) = (a_staged.rows, q_staged.rows);
    if written != accepted
        || q_written != quarantined
        || input != accepted + quarantined + duplicates
    {
        q_ds.discard(ctx.run_id(), None).await;
        a_ds.discard(ctx.run_id(), None).await;
        return Err(Error::Sql {
            message: format!(
                "cleaned.{name}: counts do not reconcile (input {input}, accepted {accepted} but \
                 staged {written}, quarantined {quarantined} but staged {q_written}, duplicates \
                 {duplicates}); nothing was published. Report this with the run id {}",
                ctx.run_id()
            ),
        });
    }
    let reason = Some(format!("run {}", ctx.run_id()));
    let report = StageReport {
        stage: "clean",
        dataset: name.to_string(),
        rows_in: input,
        rows_out: written,
        quarantined,
        duplicates,
        version: None,
        partitions: a_staged.partitions.len() as u64,
        window,
        millis: started.elapsed().as_millis() as u64,
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
    ctx: &RunContext,
) -> Result<(Dataset, Staged)> {
    let ds: Dataset = lake.dataset(dataset)?;
    let schema = stream.schema();
    let mut writer =
        ds.writer(ctx, schema, WriterOptions { partition_by, ..Default::default() })?;
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
    let (ds, staged) = stage_stream(lake, name, stream, vec![part_col], ctx).await?;
    let report = StageReport {
        stage: "model",
        dataset: name.to_string(),
        rows_in,
        rows_out: staged.rows,
        partitions: staged.partitions.len() as u64,
        window,
        millis: started.elapsed().as_millis() as u64,
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
