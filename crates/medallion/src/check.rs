//! Checking a pipeline before anything runs: every model's SQL is planned against the schemas
//! its inputs will have (cleaned datasets from their contracts, models from the models before
//! them), so a typo in a model is reported before any file is landed, with the model named.
//! No data is read and nothing is written.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

use crate::derive::first_line;
use crate::pipeline::Pipeline;
use crate::stages::ident;
use crate::types::Grain;

/// A problem found in a pipeline's definition, naming where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `models.<name> (<file>)`, `cleaned.<name>`, or `cleaned.<name>.derive.<column>`.
    pub at: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// Plans every model of `pipeline` over empty tables shaped like its inputs, in dependency
/// order, and returns every problem found (none: every model plans). `references` holds the
/// schema of each reference's current version (`None`: not published). A model that reads one
/// that failed, or a reference not published, is not planned: its problems would only repeat
/// that one.
pub async fn plan_models(
    pipeline: &Pipeline,
    references: &BTreeMap<String, Option<Schema>>,
) -> Vec<Problem> {
    let ctx = SessionContext::new();
    let mut problems = Vec::new();
    let mut failed = std::collections::BTreeSet::new();
    for name in pipeline.references.keys() {
        match references.get(name).cloned().flatten() {
            Some(schema) => {
                let table = MemTable::try_new(Arc::new(schema), vec![vec![]]);
                let registered =
                    table.and_then(|t| ctx.register_table(ident(name).as_str(), Arc::new(t)));
                if let Err(e) = registered {
                    problems.push(Problem {
                        at: format!("references.{name}"),
                        message: first_line(&e),
                    });
                }
            }
            None => {
                let used = pipeline.model_deps.values().any(|d| d.contains(name));
                if used {
                    problems.push(Problem {
                        at: format!("references.{name}"),
                        message: format!(
                            "{name:?} has no published version in this lake; publish it first \
                             (`strata publish {name} --from FILE`)"
                        ),
                    });
                }
                failed.insert(name.clone());
            }
        }
    }
    for name in pipeline.cleaned.keys() {
        match cleaned_schema(pipeline, name) {
            Ok(schema) => {
                let registered = MemTable::try_new(Arc::new(schema), vec![vec![]])
                    .and_then(|t| ctx.register_table(ident(name).as_str(), Arc::new(t)));
                if let Err(e) = registered {
                    problems
                        .push(Problem { at: format!("cleaned.{name}"), message: first_line(&e) });
                }
            }
            Err(p) => {
                problems.push(p);
                failed.insert(name.clone());
            }
        }
    }
    for name in &pipeline.model_order {
        let def = &pipeline.models[name];
        let at = format!("models.{name} ({})", def.sql);
        if pipeline.model_deps[name].iter().any(|d| failed.contains(d)) {
            failed.insert(name.clone());
            continue;
        }
        match ctx.sql(&pipeline.model_sql[name]).await {
            Ok(df) => {
                let schema = df.schema().as_arrow().clone();
                let columns = || {
                    let names: Vec<&str> =
                        schema.fields().iter().map(|f| f.name().as_str()).collect();
                    names.join(", ")
                };
                if let Some(bd) = &def.business_date {
                    match schema.field_with_name(bd) {
                        Err(_) => problems.push(Problem {
                            at: at.clone(),
                            message: format!(
                                "the result has no column {bd:?} (its business_date); columns: {}",
                                columns()
                            ),
                        }),
                        Ok(f) if !matches!(f.data_type(), DataType::Date32 | DataType::Null) => {
                            problems.push(Problem {
                                at: at.clone(),
                                message: format!(
                                    "its business_date {bd:?} is {}, not a DATE; cast it in the SQL",
                                    f.data_type()
                                ),
                            })
                        }
                        Ok(_) => {}
                    }
                }
                let fields: Vec<Field> =
                    schema.fields().iter().map(|f| f.as_ref().clone()).collect();
                for col in &def.partition_by {
                    if schema.field_with_name(col).is_err() {
                        problems.push(Problem {
                            at: at.clone(),
                            message: format!(
                                "the result has no column {col:?} (of its partition_by); \
                                 columns: {}",
                                columns()
                            ),
                        });
                    } else if let Some(message) = partition_column_problem(col, &fields) {
                        problems.push(Problem { at: at.clone(), message });
                    }
                }
                if let Err(e) = ctx.register_table(ident(name).as_str(), df.into_view()) {
                    problems.push(Problem { at, message: first_line(&e) });
                }
            }
            Err(e) => {
                problems.push(Problem { at, message: first_line(&e) });
                failed.insert(name.clone());
            }
        }
    }
    problems
}

/// The columns a cleaned dataset will have: its contract's, its derived columns', and the month
/// column for month grain. A derived column that does not plan, or a business date that is not
/// a DATE, is a problem.
fn cleaned_schema(pipeline: &Pipeline, name: &str) -> Result<Schema, Problem> {
    let def = &pipeline.cleaned[name];
    let at = |column: &str| format!("cleaned.{name}.derive.{column}");
    let contract = crate::derive::contract_schema(&pipeline.contracts[name]).map_err(|p| {
        Problem { at: format!("cleaned.{name}.columns.{}", p.column), message: p.message }
    })?;
    let derived = pipeline.derived.get(name).map(Vec::as_slice).unwrap_or_default();
    let plans = crate::derive::plan(&contract, derived)
        .map_err(|p| Problem { at: at(&p.column), message: p.message })?;
    let mut fields: Vec<Field> = contract.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.extend(plans.iter().map(|p| Field::new(&p.name, p.data_type.clone(), true)));
    if let Some(p) = plans.iter().find(|p| def.is_business_date(&p.name)) {
        if p.data_type != DataType::Date32 {
            return Err(Problem {
                at: at(&p.name),
                message: format!(
                    "it is the business date, but {} gives {}, not a DATE; CAST it AS DATE",
                    p.sql, p.data_type
                ),
            });
        }
    }
    for col in &def.partition_by {
        let at = format!("cleaned.{name}.partition_by");
        partition_column_problem(col, &fields)
            .map_or(Ok(()), |message| Err(Problem { at, message }))?;
    }
    // A rule's SQL is checked here, against the columns it will see, so that a typo names the
    // rule rather than the generated cleaning query.
    let df_schema = datafusion::common::DFSchema::try_from(Schema::new(fields.clone()))
        .map_err(|e| Problem { at: format!("cleaned.{name}"), message: first_line(&e) })?;
    let ctx = SessionContext::new();
    for rule in &def.rules {
        let crate::types::RuleCheck::Sql(sql) = &rule.check else { continue };
        let at = format!("cleaned.{name}.rules.{}", rule.name);
        let expr = ctx
            .parse_sql_expr(sql, &df_schema)
            .map_err(|e| Problem { at: at.clone(), message: first_line(&e) })?;
        use datafusion::logical_expr::ExprSchemable;
        let t = expr
            .get_type(&df_schema)
            .map_err(|e| Problem { at: at.clone(), message: first_line(&e) })?;
        if !matches!(t, DataType::Boolean | DataType::Null) {
            return Err(Problem {
                at,
                message: format!("{sql} is {t}, not true or false; a rule's sql is a condition"),
            });
        }
    }
    if let Some(part) = def.partition_column().filter(|_| def.grain == Grain::Month) {
        fields.push(Field::new(part, DataType::Utf8, true));
    }
    Ok(Schema::new(fields))
}

/// Why column `col` of `fields` cannot partition a dataset: a name that cannot name a directory,
/// or a type whose values do not (floats, timestamps, decimals…).
fn partition_column_problem(col: &str, fields: &[Field]) -> Option<String> {
    if let Err(e) = strata_publish::names::validate_partition_column(col) {
        return Some(format!("{col:?} cannot name partition directories: {e}"));
    }
    let f = fields.iter().find(|f| f.name() == col)?;
    (!strata_publish::partitionable(f.data_type())).then(|| {
        format!(
            "{col:?} is {}; a partition column is text, an integer, a boolean or a DATE: \
             derive one, e.g. CAST({col} AS VARCHAR), or CAST({col} AS DATE) for a timestamp",
            f.data_type()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(model_sql: &str) -> (tempfile::TempDir, Pipeline) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("models")).expect("models");
        std::fs::write(dir.path().join("models/daily.sql"), model_sql).expect("sql");
        std::fs::write(
            dir.path().join("models/weekly.sql"),
            "SELECT order_date, sum(revenue) AS revenue FROM daily GROUP BY order_date",
        )
        .expect("sql");
        let toml = dir.path().join("strata.toml");
        std::fs::write(
            &toml,
            "[pipeline]\nname = \"p\"\n\n[sources.orders]\npath = \"data/*.csv\"\n\n\
             [cleaned.orders]\nsource = \"orders\"\nkey = [\"order_id\"]\n\
             business_date = \"order_date\"\n\
             columns = { order_id = \"bigint not null\", order_date = \"date not null\", \
             amount = \"decimal(12,2)\" }\n\n\
             [models.daily]\nsql = \"models/daily.sql\"\nbusiness_date = \"order_date\"\n\n\
             [models.weekly]\nsql = \"models/weekly.sql\"\nbusiness_date = \"order_date\"\n",
        )
        .expect("toml");
        let p = Pipeline::load(&toml).expect("loads");
        (dir, p)
    }

    #[tokio::test]
    async fn models_that_plan_have_no_problems() {
        let (_d, p) = pipeline(
            "SELECT order_date, sum(amount) AS revenue FROM orders \
             WHERE order_date BETWEEN $from AND $to GROUP BY order_date",
        );
        assert_eq!(plan_models(&p, &BTreeMap::new()).await, vec![]);
    }

    /// A rule's SQL is checked against the cleaned dataset's columns, and named as the rule.
    #[tokio::test]
    async fn a_rule_typo_is_named_with_its_rule() {
        let (_d, mut p) =
            pipeline("SELECT order_date, sum(amount) AS revenue FROM orders GROUP BY 1");
        let rule = |sql: &str| crate::pipeline::RuleDef {
            name: "positive".into(),
            check: crate::types::RuleCheck::Sql(sql.into()),
            severity: crate::types::Severity::QuarantineRecord,
        };
        if let Some(c) = p.cleaned.get_mut("orders") {
            c.rules = vec![rule("amout > 0")];
        }
        let problems = plan_models(&p, &BTreeMap::new()).await;
        assert_eq!(problems.len(), 1, "the models reading it are not reported: {problems:?}");
        assert_eq!(problems[0].at, "cleaned.orders.rules.positive");
        assert!(problems[0].message.contains("amout"), "{}", problems[0]);
        if let Some(c) = p.cleaned.get_mut("orders") {
            c.rules = vec![rule("amount + 1")];
        }
        let problems = plan_models(&p, &BTreeMap::new()).await;
        assert!(problems[0].message.contains("not true or false"), "{problems:?}");
        if let Some(c) = p.cleaned.get_mut("orders") {
            c.rules = vec![rule("amount > 0 AND order_date IS NOT NULL")];
        }
        assert_eq!(plan_models(&p, &BTreeMap::new()).await, vec![]);
    }

    #[tokio::test]
    async fn a_typo_is_named_with_its_model_once() {
        let (_d, p) =
            pipeline("SELECT order_date, sum(amount_typo) AS revenue FROM orders GROUP BY 1");
        let problems = plan_models(&p, &BTreeMap::new()).await;
        assert_eq!(problems.len(), 1, "weekly, which reads daily, is not reported: {problems:?}");
        assert_eq!(problems[0].at, "models.daily (models/daily.sql)");
        assert!(problems[0].message.contains("amount_typo"), "{}", problems[0]);
        let (_d, p) = pipeline("SELECT CAST(order_date AS VARCHAR) AS order_date FROM orders");
        let problems = plan_models(&p, &BTreeMap::new()).await;
        assert!(problems[0].message.contains("not a DATE"), "{problems:?}");
    }
}
