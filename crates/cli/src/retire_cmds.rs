//! `strata retire`, `strata unretire` and `strata retired`.

use std::io::Write;
use std::process::ExitCode;

use serde_json::json;
use strata_land::retire::{self, Recorded, RetireAction, RetireEntry, Target};
use strata_publish::OpenMode;

use crate::cli::{RetireArgs, RetiredArgs};
use crate::output;
use crate::settings::{run_context, Settings};
use crate::user_error;

/// A landed batch as the user names it: its id, and the file it was landed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Landed {
    pub batch_id: String,
    pub input: String,
    pub rows: u64,
}

/// The batch `arg` names among a source's batches (pure): an exact id, a unique prefix of one
/// (at least 4 characters), or the name of the only file landed under that name. `Err` says why
/// not, listing the candidates.
pub fn resolve<'a>(arg: &str, batches: &'a [Landed]) -> Result<&'a Landed, String> {
    if let Some(b) = batches.iter().find(|b| b.batch_id == arg) {
        return Ok(b);
    }
    let by_input: Vec<&Landed> = batches.iter().filter(|b| b.input == arg).collect();
    let by_prefix: Vec<&Landed> = if arg.len() >= 4 {
        batches.iter().filter(|b| b.batch_id.starts_with(arg)).collect()
    } else {
        Vec::new()
    };
    let found = if by_input.is_empty() { by_prefix } else { by_input };
    match found.as_slice() {
        [one] => Ok(one),
        [] => Err(format!(
            "no batch {arg:?}: give a batch id (or a prefix of at least 4 characters), or the \
             name of the file it was landed from"
        )),
        many => Err(format!(
            "{arg:?} names {} batches ({}); give the batch id",
            many.len(),
            many.iter()
                .map(|b| format!("{} from {}", b.batch_id, b.input))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Who is acting: `user@host`.
fn who() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("{user}@{}", strata_publish::locks::this_host())
}

pub async fn retire(
    settings: &Settings,
    args: RetireArgs,
    action: RetireAction,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    strata_publish::names::validate_dataset_name(&args.source)
        .map_err(|e| user_error!("source {:?}: {e}", args.source))?;
    if args.reason.trim().is_empty() {
        return Err(user_error!("--reason is empty; say why, it is recorded with the action"));
    }
    let lake = settings.open_lake(OpenMode::Existing).await?;
    let mut index = strata_land::SourceIndex::load(&lake, &args.source).await?;
    let landed: Vec<Landed> = index
        .all_batches(&lake)
        .await?
        .into_iter()
        .map(|m| Landed { batch_id: m.batch_id, input: m.input.name, rows: m.rows })
        .collect();
    if landed.is_empty() {
        return Err(user_error!(
            "source {:?} has no landed batches in this lake; `strata land {} FILE` lands one",
            args.source,
            args.source
        ));
    }
    let batch =
        resolve(&args.batch, &landed).map_err(|e| user_error!("source {}: {e}", args.source))?;
    let ctx = run_context()?;
    let target = Target { source: &args.source, batch_id: &batch.batch_id, input: &batch.input };
    let recorded = retire::record(&lake, target, action, &args.reason, &who(), ctx.now()).await?;
    let (done, entry) = match &recorded {
        Recorded::Done(e) => (true, Some(e)),
        Recorded::Already(e) => (false, e.as_ref()),
    };
    if args.json {
        output::json(
            out,
            &json!({ "changed": done, "batch_id": batch.batch_id, "input": batch.input, "entry": entry }),
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let what = format!(
        "batch {} of source {} (landed from {}, {} rows)",
        batch.batch_id, args.source, batch.input, batch.rows
    );
    match (action, done, entry) {
        (RetireAction::Retire, true, _) => writeln!(
            out,
            "retired {what}: {}. Later runs leave it out of their input; the next run over its \
             dates recomputes them without it (`strata run` recomputes every date)",
            args.reason
        )?,
        (RetireAction::Retire, false, Some(e)) => writeln!(
            out,
            "{what} was already retired by {} at {}: {}; nothing changed",
            e.by,
            e.at.format("%Y-%m-%d %H:%M:%S"),
            e.reason
        )?,
        (RetireAction::Unretire, true, _) => writeln!(
            out,
            "put {what} back: {}. The next run over its dates reads it again",
            args.reason
        )?,
        _ => writeln!(out, "{what} is not retired; nothing changed")?,
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn retired(
    settings: &Settings,
    args: RetiredArgs,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    strata_publish::names::validate_dataset_name(&args.source)
        .map_err(|e| user_error!("source {:?}: {e}", args.source))?;
    let lake = settings.open_lake(OpenMode::Existing).await?;
    let all = retire::entries(&lake, &args.source).await?;
    let shown: Vec<RetireEntry> =
        if args.history { all } else { retire::in_force(&all).into_values().collect() };
    if args.json {
        output::json(out, &shown)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = shown
        .iter()
        .map(|e| {
            vec![
                e.seq.to_string(),
                e.at.format("%Y-%m-%d %H:%M:%S").to_string(),
                match e.action {
                    RetireAction::Retire => "retire".into(),
                    RetireAction::Unretire => "unretire".into(),
                },
                e.batch_id.clone(),
                e.input.clone(),
                e.by.clone(),
                e.reason.clone(),
            ]
        })
        .collect();
    output::table(out, &["SEQ", "AT", "ACTION", "BATCH", "INPUT", "BY", "REASON"], &rows)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn landed(id: &str, input: &str) -> Landed {
        Landed { batch_id: id.into(), input: input.into(), rows: 1 }
    }

    #[test]
    fn a_batch_is_named_by_id_prefix_or_file() {
        let b = [landed("9f2c1ab4", "a.csv"), landed("9f2d0000", "b.csv"), landed("11aa", "b.csv")];
        assert_eq!(resolve("9f2c1ab4", &b).unwrap().input, "a.csv");
        assert_eq!(resolve("9f2c", &b).unwrap().input, "a.csv");
        assert_eq!(resolve("a.csv", &b).unwrap().batch_id, "9f2c1ab4");
        let e = resolve("9f2", &b).unwrap_err();
        assert!(e.contains("no batch"), "a prefix under 4 characters names nothing: {e}");
        let e = resolve("b.csv", &b).unwrap_err();
        assert!(e.contains("2 batches") && e.contains("11aa from b.csv"), "{e}");
        assert!(resolve("c.csv", &b).is_err());
    }
}
