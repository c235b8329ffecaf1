//! Opening a lake from its URL.

use std::sync::Arc;

use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ClientConfigKey, RetryConfig};
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::de::DeserializeOwned;

use crate::error::{error_chain, Error, Result};
use crate::model::{PartitionEntry, RecordHead};

/// A lake: an object store holding datasets, and the URL it was opened from.
///
/// Every path strata uses is relative to the lake root, so the same code serves a local
/// directory, an S3 prefix or an in-memory store.
#[derive(Debug, Clone)]
pub struct Lake {
    store: Arc<dyn ObjectStore>,
    url: String,
    /// Version records already parsed, by path, with the entity tag they were read at.
    records: Arc<RecordCache>,
    /// Dataset → the greatest pointer entry this process saw: where the next look for the
    /// current entry starts (entries are never removed, so it stays a lower bound).
    heads: Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>,
}

/// Parsed version records by path, with the entity tag of the object each was read from. A read
/// asks the store for the object only if its tag changed (`If-None-Match`), so a record, which
/// lists every partition of a version, is parsed once per process however often it is read, and
/// never served stale: a record deleted and written again has a new tag.
#[derive(Debug, Default)]
pub(crate) struct RecordCache {
    entries: std::sync::Mutex<std::collections::HashMap<String, (String, Arc<RecordHead>)>>,
    /// Chunks of partition lists by path. A chunk is written once and never changed while a
    /// record names it, so it is read once per process.
    chunks: std::sync::Mutex<std::collections::HashMap<String, Arc<Vec<PartitionEntry>>>>,
}

impl RecordCache {
    pub(crate) fn get(&self, path: &Path) -> Option<(String, Arc<RecordHead>)> {
        self.entries.lock().ok()?.get(path.as_ref()).cloned()
    }

    pub(crate) fn chunk(&self, path: &str) -> Option<Arc<Vec<PartitionEntry>>> {
        self.chunks.lock().ok()?.get(path).cloned()
    }

    pub(crate) fn put_chunk(&self, path: &str, parts: Arc<Vec<PartitionEntry>>) {
        if let Ok(mut chunks) = self.chunks.lock() {
            chunks.insert(path.to_string(), parts);
        }
    }

    pub(crate) fn forget_chunk(&self, path: &str) {
        if let Ok(mut chunks) = self.chunks.lock() {
            chunks.remove(path);
        }
    }

    pub(crate) fn put(&self, path: &Path, e_tag: Option<String>, record: Arc<RecordHead>) {
        if let Ok(mut entries) = self.entries.lock() {
            match e_tag {
                Some(tag) => entries.insert(path.to_string(), (tag, record)),
                None => entries.remove(path.as_ref()),
            };
        }
    }

    pub(crate) fn forget(&self, path: &Path) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(path.as_ref());
        }
    }
}

/// Whether opening a lake may create it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// The lake must exist (read commands).
    Existing,
    /// A missing local directory is created (write commands).
    Create,
}

impl Lake {
    /// Opens a lake from a URL:
    ///
    /// - a path (`./lake`, `/data/lake`) or `file:///data/lake`: a local directory;
    /// - `s3://bucket/prefix`: S3 or an S3-compatible server, configured from the standard
    ///   `AWS_*` variables (`AWS_ENDPOINT`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
    ///   `AWS_SECRET_ACCESS_KEY`, `AWS_ALLOW_HTTP`), with conditional PUT on;
    /// - `memory://`: a fresh in-memory store (tests and experiments).
    pub fn open(url: &str, mode: OpenMode) -> Result<Lake> {
        let lake_err = |detail: String| Error::Lake { url: url.to_string(), detail };
        if let Some(rest) = url.strip_prefix("s3://") {
            if rest.split('/').next().unwrap_or("").is_empty() {
                return Err(lake_err("the URL names no bucket; use s3://bucket/prefix".into()));
            }
            return Lake::open_s3_with(url, &[]);
        }
        if url == "memory://" || url == "memory:" {
            return Ok(Lake::from_store(Arc::new(InMemory::new()), "memory://"));
        }
        if let Some(scheme_end) = url.find("://") {
            let scheme = &url[..scheme_end];
            if scheme != "file" {
                return Err(lake_err(format!(
                    "the scheme {scheme:?} is not supported; use a local path or s3://bucket/prefix"
                )));
            }
        }
        let local = url.strip_prefix("file://").unwrap_or(url);
        let dir = std::path::Path::new(local);
        if !dir.exists() {
            match mode {
                OpenMode::Existing => {
                    return Err(lake_err(
                        "the directory does not exist; publish or land something to create it, \
                         or point --lake (or STRATA_LAKE) at an existing lake. Inside a project \
                         (a directory with a strata.toml, or below one) the lake is the \
                         project's"
                            .into(),
                    ))
                }
                OpenMode::Create => std::fs::create_dir_all(dir)
                    .map_err(|e| lake_err(format!("cannot create the directory: {e}")))?,
            }
        }
        if !dir.is_dir() {
            return Err(lake_err("it is not a directory".into()));
        }
        let store = LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| lake_err(format!("{e}")))?
            .with_automatic_cleanup(true);
        Ok(Lake::from_store(Arc::new(store), url))
    }

    /// Opens an `s3://` lake with extra configuration on top of the `AWS_*` variables, for
    /// example `[("aws_endpoint", "http://127.0.0.1:9000")]`. Keys are object_store's
    /// `AmazonS3ConfigKey` names.
    pub fn open_s3_with(url: &str, overrides: &[(&str, &str)]) -> Result<Lake> {
        let lake_err = |detail: String| Error::Lake { url: url.to_string(), detail };
        let rest = url.strip_prefix("s3://").ok_or_else(|| lake_err("not an s3:// URL".into()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let s3 = s3_builder(bucket, overrides)?
            .build()
            .map_err(|e| lake_err(format!("{e}; check the AWS_* variables")))?;
        let prefix = prefix.trim_matches('/');
        let store: Arc<dyn ObjectStore> =
            if prefix.is_empty() { Arc::new(s3) } else { Arc::new(PrefixStore::new(s3, prefix)) };
        Ok(Lake::from_store(store, format!("s3://{bucket}/{prefix}")))
    }

    /// Checks that the lake's store answers, with one cheap request, and turns the usual
    /// misconfigurations (unreachable endpoint, missing bucket, bad credentials) into one clear
    /// [`Error::Lake`]. Local and in-memory lakes need no check.
    pub async fn probe(&self) -> Result<()> {
        if !self.url.starts_with("s3://") {
            return Ok(());
        }
        let lake_err = |detail: String| Error::Lake { url: self.url.clone(), detail };
        match self.store.list_with_delimiter(None).await {
            Ok(_) => Ok(()),
            Err(e) => {
                let text = error_chain(&e);
                let endpoint = std::env::var("AWS_ENDPOINT")
                    .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
                    .unwrap_or_else(|_| "the AWS default endpoint".into());
                Err(lake_err(
                    if text.contains("NoSuchBucket")
                        || matches!(e, object_store::Error::NotFound { .. })
                    {
                        "the bucket does not exist; create it, or fix the bucket name in the URL"
                            .into()
                    } else if matches!(
                        e,
                        object_store::Error::PermissionDenied { .. }
                            | object_store::Error::Unauthenticated { .. }
                    ) || text.contains("InvalidAccessKeyId")
                        || text.contains("SignatureDoesNotMatch")
                    {
                        "access denied; check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into()
                    } else {
                        format!(
                        "cannot reach {endpoint} ({}); check AWS_ENDPOINT and AWS_ALLOW_HTTP, and \
                         that the server is running",
                        root_cause(&e)
                    )
                    },
                ))
            }
        }
    }

    /// A lake over an existing store; `url` is only used in messages.
    pub fn from_store(store: Arc<dyn ObjectStore>, url: impl Into<String>) -> Lake {
        Lake { store, url: url.into(), records: Arc::default(), heads: Arc::default() }
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The size of the parts a large file is uploaded in, and so what a file being written holds
    /// in memory: 5 MiB on S3 (its smallest part), 256 KiB on local disk and in memory (a write
    /// there costs a system call, not a request; a clean stage may write a hundred files at once).
    pub fn upload_part_size(&self) -> usize {
        if self.url.starts_with("s3://") {
            5 * 1024 * 1024
        } else {
            256 * 1024
        }
    }

    /// The URL the lake was opened from, without credentials.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every object under `prefix`, recursively.
    pub async fn list_paths(&self, prefix: &Path) -> Result<Vec<Path>> {
        use futures::TryStreamExt;
        self.store
            .list(Some(prefix))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(|e| Error::store("list", prefix, e))
    }

    /// Reads a whole object, `None` if absent.
    pub(crate) fn records(&self) -> &RecordCache {
        &self.records
    }

    /// The greatest pointer entry of `dataset` seen by this process, if any.
    pub(crate) fn seen_head(&self, dataset: &str) -> Option<u64> {
        self.heads.lock().ok()?.get(dataset).copied()
    }

    pub(crate) fn saw_head(&self, dataset: &str, seq: u64) {
        if let Ok(mut heads) = self.heads.lock() {
            let e = heads.entry(dataset.to_string()).or_insert(seq);
            *e = (*e).max(seq);
        }
    }

    pub(crate) fn forget_head(&self, dataset: &str) {
        if let Ok(mut heads) = self.heads.lock() {
            heads.remove(dataset);
        }
    }

    /// Whether an object exists (one HEAD).
    pub async fn exists(&self, path: &Path) -> Result<bool> {
        match self.store.head(path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(Error::store("check", path, e)),
        }
    }

    pub async fn get_opt(&self, path: &Path) -> Result<Option<bytes::Bytes>> {
        match self.store.get(path).await {
            Ok(r) => r.bytes().await.map(Some).map_err(|e| Error::store("read", path, e)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::store("read", path, e)),
        }
    }

    /// Reads a JSON object, `None` if absent; [`Error::Corrupt`] if it does not parse (strata
    /// writes every object whole, so it was changed afterwards).
    pub async fn read_json<T: DeserializeOwned>(&self, path: &Path) -> Result<Option<T>> {
        let Some(bytes) = self.get_opt(path).await? else { return Ok(None) };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Corrupt { path: path.to_string(), detail: e.to_string() })
    }

    /// Creates the object at `path` with `body` unless one is there (create-if-absent:
    /// `PutMode::Create`, on S3 `If-None-Match: *`). `true` if this call created it; `false` if
    /// an object was there (another writer's, or an earlier attempt's whose answer was lost:
    /// read it back to tell). Of concurrent creates of one path exactly one gets `true`.
    pub async fn create_if_absent(&self, path: &Path, body: Vec<u8>) -> Result<bool> {
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.store.put_opts(path, PutPayload::from(body), opts).await {
            Ok(_) => Ok(true),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(false),
            Err(e) => Err(Error::store("create", path, e)),
        }
    }
}

/// The S3 client configuration strata uses: the standard `AWS_*` variables, conditional PUT on
/// (`If-None-Match`), bounded retries with exponential backoff for 5xx answers, timeouts and
/// connection errors, then `overrides`.
fn s3_builder(bucket: &str, overrides: &[(&str, &str)]) -> Result<AmazonS3Builder> {
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_conditional_put(S3ConditionalPut::ETagMatch)
        .with_retry(RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(3),
                base: 2.0,
            },
            max_retries: 6,
            retry_timeout: Duration::from_secs(60),
        });
    if std::env::var_os("AWS_CONNECT_TIMEOUT").is_none() {
        builder =
            builder.with_config(AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout), "5s");
    }
    if std::env::var_os("AWS_TIMEOUT").is_none() {
        builder = builder.with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), "60s");
    }
    for (key, value) in overrides {
        let key: AmazonS3ConfigKey = key.parse().map_err(|e| Error::Lake {
            url: format!("s3://{bucket}"),
            detail: format!("unknown S3 setting {key:?}: {e}"),
        })?;
        builder = builder.with_config(key, *value);
    }
    Ok(builder)
}

/// The innermost source of an error: the part that names the actual cause.
fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}
