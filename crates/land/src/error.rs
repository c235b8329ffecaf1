//! The one error type of `strata-land`.

/// What can go wrong while landing raw data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A lake problem (names, storage).
    #[error(transparent)]
    Lake(#[from] strata_publish::Error),

    /// An input cannot be landed as a whole (unreadable, no header, unknown format).
    #[error("cannot land {path}: {detail}")]
    Input { path: String, detail: String },

    /// A raw-layer file strata wrote cannot be parsed.
    #[error(
        "{path} is corrupt ({detail}); raw-layer files are written whole, so it was changed \
         afterwards. Restore it from a backup"
    )]
    Corrupt { path: String, detail: String },

    /// The data file of a raw batch is not what its manifest records (size or sha256): it was
    /// damaged after landing, and reading it would publish whatever it now says.
    #[error(
        "raw batch {batch} of source {raw_source} (input {input}) is damaged: {path} {detail}; \
         restore that file from a backup, or delete the directory of batch {batch} under \
         _raw/{raw_source}/ and land {input} again with `strata land {raw_source} <file> --rehash`"
    )]
    DamagedBatch { raw_source: String, batch: String, input: String, path: String, detail: String },

    /// Raw batches of a source disagree on the type of a column that is read, and one of the
    /// types cannot be read as text to reconcile them (see [`crate::columns::TypeConflict`],
    /// whose `error` writes `detail`: both batches, their inputs and types, and what to do).
    #[error("column {column:?} of source {raw_source} {detail}")]
    ColumnTypes { raw_source: String, column: String, detail: String },

    /// An object store operation failed unexpectedly.
    #[error("storage error while trying to {op} {path}")]
    Store {
        op: &'static str,
        path: String,
        #[source]
        source: object_store::Error,
    },

    /// Arrow failed building a batch.
    #[error("arrow error: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

/// `Result` with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// True when the user can fix it (exit code 2).
    pub fn is_user_error(&self) -> bool {
        match self {
            Error::Lake(e) => e.is_user_error(),
            Error::Input { .. }
            | Error::Corrupt { .. }
            | Error::DamagedBatch { .. }
            | Error::ColumnTypes { .. } => true,
            Error::Store { source, .. } => matches!(
                source,
                object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
            ),
            Error::Arrow(_) => false,
        }
    }

    pub(crate) fn store(
        op: &'static str,
        path: impl ToString,
        source: object_store::Error,
    ) -> Self {
        Error::Store { op, path: path.to_string(), source }
    }
}
