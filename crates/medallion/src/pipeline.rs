//! The pipeline definition: `strata.toml` and the SQL files beside it.
//!
//! ```toml
//! [pipeline]
//! name = "shop"
//! lookback_days = 2          # an incremental run for day D also recomputes D-1 and D-2
//! memory_limit = "1GiB"      # DataFusion memory pool; spills to disk beyond it
//!
//! [sources.orders]           # raw landing: files matching `path` land in _raw/orders/
//! path = "data/orders/*.csv"
//! format = "csv"             # csv | jsonl | parquet (default: from the extension)
//!
//! [cleaned.orders]           # the cleaned dataset `orders`, from raw source `orders`
//! source = "orders"
//! key = ["order_id"]
//! latest_by = "updated_at"   # dedupe: latest by this column, then by content hash
//! business_date = "order_date"
//! grain = "day"              # day | month
//! columns = { order_id = "bigint not null", order_date = "date not null", amount = "decimal(12,2)" }
//! rules = [
//!   { name = "amount_positive", range = { column = "amount", min = 0 } },
//!   { name = "status_known", enum = { column = "status", values = ["paid", "shipped"] } },
//! ]
//!
//! [models.daily_revenue]     # curated: SQL over cleaned datasets and other models
//! sql = "models/daily_revenue.sql"
//! business_date = "order_date"
//! reads_days = 0             # how far back the SQL reads (6 for a 7-day rolling window)
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use strata_land::InputFormat;

use crate::types::{
    Bound, Delivery, GateMeasure, Grain, Pin, PinPolicy, ReadMode, RuleCheck, Severity,
};

/// A pipeline definition that could not be loaded: names the file, the line and the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct DefinitionError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

/// The `[pipeline]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSection {
    pub name: String,
    #[serde(default)]
    pub lookback_days: u32,
    #[serde(default)]
    pub memory_limit: Option<String>,
    /// The project's lake: a directory relative to the pipeline file, an absolute path, or an
    /// `s3://` URL. Default: `lake` beside the pipeline file.
    #[serde(default)]
    pub lake: Option<String>,
    /// Whether a restatement of a closed period (`strata run --mode restatement`) is held for a
    /// person's approval (MANUAL_REVIEW) before it is published.
    #[serde(default)]
    pub restatement_review: bool,
}

/// A raw source.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceDef {
    /// A file, directory or glob, relative to the pipeline file.
    pub path: String,
    #[serde(default)]
    pub format: Option<InputFormat>,
    #[serde(default)]
    pub delimiter: Option<String>,
    /// What a batch missing a nullable contract column is (default WARN): INFO, WARN, FAIL_RUN
    /// or MANUAL_REVIEW. A batch missing a required column always fails the run.
    #[serde(default)]
    pub on_missing_column: Option<Severity>,
    /// What a batch with a column the contract does not name is (default WARN).
    #[serde(default)]
    pub on_extra_column: Option<Severity>,
    /// How the source's files relate: `changes` (default: every batch merges by key, the
    /// later-landed wins) or `snapshot` (the latest-landed batch is the whole table). Snapshots
    /// feed cleaned datasets without a business date.
    #[serde(default)]
    pub delivery: Delivery,
}

/// A dataset of the lake that the pipeline's models read but the pipeline does not compute: one
/// loaded with `strata publish`, or written by another pipeline. A run reads it whole, at the
/// version its policy binds when the run locks its inputs, and records that binding in its
/// manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceDef {
    /// `latest` (default) or `as_originally_run`.
    #[serde(default)]
    pub policy: Option<PinPolicy>,
    /// Exactly this version, always.
    #[serde(default)]
    pub version: Option<u64>,
}

impl ReferenceDef {
    /// The version choice this reference declares.
    pub fn pin(&self) -> Pin {
        match (self.version, self.policy) {
            (Some(v), _) => Pin::Version(v),
            (None, Some(PinPolicy::AsOriginallyRun)) => Pin::AsOriginallyRun,
            (None, _) => Pin::Latest,
        }
    }
}

/// A quality rule of a cleaned dataset: one check, and what a failure does.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawRule")]
pub struct RuleDef {
    pub name: String,
    pub check: RuleCheck,
    /// What a failure does (quality gates build on this); default `QUARANTINE_RECORD`.
    pub severity: Severity,
}

/// A rule as written: exactly one of the checks is given.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    #[serde(default)]
    not_null: Option<ColumnRef>,
    #[serde(default)]
    range: Option<RangeRule>,
    #[serde(default, rename = "enum")]
    enum_: Option<EnumRule>,
    #[serde(default)]
    regex: Option<RegexRule>,
    #[serde(default)]
    sql: Option<String>,
    #[serde(default)]
    severity: Option<Severity>,
}

impl TryFrom<RawRule> for RuleDef {
    type Error = String;

    fn try_from(r: RawRule) -> Result<Self, String> {
        let mut checks = Vec::new();
        if let Some(c) = r.not_null {
            checks.push(RuleCheck::NotNull { column: c.column });
        }
        if let Some(c) = r.range {
            checks.push(RuleCheck::Range { column: c.column, min: c.min, max: c.max });
        }
        if let Some(c) = r.enum_ {
            if c.values.is_empty() {
                return Err(format!(
                    "rule {:?}: enum has no values, so every row would fail it; list the values \
                     allowed",
                    r.name
                ));
            }
            checks.push(RuleCheck::Enum { column: c.column, values: c.values });
        }
        if let Some(c) = r.regex {
            checks.push(RuleCheck::Regex { column: c.column, pattern: c.pattern });
        }
        if let Some(sql) = r.sql {
            checks.push(RuleCheck::Sql(sql));
        }
        if checks.len() != 1 {
            return Err(format!(
                "rule {:?} must have exactly one of not_null, range, enum, regex, sql",
                r.name
            ));
        }
        Ok(RuleDef {
            name: r.name,
            check: checks.remove(0),
            severity: r.severity.unwrap_or(Severity::QuarantineRecord),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct ColumnRef {
    column: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeRule {
    column: String,
    #[serde(default)]
    min: Option<Bound>,
    #[serde(default)]
    max: Option<Bound>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnumRule {
    column: String,
    values: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegexRule {
    column: String,
    pattern: String,
}

/// A cleaned dataset: a raw source cast to a contract, validated, deduplicated.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanedDef {
    pub source: String,
    pub key: Vec<String>,
    #[serde(default)]
    pub latest_by: Option<String>,
    /// The DATE column that partitions the dataset. Without one, the dataset is a reference
    /// (snapshot) dataset: computed and published whole, unpartitioned.
    #[serde(default)]
    pub business_date: Option<String>,
    #[serde(default)]
    pub grain: Grain,
    /// Columns that partition the accepted rows below the business date (or alone, without
    /// one): `["tenant"]`.
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// Column name → `"<sql type>[ not null]"`, in contract order (the file's order).
    pub columns: toml::Table,
    /// Derived column name → SQL expression over the typed contract columns (and the derived
    /// columns before it), evaluated before the rules, in the order written.
    #[serde(default)]
    pub derive: toml::Table,
    #[serde(default)]
    pub rules: Vec<RuleDef>,
    /// Columns whose exact sums are reconciled: raw = accepted + quarantined + duplicates, and
    /// accepted = what was written. Default: every decimal column of the contract.
    #[serde(default)]
    pub sums: Option<Vec<String>>,
    /// Thresholds that trigger a severity. Without a `max_quarantine_rate` gate, the dataset
    /// gets [`DEFAULT_GATE`] unless `default_gate = false`.
    #[serde(default)]
    pub gates: Vec<GateDef>,
    /// Whether a dataset with no `max_quarantine_rate` gate gets [`DEFAULT_GATE`] (default true).
    #[serde(default = "yes")]
    pub default_gate: bool,
    /// A reference dataset (no business date): which of its versions a model reads, `latest`
    /// (default: the one this run computes) or `as_originally_run`.
    #[serde(default)]
    pub policy: Option<PinPolicy>,
}

fn yes() -> bool {
    true
}

/// The name of the gate a cleaned dataset gets when it declares no `max_quarantine_rate` gate:
/// more than [`DEFAULT_MAX_QUARANTINE_RATE`] of its rows quarantined fails the run, so a contract
/// mistake that sets most rows aside is never published as if nothing happened.
pub const DEFAULT_GATE: &str = "default_max_quarantine_rate";

/// The threshold of [`DEFAULT_GATE`].
pub const DEFAULT_MAX_QUARANTINE_RATE: f64 = 0.05;

impl CleanedDef {
    /// The column partitioning the accepted rows: the business date, or `<date>_month` for
    /// month grain; none for a reference dataset.
    pub fn partition_column(&self) -> Option<String> {
        self.business_date.as_deref().map(|bd| crate::stages::partition_column(bd, self.grain))
    }

    /// Every column partitioning the accepted rows, the date's first.
    pub fn partition_columns(&self) -> Vec<String> {
        self.partition_column().into_iter().chain(self.partition_by.iter().cloned()).collect()
    }

    /// Whether `column` is the business date.
    pub fn is_business_date(&self, column: &str) -> bool {
        self.business_date.as_deref() == Some(column)
    }

    /// Adds [`DEFAULT_GATE`] unless the dataset has a `max_quarantine_rate` gate or opted out.
    fn add_default_gate(&mut self) {
        let has_rate =
            self.gates.iter().any(|g| matches!(g.measure, GateMeasure::MaxQuarantineRate(_)));
        if self.default_gate && !has_rate {
            self.gates.push(GateDef {
                name: DEFAULT_GATE.to_string(),
                measure: GateMeasure::MaxQuarantineRate(DEFAULT_MAX_QUARANTINE_RATE),
                severity: Severity::FailRun,
            });
        }
    }
}

/// A threshold over a stage's counts: one measure, and what crossing it does.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawGate")]
pub struct GateDef {
    pub name: String,
    pub measure: GateMeasure,
    /// INFO, WARN, FAIL_RUN or MANUAL_REVIEW; default FAIL_RUN.
    pub severity: Severity,
}

/// A gate as written: exactly one measure is given.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGate {
    name: String,
    #[serde(default)]
    max_quarantine_rate: Option<f64>,
    #[serde(default)]
    max_row_change: Option<f64>,
    #[serde(default)]
    severity: Option<Severity>,
}

impl TryFrom<RawGate> for GateDef {
    type Error = String;

    fn try_from(g: RawGate) -> Result<Self, String> {
        let measure = match (g.max_quarantine_rate, g.max_row_change) {
            (Some(r), None) => GateMeasure::MaxQuarantineRate(r),
            (None, Some(c)) => GateMeasure::MaxRowChange(c),
            _ => {
                return Err(format!(
                    "gate {:?} must have exactly one of max_quarantine_rate, max_row_change",
                    g.name
                ))
            }
        };
        let severity = g.severity.unwrap_or(Severity::FailRun);
        if !severity.fits_a_gate() {
            return Err(format!(
                "gate {:?} has severity \"{severity}\"; a gate can be INFO, WARN, FAIL_RUN or \
                 MANUAL_REVIEW",
                g.name
            ));
        }
        Ok(GateDef { name: g.name, measure, severity })
    }
}

/// A model's output checked against its input: `sum(column)` over the run's window equals
/// `sum(<dataset>.<column>)` over the same dates.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SumCheck {
    pub column: String,
    /// `<dataset>.<column>` of an input.
    pub equals: String,
}

/// A curated model.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelDef {
    /// Path of the SQL file, relative to the pipeline file.
    pub sql: String,
    /// The DATE column of the result that partitions it. Without one, the model is a
    /// full-refresh model: computed whole in every run that computes it.
    #[serde(default)]
    pub business_date: Option<String>,
    /// Columns of the result that partition it below the business date (or alone).
    #[serde(default)]
    pub partition_by: Vec<String>,
    #[serde(default)]
    pub grain: Grain,
    /// How many days before a partition the SQL reads (a 7-day rolling window reads 6).
    #[serde(default)]
    pub reads_days: u32,
    /// Extra dependencies; those the SQL names are found on their own.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Inputs read whole in a windowed run (`{ users = "all" }`); the others are limited to
    /// the window. References are always read whole.
    #[serde(default)]
    pub reads: BTreeMap<String, ReadMode>,
    /// Columns that identify a row: the output must have no duplicate key.
    #[serde(default)]
    pub key: Vec<String>,
    /// Integer or decimal columns whose exact sums are recorded as control totals.
    #[serde(default)]
    pub sums: Vec<String>,
    /// Sums that must equal an input's over the same dates.
    #[serde(default)]
    pub reconcile: Vec<SumCheck>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    pipeline: PipelineSection,
    #[serde(default)]
    sources: BTreeMap<String, SourceDef>,
    #[serde(default)]
    references: BTreeMap<String, ReferenceDef>,
    #[serde(default)]
    cleaned: BTreeMap<String, CleanedDef>,
    #[serde(default)]
    models: BTreeMap<String, ModelDef>,
}

/// Whether a contract type sums exactly (integers and decimals).
pub fn is_exact_numeric(sql_type: &str) -> bool {
    let t = sql_type.trim().to_ascii_lowercase();
    t.starts_with("decimal")
        || t.starts_with("numeric")
        || ["bigint", "int", "integer", "smallint", "tinyint", "int8", "int4", "int2"]
            .contains(&t.as_str())
}

impl ModelDef {
    /// The column partitioning the output by date: the business date, or `<date>_month`.
    pub fn partition_column(&self) -> Option<String> {
        self.business_date.as_deref().map(|bd| crate::stages::partition_column(bd, self.grain))
    }

    /// Every column partitioning the output, the date's first.
    pub fn partition_columns(&self) -> Vec<String> {
        self.partition_column().into_iter().chain(self.partition_by.iter().cloned()).collect()
    }
}

impl CleanedDef {
    /// The columns whose sums are reconciled: as declared, or every decimal column.
    pub fn sum_columns(&self, contract: &[ContractColumn]) -> Vec<String> {
        match &self.sums {
            Some(s) => s.clone(),
            None => contract
                .iter()
                .filter(|c| c.sql_type.starts_with("decimal") || c.sql_type.starts_with("numeric"))
                .map(|c| c.name.clone())
                .collect(),
        }
    }
}

/// A column a cleaned dataset computes from its contract columns: `derive = { name = "sql" }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derived {
    pub name: String,
    /// The SQL expression, as written.
    pub sql: String,
}

/// A column of a cleaned dataset's contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContractColumn {
    pub name: String,
    /// The SQL type, as written (`bigint`, `decimal(12,2)`, `date`, `timestamp`, `varchar`…).
    pub sql_type: String,
    pub nullable: bool,
}

/// A loaded, checked pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    /// The pipeline file.
    pub file: PathBuf,
    /// The directory paths are relative to.
    pub dir: PathBuf,
    pub settings: PipelineSection,
    pub sources: BTreeMap<String, SourceDef>,
    /// Datasets of the lake the models read but the pipeline does not compute.
    pub references: BTreeMap<String, ReferenceDef>,
    pub cleaned: BTreeMap<String, CleanedDef>,
    /// Contract columns of each cleaned dataset, in file order.
    pub contracts: BTreeMap<String, Vec<ContractColumn>>,
    /// Derived columns of each cleaned dataset, in the order written.
    pub derived: BTreeMap<String, Vec<Derived>>,
    pub models: BTreeMap<String, ModelDef>,
    /// SQL text of each model.
    pub model_sql: BTreeMap<String, String>,
    /// Models in dependency order.
    pub model_order: Vec<String>,
    /// The dependencies of each model (cleaned datasets and models).
    pub model_deps: BTreeMap<String, BTreeSet<String>>,
    /// sha256 over the pipeline file and every SQL file: the pipeline's version.
    pub version: String,
}

impl Pipeline {
    /// How the version of `dataset` a model reads is chosen, if it is a reference: a reference
    /// of the lake, or a cleaned dataset without a business date. `None` for dated datasets and
    /// models, which are read by date.
    pub fn pin_of(&self, dataset: &str) -> Option<Pin> {
        if let Some(r) = self.references.get(dataset) {
            return Some(r.pin());
        }
        let c = self.cleaned.get(dataset).filter(|c| c.business_date.is_none())?;
        Some(match c.policy {
            Some(PinPolicy::AsOriginallyRun) => Pin::AsOriginallyRun,
            _ => Pin::Latest,
        })
    }

    /// Loads and checks `strata.toml` and the SQL files it names.
    pub fn load(file: &Path) -> Result<Pipeline, DefinitionError> {
        let display = file.display().to_string();
        let err = |line: Option<usize>, message: String| DefinitionError {
            file: display.clone(),
            line,
            message,
        };
        let text = std::fs::read_to_string(file).map_err(|e| {
            err(None, format!("cannot read it ({e}); run `strata init` to create a pipeline, or pass --pipeline"))
        })?;
        let raw: RawFile = toml::from_str(&text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start].matches('\n').count() + 1);
            err(line, e.message().trim().to_string())
        })?;
        let dir = file.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
        let line_of = |needle: &str| text.find(needle).map(|i| text[..i].matches('\n').count() + 1);
        let mut hasher = Sha256::new();
        hasher.update(text.as_bytes());

        for name in raw.sources.keys().chain(raw.cleaned.keys()).chain(raw.models.keys()) {
            strata_publish::names::validate_dataset_name(name)
                .map_err(|e| err(line_of(name), format!("{e}")))?;
        }
        for name in raw.references.keys() {
            let at = line_of(&format!("[references.{name}]"));
            strata_publish::names::validate_dataset_name(name)
                .map_err(|e| err(at, format!("{e}")))?;
            let def = &raw.references[name];
            if let (Some(v), Some(p)) = (def.version, def.policy) {
                let p = match p {
                    PinPolicy::Latest => "latest",
                    PinPolicy::AsOriginallyRun => "as_originally_run",
                };
                return Err(err(
                    at,
                    format!(
                        "references.{name} has both version = {v} and policy = \"{p}\"; keep \
                         one: version pins one version for every run, policy chooses one per run"
                    ),
                ));
            }
            if def.version == Some(0) {
                return Err(err(
                    at,
                    format!(
                        "references.{name}.version is 0; versions count from 1 (`strata versions \
                         {name}` lists them)"
                    ),
                ));
            }
            if raw.cleaned.contains_key(name) || raw.models.contains_key(name) {
                return Err(err(
                    at,
                    format!(
                        "references.{name}: the pipeline computes {name:?} itself; a reference is \
                         a dataset it reads but does not compute. Rename one of them"
                    ),
                ));
            }
        }
        for (name, src) in &raw.sources {
            if let Some(d) = &src.delimiter {
                let one = d.len() == 1 && d.is_ascii() && !matches!(d.as_str(), "\"" | "\n" | "\r");
                if !one {
                    return Err(err(
                        line_of("delimiter"),
                        format!(
                            "sources.{name}.delimiter is {d:?}; it must be one ASCII character \
                             other than a quote or a line break, e.g. \";\" or \"\\t\""
                        ),
                    ));
                }
            }
            for (key, sev) in [
                ("on_missing_column", src.on_missing_column),
                ("on_extra_column", src.on_extra_column),
            ] {
                if let Some(sev) = sev.filter(|s| !s.fits_a_gate()) {
                    return Err(err(
                        line_of(key),
                        format!(
                            "sources.{name}.{key} is \"{sev}\"; it can be INFO, WARN, FAIL_RUN or \
                             MANUAL_REVIEW"
                        ),
                    ));
                }
            }
        }
        if let Some(both) = raw.cleaned.keys().find(|n| raw.models.contains_key(*n)) {
            return Err(err(
                line_of(&format!("[models.{both}]")),
                format!(
                    "{both:?} is both a cleaned dataset and a model; each dataset has one \
                     definition. Rename one of them"
                ),
            ));
        }
        let mut contracts = BTreeMap::new();
        let mut derived_of = BTreeMap::new();
        for (name, c) in &raw.cleaned {
            let mut rule_names = BTreeSet::new();
            if let Some(r) = c.rules.iter().find(|r| !rule_names.insert(r.name.as_str())) {
                return Err(err(
                    line_of(&format!("name = \"{}\"", r.name)),
                    format!(
                        "cleaned.{name} has two rules named {:?}; a rule's name is its reason in \
                         the quarantine, so each must be unique",
                        r.name
                    ),
                ));
            }
            let at = |key: &str| line_of(&format!("[cleaned.{name}")).or_else(|| line_of(key));
            if !raw.sources.contains_key(&c.source) {
                return Err(err(
                    at("source"),
                    format!(
                        "cleaned.{name}.source is {:?}, but no [sources.{}] is defined (sources: {})",
                        c.source,
                        c.source,
                        raw.sources.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
            let mut cols = Vec::new();
            for (col, spec) in &c.columns {
                let Some(spec) = spec.as_str() else {
                    return Err(err(
                        line_of(col),
                        format!("cleaned.{name}.columns.{col} must be a string such as \"bigint not null\""),
                    ));
                };
                let lower = spec.trim().to_ascii_lowercase();
                let (sql_type, nullable) = match lower.strip_suffix("not null") {
                    Some(t) => (t.trim().to_string(), false),
                    None => (lower.clone(), true),
                };
                if sql_type.is_empty() {
                    return Err(err(
                        line_of(col),
                        format!("cleaned.{name}.columns.{col} has no type"),
                    ));
                }
                if let Some((p, sc)) = crate::udf::decimal_of(&sql_type) {
                    if !(1..=38).contains(&p) || sc < 0 || sc as u8 > p {
                        return Err(err(
                            line_of(col),
                            format!(
                                "cleaned.{name}.columns.{col} is {sql_type}: a decimal's precision \
                                 is 1 to 38 and its scale 0 to its precision, e.g. decimal(12,2)"
                            ),
                        ));
                    }
                }
                cols.push(ContractColumn { name: col.clone(), sql_type, nullable });
            }
            // `toml::Table` keeps the file's order (the `preserve_order` feature): the contract's
            // columns are in the order written.
            let contract_names: BTreeSet<&str> = cols.iter().map(|c| c.name.as_str()).collect();
            let mut derived = Vec::new();
            for (col, sql) in &c.derive {
                let at = line_of(&format!("{col} =")).or_else(|| at("derive"));
                let sql = match sql.as_str().map(str::trim) {
                    Some(s) if !s.is_empty() => s.to_string(),
                    _ => {
                        return Err(err(
                            at,
                            format!(
                                "cleaned.{name}.derive.{col} must be a SQL expression over the \
                                 contract's columns, e.g. \"make_date(year, month, day)\""
                            ),
                        ))
                    }
                };
                let internal = col.starts_with('_')
                    || col == "quarantine_date"
                    || col.is_empty()
                    || c.business_date.as_deref().is_some_and(|bd| *col == format!("{bd}_month"));
                if internal {
                    return Err(err(
                        at,
                        format!(
                            "cleaned.{name}.derive.{col}: names starting with '_', \
                             \"quarantine_date\" and \"<business_date>_month\" are strata's own \
                             columns; choose another name"
                        ),
                    ));
                }
                if contract_names.contains(col.as_str()) {
                    return Err(err(
                        at,
                        format!(
                            "cleaned.{name}: {col:?} is both a contract column and a derived one; \
                             a derived column is computed, not read from the files: remove it \
                             from columns (its type is the expression's; CAST it to choose)"
                        ),
                    ));
                }
                derived.push(Derived { name: col.clone(), sql });
            }
            let mut names = contract_names.clone();
            names.extend(derived.iter().map(|d| d.name.as_str()));
            if let Some(bd) = cols.iter().find(|cc| c.is_business_date(&cc.name)) {
                if bd.sql_type != "date" {
                    return Err(err(
                        line_of(&format!("business_date = \"{}\"", bd.name))
                            .or_else(|| at("business_date")),
                        format!(
                            "cleaned.{name}.business_date {:?} is declared {}, but a business \
                             date is a DATE: declare it \"date\", or derive one, e.g. derive = \
                             {{ day = \"CAST({} AS DATE)\" }} with business_date = \"day\"",
                            bd.name, bd.sql_type, bd.name
                        ),
                    ));
                }
            }
            let mut need: Vec<(&str, String)> =
                c.business_date.iter().map(|bd| ("business_date", bd.clone())).collect();
            let delivery = raw.sources.get(&c.source).map(|s| s.delivery).unwrap_or_default();
            match (&c.business_date, delivery) {
                (Some(_), Delivery::Snapshot) => {
                    return Err(err(
                        line_of("delivery").or_else(|| at("business_date")),
                        format!(
                            "cleaned.{name} has a business_date, but its source {:?} is delivered \
                             as snapshots; a snapshot is a whole table with no dates to window: \
                             remove business_date to make {name} a reference dataset, or set \
                             delivery = \"changes\"",
                            c.source
                        ),
                    ));
                }
                (Some(_), _) if c.policy.is_some() => {
                    return Err(err(
                        line_of("policy").or_else(|| at("policy")),
                        format!(
                            "cleaned.{name}.policy chooses which version of a reference dataset \
                             models read, but {name} has a business_date; remove policy (a \
                             dated dataset is read by date)"
                        ),
                    ));
                }
                (None, _) if c.grain == Grain::Month => {
                    return Err(err(
                        line_of("grain").or_else(|| at("grain")),
                        format!(
                            "cleaned.{name}.grain is month, but it has no business_date to \
                             partition by; add business_date, or remove grain"
                        ),
                    ));
                }
                (None, _) => {
                    if let Some(r) = c.rules.iter().find(|r| r.severity == Severity::FailPartition)
                    {
                        return Err(err(
                            line_of(&format!("\"{}\"", r.name)).or_else(|| at("rules")),
                            format!(
                                "rule {:?} of cleaned.{name} is FAIL_PARTITION, but {name} has no \
                                 business_date and so no partitions; make it FAIL_RUN",
                                r.name
                            ),
                        ));
                    }
                }
                _ => {}
            }
            need.extend(c.key.iter().map(|k| ("key", k.clone())));
            if let Some(l) = &c.latest_by {
                need.push(("latest_by", l.clone()));
            }
            for r in &c.rules {
                if let Some(col) = r.check.column() {
                    need.push(("rule column", col.to_string()));
                }
                if let RuleCheck::Regex { pattern, .. } = &r.check {
                    // The same engine DataFusion's regexp functions use, so what compiles here
                    // compiles there, and a typo is reported before anything is landed.
                    if let Err(e) = regex::Regex::new(pattern) {
                        let why = e.to_string();
                        let why = why.lines().last().unwrap_or_default().trim();
                        let why = why.strip_prefix("error: ").unwrap_or(why);
                        return Err(err(
                            line_of(pattern).or_else(|| line_of(&format!("\"{}\"", r.name))),
                            format!(
                                "rule {:?} of cleaned.{name}: pattern {:?} is not a valid regular \
                                 expression ({why}); fix the pattern (Rust regex syntax)",
                                r.name, pattern
                            ),
                        ));
                    }
                }
            }
            let mut seen = BTreeSet::new();
            for col in &c.partition_by {
                if c.is_business_date(col) || !seen.insert(col.as_str()) {
                    return Err(err(
                        line_of("partition_by").or_else(|| at("partition_by")),
                        format!(
                            "cleaned.{name}.partition_by names {col:?} twice, or names the \
                             business date, which always partitions the dataset first"
                        ),
                    ));
                }
                need.push(("partition_by column", col.clone()));
            }
            for col in c.sums.iter().flatten() {
                if !contract_names.contains(col.as_str()) && names.contains(col.as_str()) {
                    return Err(err(
                        line_of(&format!("\"{col}\"")),
                        format!(
                            "cleaned.{name}.sums names the derived column {col:?}; sums are of \
                             contract columns, the values as landed"
                        ),
                    ));
                }
                need.push(("sums column", col.clone()));
                if let Some(cc) = cols.iter().find(|cc| &cc.name == col) {
                    if !is_exact_numeric(&cc.sql_type) {
                        return Err(err(
                            line_of(&format!("\"{col}\"")),
                            format!(
                                "cleaned.{name}.sums names {col:?} of type {}; only integer and \
                                 decimal columns can be summed exactly",
                                cc.sql_type
                            ),
                        ));
                    }
                }
            }
            if c.key.is_empty() {
                return Err(err(
                    at("key"),
                    format!("cleaned.{name}.key is empty; name the column(s) that identify a row"),
                ));
            }
            for (what, col) in need {
                if !names.contains(col.as_str()) {
                    return Err(err(
                        line_of(&format!("\"{col}\"")).or_else(|| at(what)),
                        format!(
                            "cleaned.{name}: {what} {col:?} is not a column of the contract or a \
                             derived one (columns: {})",
                            names.iter().copied().collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
            }
            contracts.insert(name.clone(), cols);
            derived_of.insert(name.clone(), derived);
        }
        let mut model_sql = BTreeMap::new();
        for (name, m) in &raw.models {
            let path = dir.join(&m.sql);
            let sql = std::fs::read_to_string(&path).map_err(|e| {
                err(
                    line_of(&m.sql),
                    format!(
                        "models.{name}.sql names {} which cannot be read ({e})",
                        path.display()
                    ),
                )
            })?;
            hasher.update(m.sql.as_bytes());
            hasher.update(sql.as_bytes());
            model_sql.insert(name.clone(), sql);
        }
        // Dependencies: declared, plus every cleaned dataset, model or reference the SQL names.
        let known: BTreeSet<String> = raw
            .cleaned
            .keys()
            .chain(raw.models.keys())
            .chain(raw.references.keys())
            .cloned()
            .collect();
        let mut model_deps = BTreeMap::new();
        for (name, m) in &raw.models {
            let refs = table_references(&model_sql[name]).map_err(|e| {
                err(line_of(&m.sql), format!("models.{name}: {} does not parse as SQL: {e}", m.sql))
            })?;
            let mut deps = BTreeSet::new();
            for r in refs {
                let base = r.split('@').next().unwrap_or(&r).to_string();
                if !known.contains(&base) {
                    return Err(err(
                        line_of(&m.sql),
                        format!(
                            "models.{name} ({}) reads table {r:?}, which is not a cleaned dataset, \
                             model or reference of this pipeline (those are: {}); a dataset of the \
                             lake the pipeline does not compute is declared as [references.{r}]",
                            m.sql,
                            known.iter().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
                deps.insert(base);
            }
            if deps.contains(name) {
                return Err(err(line_of(&m.sql), format!("models.{name} reads itself")));
            }
            for d in &m.depends_on {
                if !known.contains(d) {
                    return Err(err(line_of(d), format!("models.{name}.depends_on names {d:?}, which is not a cleaned dataset, model or reference of this pipeline")));
                }
                deps.insert(d.clone());
            }
            let mut seen = BTreeSet::new();
            for col in &m.partition_by {
                if m.business_date.as_deref() == Some(col.as_str()) || !seen.insert(col.as_str()) {
                    return Err(err(
                        line_of("partition_by").or_else(|| line_of(&m.sql)),
                        format!(
                            "models.{name}.partition_by names {col:?} twice, or names the \
                             business date, which always partitions the output first"
                        ),
                    ));
                }
            }
            if m.business_date.is_none() && m.grain == Grain::Month {
                return Err(err(
                    line_of(&m.sql),
                    format!("models.{name}.grain is month, but it has no business_date"),
                ));
            }
            if let Some(other) = m.reads.keys().find(|r| !deps.contains(*r)) {
                return Err(err(
                    line_of(&format!("{other} =")).or_else(|| line_of("reads")),
                    format!(
                        "models.{name}.reads names {other:?}, which the model does not read (it \
                         reads: {})",
                        deps.iter().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
            model_deps.insert(name.clone(), deps);
        }
        let model_order = topo_order(&model_deps, raw.models.keys()).map_err(|cycle| {
            err(None, format!("the models depend on each other in a cycle: {}", cycle.join(" -> ")))
        })?;
        let mut cleaned = raw.cleaned;
        cleaned.values_mut().for_each(CleanedDef::add_default_gate);
        Ok(Pipeline {
            file: file.to_path_buf(),
            dir,
            settings: raw.pipeline,
            sources: raw.sources,
            references: raw.references,
            cleaned,
            contracts,
            derived: derived_of,
            models: raw.models,
            model_sql,
            model_order,
            model_deps,
            version: hex::encode(hasher.finalize()),
        })
    }

    /// The memory limit in bytes (default 1 GiB, at least [`MIN_MEMORY_LIMIT`]).
    pub fn memory_limit(&self) -> Result<usize, DefinitionError> {
        let err = |message: String| DefinitionError {
            file: self.file.display().to_string(),
            line: None,
            message,
        };
        match &self.settings.memory_limit {
            None => Ok(DEFAULT_MEMORY_LIMIT),
            Some(s) => match parse_bytes(s) {
                None => Err(err(format!(
                    "pipeline.memory_limit is {s:?}; expected a size such as \"512MiB\" or \"2GiB\""
                ))),
                Some(n) if n < MIN_MEMORY_LIMIT => Err(err(format!(
                    "pipeline.memory_limit is {s:?}, below the {} MiB a run needs (sorts and \
                     Parquet row groups work in blocks of up to 64 MiB); set it to \"256MiB\" or more",
                    MIN_MEMORY_LIMIT >> 20
                ))),
                Some(n) => Ok(n),
            },
        }
    }
}

/// DataFusion's memory pool when the pipeline does not set one.
pub const DEFAULT_MEMORY_LIMIT: usize = 1024 * 1024 * 1024;

/// The smallest memory pool a run accepts.
pub const MIN_MEMORY_LIMIT: usize = 128 * 1024 * 1024;

/// Parses `512MiB`, `2GiB`, `1GB`, `100000`.
pub fn parse_bytes(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num.parse().ok()?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        "g" | "gb" | "gib" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// The tables a query reads (CTE names excluded), as DataFusion resolves them.
pub fn table_references(sql: &str) -> Result<BTreeSet<String>, String> {
    let state = datafusion::execution::SessionStateBuilder::new().build();
    let dialect = state.config().options().sql_parser.dialect;
    let statement = state.sql_to_statement(sql, &dialect).map_err(|e| e.strip_backtrace())?;
    let refs = state.resolve_table_references(&statement).map_err(|e| e.strip_backtrace())?;
    Ok(refs.into_iter().map(|r| r.table().to_string()).collect())
}

/// Orders models so that each comes after its dependencies; `Err` names a cycle.
pub fn topo_order<'a>(
    deps: &BTreeMap<String, BTreeSet<String>>,
    models: impl Iterator<Item = &'a String>,
) -> Result<Vec<String>, Vec<String>> {
    let models: Vec<&String> = models.collect();
    let mut order = Vec::new();
    let mut state: BTreeMap<&str, u8> = BTreeMap::new(); // 1 = visiting, 2 = done
    fn visit<'b>(
        m: &'b str,
        deps: &'b BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<&'b str, u8>,
        order: &mut Vec<String>,
        path: &mut Vec<String>,
    ) -> Result<(), Vec<String>> {
        match state.get(m) {
            Some(2) => return Ok(()),
            Some(1) => {
                path.push(m.to_string());
                return Err(path.clone());
            }
            _ => {}
        }
        let Some(ds) = deps.get(m) else { return Ok(()) }; // a cleaned dataset
        state.insert(m, 1);
        path.push(m.to_string());
        for d in ds {
            visit(d, deps, state, order, path)?;
        }
        path.pop();
        state.insert(m, 2);
        order.push(m.to_string());
        Ok(())
    }
    for m in models {
        visit(m, deps, &mut state, &mut order, &mut Vec::new())?;
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_in_sql() {
        let sql =
            "WITH d AS (SELECT * FROM daily) SELECT o.x, count(*) AS customers FROM orders o \
                   JOIN \"cleaned.customers\" c ON 1=1 JOIN d ON TRUE WHERE s = 'revenue'";
        let found = table_references(sql).unwrap();
        let expected: BTreeSet<String> =
            ["cleaned.customers", "daily", "orders"].iter().map(|s| s.to_string()).collect();
        assert_eq!(found, expected);
        assert!(table_references("SELEC nope").is_err());
    }

    #[test]
    fn dependency_order_and_cycles() {
        let mut deps = BTreeMap::new();
        deps.insert("b".to_string(), ["a".to_string()].into_iter().collect::<BTreeSet<_>>());
        deps.insert("a".to_string(), ["orders".to_string()].into_iter().collect());
        deps.insert("c".to_string(), ["b".to_string(), "a".to_string()].into_iter().collect());
        let names: Vec<String> = vec!["c".into(), "b".into(), "a".into()];
        assert_eq!(topo_order(&deps, names.iter()).unwrap(), vec!["a", "b", "c"]);
        deps.insert("a".to_string(), ["c".to_string()].into_iter().collect());
        assert!(topo_order(&deps, names.iter()).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("512MiB"), Some(512 * 1024 * 1024));
        assert_eq!(parse_bytes("2GiB"), Some(2 * 1024 * 1024 * 1024));
        assert_eq!(parse_bytes("100"), Some(100));
        assert_eq!(parse_bytes("lots"), None);
    }
}
