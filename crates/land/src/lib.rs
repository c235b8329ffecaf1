//! Raw landing for strata: the immutable first layer of every pipeline.
//!
//! Design: inputs (CSV, JSON lines, Parquet) land as Parquet batches in an append-only raw layer,
//! one batch per input, each recorded with its sha256, size and row count; the same content
//! landed twice is a no-op, and no run ever rewrites or deletes raw data. Lines that cannot be
//! parsed are kept as raw text with their line number and the reason.

pub mod csv;
