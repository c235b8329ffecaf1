//! `strata reconcile`, `strata approve` and `strata reject`.

use std::io::Write;
use std::process::ExitCode;

use object_store::path::Path;
use serde_json::json;
use strata_publish::input::ParquetInput;
use strata_publish::{Dataset, OpenMode, VersionRecord};
use strata_reconcile::{compare, ControlTotals, Difference, Totals};

use crate::cli::{ReconcileArgs, ReviewArgs};
use crate::output;
use crate::settings::{run_context, Settings};
use crate::user_error;

/// Totals of every partition of a version: as recorded, or recomputed from the files when a
/// partition has none (published without totals).
async fn partition_totals(
    ds: &Dataset,
    record: &VersionRecord,
    recompute: bool,
) -> anyhow::Result<Vec<(String, ControlTotals, bool)>> {
    let spec = record
        .partitions
        .iter()
        .find_map(|p| p.totals.as_ref())
        .map(|t| t.spec())
        .unwrap_or_default();
    let mut out = Vec::new();
    for p in &record.partitions {
        match (&p.totals, recompute) {
            (Some(t), false) => out.push((p.key.clone(), t.clone(), false)),
            _ => {
                let mut totals = Totals::new(&spec);
                for f in &p.files {
                    let mut input = ParquetInput::open(
                        ds.lake().store().clone(),
                        Path::from(f.path.as_str()),
                        f.path.clone(),
                    )
                    .await?;
                    while let Some(batch) = input.next_batch().await? {
                        totals.update(&batch).map_err(|e| user_error!("{}: {e}", f.path))?;
                    }
                }
                out.push((p.key.clone(), totals.finish(), true));
            }
        }
    }
    Ok(out)
}

fn combined(parts: &[(String, ControlTotals, bool)]) -> anyhow::Result<ControlTotals> {
    Ok(ControlTotals::combine(parts.iter().map(|(_, t, _)| t))?)
}

fn print_totals(out: &mut impl Write, t: &ControlTotals) -> std::io::Result<()> {
    writeln!(out, "  rows       {}", t.rows)?;
    for (c, v) in &t.sums {
        writeln!(out, "  sum({c})  {v}")?;
    }
    if let Some(tb) = &t.time {
        writeln!(
            out,
            "  {}  {} .. {}",
            tb.column,
            tb.min.as_deref().unwrap_or("-"),
            tb.max.as_deref().unwrap_or("-")
        )?;
    }
    if let Some(k) = &t.keys {
        writeln!(
            out,
            "  keys       {} distinct, {} duplicate(s){} ({})",
            k.distinct,
            k.duplicates,
            match k.out_of_order {
                0 => String::new(),
                n => format!(", {n} out of key order (uniqueness not proved)"),
            },
            t.key.join(", ")
        )?;
    }
    let nulls: Vec<String> =
        t.nulls.iter().filter(|(_, n)| **n > 0).map(|(c, n)| format!("{c} {n}")).collect();
    if !nulls.is_empty() {
        writeln!(out, "  nulls      {}", nulls.join(", "))?;
    }
    if let Some(h) = &t.key_hash {
        writeln!(out, "  key hash   {h}")?;
    }
    writeln!(out, "  row hash   {} ({})", t.row_hash, t.encoding)?;
    Ok(())
}

pub async fn reconcile(
    settings: &Settings,
    args: ReconcileArgs,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let lake = settings.open_lake(OpenMode::Existing).await?;
    let ds = lake.dataset(&args.dataset)?;
    let record = match &args.shadow {
        Some(name) => {
            let shadow = strata_medallion::VersionRef::Shadow(name);
            strata_medallion::record_of(&ds, shadow).await?
        }
        None => ds.version_or_current(args.version).await?,
    };
    let parts = partition_totals(&ds, &record, args.input).await?;
    let totals = combined(&parts)?;
    let mut differences: Vec<serde_json::Value> = Vec::new();
    let mut checks: Vec<strata_publish::model::Check> = Vec::new();
    let mut against_totals = None;
    if let Some(m) = args.against {
        let other = ds.version(m).await?;
        let other_parts = partition_totals(&ds, &other, false).await?;
        let other_totals = combined(&other_parts)?;
        for d in compare(&totals, &other_totals) {
            differences
                .push(json!({"partition": null, "what": d.what, "left": d.left, "right": d.right}));
        }
        let keys: std::collections::BTreeSet<&String> =
            parts.iter().map(|p| &p.0).chain(other_parts.iter().map(|p| &p.0)).collect();
        for k in keys {
            let a = parts.iter().find(|p| &p.0 == k);
            let b = other_parts.iter().find(|p| &p.0 == k);
            match (a, b) {
                (Some(a), Some(b)) => {
                    for d in compare(&a.1, &b.1) {
                        differences.push(json!({"partition": k, "what": d.what, "left": d.left, "right": d.right}));
                    }
                }
                (Some(_), None) => differences.push(json!({"partition": k, "what": format!("only in v{}", record.version), "left": "present", "right": "-"})),
                (None, Some(_)) => differences.push(json!({"partition": k, "what": format!("only in v{m}"), "left": "-", "right": "present"})),
                (None, None) => {}
            }
        }
        against_totals = Some((m, other_totals));
    }
    if args.input {
        // The files, re-read, must give the totals recorded when they were written; and the
        // checks the run made against its input must all have held.
        for (key, recomputed, _) in &parts {
            let recorded =
                record.partitions.iter().find(|p| &p.key == key).and_then(|p| p.totals.as_ref());
            match recorded {
                Some(r) => {
                    let diffs: Vec<Difference> = compare(r, recomputed);
                    for d in diffs {
                        differences.push(json!({"partition": key, "what": format!("recorded vs files: {}", d.what), "left": d.left, "right": d.right}));
                    }
                }
                None => differences.push(json!({"partition": key, "what": "no recorded totals", "left": "-", "right": "recomputed"})),
            }
        }
        checks = record.evidence.as_ref().map(|e| e.checks.clone()).unwrap_or_default();
        for c in checks.iter().filter(|c| !c.ok) {
            differences.push(json!({"partition": null, "what": format!("check failed: {}", c.check), "left": c.detail, "right": ""}));
        }
        if checks.is_empty() {
            differences.push(json!({"partition": null, "what": "the version records no input checks (published without a pipeline run)", "left": "-", "right": "-"}));
        }
    }
    let mismatch = !differences.is_empty();
    if args.json {
        output::json(
            out,
            &json!({
                "dataset": args.dataset,
                "version": record.version,
                "run_id": record.run_id,
                "totals": totals,
                "partitions": parts.iter().map(|(k, t, r)| json!({"partition": k, "totals": t, "recomputed": r})).collect::<Vec<_>>(),
                "against": against_totals.as_ref().map(|(m, t)| json!({"version": m, "totals": t})),
                "checks": checks,
                "differences": differences,
                "ok": !mismatch,
            }),
        )?;
    } else {
        writeln!(
            out,
            "{} v{} (run {}): {} partition(s){}",
            args.dataset,
            record.version,
            record.run_id,
            parts.len(),
            if parts.iter().any(|p| p.2) { ", totals recomputed from the files" } else { "" }
        )?;
        print_totals(out, &totals)?;
        if let Some((m, t)) = &against_totals {
            writeln!(out, "{} v{m}:", args.dataset)?;
            print_totals(out, t)?;
        }
        if !checks.is_empty() {
            writeln!(out, "checks the run made before publishing:")?;
            for c in &checks {
                writeln!(
                    out,
                    "  {:<4} {}  {}",
                    if c.ok { "ok" } else { "FAIL" },
                    c.check,
                    c.detail
                )?;
            }
        }
        if mismatch {
            writeln!(out, "MISMATCH:")?;
            for d in &differences {
                let part = d["partition"].as_str().map(|p| format!("{p}: ")).unwrap_or_default();
                writeln!(
                    out,
                    "  {part}{}  {} vs {}",
                    d["what"].as_str().unwrap_or("?"),
                    d["left"],
                    d["right"]
                )?;
            }
        } else if args.input {
            writeln!(out, "ok: the files match the recorded totals and every check held")?;
        } else if against_totals.is_some() {
            writeln!(out, "ok: the two versions have the same totals and hashes")?;
        }
    }
    if mismatch {
        eprintln!(
            "error: {} difference(s) found; see above{}",
            differences.len(),
            if args.json { " (\"differences\")" } else { "" }
        );
        return Ok(ExitCode::from(crate::EXIT_CHECK_FAILED));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn approve(
    settings: &Settings,
    args: ReviewArgs,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let lake = settings.open_lake(OpenMode::Existing).await?;
    let ctx = run_context()?;
    let published = strata_runs::driver::approve(
        &lake,
        &args.run_id,
        ctx.now(),
        strata_publish::locks::lease_from_env(),
        crate::run_cmds::wall_clock,
        args.note.clone(),
    )
    .await?;
    writeln!(
        out,
        "run {} approved and PUBLISHED {}",
        args.run_id,
        published.iter().map(|(d, v)| format!("{d} v{v}")).collect::<Vec<_>>().join(", ")
    )?;
    Ok(ExitCode::SUCCESS)
}

pub async fn reject(
    settings: &Settings,
    args: ReviewArgs,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let lake = settings.open_lake(OpenMode::Existing).await?;
    let ctx = run_context()?;
    let removed = strata_runs::driver::reject(
        &lake,
        &args.run_id,
        ctx.now(),
        crate::run_cmds::wall_clock,
        strata_publish::locks::lease_from_env(),
        args.note.clone(),
    )
    .await?;
    writeln!(
        out,
        "run {} rejected: FAILED, {removed} staged object(s) removed, nothing published",
        args.run_id
    )?;
    Ok(ExitCode::SUCCESS)
}
