//! The one integration-test binary of the `strata` CLI: every test runs the real binary.
//!
//! - `harness`: running the binary on a temporary lake, writing input Parquet, snapshotting a lake;
//! - `land`: raw landing of CSV, JSON lines and Parquet;
//! - `pipeline`: `strata run` on the example pipeline, and `strata init`;
//! - `publish_flow`: publish, versions, history, rollback, query, verify, files end to end;
//! - `bad_input`: every kind of bad input gets one clear line, exit code 2, and changes nothing;
//! - `backfill`: backfill modes: shadow, diff, promote (conflicts, rebases, crash points),
//!   dry-run and compare-only, dropping a shadow;
//! - `flights`: the flights example end to end (references, pinning, derive, partition_by);
//! - `diff`: `strata diff` (classification, duplicates, tolerance, fast path, thresholds);
//! - `exit_codes`: the exit-code contract, one case per class;
//! - `crash`: the real binary aborted at named crash points leaves the published state untouched;
//! - `quality`: reconciliation and quality gates by severity, `strata reconcile`;
//! - `races`: operators racing each other: approve/reject, approve/approve, stale approvals,
//!   recovery after a rollback;
//! - `retire`: retiring a landed batch and putting it back;
//! - `runs`: run manifests, recovery, locks and reruns; the crash matrix with random kills;
//! - `s3`: S3 configuration errors and credential hygiene.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod backfill;
mod bad_input;
mod crash;
mod diff;
mod exit_codes;
mod flights;
mod harness;
mod land;
mod pipeline;
mod publish_flow;
mod quality;
mod races;
mod retire;
mod runs;
mod s3;
