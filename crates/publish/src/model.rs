//! The JSON records of the protocol. `docs/protocol.md` specifies them field by field; keep the
//! two in step.

use std::fmt;

use arrow::datatypes::Schema;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// `format` of a version record that lists its partitions in chunks ([`RecordHead`]).
pub const VERSION_FORMAT: &str = "strata.version.v2";
/// `format` of a chunk of a version's partition list.
pub const CHUNK_FORMAT: &str = "strata.partitions.v1";
/// `format` of a pointer entry.
pub const FLIP_FORMAT: &str = "strata.flip.v1";
/// `format` of a pointer checkpoint.
pub const CHECKPOINT_FORMAT: &str = "strata.pointer-checkpoint.v1";

/// Every pointer entry from 1 to `seq`, in one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub format: String,
    pub seq: u64,
    pub flips: Vec<Flip>,
}

/// One Parquet data file of a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the lake root, e.g. `orders/run_id=R/order_date=2026-01-01/part-00000.parquet`.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Number of rows.
    pub rows: u64,
    /// Lower-case hex sha256 of the whole file.
    pub sha256: String,
    /// CRC-32 of each 64 KiB block of the file, 8 hex digits a block, in order: what readers
    /// check every read against ([`crate::checked`]). Absent in files written before strata
    /// recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32: Option<String>,
}

/// One partition of a version: the files that hold its rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionEntry {
    /// `col=value[/col=value…]`, or `""` for an unpartitioned dataset.
    pub key: String,
    /// The values of the partition columns, in `partition_by` order; `null` for a null value.
    pub values: Vec<Option<String>>,
    /// The run that wrote these files.
    pub run_id: String,
    /// The version in which these files were first published.
    pub written_in: u64,
    /// Rows over all files.
    pub rows: u64,
    /// Bytes over all files.
    pub bytes: u64,
    /// The files, in write order.
    pub files: Vec<FileEntry>,
    /// Control totals of the partition's rows, computed while writing (see strata-reconcile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totals: Option<strata_reconcile::ControlTotals>,
}

/// Summary counts of a version, also carried in pointer entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub rows: u64,
    pub files: u64,
    pub bytes: u64,
    pub partitions: u64,
    /// Partitions this version wrote.
    pub partitions_written: u64,
    /// Partitions reused, unchanged and uncopied, from the parent.
    pub partitions_reused: u64,
    /// Partitions of the parent that this version no longer has (only with replace-all).
    pub partitions_dropped: u64,
}

/// One chunk of a version's partition list, as the version record names it: a run that changes
/// a few partitions writes only the chunks that hold them, and a reader of a few partitions
/// reads only their chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// Path of the chunk object ([`PartitionChunk`]) relative to the lake root.
    pub path: String,
    /// The keys of its partitions, sorted. Chunks are in key order and do not overlap.
    pub keys: Vec<String>,
    pub rows: u64,
    pub files: u64,
    pub bytes: u64,
}

/// The object a [`ChunkRef`] names. Written once, before the record that names it; never
/// changed. Later versions name it again for as long as its partitions are unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionChunk {
    pub format: String,
    pub dataset: String,
    /// The version that wrote it.
    pub version: u64,
    /// Sorted by `key`.
    pub partitions: Vec<PartitionEntry>,
}

/// A version record as stored: everything a reader needs to find one version's files, with
/// the partitions in chunks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordHead {
    pub format: String,
    pub dataset: String,
    pub version: u64,
    pub parent: Option<u64>,
    pub publish_seq: u64,
    pub run_id: String,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub partition_by: Vec<String>,
    pub schema: Schema,
    pub summary: Summary,
    /// In key order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<ChunkRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
    /// Who writes the dataset: whoever created it, carried from version to version until
    /// another writer adopts it. Absent in versions written before owners were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// For a version that changed partitions of a closed period: why, who approved it, what
    /// changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restatement: Option<crate::closing::Restatement>,
}

/// Who writes a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Owner {
    /// The pipeline of this name.
    Pipeline(String),
    /// `strata publish`, by hand.
    Publish,
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Pipeline(name) => write!(f, "pipeline {name}"),
            Owner::Publish => f.write_str("`strata publish`"),
        }
    }
}

impl Owner {
    /// Whether `self` may write a dataset whose current version is owned by `current` (pure):
    /// an unowned dataset, its own, or one it adopts explicitly. `strata publish` may write any
    /// dataset (a correction of a pipeline's output stays the pipeline's); a pipeline never
    /// writes over a dataset someone else owns unless it adopts it.
    pub fn may_write(&self, current: Option<&Owner>, adopt: bool) -> bool {
        match (self, current) {
            (Owner::Publish, _) | (_, None) => true,
            (mine, Some(theirs)) => mine == theirs || adopt,
        }
    }

    /// The owner of the version `self` writes over `current` (pure): the current owner, unless
    /// there is none or `self` adopts the dataset.
    pub fn next(&self, current: Option<&Owner>, adopt: bool) -> Owner {
        match current {
            Some(owner) if !adopt => owner.clone(),
            _ => self.clone(),
        }
    }
}

impl RecordHead {
    /// The summary carried in pointer entries.
    pub fn brief(&self) -> VersionBrief {
        VersionBrief::of(self.version, &self.run_id, self.created_at, &self.summary)
    }

    /// The whole record, given its partitions (all of them, or the ones a reader selected).
    pub fn with_partitions(&self, partitions: Vec<PartitionEntry>) -> VersionRecord {
        VersionRecord { head: self.clone(), partitions }
    }
}

/// The values of a partition, from its key (`col=value[/col=value…]`; values never hold `/`,
/// column names never `=`).
pub fn key_values(key: &str) -> Vec<Option<String>> {
    if key.is_empty() {
        return Vec::new();
    }
    key.split('/')
        .map(|seg| {
            let v = seg.split_once('=').map_or(seg, |(_, v)| v);
            (v != crate::names::NULL_PARTITION).then(|| v.to_string())
        })
        .collect()
}

/// A version with all its partitions (or, from [`crate::Dataset::select`], the ones a reader
/// asked for): what readers of one version use. The header's fields read through it
/// (`record.version`, `record.schema`, …).
#[derive(Debug, Clone, PartialEq)]
pub struct VersionRecord {
    /// The stored record's header.
    pub head: RecordHead,
    /// Sorted by `key`.
    pub partitions: Vec<PartitionEntry>,
}

impl std::ops::Deref for VersionRecord {
    type Target = RecordHead;

    fn deref(&self) -> &RecordHead {
        &self.head
    }
}

impl VersionRecord {
    /// All files of the version, in partition order.
    pub fn files(&self) -> impl Iterator<Item = &FileEntry> {
        self.partitions.iter().flat_map(|p| p.files.iter())
    }
}

/// What a pointer entry says about the version it makes current.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionBrief {
    pub version: u64,
    /// The run that wrote the version.
    pub run_id: String,
    pub created_at: DateTime<Utc>,
    pub rows: u64,
    pub files: u64,
    pub bytes: u64,
    pub partitions: u64,
}

impl VersionBrief {
    fn of(version: u64, run_id: &str, created_at: DateTime<Utc>, summary: &Summary) -> Self {
        VersionBrief {
            version,
            run_id: run_id.to_string(),
            created_at,
            rows: summary.rows,
            files: summary.files,
            bytes: summary.bytes,
            partitions: summary.partitions,
        }
    }
}

/// Why the pointer moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlipKind {
    /// A new version was published.
    #[default]
    Publish,
    /// An earlier version was made current again.
    Rollback,
    /// A version computed in a shadow (`strata promote`) was made current: published for the
    /// first time, by the shadow's run.
    Promote,
    /// A new version replaced partitions of a closed period (a restatement, with its reason).
    Restatement,
}

impl FlipKind {
    /// Whether the flip makes a version current for the first time (every kind but a
    /// rollback): the version is then published, and its run is the flip's run.
    pub fn first_publish(self) -> bool {
        !matches!(self, FlipKind::Rollback)
    }
}

impl std::fmt::Display for FlipKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FlipKind::Publish => "publish",
            FlipKind::Rollback => "rollback",
            FlipKind::Promote => "promote",
            FlipKind::Restatement => "restatement",
        })
    }
}

/// A pointer entry: one flip of the dataset's current-version pointer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flip {
    pub format: String,
    /// 1, 2, 3, … with no gaps; the entry with the greatest `seq` is the current pointer.
    pub seq: u64,
    pub kind: FlipKind,
    /// The version current before this flip; `null` for the first.
    pub from: Option<u64>,
    /// The version current after this flip.
    pub to: u64,
    /// The run (publish) or operation (rollback) that made the flip.
    pub run_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Time from the run context.
    pub at: DateTime<Utc>,
    /// The greatest version number ever allocated up to this flip.
    pub max_version: u64,
    /// The version that `to` names.
    pub version: VersionBrief,
}

/// The pointer of a dataset as a run found it before preparing anything: recovery looks for the
/// run's flips after `seq` and its leftover records above `max_version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Base {
    pub seq: u64,
    pub max_version: u64,
}

// The evidence a version record carries (written by strata's runs; `docs/protocol.md`).

/// What a failing rule or gate does, from mildest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Severity {
    /// Recorded.
    Info,
    /// Recorded, and the run says so; the version carries it as a warning.
    Warn,
    /// The failing rows go to quarantine with the rule as their reason (rules only).
    QuarantineRecord,
    /// The partitions holding failing rows are not published (rules only).
    FailPartition,
    /// Nothing is published; the run is FAILED.
    FailRun,
    /// The output is staged and held until a person approves or rejects it.
    ManualReview,
}

impl Severity {
    /// Every severity, from mildest.
    pub const ALL: [Severity; 6] = [
        Severity::Info,
        Severity::Warn,
        Severity::QuarantineRecord,
        Severity::FailPartition,
        Severity::FailRun,
        Severity::ManualReview,
    ];

    /// The spelling in `strata.toml` and in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "INFO",
            Severity::Warn => "WARN",
            Severity::QuarantineRecord => "QUARANTINE_RECORD",
            Severity::FailPartition => "FAIL_PARTITION",
            Severity::FailRun => "FAIL_RUN",
            Severity::ManualReview => "MANUAL_REVIEW",
        }
    }

    /// Whether a gate may have this severity: a gate measures a whole stage, so it cannot
    /// quarantine a record or fail one partition.
    pub fn fits_a_gate(self) -> bool {
        !matches!(self, Severity::QuarantineRecord | Severity::FailPartition)
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A rule or gate that found something, and what its severity made of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub severity: Severity,
    /// `rule <name>` or `gate <name>`.
    pub source: String,
    pub dataset: String,
    /// Rows (for rules) that failed.
    pub rows: u64,
    pub detail: String,
}

/// One reconciliation check and whether it held, as the manifest and the version's evidence
/// record it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// What was compared, e.g. `input = accepted + quarantined + duplicates + withheld`.
    pub check: String,
    pub dataset: String,
    pub ok: bool,
    /// The values compared, e.g. `20 = 12 + 5 + 3 + 0`.
    pub detail: String,
}

impl Check {
    pub fn new(dataset: &str, check: impl Into<String>, ok: bool, detail: String) -> Self {
        Check { check: check.into(), dataset: dataset.to_string(), ok, detail }
    }

    /// `dataset: check (detail)`, for messages.
    pub fn describe(&self) -> String {
        format!("{}: {} ({})", self.dataset, self.check, self.detail)
    }
}

/// The evidence a version record carries: the run, the checks on the dataset, the findings on
/// it (a quarantine dataset carries its base dataset's), its warnings, and, for a held run, who
/// approved it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub run_id: String,
    #[serde(default)]
    pub checks: Vec<Check>,
    #[serde(default)]
    pub findings: Vec<Finding>,
    #[serde(default)]
    pub warnings: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved: Option<Approval>,
}

/// A person's approval of a held run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub at: DateTime<Utc>,
    pub note: Option<String>,
}

/// What a lock object says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    pub format: String,
    pub run_id: String,
    pub host: String,
    pub pid: u32,
    /// The holder process's start time (clock ticks since boot), to tell a reused pid apart.
    #[serde(default)]
    pub pid_start: Option<u64>,
    pub acquired_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

#[cfg(test)]
mod owner_tests {
    use super::Owner;

    #[test]
    fn a_pipeline_writes_only_what_it_owns_or_adopts() {
        let shop = Owner::Pipeline("shop".into());
        let other = Owner::Pipeline("other".into());
        assert!(shop.may_write(None, false), "unowned");
        assert!(shop.may_write(Some(&shop), false));
        assert!(!shop.may_write(Some(&Owner::Publish), false), "published by hand");
        assert!(!shop.may_write(Some(&other), false));
        assert!(shop.may_write(Some(&other), true), "adopted");
        assert!(Owner::Publish.may_write(Some(&shop), false), "a correction by hand");
        // Ownership stays with the dataset's owner, moves on adoption, is taken when absent.
        assert_eq!(Owner::Publish.next(Some(&shop), false), shop);
        assert_eq!(shop.next(Some(&Owner::Publish), true), shop);
        assert_eq!(shop.next(None, false), shop);
    }
}
