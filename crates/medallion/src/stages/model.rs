//! A curated model: its SQL over its inputs' versions, within the run's window.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use chrono::{Duration, NaiveDate};
use datafusion::arrow::array::Array;
use datafusion::arrow::datatypes::DataType;
use datafusion::execution::object_store::ObjectStoreUrl;
use strata_publish::{Lake, PublishOptions, RunContext};

use crate::catalog::{may_hold_dates, VersionTable, LAKE_URL};
use crate::error::{Error, Result};
use crate::pipeline::{ModelDef, Pipeline};
use crate::types::{ExpectedSum, Grain, ReadMode, StageKind};

use super::*;

/// The business date of a model's input: a dated cleaned dataset's or a model's; none for a
/// reference (snapshot) dataset or a reference of the lake, which are read whole.
fn input_date(pipeline: &Pipeline, dep: &str) -> Option<String> {
    match pipeline.cleaned.get(dep) {
        Some(c) => c.business_date.clone(),
        None => pipeline.models.get(dep).and_then(|m| m.business_date.clone()),
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
        // References, and inputs the model reads whole, have no date to limit.
        let whole = def.reads.get(dep) == Some(&ReadMode::All);
        let bd_col = input_date(pipeline, dep).filter(|_| !whole);
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
        let filter = match (window, input_date(pipeline, dep)) {
            (Some(w), Some(bd_col)) => format!(
                " WHERE {} BETWEEN {} AND {}",
                ident(&bd_col),
                date_literal(w.from),
                date_literal(w.to)
            ),
            _ => String::new(),
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
    let columns =
        || schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ");
    for col in &def.partition_by {
        if schema.field_with_name(col).is_err() {
            return Err(Error::Sql {
                message: format!(
                    "models.{name}: the SQL's result has no column {col:?} (of its partition_by); \
                     columns: {}",
                    columns()
                ),
            });
        }
    }
    // A model without a business date is a full-refresh model: computed whole.
    let window = window.filter(|_| def.business_date.is_some());
    if let Some(bd_name) = &def.business_date {
        let Ok(field) = schema.field_with_name(bd_name) else {
            return Err(Error::Sql {
                message: format!(
                    "models.{name}: the SQL's result has no column {bd_name:?} (its \
                     business_date); columns: {}",
                    columns()
                ),
            });
        };
        if field.data_type() != &DataType::Date32 {
            return Err(Error::Sql {
                message: format!(
                    "models.{name}: column {bd_name:?} is {}, but a business date must be DATE; \
                     cast it in the SQL",
                    field.data_type()
                ),
            });
        }
        let bd = datafusion::prelude::col(ident(bd_name));
        if let Some(w) = window {
            df = df.filter(between_dates(bd.clone(), w.from, w.to))?;
        }
        if def.grain == Grain::Month {
            df = df.with_column(
                &partition_column(bd_name, def.grain),
                datafusion::functions::expr_fn::to_char(bd, datafusion::prelude::lit("%Y-%m")),
            )?;
        }
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
    let full = window.is_none();
    let mut sums = def.sums.clone();
    sums.extend(def.reconcile.iter().map(|c| c.column.clone()));
    sums.sort();
    sums.dedup();
    let totals = Some(strata_reconcile::TotalsSpec {
        key: def.key.clone(),
        sums,
        time: def.business_date.clone(),
    });
    let by = def.partition_columns();
    let (ds, staged) = stage_stream(lake, name, stream, by, totals, ctx).await?;
    let (owned, owned_dates) = match (window, def.partition_column()) {
        (Some(w), Some(part_col)) => {
            let dates = owned_keys(&part_col, def.grain, w);
            if def.partition_by.is_empty() {
                (Some(dates), None)
            } else {
                // Partitioned below the date: every partition of the window's dates.
                let staged_keys = staged.partitions.iter().map(|p| p.key.clone()).collect();
                let published = published_keys_of(&ds, &dates).await?;
                (Some(super::scope::expand_owned(&dates, &published, &staged_keys)), Some(dates))
            }
        }
        _ => (None, None),
    };
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
    let options = PublishOptions {
        replace_all: full,
        owned,
        reason: Some(format!("run {}", ctx.run_id())),
        ..Default::default()
    };
    Ok((report, Output { ds, staged, options, owned_dates }))
}
