//! The one integration-test binary of strata-medallion.
//!
//! - `faults`: the example pipeline, approve, reject, recover and rollback run over a store that
//!   fails its n-th write, delete, list or read (before or after it lands), for every n those
//!   operations reach; after each, recovery and a rerun must leave the uninterrupted result.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod faults;
