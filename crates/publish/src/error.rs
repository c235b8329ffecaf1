//! The one error type of `strata-publish`.

/// Everything that can go wrong while reading or writing a strata lake.
///
/// Variants a caller must tell apart have their own case: [`Error::Conflict`] (another writer
/// flipped the pointer first), [`Error::UnknownCommit`] (the store did not say whether a flip
/// landed), the user-facing problems that [`Error::is_user_error`] reports, and so on.
/// [`Error::class`] says what a scheduler should do about each.
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

    /// A dataset had no version yet at the instant asked for.
    #[error(
        "{dataset} had no version at {at}: its first was published at {first}; ask for a later \
         time, or `strata history {dataset}` lists every flip"
    )]
    NoVersionAt { dataset: String, at: String, first: String },

    /// No shadow of that name.
    #[error(
        "no shadow named {shadow:?} in lake {lake}; `strata shadows` lists them, and `strata run \
         --mode shadow --shadow NAME` computes one"
    )]
    ShadowNotFound { shadow: String, lake: String },

    /// The shadow holds no version of the dataset asked for.
    #[error(
        "shadow {shadow:?} holds no version of {dataset:?}; it holds {}",
        holds.join(", ")
    )]
    NotInShadow { shadow: String, dataset: String, holds: Vec<String> },

    /// A shadow version cannot be made current: what it replaces changed since it was built.
    #[error(
        "cannot promote shadow {shadow:?}: {dataset}'s pointer moved since the shadow was built \
         ({moved}), and that changed partitions the shadow replaces: {}. Nothing was promoted. \
         Compute the shadow again on the current data (`strata drop-shadow {shadow}`, then the \
         shadow run again)",
        partitions.join(", ")
    )]
    PromoteConflict { shadow: String, dataset: String, moved: String, partitions: Vec<String> },

    /// A closing through an earlier date than the one in force.
    #[error(
        "{dataset} is {closing}; a closing never moves back, so --through {through} changes \
         nothing. Restate the partitions with `strata run --mode restatement --reason CODE` instead"
    )]
    ClosingBackwards { dataset: String, through: String, closing: String },

    /// A publish would change partitions of a closed period without being a restatement.
    #[error(
        "{dataset} is {closing}, and {what} would change {} closed partition(s): {}. Nothing was \
         published. If the change is wanted, run it as a restatement: `strata run … --mode \
         restatement --reason CODE [--approver NAME]`",
        partitions.len(),
        partitions.join(", ")
    )]
    ClosedPeriod { dataset: String, closing: String, what: String, partitions: Vec<String> },

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
         the dataset's schema, or replace the whole dataset with the new schema (`strata publish \
         --replace-all`, or a pipeline run without a window)"
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
    Locked { what: String, holder: Box<crate::model::LockInfo> },

    /// The run stalled past its lock's lease and another run took the lock over.
    #[error(
        "run {run_id} lost its lock: it stalled past its lease and another run took over; \
         nothing more of it will be published. Run it again"
    )]
    LockLost { run_id: String },

    /// An input the user named cannot be read as what it should be.
    #[error("cannot read {path}: {detail}")]
    InvalidInput { path: String, detail: String },

    /// The publish is partitioned otherwise than the dataset, and does not replace it whole.
    #[error(
        "dataset {dataset:?} is partitioned by [{}] but this publish is partitioned by [{}]; use \
         the dataset's partitioning, or pass --replace-all to repartition the whole dataset",
        existing.join(", "),
        requested.join(", ")
    )]
    PartitioningConflict { dataset: String, existing: Vec<String>, requested: Vec<String> },

    /// A partition column names no column of the data.
    #[error(
        "cannot partition by {column:?}: the data has no such column (columns: {})",
        columns.join(", ")
    )]
    NoSuchPartitionColumn { column: String, columns: Vec<String> },

    /// A partition column has a type that cannot name partitions.
    #[error(
        "cannot partition by {column:?} of type {data_type}: use a string, integer, date or \
         boolean column"
    )]
    UnpartitionableColumn { column: String, data_type: String },

    /// The partition columns name one column twice.
    #[error("--partition-by names {column:?} twice")]
    PartitionColumnTwice { column: String },

    /// A run staged no rows and the publish would not replace anything with them.
    #[error(
        "run {run_id} staged no rows, so there is nothing to publish; pass --replace-all to \
         publish an empty version of {dataset:?}"
    )]
    NothingToPublish { dataset: String, run_id: String },

    /// A declared key column is not in the data written.
    #[error("key column {column:?} is not in {dataset:?}; fix the key declaration")]
    MissingKeyColumn { dataset: String, column: String },

    /// The control totals (or the key order) declared for a dataset cannot be computed over its
    /// rows: a declared column is missing or of a type that cannot be totalled.
    #[error("{what} of {dataset:?}: {cause}")]
    Totals { dataset: String, what: &'static str, cause: strata_reconcile::Error },

    /// Other processes kept taking over a lock while this one tried to settle it.
    #[error("could not settle the lock {path}: it keeps changing hands; retry in a moment")]
    LockContended { path: String },

    /// Every version number a publish tried was taken by another writer.
    #[error(
        "gave up allocating a version number for {dataset:?} after {attempts} attempts; more \
         than that many writers are racing, retry later"
    )]
    VersionsExhausted { dataset: String, attempts: u64 },

    /// Other writers kept publishing first: the commit rebased as often as it may.
    #[error(
        "gave up publishing {dataset:?} after {rebases} rebases: other writers keep publishing \
         first; retry later"
    )]
    RebasesExhausted { dataset: String, rebases: u32 },

    /// strata called itself wrongly, or the store broke a promise of its contract: a bug, or a
    /// store that is not fit for a lake. The message says what was found.
    #[error("{message}")]
    Internal { message: String },

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
            Error::Locked { .. }
            | Error::LockLost { .. }
            | Error::LockContended { .. }
            | Error::Conflict { .. }
            | Error::VersionsExhausted { .. }
            | Error::RebasesExhausted { .. } => ErrorClass::Busy,
            // The run is left UNKNOWN: `strata history` (or `strata recover`) settles it.
            Error::UnknownCommit { .. } => ErrorClass::NeedsPerson,
            // Retrying does not help: a person decides whether to rebuild the shadow.
            Error::PromoteConflict { .. } | Error::ClosedPeriod { .. } => ErrorClass::NeedsPerson,
            Error::InvalidName { .. }
            | Error::DatasetNotFound { .. }
            | Error::VersionNotFound { .. }
            | Error::NoVersionAt { .. }
            | Error::ShadowNotFound { .. }
            | Error::ClosingBackwards { .. }
            | Error::NotInShadow { .. }
            | Error::Corrupt { .. }
            | Error::MissingFile { .. }
            | Error::SchemaConflict { .. }
            | Error::PartitioningConflict { .. }
            | Error::NoSuchPartitionColumn { .. }
            | Error::UnpartitionableColumn { .. }
            | Error::PartitionColumnTwice { .. }
            | Error::NothingToPublish { .. }
            | Error::MissingKeyColumn { .. }
            | Error::Totals { .. }
            | Error::InvalidInput { .. }
            | Error::Lake { .. } => ErrorClass::User,
            Error::Store { source, .. } if store_error_is_user_error(source) => ErrorClass::User,
            Error::Store { .. }
            | Error::Internal { .. }
            | Error::Parquet { .. }
            | Error::Arrow(_)
            | Error::Serialize { .. } => ErrorClass::Internal,
        }
    }

    /// True when the problem lies in what the user asked for or in the state of the lake they
    /// pointed at (exit code 2), rather than in strata or the machine (exit code 1), or in another
    /// process (see [`Error::class`]).
    pub fn is_user_error(&self) -> bool {
        self.class() == ErrorClass::User
    }

    /// An invariant of strata's own that did not hold (see [`Error::Internal`]).
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Error::Internal { message: message.into() }
    }

    pub fn store(op: &'static str, path: impl ToString, source: object_store::Error) -> Self {
        Error::Store { op, path: path.to_string(), source }
    }
}

/// An error with its sources, on one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_the_class_a_scheduler_acts_on() {
        let busy = [
            Error::LockContended { path: "_strata/locks/x".into() },
            Error::VersionsExhausted { dataset: "d".into(), attempts: 3 },
            Error::RebasesExhausted { dataset: "d".into(), rebases: 3 },
            Error::LockLost { run_id: "r".into() },
        ];
        for e in &busy {
            assert_eq!(e.class(), ErrorClass::Busy, "{e}");
            assert!(!e.is_user_error(), "{e}");
            assert!(e.to_string().contains("retry") || e.to_string().contains("again"), "{e}");
        }
        let unknown =
            Error::UnknownCommit { dataset: "d".into(), run_id: "r".into(), detail: "x".into() };
        assert_eq!(unknown.class(), ErrorClass::NeedsPerson);
        let user = [
            Error::PartitioningConflict {
                dataset: "d".into(),
                existing: vec!["a".into()],
                requested: vec!["b".into(), "c".into()],
            },
            Error::NoSuchPartitionColumn { column: "x".into(), columns: vec!["a".into()] },
            Error::UnpartitionableColumn { column: "x".into(), data_type: "Float64".into() },
            Error::PartitionColumnTwice { column: "x".into() },
            Error::NothingToPublish { dataset: "d".into(), run_id: "r".into() },
            Error::MissingKeyColumn { dataset: "d".into(), column: "k".into() },
        ];
        for e in &user {
            assert_eq!(e.class(), ErrorClass::User, "{e}");
            assert!(e.is_user_error(), "{e}");
        }
        assert_eq!(
            user[0].to_string(),
            "dataset \"d\" is partitioned by [a] but this publish is partitioned by [b, c]; use \
             the dataset's partitioning, or pass --replace-all to repartition the whole dataset"
        );
        assert_eq!(
            user[1].to_string(),
            "cannot partition by \"x\": the data has no such column (columns: a)"
        );
        let bug = Error::internal("staged files belong to run a but the context is run b");
        assert_eq!(bug.class(), ErrorClass::Internal);
        assert_eq!(bug.to_string(), "staged files belong to run a but the context is run b");
    }
}
