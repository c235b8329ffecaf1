//! The canonical encoding of rows for hashing, and SHA-256 over many short messages at once.
//!
//! The encoding is stable across versions of strata and arrow (evidence stored today must compare
//! with evidence computed later) and compact (SHA-256 costs one compression per 64 bytes). A row
//! of columns `c0..cn` (in the caller's order) is:
//!
//! - a null bitmap: `ceil(n / 8)` bytes, bit `i % 8` of byte `i / 8` set when `ci` is null;
//! - then every fixed-width column, in order, at a fixed offset (all zeros when null):
//!
//! | type | bytes |
//! |---|---|
//! | signed integers, Date32, Date64, Timestamp | the value as i64, little-endian (8) |
//! | unsigned integers | the value as u64, little-endian (8) |
//! | Decimal128 (unscaled) | the value as i128, little-endian (16) |
//! | Float32, Float64 | the value as f64, IEEE bits little-endian (8) |
//! | Boolean | 1 byte |
//!
//! - then every variable-width column, in order, when not null: its length as a LEB128 varint,
//!   then its bytes (Utf8, LargeUtf8, Utf8View, Binary…; any other type as its display text).
//!
//! Widening a column (Int32 to Int64, Utf8 to LargeUtf8 or Utf8View) does not change the
//! encoding. The digest of a row is the standard SHA-256 of its encoding: rows are laid out
//! already padded, block-aligned, in one buffer, and hashed with the raw compression function
//! (SHA-NI where the CPU has it). Fixed offsets let each fixed-width column be written in one
//! tight loop.

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Date32Array, Date64Array, Decimal128Array,
    Float32Array, Float64Array, Int16Array, Int32Array, Int64Array, Int8Array,
    TimestampMicrosecondArray, TimestampMillisecondArray, TimestampNanosecondArray,
    TimestampSecondArray, UInt16Array, UInt32Array, UInt64Array, UInt8Array,
};
use arrow::datatypes::{DataType, TimeUnit};
use arrow::util::display::{ArrayFormatter, FormatOptions};

const IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// Rows of some columns, encoded and SHA-256-padded, back to back in 64-byte blocks.
#[derive(Debug, Default)]
pub struct EncodedRows {
    blocks: Vec<[u8; 64]>,
    /// Row `i` occupies `blocks[starts[i]..starts[i + 1]]`.
    starts: Vec<usize>,
    /// The encoded length of each row (before padding).
    lens: Vec<usize>,
}

impl EncodedRows {
    pub fn len(&self) -> usize {
        self.lens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    /// The canonical encoding of row `i`.
    pub fn row(&self, i: usize) -> &[u8] {
        let start = self.starts[i] * 64;
        &self.blocks.as_flattened()[start..start + self.lens[i]]
    }

    /// The SHA-256 digest of row `i`.
    pub fn digest(&self, i: usize) -> [u8; 32] {
        let mut state = IV;
        sha2::block_api::compress256(&mut state, &self.blocks[self.starts[i]..self.starts[i + 1]]);
        let mut out = [0u8; 32];
        for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        out
    }
}

/// The canonical encoding of one row of `columns`, for tests and tools.
pub fn encode(columns: &[ArrayRef], row: usize) -> Vec<u8> {
    let sliced: Vec<ArrayRef> = columns.iter().map(|c| c.slice(row, 1)).collect();
    let mut out = EncodedRows::default();
    encoded_rows(&sliced, &mut out);
    out.row(0).to_vec()
}

#[inline]
fn varint_len64(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

#[inline]
fn put_varint64(buf: &mut [u8], at: &mut usize, mut v: u64) {
    while v >= 0x80 {
        buf[*at] = (v as u8) | 0x80;
        v >>= 7;
        *at += 1;
    }
    buf[*at] = v as u8;
    *at += 1;
}

/// The width of a fixed-width column's cells, or `None` for variable width.
fn fixed_width(t: &DataType) -> Option<usize> {
    Some(match t {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64
        | DataType::Date32
        | DataType::Date64
        | DataType::Timestamp(_, _)
        | DataType::Float32
        | DataType::Float64 => 8,
        DataType::Decimal128(_, _) => 16,
        DataType::Boolean => 1,
        _ => return None,
    })
}

/// Writes `bytes(value)` of every row of a primitive column at `row_starts[i] + offset`
/// (zeros for nulls).
fn write_fixed<T: Copy, const W: usize>(
    values: &[T],
    nulls: Option<&arrow::buffer::NullBuffer>,
    buf: &mut [u8],
    row_starts: &[usize],
    offset: usize,
    bytes: impl Fn(T) -> [u8; W],
) {
    for (i, v) in values.iter().enumerate() {
        let at = row_starts[i] + offset;
        let cell = match nulls {
            Some(n) if n.is_null(i) => [0u8; W],
            _ => bytes(*v),
        };
        buf[at..at + W].copy_from_slice(&cell);
    }
}

fn fixed_column(c: &ArrayRef, buf: &mut [u8], row_starts: &[usize], offset: usize) {
    let nulls = c.logical_nulls().filter(|n| n.null_count() > 0);
    let nb = nulls.as_ref();
    // A fixed-width cell of array type `$t`, little-endian bytes of `$encode(value)`.
    macro_rules! fixed {
        ($t:ty, $encode:expr) => {
            write_fixed(
                c.as_any().downcast_ref::<$t>().expect("type checked").values(),
                nb,
                buf,
                row_starts,
                offset,
                $encode,
            )
        };
    }
    let signed = |x| i64::to_le_bytes(x);
    match c.data_type() {
        DataType::Int8 => fixed!(Int8Array, |x| signed(x.into())),
        DataType::Int16 => fixed!(Int16Array, |x| signed(x.into())),
        DataType::Int32 => fixed!(Int32Array, |x| signed(x.into())),
        DataType::Int64 => fixed!(Int64Array, signed),
        DataType::Date32 => fixed!(Date32Array, |x| signed(x.into())),
        DataType::Date64 => fixed!(Date64Array, signed),
        DataType::Timestamp(TimeUnit::Second, _) => fixed!(TimestampSecondArray, signed),
        DataType::Timestamp(TimeUnit::Millisecond, _) => fixed!(TimestampMillisecondArray, signed),
        DataType::Timestamp(TimeUnit::Microsecond, _) => fixed!(TimestampMicrosecondArray, signed),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => fixed!(TimestampNanosecondArray, signed),
        DataType::UInt8 => fixed!(UInt8Array, |x| u64::from(x).to_le_bytes()),
        DataType::UInt16 => fixed!(UInt16Array, |x| u64::from(x).to_le_bytes()),
        DataType::UInt32 => fixed!(UInt32Array, |x| u64::from(x).to_le_bytes()),
        DataType::UInt64 => fixed!(UInt64Array, |x: u64| x.to_le_bytes()),
        DataType::Decimal128(_, _) => fixed!(Decimal128Array, |x: i128| x.to_le_bytes()),
        DataType::Float32 => fixed!(Float32Array, |x: f32| f64::from(x).to_bits().to_le_bytes()),
        DataType::Float64 => fixed!(Float64Array, |x: f64| x.to_bits().to_le_bytes()),
        DataType::Boolean => {
            let a = c.as_any().downcast_ref::<BooleanArray>().expect("type checked");
            for i in 0..a.len() {
                buf[row_starts[i] + offset] =
                    u8::from(nb.is_none_or(|n| n.is_valid(i)) && a.value(i));
            }
        }
        _ => unreachable!("fixed_width() said fixed"),
    }
}

/// The bytes of every cell of a variable-width column (`None` for nulls).
fn var_cells<'a>(
    c: &'a ArrayRef,
    text: &'a [String],
) -> Box<dyn Fn(usize) -> Option<&'a [u8]> + 'a> {
    let nulls = c.logical_nulls().filter(|n| n.null_count() > 0);
    macro_rules! var {
        ($a:expr) => {{
            let a = $a;
            Box::new(move |i| {
                if nulls.as_ref().is_some_and(|n| n.is_null(i)) {
                    None
                } else {
                    Some(a.value(i).as_ref())
                }
            })
        }};
    }
    match c.data_type() {
        DataType::Utf8 => var!(c.as_string::<i32>()),
        DataType::LargeUtf8 => var!(c.as_string::<i64>()),
        DataType::Utf8View => var!(c.as_string_view()),
        DataType::Binary => var!(c.as_binary::<i32>()),
        DataType::LargeBinary => var!(c.as_binary::<i64>()),
        DataType::BinaryView => var!(c.as_binary_view()),
        _ => Box::new(move |i| {
            if nulls.as_ref().is_some_and(|n| n.is_null(i)) {
                None
            } else {
                Some(text[i].as_bytes())
            }
        }),
    }
}

/// Display text of every cell, for variable-width types without a binary form.
fn text_of(c: &ArrayRef) -> Vec<String> {
    let binary = fixed_width(c.data_type()).is_some()
        || matches!(
            c.data_type(),
            DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
                | DataType::Binary
                | DataType::LargeBinary
                | DataType::BinaryView
        );
    if binary {
        return Vec::new();
    }
    let options = FormatOptions::default();
    let fmt = ArrayFormatter::try_new(c.as_ref(), &options).ok();
    (0..c.len())
        .map(|i| fmt.as_ref().map_or_else(String::new, |f| f.value(i).to_string()))
        .collect()
}

/// Encodes and pads every row of `columns` (all of the same length) into `out`, reusing its
/// buffers. Works column by column.
pub fn encoded_rows(columns: &[ArrayRef], out: &mut EncodedRows) {
    let n = columns.first().map_or(0, |c| c.len());
    let bitmap = columns.len().div_ceil(8);
    // Fixed-width columns first, at fixed offsets; then the variable-width ones.
    let mut fixed = Vec::new();
    let mut var = Vec::new();
    let mut fixed_total = 0;
    for (ci, c) in columns.iter().enumerate() {
        match fixed_width(c.data_type()) {
            Some(w) => {
                fixed.push((ci, fixed_total));
                fixed_total += w;
            }
            None => var.push(ci),
        }
    }
    let texts: Vec<Vec<String>> = var.iter().map(|&ci| text_of(&columns[ci])).collect();
    let cells: Vec<_> = var.iter().zip(&texts).map(|(&ci, t)| var_cells(&columns[ci], t)).collect();
    // 1. Lengths.
    out.lens.clear();
    out.lens.resize(n, bitmap + fixed_total);
    for cell in &cells {
        for (i, len) in out.lens.iter_mut().enumerate() {
            if let Some(v) = cell(i) {
                *len += varint_len64(v.len() as u64) + v.len();
            }
        }
    }
    // 2. Block layout: the message, 0x80, zeros, the 64-bit big-endian bit length.
    out.starts.clear();
    out.starts.reserve(n + 1);
    let mut total = 0usize;
    out.starts.push(0);
    for &l in &out.lens {
        total += (l + 9).div_ceil(64);
        out.starts.push(total);
    }
    // Reuse the buffer without zeroing it all: every byte of a row's blocks is written below.
    if out.blocks.len() < total {
        out.blocks.resize(total, [0u8; 64]);
    } else {
        out.blocks.truncate(total);
    }
    let buf = out.blocks.as_flattened_mut();
    let row_starts: Vec<usize> = out.starts[..n].iter().map(|s| s * 64).collect();
    // 3. Bitmaps and padding.
    for (i, &start) in row_starts.iter().enumerate() {
        let end = out.starts[i + 1] * 64;
        let len = out.lens[i];
        buf[start..start + bitmap].fill(0);
        buf[start + len] = 0x80;
        buf[start + len + 1..end - 8].fill(0);
        buf[end - 8..end].copy_from_slice(&((len as u64) * 8).to_be_bytes());
    }
    for (ci, c) in columns.iter().enumerate() {
        if let Some(nb) = c.logical_nulls().filter(|n| n.null_count() > 0) {
            for i in (0..n).filter(|&i| nb.is_null(i)) {
                buf[row_starts[i] + ci / 8] |= 1 << (ci % 8);
            }
        }
    }
    // 4. Fixed-width cells, one tight loop per column.
    for &(ci, off) in &fixed {
        fixed_column(&columns[ci], buf, &row_starts, bitmap + off);
    }
    // 5. Variable-width cells, at each row's cursor.
    let mut cursor: Vec<usize> = row_starts.iter().map(|s| s + bitmap + fixed_total).collect();
    for cell in &cells {
        for (i, at) in cursor.iter_mut().enumerate() {
            if let Some(v) = cell(i) {
                put_varint64(buf, at, v.len() as u64);
                let dst = &mut buf[*at..*at + v.len()];
                if v.len() <= 16 {
                    for (d, s) in dst.iter_mut().zip(v) {
                        *d = *s;
                    }
                } else {
                    dst.copy_from_slice(v);
                }
                *at += v.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;
    use sha2::{Digest, Sha256};
    use std::sync::Arc;

    #[test]
    fn digests_are_standard_sha256_of_the_encoding() {
        let long = "x".repeat(200);
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![Some(-1), None, Some(300), Some(i64::MAX)])),
            Arc::new(StringArray::from(vec![Some("a"), Some(""), None, Some(long.as_str())])),
        ];
        let mut rows = EncodedRows::default();
        encoded_rows(&cols, &mut rows);
        for i in 0..4 {
            assert_eq!(rows.digest(i).to_vec(), Sha256::digest(rows.row(i)).to_vec(), "row {i}");
        }
        // Fixed-width first (8 bytes LE, zeros when null), then length-prefixed text.
        assert_eq!(rows.row(0), &[0b00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, b'a']);
        assert_eq!(rows.row(1), &[0b01, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(rows.row(2), &[0b10, 0x2c, 0x01, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode(&cols, 3).len(), 1 + 8 + 2 + 200);
    }
}
