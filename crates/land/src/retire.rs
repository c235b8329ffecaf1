//! Retiring a landed batch: `strata retire <source> <batch> --reason TEXT` takes a batch out of
//! every later input boundary (a file withdrawn by its sender, a delivery sent twice under two
//! names), and `strata unretire` puts it back. Raw data stays immutable: the batch's files are
//! kept, and the action is an entry of the source's retirement log,
//! `_raw/<source>/_retired/<seq>.json`, with who, when and why.
//!
//! The log is a gap-free numbered log ([`strata_publish::numbered`]): entries are created with
//! create-if-absent, one after another, and never changed, so concurrent retirements never lose
//! one another, and the log is the whole history. [`in_force`] folds it (pure).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use strata_publish::numbered::{Naming, NumberedLog};
use strata_publish::Lake;

use crate::error::{Error, Result};
use crate::layout::source_prefix;

/// `format` of a retirement log entry.
pub const RETIRE_FORMAT: &str = "strata.retired.v1";

/// How many entries one action tries before giving up (each failure is another action that took
/// the entry).
const APPEND_ATTEMPTS: u32 = 1000;

fn log(source: &str) -> NumberedLog {
    NumberedLog::new(format!("{}/_retired", source_prefix(source)), Naming::Exact { width: 20 })
}

/// What an entry does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetireAction {
    Retire,
    Unretire,
}

/// One entry of a source's retirement log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetireEntry {
    pub format: String,
    pub seq: u64,
    pub action: RetireAction,
    pub batch_id: String,
    /// The input the batch was landed from.
    pub input: String,
    pub reason: String,
    /// Who did it (`user@host`).
    pub by: String,
    pub at: DateTime<Utc>,
}

/// The batches retired now, each with the entry that retired it: the last entry of each batch
/// wins (pure).
pub fn in_force(entries: &[RetireEntry]) -> BTreeMap<String, RetireEntry> {
    let mut out = BTreeMap::new();
    for e in entries {
        match e.action {
            RetireAction::Retire => {
                out.insert(e.batch_id.clone(), e.clone());
            }
            RetireAction::Unretire => {
                out.remove(&e.batch_id);
            }
        }
    }
    out
}

/// Every entry of the source's retirement log, in order.
pub async fn entries(lake: &Lake, source: &str) -> Result<Vec<RetireEntry>> {
    let log = log(source);
    let last = log.last(lake, 0).await?;
    let mut out = Vec::new();
    for seq in 1..=last {
        let corrupt = |detail: &str| Error::Corrupt {
            path: log.path(seq).to_string(),
            detail: format!("{detail}; strata never rewrites it"),
        };
        let Some(bytes) = log.read(lake, seq).await? else {
            return Err(corrupt("the entry is missing while later ones exist"));
        };
        match serde_json::from_slice::<RetireEntry>(&bytes) {
            Ok(e) if e.format == RETIRE_FORMAT && e.seq == seq => out.push(e),
            _ => return Err(corrupt("it is not a retirement log entry")),
        }
    }
    Ok(out)
}

/// The batches of `source` retired now.
pub async fn retired(lake: &Lake, source: &str) -> Result<BTreeMap<String, RetireEntry>> {
    Ok(in_force(&entries(lake, source).await?))
}

/// What [`record`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// The entry was appended.
    Done(RetireEntry),
    /// The batch already was in that state (retired, or not retired): nothing was written.
    /// Holds the entry in force, if any.
    Already(Option<RetireEntry>),
}

/// What an action is about: a batch and the input it was landed from.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    pub source: &'a str,
    pub batch_id: &'a str,
    pub input: &'a str,
}

/// Appends `action` for a batch to its source's log, unless the batch already is in that state.
pub async fn record(
    lake: &Lake,
    target: Target<'_>,
    action: RetireAction,
    reason: &str,
    by: &str,
    at: DateTime<Utc>,
) -> Result<Recorded> {
    let log = log(target.source);
    for _ in 0..APPEND_ATTEMPTS {
        let all = entries(lake, target.source).await?;
        let current = in_force(&all).remove(target.batch_id);
        match (action, &current) {
            (RetireAction::Retire, Some(_)) | (RetireAction::Unretire, None) => {
                return Ok(Recorded::Already(current));
            }
            _ => {}
        }
        let seq = all.len() as u64 + 1;
        let entry = RetireEntry {
            format: RETIRE_FORMAT.into(),
            seq,
            action,
            batch_id: target.batch_id.to_string(),
            input: target.input.to_string(),
            reason: reason.to_string(),
            by: by.to_string(),
            at,
        };
        let body = serde_json::to_vec_pretty(&entry)
            .map_err(|source| Error::Serialize { path: log.path(seq).to_string(), source })?;
        strata_publish::crash::point("before-retire-entry");
        if log.create(lake, seq, body).await? {
            strata_publish::crash::point("after-retire-entry");
            return Ok(Recorded::Done(entry));
        }
        // Another action took the entry: read the log again and decide again.
    }
    Err(Error::RetireContended { raw_source: target.source.to_string(), attempts: APPEND_ATTEMPTS })
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_publish::OpenMode;

    fn entry(seq: u64, action: RetireAction, batch: &str) -> RetireEntry {
        RetireEntry {
            format: RETIRE_FORMAT.into(),
            seq,
            action,
            batch_id: batch.into(),
            input: format!("{batch}.csv"),
            reason: "test".into(),
            by: "me@here".into(),
            at: DateTime::<Utc>::default(),
        }
    }

    #[test]
    fn the_last_entry_of_a_batch_is_in_force() {
        use RetireAction::*;
        let log = [entry(1, Retire, "a"), entry(2, Retire, "b"), entry(3, Unretire, "a")];
        let now = in_force(&log);
        assert_eq!(now.keys().collect::<Vec<_>>(), ["b"]);
        let log = [entry(1, Retire, "a"), entry(2, Unretire, "a"), entry(3, Retire, "a")];
        assert_eq!(in_force(&log)["a"].seq, 3);
    }

    #[tokio::test]
    async fn actions_append_once_and_repeat_as_no_ops() {
        let lake = Lake::open("memory://", OpenMode::Create).unwrap();
        let t = Target { source: "orders", batch_id: "abc", input: "a.csv" };
        let at = DateTime::<Utc>::default();
        let r =
            record(&lake, t.clone(), RetireAction::Retire, "withdrawn", "me", at).await.unwrap();
        assert!(matches!(r, Recorded::Done(ref e) if e.seq == 1));
        let again = record(&lake, t.clone(), RetireAction::Retire, "x", "me", at).await.unwrap();
        assert!(matches!(again, Recorded::Already(Some(ref e)) if e.reason == "withdrawn"));
        assert_eq!(retired(&lake, "orders").await.unwrap().len(), 1);
        let back = record(&lake, t.clone(), RetireAction::Unretire, "ok", "me", at).await.unwrap();
        assert!(matches!(back, Recorded::Done(ref e) if e.seq == 2));
        assert!(retired(&lake, "orders").await.unwrap().is_empty());
        let no = record(&lake, t, RetireAction::Unretire, "ok", "me", at).await.unwrap();
        assert_eq!(no, Recorded::Already(None));
        assert_eq!(entries(&lake, "orders").await.unwrap().len(), 2, "the history is kept");
    }
}
