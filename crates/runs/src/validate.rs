//! VALIDATING, decided: the reconciliation checks of each stage, the gates, and the run's
//! verdict. Pure functions over what the stages counted and what the writer staged; the driver
//! gathers those and carries out the verdict.

use std::collections::BTreeMap;

use strata_medallion::pipeline::GateDef;
use strata_medallion::stages::StageReport;
use strata_medallion::types::{Finding, GateMeasure, Severity, StageKind};
pub use strata_publish::model::{Approval, Check, Evidence};
use strata_publish::Staged;

/// The control totals of everything a dataset staged, if every partition has them.
fn totals_of(staged: &Staged) -> Option<strata_reconcile::ControlTotals> {
    let parts: Option<Vec<&strata_reconcile::ControlTotals>> =
        staged.partitions.iter().map(|p| p.totals.as_ref()).collect();
    parts.and_then(|p| strata_reconcile::ControlTotals::combine(p).ok())
}

/// The checks of one computing stage: what its SQL counted against what the writer wrote.
/// `quarantine` is what a cleaned stage staged for its quarantine dataset.
pub fn stage_checks(r: &StageReport, staged: &Staged, quarantine: Option<&Staged>) -> Vec<Check> {
    let mut checks = Vec::new();
    let totals = totals_of(staged);
    // The written sum of a column; no rows written sums to zero.
    let written_sum = |col: &str| {
        totals
            .as_ref()
            .and_then(|t| t.sums.get(col))
            .cloned()
            .or_else(|| (staged.rows == 0).then(|| "0".to_string()))
    };
    let ds = r.dataset.as_str();
    if r.stage == StageKind::Clean {
        checks.push(Check::new(
            ds,
            "input = accepted + quarantined + duplicates + withheld",
            r.rows_in == r.rows_out + r.quarantined + r.duplicates + r.withheld,
            format!(
                "{} = {} + {} + {} + {}",
                r.rows_in, r.rows_out, r.quarantined, r.duplicates, r.withheld
            ),
        ));
        for (col, p) in &r.sums {
            let parts =
                strata_reconcile::decimal_sum(&[&p.accepted, &p.duplicates, &p.quarantined]);
            checks.push(Check::new(
                ds,
                format!("sum({col}): raw = accepted + duplicates + quarantined"),
                parts.as_ref().is_ok_and(|s| strata_reconcile::same_decimal(s, &p.input)),
                format!("{} = {} + {} + {}", p.input, p.accepted, p.duplicates, p.quarantined),
            ));
            // Rows of failed partitions were counted as accepted but are not written.
            if r.withheld == 0 {
                let written = written_sum(col);
                checks.push(Check::new(
                    ds,
                    format!("sum({col}): accepted = written"),
                    written
                        .as_deref()
                        .is_some_and(|w| strata_reconcile::same_decimal(w, &p.accepted)),
                    format!("{} = {}", p.accepted, written.unwrap_or_else(|| "?".into())),
                ));
            }
        }
        if let Some(expected) = &r.expected_partitions {
            let written: Vec<&String> = staged.partitions.iter().map(|p| &p.key).collect();
            // A dataset partitioned below its date has each date's rows in partitions under it.
            let present =
                |k: &String| written.iter().any(|w| *w == k || w.starts_with(&format!("{k}/")));
            let missing: Vec<&str> =
                expected.iter().filter(|k| !present(k)).map(String::as_str).collect();
            let detail = if missing.is_empty() {
                format!("{} partition(s)", expected.len())
            } else {
                format!("missing {}", missing.join(", "))
            };
            checks.push(Check::new(
                ds,
                "every expected partition is present",
                missing.is_empty(),
                detail,
            ));
        }
        if let Some(q) = quarantine {
            checks.push(Check::new(
                &format!("{ds}.quarantine"),
                "quarantined = written",
                q.rows == r.quarantined,
                format!("{} = {}", r.quarantined, q.rows),
            ));
        }
    }
    for (col, expected) in &r.expected_sums {
        let got = written_sum(col);
        checks.push(Check::new(
            ds,
            format!("sum({col}) = sum({})", expected.of),
            got.as_deref().is_some_and(|g| strata_reconcile::same_decimal(g, &expected.value)),
            format!("{} = {}", got.unwrap_or_else(|| "?".into()), expected.value),
        ));
    }
    if let Some(k) = staged.keys {
        let mut detail = format!("{} distinct, {} duplicate(s)", k.distinct, k.duplicates);
        if k.out_of_order > 0 {
            detail.push_str(&format!(
                ", {} key(s) out of order: the rows were not sorted by key, so their uniqueness \
                 is not proved (a bug in strata: please report it)",
                k.out_of_order
            ));
        }
        checks.push(Check::new(
            ds,
            "no duplicate keys",
            k.duplicates == 0 && k.out_of_order == 0,
            detail,
        ));
    }
    checks
}

/// The check every staged dataset gets: its rows agree with its partitions, its files and its
/// control totals.
pub fn output_check(dataset: &str, staged: &Staged) -> Check {
    let parts: u64 = staged.partitions.iter().map(|p| p.rows).sum();
    let files: u64 = staged.partitions.iter().flat_map(|p| &p.files).map(|f| f.rows).sum();
    let totalled = totals_of(staged).map(|t| t.rows);
    Check::new(
        dataset,
        "rows written = in partitions = in files = totalled",
        parts == staged.rows && files == staged.rows && totalled.is_none_or(|t| t == staged.rows),
        format!(
            "{} / {parts} / {files} / {}",
            staged.rows,
            totalled.map_or("-".into(), |t| t.to_string())
        ),
    )
}

use strata_medallion::pipeline::DEFAULT_GATE;

/// What a cleaned stage's gates measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateCounts {
    pub rows_in: u64,
    pub quarantined: u64,
    /// Lines of the batches read that landing set aside (unparseable), for a reference dataset
    /// (which reads its batches whole); they count as quarantined.
    pub rejected: u64,
    /// Rows of the dataset's current version, if it has one.
    pub rows_before: Option<u64>,
    /// Rows of the version this run would publish.
    pub rows_after: u64,
}

/// The findings of a dataset's gates: one per gate its counts cross.
pub fn gate_findings(dataset: &str, gates: &[GateDef], c: GateCounts) -> Vec<Finding> {
    let mut found = Vec::new();
    for g in gates {
        let crossed = match g.measure {
            GateMeasure::MaxQuarantineRate(max) => {
                let (bad, all) = (c.quarantined + c.rejected, c.rows_in + c.rejected);
                let rate = if all == 0 { 0.0 } else { bad as f64 / all as f64 };
                let emptied = match c.rows_before {
                    // The default gate also stops a dataset that had rows being published
                    // empty: an export that is all garbage, or only a header.
                    Some(b) if b > 0 && c.rows_after == 0 && g.name == DEFAULT_GATE => {
                        Some(format!("{dataset} would be published empty (it has {b} rows now)"))
                    }
                    _ => None,
                };
                let rejected = match c.rejected {
                    0 => String::new(),
                    n => format!(", counting {n} line(s) landing could not read"),
                };
                emptied.or_else(|| {
                    (rate > max).then(|| {
                        format!(
                            "quarantine rate {:.2}% > {:.2}%{rejected}",
                            rate * 100.0,
                            max * 100.0
                        )
                    })
                })
            }
            GateMeasure::MaxRowChange(max) => match c.rows_before {
                Some(b) if b > 0 => {
                    let change = (c.rows_after as f64 / b as f64 - 1.0).abs();
                    (change > max).then(|| {
                        format!(
                            "rows {b} -> {}: {:.1}% change > {:.1}%",
                            c.rows_after,
                            change * 100.0,
                            max * 100.0
                        )
                    })
                }
                // Nothing published yet: there is no change to measure.
                _ => None,
            },
        };
        if let Some(mut detail) = crossed {
            if g.name == DEFAULT_GATE {
                detail.push_str(&format!(
                    " (the default gate; declare a max_quarantine_rate gate in \
                     [cleaned.{dataset}], or set default_gate = false there, to choose otherwise)"
                ));
            }
            found.push(Finding {
                severity: g.severity,
                source: format!("gate {}", g.name),
                dataset: dataset.to_string(),
                rows: 0,
                detail,
            });
        }
    }
    found
}

/// What a run does with its validated output.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Publish it.
    Publish,
    /// Stage it and hold it for a person: one line per MANUAL_REVIEW finding.
    Hold(Vec<String>),
    /// A reconciliation check failed: the output does not match its input.
    FailChecks(Vec<String>),
    /// A FAIL_RUN finding: the data is not fit to publish.
    FailGate(Finding),
}

/// The verdict from the checks and the findings. A failed check wins over everything (the
/// output is wrong, whatever the gates say), then a FAIL_RUN finding, then MANUAL_REVIEW.
pub fn verdict(checks: &[Check], findings: &[Finding]) -> Verdict {
    let failed: Vec<String> = checks.iter().filter(|c| !c.ok).map(Check::describe).collect();
    if !failed.is_empty() {
        return Verdict::FailChecks(failed);
    }
    if let Some(f) = findings.iter().find(|f| f.severity == Severity::FailRun) {
        return Verdict::FailGate(f.clone());
    }
    let review: Vec<String> = findings
        .iter()
        .filter(|f| f.severity == Severity::ManualReview)
        .map(|f| format!("{} {}: {}", f.dataset, f.source, f.detail))
        .collect();
    if review.is_empty() {
        Verdict::Publish
    } else {
        Verdict::Hold(review)
    }
}

/// The evidence of `dataset` from the run's checks and findings.
pub fn evidence_for(
    dataset: &str,
    run_id: &str,
    checks: &[Check],
    findings: &[Finding],
) -> Evidence {
    let base = dataset.trim_end_matches(".quarantine");
    let findings: Vec<Finding> = findings.iter().filter(|f| f.dataset == base).cloned().collect();
    Evidence {
        run_id: run_id.to_string(),
        checks: checks.iter().filter(|c| c.dataset == dataset).cloned().collect(),
        warnings: findings
            .iter()
            .filter(|f| f.severity == Severity::Warn)
            .map(|f| format!("{}: {}", f.source, f.detail))
            .collect(),
        findings,
        approved: None,
    }
}

/// The findings of the gates, also kept on the report of the cleaned stage they measured (for
/// the run's output; not on the landing of a source of the same name); rules put theirs there
/// already.
pub fn attach_gate_findings(reports: &mut [StageReport], findings: &[Finding]) {
    let mut by_dataset: BTreeMap<&str, Vec<&Finding>> = BTreeMap::new();
    for f in findings.iter().filter(|f| f.source.starts_with("gate ")) {
        by_dataset.entry(f.dataset.as_str()).or_default().push(f);
    }
    for r in reports.iter_mut().filter(|r| r.stage == StageKind::Clean) {
        if let Some(fs) = by_dataset.get(r.dataset.as_str()) {
            r.findings.extend(fs.iter().map(|f| (*f).clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(severity: Severity, dataset: &str) -> Finding {
        Finding {
            severity,
            source: "gate g".into(),
            dataset: dataset.into(),
            rows: 0,
            detail: "d".into(),
        }
    }

    fn check(ok: bool) -> Check {
        Check::new("orders", "rows", ok, "1 = 2".into())
    }

    #[test]
    fn the_verdict_puts_wrong_output_before_gates_and_gates_before_review() {
        let review = finding(Severity::ManualReview, "orders");
        let fail = finding(Severity::FailRun, "orders");
        let warn = finding(Severity::Warn, "orders");
        assert_eq!(verdict(&[check(true)], std::slice::from_ref(&warn)), Verdict::Publish);
        assert_eq!(
            verdict(&[check(true)], &[warn.clone(), review.clone()]),
            Verdict::Hold(vec!["orders gate g: d".into()])
        );
        assert_eq!(
            verdict(&[check(true)], &[review.clone(), fail.clone()]),
            Verdict::FailGate(fail.clone())
        );
        assert_eq!(
            verdict(&[check(false), check(true)], &[fail]),
            Verdict::FailChecks(vec!["orders: rows (1 = 2)".into()])
        );
        assert_eq!(verdict(&[], &[]), Verdict::Publish);
    }

    fn gate(name: &str, measure: GateMeasure, severity: Severity) -> GateDef {
        GateDef { name: name.into(), measure, severity }
    }

    #[test]
    fn gates_fire_only_past_their_threshold() {
        let gates = [
            gate("q", GateMeasure::MaxQuarantineRate(0.10), Severity::FailRun),
            gate("c", GateMeasure::MaxRowChange(0.5), Severity::Warn),
        ];
        let counts = |rows_in, quarantined, rows_before, rows_after| GateCounts {
            rows_in,
            quarantined,
            rejected: 0,
            rows_before,
            rows_after,
        };
        // 10% exactly does not cross a 10% gate; 25% does.
        assert!(gate_findings("orders", &gates, counts(20, 2, None, 18)).is_empty());
        let found = gate_findings("orders", &gates, counts(20, 5, None, 15));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].severity, Severity::FailRun);
        assert_eq!(found[0].detail, "quarantine rate 25.00% > 10.00%");
        // Row change needs a published version; 100 -> 40 is a 60% change.
        assert!(gate_findings("orders", &gates, counts(0, 0, Some(0), 40)).is_empty());
        let found = gate_findings("orders", &gates, counts(0, 0, Some(100), 40));
        assert_eq!(found[0].detail, "rows 100 -> 40: 60.0% change > 50.0%");
        assert_eq!(found[0].source, "gate c");
        // No input rows: a rate of zero.
        assert!(gate_findings("orders", &gates, counts(0, 0, None, 0)).is_empty());
        // Lines landing could not read count as quarantined.
        let c = GateCounts { rejected: 6, ..counts(4, 0, None, 4) };
        assert_eq!(
            gate_findings("orders", &gates, c)[0].detail,
            "quarantine rate 60.00% > 10.00%, counting 6 line(s) landing could not read"
        );
    }

    /// The default gate stops a dataset that had rows from being published empty, even when
    /// nothing was quarantined (a snapshot that is only a header); declared gates do not.
    #[test]
    fn the_default_gate_stops_an_emptied_dataset() {
        let default = gate(DEFAULT_GATE, GateMeasure::MaxQuarantineRate(0.05), Severity::FailRun);
        let c = GateCounts {
            rows_in: 0,
            quarantined: 0,
            rejected: 0,
            rows_before: Some(4),
            rows_after: 0,
        };
        let found = gate_findings("airports", std::slice::from_ref(&default), c);
        assert!(found[0]
            .detail
            .starts_with("airports would be published empty (it has 4 rows now)"));
        let declared = gate("q", GateMeasure::MaxQuarantineRate(0.05), Severity::FailRun);
        assert!(gate_findings("airports", &[declared], c).is_empty());
        let first = GateCounts { rows_before: None, ..c };
        assert!(gate_findings("airports", &[default], first).is_empty(), "nothing published yet");
    }

    #[test]
    fn gate_findings_go_on_the_cleaned_stage_once() {
        let report = |stage| StageReport { stage, dataset: "orders".into(), ..Default::default() };
        let mut reports = [report(StageKind::Land), report(StageKind::Clean)];
        let rule = Finding { source: "rule r".into(), ..finding(Severity::Warn, "orders") };
        attach_gate_findings(&mut reports, &[finding(Severity::Warn, "orders"), rule]);
        assert!(reports[0].findings.is_empty(), "not on the landing of the source");
        assert_eq!(reports[1].findings.len(), 1, "the gate's, not the rule's (already there)");
        assert_eq!(format!("{:<6}|", Severity::Warn), "WARN  |", "severities pad in tables");
    }

    #[test]
    fn evidence_is_the_datasets_own_and_a_quarantine_carries_its_base_findings() {
        let checks = [
            Check::new("orders", "a", true, String::new()),
            Check::new("orders.quarantine", "b", true, String::new()),
        ];
        let findings = [finding(Severity::Warn, "orders"), finding(Severity::Info, "customers")];
        let e = evidence_for("orders.quarantine", "r1", &checks, &findings);
        assert_eq!(e.checks.len(), 1);
        assert_eq!(e.checks[0].check, "b");
        assert_eq!(e.findings, vec![findings[0].clone()]);
        assert_eq!(e.warnings, vec!["gate g: d".to_string()]);
        let json = serde_json::to_value(&e).unwrap_or_default();
        assert_eq!(json["checks"][0]["ok"], true, "the documented field names: {json}");
    }
}
