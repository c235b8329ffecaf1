//! Named crash points, for proving crash safety on the real binary.
//!
//! When the environment variable `STRATA_CRASH_AT` names a point, the process aborts (as abruptly
//! as `kill -9`: no destructors, no flushing) the first time it reaches that point. Points:
//!
//! | point | where |
//! |---|---|
//! | `mid-file-write` | after the first bytes of a data file were handed to the store |
//! | `after-stage` | all data files written, no version record yet |
//! | `after-version-record` | version record written, pointer not flipped |
//! | `after-flip` | pointer flipped, nothing after it done |
//!
//! Later stages add their own points; `docs/protocol.md` lists them all.

use std::sync::OnceLock;

/// The environment variable that arms a crash point.
pub const CRASH_ENV: &str = "STRATA_CRASH_AT";

/// Aborts the process if `STRATA_CRASH_AT` names `point`.
pub fn point(point: &str) {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var(CRASH_ENV).ok().filter(|s| !s.is_empty()));
    if armed.as_deref() == Some(point) {
        eprintln!("strata: crash point {point:?} reached ({CRASH_ENV}); aborting");
        std::process::abort();
    }
}
