//! Numbered logs: objects named by number in one directory of a lake, each created once with
//! create-if-absent and never changed.
//!
//! strata keeps three such logs: a dataset's pointer (`<dataset>/_strata/pointer/`, see
//! [`crate::layout::pointer_log`]), a source's raw log (`_raw/<source>/_log/`, in `strata-land`)
//! and a run's manifest log (`_strata/runs/<run_id>/`, in `strata-runs`). Version records are
//! named the same way ([`crate::layout::version_records`]). What they share lives here: how an
//! entry is named and how a name is read back, creating an entry, reading one, finding the last
//! one (by probing or by listing), and the checkpoints that let a reader of a long log fetch one
//! object instead of many. What an entry holds, and what a taken number means to its writer,
//! stays with each log.
//!
//! # Contract
//!
//! - Entry `n` is created with create-if-absent ([`Lake::create_if_absent`]): of concurrent
//!   creates of one number exactly one succeeds, and the others learn that the number is taken.
//!   An entry is never overwritten or deleted.
//! - A *gap-free* log (the pointer, the raw log) has its entries created one number after another
//!   from 1, so its last entry is found without listing ([`NumberedLog::last`],
//!   [`NumberedLog::end`]), and an entry missing while a later one exists is corruption
//!   ([`Listing::first_gap`]).
//! - A log that may have gaps (a run's log in the naming of earlier strata) is read by listing
//!   ([`NumberedLog::list`]); two entries with one number are reported ([`Listing::doubled`]).
//! - A checkpoint `<n>.checkpoint.json` is a cache of entries 1 to `n`. Its name never reads as
//!   an entry's, and a reader falls back to the entries when it is missing or not whole.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use strata_publish::numbered::{Naming, NumberedLog};
//! use strata_publish::{Lake, OpenMode};
//!
//! let lake = Lake::open("memory://", OpenMode::Create)?;
//! let log = NumberedLog::new("events/_log", Naming::Exact { width: 4 });
//! assert_eq!(log.path(7).as_ref(), "events/_log/0007.json");
//! for n in 1..=5 {
//!     assert!(log.create(&lake, n, b"{}".to_vec()).await?);
//! }
//! assert!(!log.create(&lake, 5, b"{}".to_vec()).await?, "a number is taken once");
//! assert_eq!(log.last(&lake, 0).await?, 5);
//! assert_eq!(log.list(&lake).await?.numbers(), vec![1, 2, 3, 4, 5]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

use bytes::Bytes;
use object_store::path::Path;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::lake::Lake;

/// How a log names its entries (and its checkpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// `<n>.json` with `n` zero-padded to exactly `width` digits, so that names sort as numbers;
    /// no other name is an entry. The pointer, the raw log and version records (20 digits).
    Exact { width: usize },
    /// `<n>.json` with `n` zero-padded to at least `width` digits. Any number of digits reads as
    /// an entry, and so does `<n>-<tag>.json`, as earlier strata named run-log entries
    /// (`0011-COMMITTING.json`); that naming allowed two entries with one number.
    Tagged { width: usize },
}

impl Naming {
    /// The file name of entry `n`.
    pub fn name(self, n: u64) -> String {
        format!("{n:0width$}.json", width = self.width())
    }

    /// The number of an entry from its file name; `None` for anything that is not an entry
    /// (a checkpoint, a temporary file, a foreign file).
    pub fn parse(self, name: &str) -> Option<u64> {
        let stem = name.strip_suffix(".json")?;
        let digits = match self {
            Naming::Exact { width } => Some(stem).filter(|d| d.len() == width)?,
            Naming::Tagged { .. } => stem.split_once('-').map_or(stem, |(n, _)| n),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }

    /// The file name of the checkpoint of entries 1 to `n`.
    pub fn checkpoint_name(self, n: u64) -> String {
        format!("{n:0width$}.checkpoint.json", width = self.width())
    }

    /// The number of a checkpoint from its file name.
    pub fn parse_checkpoint(self, name: &str) -> Option<u64> {
        let digits = name.strip_suffix(".checkpoint.json")?;
        let exact = match self {
            Naming::Exact { width } => digits.len() == width,
            Naming::Tagged { .. } => !digits.is_empty(),
        };
        if !exact || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }

    fn width(self) -> usize {
        match self {
            Naming::Exact { width } | Naming::Tagged { width } => width,
        }
    }
}

/// One numbered log: the directory that holds it and how it names entries. Cheap to build; holds
/// no state of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberedLog {
    dir: String,
    naming: Naming,
}

/// Two or more files of one log with the same number (possible only with [`Naming::Tagged`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doubled {
    pub number: u64,
    pub paths: Vec<Path>,
}

/// Where a probe for the end of a gap-free log stopped ([`NumberedLog::end`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The last entry (0: the log is empty).
    Last(u64),
    /// This entry is missing while a later one exists: the log is damaged.
    Gap(u64),
}

/// What a listing of a log's directory found. Pure data: [`Listing::from_paths`] builds it from
/// any list of paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// The entries by number, oldest first (entries with one number by path).
    pub entries: Vec<(u64, Path)>,
    /// The numbers of the checkpoints, in order.
    pub checkpoints: Vec<u64>,
}

impl Listing {
    /// The entries and checkpoints among `paths`, each in order; other names are left out.
    pub fn from_paths(naming: Naming, paths: impl IntoIterator<Item = Path>) -> Listing {
        let mut listing = Listing::default();
        for path in paths {
            let Some(name) = path.filename() else { continue };
            if let Some(n) = naming.parse(name) {
                listing.entries.push((n, path));
            } else if let Some(n) = naming.parse_checkpoint(name) {
                listing.checkpoints.push(n);
            }
        }
        listing.entries.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        listing.checkpoints.sort_unstable();
        listing
    }

    /// The numbers of the entries, in order.
    pub fn numbers(&self) -> Vec<u64> {
        self.entries.iter().map(|(n, _)| *n).collect()
    }

    /// The greatest entry number, if any.
    pub fn last(&self) -> Option<u64> {
        self.entries.last().map(|(n, _)| *n)
    }

    /// The first number held by two or more entries, with their paths.
    pub fn doubled(&self) -> Option<Doubled> {
        let w = self.entries.windows(2).find(|w| w[0].0 == w[1].0)?;
        let number = w[0].0;
        let paths =
            self.entries.iter().filter(|(n, _)| *n == number).map(|(_, p)| p.clone()).collect();
        Some(Doubled { number, paths })
    }

    /// The first number missing from 1, 2, … up to the last entry (see [`first_gap`]).
    pub fn first_gap(&self) -> Option<u64> {
        first_gap(&self.numbers())
    }

    /// The checkpoints a reader of entries 1 to `last` may start from, newest first.
    pub fn checkpoints_upto(&self, last: u64) -> impl Iterator<Item = u64> + '_ {
        self.checkpoints.iter().rev().copied().filter(move |c| *c <= last)
    }
}

/// The first number missing from `numbers` (sorted) as a sequence 1, 2, 3, …; `None` when they
/// run without gaps.
pub fn first_gap(numbers: &[u64]) -> Option<u64> {
    numbers.iter().enumerate().find(|(i, s)| **s != *i as u64 + 1).map(|(i, _)| i as u64 + 1)
}

/// The last of a sequence of objects numbered 1, 2, … with no gaps, found without listing them:
/// from `from` (a number known to exist, or 0 for none) the step doubles up to the first missing
/// number, then the interval is bisected. Costs about 2·log2 of the distance from `from`;
/// `exists` does the looking.
pub async fn last_in_sequence<E, F, Fut>(from: u64, mut exists: F) -> Result<u64, E>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = Result<bool, E>>,
{
    let (mut lo, mut step) = (from, 1u64);
    let mut hi = loop {
        let probe = lo.saturating_add(step);
        if exists(probe).await? {
            lo = probe;
            step = step.saturating_mul(2);
        } else {
            break probe;
        }
    };
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if exists(mid).await? {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

impl NumberedLog {
    /// The log in directory `dir` (relative to the lake root, no trailing `/`).
    pub fn new(dir: impl Into<String>, naming: Naming) -> NumberedLog {
        NumberedLog { dir: dir.into(), naming }
    }

    pub fn dir(&self) -> Path {
        Path::from(self.dir.as_str())
    }

    pub fn naming(&self) -> Naming {
        self.naming
    }

    /// The path of entry `n`.
    pub fn path(&self, n: u64) -> Path {
        Path::from(format!("{}/{}", self.dir, self.naming.name(n)))
    }

    /// The path of the checkpoint of entries 1 to `n`.
    pub fn checkpoint_path(&self, n: u64) -> Path {
        Path::from(format!("{}/{}", self.dir, self.naming.checkpoint_name(n)))
    }

    /// The number of the entry at `path`, `None` if it names no entry.
    pub fn number_of(&self, path: &Path) -> Option<u64> {
        self.naming.parse(path.filename()?)
    }

    /// Whether entry `n` exists (one HEAD). Entry 0 stands for the empty log, which always does.
    pub async fn exists(&self, lake: &Lake, n: u64) -> Result<bool> {
        if n == 0 {
            return Ok(true);
        }
        lake.exists(&self.path(n)).await
    }

    /// The bytes of entry `n`, `None` if there is no such entry.
    pub async fn read(&self, lake: &Lake, n: u64) -> Result<Option<Bytes>> {
        lake.get_opt(&self.path(n)).await
    }

    /// Entry `n` parsed as JSON, `None` if there is no such entry; [`Error::Corrupt`] if it does
    /// not parse.
    pub async fn read_json<T: DeserializeOwned>(&self, lake: &Lake, n: u64) -> Result<Option<T>> {
        lake.read_json(&self.path(n)).await
    }

    /// Creates entry `n` with `body`, if no entry `n` exists: `true` if this call created it,
    /// `false` if the number was taken (by another writer, or by an earlier attempt whose answer
    /// was lost: read it back to tell).
    pub async fn create(&self, lake: &Lake, n: u64, body: Vec<u8>) -> Result<bool> {
        lake.create_if_absent(&self.path(n), body).await
    }

    /// Every entry and checkpoint in the log's directory (one LIST).
    pub async fn list(&self, lake: &Lake) -> Result<Listing> {
        let dir = self.dir();
        let listing = lake
            .store()
            .list_with_delimiter(Some(&dir))
            .await
            .map_err(|e| Error::store("list", &dir, e))?;
        Ok(Listing::from_paths(self.naming, listing.objects.into_iter().map(|o| o.location)))
    }

    /// The last entry of a gap-free log, probing from `from` (an entry known to exist, or 0)
    /// without listing (see [`last_in_sequence`]).
    pub async fn last(&self, lake: &Lake, from: u64) -> Result<u64> {
        last_in_sequence(from, |n| self.exists(lake, n)).await
    }

    /// [`NumberedLog::last`], checking that the log does not go on after a missing entry: the
    /// entry after the first missing one is probed too. The usual case, nothing created since
    /// `from`, costs two probes made at once.
    pub async fn end(&self, lake: &Lake, from: u64) -> Result<End> {
        let (next, after) =
            futures::try_join!(self.exists(lake, from + 1), self.exists(lake, from + 2))?;
        let last = match (next, after) {
            (false, true) => return Ok(End::Gap(from + 1)),
            (false, false) => return Ok(End::Last(from)),
            (true, _) => self.last(lake, from + 1).await?,
        };
        if self.exists(lake, last + 2).await? {
            return Ok(End::Gap(last + 1));
        }
        Ok(End::Last(last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POINTER: Naming = Naming::Exact { width: 20 };
    const RUN: Naming = Naming::Tagged { width: 4 };

    fn paths(names: &[&str]) -> Vec<Path> {
        names.iter().map(|n| Path::from(format!("d/{n}"))).collect()
    }

    #[test]
    fn names_read_back_as_their_numbers() {
        assert_eq!(POINTER.name(42), "00000000000000000042.json");
        assert_eq!(POINTER.parse(&POINTER.name(42)), Some(42));
        assert_eq!(POINTER.parse(&POINTER.name(u64::MAX)), Some(u64::MAX));
        assert_eq!(POINTER.parse("42.json"), None, "exactly 20 digits");
        assert_eq!(POINTER.parse("0000000000000000004x.json"), None);
        assert_eq!(POINTER.parse("00000000000000000042-PLANNED.json"), None);
        assert_eq!(
            POINTER.parse(&POINTER.checkpoint_name(100)),
            None,
            "checkpoints are not entries"
        );
        assert_eq!(POINTER.parse_checkpoint(&POINTER.checkpoint_name(100)), Some(100));
        assert_eq!(POINTER.parse_checkpoint(&POINTER.name(100)), None);
        assert_eq!(POINTER.parse_checkpoint("100.checkpoint.json"), None);
        // Run logs: four digits written, any number read, and the tagged names of earlier strata.
        assert_eq!(RUN.name(11), "0011.json");
        assert_eq!(RUN.name(12345), "12345.json");
        assert_eq!(RUN.parse("0011.json"), Some(11));
        assert_eq!(RUN.parse("0011-COMMITTING.json"), Some(11));
        assert_eq!(RUN.parse("12345.json"), Some(12345));
        for bad in ["x.json", ".json", "0011", "-FAILED.json", "00a1.json", "0011.checkpoint.json"]
        {
            assert_eq!(RUN.parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_listing_orders_entries_by_number_and_keeps_checkpoints_apart() {
        let listing = Listing::from_paths(
            RUN,
            paths(&["0010.json", "0002-INPUT_LOCKED.json", "0001.json", "9.json", "notes.txt"]),
        );
        assert_eq!(listing.numbers(), vec![1, 2, 9, 10], "by number, not by name");
        assert_eq!(listing.last(), Some(10));
        assert_eq!(listing.doubled(), None);
        assert_eq!(listing.first_gap(), Some(3));
        let pointer = Listing::from_paths(
            POINTER,
            paths(&[
                &POINTER.name(2),
                &POINTER.checkpoint_name(2),
                &POINTER.name(1),
                &POINTER.name(3),
                "head.json",
                &format!("{}#1", POINTER.name(4)),
            ]),
        );
        assert_eq!(pointer.numbers(), vec![1, 2, 3]);
        assert_eq!(pointer.checkpoints, vec![2]);
        assert_eq!(pointer.first_gap(), None);
        assert_eq!(Listing::default().last(), None);
    }

    #[test]
    fn two_entries_with_one_number_are_reported_with_both_paths() {
        let listing =
            Listing::from_paths(RUN, paths(&["0011.json", "0001.json", "0011-COMMITTING.json"]));
        let doubled = listing.doubled().unwrap();
        assert_eq!(doubled.number, 11);
        assert_eq!(doubled.paths, paths(&["0011-COMMITTING.json", "0011.json"]));
        // The first doubled number is the one reported.
        let listing = Listing::from_paths(
            RUN,
            paths(&["0003-A.json", "0003-B.json", "0002-A.json", "0002.json"]),
        );
        assert_eq!(listing.doubled().map(|d| d.number), Some(2));
    }

    #[test]
    fn gaps_and_checkpoints() {
        assert_eq!(first_gap(&[]), None);
        assert_eq!(first_gap(&[1, 2, 3]), None);
        assert_eq!(first_gap(&[1, 3]), Some(2));
        assert_eq!(first_gap(&[2]), Some(1));
        let listing = Listing { entries: Vec::new(), checkpoints: vec![100, 200, 300] };
        assert_eq!(listing.checkpoints_upto(250).collect::<Vec<_>>(), vec![200, 100]);
        assert_eq!(listing.checkpoints_upto(50).count(), 0);
    }

    #[tokio::test]
    async fn the_last_of_a_sequence_is_found_from_any_start() {
        for end in [0u64, 1, 2, 3, 7, 8, 100, 1000] {
            for from in [0, end / 3, end.saturating_sub(1), end] {
                let mut probes = 0;
                let found = last_in_sequence(from, |n| {
                    probes += 1;
                    std::future::ready(Ok::<_, ()>(n <= end))
                })
                .await
                .unwrap();
                assert_eq!(found, end, "end {end} from {from}");
                assert!(probes <= 2 * 64 - (end - from).leading_zeros() as u64 + 1, "{probes}");
            }
        }
    }
}
