//! The one error type of `strata-land`.

use strata_publish::ErrorClass;

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

    /// More landings than strata retries for raced for the next entry of the source's log.
    #[error(
        "could not announce a batch in the log of source {raw_source}: more than {attempts} \
         landings raced for the next log entry; land again"
    )]
    LogContended { raw_source: String, attempts: u32 },

    /// More retire/unretire actions than strata retries for raced for the next entry of the
    /// source's retirement log.
    #[error(
        "could not record the action in the retirement log of source {raw_source}: more than \
         {attempts} other actions raced for its next entry; run the same command again"
    )]
    RetireContended { raw_source: String, attempts: u32 },

    /// Arrow failed building a batch.
    #[error("arrow error: {0}")]
    Arrow(#[from] arrow::error::ArrowError),

    /// Serialising a raw-layer file failed (a bug: every one is serialisable).
    #[error("cannot serialise {path}")]
    Serialize {
        path: String,
        #[source]
        source: serde_json::Error,
    },

    /// A task of strata's own stopped (it panicked or was cancelled): a bug.
    #[error("{message}")]
    Internal { message: String },
}

/// `Result` with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// What a scheduler should do about this error (see [`strata_publish::ErrorClass`]).
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Lake(e) => e.class(),
            Error::DamagedBatch { .. } => ErrorClass::CheckFailed,
            Error::LogContended { .. } | Error::RetireContended { .. } => ErrorClass::Busy,
            Error::Input { .. } | Error::Corrupt { .. } | Error::ColumnTypes { .. } => {
                ErrorClass::User
            }
            Error::Store { source, .. } => match source {
                object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. } => ErrorClass::User,
                _ => ErrorClass::Internal,
            },
            Error::Arrow(_) | Error::Serialize { .. } | Error::Internal { .. } => {
                ErrorClass::Internal
            }
        }
    }

    /// True when the user can fix it (exit code 2).
    pub fn is_user_error(&self) -> bool {
        self.class() == ErrorClass::User
    }

    pub(crate) fn store(
        op: &'static str,
        path: impl ToString,
        source: object_store::Error,
    ) -> Self {
        Error::Store { op, path: path.to_string(), source }
    }

    /// An input file that cannot be read (its permissions, say): the input's problem, named as
    /// such, not the lake's.
    pub(crate) fn unreadable_input(path: impl ToString, source: object_store::Error) -> Self {
        let mut cause: &dyn std::error::Error = &source;
        while let Some(next) = cause.source() {
            cause = next;
        }
        Error::Input {
            path: path.to_string(),
            detail: format!("cannot read it ({cause}); check that it exists and may be read"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_the_class_a_scheduler_acts_on() {
        let raced = Error::LogContended { raw_source: "orders".into(), attempts: 1000 };
        assert_eq!(raced.class(), ErrorClass::Busy);
        assert!(raced.to_string().contains("land again"), "{raced}");
        let retired = Error::RetireContended { raw_source: "orders".into(), attempts: 1000 };
        assert_eq!(retired.class(), ErrorClass::Busy);
        assert!(retired.to_string().contains("run the same command again"), "{retired}");
        let damaged = Error::DamagedBatch {
            raw_source: "orders".into(),
            batch: "ab".into(),
            input: "o.csv".into(),
            path: "p".into(),
            detail: "d".into(),
        };
        assert_eq!(damaged.class(), ErrorClass::CheckFailed);
        let bad = Error::Input { path: "o.csv".into(), detail: "no header".into() };
        assert!(bad.is_user_error());
        let bug = Error::Internal { message: "the CSV reader stopped".into() };
        assert_eq!(bug.class(), ErrorClass::Internal);
        let locked = Error::Lake(strata_publish::Error::LockLost { run_id: "r".into() });
        assert_eq!(locked.class(), ErrorClass::Busy);
    }
}
