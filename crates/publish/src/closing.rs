//! Closed periods: a dataset's partitions up to a date certified (reported, submitted) and not
//! to change again except by a recorded restatement.
//!
//! ```text
//! <dataset>/_strata/closings/<seq, 20 digits>.json   one entry per `strata close`, never changed
//! ```
//!
//! The effective closing is the entry with the latest `through`. A partition is closed when its
//! date (the first `col=YYYY-MM-DD` or `col_month=YYYY-MM` segment of its key: a month counts
//! from its first day) is on or before it; a partition with no date in its key (a dataset not
//! partitioned by date) is closed as soon as anything is, since its rows may be of any date; a
//! partition whose date is null is not. A publish that *changes* a closed partition (its rows
//! differ: [`crate::protocol::same_content`]) is a restatement; recomputing it to the same rows
//! is not.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::model::PartitionEntry;
use crate::names::NULL_PARTITION;
use crate::protocol::same_content;

/// `format` of a closing entry.
pub const CLOSING_FORMAT: &str = "strata.closing.v1";

/// One `strata close`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Closing {
    pub format: String,
    pub seq: u64,
    pub dataset: String,
    /// Partitions dated on or before this are closed.
    pub through: NaiveDate,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who closed it (`user@host`).
    pub by: String,
    pub at: DateTime<Utc>,
}

impl Closing {
    /// `closed through D (by who at when: reason)`, for messages.
    pub fn describe(&self) -> String {
        let why = self.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
        format!(
            "closed through {} (closing #{} by {} at {}{why})",
            self.through,
            self.seq,
            self.by,
            self.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    }
}

/// The closing in force (pure): the one with the latest `through` (the later one of equals).
pub fn in_force(closings: &[Closing]) -> Option<&Closing> {
    closings.iter().max_by_key(|c| (c.through, c.seq))
}

/// The date of a partition key (pure): from its first segment whose value is a date
/// (`YYYY-MM-DD`) or a month (`YYYY-MM`, its first day). `Dated(None)` when that value is null;
/// `Undated` when no segment holds a date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyDate {
    Dated(Option<NaiveDate>),
    Undated,
}

pub fn key_date(key: &str) -> KeyDate {
    for seg in key.split('/').filter(|s| !s.is_empty()) {
        let Some((col, value)) = seg.split_once('=') else { continue };
        if value == NULL_PARTITION {
            // A null business date: only a date column's null counts.
            if col.contains("date") || col.ends_with("_month") {
                return KeyDate::Dated(None);
            }
            continue;
        }
        if let Ok(d) = NaiveDate::parse_from_str(value, "%Y-%m-%d") {
            return KeyDate::Dated(Some(d));
        }
        if let Ok(d) = NaiveDate::parse_from_str(&format!("{value}-01"), "%Y-%m-%d") {
            if value.len() == 7 {
                return KeyDate::Dated(Some(d));
            }
        }
    }
    KeyDate::Undated
}

/// Whether the partition `key` is closed by a closing `through` (pure).
pub fn is_closed(key: &str, through: NaiveDate) -> bool {
    match key_date(key) {
        KeyDate::Dated(Some(d)) => d <= through,
        KeyDate::Dated(None) => false,
        KeyDate::Undated => true,
    }
}

/// One closed partition a publish changes: its rows before and after, and the control totals'
/// sums on each side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestatedPartition {
    pub key: String,
    pub rows_before: u64,
    pub rows_after: u64,
    /// Column → exact sum before, as the partitions' control totals record them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sums_before: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sums_after: BTreeMap<String, String>,
}

/// The closed partitions among `touched` whose rows change (pure): `before` and `after` hold
/// (at least) the partitions with those keys in the current version and in the new one; a key
/// absent from `after` is dropped.
pub fn restated(
    through: NaiveDate,
    touched: &BTreeSet<String>,
    before: &[PartitionEntry],
    after: &[PartitionEntry],
) -> Vec<RestatedPartition> {
    let find = |parts: &[PartitionEntry], k: &str| parts.iter().find(|p| p.key == k).cloned();
    let sums = |p: &Option<PartitionEntry>| {
        p.as_ref().and_then(|p| p.totals.as_ref()).map(|t| t.sums.clone()).unwrap_or_default()
    };
    touched
        .iter()
        .filter(|k| is_closed(k, through))
        .filter_map(|k| {
            let (b, a) = (find(before, k), find(after, k));
            if same_content(b.as_ref(), a.as_ref()) {
                return None;
            }
            Some(RestatedPartition {
                key: k.clone(),
                rows_before: b.as_ref().map_or(0, |p| p.rows),
                rows_after: a.as_ref().map_or(0, |p| p.rows),
                sums_before: sums(&b),
                sums_after: sums(&a),
            })
        })
        .collect()
}

/// A raw batch, as a restatement's input delta names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRef {
    pub source: String,
    pub batch_id: String,
    pub rows: u64,
}

/// What a restatement version records: why, who approved it, the version it restates, the
/// closing it overrides, the partitions it changes, and the input that changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restatement {
    /// The reason code given with `--reason`.
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approver: Option<String>,
    /// The version current before it.
    pub prior_version: Option<u64>,
    /// The closing in force.
    pub closing: Closing,
    pub partitions: Vec<RestatedPartition>,
    /// The input delta: raw batches the restating run read that the run of the prior version
    /// did not (late files, corrections).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs_added: Vec<BatchRef>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn partitions_are_closed_by_their_date() {
        let through = d("2026-01-31");
        assert!(is_closed("order_date=2026-01-31", through));
        assert!(!is_closed("order_date=2026-02-01", through));
        assert!(is_closed("signup_date_month=2026-01", through), "a month from its first day");
        assert!(!is_closed("signup_date_month=2026-02", through));
        assert!(is_closed("tenant=a/order_date=2025-12-01", through), "the first dated segment");
        assert!(!is_closed("quarantine_date=__HIVE_DEFAULT_PARTITION__", through), "null date");
        assert!(is_closed("tenant=a", through), "no date: any row may be closed");
        assert!(is_closed("", through), "unpartitioned");
        assert_eq!(key_date("x=2026-13-01"), KeyDate::Undated);
    }

    #[test]
    fn only_closed_partitions_whose_rows_change_are_restated() {
        let through = d("2026-01-31");
        let part = |key: &str, rows: u64, hash: &str| PartitionEntry {
            key: key.into(),
            values: Vec::new(),
            run_id: "r".into(),
            written_in: 1,
            rows,
            bytes: 1,
            files: Vec::new(),
            totals: Some(strata_reconcile::ControlTotals {
                rows,
                row_hash: hash.into(),
                ..Default::default()
            }),
        };
        let before = vec![
            part("d=2026-01-30", 2, "a"),
            part("d=2026-01-31", 2, "b"),
            part("d=2026-02-01", 2, "c"),
        ];
        let mut after = vec![
            part("d=2026-01-30", 2, "a"),  // recomputed, the same rows
            part("d=2026-01-31", 3, "b2"), // a late row in a closed day
            part("d=2026-02-01", 5, "c2"), // an open day
        ];
        after[0].run_id = "other".into();
        let touched: BTreeSet<String> =
            ["d=2026-01-29", "d=2026-01-30", "d=2026-01-31", "d=2026-02-01"]
                .map(String::from)
                .into();
        let r = restated(through, &touched, &before, &after);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!((r[0].key.as_str(), r[0].rows_before, r[0].rows_after), ("d=2026-01-31", 2, 3));
        // A closed partition dropped is restated too.
        let dropped = restated(through, &touched, &before, &after[1..]);
        assert_eq!(
            dropped.iter().map(|p| p.key.as_str()).collect::<Vec<_>>(),
            ["d=2026-01-30", "d=2026-01-31"]
        );
        let closings = vec![
            Closing {
                format: CLOSING_FORMAT.into(),
                seq: 1,
                dataset: "x".into(),
                through: d("2026-01-31"),
                reason: None,
                by: "me".into(),
                at: DateTime::UNIX_EPOCH,
            },
            Closing {
                format: CLOSING_FORMAT.into(),
                seq: 2,
                dataset: "x".into(),
                through: d("2026-02-28"),
                reason: Some("Q1".into()),
                by: "me".into(),
                at: DateTime::UNIX_EPOCH,
            },
        ];
        assert_eq!(in_force(&closings).map(|c| c.seq), Some(2));
        assert!(closings[1].describe().contains("closed through 2026-02-28"));
    }
}
