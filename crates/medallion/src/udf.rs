//! Functions the cleaning query calls in place of DataFusion's own where those cost most of a
//! stage's time. Each gives exactly the result of the SQL it replaces:
//!
//! - `strata_decimal_<p>_<s>(text)` is `TRY_CAST(text AS DECIMAL(p, s))` for every value the
//!   type holds exactly, and NULL for a value it would have to round (`1.005` as
//!   `decimal(15, 2)`): a contract type is a promise about the data, and a value that breaks it
//!   is quarantined, not changed. It reads `-12.5`, `+3`, `7.`, `.5` and `1.5e3` (which
//!   `TRY_CAST` does not). Arrow's own reading formats two strings per value.
//! - `strata_text(x)` is `NULLIF(TRIM(CAST(x AS VARCHAR)), '')`. Text keeps its type, and a
//!   column with nothing to trim or blank out is passed on as it is, not copied.
//! - `strata_pack(a, b, …)` packs texts (nulls too) into one binary value, which [`unpack`]
//!   reads back: the landed text of a quarantined row travels through the stage's sort as one
//!   column instead of one per contract column (each of which costs 4 bytes a row even when
//!   null, as it is for every accepted row).

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, Decimal128Array, LargeStringArray, StringArray,
    StringViewArray, StringViewBuilder,
};
use datafusion::arrow::datatypes::{DataType, Decimal128Type, DecimalType};
use datafusion::common::{exec_err, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;

/// Registers `strata_text`, `strata_pack` and `strata_decimal_<p>_<s>` for each decimal type
/// given.
pub(crate) fn register(ctx: &SessionContext, decimals: impl IntoIterator<Item = (u8, i8)>) {
    ctx.register_udf(ScalarUDF::from(Text::new()));
    ctx.register_udf(ScalarUDF::from(PartitionProblem::new()));
    ctx.register_udf(ScalarUDF::from(Pack::new()));
    for (precision, scale) in decimals {
        if let Some(udf) = TryDecimal::new(precision, scale) {
            ctx.register_udf(ScalarUDF::from(udf));
        }
    }
}

/// The name `TRY_CAST(… AS DECIMAL(precision, scale))` is called by when the function is
/// registered; `None` for a type it does not read (more than 38 digits, or a negative scale).
pub(crate) fn decimal_function(precision: u8, scale: i8) -> Option<String> {
    TryDecimal::new(precision, scale).map(|f| f.name)
}

/// Precision and scale of a contract type written `decimal(p, s)`, `numeric(p, s)`, or
/// `decimal(p)` (scale 0).
pub(crate) fn decimal_of(sql_type: &str) -> Option<(u8, i8)> {
    let t: String = sql_type.chars().filter(|c| !c.is_whitespace()).collect::<String>();
    let t = t.to_ascii_lowercase();
    let args = t.strip_prefix("decimal(").or_else(|| t.strip_prefix("numeric("))?;
    let args = args.strip_suffix(')')?;
    let (p, s) = args.split_once(',').unwrap_or((args, "0"));
    Some((p.parse().ok()?, s.parse().ok()?))
}

fn text_type(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8)
}

/// A text column of any of Arrow's three text types.
enum Texts<'a> {
    View(&'a StringViewArray),
    Utf8(&'a StringArray),
    Large(&'a LargeStringArray),
}

impl<'a> Texts<'a> {
    fn of(array: &'a ArrayRef) -> Result<Self> {
        Ok(match array.data_type() {
            DataType::Utf8View => Texts::View(array.as_string_view()),
            DataType::Utf8 => Texts::Utf8(array.as_string::<i32>()),
            DataType::LargeUtf8 => Texts::Large(array.as_string::<i64>()),
            other => return exec_err!("expected text, got {other}"),
        })
    }

    fn get(&self, i: usize) -> Option<&'a str> {
        match self {
            Texts::View(a) => a.is_valid(i).then(|| a.value(i)),
            Texts::Utf8(a) => a.is_valid(i).then(|| a.value(i)),
            Texts::Large(a) => a.is_valid(i).then(|| a.value(i)),
        }
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Text {
    signature: Signature,
}

impl Text {
    fn new() -> Self {
        Text { signature: Signature::any(1, Volatility::Immutable) }
    }
}

/// `TRIM` (of spaces), then an empty text as null.
fn trimmed(v: Option<&str>) -> Option<&str> {
    v.map(|t| t.trim_matches(' ')).filter(|t| !t.is_empty())
}

/// Whether [`trimmed`] changes any value.
fn trims<'a>(mut values: impl Iterator<Item = Option<&'a str>>) -> bool {
    values.any(|v| v.is_some_and(|t| t.is_empty() || t.starts_with(' ') || t.ends_with(' ')))
}

impl ScalarUDFImpl for Text {
    fn name(&self) -> &str {
        "strata_text"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        match args {
            [t] if text_type(t) => Ok(t.clone()),
            [_] => Ok(DataType::Utf8View),
            _ => exec_err!("strata_text takes one argument, not {}", args.len()),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [arg] = args.args.as_slice() else {
            return exec_err!("strata_text takes one argument");
        };
        let mut array = arg.to_array(args.number_rows)?;
        if !text_type(array.data_type()) {
            // As CAST(x AS VARCHAR) formats it.
            let options = datafusion::common::format::DEFAULT_CAST_OPTIONS;
            array = datafusion::arrow::compute::cast_with_options(
                &array,
                &DataType::Utf8View,
                &options,
            )?;
        }
        let out: ArrayRef = match array.data_type() {
            DataType::Utf8View => {
                let a = array.as_string_view();
                match trims(a.iter()) {
                    false => array,
                    true => Arc::new(a.iter().map(trimmed).collect::<StringViewArray>()),
                }
            }
            DataType::Utf8 => {
                let a = array.as_string::<i32>();
                match trims(a.iter()) {
                    false => array,
                    true => Arc::new(a.iter().map(trimmed).collect::<StringArray>()),
                }
            }
            DataType::LargeUtf8 => {
                let a = array.as_string::<i64>();
                match trims(a.iter()) {
                    false => array,
                    true => Arc::new(a.iter().map(trimmed).collect::<LargeStringArray>()),
                }
            }
            other => return exec_err!("strata_text: unexpected {other}"),
        };
        Ok(ColumnarValue::Array(out))
    }
}

/// `strata_partition_problem(value)`: why `value` cannot name a partition directory (a `/`, a
/// leading `_`, too long…), as text; null when it can, and for null (which has its own
/// partition).
#[derive(Debug, PartialEq, Eq, Hash)]
struct PartitionProblem {
    signature: Signature,
}

impl PartitionProblem {
    fn new() -> Self {
        PartitionProblem { signature: Signature::any(1, Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for PartitionProblem {
    fn name(&self) -> &str {
        "strata_partition_problem"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [arg] = args.args.as_slice() else {
            return exec_err!("strata_partition_problem takes one argument");
        };
        let array = arg.to_array(args.number_rows)?;
        // As the writer names the partition: the value's text.
        let text = datafusion::arrow::compute::cast(&array, &DataType::Utf8)?;
        let text = text.as_string::<i32>();
        let out: StringArray = text
            .iter()
            .map(|v| v.and_then(strata_publish::names::partition_value_problem))
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// The `columns` texts packed by `strata_pack` in each value of `packed`, as string views (a
/// null value gives nulls in every column).
pub(crate) fn unpack(packed: &ArrayRef, columns: usize) -> Result<Vec<ArrayRef>> {
    let packed = match packed.data_type() {
        DataType::Binary => packed.as_binary::<i32>(),
        other => return exec_err!("packed text is {other}, not binary"),
    };
    let mut out: Vec<StringViewBuilder> =
        (0..columns).map(|_| StringViewBuilder::with_capacity(packed.len())).collect();
    let corrupt = || exec_err!("packed text is cut short or not UTF-8");
    for value in packed.iter() {
        let Some(mut b) = value else {
            out.iter_mut().for_each(|c| c.append_null());
            continue;
        };
        for column in out.iter_mut() {
            match b.split_first() {
                Some((0, rest)) => {
                    column.append_null();
                    b = rest;
                }
                Some((1, rest)) if rest.len() >= 4 => {
                    let (len, rest) = rest.split_at(4);
                    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
                    let Some((text, rest)) = rest.split_at_checked(len) else { return corrupt() };
                    let Ok(text) = std::str::from_utf8(text) else { return corrupt() };
                    column.append_value(text);
                    b = rest;
                }
                _ => return corrupt(),
            }
        }
        if !b.is_empty() {
            return corrupt();
        }
    }
    Ok(out.iter_mut().map(|c| Arc::new(c.finish()) as ArrayRef).collect())
}

/// `strata_pack(a, b, …)`: the texts of each row packed into one binary value, which [`unpack`]
/// reads back.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Pack {
    signature: Signature,
}

impl Pack {
    fn new() -> Self {
        Pack { signature: Signature::variadic_any(Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for Pack {
    fn name(&self) -> &str {
        "strata_pack"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        if let Some(t) = args.iter().find(|t| !text_type(t)) {
            return exec_err!("{} takes text, not {t}", self.name());
        }
        Ok(DataType::Binary)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let arrays =
            args.args.iter().map(|a| a.to_array(rows)).collect::<Result<Vec<ArrayRef>>>()?;
        let columns = arrays.iter().map(Texts::of).collect::<Result<Vec<_>>>()?;
        let mut out = BinaryBuilder::with_capacity(rows, rows * 32);
        let mut bytes = Vec::new();
        for row in 0..rows {
            bytes.clear();
            for column in &columns {
                // A null is tag 0; a text is tag 1, its length (u32, little-endian), its bytes.
                match column.get(row) {
                    None => bytes.push(0),
                    Some(t) => {
                        bytes.push(1);
                        bytes.extend_from_slice(&(t.len() as u32).to_le_bytes());
                        bytes.extend_from_slice(t.as_bytes());
                    }
                }
            }
            out.append_value(&bytes);
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct TryDecimal {
    name: String,
    precision: u8,
    scale: i8,
    signature: Signature,
}

impl TryDecimal {
    fn new(precision: u8, scale: i8) -> Option<Self> {
        if !(1..=38).contains(&precision) || scale < 0 || scale as u8 > precision {
            return None;
        }
        Some(TryDecimal {
            name: format!("strata_decimal_{precision}_{scale}"),
            precision,
            scale,
            signature: Signature::any(1, Volatility::Immutable),
        })
    }

    /// The value of `text` at this scale, if it is a number the type holds exactly: an optional
    /// sign, digits with an optional point (at least one digit), and an optional exponent
    /// (`e-3`). `None` for anything else, for a value with non-zero digits below the scale, and
    /// for one with more digits than the precision.
    fn exact(&self, text: &str) -> Option<i128> {
        let b = text.as_bytes();
        let (negative, b) = match b.first() {
            Some(b'-') => (true, &b[1..]),
            Some(b'+') => (false, &b[1..]),
            _ => (false, b),
        };
        let e = b.iter().position(|&c| c == b'e' || c == b'E').unwrap_or(b.len());
        let (mantissa, exponent) = (&b[..e], b.get(e + 1..));
        let point = mantissa.iter().position(|&c| c == b'.').unwrap_or(mantissa.len());
        let (int, frac) = (&mantissa[..point], mantissa.get(point + 1..).unwrap_or(&[]));
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        if !int.iter().chain(frac).all(u8::is_ascii_digit) {
            return None;
        }
        let exponent: i64 = match exponent {
            None => 0,
            Some(x) => {
                let digits = x.strip_prefix(b"-").or_else(|| x.strip_prefix(b"+")).unwrap_or(x);
                if digits.is_empty() || digits.len() > 6 || !digits.iter().all(u8::is_ascii_digit) {
                    return None;
                }
                std::str::from_utf8(x).ok()?.parse().ok()?
            }
        };
        // The digits without leading zeros, and the power of ten the last one stands for once
        // scaled.
        let digits: Vec<u8> = int.iter().chain(frac).copied().skip_while(|&c| c == b'0').collect();
        if digits.is_empty() {
            return Some(0);
        }
        let mut shift = exponent - frac.len() as i64 + i64::from(self.scale);
        let mut digits = digits.as_slice();
        while shift < 0 {
            match digits.split_last() {
                Some((b'0', rest)) => {
                    digits = rest;
                    shift += 1;
                }
                _ => return None,
            }
        }
        if digits.len() as i64 + shift > 38 {
            return None;
        }
        let mut v: i128 = 0;
        for &c in digits {
            v = v * 10 + i128::from(c - b'0');
        }
        v *= 10i128.pow(shift as u32);
        let v = if negative { -v } else { v };
        Decimal128Type::is_valid_decimal_precision(v, self.precision).then_some(v)
    }
}

impl ScalarUDFImpl for TryDecimal {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        match args {
            [t] if text_type(t) => Ok(DataType::Decimal128(self.precision, self.scale)),
            _ => exec_err!("{} takes one text argument, not {args:?}", self.name),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let [arg] = args.args.as_slice() else {
            return exec_err!("{} takes one argument", self.name);
        };
        let array = arg.to_array(rows)?;
        let texts = Texts::of(&array)?;
        let out: Decimal128Array =
            (0..rows).map(|i| texts.get(i).and_then(|t| self.exact(t.trim()))).collect();
        Ok(ColumnarValue::Array(Arc::new(
            out.with_precision_and_scale(self.precision, self.scale)?,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::StringViewArray;

    /// `TRY_CAST` and the function agree on every value the type holds exactly, through SQL;
    /// where `TRY_CAST` rounds, the function gives NULL, and it reads an exponent, which
    /// `TRY_CAST` does not.
    #[tokio::test]
    async fn decimals_read_as_try_cast_does() {
        let values = [
            "0",
            "1",
            "-1",
            "+1",
            "12.5",
            "12.50",
            "-12.05",
            "7.",
            ".5",
            "-.5",
            "1.005",
            "1.004",
            "-1.005",
            "99999999999999.99",
            "999999999999999.99",
            "1e3",
            "1.2.3",
            "",
            "-",
            "+",
            ".",
            "abc",
            "1a",
            "0001.10",
            " 3.25 ",
            "+-1",
            "--1",
            "1 000",
            "١٢",
            "12345678901234567890123456789012345678",
        ];
        let ctx = SessionContext::new();
        register(&ctx, [(15, 2), (38, 0), (5, 5), (10, 0)]);
        let texts: ArrayRef =
            Arc::new(StringViewArray::from_iter(values.iter().map(|v| Some(*v)).chain([None])));
        let batch = datafusion::arrow::record_batch::RecordBatch::try_from_iter([("t", texts)])
            .expect("batch");
        ctx.register_batch("v", batch).expect("register");
        let (mut checked, mut rounded, mut exponents) = (0, 0, 0);
        for (p, s) in [(15, 2), (38, 0), (5, 5), (10, 0)] {
            let f = decimal_function(p, s).expect("a function");
            let sql = format!("SELECT t, TRY_CAST(t AS DECIMAL({p},{s})) AS a, {f}(t) AS b FROM v");
            let got = ctx.sql(&sql).await.expect("sql").collect().await.expect("collect");
            for b in got {
                let (t, a, c) = (b.column(0), b.column(1), b.column(2));
                assert_eq!(a.data_type(), c.data_type());
                for i in 0..b.num_rows() {
                    let show = |x: &ArrayRef| {
                        datafusion::arrow::util::display::array_value_to_string(x, i).expect("show")
                    };
                    let text = show(t);
                    let below_scale = text
                        .trim()
                        .split_once('.')
                        .is_some_and(|(_, f)| f.trim_end_matches('0').len() > s as usize);
                    if below_scale && !c.is_valid(i) {
                        rounded += 1;
                        continue;
                    }
                    // Arrow does not read an exponent; the function does, exactly.
                    if text.contains(['e', 'E']) && !a.is_valid(i) && c.is_valid(i) {
                        exponents += 1;
                        continue;
                    }
                    assert_eq!(show(a), show(c), "{text:?} as decimal({p},{s})");
                    checked += 1;
                }
            }
        }
        assert_eq!(checked + rounded + exponents, 4 * (values.len() + 1));
        assert!(rounded >= 10, "{rounded}: the values TRY_CAST rounds are in the list");
    }

    #[tokio::test]
    async fn text_is_trimmed_and_blank_is_null_as_in_sql() {
        use datafusion::arrow::array::{Float64Array, Int64Array};
        let ctx = SessionContext::new();
        register(&ctx, []);
        let plain: ArrayRef = Arc::new(StringArray::from(vec![Some("a"), None, Some("b c")]));
        let spaced: ArrayRef = Arc::new(StringArray::from(vec![
            Some(" a "),
            Some(""),
            Some("   "),
            None,
            Some("\tx\t"),
        ]));
        let view: ArrayRef =
            Arc::new(StringViewArray::from(vec![Some("a longer text than twelve "), Some("")]));
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![Some(-7), None]));
        let floats: ArrayRef = Arc::new(Float64Array::from(vec![Some(1.5), Some(1e21)]));
        for (name, column) in [
            ("plain", plain),
            ("spaced", spaced),
            ("view", view),
            ("ints", ints),
            ("floats", floats),
        ] {
            let input_type = column.data_type().clone();
            let batch =
                datafusion::arrow::record_batch::RecordBatch::try_from_iter([("x", column)])
                    .expect("batch");
            ctx.register_batch(name, batch).expect("register");
            let sql = format!(
                "SELECT arrow_cast(NULLIF(TRIM(CAST(x AS VARCHAR)), ''), 'Utf8') AS a, \
                 arrow_cast(strata_text(x), 'Utf8') AS b, strata_text(x) AS c FROM {name}"
            );
            let got = ctx.sql(&sql).await.expect("sql").collect().await.expect("collect");
            assert_eq!(got[0].column(0), got[0].column(1), "{name}");
            let kept = if text_type(&input_type) { input_type } else { DataType::Utf8View };
            assert_eq!(got[0].column(2).data_type(), &kept, "{name}");
        }
    }

    #[tokio::test]
    async fn packed_texts_unpack_as_they_were() {
        let ctx = SessionContext::new();
        register(&ctx, []);
        let a: ArrayRef =
            Arc::new(StringArray::from(vec![Some("x"), None, Some(""), Some("é\u{1f}\\N")]));
        let b: ArrayRef = Arc::new(StringViewArray::from(vec![
            None,
            Some("a text longer than twelve"),
            Some("1"),
            None,
        ]));
        let batch = datafusion::arrow::record_batch::RecordBatch::try_from_iter([
            ("a", a.clone()),
            ("b", b.clone()),
        ])
        .expect("batch");
        ctx.register_batch("v", batch).expect("register");
        let sql = "SELECT CASE WHEN a = '1' THEN NULL ELSE strata_pack(a, b) END AS p FROM v";
        let got = ctx.sql(sql).await.expect("sql").collect().await.expect("collect");
        let columns = unpack(got[0].column(0), 2).expect("unpack");
        let view =
            |x: &ArrayRef| datafusion::arrow::compute::cast(x, &DataType::Utf8View).expect("cast");
        assert_eq!(&columns[0], &view(&a));
        assert_eq!(&columns[1], &view(&b));
        let short: ArrayRef = Arc::new(datafusion::arrow::array::BinaryArray::from(vec![
            &[1u8, 5, 0, 0, 0, b'a'][..],
        ]));
        assert!(unpack(&short, 1).is_err(), "a value cut short is an error, not a panic");
        let long: ArrayRef =
            Arc::new(datafusion::arrow::array::BinaryArray::from(vec![&[0u8, 0][..]]));
        assert!(unpack(&long, 1).is_err());
    }

    #[test]
    fn decimal_types_as_written() {
        assert_eq!(decimal_of("decimal(15,2)"), Some((15, 2)));
        assert_eq!(decimal_of("NUMERIC( 10 , 0 )"), Some((10, 0)));
        assert_eq!(decimal_of("decimal"), None);
        assert_eq!(decimal_of("decimal(10)"), Some((10, 0)));
        assert_eq!(decimal_of("bigint"), None);
    }

    #[test]
    fn exact_values_only() {
        let f = TryDecimal::new(15, 2).expect("valid");
        for (text, want) in [
            ("12.5", Some(1250)),
            ("-0.07", Some(-7)),
            ("+3", Some(300)),
            ("7.", Some(700)),
            (".5", Some(50)),
            ("-.5", Some(-50)),
            ("1.500", Some(150)),
            ("1e3", Some(100_000)),
            ("1.25E1", Some(1250)),
            ("125e-2", Some(125)),
            ("1500e-3", Some(150)),
            ("1500e-5", None),
            ("0e99", Some(0)),
            ("0.000e-40", Some(0)),
            ("1.005", None),
            ("1.25e-1", None),
            ("1e-3", None),
            ("9999999999999.99", Some(999_999_999_999_999)),
            ("99999999999999.99", None),
            ("1e40", None),
            ("1e", None),
            ("e3", None),
            (".", None),
            ("", None),
            ("1.2.3", None),
            ("1e3.5", None),
            ("1e1234567", None),
            ("١٢", None),
        ] {
            assert_eq!(f.exact(text), want, "{text:?}");
        }
        assert!(TryDecimal::new(40, 2).is_none() && TryDecimal::new(10, -1).is_none());
    }
}
