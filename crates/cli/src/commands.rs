//! The commands: thin adapters from settings to the library crates, and printing.

use std::io::Write;
use std::path::{Path as FsPath, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use serde_json::json;
use strata_medallion::{record_of, session_for_lake, QueryOptions, VersionRef};
use strata_publish::input::ParquetInput;
use strata_publish::locks::{self, RunLocks};
use strata_publish::{Dataset, OpenMode, PublishOptions, RollbackOutcome, WriterOptions};

use crate::cli::{
    Cli, Command, DatasetArgs, FilesArgs, Format, LandArgs, LandFormat, ListArgs, PublishArgs,
    QueryArgs, RollbackArgs, VerifyArgs,
};
use crate::output;
use crate::run_cmds::wall_clock;
use crate::settings::{run_context, Settings};
use crate::{check_failed, user_error};
use strata_land::retire::RetireAction;

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = Settings::from_cli(&cli)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let code = match cli.command {
        Command::Run(args) => {
            Box::pin(crate::pipeline_cmds::run(&settings, args, &mut out)).await?
        }
        Command::Init(args) => crate::pipeline_cmds::init(args, &mut out)?,
        Command::Check(_) => crate::pipeline_cmds::check(&settings, &mut out).await?,
        Command::Plan(args) => crate::pipeline_cmds::plan(&settings, args, &mut out).await?,
        Command::Land(args) => land(&settings, args, &mut out).await?,
        Command::Publish(args) => publish(&settings, args, &mut out).await?,
        Command::Datasets(args) => datasets(&settings, args, &mut out).await?,
        Command::Versions(args) => versions(&settings, args, &mut out).await?,
        Command::History(args) => history(&settings, args, &mut out).await?,
        Command::Rollback(args) => rollback(&settings, args, &mut out).await?,
        Command::Retire(args) => {
            crate::retire_cmds::retire(&settings, args, RetireAction::Retire, &mut out).await?
        }
        Command::Unretire(args) => {
            crate::retire_cmds::retire(&settings, args, RetireAction::Unretire, &mut out).await?
        }
        Command::Retired(args) => crate::retire_cmds::retired(&settings, args, &mut out).await?,
        Command::Query(args) => query(&settings, args, &mut out).await?,
        Command::Verify(args) => verify(&settings, args, &mut out).await?,
        Command::Diff(args) => crate::diff_cmds::diff(&settings, args, &mut out).await?,
        Command::Close(args) => crate::close_cmds::close(&settings, args, &mut out).await?,
        Command::Restatements(args) => {
            crate::close_cmds::restatements(&settings, args, &mut out).await?
        }
        Command::Shadows(args) => crate::shadow_cmds::shadows(&settings, args, &mut out).await?,
        Command::Promote(args) => crate::shadow_cmds::promote(&settings, args, &mut out).await?,
        Command::DropShadow(args) => {
            crate::shadow_cmds::drop_shadow(&settings, args, &mut out).await?
        }
        Command::Files(args) => files(&settings, args, &mut out).await?,
        Command::Runs(args) => crate::run_cmds::runs(&settings, args, &mut out).await?,
        Command::ShowRun(args) => crate::run_cmds::show_run(&settings, args, &mut out).await?,
        Command::Recover(args) => crate::run_cmds::recover_cmd(&settings, args, &mut out).await?,
        Command::Reconcile(args) => {
            crate::reconcile_cmds::reconcile(&settings, args, &mut out).await?
        }
        Command::Approve(args) => crate::reconcile_cmds::approve(&settings, args, &mut out).await?,
        Command::Reject(args) => crate::reconcile_cmds::reject(&settings, args, &mut out).await?,
    };
    out.flush()?;
    Ok(code)
}

async fn dataset(settings: &Settings, name: &str, mode: OpenMode) -> anyhow::Result<Dataset> {
    Ok(settings.open_lake(mode).await?.dataset(name)?)
}

/// Holds the whole of `ds` for an operator's write (a publish, a rollback), so that it never
/// lands in the middle of a run's commit of the same dataset: a run holding any partition of it
/// makes this fail at once (exit 4, naming the run).
async fn hold_dataset(ds: &Dataset, ctx: &strata_publish::RunContext) -> anyhow::Result<RunLocks> {
    let boundary = std::collections::BTreeMap::from([(ds.name().to_string(), Vec::new())]);
    Ok(locks::acquire(ds.lake(), ctx.run_id(), &boundary, locks::lease_from_env(), wall_clock)
        .await?)
}

/// The Parquet files `--from` names: files as they are, directories searched recursively for
/// `*.parquet` in sorted order, so that the same inputs always give the same output (hidden
/// names skipped, link loops and unreadable directories reported), each file once under its
/// real path. The walk is land's.
fn input_files(from: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut args = Vec::with_capacity(from.len());
    for path in from {
        let meta = std::fs::metadata(path).map_err(|e| {
            user_error!(
                "cannot read --from {}: {e}; check the path (files or directories of *.parquet)",
                path.display()
            )
        })?;
        let text = path.to_str().ok_or_else(|| {
            user_error!("--from {}: the path is not valid UTF-8; rename it", path.display())
        })?;
        if meta.is_dir() {
            // Wildcards in the directory's own name are names, not patterns.
            let dir = glob::Pattern::escape(text.trim_end_matches('/'));
            args.push(format!("{dir}/**/*.parquet"));
        } else {
            args.push(glob::Pattern::escape(text));
        }
    }
    strata_land::expand_inputs(FsPath::new("."), &args).map_err(|e| match e {
        strata_land::Error::Input { path, detail } => {
            let path = path.strip_suffix("/**/*.parquet").unwrap_or(&path).to_string();
            let detail = if detail.contains("matches no file") {
                "it is a directory with no *.parquet files in it".to_string()
            } else {
                detail
            };
            user_error!("--from {path}: {detail}")
        }
        other => anyhow::Error::new(other),
    })
}

async fn publish(
    settings: &Settings,
    args: PublishArgs,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    // Refuse a bad name before anything, even the lake directory, is created.
    strata_publish::names::validate_dataset_name(&args.dataset)?;
    let files = input_files(&args.from)?;
    let local: Arc<dyn object_store::ObjectStore> = Arc::new(LocalFileSystem::new());
    let mut inputs = Vec::with_capacity(files.len());
    for f in &files {
        let path = Path::from_absolute_path(f)
            .map_err(|e| user_error!("cannot use {} as an input path: {e}", f.display()))?;
        inputs.push(ParquetInput::open(local.clone(), path, f.display().to_string()).await?);
    }
    let schema = inputs[0].schema.clone();
    for input in &inputs[1..] {
        if let Some(diff) = strata_publish::protocol::schema_difference(&schema, &input.schema) {
            return Err(user_error!(
                "the inputs disagree on their schema: {} differs from {} ({diff}); publish them \
                 separately or fix the files",
                input.display,
                inputs[0].display
            ));
        }
    }
    strata_publish::partition_columns(&schema, &args.partition_by)?;
    let lake = settings.open_lake(OpenMode::Create).await?;
    let ds = lake.dataset(&args.dataset)?;
    let current = ds.current_head().await?;
    // A partitioned dataset keeps its partitioning unless told otherwise.
    let partition_by = match (&current, args.partition_by.is_empty()) {
        (Some(record), true) if !args.replace_all => record.partition_by.clone(),
        _ => args.partition_by.clone(),
    };
    let source = if inputs.len() == 1 {
        inputs[0].display.clone()
    } else {
        format!("{} input files", inputs.len())
    };
    if let (Some(parent), false) = (&current, args.replace_all) {
        ds.check_against(parent, &schema, &partition_by, &source)?;
    }

    let ctx = run_context()?;
    let held = hold_dataset(&ds, &ctx).await?;
    let published = stage_and_publish(&ds, &ctx, inputs, schema, partition_by, &args).await;
    held.release().await;
    let published = published?;
    let r = &published.record;
    if args.json {
        output::json(
            out,
            &json!({
                "dataset": r.dataset,
                "version": r.version,
                "parent": r.parent,
                "run_id": r.run_id,
                "pointer_seq": published.flip.seq,
                "created_at": r.created_at,
                "summary": r.summary,
            }),
        )?;
    } else {
        writeln!(
            out,
            "published {} version {} (run {}, parent {}): {} partition(s) written, {} reused, {} dropped; \
             {} rows in {} file(s), {}",
            r.dataset,
            r.version,
            r.run_id,
            r.parent.map_or("none".to_string(), |p| p.to_string()),
            r.summary.partitions_written,
            r.summary.partitions_reused,
            r.summary.partitions_dropped,
            r.summary.rows,
            r.summary.files,
            output::bytes(r.summary.bytes)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Stages the inputs and publishes them as one version; on an error, what the deletion
/// authority allows is removed.
async fn stage_and_publish(
    ds: &Dataset,
    ctx: &strata_publish::RunContext,
    mut inputs: Vec<ParquetInput>,
    schema: arrow::datatypes::SchemaRef,
    partition_by: Vec<String>,
    args: &PublishArgs,
) -> anyhow::Result<strata_publish::Published> {
    // Control totals (row count and row hash) for every partition: a reference bound by a run
    // records the hash of its rows, and `strata reconcile` has them without reading the files.
    let totals = Some(strata_reconcile::TotalsSpec::default());
    let options = WriterOptions { partition_by, totals, ..Default::default() };
    let mut writer = ds.writer(ctx, schema, options)?;
    let staged = async {
        for input in &mut inputs {
            while let Some(batch) = input.next_batch().await? {
                writer.write(&batch).await?;
            }
        }
        writer.finish().await
    }
    .await;
    let staged = match staged {
        Ok(s) => s,
        Err(e) => {
            ds.discard(ctx.run_id(), 0).await;
            return Err(e.into());
        }
    };
    let options = PublishOptions {
        replace_all: args.replace_all,
        reason: args.reason.clone(),
        writer: Some(strata_publish::model::Owner::Publish),
        ..Default::default()
    };
    // On an error, `publish` has removed what the deletion authority allows.
    Ok(ds.publish(staged, &options, ctx).await?)
}

async fn land(
    settings: &Settings,
    args: LandArgs,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    strata_publish::names::validate_dataset_name(&args.source)?;
    if !args.delimiter.is_ascii() || args.delimiter == '"' || args.delimiter == '\n' {
        return Err(user_error!(
            "--delimiter must be one ASCII character other than a quote or a line break"
        ));
    }
    let files = strata_land::expand_inputs(std::path::Path::new("."), &args.inputs)?;
    let lake = settings.open_lake(OpenMode::Create).await?;
    let ctx = run_context()?;
    let options = strata_land::LandOptions {
        format: args.format.map(|f| match f {
            LandFormat::Csv => strata_land::InputFormat::Csv,
            LandFormat::Jsonl => strata_land::InputFormat::Jsonl,
            LandFormat::Parquet => strata_land::InputFormat::Parquet,
        }),
        delimiter: args.delimiter as u8,
        rehash: args.rehash,
        ..Default::default()
    };
    let mut index = strata_land::SourceIndex::load(&lake, &args.source).await?;
    let mut results = Vec::new();
    let (mut landed, mut skipped, mut rows, mut rejected) = (0u64, 0u64, 0u64, 0u64);
    for (file, (input, identity)) in files.iter().zip(strata_land::local_inputs(&files)?) {
        let outcome =
            strata_land::land_indexed(&lake, &mut index, &input, identity, &options, &ctx).await?;
        let (m, fresh) = match outcome {
            strata_land::Indexed::Read(read) => match *read {
                strata_land::LandOutcome::Landed(m) => (m, true),
                strata_land::LandOutcome::AlreadyLanded(m) => (m, false),
            },
            strata_land::Indexed::Known(id) => match index.manifest(&lake, &id).await? {
                Some(m) => (m, false),
                None => anyhow::bail!(
                    "the raw index of {} names batch {id} for {}, but the batch is gone; \
                     delete {} and land again",
                    args.source,
                    file.display(),
                    strata_land::index_path(&args.source)
                ),
            },
        };
        if fresh {
            landed += 1;
            rows += m.rows;
            rejected += m.rejected;
        } else {
            skipped += 1;
        }
        if args.json {
            results.push(json!({
                "input": file.display().to_string(),
                "status": if fresh { "landed" } else { "already_landed" },
                "batch_id": m.batch_id,
                "sha256": m.input.sha256,
                "size": m.input.size,
                "format": m.input.format,
                "rows": m.rows,
                "rejected": m.rejected,
                "blank_lines": m.blank_lines,
                "run_id": m.run_id,
            }));
        } else if fresh {
            let short = &m.batch_id[..12];
            let mut line = format!(
                "landed {} as {}/{}/batch={short}…: {} rows",
                file.display(),
                strata_land::RAW_DIR,
                args.source,
                m.rows
            );
            if m.rejected > 0 {
                line.push_str(&format!(", {} rejected line(s) kept with reasons", m.rejected));
            }
            if m.blank_lines > 0 {
                line.push_str(&format!(", {} blank line(s)", m.blank_lines));
            }
            writeln!(out, "{line}")?;
        } else {
            writeln!(
                out,
                "{}: already landed as batch {}… ({} rows); nothing to do",
                file.display(),
                &m.batch_id[..12],
                m.rows
            )?;
        }
    }
    index.save(&lake).await?;
    if args.json {
        output::json(out, &results)?;
    } else {
        writeln!(
            out,
            "{landed} input(s) landed ({rows} rows, {rejected} rejected line(s)), {skipped} already landed"
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn datasets(
    settings: &Settings,
    args: ListArgs,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let lake = settings.open_lake(OpenMode::Existing).await?;
    let mut rows = Vec::new();
    for name in lake.datasets().await? {
        let head = lake.dataset(&name)?.require_head().await?;
        rows.push((name, head));
    }
    if args.json {
        let list: Vec<_> = rows
            .iter()
            .map(|(name, h)| {
                json!({
                    "dataset": name,
                    "current_version": h.to,
                    "rows": h.version.rows,
                    "files": h.version.files,
                    "bytes": h.version.bytes,
                    "updated_at": h.at,
                    "pointer_seq": h.seq,
                })
            })
            .collect();
        output::json(out, &list)?;
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        writeln!(out, "no datasets in {}; `strata publish` creates one", lake.url())?;
        return Ok(ExitCode::SUCCESS);
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|(name, h)| {
            vec![
                name.clone(),
                h.to.to_string(),
                h.version.rows.to_string(),
                h.version.files.to_string(),
                output::bytes(h.version.bytes),
                output::time(&h.at),
            ]
        })
        .collect();
    output::table(out, &["DATASET", "CURRENT", "ROWS", "FILES", "SIZE", "UPDATED"], &table)?;
    Ok(ExitCode::SUCCESS)
}

async fn versions(
    settings: &Settings,
    args: DatasetArgs,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let ds = dataset(settings, &args.dataset, OpenMode::Existing).await?;
    let versions = ds.versions().await?;
    if args.json {
        output::json(out, &versions)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = versions
        .iter()
        .map(|v| {
            vec![
                format!("{}{}", v.brief.version, if v.current { " *" } else { "" }),
                v.brief.run_id.clone(),
                output::time(&v.brief.created_at),
                v.brief.rows.to_string(),
                v.brief.files.to_string(),
                v.brief.bytes.to_string(),
                v.parent.map_or("-".into(), |p| p.to_string()),
                crate::close_cmds::kind_text(v.kind),
            ]
        })
        .collect();
    output::table(
        out,
        &["VERSION", "RUN ID", "CREATED", "ROWS", "FILES", "BYTES", "PARENT", "KIND"],
        &rows,
    )?;
    writeln!(out, "(* = current)")?;
    crate::close_cmds::closing_line(&ds, out).await?;
    Ok(ExitCode::SUCCESS)
}

async fn history(
    settings: &Settings,
    args: DatasetArgs,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let ds = dataset(settings, &args.dataset, OpenMode::Existing).await?;
    let history = ds.history().await?;
    if args.json {
        output::json(out, &history)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = history
        .iter()
        .map(|f| {
            vec![
                f.seq.to_string(),
                output::time(&f.at),
                crate::close_cmds::kind_text(f.kind),
                f.from.map_or("-".into(), |v| v.to_string()),
                f.to.to_string(),
                f.run_id.clone(),
                f.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    output::table(out, &["SEQ", "AT", "KIND", "FROM", "TO", "RUN ID", "REASON"], &rows)?;
    crate::close_cmds::closing_line(&ds, out).await?;
    Ok(ExitCode::SUCCESS)
}

async fn rollback(
    settings: &Settings,
    args: RollbackArgs,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let ds = dataset(settings, &args.dataset, OpenMode::Existing).await?;
    let to = match (args.to, &args.to_time) {
        (Some(v), _) => v,
        (None, Some(t)) => {
            let at = chrono::DateTime::parse_from_rfc3339(t).map_err(|e| {
                user_error!(
                    "--to-time {t:?} is not an RFC 3339 time ({e}); e.g. 2026-12-01T10:00:00Z"
                )
            })?;
            ds.version_at(at.with_timezone(&chrono::Utc)).await?
        }
        (None, None) => return Err(user_error!("give --to VERSION or --to-time TIME")),
    };
    let ctx = run_context()?;
    let held = hold_dataset(&ds, &ctx).await?;
    let outcome = ds.rollback(to, args.reason, &ctx).await;
    held.release().await;
    let outcome = outcome?;
    let (flip, changed) = match &outcome {
        RollbackOutcome::Flipped(f) => (f, true),
        RollbackOutcome::AlreadyCurrent(f) => (f, false),
    };
    if args.json {
        output::json(out, &json!({ "changed": changed, "flip": flip }))?;
    } else if changed {
        writeln!(
            out,
            "rolled back {} from version {} to version {} (pointer #{}, run {})",
            ds.name(),
            flip.from.map_or("-".into(), |v| v.to_string()),
            flip.to,
            flip.seq,
            flip.run_id
        )?;
    } else {
        writeln!(out, "{} is already at version {}; nothing changed", ds.name(), flip.to)?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn query(
    settings: &Settings,
    args: QueryArgs,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let lake = settings.open_lake(OpenMode::Existing).await?;
    let ctx = session_for_lake(&lake, QueryOptions::default()).await?;
    let stream = plan(&ctx, &args.sql).await?;
    write_stream(stream, args.format, out).await?;
    Ok(ExitCode::SUCCESS)
}

/// Plans and starts a read-only query.
async fn plan(
    ctx: &SessionContext,
    sql: &str,
) -> Result<SendableRecordBatchStream, strata_medallion::Error> {
    let options = datafusion::execution::context::SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let df = ctx.sql_with_options(sql, options).await?;
    Ok(df.execute_stream().await?)
}

async fn write_stream(
    mut stream: SendableRecordBatchStream,
    format: Format,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let next = |b: Option<datafusion::error::Result<arrow::array::RecordBatch>>| {
        b.transpose().map_err(strata_medallion::Error::from)
    };
    match format {
        Format::Table => {
            // A table needs every row to size its columns.
            let mut batches = Vec::new();
            while let Some(b) = next(stream.next().await)? {
                batches.push(b);
            }
            if batches.iter().all(|b| b.num_rows() == 0) {
                writeln!(out, "(no rows; columns: {})", column_names(&stream).join(", "))?;
                return Ok(());
            }
            let text = arrow::util::pretty::pretty_format_batches(&batches)?;
            writeln!(out, "{text}")?;
        }
        Format::Csv => {
            let mut w = arrow::csv::WriterBuilder::new().with_header(true).build(&mut *out);
            let mut wrote = false;
            while let Some(b) = next(stream.next().await)? {
                w.write(&b)?;
                wrote = true;
            }
            if !wrote {
                drop(w);
                writeln!(out, "{}", column_names(&stream).join(","))?;
            }
        }
        Format::Json => {
            let mut w = arrow::json::ArrayWriter::new(&mut *out);
            while let Some(b) = next(stream.next().await)? {
                w.write(&b)?;
            }
            w.finish()?;
            drop(w);
            writeln!(out)?;
        }
    }
    Ok(())
}

fn column_names(stream: &SendableRecordBatchStream) -> Vec<String> {
    stream.schema().fields().iter().map(|f| f.name().clone()).collect()
}

async fn verify(
    settings: &Settings,
    args: VerifyArgs,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let ds = dataset(settings, &args.dataset, OpenMode::Existing).await?;
    let report = match &args.shadow {
        Some(name) => {
            let record = record_of(&ds, VersionRef::Shadow(name)).await?;
            ds.verify_record(&record).await?
        }
        None => ds.verify(args.version).await?,
    };
    let ok = report.problems.is_empty();
    if args.json {
        output::json(out, &json!({ "ok": ok, "report": report }))?;
    } else {
        for p in &report.problems {
            writeln!(
                out,
                "{}: {} (expected {}, found {})",
                p.path, p.problem, p.expected, p.found
            )?;
        }
        if ok {
            writeln!(
                out,
                "ok: {} version {}: {} file(s), {} verified",
                report.dataset,
                report.version,
                report.files_checked,
                output::bytes(report.bytes_checked)
            )?;
        }
    }
    if ok {
        return Ok(ExitCode::SUCCESS);
    }
    out.flush()?;
    Err(check_failed!(
        "{} of {} file(s) of {} version {} are missing or changed; restore them from a backup, or \
         `strata rollback {}` to a version that verifies",
        report.problems.len(),
        report.files_checked,
        report.dataset,
        report.version,
        report.dataset
    ))
}

async fn files(
    settings: &Settings,
    args: FilesArgs,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let lake = settings.open_lake(OpenMode::Existing).await?;
    let ds = lake.dataset(&args.dataset)?;
    let record = ds.version_or_current(args.version).await?;
    let locate = locator(&settings.lake_url)?;
    if args.json {
        let list: Vec<_> = record
            .partitions
            .iter()
            .flat_map(|part| {
                part.files.iter().map(|f| {
                    json!({
                        "location": locate(&f.path),
                        "path": f.path,
                        "partition": part.key,
                        "size": f.size,
                        "rows": f.rows,
                        "sha256": f.sha256,
                    })
                })
            })
            .collect();
        output::json(
            out,
            &json!({ "dataset": record.dataset, "version": record.version, "files": list }),
        )?;
    } else if args.quoted {
        let quoted: Vec<String> =
            record.files().map(|f| format!("'{}'", locate(&f.path))).collect();
        writeln!(out, "{}", quoted.join(", "))?;
    } else {
        for f in record.files() {
            writeln!(out, "{}", locate(&f.path))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Where each file of the lake is, for other engines: the path the local store keeps it at
/// (which percent-encodes characters outside ASCII, `k=%C3%A9`), or its URL on S3.
fn locator(lake_url: &str) -> anyhow::Result<impl Fn(&str) -> String> {
    let local = if lake_url.contains("://") && !lake_url.starts_with("file://") {
        None
    } else {
        let dir = lake_url.strip_prefix("file://").unwrap_or(lake_url);
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .with_context(|| format!("cannot resolve {dir}"))?;
        Some(store)
    };
    let base = lake_url.trim_end_matches('/').to_string();
    Ok(move |p: &str| match &local {
        Some(store) => {
            let path = object_store::path::Path::from(p);
            match store.path_to_filesystem(&path) {
                Ok(fs) => fs.display().to_string(),
                Err(_) => format!("{base}/{p}"),
            }
        }
        None => format!("{base}/{}", object_store::path::Path::from(p)),
    })
}
