//! `strata diff`.

use std::io::Write;
use std::process::ExitCode;

use strata_medallion::diff::{self, DiffOptions, DiffReport, Side, Thresholds, Verdict};
use strata_medallion::{parse_table_name, record_of, session_for_lake, QueryOptions, VersionRef};
use strata_publish::OpenMode;

use crate::cli::DiffArgs;
use crate::output;
use crate::settings::Settings;
use crate::{check_failed, user_error};

/// The version a side names: `orders` (current), `orders@3`, or `orders@<RFC 3339 time>`.
async fn side(lake: &strata_publish::Lake, label: &str) -> anyhow::Result<Side> {
    let Some((name, version)) = parse_table_name(label) else {
        return Err(user_error!(
            "{label:?} is not a dataset or a version; write `orders`, `\"orders@3\"`, \
             `\"orders@2026-12-01T10:00:00Z\"` or `\"orders@shadow:NAME\"`"
        ));
    };
    let record = record_of(&lake.dataset(name)?, version).await?;
    Ok(Side { label: label.to_string(), record })
}

pub async fn diff(
    settings: &Settings,
    args: DiffArgs,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    if let Some(r) = args.max_changed_ratio.filter(|r| !(0.0..=1.0).contains(r)) {
        return Err(user_error!("--max-changed-ratio {r} is not between 0 and 1 (0.01 = 1%)"));
    }
    let mut tolerance = std::collections::BTreeMap::new();
    for t in &args.tolerance {
        let (col, v) = diff::parse_tolerance(t).map_err(|e| user_error!("{e}"))?;
        tolerance.insert(col, v);
    }
    let lake = settings.open_lake(OpenMode::Existing).await?;
    let (a, b) = (side(&lake, &args.a).await?, side(&lake, &args.b).await?);
    let session = session_for_lake(&lake, QueryOptions::default()).await?;
    let options = DiffOptions {
        key: args.key.clone(),
        columns: args.columns.clone(),
        filter: args.filter.clone(),
        samples: args.limit,
        tolerance,
    };
    let report = diff::diff(&session, &a, &b, &options).await?;
    let thresholds = Thresholds {
        max_changed_rows: args.max_changed_rows,
        max_changed_ratio: args.max_changed_ratio,
    };
    let verdict = diff::verdict(&report, thresholds);
    let json = serde_json::json!({ "verdict": verdict, "report": report });
    let shadow_side = [&args.a, &args.b].into_iter().find_map(|l| match parse_table_name(l) {
        Some((_, VersionRef::Shadow(name))) => Some(name.to_string()),
        _ => None,
    });
    match (&args.save, &shadow_side) {
        (Some(None), None) => {
            return Err(user_error!(
                "--save without a FILE keeps the report with a shadow run, and neither side is a \
                 shadow (`orders@shadow:NAME`); name a file: --save report.json"
            ))
        }
        (Some(_), Some(name)) => {
            let at = crate::run_cmds::wall_clock();
            let run = strata_runs::shadow::attach_diff(&lake, name, report.clone(), at).await?;
            if !args.json {
                writeln!(out, "kept the report with shadow {name} (run {run})")?;
            }
        }
        _ => {}
    }
    if let Some(Some(path)) = &args.save {
        let text = serde_json::to_string_pretty(&json)?;
        std::fs::write(path, text + "\n").map_err(|e| {
            user_error!(
                "cannot write the report to {} ({e}); choose another --save path",
                path.display()
            )
        })?;
    }
    if args.json {
        output::json(out, &json)?;
    } else {
        print_report(out, &report, verdict)?;
    }
    match verdict {
        Verdict::Identical | Verdict::WithinThresholds => Ok(ExitCode::SUCCESS),
        Verdict::Differs => {
            out.flush()?;
            Err(check_failed!(
                "{} and {} differ: {} row(s) changed ({} modified, {} added, {} removed, {} under \
                 duplicate keys){}; --max-changed-rows or --max-changed-ratio accept a difference",
                report.a,
                report.b,
                report.changed_rows(),
                report.modified,
                report.added,
                report.removed,
                report.duplicate_rows_a + report.duplicate_rows_b,
                if report.schema.is_empty() { "" } else { ", and the schema changed" }
            ))
        }
    }
}

/// A diff in one line, as a compare-only run prints each.
pub fn one_line(r: &DiffReport) -> String {
    let schema = if r.schema.is_empty() { "" } else { "; the schema changed" };
    format!(
        "diff {} -> {}: rows {} -> {}, identical {}, modified {}, added {}, removed {} \
         ({} partition(s) changed, {} identical by their hashes){schema}",
        r.a,
        r.b,
        r.rows_a,
        r.rows_b,
        r.identical,
        r.modified,
        r.added,
        r.removed,
        r.partitions.iter().filter(|p| p.changed > 0).count(),
        r.partitions_skipped
    )
}

fn print_report(out: &mut impl Write, r: &DiffReport, verdict: Verdict) -> anyhow::Result<()> {
    writeln!(out, "diff {} -> {} (key {})", r.a, r.b, r.key.join(", "))?;
    for (c, t) in &r.schema.added {
        writeln!(out, "schema     + {c} {t}")?;
    }
    for (c, t) in &r.schema.removed {
        writeln!(out, "schema     - {c} {t}")?;
    }
    for (c, ta, tb) in &r.schema.retyped {
        writeln!(out, "schema     ~ {c} {ta} -> {tb}")?;
    }
    writeln!(out, "rows       {} -> {}", r.rows_a, r.rows_b)?;
    writeln!(
        out,
        "classes    identical {}, modified {}, added {}, removed {}",
        r.identical, r.modified, r.added, r.removed
    )?;
    if r.duplicate_keys_a + r.duplicate_keys_b > 0 {
        writeln!(
            out,
            "duplicates {} key(s) in A ({} rows), {} in B ({} rows): not classified",
            r.duplicate_keys_a, r.duplicate_rows_a, r.duplicate_keys_b, r.duplicate_rows_b
        )?;
    }
    writeln!(
        out,
        "partitions {} ({} identical by their row hashes, not read)",
        r.partitions.len(),
        r.partitions_skipped
    )?;
    if !r.columns.is_empty() {
        let rows: Vec<Vec<String>> = r
            .columns
            .iter()
            .map(|c| {
                vec![
                    c.column.clone(),
                    c.compared.to_string(),
                    c.differ.to_string(),
                    format!("{:.2}%", c.match_rate * 100.0),
                    c.nulls_a.to_string(),
                    c.nulls_b.to_string(),
                    c.sum_a.clone().unwrap_or_default(),
                    c.sum_b.clone().unwrap_or_default(),
                    c.delta.clone().unwrap_or_default(),
                ]
            })
            .collect();
        writeln!(out)?;
        output::table(
            out,
            &[
                "COLUMN", "COMPARED", "DIFFER", "MATCH", "NULLS A", "NULLS B", "SUM A", "SUM B",
                "DELTA",
            ],
            &rows,
        )?;
        if r.partitions_skipped > 0 {
            writeln!(
                out,
                "(nulls and sums are over the partitions read; those found identical add the same \
                 to both sides)"
            )?;
        }
    }
    let changed: Vec<Vec<String>> = r
        .partitions
        .iter()
        .filter(|p| p.changed > 0 || p.rows_a != p.rows_b)
        .map(|p| {
            vec![p.key.clone(), p.rows_a.to_string(), p.rows_b.to_string(), p.changed.to_string()]
        })
        .collect();
    if !changed.is_empty() {
        writeln!(out)?;
        output::table(out, &["CHANGED PARTITION", "ROWS A", "ROWS B", "CHANGED"], &changed)?;
    }
    let show = |rows: &[diff::Row]| -> Vec<String> {
        rows.iter()
            .map(|row| {
                row.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_deref().unwrap_or("NULL")))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    };
    for (what, rows) in [
        ("modified", &r.samples.modified),
        ("added", &r.samples.added),
        ("removed", &r.samples.removed),
        ("duplicate", &r.samples.duplicates),
    ] {
        for line in show(rows) {
            writeln!(out, "{what:<10} {line}")?;
        }
    }
    let verdict = match verdict {
        Verdict::Identical => "identical",
        Verdict::WithinThresholds => "different, within the thresholds",
        Verdict::Differs => "different",
    };
    writeln!(out, "result     {verdict}")?;
    Ok(())
}
