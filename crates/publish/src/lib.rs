//! The versioned output writer of strata, and the publish protocol it implements.
//!
//! A dataset version becomes visible all at once or not at all, and rolling back is a pointer
//! flip. The design in a few sentences:
//!
//! - A run stages Parquet files under `<dataset>/run_id=<run>/<col>=<value>/…`; readers never
//!   look there unprompted.
//! - A **version record** (`_strata/versions/<n>.json`) lists every file of the version with its
//!   size, row count and sha256, copy-on-write: partitions the run did not write are reused from
//!   the parent version by reference.
//! - The **pointer** is an append-only log of flips (`_strata/pointer/<seq>.json`), each created
//!   with create-if-absent (a numbered log, [`numbered`], like the raw log and the run logs).
//!   The entry with the greatest `seq` names the current version. Publishing and rolling back
//!   each add one entry, so concurrent writers on the same pointer entry are linearised by the
//!   store: exactly one create succeeds.
//!
//! `docs/protocol.md` specifies the layout and the protocol for other readers.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::sync::Arc;
//! use arrow::array::{Int64Array, RecordBatch, StringArray};
//! use arrow::datatypes::{DataType, Field, Schema};
//! use strata_publish::{Lake, PublishOptions, RunContext, WriterOptions};
//!
//! let lake = Lake::open("memory://", strata_publish::OpenMode::Create)?;
//! let orders = lake.dataset("orders")?;
//! let schema = Arc::new(Schema::new(vec![
//!     Field::new("day", DataType::Utf8, false),
//!     Field::new("amount", DataType::Int64, false),
//! ]));
//! let batch = RecordBatch::try_new(schema.clone(), vec![
//!     Arc::new(StringArray::from(vec!["2026-01-01", "2026-01-02"])),
//!     Arc::new(Int64Array::from(vec![10, 20])),
//! ])?;
//! let ctx = RunContext::new("run-1", chrono::DateTime::UNIX_EPOCH)?;
//! let options = WriterOptions { partition_by: vec!["day".into()], ..Default::default() };
//! let mut writer = orders.writer(&ctx, schema, options)?;
//! writer.write(&batch).await?;
//! let published = orders.publish(writer.finish().await?, &PublishOptions::default(), &ctx).await?;
//! assert_eq!(published.record.version, 1);
//! assert_eq!(orders.current().await?.summary.rows, 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

pub mod checked;
pub mod closing;
pub mod context;
pub mod crash;
mod dataset;
pub mod deletion;
pub mod error;
pub mod faults;
pub mod input;
mod lake;
pub mod layout;
pub mod locks;
pub mod model;
pub mod names;
pub mod numbered;
pub mod protocol;
pub mod shadow;
mod writer;

pub use context::RunContext;
pub use dataset::{
    Dataset, Discarded, Draft, FileProblem, Prepared, PublishOptions, Published, RollbackOutcome,
    VerifyReport, VersionListing,
};
pub use error::{Error, ErrorClass, Result};
pub use lake::{Lake, OpenMode};
pub use model::{
    FileEntry, Flip, FlipKind, PartitionEntry, RecordHead, Summary, VersionBrief, VersionRecord,
};
pub use writer::{
    partition_columns, partitionable, writer_properties, ParquetSink, Staged, StagingWriter,
    WriterOptions,
};
