//! The decisions of the publish protocol as plain functions over plain data: which version number
//! comes next, how a new version is assembled copy-on-write from its parent, whether a schema is
//! compatible, which pointer entry is current, and whether the log is whole. No IO here; the
//! [`crate::Dataset`] methods are thin adapters around these.

use std::collections::BTreeMap;

use arrow::datatypes::{Field, Schema};

use crate::model::{Flip, PartitionEntry, Summary, VersionRecord};

/// The version number a new publish allocates first, given the current pointer entry.
/// If a record with that number already exists (a concurrent or crashed writer), the writer tries
/// the next number; numbers are therefore monotonic but not necessarily dense.
pub fn first_candidate_version(head: Option<&Flip>) -> u64 {
    head.map_or(1, |h| h.max_version + 1)
}

/// The sequence number of the pointer entry that a writer which read `head` must create.
pub fn next_seq(head: Option<&Flip>) -> u64 {
    head.map_or(1, |h| h.seq + 1)
}

/// The current pointer entry of a log: the one with the greatest sequence number.
pub fn head_of(entries: &[Flip]) -> Option<&Flip> {
    entries.iter().max_by_key(|f| f.seq)
}

/// Checks that sequence numbers run 1, 2, … without gaps, and returns the first missing number
/// if they do not. `seqs` must be sorted.
pub fn first_gap(seqs: &[u64]) -> Option<u64> {
    seqs.iter().enumerate().find(|(i, s)| **s != *i as u64 + 1).map(|(i, _)| i as u64 + 1)
}

/// The last of a sequence of objects numbered 1, 2, … with no gaps (pointer entries, a source's
/// raw log), found without listing them: from `from` (a number known to exist, or 0 for none)
/// the step doubles up to the first missing number, then the interval is bisected. Costs about
/// 2·log2 of the distance from `from`; `exists` does the looking.
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

/// The outcome of merging a run's partitions into its parent version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    /// Sorted by key.
    pub partitions: Vec<PartitionEntry>,
    pub summary: Summary,
}

/// Which of the parent's partitions a publish replaces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Replace {
    /// Only the partitions it wrote.
    #[default]
    Written,
    /// The partitions it wrote and these keys (dropped when not written: the run owns them and
    /// found no rows for them).
    Owned(std::collections::BTreeSet<String>),
    /// Every partition: the new version holds only what it wrote.
    All,
}

/// Assembles the partitions of a new version, copy-on-write.
///
/// Every partition in `written` replaces the parent's partition with the same key. The parent's
/// other partitions are reused as they are (same files, same paths), except those `replace`
/// owns, which are dropped.
/// Whether a version prepared on `base` may be re-merged onto `now` (another writer published in
/// between): only if every partition it writes or owns is the same in both, and the layout did
/// not change. Replacing everything never rebases.
pub fn rebase_allowed(
    base: Option<&VersionRecord>,
    now: Option<&VersionRecord>,
    written: &[PartitionEntry],
    replace: &Replace,
) -> bool {
    let keys: std::collections::BTreeSet<&str> = match replace {
        Replace::All => return false,
        Replace::Written => written.iter().map(|p| p.key.as_str()).collect(),
        Replace::Owned(owned) => {
            written.iter().map(|p| p.key.as_str()).chain(owned.iter().map(String::as_str)).collect()
        }
    };
    let (Some(base), Some(now)) = (base, now) else {
        // Created concurrently from nothing, or emptied: never merge blindly.
        return base.is_none() && now.is_none();
    };
    if base.partition_by != now.partition_by || base.schema != now.schema {
        return false;
    }
    fn find<'a>(r: &'a VersionRecord, k: &str) -> Option<&'a PartitionEntry> {
        r.partitions.binary_search_by(|p| p.key.as_str().cmp(k)).ok().map(|i| &r.partitions[i])
    }
    keys.iter().all(|k| find(base, k) == find(now, k))
}

pub fn merge_partitions(
    parent: Option<&VersionRecord>,
    written: Vec<PartitionEntry>,
    replace: &Replace,
) -> Merged {
    let mut by_key: BTreeMap<String, PartitionEntry> = BTreeMap::new();
    let mut reused = 0u64;
    let mut dropped = 0u64;
    let written_keys: std::collections::BTreeSet<&str> =
        written.iter().map(|p| p.key.as_str()).collect();
    if let Some(parent) = parent {
        for p in &parent.partitions {
            if written_keys.contains(p.key.as_str()) {
                continue;
            }
            let owned = match replace {
                Replace::Written => false,
                Replace::Owned(keys) => keys.contains(&p.key),
                Replace::All => true,
            };
            if owned {
                dropped += 1;
            } else {
                reused += 1;
                by_key.insert(p.key.clone(), p.clone());
            }
        }
    }
    let partitions_written = written.len() as u64;
    for p in written {
        by_key.insert(p.key.clone(), p);
    }
    let partitions: Vec<PartitionEntry> = by_key.into_values().collect();
    let summary = Summary {
        rows: partitions.iter().map(|p| p.rows).sum(),
        files: partitions.iter().map(|p| p.files.len() as u64).sum(),
        bytes: partitions.iter().map(|p| p.bytes).sum(),
        partitions: partitions.len() as u64,
        partitions_written,
        partitions_reused: reused,
        partitions_dropped: dropped,
    };
    Merged { partitions, summary }
}

/// Compares the schema of new data with the dataset's: same column names, in the same order,
/// with the same types. Nullability may differ (the version records the looser one).
/// Returns a sentence describing the first difference.
pub fn schema_difference(dataset: &Schema, new: &Schema) -> Option<String> {
    let describe = |f: &Field| format!("{} {}", f.name(), f.data_type());
    let (a, b) = (dataset.fields(), new.fields());
    for (i, (fa, fb)) in a.iter().zip(b.iter()).enumerate() {
        if fa.name() != fb.name() {
            return Some(format!(
                "column {} is {:?} in the dataset but {:?} in the new data",
                i + 1,
                fa.name(),
                fb.name()
            ));
        }
        if fa.data_type() != fb.data_type() {
            return Some(format!(
                "column {:?} has type {} in the dataset but {} in the new data",
                fa.name(),
                fa.data_type(),
                fb.data_type()
            ));
        }
    }
    if a.len() > b.len() {
        let missing: Vec<String> = a[b.len()..].iter().map(|f| describe(f)).collect();
        return Some(format!("the new data lacks column(s) {}", missing.join(", ")));
    }
    if b.len() > a.len() {
        let extra: Vec<String> = b[a.len()..].iter().map(|f| describe(f)).collect();
        return Some(format!("the new data has extra column(s) {}", extra.join(", ")));
    }
    None
}

/// The schema a version records: `base` with each field nullable if it is nullable in either.
pub fn loosen_nullability(base: &Schema, other: &Schema) -> Schema {
    let fields: Vec<Field> = base
        .fields()
        .iter()
        .zip(other.fields().iter())
        .map(|(a, b)| a.as_ref().clone().with_nullable(a.is_nullable() || b.is_nullable()))
        .collect();
    Schema::new(fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FileEntry, FlipKind, VersionBrief};
    use arrow::datatypes::DataType;
    use chrono::{TimeZone, Utc};

    fn part(key: &str, run: &str, rows: u64) -> PartitionEntry {
        PartitionEntry {
            totals: None,
            key: key.into(),
            values: vec![Some(key.into())],
            run_id: run.into(),
            written_in: 1,
            rows,
            bytes: rows * 10,
            files: vec![FileEntry {
                path: format!("d/run_id={run}/{key}/part-00000.parquet"),
                size: rows * 10,
                rows,
                sha256: "00".into(),
            }],
        }
    }

    fn record(parts: Vec<PartitionEntry>) -> VersionRecord {
        VersionRecord {
            format: crate::model::VERSION_FORMAT.into(),
            dataset: "d".into(),
            version: 1,
            parent: None,
            publish_seq: 1,
            run_id: "r1".into(),
            created_at: Utc.timestamp_opt(0, 0).unwrap(),
            reason: None,
            partition_by: vec!["k".into()],
            schema: Schema::empty(),
            summary: Summary::default(),
            partitions: parts,
            evidence: None,
        }
    }

    fn flip(seq: u64, max_version: u64) -> Flip {
        let at = Utc.timestamp_opt(0, 0).unwrap();
        Flip {
            format: crate::model::FLIP_FORMAT.into(),
            seq,
            kind: FlipKind::Publish,
            from: None,
            to: max_version,
            run_id: "r".into(),
            reason: None,
            at,
            max_version,
            version: VersionBrief {
                version: max_version,
                run_id: "r".into(),
                created_at: at,
                rows: 0,
                files: 0,
                bytes: 0,
                partitions: 0,
            },
        }
    }

    #[test]
    fn copy_on_write_reuses_untouched_partitions() {
        let parent = record(vec![part("k=a", "r1", 1), part("k=b", "r1", 2), part("k=c", "r1", 3)]);
        let m = merge_partitions(Some(&parent), vec![part("k=b", "r2", 20)], &Replace::Written);
        let keys: Vec<_> =
            m.partitions.iter().map(|p| (p.key.as_str(), p.run_id.as_str())).collect();
        assert_eq!(keys, vec![("k=a", "r1"), ("k=b", "r2"), ("k=c", "r1")]);
        // Reused partitions keep the parent's file paths: nothing is copied.
        assert_eq!(m.partitions[0].files, parent.partitions[0].files);
        assert_eq!(m.summary.rows, 1 + 20 + 3);
        assert_eq!((m.summary.partitions_written, m.summary.partitions_reused), (1, 2));
        assert_eq!(m.summary.partitions_dropped, 0);
    }

    #[test]
    fn replace_all_drops_the_rest() {
        let parent = record(vec![part("k=a", "r1", 1), part("k=b", "r1", 2)]);
        let m = merge_partitions(Some(&parent), vec![part("k=z", "r2", 5)], &Replace::All);
        assert_eq!(m.partitions.len(), 1);
        assert_eq!(m.summary.partitions_dropped, 2);
        assert_eq!(m.summary.rows, 5);
        let m = merge_partitions(
            None,
            vec![part("k=b", "r2", 5), part("k=a", "r2", 1)],
            &Replace::Written,
        );
        assert_eq!(m.partitions[0].key, "k=a", "sorted by key");
        // Owned keys that were not rewritten are dropped; others are reused.
        let owned = Replace::Owned(["k=a".to_string(), "k=c".to_string()].into_iter().collect());
        let parent = record(vec![part("k=a", "r1", 1), part("k=b", "r1", 2), part("k=c", "r1", 3)]);
        let m = merge_partitions(Some(&parent), vec![part("k=c", "r2", 9)], &owned);
        let keys: Vec<_> =
            m.partitions.iter().map(|p| (p.key.as_str(), p.run_id.as_str())).collect();
        assert_eq!(keys, vec![("k=b", "r1"), ("k=c", "r2")]);
        assert_eq!((m.summary.partitions_dropped, m.summary.partitions_reused), (1, 1));
    }

    #[test]
    fn rebase_only_when_nothing_this_run_touches_changed() {
        let base = record(vec![part("k=a", "r1", 1), part("k=b", "r1", 2)]);
        // Someone else rewrote k=b: writing k=a may rebase, writing k=b may not.
        let now = record(vec![part("k=a", "r1", 1), part("k=b", "r3", 7)]);
        assert!(rebase_allowed(
            Some(&base),
            Some(&now),
            &[part("k=a", "r2", 5)],
            &Replace::Written
        ));
        assert!(!rebase_allowed(
            Some(&base),
            Some(&now),
            &[part("k=b", "r2", 5)],
            &Replace::Written
        ));
        // Owning k=b without writing it counts as touching it.
        let owned = Replace::Owned(["k=b".to_string()].into_iter().collect());
        assert!(!rebase_allowed(Some(&base), Some(&now), &[part("k=a", "r2", 5)], &owned));
        // A new partition someone else created in between is a conflict too.
        let now2 = record(vec![part("k=a", "r1", 1), part("k=b", "r1", 2), part("k=c", "r4", 1)]);
        assert!(!rebase_allowed(
            Some(&base),
            Some(&now2),
            &[part("k=c", "r2", 5)],
            &Replace::Written
        ));
        assert!(rebase_allowed(
            Some(&base),
            Some(&now2),
            &[part("k=a", "r2", 5)],
            &Replace::Written
        ));
        assert!(!rebase_allowed(Some(&base), Some(&now), &[part("k=a", "r2", 5)], &Replace::All));
        assert!(!rebase_allowed(None, Some(&now), &[part("k=a", "r2", 5)], &Replace::Written));
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

    #[test]
    fn versions_and_seqs() {
        assert_eq!(first_candidate_version(None), 1);
        assert_eq!(next_seq(None), 1);
        let f = flip(7, 9);
        assert_eq!(first_candidate_version(Some(&f)), 10);
        assert_eq!(next_seq(Some(&f)), 8);
        let log = vec![flip(1, 1), flip(3, 2), flip(2, 2)];
        assert_eq!(head_of(&log).map(|f| f.seq), Some(3));
        assert_eq!(first_gap(&[1, 2, 3]), None);
        assert_eq!(first_gap(&[1, 3]), Some(2));
        assert_eq!(first_gap(&[2]), Some(1));
    }

    #[test]
    fn schema_checks() {
        let a = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("x", DataType::Utf8, true),
        ]);
        let same_loose = Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("x", DataType::Utf8, true),
        ]);
        assert_eq!(schema_difference(&a, &same_loose), None);
        assert!(loosen_nullability(&a, &same_loose).field(0).is_nullable());
        let typed = Schema::new(vec![
            Field::new("id", DataType::Int32, false),
            Field::new("x", DataType::Utf8, true),
        ]);
        assert!(schema_difference(&a, &typed).unwrap().contains("type Int64"));
        let fewer = Schema::new(vec![Field::new("id", DataType::Int64, false)]);
        assert!(schema_difference(&a, &fewer).unwrap().contains("lacks column(s) x"));
        assert!(schema_difference(&fewer, &a).unwrap().contains("extra column(s) x"));
        let renamed = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("y", DataType::Utf8, true),
        ]);
        assert!(schema_difference(&a, &renamed).unwrap().contains("\"x\""));
    }
}
