//! The cleaned and curated (medallion) stages of strata, in DataFusion, and SQL over a lake.
//!
//! Design: a lake is a DataFusion catalog. Every dataset is a table at its current version, and
//! `"<dataset>@<n>"` is the same dataset at published version `n`. A table is built from the
//! exact file list of its version record (with sizes known), so nothing is listed or probed and
//! a reader can never pick up a staged file.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use strata_publish::{Lake, OpenMode};
//! let lake = Lake::open("memory://", OpenMode::Create)?;
//! let ctx = strata_medallion::session_for_lake(&lake, strata_medallion::QueryOptions::default()).await?;
//! let batches = ctx.sql("SELECT 1 + 1 AS two").await?.collect().await?;
//! assert_eq!(batches[0].num_rows(), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

mod catalog;
mod error;

pub use catalog::{
    parse_table_name, record_of, session_for_lake, QueryOptions, RawTable, VersionRef,
    VersionTable, BATCH_COLUMN, LAKE_URL,
};
pub mod check;
pub mod derive;
pub mod diff;
pub mod pipeline;
pub mod stages;
pub mod types;
mod udf;
pub use error::{Error, Result};
