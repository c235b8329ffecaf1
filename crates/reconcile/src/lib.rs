//! Reconciliation for strata: control totals and content hashes that prove a run lost or
//! duplicated nothing before it is published.
//!
//! Design: pure functions over Arrow record batches, with no IO: row counts, exact sums of
//! declared numeric columns, business-time bounds, null counts, key counts, and order-independent
//! sha256-based hashes over keys and whole rows, combined per partition.
//!
//! This crate is filled in by the reconciliation issue. Until then, every published file already
//! carries its sha256, size and row count in the version record (see `strata verify`).
