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

use std::ops::Range;

use arrow::array::{Array, ArrayRef, AsArray, OffsetSizeTrait};
use arrow::buffer::{BooleanBuffer, Buffer, NullBuffer};
use arrow::datatypes::{DataType, TimeUnit};
use arrow::datatypes::{
    Date32Type, Date64Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type,
    Int64Type, Int8Type, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow::util::display::{ArrayFormatter, FormatOptions};

/// The name of this encoding, stored with totals so that totals hashed differently are never
/// compared as if they were data that differs.
pub const ENCODING: &str = "strata.row.v2";

/// The SHA-256 initial state.
const IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// Rows of some columns, encoded and SHA-256-padded, back to back in 64-byte blocks.
#[derive(Debug, Default)]
pub struct EncodedRows {
    blocks: Vec<[u8; 64]>,
    /// Row `i` starts at block `i * slot`: every row has room for the longest.
    slot: usize,
    /// The encoded length of each row (before padding).
    lens: Vec<usize>,
    /// Where each row's next cell goes, while encoding.
    cursor: Vec<usize>,
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
    /// 32-bit words of SHA-256's final state (the digest is their big-endian bytes): the same
    /// digests as [`Self::digest`], without the bytes.
    pub fn digest_words(&self, out: &mut Vec<[u32; 8]>) {
        out.clear();
        out.reserve(self.len());
        for i in 0..self.len() {
            let mut state = IV;
            sha2::block_api::compress256(&mut state, self.blocks(i));
            out.push(state);
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
    let mut out = EncodedRows::default();
    RowEncoder::new(columns).encode(row..row + 1, &mut out);
    out.row(0).to_vec()
}

/// Encodes and pads every row of `columns` (all of the same length) into `out`, reusing its
/// buffers.
pub fn encoded_rows(columns: &[ArrayRef], out: &mut EncodedRows) {
    let encoder = RowEncoder::new(columns);
    encoder.encode(0..encoder.len(), out);
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

/// Room in a row's slot past its message: the padding (at most 72 bytes), which also takes the
/// stores that run over the last cell (see [`RowEncoder::encode`]).
const SLACK: usize = 72;

#[inline(always)]
fn store16(buf: &mut [u8], at: usize, v: u128) {
    buf[at..at + 16].copy_from_slice(&v.to_le_bytes());
}

/// Writes an integer cell (its count of significant bytes `k`, then those bytes) at `at` with
/// one 16-byte store, and returns its end.
#[inline(always)]
fn put_int(buf: &mut [u8], at: usize, v: u64) -> usize {
    let k = (64 - v.leading_zeros() as usize).div_ceil(8);
    store16(buf, at, (u128::from(v) << 8) | k as u128);
    at + 1 + k
}

#[inline(always)]
fn put_int128(buf: &mut [u8], at: usize, v: u128) -> usize {
    let k = (128 - v.leading_zeros() as usize).div_ceil(8);
    if k < 16 {
        store16(buf, at, (v << 8) | k as u128);
    } else {
        buf[at] = 16;
        buf[at + 1..at + 17].copy_from_slice(&v.to_le_bytes());
    }
    at + 1 + k
}

#[inline(always)]
fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

#[inline(always)]
fn zigzag128(v: i128) -> u128 {
    ((v << 1) ^ (v >> 127)) as u128
}

/// Copies `src` (at least 16 bytes) to `at` in 16-byte pieces, the last one ending at its end.
#[inline(always)]
fn copy_long(buf: &mut [u8], at: usize, src: &[u8]) {
    let len = src.len();
    let mut k = 0;
    while k + 16 < len {
        buf[at + k..at + k + 16].copy_from_slice(&src[k..k + 16]);
        k += 16;
    }
    buf[at + len - 16..at + len].copy_from_slice(&src[len - 16..]);
}

/// Writes `data[start..start + len]`, length first (a LEB128 varint), at `at` and returns its
/// end. Under 16 bytes, the length and the bytes go in one 16-byte store when `data` has 16
/// bytes from `start`; longer text is copied in 16-byte pieces.
#[inline(always)]
fn put_bytes(buf: &mut [u8], at: usize, data: &[u8], start: usize, len: usize) -> usize {
    if len < 16 {
        if let Some(src) = data.get(start..start + 16) {
            let word = u128::from_le_bytes(src.try_into().expect("16 bytes"));
            store16(buf, at, (word << 8) | len as u128);
        } else {
            buf[at] = len as u8;
            buf[at + 1..at + 1 + len].copy_from_slice(&data[start..start + len]);
        }
        return at + 1 + len;
    }
    let at = if len < 128 {
        buf[at] = len as u8;
        at + 1
    } else {
        put_varint(buf, at, len as u64)
    };
    copy_long(buf, at, &data[start..start + len]);
    at + len
}

/// Writes cell `i` of `values` (for each row `i` whose bit is set in `valid`, or every row) at
/// that row's cursor `at[i]` with `put(buf, at[i], i, values[i])`, and moves the cursor past
/// it. One copy of this loop per column type, so that each is small and keeps its state in
/// registers.
#[inline(never)]
fn write_cells<T: Copy>(
    values: &[T],
    valid: Option<&BooleanBuffer>,
    buf: &mut [u8],
    at: &mut [usize],
    put: impl Fn(&mut [u8], usize, usize, T) -> usize,
) {
    match valid {
        None => {
            for (i, (a, v)) in at.iter_mut().zip(values).enumerate() {
                *a = put(buf, *a, i, *v);
            }
        }
        Some(valid) => {
            for i in valid.set_indices() {
                at[i] = put(buf, at[i], i, values[i]);
            }
        }
    }
}

/// Writes the cells of rows `rows` of a Utf8 or Binary column with `O` offsets, straight from
/// its buffers.
fn offset_cells<O: OffsetSizeTrait>(
    offsets: &[O],
    data: &[u8],
    rows: Range<usize>,
    valid: Option<&BooleanBuffer>,
    buf: &mut [u8],
    at: &mut [usize],
) {
    let ends = &offsets[rows.start + 1..=rows.end];
    write_cells(
        &offsets[rows],
        valid,
        buf,
        at,
        #[inline(always)]
        |b, a, i, start| {
            let start = start.as_usize();
            put_bytes(b, a, data, start, ends[i].as_usize() - start)
        },
    )
}

/// One column's cells, typed once and borrowed from its arrays.
#[derive(Debug)]
enum Cells<'a> {
    I8(&'a [i8]),
    I16(&'a [i16]),
    I32(&'a [i32]),
    I64(&'a [i64]),
    U8(&'a [u8]),
    U16(&'a [u16]),
    U32(&'a [u32]),
    U64(&'a [u64]),
    Decimal(&'a [i128]),
    F32(&'a [f32]),
    F64(&'a [f64]),
    Bool(&'a BooleanBuffer),
    Offsets32(&'a [i32], &'a [u8]),
    Offsets64(&'a [i64], &'a [u8]),
    Views(&'a [u128], &'a [Buffer]),
    /// Display text, for types without a binary form in the encoding.
    Text(Vec<String>),
}

#[derive(Debug)]
struct Column<'a> {
    cells: Cells<'a>,
    /// Present only when some cell is null.
    nulls: Option<NullBuffer>,
}

impl<'a> Column<'a> {
    fn new(c: &'a ArrayRef) -> Self {
        let nulls = c.logical_nulls().filter(|n| n.null_count() > 0);
        let cells = match c.data_type() {
            DataType::Int8 => Cells::I8(c.as_primitive::<Int8Type>().values()),
            DataType::Int16 => Cells::I16(c.as_primitive::<Int16Type>().values()),
            DataType::Int32 => Cells::I32(c.as_primitive::<Int32Type>().values()),
            DataType::Int64 => Cells::I64(c.as_primitive::<Int64Type>().values()),
            DataType::Date32 => Cells::I32(c.as_primitive::<Date32Type>().values()),
            DataType::Date64 => Cells::I64(c.as_primitive::<Date64Type>().values()),
            DataType::Timestamp(TimeUnit::Second, _) => {
                Cells::I64(c.as_primitive::<TimestampSecondType>().values())
            }
            DataType::Timestamp(TimeUnit::Millisecond, _) => {
                Cells::I64(c.as_primitive::<TimestampMillisecondType>().values())
            }
            DataType::Timestamp(TimeUnit::Microsecond, _) => {
                Cells::I64(c.as_primitive::<TimestampMicrosecondType>().values())
            }
            DataType::Timestamp(TimeUnit::Nanosecond, _) => {
                Cells::I64(c.as_primitive::<TimestampNanosecondType>().values())
            }
            DataType::UInt8 => Cells::U8(c.as_primitive::<UInt8Type>().values()),
            DataType::UInt16 => Cells::U16(c.as_primitive::<UInt16Type>().values()),
            DataType::UInt32 => Cells::U32(c.as_primitive::<UInt32Type>().values()),
            DataType::UInt64 => Cells::U64(c.as_primitive::<UInt64Type>().values()),
            DataType::Decimal128(_, _) => {
                Cells::Decimal(c.as_primitive::<Decimal128Type>().values())
            }
            DataType::Float32 => Cells::F32(c.as_primitive::<Float32Type>().values()),
            DataType::Float64 => Cells::F64(c.as_primitive::<Float64Type>().values()),
            DataType::Boolean => Cells::Bool(c.as_boolean().values()),
            DataType::Utf8 => {
                let a = c.as_string::<i32>();
                Cells::Offsets32(a.value_offsets(), a.values())
            }
            DataType::LargeUtf8 => {
                let a = c.as_string::<i64>();
                Cells::Offsets64(a.value_offsets(), a.values())
            }
            DataType::Binary => {
                let a = c.as_binary::<i32>();
                Cells::Offsets32(a.value_offsets(), a.values())
            }
            DataType::LargeBinary => {
                let a = c.as_binary::<i64>();
                Cells::Offsets64(a.value_offsets(), a.values())
            }
            DataType::Utf8View => {
                let a = c.as_string_view();
                Cells::Views(a.views(), a.data_buffers())
            }
            DataType::BinaryView => {
                let a = c.as_binary_view();
                Cells::Views(a.views(), a.data_buffers())
            }
            _ => {
                let options = FormatOptions::default();
                let fmt = ArrayFormatter::try_new(c.as_ref(), &options).ok();
                Cells::Text(
                    (0..c.len())
                        .map(|i| fmt.as_ref().map_or_else(String::new, |f| f.value(i).to_string()))
                        .collect(),
                )
            }
        };
        Column { cells, nulls }
    }

    /// The longest cell of rows `rows` (null cells count too, with the length their slot has:
    /// this is a bound, not a measure).
    fn widest(&self, rows: Range<usize>) -> usize {
        fn offsets<O: OffsetSizeTrait>(o: &[O], rows: Range<usize>) -> usize {
            o[rows.start..=rows.end].windows(2).map(|w| (w[1] - w[0]).as_usize()).max().unwrap_or(0)
        }
        let longest = match &self.cells {
            Cells::I8(_) | Cells::I16(_) | Cells::I32(_) | Cells::I64(_) => return 9,
            Cells::U8(_) | Cells::U16(_) | Cells::U32(_) | Cells::U64(_) => return 9,
            Cells::Decimal(_) => return 17,
            Cells::F32(_) | Cells::F64(_) => return 8,
            Cells::Bool(_) => return 1,
            Cells::Offsets32(o, _) => offsets(o, rows),
            Cells::Offsets64(o, _) => offsets(o, rows),
            Cells::Views(v, _) => v[rows].iter().map(|v| *v as u32 as usize).max().unwrap_or(0),
            Cells::Text(t) => t[rows].iter().map(String::len).max().unwrap_or(0),
        };
        varint_len(longest as u64) + longest
    }

    /// Writes the cells of rows `rows` that are not null, each at its row's cursor.
    fn write(&self, rows: Range<usize>, buf: &mut [u8], at: &mut [usize]) {
        let valid = self.nulls.as_ref().map(|n| n.inner().slice(rows.start, rows.len()));
        let valid = valid.as_ref();
        let r = rows.clone();
        macro_rules! ints {
            ($v:expr, $code:expr) => {{
                let code = $code;
                write_cells(
                    &$v[r],
                    valid,
                    buf,
                    at,
                    #[inline(always)]
                    |b, a, _, x| put_int(b, a, code(x)),
                )
            }};
        }
        match &self.cells {
            Cells::I8(v) => ints!(v, |x: i8| zigzag(x.into())),
            Cells::I16(v) => ints!(v, |x: i16| zigzag(x.into())),
            Cells::I32(v) => ints!(v, |x: i32| zigzag(x.into())),
            Cells::I64(v) => ints!(v, zigzag),
            Cells::U8(v) => ints!(v, u64::from),
            Cells::U16(v) => ints!(v, u64::from),
            Cells::U32(v) => ints!(v, u64::from),
            Cells::U64(v) => ints!(v, |x: u64| x),
            // Most decimals fit in 64 bits, and their cells are the same either way.
            Cells::Decimal(v) => write_cells(
                &v[r],
                valid,
                buf,
                at,
                #[inline(always)]
                |b, a, _, x| match i64::try_from(x) {
                    Ok(small) => put_int(b, a, zigzag(small)),
                    Err(_) => put_int128(b, a, zigzag128(x)),
                },
            ),
            Cells::F32(v) => write_cells(
                &v[r],
                valid,
                buf,
                at,
                #[inline(always)]
                |b, a, _, x| {
                    b[a..a + 8].copy_from_slice(&f64::from(x).to_bits().to_le_bytes());
                    a + 8
                },
            ),
            Cells::F64(v) => write_cells(
                &v[r],
                valid,
                buf,
                at,
                #[inline(always)]
                |b, a, _, x| {
                    b[a..a + 8].copy_from_slice(&x.to_bits().to_le_bytes());
                    a + 8
                },
            ),
            // Cells read by index (bits, strings): the values passed are `()`, a vector that
            // allocates nothing.
            Cells::Bool(v) => {
                let v = v.slice(rows.start, rows.len());
                write_cells(
                    &vec![(); rows.len()],
                    valid,
                    buf,
                    at,
                    #[inline(always)]
                    |b, a, i, ()| {
                        b[a] = u8::from(v.value(i));
                        a + 1
                    },
                )
            }
            Cells::Offsets32(o, data) => offset_cells(o, data, rows, valid, buf, at),
            Cells::Offsets64(o, data) => offset_cells(o, data, rows, valid, buf, at),
            Cells::Views(v, buffers) => write_cells(
                &v[r],
                valid,
                buf,
                at,
                #[inline(always)]
                |b, a, _, view| {
                    let len = view as u32 as usize;
                    if len > 12 {
                        let data = &buffers[(view >> 64) as u32 as usize];
                        return put_bytes(b, a, data, (view >> 96) as u32 as usize, len);
                    }
                    // Inline: the bytes are in the view, after the length; the length (one byte)
                    // and the bytes in one store.
                    store16(b, a, ((view >> 32) << 8) | len as u128);
                    a + 1 + len
                },
            ),
            Cells::Text(t) => {
                let t = &t[r];
                write_cells(
                    &vec![(); t.len()],
                    valid,
                    buf,
                    at,
                    #[inline(always)]
                    |b, a, i, ()| put_bytes(b, a, t[i].as_bytes(), 0, t[i].len()),
                )
            }
        }
    }
}

/// Columns of one batch, typed once, whose rows are encoded a range at a time (no slicing).
#[derive(Debug)]
pub struct RowEncoder<'a> {
    columns: Vec<Column<'a>>,
    len: usize,
}

impl<'a> RowEncoder<'a> {
    /// An encoder of rows of `columns` (all of the same length), in that order.
    pub fn new(columns: impl IntoIterator<Item = &'a ArrayRef>) -> Self {
        let mut len = 0;
        let columns = columns
            .into_iter()
            .map(|c| {
                len = c.len();
                Column::new(c)
            })
            .collect();
        RowEncoder { columns, len }
    }

    /// Rows.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Encodes and pads rows `rows` into `out` (row `rows.start` is `out.row(0)`), reusing its
    /// buffers. Works column by column.
    ///
    /// Cells are written with whole 16-byte stores that may run past the cell, into bytes the
    /// next cell or the padding overwrites later. A store starts inside a cell, so it runs at
    /// most 15 bytes past the row's message; the padding writes the 64 bytes after the message
    /// (0x80, then zeros) and the length, and every slot has room for the longest row's
    /// message and 72 bytes more. Only the bitmaps and the padding are zeroed: the buffer is
    /// reused, and nothing else is read.
    pub fn encode(&self, rows: Range<usize>, out: &mut EncodedRows) {
        let n = rows.len();
        let bitmap = self.columns.len().div_ceil(8);
        // 1. Room for the longest row: the widest cell of each column, and the padding.
        let mut room = bitmap + SLACK;
        for c in &self.columns {
            room += c.widest(rows.clone());
        }
        out.slot = room.div_ceil(64);
        let total = n * out.slot;
        if out.blocks.len() < total {
            out.blocks.resize(total, [0u8; 64]);
        }
        let buf = out.blocks.as_flattened_mut();
        let row_bytes = out.slot * 64;
        // 2. Bitmaps.
        for i in 0..n {
            if bitmap <= 16 {
                store16(buf, i * row_bytes, 0);
            } else {
                buf[i * row_bytes..i * row_bytes + bitmap].fill(0);
            }
        }
        for (ci, c) in self.columns.iter().enumerate() {
            if let Some(nb) = &c.nulls {
                for i in 0..n {
                    buf[i * row_bytes + ci / 8] |= u8::from(nb.is_null(rows.start + i)) << (ci % 8);
                }
            }
        }
        // 3. The cells, column by column, each at its row's cursor.
        let at = &mut out.cursor;
        at.clear();
        at.extend((0..n).map(|i| i * row_bytes + bitmap));
        for c in &self.columns {
            c.write(rows.clone(), buf, at);
        }
        // 4. Padding, last: the message, 0x80, zeros, the 64-bit big-endian bit length, all
        // within the 72 bytes after the message (the padding is 9 to 72 bytes). The zeros also
        // clear what the last cell's store ran over.
        out.lens.clear();
        for (i, &end) in at.iter().enumerate() {
            let len = end - i * row_bytes;
            let pad: &mut [u8; 72] =
                (&mut buf[end..end + 72]).try_into().expect("room for the padding");
            pad[..16].copy_from_slice(&0x80u128.to_le_bytes());
            pad[16..64].fill(0);
            let length_at = (len + 9).div_ceil(64) * 64 - len - 8;
            pad[length_at..length_at + 8].copy_from_slice(&((len as u64) * 8).to_be_bytes());
            out.lens.push(len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
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
        // Any range of rows, of arrays that are themselves slices, encodes as the whole does
        // (each range's slots are sized for its own widest cells; bitmaps and padding are
        // written over what the buffer held before).
        let sliced: Vec<ArrayRef> = cols.iter().map(|c| c.slice(7, n - 7)).collect();
        let encoder = RowEncoder::new(&sliced);
        let mut part = EncodedRows::default();
        let mut start = 0;
        for len in [1, 300, 17, 256, 1000, 5].into_iter().cycle() {
            let end = (start + len).min(n - 7);
            encoder.encode(start..end, &mut part);
            assert_eq!(part.len(), end - start);
            part.digest_words(&mut all);
            for i in start..end {
                assert_eq!(part.row(i - start), rows.row(i + 7), "row {}", i + 7);
                assert_eq!(digest_bytes(all[i - start]), rows.digest(i + 7), "row {}", i + 7);
            }
            if end == n - 7 {
                break;
            }
            start = end;
        }
    }
}
