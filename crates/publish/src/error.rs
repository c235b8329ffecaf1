//! The one error type of `strata-publish`.

/// Everything that can go wrong while reading or writing a strata lake.
///
/// Variants a caller must tell apart have their own case: [`Error::Conflict`] (another writer
/// flipped the pointer first), [`Error::UnknownCommit`] (the store did not say whether a flip
/// landed), and the user-facing problems that [`Error::is_user_error`] reports.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A dataset name, column name or partition value is not allowed.
    #[error("invalid {what} {value:?}: {reason}; nothing was written")]
    InvalidName { what: &'static str, value: String, reason: String },

    /// The dataset has no published version in this lake.
    #[error(
        "dataset {dataset:?} not found in lake {lake}; run `strata datasets` to list what exists, \
         or check --lake / STRATA_LAKE"
    )]
    DatasetNotFound { dataset: String, lake: String },

    /// The version was never published (or does not exist).
    #[error(
        "dataset {dataset:?} has no published version {version}{detail}; run `strata versions \
         {dataset}` to list the published versions"
    )]
    VersionNotFound { dataset: String, version: u64, detail: String },

    /// A JSON file of the protocol (pointer entry or version record) could not be parsed.
    #[error(
        "{path} is corrupt ({detail}); strata wrote it whole, so it was truncated or edited \
         afterwards. Restore it from a backup or a replica; nothing was modified"
    )]
    Corrupt { path: String, detail: String },

    /// A data file listed in a version record is not in the store.
    #[error(
        "data file {path} of dataset {dataset:?} version {version} is missing; run `strata verify \
         {dataset} --version {version}` for the full list, or `strata rollback` to a healthy version"
    )]
    MissingFile { dataset: String, version: u64, path: String },

    /// New data does not have the dataset's schema.
    #[error(
        "schema of {source_desc} conflicts with dataset {dataset:?}: {detail}. Publish data with \
         the dataset's schema, or pass --replace-all to replace the whole dataset with the new schema"
    )]
    SchemaConflict { dataset: String, source_desc: String, detail: String },

    /// Another writer flipped the pointer after this writer read it.
    #[error(
        "conflict: dataset {dataset:?} moved from pointer #{expected_seq} to #{found_seq} (version \
         {found_version}, run {found_run}) while {run_id} was committing; nothing from {run_id} is \
         visible. Check `strata history {dataset}`, then re-run it against the new current version"
    )]
    Conflict {
        dataset: String,
        run_id: String,
        expected_seq: u64,
        found_seq: u64,
        found_version: u64,
        found_run: String,
    },

    /// The store failed in a way that leaves it unknown whether the flip landed.
    #[error(
        "unknown commit outcome for run {run_id} on dataset {dataset:?}: {detail}. Run `strata \
         history {dataset}`: if the last flip names run {run_id} it was published, otherwise it was not"
    )]
    UnknownCommit { dataset: String, run_id: String, detail: String },

    /// Another live run holds a lock on part of this run's output.
    #[error(
        "{what} is locked by run {} (pid {} on {}, since {}): two runs may not write the same \
         partitions at once. Wait for that run to finish; if its process is gone, the next run \
         takes the lock over (at once on the same host, otherwise once its lease expires at {}). \
         `strata runs` lists the runs in flight",
        holder.run_id, holder.pid, holder.host, holder.acquired_at.to_rfc3339(),
        holder.expires_at.to_rfc3339()
    )]
    Locked { what: String, holder: Box<crate::locks::LockInfo> },

    /// The run stalled past its lock's lease and another run took the lock over.
    #[error(
        "run {run_id} lost its lock: it stalled past its lease and another run took over; \
         nothing more of it will be published. Run it again"
    )]
    LockLost { run_id: String },

    /// An input the user named cannot be read as what it should be.
    #[error("cannot read {path}: {detail}")]
    InvalidInput { path: String, detail: String },

    /// The request cannot be carried out as asked; the message says what to do instead.
    #[error("{0}")]
    Usage(String),

    /// The lake URL or its configuration is unusable.
    #[error("cannot open lake {url}: {detail}")]
    Lake { url: String, detail: String },

    /// An object store operation failed unexpectedly.
    #[error("storage error while trying to {op} {path}")]
    Store {
        op: &'static str,
        path: String,
        #[source]
        source: object_store::Error,
    },

    /// Parquet encoding or decoding failed.
    #[error("parquet error on {path}")]
    Parquet {
        path: String,
        #[source]
        source: parquet::errors::ParquetError,
    },

    /// Arrow compute failed.
    #[error("arrow error: {0}")]
    Arrow(#[from] arrow::error::ArrowError),

    /// Serialising a protocol record failed (a bug: every record is serialisable).
    #[error("cannot serialise {what}")]
    Serialize {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// `Result` with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a scheduler should do about an error: the binary turns it into an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The user asked for something impossible, or the lake needs a fix they can make.
    User,
    /// Another process holds or moved what this one needed: retry later.
    Busy,
    /// The data failed a check (a FAIL_RUN gate, reconciliation, verification): nothing was
    /// published.
    CheckFailed,
    /// Durable state needs a decision only a person can make.
    NeedsPerson,
    /// strata or the machine failed.
    Internal,
}

impl Error {
    /// What a scheduler should do about this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Locked { .. } | Error::LockLost { .. } | Error::Conflict { .. } => {
                ErrorClass::Busy
            }
            e if e.is_user_error() => ErrorClass::User,
            _ => ErrorClass::Internal,
        }
    }

    /// True when the problem lies in what the user asked for or in the state of the lake they
    /// pointed at (exit code 2), rather than in strata or the machine (exit code 1).
    pub fn is_user_error(&self) -> bool {
        match self {
            Error::InvalidName { .. }
            | Error::DatasetNotFound { .. }
            | Error::VersionNotFound { .. }
            | Error::Corrupt { .. }
            | Error::MissingFile { .. }
            | Error::SchemaConflict { .. }
            | Error::Conflict { .. }
            | Error::Locked { .. }
            | Error::LockLost { .. }
            | Error::InvalidInput { .. }
            | Error::Usage(_)
            | Error::Lake { .. } => true,
            Error::Store { source, .. } => store_error_is_user_error(source),
            Error::UnknownCommit { .. }
            | Error::Parquet { .. }
            | Error::Arrow(_)
            | Error::Serialize { .. } => false,
        }
    }

    pub fn store(op: &'static str, path: impl ToString, source: object_store::Error) -> Self {
        Error::Store { op, path: path.to_string(), source }
    }
}

/// Errors of the store that a user causes or fixes: bad credentials, missing bucket, bad path,
/// a full disk, a read-only file system.
fn store_error_is_user_error(e: &object_store::Error) -> bool {
    matches!(
        e,
        object_store::Error::NotFound { .. }
            | object_store::Error::InvalidPath { .. }
            | object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }
    ) || io_problem(e).is_some()
}

/// What a person must fix about the machine, if an IO error of that kind is among the causes of
/// `e`: the disk is full, the file system is read-only, or permission is denied.
pub fn io_problem(e: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                    return Some("the lake's storage is full");
                }
                std::io::ErrorKind::ReadOnlyFilesystem => {
                    return Some("the lake is on a read-only file system");
                }
                std::io::ErrorKind::PermissionDenied => {
                    return Some("permission to write the lake is denied");
                }
                _ => {}
            }
        }
        cur = err.source();
    }
    None
}
