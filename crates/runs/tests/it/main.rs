//! The one integration-test binary of strata-runs.
//!
//! - `log`: run manifests, the run state machine and the register of open runs;
//! - `faults`: the example pipeline, approve, reject, recover and rollback run over a store that
//!   fails its n-th write, delete, list or read (before or after it lands), for every n those
//!   operations reach; after each, recovery and a rerun must leave the uninterrupted result.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod faults;
mod log;
