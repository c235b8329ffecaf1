//! Reconciliation for strata: control totals and content hashes that prove a run lost or
//! duplicated nothing before it is published.
//!
//! Pure functions over Arrow record batches, with no IO. A [`Totals`] accumulator takes batches
//! in any order and any split and yields [`ControlTotals`]:
//!
//! - the row count;
//! - exact sums of declared integer and decimal columns (`i128` arithmetic: no float drift);
//! - min and max of the business-time column;
//! - null counts per column;
//! - distinct and duplicate key counts;
//! - order-independent content hashes over the keys and over whole rows: each row is encoded
//!   canonically and compactly ([`encode`]), hashed with SHA-256, and the digests are added as 256-bit numbers
//!   (four 64-bit lanes, wrapping). Addition is commutative and associative, so row order and
//!   the split across batches, files and partitions do not change the result, while a lost row
//!   or an extra copy of one does.
//!
//! Totals of partitions combine into totals of a version with [`ControlTotals::combine`].
//!
//! ```
//! use std::sync::Arc;
//! use arrow::array::{Int64Array, RecordBatch};
//! use arrow::datatypes::{DataType, Field, Schema};
//! use strata_reconcile::{Totals, TotalsSpec};
//!
//! let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
//! let batch = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![3, 1, 2]))])?;
//! let spec = TotalsSpec { key: vec!["id".into()], sums: vec!["id".into()], time: None };
//! let mut totals = Totals::new(&spec);
//! totals.update(&batch)?;
//! let t = totals.finish();
//! assert_eq!((t.rows, t.sums["id"].as_str()), (3, "6"));
//! assert_eq!(t.keys.unwrap().duplicates, 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod encode;
mod totals;

pub use encode::{encode, encoded_rows, EncodedRows, RowEncoder, ENCODING};
pub use totals::{
    compare, decimal_sum, decimal_text, merge_key_sets, same_decimal, sum_column, ControlTotals,
    Difference, KeyCounts, KeyOrder, KeySet, TimeBounds, Totals, TotalsSpec,
};

/// What can go wrong computing totals.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A declared column is not in the data.
    #[error("column {column:?} is not in the data (columns: {available}); fix the declaration")]
    MissingColumn { column: String, available: String },
    /// A column declared for an exact sum is not an integer or decimal column.
    #[error(
        "column {column:?} is {data_type}, which cannot be summed exactly; declare only integer \
         or decimal columns as control totals (cast floats to DECIMAL in the SQL)"
    )]
    NotSummable { column: String, data_type: String },
    /// An exact sum left the range of a 128-bit integer.
    #[error("the sum of {column:?} overflows 128 bits; declare a narrower column")]
    Overflow { column: String },
    /// The business-time column is not a date or timestamp.
    #[error("column {column:?} is {data_type}; a business time must be a DATE or TIMESTAMP")]
    NotATime { column: String, data_type: String },
    /// Keys could not be put in order.
    #[error(
        "cannot order the key columns ({0}); declare keys of plain types (integers, text, dates)"
    )]
    KeyOrder(arrow::error::ArrowError),
    /// Totals could not be merged.
    #[error("cannot combine totals: {0}")]
    Incompatible(String),
}

/// `Result` with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A xorshift generator for the unit tests' random inputs (fixed seeds: reproducible).
#[cfg(test)]
pub(crate) fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}
