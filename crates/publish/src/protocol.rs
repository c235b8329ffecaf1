//! The decisions of the publish protocol as plain functions over plain data: which version number
//! comes next, how a new version is assembled copy-on-write from its parent, whether a schema is
//! compatible, and which pointer entry is current (whether the log is whole:
//! [`crate::numbered`]). No IO here; the [`crate::Dataset`] methods are thin adapters around
//! these.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::datatypes::{Field, Schema};

use crate::model::{ChunkRef, Flip, PartitionEntry, RecordHead, Summary};

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

/// The version current at instant `at`, from a dataset's pointer history (pure): the target of
/// the last flip made at or before it (by sequence number, so a clock that stepped back never
/// reorders the history). `None` before the first flip.
pub fn version_at(history: &[Flip], at: chrono::DateTime<chrono::Utc>) -> Option<u64> {
    let mut flips: Vec<&Flip> = history.iter().collect();
    flips.sort_by_key(|f| f.seq);
    flips.iter().take_while(|f| f.at <= at).last().map(|f| f.to)
}

/// How many partitions a chunk of a version's partition list holds at most.
pub const CHUNK_PARTITIONS: usize = 64;

/// Which of the parent's partitions a publish replaces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Replace {
    /// Only the partitions it wrote.
    #[default]
    Written,
    /// The partitions it wrote and these keys (dropped when not written: the run owns them and
    /// found no rows for them).
    Owned(BTreeSet<String>),
    /// Every partition: the new version holds only what it wrote.
    All,
}

/// The keys a publish writes or owns; `None` when it replaces everything.
pub fn touched_keys(written: &[PartitionEntry], replace: &Replace) -> Option<BTreeSet<String>> {
    let mut keys: BTreeSet<String> = written.iter().map(|p| p.key.clone()).collect();
    match replace {
        Replace::All => return None,
        Replace::Written => {}
        Replace::Owned(owned) => keys.extend(owned.iter().cloned()),
    }
    Some(keys)
}

/// The chunk that holds `key`, or would hold it if it were added: the last chunk whose first
/// key is not after it (the first chunk for a key before all of them).
pub fn chunk_of(chunks: &[ChunkRef], key: &str) -> usize {
    chunks.partition_point(|c| c.keys.first().is_some_and(|f| f.as_str() <= key)).saturating_sub(1)
}

/// The chunks that hold or would hold `keys`, by index.
pub fn chunks_for<'a>(
    chunks: &[ChunkRef],
    keys: impl IntoIterator<Item = &'a str>,
) -> BTreeSet<usize> {
    if chunks.is_empty() {
        return BTreeSet::new();
    }
    keys.into_iter().map(|k| chunk_of(chunks, k)).collect()
}

/// The reference to a chunk holding `parts` (sorted by key).
pub fn chunk_ref(path: String, parts: &[PartitionEntry]) -> ChunkRef {
    ChunkRef {
        path,
        keys: parts.iter().map(|p| p.key.clone()).collect(),
        rows: parts.iter().map(|p| p.rows).sum(),
        files: parts.iter().map(|p| p.files.len() as u64).sum(),
        bytes: parts.iter().map(|p| p.bytes).sum(),
    }
}

/// The partitions of some chunks of a record, by index in its `chunks`.
pub type LoadedChunks = BTreeMap<usize, Arc<Vec<PartitionEntry>>>;

/// The partition list of a new version, assembled copy-on-write from its parent's.
#[derive(Debug, Clone, PartialEq)]
pub struct Assembled {
    /// All chunks of the new version, in key order.
    pub chunks: Vec<ChunkRef>,
    /// The chunks the new version writes (the others are the parent's, named again): their
    /// paths and partitions.
    pub new: Vec<(String, Arc<Vec<PartitionEntry>>)>,
    pub summary: Summary,
}

/// Assembles the partitions of a new version, copy-on-write.
///
/// Every partition in `written` replaces the parent's partition with the same key. The parent's
/// other partitions are reused as they are (same files, same paths), except those `replace`
/// owns, which are dropped. Only the parent's chunks that hold a key the publish writes or owns
/// are rewritten (`loaded` holds their partitions, by index in the parent's `chunks`); the
/// others are named again, unread. A rewritten run of adjacent chunks is cut again into chunks
/// of at most [`CHUNK_PARTITIONS`], so a dataset that grows by appending rewrites only its last,
/// partly filled chunk. `path_of(n)` names the `n`th new chunk.
pub fn assemble(
    parent: Option<(&RecordHead, &LoadedChunks)>,
    mut written: Vec<PartitionEntry>,
    replace: &Replace,
    path_of: &dyn Fn(usize) -> String,
) -> Assembled {
    written.sort_by(|a, b| a.key.cmp(&b.key));
    let written_keys: BTreeSet<String> = written.iter().map(|p| p.key.clone()).collect();
    let parent_chunks: &[ChunkRef] = parent.map_or(&[], |(h, _)| h.chunks.as_slice());
    let parent_count: u64 = parent_chunks.iter().map(|c| c.keys.len() as u64).sum();
    let mut out = Assembled { chunks: Vec::new(), new: Vec::new(), summary: Summary::default() };
    // Cuts sorted partitions into new chunks.
    let cut = |parts: Vec<PartitionEntry>, out: &mut Assembled| {
        let mut parts = parts.into_iter().peekable();
        while parts.peek().is_some() {
            let piece: Vec<PartitionEntry> = parts.by_ref().take(CHUNK_PARTITIONS).collect();
            let path = path_of(out.new.len());
            out.chunks.push(chunk_ref(path.clone(), &piece));
            out.new.push((path, Arc::new(piece)));
        }
    };
    let (mut replaced, mut dropped) = (0u64, 0u64);
    let touched = touched_keys(&written, replace);
    let partitions_written = written.len() as u64;
    match (&touched, parent) {
        (None, _) => {
            // Replace everything: the parent's keys that are not written again are dropped.
            replaced = parent_chunks
                .iter()
                .flat_map(|c| &c.keys)
                .filter(|k| written_keys.contains(*k))
                .count() as u64;
            dropped = parent_count - replaced;
            cut(written, &mut out);
        }
        (Some(_), None) => cut(written, &mut out),
        (Some(_), Some(_)) if parent_chunks.is_empty() => cut(written, &mut out),
        (Some(touched), Some((_, loaded))) => {
            let affected = chunks_for(parent_chunks, touched.iter().map(String::as_str));
            let mut written = written.into_iter().peekable();
            let mut i = 0;
            while i < parent_chunks.len() {
                if !affected.contains(&i) {
                    out.chunks.push(parent_chunks[i].clone());
                    i += 1;
                    continue;
                }
                // A run of adjacent affected chunks is merged and cut again.
                let mut group = Vec::new();
                while i < parent_chunks.len() && affected.contains(&i) {
                    for p in loaded.get(&i).map(|c| c.as_slice()).unwrap_or_default() {
                        if written_keys.contains(&p.key) {
                            replaced += 1;
                        } else if touched.contains(&p.key) {
                            dropped += 1;
                        } else {
                            group.push(p.clone());
                        }
                    }
                    i += 1;
                }
                // The written keys that fall in these chunks: all those before the next chunk.
                let next_first = parent_chunks.get(i).and_then(|c| c.keys.first());
                while let Some(p) = written.next_if(|p| next_first.is_none_or(|f| p.key < *f)) {
                    group.push(p);
                }
                group.sort_by(|a, b| a.key.cmp(&b.key));
                cut(group, &mut out);
            }
        }
    }
    let reused = parent_count - replaced - dropped;
    out.summary = Summary {
        rows: out.chunks.iter().map(|c| c.rows).sum(),
        files: out.chunks.iter().map(|c| c.files).sum(),
        bytes: out.chunks.iter().map(|c| c.bytes).sum(),
        partitions: out.chunks.iter().map(|c| c.keys.len() as u64).sum(),
        partitions_written,
        partitions_reused: if touched.is_none() { 0 } else { reused },
        partitions_dropped: dropped,
    };
    out
}

/// Whether a version prepared on `base` may be re-merged onto `now` (another writer published in
/// between): only if every partition it writes or owns is the same in both, and the layout did
/// not change. Replacing everything never rebases. `base_parts` and `now_parts` hold at least
/// the partitions with those keys (the chunks that hold them), sorted by key.
pub fn rebase_allowed(
    base: Option<(&RecordHead, &[PartitionEntry])>,
    now: Option<(&RecordHead, &[PartitionEntry])>,
    written: &[PartitionEntry],
    replace: &Replace,
) -> bool {
    rebase_blockers(base, now, written, replace).is_empty()
}

/// What stops a version prepared on `base` from being re-merged onto `now`, one phrase each: the
/// partitions it writes or owns that differ between the two (by key), or why the whole dataset
/// counts as changed. Empty when the rebase is allowed ([`rebase_allowed`]).
pub fn rebase_blockers(
    base: Option<(&RecordHead, &[PartitionEntry])>,
    now: Option<(&RecordHead, &[PartitionEntry])>,
    written: &[PartitionEntry],
    replace: &Replace,
) -> Vec<String> {
    let Some(keys) = touched_keys(written, replace) else {
        return vec!["every partition (the version replaces the dataset whole)".into()];
    };
    let (Some((base, base_parts)), Some((now, now_parts))) = (base, now) else {
        // Created concurrently from nothing, or emptied: never merge blindly.
        return match (base.is_none(), now.is_none()) {
            (true, true) => Vec::new(),
            (true, false) => vec!["every partition (the dataset was created meanwhile)".into()],
            _ => vec!["every partition (the dataset has no current version now)".into()],
        };
    };
    if base.partition_by != now.partition_by {
        return vec!["every partition (the dataset was partitioned again)".into()];
    }
    if base.schema != now.schema {
        return vec!["every partition (the dataset's schema changed)".into()];
    }
    fn find<'a>(parts: &'a [PartitionEntry], k: &str) -> Option<&'a PartitionEntry> {
        parts.binary_search_by(|p| p.key.as_str().cmp(k)).ok().map(|i| &parts[i])
    }
    keys.into_iter().filter(|k| !same_content(find(base_parts, k), find(now_parts, k))).collect()
}

/// Whether two entries of one partition hold the same rows: the same entry, or entries whose
/// recorded control totals have the same row count and order-independent row hash (another run
/// wrote the same rows again). Entries without totals are compared as entries.
pub fn same_content(a: Option<&PartitionEntry>, b: Option<&PartitionEntry>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) if a == b => true,
        (Some(a), Some(b)) => match (&a.totals, &b.totals) {
            (Some(ta), Some(tb)) => {
                a.rows == b.rows && ta.encoding == tb.encoding && ta.row_hash == tb.row_hash
            }
            _ => false,
        },
        _ => false,
    }
}

/// How a version computed on the pointer entry `base_seq` (a shadow's) becomes current now that
/// the pointer is at `head_seq` (pure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Promotion {
    /// The pointer has not moved: the version is flipped as it is.
    Direct,
    /// The pointer moved without touching anything the version replaces: its partitions are
    /// merged onto the current version, copy-on-write, as a new version.
    Rebase,
    /// The pointer moved and changed these partitions (or the whole dataset): a person decides.
    Conflict(Vec<String>),
}

/// Decides a [`Promotion`] from the pointer then and now and, when it moved, the blockers
/// [`rebase_blockers`] found.
pub fn promotion(base_seq: u64, head_seq: u64, blockers: Vec<String>) -> Promotion {
    if base_seq == head_seq {
        Promotion::Direct
    } else if blockers.is_empty() {
        Promotion::Rebase
    } else {
        Promotion::Conflict(blockers)
    }
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
                crc32: None,
            }],
        }
    }

    /// A parent record whose partitions are in chunks of `size`, and all their contents.
    fn chunked(
        parts: Vec<PartitionEntry>,
        size: usize,
    ) -> (RecordHead, BTreeMap<usize, Arc<Vec<PartitionEntry>>>) {
        let mut head = RecordHead {
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
            chunks: Vec::new(),
            evidence: None,
            owner: None,
            restatement: None,
        };
        let mut loaded = BTreeMap::new();
        for (i, piece) in parts.chunks(size).enumerate() {
            head.chunks.push(chunk_ref(format!("old-{i}"), piece));
            loaded.insert(i, Arc::new(piece.to_vec()));
        }
        (head, loaded)
    }

    fn new_path(n: usize) -> String {
        format!("new-{n}")
    }

    fn keys(a: &Assembled) -> Vec<(String, String)> {
        a.new
            .iter()
            .flat_map(|(_, c)| c.iter())
            .map(|p| (p.key.clone(), p.run_id.clone()))
            .collect()
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

    /// The version current at an instant: the last flip at or before it, a rollback included,
    /// in sequence order even when a clock stepped back.
    #[test]
    fn the_version_current_at_an_instant() {
        let at = |secs: i64| Utc.timestamp_opt(secs, 0).unwrap();
        let mut f1 = flip(1, 1);
        f1.at = at(100);
        let mut f2 = flip(2, 2);
        f2.at = at(200);
        let mut back = flip(3, 2);
        back.to = 1;
        back.at = at(300);
        let history = vec![back.clone(), f1.clone(), f2.clone()];
        assert_eq!(version_at(&history, at(99)), None);
        assert_eq!(version_at(&history, at(100)), Some(1));
        assert_eq!(version_at(&history, at(250)), Some(2));
        assert_eq!(version_at(&history, at(300)), Some(1), "the rollback made 1 current");
        // A flip stamped earlier than the one before it (a clock stepped back) ends the walk.
        let mut skewed = flip(4, 3);
        skewed.at = at(150);
        let history = vec![f1, f2, back, skewed];
        assert_eq!(version_at(&history, at(250)), Some(2), "the later flip stamped 150 is after");
        assert_eq!(version_at(&history, at(400)), Some(3));
    }

    #[test]
    fn copy_on_write_reuses_untouched_partitions() {
        let (parent, loaded) =
            chunked(vec![part("k=a", "r1", 1), part("k=b", "r1", 2), part("k=c", "r1", 3)], 64);
        let m = assemble(
            Some((&parent, &loaded)),
            vec![part("k=b", "r2", 20)],
            &Replace::Written,
            &new_path,
        );
        assert_eq!(
            keys(&m),
            vec![
                ("k=a".into(), "r1".into()),
                ("k=b".into(), "r2".into()),
                ("k=c".into(), "r1".into())
            ]
        );
        // Reused partitions keep the parent's file paths: nothing is copied.
        assert_eq!(m.new[0].1[0].files, loaded[&0][0].files);
        assert_eq!(m.summary.rows, 1 + 20 + 3);
        assert_eq!((m.summary.partitions_written, m.summary.partitions_reused), (1, 2));
        assert_eq!(m.summary.partitions_dropped, 0);
    }

    #[test]
    fn only_the_chunks_holding_touched_keys_are_rewritten() {
        let parts: Vec<_> = (0..10).map(|i| part(&format!("k={i:02}"), "r1", 1)).collect();
        let (parent, mut loaded) = chunked(parts, 4);
        // Chunks [00..03] [04..07] [08 09]; a write of 05 reads and rewrites only the middle one.
        loaded.remove(&0);
        loaded.remove(&2);
        let m = assemble(
            Some((&parent, &loaded)),
            vec![part("k=05", "r2", 7)],
            &Replace::Written,
            &new_path,
        );
        let paths: Vec<&str> = m.chunks.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, vec!["old-0", "new-0", "old-2"]);
        assert_eq!(m.new.len(), 1);
        assert_eq!(m.summary.rows, 9 + 7);
        assert_eq!((m.summary.partitions, m.summary.partitions_reused), (10, 9));
        // Appending after the last key rewrites only the last chunk.
        let loaded_last: BTreeMap<_, _> =
            [(2, Arc::new(vec![part("k=08", "r1", 1), part("k=09", "r1", 1)]))].into();
        let m = assemble(
            Some((&parent, &loaded_last)),
            vec![part("k=10", "r3", 1)],
            &Replace::Written,
            &new_path,
        );
        let paths: Vec<&str> = m.chunks.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, vec!["old-0", "old-1", "new-0"]);
        assert_eq!(m.chunks[2].keys, vec!["k=08", "k=09", "k=10"]);
        // A key before every chunk goes to the first.
        assert_eq!(chunk_of(&parent.chunks, "k="), 0);
        assert_eq!(chunk_of(&parent.chunks, "k=07x"), 1);
        // A chunk that grows past the limit is cut again; order holds across chunks.
        let parts: Vec<_> =
            (0..CHUNK_PARTITIONS).map(|i| part(&format!("k={i:03}"), "r1", 1)).collect();
        let (parent, loaded) = chunked(parts, CHUNK_PARTITIONS);
        let m = assemble(
            Some((&parent, &loaded)),
            vec![part("k=000a", "r2", 1), part("k=999", "r2", 1)],
            &Replace::Written,
            &new_path,
        );
        assert_eq!(m.chunks.len(), 2);
        assert_eq!(m.chunks[0].keys.len(), CHUNK_PARTITIONS);
        let all: Vec<&String> = m.chunks.iter().flat_map(|c| &c.keys).collect();
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(all.len(), CHUNK_PARTITIONS + 2);
    }

    #[test]
    fn replace_all_drops_the_rest() {
        let (parent, loaded) = chunked(vec![part("k=a", "r1", 1), part("k=b", "r1", 2)], 64);
        let m = assemble(
            Some((&parent, &loaded)),
            vec![part("k=z", "r2", 5)],
            &Replace::All,
            &new_path,
        );
        assert_eq!(m.summary.partitions, 1);
        assert_eq!(m.summary.partitions_dropped, 2);
        assert_eq!(m.summary.rows, 5);
        let m = assemble(None, vec![part("k=a", "r2", 5)], &Replace::All, &new_path);
        assert_eq!((m.summary.partitions, m.summary.partitions_dropped), (1, 0));
    }

    #[test]
    fn owned_keys_not_written_are_dropped() {
        let (parent, loaded) = chunked(vec![part("k=a", "r1", 1), part("k=b", "r1", 2)], 64);
        let owned = Replace::Owned(["k=a".to_string(), "k=c".to_string()].into_iter().collect());
        let m = assemble(Some((&parent, &loaded)), vec![part("k=c", "r2", 3)], &owned, &new_path);
        assert_eq!(keys(&m), vec![("k=b".into(), "r1".into()), ("k=c".into(), "r2".into())]);
        assert_eq!((m.summary.partitions_dropped, m.summary.partitions_reused), (1, 1));
    }

    #[test]
    fn partition_values_are_read_from_keys() {
        assert_eq!(
            crate::model::key_values("a=1/b=__HIVE_DEFAULT_PARTITION__/c=x=y"),
            vec![Some("1".to_string()), None, Some("x=y".to_string())]
        );
        assert!(crate::model::key_values("").is_empty());
    }

    #[test]
    fn rebase_only_when_nothing_this_run_touches_changed() {
        let base_parts = vec![part("k=a", "r1", 1), part("k=b", "r1", 2)];
        let (base, _) = chunked(base_parts.clone(), 64);
        let base = Some((&base, base_parts.as_slice()));
        // Someone else rewrote k=b: writing k=a may rebase, writing k=b may not.
        let now_parts = vec![part("k=a", "r1", 1), part("k=b", "r3", 7)];
        let (now_head, _) = chunked(now_parts.clone(), 64);
        let now = Some((&now_head, now_parts.as_slice()));
        assert!(rebase_allowed(base, now, &[part("k=a", "r2", 5)], &Replace::Written));
        assert!(!rebase_allowed(base, now, &[part("k=b", "r2", 5)], &Replace::Written));
        // Owning k=b without writing it counts as touching it.
        let owned = Replace::Owned(["k=b".to_string()].into_iter().collect());
        assert!(!rebase_allowed(base, now, &[part("k=a", "r2", 5)], &owned));
        // A new partition someone else created in between is a conflict too.
        let now2_parts = vec![part("k=a", "r1", 1), part("k=b", "r1", 2), part("k=c", "r4", 1)];
        let (now2_head, _) = chunked(now2_parts.clone(), 64);
        let now2 = Some((&now2_head, now2_parts.as_slice()));
        assert!(!rebase_allowed(base, now2, &[part("k=c", "r2", 5)], &Replace::Written));
        assert!(rebase_allowed(base, now2, &[part("k=a", "r2", 5)], &Replace::Written));
        assert!(!rebase_allowed(base, now, &[part("k=a", "r2", 5)], &Replace::All));
        assert!(!rebase_allowed(None, now, &[part("k=a", "r2", 5)], &Replace::Written));
    }

    #[test]
    fn a_promotion_flips_as_built_rebases_or_names_what_moved() {
        let base_parts = vec![part("k=a", "r1", 1), part("k=b", "r1", 2)];
        let (base, _) = chunked(base_parts.clone(), 64);
        let now_parts = vec![part("k=a", "r1", 1), part("k=b", "r3", 7)];
        let (mut now, _) = chunked(now_parts.clone(), 64);
        let b = Some((&base, base_parts.as_slice()));
        let n = Some((&now, now_parts.as_slice()));
        let shadow_a = [part("k=a", "s", 5)];
        let shadow_b = [part("k=b", "s", 5)];
        assert_eq!(promotion(3, 3, vec!["ignored".into()]), Promotion::Direct);
        let clean = rebase_blockers(b, n, &shadow_a, &Replace::Written);
        assert_eq!(promotion(3, 4, clean), Promotion::Rebase);
        let moved = rebase_blockers(b, n, &shadow_b, &Replace::Written);
        assert_eq!(promotion(3, 4, moved), Promotion::Conflict(vec!["k=b".into()]));
        let whole = rebase_blockers(b, n, &shadow_a, &Replace::All);
        assert!(whole[0].contains("replaces the dataset whole"), "{whole:?}");
        now.partition_by = vec!["other".into()];
        let n = Some((&now, now_parts.as_slice()));
        let layout = rebase_blockers(b, n, &shadow_a, &Replace::Written);
        assert!(layout[0].contains("partitioned again"), "{layout:?}");
        assert!(rebase_blockers(None, None, &shadow_a, &Replace::Written).is_empty());
        // Another run wrote the same rows again (other files, the same row hash): unchanged.
        let totals = |h: &str| strata_reconcile::ControlTotals {
            rows: 2,
            row_hash: h.into(),
            ..Default::default()
        };
        let (mut x, mut y) = (part("k=b", "r1", 2), part("k=b", "r3", 2));
        assert!(!same_content(Some(&x), Some(&y)), "no totals: compared as entries");
        x.totals = Some(totals("aa"));
        y.totals = Some(totals("aa"));
        assert!(same_content(Some(&x), Some(&y)));
        y.totals = Some(totals("bb"));
        assert!(!same_content(Some(&x), Some(&y)));
        assert!(!same_content(Some(&x), None));
        assert!(!rebase_blockers(None, b, &shadow_a, &Replace::Written).is_empty());
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
