//! The run state machine: pure code, no IO.
//!
//! ```text
//! PLANNED -> INPUT_LOCKED -> RUNNING -> VALIDATING -> COMMITTING -> PUBLISHED
//!    |            |             |           |   \         |   \
//!    +------------+-------------+-----------+----\--------+--> FAILED
//!                                                 \        \-> UNKNOWN -> PUBLISHED | FAILED
//!                                                  AWAITING_REVIEW -> COMMITTING | FAILED
//! ```
//!
//! And back: COMMITTING or UNKNOWN -> AWAITING_REVIEW when an approval stopped before any flip.
//!
//! Backfill modes that publish nothing to the pointers:
//!
//! ```text
//! VALIDATING -> DISCARDED                      dry-run, compare-only: computed, validated, kept nothing
//! COMMITTING -> SHADOWED                       shadow: published to a shadow ref
//! SHADOWED -> COMMITTING -> PUBLISHED          strata promote (back to SHADOWED if it stopped
//!                                              before any flip)
//! SHADOWED -> FAILED                           strata drop-shadow
//! ```
//!
//! AWAITING_REVIEW holds a run whose output is staged and validated but needs a person
//! (a MANUAL_REVIEW quality gate): `strata approve` commits it, `strata reject` fails it.
//!
//! A state is recorded durably before the work it announces begins. `UNKNOWN` is entered when a
//! commit was attempted and the store never said whether it landed; only recovery, which inspects
//! durable state, leaves it.

use serde::{Deserialize, Serialize};

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunState {
    /// Parameters known; input boundary not fixed yet.
    Planned,
    /// The exact raw batches (and their sha256s) the run reads are fixed.
    InputLocked,
    /// Transforms are executing and writing to staging.
    Running,
    /// Output is staged; quality gates and reconciliation run.
    Validating,
    /// Output is staged and held for a person: approve commits it, reject discards it.
    AwaitingReview,
    /// Output is being published (pointer flips).
    Committing,
    /// Consumers may read the output.
    Published,
    /// Nothing of the run may be consumed; safe to run again.
    Failed,
    /// A commit may or may not have landed; recovery decides from durable state.
    Unknown,
    /// Published to a shadow ref, not to the pointers: `strata promote` makes it current,
    /// `strata drop-shadow` discards it.
    Shadowed,
    /// Computed and validated, and nothing kept by design (`--mode dry-run`, `compare-only`).
    Discarded,
}

impl RunState {
    pub const ALL: [RunState; 11] = [
        RunState::Planned,
        RunState::InputLocked,
        RunState::Running,
        RunState::Validating,
        RunState::AwaitingReview,
        RunState::Committing,
        RunState::Published,
        RunState::Failed,
        RunState::Unknown,
        RunState::Shadowed,
        RunState::Discarded,
    ];

    /// Whether no transition leaves this state.
    pub fn is_terminal(self) -> bool {
        matches!(self, RunState::Published | RunState::Failed | RunState::Discarded)
    }

    /// The name as manifests and `strata runs` show it.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Planned => "PLANNED",
            RunState::InputLocked => "INPUT_LOCKED",
            RunState::Running => "RUNNING",
            RunState::Validating => "VALIDATING",
            RunState::AwaitingReview => "AWAITING_REVIEW",
            RunState::Committing => "COMMITTING",
            RunState::Published => "PUBLISHED",
            RunState::Failed => "FAILED",
            RunState::Unknown => "UNKNOWN",
            RunState::Shadowed => "SHADOWED",
            RunState::Discarded => "DISCARDED",
        }
    }
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RunState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunState::ALL.into_iter().find(|st| st.as_str().eq_ignore_ascii_case(s)).ok_or_else(|| {
            format!(
                "{s:?} is not a run state; use one of {}",
                RunState::ALL.map(RunState::as_str).join(", ")
            )
        })
    }
}

/// A transition the state machine does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a run cannot go from {from} to {to}")]
pub struct InvalidTransition {
    pub from: RunState,
    pub to: RunState,
}

/// The only function that moves a run: `to` if the machine allows `from -> to`.
pub fn transition(from: RunState, to: RunState) -> Result<RunState, InvalidTransition> {
    use RunState::*;
    let allowed = match from {
        Planned => matches!(to, InputLocked | Failed),
        InputLocked => matches!(to, Running | Failed),
        Running => matches!(to, Validating | Failed),
        Validating => matches!(to, Committing | AwaitingReview | Failed | Discarded),
        AwaitingReview => matches!(to, Committing | Failed),
        // Back to review (or to the shadow): an approval (a promotion) stopped before its first
        // flip (recovery decides).
        Committing => matches!(to, Published | Failed | Unknown | AwaitingReview | Shadowed),
        Unknown => matches!(to, Published | Failed | AwaitingReview | Shadowed),
        Shadowed => matches!(to, Committing | Failed),
        Published | Failed | Discarded => false,
    };
    if allowed {
        Ok(to)
    } else {
        Err(InvalidTransition { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::RunState::*;
    use super::*;

    #[test]
    fn exactly_the_documented_transitions_are_allowed() {
        let allowed = [
            (Planned, InputLocked),
            (Planned, Failed),
            (InputLocked, Running),
            (InputLocked, Failed),
            (Running, Validating),
            (Running, Failed),
            (Validating, Committing),
            (Validating, AwaitingReview),
            (Validating, Failed),
            (Validating, Discarded),
            (AwaitingReview, Committing),
            (AwaitingReview, Failed),
            (Committing, Published),
            (Committing, Failed),
            (Committing, Unknown),
            (Committing, AwaitingReview),
            (Committing, Shadowed),
            (Shadowed, Committing),
            (Shadowed, Failed),
            (Unknown, Shadowed),
            (Unknown, Published),
            (Unknown, Failed),
            (Unknown, AwaitingReview),
        ];
        for from in RunState::ALL {
            for to in RunState::ALL {
                let ok = transition(from, to).is_ok();
                assert_eq!(ok, allowed.contains(&(from, to)), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn terminal_states_stay_put_and_every_state_can_reach_one() {
        for st in RunState::ALL {
            if st.is_terminal() {
                assert!(RunState::ALL.iter().all(|to| transition(st, *to).is_err()), "{st}");
            } else {
                // Every state reachable from a non-terminal one can still reach a terminal one.
                let mut seen = vec![st];
                let mut i = 0;
                while i < seen.len() {
                    for to in RunState::ALL {
                        if transition(seen[i], to).is_ok() && !seen.contains(&to) {
                            seen.push(to);
                        }
                    }
                    i += 1;
                }
                assert!(seen.iter().any(|s| s.is_terminal()), "{st} never reaches an end");
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for st in RunState::ALL {
            assert_eq!(st.as_str().parse::<RunState>().unwrap(), st);
            let json = serde_json::to_string(&st).unwrap();
            assert_eq!(json, format!("\"{}\"", st.as_str()));
        }
        assert!("running".parse::<RunState>().is_ok());
        assert!("DONE".parse::<RunState>().unwrap_err().contains("INPUT_LOCKED"));
    }
}
