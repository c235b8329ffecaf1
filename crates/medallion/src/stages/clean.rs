//! The cleaned stage: cast every row to the contract, check it, deduplicate by key, and split
//! accepted rows from quarantined ones, each with a reason.
//!
//! [`clean`] reads in three steps: [`CleanQuery::open`] plans the one query (casts, checks,
//! ranking) and where each column lands; [`split_rows`] streams its rows to the two writers,
//! counting on the way ([`CleanPass`]); then the decisions of [`super::scope`] say what is
//! published, and the report records it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow;
use datafusion::arrow::array::{ArrayRef, BooleanArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use strata_land::BatchManifest;
use strata_publish::{Dataset, Lake, PublishOptions, RunContext, Staged, WriterOptions};

use crate::catalog::{RawTable, LAKE_URL};
use crate::derive::DerivePlan;
use crate::error::{Error, Result};
use crate::pipeline::{CleanedDef, ContractColumn, Pipeline};
use crate::types::{Grain, Severity, StageKind};

use super::clean_pass::{month_strings, CleanPass, KeyRanker};
use super::drift;
use super::scope::{self, Counts, Flagged, ScopeFacts};
use super::*;

/// Runs the cleaned stage `name` over the raw batches `raw`, for `window` (`None`: every date
/// found). Returns its report and its two staged outputs (accepted rows, quarantine); nothing
/// is published here. On an error nothing the stage staged is left behind.
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
    // Every raw data file read is first checked against the size and sha256 its manifest
    // records: a damaged file fails the run, naming the batch, instead of being published.
    strata_land::verify_batches(lake, raw).await.map_err(land_error)?;
    // Schema drift: a batch missing a required column fails before anything is staged.
    let drifted = drift_findings(pipeline, name, def, raw)?;
    let (a_ds, q_ds) = (lake.dataset(name)?, lake.dataset(&format!("{name}.quarantine"))?);
    let derived = planned_derived(pipeline, name)?;
    let stage = Stage { name, def, contract, derived: &derived, requested: window, ctx };
    let result = stage.run(session, raw, &a_ds, &q_ds, started).await;
    if result.is_err() {
        a_ds.discard(ctx.run_id(), 0).await;
        q_ds.discard(ctx.run_id(), 0).await;
    }
    let (mut report, a_scope, a_staged, q_scope, q_staged, owned_dates) = result?;
    report.findings.splice(0..0, drifted);
    // A reference dataset reads its batches whole: every line a batch could not land is a line
    // of the table lost, and counts as quarantined.
    if def.business_date.is_none() {
        report.rejected_at_landing = raw.iter().map(|b| b.rejected).sum();
    }
    let reason = Some(format!("run {}", ctx.run_id()));
    let output = |ds, staged, s: scope::Scope, owned_dates| Output {
        ds,
        staged,
        options: PublishOptions {
            replace_all: s.replace_all,
            owned: s.owned,
            reason: reason.clone(),
            ..Default::default()
        },
        owned_dates,
    };
    let outputs =
        vec![output(a_ds, a_staged, a_scope, owned_dates), output(q_ds, q_staged, q_scope, None)];
    Ok((report, outputs))
}

/// The derived columns of cleaned dataset `name`, planned over its contract's types.
fn planned_derived(pipeline: &Pipeline, name: &str) -> Result<Vec<DerivePlan>> {
    let derived = pipeline.derived.get(name).map(Vec::as_slice).unwrap_or_default();
    if derived.is_empty() {
        return Ok(Vec::new());
    }
    let problem = |p: crate::derive::ColumnProblem| Error::Sql {
        message: format!("cleaned.{name}.derive.{}: {}", p.column, p.message),
    };
    let schema = crate::derive::contract_schema(&pipeline.contracts[name]).map_err(problem)?;
    crate::derive::plan(&schema, derived).map_err(problem)
}

/// The schema-drift findings of the raw batches a cleaned stage reads ([`super::drift`]).
fn drift_findings(
    pipeline: &Pipeline,
    name: &str,
    def: &CleanedDef,
    raw: &[BatchManifest],
) -> Result<Vec<crate::types::Finding>> {
    let contract = &pipeline.contracts[name];
    let mut required: BTreeSet<&str> =
        contract.iter().filter(|c| !c.nullable).map(|c| c.name.as_str()).collect();
    // The key and the business date are required of the files unless they are derived.
    let in_contract = |n: &&str| contract.iter().any(|c| c.name == *n);
    required.extend(def.key.iter().map(String::as_str).filter(in_contract));
    required.extend(def.business_date.as_deref().filter(in_contract));
    let batches: Vec<drift::BatchColumns> = raw
        .iter()
        .map(|b| drift::BatchColumns {
            file: &b.input.name,
            batch: &b.batch_id,
            rows: b.rows,
            columns: b.schema.fields().iter().map(|f| f.name().as_str()).collect(),
        })
        .collect();
    let source = pipeline.sources.get(&def.source);
    let default = drift::DriftPolicy::default();
    let policy = drift::DriftPolicy {
        on_missing_column: source
            .and_then(|s| s.on_missing_column)
            .unwrap_or(default.on_missing_column),
        on_extra_column: source.and_then(|s| s.on_extra_column).unwrap_or(default.on_extra_column),
    };
    drift::drift(name, contract, &required, &batches, policy).map_err(|m| Error::MissingColumns {
        dataset: name.to_string(),
        file: m.file,
        batch: m.batch,
        columns: m.columns,
    })
}

/// One cleaned stage of one run.
struct Stage<'a> {
    name: &'a str,
    def: &'a CleanedDef,
    contract: &'a [ContractColumn],
    derived: &'a [DerivePlan],
    /// The window asked for (`None`: every date found).
    requested: Option<Window>,
    ctx: &'a RunContext,
}

type Decided = (StageReport, scope::Scope, Staged, scope::Scope, Staged, Option<BTreeSet<String>>);

impl Stage<'_> {
    async fn run(
        &self,
        session: &SessionContext,
        raw: &[BatchManifest],
        a_ds: &Dataset,
        q_ds: &Dataset,
        started: Instant,
    ) -> Result<Decided> {
        let (name, def) = (self.name, self.def);
        let month = def.grain == Grain::Month;
        // Month grain covers whole months.
        let window = self.requested.map(|w| if month { w.whole_months() } else { w });
        let query =
            CleanQuery::open(session, name, def, self.contract, self.derived, raw, window).await?;
        let part_col = query.part_col.clone();
        let flagged: Vec<(&str, Severity)> = def
            .rules
            .iter()
            .filter(|r| r.severity != Severity::QuarantineRecord)
            .map(|r| (r.name.as_str(), r.severity))
            .collect();
        let (mut a_staged, q_staged, pass) = split_rows(query, a_ds, q_ds, def, self.ctx).await?;
        let flags: Vec<Flagged> = flagged
            .iter()
            .zip(&pass.flag_rows)
            .map(|(&(rule, severity), &rows)| Flagged { rule, severity, rows })
            .collect();
        let findings =
            scope::rule_findings(name, &flags).map_err(|(rule, rows)| Error::Quality {
                message: format!(
                "cleaned.{name}: {rows} row(s) fail rule {rule:?}, whose severity is FAIL_RUN; \
                 nothing was published. Fix the input (or the rule), then run again; `strata \
                 query` over the raw batches shows the rows"
            ),
            })?;
        // A full run's window is the dates it found.
        let window = window.or_else(|| match (pass.min_day, pass.max_day) {
            (Some(lo), Some(hi)) => Some(Window { from: date_of_days(lo), to: date_of_days(hi) }),
            _ => None,
        });
        let staged_keys: BTreeSet<String> =
            a_staged.partitions.iter().map(|p| p.key.clone()).collect();
        let part_col = part_col.as_deref().unwrap_or_default();
        let (decided, failed, owned_dates) =
            self.decide(a_ds, &pass, window, part_col, &staged_keys).await?;
        // FAIL_PARTITION: a withheld partition is not published at all; its staged files go.
        let withheld = withhold(a_ds, &mut a_staged, &failed, self.ctx).await?;
        // Reconcile before anything is published: what was staged must be what was counted.
        let counts = Counts {
            input: pass.input,
            accepted: pass.accepted,
            quarantined: pass.quarantined,
            duplicates: pass.duplicates,
            written: a_staged.rows,
            withheld,
            quarantine_written: q_staged.rows,
        };
        if let Some(mismatch) = scope::counts_mismatch(counts) {
            return Err(Error::Reconciliation {
                message: format!(
                    "cleaned.{name}: counts do not reconcile ({mismatch}); nothing was \
                     published. Report this with the run id {}",
                    self.ctx.run_id()
                ),
            });
        }
        let report = StageReport {
            stage: StageKind::Clean,
            dataset: name.to_string(),
            rows_in: counts.input,
            rows_out: counts.written,
            quarantined: counts.quarantined,
            duplicates: counts.duplicates,
            version: None,
            partitions: a_staged.partitions.len() as u64,
            window,
            millis: started.elapsed().as_millis() as u64,
            withheld,
            failed_partitions: failed.into_iter().collect(),
            findings,
            sums: self.sums(&pass),
            quarantine_reasons: pass.reasons.clone(),
            expected_partitions: Some(decided.expected.iter().cloned().collect()),
            ..Default::default()
        };
        Ok((report, decided.accepted, a_staged, decided.quarantine, q_staged, owned_dates))
    }

    /// What the stage publishes ([`scope::cleaned_scope`]), the partitions withheld, and for a
    /// dataset partitioned below its date the dates it owns.
    async fn decide(
        &self,
        a_ds: &Dataset,
        pass: &CleanPass,
        window: Option<Window>,
        part_col: &str,
        staged: &BTreeSet<String>,
    ) -> Result<(scope::CleanedScope, BTreeSet<String>, Option<BTreeSet<String>>)> {
        let month = self.def.grain == Grain::Month;
        let key_of = |day: &i32| {
            let d = date_of_days(*day);
            let value = if month { d.format("%Y-%m") } else { d.format("%Y-%m-%d") };
            format!("{part_col}={value}")
        };
        let failed: BTreeSet<String> = pass.failed_days.iter().map(key_of).collect();
        let accepted: BTreeSet<String> = pass.accepted_days.iter().map(key_of).collect();
        let published: BTreeSet<String> = if scope::needs_published(self.requested, &failed) {
            let current = a_ds.current_opt().await?;
            let keys = current.map(|r| r.partitions.into_iter().map(|p| p.key));
            keys.into_iter().flatten().map(|k| scope::date_segment(&k).to_string()).collect()
        } else {
            BTreeSet::new()
        };
        let decided = scope::cleaned_scope(ScopeFacts {
            part_col,
            grain: self.def.grain,
            requested: self.requested,
            window,
            accepted: &accepted,
            failed: &failed,
            published: &published,
        });
        // Partitioned below the date: the run owns every partition of the dates it owns.
        let mut decided = decided;
        let mut owned_dates = None;
        if let (false, Some(dates)) = (self.def.partition_by.is_empty(), &decided.accepted.owned) {
            let published = published_keys_of(a_ds, dates).await?;
            owned_dates = Some(dates.clone());
            decided.accepted.owned = Some(scope::expand_owned(dates, &published, staged));
        }
        Ok((decided, failed, owned_dates))
    }

    /// The exact control totals of each sum column: input, accepted, duplicates, quarantined.
    fn sums(&self, pass: &CleanPass) -> BTreeMap<String, SumParts> {
        let text = |(v, s): (i128, i8)| strata_reconcile::decimal_text(v, s);
        let sum_cols = self.def.sum_columns(self.contract);
        sum_cols
            .into_iter()
            .zip(&pass.sums)
            .map(|(c, parts)| {
                let parts = SumParts {
                    input: text(parts[0]),
                    accepted: text(parts[1]),
                    duplicates: text(parts[2]),
                    quarantined: text(parts[3]),
                };
                (c, parts)
            })
            .collect()
    }
}

/// Takes the withheld partitions out of the staged output and deletes their files; returns the
/// rows they held.
async fn withhold(
    a_ds: &Dataset,
    staged: &mut Staged,
    failed: &BTreeSet<String>,
    ctx: &RunContext,
) -> Result<u64> {
    let (dropped, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut staged.partitions)
        .into_iter()
        .partition(|p| failed.contains(scope::date_segment(&p.key)));
    let withheld: u64 = dropped.iter().map(|p| p.rows).sum();
    let files: Vec<String> =
        dropped.iter().flat_map(|p| p.files.iter().map(|f| f.path.clone())).collect();
    if !files.is_empty() {
        a_ds.discard_staged(ctx.run_id(), &files).await?;
    }
    staged.partitions = kept;
    staged.rows -= withheld;
    Ok(withheld)
}

/// The cleaning query of a stage, ready to stream, and where each of its columns goes.
struct CleanQuery {
    /// Kept alive while the stream runs.
    _ctx: SessionContext,
    stream: SendableRecordBatchStream,
    /// The stream's schema, plus the month column for month grain.
    schema: SchemaRef,
    /// The month column added to each batch (month grain).
    month: Option<String>,
    /// The accepted rows' partition column; none for a reference dataset.
    part_col: Option<String>,
    rule_i: usize,
    bd_i: Option<usize>,
    landed_i: usize,
    key_idx: Vec<usize>,
    /// Quarantine columns (index, name); the landed text is appended, unpacked.
    q_cols: Vec<(usize, String)>,
    q_base: SchemaRef,
    q_schema: SchemaRef,
    /// Accepted columns (index, name).
    a_cols: Vec<(usize, String)>,
    a_schema: SchemaRef,
    /// Per rule that does not quarantine: its flag column, and whether it is FAIL_PARTITION.
    flag_cols: Vec<usize>,
    fail_partition: Vec<bool>,
    sum_cols: Vec<String>,
    sum_idx: Vec<usize>,
    contract_len: usize,
}

impl CleanQuery {
    /// Plans the one pass: the cleaning SQL over the raw batches, the window's rows, sorted so
    /// that the files are byte-identical from run to run (quarantined rows first, then by key
    /// and rank order, so the ranking's sort serves it and the rows are sorted once).
    async fn open(
        session: &SessionContext,
        name: &str,
        def: &CleanedDef,
        contract: &[ContractColumn],
        derived: &[DerivePlan],
        raw: &[BatchManifest],
        window: Option<Window>,
    ) -> Result<Self> {
        let url = ObjectStoreUrl::parse(LAKE_URL)?;
        let reads: BTreeSet<String> = contract.iter().map(|c| c.name.clone()).collect();
        let table = RawTable::new(raw, url, &reads)?;
        let raw_columns: BTreeSet<String> = table.schema_fields();
        let df_ctx = scratch(session);
        df_ctx.register_table("raw", Arc::new(table))?;
        crate::udf::register(
            &df_ctx,
            contract.iter().filter_map(|c| crate::udf::decimal_of(&c.sql_type)),
        );
        for (i, d) in derived.iter().enumerate() {
            df_ctx.register_udf(datafusion::logical_expr::ScalarUDF::from(
                crate::derive::DeriveUdf::new(i, d),
            ));
        }
        let sql = cleaning_sql(def, contract, derived, &raw_columns);
        df_ctx.register_table("checked", df_ctx.sql(&sql).await?.into_view())?;
        let in_window = match (window, &def.business_date) {
            (Some(w), Some(bd)) => format!(
                "({bd} BETWEEN {} AND {} OR {bd} IS NULL)",
                date_literal(w.from),
                date_literal(w.to),
                bd = ident(bd)
            ),
            _ => "TRUE".into(),
        };
        let key_order: Vec<String> = def.key.iter().map(|k| ident(k)).collect();
        let one_pass = format!(
            "SELECT * FROM checked WHERE {in_window} ORDER BY _rule IS NULL, {}, {}",
            key_order.join(", "),
            rank_order(def)
        );
        let stream = df_ctx.sql(&one_pass).await?.execute_stream().await?;
        let part_col = def.partition_column();
        // Month grain: the month of each row (its partition, and its quarantine date) is added
        // to each batch as it streams by.
        let month = match (&part_col, def.grain) {
            (Some(col), Grain::Month) => Some(col.clone()),
            _ => None,
        };
        let schema = if let Some(month) = &month {
            let mut fields = stream.schema().fields().to_vec();
            fields.push(Arc::new(Field::new(month, DataType::Utf8, true)));
            Arc::new(Schema::new(fields))
        } else {
            stream.schema()
        };
        let idx = |n: &str| {
            schema.index_of(n).map_err(|_| Error::Internal {
                message: format!(
                    "cleaned.{name}: internal column {n:?} missing from the cleaning query"
                ),
            })
        };
        let rule_i = idx("_rule")?;
        let bd_i = def.business_date.as_deref().map(idx).transpose()?;
        // A reference dataset's quarantine has no date to be partitioned by.
        let q_date = match (&month, bd_i) {
            (Some(m), _) => Some(idx(m)?),
            (None, bd_i) => bd_i,
        };
        let mut q_cols: Vec<(usize, String)> =
            q_date.map(|i| (i, "quarantine_date".to_string())).into_iter().collect();
        q_cols.extend([
            (rule_i, "_rule".into()),
            (idx("_reason")?, "_reason".into()),
            (idx("_batch")?, "_batch".into()),
            (idx("_line")?, "_line".into()),
        ]);
        let names = contract.iter().map(|c| &c.name).chain(derived.iter().map(|d| &d.name));
        let mut a_cols: Vec<(usize, String)> =
            names.map(|n| Ok((idx(n)?, n.clone()))).collect::<Result<_>>()?;
        if let Some(m) = &month {
            a_cols.push((idx(m)?, m.clone()));
        }
        // Text of the quarantine's own columns is always Utf8: `_reason` is built from the
        // landed text, whose type depends on which batches a run reads.
        let q_base = project(&schema, &q_cols, true);
        // The quarantine keeps the landed text of each contract column, as string views.
        let mut q_fields = q_base.fields().to_vec();
        q_fields.extend(
            contract.iter().map(|c| Arc::new(Field::new(&c.name, DataType::Utf8View, true))),
        );
        let flagged: Vec<(usize, Severity)> = def
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.severity != Severity::QuarantineRecord)
            .map(|(i, r)| (i, r.severity))
            .collect();
        let sum_cols = def.sum_columns(contract);
        Ok(CleanQuery {
            landed_i: idx("_landed")?,
            key_idx: def.key.iter().map(|k| idx(k)).collect::<Result<_>>()?,
            flag_cols: flagged
                .iter()
                .map(|(i, _)| idx(&format!("_v{i}")))
                .collect::<Result<_>>()?,
            fail_partition: flagged.iter().map(|(_, s)| *s == Severity::FailPartition).collect(),
            sum_idx: sum_cols.iter().map(|c| idx(c)).collect::<Result<_>>()?,
            sum_cols,
            a_schema: project(&schema, &a_cols, false),
            q_schema: Arc::new(Schema::new(q_fields)),
            q_base,
            a_cols,
            q_cols,
            rule_i,
            bd_i,
            month,
            part_col,
            schema,
            stream,
            _ctx: df_ctx,
            contract_len: contract.len(),
        })
    }
}

/// The schema of columns `cols` of `schema`, renamed; dictionary columns (the batch id) are
/// written as plain text, and with `text_as_utf8` every text column as Utf8.
fn project(schema: &SchemaRef, cols: &[(usize, String)], text_as_utf8: bool) -> SchemaRef {
    let plain = |t: &DataType| match t {
        DataType::Dictionary(_, v) => v.as_ref().clone(),
        DataType::Utf8View | DataType::LargeUtf8 if text_as_utf8 => DataType::Utf8,
        other => other.clone(),
    };
    Arc::new(Schema::new(
        cols.iter()
            .map(|(i, n)| {
                let f = schema.field(*i);
                f.as_ref().clone().with_name(n).with_data_type(plain(f.data_type()))
            })
            .collect::<Vec<_>>(),
    ))
}

/// Streams the query's rows to the accepted and quarantine writers, counting them on the way,
/// and returns what each writer staged. The writers (control totals, Parquet encoding) run in
/// their own task, so that they use the second core while this one ranks and splits the rows.
async fn split_rows(
    mut q: CleanQuery,
    a_ds: &Dataset,
    q_ds: &Dataset,
    def: &CleanedDef,
    ctx: &RunContext,
) -> Result<(Staged, Staged, CleanPass)> {
    let a_totals = strata_reconcile::TotalsSpec {
        key: def.key.clone(),
        sums: q.sum_cols.clone(),
        time: def.business_date.clone(),
    };
    let a_options = WriterOptions {
        partition_by: def.partition_columns(),
        totals: Some(a_totals),
        // Accepted rows leave the one pass sorted by key: uniqueness is proved in constant
        // memory.
        keys_in_order: true,
        ..Default::default()
    };
    let mut a_writer = a_ds.writer(ctx, q.a_schema.clone(), a_options)?;
    let q_options = WriterOptions {
        partition_by: q.part_col.iter().map(|_| "quarantine_date".to_string()).collect(),
        totals: Some(strata_reconcile::TotalsSpec::default()),
        ..Default::default()
    };
    let mut q_writer = q_ds.writer(ctx, q.q_schema.clone(), q_options)?;
    let mut pass = CleanPass {
        sums: vec![[(0i128, 0i8); 4]; q.sum_cols.len()],
        flag_rows: vec![0; q.flag_cols.len()],
        keys: Some(KeyRanker::new(&q.schema, &q.key_idx)?),
        ..Default::default()
    };
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
    let mut months = std::collections::HashMap::new();
    let read: Result<()> = async {
        let (mut pending, mut pending_rows) = (Vec::new(), 0usize);
        while let Some(batch) = q.stream.next().await {
            let mut batch = batch?;
            if let (Some(_), Some(bd_i)) = (&q.month, q.bd_i) {
                let mut cols = batch.columns().to_vec();
                cols.push(month_strings(batch.column(bd_i), &mut months)?);
                batch = RecordBatch::try_new(q.schema.clone(), cols)?;
            }
            let (acc, quar, dup) = pass.masks(&batch, q.rule_i)?;
            pass.count_reasons(&batch, q.rule_i, &quar)?;
            pass.add(
                &batch,
                (&acc, &quar, &dup),
                q.bd_i,
                &q.flag_cols,
                &q.fail_partition,
                &q.sum_idx,
                &q.sum_cols,
            )?;
            let quarantined = (quar.true_count() > 0)
                .then(|| {
                    let base = take(&batch, &q.q_cols, &q.q_base, &quar)?;
                    let landed = arrow::compute::filter(batch.column(q.landed_i), &quar)?;
                    let mut columns = base.columns().to_vec();
                    columns.extend(crate::udf::unpack(&landed, q.contract_len)?);
                    Ok::<_, Error>(RecordBatch::try_new(q.q_schema.clone(), columns)?)
                })
                .transpose()?;
            if acc.true_count() > 0 {
                let a = take(&batch, &q.a_cols, &q.a_schema, &acc)?;
                pending_rows += a.num_rows();
                pending.push(a);
            }
            // Accepted rows go to the writers in batches of 64k: each batch is split by
            // partition there, and bigger batches mean fewer, bigger writes per partition.
            let accepted = if pending_rows >= 65536 {
                pending_rows = 0;
                Some(arrow::compute::concat_batches(&q.a_schema, &std::mem::take(&mut pending))?)
            } else {
                None
            };
            let any = quarantined.is_some() || accepted.is_some();
            if any && tx.send((quarantined, accepted)).await.is_err() {
                // The writers stopped on an error; it is reported below.
                break;
            }
        }
        if !pending.is_empty() {
            let a = arrow::compute::concat_batches(&q.a_schema, &pending)?;
            let _ = tx.send((None, Some(a))).await;
        }
        Ok(())
    }
    .await;
    drop(tx);
    let (written, a_writer, q_writer) = writing.await.map_err(|e| Error::Internal {
        message: format!("cleaned stage: the writer task failed: {e}"),
    })?;
    written.and(read)?;
    // Both finished even if one fails, so that no upload is left open.
    let (a_staged, q_staged) = (a_writer.finish().await, q_writer.finish().await);
    Ok((a_staged?, q_staged?, pass))
}

/// The rows of `batch` selected by `mask`, as columns `cols` cast to `schema`.
fn take(
    batch: &RecordBatch,
    cols: &[(usize, String)],
    schema: &SchemaRef,
    mask: &BooleanArray,
) -> Result<RecordBatch> {
    let filter = arrow::compute::FilterBuilder::new(mask).optimize().build();
    let picked: Vec<ArrayRef> = cols
        .iter()
        .zip(schema.fields())
        .map(|((i, _), f)| {
            let c = filter.filter(batch.column(*i))?;
            if c.data_type() == f.data_type() {
                Ok(c)
            } else {
                arrow::compute::cast(&c, f.data_type())
            }
        })
        .collect::<std::result::Result<_, _>>()?;
    Ok(RecordBatch::try_new(schema.clone(), picked)?)
}
