//! `strata close` and `strata restatements`, and how closings show in `versions` and `history`.

use std::io::Write;
use std::process::ExitCode;

use serde::Serialize;
use serde_json::json;
use strata_publish::closing::Restatement;
use strata_publish::model::FlipKind;
use strata_publish::{Dataset, OpenMode};

use crate::cli::{CloseArgs, RestatementsArgs};
use crate::output;
use crate::run_cmds::wall_clock;
use crate::settings::Settings;
use crate::user_error;

/// How `versions` and `history` name a kind of flip: restatements stand out.
pub fn kind_text(kind: FlipKind) -> String {
    match kind {
        FlipKind::Restatement => "RESTATEMENT".into(),
        other => other.to_string(),
    }
}

/// `closed through D (…)` under `versions` and `history`, when the dataset has a closing.
pub async fn closing_line(ds: &Dataset, out: &mut impl Write) -> anyhow::Result<()> {
    if let Some(c) = ds.closing().await? {
        writeln!(out, "{}", c.describe())?;
    }
    Ok(())
}

/// Who is acting: `user@host`.
pub fn who() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("{user}@{}", strata_publish::locks::this_host())
}

pub async fn close(
    settings: &Settings,
    args: CloseArgs,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let through = chrono::NaiveDate::parse_from_str(&args.through, "%Y-%m-%d").map_err(|_| {
        user_error!("--through {:?} is not a date; write YYYY-MM-DD, e.g. 2026-01-31", args.through)
    })?;
    let lake = settings.open_lake(OpenMode::Existing).await?;
    let ds = lake.dataset(&args.dataset)?;
    let closing = ds.close(through, args.reason.clone(), &who(), wall_clock()).await?;
    if args.json {
        output::json(out, &closing)?;
    } else {
        writeln!(
            out,
            "{} is {}; a run that would change those partitions fails unless it is a \
             restatement (`strata run … --mode restatement --reason CODE`)",
            ds.name(),
            closing.describe()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// One restatement, as `strata restatements` lists it.
#[derive(Debug, Serialize)]
struct Listed {
    dataset: String,
    version: u64,
    seq: u64,
    at: chrono::DateTime<chrono::Utc>,
    run_id: String,
    #[serde(flatten)]
    restatement: Restatement,
}

pub async fn restatements(
    settings: &Settings,
    args: RestatementsArgs,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let lake = settings.open_lake(OpenMode::Existing).await?;
    let names = match &args.dataset {
        Some(d) => {
            lake.dataset(d)?.require_head().await?;
            vec![d.clone()]
        }
        None => lake.datasets().await?,
    };
    let mut found = Vec::new();
    for name in names {
        let ds = lake.dataset(&name)?;
        for f in ds.history().await?.into_iter().filter(|f| f.kind == FlipKind::Restatement) {
            let record = ds.published_head(f.to).await?;
            if let Some(r) = &record.restatement {
                found.push(Listed {
                    dataset: name.clone(),
                    version: f.to,
                    seq: f.seq,
                    at: f.at,
                    run_id: f.run_id.clone(),
                    restatement: r.clone(),
                });
            }
        }
    }
    if args.json {
        output::json(out, &json!({ "restatements": found }))?;
        return Ok(ExitCode::SUCCESS);
    }
    if found.is_empty() {
        writeln!(out, "no restatements")?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = found
        .iter()
        .map(|l| {
            let r = &l.restatement;
            let rows_before: u64 = r.partitions.iter().map(|p| p.rows_before).sum();
            let rows_after: u64 = r.partitions.iter().map(|p| p.rows_after).sum();
            vec![
                l.dataset.clone(),
                format!("v{}", l.version),
                r.prior_version.map_or("-".into(), |v| format!("v{v}")),
                output::time(&l.at),
                r.reason.clone(),
                r.approver.clone().unwrap_or_else(|| "-".into()),
                r.partitions.len().to_string(),
                format!("{rows_before} -> {rows_after}"),
                r.inputs_added.len().to_string(),
                format!("through {}", r.closing.through),
            ]
        })
        .collect();
    output::table(
        out,
        &[
            "DATASET",
            "VERSION",
            "PRIOR",
            "AT",
            "REASON",
            "APPROVER",
            "PARTITIONS",
            "ROWS",
            "NEW BATCHES",
            "CLOSED",
        ],
        &rows,
    )?;
    Ok(ExitCode::SUCCESS)
}
