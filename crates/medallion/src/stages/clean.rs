//! The cleaned stage: cast every row to the contract, check it, deduplicate by key, and split
//! accepted rows from quarantined ones, each with a reason.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Date32Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use object_store::ObjectStoreExt;
use strata_land::BatchManifest;
use strata_publish::{Lake, PublishOptions, RunContext, WriterOptions};

use crate::catalog::{RawTable, LAKE_URL};
use crate::error::{Error, Result};
use crate::pipeline::{CleanedDef, Pipeline, RuleDef};
pub use crate::types::Finding;
use crate::types::{Grain, Severity, StageKind};

use super::*;

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
