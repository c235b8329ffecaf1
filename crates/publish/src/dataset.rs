//! One dataset of a lake: reading its pointer and versions, publishing, rolling back, verifying.
//!
//! Every commit is a create-if-absent ([`Lake::create_if_absent`]) of the next pointer entry
//! (the pointer is a numbered log, [`crate::numbered`]), which local disk, memory and S3 all
//! provide. The retry loop for the one contended step, allocating a version number, lives in
//! [`Dataset::prepare`]; the flip itself is never retried blindly: an `AlreadyExists` answer is
//! resolved by reading what is there (see [`Dataset::flip`]).

use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::context::RunContext;
use crate::crash;
use crate::deletion::{self, Holder, RecordFound, Referenced};
use crate::error::{error_chain, Error, Result};
use crate::lake::Lake;
use crate::layout;
use crate::model::Base;
use crate::model::{
    Checkpoint, ChunkRef, FileEntry, Flip, FlipKind, PartitionChunk, PartitionEntry, RecordHead,
    VersionBrief, VersionRecord, CHECKPOINT_FORMAT, CHUNK_FORMAT, FLIP_FORMAT, VERSION_FORMAT,
};
use crate::names::validate_dataset_name;
use crate::numbered::{End, NumberedLog};
use crate::protocol;
use crate::writer::{Staged, StagingWriter, WriterOptions};

/// A pointer checkpoint is written every this many flips.
pub const CHECKPOINT_EVERY: u64 = 100;
/// How many objects strata reads or checks at once.
const IO_CONCURRENCY: usize = 32;
/// How many version numbers a publish tries before giving up (each failure means another
/// writer took the number, so this bounds the number of concurrent writers, not retries).
const MAX_VERSION_ATTEMPTS: u64 = 10_000;
/// How many times a create-if-absent whose outcome the store did not report is attempted.
const CREATE_ATTEMPTS: u32 = 5;
/// How many times [`Dataset::commit`] rebases onto a pointer that moved.
const MAX_REBASES: u32 = 100;

/// What [`Dataset::discard_run`] removed, and why it kept anything it kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Discarded {
    pub removed: Vec<String>,
    pub kept_because: Option<String>,
}

/// Options of a publish.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// Replace every partition: the new version holds only what this run wrote.
    pub replace_all: bool,
    /// Partition keys this run owns besides those it writes: the parent's partitions with these
    /// keys are dropped when the run wrote nothing for them (an owned day with no rows left).
    pub owned: Option<std::collections::BTreeSet<String>>,
    /// Recorded in the version record and the pointer entry.
    pub reason: Option<String>,
    /// Who writes this version ([`crate::model::Owner`]); the record carries the dataset's
    /// owner, which this becomes if the dataset has none yet, or with `adopt`.
    pub writer: Option<crate::model::Owner>,
    /// Take the dataset over from its owner.
    pub adopt: bool,
    /// What the flip records: a publish, a promotion of a shadow, a restatement.
    pub kind: FlipKind,
    /// Recorded in the version record of a restatement.
    pub restatement: Option<crate::closing::Restatement>,
}

/// A version whose record is written but whose pointer entry is not: the state between
/// staging and publishing. Dropping it leaves the dataset exactly as it was.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub record: RecordHead,
    head: Option<Flip>,
    /// The copy-on-write base (the record `head` names).
    parent: Option<Arc<RecordHead>>,
    /// What was staged, as staged (before merging), for rebasing.
    staged: Staged,
    options: PublishOptions,
}

impl Prepared {
    /// The pointer entry this version is to be published as.
    pub fn publish_seq(&self) -> u64 {
        self.record.publish_seq
    }
}

/// The result of a successful publish.
#[derive(Debug, Clone)]
pub struct Published {
    /// The record as stored; [`Dataset::version`] reads it with all its partitions.
    pub record: RecordHead,
    pub flip: Flip,
}

/// A version's record together with the chunks of partitions it writes, whether or not they are
/// written yet: what [`Dataset::preview`] returns, and what [`Dataset::draft_of_current`] returns
/// for the current version. [`Dataset::select`] reads some of its partitions.
#[derive(Debug, Clone)]
pub struct Draft {
    pub record: Arc<RecordHead>,
    /// Chunks not (yet) in the store, by path.
    new: Arc<std::collections::BTreeMap<String, Arc<Vec<PartitionEntry>>>>,
}

/// What `rollback` did.
#[derive(Debug, Clone)]
pub enum RollbackOutcome {
    /// The pointer was flipped.
    Flipped(Flip),
    /// The requested version was already current; nothing was written.
    AlreadyCurrent(Flip),
}

/// A problem `verify` found with one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileProblem {
    pub path: String,
    /// `missing`, `size` or `sha256`.
    pub problem: &'static str,
    pub expected: String,
    pub found: String,
}

/// The outcome of `verify`.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub dataset: String,
    pub version: u64,
    pub files_checked: u64,
    pub bytes_checked: u64,
    pub problems: Vec<FileProblem>,
}

/// One version as `strata versions` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct VersionListing {
    #[serde(flatten)]
    pub brief: VersionBrief,
    /// The pointer entry that published it.
    pub published_seq: u64,
    pub parent: Option<u64>,
    pub current: bool,
    /// How it was published: `publish`, `promote` (from a shadow) or `restatement`.
    pub kind: FlipKind,
}

/// A handle on one dataset. Cheap to clone; holds no state besides the name.
#[derive(Debug, Clone)]
pub struct Dataset {
    lake: Lake,
    name: String,
}

impl Lake {
    /// A handle on one dataset (which need not exist yet). Fails only on an invalid name.
    pub fn dataset(&self, name: &str) -> Result<Dataset> {
        validate_dataset_name(name)?;
        Ok(Dataset { lake: self.clone(), name: name.to_string() })
    }

    /// The names of the datasets that have at least one published version, sorted.
    pub async fn datasets(&self) -> Result<Vec<String>> {
        let listing = self
            .store()
            .list_with_delimiter(None)
            .await
            .map_err(|e| Error::store("list", self.url(), e))?;
        let mut names = Vec::new();
        for prefix in listing.common_prefixes {
            let Some(name) = prefix.filename().map(str::to_string) else {
                continue;
            };
            if validate_dataset_name(&name).is_err() {
                continue; // _strata, _raw, or a foreign directory
            }
            if layout::pointer_log(&name).list(self).await?.last().is_some() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }
}

impl Dataset {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn lake(&self) -> &Lake {
        &self.lake
    }

    fn store(&self) -> &Arc<dyn ObjectStore> {
        self.lake.store()
    }

    /// The dataset's pointer: a gap-free numbered log of flips, with checkpoints.
    fn pointer(&self) -> NumberedLog {
        layout::pointer_log(&self.name)
    }

    /// The flips 1..=`seq` from a checkpoint, if it is there and whole; `None` sends the reader
    /// back to the entries, which are the truth.
    async fn read_checkpoint(&self, seq: u64) -> Option<Vec<Flip>> {
        let path = self.pointer().checkpoint_path(seq);
        let cp: Checkpoint = self.lake.read_json(&path).await.ok().flatten()?;
        let whole = cp.format == CHECKPOINT_FORMAT
            && cp.seq == seq
            && cp.flips.len() as u64 == seq
            && cp
                .flips
                .iter()
                .enumerate()
                .all(|(i, f)| f.seq == i as u64 + 1 && f.format == FLIP_FORMAT);
        whole.then_some(cp.flips)
    }

    /// Writes the checkpoint for `seq` if it is due (best effort: it is only a cache).
    async fn checkpoint_if_due(&self, seq: u64) {
        if !seq.is_multiple_of(CHECKPOINT_EVERY) {
            return;
        }
        let Ok(flips) = self.history().await else { return };
        if flips.len() as u64 != seq {
            return;
        }
        let cp = Checkpoint { format: CHECKPOINT_FORMAT.to_string(), seq, flips };
        let path = self.pointer().checkpoint_path(seq);
        let _ = self.create_json(&path, &cp, "pointer checkpoint").await;
    }

    async fn read_flip(&self, seq: u64) -> Result<Option<Flip>> {
        let pointer = self.pointer();
        let Some(flip): Option<Flip> = pointer.read_json(&self.lake, seq).await? else {
            return Ok(None);
        };
        if flip.seq != seq || flip.format != FLIP_FORMAT {
            return Err(Error::Corrupt {
                path: pointer.path(seq).to_string(),
                detail: format!("it says seq {} format {:?}", flip.seq, flip.format),
            });
        }
        Ok(Some(flip))
    }

    /// The current pointer entry, or `None` if the dataset was never published.
    ///
    /// Found without listing the log, so its cost does not grow with the number of flips. From a
    /// lower bound (the greatest entry this process saw, else the hint `_strata/head.json`, else
    /// 0) the entries after it are probed, doubling the step, then bisecting, up to the first
    /// missing one; the entry before it is the current one, because entries are created one
    /// sequence number after another and never removed. The entry after the first missing one
    /// is probed too: if it exists the log has a gap, which is corruption. A bound that names no
    /// entry (the log was removed behind strata's back) sends the reader to the listing.
    pub async fn head(&self) -> Result<Option<Flip>> {
        let lower = match self.lake.seen_head(&self.name) {
            Some(seq) => seq,
            None => self.read_head_hint().await,
        };
        let seq = match self.pointer().end(&self.lake, lower).await? {
            End::Last(seq) => seq,
            End::Gap(gap) => return Err(self.gap_error(gap)),
        };
        if seq == 0 {
            return Ok(None);
        }
        match self.read_flip(seq).await? {
            Some(flip) => {
                self.lake.saw_head(&self.name, seq);
                Ok(Some(flip))
            }
            None => {
                self.lake.forget_head(&self.name);
                self.head_listed().await
            }
        }
    }

    /// [`Dataset::head`] by listing the whole log and checking it for gaps.
    async fn head_listed(&self) -> Result<Option<Flip>> {
        let listing = self.pointer().list(&self.lake).await?;
        let Some(last) = listing.last() else { return Ok(None) };
        if let Some(gap) = listing.first_gap() {
            return Err(self.gap_error(gap));
        }
        let flip = self.read_flip(last).await?;
        if flip.is_some() {
            self.lake.saw_head(&self.name, last);
        }
        Ok(flip)
    }

    /// The hint's sequence number; 0 when it is missing or unreadable (it is only a hint).
    async fn read_head_hint(&self) -> u64 {
        #[derive(serde::Deserialize)]
        struct Hint {
            seq: u64,
        }
        let path = layout::head_hint_path(&self.name);
        match self.lake.read_json::<Hint>(&path).await {
            Ok(Some(h)) => h.seq,
            _ => 0,
        }
    }

    /// Records that entry `seq` exists, for this process and (best effort) for later ones.
    async fn write_head_hint(&self, seq: u64) {
        self.lake.saw_head(&self.name, seq);
        let path = layout::head_hint_path(&self.name);
        let _ = self.store().put(&path, PutPayload::from(format!("{{\"seq\": {seq}}}"))).await;
    }

    fn gap_error(&self, gap: u64) -> Error {
        Error::Corrupt {
            path: self.pointer().path(gap).to_string(),
            detail: "this pointer entry is missing while later ones exist; strata never deletes \
                     pointer entries"
                .into(),
        }
    }

    /// The current pointer entry; [`Error::DatasetNotFound`] if there is none.
    pub async fn require_head(&self) -> Result<Flip> {
        self.head().await?.ok_or_else(|| self.not_found())
    }

    fn not_found(&self) -> Error {
        Error::DatasetNotFound { dataset: self.name.clone(), lake: self.lake.url().to_string() }
    }

    /// Every pointer entry, oldest first: the dataset's history of publishes and rollbacks.
    /// Reads the latest whole checkpoint and the entries after it.
    pub async fn history(&self) -> Result<Vec<Flip>> {
        let listing = self.pointer().list(&self.lake).await?;
        let Some(last) = listing.last() else { return Err(self.not_found()) };
        if let Some(gap) = listing.first_gap() {
            return Err(self.gap_error(gap));
        }
        let mut flips = Vec::new();
        for c in listing.checkpoints_upto(last) {
            if let Some(cp) = self.read_checkpoint(c).await {
                flips = cp;
                break;
            }
        }
        let rest: Vec<u64> = (flips.len() as u64 + 1..=last).collect();
        let reads: Vec<_> = rest.iter().map(|&s| self.read_flip(s)).collect();
        let read: Vec<Option<Flip>> =
            futures::stream::iter(reads).buffered(IO_CONCURRENCY).try_collect().await?;
        for (f, &s) in read.into_iter().zip(&rest) {
            flips.push(f.ok_or_else(|| self.gap_error(s))?);
        }
        Ok(flips)
    }

    /// The version that was current at instant `at`, from the pointer history (a rollback
    /// counts: it made its target current).
    pub async fn version_at(&self, at: chrono::DateTime<chrono::Utc>) -> Result<u64> {
        let history = self.history().await?;
        protocol::version_at(&history, at).ok_or_else(|| Error::NoVersionAt {
            dataset: self.name.clone(),
            at: at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            first: history
                .iter()
                .map(|f| f.at)
                .min()
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default(),
        })
    }

    /// The published versions, oldest first, marking the current one.
    pub async fn versions(&self) -> Result<Vec<VersionListing>> {
        let history = self.history().await?;
        let current = protocol::head_of(&history).map(|h| h.to);
        Ok(history
            .iter()
            .filter(|f| f.kind.first_publish())
            .map(|f| VersionListing {
                brief: f.version.clone(),
                kind: f.kind,
                published_seq: f.seq,
                parent: f.from,
                current: Some(f.to) == current,
            })
            .collect())
    }

    /// The stored record of `version` (its partitions in chunks, unread), shared with the cache.
    async fn read_record_shared(&self, version: u64) -> Result<Option<Arc<RecordHead>>> {
        let path = layout::version_path(&self.name, version);
        let cache = self.lake.records();
        let cached = cache.get(&path);
        let opts = object_store::GetOptions {
            if_none_match: cached.as_ref().map(|(tag, _)| tag.clone()),
            ..Default::default()
        };
        let got = match (self.store().get_opts(&path, opts).await, cached) {
            (Err(object_store::Error::NotModified { .. }), Some((_, record))) => {
                return Ok(Some(record));
            }
            (Err(object_store::Error::NotFound { .. }), _) => {
                cache.forget(&path);
                return Ok(None);
            }
            (Err(e), _) => return Err(Error::store("read", &path, e)),
            (Ok(got), _) => got,
        };
        let e_tag = got.meta.e_tag.clone();
        let bytes = got.bytes().await.map_err(|e| Error::store("read", &path, e))?;
        let record: RecordHead = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Corrupt { path: path.to_string(), detail: e.to_string() })?;
        if record.version != version
            || record.dataset != self.name
            || record.format != VERSION_FORMAT
        {
            return Err(Error::Corrupt {
                path: path.to_string(),
                detail: format!(
                    "it says dataset {:?} version {} format {:?}",
                    record.dataset, record.version, record.format
                ),
            });
        }
        let record = Arc::new(record);
        cache.put(&path, e_tag, record.clone());
        Ok(Some(record))
    }

    async fn read_chunk_at(
        &self,
        i: usize,
        chunk: ChunkRef,
    ) -> Result<(usize, Arc<Vec<PartitionEntry>>)> {
        Ok((i, self.read_chunk(&chunk).await?))
    }

    /// The partitions of one chunk, read once per process.
    async fn read_chunk(&self, chunk: &ChunkRef) -> Result<Arc<Vec<PartitionEntry>>> {
        let cache = self.lake.records();
        if let Some(parts) = cache.chunk(&chunk.path) {
            return Ok(parts);
        }
        let path = Path::from(chunk.path.as_str());
        let corrupt = |detail: String| Error::Corrupt { path: chunk.path.clone(), detail };
        let read: PartitionChunk = self.lake.read_json(&path).await?.ok_or_else(|| {
            corrupt("a version record names this chunk of partitions but it is missing".into())
        })?;
        let keys: Vec<&String> = read.partitions.iter().map(|p| &p.key).collect();
        if read.format != CHUNK_FORMAT
            || read.dataset != self.name
            || keys.len() != chunk.keys.len()
            || keys.iter().zip(&chunk.keys).any(|(a, b)| *a != b)
        {
            return Err(corrupt(format!(
                "it says dataset {:?} format {:?} and does not hold the partitions the record \
                 names",
                read.dataset, read.format
            )));
        }
        let parts = Arc::new(read.partitions);
        cache.put_chunk(&chunk.path, parts.clone());
        Ok(parts)
    }

    /// The partitions of the chunks `which` (indexes into the record's `chunks`),
    /// read concurrently; chunks in `new` are taken from there.
    async fn load_chunks(
        &self,
        record: &RecordHead,
        which: &std::collections::BTreeSet<usize>,
        new: &std::collections::BTreeMap<String, Arc<Vec<PartitionEntry>>>,
    ) -> Result<protocol::LoadedChunks> {
        let mut loaded = std::collections::BTreeMap::new();
        let mut reads = Vec::new();
        for &i in which {
            let Some(c) = record.chunks.get(i) else { continue };
            match new.get(&c.path) {
                Some(parts) => {
                    loaded.insert(i, parts.clone());
                }
                None => reads.push(self.read_chunk_at(i, c.clone())),
            }
        }
        let read: Vec<(usize, Arc<Vec<PartitionEntry>>)> =
            futures::stream::iter(reads).buffer_unordered(IO_CONCURRENCY).try_collect().await?;
        loaded.extend(read);
        Ok(loaded)
    }

    /// A record with all its partitions.
    pub async fn full(&self, record: &RecordHead) -> Result<VersionRecord> {
        let draft = Draft { record: Arc::new(record.clone()), new: Arc::default() };
        self.select(&draft, &|_| true).await
    }

    /// A record with only the partitions whose key `keep` accepts (the others are not read):
    /// what a reader of a few partitions uses.
    pub async fn select(
        &self,
        draft: &Draft,
        keep: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<VersionRecord> {
        let record = draft.record.as_ref();
        let which: std::collections::BTreeSet<usize> = record
            .chunks
            .iter()
            .enumerate()
            .filter(|(_, c)| c.keys.iter().any(|k| keep(k)))
            .map(|(i, _)| i)
            .collect();
        let loaded = self.load_chunks(record, &which, &draft.new).await?;
        let parts = loaded.values().flat_map(|c| c.iter()).filter(|p| keep(&p.key)).cloned();
        Ok(record.with_partitions(parts.collect()))
    }

    /// The current version as a [`Draft`] (nothing new in it), or `None` if the dataset was
    /// never published. Reads only the record, not its chunks.
    pub async fn draft_of_current(&self) -> Result<Option<Draft>> {
        Ok(self.current_head().await?.map(|record| Draft { record, new: Arc::default() }))
    }

    /// Published version `version` as a [`Draft`]; reads only the record, not its chunks.
    pub async fn draft_of_version(&self, version: u64) -> Result<Draft> {
        Ok(Draft { record: self.published_head(version).await?, new: Arc::default() })
    }

    /// The stored record of the current version (its chunks unread), or `None` if the dataset
    /// was never published.
    pub async fn current_head(&self) -> Result<Option<Arc<RecordHead>>> {
        let head = self.head().await?;
        self.parent_of(head.as_ref()).await
    }

    /// The record of the current version.
    pub async fn current(&self) -> Result<VersionRecord> {
        let head = self.require_head().await?;
        self.record_named_by(&head).await
    }

    /// Reads the record a pointer entry names, with all its partitions; pointer entries only
    /// ever name published versions.
    async fn record_named_by(&self, flip: &Flip) -> Result<VersionRecord> {
        self.full(&*self.shared_record_named_by(flip).await?).await
    }

    /// [`Dataset::record_named_by`] without copying the record out of the cache.
    async fn shared_record_named_by(&self, flip: &Flip) -> Result<Arc<RecordHead>> {
        self.read_record_shared(flip.to).await?.ok_or_else(|| Error::Corrupt {
            path: layout::version_path(&self.name, flip.to).to_string(),
            detail: format!(
                "pointer entry #{} names version {} but its record is missing",
                flip.seq, flip.to
            ),
        })
    }

    /// The record of published version `version`, or of the current one.
    pub async fn version_or_current(&self, version: Option<u64>) -> Result<VersionRecord> {
        match version {
            Some(v) => self.version(v).await,
            None => self.current().await,
        }
    }

    /// The record of a published version. A record left by a writer that lost a conflict or
    /// crashed before flipping is refused: it was never published.
    pub async fn version(&self, version: u64) -> Result<VersionRecord> {
        let head = self.published_head(version).await?;
        self.full(&head).await
    }

    /// The stored record of a published version (its chunks unread); see [`Dataset::version`].
    pub async fn published_head(&self, version: u64) -> Result<Arc<RecordHead>> {
        let not_found = |detail: &str| Error::VersionNotFound {
            dataset: self.name.clone(),
            version,
            detail: detail.to_string(),
        };
        let Some(record) = self.read_record_shared(version).await? else {
            return match self.head().await? {
                None => Err(self.not_found()),
                Some(_) => Err(not_found("")),
            };
        };
        match self.read_flip(record.publish_seq).await? {
            Some(f) if f.kind.first_publish() && f.to == version && f.run_id == record.run_id => {
                Ok(record)
            }
            _ => Err(not_found(
                " (a record exists, but its writer lost a conflict or stopped before publishing it)",
            )),
        }
    }

    /// A writer that stages Parquet files for this dataset under `run_id=<run>/`.
    /// Nothing it writes is visible until [`Dataset::publish`].
    pub fn writer(
        &self,
        ctx: &RunContext,
        schema: arrow::datatypes::SchemaRef,
        options: WriterOptions,
    ) -> Result<StagingWriter> {
        StagingWriter::new(
            self.lake.clone(),
            self.name.clone(),
            ctx.run_id().to_string(),
            schema,
            options,
        )
    }

    /// The record of the current version, or `None` if the dataset was never published.
    pub async fn current_opt(&self) -> Result<Option<VersionRecord>> {
        match self.head().await? {
            Some(head) => Ok(Some(self.record_named_by(&head).await?)),
            None => Ok(None),
        }
    }

    /// Checks, without IO, that data with `schema` partitioned by `partition_by` may be
    /// published on top of `parent` without replacing every partition.
    pub fn check_against(
        &self,
        parent: &RecordHead,
        schema: &arrow::datatypes::Schema,
        partition_by: &[String],
        source_desc: &str,
    ) -> Result<()> {
        if let Some(detail) = protocol::schema_difference(&parent.schema, schema) {
            return Err(Error::SchemaConflict {
                dataset: self.name.clone(),
                source_desc: source_desc.to_string(),
                detail,
            });
        }
        if parent.partition_by != partition_by {
            return Err(Error::PartitioningConflict {
                dataset: self.name.clone(),
                existing: parent.partition_by.clone(),
                requested: partition_by.to_vec(),
            });
        }
        Ok(())
    }

    /// Checks, before any file is written, that data with `schema` partitioned by
    /// `partition_by` may be published into this dataset with `replace_all`.
    /// Returns the current version's record (if any).
    pub async fn check_compatible(
        &self,
        schema: &arrow::datatypes::Schema,
        partition_by: &[String],
        replace_all: bool,
        source_desc: &str,
    ) -> Result<Option<Arc<RecordHead>>> {
        let current = self.current_head().await?;
        if let (Some(parent), false) = (&current, replace_all) {
            self.check_against(parent, schema, partition_by, source_desc)?;
        }
        Ok(current)
    }

    /// Writes the version record for staged files: the state between staging and publishing.
    ///
    /// Reads the current pointer, merges the staged partitions into the current version
    /// copy-on-write, and creates the record under the first free version number.
    pub async fn prepare(
        &self,
        staged: Staged,
        options: &PublishOptions,
        ctx: &RunContext,
    ) -> Result<Prepared> {
        let head = self.head().await?;
        let parent = self.parent_of(head.as_ref()).await?;
        self.prepare_on(staged, options.clone(), head, parent, None, ctx).await
    }

    /// [`Dataset::prepare`] reusing `preview`, the draft [`Dataset::preview`] returned for the
    /// same staged files and options, when nothing was published since: the record is not
    /// assembled a second time. Evidence attached to `staged` after the preview is taken from
    /// `staged`. A preview of other files, or one overtaken by another publish, is not used.
    pub async fn prepare_previewed(
        &self,
        staged: Staged,
        options: &PublishOptions,
        preview: Draft,
        ctx: &RunContext,
    ) -> Result<Prepared> {
        let head = self.head().await?;
        let parent = self.parent_of(head.as_ref()).await?;
        let record = preview.record.as_ref();
        let written: std::collections::BTreeMap<&str, &PartitionEntry> =
            preview.new.values().flat_map(|c| c.iter()).map(|p| (p.key.as_str(), p)).collect();
        let fresh = record.dataset == self.name
            && record.run_id == staged.run_id
            && record.run_id == ctx.run_id()
            && record.publish_seq == protocol::next_seq(head.as_ref())
            && record.parent == head.as_ref().map(|h| h.to)
            && staged
                .partitions
                .iter()
                .all(|w| written.get(w.key.as_str()).is_some_and(|p| p.files == w.files));
        let first = fresh.then(|| {
            let mut record = record.clone();
            record.evidence = staged.evidence.clone();
            record.restatement = options.restatement.clone();
            (record, preview.new.as_ref().clone())
        });
        self.prepare_on(staged, options.clone(), head, parent, first, ctx).await
    }

    /// Reads the current version's record into the lake's cache of parsed records, so that a
    /// later read (by any handle on the same lake) costs only a check that it did not change.
    /// Nothing happens for a dataset never published.
    pub async fn warm(&self) -> Result<()> {
        self.current_head().await.map(|_| ())
    }

    /// The record `head` names, shared with the cache.
    async fn parent_of(&self, head: Option<&Flip>) -> Result<Option<Arc<RecordHead>>> {
        match head {
            Some(h) => Ok(Some(self.shared_record_named_by(h).await?)),
            None => Ok(None),
        }
    }

    /// The record a publish of `staged` would create now, without writing anything: what later
    /// stages of a run read before the run commits ([`Dataset::select`]).
    pub async fn preview(
        &self,
        staged: &Staged,
        options: &PublishOptions,
        ctx: &RunContext,
    ) -> Result<Draft> {
        let head = self.head().await?;
        let parent = self.parent_of(head.as_ref()).await?;
        let version = protocol::first_candidate_version(head.as_ref());
        let (record, new) = self
            .build_record(staged, options, head.as_ref(), parent.as_deref(), version, ctx)
            .await?;
        Ok(Draft { record: Arc::new(record), new: Arc::new(new) })
    }

    /// The record for `staged` merged onto `parent` as `version`, and the chunks of partitions
    /// it writes (by path). Reads only the parent's chunks that hold a partition the publish
    /// writes or owns.
    async fn build_record(
        &self,
        staged: &Staged,
        options: &PublishOptions,
        head: Option<&Flip>,
        parent: Option<&RecordHead>,
        version: u64,
        ctx: &RunContext,
    ) -> Result<(RecordHead, NewChunks)> {
        if staged.run_id != ctx.run_id() {
            return Err(Error::internal(format!(
                "staged files belong to run {} but the context is run {}",
                staged.run_id,
                ctx.run_id()
            )));
        }
        let source = format!("run {}", staged.run_id);
        let mut schema = staged.schema.as_ref().clone();
        if let Some(parent) = parent {
            if !options.replace_all {
                self.check_against(parent, &staged.schema, &staged.partition_by, &source)?;
                schema = protocol::loosen_nullability(&parent.schema, &staged.schema);
            }
        }
        if staged.rows == 0 && !options.replace_all && options.owned.is_none() {
            return Err(Error::NothingToPublish {
                dataset: self.name.clone(),
                run_id: staged.run_id.clone(),
            });
        }
        let mut written = staged.partitions.clone();
        for p in &mut written {
            p.written_in = version;
        }
        let replace = replace_of(options);
        let loaded = match (parent, protocol::touched_keys(&written, &replace)) {
            (Some(parent), Some(keys)) => {
                let which = protocol::chunks_for(&parent.chunks, keys.iter().map(String::as_str));
                self.load_chunks(parent, &which, &Default::default()).await?
            }
            _ => Default::default(),
        };
        let path_of = |n: usize| layout::chunk_path(&self.name, &staged.run_id, version, n);
        let assembled =
            protocol::assemble(parent.map(|p| (p, &loaded)), written, &replace, &path_of);
        let record = RecordHead {
            format: VERSION_FORMAT.to_string(),
            dataset: self.name.clone(),
            version,
            parent: head.map(|h| h.to),
            publish_seq: protocol::next_seq(head),
            run_id: staged.run_id.clone(),
            created_at: ctx.now(),
            reason: options.reason.clone(),
            partition_by: staged.partition_by.clone(),
            schema,
            summary: assembled.summary,
            chunks: assembled.chunks,
            evidence: staged.evidence.clone(),
            owner: match &options.writer {
                Some(w) => Some(w.next(parent.and_then(|p| p.owner.as_ref()), options.adopt)),
                None => parent.and_then(|p| p.owner.clone()),
            },
            restatement: options.restatement.clone(),
        };
        Ok((record, assembled.new.into_iter().collect()))
    }

    /// Writes the chunks a record introduces (each before the record that names it; a chunk
    /// left by an earlier attempt of the same run and version is overwritten with the same
    /// partitions).
    async fn write_chunks(&self, version: u64, new: &NewChunks) -> Result<()> {
        let writes: Vec<_> = new
            .iter()
            .map(|(path, parts)| self.write_chunk(version, path.clone(), parts.clone()))
            .collect();
        futures::stream::iter(writes)
            .buffer_unordered(IO_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn write_chunk(
        &self,
        version: u64,
        path: String,
        parts: Arc<Vec<PartitionEntry>>,
    ) -> Result<()> {
        {
            let chunk = PartitionChunk {
                format: CHUNK_FORMAT.to_string(),
                dataset: self.name.clone(),
                version,
                partitions: parts.as_ref().clone(),
            };
            let mut body = serde_json::to_vec(&chunk)
                .map_err(|source| Error::Serialize { what: "chunk of partitions", source })?;
            body.push(b'\n');
            let path = Path::from(path.as_str());
            self.store()
                .put(&path, PutPayload::from(body))
                .await
                .map_err(|e| Error::store("write", &path, e))?;
            self.lake.records().put_chunk(path.as_ref(), parts);
            Ok(())
        }
    }

    /// Creates the version record of `staged` merged onto `parent` (the record `head` names)
    /// under the first free version number. `first` is that record for the first candidate
    /// number, with its chunks, when already built.
    async fn prepare_on(
        &self,
        staged: Staged,
        options: PublishOptions,
        head: Option<Flip>,
        parent: Option<Arc<RecordHead>>,
        mut first: Option<(RecordHead, NewChunks)>,
        ctx: &RunContext,
    ) -> Result<Prepared> {
        let (mut head, mut parent) = (head, parent);
        let mut publish_seq = protocol::next_seq(head.as_ref());
        let mut version = protocol::first_candidate_version(head.as_ref());
        for _ in 0..MAX_VERSION_ATTEMPTS {
            let (record, new) = match first.take() {
                Some((r, new)) if r.version == version => (r, new),
                _ => {
                    self.build_record(
                        &staged,
                        &options,
                        head.as_ref(),
                        parent.as_deref(),
                        version,
                        ctx,
                    )
                    .await?
                }
            };
            self.write_chunks(version, &new).await?;
            let path = layout::version_path(&self.name, version);
            match self.create_resolving(&path, &record, "version record").await? {
                Outcome::Ours => {
                    crash::point("after-version-record");
                    return Ok(Prepared { record, head, parent, staged, options });
                }
                Outcome::Theirs(found) => {
                    // Another writer took this number; the chunks written for it go, unless
                    // that writer acts for the same run (its record may name the same paths, and
                    // may be published at any moment). If the pointer moved, we lost already.
                    let writer = found.map_or_else(String::new, |f| f.run_id);
                    let referenced =
                        Referenced { versions: Default::default(), runs: [writer].into() };
                    let verdict = deletion::decide(
                        &record.run_id,
                        &[],
                        &own_chunks(&self.name, &record),
                        &Default::default(),
                        &referenced,
                        Holder::Caller,
                    );
                    self.delete_decided(&verdict.delete).await?;
                    let now = self.head().await?;
                    if now.as_ref().map(|h| h.seq) != head.as_ref().map(|h| h.seq) {
                        // Another writer published meanwhile: re-merge onto its version when
                        // it left everything this publish writes or owns alone.
                        let now_parent = self.parent_of(now.as_ref()).await?;
                        let ok = self
                            .may_rebase(&staged, &options, parent.as_deref(), now_parent.as_deref())
                            .await?;
                        if !ok {
                            return Err(self.conflict(ctx.run_id(), publish_seq - 1, now.as_ref()));
                        }
                        publish_seq = protocol::next_seq(now.as_ref());
                        version =
                            (version + 1).max(protocol::first_candidate_version(now.as_ref()));
                        (head, parent) = (now, now_parent);
                        continue;
                    }
                    version += 1;
                }
            }
        }
        Err(Error::VersionsExhausted { dataset: self.name.clone(), attempts: MAX_VERSION_ATTEMPTS })
    }

    /// Removes a record this process prepared and could not publish (its pointer entry went to
    /// another writer), and the chunks it wrote itself, through the deletion authority: the
    /// entries from the one it lost on are read, and nothing they name is touched.
    async fn discard_prepared(&self, record: &RecordHead, lost_seq: u64) -> Result<()> {
        let referenced = Referenced::of(&self.flips_after(lost_seq.saturating_sub(1)).await?);
        let chunks = own_chunks(&self.name, record);
        let found = [RecordFound {
            version: record.version,
            run_id: record.run_id.clone(),
            path: layout::version_path(&self.name, record.version).to_string(),
        }];
        let verdict = deletion::decide(
            &record.run_id,
            &found,
            &chunks,
            &Default::default(),
            &referenced,
            Holder::Caller,
        );
        self.delete_decided(&verdict.delete).await?;
        Ok(())
    }

    /// Deletes what [`deletion::decide`] allowed (and nothing else calls `delete` on records,
    /// chunks or data files). A path already gone counts as deleted.
    async fn delete_decided(&self, paths: &[String]) -> Result<()> {
        for p in paths {
            let path = Path::from(p.as_str());
            self.lake.records().forget(&path);
            self.lake.records().forget_chunk(p);
            match self.store().delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(Error::store("delete", &path, e)),
            }
        }
        Ok(())
    }

    /// The pointer entries after `after_seq`, oldest first (all of them for 0). Empty when the
    /// dataset was never published.
    pub async fn flips_after(&self, after_seq: u64) -> Result<Vec<Flip>> {
        if after_seq == 0 {
            return match self.history().await {
                Ok(h) => Ok(h),
                Err(Error::DatasetNotFound { .. }) => Ok(Vec::new()),
                Err(e) => Err(e),
            };
        }
        let seqs = self.pointer().list(&self.lake).await?.numbers();
        let mut found = Vec::new();
        for &seq in seqs.iter().filter(|&&s| s > after_seq) {
            if let Some(f) = self.read_flip(seq).await? {
                found.push(f);
            }
        }
        Ok(found)
    }

    /// Whether a publish of `staged` prepared on `base` may be re-merged onto `now` (the records
    /// of the pointer entries then and now): only if no partition it writes or owns differs
    /// ([`protocol::rebase_allowed`]).
    async fn may_rebase(
        &self,
        staged: &Staged,
        options: &PublishOptions,
        base: Option<&RecordHead>,
        now: Option<&RecordHead>,
    ) -> Result<bool> {
        let replace = replace_of(options);
        let Some(keys) = protocol::touched_keys(&staged.partitions, &replace) else {
            return Ok(false);
        };
        let base = match base {
            Some(b) => Some((b, self.partitions_holding(b, &keys).await?)),
            None => None,
        };
        let now = match now {
            Some(n) => Some((n, self.partitions_holding(n, &keys).await?)),
            None => None,
        };
        Ok(protocol::rebase_allowed(
            base.as_ref().map(|(h, p)| (*h, p.as_slice())),
            now.as_ref().map(|(h, p)| (*h, p.as_slice())),
            &staged.partitions,
            &replace,
        ))
    }

    /// The partitions of `record` that hold `keys`, sorted by key (for rebase decisions).
    async fn partitions_holding(
        &self,
        record: &RecordHead,
        keys: &std::collections::BTreeSet<String>,
    ) -> Result<Vec<PartitionEntry>> {
        let which = protocol::chunks_for(&record.chunks, keys.iter().map(String::as_str));
        let loaded = self.load_chunks(record, &which, &Default::default()).await?;
        Ok(loaded.values().flat_map(|c| c.iter().cloned()).collect())
    }

    /// Flips the pointer to a prepared version, rebasing it when another writer published first
    /// without touching any partition this one writes or owns (the copy-on-write merge is
    /// redone on the new current version, under a new version number). A real overlap is
    /// [`Error::Conflict`]; the staged files are kept (the caller decides), the stale record
    /// removed.
    pub async fn commit(&self, mut prepared: Prepared, ctx: &RunContext) -> Result<Published> {
        for _ in 0..MAX_REBASES {
            let flip = flip_for(&prepared.record, prepared.head.as_ref(), &prepared.options, ctx);
            match self.create_flip(&flip).await {
                Ok(()) => {
                    crash::point("after-flip");
                    self.checkpoint_if_due(flip.seq).await;
                    return Ok(Published { record: prepared.record, flip });
                }
                Err(conflict @ Error::Conflict { .. }) => {
                    let head = self.head().await?;
                    let parent = self.parent_of(head.as_ref()).await?;
                    let stale = prepared.record.version;
                    let ok = self
                        .may_rebase(
                            &prepared.staged,
                            &prepared.options,
                            prepared.parent.as_deref(),
                            parent.as_deref(),
                        )
                        .await?;
                    // The stale record lost its pointer entry to another writer: the deletion
                    // authority removes it and its chunks (never anything an entry names).
                    let _ = self.discard_prepared(&prepared.record, prepared.publish_seq()).await;
                    let _ = stale;
                    if !ok {
                        return Err(conflict);
                    }
                    prepared = self
                        .prepare_on(prepared.staged, prepared.options, head, parent, None, ctx)
                        .await?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::RebasesExhausted { dataset: self.name.clone(), rebases: MAX_REBASES })
    }

    fn conflict(&self, run_id: &str, expected_seq: u64, found: Option<&Flip>) -> Error {
        Error::Conflict {
            dataset: self.name.clone(),
            run_id: run_id.to_string(),
            expected_seq,
            found_seq: found.map_or(0, |f| f.seq),
            found_version: found.map_or(0, |f| f.to),
            found_run: found.map_or_else(String::new, |f| f.run_id.clone()),
        }
    }

    /// Flips the pointer to a prepared version: the commit point.
    ///
    /// Exactly one of several writers that prepared on the same pointer entry succeeds; each
    /// other gets [`Error::Conflict`], and its record and staged files are removed (best effort:
    /// they are unreachable either way). If the store answers "already exists" to a retried
    /// request whose first attempt did land, the entry found is ours and the flip succeeded.
    pub async fn flip(&self, prepared: Prepared, ctx: &RunContext) -> Result<Published> {
        let Prepared { record, head, options, .. } = prepared;
        let flip = flip_for(&record, head.as_ref(), &options, ctx);
        match self.create_flip(&flip).await {
            Ok(()) => {
                crash::point("after-flip");
                self.checkpoint_if_due(flip.seq).await;
                Ok(Published { record, flip })
            }
            Err(e) => {
                if matches!(e, Error::Conflict { .. }) {
                    self.discard(&record.run_id, head.as_ref().map_or(0, |h| h.seq)).await;
                }
                Err(e)
            }
        }
    }

    /// Creates a pointer entry. Succeeds if the entry is ours (whether this attempt or an
    /// earlier one whose answer was lost wrote it); [`Error::Conflict`] if another writer's entry
    /// is there; [`Error::UnknownCommit`] if the store never let us find out.
    async fn create_flip(&self, flip: &Flip) -> Result<()> {
        let path = self.pointer().path(flip.seq);
        match self.create_resolving(&path, flip, "pointer entry").await {
            Ok(Outcome::Ours) => {
                self.write_head_hint(flip.seq).await;
                Ok(())
            }
            Ok(Outcome::Theirs(found)) => {
                Err(self.conflict(&flip.run_id, flip.seq - 1, found.as_ref()))
            }
            Err(e) => Err(Error::UnknownCommit {
                dataset: self.name.clone(),
                run_id: flip.run_id.clone(),
                detail: error_chain(&e),
            }),
        }
    }

    /// Create-if-absent that survives lost answers: after an "already exists" or an error, the
    /// object is read back. Identical content is ours (an earlier attempt landed); other content is
    /// theirs; nothing there means the create is tried again. Errors only when no attempt got a
    /// definite answer.
    async fn create_resolving<T>(
        &self,
        path: &Path,
        value: &T,
        what: &'static str,
    ) -> Result<Outcome<T>>
    where
        T: Serialize + DeserializeOwned + PartialEq,
    {
        let mut last_error = None;
        for attempt in 0..CREATE_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(50 << attempt)).await;
            }
            match self.create_json(path, value, what).await {
                Ok(true) => return Ok(Outcome::Ours),
                Ok(false) => {}
                Err(e) => last_error = Some(e),
            }
            match self.lake.read_json::<T>(path).await {
                Ok(Some(found)) if found == *value => return Ok(Outcome::Ours),
                Ok(Some(found)) => return Ok(Outcome::Theirs(Some(found))),
                Ok(None) => {}
                Err(e @ Error::Corrupt { .. }) => return Err(e),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error
            .unwrap_or_else(|| Error::internal(format!("{path} kept vanishing after creation"))))
    }

    /// Stages, prepares and flips in one call.
    pub async fn publish(
        &self,
        staged: Staged,
        options: &PublishOptions,
        ctx: &RunContext,
    ) -> Result<Published> {
        let run_id = staged.run_id.clone();
        let result = match self.prepare(staged, options, ctx).await {
            Ok(prepared) => self.flip(prepared, ctx).await,
            Err(e) => Err(e),
        };
        if result.is_err() {
            // Whatever failed, the deletion authority removes only what no pointer entry names:
            // after an unknown commit outcome whose flip landed, it keeps everything.
            self.discard(&run_id, 0).await;
        }
        result
    }

    /// Removes what an unpublished run of this process left (its staged files and version
    /// records), through the deletion authority; `after_seq` is the pointer entry the run read
    /// before preparing anything (0 if unknown). Best effort: never touches anything a pointer
    /// entry names, and leaves everything in place when the log cannot be read.
    pub async fn discard(&self, run_id: &str, after_seq: u64) {
        let base = Base { seq: after_seq, max_version: 0 };
        let _ = self.discard_run(run_id, base, &Default::default(), Holder::Caller).await;
    }

    /// The publishes by `run_id` among the pointer entries after `after_seq`, oldest first.
    /// Empty when the dataset was never published.
    pub async fn flips_by(&self, run_id: &str, after_seq: u64) -> Result<Vec<Flip>> {
        let seqs = self.pointer().list(&self.lake).await?.numbers();
        let mut found = Vec::new();
        for &seq in seqs.iter().filter(|&&s| s > after_seq) {
            if let Some(f) = self.read_flip(seq).await? {
                if f.run_id == run_id && f.kind.first_publish() {
                    found.push(f);
                }
            }
        }
        Ok(found)
    }

    /// Whether what a run writes changed since it read the pointer at entry `base_seq`: `None`
    /// when the pointer is still there, or moved without touching any partition the run writes
    /// or owns (a publish rebases onto it); otherwise one sentence saying what moved. A run that
    /// replaces the whole dataset conflicts with any move.
    pub async fn changed_since(
        &self,
        base_seq: u64,
        staged: &Staged,
        options: &PublishOptions,
    ) -> Result<Option<String>> {
        let head = self.head().await?;
        let Some(now) = head.as_ref().filter(|h| h.seq != base_seq) else {
            return Ok(None);
        };
        let base_flip = match base_seq {
            0 => None,
            seq => self.read_flip(seq).await?,
        };
        let base = match &base_flip {
            Some(f) => Some(self.shared_record_named_by(f).await?),
            None => None,
        };
        let current = self.parent_of(head.as_ref()).await?;
        if self.may_rebase(staged, options, base.as_deref(), current.as_deref()).await? {
            return Ok(None);
        }
        let what = match now.kind {
            FlipKind::Rollback => format!("a rollback made version {} current", now.to),
            kind => format!("run {} published version {} ({kind})", now.run_id, now.to),
        };
        Ok(Some(format!(
            "its pointer moved from entry #{base_seq} to #{} ({what}), and that changed \
             partitions this run writes",
            now.seq
        )))
    }

    /// The pointer entry a prepared record is to be published as; `None` when the record is
    /// gone.
    pub async fn record_publish_seq(&self, version: u64) -> Result<Option<u64>> {
        Ok(self.read_record_shared(version).await?.map(|r| r.publish_seq))
    }

    /// Flips the pointer to a record that was prepared and never published (recovery rolling a
    /// run forward). `Ok(None)` when that is no longer possible as prepared: the record is gone,
    /// or the pointer moved since.
    /// `kind` and `reason` are what the flip records (a promotion rolled forward is still a
    /// promotion).
    pub async fn flip_record(
        &self,
        version: u64,
        kind: FlipKind,
        reason: Option<String>,
        ctx: &RunContext,
    ) -> Result<Option<Published>> {
        let Some(record) = self.read_record_shared(version).await? else { return Ok(None) };
        // Every chunk it names must be readable before it is made current.
        self.full(&record).await?;
        let head = self.head().await?;
        if protocol::next_seq(head.as_ref()) != record.publish_seq {
            return Ok(None);
        }
        let options = PublishOptions { kind, reason, ..Default::default() };
        let flip = flip_for(&record, head.as_ref(), &options, ctx);
        match self.create_flip(&flip).await {
            Ok(()) => Ok(Some(Published { record: record.as_ref().clone(), flip })),
            Err(Error::Conflict { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The record of a version a shadow run prepared (published or not), written by `run_id`.
    pub async fn shadow_head(&self, version: u64, run_id: &str) -> Result<Arc<RecordHead>> {
        match self.read_record_shared(version).await? {
            Some(r) if r.run_id == run_id => Ok(r),
            _ => Err(Error::VersionNotFound {
                dataset: self.name.clone(),
                version,
                detail: format!(
                    " (the shadow's record of run {run_id} is gone: the shadow was dropped)"
                ),
            }),
        }
    }

    /// Prepares to make the version `shadow` holds current, on behalf of the shadow's run
    /// (`ctx` carries its id): the record as built when the pointer has not moved since, or its
    /// partitions merged copy-on-write onto the current version as a new record when the pointer
    /// moved without touching them ([`protocol::promotion`]). [`Error::PromoteConflict`] names
    /// the partitions that changed otherwise; nothing is written then. [`Dataset::commit`] flips
    /// the result as a `kind` flip with `reason`.
    pub async fn prepare_promotion(
        &self,
        shadow_name: &str,
        shadow: &crate::shadow::ShadowVersion,
        kind: FlipKind,
        reason: Option<String>,
        ctx: &RunContext,
    ) -> Result<Prepared> {
        let record = self.shadow_head(shadow.version, ctx.run_id()).await?;
        let base = match record.parent {
            Some(v) => self.read_record_shared(v).await?,
            None => None,
        };
        // What the shadow version changed: the partitions it wrote, and those of its parent it
        // dropped (owned and found empty).
        let written: Vec<PartitionEntry> = self
            .full(&record)
            .await?
            .partitions
            .into_iter()
            .filter(|p| p.written_in == record.version)
            .collect();
        let keys = |r: &RecordHead| -> std::collections::BTreeSet<String> {
            r.chunks.iter().flat_map(|c| c.keys.iter().cloned()).collect()
        };
        let dropped: std::collections::BTreeSet<String> = match &base {
            Some(b) => keys(b).difference(&keys(&record)).cloned().collect(),
            None => Default::default(),
        };
        // A version that reused nothing of its parent may have replaced it whole: never merged.
        let replace_all = base.is_some() && record.summary.partitions_reused == 0;
        let staged = Staged {
            run_id: ctx.run_id().to_string(),
            schema: Arc::new(record.schema.clone()),
            partition_by: record.partition_by.clone(),
            rows: written.iter().map(|p| p.rows).sum(),
            partitions: written,
            evidence: record.evidence.clone(),
            keys: None,
        };
        let options = PublishOptions {
            replace_all,
            owned: (!replace_all).then_some(dropped),
            reason,
            writer: record.owner.clone(),
            adopt: false,
            kind,
            restatement: None,
        };
        let head = self.head().await?;
        let head_seq = head.as_ref().map_or(0, |h| h.seq);
        let now = self.parent_of(head.as_ref()).await?;
        let blockers = if head_seq == shadow.base_seq {
            Vec::new()
        } else {
            let replace = replace_of(&options);
            let touched = protocol::touched_keys(&staged.partitions, &replace).unwrap_or_default();
            let parts = |r: Option<Arc<RecordHead>>| {
                let touched = &touched;
                async move {
                    Ok::<_, Error>(match r {
                        Some(r) => {
                            let p = self.partitions_holding(&r, touched).await?;
                            Some((r, p))
                        }
                        None => None,
                    })
                }
            };
            let (then, now_parts) = (parts(base.clone()).await?, parts(now.clone()).await?);
            protocol::rebase_blockers(
                then.as_ref().map(|(h, p)| (h.as_ref(), p.as_slice())),
                now_parts.as_ref().map(|(h, p)| (h.as_ref(), p.as_slice())),
                &staged.partitions,
                &replace,
            )
        };
        match protocol::promotion(shadow.base_seq, head_seq, blockers) {
            protocol::Promotion::Direct => Ok(Prepared {
                record: record.as_ref().clone(),
                head,
                parent: base,
                staged,
                options,
            }),
            protocol::Promotion::Rebase => {
                self.prepare_on(staged, options, head, now, None, ctx).await
            }
            protocol::Promotion::Conflict(partitions) => {
                let moved = match &head {
                    Some(h) => format!(
                        "it was at entry #{} (version {}) and is at #{} now (version {}, {} by \
                         run {})",
                        shadow.base_seq,
                        shadow.base_version.map_or("none".into(), |v| v.to_string()),
                        h.seq,
                        h.to,
                        h.kind,
                        h.run_id
                    ),
                    None => "it has no current version now".into(),
                };
                Err(Error::PromoteConflict {
                    shadow: shadow_name.to_string(),
                    dataset: self.name.clone(),
                    moved,
                    partitions,
                })
            }
        }
    }

    /// Every closing of the dataset, oldest first ([`crate::closing`]).
    pub async fn closings(&self) -> Result<Vec<crate::closing::Closing>> {
        let log = layout::closings_log(&self.name);
        let mut found = Vec::new();
        for n in log.list(&self.lake).await?.numbers() {
            if let Some(c) = log.read_json(&self.lake, n).await? {
                found.push(c);
            }
        }
        Ok(found)
    }

    /// The closing in force, if any.
    pub async fn closing(&self) -> Result<Option<crate::closing::Closing>> {
        Ok(crate::closing::in_force(&self.closings().await?).cloned())
    }

    /// Records that partitions dated on or before `through` are closed. A closing never moves
    /// back: one through an earlier date than the closing in force is refused.
    pub async fn close(
        &self,
        through: chrono::NaiveDate,
        reason: Option<String>,
        by: &str,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<crate::closing::Closing> {
        self.require_head().await?;
        let log = layout::closings_log(&self.name);
        loop {
            let closings = self.closings().await?;
            if let Some(c) = crate::closing::in_force(&closings).filter(|c| c.through > through) {
                return Err(Error::ClosingBackwards {
                    dataset: self.name.clone(),
                    through: through.to_string(),
                    closing: c.describe(),
                });
            }
            let seq = closings.iter().map(|c| c.seq).max().unwrap_or(0) + 1;
            let closing = crate::closing::Closing {
                format: crate::closing::CLOSING_FORMAT.into(),
                seq,
                dataset: self.name.clone(),
                through,
                reason: reason.clone(),
                by: by.to_string(),
                at,
            };
            let body = serde_json::to_vec_pretty(&closing)
                .map_err(|source| Error::Serialize { what: "closing", source })?;
            if log.create(&self.lake, seq, body).await? {
                return Ok(closing);
            }
        }
    }

    /// The closed partitions a version built on the current one would change (its rows differ
    /// from the partition it replaces), with the closing in force; `None` when nothing closed
    /// changes. `draft` is the new version as previewed or prepared.
    pub async fn closed_changes(
        &self,
        draft: &Draft,
    ) -> Result<Option<(crate::closing::Closing, Vec<crate::closing::RestatedPartition>)>> {
        let Some(closing) = self.closing().await? else { return Ok(None) };
        let record = draft.record.as_ref();
        let Some(parent) = record.parent else { return Ok(None) };
        let parent = self.published_head(parent).await?;
        let keys = |r: &RecordHead| -> std::collections::BTreeSet<String> {
            r.chunks.iter().flat_map(|c| c.keys.iter().cloned()).collect()
        };
        let (old, new) = (keys(&parent), keys(record));
        let after = self.select(draft, &|k| crate::closing::is_closed(k, closing.through)).await?;
        // What the version touches: the partitions it wrote, and those of its parent it dropped.
        let mut touched: std::collections::BTreeSet<String> = after
            .partitions
            .iter()
            .filter(|p| p.written_in == record.version)
            .map(|p| p.key.clone())
            .collect();
        touched.extend(old.difference(&new).cloned());
        touched.retain(|k| crate::closing::is_closed(k, closing.through));
        if touched.is_empty() {
            return Ok(None);
        }
        let parent_draft = Draft { record: parent, new: Arc::default() };
        let before = self.select(&parent_draft, &|k| touched.contains(k)).await?;
        let changed = crate::closing::restated(
            closing.through,
            &touched,
            &before.partitions,
            &after.partitions,
        );
        Ok((!changed.is_empty()).then_some((closing, changed)))
    }

    /// A [`Draft`] of a record already in the store (a prepared one).
    pub fn draft_of(record: RecordHead) -> Draft {
        Draft { record: Arc::new(record), new: Arc::default() }
    }

    /// Removes a record `run_id` prepared that no pointer entry names, and the chunks it wrote
    /// itself, through the deletion authority (a promotion that stopped before its flip).
    pub async fn discard_record(&self, version: u64, run_id: &str) -> Result<()> {
        let Some(record) = self.read_record_shared(version).await? else { return Ok(()) };
        if record.run_id != run_id {
            return Ok(());
        }
        self.discard_prepared(&record, record.publish_seq).await
    }

    /// Removes what an unpublished run left: version records of `run_id` numbered above
    /// `base.max_version`, and its staged files and chunks except the paths in `keep`, as far as
    /// the deletion authority ([`deletion::decide`]) allows: nothing a pointer entry after
    /// `base.seq` names, no staged file at all once a version of the run was made current, and
    /// nothing of a live run. Returns what was removed, and why anything was kept.
    pub async fn discard_run(
        &self,
        run_id: &str,
        base: Base,
        keep: &std::collections::BTreeSet<String>,
        holder: Holder,
    ) -> Result<Discarded> {
        let prefix = layout::versions_prefix(&self.name);
        let offset = layout::version_path(&self.name, base.max_version);
        let listed: Vec<Path> = self
            .store()
            .list_with_offset(Some(&prefix), &offset)
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(|e| Error::store("list", &prefix, e))?;
        let mut records = Vec::new();
        for path in listed {
            let Some(v) = layout::version_records(&self.name).number_of(&path) else { continue };
            let Some(record) = self.read_record_shared(v).await? else { continue };
            records.push(RecordFound {
                version: v,
                run_id: record.run_id.clone(),
                path: path.to_string(),
            });
        }
        let staged: Vec<String> = self
            .lake
            .list_paths(&layout::run_prefix(&self.name, run_id))
            .await?
            .into_iter()
            .map(|p| p.to_string())
            .collect();
        // Read last, so that a flip made while the rest was listed is seen.
        let referenced = Referenced::of(&self.flips_after(base.seq).await?);
        let verdict = deletion::decide(run_id, &records, &staged, keep, &referenced, holder);
        self.delete_decided(&verdict.delete).await?;
        Ok(Discarded { removed: verdict.delete, kept_because: verdict.kept_because })
    }

    /// Deletes staged files of `run_id` that the run decided not to publish (a partition a
    /// FAIL_PARTITION rule withheld), through the deletion authority: only files under the run's
    /// own prefix, and none once a pointer entry names a version of the run.
    pub async fn discard_staged(&self, run_id: &str, files: &[String]) -> Result<Discarded> {
        let prefix = format!("{}/", layout::run_prefix(&self.name, run_id));
        let staged: Vec<String> =
            files.iter().filter(|p| p.starts_with(&prefix)).cloned().collect();
        let referenced = Referenced::of(&self.flips_after(0).await?);
        let keep = std::collections::BTreeSet::new();
        let verdict = deletion::decide(run_id, &[], &staged, &keep, &referenced, Holder::Caller);
        self.delete_decided(&verdict.delete).await?;
        Ok(Discarded { removed: verdict.delete, kept_because: verdict.kept_because })
    }

    /// Checks files against their recorded size and sha256 (reading each whole).
    pub async fn check_files(&self, files: Vec<FileEntry>) -> Result<Vec<FileProblem>> {
        let checks = futures::stream::iter(files.into_iter().map(|f| self.check_file(f)))
            .buffer_unordered(8)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(checks.into_iter().flatten().collect())
    }

    /// Takes over files another (failed) run staged and checksummed, for this run: each file is
    /// read back and checked against its size and sha256, then moved under this run's prefix.
    /// `None` (and nothing moved) when any file is missing or differs.
    pub async fn adopt(&self, staged: &Staged, ctx: &RunContext) -> Result<Option<Staged>> {
        let files: Vec<FileEntry> =
            staged.partitions.iter().flat_map(|p| p.files.iter().cloned()).collect();
        if !self.check_files(files).await?.is_empty() {
            return Ok(None);
        }
        let from = format!("{}/", layout::run_prefix(&self.name, &staged.run_id));
        let to = format!("{}/", layout::run_prefix(&self.name, ctx.run_id()));
        let mut adopted = staged.clone();
        adopted.run_id = ctx.run_id().to_string();
        for p in &mut adopted.partitions {
            p.run_id = ctx.run_id().to_string();
            for f in &mut p.files {
                let Some(rest) = f.path.strip_prefix(&from) else {
                    return Err(Error::internal(format!(
                        "cannot adopt {}: it is not staged by run {}",
                        f.path, staged.run_id
                    )));
                };
                let (src, dst) = (Path::from(f.path.as_str()), Path::from(format!("{to}{rest}")));
                self.store().rename(&src, &dst).await.map_err(|e| Error::store("move", &src, e))?;
                f.path = dst.to_string();
            }
        }
        Ok(Some(adopted))
    }

    /// Makes an earlier published version current again: one new pointer entry, O(1) in the
    /// size of the data (no data file is read or copied).
    pub async fn rollback(
        &self,
        to: u64,
        reason: Option<String>,
        ctx: &RunContext,
    ) -> Result<RollbackOutcome> {
        let head = self.require_head().await?;
        if head.to == to {
            return Ok(RollbackOutcome::AlreadyCurrent(head));
        }
        let target = self.published_head(to).await?;
        let flip = Flip {
            format: FLIP_FORMAT.to_string(),
            seq: head.seq + 1,
            kind: FlipKind::Rollback,
            from: Some(head.to),
            to,
            run_id: ctx.run_id().to_string(),
            reason,
            at: ctx.now(),
            max_version: head.max_version,
            version: target.brief(),
        };
        self.create_flip(&flip).await?;
        crash::point("after-flip");
        self.checkpoint_if_due(flip.seq).await;
        Ok(RollbackOutcome::Flipped(flip))
    }

    /// Recomputes size and sha256 of every file of a version (the current one by default).
    pub async fn verify(&self, version: Option<u64>) -> Result<VerifyReport> {
        self.verify_record(&self.version_or_current(version).await?).await
    }

    /// Recomputes size and sha256 of every file `record` lists (a shadow's version, say).
    pub async fn verify_record(&self, record: &VersionRecord) -> Result<VerifyReport> {
        let mut problems = self.check_files(record.files().cloned().collect()).await?;
        problems.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(VerifyReport {
            dataset: self.name.clone(),
            version: record.version,
            files_checked: record.summary.files,
            bytes_checked: record.summary.bytes,
            problems,
        })
    }

    async fn check_file(&self, file: FileEntry) -> Result<Option<FileProblem>> {
        let path = Path::from(file.path.as_str());
        let got = match self.store().get(&path).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => {
                return Ok(Some(FileProblem {
                    path: file.path,
                    problem: "missing",
                    expected: format!("{} bytes", file.size),
                    found: "no such object".into(),
                }))
            }
            Err(e) => return Err(Error::store("read", &path, e)),
        };
        let mut stream = got.into_stream();
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk: Bytes = chunk.map_err(|e| Error::store("read", &path, e))?;
            size += chunk.len() as u64;
            hasher.update(&chunk);
        }
        if size != file.size {
            return Ok(Some(FileProblem {
                path: file.path,
                problem: "size",
                expected: format!("{} bytes", file.size),
                found: format!("{size} bytes"),
            }));
        }
        let sha = hex::encode(hasher.finalize());
        if sha != file.sha256 {
            return Ok(Some(FileProblem {
                path: file.path,
                problem: "sha256",
                expected: file.sha256,
                found: sha,
            }));
        }
        Ok(None)
    }

    /// Create-if-absent of a JSON object (compact: version records grow with the partitions,
    /// and every run reads and writes some): `true` if this call created it.
    async fn create_json<T: Serialize>(
        &self,
        path: &Path,
        value: &T,
        what: &'static str,
    ) -> Result<bool> {
        let mut body =
            serde_json::to_vec(value).map_err(|source| Error::Serialize { what, source })?;
        body.push(b'\n');
        self.lake.create_if_absent(path, body).await
    }
}

/// The chunks of partitions a new record writes, by path.
type NewChunks = std::collections::BTreeMap<String, Arc<Vec<PartitionEntry>>>;

/// The pointer entry that publishes `record` on top of `head`.
/// The chunks `record` wrote itself (those under its run's prefix for its version).
fn own_chunks(dataset: &str, record: &RecordHead) -> Vec<String> {
    let own = layout::chunk_path(dataset, &record.run_id, record.version, 0);
    let own = own.trim_end_matches("00000.json");
    record.chunks.iter().filter(|c| c.path.starts_with(own)).map(|c| c.path.clone()).collect()
}

/// The pointer entry that publishes `record` over `head`: of the kind and with the reason of the
/// publish `options` (the record's own reason when they give none).
fn flip_for(
    record: &RecordHead,
    head: Option<&Flip>,
    options: &PublishOptions,
    ctx: &RunContext,
) -> Flip {
    Flip {
        format: FLIP_FORMAT.to_string(),
        seq: record.publish_seq,
        kind: options.kind,
        from: head.map(|h| h.to),
        to: record.version,
        run_id: record.run_id.clone(),
        reason: options.reason.clone().or_else(|| record.reason.clone()),
        at: ctx.now(),
        max_version: record.version.max(head.map_or(0, |h| h.max_version)),
        version: record.brief(),
    }
}

fn replace_of(options: &PublishOptions) -> protocol::Replace {
    if options.replace_all {
        protocol::Replace::All
    } else if let Some(owned) = &options.owned {
        protocol::Replace::Owned(owned.clone())
    } else {
        protocol::Replace::Written
    }
}

/// Whose object stands at a path after a resolved create-if-absent.
enum Outcome<T> {
    Ours,
    Theirs(Option<T>),
}
