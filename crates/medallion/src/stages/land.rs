//! Landing a pipeline's sources, and the raw batches a window reads.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::prelude::SessionContext;
use strata_land::BatchManifest;
use strata_publish::{Lake, RunContext};

use crate::catalog::{RawTable, LAKE_URL};
use crate::error::{Error, Result};
use crate::pipeline::{CleanedDef, Pipeline};
use crate::types::{Delivery, StageKind};

use super::*;

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
    // A snapshot file under a new name whose content is an earlier batch's.
    let mut redelivered: Vec<(String, BatchManifest)> = Vec::new();
    for (input, identity) in inputs {
        let file = input.path.filename().unwrap_or(input.display.as_str()).to_string();
        let outcome = strata_land::land_indexed(lake, &mut index, &input, identity, &options, ctx)
            .await
            .map_err(land_error)?;
        if let strata_land::Indexed::Read(read) = &outcome {
            if let strata_land::LandOutcome::AlreadyLanded(m) = read.as_ref() {
                if source.delivery == Delivery::Snapshot && m.input.name != file {
                    redelivered.push((file, m.clone()));
                }
            }
        }
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
    if !redelivered.is_empty() {
        snapshot_is_latest(lake, name, &mut index, &redelivered).await?;
    }
    report.note = if new + old == 0 {
        format!("no file matches {}; using the batches already landed", source.path)
    } else {
        format!("{new} new batch(es), {old} already landed")
    };
    report.millis = started.elapsed().as_millis() as u64;
    Ok((report, index))
}

/// A snapshot source reads its latest landed batch. A file delivered now whose content equals an
/// earlier batch (the table went back to an earlier export) lands as that batch, which is not
/// the latest: reading the latest would silently ignore the file. Refused, saying how to choose.
async fn snapshot_is_latest(
    lake: &Lake,
    source: &str,
    index: &mut strata_land::SourceIndex,
    redelivered: &[(String, BatchManifest)],
) -> Result<()> {
    let retired = strata_land::retire::retired(lake, source).await.map_err(land_error)?;
    let live: Vec<BatchManifest> = all_batches(lake, index)
        .await?
        .into_iter()
        .filter(|b| !retired.contains_key(&b.batch_id))
        .collect();
    let Some(latest) = latest_batch(live).pop() else { return Ok(()) };
    match redelivered.iter().find(|(_, m)| m.batch_id != latest.batch_id) {
        Some((file, m)) => Err(Error::SnapshotReverted(Box::new(crate::error::SnapshotReverted {
            raw_source: source.to_string(),
            file: file.clone(),
            batch: m.batch_id.clone(),
            landed_from: m.input.name.clone(),
            latest: latest.batch_id.clone(),
            latest_from: latest.input.name.clone(),
        }))),
        None => Ok(()),
    }
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
///
/// A batch retired with `strata retire` is never read; of a snapshot source, the latest batch
/// not retired is read.
pub async fn batches_for_window(
    session: &SessionContext,
    lake: &Lake,
    pipeline: &Pipeline,
    name: &str,
    def: &CleanedDef,
    index: &mut strata_land::SourceIndex,
    window: Option<Window>,
) -> Result<Vec<BatchManifest>> {
    let retired = strata_land::retire::retired(lake, &def.source).await.map_err(land_error)?;
    let live = |batches: Vec<BatchManifest>| -> Vec<BatchManifest> {
        batches.into_iter().filter(|b| !retired.contains_key(&b.batch_id)).collect()
    };
    if pipeline.sources.get(&def.source).map(|s| s.delivery) == Some(Delivery::Snapshot) {
        return Ok(latest_batch(live(all_batches(lake, index).await?)));
    }
    let found = window_batches(session, lake, pipeline, name, def, index, window).await?;
    Ok(live(found))
}

/// [`batches_for_window`] before retired batches are taken out.
async fn window_batches(
    session: &SessionContext,
    lake: &Lake,
    pipeline: &Pipeline,
    name: &str,
    def: &CleanedDef,
    index: &mut strata_land::SourceIndex,
    window: Option<Window>,
) -> Result<Vec<BatchManifest>> {
    let Some(window) = window else { return all_batches(lake, index).await };
    let Some(column) = pipeline.contracts[name].iter().find(|c| def.is_business_date(&c.name))
    else {
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

/// The batch landed last (a snapshot source's whole truth); none when nothing is landed.
pub fn latest_batch(batches: Vec<BatchManifest>) -> Vec<BatchManifest> {
    batches.into_iter().max_by(|a, b| a.landing_key().cmp(&b.landing_key())).into_iter().collect()
}

pub(super) async fn all_batches(
    lake: &Lake,
    index: &mut strata_land::SourceIndex,
) -> Result<Vec<BatchManifest>> {
    index.all_batches(lake).await.map_err(land_error)
}

pub(super) fn land_error(e: strata_land::Error) -> Error {
    match e {
        strata_land::Error::Lake(l) => Error::Lake(l),
        other => Error::Land(other),
    }
}
