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
//! | `after-flip` | pointer flipped, nothing after it done (in a pipeline run: the first flip) |
//! | `land-before-manifest` | a raw batch's files written, its `_batch.json` not yet |
//! | `after-lock` | a pipeline run holds its locks, no manifest written yet |
//! | `before-flips` | a pipeline run is COMMITTING: every record prepared, no flip yet |
//! | `during-recovery` | recovery cleaned up a run, its new state not yet written |
//! | `before-retire-entry` | `strata retire`/`unretire` decided, its log entry not yet written |
//! | `after-retire-entry` | its retirement log entry written |
//!
//! `docs/protocol.md` lists them all.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The environment variable that arms a crash point: `<point>` or `<point>#<n>` (the n-th time
/// the point is reached).
pub const CRASH_ENV: &str = "STRATA_CRASH_AT";

/// The environment variable that pauses the process at a point, for concurrency tests:
/// `STRATA_PAUSE_AT=<point>:<milliseconds>`.
pub const PAUSE_ENV: &str = "STRATA_PAUSE_AT";

/// Aborts the process if `STRATA_CRASH_AT` names `point`; sleeps (blocking the thread) if
/// `STRATA_PAUSE_AT` names it.
pub fn point(point: &str) {
    static PAUSE: OnceLock<Option<(String, u64)>> = OnceLock::new();
    let pause = PAUSE.get_or_init(|| {
        let v = std::env::var(PAUSE_ENV).ok()?;
        let (p, ms) = v.rsplit_once(':')?;
        Some((p.to_string(), ms.parse().ok()?))
    });
    if let Some((p, ms)) = pause {
        if p == point {
            eprintln!("strata: pausing {ms} ms at {point:?} ({PAUSE_ENV})");
            std::thread::sleep(std::time::Duration::from_millis(*ms));
        }
    }
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    static REACHED: AtomicU64 = AtomicU64::new(0);
    let armed = ARMED.get_or_init(|| std::env::var(CRASH_ENV).ok().filter(|s| !s.is_empty()));
    let Some(armed) = armed.as_deref() else { return };
    // `<point>` aborts the first time the point is reached, `<point>#<n>` the n-th time.
    let (name, nth) = match armed.split_once('#') {
        Some((name, n)) => (name, n.parse::<u64>().unwrap_or(1)),
        None => (armed, 1),
    };
    if name == point && REACHED.fetch_add(1, Ordering::SeqCst) + 1 == nth {
        eprintln!("strata: crash point {armed:?} reached ({CRASH_ENV}); aborting");
        std::process::abort();
    }
}
