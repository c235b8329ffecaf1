//! Where everything lives in a lake, relative to the lake root. Pure string building.
//!
//! ```text
//! <dataset>/_strata/pointer/<seq, 20 digits>.json      pointer entries (the flip log)
//! <dataset>/_strata/head.json                         hint: a pointer entry known to exist
//! <dataset>/_strata/versions/<version, 20 digits>.json version records
//! <dataset>/run_id=<run>/<col>=<value>/part-<n>.parquet data files of one run
//! ```

use object_store::path::Path;

use crate::numbered::{Naming, NumberedLog};

/// Directory of strata's own files inside a dataset.
pub const META_DIR: &str = "_strata";

/// How pointer entries, their checkpoints and version records are named: the number
/// zero-padded to 20 digits, so that names sort as numbers.
pub const NUMBERED: Naming = Naming::Exact { width: 20 };

pub fn dataset_prefix(dataset: &str) -> Path {
    Path::from(dataset)
}

/// The pointer of a dataset: a gap-free numbered log of flips, with checkpoints.
pub fn pointer_log(dataset: &str) -> NumberedLog {
    NumberedLog::new(format!("{dataset}/{META_DIR}/pointer"), NUMBERED)
}

/// The version records of a dataset, named by version number (numbers may be skipped).
pub fn version_records(dataset: &str) -> NumberedLog {
    NumberedLog::new(format!("{dataset}/{META_DIR}/versions"), NUMBERED)
}

/// The closings of a dataset ([`crate::closing`]): a gap-free numbered log.
pub fn closings_log(dataset: &str) -> NumberedLog {
    NumberedLog::new(format!("{dataset}/{META_DIR}/closings"), NUMBERED)
}

pub fn pointer_path(dataset: &str, seq: u64) -> Path {
    pointer_log(dataset).path(seq)
}

/// The hint `{"seq": n}`: a pointer entry known to exist, from which readers probe for the
/// current one instead of listing the log. Written after each flip; only ever a lower bound.
pub fn head_hint_path(dataset: &str) -> Path {
    Path::from(format!("{dataset}/{META_DIR}/head.json"))
}

/// A checkpoint of the pointer log: every flip from 1 to `seq` in one object (a cache; the
/// entries stay authoritative).
pub fn checkpoint_path(dataset: &str, seq: u64) -> Path {
    pointer_log(dataset).checkpoint_path(seq)
}

pub fn versions_prefix(dataset: &str) -> Path {
    version_records(dataset).dir()
}

pub fn version_path(dataset: &str, version: u64) -> Path {
    version_records(dataset).path(version)
}

/// Path of the `n`th chunk of partition entries that version `version` writes: under the run's
/// prefix, so that whatever removes an unpublished run's files removes its chunks too.
pub fn chunk_path(dataset: &str, run_id: &str, version: u64, n: usize) -> String {
    format!("{dataset}/run_id={run_id}/{META_DIR}/partitions-{version:020}-{n:05}.json")
}

pub fn run_prefix(dataset: &str, run_id: &str) -> Path {
    Path::from(format!("{dataset}/run_id={run_id}"))
}

/// Path of the `n`th data file a run writes for a partition (`key` is `""` when unpartitioned).
pub fn data_file_path(dataset: &str, run_id: &str, key: &str, n: usize) -> String {
    if key.is_empty() {
        format!("{dataset}/run_id={run_id}/part-{n:05}.parquet")
    } else {
        format!("{dataset}/run_id={run_id}/{key}/part-{n:05}.parquet")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_round_trip() {
        let pointer = pointer_log("d");
        assert_eq!(pointer_path("d", 42).as_ref(), "d/_strata/pointer/00000000000000000042.json");
        assert_eq!(
            checkpoint_path("d", 100).as_ref(),
            "d/_strata/pointer/00000000000000000100.checkpoint.json"
        );
        assert_eq!(version_path("d", 7).as_ref(), "d/_strata/versions/00000000000000000007.json");
        assert_eq!(pointer.number_of(&pointer_path("d", 42)), Some(42));
        let versions = version_records("d");
        assert_eq!(versions.number_of(&version_path("d", u64::MAX)), Some(u64::MAX));
        assert_eq!(pointer.number_of(&Path::from("d/_strata/pointer/42.json")), None);
        assert_eq!(
            pointer.number_of(&checkpoint_path("d", 100)),
            None,
            "checkpoints are not entries"
        );
        assert_eq!(NUMBERED.parse_checkpoint("00000000000000000100.checkpoint.json"), Some(100));
        assert_eq!(NUMBERED.parse_checkpoint("00000000000000000100.json"), None);
        assert_eq!(
            pointer.number_of(&Path::from("d/_strata/pointer/0000000000000000004x.json")),
            None
        );
    }

    #[test]
    fn data_paths() {
        assert_eq!(data_file_path("o", "r1", "", 0), "o/run_id=r1/part-00000.parquet");
        assert_eq!(
            data_file_path("o", "r1", "d=2026-01-01", 3),
            "o/run_id=r1/d=2026-01-01/part-00003.parquet"
        );
    }
}
