//! Derived columns: `derive = { flight_date = "make_date(year, month, day)" }` in a cleaned
//! dataset computes a column from the typed contract columns (and the derived columns written
//! before it), before the rules run. A derived column can be the key, the business date or a
//! rule's column.
//!
//! - [`plan`] checks the expressions against the contract's types (used by `strata check` and
//!   before a run lands anything): each must parse, read only known columns, call no function
//!   that reads the clock or randomness, and compute one value per row.
//! - [`DeriveUdf`] evaluates one expression inside the cleaning query. A row for which the
//!   expression fails (`make_date(2026, 13, 1)`) does not fail the run: it gets a null value and
//!   the error, and the cleaning query quarantines it with the expression named in the reason.

use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{new_null_array, ArrayRef, RecordBatch, RecordBatchOptions};
use datafusion::arrow::array::{StringArray, StructArray};
use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{exec_err, DFSchema, Result};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ExprSchemable, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;

use crate::pipeline::{ContractColumn, Derived};

/// A derived column, planned: the columns its expression reads and the type it yields.
#[derive(Debug, Clone, PartialEq)]
pub struct DerivePlan {
    pub name: String,
    pub sql: String,
    /// The columns the expression reads, in name order.
    pub args: Vec<String>,
    pub data_type: DataType,
}

/// A problem with one column of a cleaned dataset's definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnProblem {
    pub column: String,
    pub message: String,
}

/// The Arrow types of the contract's columns, as the cleaning query types them.
pub fn contract_schema(contract: &[ContractColumn]) -> std::result::Result<Schema, ColumnProblem> {
    let ctx = SessionContext::new();
    let empty = DFSchema::empty();
    let fields = contract
        .iter()
        .map(|c| {
            let problem = |e: datafusion::error::DataFusionError| ColumnProblem {
                column: c.name.clone(),
                message: format!("{:?} is not a SQL type ({})", c.sql_type, first_line(&e)),
            };
            let expr = ctx
                .parse_sql_expr(&format!("CAST(NULL AS {})", c.sql_type), &empty)
                .map_err(problem)?;
            let t = expr.get_type(&empty).map_err(problem)?;
            Ok(Field::new(&c.name, t, c.nullable))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(Schema::new(fields))
}

/// Plans the derived columns in order over `schema` (the typed contract columns): each
/// expression is checked and typed, and may read the columns before it.
pub fn plan(
    schema: &Schema,
    derived: &[Derived],
) -> std::result::Result<Vec<DerivePlan>, ColumnProblem> {
    let ctx = SessionContext::new();
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut out = Vec::new();
    for d in derived {
        let problem = |message: String| ColumnProblem { column: d.name.clone(), message };
        let df_schema =
            DFSchema::try_from(Schema::new(fields.clone())).map_err(|e| problem(first_line(&e)))?;
        let expr = ctx.parse_sql_expr(&d.sql, &df_schema).map_err(|e| problem(first_line(&e)))?;
        if let Some(f) = reads_the_clock(&expr) {
            return Err(problem(format!(
                "{} calls {f}(), whose value depends on when or how often it runs; a derived \
                 column must be the same on every run. Take the time from the data",
                d.sql
            )));
        }
        let data_type = expr.get_type(&df_schema).map_err(|e| problem(first_line(&e)))?;
        // An aggregate or window function has no value per row: planning it says so.
        physical(&ctx, expr.clone(), &df_schema).map_err(|e| {
            problem(format!(
                "{} cannot be computed row by row ({}); a derived column is a function of one \
                 row's columns",
                d.sql,
                first_line(&e)
            ))
        })?;
        let mut args: Vec<String> = expr.column_refs().iter().map(|c| c.name.clone()).collect();
        args.sort();
        args.dedup();
        fields.push(Field::new(&d.name, data_type.clone(), true));
        out.push(DerivePlan { name: d.name.clone(), sql: d.sql.clone(), args, data_type });
    }
    Ok(out)
}

/// The first function of `expr` that is not a pure function of its arguments (`now`,
/// `random`, …).
fn reads_the_clock(expr: &Expr) -> Option<String> {
    let mut found = None;
    let _ = expr.apply(|e| {
        if let Expr::ScalarFunction(f) = e {
            if f.func.signature().volatility != Volatility::Immutable {
                found = Some(f.func.name().to_string());
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// The expression as it runs: coerced, simplified (functions such as `coalesce` or
/// `arrow_cast` are rewritten into what the engine evaluates) and planned, as a query plans it.
fn physical(
    ctx: &SessionContext,
    expr: Expr,
    df_schema: &DFSchema,
) -> Result<Arc<dyn PhysicalExpr>> {
    use datafusion::logical_expr::simplify::SimplifyContext;
    use datafusion::optimizer::simplify_expressions::ExprSimplifier;
    let state = ctx.state();
    let context = SimplifyContext::builder()
        .with_schema(Arc::new(df_schema.clone()))
        .with_config_options(Arc::new(state.config_options().as_ref().clone()))
        .build();
    let simplifier = ExprSimplifier::new(context);
    let expr = simplifier.simplify(simplifier.coerce(expr, df_schema)?)?;
    ctx.create_physical_expr(expr, df_schema)
}

/// The first line of a DataFusion error, without its category prefix.
pub(crate) fn first_line(e: &datafusion::error::DataFusionError) -> String {
    let text = e.strip_backtrace();
    let line = text.lines().next().unwrap_or_default();
    ["SQL error: ", "Error during planning: ", "Schema error: ", "Execution error: "]
        .iter()
        .fold(line, |l, p| l.strip_prefix(p).unwrap_or(l))
        .to_string()
}

/// The name the cleaning query calls derived column `i` by.
pub(crate) fn function_name(i: usize) -> String {
    format!("strata_derive_{i}")
}

/// The fields of what [`DeriveUdf`] returns: the value, and the error that made it null.
fn result_fields(value: DataType) -> Fields {
    Fields::from(vec![Field::new("value", value, true), Field::new("error", DataType::Utf8, true)])
}

/// One derived column's expression as a function of the cleaning query:
/// `strata_derive_<i>(_line, <args>…)` returns `{value, error}`. `_line` comes first so that a
/// function of no column still has an argument.
#[derive(Debug)]
pub(crate) struct DeriveUdf {
    name: String,
    sql: String,
    args: Vec<String>,
    signature: Signature,
    /// The expression compiled for the argument types last seen.
    compiled: Mutex<Option<Compiled>>,
}

#[derive(Debug, Clone)]
struct Compiled {
    types: Vec<DataType>,
    schema: SchemaRef,
    expr: Arc<dyn PhysicalExpr>,
    value: DataType,
}

impl PartialEq for DeriveUdf {
    fn eq(&self, other: &Self) -> bool {
        (&self.name, &self.sql, &self.args) == (&other.name, &other.sql, &other.args)
    }
}

impl Eq for DeriveUdf {}

impl std::hash::Hash for DeriveUdf {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (&self.name, &self.sql, &self.args).hash(state)
    }
}

impl DeriveUdf {
    pub(crate) fn new(i: usize, plan: &DerivePlan) -> Self {
        DeriveUdf {
            name: function_name(i),
            sql: plan.sql.clone(),
            args: plan.args.clone(),
            signature: Signature::variadic_any(Volatility::Immutable),
            compiled: Mutex::new(None),
        }
    }

    /// The expression compiled for these argument types (the first is `_line`'s).
    fn compile(&self, types: &[DataType]) -> Result<Compiled> {
        let mut cached = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cached.as_ref().filter(|c| c.types == types) {
            return Ok(c.clone());
        }
        if types.len() != self.args.len() + 1 {
            return exec_err!(
                "{} takes {} arguments, not {}",
                self.name,
                self.args.len() + 1,
                types.len()
            );
        }
        let fields: Vec<Field> = self
            .args
            .iter()
            .zip(&types[1..])
            .map(|(n, t)| Field::new(n, t.clone(), true))
            .collect();
        let schema = Arc::new(Schema::new(fields));
        let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
        let ctx = SessionContext::new();
        let expr = ctx.parse_sql_expr(&self.sql, &df_schema)?;
        let value = expr.get_type(&df_schema)?;
        let expr = physical(&ctx, expr, &df_schema)?;
        let compiled = Compiled { types: types.to_vec(), schema, expr, value };
        *cached = Some(compiled.clone());
        Ok(compiled)
    }
}

impl ScalarUDFImpl for DeriveUdf {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Struct(result_fields(self.compile(args)?.value)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let types: Vec<DataType> = args.args.iter().map(|a| a.data_type()).collect();
        let c = self.compile(&types)?;
        let columns: Vec<ArrayRef> =
            args.args[1..].iter().map(|a| a.to_array(rows)).collect::<Result<_>>()?;
        let batch = RecordBatch::try_new_with_options(
            c.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?;
        let (values, errors) = evaluate(&c, &batch)?;
        let values = if values.data_type() == &c.value {
            values
        } else {
            datafusion::arrow::compute::cast(&values, &c.value)?
        };
        let out = StructArray::try_new(result_fields(c.value), vec![values, errors], None)?;
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// The expression over every row of `batch`. When it fails for the batch, each row is
/// evaluated alone: a row that fails gets a null value and its error, the others their value.
fn evaluate(c: &Compiled, batch: &RecordBatch) -> Result<(ArrayRef, ArrayRef)> {
    let rows = batch.num_rows();
    if let Ok(values) = c.expr.evaluate(batch).and_then(|v| v.into_array(rows)) {
        return Ok((values, new_null_array(&DataType::Utf8, rows)));
    }
    let mut values = Vec::with_capacity(rows);
    let mut errors = Vec::with_capacity(rows);
    for i in 0..rows {
        let row = batch.slice(i, 1);
        match c.expr.evaluate(&row).and_then(|v| v.into_array(1)) {
            Ok(v) => {
                values.push(v);
                errors.push(None);
            }
            Err(e) => {
                values.push(new_null_array(&c.value, 1));
                errors.push(Some(first_line(&e)));
            }
        }
    }
    let refs: Vec<&dyn datafusion::arrow::array::Array> =
        values.iter().map(|v| v.as_ref()).collect();
    let values = if refs.is_empty() {
        new_null_array(&c.value, 0)
    } else {
        datafusion::arrow::compute::concat(&refs)?
    };
    Ok((values, Arc::new(StringArray::from(errors))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, AsArray, Int32Array};
    use datafusion::logical_expr::ScalarUDF;

    fn contract() -> Vec<ContractColumn> {
        ["year", "month", "day"]
            .iter()
            .map(|n| ContractColumn { name: n.to_string(), sql_type: "int".into(), nullable: true })
            .collect()
    }

    fn derived(pairs: &[(&str, &str)]) -> Vec<Derived> {
        pairs.iter().map(|(n, s)| Derived { name: n.to_string(), sql: s.to_string() }).collect()
    }

    #[test]
    fn expressions_are_typed_and_read_only_known_columns() {
        let schema = contract_schema(&contract()).unwrap();
        let plans = plan(
            &schema,
            &derived(&[
                ("flight_date", "make_date(year, month, day)"),
                ("next_day", "flight_date + INTERVAL '1 day'"),
            ]),
        )
        .unwrap();
        assert_eq!(plans[0].args, vec!["day", "month", "year"]);
        assert_eq!(plans[0].data_type, DataType::Date32);
        assert_eq!(plans[1].args, vec!["flight_date"], "a derived column reads one before it");
        let e = plan(&schema, &derived(&[("d", "make_date(year, month, dya)")])).unwrap_err();
        assert_eq!(e.column, "d");
        assert!(e.message.contains("dya"), "{e:?}");
        let e = plan(&schema, &derived(&[("t", "now()")])).unwrap_err();
        assert!(e.message.contains("now()"), "{e:?}");
        let e = plan(&schema, &derived(&[("r", "random() + year")])).unwrap_err();
        assert!(e.message.contains("random()"), "{e:?}");
        let e = plan(&schema, &derived(&[("s", "sum(year)")])).unwrap_err();
        assert!(e.message.contains("row by row"), "{e:?}");
        let bad =
            vec![ContractColumn { name: "x".into(), sql_type: "intt".into(), nullable: true }];
        assert_eq!(contract_schema(&bad).unwrap_err().column, "x");
    }

    /// The local date of a UTC timestamp, as docs/pipeline.md shows it.
    #[tokio::test]
    async fn a_utc_timestamp_becomes_a_local_date() {
        let contract = vec![ContractColumn {
            name: "dep_utc".into(),
            sql_type: "timestamp".into(),
            nullable: true,
        }];
        let schema = contract_schema(&contract).unwrap();
        let sql = "CAST(to_local_time(dep_utc AT TIME ZONE 'UTC' AT TIME ZONE \
                   'America/New_York') AS DATE)";
        let plans = plan(&schema, &derived(&[("dep_local", sql)])).unwrap();
        assert_eq!(plans[0].data_type, DataType::Date32);
        let ctx = SessionContext::new();
        ctx.register_udf(ScalarUDF::from(DeriveUdf::new(0, &plans[0])));
        let out = ctx
            .sql(
                "SELECT CAST(strata_derive_0(1, CAST(t AS TIMESTAMP))['value'] AS VARCHAR) AS d \
                 FROM (VALUES ('2026-02-01T03:00:00'), ('2026-02-01T12:00:00')) AS v(t) ORDER BY t",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text =
            datafusion::arrow::util::pretty::pretty_format_batches(&out).unwrap().to_string();
        let days: Vec<&str> = text.lines().filter(|l| l.contains("2026")).collect();
        assert_eq!(days, vec!["| 2026-01-31 |", "| 2026-02-01 |"], "{text}");
    }

    /// A row whose expression fails gets a null and the error; the other rows of its batch
    /// their value. Through SQL, as the cleaning query calls it.
    #[tokio::test]
    async fn a_failing_row_gets_its_error_and_the_others_their_value() {
        let schema = contract_schema(&contract()).unwrap();
        let plans = plan(
            &schema,
            &derived(&[("d", "make_date(coalesce(year, 2026), month, nvl(day, 1))")]),
        )
        .unwrap();
        let ctx = SessionContext::new();
        ctx.register_udf(ScalarUDF::from(DeriveUdf::new(0, &plans[0])));
        let ints = |v: Vec<Option<i32>>| Arc::new(Int32Array::from(v)) as ArrayRef;
        let batch = RecordBatch::try_new(
            Arc::new(schema.clone()),
            vec![
                ints(vec![Some(2026), Some(2026), None]),
                ints(vec![Some(1), Some(13), Some(1)]),
                ints(vec![Some(31), Some(1), Some(1)]),
            ],
        )
        .unwrap();
        ctx.register_batch("t", batch).unwrap();
        let out = ctx
            .sql(
                "SELECT CAST(r['value'] AS VARCHAR) AS v, r['error'] AS e FROM \
                 (SELECT strata_derive_0(1, day, month, year) AS r FROM t)",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let b = datafusion::arrow::compute::concat_batches(&out[0].schema(), &out).unwrap();
        let v = datafusion::arrow::compute::cast(b.column(0), &DataType::Utf8).unwrap();
        let v: Vec<Option<String>> =
            v.as_string::<i32>().iter().map(|s| s.map(String::from)).collect();
        assert_eq!(v, vec![Some("2026-01-31".to_string()), None, Some("2026-01-01".to_string())]);
        let e = b.column(1).as_string::<i32>();
        assert!(e.is_null(0) && e.is_null(2), "coalesce and nvl are evaluated: {e:?}");
        assert!(!e.value(1).is_empty(), "month 13 is an error: {:?}", e.value(1));
    }
}
