//! Runs of strata: the durable state machine above the transforms and the storage core.
//!
//! A run lands its sources, computes the cleaned and curated stages (`strata-medallion`),
//! validates what it staged against the control totals (`strata-reconcile`), and publishes it
//! through the versioned-output writer (`strata-publish`). This crate owns what ties those
//! together and makes them safe to kill at any moment:
//!
//! - [`run_state`]: the states a run moves through and the moves allowed;
//! - [`log`]: each run's append-only manifest log (one entry per number, create-if-absent) and
//!   the register of runs that may still need something done;
//! - [`plan`]: what a run computes over which dates, and the partitions it owns (pure);
//! - [`driver`]: running a pipeline, approving and rejecting a held run;
//! - [`validate`]: the reconciliation checks, the gates and the run's verdict (pure);
//! - [`recover`]: settling runs that stopped before a terminal state;
//! - [`shadow`]: listing, promoting and dropping shadows (`--mode shadow`).
//!
//! Locks, the deletion authority and the pointer protocol live below, in `strata-publish`.

mod error;

pub mod driver;
pub mod log;
pub mod pins;
pub mod plan;
pub mod preview;
pub mod recover;
pub mod run_state;
pub mod shadow;
pub mod validate;

pub use error::{Error, Result};
