//! Recovery: settling runs that stopped (crashed, killed, lost their store) before a terminal
//! state, from durable state alone: the run's log, its staged files, the pointers and their
//! history. Never from memory, so it is correct after `kill -9`.
//!
//! | latest state | pointer shows | decision |
//! |---|---|---|
//! | any | no flip by the run | staging removed (finished stages' checkpoints kept for a rerun), **FAILED** |
//! | COMMITTING / UNKNOWN | a flip by the run on every prepared dataset | **PUBLISHED** |
//! | COMMITTING / UNKNOWN | flips on some datasets, still current; the others' pointers unmoved since they were prepared | the remaining prepared versions are flipped (roll forward), **PUBLISHED** |
//! | COMMITTING / UNKNOWN | flips on some; a flipped one moved since (rolled back, republished), or an unflipped one's pointer moved | **UNKNOWN**, with what is visible now |
//!
//! A held run's approval that stopped before any flip goes back to AWAITING_REVIEW; a promotion
//! of a shadow that stopped before any flip goes back to SHADOWED (the records it prepared for
//! a rebase are removed; the shadow's own stay). A shadow run that stopped while committing is
//! SHADOWED if its shadow ref names it, FAILED otherwise.
//!
//! A run whose lock is live (its process is running, or its lease has not expired) is left alone.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use strata_publish::crash;
use strata_publish::deletion::Holder;
use strata_publish::locks::{self, Clock};
use strata_publish::model::FlipKind;
use strata_publish::{Lake, RunContext};

use crate::error::{Error, Result};
use crate::log::{self as runs, Recovery, RunLog, RunManifest};
use crate::run_state::RunState;

/// What recovery decides for one run, before acting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Every prepared dataset was flipped by the run.
    Published,
    /// Nothing of the run is visible.
    Failed,
    /// An approval of a held run stopped before its first flip: the run goes back to
    /// AWAITING_REVIEW with its staged output, to be approved or rejected again.
    BackToReview,
    /// A promotion of a shadow stopped before its first flip: the run goes back to SHADOWED.
    BackToShadow,
    /// A shadow run stopped after its shadow ref was created: it is SHADOWED.
    Shadowed,
    /// Some datasets were flipped and are still current; these were prepared and not yet, and
    /// their pointers have not moved since: they can be flipped as prepared.
    RollForward(Vec<String>),
    /// The pointers show something the state machine cannot explain, or the run cannot be
    /// finished without publishing on a base that moved: a person must decide.
    Unknown(String),
}

/// One dataset of a run's output boundary, as recovery finds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatasetView {
    /// The version the run prepared (from COMMITTING on).
    pub prepared: Option<u64>,
    /// The version the run's last publish flip on this dataset made current, if any.
    pub flipped: Option<u64>,
    /// The current pointer entry: `(seq, version, run that wrote that version)`.
    pub head: Option<(u64, u64, String)>,
    /// For a prepared version, the pointer entry it is to be published as (from its record);
    /// `None` when the record is gone.
    pub publish_seq: Option<u64>,
}

impl DatasetView {
    /// The run's flip on this dataset is what readers see now.
    fn still_current(&self, run_id: &str) -> bool {
        matches!((&self.head, self.flipped), (Some((_, v, by)), Some(f)) if *v == f && by == run_id)
    }

    /// The pointer is where it was when the version was prepared.
    fn unmoved(&self) -> bool {
        let next = self.head.as_ref().map_or(1, |(seq, _, _)| seq + 1);
        self.publish_seq == Some(next)
    }
}

/// What a run's commit does, as recovery must know to settle it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// Flips the run's versions: a run's own commit, or (`held`) the approval of a run held for
    /// review.
    Flips { held: bool },
    /// Creates the run's shadow ref (`--mode shadow`); `made`: the ref exists and names the run.
    ShadowRef { made: bool },
    /// Flips a shadow run's versions (`strata promote`).
    Promotion,
}

impl Commit {
    /// What `m` commits; `shadow_ref_made` says whether its shadow ref names it.
    pub fn of(m: &RunManifest, shadow_ref_made: bool) -> Commit {
        match (&m.params.backfill, &m.promotion) {
            (_, Some(_)) => Commit::Promotion,
            (strata_medallion::types::Backfill::Shadow { .. }, None) => {
                Commit::ShadowRef { made: shadow_ref_made }
            }
            _ => Commit::Flips { held: !m.publish_plan.is_empty() },
        }
    }
}

/// The decision table (pure): from the run's latest state, what its commit does, and what each
/// dataset of its output boundary shows. A run is only rolled forward when every dataset it
/// already flipped is still current at the run's version and every dataset left to flip is
/// unmoved since it was prepared, so the run never ends published on a base that another of its
/// datasets no longer matches.
pub fn decide(
    state: RunState,
    commit: Commit,
    run_id: &str,
    views: &BTreeMap<String, DatasetView>,
) -> Decision {
    let flipped: Vec<&String> =
        views.iter().filter(|(_, v)| v.flipped.is_some()).map(|(d, _)| d).collect();
    let committing = matches!(state, RunState::Committing | RunState::Unknown);
    if let Commit::ShadowRef { made } = commit {
        if !flipped.is_empty() {
            return Decision::Unknown(format!(
                "a shadow run never flips a pointer, yet flips by it exist on {}",
                flipped.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }
        return if made && committing { Decision::Shadowed } else { Decision::Failed };
    }
    if flipped.is_empty() {
        return match commit {
            Commit::Flips { held: true } if committing => Decision::BackToReview,
            Commit::Promotion if committing => Decision::BackToShadow,
            _ => Decision::Failed,
        };
    }
    if !matches!(state, RunState::Committing | RunState::Unknown) {
        return Decision::Unknown(format!(
            "the run is {state}, which never flips a pointer, yet flips by it exist on {}",
            flipped.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
    let missing: Vec<String> = views
        .iter()
        .filter(|(_, v)| v.prepared.is_some() && v.flipped.is_none())
        .map(|(d, _)| d.clone())
        .collect();
    if missing.is_empty() {
        return Decision::Published;
    }
    let moved: Vec<&String> =
        flipped.iter().copied().filter(|d| !views[*d].still_current(run_id)).collect();
    let stuck: Vec<&String> = missing.iter().filter(|d| !views[*d].unmoved()).collect();
    if moved.is_empty() && stuck.is_empty() {
        return Decision::RollForward(missing);
    }
    if !views.values().any(|v| v.still_current(run_id)) && commit != Commit::Promotion {
        // What it published was rolled back or replaced since, and the rest cannot follow:
        // nothing of the run is visible, which is what FAILED says. The files of the versions
        // it published stay (the pointer's history names them).
        return Decision::Failed;
    }
    let mut why = Vec::new();
    if !moved.is_empty() {
        why.push(format!(
            "{} moved after the run published it",
            moved.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
    if !stuck.is_empty() {
        why.push(format!(
            "{} moved since the run prepared it",
            stuck.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
    Decision::Unknown(format!(
        "the run is partly published and cannot be finished without publishing on a base that \
         moved ({}); {}",
        why.join("; "),
        visibility(run_id, views)
    ))
}

/// What readers see of the run now, in one sentence (pure).
pub fn visibility(run_id: &str, views: &BTreeMap<String, DatasetView>) -> String {
    let visible: Vec<String> = views
        .iter()
        .filter(|(_, v)| v.still_current(run_id))
        .map(|(d, v)| format!("{d} v{}", v.flipped.unwrap_or_default()))
        .collect();
    let hidden: Vec<&str> = views
        .iter()
        .filter(|(_, v)| v.prepared.is_some() && !v.still_current(run_id))
        .map(|(d, _)| d.as_str())
        .collect();
    match (visible.is_empty(), hidden.is_empty()) {
        (true, _) => "nothing of the run is visible now".into(),
        (false, true) => format!("visible now: {}", visible.join(", ")),
        (false, false) => {
            format!("visible now: {}; not visible: {}", visible.join(", "), hidden.join(", "))
        }
    }
}

/// What recovery did to one run.
#[derive(Debug, Clone, Serialize)]
pub struct Recovered {
    pub run_id: String,
    pub from: RunState,
    pub to: RunState,
    /// One line: what was found and done.
    pub action: String,
    /// What the pointers and staging showed.
    pub evidence: Vec<String>,
    /// Objects removed (staged files, unpublished records).
    pub removed: u64,
    /// Staged files kept as checkpoints for a rerun.
    pub kept: u64,
}

/// A run recovery left alone because it is still running, or because another process holds
/// its partitions (settling it, or running over them).
#[derive(Debug, Clone, Serialize)]
pub struct LiveRun {
    pub run_id: String,
    pub state: RunState,
    /// Who holds it: `still running: pid … on …` or `held by run … (pid … on …)`.
    pub holder: String,
}

impl LiveRun {
    fn of(m: &RunManifest, holder: &locks::LockInfo) -> Self {
        let holder = if holder.run_id == m.run_id {
            format!("still running: pid {} on {}", holder.pid, holder.host)
        } else {
            format!("held by run {} (pid {} on {})", holder.run_id, holder.pid, holder.host)
        };
        LiveRun { run_id: m.run_id.clone(), state: m.state, holder }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RecoveryReport {
    pub recovered: Vec<Recovered>,
    pub live: Vec<LiveRun>,
    /// Stale locks removed (left by processes that died).
    pub stale_locks_removed: Vec<String>,
}

/// Recovers every run that stopped before a terminal state (or only `only`), holding each
/// run's partition locks (for `lease`) while it settles it.
pub async fn recover(
    lake: &Lake,
    only: Option<&str>,
    ctx: &RunContext,
    clock: Clock,
    lease: std::time::Duration,
) -> Result<RecoveryReport> {
    let candidates: Vec<RunManifest> = match only {
        Some(id) => {
            let latest = runs::run_log(lake, id).await?.pop().expect("run_log is never empty");
            if latest.state == RunState::AwaitingReview {
                return Err(Error::WrongState {
                    run_id: id.to_string(),
                    state: latest.state,
                    message: format!(
                        "run {id} is AWAITING_REVIEW: its output is held for a person; `strata \
                         approve {id}` publishes it, `strata reject {id}` discards it"
                    ),
                });
            }
            if latest.state.is_terminal() {
                return Err(Error::WrongState {
                    run_id: id.to_string(),
                    state: latest.state,
                    message: format!(
                        "run {id} is already {}; there is nothing to recover (`strata show-run \
                         {id}` shows it)",
                        latest.state
                    ),
                });
            }
            vec![latest]
        }
        // A run awaiting review is not stopped: it waits for `strata approve` or `strata reject`.
        None => runs::open_runs(lake).await?.into_iter().filter(recoverable).collect(),
    };
    let mut report = RecoveryReport::default();
    for m in candidates {
        // The run's partitions are held while it is settled, so that two recoveries (or a
        // recovery and a new run) never settle it at once. A run still running holds them
        // itself: taking them fails, naming it.
        let held = match locks::acquire(lake, &m.run_id, &m.output_boundary, lease, clock).await {
            Ok(held) => held,
            Err(strata_publish::Error::Locked { holder, .. }) => {
                if only.is_some() {
                    return Err(Error::StillRunning { run_id: m.run_id, holder });
                }
                report.live.push(LiveRun::of(&m, &holder));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let settled = Box::pin(settle(lake, m, ctx)).await;
        held.release().await;
        if let Some(recovered) = settled? {
            report.recovered.push(recovered);
        }
    }
    if only.is_none() {
        report.stale_locks_removed = locks::sweep_stale(lake, clock).await?;
    }
    Ok(report)
}

/// Settles one run whose partitions this process holds. The candidate was read before its
/// locks were taken: a run that was live then may have settled since, so what it left is read
/// again now that no live process can move it (a run takes its locks before its first entry).
/// `None` when there is nothing left to do.
async fn settle(lake: &Lake, m: RunManifest, ctx: &RunContext) -> Result<Option<Recovered>> {
    let m = match runs::latest_entry(lake, &m.run_id).await? {
        Some(now) if now.entry == m.entry => m,
        Some(now) if recoverable(&now) => now,
        _ => return Ok(None),
    };
    if matches!(m.state, RunState::Failed | RunState::Discarded) {
        // Settled already; only its staging is left to remove.
        let removed = clean_up_failed(lake, &m).await?;
        return Ok(Some(Recovered {
            run_id: m.run_id.clone(),
            from: m.state,
            to: m.state,
            action: "finished removing the staging of a FAILED run".into(),
            evidence: vec![format!("removed {removed} staged object(s)")],
            removed,
            kept: 0,
        }));
    }
    recover_run(lake, m, ctx).await.map(Some)
}

/// Whether recovery settles a run whose latest entry is `m` (pure): a run that stopped before
/// a terminal state, or a rejected run whose staging is still to be removed. A run awaiting
/// review is not stopped: it waits for `strata approve` or `strata reject`.
fn recoverable(m: &RunManifest) -> bool {
    (!m.state.is_terminal() && !matches!(m.state, RunState::AwaitingReview | RunState::Shadowed))
        || (matches!(m.state, RunState::Failed | RunState::Discarded) && m.cleanup)
}

/// Removes the staging of a run recorded FAILED with [`RunManifest::cleanup`] set (a rejected
/// run), through the deletion authority, and takes it out of the register of open runs once
/// everything is gone. Safe to repeat. Returns the objects removed.
pub async fn clean_up_failed(lake: &Lake, m: &RunManifest) -> Result<u64> {
    crate::shadow::remove_ref_of(lake, m).await?;
    let (removed, kept_because) =
        discard_stopped(lake, m, &checkpoint_files(m), Holder::Stopped, |_| false).await?;
    if kept_because.is_empty() && m.checkpoints.is_empty() {
        runs::close(lake, &m.run_id).await;
    }
    Ok(removed)
}

/// The files of the run's checkpoints.
pub(crate) fn checkpoint_files(m: &RunManifest) -> BTreeSet<String> {
    m.checkpoints.iter().flat_map(|c| c.files().map(str::to_string)).collect()
}

/// Removes what the stopped run `m` left on each dataset of its boundary (unpublished records,
/// staged files), except `keep`, through the deletion authority, dataset by dataset; it stops
/// after the first dataset whose objects had to stay and for which `stop` says so. Returns the
/// objects removed, and dataset → why some of the run's objects had to stay.
pub(crate) async fn discard_stopped(
    lake: &Lake,
    m: &RunManifest,
    keep: &BTreeSet<String>,
    holder: Holder,
    stop: impl Fn(&str) -> bool,
) -> Result<(u64, BTreeMap<String, String>)> {
    let (mut removed, mut kept_because) = (0, BTreeMap::new());
    for ds_name in m.output_boundary.keys() {
        let ds = lake.dataset(ds_name)?;
        let base = m.bases.get(ds_name).copied().unwrap_or_default();
        let done = ds.discard_run(&m.run_id, base, keep, holder).await?;
        removed += done.removed.len() as u64;
        if let Some(why) = done.kept_because {
            kept_because.insert(ds_name.clone(), why);
            if stop(ds_name) {
                break;
            }
        }
    }
    Ok((removed, kept_because))
}

/// What one dataset of a run's boundary shows: the run's flips after its base, the current
/// entry, and the entry its prepared record is to be published as.
async fn view_of(lake: &Lake, m: &RunManifest, ds_name: &str) -> Result<DatasetView> {
    let ds = lake.dataset(ds_name)?;
    let after = m.bases.get(ds_name).map_or(0, |b| b.seq);
    let flipped = ds.flips_by(&m.run_id, after).await?.last().map(|f| f.to);
    let head = ds.head().await?.map(|h| (h.seq, h.to, h.version.run_id.clone()));
    let prepared = m.prepared.get(ds_name).copied();
    let publish_seq = match prepared {
        Some(v) if flipped.is_none() => ds.record_publish_seq(v).await?,
        _ => None,
    };
    Ok(DatasetView { prepared, flipped, head, publish_seq })
}

async fn views_of(lake: &Lake, m: &RunManifest) -> Result<BTreeMap<String, DatasetView>> {
    let mut views = BTreeMap::new();
    for ds_name in m.output_boundary.keys() {
        views.insert(ds_name.clone(), view_of(lake, m, ds_name).await?);
    }
    Ok(views)
}

fn describe(run_id: &str, ds_name: &str, v: &DatasetView) -> String {
    match (v.flipped, &v.head) {
        (Some(f), Some((seq, to, by))) if *to == f && by == run_id => {
            format!("{ds_name}: version {f} of this run is current (pointer #{seq})")
        }
        (Some(f), Some((seq, to, by))) => format!(
            "{ds_name}: version {f} of this run was published, then the pointer moved: #{seq} \
             makes version {to} (run {by}) current"
        ),
        (None, Some((seq, to, by))) => format!(
            "{ds_name}: no pointer entry of this run; #{seq} makes version {to} (run {by}) current"
        ),
        _ => format!("{ds_name}: no pointer entry of this run"),
    }
}

async fn recover_run(lake: &Lake, m: RunManifest, ctx: &RunContext) -> Result<Recovered> {
    let from = m.state;
    let mut views = views_of(lake, &m).await?;
    let mut evidence: Vec<String> = views.iter().map(|(d, v)| describe(&m.run_id, d, v)).collect();
    let shadow_ref_made = match &m.params.backfill {
        strata_medallion::types::Backfill::Shadow { name } => {
            let found = lake.shadow(name).await?;
            evidence.push(match &found {
                Some(r) if r.run_id == m.run_id => format!("shadow ref {name} names this run"),
                Some(r) => format!("shadow ref {name} names run {}", r.run_id),
                None => format!("no shadow ref {name}"),
            });
            found.is_some_and(|r| r.run_id == m.run_id)
        }
        _ => false,
    };
    let commit = Commit::of(&m, shadow_ref_made);
    let mut decision = decide(from, commit, &m.run_id, &views);
    if let Decision::RollForward(missing) = &decision {
        let (kind, reason) = match &m.promotion {
            Some(p) => (FlipKind::Promote, p.reason.clone()),
            None => (FlipKind::Publish, None),
        };
        for ds_name in missing {
            let ds = lake.dataset(ds_name)?;
            let v = m.prepared[ds_name];
            if let Some(p) = ds.flip_record(v, kind, reason.clone(), ctx).await? {
                evidence.push(format!(
                    "{ds_name}: rolled forward, pointer #{} publishes prepared version {v}",
                    p.flip.seq
                ));
            }
        }
        // Settled from what the pointers show now, so that a pointer that moved while rolling
        // forward is reported rather than assumed.
        views = views_of(lake, &m).await?;
        decision = match decide(from, commit, &m.run_id, &views) {
            Decision::RollForward(_) => Decision::Unknown(format!(
                "rolling forward did not land on every dataset; {}",
                visibility(&m.run_id, &views)
            )),
            other => other,
        };
    }
    let flipped: BTreeMap<String, u64> =
        views.iter().filter_map(|(d, v)| v.flipped.map(|f| (d.clone(), f))).collect();
    let (mut removed, mut kept) = (0u64, 0u64);
    if decision == Decision::Failed {
        // A checkpoint on a dataset the run published (and that was rolled back since) is not
        // offered for reuse: reusing moves its files, which that version still lists.
        let keep: BTreeSet<String> = reusable(&m.checkpoints, &flipped)
            .flat_map(|c| c.files().map(str::to_string))
            .collect();
        let unflipped = |d: &str| !flipped.contains_key(d);
        let (gone, kept_because) =
            discard_stopped(lake, &m, &keep, Holder::Stopped, unflipped).await?;
        removed += gone;
        if let Some((ds_name, why)) =
            kept_because.into_iter().find(|(d, _)| !flipped.contains_key(d))
        {
            // A flip by the run appeared since it was inspected: never remove what may be
            // visible; the next recovery sees the flip.
            return Err(Error::ChangedDuringRecovery {
                run_id: m.run_id.clone(),
                detail: format!("{ds_name}: {why}"),
            });
        }
        kept = keep.len() as u64;
        if removed > 0 {
            evidence.push(format!("removed {removed} staged object(s)"));
        }
        if kept > 0 {
            evidence.push(format!(
                "kept {kept} checksummed file(s) of finished stages for a rerun to reuse"
            ));
        }
        if !flipped.is_empty() {
            evidence.push(format!(
                "nothing of the run is visible now; the files of the versions it published are \
                 kept, since the history of {} names them",
                flipped.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    if decision == Decision::BackToReview {
        // The staged output is the held run's: keep all of it, drop the records the approval
        // prepared (no pointer names them).
        let keep = checkpoint_files(&m);
        let (gone, kept_because) =
            discard_stopped(lake, &m, &keep, Holder::Stopped, |_| true).await?;
        removed += gone;
        if let Some((ds_name, why)) = kept_because.into_iter().next() {
            return Err(Error::ChangedDuringRecovery {
                run_id: m.run_id.clone(),
                detail: format!("{ds_name}: {why}"),
            });
        }
        kept = keep.len() as u64;
        evidence.push(format!(
            "an approval stopped before publishing anything; removed {removed} prepared \
             record(s), kept the {kept} staged file(s) held for review"
        ));
    }
    if decision == Decision::BackToShadow {
        // The shadow's own records and files stay; only the records the promotion prepared to
        // rebase onto a moved pointer go (no pointer names them).
        let shadow = m.shadow.clone().unwrap_or_else(|| runs::ShadowInfo {
            name: String::new(),
            versions: BTreeMap::new(),
            bases: BTreeMap::new(),
        });
        for (ds_name, v) in &m.prepared {
            if shadow.versions.get(ds_name) != Some(v) {
                lake.dataset(ds_name)?.discard_record(*v, &m.run_id).await?;
                removed += 1;
            }
        }
        evidence.push(format!(
            "a promotion stopped before publishing anything; removed {removed} record(s) it              prepared, the shadow's versions stay"
        ));
    }
    crash::point("during-recovery");
    let (to, action) = match &decision {
        Decision::BackToShadow => (
            RunState::Shadowed,
            format!(
                "a promotion stopped before publishing; back to SHADOWED: `strata promote {}` \
                 again",
                m.shadow.as_ref().map_or("NAME", |s| s.name.as_str())
            ),
        ),
        Decision::Shadowed => (
            RunState::Shadowed,
            "its shadow ref was created before it stopped; marked SHADOWED".to_string(),
        ),
        Decision::BackToReview => (
            RunState::AwaitingReview,
            format!(
                "an approval stopped before publishing; back to AWAITING_REVIEW: `strata approve \
                 {}` or `strata reject {}`",
                m.run_id, m.run_id
            ),
        ),
        Decision::Published => (RunState::Published, "published; marked PUBLISHED".to_string()),
        Decision::Failed => (
            RunState::Failed,
            "nothing was published; staging cleaned, marked FAILED (safe to run again)".into(),
        ),
        Decision::Unknown(why) => (RunState::Unknown, format!("{why}; marked UNKNOWN")),
        Decision::RollForward(_) => unreachable!("settled above"),
    };
    let run_id = m.run_id.clone();
    if to != from || to == RunState::Unknown {
        let mut log = RunLog::resume(lake, m);
        let ev = evidence.clone();
        let published = flipped.clone();
        let why = match &decision {
            Decision::Failed => Some(format!("the run stopped in state {from}; recovered")),
            Decision::BackToReview => {
                let review: Vec<String> = log
                    .manifest()
                    .findings
                    .iter()
                    .filter(|f| f.severity == strata_publish::model::Severity::ManualReview)
                    .map(|f| format!("{} {}: {}", f.dataset, f.source, f.detail))
                    .collect();
                Some(format!(
                    "held for review: {}; an approval stopped in state {from} before publishing \
                     anything (recovered)",
                    review.join("; ")
                ))
            }
            Decision::Unknown(w) => Some(w.clone()),
            _ => None,
        };
        let recovery = Recovery { by: ctx.run_id().to_string(), from, evidence: ev };
        let update = |m: &mut RunManifest| {
            m.recovery = Some(recovery.clone());
            if to == RunState::Failed {
                m.checkpoints = reusable(&m.checkpoints, &published).cloned().collect();
            }
            if to == RunState::AwaitingReview {
                m.prepared.clear();
            }
            if to == RunState::Shadowed {
                match m.shadow.clone() {
                    // A promotion that did not start: the run is the shadow it was.
                    Some(shadow) => {
                        m.bases = shadow.bases.clone();
                        m.prepared = shadow.versions.clone();
                        m.promotion = None;
                    }
                    None => {
                        let name = match &m.params.backfill {
                            strata_medallion::types::Backfill::Shadow { name } => name.clone(),
                            _ => String::new(),
                        };
                        m.shadow = Some(runs::ShadowInfo {
                            name,
                            versions: m.prepared.clone(),
                            bases: m.bases.clone(),
                        });
                        m.checkpoints.clear();
                    }
                }
            }
            m.published = published;
            if to != RunState::Published {
                m.error = why.clone();
            }
        };
        if to == from {
            // Still UNKNOWN: the evidence is recorded again only if it changed.
            if log.manifest().error != why {
                log.record(ctx.now(), update).await?;
            }
        } else {
            log.advance(to, ctx.now(), update).await?;
        }
    }
    Ok(Recovered { run_id, from, to, action, evidence, removed, kept })
}

/// The checkpoints a rerun may adopt: those on datasets the run never made current.
fn reusable<'a>(
    checkpoints: &'a [runs::StagedCheckpoint],
    flipped: &'a BTreeMap<String, u64>,
) -> impl Iterator<Item = &'a runs::StagedCheckpoint> {
    checkpoints.iter().filter(|c| !flipped.contains_key(&c.dataset))
}

#[cfg(test)]
mod tests {
    use super::*;
    use RunState::*;

    fn view(prepared: Option<u64>, flipped: Option<u64>, head: (u64, u64, &str)) -> DatasetView {
        DatasetView {
            prepared,
            flipped,
            head: Some((head.0, head.1, head.2.to_string())),
            publish_seq: prepared.map(|_| head.0 + 1),
        }
    }

    fn views(items: Vec<(&str, DatasetView)>) -> BTreeMap<String, DatasetView> {
        items.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    #[test]
    fn recovery_settles_stopped_runs_and_unfinished_rejections_only() {
        let m = |state: RunState, cleanup: bool| RunManifest {
            state,
            cleanup,
            ..RunManifest::planned("r", "full", Default::default())
        };
        for state in [Planned, InputLocked, Running, Validating, Committing, Unknown] {
            assert!(recoverable(&m(state, false)), "{state}");
        }
        for state in [AwaitingReview, Published, Failed] {
            assert!(!recoverable(&m(state, false)), "{state}");
        }
        assert!(recoverable(&m(Failed, true)));
    }

    #[test]
    fn decision_table() {
        // Nothing flipped: FAILED whatever the state.
        let none = views(vec![
            ("a", view(Some(3), None, (2, 2, "x"))),
            ("b", view(Some(5), None, (4, 4, "x"))),
        ]);
        for st in [Planned, InputLocked, Running, Validating, Committing, Unknown] {
            assert_eq!(
                decide(st, Commit::Flips { held: false }, "r", &none),
                Decision::Failed,
                "{st}"
            );
        }
        // Nothing flipped of a held run an approval claimed: back to review.
        for st in [Committing, Unknown] {
            assert_eq!(
                decide(st, Commit::Flips { held: true }, "r", &none),
                Decision::BackToReview,
                "{st}"
            );
        }
        // Everything flipped: PUBLISHED, even if a pointer moved afterwards.
        let all = views(vec![
            ("a", view(Some(3), Some(3), (3, 3, "r"))),
            ("b", view(Some(5), Some(5), (9, 1, "x"))),
        ]);
        assert_eq!(
            decide(Committing, Commit::Flips { held: false }, "r", &all),
            Decision::Published
        );
        // Half flipped, the flipped one still current, the other unmoved: roll forward.
        let mut half = views(vec![
            ("a", view(Some(3), Some(3), (3, 3, "r"))),
            ("b", view(Some(5), None, (4, 4, "x"))),
        ]);
        assert_eq!(
            decide(Unknown, Commit::Flips { held: false }, "r", &half),
            Decision::RollForward(vec!["b".into()])
        );
        // A flip where the state machine never flips.
        assert!(matches!(
            decide(Running, Commit::Flips { held: false }, "r", &half),
            Decision::Unknown(_)
        ));
        // The other's pointer moved since it was prepared.
        half.get_mut("b").unwrap().head = Some((5, 6, "y".into()));
        let Decision::Unknown(why) = decide(Committing, Commit::Flips { held: false }, "r", &half)
        else {
            panic!()
        };
        assert!(why.contains("b moved since the run prepared it"), "{why}");
        assert!(why.contains("visible now: a v3; not visible: b"), "{why}");
        // The record of the unflipped version is gone.
        half.get_mut("b").unwrap().head = Some((4, 4, "x".into()));
        half.get_mut("b").unwrap().publish_seq = None;
        assert!(matches!(
            decide(Committing, Commit::Flips { held: false }, "r", &half),
            Decision::Unknown(_)
        ));
    }

    #[test]
    fn shadow_commits_and_promotions_settle_back_to_the_shadow() {
        let none = views(vec![
            ("a", view(Some(3), None, (2, 2, "x"))),
            ("b", view(Some(5), None, (4, 4, "x"))),
        ]);
        // A shadow run stopped around its ref: the ref decides.
        for st in [Committing, Unknown] {
            assert_eq!(
                decide(st, Commit::ShadowRef { made: true }, "r", &none),
                Decision::Shadowed,
                "{st}"
            );
            assert_eq!(decide(st, Commit::ShadowRef { made: false }, "r", &none), Decision::Failed);
            // A promotion that flipped nothing goes back to the shadow, never to FAILED.
            assert_eq!(decide(st, Commit::Promotion, "r", &none), Decision::BackToShadow);
        }
        // A shadow run never flips: a flip by it is for a person.
        let flipped = views(vec![("a", view(Some(3), Some(3), (3, 3, "r")))]);
        assert!(matches!(
            decide(Committing, Commit::ShadowRef { made: true }, "r", &flipped),
            Decision::Unknown(_)
        ));
        // A promotion half flipped rolls forward like any commit.
        let half = views(vec![
            ("a", view(Some(3), Some(3), (3, 3, "r"))),
            ("b", view(Some(5), None, (4, 4, "x"))),
        ]);
        assert_eq!(
            decide(Committing, Commit::Promotion, "r", &half),
            Decision::RollForward(vec!["b".into()])
        );
        // Rolled back since, the rest stuck: UNKNOWN, not FAILED, so the shadow is never removed.
        let rolled_back = views(vec![
            ("a", view(Some(3), Some(3), (4, 1, "x"))),
            ("b", view(Some(5), None, (5, 6, "y"))),
        ]);
        assert!(matches!(
            decide(Committing, Commit::Promotion, "r", &rolled_back),
            Decision::Unknown(_)
        ));
        assert_eq!(
            decide(Committing, Commit::Flips { held: false }, "r", &rolled_back),
            Decision::Failed
        );
        // What a manifest commits.
        let mut m = RunManifest::planned("r", "full", Default::default());
        assert_eq!(Commit::of(&m, false), Commit::Flips { held: false });
        m.params.backfill = strata_medallion::types::Backfill::Shadow { name: "s".into() };
        assert_eq!(Commit::of(&m, true), Commit::ShadowRef { made: true });
        m.promotion =
            Some(runs::Promotion { by: "p".into(), at: chrono::Utc::now(), reason: None });
        assert_eq!(Commit::of(&m, true), Commit::Promotion);
    }

    #[test]
    fn a_flipped_dataset_that_was_rolled_back_stops_the_roll_forward() {
        // orders was published by the run, then rolled back to version 1 by an operator; the
        // model computed from the run's orders must not be published on top of version 1.
        let rolled_back = views(vec![
            ("orders", view(Some(2), Some(2), (3, 1, "first"))),
            ("daily_revenue", view(Some(2), None, (1, 1, "first"))),
        ]);
        assert_eq!(
            decide(Committing, Commit::Flips { held: false }, "r", &rolled_back),
            Decision::Failed
        );
        // The same, with a third dataset of the run still current: a person must decide.
        let mut partly = rolled_back.clone();
        partly.insert("customers".into(), view(Some(4), Some(4), (4, 4, "r")));
        let Decision::Unknown(why) =
            decide(Committing, Commit::Flips { held: false }, "r", &partly)
        else {
            panic!()
        };
        assert!(why.contains("orders moved after the run published it"), "{why}");
        assert!(
            why.contains("visible now: customers v4; not visible: daily_revenue, orders"),
            "{why}"
        );
    }
}
