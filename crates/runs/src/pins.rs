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
use strata_medallion::stages::{owned_keys, Window};
use strata_medallion::types::Pin;
use strata_publish::Lake;

use crate::error::{Error, Result};
use crate::plan::Plan;

/// The version a run binds for one input.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolved {
    /// The latest: the version this run computes (after [`resolve`], only for datasets the run
    /// computes).
    Latest,
    /// Exactly this version, chosen as `how` says: the latest at input lock, the pinned
    /// `version = N`, or `as_originally_run` repeating the binding of the runs in `as_in`.
    Version { version: u64, how: Pin, as_in: Vec<String> },
}

/// What the runs that published the dates a run recomputes had bound for a reference: run id →
/// the version it recorded and the hash of that version's rows (`None`: it recorded no binding
/// for it, e.g. a run from before references were pinned).
pub type Originals = BTreeMap<String, Option<(u64, Option<String>)>>;

/// The decision (pure): the version a run binds for reference `name` under `pin`.
/// `as_originally_run` with every earlier run that recorded a binding agreeing binds that
/// version; with none, the latest; with runs that disagree, the run cannot be one computation
/// and is refused (the message says how to split it). Versions with the same row hash hold the
/// same rows and agree (a snapshot recomputed unchanged); the latest of them is bound. A
/// version some runs recorded with a hash and others without is one content.
pub fn decide(name: &str, pin: Pin, refresh: bool, originals: &Originals) -> Result<Resolved> {
    match pin {
        Pin::Latest => Ok(Resolved::Latest),
        Pin::Version(version) => Ok(Resolved::Version { version, how: pin, as_in: Vec::new() }),
        Pin::AsOriginallyRun if refresh => Ok(Resolved::Latest),
        Pin::AsOriginallyRun => {
            let hash_of: BTreeMap<u64, &String> = originals
                .values()
                .flatten()
                .filter_map(|(v, h)| h.as_ref().map(|h| (*v, h)))
                .collect();
            // Content → the versions holding it, and the runs that read them.
            let mut by_content: BTreeMap<String, (BTreeSet<u64>, Vec<String>)> = BTreeMap::new();
            for (run, bound) in originals {
                if let Some((v, _)) = bound {
                    let content =
                        hash_of.get(v).map(|h| h.to_string()).unwrap_or_else(|| format!("v{v}"));
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
                    Ok(Resolved::Version { version, how: pin, as_in })
                }
                _ => Err(Error::PinConflict {
                    reference: name.to_string(),
                    bound: by_content
                        .values()
                        .map(|(vs, runs)| {
                            let vs: Vec<String> = vs.iter().map(|v| format!("v{v}")).collect();
                            format!("{} by {}", vs.join("/"), runs.join(", "))
                        })
                        .collect::<Vec<_>>()
                        .join("; "),
                }),
            }
        }
    }
}

/// The inputs the planned models read at a version bound when the run locks its inputs: every
/// reference (of the lake, or a reference dataset), and every input the run does not compute
/// (with `--only`), with how each is chosen.
pub fn bound_inputs(pipeline: &Pipeline, plan: &Plan) -> BTreeMap<String, Pin> {
    let computed: BTreeSet<&str> =
        plan.cleaned.iter().chain(&plan.models).map(|(n, _)| n.as_str()).collect();
    plan.models
        .iter()
        .flat_map(|(m, _)| &pipeline.model_deps[m])
        .filter_map(|d| match pipeline.pin_of(d) {
            Some(p) => Some((d.clone(), p)),
            None if !computed.contains(d.as_str()) => Some((d.clone(), Pin::Latest)),
            None => None,
        })
        .collect()
}

/// The dates a run was asked for: its window without the lookback days before it.
fn requested(pipeline: &Pipeline, window: Option<Window>) -> Option<Window> {
    window.map(|w| {
        let from = w.from + chrono::Duration::days(pipeline.settings.lookback_days.into());
        Window { from: from.min(w.to), to: w.to }
    })
}

/// The version each input bound at input lock is read at ([`decide`]). The latest of a dataset
/// the run does not compute is its current version now, so that the run key, the binding and
/// what the models read agree. `as_originally_run` looks at the dates the run was asked for
/// (not the lookback days): a daily run of a new day reads the latest, a backfill of published
/// days what they were computed with. A version that cannot be read, or an input never
/// published, is refused before anything is landed.
pub async fn resolve(
    lake: &Lake,
    pipeline: &Pipeline,
    plan: &Plan,
    window: Option<Window>,
    refresh: bool,
) -> Result<BTreeMap<String, Resolved>> {
    let computed: BTreeSet<&str> =
        plan.cleaned.iter().chain(&plan.models).map(|(n, _)| n.as_str()).collect();
    let asked = requested(pipeline, window);
    let mut out = BTreeMap::new();
    for (name, pin) in bound_inputs(pipeline, plan) {
        let originals = match pin {
            Pin::AsOriginallyRun if !refresh => {
                originals(lake, pipeline, plan, asked, &name).await?
            }
            _ => Originals::new(),
        };
        let resolved = match decide(&name, pin, refresh, &originals)? {
            Resolved::Latest if computed.contains(name.as_str()) => Resolved::Latest,
            Resolved::Latest => match lake.dataset(&name)?.head().await? {
                Some(head) => {
                    Resolved::Version { version: head.to, how: Pin::Latest, as_in: vec![] }
                }
                None => {
                    return Err(Error::NotPublished {
                        dataset: name.clone(),
                        of_the_lake: pipeline.references.contains_key(&name),
                    })
                }
            },
            Resolved::Version { version, how, as_in } => {
                lake.dataset(&name)?.published_head(version).await.map_err(|e| {
                    Error::UnreadablePin {
                        dataset: name.clone(),
                        version,
                        how,
                        detail: e.to_string(),
                    }
                })?;
                Resolved::Version { version, how, as_in }
            }
        };
        out.insert(name, resolved);
    }
    Ok(out)
}

/// The bindings for `reference` recorded by the runs that wrote the partitions, of the dates
/// asked for (all, without a window), of the dated models of the plan that read it.
async fn originals(
    lake: &Lake,
    pipeline: &Pipeline,
    plan: &Plan,
    asked: Option<Window>,
    reference: &str,
) -> Result<Originals> {
    let mut runs = BTreeSet::new();
    for (m, _) in &plan.models {
        let def = &pipeline.models[m];
        let Some(part_col) = def.partition_column() else { continue };
        if !pipeline.model_deps[m].contains(reference) {
            continue;
        }
        let dates: Option<BTreeSet<String>> = asked.map(|w| owned_keys(&part_col, def.grain, w));
        let ds = lake.dataset(m)?;
        let Some(draft) = ds.draft_of_current().await? else { continue };
        let keep = |key: &str| dates.as_ref().is_none_or(|d| d.contains(date_segment(key)));
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
            Resolved::Version { version: 4, how: Pin::Version(4), as_in: vec![] }
        );
    }

    #[test]
    fn as_originally_run_repeats_the_original_binding() {
        let o = originals(&[("r1", Some(1)), ("r2", Some(1)), ("old", None)]);
        assert_eq!(
            decide("a", Pin::AsOriginallyRun, false, &o).unwrap(),
            Resolved::Version {
                version: 1,
                how: Pin::AsOriginallyRun,
                as_in: vec!["r1".into(), "r2".into()]
            }
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
            Resolved::Version {
                version: 2,
                how: Pin::AsOriginallyRun,
                as_in: vec!["r1".into(), "r2".into()]
            }
        );
        o.insert("r3".into(), Some((3, Some("bb".into()))));
        let e = decide("a", Pin::AsOriginallyRun, false, &o).unwrap_err().to_string();
        assert!(e.contains("v1/v2 by r1, r2") && e.contains("v3 by r3"), "{e}");
    }

    /// One version recorded with its row hash by one run and without by another is one content.
    #[test]
    fn a_version_with_and_without_its_hash_is_one_content() {
        let mut o = Originals::new();
        o.insert("new".into(), Some((1, Some("aa".into()))));
        o.insert("old".into(), Some((1, None)));
        assert!(matches!(
            decide("a", Pin::AsOriginallyRun, false, &o).unwrap(),
            Resolved::Version { version: 1, .. }
        ));
    }

    #[test]
    fn originals_that_disagree_are_refused_with_both_named() {
        let o = originals(&[("r1", Some(1)), ("r2", Some(2))]);
        let e = decide("airports", Pin::AsOriginallyRun, false, &o).unwrap_err().to_string();
        assert!(e.contains("v1 by r1") && e.contains("v2 by r2"), "{e}");
        assert!(e.contains("--refresh-references"), "{e}");
    }
}
