//! Shadows: listing them, promoting one (its versions made current without recomputing), and
//! dropping one.
//!
//! A shadow run ends SHADOWED with its versions prepared and named by its shadow ref
//! ([`strata_publish::shadow`]). `strata promote` continues that run's log:
//!
//! ```text
//! SHADOWED -> COMMITTING (promotion claimed: its pointers as bases)
//!          -> every version prepared: as built when the pointer has not moved, merged onto the
//!             current version when it moved without touching the shadow's partitions, and a
//!             conflict naming the partitions otherwise (back to SHADOWED, nothing published)
//!          -> flips (kind `promote`) -> PUBLISHED
//! ```
//!
//! So a promotion is claimed by exactly one process (the run's next log entry), is all-or-nothing
//! as `strata promote` sees it, and is settled by recovery like any commit: rolled forward when
//! some flips landed and the rest can follow, back to SHADOWED when none did.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use strata_publish::locks;
use strata_publish::model::FlipKind;
use strata_publish::shadow::ShadowRef;
use strata_publish::{Lake, RunContext};

use crate::error::{Error, Result};
use crate::log::{self as runs, Base, Promotion, RunLog, RunManifest};
use crate::run_state::RunState;

/// One dataset of a shadow, as `strata shadows` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ShadowDataset {
    /// The version the shadow holds.
    pub version: u64,
    /// The version current when the shadow was built.
    pub base_version: Option<u64>,
    /// The version current now.
    pub current: Option<u64>,
    /// The version the promotion published (the shadow's own, or merged onto a moved pointer).
    pub promoted_as: Option<u64>,
}

/// A shadow, as `strata shadows` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct ShadowListing {
    pub name: String,
    pub run_id: String,
    pub created_at: DateTime<Utc>,
    /// The shadow run's state: SHADOWED (promotable), COMMITTING (being promoted), PUBLISHED
    /// (promoted), FAILED (dropped), UNKNOWN (a promotion needs a person).
    pub state: RunState,
    pub datasets: BTreeMap<String, ShadowDataset>,
    pub promotion: Option<Promotion>,
    /// Diff reports kept with the run (`strata diff --save`).
    pub diffs: usize,
}

/// Every shadow of the lake, or those holding `dataset`.
pub async fn list(lake: &Lake, dataset: Option<&str>) -> Result<Vec<ShadowListing>> {
    let mut out = Vec::new();
    for r in lake.shadows().await? {
        if dataset.is_some_and(|d| !r.datasets.contains_key(d)) {
            continue;
        }
        out.push(listing(lake, r).await?);
    }
    Ok(out)
}

async fn listing(lake: &Lake, r: ShadowRef) -> Result<ShadowListing> {
    let m = runs::latest_entry(lake, &r.run_id).await?;
    let mut datasets = BTreeMap::new();
    for (d, v) in &r.datasets {
        let current = lake.dataset(d)?.head().await?.map(|h| h.to);
        let promoted_as = m
            .as_ref()
            .filter(|m| m.promotion.is_some() && m.state == RunState::Published)
            .and_then(|m| m.published.get(d).copied());
        datasets.insert(
            d.clone(),
            ShadowDataset {
                version: v.version,
                base_version: v.base_version,
                current,
                promoted_as,
            },
        );
    }
    Ok(ShadowListing {
        name: r.name,
        run_id: r.run_id,
        created_at: r.created_at,
        state: m.as_ref().map_or(RunState::Failed, |m| m.state),
        datasets,
        promotion: m.as_ref().and_then(|m| m.promotion.clone()),
        diffs: m.as_ref().map_or(0, |m| m.diffs.len()),
    })
}

/// What `strata promote` did.
#[derive(Debug, Clone, Serialize)]
pub struct Promoted {
    pub name: String,
    pub run_id: String,
    /// Dataset → how it was promoted.
    pub datasets: BTreeMap<String, PromotedDataset>,
    /// The shadow had been promoted before: nothing was done now.
    pub already: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PromotedDataset {
    /// The version the shadow holds.
    pub shadow_version: u64,
    /// The version now current.
    pub published: u64,
    /// Whether the shadow's partitions were merged onto a pointer that moved since the shadow
    /// was built (a new version) rather than its version made current as it was.
    pub rebased: bool,
}

/// The run a shadow's ref names, with its latest entry, after settling a promotion of it that
/// stopped half-way (as `strata recover` would).
async fn shadow_run(
    lake: &Lake,
    name: &str,
    clock: locks::Clock,
    lease: std::time::Duration,
) -> Result<(ShadowRef, RunManifest)> {
    let shadow = lake.require_shadow(name).await?;
    let latest = |m: Option<RunManifest>| {
        m.ok_or_else(|| Error::NoSuchRun { run_id: shadow.run_id.clone(), lake: lake.url().into() })
    };
    let m = latest(runs::latest_entry(lake, &shadow.run_id).await?)?;
    let stopped = matches!(m.state, RunState::Committing | RunState::Unknown);
    if stopped && m.promotion.is_some() {
        let by = format!("settle promotion {} {}", shadow.run_id, std::process::id());
        let ctx = RunContext::generate(clock(), by.as_bytes());
        match crate::recover::recover(lake, Some(&shadow.run_id), &ctx, clock, lease).await {
            // Another promotion of it is alive right now.
            Err(Error::StillRunning { .. }) => {
                return Err(Error::RunMoved { run_id: shadow.run_id.clone(), entry: m.entry })
            }
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        let m = latest(runs::latest_entry(lake, &shadow.run_id).await?)?;
        return Ok((shadow, m));
    }
    Ok((shadow, m))
}

/// Makes the versions of shadow `name` current: see the module's documentation. `reason` is
/// recorded in each pointer entry.
pub async fn promote(
    lake: &Lake,
    name: &str,
    reason: Option<String>,
    now: DateTime<Utc>,
    clock: locks::Clock,
    lease: std::time::Duration,
) -> Result<Promoted> {
    let (shadow, m) = shadow_run(lake, name, clock, lease).await?;
    let run_id = shadow.run_id.clone();
    let state_error = |m: &RunManifest, message: String| Error::ShadowState {
        name: name.to_string(),
        run_id: run_id.clone(),
        state: m.state,
        message,
    };
    match m.state {
        RunState::Shadowed => {}
        RunState::Published if m.promotion.is_some() => {
            return Ok(promoted(&shadow, &m, true));
        }
        RunState::Committing => {
            return Err(state_error(&m, "another `strata promote` is promoting it now".into()))
        }
        RunState::Unknown => {
            return Err(state_error(
                &m,
                format!(
                    "a promotion of it stopped and cannot be finished as it was ({}); `strata \
                     show-run {run_id}` shows the evidence",
                    m.error.clone().unwrap_or_default()
                ),
            ))
        }
        RunState::Failed => {
            return Err(state_error(
                &m,
                format!("it was dropped; compute it again, or `strata drop-shadow {name}`"),
            ))
        }
        _ => {
            return Err(state_error(
                &m,
                "its run has not finished publishing the shadow; `strata recover` settles it"
                    .into(),
            ))
        }
    }
    let Some(info) = m.shadow.clone() else {
        return Err(state_error(&m, "its run records no shadow; this is a bug in strata".into()));
    };
    let lock = locks::acquire(lake, &run_id, &m.output_boundary, lease, clock).await?;
    let op = RunContext::generate(now, format!("promote {name} {}", std::process::id()).as_bytes());
    let ctx = RunContext::new(run_id.clone(), now)?;
    let result = Box::pin(claim_and_flip(lake, m, &shadow, &info, reason, &op, &ctx, &lock)).await;
    lock.release().await;
    result
}

/// The promotion proper, under the shadow run's locks.
#[allow(clippy::too_many_arguments)]
async fn claim_and_flip(
    lake: &Lake,
    m: RunManifest,
    shadow: &ShadowRef,
    info: &runs::ShadowInfo,
    reason: Option<String>,
    op: &RunContext,
    ctx: &RunContext,
    lock: &locks::RunLocks,
) -> Result<Promoted> {
    let name = shadow.name.as_str();
    // The pointers now are the promotion's bases: recovery looks for its flips after them.
    let mut bases = BTreeMap::new();
    for d in info.versions.keys() {
        if let Some(h) = lake.dataset(d)?.head().await? {
            bases.insert(d.clone(), Base { seq: h.seq, max_version: h.max_version });
        }
    }
    let mut log = RunLog::resume(lake, m);
    let promotion = Promotion { by: op.run_id().to_string(), at: op.now(), reason: reason.clone() };
    // The claim: of two promotions (or a promotion and a drop), whoever writes the run's next
    // entry first goes ahead; the other gets RunMoved having changed nothing.
    log.advance(RunState::Committing, ctx.now(), |m| {
        m.promotion = Some(promotion);
        m.bases = bases;
        m.prepared.clear();
        m.error = None;
    })
    .await?;
    let why = Some(match &reason {
        Some(r) => format!("promote shadow {name}: {r}"),
        None => format!("promote shadow {name}"),
    });
    let mut prepared = Vec::new();
    for (d, sv) in &shadow.datasets {
        let ds = lake.dataset(d)?;
        let ready = match ds.prepare_promotion(name, sv, FlipKind::Promote, why.clone(), ctx).await
        {
            Ok(p) => {
                // A promotion never changes a closed period: that takes a restatement.
                let draft = strata_publish::Dataset::draft_of(p.record.clone());
                let closed = ds.closed_changes(&draft).await;
                prepared.push((ds.clone(), sv.version, p));
                match closed {
                    Ok(None) => Ok(()),
                    Ok(Some((closing, parts))) => Err(strata_publish::Error::ClosedPeriod {
                        dataset: d.clone(),
                        closing: closing.describe(),
                        what: format!("promoting shadow {name}"),
                        partitions: parts.into_iter().map(|p| p.key).collect(),
                    }),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        match ready {
            Ok(()) => {}
            Err(e) => {
                // Nothing was flipped: the records prepared for a rebase go, and the run is the
                // shadow it was.
                for (ds, shadow_version, p) in &prepared {
                    if p.record.version != *shadow_version {
                        ds.discard_record(p.record.version, ctx.run_id()).await?;
                    }
                }
                let message = e.to_string();
                let back = info.clone();
                log.advance(RunState::Shadowed, ctx.now(), |m| {
                    m.bases = back.bases.clone();
                    m.prepared = back.versions.clone();
                    m.promotion = None;
                    m.error = Some(format!("not promoted: {message}"));
                })
                .await?;
                return Err(e.into());
            }
        }
    }
    let versions: BTreeMap<String, u64> =
        prepared.iter().map(|(ds, _, p)| (ds.name().to_string(), p.record.version)).collect();
    log.record(ctx.now(), |m| m.prepared = versions).await?;
    strata_publish::crash::point("before-promote-flips");
    let mut published = BTreeMap::new();
    let mut rebased = BTreeMap::new();
    for (ds, shadow_version, p) in prepared {
        let flipped = match lock.confirm(ds.name()).await {
            Ok(()) => ds.commit(p, ctx).await.map_err(Error::from),
            Err(e) => Err(e.into()),
        };
        match flipped {
            Ok(done) => {
                rebased.insert(ds.name().to_string(), done.record.version != shadow_version);
                published.insert(ds.name().to_string(), done.record.version);
            }
            Err(e) => {
                // A flip may have been attempted: recovery settles it (rolled forward, or back
                // to SHADOWED); nothing is deleted here.
                let message = e.to_string();
                let so_far = published.clone();
                let _ = log
                    .advance(RunState::Unknown, ctx.now(), |m| {
                        m.published = so_far;
                        m.error = Some(message);
                    })
                    .await;
                return Err(e);
            }
        }
    }
    let done = published.clone();
    log.advance(RunState::Published, ctx.now(), |m| m.published = done).await?;
    let mut out = promoted(shadow, log.manifest(), false);
    for (d, r) in rebased {
        if let Some(p) = out.datasets.get_mut(&d) {
            p.rebased = r;
        }
    }
    Ok(out)
}

fn promoted(shadow: &ShadowRef, m: &RunManifest, already: bool) -> Promoted {
    let datasets = shadow
        .datasets
        .iter()
        .map(|(d, sv)| {
            let published = m.published.get(d).copied().unwrap_or(sv.version);
            let p = PromotedDataset {
                shadow_version: sv.version,
                published,
                rebased: published != sv.version,
            };
            (d.clone(), p)
        })
        .collect();
    Promoted { name: shadow.name.clone(), run_id: shadow.run_id.clone(), datasets, already }
}

/// What `strata drop-shadow` did.
#[derive(Debug, Clone, Serialize)]
pub struct Dropped {
    pub name: String,
    pub run_id: String,
    /// Objects removed: the shadow's unpublished records, its files, its ref.
    pub removed: u64,
    /// The shadow had been promoted: only its ref was removed (its versions are published).
    pub was_promoted: bool,
}

/// Drops shadow `name`: a shadow never promoted is marked FAILED (so that no promotion can
/// start), then its ref, records and files are removed; a promoted shadow loses only its ref.
/// A drop cut short is finished by `strata recover` (or by dropping again).
pub async fn drop_shadow(
    lake: &Lake,
    name: &str,
    now: DateTime<Utc>,
    clock: locks::Clock,
    lease: std::time::Duration,
) -> Result<Dropped> {
    let (shadow, m) = shadow_run(lake, name, clock, lease).await?;
    let run_id = shadow.run_id.clone();
    let state_error = |m: &RunManifest, message: &str| Error::ShadowState {
        name: name.to_string(),
        run_id: run_id.clone(),
        state: m.state,
        message: message.to_string(),
    };
    match m.state {
        RunState::Published => {
            lake.delete_shadow(name).await?;
            Ok(Dropped { name: name.into(), run_id, removed: 1, was_promoted: true })
        }
        RunState::Shadowed => {
            let mut log = RunLog::resume(lake, m);
            log.advance(RunState::Failed, now, |m| {
                m.error = Some(format!("shadow {name} dropped"));
                m.cleanup = true;
            })
            .await?;
            strata_publish::crash::point("after-drop-mark");
            let removed = crate::recover::clean_up_failed(lake, log.manifest()).await?;
            Ok(Dropped { name: name.into(), run_id, removed, was_promoted: false })
        }
        RunState::Failed => {
            // Dropped before, and cut short: finish it.
            let removed = crate::recover::clean_up_failed(lake, &m).await?;
            Ok(Dropped { name: name.into(), run_id, removed, was_promoted: false })
        }
        RunState::Committing => Err(state_error(&m, "a `strata promote` is promoting it now")),
        RunState::Unknown => Err(state_error(
            &m,
            "a promotion of it stopped half-way and needs a person; `strata show-run` shows it",
        )),
        _ => Err(state_error(&m, "its run has not finished; `strata recover` settles it")),
    }
}

/// Removes a dropped shadow's ref before its files: a reader never finds a ref whose files are
/// gone. Called by the cleanup of a FAILED shadow run.
pub(crate) async fn remove_ref_of(lake: &Lake, m: &RunManifest) -> Result<()> {
    if let strata_medallion::types::Backfill::Shadow { name } = &m.params.backfill {
        if lake.shadow(name).await?.is_some_and(|r| r.run_id == m.run_id) {
            lake.delete_shadow(name).await?;
        }
    }
    Ok(())
}

/// Keeps a diff report as evidence with the run of shadow `name` (`strata diff --save`): a new
/// entry of its log. Returns the run's id. A shadow promoted or dropped since takes no more
/// entries.
pub async fn attach_diff(
    lake: &Lake,
    name: &str,
    report: strata_medallion::diff::DiffReport,
    now: DateTime<Utc>,
) -> Result<String> {
    let shadow = lake.require_shadow(name).await?;
    let Some(m) = runs::latest_entry(lake, &shadow.run_id).await? else {
        return Err(Error::NoSuchRun { run_id: shadow.run_id, lake: lake.url().into() });
    };
    if m.state != RunState::Shadowed {
        return Err(Error::ShadowState {
            name: name.to_string(),
            run_id: shadow.run_id.clone(),
            state: m.state,
            message: "only a shadow not yet promoted keeps diff reports; save it to a file \
                      instead (--save FILE)"
                .into(),
        });
    }
    let mut log = RunLog::resume(lake, m);
    log.record(now, |m| m.diffs.push(report)).await?;
    Ok(shadow.run_id)
}
