//! The index of a source's raw batches: `_raw/<source>/_index.json`.
//!
//! A run needs three things about the raw layer that would otherwise cost a pass over all of
//! its history: which batches exist (one manifest read per batch), whether an input file was
//! already landed (a sha256 of the whole file), and which batches hold rows of a business-date
//! window (a scan of every batch). The index keeps all three.
//!
//! It is a cache, never the truth. The truth is the source's log and the batches' manifests.
//! Every batch is announced in the log `_raw/<source>/_log/<seq>.json` (create-if-absent, one
//! sequence number after another) *before* its manifest commits it, so the log names every
//! batch. The index remembers how much of the log it has read; loading it reads only the log
//! entries after that, and the manifests of the batches they name (a batch announced whose
//! manifest is not there yet stays pending, and is looked for again on the next load). So
//! loading costs the same after ten batches as after ten thousand, and no batch can be missed:
//! losing an update (two processes writing the index at once, or a crash before it is written)
//! only costs reading those log entries again. A damaged index, or one written before the log
//! existed, is rebuilt from a listing of the batch directories and the whole log. An input file
//! is recognised by its location, size and entity tag (on local disk: inode, modification time
//! and size); a file changed in place gets a new tag and is read and hashed again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::NaiveDate;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use strata_publish::Lake;

use crate::error::{Error, Result};
use crate::landing::{manifest_path, read_manifest, source_prefix, BatchManifest, Input};

/// `format` of an index file.
pub const INDEX_FORMAT: &str = "strata.raw-index.v1";

/// The path of a source's index.
pub fn index_path(source: &str) -> Path {
    Path::from(format!("{}/_index.json", source_prefix(source)))
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
        let mut s = serializer.serialize_struct("BatchManifest", 12)?;
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
        s.end()
    }
}

#[derive(Serialize)]
struct IndexFileOut<'a> {
    format: &'a str,
    source: &'a str,
    log: u64,
    pending: &'a BTreeSet<String>,
    schemas: Vec<&'a arrow::datatypes::Schema>,
    batches: Vec<EntryOut<'a>>,
    inputs: &'a BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct IndexFile {
    format: String,
    source: String,
    /// The log entries 1 to `log` are reflected here; absent in an index from before the log.
    #[serde(default)]
    log: Option<u64>,
    /// Batches the log announced whose manifest was not there yet.
    #[serde(default)]
    pending: BTreeSet<String>,
    /// The distinct schemas of the batches, each kept once.
    #[serde(default)]
    schemas: Vec<arrow::datatypes::Schema>,
    batches: Vec<Entry>,
    /// Input identity (location, size, entity tag) → the batch it was landed as.
    #[serde(default)]
    inputs: BTreeMap<String, String>,
}

/// The loaded index of one source's raw batches. See the module documentation.
#[derive(Debug)]
pub struct SourceIndex {
    source: String,
    entries: BTreeMap<String, Entry>,
    inputs: BTreeMap<String, String>,
    log: u64,
    pending: BTreeSet<String>,
    dirty: bool,
}

impl SourceIndex {
    /// Loads the index of `source` and brings it up to date with the batch directories.
    pub async fn load(lake: &Lake, source: &str) -> Result<SourceIndex> {
        strata_publish::names::validate_dataset_name(source)?;
        let path = index_path(source);
        let got = match lake.store().get(&path).await {
            Ok(g) => g.bytes().await.map(Some),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        };
        let bytes = got.map_err(|e| Error::store("read", &path, e))?;
        // A damaged or foreign index, or one from before the log, is rebuilt.
        let cached = bytes
            .and_then(|b| serde_json::from_slice::<IndexFile>(&b).ok())
            .filter(|f| f.format == INDEX_FORMAT && f.source == source && f.log.is_some());
        let mut index = match cached {
            Some(f) => {
                let mut entries = BTreeMap::new();
                let mut damaged = BTreeSet::new();
                for mut e in f.batches {
                    match e.schema.take().map(|i| f.schemas.get(i)) {
                        Some(Some(schema)) => e.manifest.schema = schema.clone(),
                        // A reference to no schema: a damaged entry; read its manifest again.
                        Some(None) => {
                            damaged.insert(e.manifest.batch_id.clone());
                            continue;
                        }
                        None => {}
                    }
                    entries.insert(e.manifest.batch_id.clone(), e);
                }
                let mut index = SourceIndex {
                    source: source.to_string(),
                    entries,
                    inputs: f.inputs,
                    log: f.log.unwrap_or(0),
                    pending: f.pending,
                    dirty: !damaged.is_empty(),
                };
                index.pending.extend(damaged);
                index
            }
            None => Self::rebuild(lake, source).await?,
        };
        // The log entries written since, and the batches still pending.
        let mut announced = std::mem::take(&mut index.pending);
        while let Some(id) = read_log_entry(lake, source, index.log + 1).await? {
            announced.insert(id);
            index.log += 1;
            index.dirty = true;
        }
        index.settle(lake, announced).await?;
        let known = &index.entries;
        let before = index.inputs.len();
        index.inputs.retain(|_, id| known.contains_key(id));
        index.dirty |= index.inputs.len() != before;
        Ok(index)
    }

    /// Reads the manifests of `announced` batches the index lacks: those there become entries,
    /// the others stay pending.
    async fn settle(&mut self, lake: &Lake, announced: BTreeSet<String>) -> Result<()> {
        let source = self.source.clone();
        let missing: Vec<String> =
            announced.into_iter().filter(|id| !self.entries.contains_key(id)).collect();
        let found: Vec<Option<BatchManifest>> = futures::stream::iter(&missing)
            .map(|id| read_manifest(lake, manifest_path(&source, id)))
            .buffered(16)
            .try_collect()
            .await?;
        for (id, m) in missing.into_iter().zip(found) {
            match m {
                Some(m) => {
                    self.dirty = true;
                    self.entries.insert(
                        m.batch_id.clone(),
                        Entry { manifest: m, schema: None, dates: BTreeMap::new() },
                    );
                }
                // Announced, not committed: a landing in progress or one that crashed.
                None => {
                    self.dirty |= self.pending.insert(id);
                }
            }
        }
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
        let end = log_end(lake, source, 0).await?;
        let ids: Vec<Option<String>> = futures::stream::iter(1..=end)
            .map(|seq| read_log_entry(lake, source, seq))
            .buffered(16)
            .try_collect()
            .await?;
        announced.extend(ids.into_iter().flatten());
        let mut index = SourceIndex {
            source: source.to_string(),
            entries: BTreeMap::new(),
            inputs: BTreeMap::new(),
            log: end,
            pending: BTreeSet::new(),
            dirty: true,
        };
        index.settle(lake, announced).await?;
        Ok(index)
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Every landed batch, sorted by batch id.
    pub fn batches(&self) -> impl Iterator<Item = &BatchManifest> {
        self.entries.values().map(|e| &e.manifest)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The batch an input with this identity (see [`input_identity`]) was landed as.
    pub fn landed_as(&self, identity: &str) -> Option<&BatchManifest> {
        self.inputs.get(identity).and_then(|id| self.entries.get(id)).map(|e| &e.manifest)
    }

    /// Records a landed (or found already landed) batch, and the input it came from.
    pub fn record(&mut self, identity: Option<String>, manifest: &BatchManifest) {
        let id = manifest.batch_id.clone();
        if !self.entries.contains_key(&id) {
            self.entries.insert(
                id.clone(),
                Entry { manifest: manifest.clone(), schema: None, dates: BTreeMap::new() },
            );
            self.dirty = true;
        }
        if let Some(identity) = identity {
            if self.inputs.get(&identity) != Some(&id) {
                self.inputs.insert(identity, id);
                self.dirty = true;
            }
        }
    }

    /// The recorded date range of a batch under `key` (a name for the column and the way it is
    /// read, chosen by the caller).
    pub fn dates(&self, batch_id: &str, key: &str) -> Option<DateRange> {
        self.entries.get(batch_id).and_then(|e| e.dates.get(key)).copied()
    }

    pub fn set_dates(&mut self, batch_id: &str, key: &str, range: DateRange) {
        if let Some(e) = self.entries.get_mut(batch_id) {
            if e.dates.get(key) != Some(&range) {
                e.dates.insert(key.to_string(), range);
                self.dirty = true;
            }
        }
    }

    /// Writes the index back if anything changed.
    pub async fn save(&mut self, lake: &Lake) -> Result<()> {
        if !self.dirty {
            return Ok(());
        }
        let mut schemas: Vec<&arrow::datatypes::Schema> = Vec::new();
        let mut batches = Vec::with_capacity(self.entries.len());
        for e in self.entries.values() {
            let i = match schemas.iter().position(|s| **s == e.manifest.schema) {
                Some(i) => i,
                None => {
                    schemas.push(&e.manifest.schema);
                    schemas.len() - 1
                }
            };
            batches.push(EntryOut {
                manifest: ManifestOut(&e.manifest),
                schema: i,
                dates: &e.dates,
            });
        }
        let file = IndexFileOut {
            format: INDEX_FORMAT,
            source: &self.source,
            log: self.log,
            pending: &self.pending,
            schemas,
            batches,
            inputs: &self.inputs,
        };
        let path = index_path(&self.source);
        let body = serde_json::to_vec(&file)
            .map_err(|e| Error::Corrupt { path: path.to_string(), detail: e.to_string() })?;
        lake.store()
            .put(&path, PutPayload::from(body))
            .await
            .map_err(|e| Error::store("write", &path, e))?;
        self.dirty = false;
        Ok(())
    }
}

/// How an input is recognised without reading it: its location, size and entity tag (or, when
/// the store has no tags, its modification time).
pub async fn input_identity(input: &Input) -> Result<String> {
    let meta = match input.store.head(&input.path).await {
        Ok(m) => m,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(Error::Input {
                path: input.display.clone(),
                detail: "no such file; check the path".into(),
            })
        }
        Err(e) => return Err(Error::store("read", &input.display, e)),
    };
    Ok(identity_of(meta))
}

fn identity_of(meta: object_store::ObjectMeta) -> String {
    let tag = meta.e_tag.unwrap_or_else(|| meta.last_modified.to_rfc3339());
    format!("{}|{}|{tag}", meta.location, meta.size)
}

/// Local files as inputs (read through a local store), each with its identity from the file's
/// metadata: the same identity the local store gives (see [`local_identity`]), at the cost of one
/// `stat` per file and no listing. A file whose metadata cannot be read is left without one
/// (landing it asks the store, and reports what is wrong). Blocking: call it off the async
/// workers for many files.
pub fn local_inputs(files: &[std::path::PathBuf]) -> Result<Vec<(Input, Option<String>)>> {
    let store: Arc<dyn ObjectStore> = Arc::new(object_store::local::LocalFileSystem::new());
    files
        .iter()
        .map(|f| {
            let path = Path::from_absolute_path(f).map_err(|e| Error::Input {
                path: f.display().to_string(),
                detail: format!("it cannot be used as an input path: {e}"),
            })?;
            let identity = std::fs::metadata(f).ok().map(|m| local_identity(&path, &m));
            Ok((Input { store: store.clone(), path, display: f.display().to_string() }, identity))
        })
        .collect()
}

/// The identity of a local file from its metadata, as [`input_identity`] computes it through the
/// local store: location, size, and the store's entity tag (inode, modification time in
/// microseconds and size, in hex). If the store ever tags files differently, the two disagree and
/// an input is hashed once more, never mistaken for another.
fn local_identity(location: &Path, meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .unwrap_or_default()
        .as_micros();
    let size = meta.len();
    format!("{location}|{size}|{:x}-{mtime:x}-{size:x}", meta.ino())
}

/// Lands `input` unless the index knows it (same identity), and records the batch in the index.
/// `identity` is the input's, when already known (see [`input_identities`]). The index is not
/// written; call [`SourceIndex::save`] after a set of inputs.
pub async fn land_indexed(
    lake: &Lake,
    index: &mut SourceIndex,
    input: &Input,
    identity: Option<String>,
    options: &crate::LandOptions,
    ctx: &strata_publish::RunContext,
) -> Result<crate::LandOutcome> {
    let identity = match identity {
        Some(i) => i,
        None => input_identity(input).await?,
    };
    if let Some(m) = index.landed_as(&identity) {
        return Ok(crate::LandOutcome::AlreadyLanded(m.clone()));
    }
    let source = index.source.clone();
    let (outcome, logged) =
        crate::landing::land_logged(lake, &source, input, options, ctx, index.log).await?;
    index.record(Some(identity), outcome.manifest());
    // Only a log read without a hole may be skipped next time.
    if logged == Some(index.log + 1) {
        index.log += 1;
    }
    Ok(outcome)
}

/// `format` of a log entry.
pub const LOG_FORMAT: &str = "strata.raw-log.v1";

fn log_path(source: &str, seq: u64) -> Path {
    Path::from(format!("{}/_log/{seq:020}.json", source_prefix(source)))
}

#[derive(Serialize, Deserialize)]
struct LogEntry {
    format: String,
    seq: u64,
    batch_id: String,
}

/// The batch log entry `seq` announces, `None` if there is no such entry.
async fn read_log_entry(lake: &Lake, source: &str, seq: u64) -> Result<Option<String>> {
    let path = log_path(source, seq);
    let Some(bytes) = lake.get_opt(&path).await? else { return Ok(None) };
    match serde_json::from_slice::<LogEntry>(&bytes) {
        Ok(e) if e.format == LOG_FORMAT && e.seq == seq => Ok(Some(e.batch_id)),
        Ok(_) | Err(_) => Err(Error::Corrupt {
            path: path.to_string(),
            detail: "it is not a raw log entry; restore it from a backup (strata never \
                     rewrites log entries)"
                .into(),
        }),
    }
}

/// The last entry of the log, probing from `from` (an entry known to exist, or 0). Entries are
/// created one after another, so the log has no holes.
async fn log_end(lake: &Lake, source: &str, from: u64) -> Result<u64> {
    strata_publish::protocol::last_in_sequence(from, |seq| async move {
        Ok(lake.exists(&log_path(source, seq)).await?)
    })
    .await
}

/// Announces `batch_id` in the source's log: creates the entry after the log's last one (found
/// from `from`, a lower bound). Returns its sequence number. An entry of this batch already at
/// the end (an earlier attempt whose answer was lost) is reused.
pub(crate) async fn append_to_log(
    lake: &Lake,
    source: &str,
    batch_id: &str,
    from: u64,
) -> Result<u64> {
    let mut seq = log_end(lake, source, from).await? + 1;
    for _ in 0..1000 {
        let path = log_path(source, seq);
        let entry = LogEntry { format: LOG_FORMAT.into(), seq, batch_id: batch_id.into() };
        let body = serde_json::to_vec(&entry)
            .map_err(|e| Error::Corrupt { path: path.to_string(), detail: e.to_string() })?;
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match lake.store().put_opts(&path, PutPayload::from(body), opts).await {
            Ok(_) => return Ok(seq),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => {
                if read_log_entry(lake, source, seq).await?.as_deref() == Some(batch_id) {
                    return Ok(seq);
                }
                seq += 1;
            }
            Err(e) => return Err(Error::store("create", &path, e)),
        }
    }
    Err(Error::store(
        "create",
        log_path(source, seq),
        object_store::Error::Generic {
            store: "raw log",
            source: "more than 1000 landings raced for the next log entry; land again".into(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::{input_identity, local_inputs, DateRange, ManifestOut};
    use crate::landing::{BatchManifest, InputInfo};
    use chrono::NaiveDate;

    #[tokio::test]
    async fn local_identities_are_the_local_stores() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<std::path::PathBuf> = (0..3)
            .map(|i| {
                let f = dir.path().join(format!("in-{i}.csv"));
                std::fs::write(&f, "a\n".repeat(i + 1)).unwrap();
                std::fs::canonicalize(f).unwrap()
            })
            .collect();
        let inputs = local_inputs(&files).unwrap();
        for (input, identity) in &inputs {
            assert_eq!(identity.as_deref(), Some(input_identity(input).await.unwrap().as_str()));
        }
        let ids: std::collections::BTreeSet<_> = inputs.iter().map(|(_, i)| i.clone()).collect();
        assert_eq!(ids.len(), 3, "distinct files, distinct identities");
        // Changed in place: a new identity.
        std::fs::write(&files[0], "changed\n").unwrap();
        let again = local_inputs(&files[..1]).unwrap();
        assert_ne!(again[0].1, inputs[0].1);
        assert_eq!(
            again[0].1.as_deref(),
            Some(input_identity(&again[0].0).await.unwrap().as_str())
        );
    }

    mod log {
        use super::super::*;
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
            let ctx = RunContext::new("run-1", chrono::DateTime::UNIX_EPOCH).unwrap();
            let options = crate::LandOptions::default();
            let out = land_indexed(lake, index, input, None, &options, &ctx).await.unwrap();
            out.manifest().batch_id.clone()
        }

        fn ids(index: &SourceIndex) -> Vec<String> {
            index.batches().map(|m| m.batch_id.clone()).collect()
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
            let c = SourceIndex::load(&lake, "orders").await.unwrap();
            assert_eq!(ids(&c), expected);
            assert_eq!(c.log, 2);
            // A batch directory the log does not announce is not read: loading lists nothing.
            // (strata never makes one; a rebuild from the truth, below, finds it.)
            let stray = manifest_path("orders", &"ee".repeat(32));
            let mut m =
                read_manifest(&lake, manifest_path("orders", &first)).await.unwrap().unwrap();
            m.batch_id = "ee".repeat(32);
            let body = serde_json::to_vec(&m).unwrap();
            lake.store().put(&stray, PutPayload::from(body)).await.unwrap();
            assert_eq!(ids(&SourceIndex::load(&lake, "orders").await.unwrap()), expected);
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
            assert_eq!(ids(&reader), vec![landed.clone()]);
            assert!(reader.pending.contains(&other));
            reader.save(&lake).await.unwrap();
            lake.store().put(&manifest, PutPayload::from(body)).await.unwrap();
            let later = SourceIndex::load(&lake, "orders").await.unwrap();
            assert_eq!(later.len(), 2);
            assert!(later.pending.is_empty());
        }

        #[tokio::test]
        async fn the_end_of_the_log_is_found_from_any_lower_bound() {
            let lake = Lake::open("memory://", OpenMode::Create).unwrap();
            assert_eq!(log_end(&lake, "orders", 0).await.unwrap(), 0);
            for i in 1..=37u64 {
                let seq = append_to_log(&lake, "orders", &format!("{i:064}"), i / 3).await.unwrap();
                assert_eq!(seq, i);
            }
            for from in [0, 1, 5, 36, 37] {
                assert_eq!(log_end(&lake, "orders", from).await.unwrap(), 37, "from {from}");
            }
            // Announcing a batch again takes a new entry (a landing that crashed and ran again
            // does that); a batch is read once however often it is announced.
            assert_eq!(
                append_to_log(&lake, "orders", &format!("{:064}", 37), 0).await.unwrap(),
                38
            );
            assert_eq!(
                read_log_entry(&lake, "orders", 38).await.unwrap(),
                Some(format!("{:064}", 37))
            );
            assert_eq!(read_log_entry(&lake, "orders", 39).await.unwrap(), None);
            lake.store()
                .put(&log_path("orders", 39), PutPayload::from_static(b"junk"))
                .await
                .unwrap();
            let err = read_log_entry(&lake, "orders", 39).await.unwrap_err();
            assert!(err.to_string().contains("_log/00000000000000000039.json"), "{err}");
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
