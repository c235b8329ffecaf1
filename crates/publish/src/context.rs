//! The run context: the only source of time and identity for a run.
//!
//! Nothing below the binary reads the wall clock or a random number generator. The binary
//! builds a [`RunContext`] once, at the edge, and passes it in; tests build one with fixed
//! values, so the same inputs and parameters give the same records.

use chrono::{DateTime, SecondsFormat, Utc};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Identity and time of one run (a publish, a rollback, a pipeline run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunContext {
    run_id: String,
    now: DateTime<Utc>,
}

impl RunContext {
    /// A context with an explicit run id and time. The run id becomes a path segment
    /// (`run_id=<id>`), so it is restricted to ASCII letters, digits, `-`, `_` and `.`.
    pub fn new(run_id: impl Into<String>, now: DateTime<Utc>) -> Result<Self> {
        let run_id = run_id.into();
        let ok = !run_id.is_empty()
            && run_id.len() <= 100
            && !run_id.contains("..")
            && run_id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && run_id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
        if !ok {
            return Err(Error::InvalidName {
                what: "run id",
                value: run_id,
                reason: "use 1 to 100 ASCII letters, digits, '-', '_' or '.', starting with a \
                         letter or digit"
                    .into(),
            });
        }
        Ok(RunContext { run_id, now })
    }

    /// A fresh run id for `now`: the UTC time to the millisecond, then 8 hex digits derived from
    /// `entropy` (the caller passes process id, a counter, clock nanoseconds…). Ids sort by time.
    pub fn generate(now: DateTime<Utc>, entropy: &[u8]) -> Self {
        let digest = Sha256::digest(entropy);
        let run_id = format!("{}-{}", now.format("%Y%m%dT%H%M%S%3fZ"), hex::encode(&digest[..4]));
        RunContext { run_id, now }
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The run's notion of "now". Every timestamp strata records for this run is this value.
    pub fn now(&self) -> DateTime<Utc> {
        self.now
    }

    /// `now` as RFC 3339 with milliseconds.
    pub fn now_rfc3339(&self) -> String {
        self.now.to_rfc3339_opts(SecondsFormat::Millis, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn generated_ids_are_valid_and_sort_by_time() {
        let t1 = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        let t2 = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 6).unwrap();
        let a = RunContext::generate(t1, b"x");
        let b = RunContext::generate(t2, b"a");
        assert!(a.run_id() < b.run_id());
        assert_eq!(a.run_id(), RunContext::generate(t1, b"x").run_id(), "deterministic");
        assert!(RunContext::new(a.run_id(), t1).is_ok());
        assert!(a.run_id().starts_with("20260102T030405000Z-"));
    }

    #[test]
    fn rejects_unsafe_run_ids() {
        let t = Utc.timestamp_opt(0, 0).unwrap();
        for bad in ["", "../x", "a/b", "a b", "-x", "a..b"] {
            assert!(RunContext::new(bad, t).is_err(), "{bad:?}");
        }
    }
}
