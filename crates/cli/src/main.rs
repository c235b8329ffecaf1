//! `strata`: the command-line tool. This crate is only the binary: flags are parsed in `cli`,
//! resolved in `settings`, and the commands call the library crates.

mod cli;
mod close_cmds;
mod commands;
mod diff_cmds;
mod output;
mod pipeline_cmds;
mod reconcile_cmds;
mod retire_cmds;
mod run_cmds;
mod settings;
mod shadow_cmds;

use std::process::ExitCode;

use clap::Parser;

/// An error the user can act on: printed as one line, exit code 2.
#[derive(Debug)]
pub struct UserError(pub String);

impl std::fmt::Display for UserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UserError {}

/// The data failed a check the command made (verification, a comparison of totals): printed
/// as one line, exit code 3.
#[derive(Debug)]
pub struct CheckFailed(pub String);

impl std::fmt::Display for CheckFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CheckFailed {}

/// Shorthand for returning a [`CheckFailed`].
#[macro_export]
macro_rules! check_failed {
    ($($arg:tt)*) => { anyhow::Error::new($crate::CheckFailed(format!($($arg)*))) };
}

/// Shorthand for returning a [`UserError`].
#[macro_export]
macro_rules! user_error {
    ($($arg:tt)*) => { anyhow::Error::new($crate::UserError(format!($($arg)*))) };
}

/// glibc's allocator, tuned for moving data: record batches, Parquet pages and column chunks
/// are blocks of 1 to 32 MiB, allocated and freed all the time, by several threads.
///
/// - By default glibc gives every thread that allocates under contention an arena of its own (up
///   to eight per core), and memory freed in one arena is not reused by another: a sort followed
///   by a many-file write held hundreds of MiB more than it used. `M_ARENA_MAX` caps them at 2.
/// - By default glibc serves a large block from its heap, not from a mapping of its own, once a
///   block that large has been freed (the threshold rises with every such free, up to 32 MiB), and
///   the heap such blocks leave behind is not given back. `M_MMAP_THRESHOLD` fixes the threshold
///   at 1 MiB, so those blocks are mapped and unmapped.
///
/// The figures are in docs/pipeline.md ("Memory"). `MALLOC_ARENA_MAX` or `MALLOC_MMAP_THRESHOLD_`
/// set in the environment win over these. A `#[global_allocator]` such as mimalloc holds freed
/// memory longer with its defaults, and its settings are read from the environment before main.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_malloc() {
    let unset = |var: &str| std::env::var_os(var).is_none();
    // SAFETY: mallopt only changes glibc's allocator parameters, and it is called first in main,
    // before strata starts any thread.
    #[allow(unsafe_code)]
    unsafe {
        if unset("MALLOC_ARENA_MAX") {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
        if unset("MALLOC_MMAP_THRESHOLD_") {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}

fn main() -> ExitCode {
    tune_malloc();
    let cli = cli::Cli::parse();
    // At least two workers, so that lock renewal never waits behind a busy transform.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).max(2);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("strata: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    // A panic is a bug: it exits 1 like any internal error (the panic message is printed
    // above), never with the 101 a scheduler cannot tell apart.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(commands::run(cli))
    }));
    let Ok(result) = result else {
        runtime.shutdown_background();
        eprintln!(
            "error: strata stopped on an internal error (above). This is unexpected: report it \
             with the command that caused it. Nothing half-done is visible; `strata recover` \
             settles what it left"
        );
        return ExitCode::from(1);
    };
    // Do not wait for lingering background IO on the way out.
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(err) => report(&err),
    }
}

/// Exit code: a problem with what was asked for (flags, strata.toml, an unknown dataset or run)
/// or with the input or lake named; the message says what to fix.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the data failed a check (a FAIL_RUN gate, reconciliation, verification); nothing
/// was published.
pub const EXIT_CHECK_FAILED: u8 = 3;
/// Exit code: another process holds or moved what the command needed; retry later.
pub const EXIT_BUSY: u8 = 4;
/// Exit code: durable state needs a decision only a person can make (a run held for review, a
/// run left UNKNOWN, an approval whose datasets moved).
pub const EXIT_NEEDS_PERSON: u8 = 5;

/// The class of the first typed error in the chain.
fn class_of(err: &anyhow::Error) -> Option<strata_publish::ErrorClass> {
    err.chain().find_map(|e| {
        e.downcast_ref::<strata_runs::Error>()
            .map(|e| e.class())
            .or_else(|| e.downcast_ref::<strata_publish::Error>().map(|e| e.class()))
            .or_else(|| e.downcast_ref::<strata_medallion::Error>().map(|e| e.class()))
            .or_else(|| e.downcast_ref::<strata_land::Error>().map(|e| e.class()))
    })
}

/// Prints an error the way its kind deserves and picks the exit code.
fn report(err: &anyhow::Error) -> ExitCode {
    if is_broken_pipe(err) {
        return ExitCode::SUCCESS;
    }
    let code = match class_of(err) {
        Some(strata_publish::ErrorClass::Busy) => Some(EXIT_BUSY),
        Some(strata_publish::ErrorClass::NeedsPerson) => Some(EXIT_NEEDS_PERSON),
        Some(strata_publish::ErrorClass::CheckFailed) => Some(EXIT_CHECK_FAILED),
        _ if err.chain().any(|e| e.is::<CheckFailed>()) => Some(EXIT_CHECK_FAILED),
        _ => None,
    };
    if let Some(code) = code {
        eprintln!("error: {err}");
        return ExitCode::from(code);
    }
    if let Some(problem) = err.chain().find_map(strata_publish::error::io_problem) {
        let cause = err.chain().last().map(|c| c.to_string()).unwrap_or_default();
        eprintln!(
            "error: {problem} ({cause}) while trying to: {err}. Fix that, then run `strata \
             recover` (it settles anything left half done) and run the command again"
        );
        return ExitCode::from(EXIT_USAGE);
    }
    if is_user_error(err) {
        eprintln!("error: {err}");
        ExitCode::from(EXIT_USAGE)
    } else {
        eprintln!("error: {err:#}");
        eprintln!("This is unexpected. If it persists, report it with the command that caused it.");
        ExitCode::from(1)
    }
}

fn is_user_error(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<UserError>().is_some()
            || e.downcast_ref::<strata_runs::Error>()
                .is_some_and(|e| e.class() == strata_publish::ErrorClass::User)
            || e.downcast_ref::<strata_publish::Error>().is_some_and(|e| e.is_user_error())
            || e.downcast_ref::<strata_medallion::Error>().is_some_and(|e| e.is_user_error())
            || e.downcast_ref::<strata_land::Error>().is_some_and(|e| e.is_user_error())
    })
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            || e.downcast_ref::<serde_json::Error>()
                .is_some_and(|e| e.io_error_kind() == Some(std::io::ErrorKind::BrokenPipe))
            || e.downcast_ref::<arrow::error::ArrowError>().is_some_and(|e| {
                matches!(e, arrow::error::ArrowError::IoError(_, io) if io.kind() == std::io::ErrorKind::BrokenPipe)
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_or_read_only_lake_is_a_user_error_that_says_what_to_do() {
        for kind in [std::io::ErrorKind::StorageFull, std::io::ErrorKind::ReadOnlyFilesystem] {
            let io = std::io::Error::new(kind, "the disk says no");
            let store =
                object_store::Error::Generic { store: "LocalFileSystem", source: Box::new(io) };
            let err = anyhow::Error::new(strata_publish::Error::Store {
                op: "create",
                path: "orders/_strata/pointer/2.json".into(),
                source: store,
            });
            assert!(err.chain().find_map(strata_publish::error::io_problem).is_some(), "{kind:?}");
            assert_eq!(report(&err), ExitCode::from(2), "{kind:?}");
        }
        let other = anyhow::anyhow!("something else");
        assert_eq!(report(&other), ExitCode::from(1));
    }
}
