//! The staging writer: record batches in, Hive-partitioned Parquet files under `run_id=<run>/`
//! out, each with its size, row count and sha256 computed while it is written (never by reading
//! it back).
//!
//! Output bytes depend only on the input batches, their order and the writer options, so the same
//! inputs give byte-identical files.

use crate::lake::Lake;
use std::collections::HashMap;

use arrow::array::{Array, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::row::{RowConverter, SortField};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use bytes::Bytes;
use futures::future::BoxFuture;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use parquet::arrow::async_writer::{AsyncArrowWriter, AsyncFileWriter};
use parquet::basic::Compression;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use sha2::{Digest, Sha256};

use crate::crash;
use crate::error::{Error, Result};
use crate::layout;
use crate::model::{FileEntry, PartitionEntry};
use crate::names::{validate_partition_column, validate_partition_value, NULL_PARTITION};

/// How the staging writer lays out files.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Columns to partition by, outermost first; empty for an unpartitioned dataset.
    pub partition_by: Vec<String>,
    /// A new file is started once a file holds this many rows.
    pub max_rows_per_file: u64,
    /// Rows per Parquet row group.
    pub max_row_group_size: usize,
    /// Control totals to compute per partition while writing (none: no totals).
    pub totals: Option<strata_reconcile::TotalsSpec>,
    /// Bytes of encoded rows all open files may hold in memory together; beyond it the largest
    /// row groups in progress are written out early. Bounds memory when many partitions are
    /// written at once.
    pub max_buffered_bytes: usize,
    /// The rows arrive sorted by the totals' key (ascending, nulls last). Keys are then counted,
    /// and proved unique, by comparing each with the one before, in constant memory, instead of
    /// by remembering a digest of every key; a key out of order is counted and fails the proof.
    pub keys_in_order: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            partition_by: Vec::new(),
            max_rows_per_file: 8 * 1024 * 1024,
            max_row_group_size: 128 * 1024,
            totals: None,
            max_buffered_bytes: 64 * 1024 * 1024,
            keys_in_order: false,
        }
    }
}

/// What a staging writer wrote: files that no reader can see until published.
#[derive(Debug, Clone)]
pub struct Staged {
    pub run_id: String,
    pub schema: SchemaRef,
    pub partition_by: Vec<String>,
    /// Sorted by key.
    pub partitions: Vec<PartitionEntry>,
    pub rows: u64,
    /// Evidence to store in the version record.
    pub evidence: Option<crate::model::Evidence>,
    /// Key counts over every partition written (keys repeated across partitions count as
    /// duplicates), when the writer computed totals with a key.
    pub keys: Option<strata_reconcile::KeyCounts>,
}

/// Writes batches into per-partition Parquet files of one run.
pub struct StagingWriter {
    lake: Lake,
    dataset: String,
    run_id: String,
    schema: SchemaRef,
    options: WriterOptions,
    partition_cols: Vec<usize>,
    props: WriterProperties,
    /// Whether `props` says yet which columns are dictionary-encoded (decided on the first batch).
    dictionaries_chosen: bool,
    partitions: HashMap<String, PartitionWriter>,
    rows: u64,
    /// Keys across partitions, when they arrive in order.
    key_order: Option<strata_reconcile::KeyOrder>,
}

impl std::fmt::Debug for StagingWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagingWriter")
            .field("dataset", &self.dataset)
            .field("run_id", &self.run_id)
            .field("partitions", &self.partitions.len())
            .field("rows", &self.rows)
            .finish()
    }
}

struct PartitionWriter {
    key: String,
    values: Vec<Option<String>>,
    done: Vec<FileEntry>,
    open: Option<ParquetSink>,
    totals: Option<strata_reconcile::Totals>,
}

/// One Parquet file being written to a store, hashed and counted on the way.
pub struct ParquetSink {
    path: String,
    writer: AsyncArrowWriter<HashingWriter>,
    rows: u64,
}

impl std::fmt::Debug for ParquetSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetSink").field("path", &self.path).field("rows", &self.rows).finish()
    }
}

impl ParquetSink {
    /// Starts a file at `path` (relative to the store root). Nothing is visible at `path` until
    /// [`ParquetSink::finish`] (small files are one PUT; large ones a multipart upload).
    pub fn create(
        lake: &Lake,
        path: String,
        schema: SchemaRef,
        props: WriterProperties,
    ) -> Result<Self> {
        // Encoded bytes are held until a part of `upload_part_size` is ready: the smallest the
        // store accepts, so that many files open at once (one per partition) hold little.
        let sink = HashingWriter::new(BufWriter::with_capacity(
            lake.store().clone(),
            Path::from(path.as_str()),
            lake.upload_part_size(),
        ));
        let writer = AsyncArrowWriter::try_new(sink, schema, Some(props))
            .map_err(|source| Error::Parquet { path: path.clone(), source })?;
        Ok(ParquetSink { path, writer, rows: 0 })
    }

    pub async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.writer
            .write(batch)
            .await
            .map_err(|source| Error::Parquet { path: self.path.clone(), source })?;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Memory held for the row group in progress: encoded pages, and values not yet encoded
    /// (dictionary keys).
    pub fn buffered(&self) -> usize {
        self.writer.memory_size()
    }

    /// Writes the row group in progress out now (a shorter row group), freeing its memory.
    pub async fn flush_row_group(&mut self) -> Result<()> {
        self.writer
            .flush()
            .await
            .map_err(|source| Error::Parquet { path: self.path.clone(), source })
    }

    /// Closes the file and returns its path, size, row count and sha256.
    pub async fn finish(mut self) -> Result<FileEntry> {
        self.writer
            .finish()
            .await
            .map_err(|source| Error::Parquet { path: self.path.clone(), source })?;
        let sink = self.writer.into_inner();
        Ok(FileEntry {
            path: self.path,
            size: sink.bytes,
            rows: self.rows,
            sha256: hex::encode(sink.hasher.finalize()),
            crc32: Some(sink.crc.finish()),
        })
    }
}

/// The Parquet writer properties strata uses for data files.
pub fn writer_properties(max_row_group_size: usize) -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        // A column with many distinct values gives up its dictionary after 64 KiB instead of
        // 1 MiB: interning every value of a key or a comment column costs more than it saves.
        .set_dictionary_page_size_limit(64 * 1024)
        .set_max_row_group_row_count(Some(max_row_group_size))
        .build()
}

/// Dictionary-encodes only the columns whose values repeat: those with at most one distinct value
/// in eight rows of the first batch (flags, codes, dates). Interning every value of a key or a
/// free-text column costs more than the dictionary saves. The choice depends only on the data,
/// so the same input gives the same files.
fn with_dictionaries(props: WriterProperties, batch: &RecordBatch) -> WriterProperties {
    let sample = batch.slice(0, batch.num_rows().min(8192));
    let mut builder = props.into_builder();
    for (i, field) in sample.schema().fields().iter().enumerate() {
        let column = sample.column(i);
        if matches!(field.data_type(), DataType::Boolean) || column.is_empty() {
            continue;
        }
        // A type the row format cannot hold keeps the default (dictionary on).
        let Ok(converter) = RowConverter::new(vec![SortField::new(field.data_type().clone())])
        else {
            continue;
        };
        let Ok(rows) = converter.convert_columns(std::slice::from_ref(column)) else { continue };
        let distinct: std::collections::HashSet<arrow::row::Row<'_>> = rows.iter().collect();
        let repeats = distinct.len() * 8 <= column.len();
        builder = builder.set_column_dictionary_enabled(
            parquet::schema::types::ColumnPath::from(field.name().as_str()),
            repeats,
        );
    }
    builder.build()
}

/// Arms a fault for tests of the reconciliation invariant: `STRATA_INJECT_FAULT=<fault>:<dataset>`
/// changes the first batch written to `<dataset>` on its way to the files. Faults: `lose-row`
/// (its last row is dropped), `dup-row` (its first row is written twice), `swap-row` (its last
/// row is replaced by a copy of its first: the row count stays right), `panic` (the writer
/// panics: an internal error, exit code 1).
pub const FAULT_ENV: &str = "STRATA_INJECT_FAULT";

fn inject_fault(dataset: &str, batch: RecordBatch) -> Result<RecordBatch> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static DONE: AtomicBool = AtomicBool::new(false);
    let Ok(armed) = std::env::var(FAULT_ENV) else { return Ok(batch) };
    let Some((fault, target)) = armed.split_once(':') else { return Ok(batch) };
    if target != dataset || batch.num_rows() < 2 || DONE.swap(true, Ordering::SeqCst) {
        return Ok(batch);
    }
    let n = batch.num_rows() as u32;
    let rows: Vec<u32> = match fault {
        "lose-row" => (0..n - 1).collect(),
        "dup-row" => std::iter::once(0).chain(0..n).collect(),
        "swap-row" => (0..n - 1).chain(std::iter::once(0)).collect(),
        "panic" => panic!("strata: injected panic writing {dataset} ({FAULT_ENV})"),
        _ => return Ok(batch),
    };
    eprintln!("strata: injecting {fault} into {dataset} ({FAULT_ENV})");
    Ok(arrow::compute::take_record_batch(&batch, &UInt32Array::from(rows))?)
}

/// The rows of one partition in a batch: key, values, row indices.
type PartitionRows = (String, Vec<Option<String>>, Vec<u32>);

/// Checks that every partition column exists and has a type that can name partitions, and
/// returns their indices in `schema`.
pub fn partition_columns(
    schema: &arrow::datatypes::Schema,
    partition_by: &[String],
) -> Result<Vec<usize>> {
    let mut indices = Vec::with_capacity(partition_by.len());
    for col in partition_by {
        validate_partition_column(col)?;
        let idx = schema.index_of(col).map_err(|_| Error::NoSuchPartitionColumn {
            column: col.clone(),
            columns: schema.fields().iter().map(|f| f.name().clone()).collect(),
        })?;
        let t = schema.field(idx).data_type();
        if !partitionable(t) {
            return Err(Error::UnpartitionableColumn {
                column: col.clone(),
                data_type: t.to_string(),
            });
        }
        if indices.contains(&idx) {
            return Err(Error::PartitionColumnTwice { column: col.clone() });
        }
        indices.push(idx);
    }
    Ok(indices)
}

/// Whether a column type can name partitions.
pub fn partitionable(t: &DataType) -> bool {
    t.is_integer()
        || matches!(
            t,
            DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
                | DataType::Date32
                | DataType::Boolean
        )
}

impl StagingWriter {
    /// A writer of `run_id`'s files of `dataset` (a valid name) in `lake`.
    pub(crate) fn new(
        lake: Lake,
        dataset: String,
        run_id: String,
        schema: SchemaRef,
        options: WriterOptions,
    ) -> Result<Self> {
        let partition_cols = partition_columns(&schema, &options.partition_by)?;
        let props = writer_properties(options.max_row_group_size);
        Ok(StagingWriter {
            lake,
            dataset,
            run_id,
            schema,
            options,
            partition_cols,
            props,
            dictionaries_chosen: false,
            partitions: HashMap::new(),
            rows: 0,
            key_order: None,
        })
    }

    /// Appends a batch. Its columns must have the writer's types; its rows go to the
    /// partitions their partition-column values name.
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let batch = RecordBatch::try_new(self.schema.clone(), batch.columns().to_vec())?;
        let batch = inject_fault(&self.dataset, batch)?;
        if !self.dictionaries_chosen {
            self.props = with_dictionaries(self.props.clone(), &batch);
            self.dictionaries_chosen = true;
        }
        if let Some(spec) = self.options.totals.as_ref().filter(|_| self.options.keys_in_order) {
            if !spec.key.is_empty() {
                let keys = spec
                    .key
                    .iter()
                    .map(|k| {
                        batch.column_by_name(k).cloned().ok_or_else(|| Error::MissingKeyColumn {
                            dataset: self.dataset.clone(),
                            column: k.clone(),
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                self.key_order.get_or_insert_with(Default::default).update(&keys).map_err(
                    |cause| Error::Totals { dataset: self.dataset.clone(), what: "keys", cause },
                )?;
            }
        }
        if self.partition_cols.is_empty() {
            return self.write_to(String::new(), Vec::new(), &batch).await;
        }
        let mut groups = self.group_rows(&batch)?;
        if groups.len() == 1 {
            let (key, values, _) = groups.pop().expect("one group");
            self.write_to(key, values, &batch).await?;
        } else {
            for (key, values, rows) in groups {
                let part = arrow::compute::take_record_batch(&batch, &UInt32Array::from(rows))?;
                self.write_to(key, values, &part).await?;
            }
        }
        self.bound_buffers().await
    }

    /// Groups the rows of a batch by partition, in order of first appearance:
    /// `(key, values, row indices)`. Validates each new partition value.
    fn group_rows(&self, batch: &RecordBatch) -> Result<Vec<PartitionRows>> {
        // Rows are grouped by the binary row form of their partition values; a value is
        // formatted (and checked) once per partition, not once per row.
        let cols: Vec<_> = self.partition_cols.iter().map(|&i| batch.column(i).clone()).collect();
        let fields = cols.iter().map(|c| SortField::new(c.data_type().clone())).collect();
        let converter = RowConverter::new(fields)?;
        let rows = converter.convert_columns(&cols)?;
        let format = FormatOptions::default();
        let formatters: Vec<ArrayFormatter<'_>> = cols
            .iter()
            .map(|c| Ok(ArrayFormatter::try_new(c.as_ref(), &format)?))
            .collect::<Result<_>>()?;
        let mut groups: Vec<PartitionRows> = Vec::new();
        let mut index: HashMap<arrow::row::Row<'_>, usize> = HashMap::new();
        for row in 0..batch.num_rows() {
            let r = rows.row(row);
            if let Some(&g) = index.get(&r) {
                groups[g].2.push(row as u32);
                continue;
            }
            let mut values = Vec::with_capacity(formatters.len());
            let mut key = String::new();
            for (n, f) in formatters.iter().enumerate() {
                let value =
                    if cols[n].is_null(row) { None } else { Some(f.value(row).to_string()) };
                if n > 0 {
                    key.push('/');
                }
                key.push_str(&self.options.partition_by[n]);
                key.push('=');
                key.push_str(value.as_deref().unwrap_or(NULL_PARTITION));
                if let Some(v) = &value {
                    validate_partition_value(&self.options.partition_by[n], v)?;
                }
                values.push(value);
            }
            index.insert(r, groups.len());
            groups.push((key, values, vec![row as u32]));
        }
        Ok(groups)
    }

    async fn write_to(
        &mut self,
        key: String,
        values: Vec<Option<String>>,
        batch: &RecordBatch,
    ) -> Result<()> {
        let dataset = self.dataset.clone();
        let spec = self.options.totals.as_ref();
        let writer = self.partitions.entry(key.clone()).or_insert_with(|| PartitionWriter {
            key,
            values,
            done: Vec::new(),
            open: None,
            totals: spec.map(|s| match self.options.keys_in_order {
                true => strata_reconcile::Totals::new_in_key_order(s),
                false => strata_reconcile::Totals::new(s),
            }),
        });
        if let Some(t) = &mut writer.totals {
            t.update(batch).map_err(|cause| Error::Totals {
                dataset: dataset.clone(),
                what: "control totals",
                cause,
            })?;
        }
        let mut offset = 0usize;
        while offset < batch.num_rows() {
            if writer.open.is_none() {
                let path =
                    layout::data_file_path(&dataset, &self.run_id, &writer.key, writer.done.len());
                writer.open = Some(ParquetSink::create(
                    &self.lake,
                    path,
                    self.schema.clone(),
                    self.props.clone(),
                )?);
            }
            let file = writer.open.as_mut().expect("opened above");
            let room = (self.options.max_rows_per_file - file.rows()) as usize;
            let take = room.min(batch.num_rows() - offset);
            file.write(&batch.slice(offset, take)).await?;
            offset += take;
            self.rows += take as u64;
            if file.rows() >= self.options.max_rows_per_file {
                let file = writer.open.take().expect("open");
                writer.done.push(file.finish().await?);
            }
        }
        Ok(())
    }

    /// Keeps the row groups in progress of all open files under `max_buffered_bytes`.
    async fn bound_buffers(&mut self) -> Result<()> {
        let budget = self.options.max_buffered_bytes;
        let total: usize = self
            .partitions
            .values()
            .filter_map(|p| p.open.as_ref())
            .map(ParquetSink::buffered)
            .sum();
        if total <= budget {
            return Ok(());
        }
        let mut sizes: Vec<(usize, String)> = self
            .partitions
            .iter()
            .filter_map(|(k, p)| p.open.as_ref().map(|f| (f.buffered(), k.clone())))
            .collect();
        sizes.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let mut left = total;
        for (size, key) in sizes {
            if left <= budget / 2 {
                break;
            }
            if let Some(file) = self.partitions.get_mut(&key).and_then(|p| p.open.as_mut()) {
                file.flush_row_group().await?;
                left -= size;
            }
        }
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Closes every file and returns what was staged.
    pub async fn finish(self) -> Result<Staged> {
        let mut partitions = Vec::with_capacity(self.partitions.len());
        let mut key_sets = Vec::new();
        for (_, mut p) in self.partitions {
            if let Some(file) = p.open.take() {
                p.done.push(file.finish().await?);
            }
            let totals = p.totals.map(|t| {
                let (totals, keys) = t.finish_with_keys();
                if let Some(k) = keys {
                    key_sets.push(k);
                }
                totals
            });
            partitions.push(PartitionEntry {
                totals,
                rows: p.done.iter().map(|f| f.rows).sum(),
                bytes: p.done.iter().map(|f| f.size).sum(),
                key: p.key,
                values: p.values,
                run_id: self.run_id.clone(),
                written_in: 0,
                files: p.done,
            });
        }
        partitions.sort_by(|a, b| a.key.cmp(&b.key));
        let has_key = self.options.totals.as_ref().is_some_and(|t| !t.key.is_empty());
        let keys = has_key.then(|| match self.key_order {
            // Sorted rows: a key in two partitions would have met itself in the stream.
            Some(order) => order.counts(),
            None if self.options.keys_in_order => strata_reconcile::KeyCounts::default(),
            None => {
                // Repeats within a partition and across partitions alike.
                let (distinct, repeated) = strata_reconcile::merge_key_sets(key_sets);
                strata_reconcile::KeyCounts { distinct, duplicates: repeated, out_of_order: 0 }
            }
        });
        crash::point("after-stage");
        Ok(Staged {
            run_id: self.run_id,
            schema: self.schema,
            partition_by: self.options.partition_by,
            partitions,
            rows: self.rows,
            evidence: None,
            keys,
        })
    }
}

/// An [`AsyncFileWriter`] that hashes and counts every byte on its way to the store.
struct HashingWriter {
    inner: BufWriter,
    hasher: Sha256,
    crc: crate::checked::BlockCrc,
    bytes: u64,
}

impl HashingWriter {
    fn new(inner: BufWriter) -> Self {
        HashingWriter { inner, hasher: Sha256::new(), crc: Default::default(), bytes: 0 }
    }
}

impl AsyncFileWriter for HashingWriter {
    fn write(&mut self, bs: Bytes) -> BoxFuture<'_, parquet::errors::Result<()>> {
        self.hasher.update(&bs);
        self.crc.update(&bs);
        let first = self.bytes == 0;
        self.bytes += bs.len() as u64;
        Box::pin(async move {
            self.inner.put(bs).await.map_err(|e| ParquetError::External(Box::new(e)))?;
            if first {
                crash::point("mid-file-write");
            }
            Ok(())
        })
    }

    fn complete(&mut self) -> BoxFuture<'_, parquet::errors::Result<()>> {
        Box::pin(async move {
            use tokio::io::AsyncWriteExt;
            self.inner.shutdown().await.map_err(|e| ParquetError::External(Box::new(e)))
        })
    }
}
