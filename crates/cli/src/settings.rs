//! Resolving the parsed flags and the environment into what commands need.

use chrono::{DateTime, Utc};
use strata_publish::{Lake, OpenMode, RunContext};

use std::path::{Path, PathBuf};

use crate::cli::{Cli, Command};

/// The lake used when neither --lake nor STRATA_LAKE is given and no project is found.
pub const DEFAULT_LAKE: &str = "./lake";

/// The file that makes a directory a strata project.
pub const PROJECT_FILE: &str = "strata.toml";

/// Overrides the run clock (RFC 3339). For reproducible examples and tests only.
pub const NOW_ENV: &str = "STRATA_NOW";

/// Settings shared by every command.
#[derive(Debug, Clone)]
pub struct Settings {
    pub lake_url: String,
    /// The project's pipeline file: `--pipeline`, or the strata.toml found in the current
    /// directory or the nearest parent, as cargo finds its Cargo.toml.
    pub project: Option<PathBuf>,
}

impl Settings {
    /// The lake is `--lake` (or `STRATA_LAKE`) if given, else the project's (`[pipeline] lake`,
    /// or `lake` beside its strata.toml), else `./lake`: every verb finds the same lake.
    pub fn from_cli(cli: &Cli) -> anyhow::Result<Self> {
        let pipeline_flag = match &cli.command {
            Command::Run(args) => args.pipeline.clone(),
            Command::Check(args) => args.pipeline.clone(),
            Command::Plan(args) => args.run.pipeline.clone(),
            _ => None,
        };
        let project = match pipeline_flag {
            Some(p) => Some(p),
            None => std::env::current_dir().ok().and_then(|cwd| find_project(&cwd)),
        };
        let lake_flag = cli.lake.clone().filter(|s| !s.is_empty());
        let lake_url = match (lake_flag, &project) {
            (Some(lake), _) => lake,
            (None, Some(file)) => project_lake(file)?,
            (None, None) => DEFAULT_LAKE.into(),
        };
        Ok(Settings { lake_url, project })
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

/// The nearest `strata.toml` at or above `dir`.
pub fn find_project(dir: &Path) -> Option<PathBuf> {
    dir.ancestors().map(|d| d.join(PROJECT_FILE)).find(|f| f.is_file())
}

/// The lake a pipeline file names (`[pipeline] lake`, relative to the file), or `lake` beside
/// it. A file that cannot be read yields the default beside it: reading it is the run's to
/// report.
fn project_lake(file: &Path) -> anyhow::Result<String> {
    #[derive(serde::Deserialize)]
    struct Project {
        #[serde(default)]
        pipeline: Section,
    }
    #[derive(Default, serde::Deserialize)]
    struct Section {
        #[serde(default)]
        lake: Option<String>,
    }
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let Ok(text) = std::fs::read_to_string(file) else {
        return Ok(dir.join("lake").display().to_string());
    };
    let project: Project = toml::from_str(&text).map_err(|e| {
        let line = e.span().map(|s| text[..s.start].matches('\n').count() + 1);
        crate::user_error!(
            "{}{}: {}; fix it, or pass --lake to name the lake",
            file.display(),
            line.map(|l| format!(":{l}")).unwrap_or_default(),
            e.message().trim()
        )
    })?;
    Ok(match project.pipeline.lake {
        Some(lake) if lake.contains("://") || Path::new(&lake).is_absolute() => lake,
        Some(lake) => dir.join(lake).display().to_string(),
        None => dir.join("lake").display().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_project_is_found_upwards_and_names_its_lake() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        std::fs::create_dir_all(&nested).unwrap();
        let outside = find_project(dir.path());
        assert_eq!(find_project(&nested), outside, "nothing in the temp dir yet");
        let file = dir.path().join(PROJECT_FILE);
        std::fs::write(&file, "[pipeline]\nname = \"p\"\n").unwrap();
        assert_eq!(find_project(&nested), Some(file.clone()));
        assert_eq!(project_lake(&file).unwrap(), dir.path().join("lake").display().to_string());
        std::fs::write(&file, "[pipeline]\nname = \"p\"\nlake = \"data/lake\"\n").unwrap();
        assert_eq!(
            project_lake(&file).unwrap(),
            dir.path().join("data/lake").display().to_string()
        );
        std::fs::write(&file, "[pipeline]\nname = \"p\"\nlake = \"s3://b/p\"\n").unwrap();
        assert_eq!(project_lake(&file).unwrap(), "s3://b/p");
        std::fs::write(&file, "[pipeline\n").unwrap();
        let e = project_lake(&file).unwrap_err().to_string();
        assert!(e.contains("strata.toml:1") && e.contains("--lake"), "{e}");
    }
}
