//! Control totals: an accumulator over record batches, and the mergeable result.

use std::collections::BTreeMap;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::buffer::NullBuffer;
use arrow::compute::SortOptions;
use arrow::datatypes::{
    DataType, Date32Type, Date64Type, Decimal128Type, Int16Type, Int32Type, Int64Type, Int8Type,
    TimeUnit, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow::row::{OwnedRow, RowConverter, SortField};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

use crate::encode::{EncodedRows, RowEncoder, ENCODING};
use crate::{Error, Result};

/// What to total: declared per dataset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TotalsSpec {
    /// Key columns: distinct and duplicate counts, and the key hash. Empty: no key.
    pub key: Vec<String>,
    /// Integer or decimal columns to sum exactly.
    pub sums: Vec<String>,
    /// The business-time column (DATE or TIMESTAMP): its min and max.
    pub time: Option<String>,
}

/// Key counts of some rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyCounts {
    pub distinct: u64,
    /// Rows whose key an earlier row already had.
    pub duplicates: u64,
    /// Rows counted in key order ([`KeyOrder`]) whose key was lower than the one before: the
    /// rows were not sorted, so these counts prove nothing about uniqueness.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub out_of_order: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Distinct and repeated keys of rows that arrive sorted by key (ascending, nulls last, as
/// SQL's `ORDER BY` sorts them), in constant memory: only the last key is kept. A key lower than
/// the one before breaks the premise; it is counted as out of order, so that unsorted rows are
/// never taken for unique ones.
///
/// Keys of integers, decimals, dates, timestamps, booleans, text and bytes are compared as they
/// are, column by column; keys of other types through arrow's row format (one comparable byte
/// string a key, several times slower).
#[derive(Debug, Default)]
pub struct KeyOrder {
    /// How keys are compared: set by the first batch.
    how: Option<Compare>,
    counts: KeyCounts,
    /// Row `i`'s key against row `i - 1`'s, in a batch (kept to reuse its buffer).
    ord: Vec<Ordering>,
}

#[derive(Debug)]
enum Compare {
    /// Cells compared as they are; the key columns' types, and the last key seen.
    Native { types: Vec<DataType>, last: Option<Vec<Cell>> },
    /// Arrow's row format.
    Rows { converter: RowConverter, last: Option<OwnedRow> },
}

/// One cell of a key, as [`KeyOrder`] remembers the last key. A column's cells are all `Int` or
/// all `Bytes`, or null; nulls sort last.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Cell {
    Int(i128),
    Bytes(Vec<u8>),
    Null,
}

/// Whether [`KeyOrder`] compares cells of this type as they are.
fn native_key(t: &DataType) -> bool {
    use DataType::*;
    matches!(
        t,
        Int8 | Int16
            | Int32
            | Int64
            | UInt8
            | UInt16
            | UInt32
            | UInt64
            | Decimal128(_, _)
            | Date32
            | Date64
            | Timestamp(_, _)
            | Boolean
            | Utf8
            | LargeUtf8
            | Utf8View
            | Binary
            | LargeBinary
            | BinaryView
    )
}

/// Runs `$body` with `$get`, a function from a row of key column `$c` (of a type that
/// [`native_key`] accepts) to its value: an i128 for numbers, dates and booleans, bytes for text.
macro_rules! with_key_values {
    ($c:expr, |$get:ident| $body:expr) => {{
        let c: &ArrayRef = $c;
        macro_rules! prim {
            ($t:ty) => {{
                let v = c.as_primitive::<$t>().values();
                let $get = |i: usize| i128::from(v[i]);
                $body
            }};
        }
        match c.data_type() {
            DataType::Int8 => prim!(Int8Type),
            DataType::Int16 => prim!(Int16Type),
            DataType::Int32 => prim!(Int32Type),
            DataType::Int64 => prim!(Int64Type),
            DataType::UInt8 => prim!(UInt8Type),
            DataType::UInt16 => prim!(UInt16Type),
            DataType::UInt32 => prim!(UInt32Type),
            DataType::UInt64 => prim!(UInt64Type),
            DataType::Decimal128(_, _) => prim!(Decimal128Type),
            DataType::Date32 => prim!(Date32Type),
            DataType::Date64 => prim!(Date64Type),
            DataType::Timestamp(TimeUnit::Second, _) => prim!(TimestampSecondType),
            DataType::Timestamp(TimeUnit::Millisecond, _) => prim!(TimestampMillisecondType),
            DataType::Timestamp(TimeUnit::Microsecond, _) => prim!(TimestampMicrosecondType),
            DataType::Timestamp(TimeUnit::Nanosecond, _) => prim!(TimestampNanosecondType),
            DataType::Boolean => {
                let a = c.as_boolean();
                let $get = |i: usize| i128::from(a.value(i));
                $body
            }
            DataType::Utf8 => {
                let a = c.as_string::<i32>();
                let $get = |i: usize| a.value(i).as_bytes();
                $body
            }
            DataType::LargeUtf8 => {
                let a = c.as_string::<i64>();
                let $get = |i: usize| a.value(i).as_bytes();
                $body
            }
            DataType::Utf8View => {
                let a = c.as_string_view();
                let $get = |i: usize| a.value(i).as_bytes();
                $body
            }
            DataType::Binary => {
                let a = c.as_binary::<i32>();
                let $get = |i: usize| a.value(i);
                $body
            }
            DataType::LargeBinary => {
                let a = c.as_binary::<i64>();
                let $get = |i: usize| a.value(i);
                $body
            }
            DataType::BinaryView => {
                let a = c.as_binary_view();
                let $get = |i: usize| a.value(i);
                $body
            }
            other => unreachable!("{other} is not compared natively (native_key)"),
        }
    }};
}

impl From<i128> for Cell {
    fn from(v: i128) -> Self {
        Cell::Int(v)
    }
}

impl From<&[u8]> for Cell {
    fn from(v: &[u8]) -> Self {
        Cell::Bytes(v.to_vec())
    }
}

/// Cell `i` of key column `c`.
fn key_cell(c: &ArrayRef, i: usize) -> Cell {
    if c.is_null(i) {
        return Cell::Null;
    }
    with_key_values!(c, |get| Cell::from(get(i)))
}

/// `ord[i] = ord[i].then(row i - 1 against row i)` for one key column, for every row after the
/// first: after all the key's columns, in order, `ord[i]` compares the two rows' keys.
fn refine_order(c: &ArrayRef, ord: &mut [Ordering]) {
    let nulls = c.logical_nulls().filter(|n| n.null_count() > 0);
    with_key_values!(c, |get| refine_by(ord, nulls.as_ref(), get))
}

fn refine_by<T: Ord>(ord: &mut [Ordering], nulls: Option<&NullBuffer>, get: impl Fn(usize) -> T) {
    match nulls {
        None => {
            for (i, o) in ord.iter_mut().enumerate().skip(1) {
                if *o == Ordering::Equal {
                    *o = get(i - 1).cmp(&get(i));
                }
            }
        }
        Some(n) => {
            // Nulls last, and equal to each other.
            let key = |i: usize| if n.is_null(i) { (true, None) } else { (false, Some(get(i))) };
            for (i, o) in ord.iter_mut().enumerate().skip(1) {
                if *o == Ordering::Equal {
                    *o = key(i - 1).cmp(&key(i));
                }
            }
        }
    }
}

impl KeyOrder {
    /// Counts the keys of some rows (the key columns, in order), after those already seen.
    pub fn update(&mut self, keys: &[ArrayRef]) -> Result<()> {
        self.update_with(keys, true)
    }

    /// [`Self::update`], with `native` false to use arrow's row format for every type.
    fn update_with(&mut self, keys: &[ArrayRef], native: bool) -> Result<()> {
        let n = keys.first().map_or(0, |k| k.len());
        if n == 0 {
            return Ok(());
        }
        let how = match &mut self.how {
            Some(how) => how,
            None => self.how.insert(if native && keys.iter().all(|k| native_key(k.data_type())) {
                Compare::Native {
                    types: keys.iter().map(|k| k.data_type().clone()).collect(),
                    last: None,
                }
            } else {
                let order = SortOptions { descending: false, nulls_first: false };
                let fields = keys
                    .iter()
                    .map(|k| SortField::new_with_options(k.data_type().clone(), order))
                    .collect();
                Compare::Rows {
                    converter: RowConverter::new(fields).map_err(Error::KeyOrder)?,
                    last: None,
                }
            }),
        };
        let counts = &mut self.counts;
        let mut count = |o: Option<Ordering>| match o {
            None | Some(Ordering::Less) => counts.distinct += 1,
            Some(Ordering::Equal) => counts.duplicates += 1,
            Some(Ordering::Greater) => {
                counts.distinct += 1;
                counts.out_of_order += 1;
            }
        };
        match how {
            Compare::Native { types, last } => {
                if !keys.iter().map(|k| k.data_type()).eq(types.iter()) {
                    return Err(Error::KeyOrder(arrow::error::ArrowError::SchemaError(format!(
                        "the key columns were {types:?} and are now {:?}",
                        keys.iter().map(|k| k.data_type()).collect::<Vec<_>>()
                    ))));
                }
                let first: Vec<Cell> = keys.iter().map(|k| key_cell(k, 0)).collect();
                count(last.as_ref().map(|l| l.cmp(&first)));
                let ord = &mut self.ord;
                ord.clear();
                ord.resize(n, Ordering::Equal);
                for k in keys {
                    refine_order(k, ord);
                }
                for o in &ord[1..] {
                    count(Some(*o));
                }
                *last = Some(keys.iter().map(|k| key_cell(k, n - 1)).collect());
            }
            Compare::Rows { converter, last } => {
                let rows = converter.convert_columns(keys).map_err(Error::KeyOrder)?;
                let mut prev = last.as_ref().map(|r| r.row());
                for row in rows.iter() {
                    count(prev.map(|p| p.cmp(&row)));
                    prev = Some(row);
                }
                *last = prev.map(|r| r.owned());
            }
        }
        Ok(())
    }

    pub fn counts(&self) -> KeyCounts {
        self.counts
    }
}

/// How a [`Totals`] counts keys.
#[derive(Debug)]
enum KeyCounter {
    /// Every key's digest: any order.
    Set(KeySet),
    /// The last key: rows sorted by key.
    Order(KeyOrder),
}

/// Control totals of some rows (a partition, a version, a stage's input).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlTotals {
    pub rows: u64,
    /// The key columns, when totals were computed with a key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key: Vec<String>,
    /// Column → exact sum, as decimal text (`"1234.50"`; integers have no point).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sums: BTreeMap<String, String>,
    /// The business-time column and its bounds, as ISO text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<TimeBounds>,
    /// Column → nulls.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nulls: BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<KeyCounts>,
    /// Order-independent hash of the key columns of every row (hex, 256 bits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_hash: Option<String>,
    /// Order-independent hash of every whole row (hex, 256 bits).
    pub row_hash: String,
    /// The row encoding the hashes were computed over ([`crate::ENCODING`]): hashes over
    /// different encodings are never compared.
    pub encoding: String,
}

/// Min and max of a business-time column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeBounds {
    pub column: String,
    pub min: Option<String>,
    pub max: Option<String>,
}

/// Rows encoded and hashed at a time: 128 lineitem rows (slots of up to four blocks) are 32 KiB,
/// which stay in a 48 KiB L1 cache while every column is written into them.
const CHUNK: usize = 128;

/// The key digests seen (first 128 bits of each key's SHA-256), in 256 buckets by their top
/// byte. A bucket is a list of pages (4 digests, then twice as many each time up to 1,024), so
/// that it grows without copying and with little slack: the set is 16 bytes a key and lives
/// until the stage ends.
#[derive(Debug, Clone)]
pub struct KeySet {
    /// The page each bucket is filling.
    tails: Vec<Vec<u128>>,
    /// Each bucket's full pages.
    full: Vec<Vec<Vec<u128>>>,
    /// `(distinct, repeated)`, once counted and until a key is added.
    counted: Option<(u64, u64)>,
}

impl Default for KeySet {
    fn default() -> Self {
        KeySet { tails: vec![Vec::new(); 256], full: vec![Vec::new(); 256], counted: Some((0, 0)) }
    }
}

/// The largest page of a [`KeySet`] bucket, in digests.
const PAGE: usize = 1024;

impl KeySet {
    #[inline]
    fn push(&mut self, digest: u128) {
        let b = (digest >> 120) as usize;
        let tail = &mut self.tails[b];
        if tail.len() == tail.capacity() {
            let next = Vec::with_capacity((tail.capacity() * 2).clamp(4, PAGE));
            let page = std::mem::replace(tail, next);
            if !page.is_empty() {
                self.full[b].push(page);
            }
        }
        self.tails[b].push(digest);
        self.counted = None;
    }

    /// The pages of bucket `b`.
    fn pages(&self, b: usize) -> impl Iterator<Item = &[u128]> {
        self.full[b].iter().map(Vec::as_slice).chain(std::iter::once(self.tails[b].as_slice()))
    }

    /// `(distinct keys, repeated keys)`.
    pub fn counts(&mut self) -> (u64, u64) {
        if let Some(c) = self.counted {
            return c;
        }
        let mut counter = DigestCounter::default();
        let (mut distinct, mut total) = (0u64, 0u64);
        for b in 0..256 {
            let pages: Vec<&[u128]> = self.pages(b).collect();
            let (d, t) = counter.count(&pages);
            distinct += d;
            total += t;
        }
        let c = (distinct, total - distinct);
        self.counted = Some(c);
        c
    }
}

/// Counts the distinct digests of one bucket (digests with the same top byte), reusing its
/// buffers from bucket to bucket.
#[derive(Default)]
struct DigestCounter {
    /// An open-addressing table of at least twice as many slots as digests; 0 is empty.
    table: Vec<u128>,
}

/// The most slots of a [`DigestCounter`] table (16 MiB); a bucket of more than half as many
/// digests (a quarter of a billion keys, or very many repeats) is counted by sorting.
const TABLE: usize = 1 << 20;

impl DigestCounter {
    /// `(distinct, total)` of the digests in `pages`. The digests are uniform, so the bits
    /// after the top byte place each in a table at most half full, where a repeat meets its
    /// first copy within a probe or two.
    fn count(&mut self, pages: &[&[u128]]) -> (u64, u64) {
        let n: usize = pages.iter().map(|p| p.len()).sum();
        if n == 0 {
            return (0, 0);
        }
        if 2 * n > TABLE {
            let mut all = pages.concat();
            all.sort_unstable();
            let repeats = all.windows(2).filter(|w| w[0] == w[1]).count();
            return ((n - repeats) as u64, n as u64);
        }
        let bits = (2 * n).next_power_of_two().trailing_zeros();
        let mask = (1usize << bits) - 1;
        self.table.clear();
        self.table.resize(1 << bits, 0);
        let (mut distinct, mut zero) = (0u64, false);
        for page in pages {
            for &d in *page {
                if d == 0 {
                    zero = true;
                    continue;
                }
                let mut slot = ((d >> (120 - bits)) as usize) & mask;
                loop {
                    let there = self.table[slot];
                    if there == d {
                        break;
                    }
                    if there == 0 {
                        self.table[slot] = d;
                        distinct += 1;
                        break;
                    }
                    slot = (slot + 1) & mask;
                }
            }
        }
        (distinct + u64::from(zero), n as u64)
    }
}

/// Merges the key sets of parts (partitions): `(distinct keys over all, keys found in more than
/// one part or more than once)`.
pub fn merge_key_sets(sets: impl IntoIterator<Item = KeySet>) -> (u64, u64) {
    let mut sets: Vec<KeySet> = sets.into_iter().collect();
    if sets.len() == 1 {
        return sets[0].counts();
    }
    // Bucket by bucket, each part's pages as they are (no copy), and each bucket freed once
    // counted.
    let mut counter = DigestCounter::default();
    let (mut distinct, mut total) = (0u64, 0u64);
    for b in 0..256 {
        let pages: Vec<&[u128]> = sets.iter().flat_map(|s| s.pages(b)).collect();
        let (d, t) = counter.count(&pages);
        distinct += d;
        total += t;
        for s in &mut sets {
            s.full[b] = Vec::new();
            s.tails[b] = Vec::new();
        }
    }
    (distinct, total - distinct)
}

/// Accumulates control totals over batches (any order, any split).
#[derive(Debug)]
pub struct Totals {
    spec: TotalsSpec,
    rows: u64,
    sums: BTreeMap<String, (i128, i8)>,
    time: Option<(DataType, Option<i64>, Option<i64>)>,
    nulls: BTreeMap<String, u64>,
    keys: Option<KeyCounter>,
    key_hash: [u64; 4],
    row_hash: [u64; 4],
    rows_buf: EncodedRows,
    keys_buf: EncodedRows,
    /// The digests (as SHA-256 state words) of a chunk's rows or keys.
    digests: Vec<[u32; 8]>,
}

/// A digest (given as SHA-256's state words) as four little-endian 64-bit numbers: bytes
/// `8i..8i + 8` of the digest are lane `i`.
fn digest_lanes(words: &[u32; 8]) -> [u64; 4] {
    // The digest is the words big-endian; read little-endian, a word's bytes are swapped.
    std::array::from_fn(|i| {
        u64::from(words[2 * i].swap_bytes()) | (u64::from(words[2 * i + 1].swap_bytes()) << 32)
    })
}

fn add_digest(lanes: &mut [u64; 4], digest: &[u64; 4]) {
    for (lane, d) in lanes.iter_mut().zip(digest) {
        *lane = lane.wrapping_add(*d);
    }
}

fn lanes_hex(lanes: &[u64; 4]) -> String {
    let mut bytes = Vec::with_capacity(32);
    for l in lanes {
        bytes.extend_from_slice(&l.to_le_bytes());
    }
    hex::encode(bytes)
}

fn parse_lanes(hex_text: &str) -> Result<[u64; 4]> {
    let bytes = hex::decode(hex_text)
        .ok()
        .filter(|b| b.len() == 32)
        .ok_or_else(|| Error::Incompatible(format!("{hex_text:?} is not a 256-bit hash")))?;
    let mut lanes = [0u64; 4];
    for (i, lane) in lanes.iter_mut().enumerate() {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
        *lane = u64::from_le_bytes(b);
    }
    Ok(lanes)
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    batch.column_by_name(name).ok_or_else(|| Error::MissingColumn {
        column: name.to_string(),
        available: batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// The exact sum of `values`, or `None` when it is outside the range of an i128 (whatever the
/// order of the values: a sum that fits is never refused for an intermediate overflow).
///
/// Each value is four 32-bit limbs, summed apart in 64-bit lanes (three unsigned, the top one
/// signed), which cannot overflow below 2^31 values and which the compiler vectorizes; the limb
/// sums are then carried into one number. An i128 add with an overflow check per value was a
/// chain of dependent instructions, several cycles a value.
pub(crate) fn exact_sum(values: &[i128]) -> Option<i128> {
    // The sum so far is `high * 2^96 + low`, with `low` under 2^96.
    let (mut high, mut low): (i128, u128) = (0, 0);
    for chunk in values.chunks(1 << 30) {
        let (mut l0, mut l1, mut l2, mut l3) = (0u64, 0u64, 0u64, 0i64);
        for &v in chunk {
            l0 += u64::from(v as u32);
            l1 += u64::from((v >> 32) as u32);
            l2 += u64::from((v >> 64) as u32);
            l3 += i64::from((v >> 96) as i32);
        }
        // Each limb sum is under 2^62 in magnitude, so `low` stays under 2^127 here.
        low += u128::from(l0) + (u128::from(l1) << 32) + (u128::from(l2) << 64);
        high += i128::from(l3) + (low >> 96) as i128;
        low &= (1 << 96) - 1;
    }
    let high = i32::try_from(high).ok()?;
    Some((i128::from(high) << 96) | low as i128)
}

/// The exact sum of an integer or decimal column (nulls skipped): units and scale. The one
/// exact sum of strata: the writer's control totals and the stages' SQL-side counts both use it,
/// so they overflow (and agree) alike.
pub fn sum_column(c: &ArrayRef, name: &str) -> Result<(i128, i8)> {
    let overflow = || Error::Overflow { column: name.to_string() };
    macro_rules! ints {
        ($t:ty) => {{
            let a = c.as_primitive::<$t>();
            // Narrower than 128 bits: a batch's sum cannot overflow an i128.
            let s: i128 = match a.nulls().filter(|n| n.null_count() > 0) {
                None => a.values().iter().map(|v| i128::from(*v)).sum(),
                Some(_) => a.iter().flatten().map(i128::from).sum(),
            };
            (s, 0)
        }};
    }
    Ok(match c.data_type() {
        DataType::Int8 => ints!(Int8Type),
        DataType::Int16 => ints!(Int16Type),
        DataType::Int32 => ints!(Int32Type),
        DataType::Int64 => ints!(Int64Type),
        DataType::UInt8 => ints!(UInt8Type),
        DataType::UInt16 => ints!(UInt16Type),
        DataType::UInt32 => ints!(UInt32Type),
        DataType::UInt64 => ints!(UInt64Type),
        DataType::Decimal128(_, scale) => {
            let a = c.as_primitive::<Decimal128Type>();
            let s = match a.nulls().filter(|n| n.null_count() > 0) {
                None => exact_sum(a.values()),
                Some(_) => exact_sum(&a.iter().flatten().collect::<Vec<_>>()),
            };
            (s.ok_or_else(overflow)?, *scale)
        }
        other => {
            return Err(Error::NotSummable {
                column: name.to_string(),
                data_type: other.to_string(),
            })
        }
    })
}

/// Min and max of a time column, as i64 in its own unit.
fn time_bounds(c: &ArrayRef, name: &str) -> Result<(Option<i64>, Option<i64>)> {
    macro_rules! mm {
        ($t:ty) => {{
            let a = c.as_primitive::<$t>();
            let (lo, hi) = match a.nulls().filter(|n| n.null_count() > 0) {
                None => (a.values().iter().copied().min(), a.values().iter().copied().max()),
                Some(_) => (a.iter().flatten().min(), a.iter().flatten().max()),
            };
            (lo.map(i64::from), hi.map(i64::from))
        }};
    }
    Ok(match c.data_type() {
        DataType::Date32 => mm!(Date32Type),
        DataType::Date64 => mm!(Date64Type),
        DataType::Timestamp(TimeUnit::Second, _) => mm!(TimestampSecondType),
        DataType::Timestamp(TimeUnit::Millisecond, _) => mm!(TimestampMillisecondType),
        DataType::Timestamp(TimeUnit::Microsecond, _) => mm!(TimestampMicrosecondType),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => mm!(TimestampNanosecondType),
        other => {
            return Err(Error::NotATime { column: name.to_string(), data_type: other.to_string() })
        }
    })
}

fn time_text(t: &DataType, v: i64) -> String {
    use chrono::{DateTime, NaiveDate};
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch");
    match t {
        DataType::Date32 => (epoch + chrono::Duration::days(v)).to_string(),
        DataType::Date64 => {
            DateTime::from_timestamp_millis(v).map_or(v.to_string(), |d| d.date_naive().to_string())
        }
        DataType::Timestamp(unit, _) => {
            let nanos = match unit {
                TimeUnit::Second => v.checked_mul(1_000_000_000),
                TimeUnit::Millisecond => v.checked_mul(1_000_000),
                TimeUnit::Microsecond => v.checked_mul(1_000),
                TimeUnit::Nanosecond => Some(v),
            };
            nanos
                .map(DateTime::from_timestamp_nanos)
                .map_or(v.to_string(), |d| d.naive_utc().format("%Y-%m-%dT%H:%M:%S%.f").to_string())
        }
        _ => v.to_string(),
    }
}

/// `units` scaled by `scale` as decimal text.
pub fn decimal_text(units: i128, scale: i8) -> String {
    if scale <= 0 {
        return (units * 10i128.pow(u32::from(scale.unsigned_abs()))).to_string();
    }
    let s = scale as usize;
    let digits = units.unsigned_abs().to_string();
    let padded = format!("{digits:0>width$}", width = s + 1);
    let (int, frac) = padded.split_at(padded.len() - s);
    format!("{}{int}.{frac}", if units < 0 { "-" } else { "" })
}

/// Decimal text back to `(units, scale)`.
pub(crate) fn parse_decimal(text: &str) -> Result<(i128, i8)> {
    let bad = || Error::Incompatible(format!("{text:?} is not a decimal"));
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    let units: i128 = format!("{int}{frac}").parse().map_err(|_| bad())?;
    Ok((units, i8::try_from(frac.len()).map_err(|_| bad())?))
}

/// `a + b` for decimals of possibly different scales.
fn add_decimal(a: (i128, i8), b: (i128, i8), column: &str) -> Result<(i128, i8)> {
    let scale = a.1.max(b.1);
    let up = |(v, s): (i128, i8)| -> Result<i128> {
        v.checked_mul(10i128.pow(u32::from((scale - s).unsigned_abs())))
            .ok_or_else(|| Error::Overflow { column: column.to_string() })
    };
    let sum =
        up(a)?.checked_add(up(b)?).ok_or_else(|| Error::Overflow { column: column.to_string() })?;
    Ok((sum, scale))
}

impl Totals {
    /// Totals of rows in any order. Keys are counted by remembering a 16-byte digest of each.
    pub fn new(spec: &TotalsSpec) -> Self {
        Self::with_keys(spec, KeyCounter::Set(KeySet::default()))
    }

    /// Totals of rows that arrive sorted by key ([`KeyOrder`]): keys are counted in constant
    /// memory, and rows out of key order are counted as such.
    pub fn new_in_key_order(spec: &TotalsSpec) -> Self {
        Self::with_keys(spec, KeyCounter::Order(KeyOrder::default()))
    }

    fn with_keys(spec: &TotalsSpec, keys: KeyCounter) -> Self {
        Totals {
            spec: spec.clone(),
            rows: 0,
            sums: BTreeMap::new(),
            time: None,
            nulls: BTreeMap::new(),
            keys: (!spec.key.is_empty()).then_some(keys),
            key_hash: [0; 4],
            row_hash: [0; 4],
            rows_buf: EncodedRows::default(),
            keys_buf: EncodedRows::default(),
            digests: Vec::new(),
        }
    }

    /// Adds a batch. Columns are hashed in name order, so column order does not matter.
    pub fn update(&mut self, batch: &RecordBatch) -> Result<()> {
        let n = batch.num_rows();
        self.rows += n as u64;
        for col in &self.spec.sums.clone() {
            let c = column(batch, col)?;
            let part = sum_column(c, col)?;
            let acc = self.sums.get(col).copied().unwrap_or((0, part.1));
            self.sums.insert(col.clone(), add_decimal(acc, part, col)?);
        }
        if let Some(t) = &self.spec.time {
            let c = column(batch, t)?;
            let (lo, hi) = time_bounds(c, t)?;
            let entry = self.time.get_or_insert((c.data_type().clone(), None, None));
            entry.1 = match (entry.1, lo) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            entry.2 = match (entry.2, hi) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
        let schema = batch.schema();
        let mut order: Vec<usize> = (0..batch.num_columns()).collect();
        order.sort_by(|a, b| schema.field(*a).name().cmp(schema.field(*b).name()));
        for &i in &order {
            *self.nulls.entry(schema.field(i).name().clone()).or_default() +=
                batch.column(i).logical_null_count() as u64;
        }
        let rows = RowEncoder::new(order.iter().map(|&i| batch.column(i)));
        let keys: Vec<ArrayRef> = match &self.keys {
            Some(_) => {
                self.spec.key.iter().map(|k| column(batch, k).cloned()).collect::<Result<_>>()?
            }
            None => Vec::new(),
        };
        let key_rows = RowEncoder::new(&keys);
        // Chunks small enough that a chunk's encoded rows stay in the CPU cache while each
        // column is written into them.
        let mut start = 0;
        while start < n {
            let chunk = start..(start + CHUNK).min(n);
            rows.encode(chunk.clone(), &mut self.rows_buf);
            self.rows_buf.digest_words(&mut self.digests);
            for d in &self.digests {
                add_digest(&mut self.row_hash, &digest_lanes(d));
            }
            if let Some(counter) = &mut self.keys {
                key_rows.encode(chunk.clone(), &mut self.keys_buf);
                self.keys_buf.digest_words(&mut self.digests);
                for d in &self.digests {
                    let lanes = digest_lanes(d);
                    add_digest(&mut self.key_hash, &lanes);
                    if let KeyCounter::Set(set) = counter {
                        // The digest's first 16 bytes, little-endian.
                        set.push(u128::from(lanes[0]) | (u128::from(lanes[1]) << 64));
                    }
                }
            }
            start = chunk.end;
        }
        if let Some(KeyCounter::Order(order)) = &mut self.keys {
            order.update(&keys)?;
        }
        Ok(())
    }

    /// Rows so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The totals, and the digests of the keys seen (to find keys repeated across parts), when
    /// keys were counted by digest.
    pub fn finish_with_keys(mut self) -> (ControlTotals, Option<KeySet>) {
        let totals = self.build();
        match self.keys.take() {
            Some(KeyCounter::Set(set)) => (totals, Some(set)),
            _ => (totals, None),
        }
    }

    pub fn finish(mut self) -> ControlTotals {
        self.build()
    }

    fn build(&mut self) -> ControlTotals {
        ControlTotals {
            rows: self.rows,
            key: self.spec.key.clone(),
            sums: self.sums.iter().map(|(k, (v, s))| (k.clone(), decimal_text(*v, *s))).collect(),
            time: self.spec.time.as_ref().map(|col| {
                let (t, lo, hi) = self.time.clone().unwrap_or((DataType::Date32, None, None));
                TimeBounds {
                    column: col.clone(),
                    min: lo.map(|v| time_text(&t, v)),
                    max: hi.map(|v| time_text(&t, v)),
                }
            }),
            nulls: self.nulls.clone(),
            keys: self.keys.as_mut().map(|k| match k {
                KeyCounter::Set(s) => {
                    let (distinct, duplicates) = s.counts();
                    KeyCounts { distinct, duplicates, out_of_order: 0 }
                }
                KeyCounter::Order(o) => o.counts(),
            }),
            key_hash: self.keys.as_ref().map(|_| lanes_hex(&self.key_hash)),
            row_hash: lanes_hex(&self.row_hash),
            encoding: ENCODING.to_string(),
        }
    }
}

impl ControlTotals {
    /// The spec that computes totals like these (to recompute them from data).
    pub fn spec(&self) -> TotalsSpec {
        TotalsSpec {
            key: self.key.clone(),
            sums: self.sums.keys().cloned().collect(),
            time: self.time.as_ref().map(|t| t.column.clone()),
        }
    }

    /// The totals of the union of disjoint sets of rows (the partitions of a version). Key counts
    /// add up: keys are assumed not to repeat across the parts (a key lives in one partition).
    pub fn combine<'a>(
        parts: impl IntoIterator<Item = &'a ControlTotals>,
    ) -> Result<ControlTotals> {
        let mut out = ControlTotals {
            row_hash: lanes_hex(&[0; 4]),
            encoding: ENCODING.to_string(),
            ..Default::default()
        };
        let mut row_lanes = [0u64; 4];
        let mut key_lanes: Option<[u64; 4]> = None;
        let mut sums: BTreeMap<String, (i128, i8)> = BTreeMap::new();
        let mut first = true;
        for p in parts {
            out.rows += p.rows;
            if out.key.is_empty() {
                out.key = p.key.clone();
            }
            for (k, v) in &p.sums {
                let v = parse_decimal(v)?;
                let acc = sums.get(k).copied().unwrap_or((0, v.1));
                sums.insert(k.clone(), add_decimal(acc, v, k)?);
            }
            for (k, v) in &p.nulls {
                *out.nulls.entry(k.clone()).or_default() += v;
            }
            out.time = match (out.time.take(), &p.time) {
                (None, t) => t.clone(),
                (Some(a), None) => Some(a),
                (Some(a), Some(b)) => Some(TimeBounds {
                    column: a.column.clone(),
                    min: [a.min.clone(), b.min.clone()].into_iter().flatten().min(),
                    max: [a.max.clone(), b.max.clone()].into_iter().flatten().max(),
                }),
            };
            match (&p.keys, &p.key_hash) {
                (Some(k), Some(h)) => {
                    let kc = out.keys.get_or_insert(KeyCounts::default());
                    kc.distinct += k.distinct;
                    kc.duplicates += k.duplicates;
                    kc.out_of_order += k.out_of_order;
                    let lanes = key_lanes.get_or_insert([0; 4]);
                    let add = parse_lanes(h)?;
                    for i in 0..4 {
                        lanes[i] = lanes[i].wrapping_add(add[i]);
                    }
                }
                _ if !first && out.keys.is_some() => {
                    return Err(Error::Incompatible("some parts have key totals, some not".into()))
                }
                _ => {}
            }
            if first {
                out.encoding = p.encoding.clone();
            } else if p.encoding != out.encoding {
                return Err(Error::Incompatible(format!(
                    "some parts were hashed with row encoding {} and some with {}; recompute the \
                     older totals (`strata reconcile <dataset> --input`)",
                    out.encoding, p.encoding
                )));
            }
            let add = parse_lanes(&p.row_hash)?;
            for i in 0..4 {
                row_lanes[i] = row_lanes[i].wrapping_add(add[i]);
            }
            first = false;
        }
        out.sums = sums.iter().map(|(k, (v, s))| (k.clone(), decimal_text(*v, *s))).collect();
        out.key_hash = key_lanes.map(|l| lanes_hex(&l));
        out.row_hash = lanes_hex(&row_lanes);
        Ok(out)
    }
}

/// One way two sets of totals differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub what: String,
    pub left: String,
    pub right: String,
}

/// How `left` and `right` differ (empty when they agree): rows, sums, time bounds, nulls, keys
/// and both hashes. Sums compare as numbers (`"1.50"` equals `"1.5"`). Totals hashed over
/// different row encodings report that instead of their hashes.
pub fn compare(left: &ControlTotals, right: &ControlTotals) -> Vec<Difference> {
    let mut out = Vec::new();
    let mut diff = |what: &str, l: String, r: String| {
        if l != r {
            out.push(Difference { what: what.to_string(), left: l, right: r });
        }
    };
    diff("rows", left.rows.to_string(), right.rows.to_string());
    let cols: std::collections::BTreeSet<&String> =
        left.sums.keys().chain(right.sums.keys()).collect();
    for c in cols {
        let norm = |m: &BTreeMap<String, String>| {
            m.get(c).map_or("-".to_string(), |v| match parse_decimal(v) {
                Ok((u, s)) => normalize(u, s),
                Err(_) => v.clone(),
            })
        };
        diff(&format!("sum({c})"), norm(&left.sums), norm(&right.sums));
    }
    let t = |x: &ControlTotals| x.time.as_ref().map(|t| (t.min.clone(), t.max.clone()));
    if let (Some(l), Some(r)) = (t(left), t(right)) {
        diff("time min", l.0.unwrap_or_default(), r.0.unwrap_or_default());
        diff("time max", l.1.unwrap_or_default(), r.1.unwrap_or_default());
    }
    if let (Some(l), Some(r)) = (&left.keys, &right.keys) {
        diff("distinct keys", l.distinct.to_string(), r.distinct.to_string());
        diff("duplicate keys", l.duplicates.to_string(), r.duplicates.to_string());
    }
    if left.encoding != right.encoding {
        // Hashes over different encodings never match, whatever the data: say why instead.
        diff("hash encoding", left.encoding.clone(), right.encoding.clone());
        return out;
    }
    if let (Some(l), Some(r)) = (&left.key_hash, &right.key_hash) {
        diff("key hash", l.clone(), r.clone());
    }
    diff("row hash", left.row_hash.clone(), right.row_hash.clone());
    out
}

/// The exact sum of decimal texts (`"1.50"`, `"-2"`), as decimal text.
pub fn decimal_sum(parts: &[&str]) -> Result<String> {
    let mut acc = (0i128, 0i8);
    for p in parts {
        acc = add_decimal(acc, parse_decimal(p.trim())?, "sum")?;
    }
    Ok(normalize(acc.0, acc.1))
}

/// Whether two decimal texts are the same number (`"1.50"` equals `"1.5"`).
pub fn same_decimal(a: &str, b: &str) -> bool {
    match (parse_decimal(a.trim()), parse_decimal(b.trim())) {
        (Ok(x), Ok(y)) => normalize(x.0, x.1) == normalize(y.0, y.1),
        _ => a == b,
    }
}

/// A decimal without trailing fractional zeros, for comparing values of different scales.
fn normalize(mut units: i128, mut scale: i8) -> String {
    while scale > 0 && units % 10 == 0 {
        units /= 10;
        scale -= 1;
    }
    decimal_text(units, scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_int64_sum_past_i64_is_exact_not_an_overflow() {
        let big: ArrayRef = std::sync::Arc::new(arrow::array::Int64Array::from(vec![
            Some(i64::MAX),
            None,
            Some(i64::MAX),
        ]));
        assert_eq!(sum_column(&big, "n").ok(), Some((2 * i128::from(i64::MAX), 0)));
        let text: ArrayRef = std::sync::Arc::new(arrow::array::StringArray::from(vec!["1"]));
        assert!(matches!(sum_column(&text, "s"), Err(Error::NotSummable { .. })));
    }

    #[test]
    fn decimal_text_round_trips() {
        for (u, s, t) in [(12345, 2, "123.45"), (-5, 2, "-0.05"), (7, 0, "7"), (0, 3, "0.000")] {
            assert_eq!(decimal_text(u, s), t);
            assert_eq!(parse_decimal(t).unwrap(), (u, s));
        }
        assert_eq!(add_decimal((150, 2), (5, 1), "x").unwrap(), (200, 2));
        assert_eq!(normalize(1500, 3), "1.5");
    }

    /// Keys compared as they are count like keys in arrow's row format: sorted and shuffled rows,
    /// nulls, repeats within and across batches, several types.
    #[test]
    fn native_key_order_counts_like_the_row_format() {
        use arrow::array::{
            BinaryArray, BooleanArray, Date32Array, Decimal128Array, Int64Array, LargeStringArray,
            StringArray, StringViewArray, UInt64Array,
        };
        use std::sync::Arc;
        let mut next = crate::xorshift(0x0dde_a5ed);
        for round in 0..120 {
            let n = 1 + (next() % 200) as usize;
            let small = 1 + next() % 6;
            let mut rows: Vec<(Option<i64>, Option<String>, Option<bool>)> = (0..n)
                .map(|_| {
                    let a = (!next().is_multiple_of(9)).then(|| (next() % small) as i64 - 2);
                    let b = (!next().is_multiple_of(7))
                        .then(|| ["", "a", "ab", "b", "\u{e9}"][(next() % 5) as usize].to_string());
                    let c = (!next().is_multiple_of(5)).then(|| next().is_multiple_of(2));
                    (a, b, c)
                })
                .collect();
            if round % 3 != 0 {
                // ORDER BY a, b, c (nulls last).
                rows.sort_by(|x, y| {
                    let k = |r: &(Option<i64>, Option<String>, Option<bool>)| {
                        (r.0.is_none(), r.0, r.1.is_none(), r.1.clone(), r.2.is_none(), r.2)
                    };
                    k(x).cmp(&k(y))
                });
            }
            let a: Vec<Option<i64>> = rows.iter().map(|r| r.0).collect();
            let b: Vec<Option<&str>> = rows.iter().map(|r| r.1.as_deref()).collect();
            let c: Vec<Option<bool>> = rows.iter().map(|r| r.2).collect();
            let first: ArrayRef = match round % 4 {
                0 => Arc::new(Int64Array::from(a.clone())),
                1 => Arc::new(
                    Decimal128Array::from(a.iter().map(|v| v.map(i128::from)).collect::<Vec<_>>())
                        .with_precision_and_scale(20, 2)
                        .unwrap(),
                ),
                2 => Arc::new(Date32Array::from(
                    a.iter().map(|v| v.map(|x| x as i32)).collect::<Vec<_>>(),
                )),
                // Unsigned: shifted to stay in order.
                _ => Arc::new(UInt64Array::from(
                    a.iter().map(|v| v.map(|x| (x + 2) as u64)).collect::<Vec<_>>(),
                )),
            };
            let second: ArrayRef = match round % 5 {
                0 => Arc::new(StringArray::from(b.clone())),
                1 => Arc::new(StringViewArray::from(b.clone())),
                2 => Arc::new(LargeStringArray::from(b.clone())),
                3 => Arc::new(BinaryArray::from(
                    b.iter().map(|v| v.map(str::as_bytes)).collect::<Vec<_>>(),
                )),
                _ => Arc::new(StringViewArray::from(b.clone())),
            };
            let keys = [first, second, Arc::new(BooleanArray::from(c)) as ArrayRef];
            let (mut native, mut rows_format) = (KeyOrder::default(), KeyOrder::default());
            let mut at = 0;
            while at < n {
                let len = (1 + next() % 40) as usize;
                let len = len.min(n - at);
                let part: Vec<ArrayRef> = keys.iter().map(|k| k.slice(at, len)).collect();
                native.update_with(&part, true).unwrap();
                rows_format.update_with(&part, false).unwrap();
                at += len;
            }
            assert!(matches!(native.how, Some(Compare::Native { .. })), "round {round}");
            assert!(matches!(rows_format.how, Some(Compare::Rows { .. })), "round {round}");
            let got = native.counts();
            assert_eq!(got, rows_format.counts(), "round {round}");
            assert_eq!(got.distinct + got.duplicates, n as u64, "round {round}");
            if round % 3 != 0 {
                assert_eq!(got.out_of_order, 0, "round {round}");
                let distinct: std::collections::BTreeSet<_> = rows.iter().collect();
                assert_eq!(got.distinct, distinct.len() as u64, "round {round}");
            }
        }
        // A key whose types change between batches is refused, with what changed.
        let mut order = KeyOrder::default();
        order.update(&[Arc::new(Int64Array::from(vec![1])) as ArrayRef]).unwrap();
        let err = order.update(&[Arc::new(StringArray::from(vec!["1"])) as ArrayRef]).unwrap_err();
        assert!(err.to_string().contains("Int64"), "{err}");
    }

    /// The sum of `values` in 256 bits (a sign-extended carry word and the low 128 bits), then
    /// back to an i128 if it fits.
    fn wide_sum(values: &[i128]) -> Option<i128> {
        let (mut high, mut low) = (0i128, 0u128);
        for &v in values {
            let (sum, carry) = low.overflowing_add(v as u128);
            low = sum;
            high += i128::from(carry) + if v < 0 { -1 } else { 0 };
        }
        match high {
            0 if low <= i128::MAX as u128 => Some(low as i128),
            -1 if low > i128::MAX as u128 => Some(low as i128),
            _ => None,
        }
    }

    #[test]
    fn exact_sums_match_a_wide_sum_in_any_order() {
        let mut next = crate::xorshift(0x0051_a70f_5eed);
        for round in 0..400 {
            let n = (next() % 300) as usize;
            // Magnitudes of every size; some rounds all near the limits, where only some
            // orders of a plain checked sum would overflow on the way.
            let values: Vec<i128> = (0..n)
                .map(|_| {
                    let v =
                        (i128::from(next() as i64) << 64 | i128::from(next())) >> (next() % 128);
                    match round % 4 {
                        0 => v,
                        1 => i128::MAX - (v & 0xff),
                        2 => i128::MIN + (v & 0xff),
                        _ => v.signum() * (i128::MAX / 3),
                    }
                })
                .collect();
            let want = wide_sum(&values);
            assert_eq!(exact_sum(&values), want, "round {round}");
            let reversed: Vec<i128> = values.iter().rev().copied().collect();
            assert_eq!(exact_sum(&reversed), want, "round {round}, reversed");
        }
        // A sum that fits after an intermediate overflow; one that does not fit either way.
        assert_eq!(exact_sum(&[i128::MAX, 1, -1]), Some(i128::MAX));
        assert_eq!(exact_sum(&[i128::MIN, -1, 1]), Some(i128::MIN));
        assert_eq!(exact_sum(&[i128::MAX, 1]), None);
        assert_eq!(exact_sum(&[i128::MIN, -1]), None);
        assert_eq!(exact_sum(&[i128::MIN, i128::MIN, i128::MAX, i128::MAX, 2]), Some(0));
        assert_eq!(exact_sum(&[]), Some(0));
    }

    #[test]
    fn key_sets_count_like_a_sort() {
        let mut next = crate::xorshift(0x0123_4567_89ab_cdefu64);
        // Random digests, crowded into one or two buckets (top bytes 7 and 8) or spread over
        // all 256; some repeated up to three times, one repeated 40 times, and the digest 0
        // (the table's empty slot) among them. 600,000 in one bucket are counted by sorting.
        for (n, crowd) in
            [(0usize, 2), (1, 2), (5, 2), (1023, 2), (5000, 2), (70_000, 256), (600_000, 1)]
        {
            let mut digests: Vec<u128> = (0..n)
                .map(|i| {
                    let d = (u128::from(next()) << 64) | u128::from(next());
                    match crowd {
                        256 => d,
                        _ => (d >> 8) | ((7 + (i % crowd) as u128) << 120),
                    }
                })
                .collect();
            if n == 5000 {
                digests[17] = 0;
                digests.push(0);
            }
            for i in (0..n).step_by(7) {
                let d = digests[i];
                digests.push(d);
                if i % 3 == 0 {
                    digests.push(d);
                }
            }
            if let Some(d) = digests.first().copied() {
                digests.extend(std::iter::repeat_n(d, 40));
            }
            let mut want = digests.clone();
            want.sort_unstable();
            let distinct = want.len() - want.windows(2).filter(|w| w[0] == w[1]).count();
            let expect = (distinct as u64, (want.len() - distinct) as u64);
            assert_eq!(distinct, n, "{n}");
            let mut set = KeySet::default();
            for d in &digests {
                set.push(*d);
            }
            assert_eq!(set.counts(), expect, "{n}");
            assert_eq!(set.counts(), expect, "{n}, counted again");
            // Split across parts, in any order: the merge counts repeats across parts too.
            let mut parts = vec![KeySet::default(); 3];
            for (i, d) in digests.iter().rev().enumerate() {
                parts[i % 3].push(*d);
            }
            assert_eq!(merge_key_sets(parts), expect, "{n} in three parts");
        }
    }
}
