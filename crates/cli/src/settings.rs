//! Resolving the parsed flags and the environment into what commands need.

use chrono::{DateTime, Utc};
use strata_publish::{Lake, OpenMode, RunContext};

use crate::cli::Cli;

/// The lake used when neither --lake nor STRATA_LAKE is given.
pub const DEFAULT_LAKE: &str = "./lake";

/// Overrides the run clock (RFC 3339). For reproducible examples and tests only.
pub const NOW_ENV: &str = "STRATA_NOW";

/// Settings shared by every command.
#[derive(Debug, Clone)]
pub struct Settings {
    pub lake_url: String,
}

impl Settings {
    pub fn from_cli(cli: &Cli) -> Self {
        let lake_url =
            cli.lake.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| DEFAULT_LAKE.into());
        Settings { lake_url }
    }

    /// Opens the lake and checks that its store answers (one request on S3).
    pub async fn open_lake(&self, mode: OpenMode) -> anyhow::Result<Lake> {
        let lake = Lake::open(&self.lake_url, mode)?;
        lake.probe().await?;
        Ok(lake)
    }
}

/// The run context of this invocation: the only place strata reads the clock and makes up an id.
pub fn run_context() -> anyhow::Result<RunContext> {
    let now: DateTime<Utc> = match std::env::var(NOW_ENV) {
        Ok(s) if !s.is_empty() => DateTime::parse_from_rfc3339(&s)
            .map_err(|e| crate::user_error!("{NOW_ENV}={s:?} is not an RFC 3339 time ({e}); unset it or use e.g. 2026-01-31T00:00:00Z"))?
            .with_timezone(&Utc),
        _ => Utc::now(),
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let entropy = format!("{}:{}:{}", std::process::id(), nanos, now.timestamp_micros());
    Ok(RunContext::generate(now, entropy.as_bytes()))
}
