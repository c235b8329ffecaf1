//! The one integration-test binary of strata-publish.
//!
//! - `conformance`: the publish-protocol conformance suite, written once as async functions over
//!   a fresh [`strata_publish::Lake`];
//! - `backends`: calls every conformance function on the in-memory store, on local disk, and on
//!   S3 when `STRATA_TEST_S3_URL` is set (the README's test command sets it);
//! - `faults`: a fault-injecting proxy between strata and the S3 test server.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod backends;
mod conformance;
mod faults;
