//! `strata runs`, `strata show-run` and `strata recover`: the operator's view of run manifests.

use std::io::Write;
use std::process::ExitCode;

use strata_publish::locks::lease_from_env;
use strata_publish::{Lake, OpenMode, RunContext};
use strata_runs::log::{list_runs, run_log, RunManifest};
use strata_runs::recover::{recover, RecoveryReport};
use strata_runs::run_state::RunState;

use crate::cli::{RecoverArgs, RunsArgs, ShowRunArgs};
use crate::output;
use crate::settings::{run_context, Settings};
use crate::user_error;

/// The wall clock, for lock leases.
pub fn wall_clock() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

pub async fn runs(
    settings: &Settings,
    args: RunsArgs,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let status: Option<RunState> = match &args.status {
        Some(s) => Some(s.parse().map_err(|e: String| user_error!("--status: {e}"))?),
        None => None,
    };
    let lake = settings.open_lake(OpenMode::Existing).await?;
    let mut runs: Vec<RunManifest> = list_runs(&lake)
        .await?
        .into_iter()
        .filter(|m| status.is_none_or(|s| m.state == s))
        .collect();
    runs.sort_by(|a, b| b.run_id.cmp(&a.run_id));
    if args.json {
        output::json(out, &runs)?;
        return Ok(ExitCode::SUCCESS);
    }
    if runs.is_empty() {
        writeln!(
            out,
            "no runs{} in lake {}",
            status.map(|s| format!(" in state {s}")).unwrap_or_default(),
            lake.url()
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|m| {
            vec![
                m.run_id.clone(),
                m.state.to_string(),
                m.pipeline
                    .as_ref()
                    .map(|(n, v)| format!("{n}@{}", &v[..v.len().min(12)]))
                    .unwrap_or_default(),
                window_text(m),
                m.times.get(RunState::Planned.as_str()).map(output::time).unwrap_or_default(),
                published_text(m),
            ]
        })
        .collect();
    output::table(
        out,
        &["RUN", "STATE", "PIPELINE", "WINDOW", "STARTED", "PUBLISHED / ERROR"],
        &rows,
    )?;
    Ok(ExitCode::SUCCESS)
}

fn window_text(m: &RunManifest) -> String {
    match &m.params.window {
        Some(w) => format!("{}..{}", w.from, w.to),
        None => "all dates".into(),
    }
}

fn published_text(m: &RunManifest) -> String {
    if let Some(e) = &m.error {
        let line = e.lines().next().unwrap_or("");
        return if line.chars().count() > 80 {
            format!("{}…", line.chars().take(80).collect::<String>())
        } else {
            line.to_string()
        };
    }
    let list = |v: &std::collections::BTreeMap<String, u64>| {
        v.iter().map(|(d, v)| format!("{d} v{v}")).collect::<Vec<_>>().join(", ")
    };
    match (&m.shadow, m.state) {
        (Some(s), RunState::Shadowed) => format!("shadow {}: {}", s.name, list(&s.versions)),
        (Some(s), RunState::Published) => {
            format!("{} (shadow {} promoted)", list(&m.published), s.name)
        }
        _ if m.state == RunState::Discarded => format!("{} diff(s), nothing kept", m.diffs.len()),
        _ => list(&m.published),
    }
}

pub async fn show_run(
    settings: &Settings,
    args: ShowRunArgs,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let lake = settings.open_lake(OpenMode::Existing).await?;
    let log = run_log(&lake, &args.run_id).await?;
    if args.json {
        output::json(out, &log)?;
        return Ok(ExitCode::SUCCESS);
    }
    let m = log.last().expect("run_log is never empty");
    writeln!(out, "run        {}", m.run_id)?;
    writeln!(out, "state      {}", m.state)?;
    if let Some((name, version)) = &m.pipeline {
        writeln!(out, "pipeline   {name} (version {version})")?;
    }
    let only = match m.params.only.as_slice() {
        [] => String::new(),
        only => format!(" --only {}", only.join(",")),
    };
    let force = if m.params.force { " --force" } else { "" };
    writeln!(out, "mode       {} ({}){only}{force}", m.mode, window_text(m))?;
    if !m.params.backfill.is_replace() {
        writeln!(out, "backfill   {}", m.params.backfill.as_str())?;
    }
    if let Some(s) = &m.shadow {
        let versions: Vec<String> = s.versions.iter().map(|(d, v)| format!("{d} v{v}")).collect();
        writeln!(out, "shadow     {}: {}", s.name, versions.join(", "))?;
    }
    if let Some(p) = &m.promotion {
        let why = p.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
        writeln!(out, "promoted   {} by {}{why}", output::time(&p.at), p.by)?;
    }
    for d in &m.diffs {
        writeln!(out, "{}", crate::diff_cmds::one_line(d))?;
    }
    if let Some(p) = &m.process {
        writeln!(out, "process    {p}")?;
    }
    if let Some(k) = &m.run_key {
        writeln!(out, "run key    {k}")?;
    }
    writeln!(out, "states")?;
    for e in &log {
        let at = m.times.get(&e.state.to_string()).map(output::time).unwrap_or_default();
        if e.entry == 1 || log.get(e.entry as usize - 2).is_some_and(|p| p.state != e.state) {
            writeln!(out, "  {:<13} {at}", e.state.to_string())?;
        }
    }
    writeln!(out, "inputs     {} raw batch(es)", m.input_boundary.len())?;
    for b in &m.input_boundary {
        writeln!(out, "  {}  batch {}  {} rows", b.source, b.batch_id, b.rows)?;
    }
    writeln!(out, "outputs")?;
    for (ds, keys) in &m.output_boundary {
        let owned = match keys.len() {
            0 => "the whole dataset".to_string(),
            1 => keys[0].clone(),
            n => format!("{n} partitions, {} .. {}", keys[0], keys[n - 1]),
        };
        let version = match (m.published.get(ds), m.prepared.get(ds)) {
            (Some(v), _) => format!("  -> published v{v}"),
            (None, Some(v)) => format!("  (prepared v{v}, not published)"),
            _ => String::new(),
        };
        writeln!(out, "  {ds}: {owned}{version}")?;
    }
    if !m.stages.is_empty() {
        writeln!(out, "stages")?;
        for s in &m.stages {
            let reused =
                s.reused_from.as_ref().map(|r| format!("  (reused from {r})")).unwrap_or_default();
            writeln!(
                out,
                "  {:<6} {:<22} in {:>8}  out {:>8}  quarantined {:>6}  duplicates {:>6}{reused}",
                s.stage, s.dataset, s.rows_in, s.rows_out, s.quarantined, s.duplicates
            )?;
        }
    }
    for b in &m.reference_data {
        let from = if b.run_id == m.run_id {
            "computed by this run".to_string()
        } else {
            format!("published by run {}", b.run_id)
        };
        let as_in = match b.as_in.as_slice() {
            [] => String::new(),
            runs => format!(", as run {} read it", runs.join(", ")),
        };
        let hash = b
            .row_hash
            .as_deref()
            .map(|h| format!(", rows {}", h.chars().take(16).collect::<String>()));
        writeln!(
            out,
            "reads      {} v{} ({}: {from}{as_in}{})",
            b.dataset,
            b.version,
            b.policy,
            hash.unwrap_or_default()
        )?;
    }
    if !m.checks.is_empty() {
        let passed = m.checks.iter().filter(|c| c.ok).count();
        writeln!(out, "checks     {passed} of {} passed", m.checks.len())?;
        for c in m.checks.iter().filter(|c| !c.ok) {
            writeln!(out, "  FAILED {} {}: {}", c.dataset, c.check, c.detail)?;
        }
    }
    if !m.checkpoints.is_empty() {
        let files: usize = m.checkpoints.iter().map(|c| c.files().count()).sum();
        writeln!(
            out,
            "checkpoints {} stage output(s), {files} file(s) kept for a rerun",
            m.checkpoints.len()
        )?;
    }
    if let Some(e) = &m.error {
        writeln!(out, "error      {e}")?;
    }
    if let Some(r) = &m.recovery {
        writeln!(out, "recovery   by {} from {}", r.by, r.from)?;
        for e in &r.evidence {
            writeln!(out, "  {e}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn recover_cmd(
    settings: &Settings,
    args: RecoverArgs,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let lake = settings.open_lake(OpenMode::Existing).await?;
    let ctx = run_context()?;
    let report = recover(&lake, args.run.as_deref(), &ctx, wall_clock, lease_from_env()).await?;
    if args.json {
        output::json(out, &report)?;
    } else {
        print_recovery(&report, out)?;
        if report.recovered.is_empty()
            && report.live.is_empty()
            && report.stale_locks_removed.is_empty()
        {
            writeln!(out, "nothing to recover: every run is PUBLISHED or FAILED")?;
        }
    }
    let unknown = report.recovered.iter().any(|r| r.to == RunState::Unknown);
    Ok(if unknown { ExitCode::from(crate::EXIT_NEEDS_PERSON) } else { ExitCode::SUCCESS })
}

/// Recovers stopped runs before a new run starts; prints what it did.
pub async fn recover_before_run(
    lake: &Lake,
    ctx: &RunContext,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let report = recover(lake, None, ctx, wall_clock, lease_from_env()).await?;
    print_recovery(&report, out)?;
    Ok(())
}

fn print_recovery(report: &RecoveryReport, out: &mut impl Write) -> anyhow::Result<()> {
    for r in &report.recovered {
        writeln!(out, "recovered run {}: {} -> {}: {}", r.run_id, r.from, r.to, r.action)?;
        for e in &r.evidence {
            writeln!(out, "  {e}")?;
        }
    }
    if !report.stale_locks_removed.is_empty() {
        writeln!(
            out,
            "removed {} stale lock(s) left by processes that died",
            report.stale_locks_removed.len()
        )?;
    }
    for l in &report.live {
        writeln!(out, "left run {} ({}) alone: {}", l.run_id, l.state, l.holder)?;
    }
    Ok(())
}
