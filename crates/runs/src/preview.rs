//! `strata plan`: what a run with the same arguments would do, computed by the same functions
//! the run uses ([`crate::plan::plan`], [`crate::pins::resolve`], the run key), without writing
//! anything: no file is landed, no index saved, no lock taken, no manifest written.

use std::collections::BTreeMap;

use serde::Serialize;
use strata_medallion::pipeline::Pipeline;
use strata_medallion::stages::{batches_for_window, session, RunOptions};
use strata_publish::Lake;

use crate::error::Result;
use crate::pins;
use crate::plan::{explain, plan, Step};

/// A source's inputs as the run would find them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourcePreview {
    pub source: String,
    /// Files matching the source's path.
    pub files: usize,
    /// Of those, the files whose content is not landed yet (new or changed): the run lands them.
    pub new_files: Vec<String>,
    /// Batches the source has landed.
    pub landed_batches: usize,
}

/// Whether the run would be a no-op.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "noop")]
pub enum NoOp {
    /// A published run computed exactly this, and its versions are current.
    Yes { run_id: String },
    /// The run would compute and publish.
    No,
    /// New or changed files: the run decides once it has landed them.
    AfterLanding,
}

/// What a run would do.
#[derive(Debug, Clone, Serialize)]
pub struct Preview {
    pub steps: Vec<Step>,
    pub sources: Vec<SourcePreview>,
    /// The version each input read at a bound version would be read at.
    pub bindings: BTreeMap<String, pins::Resolved>,
    /// Raw batches the cleaned stages would read, per cleaned dataset (known batches only).
    pub batches: BTreeMap<String, usize>,
    pub noop: NoOp,
    /// Dataset → the closing in force and the closed partitions the run would replace (the
    /// run fails if it changes their rows, unless it is a restatement).
    pub closed: BTreeMap<String, ClosedTouch>,
}

/// Closed partitions a run would replace.
#[derive(Debug, Clone, Serialize)]
pub struct ClosedTouch {
    pub closing: strata_publish::closing::Closing,
    /// The closed partitions it replaces; every partition when it replaces the dataset whole.
    pub partitions: Vec<String>,
    pub whole: bool,
}

/// The batch id a local file would land as: the sha256 of its bytes.
fn content_id(path: &str) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut hasher = Sha256::new();
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf)? {
            0 => break,
            n => hasher.update(&buf[..n]),
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The preview of a run of `pipeline` with `options` over `lake` (which must exist).
pub async fn preview(lake: &Lake, pipeline: &Pipeline, options: &RunOptions) -> Result<Preview> {
    let plan = plan(pipeline, options)?;
    let steps = explain(pipeline, options, &plan);
    let bindings =
        pins::resolve(lake, pipeline, &plan, options.window, options.refresh_references).await?;
    let land =
        |e: strata_land::Error| crate::error::Error::Transform(strata_medallion::Error::Land(e));
    let mut sources = Vec::new();
    let mut indexes = BTreeMap::new();
    for name in &plan.sources {
        let def = &pipeline.sources[name];
        let files =
            strata_land::expand_inputs_allow_empty(&pipeline.dir, std::slice::from_ref(&def.path))
                .map_err(|e| crate::error::Error::Plan(format!("sources.{name}: {e}")))?;
        let inputs = strata_land::local_inputs(&files).map_err(land)?;
        let mut index = strata_land::SourceIndex::load(lake, name).await.map_err(land)?;
        let mut new_files = Vec::new();
        for (input, identity) in &inputs {
            if identity.as_ref().and_then(|i| index.landed_as(&i.key)).is_some() {
                continue;
            }
            // Not recognised by its identity: its content decides, as landing would.
            let content = content_id(&input.display).map_err(|e| {
                crate::error::Error::Plan(format!(
                    "sources.{name}: cannot read {}: {e}",
                    input.display
                ))
            })?;
            if index.manifest(lake, &content).await.map_err(land)?.is_none() {
                new_files.push(input.display.clone());
            }
        }
        let landed_batches = index.all_batches(lake).await.map_err(land)?.len();
        sources.push(SourcePreview {
            source: name.clone(),
            files: files.len(),
            new_files,
            landed_batches,
        });
        indexes.insert(name.clone(), index);
    }
    // The batches each cleaned stage would read, as the run chooses them (the indexes are
    // updated in memory only).
    let sess = session(lake, options)?;
    let mut read = BTreeMap::new();
    for (name, window) in &plan.cleaned {
        let def = &pipeline.cleaned[name];
        let Some(index) = indexes.get_mut(&def.source) else { continue };
        let found = batches_for_window(&sess, lake, pipeline, name, def, index, *window).await?;
        read.insert(name.clone(), found);
    }
    let batches = read.iter().map(|(n, b)| (n.clone(), b.len())).collect();
    let noop = if sources.iter().any(|s| !s.new_files.is_empty()) {
        NoOp::AfterLanding
    } else if options.force {
        NoOp::No
    } else {
        let boundary = crate::driver::input_boundary(pipeline, &read);
        let key = crate::driver::run_key(pipeline, options, &boundary, &bindings);
        match crate::driver::already_published(lake, &plan.boundary, &key).await? {
            Some(m) => NoOp::Yes { run_id: m.run_id },
            None => NoOp::No,
        }
    };
    let mut closed = BTreeMap::new();
    for step in &steps {
        let Some(closing) = lake.dataset(&step.dataset)?.closing().await? else { continue };
        let whole = step.whole.is_some();
        let partitions: Vec<String> = step
            .partitions
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|k| strata_publish::closing::is_closed(k, closing.through))
            .collect();
        if whole || !partitions.is_empty() {
            closed.insert(step.dataset.clone(), ClosedTouch { closing, partitions, whole });
        }
    }
    Ok(Preview { steps, sources, bindings, batches, noop, closed })
}
