//! Reference-data pinning: which version of each reference a run's models read, fixed when the
//! run locks its inputs and recorded in its manifest.
//!
//! A reference is a dataset of the lake the pipeline reads but does not compute
//! (`[references.<name>]`), or a cleaned dataset without a business date. Its policy says which
//! version a run binds ([`Pin`]):
//!
//! - `latest`: the version current at input lock (for a reference the run computes, the
//!   version it publishes);
//! - `version = N`: that version, always;
//! - `as_originally_run`: a run over dates that were published before binds the version their
//!   original run recorded (a backfill computes what the original run computed); over new
//!   dates, or with `--refresh-references`, the latest.
//!
//! [`decide`] is the decision, over the bindings the original runs recorded; [`resolve`] fetches
//! those and calls it.

use std::collections::{BTreeMap, BTreeSet};

use strata_medallion::pipeline::Pipeline;
use strata_medallion::stages::scope::date_segment;
use strata_medallion::types::Pin;
use strata_publish::Lake;

use crate::error::{Error, Result};
use crate::plan::Plan;

/// The version a run binds for one reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// The latest: the current version at input lock, or the one this run computes.
    Latest,
    /// Exactly this version; `as_in` names the earlier runs whose binding it repeats
    /// (`as_originally_run`).
    Version { version: u64, as_in: Vec<String> },
}

/// What the runs that published the dates a run recomputes had bound for a reference: run id →
/// the version it recorded and the hash of that version's rows (`None`: it recorded no binding
/// for it, e.g. a run from before references were pinned).
pub type Originals = BTreeMap<String, Option<(u64, Option<String>)>>;

/// The decision (pure): the version a run binds for reference `name` under `pin`.
/// `as_originally_run` with every earlier run that recorded a binding agreeing binds that
/// version; with none, the latest; with runs that disagree, the run cannot be one computation
/// and is refused (the message says how to split it). Versions with the same row hash hold the
/// same rows and agree (a snapshot recomputed unchanged); the latest of them is bound.
pub fn decide(name: &str, pin: Pin, refresh: bool, originals: &Originals) -> Result<Resolved> {
    match pin {
        Pin::Latest => Ok(Resolved::Latest),
        Pin::Version(version) => Ok(Resolved::Version { version, as_in: Vec::new() }),
        Pin::AsOriginallyRun if refresh => Ok(Resolved::Latest),
        Pin::AsOriginallyRun => {
            // Content → the versions holding it, and the runs that read them.
            let mut by_content: BTreeMap<String, (BTreeSet<u64>, Vec<String>)> = BTreeMap::new();
            for (run, bound) in originals {
                if let Some((v, hash)) = bound {
                    let content = hash.clone().unwrap_or_else(|| format!("version {v}"));
                    let entry = by_content.entry(content).or_default();
                    entry.0.insert(*v);
                    entry.1.push(run.clone());
                }
            }
            match by_content.len() {
                0 => Ok(Resolved::Latest),
                1 => {
                    let (versions, as_in) = by_content.into_values().next().expect("one");
                    let version = *versions.last().expect("a version per content");
                    Ok(Resolved::Version { version, as_in })
                }
                _ => Err(Error::Plan(format!(
                    "{name} is pinned as_originally_run, but the dates this run recomputes were \
                     published by runs that read different versions of it ({}); a run reads one \
                     version. Run the dates of each separately (`strata show-run <run>` shows \
                     their windows), or pass --refresh-references to read the latest",
                    by_content
                        .values()
                        .map(|(vs, runs)| {
                            let vs: Vec<String> = vs.iter().map(|v| format!("v{v}")).collect();
                            format!("{} by {}", vs.join("/"), runs.join(", "))
                        })
                        .collect::<Vec<_>>()
                        .join("; ")
                ))),
            }
        }
    }
}

/// The references the planned models read, with how each is to be pinned.
pub fn references_read(pipeline: &Pipeline, plan: &Plan) -> BTreeMap<String, Pin> {
    plan.models
        .iter()
        .flat_map(|(m, _)| &pipeline.model_deps[m])
        .filter_map(|d| pipeline.pin_of(d).map(|p| (d.clone(), p)))
        .collect()
}

/// The version each reference the planned models read is bound to ([`decide`]), reading the
/// manifests of the runs that published the dates the plan recomputes when a policy needs them.
/// A pinned version that was never published is refused before anything is written.
pub async fn resolve(
    lake: &Lake,
    pipeline: &Pipeline,
    plan: &Plan,
    refresh: bool,
) -> Result<BTreeMap<String, Resolved>> {
    let mut out = BTreeMap::new();
    for (name, pin) in references_read(pipeline, plan) {
        let originals = match pin {
            Pin::AsOriginallyRun if !refresh => originals(lake, pipeline, plan, &name).await?,
            _ => Originals::new(),
        };
        let resolved = decide(&name, pin, refresh, &originals)?;
        if let Resolved::Version { version, .. } = &resolved {
            lake.dataset(&name)?.published_head(*version).await.map_err(|e| {
                Error::Plan(format!(
                    "{name} is pinned to version {version}, which cannot be read ({e}); \
                     `strata versions {name}` lists its versions"
                ))
            })?;
        }
        out.insert(name, resolved);
    }
    Ok(out)
}

/// The bindings for `reference` recorded by the runs that wrote the partitions the plan's
/// models recompute (those that read it).
async fn originals(
    lake: &Lake,
    pipeline: &Pipeline,
    plan: &Plan,
    reference: &str,
) -> Result<Originals> {
    let mut runs = BTreeSet::new();
    for (m, _) in &plan.models {
        if !pipeline.model_deps[m].contains(reference) {
            continue;
        }
        let ds = lake.dataset(m)?;
        let Some(draft) = ds.draft_of_current().await? else { continue };
        let owned: BTreeSet<&str> = plan.boundary[m].iter().map(String::as_str).collect();
        let keep = |key: &str| owned.is_empty() || owned.contains(date_segment(key));
        let record = ds.select(&draft, &keep).await?;
        runs.extend(record.partitions.iter().map(|p| p.run_id.clone()));
    }
    let mut out = Originals::new();
    for run in runs {
        let manifest = crate::log::latest_entry(lake, &run).await?;
        let bound = manifest
            .and_then(|m| m.reference_data.into_iter().find(|b| b.dataset == reference))
            .map(|b| (b.version, b.row_hash));
        out.insert(run, bound);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn originals(pairs: &[(&str, Option<u64>)]) -> Originals {
        pairs.iter().map(|(r, v)| (r.to_string(), v.map(|v| (v, None)))).collect()
    }

    #[test]
    fn latest_and_fixed_versions_ignore_history() {
        let o = originals(&[("r1", Some(1))]);
        assert_eq!(decide("a", Pin::Latest, false, &o).unwrap(), Resolved::Latest);
        assert_eq!(
            decide("a", Pin::Version(4), true, &o).unwrap(),
            Resolved::Version { version: 4, as_in: vec![] }
        );
    }

    #[test]
    fn as_originally_run_repeats_the_original_binding() {
        let o = originals(&[("r1", Some(1)), ("r2", Some(1)), ("old", None)]);
        assert_eq!(
            decide("a", Pin::AsOriginallyRun, false, &o).unwrap(),
            Resolved::Version { version: 1, as_in: vec!["r1".into(), "r2".into()] }
        );
        // New dates: nothing to repeat.
        assert_eq!(
            decide("a", Pin::AsOriginallyRun, false, &Originals::new()).unwrap(),
            Resolved::Latest
        );
        assert_eq!(
            decide("a", Pin::AsOriginallyRun, false, &originals(&[("old", None)])).unwrap(),
            Resolved::Latest
        );
        // --refresh-references
        assert_eq!(decide("a", Pin::AsOriginallyRun, true, &o).unwrap(), Resolved::Latest);
    }

    /// A snapshot recomputed unchanged is a new version with the same rows: the runs that read
    /// either agree, and the later version is bound.
    #[test]
    fn versions_with_the_same_rows_agree() {
        let mut o = Originals::new();
        o.insert("r1".into(), Some((1, Some("aa".into()))));
        o.insert("r2".into(), Some((2, Some("aa".into()))));
        assert_eq!(
            decide("a", Pin::AsOriginallyRun, false, &o).unwrap(),
            Resolved::Version { version: 2, as_in: vec!["r1".into(), "r2".into()] }
        );
        o.insert("r3".into(), Some((3, Some("bb".into()))));
        let e = decide("a", Pin::AsOriginallyRun, false, &o).unwrap_err().to_string();
        assert!(e.contains("v1/v2 by r1, r2") && e.contains("v3 by r3"), "{e}");
    }

    #[test]
    fn originals_that_disagree_are_refused_with_both_named() {
        let o = originals(&[("r1", Some(1)), ("r2", Some(2))]);
        let e = decide("airports", Pin::AsOriginallyRun, false, &o).unwrap_err().to_string();
        assert!(e.contains("v1 by r1") && e.contains("v2 by r2"), "{e}");
        assert!(e.contains("--refresh-references"), "{e}");
    }
}
