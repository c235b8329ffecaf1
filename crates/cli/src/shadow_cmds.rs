//! `strata shadows`, `strata promote` and `strata drop-shadow`.

use std::io::Write;
use std::process::ExitCode;

use serde_json::json;
use strata_publish::OpenMode;
use strata_runs::shadow;

use crate::cli::{DropShadowArgs, PromoteArgs, ShadowsArgs};
use crate::output;
use crate::run_cmds::wall_clock;
use crate::settings::Settings;

pub async fn shadows(
    settings: &Settings,
    args: ShadowsArgs,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let lake = settings.open_lake(OpenMode::Existing).await?;
    if let Some(d) = &args.dataset {
        lake.dataset(d)?;
    }
    let found = shadow::list(&lake, args.dataset.as_deref()).await?;
    if args.json {
        output::json(out, &json!({ "shadows": found }))?;
        return Ok(ExitCode::SUCCESS);
    }
    if found.is_empty() {
        writeln!(
            out,
            "no shadows{}; `strata run --mode shadow --shadow NAME` computes one",
            args.dataset.as_deref().map(|d| format!(" of {d}")).unwrap_or_default()
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = Vec::new();
    for s in &found {
        for (d, v) in &s.datasets {
            let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("v{v}"));
            rows.push(vec![
                s.name.clone(),
                match s.state {
                    strata_runs::run_state::RunState::Shadowed => "shadowed".into(),
                    strata_runs::run_state::RunState::Published => "promoted".into(),
                    strata_runs::run_state::RunState::Failed => "dropped".into(),
                    other => other.to_string(),
                },
                d.clone(),
                format!("v{}", v.version),
                opt(v.base_version),
                opt(v.current),
                opt(v.promoted_as),
                s.run_id.clone(),
                s.diffs.to_string(),
            ]);
        }
    }
    output::table(
        out,
        &[
            "shadow",
            "state",
            "dataset",
            "version",
            "built on",
            "current",
            "promoted as",
            "run",
            "diffs",
        ],
        &rows,
    )?;
    Ok(ExitCode::SUCCESS)
}

pub async fn promote(
    settings: &Settings,
    args: PromoteArgs,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let lake = settings.open_lake(OpenMode::Existing).await?;
    let lease = strata_publish::locks::lease_from_env();
    let done =
        shadow::promote(&lake, &args.name, args.reason.clone(), wall_clock(), wall_clock, lease)
            .await?;
    if args.json {
        output::json(out, &done)?;
        return Ok(ExitCode::SUCCESS);
    }
    if done.already {
        writeln!(out, "shadow {} was promoted already; nothing to do", done.name)?;
    }
    for (d, p) in &done.datasets {
        let how = if p.rebased {
            format!(
                "v{} (the shadow's v{} merged onto versions published since it was built)",
                p.published, p.shadow_version
            )
        } else {
            format!("v{}", p.published)
        };
        writeln!(out, "{d}: {how} is current")?;
    }
    if !done.already {
        writeln!(
            out,
            "promoted shadow {} (run {}); `strata history <dataset>` shows each flip, `strata \
             rollback` undoes it",
            done.name, done.run_id
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn drop_shadow(
    settings: &Settings,
    args: DropShadowArgs,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let lake = settings.open_lake(OpenMode::Existing).await?;
    let lease = strata_publish::locks::lease_from_env();
    let done = shadow::drop_shadow(&lake, &args.name, wall_clock(), wall_clock, lease).await?;
    if args.json {
        output::json(out, &done)?;
    } else if done.was_promoted {
        writeln!(
            out,
            "dropped the name of shadow {} (run {}); its versions were promoted and stay published",
            done.name, done.run_id
        )?;
    } else {
        writeln!(
            out,
            "dropped shadow {} (run {}): removed {} object(s); nothing current changed",
            done.name, done.run_id, done.removed
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
