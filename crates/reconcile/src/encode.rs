//! The canonical encoding of rows for hashing, and SHA-256 over many short messages at once.
//!
//! The encoding is stable across versions of strata and arrow (evidence stored today must compare
//! with evidence computed later) and compact (SHA-256 costs one compression per 64 bytes). A row
//! of columns `c0..cn` (in the caller's order) is:
//!
//! - a null bitmap: `ceil(n / 8)` bytes, bit `i % 8` of byte `i / 8` set when `ci` is null;
//! - then each non-null cell:
//!
//! | type | bytes |
//! |---|---|
//! | signed integers, Date32, Date64, Timestamp, Decimal128 (unscaled) | zigzag LEB128 varint |
//! | unsigned integers | LEB128 varint |
//! | Float32, Float64 | the value as f64, IEEE bits little-endian (8) |
//! | Boolean | 1 byte |
//! | Utf8, LargeUtf8, Utf8View, Binary… | LEB128 length, then the bytes |
//! | anything else | its display text, as for Utf8 |
//!
//! Widening a column (Int32 to Int64, Utf8 to LargeUtf8 or Utf8View) does not change the
//! encoding. The digest of a row is the standard SHA-256 of its encoding: rows are laid out
//! already padded, block-aligned, in one buffer, and hashed with the raw compression function
//! (SHA-NI where the CPU has it).

#[cfg(test)]
use arrow::array::StringArray;
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
fn varint_len(v: u128) -> usize {
    if let Ok(small) = u64::try_from(v) {
        return varint_len64(small);
    }
    (128 - v.leading_zeros() as usize).div_ceil(7)
}

#[inline]
fn varint_len64(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

#[inline]
fn zigzag64(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
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

fn zigzag(v: i128) -> u128 {
    ((v << 1) ^ (v >> 127)) as u128
}

fn put_varint(buf: &mut [u8], at: &mut usize, mut v: u128) {
    if let Ok(small) = u64::try_from(v) {
        return put_varint64(buf, at, small);
    }
    while v >= 0x80 {
        buf[*at] = (v as u8) | 0x80;
        v >>= 7;
        *at += 1;
    }
    buf[*at] = v as u8;
    *at += 1;
}

/// What to do with each non-null cell; monomorphised, so the per-cell work is inlined.
trait Visit {
    fn small(&mut self, row: usize, v: i64);
    fn signed(&mut self, row: usize, v: i128);
    fn unsigned(&mut self, row: usize, v: u128);
    fn bytes(&mut self, row: usize, v: &[u8]);
    fn float(&mut self, row: usize, v: f64);
    fn boolean(&mut self, row: usize, v: bool);
}

fn prim<T: Copy, V: Visit>(
    values: &[T],
    nb: &Option<arrow::buffer::NullBuffer>,
    mut f: impl FnMut(&mut V, usize, T),
    visitor: &mut V,
) {
    match nb {
        None => values.iter().enumerate().for_each(|(i, x)| f(visitor, i, *x)),
        Some(b) => values
            .iter()
            .enumerate()
            .filter(|(i, _)| b.is_valid(*i))
            .for_each(|(i, x)| f(visitor, i, *x)),
    }
}

/// Calls `visitor` for every non-null cell of `c`.
fn visit<V: Visit>(
    c: &ArrayRef,
    nb: &Option<arrow::buffer::NullBuffer>,
    text: &[String],
    visitor: &mut V,
) {
    macro_rules! signed {
        ($t:ty) => {
            prim(
                c.as_any().downcast_ref::<$t>().expect("type checked").values(),
                nb,
                |v: &mut V, i, x| v.small(i, i64::from(x)),
                visitor,
            )
        };
    }
    macro_rules! unsigned {
        ($t:ty) => {
            prim(
                c.as_any().downcast_ref::<$t>().expect("type checked").values(),
                nb,
                |v: &mut V, i, x| v.unsigned(i, u128::from(x)),
                visitor,
            )
        };
    }
    macro_rules! var {
        ($a:expr) => {{
            let a = $a;
            for i in 0..a.len() {
                if nb.as_ref().is_none_or(|b| b.is_valid(i)) {
                    visitor.bytes(i, a.value(i).as_ref());
                }
            }
        }};
    }
    match c.data_type() {
        DataType::Int8 => signed!(Int8Array),
        DataType::Int16 => signed!(Int16Array),
        DataType::Int32 => signed!(Int32Array),
        DataType::Int64 => signed!(Int64Array),
        DataType::Date32 => signed!(Date32Array),
        DataType::Date64 => signed!(Date64Array),
        DataType::Decimal128(_, _) => prim(
            c.as_any().downcast_ref::<Decimal128Array>().expect("type checked").values(),
            nb,
            |v: &mut V, i, x: i128| match i64::try_from(x) {
                Ok(small) => v.small(i, small),
                Err(_) => v.signed(i, x),
            },
            visitor,
        ),
        DataType::Timestamp(TimeUnit::Second, _) => signed!(TimestampSecondArray),
        DataType::Timestamp(TimeUnit::Millisecond, _) => signed!(TimestampMillisecondArray),
        DataType::Timestamp(TimeUnit::Microsecond, _) => signed!(TimestampMicrosecondArray),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => signed!(TimestampNanosecondArray),
        DataType::UInt8 => unsigned!(UInt8Array),
        DataType::UInt16 => unsigned!(UInt16Array),
        DataType::UInt32 => unsigned!(UInt32Array),
        DataType::UInt64 => unsigned!(UInt64Array),
        DataType::Float32 => prim(
            c.as_any().downcast_ref::<Float32Array>().expect("type checked").values(),
            nb,
            |v: &mut V, i, x: f32| v.float(i, f64::from(x)),
            visitor,
        ),
        DataType::Float64 => prim(
            c.as_any().downcast_ref::<Float64Array>().expect("type checked").values(),
            nb,
            |v: &mut V, i, x: f64| v.float(i, x),
            visitor,
        ),
        DataType::Boolean => {
            let a = c.as_any().downcast_ref::<BooleanArray>().expect("type checked");
            for i in 0..a.len() {
                if nb.as_ref().is_none_or(|b| b.is_valid(i)) {
                    visitor.boolean(i, a.value(i));
                }
            }
        }
        DataType::Utf8 => var!(c.as_string::<i32>()),
        DataType::LargeUtf8 => var!(c.as_string::<i64>()),
        DataType::Utf8View => var!(c.as_string_view()),
        DataType::Binary => var!(c.as_binary::<i32>()),
        DataType::LargeBinary => var!(c.as_binary::<i64>()),
        DataType::BinaryView => var!(c.as_binary_view()),
        _ => {
            for (i, t) in text.iter().enumerate() {
                if nb.as_ref().is_none_or(|b| b.is_valid(i)) {
                    visitor.bytes(i, t.as_bytes());
                }
            }
        }
    }
}

/// Pass 1: the encoded length of each row.
struct Lengths<'a>(&'a mut [usize]);

impl Visit for Lengths<'_> {
    #[inline]
    fn small(&mut self, row: usize, v: i64) {
        self.0[row] += varint_len64(zigzag64(v));
    }
    #[inline]
    fn signed(&mut self, row: usize, v: i128) {
        self.0[row] += varint_len(zigzag(v));
    }
    #[inline]
    fn unsigned(&mut self, row: usize, v: u128) {
        self.0[row] += varint_len(v);
    }
    #[inline]
    fn bytes(&mut self, row: usize, v: &[u8]) {
        self.0[row] += varint_len(v.len() as u128) + v.len();
    }
    #[inline]
    fn float(&mut self, row: usize, _: f64) {
        self.0[row] += 8;
    }
    #[inline]
    fn boolean(&mut self, row: usize, _: bool) {
        self.0[row] += 1;
    }
}

/// Pass 3: the cells, each at its row's cursor.
struct Writer<'a> {
    buf: &'a mut [u8],
    cursor: &'a mut [usize],
}

impl Visit for Writer<'_> {
    #[inline]
    fn small(&mut self, row: usize, v: i64) {
        put_varint64(self.buf, &mut self.cursor[row], zigzag64(v));
    }
    #[inline]
    fn signed(&mut self, row: usize, v: i128) {
        put_varint(self.buf, &mut self.cursor[row], zigzag(v));
    }
    #[inline]
    fn unsigned(&mut self, row: usize, v: u128) {
        put_varint(self.buf, &mut self.cursor[row], v);
    }
    #[inline]
    fn bytes(&mut self, row: usize, v: &[u8]) {
        let at = &mut self.cursor[row];
        put_varint64(self.buf, at, v.len() as u64);
        let dst = &mut self.buf[*at..*at + v.len()];
        if v.len() <= 16 {
            // Short text: a byte loop beats a call to memcpy.
            for (d, s) in dst.iter_mut().zip(v) {
                *d = *s;
            }
        } else {
            dst.copy_from_slice(v);
        }
        *at += v.len();
    }
    #[inline]
    fn float(&mut self, row: usize, v: f64) {
        let at = &mut self.cursor[row];
        self.buf[*at..*at + 8].copy_from_slice(&v.to_bits().to_le_bytes());
        *at += 8;
    }
    #[inline]
    fn boolean(&mut self, row: usize, v: bool) {
        self.buf[self.cursor[row]] = u8::from(v);
        self.cursor[row] += 1;
    }
}

/// Display text of every cell, for types without a binary encoding (empty for the others).
fn text_of(c: &ArrayRef) -> Vec<String> {
    let binary = matches!(
        c.data_type(),
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
            | DataType::Decimal128(_, _)
            | DataType::Timestamp(_, _)
            | DataType::Float32
            | DataType::Float64
            | DataType::Boolean
            | DataType::Utf8
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
    let texts: Vec<Vec<String>> = columns.iter().map(text_of).collect();
    let nulls: Vec<Option<arrow::buffer::NullBuffer>> =
        columns.iter().map(|c| c.logical_nulls().filter(|n| n.null_count() > 0)).collect();
    // 1. Lengths.
    out.lens.clear();
    out.lens.resize(n, bitmap);
    for ((c, nb), text) in columns.iter().zip(&nulls).zip(&texts) {
        visit(c, nb, text, &mut Lengths(&mut out.lens));
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
    // Reuse the buffer without zeroing it all: every byte of a row's blocks is written below
    // (bitmap, cells, padding zeros, length).
    if out.blocks.len() < total {
        out.blocks.resize(total, [0u8; 64]);
    } else {
        out.blocks.truncate(total);
    }
    let buf = out.blocks.as_flattened_mut();
    let mut cursor: Vec<usize> = out.starts[..n].iter().map(|s| s * 64 + bitmap).collect();
    // 3. Bitmaps and padding, then null bits, then cells.
    for i in 0..n {
        let start = out.starts[i] * 64;
        let end = out.starts[i + 1] * 64;
        let len = out.lens[i];
        buf[start..start + bitmap].fill(0);
        buf[start + len] = 0x80;
        buf[start + len + 1..end - 8].fill(0);
        buf[end - 8..end].copy_from_slice(&((len as u64) * 8).to_be_bytes());
    }
    for (ci, nb) in nulls.iter().enumerate() {
        if let Some(nb) = nb {
            for i in (0..n).filter(|&i| nb.is_null(i)) {
                buf[out.starts[i] * 64 + ci / 8] |= 1 << (ci % 8);
            }
        }
    }
    let mut writer = Writer { buf, cursor: &mut cursor };
    for ((c, nb), text) in columns.iter().zip(&nulls).zip(&texts) {
        visit(c, nb, text, &mut writer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        // -1 zigzags to 1; 300 is two varint bytes; nulls set their bit.
        assert_eq!(rows.row(0), &[0b00, 0x01, 0x01, b'a']);
        assert_eq!(rows.row(1), &[0b01, 0x00]);
        assert_eq!(rows.row(2), &[0b10, 0xd8, 0x04]);
        assert_eq!(encode(&cols, 3).len(), 1 + 10 + 2 + 200);
    }
}
