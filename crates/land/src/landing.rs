//! Landing one input file as an immutable raw batch.
//!
//! ```text
//! _raw/<source>/batch=<sha256 of the input>/part-00000.parquet   the rows (text columns for CSV
//!                                                              and JSON lines, plus _line)
//! _raw/<source>/batch=<sha256 of the input>/rejects.parquet      lines that could not be read:
//!                                                              _line, raw bytes, reason
//! _raw/<source>/batch=<sha256 of the input>/_batch.json          the manifest, written last with
//!                                                              create-if-absent: the commit point
//! ```
//!
//! A batch is named by the sha256 of its input's bytes, so landing the same content twice finds
//! the manifest already there and does nothing; nothing in the raw layer is ever rewritten or
//! deleted.

use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, ArrayRef, BinaryBuilder, Int64Array, Int64Builder, RecordBatch, StringBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use strata_publish::{FileEntry, Lake, ParquetSink, RunContext};

use crate::csv::{read_plain, CsvItem, CsvReader, Next, PlainBlock, PlainLine};
use crate::error::{Error, Result};
use crate::layout::{batch_dir, manifest_path, RAW_DIR};
use crate::line_ends::LineEndReader;
use crate::raw_log;

/// The provenance column every raw batch carries: the input line (CSV, JSON lines) or row
/// (Parquet) a row came from, 1-based.
pub const LINE_COLUMN: &str = "_line";
/// `format` of a batch manifest.
pub const BATCH_FORMAT: &str = "strata.raw-batch.v1";

/// Formats strata can land.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    Csv,
    Jsonl,
    Parquet,
}

impl InputFormat {
    /// The format a file name suggests.
    pub fn from_name(name: &str) -> Option<Self> {
        let lower = name.to_ascii_lowercase();
        let lower = lower.strip_suffix(".gz").unwrap_or(&lower);
        if lower.ends_with(".csv") {
            Some(InputFormat::Csv)
        } else if lower.ends_with(".jsonl")
            || lower.ends_with(".ndjson")
            || lower.ends_with(".json")
        {
            Some(InputFormat::Jsonl)
        } else if lower.ends_with(".parquet") {
            Some(InputFormat::Parquet)
        } else {
            None
        }
    }
}

impl std::fmt::Display for InputFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InputFormat::Csv => "csv",
            InputFormat::Jsonl => "jsonl",
            InputFormat::Parquet => "parquet",
        })
    }
}

/// How to land.
#[derive(Debug, Clone)]
pub struct LandOptions {
    /// The format; by default taken from the file name.
    pub format: Option<InputFormat>,
    /// CSV field delimiter.
    pub delimiter: u8,
    /// Rows per record batch written.
    pub batch_rows: usize,
    /// Read and hash every input, even one the source's index already knows by its identity
    /// (see [`crate::land_indexed`]).
    pub rehash: bool,
}

impl Default for LandOptions {
    fn default() -> Self {
        LandOptions { format: None, delimiter: b',', batch_rows: 64 * 1024, rehash: false }
    }
}

/// An input to land: an object in some store (local files are read through a local store).
#[derive(Debug, Clone)]
pub struct Input {
    pub store: Arc<dyn ObjectStore>,
    pub path: Path,
    /// How the user named it, for messages and the manifest.
    pub display: String,
}

/// What the manifest says about the input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputInfo {
    /// The name the input was landed from (its file name).
    pub name: String,
    pub sha256: String,
    pub size: u64,
    pub format: InputFormat,
}

/// The manifest of a raw batch: `_raw/<source>/batch=<id>/_batch.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchManifest {
    pub format: String,
    pub source: String,
    /// The sha256 of the input: the batch's identity.
    pub batch_id: String,
    pub input: InputInfo,
    /// Rows landed in the data file.
    pub rows: u64,
    /// Lines kept in the rejects file.
    pub rejected: u64,
    /// Empty lines (no data; counted, not kept).
    pub blank_lines: u64,
    /// The schema of the data file.
    pub schema: Schema,
    pub data: Option<FileEntry>,
    pub rejects: Option<FileEntry>,
    pub run_id: String,
    pub landed_at: DateTime<Utc>,
    /// The entry of the source's raw log that announced the batch: landing order among batches
    /// landed at the same time (absent in batches landed before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_seq: Option<u64>,
}

impl BatchManifest {
    /// The batch's place in landing order: landed later sorts later. Batches landed at the same
    /// time (one `strata land` or `strata run`) are ordered by their raw-log entries, then by
    /// id, so the order is total and the same for every reader of a lake.
    pub fn landing_key(&self) -> (DateTime<Utc>, u64, &str) {
        (self.landed_at, self.log_seq.unwrap_or(0), &self.batch_id)
    }

    /// Lines (or rows) read from the input: landed + rejected + blank.
    pub fn lines(&self) -> u64 {
        self.rows + self.rejected + self.blank_lines
    }
}

/// The result of landing one input.
#[derive(Debug, Clone)]
pub enum LandOutcome {
    /// The input was landed as a new batch.
    Landed(BatchManifest),
    /// A batch with the same content already exists; nothing was written.
    AlreadyLanded(BatchManifest),
}

impl LandOutcome {
    pub fn manifest(&self) -> &BatchManifest {
        match self {
            LandOutcome::Landed(m) | LandOutcome::AlreadyLanded(m) => m,
        }
    }
}

/// The schema of a rejects file.
pub fn rejects_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(LINE_COLUMN, DataType::Int64, false),
        Field::new("raw", DataType::Binary, false),
        Field::new("reason", DataType::Utf8, false),
    ]))
}

/// Lands one input as a raw batch of `source`.
pub async fn land(
    lake: &Lake,
    source: &str,
    input: &Input,
    options: &LandOptions,
    ctx: &RunContext,
) -> Result<LandOutcome> {
    land_logged(lake, source, input, options, ctx, 0).await.map(|(outcome, _)| outcome)
}

/// [`land`], probing the source's log from entry `log_from` (a lower bound on its end); also
/// returns the log entry that announced a new batch.
pub(crate) async fn land_logged(
    lake: &Lake,
    source: &str,
    input: &Input,
    options: &LandOptions,
    ctx: &RunContext,
    log_from: u64,
) -> Result<(LandOutcome, Option<u64>)> {
    strata_publish::names::validate_dataset_name(source)?;
    let name = input.path.filename().unwrap_or(input.display.as_str()).to_string();
    let format = match options.format.or_else(|| InputFormat::from_name(&name)) {
        Some(f) => f,
        None => {
            return Err(Error::Input {
                path: input.display.clone(),
                detail: "cannot tell its format from the name; pass --format csv, jsonl or parquet"
                    .into(),
            })
        }
    };
    // Pass 1: the identity of the content (and, for JSON lines, its columns).
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut json_keys = JsonKeys::default();
    let mut json_lines = LineEndReader::default();
    let mut stream = open(input).await?;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        hasher.update(&chunk);
        size += chunk.len() as u64;
        if format == InputFormat::Jsonl {
            json_keys.push(&json_lines.push(chunk));
        }
    }
    if format == InputFormat::Jsonl {
        json_keys.push(&json_lines.finish());
    }
    json_keys.finish();
    let batch_id = hex::encode(hasher.finalize());
    let manifest_at = manifest_path(source, &batch_id);
    if let Some(existing) = read_manifest(lake, manifest_at.clone()).await? {
        return Ok((LandOutcome::AlreadyLanded(existing), None));
    }
    // Pass 2: parse and write.
    let dir = batch_dir(source, &batch_id);
    let mut out = BatchWriter::new(lake, &dir, options.batch_rows);
    match format {
        InputFormat::Csv => land_csv(input, options, &mut out).await?,
        InputFormat::Jsonl => land_jsonl(input, json_keys.keys, &mut out).await?,
        InputFormat::Parquet => land_parquet(input, &mut out).await?,
    }
    let (schema, data, rejects, counts) = out.finish().await?;
    let manifest = BatchManifest {
        format: BATCH_FORMAT.into(),
        source: source.into(),
        batch_id: batch_id.clone(),
        input: InputInfo { name, sha256: batch_id, size, format },
        rows: counts.rows,
        rejected: counts.rejected,
        blank_lines: counts.blank,
        schema,
        data,
        rejects,
        run_id: ctx.run_id().into(),
        landed_at: ctx.now(),
        log_seq: None,
    };
    // Announced in the source's log before it exists, so that readers find it without listing
    // the batch directories (see `crate::raw_log`).
    let logged = raw_log::append(lake, source, &manifest.batch_id, log_from).await?;
    let manifest = BatchManifest { log_seq: Some(logged), ..manifest };
    strata_publish::crash::point("land-before-manifest");
    let mut body = serde_json::to_vec_pretty(&manifest)
        .map_err(|source| Error::Serialize { path: manifest_at.to_string(), source })?;
    body.push(b'\n');
    if lake.create_if_absent(&manifest_at, body).await? {
        return Ok((LandOutcome::Landed(manifest), Some(logged)));
    }
    // Another process landed the same content at the same time.
    let existing =
        read_manifest(lake, manifest_at.clone()).await?.ok_or_else(|| Error::Corrupt {
            path: manifest_at.to_string(),
            detail: "it exists but cannot be read".into(),
        })?;
    Ok((LandOutcome::AlreadyLanded(existing), Some(logged)))
}

/// How much of an input one read asks for: large, so that a local file is read in few system
/// calls and an S3 object in few ranged GETs.
const READ_RANGE: u64 = 8 * 1024 * 1024;

/// Reads an input from start to end, in ranges of [`READ_RANGE`], two at a time. Every range is
/// asked for only if the object still has the entity tag it had when reading began, so a file
/// changed while it is being landed is an error, never a batch that mixes two contents.
async fn open(input: &Input) -> Result<futures::stream::BoxStream<'static, Result<Bytes>>> {
    let meta = match input.store.head(&input.path).await {
        Ok(meta) => meta,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(Error::Input {
                path: input.display.clone(),
                detail: "no such file; check the path".into(),
            })
        }
        Err(e) => return Err(Error::unreadable_input(&input.display, e)),
    };
    Ok(read_ranges(input.store.clone(), input.path.clone(), input.display.clone(), meta))
}

/// Reads the object `meta` describes from start to end, in ranges of [`READ_RANGE`], two at a
/// time, each only if the object still has the entity tag of `meta` (see [`open`]).
pub(crate) fn read_ranges(
    store: Arc<dyn ObjectStore>,
    path: Path,
    display: String,
    meta: object_store::ObjectMeta,
) -> futures::stream::BoxStream<'static, Result<Bytes>> {
    let ranges = (0..meta.size.div_ceil(READ_RANGE))
        .map(move |i| i * READ_RANGE..((i + 1) * READ_RANGE).min(meta.size));
    let reads = futures::stream::iter(ranges).map(move |range| {
        let (store, path, display) = (store.clone(), path.clone(), display.clone());
        let options = object_store::GetOptions {
            if_match: meta.e_tag.clone(),
            range: Some(range.into()),
            ..Default::default()
        };
        async move {
            let read = async { store.get_opts(&path, options).await?.bytes().await };
            read.await.map_err(|e| match e {
                object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. } => {
                    Error::Input {
                        path: display,
                        detail: "it changed while it was being read; land it again once it is \
                                 complete"
                            .into(),
                    }
                }
                e => Error::unreadable_input(&display, e),
            })
        }
    });
    reads.buffered(2).boxed()
}

/// An input's text, its lines ending with LF whatever its own line ends are (see
/// [`crate::line_ends`]).
async fn open_lines(input: &Input) -> Result<futures::stream::BoxStream<'static, Result<Bytes>>> {
    let stream = open(input).await?;
    let state = (stream, LineEndReader::default(), false);
    let lines = futures::stream::unfold(state, |(mut stream, mut ends, done)| async move {
        if done {
            return None;
        }
        match stream.next().await {
            Some(Ok(chunk)) => Some((Ok(ends.push(chunk)), (stream, ends, false))),
            Some(Err(e)) => Some((Err(e), (stream, ends, true))),
            None => Some((Ok(ends.finish()), (stream, ends, true))),
        }
    });
    Ok(lines.boxed())
}

pub(crate) async fn read_manifest(lake: &Lake, path: Path) -> Result<Option<BatchManifest>> {
    let path = &path;
    let bytes = match lake.store().get(path).await {
        Ok(g) => g.bytes().await.map_err(|e| Error::store("read", path, e))?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(Error::store("read", path, e)),
    };
    let manifest: BatchManifest = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Corrupt { path: path.to_string(), detail: e.to_string() })?;
    Ok(Some(manifest))
}

/// The sources that have at least one raw batch directory, sorted.
pub async fn list_sources(lake: &Lake) -> Result<Vec<String>> {
    let prefix = Path::from(RAW_DIR);
    let listing = lake
        .store()
        .list_with_delimiter(Some(&prefix))
        .await
        .map_err(|e| Error::store("list", &prefix, e))?;
    let mut names: Vec<String> =
        listing.common_prefixes.iter().filter_map(|p| p.filename().map(str::to_string)).collect();
    names.sort();
    Ok(names)
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    rows: u64,
    rejected: u64,
    blank: u64,
}

/// Writes the data and rejects files of one batch, in record batches of bounded size.
struct BatchWriter {
    lake: Lake,
    dir: String,
    batch_rows: usize,
    schema: Option<SchemaRef>,
    data: Option<ParquetSink>,
    rejects: Option<ParquetSink>,
    rej_line: Int64Builder,
    rej_raw: BinaryBuilder,
    rej_reason: StringBuilder,
    counts: Counts,
}

impl BatchWriter {
    fn new(lake: &Lake, dir: &str, batch_rows: usize) -> Self {
        BatchWriter {
            lake: lake.clone(),
            dir: dir.to_string(),
            batch_rows,
            schema: None,
            data: None,
            rejects: None,
            rej_line: Int64Builder::new(),
            rej_raw: BinaryBuilder::new(),
            rej_reason: StringBuilder::new(),
            counts: Counts::default(),
        }
    }

    fn set_schema(&mut self, schema: SchemaRef) {
        self.schema = Some(schema);
    }

    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.data.is_none() {
            let path = format!("{}/part-00000.parquet", self.dir);
            self.data = Some(ParquetSink::create(
                &self.lake,
                path,
                batch.schema(),
                strata_publish::writer_properties(1024 * 1024),
            )?);
        }
        self.counts.rows += batch.num_rows() as u64;
        self.data.as_mut().expect("created").write(&batch).await?;
        Ok(())
    }

    fn reject(&mut self, line: u64, raw: &[u8], reason: &str) {
        self.rej_line.append_value(line as i64);
        self.rej_raw.append_value(raw);
        self.rej_reason.append_value(reason);
        self.counts.rejected += 1;
    }

    fn blank(&mut self) {
        self.counts.blank += 1;
    }

    /// Counts a blank line or keeps a bad one.
    async fn take_line(&mut self, line: NotARow) -> Result<()> {
        match line {
            NotARow::Bad { line, raw, reason } => {
                self.reject(line, &raw, &reason);
                self.flush_rejects(false).await
            }
            NotARow::Blank => {
                self.blank();
                Ok(())
            }
        }
    }

    async fn flush_rejects(&mut self, force: bool) -> Result<()> {
        if self.rej_line.len() == 0 || (!force && self.rej_line.len() < self.batch_rows) {
            return Ok(());
        }
        let batch = RecordBatch::try_new(
            rejects_schema(),
            vec![
                Arc::new(self.rej_line.finish()) as ArrayRef,
                Arc::new(self.rej_raw.finish()),
                Arc::new(self.rej_reason.finish()),
            ],
        )?;
        if self.rejects.is_none() {
            let path = format!("{}/rejects.parquet", self.dir);
            self.rejects = Some(ParquetSink::create(
                &self.lake,
                path,
                rejects_schema(),
                strata_publish::writer_properties(1024 * 1024),
            )?);
        }
        self.rejects.as_mut().expect("created").write(&batch).await?;
        Ok(())
    }

    async fn finish(mut self) -> Result<(Schema, Option<FileEntry>, Option<FileEntry>, Counts)> {
        self.flush_rejects(true).await?;
        let data = match self.data.take() {
            Some(d) => Some(d.finish().await?),
            None => None,
        };
        let rejects = match self.rejects.take() {
            Some(r) => Some(r.finish().await?),
            None => None,
        };
        let schema = self.schema.map(|s| s.as_ref().clone()).unwrap_or_else(Schema::empty);
        Ok((schema, data, rejects, self.counts))
    }
}

/// Text columns named by `names`, then `_line`.
fn text_schema(names: &[String], display: &str) -> Result<SchemaRef> {
    if names.iter().any(|n| n == LINE_COLUMN) {
        return Err(Error::Input {
            path: display.to_string(),
            detail: format!("it has a column named {LINE_COLUMN:?}, which strata reserves for provenance; rename it"),
        });
    }
    let mut fields: Vec<Field> =
        names.iter().map(|n| Field::new(n, DataType::Utf8, true)).collect();
    fields.push(Field::new(LINE_COLUMN, DataType::Int64, false));
    Ok(Arc::new(Schema::new(fields)))
}

/// Accumulates text rows and turns them into record batches.
struct TextRows {
    schema: SchemaRef,
    columns: Vec<StringBuilder>,
    lines: Int64Builder,
}

impl TextRows {
    fn new(schema: SchemaRef, rows: usize) -> Self {
        let n = schema.fields().len() - 1;
        TextRows {
            schema,
            columns: (0..n).map(|_| StringBuilder::with_capacity(rows, rows * 8)).collect(),
            lines: Int64Builder::with_capacity(rows),
        }
    }

    fn push<S: AsRef<str>>(&mut self, line: u64, values: impl Iterator<Item = Option<S>>) {
        for (b, v) in self.columns.iter_mut().zip(values) {
            b.append_option(v);
        }
        self.lines.append_value(line as i64);
    }

    fn len(&self) -> usize {
        self.lines.len()
    }

    fn take(&mut self) -> Result<RecordBatch> {
        let rows = self.lines.len();
        let mut arrays: Vec<ArrayRef> = self
            .columns
            .iter_mut()
            .map(|b| {
                // Room for as many rows again, so that the next batch does not grow by copies.
                let bytes = b.values_slice().len();
                let mut full = std::mem::replace(b, StringBuilder::with_capacity(rows, bytes));
                Arc::new(full.finish()) as ArrayRef
            })
            .collect();
        arrays.push(Arc::new(self.lines.finish()));
        Ok(RecordBatch::try_new(self.schema.clone(), arrays)?)
    }
}

/// What the CSV parser hands the writer.
enum CsvMsg {
    Schema(SchemaRef),
    Rows(RecordBatch),
    /// A block of plain lines being read on another thread: its rows, and its blank and bad
    /// lines in order.
    Block(tokio::task::JoinHandle<Result<(RecordBatch, Vec<NotARow>)>>),
    Line(NotARow),
}

/// A line that gives no row.
enum NotARow {
    Bad { line: u64, raw: Vec<u8>, reason: String },
    Blank,
}

/// Lands a CSV input: one task reads and parses while this one encodes and writes, so that the
/// two halves of the work run on two cores.
async fn land_csv(input: &Input, options: &LandOptions, out: &mut BatchWriter) -> Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<CsvMsg>>(4);
    let stream = open_lines(input).await?;
    let (delimiter, batch_rows, display) =
        (options.delimiter, options.batch_rows, input.display.clone());
    let parser = tokio::spawn(async move {
        let result = parse_csv(stream, delimiter, batch_rows, &display, &tx).await;
        if let Err(e) = result {
            let _ = tx.send(Err(e)).await;
        }
    });
    let mut schema_seen = false;
    while let Some(msg) = rx.recv().await {
        match msg? {
            CsvMsg::Schema(schema) => {
                out.set_schema(schema);
                schema_seen = true;
            }
            CsvMsg::Rows(batch) => out.write(batch).await?,
            CsvMsg::Block(read) => {
                let (batch, lines) = read.await.map_err(|e| reader_stopped(input, e))??;
                out.write(batch).await?;
                for line in lines {
                    out.take_line(line).await?;
                }
            }
            CsvMsg::Line(line) => out.take_line(line).await?,
        }
    }
    parser.await.map_err(|e| reader_stopped(input, e))?;
    if !schema_seen {
        return Err(Error::Input {
            path: input.display.clone(),
            detail: "it is empty: no header line".into(),
        });
    }
    Ok(())
}

/// The CSV reader's task panicked or was cancelled: a bug, not a problem of the input.
fn reader_stopped(input: &Input, e: tokio::task::JoinError) -> Error {
    Error::Internal {
        message: format!("cannot land {}: the CSV reader stopped: {e}", input.display),
    }
}

/// How many bytes of plain lines (no quotes) are read as one block on another thread, at most
/// (and at most `batch_rows` lines): about 8 MiB of input, a record batch once read.
const PLAIN_BLOCK_BYTES: usize = 8 * 1024 * 1024;

/// Reads a block of plain lines into one record batch of text columns and `_line`, with its blank
/// and bad lines in order.
fn read_plain_block(
    block: &PlainBlock,
    delimiter: u8,
    expected: usize,
    schema: SchemaRef,
) -> Result<(RecordBatch, Vec<NotARow>)> {
    let lines = memchr::memchr_iter(b'\n', &block.bytes).count() + 1;
    let mut columns: Vec<StringBuilder> = (0..expected)
        .map(|_| StringBuilder::with_capacity(lines, block.bytes.len() / expected.max(1)))
        .collect();
    let mut line_numbers = Int64Builder::with_capacity(lines);
    let mut others = Vec::new();
    read_plain(block, delimiter, expected, |item| match item {
        PlainLine::Record { line, text, bounds } => {
            for (b, &(from, to)) in columns.iter_mut().zip(bounds) {
                b.append_value(&text[from..to]);
            }
            line_numbers.append_value(line as i64);
        }
        PlainLine::Bad { line, raw, reason } => {
            others.push(NotARow::Bad { line, raw: raw.to_vec(), reason })
        }
        PlainLine::Blank { .. } => others.push(NotARow::Blank),
    });
    let mut arrays: Vec<ArrayRef> =
        columns.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef).collect();
    arrays.push(Arc::new(line_numbers.finish()));
    Ok((RecordBatch::try_new(schema, arrays)?, others))
}

/// Reads and parses CSV records, sending the schema, then row batches, rejects and blanks in
/// input order. Stops early, without error, when the receiver is gone.
async fn parse_csv(
    mut stream: futures::stream::BoxStream<'static, Result<Bytes>>,
    delimiter: u8,
    batch_rows: usize,
    display: &str,
    tx: &tokio::sync::mpsc::Sender<Result<CsvMsg>>,
) -> Result<()> {
    let mut reader = CsvReader::new(delimiter);
    let mut rows: Option<TextRows> = None;
    let mut eof = false;
    loop {
        if !eof {
            match stream.next().await {
                Some(chunk) => reader.push(&chunk?),
                None => eof = true,
            }
        }
        loop {
            let item = match reader.next_plain(eof, batch_rows, PLAIN_BLOCK_BYTES) {
                Next::NeedMore => break,
                Next::Plain(block) => {
                    let (Some(r), Some(expected)) = (&mut rows, reader.expected()) else {
                        return Err(Error::Input {
                            path: display.into(),
                            detail: "internal error: lines were read before the header; please report it".into(),
                        });
                    };
                    // Rows read one at a time before this block go first.
                    if r.len() > 0 && tx.send(Ok(CsvMsg::Rows(r.take()?))).await.is_err() {
                        return Ok(());
                    }
                    let schema = r.schema.clone();
                    let read = tokio::task::spawn_blocking(move || {
                        read_plain_block(&block, delimiter, expected, schema)
                    });
                    if tx.send(Ok(CsvMsg::Block(read))).await.is_err() {
                        return Ok(());
                    }
                    continue;
                }
                Next::Record => match reader.next_item(eof) {
                    Some(item) => item,
                    None => break,
                },
            };
            let item = item.map_err(|detail| Error::Input { path: display.into(), detail })?;
            let msg = match item {
                CsvItem::Record { line, fields } => match &mut rows {
                    None => {
                        let schema = text_schema(&fields.to_vec(), display)?;
                        rows = Some(TextRows::new(schema.clone(), batch_rows));
                        Some(CsvMsg::Schema(schema))
                    }
                    Some(r) => {
                        r.push(line, fields.iter().map(Some));
                        (r.len() >= batch_rows).then(|| r.take().map(CsvMsg::Rows)).transpose()?
                    }
                },
                CsvItem::Bad { line, raw, reason } => {
                    Some(CsvMsg::Line(NotARow::Bad { line, raw, reason }))
                }
                CsvItem::Blank { .. } => Some(CsvMsg::Line(NotARow::Blank)),
            };
            if let Some(msg) = msg {
                if tx.send(Ok(msg)).await.is_err() {
                    return Ok(());
                }
            }
        }
        if eof {
            break;
        }
    }
    if let Some(r) = &mut rows {
        if r.len() > 0 {
            let _ = tx.send(Ok(CsvMsg::Rows(r.take()?))).await;
        }
    }
    Ok(())
}

/// Collects the keys of JSON objects, line by line, in order of first appearance.
#[derive(Default)]
struct JsonKeys {
    keys: Vec<String>,
    seen: std::collections::HashSet<String>,
    partial: Vec<u8>,
}

impl JsonKeys {
    fn push(&mut self, chunk: &[u8]) {
        self.partial.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(i) = self.partial[start..].iter().position(|&b| b == b'\n') {
            let line = self.partial[start..start + i].to_vec();
            self.line(&line);
            start += i + 1;
        }
        self.partial.drain(..start);
    }

    fn finish(&mut self) {
        let rest = std::mem::take(&mut self.partial);
        self.line(&rest);
    }

    fn line(&mut self, line: &[u8]) {
        if let Ok(serde_json::Value::Object(map)) =
            serde_json::from_slice::<serde_json::Value>(line)
        {
            for k in map.keys() {
                if self.seen.insert(k.clone()) {
                    self.keys.push(k.clone());
                }
            }
        }
    }
}

/// Reads one JSON line: its values for `keys` as text, or why it cannot be read.
pub fn json_line_values(
    line: &[u8],
    keys: &[String],
) -> std::result::Result<Vec<Option<String>>, String> {
    let text = std::str::from_utf8(line)
        .map_err(|e| format!("invalid UTF-8 at byte {}", e.valid_up_to()))?;
    // Each value is kept as its JSON text: a number is landed exactly as written (parsing it
    // would round it through a 64-bit float), a string unescaped, anything else as written.
    let map: std::collections::HashMap<String, &serde_json::value::RawValue> =
        serde_json::from_str(text).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => "not a JSON object".to_string(),
            _ => format!("invalid JSON: {e}"),
        })?;
    keys.iter()
        .map(|k| match map.get(k).map(|v| v.get()) {
            None | Some("null") => Ok(None),
            Some(raw) if raw.starts_with('"') => serde_json::from_str::<String>(raw)
                .map(Some)
                .map_err(|e| format!("invalid JSON string for {k:?}: {e}")),
            Some(raw) => Ok(Some(raw.to_string())),
        })
        .collect()
}

async fn land_jsonl(input: &Input, keys: Vec<String>, out: &mut BatchWriter) -> Result<()> {
    let schema = text_schema(&keys, &input.display)?;
    out.set_schema(schema.clone());
    let mut rows = TextRows::new(schema, 1024);
    let mut stream = open_lines(input).await?;
    let mut partial: Vec<u8> = Vec::new();
    let mut line_no = 0u64;
    let handle = |line: &[u8], line_no: u64, rows: &mut TextRows, out: &mut BatchWriter| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            out.blank();
            return;
        }
        match json_line_values(line, &keys) {
            Ok(values) => rows.push(line_no, values.into_iter()),
            Err(reason) => out.reject(line_no, line, &reason),
        }
    };
    loop {
        let chunk = stream.next().await;
        let eof = chunk.is_none();
        if let Some(c) = chunk {
            partial.extend_from_slice(&c?);
        }
        let mut start = 0;
        while let Some(i) = partial[start..].iter().position(|&b| b == b'\n') {
            line_no += 1;
            handle(&partial[start..start + i], line_no, &mut rows, out);
            start += i + 1;
        }
        partial.drain(..start);
        if eof && !partial.is_empty() {
            line_no += 1;
            let rest = std::mem::take(&mut partial);
            handle(&rest, line_no, &mut rows, out);
        }
        if rows.len() >= out.batch_rows || (eof && rows.len() > 0) {
            let batch = rows.take()?;
            out.write(batch).await?;
        }
        out.flush_rejects(false).await?;
        if eof {
            return Ok(());
        }
    }
}

async fn land_parquet(input: &Input, out: &mut BatchWriter) -> Result<()> {
    let mut reader = strata_publish::input::ParquetInput::open(
        input.store.clone(),
        input.path.clone(),
        input.display.clone(),
    )
    .await?;
    let names: Vec<String> = reader.schema.fields().iter().map(|f| f.name().clone()).collect();
    if names.iter().any(|n| n == LINE_COLUMN) {
        return Err(Error::Input {
            path: input.display.clone(),
            detail: format!("it has a column named {LINE_COLUMN:?}, which strata reserves for provenance; rename it"),
        });
    }
    let mut fields: Vec<Field> =
        reader.schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(LINE_COLUMN, DataType::Int64, false));
    let schema = Arc::new(Schema::new(fields));
    out.set_schema(schema.clone());
    let mut row = 0i64;
    while let Some(batch) = reader.next_batch().await? {
        let n = batch.num_rows() as i64;
        let mut columns = batch.columns().to_vec();
        columns.push(Arc::new(Int64Array::from_iter_values(row + 1..=row + n)));
        row += n;
        out.write(RecordBatch::try_new(schema.clone(), columns)?).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use object_store::memory::InMemory;

    #[test]
    fn json_values_are_landed_as_written() {
        let keys: Vec<String> = ["a", "b", "c", "d", "e", "f"].map(String::from).to_vec();
        let line = br#"{"a": 1234567890.123456789012345678, "b": 123456789012345678901234567890,
            "c": "x\"y", "d": null, "e": 1e-7, "f": true}"#;
        let line: Vec<u8> = line.iter().copied().filter(|b| *b != b'\n').collect();
        let values = json_line_values(&line, &keys).unwrap();
        assert_eq!(
            values,
            [
                Some("1234567890.123456789012345678".to_string()),
                Some("123456789012345678901234567890".to_string()),
                Some("x\"y".to_string()),
                None,
                Some("1e-7".to_string()),
                Some("true".to_string()),
            ]
        );
        assert_eq!(json_line_values(b"[1]", &keys).unwrap_err(), "not a JSON object");
        assert!(json_line_values(b"{\"a\": ", &keys).unwrap_err().starts_with("invalid JSON"));
    }

    fn input(store: &Arc<dyn ObjectStore>) -> Input {
        Input { store: store.clone(), path: Path::from("in.csv"), display: "in.csv".into() }
    }

    #[tokio::test]
    async fn an_input_is_read_whole_in_ranges() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let body: Vec<u8> = (0..(2 * READ_RANGE + 17)).map(|i| (i % 251) as u8).collect();
        store.put(&Path::from("in.csv"), body.clone().into()).await.unwrap();
        let chunks: Vec<Bytes> = open(&input(&store)).await.unwrap().try_collect().await.unwrap();
        assert_eq!(chunks.iter().map(Bytes::len).collect::<Vec<_>>(), [8 << 20, 8 << 20, 17]);
        assert_eq!(chunks.concat(), body);
    }

    #[tokio::test]
    async fn an_input_changed_while_it_is_read_is_an_error() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let path = Path::from("in.csv");
        store.put(&path, vec![b'a'; 3 * READ_RANGE as usize].into()).await.unwrap();
        let mut stream = open(&input(&store)).await.unwrap();
        store.put(&path, vec![b'b'; 3 * READ_RANGE as usize].into()).await.unwrap();
        let err = stream.next().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("changed while it was being read"), "{err}");
        assert!(err.is_user_error());
        let missing = open(&Input { path: Path::from("nope.csv"), ..input(&store) }).await;
        assert!(missing.err().map(|e| e.to_string()).unwrap_or_default().contains("no such file"));
    }
}
