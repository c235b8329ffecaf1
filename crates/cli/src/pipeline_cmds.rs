//! `strata run` and `strata init`.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use chrono::NaiveDate;
use strata_medallion::pipeline::Pipeline;
use strata_medallion::stages::{RunOptions, StageReport, Window};
use strata_medallion::types::{Backfill, StageKind};
use strata_publish::OpenMode;
use strata_runs::driver::run_pipeline;

use crate::cli::{InitArgs, Mode, RunArgs};
use crate::output;
use crate::settings::{run_context, Settings};
use crate::user_error;

fn date(flag: &str, s: &str) -> anyhow::Result<NaiveDate> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|e| {
        user_error!("{flag} {s:?} is not a date ({e}); use YYYY-MM-DD, e.g. 2026-01-31")
    })
}

/// The longest window a run takes: longer is a typo in a year, not a backfill.
const MAX_WINDOW_DAYS: i64 = 36_525;

/// The project's pipeline, loaded and checked: its definition, and every model's SQL planned
/// against the columns its inputs will have, before anything is landed.
async fn checked_pipeline(settings: &Settings) -> anyhow::Result<Pipeline> {
    let pipeline = project_pipeline(settings)?;
    let references = reference_schemas(settings, &pipeline).await?;
    let problems = strata_medallion::check::plan_models(&pipeline, &references).await;
    if let Some(first) = problems.first() {
        let more = match problems.len() {
            1 => String::new(),
            n => format!(" ({} more problem(s): `strata check` lists them all)", n - 1),
        };
        return Err(user_error!("{first}{more}; nothing was run"));
    }
    Ok(pipeline)
}

/// The schema of each reference's current version in the lake (`None`: not published, or no
/// lake yet). The lake is only opened when the pipeline has references.
async fn reference_schemas(
    settings: &Settings,
    pipeline: &Pipeline,
) -> anyhow::Result<std::collections::BTreeMap<String, Option<arrow::datatypes::Schema>>> {
    let mut out = std::collections::BTreeMap::new();
    if pipeline.references.is_empty() {
        return Ok(out);
    }
    let lake = settings.open_lake(OpenMode::Existing).await.ok();
    for (name, def) in &pipeline.references {
        let schema = match (&lake, def.version) {
            // Pinned: the models will read that version, with its schema.
            (Some(lake), Some(v)) => match lake.dataset(name)?.published_head(v).await {
                Ok(h) => Some(h.schema.clone()),
                Err(e) => {
                    return Err(user_error!(
                        "references.{name} is pinned to version {v}, which cannot be read ({e}); \
                         `strata versions {name}` lists its versions: pin one that is published; \
                         nothing was run"
                    ))
                }
            },
            (Some(lake), None) => {
                lake.dataset(name)?.current_head().await?.map(|h| h.schema.clone())
            }
            (None, _) => None,
        };
        out.insert(name.clone(), schema);
    }
    Ok(out)
}

/// The project's pipeline file, loaded.
fn project_pipeline(settings: &Settings) -> anyhow::Result<Pipeline> {
    let Some(file) = &settings.project else {
        return Err(user_error!(
            "no {} here or in any parent directory; pass --pipeline FILE, or create one with \
             `strata init`",
            crate::settings::PROJECT_FILE
        ));
    };
    Pipeline::load(file).map_err(|e| user_error!("{e}"))
}

/// `strata plan`: what `strata run` with the same arguments would do, and why; writes nothing.
pub async fn plan(
    settings: &Settings,
    args: crate::cli::PlanArgs,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let pipeline = checked_pipeline(settings).await?;
    if args.graph {
        print_graph(out, &pipeline)?;
        return Ok(ExitCode::SUCCESS);
    }
    let options = run_options(&pipeline, &args.run)?;
    let lake = settings.open_lake(OpenMode::Existing).await.map_err(|e| {
        user_error!(
            "{e}; a first `strata run` creates the lake and lands every file, there is nothing \
             to plan against yet"
        )
    })?;
    let preview = strata_runs::preview::preview(&lake, &pipeline, &options).await?;
    if args.run.json {
        crate::output::json(out, &preview)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "plan of a run of pipeline {} ({}) over {}{}",
        pipeline.settings.name,
        &pipeline.version[..12],
        lake.url(),
        match options.window {
            Some(w) => format!(", business dates {} to {}", w.from, w.to),
            None => ", every business date found".into(),
        }
    )?;
    for s in &preview.sources {
        writeln!(
            out,
            "source   {:<20} {} file(s), {} new or changed, {} batch(es) landed",
            s.source,
            s.files,
            s.new_files.len(),
            s.landed_batches
        )?;
        for f in &s.new_files {
            writeln!(out, "  new    {f}")?;
        }
    }
    for (name, n) in &preview.batches {
        writeln!(out, "reads    {name:<20} {n} landed batch(es)")?;
    }
    for (name, b) in &preview.bindings {
        match b {
            strata_runs::pins::Resolved::Version { version, how, as_in } => {
                let as_in = if as_in.is_empty() {
                    String::new()
                } else {
                    format!(", as run {} read it", as_in.join(", "))
                };
                writeln!(out, "binds    {name} v{version} ({how}{as_in})")?
            }
            strata_runs::pins::Resolved::Latest => {
                writeln!(out, "binds    {name}: the version this run computes")?
            }
        }
    }
    for step in &preview.steps {
        match &step.whole {
            Some(why) => writeln!(out, "writes   {:<20} whole: {}", step.dataset, why_text(why))?,
            None => {
                writeln!(
                    out,
                    "writes   {:<20} {} partition(s)",
                    step.dataset,
                    step.partitions.len()
                )?;
                for (key, why) in &step.partitions {
                    writeln!(out, "  {key:<40} {}", why_text(why))?;
                }
            }
        }
    }
    for (d, c) in &preview.closed {
        let what = if c.whole {
            "it replaces the dataset whole".to_string()
        } else {
            format!("{} closed partition(s): {}", c.partitions.len(), c.partitions.join(", "))
        };
        writeln!(
            out,
            "closed   {d} is {}; {what}. The run fails if their rows change, unless it runs with \
             --mode restatement --reason CODE",
            c.closing.describe()
        )?;
    }
    let noop = match &preview.noop {
        strata_runs::preview::NoOp::Yes { run_id } => {
            format!("a no-op: run {run_id} already published exactly this (--force runs anyway)")
        }
        strata_runs::preview::NoOp::No => "computes and publishes".into(),
        strata_runs::preview::NoOp::AfterLanding => {
            "computes and publishes (new files: whether they change anything is known once they \
             are landed)"
                .into()
        }
    };
    writeln!(out, "the run  {noop}")?;
    Ok(ExitCode::SUCCESS)
}

fn why_text(why: &strata_runs::plan::Why) -> String {
    use strata_runs::plan::Why;
    match why {
        Why::InWindow => "in the window".into(),
        Why::Undated => "quarantined rows without a date (every windowed run owns them)".into(),
        Why::Lookback => "a lookback day (late data)".into(),
        Why::WholeMonth => "month grain: the window's whole month".into(),
        Why::Downstream { inputs } => {
            format!("downstream of {} recomputed on that date", inputs.join(", "))
        }
        Why::Spillover { reads_days } => {
            format!("rolling-window spillover (reads_days = {reads_days})")
        }
        Why::FullRun => "a run without a window replaces it".into(),
        Why::NoBusinessDate => "no business date: computed whole".into(),
        Why::ReadWhole { by } => format!("read whole by {}: computed whole", by.join(", ")),
    }
}

/// The dataset graph: sources → cleaned datasets → models (and references), as text and as a
/// Mermaid flowchart.
fn print_graph(out: &mut impl Write, p: &Pipeline) -> anyhow::Result<()> {
    let mut edges: Vec<(String, String)> = Vec::new();
    for (name, c) in &p.cleaned {
        edges.push((format!("source {}", c.source), name.clone()));
    }
    for (m, deps) in &p.model_deps {
        for d in deps {
            edges.push((d.clone(), m.clone()));
        }
    }
    for (from, to) in &edges {
        writeln!(out, "{from} -> {to}")?;
    }
    writeln!(out)?;
    writeln!(out, "```mermaid")?;
    writeln!(out, "flowchart LR")?;
    let id = |n: &str| n.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
    for (from, to) in &edges {
        writeln!(out, "  {}[\"{from}\"] --> {}[\"{to}\"]", id(from), id(to))?;
    }
    writeln!(out, "```")?;
    Ok(())
}

/// `strata check`: every problem of the pipeline, one a line.
pub async fn check(settings: &Settings, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let pipeline = project_pipeline(settings)?;
    let references = reference_schemas(settings, &pipeline).await?;
    let problems = strata_medallion::check::plan_models(&pipeline, &references).await;
    for p in &problems {
        writeln!(out, "{p}")?;
    }
    let file = pipeline.file.display();
    if !problems.is_empty() {
        return Err(user_error!("{file}: {} problem(s) found", problems.len()));
    }
    writeln!(
        out,
        "ok: {file}: {} source(s), {} cleaned dataset(s), {} model(s); every model plans",
        pipeline.sources.len(),
        pipeline.cleaned.len(),
        pipeline.models.len()
    )?;
    Ok(ExitCode::SUCCESS)
}

/// The options of a run (or of its plan): the window asked for, widened by the lookback days.
fn run_options(pipeline: &Pipeline, args: &RunArgs) -> anyhow::Result<RunOptions> {
    let requested = match (&args.date, &args.from, &args.to) {
        (Some(d), _, _) => {
            let d = date("--date", d)?;
            Some(Window { from: d, to: d })
        }
        (None, Some(f), Some(t)) => {
            let (from, to) = (date("--from", f)?, date("--to", t)?);
            if from > to {
                return Err(user_error!("--from {from} is after --to {to}; swap them"));
            }
            let days = (to - from).num_days() + 1;
            if days > MAX_WINDOW_DAYS {
                return Err(user_error!(
                    "--from {from} --to {to} spans {days} days; a window covers at most \
                     {MAX_WINDOW_DAYS} (100 years). Check the years, or leave out --from and \
                     --to to recompute every date found in the input"
                ));
            }
            Some(Window { from, to })
        }
        _ => None,
    };
    // The lookback recomputes the days before the window, to pick up late data.
    let window = requested.map(|w| Window {
        from: w.from - chrono::Duration::days(pipeline.settings.lookback_days.into()),
        to: w.to,
    });
    if args.mode != Mode::Restatement && (args.reason.is_some() || args.approver.is_some()) {
        return Err(user_error!(
            "--reason and --approver go with --mode restatement; add --mode restatement"
        ));
    }
    let backfill = match (args.mode, &args.shadow) {
        (Mode::Shadow, Some(name)) => {
            strata_publish::shadow::validate_shadow_name(name)?;
            Backfill::Shadow { name: name.clone() }
        }
        (Mode::Shadow, None) => {
            return Err(user_error!(
                "--mode shadow needs --shadow NAME: the name readers and `strata promote` use, \
                 e.g. --shadow fix-123"
            ))
        }
        (_, Some(_)) => {
            return Err(user_error!("--shadow NAME goes with --mode shadow; add --mode shadow"))
        }
        (Mode::Restatement, None) => match &args.reason {
            Some(reason) if !reason.trim().is_empty() => {
                Backfill::Restatement { reason: reason.clone(), approver: args.approver.clone() }
            }
            _ => {
                return Err(user_error!(
                    "--mode restatement needs --reason CODE: why closed partitions change, \
                     recorded with the restatement (e.g. --reason LATE-REFUNDS)"
                ))
            }
        },
        (Mode::Replace, None) => Backfill::Replace,
        (Mode::DryRun, None) => Backfill::DryRun,
        (Mode::CompareOnly, None) => Backfill::CompareOnly,
    };
    Ok(RunOptions {
        backfill,
        window,
        only: args
            .only
            .iter()
            .map(|o| if args.downstream && !o.ends_with('+') { format!("{o}+") } else { o.clone() })
            .collect(),
        memory_limit: pipeline.memory_limit().map_err(|e| user_error!("{e}"))?,
        target_partitions: 0,
        force: args.force,
        adopt: args.adopt.clone(),
        refresh_references: args.refresh_references,
        lease: strata_publish::locks::lease_from_env(),
        clock: Some(crate::run_cmds::wall_clock),
    })
}

pub async fn run(
    settings: &Settings,
    args: RunArgs,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let pipeline = checked_pipeline(settings).await?;
    let options = run_options(&pipeline, &args)?;
    let window = options.window;
    let lake = settings.open_lake(OpenMode::Create).await?;
    let ctx = run_context()?;
    let total = pipeline.sources.len() + pipeline.cleaned.len() + pipeline.models.len();
    let tty = std::io::stderr().is_terminal() && !args.json;
    if !args.json {
        writeln!(
            out,
            "run {} of pipeline {} ({}) into {}{}",
            ctx.run_id(),
            pipeline.settings.name,
            &pipeline.version[..12],
            lake.url(),
            match window {
                Some(w) => format!(", business dates {} to {}", w.from, w.to),
                None => ", every business date found".into(),
            }
        )?;
        out.flush()?;
    }
    // Settle runs that stopped before finishing, so that this one starts from a clean lake.
    if args.json {
        crate::run_cmds::recover_before_run(&lake, &ctx, &mut std::io::stderr()).await?;
    } else {
        crate::run_cmds::recover_before_run(&lake, &ctx, out).await?;
    }
    if args.rehash {
        strata_medallion::stages::forget_input_identities(&lake, &pipeline).await?;
    }
    let mut lines: Vec<String> = Vec::new();
    let mut quarantined: Vec<String> = Vec::new();
    let mut done = 0usize;
    let mut progress = |r: &StageReport| {
        done += 1;
        lines.push(stage_line(r));
        quarantined.extend(reasons_line(r));
        if tty {
            let width = 30;
            let filled = width * done.min(total) / total.max(1);
            eprint!(
                "\r[{}{}] {done}/{total} {} {}\x1b[K",
                "#".repeat(filled),
                "-".repeat(width - filled),
                r.stage,
                r.dataset
            );
        }
    };
    let reports = run_pipeline(&lake, &pipeline, &options, &ctx, &mut progress).await;
    if tty {
        eprint!("\r\x1b[K");
    }
    let summary = match reports {
        Ok(s) => s,
        Err(e) => {
            for l in lines.iter().chain(&quarantined) {
                writeln!(out, "{l}")?;
            }
            let state = strata_runs::log::latest_entry(&lake, ctx.run_id())
                .await
                .ok()
                .flatten()
                .map(|m| m.state);
            // A FAILED run published nothing and its error says what to do; any other state
            // needs recovery.
            let hint = match state {
                Some(strata_runs::run_state::RunState::Failed) | None => String::new(),
                Some(other) => format!(
                    "run {} is {other}; run `strata recover --run {}` to settle it",
                    ctx.run_id(),
                    ctx.run_id()
                ),
            };
            if !hint.is_empty() {
                eprintln!("{}", hint.trim_start());
            }
            return Err(e.into());
        }
    };
    if args.json {
        output::json(
            out,
            &serde_json::json!({
                "run_id": ctx.run_id(),
                "pipeline_version": pipeline.version,
                "state": summary.state,
                "already_published_by": summary.already_published_by,
                "published": summary.published,
                "shadow": summary.shadow,
                "diffs": summary.diffs,
                "notes": summary.notes,
                "stages": summary.stages,
            }),
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    for l in lines.iter().chain(&quarantined) {
        writeln!(out, "{l}")?;
    }
    if let Some(previous) = &summary.already_published_by {
        writeln!(
            out,
            "nothing to do: run {previous} already published exactly this (pipeline version {}, \
             the same parameters and inputs) and its versions are still current ({}). Pass \
             --force to publish it again",
            &pipeline.version[..12],
            summary
                .published
                .iter()
                .map(|(d, v)| format!("{d} v{v}"))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    for f in summary.stages.iter().flat_map(|r| &r.findings) {
        writeln!(out, "{:<17} {} {}: {}", f.severity, f.dataset, f.source, f.detail)?;
    }
    if summary.state == strata_runs::run_state::RunState::AwaitingReview {
        writeln!(
            out,
            "run {id} is AWAITING_REVIEW: its output is staged and checked, and held for a \
             person (MANUAL_REVIEW: {why}). `strata approve {id}` publishes it, `strata reject \
             {id}` discards it",
            id = summary.run_id,
            why = summary.notes.join("; ")
        )?;
        // Not a success: nothing was published, and a person has to decide.
        return Ok(ExitCode::from(crate::EXIT_NEEDS_PERSON));
    }
    let total_ms: u64 = summary.stages.iter().map(|r| r.millis).sum();
    let versions =
        summary.published.iter().map(|(d, v)| format!("{d} v{v}")).collect::<Vec<_>>().join(", ");
    let secs = total_ms as f64 / 1000.0;
    match (summary.state, &summary.shadow) {
        (strata_runs::run_state::RunState::Shadowed, Some(name)) => {
            writeln!(
                out,
                "run {} SHADOWED {versions} as shadow {name} in {secs:.1} s; nothing current \
                 changed. Read it as \"<dataset>@shadow:{name}\", compare it with `strata diff \
                 <dataset> \"<dataset>@shadow:{name}\"`, then `strata promote {name}` or \
                 `strata drop-shadow {name}`",
                summary.run_id
            )?;
        }
        (strata_runs::run_state::RunState::Discarded, _) => {
            for d in &summary.diffs {
                writeln!(out, "{}", crate::diff_cmds::one_line(d))?;
            }
            for n in &summary.notes {
                writeln!(out, "note: {n}")?;
            }
            let what = match options.backfill {
                Backfill::CompareOnly => {
                    "computed, validated and compared; the report is kept in \
                                          its manifest (`strata show-run`), nothing else"
                }
                _ => "computed and validated; nothing was kept",
            };
            writeln!(out, "run {} DISCARDED in {secs:.1} s: {what}", summary.run_id)?;
        }
        _ => {
            writeln!(out, "run {} PUBLISHED {versions} in {secs:.1} s", summary.run_id)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// For a cleaned stage that quarantined rows: its top reasons with their counts, and the query
/// that shows them.
fn reasons_line(r: &StageReport) -> Option<String> {
    if r.quarantine_reasons.is_empty() {
        return None;
    }
    let mut top: Vec<(&String, &u64)> = r.quarantine_reasons.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let shown: Vec<String> = top.iter().take(3).map(|(rule, n)| format!("{n} {rule}")).collect();
    let more =
        if top.len() > 3 { format!(" and {} more rule(s)", top.len() - 3) } else { String::new() };
    Some(format!(
        "quarantine {}: {}{more}; strata query 'SELECT * FROM \"{}.quarantine\" ORDER BY _rule'",
        r.dataset,
        shown.join(", "),
        r.dataset
    ))
}

fn stage_line(r: &StageReport) -> String {
    let mut s =
        format!("{:<6} {:<22} in {:>7}  out {:>7}", r.stage, r.dataset, r.rows_in, r.rows_out);
    match r.stage {
        StageKind::Land => s.push_str(&format!("  rejected {:>5}  {}", r.quarantined, r.note)),
        StageKind::Clean => {
            s.push_str(&format!(
                "  quarantined {:>5}  duplicates {:>5}",
                r.quarantined, r.duplicates
            ));
            if r.withheld > 0 {
                s.push_str(&format!(
                    "  withheld {} in {} failed partition(s)",
                    r.withheld,
                    r.failed_partitions.len()
                ));
            }
        }
        StageKind::Model => {}
    }
    if let Some(from) = &r.reused_from {
        s.push_str(&format!("  reused from run {from}"));
    }
    if let Some(v) = r.version {
        s.push_str(&format!("  -> v{v} ({} partition(s))", r.partitions));
    }
    if let Some(w) = r.window {
        s.push_str(&format!("  {}..{}", w.from, w.to));
    }
    s.push_str(&format!("  {} ms", r.millis));
    s
}

const INIT_TOML: &str = r#"# A small pipeline to start from: orders exports -> cleaned orders -> daily revenue.
# Run it with `strata run`; see `strata run --help`.

[pipeline]
name = "starter"
lookback_days = 1

[sources.orders]
path = "data/orders/*.csv"

[cleaned.orders]
source = "orders"
key = ["order_id"]
latest_by = "updated_at"
business_date = "order_date"
columns = { order_id = "bigint not null", order_date = "date not null", amount = "decimal(12,2) not null", updated_at = "timestamp" }
rules = [
  { name = "amount_positive", range = { column = "amount", min = 0 } },
]
# More than 30% of the rows quarantined fails the run and publishes nothing (without a
# max_quarantine_rate gate the limit is 5%).
gates = [
  { name = "quarantine_rate", max_quarantine_rate = 0.30 },
]

[models.daily_revenue]
sql = "models/daily_revenue.sql"
business_date = "order_date"
"#;

const INIT_SQL: &str = "-- Revenue per day. $from and $to are the run's business dates (named parameters;\n-- strata already limits `orders` to the dates this model needs).\nSELECT order_date, count(*) AS orders, sum(amount) AS revenue\nFROM orders\nWHERE order_date BETWEEN $from AND $to\nGROUP BY order_date\n";

const INIT_CSV: &str = "order_id,order_date,amount,updated_at\n1,2026-01-01,10.00,2026-01-01T09:00:00\n2,2026-01-01,-3.00,2026-01-01T09:30:00\n3,2026-01-02,7.25,2026-01-02T10:00:00\n3,2026-01-02,7.50,2026-01-02T11:00:00\n";

pub fn init(args: InitArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let toml = args.dir.join("strata.toml");
    if toml.exists() {
        return Err(user_error!(
            "{} already exists; nothing was changed. Pick another directory",
            toml.display()
        ));
    }
    let files = [
        (toml.clone(), INIT_TOML),
        (args.dir.join("models/daily_revenue.sql"), INIT_SQL),
        (args.dir.join("data/orders/orders-2026-01-01.csv"), INIT_CSV),
    ];
    for (path, _) in &files[1..] {
        if path.exists() {
            return Err(user_error!(
                "{} already exists; nothing was changed. Pick another directory",
                path.display()
            ));
        }
    }
    for (path, text) in &files {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| user_error!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::write(path, text)
            .map_err(|e| user_error!("cannot write {}: {e}", path.display()))?;
        writeln!(out, "created {}", path.display())?;
    }
    writeln!(out, "next: strata run --pipeline {}", toml.display())?;
    Ok(ExitCode::SUCCESS)
}
