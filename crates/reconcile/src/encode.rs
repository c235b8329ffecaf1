//! The canonical encoding of rows for hashing, and SHA-256 over many short messages at once.
//!
//! The encoding is stable across versions of strata and arrow (evidence stored today must compare
//! with evidence computed later; its name, [`ENCODING`], is stored with every set of totals) and
//! compact, because SHA-256 costs one compression per 64 bytes. A row of columns `c0..cn` (in the
//! caller's order) is:
//!
//! - a null bitmap: `ceil(n / 8)` bytes, bit `i % 8` of byte `i / 8` set when `ci` is null;
//! - then every column that is not null, in order:
//!
//! | type | bytes |
//! |---|---|
//! | signed integers, Date32, Date64, Timestamp | the value as i64, zigzag-coded to u64 (below) |
//! | unsigned integers | the value as u64 (below) |
//! | Decimal128 (unscaled) | the value as i128, zigzag-coded to u128 (below) |
//! | Float32, Float64 | the value as f64, IEEE bits little-endian (8) |
//! | Boolean | 1 byte |
//! | Utf8, LargeUtf8, Utf8View, Binary… | the length as a LEB128 varint, then the bytes |
//! | any other type | its display text, as Utf8 |
//!
//! An integer `v` is one byte `k`, the count of its significant bytes (0 for zero, up to 8 or
//! 16), then the `k` low bytes of `v`, little-endian. Small numbers take few bytes, and the cell
//! is written with one store, where a varint would take a loop.
//!
//! Every cell is self-delimiting and nulls are in the bitmap, so the encoding is unambiguous.
//! Widening a column (Int32 to Int64, Utf8 to LargeUtf8 or Utf8View) does not change it. Short
//! integer cells keep a TPC-H `lineitem` row under two SHA-256 blocks (fixed 8- and 16-byte cells
//! took three).
//!
//! The digest of a row is the standard SHA-256 of its encoding: rows are laid out already padded,
//! block-aligned, in one buffer, and hashed with the raw compression function (SHA-NI where the
//! CPU has it). The buffer is filled column by column, one tight loop per column.

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Date32Array, Date64Array, Decimal128Array,
    Float32Array, Float64Array, Int16Array, Int32Array, Int64Array, Int8Array, OffsetSizeTrait,
    TimestampMicrosecondArray, TimestampMillisecondArray, TimestampNanosecondArray,
    TimestampSecondArray, UInt16Array, UInt32Array, UInt64Array, UInt8Array,
};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, TimeUnit};
use arrow::util::display::{ArrayFormatter, FormatOptions};

/// The name of this encoding, stored with totals so that totals hashed differently are never
/// compared as if they were data that differs.
pub const ENCODING: &str = "strata.row.v2";

use crate::lanes::{self, IV, LANES};

/// Rows of some columns, encoded and SHA-256-padded, back to back in 64-byte blocks.
#[derive(Debug, Default)]
pub struct EncodedRows {
    blocks: Vec<[u8; 64]>,
    /// Row `i` starts at block `i * slot`: every row has room for the longest.
    slot: usize,
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
        let start = i * self.slot * 64;
        &self.blocks.as_flattened()[start..start + self.lens[i]]
    }

    /// The blocks of row `i`'s padded message.
    fn blocks(&self, i: usize) -> &[[u8; 64]] {
        let start = i * self.slot;
        &self.blocks[start..start + self.block_count(i)]
    }

    /// How many blocks row `i`'s padded message has (the length, 0x80 and 8 bytes of length).
    fn block_count(&self, i: usize) -> usize {
        (self.lens[i] + 9).div_ceil(64)
    }

    /// The SHA-256 digest of row `i`.
    pub fn digest(&self, i: usize) -> [u8; 32] {
        let mut state = IV;
        sha2::block_api::compress256(&mut state, self.blocks(i));
        digest_bytes(state)
    }

    /// The SHA-256 digests of every row, in order, into `out` (cleared first), as the eight
    /// 32-bit words of SHA-256's final state (the digest is their big-endian bytes): sixteen
    /// rows at a time where the CPU can ([`crate::lanes`]), the same digests as [`Self::digest`].
    pub fn digest_words(&self, out: &mut Vec<[u32; 8]>) {
        out.clear();
        out.reserve(self.len());
        for first in (0..self.len()).step_by(LANES) {
            let rows = LANES.min(self.len() - first);
            let starts =
                std::array::from_fn(|l| if l < rows { (first + l) * self.slot } else { 0 });
            let counts =
                std::array::from_fn(|l| if l < rows { self.block_count(first + l) } else { 0 });
            let states = lanes::states(&self.blocks, &starts, &counts);
            out.extend_from_slice(&states[..rows]);
        }
    }
}

fn digest_bytes(state: [u32; 8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

/// The canonical encoding of one row of `columns`, for tests and tools.
pub fn encode(columns: &[ArrayRef], row: usize) -> Vec<u8> {
    let sliced: Vec<ArrayRef> = columns.iter().map(|c| c.slice(row, 1)).collect();
    let mut out = EncodedRows::default();
    encoded_rows(&sliced, &mut out);
    out.row(0).to_vec()
}

#[inline]
fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Writes `v` as a LEB128 varint at `at` and returns its end.
#[inline]
fn put_varint(buf: &mut [u8], mut at: usize, mut v: u64) -> usize {
    while v >= 0x80 {
        buf[at] = (v as u8) | 0x80;
        v >>= 7;
        at += 1;
    }
    buf[at] = v as u8;
    at + 1
}

/// The bytes of an integer cell: its count of significant bytes, then those bytes.
#[inline]
fn int_len(v: u64) -> usize {
    1 + (64 - v.leading_zeros() as usize).div_ceil(8)
}

#[inline]
fn int_len128(v: u128) -> usize {
    1 + (128 - v.leading_zeros() as usize).div_ceil(8)
}

/// Writes an integer cell at `at` and returns its end, with one 8- or 16-byte store that may run
/// past the cell (see [`encoded_rows`] for why that is safe).
#[inline]
fn put_int(buf: &mut [u8], at: usize, v: u64) -> usize {
    let len = int_len(v);
    if len <= 8 {
        buf[at..at + 8].copy_from_slice(&((v << 8) | (len as u64 - 1)).to_le_bytes());
    } else {
        buf[at..at + 16].copy_from_slice(&((u128::from(v) << 8) | 8).to_le_bytes());
    }
    at + len
}

#[inline]
fn put_int128(buf: &mut [u8], at: usize, v: u128) -> usize {
    let len = int_len128(v);
    if len <= 8 {
        return put_int(buf, at, v as u64);
    }
    if len <= 16 {
        buf[at..at + 16].copy_from_slice(&((v << 8) | (len as u128 - 1)).to_le_bytes());
    } else {
        buf[at] = 16;
        buf[at + 1..at + 17].copy_from_slice(&v.to_le_bytes());
    }
    at + len
}

#[inline]
fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

#[inline]
fn zigzag128(v: i128) -> u128 {
    ((v << 1) ^ (v >> 127)) as u128
}

/// Writes `data[start..start + len]`, length first, at `at` and returns its end. Text under 128
/// bytes (a one-byte length) is written with fixed-size stores: up to 7 bytes and the length in
/// one 8-byte store when `data` has 8 bytes from `start` (see [`encoded_rows`]), up to 32 with
/// two overlapping stores of 8 or 16 bytes that end at the cell's end.
#[inline]
fn put_bytes(buf: &mut [u8], at: usize, data: &[u8], start: usize, len: usize) -> usize {
    if len >= 128 {
        let at = put_varint(buf, at, len as u64);
        buf[at..at + len].copy_from_slice(&data[start..start + len]);
        return at + len;
    }
    if len <= 7 && start + 8 <= data.len() {
        let word = u64::from_le_bytes(data[start..start + 8].try_into().expect("8 bytes"));
        buf[at..at + 8].copy_from_slice(&((word << 8) | len as u64).to_le_bytes());
        return at + 1 + len;
    }
    buf[at] = len as u8;
    let (at, src) = (at + 1, &data[start..start + len]);
    match len {
        8..=16 => {
            buf[at..at + 8].copy_from_slice(&src[..8]);
            buf[at + len - 8..at + len].copy_from_slice(&src[len - 8..]);
        }
        17..=32 => {
            buf[at..at + 16].copy_from_slice(&src[..16]);
            buf[at + len - 16..at + len].copy_from_slice(&src[len - 16..]);
        }
        _ => buf[at..at + len].copy_from_slice(src),
    }
    at + len
}

/// Writes the cells of a column that are not null, each at its row's cursor `at[i]` (moved past
/// it): `put(buf, at, i)` writes cell `i` at `at` and returns the end.
#[inline]
fn cells(
    nulls: Option<&NullBuffer>,
    buf: &mut [u8],
    at: &mut [usize],
    put: impl Fn(&mut [u8], usize, usize) -> usize,
) {
    match nulls {
        None => {
            for (i, a) in at.iter_mut().enumerate() {
                *a = put(buf, *a, i);
            }
        }
        Some(nb) => nb.valid_indices().for_each(|i| at[i] = put(buf, at[i], i)),
    }
}

fn is_binary(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
    )
}

/// The longest cell of a column of type `t`, if it has a bound.
fn widest_fixed(t: &DataType) -> Option<usize> {
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
        | DataType::Timestamp(_, _) => 9,
        DataType::Decimal128(_, _) => 17,
        DataType::Float32 | DataType::Float64 => 8,
        DataType::Boolean => 1,
        _ => return None,
    })
}

/// Display text of every cell, for types without a binary form in the encoding.
fn text_of(c: &ArrayRef) -> Vec<String> {
    let encoded = is_binary(c.data_type()) || widest_fixed(c.data_type()).is_some();
    if encoded {
        return Vec::new();
    }
    let options = FormatOptions::default();
    let fmt = ArrayFormatter::try_new(c.as_ref(), &options).ok();
    (0..c.len())
        .map(|i| fmt.as_ref().map_or_else(String::new, |f| f.value(i).to_string()))
        .collect()
}

/// The longest cell (length and bytes) of a column of variable width. Null cells count too,
/// with the length their slot has: this is a bound, not a measure.
fn widest_var(c: &ArrayRef, text: &[String]) -> usize {
    fn widest<O: OffsetSizeTrait>(offsets: &[O]) -> usize {
        offsets.windows(2).map(|w| w[1].as_usize() - w[0].as_usize()).max().unwrap_or(0)
    }
    let view_len = |views: &[u128]| views.iter().map(|v| *v as u32 as usize).max().unwrap_or(0);
    let longest = match c.data_type() {
        DataType::Utf8 => widest(c.as_string::<i32>().value_offsets()),
        DataType::LargeUtf8 => widest(c.as_string::<i64>().value_offsets()),
        DataType::Binary => widest(c.as_binary::<i32>().value_offsets()),
        DataType::LargeBinary => widest(c.as_binary::<i64>().value_offsets()),
        DataType::Utf8View => view_len(c.as_string_view().views()),
        DataType::BinaryView => view_len(c.as_binary_view().views()),
        _ => text.iter().map(String::len).max().unwrap_or(0),
    };
    varint_len(longest as u64) + longest
}

/// Writes every cell of a Utf8 or Binary column with `O` offsets, straight from its buffers.
fn offset_cells<O: OffsetSizeTrait>(
    offsets: &[O],
    data: &[u8],
    nulls: Option<&NullBuffer>,
    buf: &mut [u8],
    at: &mut [usize],
) {
    cells(nulls, buf, at, |buf, at, i| {
        let start = offsets[i].as_usize();
        put_bytes(buf, at, data, start, offsets[i + 1].as_usize() - start)
    });
}

/// Writes every cell of one column that is not null, each at its row's cursor.
fn write_column(c: &ArrayRef, text: &[String], buf: &mut [u8], at: &mut [usize]) {
    let nulls = c.logical_nulls().filter(|n| n.null_count() > 0);
    let nb = nulls.as_ref();
    // Integer cells of primitive array type `$t`, each value coded to u64 by `$code`.
    macro_rules! ints {
        ($t:ty, $code:expr) => {{
            let v = c.as_any().downcast_ref::<$t>().expect("type checked").values();
            let code = $code;
            cells(nb, buf, at, |buf, at, i| put_int(buf, at, code(v[i])))
        }};
    }
    let signed = |x: i64| zigzag(x);
    match c.data_type() {
        DataType::Int8 => ints!(Int8Array, |x: i8| signed(x.into())),
        DataType::Int16 => ints!(Int16Array, |x: i16| signed(x.into())),
        DataType::Int32 => ints!(Int32Array, |x: i32| signed(x.into())),
        DataType::Int64 => ints!(Int64Array, signed),
        DataType::Date32 => ints!(Date32Array, |x: i32| signed(x.into())),
        DataType::Date64 => ints!(Date64Array, signed),
        DataType::Timestamp(TimeUnit::Second, _) => ints!(TimestampSecondArray, signed),
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            ints!(TimestampMillisecondArray, signed)
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            ints!(TimestampMicrosecondArray, signed)
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => ints!(TimestampNanosecondArray, signed),
        DataType::UInt8 => ints!(UInt8Array, |x: u8| u64::from(x)),
        DataType::UInt16 => ints!(UInt16Array, |x: u16| u64::from(x)),
        DataType::UInt32 => ints!(UInt32Array, |x: u32| u64::from(x)),
        DataType::UInt64 => ints!(UInt64Array, |x: u64| x),
        DataType::Decimal128(_, _) => {
            let v = c.as_any().downcast_ref::<Decimal128Array>().expect("type checked").values();
            // Most decimals fit in 64 bits, and their cells are the same either way.
            cells(nb, buf, at, |buf, at, i| match i64::try_from(v[i]) {
                Ok(small) => put_int(buf, at, zigzag(small)),
                Err(_) => put_int128(buf, at, zigzag128(v[i])),
            })
        }
        DataType::Float32 | DataType::Float64 => {
            let v: Vec<f64> = match c.data_type() {
                DataType::Float32 => {
                    let a = c.as_any().downcast_ref::<Float32Array>().expect("type checked");
                    a.values().iter().map(|x| f64::from(*x)).collect()
                }
                _ => c
                    .as_any()
                    .downcast_ref::<Float64Array>()
                    .expect("type checked")
                    .values()
                    .to_vec(),
            };
            cells(nb, buf, at, |buf, at, i| {
                buf[at..at + 8].copy_from_slice(&v[i].to_bits().to_le_bytes());
                at + 8
            })
        }
        DataType::Boolean => {
            let a = c.as_any().downcast_ref::<BooleanArray>().expect("type checked");
            cells(nb, buf, at, |buf, at, i| {
                buf[at] = u8::from(a.value(i));
                at + 1
            })
        }
        DataType::Utf8 => {
            let a = c.as_string::<i32>();
            offset_cells(a.value_offsets(), a.values(), nb, buf, at)
        }
        DataType::LargeUtf8 => {
            let a = c.as_string::<i64>();
            offset_cells(a.value_offsets(), a.values(), nb, buf, at)
        }
        DataType::Binary => {
            let a = c.as_binary::<i32>();
            offset_cells(a.value_offsets(), a.values(), nb, buf, at)
        }
        DataType::LargeBinary => {
            let a = c.as_binary::<i64>();
            offset_cells(a.value_offsets(), a.values(), nb, buf, at)
        }
        DataType::Utf8View | DataType::BinaryView => {
            let (views, buffers) = match c.data_type() {
                DataType::Utf8View => {
                    let a = c.as_string_view();
                    (a.views(), a.data_buffers())
                }
                _ => {
                    let a = c.as_binary_view();
                    (a.views(), a.data_buffers())
                }
            };
            cells(nb, buf, at, |buf, at, i| {
                let view = views[i];
                let len = view as u32 as usize;
                if len > 12 {
                    let b = &buffers[(view >> 64) as u32 as usize];
                    return put_bytes(buf, at, b, (view >> 96) as u32 as usize, len);
                }
                // Inline: the bytes are in the view, after the length. The length (under 128:
                // one byte) and the bytes in one store of 8 or 16 bytes.
                let cell = ((view >> 32) << 8) | len as u128;
                if len <= 7 {
                    buf[at..at + 8].copy_from_slice(&(cell as u64).to_le_bytes());
                } else {
                    buf[at..at + 16].copy_from_slice(&cell.to_le_bytes());
                }
                at + 1 + len
            })
        }
        _ => cells(nb, buf, at, |buf, at, i| {
            put_bytes(buf, at, text[i].as_bytes(), 0, text[i].len())
        }),
    }
}

/// Encodes and pads every row of `columns` (all of the same length) into `out`, reusing its
/// buffers. Works column by column.
///
/// Cells are written with whole 8- or 16-byte stores that may run past the cell, into bytes the
/// next cell or the padding overwrites later. A store never runs more than 7 bytes past its cell
/// (8-byte stores start inside a cell of at least one byte; 16-byte stores, inside one of at
/// least nine), and a row's padding (written last) is at least 9 bytes, so no store reaches the
/// next row.
pub fn encoded_rows(columns: &[ArrayRef], out: &mut EncodedRows) {
    let n = columns.first().map_or(0, |c| c.len());
    let bitmap = columns.len().div_ceil(8);
    let texts: Vec<Vec<String>> = columns.iter().map(text_of).collect();
    // 1. Room for the longest row: the widest cell of each column, and the padding.
    let mut room = bitmap + 9;
    for (c, text) in columns.iter().zip(&texts) {
        room += widest_fixed(c.data_type()).unwrap_or_else(|| widest_var(c, text));
    }
    out.slot = room.div_ceil(64);
    // Zeroed first, in one pass: the bitmaps and the padding's zeros need no other writes.
    let total = n * out.slot;
    if out.blocks.len() < total {
        out.blocks.resize(total, [0u8; 64]);
    }
    out.blocks[..total].fill([0u8; 64]);
    let buf = out.blocks.as_flattened_mut();
    let mut cursor: Vec<usize> = (0..n).map(|i| i * out.slot * 64).collect();
    // 2. Bitmaps.
    for (ci, c) in columns.iter().enumerate() {
        if let Some(nb) = c.logical_nulls().filter(|n| n.null_count() > 0) {
            for i in (0..n).filter(|&i| nb.is_null(i)) {
                buf[cursor[i] + ci / 8] |= 1 << (ci % 8);
            }
        }
    }
    // 3. The cells, column by column, each at its row's cursor.
    for at in &mut cursor {
        *at += bitmap;
    }
    for (c, text) in columns.iter().zip(&texts) {
        write_column(c, text, buf, &mut cursor);
    }
    // 4. Padding, last: the message, 0x80, zeros, the 64-bit big-endian bit length.
    out.lens.clear();
    for (i, end) in cursor.into_iter().enumerate() {
        let start = i * out.slot * 64;
        let len = end - start;
        let end = start + (len + 9).div_ceil(64) * 64;
        // 0x80 and the zeros that the last cell's store may have run over (at most 7 bytes,
        // and the padding is at least 9).
        buf[start + len..start + len + 8].copy_from_slice(&0x80u64.to_le_bytes());
        buf[end - 8..end].copy_from_slice(&((len as u64) * 8).to_be_bytes());
        out.lens.push(len);
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
        let mut all = Vec::new();
        rows.digest_words(&mut all);
        assert_eq!(all.len(), 4);
        for (i, d) in all.iter().enumerate() {
            assert_eq!(rows.digest(i).to_vec(), Sha256::digest(rows.row(i)).to_vec(), "row {i}");
            assert_eq!(digest_bytes(*d), rows.digest(i), "row {i}");
        }
        // The bitmap, then each cell that is not null: integers as a byte count and the bytes
        // of the zigzag value, text as a varint length and the bytes.
        assert_eq!(rows.row(0), &[0b00, 1, 0x01, 1, b'a']);
        assert_eq!(rows.row(1), &[0b01, 0]);
        assert_eq!(rows.row(2), &[0b10, 2, 0x58, 0x02]);
        assert_eq!(encode(&cols, 3).len(), 1 + 9 + 2 + 200);
        // Widening does not change the encoding.
        let narrow: Vec<ArrayRef> = vec![
            Arc::new(arrow::array::Int32Array::from(vec![Some(-1), None, Some(300)])),
            Arc::new(StringArray::from(vec![Some("a"), Some(""), None])),
        ];
        let view: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![Some(-1), None, Some(300)])),
            Arc::new(arrow::array::StringViewArray::from(vec![Some("a"), Some(""), None])),
        ];
        for i in 0..3 {
            assert_eq!(encode(&narrow, i), rows.row(i), "row {i}");
            assert_eq!(encode(&view, i), rows.row(i), "row {i}");
        }
    }

    /// The encoding of one cell, written the plain way.
    fn reference_int(out: &mut Vec<u8>, v: u128) {
        let bytes = v.to_le_bytes();
        let k = bytes.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
        out.push(k as u8);
        out.extend_from_slice(&bytes[..k]);
    }

    fn reference_text(out: &mut Vec<u8>, v: &[u8]) {
        let mut len = v.len();
        while len >= 0x80 {
            out.push((len as u8) | 0x80);
            len >>= 7;
        }
        out.push(len as u8);
        out.extend_from_slice(v);
    }

    #[test]
    fn rows_of_every_shape_match_a_plain_encoder() {
        use arrow::array::{BooleanArray, Decimal128Array, Float64Array, StringViewArray};
        let mut next = crate::xorshift(0x2545_f491_4f6c_dd1du64);
        let n = 3000;
        let mut ints = Vec::new();
        let mut decs = Vec::new();
        let mut texts = Vec::new();
        let mut views = Vec::new();
        let mut bools = Vec::new();
        let mut floats = Vec::new();
        for _ in 0..n {
            let r = next();
            // Magnitudes of every byte count, signs, nulls.
            let int = (next() as i64) >> (r % 64);
            ints.push((!r.is_multiple_of(7)).then_some(int));
            let dec = (i128::from(next() as i64) << 64 | i128::from(next())) >> (r % 128);
            decs.push((!r.is_multiple_of(5)).then_some(dec));
            let len = (next() % 40) as usize;
            let text: String = (0..len).map(|_| char::from(b'a' + (next() % 26) as u8)).collect();
            texts.push((!r.is_multiple_of(11)).then(|| text.clone()));
            let len = (next() % 30) as usize;
            views.push(
                (!r.is_multiple_of(3)).then(|| text.chars().cycle().take(len).collect::<String>()),
            );
            bools.push((!r.is_multiple_of(13)).then_some(r.is_multiple_of(2)));
            floats.push((!r.is_multiple_of(17)).then_some(int as f64 / 3.0));
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(ints.clone())),
            Arc::new(Decimal128Array::from(decs.clone())),
            Arc::new(StringArray::from(texts.clone())),
            Arc::new(StringViewArray::from(views.clone())),
            Arc::new(BooleanArray::from(bools.clone())),
            Arc::new(Float64Array::from(floats.clone())),
            Arc::new(arrow::array::Int32Array::from(
                ints.iter().map(|v| v.map(|x| x as i32)).collect::<Vec<_>>(),
            )),
        ];
        let mut rows = EncodedRows::default();
        encoded_rows(&cols, &mut rows);
        for i in 0..n {
            let mut want = vec![0u8];
            let zig = |v: i64| u128::from(((v << 1) ^ (v >> 63)) as u64);
            let mut cell = |ci: usize, null: bool, f: &mut dyn FnMut(&mut Vec<u8>)| {
                if null {
                    want[0] |= 1 << ci;
                } else {
                    let mut c = Vec::new();
                    f(&mut c);
                    want.extend(c);
                }
            };
            cell(0, ints[i].is_none(), &mut |o| reference_int(o, zig(ints[i].unwrap_or(0))));
            cell(1, decs[i].is_none(), &mut |o| {
                let v = decs[i].unwrap_or(0);
                reference_int(o, ((v << 1) ^ (v >> 127)) as u128)
            });
            cell(2, texts[i].is_none(), &mut |o| {
                reference_text(o, texts[i].as_deref().unwrap_or("").as_bytes())
            });
            cell(3, views[i].is_none(), &mut |o| {
                reference_text(o, views[i].as_deref().unwrap_or("").as_bytes())
            });
            cell(4, bools[i].is_none(), &mut |o| o.push(u8::from(bools[i] == Some(true))));
            cell(5, floats[i].is_none(), &mut |o| {
                o.extend_from_slice(&floats[i].unwrap_or(0.0).to_bits().to_le_bytes())
            });
            cell(6, ints[i].is_none(), &mut |o| {
                reference_int(o, zig(i64::from(ints[i].unwrap_or(0) as i32)))
            });
            assert_eq!(rows.row(i), want.as_slice(), "row {i}");
            assert_eq!(rows.digest(i).to_vec(), Sha256::digest(&want).to_vec(), "row {i}");
        }
        // Sixteen at a time (rows of one to three blocks here), as one at a time.
        let mut all = Vec::new();
        rows.digest_words(&mut all);
        assert_eq!(all.len(), n);
        for (i, d) in all.iter().enumerate() {
            assert_eq!(digest_bytes(*d), rows.digest(i), "row {i}");
        }
    }
}
