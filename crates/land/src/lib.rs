//! Raw landing for strata: the immutable first layer of every pipeline.
//!
//! Design: inputs (CSV, JSON lines, Parquet) land as Parquet batches in an append-only raw layer,
//! one batch per input, named by the sha256 of the input's bytes and recorded with its size and
//! row count; the same content landed twice is a no-op, and no run ever rewrites or deletes raw
//! data. CSV and JSON lines land as text columns (types come later, from the cleaned stage's
//! contract); every row carries `_line`, the input line it came from. Lines that cannot be
//! parsed are kept, byte for byte, with their line number and the reason.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::sync::Arc;
//! use object_store::{memory::InMemory, path::Path, ObjectStoreExt};
//! use strata_land::{land, Input, LandOptions, LandOutcome};
//! use strata_publish::{Lake, OpenMode, RunContext};
//!
//! let files = Arc::new(InMemory::new());
//! files.put(&Path::from("orders.csv"), "id,amount\n1,10\n2,oops,3\n".into()).await?;
//! let input = Input { store: files, path: Path::from("orders.csv"), display: "orders.csv".into() };
//! let lake = Lake::open("memory://", OpenMode::Create)?;
//! let ctx = RunContext::new("run-1", chrono::DateTime::UNIX_EPOCH)?;
//! let LandOutcome::Landed(batch) = land(&lake, "orders", &input, &LandOptions::default(), &ctx).await? else { panic!() };
//! assert_eq!((batch.rows, batch.rejected), (1, 1));
//! // The same content again is a no-op.
//! assert!(matches!(land(&lake, "orders", &input, &LandOptions::default(), &ctx).await?, LandOutcome::AlreadyLanded(_)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

pub mod columns;
pub mod csv;
mod error;
mod index;
mod inputs;
mod landing;
mod layout;
pub mod line_ends;
mod raw_log;
pub mod retire;
mod verify;

pub use columns::{read_columns, TypeConflict};
pub use error::{Error, Result};
pub use index::{
    identity_settled, index_path, input_identity, land_indexed, local_inputs, DateRange, Indexed,
    InputIdentity, SourceIndex, INDEX_CHUNK_FORMAT, INDEX_FORMAT, SETTLE_TIME,
};
pub use inputs::{expand_inputs, expand_inputs_allow_empty};
pub use landing::{
    json_line_values, land, list_sources, rejects_schema, BatchManifest, Input, InputFormat,
    InputInfo, LandOptions, LandOutcome, BATCH_FORMAT, LINE_COLUMN,
};
pub use layout::{batch_dir, manifest_path, source_prefix, RAW_DIR};
pub use verify::{check_file, verify_batch, verify_batches, FileCheck};
