//! Opening a lake from its URL.

use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::layout;
use crate::names::validate_dataset_name;

/// A lake: an object store holding datasets, and the URL it was opened from.
///
/// Every path strata uses is relative to the lake root, so the same code serves a local
/// directory, an S3 prefix or an in-memory store.
#[derive(Debug, Clone)]
pub struct Lake {
    store: Arc<dyn ObjectStore>,
    url: String,
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
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(lake_err("the URL names no bucket; use s3://bucket/prefix".into()));
            }
            let s3 = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map_err(|e| lake_err(format!("{e}; check the AWS_* variables")))?;
            let prefix = prefix.trim_matches('/');
            let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
                Arc::new(s3)
            } else {
                Arc::new(PrefixStore::new(s3, prefix))
            };
            return Ok(Lake { store, url: format!("s3://{bucket}/{prefix}") });
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
                         or point --lake (or STRATA_LAKE) at an existing lake"
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
        Ok(Lake { store: Arc::new(store), url: url.to_string() })
    }

    /// A lake over an existing store; `url` is only used in messages.
    pub fn from_store(store: Arc<dyn ObjectStore>, url: impl Into<String>) -> Lake {
        Lake { store, url: url.into() }
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The URL the lake was opened from, without credentials.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A handle on one dataset (which need not exist yet). Fails only on an invalid name.
    pub fn dataset(&self, name: &str) -> Result<Dataset> {
        validate_dataset_name(name)?;
        Ok(Dataset::new(self.clone(), name.to_string()))
    }

    /// The names of the datasets that have at least one published version, sorted.
    pub async fn datasets(&self) -> Result<Vec<String>> {
        let listing = self
            .store
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
            let pointer = layout::pointer_prefix(&name);
            let listed = self
                .store
                .list_with_delimiter(Some(&pointer))
                .await
                .map_err(|e| Error::store("list", &pointer, e))?;
            if listed.objects.iter().any(|o| layout::parse_numbered(&o.location).is_some()) {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Reads a whole object, `None` if absent.
    pub(crate) async fn get_opt(&self, path: &Path) -> Result<Option<bytes::Bytes>> {
        match self.store.get(path).await {
            Ok(r) => r.bytes().await.map(Some).map_err(|e| Error::store("read", path, e)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::store("read", path, e)),
        }
    }
}
