//! One pass over a cleaned stage's ranked rows: the accepted, quarantined and duplicate masks
//! of each batch, and what the pass counts (rows, sums, days, rule failures) on the way.

use datafusion::arrow;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Date32Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use std::sync::Arc;

use crate::error::{Error, Result};

use super::date_of_days;

/// `YYYY-MM` of each date (null where the date is null), formatting each distinct day once.
pub(super) fn month_strings(
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
pub(super) struct CleanPass {
    pub(super) input: u64,
    pub(super) quarantined: u64,
    pub(super) duplicates: u64,
    pub(super) accepted: u64,
    /// Per non-quarantining rule: accepted rows that fail it.
    pub(super) flag_rows: Vec<u64>,
    /// Per sum column: (units, scale) of input, accepted, duplicates, quarantined.
    pub(super) sums: Vec<[(i128, i8); 4]>,
    pub(super) accepted_days: std::collections::HashSet<i32>,
    pub(super) failed_days: std::collections::HashSet<i32>,
    pub(super) min_day: Option<i32>,
    pub(super) max_day: Option<i32>,
    pub(super) keys: Option<KeyRanker>,
    /// Quarantined rows by rule.
    pub(super) reasons: std::collections::BTreeMap<String, u64>,
}

/// Finds the first row of each key in rows sorted by key, across batches.
pub(super) struct KeyRanker {
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
    pub(super) fn new(schema: &SchemaRef, key_idx: &[usize]) -> Result<Self> {
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
    /// Counts the quarantined rows of `b` (`quar`) by their rule.
    pub(super) fn count_reasons(
        &mut self,
        b: &RecordBatch,
        rule_i: usize,
        quar: &BooleanArray,
    ) -> Result<()> {
        if quar.true_count() == 0 {
            return Ok(());
        }
        let rules = arrow::compute::cast(
            &arrow::compute::filter(b.column(rule_i), quar)?,
            &DataType::Utf8,
        )?;
        for rule in rules.as_string::<i32>().iter().flatten() {
            match self.reasons.get_mut(rule) {
                Some(n) => *n += 1,
                None => {
                    self.reasons.insert(rule.to_string(), 1);
                }
            }
        }
        Ok(())
    }

    /// (accepted, quarantined, duplicates) masks of a batch of rows sorted by `_rule IS NULL`,
    /// key and rank order: a row is accepted when it passed every check and is the first of its
    /// key.
    pub(super) fn masks(
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
    pub(super) fn add(
        &mut self,
        b: &RecordBatch,
        (acc, quar, dup): (&BooleanArray, &BooleanArray, &BooleanArray),
        bd_i: Option<usize>,
        flag_cols: &[usize],
        fail_partition: &[bool],
        sum_idx: &[usize],
        sum_cols: &[String],
    ) -> Result<()> {
        self.input += b.num_rows() as u64;
        self.quarantined += quar.true_count() as u64;
        self.accepted += acc.true_count() as u64;
        self.duplicates += dup.true_count() as u64;
        let days = bd_i.and_then(|i| b.column(i).as_any().downcast_ref::<Date32Array>());
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
