//! `strata`: the command-line tool. This crate is only the binary: flags are parsed in `cli`,
//! resolved in `settings`, and the commands call the library crates.

mod cli;
mod commands;
mod output;
mod pipeline_cmds;
mod reconcile_cmds;
mod run_cmds;
mod settings;

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

/// Shorthand for returning a [`UserError`].
#[macro_export]
macro_rules! user_error {
    ($($arg:tt)*) => { anyhow::Error::new($crate::UserError(format!($($arg)*))) };
}

/// glibc gives every thread that allocates under contention an arena of its own (up to eight per
/// core), and memory freed in one arena is not reused by another: a sort followed by a
/// many-file write can hold hundreds of MiB more than it uses. For the commands that move data
/// (`run`, `land`), strata caps the arenas at 2 by starting itself again (same process id) with
/// `MALLOC_ARENA_MAX=2`, unless the variable is already set; set it to override. Other commands
/// do not pay the few milliseconds of a second start.
fn cap_malloc_arenas() {
    use std::os::unix::process::CommandExt;
    const VAR: &str = "MALLOC_ARENA_MAX";
    if std::env::var_os(VAR).is_some() || !cfg!(target_env = "gnu") {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    // `exec` only returns on failure; then strata simply runs with the default arenas.
    let _ = std::process::Command::new(exe).args(std::env::args_os().skip(1)).env(VAR, "2").exec();
}

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    if matches!(cli.command, cli::Command::Run(_) | cli::Command::Land(_)) {
        cap_malloc_arenas();
    }
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
    let result = runtime.block_on(commands::run(cli));
    // Do not wait for lingering background IO on the way out.
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(err) => report(&err),
    }
}

/// Prints an error the way its kind deserves and picks the exit code.
fn report(err: &anyhow::Error) -> ExitCode {
    if is_broken_pipe(err) {
        return ExitCode::SUCCESS;
    }
    if is_user_error(err) {
        eprintln!("error: {err}");
        ExitCode::from(2)
    } else {
        eprintln!("error: {err:#}");
        eprintln!("This is unexpected. If it persists, report it with the command that caused it.");
        ExitCode::from(1)
    }
}

fn is_user_error(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<UserError>().is_some()
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
