//! Schema drift: each raw batch's columns compared with the contract of the cleaned dataset
//! that reads it (pure code, no IO). A batch missing a required column cannot be cleaned; a
//! missing nullable column and a column the contract does not name are findings, with the
//! severity the source declares.

use std::collections::BTreeSet;

use crate::pipeline::ContractColumn;
use crate::types::{Finding, Severity};

/// The columns of one raw batch.
#[derive(Debug, Clone)]
pub struct BatchColumns<'a> {
    /// The input file's name, as landed.
    pub file: &'a str,
    pub batch: &'a str,
    pub rows: u64,
    pub columns: BTreeSet<&'a str>,
}

/// A batch missing columns the contract requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingRequired {
    pub file: String,
    pub batch: String,
    pub columns: Vec<String>,
}

/// What the source says drift is.
#[derive(Debug, Clone, Copy)]
pub struct DriftPolicy {
    pub on_missing_column: Severity,
    pub on_extra_column: Severity,
}

impl Default for DriftPolicy {
    fn default() -> Self {
        DriftPolicy { on_missing_column: Severity::Warn, on_extra_column: Severity::Warn }
    }
}

/// The decision (pure): the first batch missing a required column (`required`: the not-null
/// columns, the key and the business date) is an `Err`; otherwise one finding per batch and
/// kind of drift. Columns whose names start with `_` are strata's own (the line number).
pub fn drift(
    dataset: &str,
    contract: &[ContractColumn],
    required: &BTreeSet<&str>,
    batches: &[BatchColumns<'_>],
    policy: DriftPolicy,
) -> Result<Vec<Finding>, MissingRequired> {
    let named: BTreeSet<&str> = contract.iter().map(|c| c.name.as_str()).collect();
    let mut findings = Vec::new();
    for b in batches {
        let missing: Vec<&str> =
            contract.iter().map(|c| c.name.as_str()).filter(|c| !b.columns.contains(c)).collect();
        let (required_missing, nullable_missing): (Vec<&str>, Vec<&str>) =
            missing.into_iter().partition(|c| required.contains(c));
        if !required_missing.is_empty() {
            return Err(MissingRequired {
                file: b.file.to_string(),
                batch: b.batch.to_string(),
                columns: required_missing.into_iter().map(str::to_string).collect(),
            });
        }
        let short = &b.batch[..b.batch.len().min(12)];
        if !nullable_missing.is_empty() {
            findings.push(Finding {
                severity: policy.on_missing_column,
                source: "schema drift".into(),
                dataset: dataset.to_string(),
                rows: b.rows,
                detail: format!(
                    "{} (batch {short}) has no column {}; its {} row(s) read it as NULL",
                    b.file,
                    nullable_missing.join(", "),
                    b.rows
                ),
            });
        }
        let extra: Vec<&str> = b
            .columns
            .iter()
            .copied()
            .filter(|c| !named.contains(c) && !c.starts_with('_'))
            .collect();
        if !extra.is_empty() {
            findings.push(Finding {
                severity: policy.on_extra_column,
                source: "schema drift".into(),
                dataset: dataset.to_string(),
                rows: b.rows,
                detail: format!(
                    "{} (batch {short}) has column {}, which the contract does not name; not read",
                    b.file,
                    extra.join(", ")
                ),
            });
        }
    }
    Ok(findings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contract() -> Vec<ContractColumn> {
        ["order_id", "order_date", "status"]
            .into_iter()
            .map(|n| ContractColumn {
                name: n.into(),
                sql_type: "varchar".into(),
                nullable: n == "status",
            })
            .collect()
    }

    fn batch<'a>(file: &'a str, columns: &[&'a str]) -> BatchColumns<'a> {
        BatchColumns {
            file,
            batch: "abcdef0123456789",
            rows: 3,
            columns: columns.iter().copied().collect(),
        }
    }

    #[test]
    fn a_missing_required_column_stops_the_stage() {
        let required = BTreeSet::from(["order_id", "order_date"]);
        let batches = [
            batch("a.csv", &["order_id", "order_date", "status", "_line"]),
            batch("b.csv", &["order_id", "status"]),
        ];
        let e =
            drift("orders", &contract(), &required, &batches, DriftPolicy::default()).unwrap_err();
        assert_eq!(e.file, "b.csv");
        assert_eq!(e.columns, vec!["order_date".to_string()]);
    }

    #[test]
    fn missing_nullable_and_extra_columns_are_findings_with_the_sources_severity() {
        let required = BTreeSet::from(["order_id", "order_date"]);
        let batches = [
            batch("a.csv", &["order_id", "order_date", "status", "_line"]),
            batch("b.csv", &["order_id", "order_date", "note", "_line"]),
        ];
        let policy =
            DriftPolicy { on_missing_column: Severity::Info, on_extra_column: Severity::FailRun };
        let found = drift("orders", &contract(), &required, &batches, policy).unwrap();
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].severity, Severity::Info);
        assert_eq!(
            found[0].detail,
            "b.csv (batch abcdef012345) has no column status; its 3 row(s) read it as NULL"
        );
        assert_eq!(found[1].severity, Severity::FailRun);
        assert!(found[1].detail.contains("has column note"), "{}", found[1].detail);
        let clean = [batch("a.csv", &["order_id", "order_date", "status", "_line"])];
        assert!(drift("orders", &contract(), &required, &clean, policy).unwrap().is_empty());
    }
}
