//! Recovery: settling runs that stopped (crashed, killed, lost their store) before a terminal
//! state, from durable state alone: the run's log, its staged files, the pointers and their
//! history. Never from memory, so it is correct after `kill -9`.
//!
//! | latest state | pointer shows | decision |
//! |---|---|---|
//! | any | no flip by the run | staging removed (finished stages' checkpoints kept for a rerun), **FAILED** |
//! | COMMITTING / UNKNOWN | a flip by the run on every prepared dataset | **PUBLISHED** |
//! | COMMITTING / UNKNOWN | flips on some datasets; the others' pointers unmoved | the remaining prepared versions are flipped (roll forward), **PUBLISHED** |
//! | COMMITTING / UNKNOWN | flips on some; another pointer moved since | **UNKNOWN**, with the evidence |
//!
//! A run whose lock is live (its process is running, or its lease has not expired) is left alone.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::context::RunContext;
use crate::crash;
use crate::error::{Error, Result};
use crate::lake::Lake;
use crate::locks::{self, Clock};
use crate::run_state::RunState;
use crate::runs::{self, RunLog, RunManifest};

/// What recovery decides for one run, before acting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Every prepared dataset was flipped by the run.
    Published,
    /// Nothing of the run is visible.
    Failed,
    /// Some datasets were flipped; these were prepared and not yet.
    RollForward(Vec<String>),
    /// The pointers show something the state machine cannot explain.
    Unknown(String),
}

/// The decision table (pure): from the run's latest state, the versions it prepared and the
/// versions its flips published.
pub fn decide(
    state: RunState,
    prepared: &BTreeMap<String, u64>,
    flipped: &BTreeMap<String, u64>,
) -> Decision {
    if flipped.is_empty() {
        return Decision::Failed;
    }
    if !matches!(state, RunState::Committing | RunState::Unknown) {
        return Decision::Unknown(format!(
            "the run is {state}, which never flips a pointer, yet flips by it exist on {}",
            flipped.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    let missing: Vec<String> =
        prepared.keys().filter(|d| !flipped.contains_key(*d)).cloned().collect();
    if missing.is_empty() {
        Decision::Published
    } else {
        Decision::RollForward(missing)
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

/// A run recovery left alone because it is still running.
#[derive(Debug, Clone, Serialize)]
pub struct LiveRun {
    pub run_id: String,
    pub state: RunState,
    pub holder: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RecoveryReport {
    pub recovered: Vec<Recovered>,
    pub live: Vec<LiveRun>,
    /// Stale locks removed (left by processes that died).
    pub stale_locks_removed: Vec<String>,
}

/// Recovers every run that stopped before a terminal state (or only `only`).
pub async fn recover(
    lake: &Lake,
    only: Option<&str>,
    ctx: &RunContext,
    clock: Clock,
) -> Result<RecoveryReport> {
    let candidates: Vec<RunManifest> = match only {
        Some(id) => {
            let latest = runs::run_log(lake, id).await?.pop().expect("run_log is never empty");
            if latest.state == RunState::AwaitingReview {
                return Err(Error::Usage(format!(
                    "run {id} is AWAITING_REVIEW: its output is held for a person; `strata approve \
                     {id}` publishes it, `strata reject {id}` discards it"
                )));
            }
            if latest.state.is_terminal() {
                return Err(Error::Usage(format!(
                    "run {id} is already {}; there is nothing to recover (`strata show-run {id}` \
                     shows it)",
                    latest.state
                )));
            }
            vec![latest]
        }
        // A run awaiting review is not stopped: it waits for `strata approve` or `strata reject`.
        None => runs::open_runs(lake)
            .await?
            .into_iter()
            .filter(|m| !m.state.is_terminal() && m.state != RunState::AwaitingReview)
            .collect(),
    };
    let mut report = RecoveryReport::default();
    for m in candidates {
        if let Some(holder) =
            locks::live_lock_of(lake, &m.run_id, &m.output_boundary, clock()).await?
        {
            if only.is_some() {
                return Err(Error::Usage(format!(
                    "run {} is still running (pid {} on {}, lease until {}); wait for it, or stop \
                     that process and run `strata recover` again",
                    m.run_id, holder.pid, holder.host, holder.expires_at
                )));
            }
            report.live.push(LiveRun {
                run_id: m.run_id.clone(),
                state: m.state,
                holder: format!("pid {} on {}", holder.pid, holder.host),
            });
            continue;
        }
        report.recovered.push(recover_run(lake, m, ctx).await?);
    }
    if only.is_none() {
        report.stale_locks_removed = locks::sweep_stale(lake, clock).await?;
    }
    Ok(report)
}

async fn recover_run(lake: &Lake, m: RunManifest, ctx: &RunContext) -> Result<Recovered> {
    let from = m.state;
    let mut evidence = Vec::new();
    let mut flipped: BTreeMap<String, u64> = BTreeMap::new();
    for ds_name in m.output_boundary.keys() {
        let ds = lake.dataset(ds_name)?;
        let after = m.bases.get(ds_name).map_or(0, |b| b.seq);
        let flips = ds.flips_by(&m.run_id, after).await?;
        match flips.last() {
            Some(f) => {
                evidence.push(format!(
                    "{ds_name}: pointer #{} publishes version {} of this run",
                    f.seq, f.to
                ));
                flipped.insert(ds_name.clone(), f.to);
            }
            None => evidence.push(format!("{ds_name}: no pointer entry of this run")),
        }
    }
    let mut decision = decide(from, &m.prepared, &flipped);
    if let Decision::RollForward(missing) = &decision {
        let mut stuck = Vec::new();
        for ds_name in missing {
            let ds = lake.dataset(ds_name)?;
            let v = m.prepared[ds_name];
            match ds.flip_record(v, ctx).await? {
                Some(p) => {
                    evidence.push(format!(
                        "{ds_name}: rolled forward, pointer #{} publishes prepared version {v}",
                        p.flip.seq
                    ));
                    flipped.insert(ds_name.clone(), v);
                }
                None => stuck.push(format!(
                    "{ds_name}: prepared version {v} can no longer be published as prepared (its \
                     pointer moved, or the record is gone)"
                )),
            }
        }
        decision = if stuck.is_empty() {
            Decision::Published
        } else {
            evidence.extend(stuck);
            Decision::Unknown(
                "the run is partly published and the rest cannot be rolled forward".into(),
            )
        };
    }
    let (mut removed, mut kept) = (0u64, 0u64);
    if decision == Decision::Failed {
        let keep: BTreeSet<String> =
            m.checkpoints.iter().flat_map(|c| c.files().map(str::to_string)).collect();
        for ds_name in m.output_boundary.keys() {
            let ds = lake.dataset(ds_name)?;
            // Re-check right before deleting: never remove what a flip made visible.
            let after = m.bases.get(ds_name).map_or(0, |b| b.seq);
            if !ds.flips_by(&m.run_id, after).await?.is_empty() {
                return Err(Error::Usage(format!(
                    "run {} published {ds_name} while being recovered; run `strata recover --run \
                     {}` again",
                    m.run_id, m.run_id
                )));
            }
            let above = m.bases.get(ds_name).map_or(0, |b| b.max_version);
            removed += ds.discard_run(&m.run_id, above, &keep).await?.len() as u64;
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
    }
    crash::point("during-recovery");
    let (to, action) = match &decision {
        Decision::Published => (RunState::Published, "published; marked PUBLISHED".to_string()),
        Decision::Failed => (
            RunState::Failed,
            "nothing was published; staging cleaned, marked FAILED (safe to run again)".into(),
        ),
        Decision::Unknown(why) => (RunState::Unknown, format!("{why}; marked UNKNOWN")),
        Decision::RollForward(_) => unreachable!("settled above"),
    };
    let run_id = m.run_id.clone();
    let boundary = m.output_boundary.clone();
    if to != from {
        let mut log = RunLog::resume(lake, m);
        let ev = evidence.clone();
        let published = flipped.clone();
        let why = match &decision {
            Decision::Failed => Some(format!("the run stopped in state {from}; recovered")),
            Decision::Unknown(w) => Some(w.clone()),
            _ => None,
        };
        log.advance(to, ctx.now(), |m| {
            m.recovery = Some(serde_json::json!({
                "by": ctx.run_id(), "from": from, "evidence": ev,
            }));
            if to == RunState::Published {
                m.published = published;
            }
            if to == RunState::Failed {
                m.error = why.clone();
                m.checkpoints.retain(|_| kept > 0);
            }
            if to == RunState::Unknown {
                m.error = why.clone();
            }
        })
        .await?;
    }
    if to != RunState::Unknown {
        locks::release_run(lake, &run_id, &boundary).await;
    }
    Ok(Recovered { run_id, from, to, action, evidence, removed, kept })
}

#[cfg(test)]
mod tests {
    use super::*;
    use RunState::*;

    fn map(items: &[(&str, u64)]) -> BTreeMap<String, u64> {
        items.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn decision_table() {
        let prepared = map(&[("a", 3), ("b", 5)]);
        for st in [Planned, InputLocked, Running, Validating, Committing, Unknown] {
            assert_eq!(decide(st, &prepared, &map(&[])), Decision::Failed, "{st}");
        }
        assert_eq!(decide(Committing, &prepared, &map(&[("a", 3), ("b", 5)])), Decision::Published);
        assert_eq!(decide(Unknown, &prepared, &map(&[("a", 3), ("b", 6)])), Decision::Published);
        assert_eq!(
            decide(Committing, &prepared, &map(&[("a", 3)])),
            Decision::RollForward(vec!["b".into()])
        );
        assert!(matches!(decide(Running, &prepared, &map(&[("a", 3)])), Decision::Unknown(_)));
    }
}
