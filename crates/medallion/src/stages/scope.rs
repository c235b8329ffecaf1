//! What a cleaned stage publishes, decided from what its one pass counted (pure code, no IO):
//! the partitions it owns and replaces, the ones a FAIL_PARTITION rule withholds, the findings
//! of the rules that do not quarantine, and whether its counts reconcile.

use std::collections::BTreeSet;

use crate::types::{Finding, Grain, Severity};

use super::{owned_keys, Window};

/// How one dataset of the stage is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// Every partition is replaced: the new version holds only the staged rows.
    pub replace_all: bool,
    /// Otherwise, the partitions the run owns: staged ones are replaced, owned ones with no
    /// staged rows are emptied, the others are kept as published.
    pub owned: Option<BTreeSet<String>>,
}

/// What the cleaned stage publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanedScope {
    /// The accepted rows' dataset.
    pub accepted: Scope,
    /// `<name>.quarantine`.
    pub quarantine: Scope,
    /// The partitions the accepted output must have: every one with accepted rows, less the
    /// withheld ones.
    pub expected: BTreeSet<String>,
}

/// The facts [`cleaned_scope`] decides from.
#[derive(Debug, Clone, Copy)]
pub struct ScopeFacts<'a> {
    /// The accepted dataset's partition column, and the grain of its partitions.
    pub part_col: &'a str,
    pub grain: Grain,
    /// The window the run was asked for (`None`: every date, a full run).
    pub requested: Option<Window>,
    /// The window the stage covered: the requested one widened to whole partitions.
    pub window: Option<Window>,
    /// Partitions with accepted rows.
    pub accepted: &'a BTreeSet<String>,
    /// Partitions with an accepted row failing a FAIL_PARTITION rule: withheld.
    pub failed: &'a BTreeSet<String>,
    /// The partitions published now; read only when [`needs_published`] says so.
    pub published: &'a BTreeSet<String>,
}

/// Whether [`cleaned_scope`] needs the partitions published now: a full run that withholds
/// partitions owns every other partition instead of replacing the dataset.
pub fn needs_published(requested: Option<Window>, failed: &BTreeSet<String>) -> bool {
    requested.is_none() && !failed.is_empty()
}

/// The decision (pure):
/// - A windowed run owns every partition of its window, less the withheld ones (so a day whose
///   rows all disappeared is emptied), and the quarantine dates of its window plus the null one.
/// - A full run replaces both datasets, unless partitions are withheld: then it owns every
///   partition published or written, less the withheld ones, which keep their published rows.
pub fn cleaned_scope(f: ScopeFacts<'_>) -> CleanedScope {
    let expected: BTreeSet<String> = f.accepted.difference(f.failed).cloned().collect();
    let null_date = format!("quarantine_date={}", strata_publish::names::NULL_PARTITION);
    match (f.requested, f.window) {
        (Some(_), Some(w)) => {
            let owned = owned_keys(f.part_col, f.grain, w).difference(f.failed).cloned().collect();
            let mut q_owned = owned_keys("quarantine_date", f.grain, w);
            q_owned.insert(null_date);
            CleanedScope {
                accepted: Scope { replace_all: false, owned: Some(owned) },
                quarantine: Scope { replace_all: false, owned: Some(q_owned) },
                expected,
            }
        }
        (Some(_), None) => CleanedScope {
            // A window is never widened to nothing; owning only the null date is the safe side.
            accepted: Scope { replace_all: false, owned: Some(BTreeSet::new()) },
            quarantine: Scope { replace_all: false, owned: Some([null_date].into()) },
            expected,
        },
        (None, _) if f.failed.is_empty() => CleanedScope {
            accepted: Scope { replace_all: true, owned: None },
            quarantine: Scope { replace_all: true, owned: None },
            expected,
        },
        (None, _) => {
            let owned =
                f.published.union(f.accepted).filter(|k| !f.failed.contains(*k)).cloned().collect();
            CleanedScope {
                accepted: Scope { replace_all: false, owned: Some(owned) },
                quarantine: Scope { replace_all: true, owned: None },
                expected,
            }
        }
    }
}

/// The date segment of a partition key (`order_date=2026-01-01` of
/// `order_date=2026-01-01/tenant=a`): a dataset partitioned below its date has its date first.
pub fn date_segment(key: &str) -> &str {
    key.split('/').next().unwrap_or(key)
}

/// The partitions a run owns in a dataset partitioned below its date (`partition_by`): every
/// partition, published or staged, whose date segment the run owns. A day's tenant that
/// disappeared is owned, so it is emptied (pure).
pub fn expand_owned(
    owned_dates: &BTreeSet<String>,
    published: &BTreeSet<String>,
    staged: &BTreeSet<String>,
) -> BTreeSet<String> {
    published
        .iter()
        .chain(staged)
        .filter(|k| owned_dates.contains(date_segment(k)))
        .cloned()
        .collect()
}

/// A rule that does not quarantine, with the accepted rows that fail it.
#[derive(Debug, Clone, Copy)]
pub struct Flagged<'a> {
    pub rule: &'a str,
    pub severity: Severity,
    pub rows: u64,
}

/// The findings of the rules that do not quarantine (pure); the first FAIL_RUN rule with
/// failing rows is an `Err` with its name and rows: nothing of the stage may be published.
pub fn rule_findings(
    dataset: &str,
    flagged: &[Flagged<'_>],
) -> Result<Vec<Finding>, (String, u64)> {
    let mut findings = Vec::new();
    for f in flagged.iter().filter(|f| f.rows > 0) {
        if f.severity == Severity::FailRun {
            return Err((f.rule.to_string(), f.rows));
        }
        findings.push(Finding {
            severity: f.severity,
            source: format!("rule {}", f.rule),
            dataset: dataset.to_string(),
            rows: f.rows,
            detail: format!("{} accepted row(s) fail rule {:?}", f.rows, f.rule),
        });
    }
    Ok(findings)
}

/// What the one pass counted and what the writers staged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub input: u64,
    pub accepted: u64,
    pub quarantined: u64,
    pub duplicates: u64,
    /// Accepted rows staged in partitions that are published.
    pub written: u64,
    /// Accepted rows staged in withheld partitions.
    pub withheld: u64,
    /// Quarantined rows staged.
    pub quarantine_written: u64,
}

/// `None` when every row is accounted for exactly once, else what does not add up (pure).
pub fn counts_mismatch(c: Counts) -> Option<String> {
    let ok = c.written + c.withheld == c.accepted
        && c.quarantine_written == c.quarantined
        && c.input == c.accepted + c.quarantined + c.duplicates;
    (!ok).then(|| {
        format!(
            "input {}, accepted {} but staged {} + withheld {}, quarantined {} but staged {}, \
             duplicates {}",
            c.input,
            c.accepted,
            c.written,
            c.withheld,
            c.quarantined,
            c.quarantine_written,
            c.duplicates
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_owns_every_partition_below_its_dates() {
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<String>>();
        let owned = set(&["d=2026-01-02"]);
        let published = set(&["d=2026-01-01/t=a", "d=2026-01-02/t=a", "d=2026-01-02/t=b"]);
        let staged = set(&["d=2026-01-02/t=a", "d=2026-01-02/t=c"]);
        assert_eq!(
            expand_owned(&owned, &published, &staged),
            set(&["d=2026-01-02/t=a", "d=2026-01-02/t=b", "d=2026-01-02/t=c"]),
            "t=b, gone from the day, is owned and so emptied; 2026-01-01 is kept"
        );
        assert_eq!(date_segment("d=2026-01-02"), "d=2026-01-02");
    }
    use chrono::NaiveDate;

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 1, d).expect("date")
    }

    fn keys(days: &[u32]) -> BTreeSet<String> {
        days.iter().map(|d| format!("order_date=2026-01-{d:02}")).collect()
    }

    fn facts<'a>(
        requested: Option<Window>,
        accepted: &'a BTreeSet<String>,
        failed: &'a BTreeSet<String>,
        published: &'a BTreeSet<String>,
    ) -> ScopeFacts<'a> {
        ScopeFacts {
            part_col: "order_date",
            grain: Grain::Day,
            requested,
            window: requested,
            accepted,
            failed,
            published,
        }
    }

    #[test]
    fn a_window_owns_its_days_less_the_withheld_ones() {
        let w = Window { from: day(1), to: day(3) };
        let (accepted, failed, none) = (keys(&[1, 2]), keys(&[2]), BTreeSet::new());
        let s = cleaned_scope(facts(Some(w), &accepted, &failed, &none));
        assert_eq!(s.accepted, Scope { replace_all: false, owned: Some(keys(&[1, 3])) });
        assert_eq!(s.expected, keys(&[1]));
        let q = s.quarantine.owned.expect("owned");
        assert_eq!(q.len(), 4, "three dates and the null one: {q:?}");
        assert!(q.contains("quarantine_date=2026-01-03"));
        assert!(!s.quarantine.replace_all);
        assert!(!needs_published(Some(w), &failed));
    }

    #[test]
    fn a_full_run_replaces_everything_unless_it_withholds() {
        let (accepted, none) = (keys(&[1, 2]), BTreeSet::new());
        let s = cleaned_scope(facts(None, &accepted, &none, &none));
        assert_eq!(s.accepted, Scope { replace_all: true, owned: None });
        assert_eq!(s.quarantine, Scope { replace_all: true, owned: None });
        assert_eq!(s.expected, accepted);
        // Day 2 is withheld: it keeps its published rows; day 5 (published, no rows now) and
        // day 1 are owned; the quarantine is still replaced whole.
        let (failed, published) = (keys(&[2]), keys(&[2, 5]));
        assert!(needs_published(None, &failed));
        let s = cleaned_scope(facts(None, &accepted, &failed, &published));
        assert_eq!(s.accepted, Scope { replace_all: false, owned: Some(keys(&[1, 5])) });
        assert_eq!(s.quarantine, Scope { replace_all: true, owned: None });
        assert_eq!(s.expected, keys(&[1]));
    }

    #[test]
    fn fail_run_stops_the_stage_and_other_rules_are_findings() {
        let flagged = [
            Flagged { rule: "clean", severity: Severity::Warn, rows: 0 },
            Flagged { rule: "w", severity: Severity::Warn, rows: 2 },
            Flagged { rule: "p", severity: Severity::FailPartition, rows: 1 },
        ];
        let found = rule_findings("orders", &flagged).expect("no FAIL_RUN");
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].detail, "2 accepted row(s) fail rule \"w\"");
        assert_eq!(found[1].severity, Severity::FailPartition);
        let mut stop = flagged.to_vec();
        stop.push(Flagged { rule: "r", severity: Severity::FailRun, rows: 3 });
        assert_eq!(rule_findings("orders", &stop).unwrap_err(), ("r".to_string(), 3));
    }

    #[test]
    fn every_row_is_accounted_for_once() {
        let c = Counts {
            input: 10,
            accepted: 6,
            quarantined: 3,
            duplicates: 1,
            written: 4,
            withheld: 2,
            quarantine_written: 3,
        };
        assert_eq!(counts_mismatch(c), None);
        let lost = Counts { written: 3, ..c };
        assert!(counts_mismatch(lost).expect("mismatch").contains("staged 3 + withheld 2"));
        assert!(counts_mismatch(Counts { input: 11, ..c }).is_some());
        assert!(counts_mismatch(Counts { quarantine_written: 2, ..c }).is_some());
    }
}
