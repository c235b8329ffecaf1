//! The one deletion authority: what an unpublished run left behind may be deleted, and only
//! what this module's [`decide`] allows. Pure code, no IO.
//!
//! Every data file, chunk and version record of a strata lake belongs to the run that wrote it:
//! staged files and chunks live under `<dataset>/run_id=<run>/`, and a version record names its
//! run. A file of run R can only be named by a version that R wrote, or by a later version that
//! reuses R's partitions copy-on-write, which needs a version of R to have been published first.
//! So "no pointer-log entry of any dataset references this file" is decided from the pointer
//! entries alone, without loading a single version record:
//!
//! - if any entry (publish or rollback) names a version that R wrote, every staged file and
//!   chunk of R is kept: some published version may list it, now or after a rollback;
//! - a version record is deleted only if it is R's and no entry names its number.
//!
//! Entries written before R's base (the pointer as R found it before preparing anything) cannot
//! name R's versions, which did not exist yet, so the caller may read only the entries after it.
//!
//! Nothing of a run that is still alive is ever deleted by anyone but that run itself.

use std::collections::BTreeSet;

use crate::model::Flip;

/// Whether the run whose leftovers are being removed may still be writing them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// The caller is that run (cleaning up after its own definite failure).
    Caller,
    /// The run has stopped: its process is gone or its lease expired, or its log is settled.
    Stopped,
    /// Another live process holds the run's lock.
    Live,
}

/// What the pointer log says about which versions are referenced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Referenced {
    /// Version numbers some pointer entry makes current (publish or rollback).
    pub versions: BTreeSet<u64>,
    /// Runs that wrote a version some pointer entry makes current.
    pub runs: BTreeSet<String>,
}

impl Referenced {
    /// The references of these pointer entries.
    pub fn of<'a>(flips: impl IntoIterator<Item = &'a Flip>) -> Self {
        let mut r = Referenced::default();
        for f in flips {
            r.versions.insert(f.to);
            r.runs.insert(f.version.run_id.clone());
        }
        r
    }
}

/// A version record found under the dataset's records, with the run that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordFound {
    pub version: u64,
    pub run_id: String,
    pub path: String,
}

/// What [`decide`] allows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Paths that may be deleted.
    pub delete: Vec<String>,
    /// Why some or all of the run's objects must stay, if they must.
    pub kept_because: Option<String>,
}

/// Decides which leftovers of `run_id` may be deleted: its version records in `records` (any
/// run's, as listed), its staged objects `staged` (files and chunks under its run prefix), except
/// the paths in `keep` (checkpoints a rerun may reuse).
pub fn decide(
    run_id: &str,
    records: &[RecordFound],
    staged: &[String],
    keep: &BTreeSet<String>,
    referenced: &Referenced,
    holder: Holder,
) -> Verdict {
    if holder == Holder::Live {
        return Verdict {
            delete: Vec::new(),
            kept_because: Some(format!("run {run_id} is still running")),
        };
    }
    let mut delete: Vec<String> = records
        .iter()
        .filter(|r| r.run_id == run_id && !referenced.versions.contains(&r.version))
        .map(|r| r.path.clone())
        .collect();
    if referenced.runs.contains(run_id) {
        return Verdict {
            delete,
            kept_because: Some(format!(
                "a pointer entry names a version of run {run_id}, so its files may be listed by a \
                 published version"
            )),
        };
    }
    delete.extend(staged.iter().filter(|p| !keep.contains(*p)).cloned());
    Verdict { delete, kept_because: None }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FlipKind, VersionBrief};

    fn flip(seq: u64, to: u64, writer: &str, kind: FlipKind) -> Flip {
        Flip {
            format: crate::model::FLIP_FORMAT.into(),
            seq,
            kind,
            from: None,
            to,
            run_id: "op".into(),
            reason: None,
            at: chrono::DateTime::UNIX_EPOCH,
            max_version: to,
            version: VersionBrief {
                version: to,
                run_id: writer.into(),
                created_at: chrono::DateTime::UNIX_EPOCH,
                rows: 0,
                files: 0,
                bytes: 0,
                partitions: 0,
            },
        }
    }

    fn rec(version: u64, run: &str) -> RecordFound {
        RecordFound { version, run_id: run.into(), path: format!("v/{version}.json") }
    }

    fn staged() -> Vec<String> {
        vec!["d/run_id=r/a.parquet".into(), "d/run_id=r/b.parquet".into()]
    }

    #[test]
    fn an_unpublished_run_loses_its_records_and_staging_except_checkpoints() {
        let referenced = Referenced::of(&[flip(4, 3, "other", FlipKind::Publish)]);
        let keep: BTreeSet<String> = ["d/run_id=r/b.parquet".to_string()].into();
        let v = decide(
            "r",
            &[rec(3, "other"), rec(4, "r"), rec(5, "r")],
            &staged(),
            &keep,
            &referenced,
            Holder::Stopped,
        );
        assert_eq!(v.delete, vec!["v/4.json", "v/5.json", "d/run_id=r/a.parquet"]);
        assert_eq!(v.kept_because, None);
    }

    #[test]
    fn a_run_with_a_published_version_keeps_every_staged_file() {
        // Published by the run itself, or made current again by a rollback to its version.
        for f in [flip(2, 4, "r", FlipKind::Publish), flip(7, 4, "r", FlipKind::Rollback)] {
            let referenced = Referenced::of(&[f]);
            let v = decide(
                "r",
                &[rec(4, "r"), rec(5, "r")],
                &staged(),
                &BTreeSet::new(),
                &referenced,
                Holder::Caller,
            );
            assert_eq!(v.delete, vec!["v/5.json"], "only the unreferenced record");
            assert!(v.kept_because.unwrap().contains("names a version of run r"));
        }
    }

    #[test]
    fn nothing_of_a_live_run_is_deleted() {
        let v = decide(
            "r",
            &[rec(4, "r")],
            &staged(),
            &BTreeSet::new(),
            &Referenced::default(),
            Holder::Live,
        );
        assert!(v.delete.is_empty());
        assert!(v.kept_because.unwrap().contains("still running"));
    }

    #[test]
    fn another_runs_records_are_never_deleted() {
        let v = decide(
            "r",
            &[rec(4, "q")],
            &[],
            &BTreeSet::new(),
            &Referenced::default(),
            Holder::Stopped,
        );
        assert!(v.delete.is_empty());
    }
}
