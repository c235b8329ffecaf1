//! Functions the cleaning query calls in place of DataFusion's own where those cost most of a
//! stage's time. Each gives exactly the result of the SQL it replaces:
//!
//! - `strata_decimal_<p>_<s>(text)` is `TRY_CAST(text AS DECIMAL(p, s))`. Plain numbers
//!   (`-12.5`, `+3`, `7.`) are read directly; anything else goes to Arrow's cast, so the rules for
//!   rounding, signs and what is not a number stay Arrow's. Arrow's own reading formats two
//!   strings per value.
//! - `strata_text(x)` is `NULLIF(TRIM(CAST(x AS VARCHAR)), '')`. Text keeps its type, and a
//!   column with nothing to trim or blank out is passed on as it is, not copied.
//! - `strata_pack(a, b, …)` packs texts (nulls too) into one binary value, which [`unpack`]
//!   reads back: the landed text of a quarantined row travels through the stage's sort as one
//!   column instead of one per contract column (each of which costs 4 bytes a row even when
//!   null, as it is for every accepted row).
//! - `strata_text_sha256(a, b, …)` is `sha256(concat_ws(chr(31), COALESCE(a, '\N'), …))`, hashed
//!   as it goes instead of building the joined text first.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, Decimal128Array, LargeStringArray, StringArray,
    StringViewArray, StringViewBuilder,
};
use datafusion::arrow::compute::CastOptions;
use datafusion::arrow::datatypes::{DataType, Decimal128Type, DecimalType};
use datafusion::common::{exec_err, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;
use sha2::{Digest, Sha256};

/// Registers `strata_text`, `strata_text_sha256` and `strata_decimal_<p>_<s>` for each decimal type given.
pub(crate) fn register(ctx: &SessionContext, decimals: impl IntoIterator<Item = (u8, i8)>) {
    ctx.register_udf(ScalarUDF::from(RowText::new(RowKind::Sha256)));
    ctx.register_udf(ScalarUDF::from(Text::new()));
    ctx.register_udf(ScalarUDF::from(RowText::new(RowKind::Pack)));
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

/// Precision and scale of a contract type written `decimal(p, s)` or `numeric(p, s)`.
pub(crate) fn decimal_of(sql_type: &str) -> Option<(u8, i8)> {
    let t: String = sql_type.chars().filter(|c| !c.is_whitespace()).collect::<String>();
    let t = t.to_ascii_lowercase();
    let args = t.strip_prefix("decimal(").or_else(|| t.strip_prefix("numeric("))?;
    let (p, s) = args.strip_suffix(')')?.split_once(',')?;
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

/// What a [`RowText`] function makes of the texts of each row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum RowKind {
    /// `strata_pack`: the texts packed so that [`unpack`] reads them back.
    Pack,
    /// `strata_text_sha256`: sha256 of the texts joined by chr(31), a null as `\N`.
    Sha256,
}

/// A function of several text columns that gives one binary value per row.
#[derive(Debug, PartialEq, Eq, Hash)]
struct RowText {
    kind: RowKind,
    signature: Signature,
}

impl RowText {
    fn new(kind: RowKind) -> Self {
        RowText { kind, signature: Signature::variadic_any(Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for RowText {
    fn name(&self) -> &str {
        match self.kind {
            RowKind::Pack => "strata_pack",
            RowKind::Sha256 => "strata_text_sha256",
        }
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
            for (i, column) in columns.iter().enumerate() {
                let value = column.get(row);
                match self.kind {
                    // A null is tag 0; a text is tag 1, its length (u32, little-endian), its
                    // bytes.
                    RowKind::Pack => match value {
                        None => bytes.push(0),
                        Some(t) => {
                            bytes.push(1);
                            bytes.extend_from_slice(&(t.len() as u32).to_le_bytes());
                            bytes.extend_from_slice(t.as_bytes());
                        }
                    },
                    RowKind::Sha256 => {
                        if i > 0 {
                            bytes.push(0x1f);
                        }
                        bytes.extend_from_slice(value.unwrap_or("\\N").as_bytes());
                    }
                }
            }
            match self.kind {
                RowKind::Pack => out.append_value(&bytes),
                RowKind::Sha256 => out.append_value(Sha256::digest(&bytes)),
            }
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

    /// A plain number: an optional sign, digits, and optionally a point and at most `scale`
    /// digits, with no more than 38 digits once scaled. Anything else is `None` (left to Arrow).
    fn plain(&self, text: &str) -> Option<i128> {
        let b = text.as_bytes();
        let (negative, b) = match b.first() {
            Some(b'-') => (true, &b[1..]),
            Some(b'+') => (false, &b[1..]),
            _ => (false, b),
        };
        let point = b.iter().position(|&c| c == b'.').unwrap_or(b.len());
        let (int, frac) = (&b[..point], b.get(point + 1..).unwrap_or(&[]));
        let scale = self.scale as usize;
        if int.is_empty() || frac.len() > scale || int.len() + scale > 38 {
            return None;
        }
        let mut v: i128 = 0;
        for &c in int.iter().chain(frac) {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + i128::from(c - b'0');
        }
        v *= 10i128.pow((scale - frac.len()) as u32);
        Some(if negative { -v } else { v })
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
        let mut other = false;
        let values = (0..rows).map(|i| match texts.get(i) {
            None => None,
            Some(t) => match self.plain(t.trim()) {
                Some(x) => {
                    Decimal128Type::is_valid_decimal_precision(x, self.precision).then_some(x)
                }
                None => {
                    other = true;
                    None
                }
            },
        });
        let mut out: Decimal128Array = values.collect();
        if other {
            // Values that are not plain numbers: Arrow's cast decides, value by value.
            let text = datafusion::arrow::compute::cast(&array, &DataType::Utf8)?;
            let target = DataType::Decimal128(self.precision, self.scale);
            let options = CastOptions { safe: true, ..Default::default() };
            let cast = datafusion::arrow::compute::cast_with_options(&text, &target, &options)?;
            let cast = cast.as_primitive::<Decimal128Type>();
            let plain = out;
            out = (0..rows)
                .map(|i| match plain.is_valid(i) {
                    true => Some(plain.value(i)),
                    false => cast.is_valid(i).then(|| cast.value(i)),
                })
                .collect();
        }
        Ok(ColumnarValue::Array(Arc::new(
            out.with_precision_and_scale(self.precision, self.scale)?,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::StringViewArray;

    /// `TRY_CAST` and the function agree on every value, through SQL.
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
        let mut checked = 0;
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
                    assert_eq!(show(a), show(c), "{:?} as decimal({p},{s})", show(t));
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 4 * (values.len() + 1));
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
        assert_eq!(decimal_of("decimal(10)"), None);
        assert_eq!(decimal_of("bigint"), None);
    }

    #[test]
    fn plain_numbers_only() {
        let f = TryDecimal::new(15, 2).expect("valid");
        assert_eq!(f.plain("12.5"), Some(1250));
        assert_eq!(f.plain("-0.07"), Some(-7));
        assert_eq!(f.plain("+3"), Some(300));
        assert_eq!(f.plain("1.005"), None, "rounding is left to Arrow");
        assert_eq!(f.plain(".5"), None);
        assert_eq!(f.plain("1e3"), None);
        assert!(TryDecimal::new(40, 2).is_none() && TryDecimal::new(10, -1).is_none());
    }

    #[tokio::test]
    async fn text_sha256_is_the_hash_of_the_joined_text() {
        let ctx = SessionContext::new();
        register(&ctx, []);
        let a: ArrayRef = Arc::new(StringViewArray::from(vec![Some("x"), None, Some(""), None]));
        let b: ArrayRef = Arc::new(StringViewArray::from(vec![Some("y"), Some("z"), None, None]));
        let batch =
            datafusion::arrow::record_batch::RecordBatch::try_from_iter([("a", a), ("b", b)])
                .expect("batch");
        ctx.register_batch("v", batch).expect("register");
        let sql = "SELECT sha256(concat_ws(chr(31), COALESCE(a, '\\N'), COALESCE(b, '\\N'))) = \
                   strata_text_sha256(a, b) AS same, strata_text_sha256(a, b) AS h FROM v";
        let got = ctx.sql(sql).await.expect("sql").collect().await.expect("collect");
        let same = got[0].column(0).as_boolean();
        assert_eq!(same.len(), 4);
        assert!(same.iter().all(|v| v == Some(true)), "{same:?}");
        let h = got[0].column(1).as_binary::<i32>();
        assert_eq!(h.value(0), Sha256::digest(b"x\x1fy").as_slice());
        assert_ne!(h.value(1), h.value(3), "a null is not the empty text");
    }
}
