//! The one error type of `strata-medallion`.

use datafusion::error::DataFusionError;

/// What can go wrong while planning or running SQL over a lake.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A lake or dataset problem (not found, corrupt, missing file…).
    #[error(transparent)]
    Lake(#[from] strata_publish::Error),

    /// A control total cannot be computed (a column that does not sum exactly, an overflow).
    #[error(transparent)]
    Totals(#[from] strata_reconcile::Error),

    /// A raw-landing problem.
    #[error(transparent)]
    Land(strata_land::Error),

    /// The SQL does not parse or does not plan (unknown table or column, type error…).
    #[error("{message}")]
    Sql { message: String },

    /// The data fails a quality gate whose severity stops the run.
    #[error("{message}")]
    Quality { message: String },

    /// A landed batch lacks columns the contract requires (not null, the key, the business
    /// date): its rows cannot be cleaned, and nothing was staged.
    #[error(
        "cleaned.{dataset}: {file} (batch {batch}) has no column {}, which the contract requires; \
         nothing was run. Fix the file and land it again, or make the column nullable in the \
         contract",
        columns.join(", ")
    )]
    MissingColumns { dataset: String, file: String, batch: String, columns: Vec<String> },

    /// A snapshot source delivered a file whose content is an earlier batch, not the latest one
    /// it reads.
    #[error(transparent)]
    SnapshotReverted(Box<SnapshotReverted>),

    /// An expression failed on the data (a division by zero, a cast or parse that fails).
    #[error("the query failed on its data: {cause}; change the SQL, for example with NULLIF or TRY_CAST")]
    FailedOnData { cause: String },

    /// What a stage wrote does not reconcile with what it read: nothing was published.
    #[error("{message}")]
    Reconciliation { message: String },

    /// An invariant of strata's own code failed (a bug): the message says where.
    #[error("{message}; this is a bug in strata: please report it")]
    Internal { message: String },

    /// A data file named by the version record is missing from the store.
    #[error(
        "a data file is missing ({detail}); run `strata verify <dataset>` to list every missing \
         or changed file, or `strata rollback` to a healthy version"
    )]
    MissingFile { detail: String },

    /// The work needed more memory than the pool allows.
    #[error(
        "the run needed more memory than its memory_limit allows ({detail}); raise \
         pipeline.memory_limit in strata.toml, or run a smaller window with --date / --from"
    )]
    OutOfMemory { detail: String },

    /// A data file failed strata's read check (size or block checksum).
    #[error("{message}")]
    Damaged { message: String },

    /// A data file of the lake cannot be read as Parquet.
    #[error(
        "a data file cannot be read as Parquet ({detail}); it was damaged after it was written. \
         Run `strata verify <dataset>` to find it, then `strata rollback` to a healthy version or \
         restore the file"
    )]
    CorruptFile { detail: String },

    /// Execution failed.
    #[error("query failed")]
    DataFusion(#[source] DataFusionError),
}

/// A snapshot file whose content is an earlier batch of its source, not the latest one.
#[derive(Debug, thiserror::Error)]
#[error(
    "sources.{raw_source}: {file} holds exactly the rows of batch {batch} (landed earlier from \
     {landed_from}), but a snapshot source reads its latest batch, {latest} (from \
     {latest_from}); nothing was run. If {file} is the table now, retire the newer batch \
     (`strata retire {raw_source} {latest_from} --reason ...`); if it was delivered by mistake, \
     move it out of the source's path"
)]
pub struct SnapshotReverted {
    pub raw_source: String,
    pub file: String,
    pub batch: String,
    pub landed_from: String,
    pub latest: String,
    pub latest_from: String,
}

/// `Result` with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// What a scheduler should do about this error (see [`strata_publish::ErrorClass`]).
    pub fn class(&self) -> strata_publish::ErrorClass {
        match self {
            Error::Lake(e) => e.class(),
            Error::Land(e) => e.class(),
            Error::Quality { .. }
            | Error::Damaged { .. }
            | Error::Reconciliation { .. }
            | Error::MissingColumns { .. }
            | Error::SnapshotReverted(_) => strata_publish::ErrorClass::CheckFailed,
            e if e.is_user_error() => strata_publish::ErrorClass::User,
            _ => strata_publish::ErrorClass::Internal,
        }
    }

    /// True when the user can fix it (exit code 2).
    pub fn is_user_error(&self) -> bool {
        match self {
            Error::Lake(e) => e.is_user_error(),
            Error::Land(e) => e.is_user_error(),
            Error::Sql { .. }
            | Error::Quality { .. }
            | Error::MissingColumns { .. }
            | Error::SnapshotReverted(_)
            | Error::Reconciliation { .. }
            | Error::FailedOnData { .. }
            | Error::Totals(_)
            | Error::MissingFile { .. }
            | Error::OutOfMemory { .. }
            | Error::Damaged { .. }
            | Error::CorruptFile { .. } => true,
            Error::DataFusion(_) | Error::Internal { .. } => false,
        }
    }
}

impl From<datafusion::arrow::error::ArrowError> for Error {
    fn from(e: datafusion::arrow::error::ArrowError) -> Self {
        Error::DataFusion(DataFusionError::ArrowError(Box::new(e), None))
    }
}

impl From<DataFusionError> for Error {
    fn from(e: DataFusionError) -> Self {
        classify(e)
    }
}

/// Sorts a DataFusion error into what the user did wrong and what went wrong underneath.
fn classify(e: DataFusionError) -> Error {
    match e {
        DataFusionError::External(inner) => match inner.downcast::<strata_publish::Error>() {
            Ok(lake) => Error::Lake(*lake),
            Err(other) => Error::DataFusion(DataFusionError::External(other)),
        },
        DataFusionError::Context(ctx, inner) => match classify(*inner) {
            Error::DataFusion(inner) => {
                Error::DataFusion(DataFusionError::Context(ctx, Box::new(inner)))
            }
            other => other,
        },
        DataFusionError::Diagnostic(diagnostic, inner) => match classify(*inner) {
            Error::DataFusion(inner) => {
                Error::DataFusion(DataFusionError::Diagnostic(diagnostic, Box::new(inner)))
            }
            other => other,
        },
        DataFusionError::Collection(mut errors) if !errors.is_empty() => classify(errors.remove(0)),
        DataFusionError::Shared(inner) => match std::sync::Arc::try_unwrap(inner) {
            Ok(inner) => classify(inner),
            Err(shared) => Error::DataFusion(DataFusionError::Shared(shared)),
        },
        DataFusionError::ObjectStore(os) => match *os {
            object_store::Error::NotFound { path, .. } => Error::MissingFile { detail: path },
            other => Error::DataFusion(DataFusionError::ObjectStore(Box::new(other))),
        },
        DataFusionError::ParquetError(pq) => {
            let text = pq.to_string();
            if let Some(message) = damaged_file(&text) {
                Error::Damaged { message }
            } else if text.contains("NotFound") || text.contains("not found") {
                Error::MissingFile { detail: text }
            } else {
                Error::CorruptFile { detail: text }
            }
        }
        // What the data makes an expression fail on (a division by zero, a cast or parse that
        // fails, an overflow): the query's, so the user's to fix.
        DataFusionError::ArrowError(e, _)
            if matches!(
                *e,
                datafusion::arrow::error::ArrowError::DivideByZero
                    | datafusion::arrow::error::ArrowError::CastError(_)
                    | datafusion::arrow::error::ArrowError::ParseError(_)
                    | datafusion::arrow::error::ArrowError::ArithmeticOverflow(_)
                    | datafusion::arrow::error::ArrowError::ComputeError(_)
            ) =>
        {
            Error::FailedOnData { cause: e.to_string() }
        }
        DataFusionError::ResourcesExhausted(detail) => {
            Error::OutOfMemory { detail: detail.lines().next().unwrap_or_default().to_string() }
        }
        e @ (DataFusionError::SQL(..)
        | DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(_)) => Error::Sql { message: sql_message(&e) },
        other => {
            let text = other.to_string();
            if let Some(message) = damaged_file(&text) {
                Error::Damaged { message }
            } else if text.contains("Object at location") && text.contains("not found") {
                Error::MissingFile { detail: text }
            } else {
                Error::DataFusion(other)
            }
        }
    }
}

/// The message of strata's own read check ([`strata_publish::checked`]) inside an error's text.
fn damaged_file(text: &str) -> Option<String> {
    let start = text.find("data file ")?;
    let rest = &text[start..];
    rest.contains(" is damaged: ").then(|| {
        let end = rest
            .find(strata_publish::checked::DAMAGED_HINT)
            .map_or(rest.len(), |i| i + strata_publish::checked::DAMAGED_HINT.len());
        rest[..end].to_string()
    })
}

/// A one-line SQL error with a hint on what to do.
fn sql_message(e: &DataFusionError) -> String {
    let text = e.strip_backtrace();
    let text = text.lines().next().unwrap_or_default().to_string();
    let hint = if text.contains("table") && text.contains("not found") {
        "; `strata datasets` lists the tables, and \"name@N\" reads version N"
    } else {
        "; check the SQL (DataFusion dialect; quote names like \"cleaned.orders\" or \"orders@3\")"
    };
    format!("SQL error: {text}{hint}")
}
