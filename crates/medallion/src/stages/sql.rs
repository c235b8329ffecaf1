//! The SQL of the cleaned stage (casts, contract checks, rules) and the partition keys a window owns.

use std::collections::BTreeSet;

use chrono::NaiveDate;

use crate::derive::DerivePlan;
use crate::pipeline::{CleanedDef, ContractColumn, RuleDef};
use crate::types::{Bound, Grain, RuleCheck, Severity};

use super::*;

/// `"name"` with inner quotes doubled.
pub(crate) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with inner quotes doubled.
pub(super) fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A bound of a range rule as SQL.
fn bound_literal(b: &Bound) -> String {
    if b.is_text() {
        literal(&b.text())
    } else {
        b.text()
    }
}

/// The SQL condition a rule requires, over the typed columns, and the SQL of the reason a
/// failing row gets.
fn rule_predicate(rule: &RuleDef) -> (String, String) {
    match &rule.check {
        RuleCheck::NotNull { column } => (
            format!("{} IS NOT NULL", ident(column)),
            format!("concat({}, ' is null')", literal(column)),
        ),
        RuleCheck::Range { column, min, max } => {
            let col = ident(column);
            let mut conds = Vec::new();
            if let Some(min) = min {
                conds.push(format!("{col} >= {}", bound_literal(min)));
            }
            if let Some(max) = max {
                conds.push(format!("{col} <= {}", bound_literal(max)));
            }
            let bounds = format!(
                "[{}, {}]",
                min.as_ref().map(Bound::text).unwrap_or_else(|| "-inf".into()),
                max.as_ref().map(Bound::text).unwrap_or_else(|| "inf".into())
            );
            let cond = if conds.is_empty() { "TRUE".into() } else { conds.join(" AND ") };
            (
                format!("({col} IS NULL OR ({cond}))"),
                format!(
                    "concat({}, ' = ', CAST({col} AS VARCHAR), ' is outside ', {})",
                    literal(column),
                    literal(&bounds)
                ),
            )
        }
        RuleCheck::Enum { column, values } => {
            let col = ident(column);
            let listed: Vec<String> = values.iter().map(|v| literal(v)).collect();
            (
                format!("({col} IS NULL OR CAST({col} AS VARCHAR) IN ({}))", listed.join(", ")),
                format!(
                    "concat({}, ' = ', CAST({col} AS VARCHAR), ' is not one of ', {})",
                    literal(column),
                    literal(&values.join(", "))
                ),
            )
        }
        RuleCheck::Regex { column, pattern } => {
            let col = ident(column);
            (
                format!(
                    "({col} IS NULL OR regexp_like(CAST({col} AS VARCHAR), {}))",
                    literal(pattern)
                ),
                format!(
                    "concat({}, ' = ', CAST({col} AS VARCHAR), ' does not match ', {})",
                    literal(column),
                    literal(pattern)
                ),
            )
        }
        RuleCheck::Sql(sql) => {
            (format!("COALESCE(({sql}), FALSE)"), literal(&format!("not true: {sql}")))
        }
    }
}

/// The SQL of the cleaned stage, over a table `raw`: casts and checks every row.
/// Columns: `_batch`, `_line`, `_order` (the batch's landing order), `_landed` (the text as
/// landed of every contract column, packed by `strata_pack`; null unless the row is
/// quarantined), typed `<col>`, the derived columns, `_rule`, `_reason` and `_v<n>` (rows
/// failing a rule that does not quarantine).
///
/// Derived column `i` is computed by `strata_derive_<i>` ([`crate::derive::DeriveUdf`]), which
/// must be registered; a row whose expression fails, or gives null for the key or the business
/// date, is quarantined as `derive` with the expression in its reason.
/// Deduplication needs no window function: the stage sorts these rows by key and rank order and
/// keeps the first row of each key as it streams by.
pub fn cleaning_sql(
    def: &CleanedDef,
    contract: &[ContractColumn],
    derived: &[DerivePlan],
    raw_columns: &BTreeSet<String>,
) -> String {
    let mut typed = vec!["_batch".to_string(), "_line".to_string(), "_order".to_string()];
    for c in contract {
        let raw = if raw_columns.contains(&c.name) {
            format!("strata_text({})", ident(&c.name))
        } else {
            "CAST(NULL AS VARCHAR)".into()
        };
        typed.push(format!("{raw} AS {}", ident(&format!("{}__raw", c.name))));
        let function = crate::udf::decimal_of(&c.sql_type)
            .and_then(|(p, s)| crate::udf::decimal_function(p, s));
        typed.push(match function {
            Some(f) => format!("{f}({raw}) AS {}", ident(&c.name)),
            None => format!("TRY_CAST({raw} AS {}) AS {}", c.sql_type, ident(&c.name)),
        });
    }
    // Checks in order: casts, not-null contract (and the business date), then the rules.
    let mut checks: Vec<(String, String, String)> = Vec::new(); // (failing condition, rule, reason)
    for c in contract {
        let (t, r) = (ident(&c.name), ident(&format!("{}__raw", c.name)));
        checks.push((
            format!("{r} IS NOT NULL AND {t} IS NULL"),
            "contract".into(),
            format!(
                "concat({}, ': cannot read ', {r}, ' as ', {})",
                literal(&c.name),
                literal(&c.sql_type)
            ),
        ));
    }
    for c in contract {
        if !c.nullable || def.is_business_date(&c.name) || def.key.contains(&c.name) {
            checks.push((
                format!("{} IS NULL", ident(&c.name)),
                "not_null".into(),
                literal(&format!("{} is null", c.name)),
            ));
        }
    }
    // Derived columns: each one's own error first, then a null where a value is required.
    let mut steps = String::new();
    let mut from = "typed".to_string();
    for (i, d) in derived.iter().enumerate() {
        let r = ident(&format!("_d{i}"));
        let mut args = vec!["_line".to_string()];
        args.extend(d.args.iter().map(|a| ident(a)));
        steps.push_str(&format!(
            ", d{i} AS (SELECT *, {}['value'] AS {} FROM \
             (SELECT *, {}({}) AS {r} FROM {from}))",
            r,
            ident(&d.name),
            crate::derive::function_name(i),
            args.join(", "),
        ));
        from = format!("d{i}");
        checks.push((
            format!("{r}['error'] IS NOT NULL"),
            "derive".into(),
            format!(
                "concat({}, {r}['error'])",
                literal(&format!("{} = {} failed: ", d.name, d.sql))
            ),
        ));
    }
    // A partition value that cannot name a directory sets its row aside, not the run.
    for col in &def.partition_by {
        let problem = format!("strata_partition_problem({})", ident(col));
        checks.push((
            format!("{problem} IS NOT NULL"),
            "partition_value".into(),
            format!(
                "concat({}, CAST({} AS VARCHAR), ': ', {problem})",
                literal(&format!("{col} = ")),
                ident(col)
            ),
        ));
    }
    for d in derived {
        if def.is_business_date(&d.name) || def.key.contains(&d.name) {
            checks.push((
                format!("{} IS NULL", ident(&d.name)),
                "derive".into(),
                literal(&format!("{} = {} is null", d.name, d.sql)),
            ));
        }
    }
    // Rules that quarantine a record decide `_rule`; the others only flag rows (`_v<n>`), and
    // their severity decides what the flags do.
    let (mut flags, mut flag_ids) = (Vec::new(), Vec::new());
    for (i, rule) in def.rules.iter().enumerate() {
        let (ok, reason) = rule_predicate(rule);
        if rule.severity == Severity::QuarantineRecord {
            checks.push((format!("NOT {ok}"), rule.name.clone(), reason));
        } else {
            flags.push(format!(", NOT {ok} AS _v{i}"));
            flag_ids.push(i);
        }
    }
    let rule_case = checks
        .iter()
        .map(|(cond, rule, _)| format!("WHEN {cond} THEN {}", literal(rule)))
        .collect::<Vec<_>>()
        .join(" ");
    let reason_case = checks
        .iter()
        .map(|(cond, _, reason)| format!("WHEN {cond} THEN {reason}"))
        .collect::<Vec<_>>()
        .join(" ");
    // The text as landed is only kept for the quarantine: accepted rows carry it as null, in one
    // column (a null in each of sixteen text columns would still take 64 bytes a row), so the
    // sort that ranks them moves far fewer bytes.
    let mut out = vec!["_batch".to_string(), "_line".to_string(), "_order".to_string()];
    let raws: Vec<String> = contract.iter().map(|c| ident(&format!("{}__raw", c.name))).collect();
    out.push(format!(
        "CASE WHEN _rule IS NULL THEN NULL ELSE strata_pack({}) END AS _landed",
        raws.join(", ")
    ));
    out.extend(contract.iter().map(|c| ident(&c.name)));
    out.extend(derived.iter().map(|d| ident(&d.name)));
    out.extend(["_rule", "_reason"].map(String::from));
    out.extend((0..flags.len()).map(|i| format!("_v{}", flag_ids[i])));
    format!(
        "WITH typed AS (SELECT {typed} FROM raw){steps}, \
         ruled AS (SELECT *, CASE {rule_case} ELSE NULL END AS _rule, \
                   CASE {reason_case} ELSE NULL END AS _reason{flags} FROM {from}) \
         SELECT {out} FROM ruled",
        typed = typed.join(", "),
        flags = flags.concat(),
        out = out.join(", "),
    )
}

/// The order that ranks the rows of one key, best first: the latest by `latest_by`, then (with
/// no `latest_by`, or on a tie) the row of the later-landed batch, then the later line, so that
/// a correction landed after the original always wins. The order is total, so the winner is
/// the same on every run over the same lake.
pub(super) fn rank_order(def: &CleanedDef) -> String {
    match &def.latest_by {
        Some(l) => format!("{} DESC NULLS LAST, _order DESC, _line DESC", ident(l)),
        None => "_order DESC, _line DESC".into(),
    }
}

pub(super) fn date_literal(d: NaiveDate) -> String {
    format!("DATE '{}'", d.format("%Y-%m-%d"))
}

/// Partition keys of a day- or month-grain dataset for a window.
pub fn owned_keys(column: &str, grain: Grain, window: Window) -> BTreeSet<String> {
    window
        .days()
        .map(|d| {
            if grain == Grain::Month {
                format!("{column}={}", d.format("%Y-%m"))
            } else {
                format!("{column}={}", d.format("%Y-%m-%d"))
            }
        })
        .collect()
}

/// The partition column of a dataset: the business date, or `<date>_month` for month grain.
pub fn partition_column(business_date: &str, grain: Grain) -> String {
    if grain == Grain::Month {
        format!("{business_date}_month")
    } else {
        business_date.to_string()
    }
}
