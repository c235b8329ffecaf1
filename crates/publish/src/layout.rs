//! Where everything lives in a lake, relative to the lake root. Pure string building.
//!
//! ```text
//! <dataset>/_strata/pointer/<seq, 20 digits>.json      pointer entries (the flip log)
//! <dataset>/_strata/head.json                         hint: a pointer entry known to exist
//! <dataset>/_strata/versions/<version, 20 digits>.json version records
//! <dataset>/run_id=<run>/<col>=<value>/part-<n>.parquet data files of one run
//! ```

use object_store::path::Path;

/// Directory of strata's own files inside a dataset.
pub const META_DIR: &str = "_strata";

pub fn dataset_prefix(dataset: &str) -> Path {
    Path::from(dataset)
}

pub fn pointer_prefix(dataset: &str) -> Path {
    Path::from(format!("{dataset}/{META_DIR}/pointer"))
}

pub fn pointer_path(dataset: &str, seq: u64) -> Path {
    Path::from(format!("{dataset}/{META_DIR}/pointer/{seq:020}.json"))
}

/// The hint `{"seq": n}`: a pointer entry known to exist, from which readers probe for the
/// current one instead of listing the log. Written after each flip; only ever a lower bound.
pub fn head_hint_path(dataset: &str) -> Path {
    Path::from(format!("{dataset}/{META_DIR}/head.json"))
}

/// A checkpoint of the pointer log: every flip from 1 to `seq` in one object (a cache; the
/// entries stay authoritative).
pub fn checkpoint_path(dataset: &str, seq: u64) -> Path {
    Path::from(format!("{dataset}/{META_DIR}/pointer/{seq:020}.checkpoint.json"))
}

/// The number in a checkpoint's file name.
pub fn parse_checkpoint(path: &Path) -> Option<u64> {
    let name = path.filename()?;
    let digits = name.strip_suffix(".checkpoint.json")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub fn versions_prefix(dataset: &str) -> Path {
    Path::from(format!("{dataset}/{META_DIR}/versions"))
}

pub fn version_path(dataset: &str, version: u64) -> Path {
    Path::from(format!("{dataset}/{META_DIR}/versions/{version:020}.json"))
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

/// The number in a pointer entry or version record file name (`…/00000000000000000042.json`).
pub fn parse_numbered(path: &Path) -> Option<u64> {
    let name = path.filename()?;
    let digits = name.strip_suffix(".json")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_round_trip() {
        assert_eq!(parse_numbered(&pointer_path("d", 42)), Some(42));
        assert_eq!(parse_numbered(&version_path("d", u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_numbered(&Path::from("d/_strata/pointer/42.json")), None);
        assert_eq!(parse_numbered(&checkpoint_path("d", 100)), None, "checkpoints are not entries");
        assert_eq!(parse_checkpoint(&checkpoint_path("d", 100)), Some(100));
        assert_eq!(parse_checkpoint(&pointer_path("d", 100)), None);
        assert_eq!(
            parse_numbered(&Path::from("d/_strata/pointer/0000000000000000004x.json")),
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
