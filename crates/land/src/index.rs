//! The index of a source's raw batches: `_raw/<source>/_index.json`.
//!
//! A run needs three things about the raw layer that would otherwise cost a pass over all of
//! its history: which batches exist (one manifest read per batch), whether an input file was
//! already landed (a sha256 of the whole file), and which batches hold rows of a business-date
//! window (a scan of every batch). The index keeps all three.
//!
//! It is a cache, never the truth. The truth is the batch directories and their manifests:
//! loading the index lists the batch directories once (one LIST), reads only the manifests the
//! index lacks and drops entries whose directory is gone. Losing an update (two processes
//! writing the index at once, or a crash before it is written) only costs a re-read later; a
//! damaged index is rebuilt. An input file is recognised by its location, size and entity tag
//! (on local disk: inode, modification time and size); a file changed in place gets a new tag
//! and is read and hashed again.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::NaiveDate;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
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
    schemas: Vec<&'a arrow::datatypes::Schema>,
    batches: Vec<EntryOut<'a>>,
    inputs: &'a BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct IndexFile {
    format: String,
    source: String,
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
    dirty: bool,
}

impl SourceIndex {
    /// Loads the index of `source` and brings it up to date with the batch directories.
    pub async fn load(lake: &Lake, source: &str) -> Result<SourceIndex> {
        strata_publish::names::validate_dataset_name(source)?;
        let path = index_path(source);
        let prefix = source_prefix(source);
        // The index (read and parsed) and the listing that checks it, at once.
        let (got, listing) = futures::join!(
            async {
                let bytes = match lake.store().get(&path).await {
                    Ok(g) => g.bytes().await?,
                    Err(object_store::Error::NotFound { .. }) => return Ok(None),
                    Err(e) => return Err(e),
                };
                // A damaged or foreign index is rebuilt from the manifests.
                Ok(serde_json::from_slice::<IndexFile>(&bytes)
                    .ok()
                    .filter(|f| f.format == INDEX_FORMAT && f.source == source))
            },
            lake.store().list_with_delimiter(Some(&prefix))
        );
        let listing = listing.map_err(|e| Error::store("list", &prefix, e))?;
        let cached: Option<IndexFile> = got.map_err(|e| Error::store("read", &path, e))?;
        let mut dirty = cached.is_none();
        let (mut entries, inputs) = match cached {
            Some(f) => {
                let mut entries = BTreeMap::new();
                for mut e in f.batches {
                    match e.schema.take().map(|i| f.schemas.get(i)) {
                        Some(Some(schema)) => e.manifest.schema = schema.clone(),
                        // A reference to no schema: a damaged entry; read its manifest again.
                        Some(None) => continue,
                        None => {}
                    }
                    entries.insert(e.manifest.batch_id.clone(), e);
                }
                (entries, f.inputs)
            }
            None => (BTreeMap::new(), BTreeMap::new()),
        };
        let present: std::collections::BTreeSet<String> = listing
            .common_prefixes
            .iter()
            .filter_map(|d| d.filename().and_then(|d| d.strip_prefix("batch=")))
            .map(str::to_string)
            .collect();
        let before = entries.len();
        entries.retain(|id, _| present.contains(id));
        dirty |= entries.len() != before;
        let missing: Vec<&String> =
            present.iter().filter(|id| !entries.contains_key(*id)).collect();
        let found: Vec<Option<BatchManifest>> = futures::stream::iter(missing)
            .map(|id| read_manifest(lake, manifest_path(source, id)))
            .buffered(16)
            .try_collect()
            .await?;
        for m in found.into_iter().flatten() {
            // A directory without a manifest is a landing in progress (or one that crashed):
            // not a batch yet.
            dirty = true;
            entries.insert(
                m.batch_id.clone(),
                Entry { manifest: m, schema: None, dates: BTreeMap::new() },
            );
        }
        let mut index = SourceIndex { source: source.to_string(), entries, inputs, dirty };
        let known = &index.entries;
        let before = index.inputs.len();
        index.inputs.retain(|_, id| known.contains_key(id));
        index.dirty |= index.inputs.len() != before;
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
    let outcome = crate::land(lake, &source, input, options, ctx).await?;
    index.record(Some(identity), outcome.manifest());
    Ok(outcome)
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
