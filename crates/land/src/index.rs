//! The index of a source's raw batches: `_raw/<source>/_index.json`.
//!
//! A run needs three things about the raw layer that would otherwise cost a pass over all of
//! its history: which batches exist (one manifest read per batch), whether an input file was
//! already landed (a sha256 of the whole file), and which batches hold rows of a business-date
//! window (a scan of every batch). The index keeps all three.
//!
//! It is a cache, never the truth. The truth is the source's log (`crate::raw_log`, which names
//! every batch before its manifest commits it) and the batches' manifests. The index remembers
//! how much of the log it has read; loading it reads only the log
//! entries after that, and the manifests of the batches they name (a batch announced whose
//! manifest is not there yet stays pending, and is looked for again on the next load). So
//! loading costs the same after ten batches as after ten thousand, and no batch can be missed:
//! losing an update (two processes writing the index at once, or a crash before it is written)
//! only costs reading those log entries again. A damaged index, or one written before the log
//! existed, is rebuilt from a listing of the batch directories and the whole log. An input file
//! is recognised by its location, size and entity tag (on local disk: inode, modification time
//! and size); a file changed in place gets a new tag and is read and hashed again.
//!
//! The index file itself stays small: it names the input identities, the pending batches and
//! the index's chunks. A chunk (`_raw/<source>/_index/<sha256>.json`, named by its content and
//! never changed) holds the entries of up to 64 batches in landing order: manifests and date
//! ranges. The index file lists each chunk's batch ids and, per date key, the union of their
//! ranges, so a window run reads only the chunks that may hold its dates, and a write rewrites
//! only the chunks that changed (a new batch joins the last chunk while it has room). A chunk
//! that is gone or damaged is made again from its batches' manifests.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::NaiveDate;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use strata_publish::Lake;

use crate::error::{Error, Result};
use crate::landing::{read_manifest, BatchManifest, Input};
use crate::layout::{manifest_path, source_prefix};
use crate::raw_log;

/// `format` of an index file.
pub const INDEX_FORMAT: &str = "strata.raw-index.v2";
/// `format` of a chunk of the index.
pub const INDEX_CHUNK_FORMAT: &str = "strata.raw-index-chunk.v1";
/// Batches per chunk.
const CHUNK_BATCHES: usize = 64;

/// The path of a source's index.
pub fn index_path(source: &str) -> Path {
    Path::from(format!("{}/_index.json", source_prefix(source)))
}

/// The path of a chunk of a source's index: named by the sha256 of its content, so that a chunk
/// is never changed once written.
fn chunk_path(source: &str, body: &[u8]) -> Path {
    use sha2::{Digest, Sha256};
    let digest = hex::encode(Sha256::digest(body));
    Path::from(format!("{}/_index/{digest}.json", source_prefix(source)))
}

/// What a batch holds of one date column, as the cleaned stage reads it: the first and last
/// date, and the rows whose date is missing or unreadable (those rows belong to every window,
/// since they go to the quarantine).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DateRange {
    pub min: Option<NaiveDate>,
    pub max: Option<NaiveDate>,
    pub nulls: u64,
}

impl DateRange {
    /// Whether a batch with this range can hold a row the window `[from, to]` reads.
    pub fn may_hold(&self, from: NaiveDate, to: NaiveDate) -> bool {
        self.nulls > 0
            || matches!((self.min, self.max), (Some(lo), Some(hi)) if hi >= from && lo <= to)
    }

    /// The range of the rows of both: a window that may find a row in either may find one in
    /// the union.
    fn union(self, other: &DateRange) -> DateRange {
        let pick = |a: Option<NaiveDate>,
                    b: Option<NaiveDate>,
                    f: fn(NaiveDate, NaiveDate) -> NaiveDate| {
            match (a, b) {
                (Some(a), Some(b)) => Some(f(a, b)),
                (a, b) => a.or(b),
            }
        };
        DateRange {
            min: pick(self.min, other.min, NaiveDate::min),
            max: pick(self.max, other.max, NaiveDate::max),
            nulls: self.nulls + other.nulls,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    /// Stored with an empty schema when `schema` names one of the file's `schemas`.
    manifest: BatchManifest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    schema: Option<usize>,
    /// Date ranges by stats key (see [`SourceIndex::set_dates`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    dates: BTreeMap<String, DateRange>,
}

/// An [`Entry`] as written: the manifest without its schema, which `schema` names.
#[derive(Serialize)]
struct EntryOut<'a> {
    manifest: ManifestOut<'a>,
    schema: usize,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    dates: &'a BTreeMap<String, DateRange>,
}

/// A [`BatchManifest`] serialized with an empty schema, without copying it.
struct ManifestOut<'a>(&'a BatchManifest);

impl Serialize for ManifestOut<'_> {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let m = self.0;
        let mut s = serializer.serialize_struct("BatchManifest", 13)?;
        s.serialize_field("format", &m.format)?;
        s.serialize_field("source", &m.source)?;
        s.serialize_field("batch_id", &m.batch_id)?;
        s.serialize_field("input", &m.input)?;
        s.serialize_field("rows", &m.rows)?;
        s.serialize_field("rejected", &m.rejected)?;
        s.serialize_field("blank_lines", &m.blank_lines)?;
        s.serialize_field("schema", &arrow::datatypes::Schema::empty())?;
        s.serialize_field("data", &m.data)?;
        s.serialize_field("rejects", &m.rejects)?;
        s.serialize_field("run_id", &m.run_id)?;
        s.serialize_field("landed_at", &m.landed_at)?;
        if let Some(seq) = m.log_seq {
            s.serialize_field("log_seq", &seq)?;
        }
        s.end()
    }
}

/// Entries as written, each distinct schema once.
fn entries_out(entries: &[Entry]) -> (Vec<&arrow::datatypes::Schema>, Vec<EntryOut<'_>>) {
    let mut schemas: Vec<&arrow::datatypes::Schema> = Vec::new();
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let i = match schemas.iter().position(|s| **s == e.manifest.schema) {
            Some(i) => i,
            None => {
                schemas.push(&e.manifest.schema);
                schemas.len() - 1
            }
        };
        out.push(EntryOut { manifest: ManifestOut(&e.manifest), schema: i, dates: &e.dates });
    }
    (schemas, out)
}

/// An entry as read, given back the schema it names; `None` if it names no schema.
fn entry_in(mut e: Entry, schemas: &[arrow::datatypes::Schema]) -> Option<Entry> {
    if let Some(i) = e.schema.take() {
        e.manifest.schema = schemas.get(i)?.clone();
    }
    Some(e)
}

/// A chunk as the index names it: its path, its batches in landing order, and per stats key the
/// union of their date ranges (for the keys every one of them has).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ChunkRef {
    path: String,
    batches: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    dates: BTreeMap<String, DateRange>,
}

#[derive(Serialize)]
struct ChunkFileOut<'a> {
    format: &'a str,
    source: &'a str,
    schemas: Vec<&'a arrow::datatypes::Schema>,
    batches: Vec<EntryOut<'a>>,
}

#[derive(Deserialize)]
struct ChunkFile {
    format: String,
    source: String,
    #[serde(default)]
    schemas: Vec<arrow::datatypes::Schema>,
    batches: Vec<Entry>,
}

#[derive(Serialize)]
struct IndexFileOut<'a> {
    format: &'a str,
    source: &'a str,
    log: u64,
    pending: &'a BTreeSet<String>,
    chunks: Vec<ChunkRef>,
    inputs: &'a BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct IndexFile {
    format: String,
    source: String,
    /// The log entries 1 to `log` are reflected here; absent in an index from before the log.
    #[serde(default)]
    log: Option<u64>,
    /// Batches the log announced whose manifest was not there yet.
    #[serde(default)]
    pending: BTreeSet<String>,
    #[serde(default)]
    chunks: Vec<ChunkRef>,
    /// Input identity (location, size, entity tag) → the batch it was landed as.
    #[serde(default)]
    inputs: BTreeMap<String, String>,
}

/// Some batches of the index, in landing order.
#[derive(Debug)]
struct Chunk {
    /// The stored chunk holding exactly `ids` (and its date summary); `None` once changed, until
    /// it is written.
    stored: Option<String>,
    ids: Vec<String>,
    /// Of the stored chunk: per stats key, the union of its batches' ranges.
    dates: BTreeMap<String, DateRange>,
    /// The entries, in the order of `ids`, once read.
    entries: Option<Vec<Entry>>,
}

impl Chunk {
    fn new(entries: Vec<Entry>) -> Chunk {
        let ids = entries.iter().map(|e| e.manifest.batch_id.clone()).collect();
        Chunk { stored: None, ids, dates: BTreeMap::new(), entries: Some(entries) }
    }

    /// Per stats key that every batch has, the union of their ranges.
    fn summary(entries: &[Entry]) -> BTreeMap<String, DateRange> {
        let Some(first) = entries.first() else { return BTreeMap::new() };
        first
            .dates
            .keys()
            .filter_map(|k| {
                let mut all = entries.iter().map(|e| e.dates.get(k));
                let start = *all.next()??;
                all.try_fold(start, |acc, r| r.map(|r| acc.union(r))).map(|r| (k.clone(), r))
            })
            .collect()
    }
}

/// The loaded index of one source's raw batches. See the module documentation.
#[derive(Debug)]
pub struct SourceIndex {
    source: String,
    chunks: Vec<Chunk>,
    /// Batch id → the chunk holding it.
    place: HashMap<String, usize>,
    inputs: BTreeMap<String, String>,
    log: u64,
    pending: BTreeSet<String>,
    /// Stored chunks no longer named, deleted once the index is written without them.
    replaced: BTreeSet<String>,
    dirty: bool,
}

impl SourceIndex {
    fn empty(source: &str, log: u64) -> SourceIndex {
        SourceIndex {
            source: source.to_string(),
            chunks: Vec::new(),
            place: HashMap::new(),
            inputs: BTreeMap::new(),
            log,
            pending: BTreeSet::new(),
            replaced: BTreeSet::new(),
            dirty: false,
        }
    }

    /// Loads the index of `source` and brings it up to date with the log. Reads the index file
    /// only: chunks are read when a question needs them.
    pub async fn load(lake: &Lake, source: &str) -> Result<SourceIndex> {
        strata_publish::names::validate_dataset_name(source)?;
        let path = index_path(source);
        let bytes = lake.get_opt(&path).await?;
        // A damaged or foreign index, or one of an earlier format, is rebuilt.
        let cached = bytes
            .and_then(|b| serde_json::from_slice::<IndexFile>(&b).ok())
            .filter(|f| f.source == source && f.log.is_some())
            .filter(|f| f.format == INDEX_FORMAT)
            .filter(|f| {
                // Every chunk named where this index keeps its chunks, and not empty.
                let dir = format!("{}/_index/", source_prefix(source));
                f.chunks.iter().all(|c| c.path.starts_with(&dir) && !c.batches.is_empty())
            });
        let mut index = match cached {
            Some(f) => Self::from_file(source, f),
            None => Self::rebuild(lake, source).await?,
        };
        // The log entries written since, and the batches still pending.
        let mut announced = std::mem::take(&mut index.pending);
        while let Some(id) = raw_log::read(lake, source, index.log + 1).await? {
            announced.insert(id);
            index.log += 1;
            index.dirty = true;
        }
        index.settle(lake, announced).await?;
        index.forget_unknown_inputs();
        Ok(index)
    }

    fn from_file(source: &str, f: IndexFile) -> SourceIndex {
        let mut index = SourceIndex::empty(source, f.log.unwrap_or(0));
        index.inputs = f.inputs;
        index.pending = f.pending;
        for c in f.chunks {
            let n = index.chunks.len();
            for id in &c.batches {
                index.place.insert(id.clone(), n);
            }
            index.chunks.push(Chunk {
                stored: Some(c.path),
                ids: c.batches,
                dates: c.dates,
                entries: None,
            });
        }
        index
    }

    /// Drops input identities whose batch the index does not hold.
    fn forget_unknown_inputs(&mut self) {
        let known = &self.place;
        let before = self.inputs.len();
        self.inputs.retain(|_, id| known.contains_key(id));
        self.dirty |= self.inputs.len() != before;
    }

    /// Adds batches the index does not hold yet, in landing order, after the others.
    fn append_all(&mut self, mut entries: Vec<Entry>) {
        entries.sort_by(landing_order);
        for e in entries {
            self.append(e);
        }
    }

    /// Adds a batch after the others, unless the index holds it.
    fn append(&mut self, entry: Entry) {
        let id = entry.manifest.batch_id.clone();
        if self.place.contains_key(&id) {
            return;
        }
        self.dirty = true;
        match self.chunks.last_mut() {
            Some(c) if c.stored.is_none() && c.ids.len() < CHUNK_BATCHES => {
                if let Some(entries) = &mut c.entries {
                    c.ids.push(id.clone());
                    entries.push(entry);
                    self.place.insert(id, self.chunks.len() - 1);
                    return;
                }
            }
            _ => {}
        }
        self.place.insert(id, self.chunks.len());
        self.chunks.push(Chunk::new(vec![entry]));
    }

    /// Reads the manifests of `announced` batches the index lacks: those there become entries,
    /// the others stay pending.
    async fn settle(&mut self, lake: &Lake, announced: BTreeSet<String>) -> Result<()> {
        let missing: Vec<String> =
            announced.into_iter().filter(|id| !self.place.contains_key(id)).collect();
        let found = read_manifests(lake, &self.source, &missing).await?;
        let mut entries = Vec::new();
        for (id, m) in missing.into_iter().zip(found) {
            match m {
                Some(m) => {
                    entries.push(Entry { manifest: m, schema: None, dates: BTreeMap::new() })
                }
                // Announced, not committed: a landing in progress or one that crashed.
                None => {
                    self.dirty |= self.pending.insert(id);
                }
            }
        }
        self.append_all(entries);
        Ok(())
    }

    /// An index made from the truth: the batch directories (one listing) and their manifests,
    /// and the whole log, whose batches without a manifest are pending.
    async fn rebuild(lake: &Lake, source: &str) -> Result<SourceIndex> {
        let prefix = source_prefix(source);
        let listing = lake
            .store()
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|e| Error::store("list", &prefix, e))?;
        let mut announced: BTreeSet<String> = listing
            .common_prefixes
            .iter()
            .filter_map(|d| d.filename().and_then(|d| d.strip_prefix("batch=")))
            .map(str::to_string)
            .collect();
        let end = raw_log::end(lake, source, 0).await?;
        let ids: Vec<Option<String>> = futures::stream::iter(1..=end)
            .map(|seq| raw_log::read(lake, source, seq))
            .buffered(16)
            .try_collect()
            .await?;
        announced.extend(ids.into_iter().flatten());
        let mut index = SourceIndex::empty(source, end);
        index.dirty = true;
        index.settle(lake, announced).await?;
        Ok(index)
    }

    /// Reads the chunks `which` that are not read yet. A chunk that is gone or damaged (another
    /// process replaced it, or it was changed) is made again from its batches' manifests.
    async fn read_chunks(&mut self, lake: &Lake, which: &[usize]) -> Result<()> {
        let wanted: Vec<(usize, String, Vec<String>)> = which
            .iter()
            .filter_map(|&i| {
                let c = &self.chunks[i];
                match (&c.entries, &c.stored) {
                    (None, Some(path)) => Some((i, path.clone(), c.ids.clone())),
                    _ => None,
                }
            })
            .collect();
        let source = self.source.clone();
        // The futures are made before the stream (a closure inside it would make the whole
        // future not `Send` for every lifetime, which spawning needs).
        let reads: Vec<_> =
            wanted.iter().map(|(_, path, ids)| read_chunk(lake, &source, path, ids)).collect();
        let read: Vec<Option<Vec<Entry>>> =
            futures::stream::iter(reads).buffered(16).try_collect().await?;
        for ((i, path, ids), entries) in wanted.into_iter().zip(read) {
            let entries = match entries {
                Some(entries) => entries,
                None => {
                    let found = read_manifests(lake, &self.source, &ids).await?;
                    let mut entries = Vec::with_capacity(ids.len());
                    for (id, m) in ids.into_iter().zip(found) {
                        match m {
                            Some(m) => entries.push(Entry {
                                manifest: m,
                                schema: None,
                                dates: BTreeMap::new(),
                            }),
                            None => {
                                self.place.remove(&id);
                                self.pending.insert(id);
                            }
                        }
                    }
                    let c = &mut self.chunks[i];
                    c.ids = entries.iter().map(|e| e.manifest.batch_id.clone()).collect();
                    c.stored = None;
                    c.dates.clear();
                    self.replaced.insert(path);
                    self.dirty = true;
                    entries
                }
            };
            self.chunks[i].entries = Some(entries);
        }
        Ok(())
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Every landed batch, sorted by batch id. Reads every chunk.
    pub async fn all_batches(&mut self, lake: &Lake) -> Result<Vec<BatchManifest>> {
        let all: Vec<usize> = (0..self.chunks.len()).collect();
        self.read_chunks(lake, &all).await?;
        let mut out: Vec<BatchManifest> = self
            .chunks
            .iter()
            .flat_map(|c| c.entries.iter().flatten())
            .map(|e| e.manifest.clone())
            .collect();
        out.sort_by(|a, b| a.batch_id.cmp(&b.batch_id));
        Ok(out)
    }

    /// The batches whose range under the stats `key` is `wanted`, and those without a range under
    /// `key`, each with its range; sorted by batch id. Reads only the chunks whose summary under
    /// `key` is wanted (or that have none).
    pub async fn batches_where(
        &mut self,
        lake: &Lake,
        key: &str,
        wanted: impl Fn(&DateRange) -> bool,
    ) -> Result<Vec<(BatchManifest, Option<DateRange>)>> {
        let which: Vec<usize> = (0..self.chunks.len())
            .filter(|&i| {
                let c = &self.chunks[i];
                c.entries.is_some() || c.dates.get(key).is_none_or(&wanted)
            })
            .collect();
        self.read_chunks(lake, &which).await?;
        let mut out: Vec<(BatchManifest, Option<DateRange>)> = which
            .iter()
            .flat_map(|&i| self.chunks[i].entries.iter().flatten())
            .filter_map(|e| {
                let range = e.dates.get(key).copied();
                range.is_none_or(|r| wanted(&r)).then(|| (e.manifest.clone(), range))
            })
            .collect();
        out.sort_by(|a, b| a.0.batch_id.cmp(&b.0.batch_id));
        Ok(out)
    }

    /// The manifest of a batch the index holds (reading its chunk).
    pub async fn manifest(&mut self, lake: &Lake, batch_id: &str) -> Result<Option<BatchManifest>> {
        let Some(&i) = self.place.get(batch_id) else { return Ok(None) };
        self.read_chunks(lake, &[i]).await?;
        let entries = self.chunks.get(i).and_then(|c| c.entries.as_ref());
        Ok(entries
            .and_then(|es| es.iter().find(|e| e.manifest.batch_id == batch_id))
            .map(|e| e.manifest.clone()))
    }

    /// How many batches the index holds.
    pub fn len(&self) -> usize {
        self.place.len()
    }

    pub fn is_empty(&self) -> bool {
        self.place.is_empty()
    }

    /// The batch an input with this identity (see [`input_identity`]) was landed as.
    pub fn landed_as(&self, identity: &str) -> Option<&str> {
        self.inputs.get(identity).filter(|id| self.place.contains_key(*id)).map(String::as_str)
    }

    /// Records a landed (or found already landed) batch, and the input it came from: its
    /// identity replaces any other of the same location (an earlier content of the file).
    pub fn record(&mut self, identity: Option<String>, manifest: &BatchManifest) {
        let id = manifest.batch_id.clone();
        self.append(Entry { manifest: manifest.clone(), schema: None, dates: BTreeMap::new() });
        if let Some(identity) = identity {
            if self.inputs.get(&identity) != Some(&id) {
                let location = identity_location(&identity);
                let before = format!("{location}|");
                let stale: Vec<String> = self
                    .inputs
                    .range(before.clone()..)
                    .take_while(|(k, _)| k.starts_with(&before))
                    .filter(|(k, _)| identity_location(k) == location)
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in stale {
                    self.inputs.remove(&k);
                }
                self.inputs.insert(identity, id);
                self.dirty = true;
            }
        }
    }

    /// Forgets every input identity, so that the next landing of each input reads and hashes it
    /// again (`strata run --rehash`). Batches are kept.
    pub fn forget_inputs(&mut self) {
        self.dirty |= !self.inputs.is_empty();
        self.inputs.clear();
    }

    /// Puts `manifest` in place of the index's copy of it, if the index holds that batch and
    /// its copy differs (a batch landed again after its directory was deleted).
    async fn replace_manifest(&mut self, lake: &Lake, manifest: &BatchManifest) -> Result<()> {
        let Some(&i) = self.place.get(&manifest.batch_id) else { return Ok(()) };
        self.read_chunks(lake, &[i]).await?;
        let Some((i, e)) = self.entry_mut(&manifest.batch_id) else { return Ok(()) };
        if e.manifest == *manifest {
            return Ok(());
        }
        e.manifest = manifest.clone();
        e.dates.clear();
        if let Some(path) = self.chunks[i].stored.take() {
            self.replaced.insert(path);
        }
        self.dirty = true;
        Ok(())
    }

    fn entry_mut(&mut self, batch_id: &str) -> Option<(usize, &mut Entry)> {
        let &i = self.place.get(batch_id)?;
        let entries = self.chunks.get_mut(i)?.entries.as_mut()?;
        entries.iter_mut().find(|e| e.manifest.batch_id == batch_id).map(|e| (i, e))
    }

    /// The recorded date range of a batch under `key` (a name for the column and the way it is
    /// read, chosen by the caller), if its chunk has been read.
    pub fn dates(&self, batch_id: &str, key: &str) -> Option<DateRange> {
        let &i = self.place.get(batch_id)?;
        let entries = self.chunks.get(i)?.entries.as_ref()?;
        entries.iter().find(|e| e.manifest.batch_id == batch_id)?.dates.get(key).copied()
    }

    /// Records the date range of a batch whose chunk has been read (one returned by
    /// [`SourceIndex::batches_where`] or [`SourceIndex::all_batches`]).
    pub fn set_dates(&mut self, batch_id: &str, key: &str, range: DateRange) {
        let Some((i, e)) = self.entry_mut(batch_id) else { return };
        if e.dates.get(key) == Some(&range) {
            return;
        }
        e.dates.insert(key.to_string(), range);
        let c = &mut self.chunks[i];
        if let Some(path) = c.stored.take() {
            self.replaced.insert(path);
        }
        self.dirty = true;
    }

    /// Writes the index back if anything changed: the chunks that changed (new batches join the
    /// last chunk while it has room), then the index file, then the chunks it no longer names
    /// are deleted.
    pub async fn save(&mut self, lake: &Lake) -> Result<()> {
        if !self.dirty {
            return Ok(());
        }
        // The last stored chunk takes new batches while it has room.
        let n = self.chunks.len();
        if n >= 2 && self.chunks[n - 1].stored.is_none() {
            let last_stored = (0..n).rev().find(|&i| self.chunks[i].stored.is_some());
            if let Some(k) = last_stored.filter(|&k| self.chunks[k].ids.len() < CHUNK_BATCHES) {
                self.read_chunks(lake, &[k]).await?;
                if let Some(path) = self.chunks[k].stored.take() {
                    self.replaced.insert(path);
                }
            }
        }
        self.recut();
        // The changed chunks, then the index that names them.
        let source = self.source.clone();
        let mut writes = Vec::new();
        for (i, c) in self.chunks.iter().enumerate() {
            if c.stored.is_some() {
                continue;
            }
            let entries = c.entries.as_deref().unwrap_or_default();
            let (schemas, batches) = entries_out(entries);
            let file =
                ChunkFileOut { format: INDEX_CHUNK_FORMAT, source: &source, schemas, batches };
            let body = serde_json::to_vec(&file).map_err(|e| Error::Serialize {
                path: index_path(&source).to_string(),
                source: e,
            })?;
            writes.push((i, chunk_path(&source, &body), PutPayload::from(body)));
        }
        // A payload is shared bytes: cloning it copies no chunk.
        let puts: Vec<_> =
            writes.iter().map(|(_, path, body)| lake.store().put(path, body.clone())).collect();
        for ((_, path, _), put) in writes.iter().zip(futures::future::join_all(puts).await) {
            put.map_err(|e| Error::store("write", path, e))?;
        }
        for (i, path, _) in writes {
            let c = &mut self.chunks[i];
            c.dates = Chunk::summary(c.entries.as_deref().unwrap_or_default());
            c.stored = Some(path.to_string());
        }
        let chunks: Vec<ChunkRef> = self
            .chunks
            .iter()
            .map(|c| ChunkRef {
                path: c.stored.clone().unwrap_or_default(),
                batches: c.ids.clone(),
                dates: c.dates.clone(),
            })
            .collect();
        let file = IndexFileOut {
            format: INDEX_FORMAT,
            source: &self.source,
            log: self.log,
            pending: &self.pending,
            chunks,
            inputs: &self.inputs,
        };
        let path = index_path(&self.source);
        let body = serde_json::to_vec(&file)
            .map_err(|source| Error::Serialize { path: path.to_string(), source })?;
        lake.store()
            .put(&path, PutPayload::from(body))
            .await
            .map_err(|e| Error::store("write", &path, e))?;
        self.dirty = false;
        // Chunks no longer named. Another process may still name one (it read the index before
        // this write); reading it then finds it gone and makes it again from the manifests.
        let named: BTreeSet<&str> =
            self.chunks.iter().filter_map(|c| c.stored.as_deref()).collect();
        let gone: Vec<Path> = std::mem::take(&mut self.replaced)
            .into_iter()
            .filter(|p| !named.contains(p.as_str()))
            .map(Path::from)
            .collect();
        let deletes = gone.iter().map(|p| lake.store().delete(p));
        let _ = futures::future::join_all(deletes).await;
        self.sweep(lake, &named).await;
        Ok(())
    }

    /// Deletes chunks that no index names and that are more than an hour old: those of a write
    /// interrupted between its chunks and its index file. (A younger one may belong to a write
    /// still under way in another process.) Best effort: the index is a cache.
    async fn sweep(&self, lake: &Lake, named: &BTreeSet<&str>) {
        let dir = Path::from(format!("{}/_index", source_prefix(&self.source)));
        let Ok(listed) = lake.store().list(Some(&dir)).try_collect::<Vec<_>>().await else {
            return;
        };
        let old = chrono::Utc::now() - chrono::Duration::hours(1);
        let strays: Vec<Path> = listed
            .into_iter()
            .filter(|m| m.last_modified < old && !named.contains(m.location.as_ref()))
            .map(|m| m.location)
            .collect();
        let deletes = strays.iter().map(|p| lake.store().delete(p));
        let _ = futures::future::join_all(deletes).await;
    }

    /// Cuts each run of changed chunks again into chunks of at most [`CHUNK_BATCHES`], keeping
    /// the order, so that small chunks merge.
    fn recut(&mut self) {
        let mut out: Vec<Chunk> = Vec::with_capacity(self.chunks.len());
        let mut run: Vec<Entry> = Vec::new();
        let flush = |run: &mut Vec<Entry>, out: &mut Vec<Chunk>| {
            let mut all = std::mem::take(run);
            all.sort_by(landing_order);
            let mut rest = all.into_iter().peekable();
            while rest.peek().is_some() {
                out.push(Chunk::new(rest.by_ref().take(CHUNK_BATCHES).collect()));
            }
        };
        // A run of changed chunks ends with the new batches, recorded in the order their
        // inputs came; they are written in landing order, so that a write interrupted and made
        // again writes the same chunks.
        for c in std::mem::take(&mut self.chunks) {
            if c.stored.is_some() {
                flush(&mut run, &mut out);
                out.push(c);
            } else {
                run.extend(c.entries.unwrap_or_default());
            }
        }
        flush(&mut run, &mut out);
        self.place.clear();
        for (i, c) in out.iter().enumerate() {
            for id in &c.ids {
                self.place.insert(id.clone(), i);
            }
        }
        self.chunks = out;
    }
}

/// Landing order ([`BatchManifest::landing_key`]).
fn landing_order(a: &Entry, b: &Entry) -> std::cmp::Ordering {
    a.manifest.landing_key().cmp(&b.manifest.landing_key())
}

/// The manifests of some batches, `None` for those without one.
async fn read_manifests(
    lake: &Lake,
    source: &str,
    ids: &[String],
) -> Result<Vec<Option<BatchManifest>>> {
    let reads: Vec<_> =
        ids.iter().map(|id| read_manifest(lake, manifest_path(source, id))).collect();
    futures::stream::iter(reads).buffered(16).try_collect().await
}

/// The entries of a stored chunk, `None` if it is gone or is not the chunk the index names.
async fn read_chunk(
    lake: &Lake,
    source: &str,
    path: &str,
    ids: &[String],
) -> Result<Option<Vec<Entry>>> {
    let Some(bytes) = lake.get_opt(&Path::from(path)).await? else { return Ok(None) };
    let Ok(file) = serde_json::from_slice::<ChunkFile>(&bytes) else { return Ok(None) };
    if file.format != INDEX_CHUNK_FORMAT || file.source != source {
        return Ok(None);
    }
    let schemas = &file.schemas;
    let entries: Option<Vec<Entry>> =
        file.batches.into_iter().map(|e| entry_in(e, schemas)).collect();
    let entries = entries.filter(|es| es.iter().map(|e| &e.manifest.batch_id).eq(ids.iter()));
    Ok(entries)
}

/// How an input is recognised without reading it (see [`input_identity`] and
/// [`local_inputs`]), and whether that can be trusted to change with its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputIdentity {
    /// Location, size and entity tag (on local disk: inode, modification and change times).
    pub key: String,
    /// Whether the input last changed long enough before it was looked at (see
    /// [`identity_settled`]). An identity that is not settled is not remembered: the next landing
    /// reads and hashes the input again.
    pub settled: bool,
}

/// How long before the moment an input is looked at its last change must be for its identity
/// to be trusted: more than the coarsest timestamp granularity of common file systems (FAT
/// keeps times to 2 s; Linux stamps files from a clock that moves by ticks of up to 10 ms).
pub const SETTLE_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether an input that last changed at `changed` and was looked at no earlier than `seen` can
/// be recognised by its identity from now on. A later change within the same timestamp tick as
/// `changed`, with the same size, would leave the identity as it is; so an identity is trusted
/// only when its last change is at least [`SETTLE_TIME`] before `seen` (any change after `seen`
/// then gets a later time stamp). A change time after `seen` (a clock ahead of this one) is not
/// settled either.
pub fn identity_settled(changed: std::time::SystemTime, seen: std::time::SystemTime) -> bool {
    seen.duration_since(changed).is_ok_and(|age| age >= SETTLE_TIME)
}

/// How an input is recognised without reading it, through its store: its location, size and
/// entity tag (or, when the store has no tags, its modification time). A store's entity tag
/// changes with every write (S3's is a digest of the content), except on local disk, where it is
/// made of the file's inode, modification time and size: an identity made of times is settled
/// only once they are old enough (see [`identity_settled`]).
pub async fn input_identity(input: &Input) -> Result<InputIdentity> {
    let seen = std::time::SystemTime::now();
    let meta = match input.store.head(&input.path).await {
        Ok(m) => m,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(Error::Input {
                path: input.display.clone(),
                detail: "no such file; check the path".into(),
            })
        }
        Err(e) => return Err(Error::unreadable_input(&input.display, e)),
    };
    let made_of_times =
        meta.e_tag.is_none() || input.store.to_string().starts_with("LocalFileSystem");
    let settled = !made_of_times || identity_settled(meta.last_modified.into(), seen);
    Ok(InputIdentity { key: identity_of(meta), settled })
}

fn identity_of(meta: object_store::ObjectMeta) -> String {
    let tag = meta.e_tag.unwrap_or_else(|| meta.last_modified.to_rfc3339());
    format!("{}|{}|{tag}", meta.location, meta.size)
}

/// The location an identity key names (see [`identity_of`]).
fn identity_location(key: &str) -> &str {
    let mut parts = key.rsplitn(3, '|');
    let (_, _) = (parts.next(), parts.next());
    parts.next().unwrap_or(key)
}

/// Local files as inputs (read through a local store), each with its identity from the file's
/// metadata (see [`local_identity`]), at the cost of one `stat` per file and no listing. A file
/// whose metadata cannot be read is left without one (landing it asks the store, and reports
/// what is wrong). Blocking: call it off the async workers for many files.
pub fn local_inputs(files: &[std::path::PathBuf]) -> Result<Vec<(Input, Option<InputIdentity>)>> {
    let store: Arc<dyn ObjectStore> = Arc::new(object_store::local::LocalFileSystem::new());
    // Taken before any file is looked at: no earlier than any `stat` below.
    let seen = std::time::SystemTime::now();
    // The store path of each directory, made once: a file's is its directory's and its name
    // (what `Path::from_absolute_path` makes of the whole path, at a fraction of the cost).
    let mut dir: Option<(&std::ffi::OsStr, Option<Path>)> = None;
    files
        .iter()
        .map(|f| {
            let whole = || {
                Path::from_absolute_path(f).map_err(|e| Error::Input {
                    path: f.display().to_string(),
                    detail: format!("it cannot be used as an input path: {e}"),
                })
            };
            let path = match (f.parent(), f.file_name().and_then(|n| n.to_str())) {
                (Some(parent), Some(name)) => {
                    if dir.as_ref().is_none_or(|(p, _)| *p != parent.as_os_str()) {
                        dir = Some((parent.as_os_str(), Path::from_absolute_path(parent).ok()));
                    }
                    let base = dir.as_ref().and_then(|(_, d)| d.as_ref());
                    match (base, object_store::path::PathPart::parse(name)) {
                        (Some(base), Ok(part)) => base.clone().join(part),
                        _ => whole()?,
                    }
                }
                _ => whole()?,
            };
            let identity = std::fs::metadata(f).ok().map(|m| local_identity(&path, &m, seen));
            Ok((Input { store: store.clone(), path, display: f.display().to_string() }, identity))
        })
        .collect()
}

/// The identity of a local file from its metadata: location, size, and the local store's entity
/// tag (inode, modification time in microseconds and size, in hex), followed by the file's change
/// time (`ctime`, in microseconds). The change time is what tells a file rewritten in place with
/// its old size and modification time (`cp -p`, `touch -r`, `rsync -t`): no program can set it,
/// and every write moves it. The identity is settled when that change is older than
/// [`SETTLE_TIME`] at `seen`.
fn local_identity(
    location: &Path,
    meta: &std::fs::Metadata,
    seen: std::time::SystemTime,
) -> InputIdentity {
    use std::os::unix::fs::MetadataExt;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .unwrap_or_default()
        .as_micros();
    let size = meta.len();
    let changed = std::time::UNIX_EPOCH
        .checked_add(std::time::Duration::new(
            meta.ctime().max(0) as u64,
            meta.ctime_nsec().clamp(0, 999_999_999) as u32,
        ))
        .unwrap_or(std::time::UNIX_EPOCH);
    let ctime = changed.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_micros();
    InputIdentity {
        key: format!("{location}|{size}|{:x}-{mtime:x}-{size:x}-c{ctime:x}", meta.ino()),
        settled: identity_settled(changed, seen),
    }
}

/// What [`land_indexed`] did with an input.
#[derive(Debug, Clone)]
pub enum Indexed {
    /// The index knew the input (same identity): nothing was read. The batch it was landed as
    /// ([`SourceIndex::manifest`] has its manifest).
    Known(String),
    /// The input was read: landed as a new batch, or found to hold the content of one.
    Read(Box<crate::LandOutcome>),
}

/// Lands `input` unless the index knows it (same identity; never with `options.rehash`), and
/// records the batch in the index, with the input's identity if it is settled. `identity` is the
/// input's, when already known (see [`local_inputs`]). The index is not written; call
/// [`SourceIndex::save`] after a set of inputs.
pub async fn land_indexed(
    lake: &Lake,
    index: &mut SourceIndex,
    input: &Input,
    identity: Option<InputIdentity>,
    options: &crate::LandOptions,
    ctx: &strata_publish::RunContext,
) -> Result<Indexed> {
    let identity = match identity {
        Some(i) => i,
        None => input_identity(input).await?,
    };
    if !options.rehash {
        if let Some(id) = index.landed_as(&identity.key) {
            return Ok(Indexed::Known(id.to_string()));
        }
    }
    let source = index.source.clone();
    let (outcome, logged) =
        crate::landing::land_logged(lake, &source, input, options, ctx, index.log).await?;
    if let crate::LandOutcome::Landed(m) = &outcome {
        // Landed again after its directory was deleted (a damaged batch): the index's copy of
        // the manifest is the old one.
        index.replace_manifest(lake, m).await?;
    }
    index.record(identity.settled.then_some(identity.key), outcome.manifest());
    // Only a log read without a hole may be skipped next time.
    if logged == Some(index.log + 1) {
        index.log += 1;
    }
    Ok(Indexed::Read(Box::new(outcome)))
}

#[cfg(test)]
mod tests {
    use super::{
        identity_location, identity_settled, input_identity, local_inputs, DateRange, ManifestOut,
        SETTLE_TIME,
    };
    use crate::landing::{BatchManifest, InputInfo};
    use chrono::NaiveDate;

    #[tokio::test]
    async fn local_identities_are_the_local_stores() {
        let dir = tempfile::tempdir().unwrap();
        // Names a URL would escape, in two directories: the same store paths as the store's.
        std::fs::create_dir(dir.path().join("sub dir")).unwrap();
        let names = ["in-0.csv", "with space 1.csv", "per%cent #2.csv", "sub dir/dé 3.csv"];
        let files: Vec<std::path::PathBuf> = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let f = dir.path().join(name);
                std::fs::write(&f, "a\n".repeat(i + 1)).unwrap();
                std::fs::canonicalize(f).unwrap()
            })
            .collect();
        let inputs = local_inputs(&files).unwrap();
        for (input, identity) in &inputs {
            let whole =
                object_store::path::Path::from_absolute_path(std::path::Path::new(&input.display))
                    .unwrap();
            assert_eq!(input.path, whole, "{}", input.display);
            // The store's identity, and the file's change time.
            let identity = identity.clone().unwrap();
            let store = input_identity(input).await.unwrap();
            assert!(identity.key.starts_with(&format!("{}-c", store.key)), "{identity:?}");
            assert!(!identity.settled && !store.settled, "just written");
        }
        let ids: std::collections::BTreeSet<_> =
            inputs.iter().map(|(_, i)| i.clone().unwrap().key).collect();
        assert_eq!(ids.len(), 4, "distinct files, distinct identities");
        // Changed in place: a new identity.
        std::fs::write(&files[0], "changed\n").unwrap();
        let again = local_inputs(&files[..1]).unwrap();
        assert_ne!(again[0].1, inputs[0].1);
        // Rewritten in place with the same size and modification time (as `cp -p` does): still
        // a new identity, by the change time.
        let mtime = std::fs::metadata(&files[1]).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&files[1], "b\nb\n").unwrap();
        std::fs::File::options().write(true).open(&files[1]).unwrap().set_modified(mtime).unwrap();
        let copied = local_inputs(&files[1..2]).unwrap();
        assert_eq!(std::fs::metadata(&files[1]).unwrap().modified().unwrap(), mtime);
        assert_ne!(copied[0].1.as_ref().unwrap().key, inputs[1].1.as_ref().unwrap().key);
    }

    #[test]
    fn an_identity_is_settled_once_its_last_change_is_older_than_a_timestamp_tick() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let ms = std::time::Duration::from_millis;
        assert!(!identity_settled(t, t), "changed the moment it was seen");
        assert!(!identity_settled(t, t + ms(1999)), "within the coarsest tick");
        assert!(identity_settled(t, t + SETTLE_TIME));
        assert!(identity_settled(t, t + ms(3_600_000)));
        assert!(!identity_settled(t + ms(5000), t), "changed after it was seen: a clock ahead");
    }

    #[test]
    fn identity_keys_name_their_location() {
        assert_eq!(identity_location("/in/a.csv|12|1f-2e-c"), "/in/a.csv");
        assert_eq!(identity_location("/in/a|b.csv|12|1f-2e-c"), "/in/a|b.csv");
        assert_eq!(identity_location("odd"), "odd");
    }

    mod log {
        use super::super::*;
        use chrono::NaiveDate;
        use object_store::memory::InMemory;
        use strata_publish::{OpenMode, RunContext};

        fn input(
            files: &Arc<InMemory>,
            name: &str,
            text: &str,
        ) -> impl std::future::Future<Output = Input> {
            let (files, name, text) = (files.clone(), name.to_string(), text.to_string());
            async move {
                let path = Path::from(name.as_str());
                files.put(&path, PutPayload::from(text.into_bytes())).await.unwrap();
                Input { store: files, path, display: name }
            }
        }

        async fn land_one(lake: &Lake, index: &mut SourceIndex, input: &Input) -> String {
            land_at(lake, index, input, 0).await
        }

        /// Lands `input` in a run `secs` seconds after the epoch.
        async fn land_at(lake: &Lake, index: &mut SourceIndex, input: &Input, secs: i64) -> String {
            let at = chrono::DateTime::from_timestamp(secs, 0).unwrap();
            let ctx = RunContext::new("run-1", at).unwrap();
            let options = crate::LandOptions::default();
            match land_indexed(lake, index, input, None, &options, &ctx).await.unwrap() {
                Indexed::Read(out) => out.manifest().batch_id.clone(),
                Indexed::Known(id) => id,
            }
        }

        async fn ids(lake: &Lake, index: &mut SourceIndex) -> Vec<String> {
            let all = index.all_batches(lake).await.unwrap();
            all.into_iter().map(|m| m.batch_id).collect()
        }

        /// An identity that is not settled (the input changed too recently to tell a later
        /// change by its time stamps) is not remembered, so the input is read again: a rewrite
        /// with the same identity lands. A settled one is remembered; `rehash` reads the input
        /// all the same. A new identity of a location replaces the old one.
        #[tokio::test]
        async fn only_settled_identities_are_trusted_and_rehash_trusts_none() {
            let lake = Lake::open("memory://", OpenMode::Create).unwrap();
            let files = Arc::new(InMemory::new());
            let mut index = SourceIndex::load(&lake, "orders").await.unwrap();
            let ctx = RunContext::new("run-1", chrono::DateTime::UNIX_EPOCH).unwrap();
            let options = crate::LandOptions::default();
            let rehash = crate::LandOptions { rehash: true, ..Default::default() };
            let fresh = InputIdentity { key: "/in/a.csv|5|1-2-5-c3".into(), settled: false };
            let settled = InputIdentity { settled: true, ..fresh.clone() };
            let landed = |out: Indexed| match out {
                Indexed::Read(read) => match *read {
                    crate::LandOutcome::Landed(m) => (m.batch_id, true),
                    crate::LandOutcome::AlreadyLanded(m) => (m.batch_id, false),
                },
                Indexed::Known(id) => (id, false),
            };
            let file = input(&files, "a.csv", "id\n1\n").await;
            let once = land_indexed(&lake, &mut index, &file, Some(fresh.clone()), &options, &ctx);
            let (first, new) = landed(once.await.unwrap());
            assert!(new);
            assert_eq!(index.landed_as(&fresh.key), None, "not remembered");
            // Rewritten within the same tick: the same identity, another content.
            let file = input(&files, "a.csv", "id\n2\n").await;
            let again = land_indexed(&lake, &mut index, &file, Some(fresh.clone()), &options, &ctx);
            let (second, new) = landed(again.await.unwrap());
            assert!(new && second != first, "the new content lands");
            // Settled now: read once more (already landed), then remembered.
            let out = land_indexed(&lake, &mut index, &file, Some(settled.clone()), &options, &ctx);
            assert_eq!(landed(out.await.unwrap()), (second.clone(), false));
            assert_eq!(index.landed_as(&settled.key), Some(second.as_str()));
            let out = land_indexed(&lake, &mut index, &file, Some(settled.clone()), &options, &ctx);
            assert!(matches!(out.await.unwrap(), Indexed::Known(id) if id == second));
            // A cache that is wrong (the content changed, the identity did not): rehash reads.
            let file = input(&files, "a.csv", "id\n3\n").await;
            let out = land_indexed(&lake, &mut index, &file, Some(settled.clone()), &rehash, &ctx);
            let (third, new) = landed(out.await.unwrap());
            assert!(new && third != second);
            assert_eq!(index.landed_as(&settled.key), Some(third.as_str()));
            // Another identity of the same file replaces the old one.
            let later = InputIdentity { key: "/in/a.csv|5|1-9-5-c9".into(), settled: true };
            let out = land_indexed(&lake, &mut index, &file, Some(later.clone()), &options, &ctx);
            assert_eq!(landed(out.await.unwrap()), (third.clone(), false));
            assert_eq!(index.inputs.keys().collect::<Vec<_>>(), vec![&later.key]);
            index.forget_inputs();
            assert_eq!(index.landed_as(&later.key), None);
            assert_eq!(index.len(), 3, "batches are kept");
        }

        /// Two processes land at once and the second index write loses the first's batch; a
        /// third process still finds both, from the log, without listing the batch directories.
        #[tokio::test]
        async fn a_lost_index_update_loses_no_batch() {
            let lake = Lake::open("memory://", OpenMode::Create).unwrap();
            let files = Arc::new(InMemory::new());
            let mut a = SourceIndex::load(&lake, "orders").await.unwrap();
            let mut b = SourceIndex::load(&lake, "orders").await.unwrap();
            let first = land_one(&lake, &mut a, &input(&files, "a.csv", "id\n1\n").await).await;
            let second = land_one(&lake, &mut b, &input(&files, "b.csv", "id\n2\n").await).await;
            a.save(&lake).await.unwrap();
            b.save(&lake).await.unwrap();
            let mut expected = vec![first.clone(), second.clone()];
            expected.sort();
            let mut c = SourceIndex::load(&lake, "orders").await.unwrap();
            assert_eq!(ids(&lake, &mut c).await, expected);
            assert_eq!(c.log, 2);
            // A batch directory the log does not announce is not read: loading lists nothing.
            // (strata never makes one; a rebuild from the truth, below, finds it.)
            let stray = manifest_path("orders", &"ee".repeat(32));
            let mut m =
                read_manifest(&lake, manifest_path("orders", &first)).await.unwrap().unwrap();
            m.batch_id = "ee".repeat(32);
            let body = serde_json::to_vec(&m).unwrap();
            lake.store().put(&stray, PutPayload::from(body)).await.unwrap();
            let mut again = SourceIndex::load(&lake, "orders").await.unwrap();
            assert_eq!(ids(&lake, &mut again).await, expected);
            // An index from before the log (or a damaged one) is rebuilt from the directories.
            lake.store().put(&index_path("orders"), PutPayload::from_static(b"{}")).await.unwrap();
            let rebuilt = SourceIndex::load(&lake, "orders").await.unwrap();
            assert_eq!(rebuilt.len(), 3);
            assert_eq!(rebuilt.log, 2);
        }

        /// A batch announced whose manifest is not there yet (a landing in progress, or one that
        /// crashed) is pending: not a batch, and looked for again on every load.
        #[tokio::test]
        async fn an_announced_batch_is_pending_until_its_manifest_exists() {
            let lake = Lake::open("memory://", OpenMode::Create).unwrap();
            let files = Arc::new(InMemory::new());
            let mut index = SourceIndex::load(&lake, "orders").await.unwrap();
            let landed =
                land_one(&lake, &mut index, &input(&files, "a.csv", "id\n1\n").await).await;
            index.save(&lake).await.unwrap();
            // Another batch, announced and then moved out of the way before it commits.
            let other = land_one(&lake, &mut index, &input(&files, "b.csv", "id\n2\n").await).await;
            let manifest = manifest_path("orders", &other);
            let body = lake.store().get(&manifest).await.unwrap().bytes().await.unwrap();
            lake.store().delete(&manifest).await.unwrap();
            let mut reader = SourceIndex::load(&lake, "orders").await.unwrap();
            assert_eq!(ids(&lake, &mut reader).await, vec![landed.clone()]);
            assert!(reader.pending.contains(&other));
            reader.save(&lake).await.unwrap();
            lake.store().put(&manifest, PutPayload::from(body)).await.unwrap();
            let later = SourceIndex::load(&lake, "orders").await.unwrap();
            assert_eq!(later.len(), 2);
            assert!(later.pending.is_empty());
        }

        async fn head(lake: &Lake) -> serde_json::Value {
            let bytes = lake.get_opt(&index_path("orders")).await.unwrap().unwrap();
            serde_json::from_slice(&bytes).unwrap()
        }

        fn chunk_paths(head: &serde_json::Value) -> Vec<String> {
            let chunks = head["chunks"].as_array().unwrap();
            chunks.iter().map(|c| c["path"].as_str().unwrap().to_string()).collect()
        }

        fn day(i: usize) -> NaiveDate {
            NaiveDate::from_ymd_opt(2026, 1, 1).unwrap() + chrono::Days::new(i as u64)
        }

        /// Lakes to run a test on: in memory, on local disk, and on S3 when
        /// `STRATA_TEST_S3_URL` names a bucket (`./scripts/test.sh` starts a local server).
        fn lakes() -> Vec<(&'static str, Lake, Option<tempfile::TempDir>)> {
            let dir = tempfile::tempdir().unwrap();
            let local = Lake::open(dir.path().to_str().unwrap(), OpenMode::Create).unwrap();
            let mut out = vec![
                ("memory", Lake::open("memory://", OpenMode::Create).unwrap(), None),
                ("local disk", local, Some(dir)),
            ];
            if let Ok(base) = std::env::var("STRATA_TEST_S3_URL") {
                use std::sync::atomic::{AtomicU64, Ordering};
                static N: AtomicU64 = AtomicU64::new(0);
                let n = N.fetch_add(1, Ordering::SeqCst);
                let url =
                    format!("{}/raw-index-{}-{n}", base.trim_end_matches('/'), std::process::id());
                out.push(("s3", Lake::open(&url, OpenMode::Create).unwrap(), None));
            }
            out
        }

        /// 130 batches, batch `i` holding day `i`, in chunks of 64 in landing order; a question
        /// about one day reads the one chunk that may hold it; a new batch rewrites only the
        /// last chunk; a chunk that is gone or damaged is made again from the manifests.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn batches_are_kept_in_chunks_that_are_read_only_when_needed() {
            for (store, lake, _dir) in lakes() {
                eprintln!("on {store}");
                chunks_on(lake).await;
            }
        }

        async fn chunks_on(lake: Lake) {
            let files = Arc::new(InMemory::new());
            let mut index = SourceIndex::load(&lake, "orders").await.unwrap();
            let mut landed = Vec::new();
            for i in 0..130 {
                let file = input(&files, &format!("d{i}.csv"), &format!("id\n{i}\n")).await;
                landed.push(land_at(&lake, &mut index, &file, i).await);
            }
            let key = "clean.v1:d:date";
            for (i, id) in landed.iter().enumerate() {
                let range = DateRange { min: Some(day(i)), max: Some(day(i)), nulls: 0 };
                index.set_dates(id, key, range);
            }
            index.save(&lake).await.unwrap();
            let written = head(&lake).await;
            assert_eq!(written["format"], INDEX_FORMAT);
            let chunks = written["chunks"].as_array().unwrap();
            let sizes: Vec<usize> =
                chunks.iter().map(|c| c["batches"].as_array().unwrap().len()).collect();
            assert_eq!(sizes, vec![64, 64, 2]);
            let order: Vec<&str> = chunks
                .iter()
                .flat_map(|c| c["batches"].as_array().unwrap())
                .map(|b| b.as_str().unwrap())
                .collect();
            assert_eq!(order, landed.iter().map(String::as_str).collect::<Vec<_>>());
            assert_eq!(chunks[1]["dates"][key]["min"], "2026-03-06", "day 64");
            assert_eq!(chunks[1]["dates"][key]["max"], "2026-05-08", "day 127");
            let before = chunk_paths(&written);

            // Another process asks about day 100: only the second chunk is read.
            let mut reader = SourceIndex::load(&lake, "orders").await.unwrap();
            assert_eq!(reader.len(), 130);
            let wanted = |r: &DateRange| r.may_hold(day(100), day(100));
            let found = reader.batches_where(&lake, key, wanted).await.unwrap();
            let found: Vec<&str> = found.iter().map(|(m, _)| m.batch_id.as_str()).collect();
            assert_eq!(found, vec![landed[100].as_str()]);
            let read: Vec<bool> = reader.chunks.iter().map(|c| c.entries.is_some()).collect();
            assert_eq!(read, vec![false, true, false]);
            // Its new batch joins the last chunk; the others are named again, unchanged.
            let file = input(&files, "d130.csv", "id\n130\n").await;
            landed.push(land_at(&lake, &mut reader, &file, 130).await);
            reader.save(&lake).await.unwrap();
            let after = chunk_paths(&head(&lake).await);
            assert_eq!(after.len(), 3);
            assert_eq!(after[..2], before[..2]);
            assert_ne!(after[2], before[2]);
            assert!(lake.get_opt(&Path::from(before[2].as_str())).await.unwrap().is_none());

            // The second chunk gone and the first damaged: both made again from the manifests;
            // their date ranges are lost (scanned again by the next window run), none of the
            // batches is.
            lake.store().delete(&Path::from(after[1].as_str())).await.unwrap();
            let junk = PutPayload::from_static(b"{\"format\": \"no\"}");
            lake.store().put(&Path::from(after[0].as_str()), junk).await.unwrap();
            let mut healed = SourceIndex::load(&lake, "orders").await.unwrap();
            let mut expected = landed.clone();
            expected.sort();
            assert_eq!(ids(&lake, &mut healed).await, expected);
            assert_eq!(healed.dates(&landed[3], key), None);
            assert_eq!(healed.dates(&landed[70], key), None);
            assert_eq!(healed.dates(&landed[129], key).and_then(|r| r.min), Some(day(129)));
            healed.save(&lake).await.unwrap();
            let mut again = SourceIndex::load(&lake, "orders").await.unwrap();
            assert_eq!(again.all_batches(&lake).await.unwrap().len(), 131);
            assert!(!again.dirty, "the chunks written back read whole");
            // An index naming a chunk elsewhere is not followed there: it is rebuilt.
            let mut odd = head(&lake).await;
            odd["chunks"][0]["path"] = serde_json::json!("_strata/elsewhere.json");
            let body = serde_json::to_vec(&odd).unwrap();
            lake.store().put(&index_path("orders"), PutPayload::from(body)).await.unwrap();
            let rebuilt = SourceIndex::load(&lake, "orders").await.unwrap();
            assert_eq!(rebuilt.len(), 131);
            assert!(rebuilt.chunks.iter().all(|c| c.stored.is_none() && c.entries.is_some()));
        }

        /// A chunk no index names (a write interrupted before its index file) is deleted by a
        /// later write once it is an hour old; a younger one may be another write's, and stays.
        #[tokio::test]
        async fn stray_chunks_are_swept_after_an_hour() {
            let dir = tempfile::tempdir().unwrap();
            let lake = Lake::open(dir.path().to_str().unwrap(), OpenMode::Create).unwrap();
            let files = Arc::new(InMemory::new());
            let mut index = SourceIndex::load(&lake, "orders").await.unwrap();
            land_one(&lake, &mut index, &input(&files, "a.csv", "id\n1\n").await).await;
            index.save(&lake).await.unwrap();
            let chunks = dir.path().join("_raw/orders/_index");
            let (old, young) = (chunks.join("old.json"), chunks.join("young.json"));
            for f in [&old, &young] {
                std::fs::write(f, b"{}").unwrap();
            }
            let two_hours = std::time::Duration::from_secs(7200);
            std::fs::File::options()
                .write(true)
                .open(&old)
                .unwrap()
                .set_modified(std::time::SystemTime::now() - two_hours)
                .unwrap();
            land_one(&lake, &mut index, &input(&files, "b.csv", "id\n2\n").await).await;
            index.save(&lake).await.unwrap();
            assert!(!old.exists());
            assert!(young.exists());
            let named = chunk_paths(&head(&lake).await);
            assert_eq!(named.len(), 1);
            let left: Vec<String> = std::fs::read_dir(&chunks)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
                .filter(|n| n != "young.json")
                .collect();
            assert_eq!(left.len(), 1, "the replaced chunk is deleted: {left:?}");
            assert!(named[0].ends_with(&left[0]));
        }

        /// An index of the pre-release format (every batch inline, `strata.raw-index.v1`) is
        /// not read: it is rebuilt from the truth (the batch directories and the log), and
        /// written back in the current format.
        #[tokio::test]
        async fn an_index_of_the_pre_release_format_is_rebuilt() {
            let lake = Lake::open("memory://", OpenMode::Create).unwrap();
            let files = Arc::new(InMemory::new());
            let mut index = SourceIndex::load(&lake, "orders").await.unwrap();
            let mut landed = Vec::new();
            for i in 0..70 {
                let file = input(&files, &format!("d{i}.csv"), &format!("id\n{i}\n")).await;
                landed.push(land_one(&lake, &mut index, &file).await);
            }
            let key = "clean.v1:d:date";
            let range = DateRange { min: Some(day(1)), max: Some(day(2)), nulls: 3 };
            index.set_dates(&landed[5], key, range);
            let entries: Vec<Entry> =
                index.chunks.iter().flat_map(|c| c.entries.clone().unwrap()).collect();
            let (schemas, batches) = entries_out(&entries);
            let v1 = serde_json::json!({
                "format": "strata.raw-index.v1", "source": "orders", "log": index.log,
                "pending": [], "schemas": schemas, "batches": batches, "inputs": index.inputs,
            });
            let body = serde_json::to_vec(&v1).unwrap();
            lake.store().put(&index_path("orders"), PutPayload::from(body)).await.unwrap();
            let mut old = SourceIndex::load(&lake, "orders").await.unwrap();
            assert_eq!(old.len(), 70, "every batch found again");
            assert_eq!(old.dates(&landed[5], key), None, "nothing is taken from the old file");
            assert!(old.inputs.is_empty());
            assert_eq!(old.manifest(&lake, &landed[5]).await.unwrap().unwrap().rows, 1);
            old.save(&lake).await.unwrap();
            let written = head(&lake).await;
            assert_eq!(written["format"], INDEX_FORMAT);
            assert_eq!(chunk_paths(&written).len(), 2);
            assert!(written.get("batches").is_none());
            // An input the old file knew is read again (its content is found landed), then known.
            let mut new = SourceIndex::load(&lake, "orders").await.unwrap();
            let file =
                Input { store: files.clone(), path: Path::from("d7.csv"), display: "d7".into() };
            let ctx = RunContext::new("run-2", chrono::DateTime::UNIX_EPOCH).unwrap();
            let options = crate::LandOptions::default();
            let out = land_indexed(&lake, &mut new, &file, None, &options, &ctx).await.unwrap();
            assert!(
                matches!(&out, Indexed::Read(o) if matches!(**o, crate::LandOutcome::AlreadyLanded(ref m) if m.batch_id == landed[7])),
                "{out:?}"
            );
            let out = land_indexed(&lake, &mut new, &file, None, &options, &ctx).await.unwrap();
            assert!(matches!(out, Indexed::Known(id) if id == landed[7]));
        }
    }

    /// The index writes manifests field by field (to leave the schema out without copying);
    /// it must write exactly what the manifest's own serialization would, schema aside.
    #[test]
    fn manifests_are_written_to_the_index_in_full() {
        let schema = arrow::datatypes::Schema::new(vec![arrow::datatypes::Field::new(
            "a",
            arrow::datatypes::DataType::Utf8,
            true,
        )]);
        let file = |p: &str| strata_publish::FileEntry {
            path: p.into(),
            size: 10,
            rows: 2,
            sha256: "ab".repeat(32),
            crc32: None,
        };
        let m = BatchManifest {
            format: "strata.raw-batch.v1".into(),
            source: "orders".into(),
            batch_id: "cd".repeat(32),
            input: serde_json::from_value::<InputInfo>(serde_json::json!({
                "name": "orders.csv", "sha256": "cd".repeat(32), "size": 12, "format": "csv"
            }))
            .unwrap(),
            rows: 2,
            rejected: 1,
            blank_lines: 3,
            schema,
            data: Some(file("d.parquet")),
            rejects: Some(file("r.jsonl")),
            run_id: "r1".into(),
            landed_at: chrono::DateTime::from_timestamp(1_800_000_000, 5).unwrap(),
            log_seq: Some(7),
        };
        let written = serde_json::to_value(ManifestOut(&m)).unwrap();
        let expected = BatchManifest { schema: arrow::datatypes::Schema::empty(), ..m };
        assert_eq!(written, serde_json::to_value(&expected).unwrap());
        let back: BatchManifest = serde_json::from_value(written).unwrap();
        assert_eq!(back, expected);
    }

    #[test]
    fn a_batch_is_read_when_its_dates_overlap_the_window_or_some_are_missing() {
        let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok();
        let r = |lo: &str, hi: &str, nulls: u64| DateRange { min: d(lo), max: d(hi), nulls };
        let (from, to) = (d("2026-01-10").unwrap(), d("2026-01-12").unwrap());
        assert!(r("2026-01-01", "2026-01-10", 0).may_hold(from, to), "touches the start");
        assert!(r("2026-01-12", "2026-02-01", 0).may_hold(from, to), "touches the end");
        assert!(r("2026-01-01", "2026-02-01", 0).may_hold(from, to), "spans it");
        assert!(!r("2026-01-01", "2026-01-09", 0).may_hold(from, to), "before");
        assert!(!r("2026-01-13", "2026-01-20", 0).may_hold(from, to), "after");
        assert!(r("2026-01-13", "2026-01-20", 1).may_hold(from, to), "a missing date");
        let empty = DateRange { min: None, max: None, nulls: 0 };
        assert!(!empty.may_hold(from, to), "no rows");
        let all_missing = DateRange { min: None, max: None, nulls: 5 };
        assert!(all_missing.may_hold(from, to));
    }
}
