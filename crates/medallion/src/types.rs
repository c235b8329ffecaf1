//! The typed vocabulary of a pipeline: severities, grains, rule checks, gate measures, and what
//! the rules and gates found. Each is read from the same spellings `strata.toml` and the run
//! manifests use, so a typo is a definition error with a line number, not a string compared in
//! a dozen places.

use std::fmt;

use serde::{Deserialize, Serialize};
pub use strata_publish::model::{Finding, Severity};

/// The partition grain of a dataset: one partition per day or per month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Grain {
    #[default]
    Day,
    Month,
}

impl Grain {
    pub fn as_str(self) -> &'static str {
        match self {
            Grain::Day => "day",
            Grain::Month => "month",
        }
    }

    /// The `chrono` format of a partition value at this grain (`2026-01-03`, `2026-01`).
    pub fn date_format(self) -> &'static str {
        match self {
            Grain::Day => "%Y-%m-%d",
            Grain::Month => "%Y-%m",
        }
    }
}

/// How the files of a source relate to each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Delivery {
    /// Every file adds or corrects rows; all batches merge by key, the later-landed wins.
    #[default]
    Changes,
    /// Every file is the whole table: the latest-landed batch is the whole truth, and a row
    /// missing from it is gone.
    Snapshot,
}

impl TryFrom<String> for Delivery {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "changes" => Ok(Delivery::Changes),
            "snapshot" => Ok(Delivery::Snapshot),
            other => Err(format!("delivery is {other:?}; expected \"snapshot\" or \"changes\"")),
        }
    }
}

impl From<Delivery> for String {
    fn from(d: Delivery) -> String {
        match d {
            Delivery::Changes => "changes".into(),
            Delivery::Snapshot => "snapshot".into(),
        }
    }
}

/// How a run publishes what it computed (`strata run --mode`): the backfill modes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum Backfill {
    /// Replace the published partitions (the default).
    #[default]
    Replace,
    /// Compute and validate; keep nothing.
    DryRun,
    /// Compute, validate and publish to the named shadow ref; the pointers stay.
    Shadow { name: String },
    /// Compute and validate, then diff against the published version; keep only the report.
    CompareOnly,
    /// Replace partitions of a closed period, recorded as a restatement.
    Restatement { reason: String, approver: Option<String> },
}

impl Backfill {
    pub fn is_replace(&self) -> bool {
        *self == Backfill::Replace
    }

    /// Whether the run publishes anything to a dataset's pointer.
    pub fn flips_pointers(&self) -> bool {
        matches!(self, Backfill::Replace | Backfill::Restatement { .. })
    }

    /// The name `--mode` takes.
    pub fn as_str(&self) -> &'static str {
        match self {
            Backfill::Replace => "replace",
            Backfill::DryRun => "dry-run",
            Backfill::Shadow { .. } => "shadow",
            Backfill::CompareOnly => "compare-only",
            Backfill::Restatement { .. } => "restatement",
        }
    }
}

/// How a run chooses the version of a reference it reads (`policy` in `strata.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PinPolicy {
    /// The version current when the run locks its inputs.
    #[default]
    Latest,
    /// For dates published before, the version their original run read.
    AsOriginallyRun,
}

/// Which version of a reference a run binds: a policy, or an exact version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pin {
    /// The version current when the run locks its inputs (for a reference the run computes,
    /// the version it publishes).
    #[default]
    Latest,
    /// Exactly this version (`version = N`).
    Version(u64),
    /// A run over dates published before reads the version their original run recorded;
    /// over new dates, the latest.
    AsOriginallyRun,
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pin::Latest => f.write_str("latest"),
            Pin::Version(v) => write!(f, "version = {v}"),
            Pin::AsOriginallyRun => f.write_str("as_originally_run"),
        }
    }
}

/// How much of an input a model reads in a windowed run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ReadMode {
    /// The dates of the window (and the model's `reads_days` before it): for facts.
    #[default]
    Window,
    /// Every row, at its bound version, whatever the window: for inputs a model looks rows up
    /// in (customers by id, a price list), whose dates are not the fact's dates.
    All,
}

impl TryFrom<String> for ReadMode {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "window" => Ok(ReadMode::Window),
            "all" => Ok(ReadMode::All),
            other => Err(format!("reads is {other:?}; expected \"all\" or \"window\"")),
        }
    }
}

impl From<ReadMode> for String {
    fn from(m: ReadMode) -> String {
        match m {
            ReadMode::Window => "window".into(),
            ReadMode::All => "all".into(),
        }
    }
}

impl TryFrom<String> for Grain {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "day" => Ok(Grain::Day),
            "month" => Ok(Grain::Month),
            other => Err(format!("grain is {other:?}; expected \"day\" or \"month\"")),
        }
    }
}

impl From<Grain> for String {
    fn from(g: Grain) -> String {
        g.as_str().to_string()
    }
}

impl fmt::Display for Grain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A bound of a range rule, as written in `strata.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Bound {
    Integer(i64),
    Float(f64),
    Boolean(bool),
    /// A TOML date or date-time literal (`min = 2020-01-01`).
    Date(toml::value::Datetime),
    Text(String),
}

impl Bound {
    /// The bound as text (`12`, `2020-01-01`, `abc`).
    pub fn text(&self) -> String {
        match self {
            Bound::Integer(i) => i.to_string(),
            Bound::Float(f) => f.to_string(),
            Bound::Boolean(b) => b.to_string(),
            Bound::Date(d) => d.to_string(),
            Bound::Text(s) => s.clone(),
        }
    }

    /// Whether SQL must quote the bound as a string literal (a date is compared as one, so
    /// that `min = 2020-01-01` is a date, not 2020 minus 1 minus 1).
    pub fn is_text(&self) -> bool {
        matches!(self, Bound::Text(_) | Bound::Date(_))
    }
}

/// What a rule checks; a rule has exactly one.
#[derive(Debug, Clone, PartialEq)]
pub enum RuleCheck {
    /// The column is not null.
    NotNull { column: String },
    /// The column is within `[min, max]` (either may be open); null passes.
    Range { column: String, min: Option<Bound>, max: Option<Bound> },
    /// The column is one of `values`; null passes.
    Enum { column: String, values: Vec<String> },
    /// The column matches `pattern` (Rust regex syntax); null passes.
    Regex { column: String, pattern: String },
    /// An SQL predicate over the typed columns; rows where it is not true fail.
    Sql(String),
}

impl RuleCheck {
    /// The column the check reads, if it names one.
    pub fn column(&self) -> Option<&str> {
        match self {
            RuleCheck::NotNull { column }
            | RuleCheck::Range { column, .. }
            | RuleCheck::Enum { column, .. }
            | RuleCheck::Regex { column, .. } => Some(column),
            RuleCheck::Sql(_) => None,
        }
    }
}

/// What a gate measures over a stage; a gate has exactly one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GateMeasure {
    /// Quarantined rows / input rows above this fails the gate (0.01 = 1%).
    MaxQuarantineRate(f64),
    /// |rows of the new version / rows of the current version - 1| above this fails the gate.
    MaxRowChange(f64),
}

/// The kind of a stage of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageKind {
    /// Landing a source's files as raw batches.
    #[default]
    Land,
    /// Casting, checking and deduplicating a source into a cleaned dataset.
    Clean,
    /// A curated model's SQL.
    Model,
}

impl StageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StageKind::Land => "land",
            StageKind::Clean => "clean",
            StageKind::Model => "model",
        }
    }
}

impl fmt::Display for StageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// What a model's output column must sum to: `value`, the sum of `of` (`<input>.<column>`)
/// over the run's dates. Written in manifests as `"<value> = sum(<of>)"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ExpectedSum {
    /// Exact decimal text.
    pub value: String,
    /// `<input>.<column>`.
    pub of: String,
}

impl TryFrom<String> for ExpectedSum {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.split_once(" = sum(")
            .and_then(|(v, rest)| Some((v, rest.strip_suffix(')')?)))
            .map(|(v, of)| ExpectedSum { value: v.to_string(), of: of.to_string() })
            .ok_or_else(|| format!("{s:?} is not \"<value> = sum(<input>.<column>)\""))
    }
}

impl From<ExpectedSum> for String {
    fn from(e: ExpectedSum) -> String {
        format!("{} = sum({})", e.value, e.of)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_round_trip() {
        for s in Severity::ALL {
            let json = serde_json::to_string(&s).unwrap_or_default();
            assert_eq!(json, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<Severity>(&json).ok(), Some(s));
        }
        assert_eq!(Grain::try_from("month".to_string()), Ok(Grain::Month));
        let err = Grain::try_from("weekly".to_string()).unwrap_err();
        assert_eq!(err, "grain is \"weekly\"; expected \"day\" or \"month\"");
        assert!(!Severity::QuarantineRecord.fits_a_gate() && Severity::FailRun.fits_a_gate());
    }

    #[test]
    fn expected_sums_keep_their_manifest_spelling() {
        let e = ExpectedSum { value: "12.50".into(), of: "orders.amount".into() };
        let json = serde_json::to_string(&e).unwrap_or_default();
        assert_eq!(json, "\"12.50 = sum(orders.amount)\"");
        assert_eq!(serde_json::from_str::<ExpectedSum>(&json).ok(), Some(e));
        assert!(serde_json::from_str::<ExpectedSum>("\"12\"").is_err());
        assert_eq!(serde_json::to_string(&StageKind::Clean).unwrap_or_default(), "\"clean\"");
    }

    #[test]
    fn bounds_read_as_written() {
        #[derive(Deserialize)]
        struct T {
            b: Vec<Bound>,
        }
        let t: T =
            toml::from_str("b = [1, 2.5, true, 2020-01-01, \"x\"]").unwrap_or(T { b: vec![] });
        let texts: Vec<String> = t.b.iter().map(Bound::text).collect();
        assert_eq!(texts, ["1", "2.5", "true", "2020-01-01", "x"]);
        assert!(t.b[4].is_text() && t.b[3].is_text() && !t.b[0].is_text());
    }
}
