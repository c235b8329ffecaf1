//! The stages of a pipeline run: land the sources, clean, curate. Every stage publishes through
//! the versioned writer, so each stage's output is atomic, versioned and copy-on-write per
//! partition.
//!
//! - [`land`]: landing a pipeline's sources and choosing the raw batches of a window;
//! - [`sql`]: the SQL of the cleaned stage (casts, contract, rules) and the partition keys;
//! - [`clean`]: the cleaned stage: cast, check, deduplicate, split accepted from quarantined
//!   (`clean_pass`: what its one pass over the rows counts);
//! - [`drift`]: each raw batch's columns against the contract (pure);
//! - [`scope`]: what a cleaned stage publishes: owned and withheld partitions, rule findings,
//!   whether its counts reconcile (pure);
//! - [`model`]: a curated model's SQL over its inputs;
//! - this module: what the stages share (the run's options, the session, stage reports, staged
//!   outputs).
//!
//! Time never comes from the clock here: the run window and the run context are parameters.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{Datelike, Duration, NaiveDate};
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;
use serde::Serialize;
use strata_publish::{Dataset, Lake, PublishOptions, RunContext, Staged, WriterOptions};

use crate::error::Result;
pub use crate::types::Finding;
use crate::types::{ExpectedSum, StageKind};

mod clean;
mod clean_pass;
pub mod drift;
mod land;
mod model;
pub mod scope;
mod sql;

pub use clean::clean;
use land::land_error;
pub use land::{batches_for_window, forget_input_identities, land_source};
pub use model::model;
pub(crate) use sql::ident;
pub use sql::{cleaning_sql, owned_keys, partition_column};
use sql::{date_literal, rank_order};

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
    /// Datasets the run may take over from another owner (`--adopt`).
    pub adopt: Vec<String>,
    /// References pinned `as_originally_run` read their latest version instead
    /// (`--refresh-references`).
    pub refresh_references: bool,
    /// How the run publishes (`--mode`).
    pub backfill: crate::types::Backfill,
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
    /// Reference datasets: lines of the batches read that landing could not parse (they count
    /// towards the quarantine rate).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rejected_at_landing: u64,
    /// Cleaned stages: quarantined rows by the rule that set them aside.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub quarantine_reasons: BTreeMap<String, u64>,
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

fn is_zero(n: &u64) -> bool {
    *n == 0
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

/// Staged output of a stage, with how it is to be published.
#[derive(Debug, Clone)]
pub struct Output {
    pub ds: Dataset,
    pub staged: Staged,
    pub options: PublishOptions,
    /// For a dataset partitioned below its date: the dates the stage owns, from which
    /// `options.owned` was expanded over the partitions published then (a reuse of the staged
    /// output expands them again over what is published by then).
    pub owned_dates: Option<BTreeSet<String>>,
}

/// The published partitions of `ds` whose date segment is one of `dates`.
pub async fn published_keys_of(
    ds: &strata_publish::Dataset,
    dates: &BTreeSet<String>,
) -> Result<BTreeSet<String>> {
    let Some(draft) = ds.draft_of_current().await? else { return Ok(BTreeSet::new()) };
    let keep = |key: &str| dates.contains(scope::date_segment(key));
    let record = ds.select(&draft, &keep).await?;
    Ok(record.partitions.iter().map(|p| p.key.clone()).collect())
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
    use datafusion::arrow;
    use datafusion::arrow::array::RecordBatch;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

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
