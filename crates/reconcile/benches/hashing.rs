//! Benchmark: control totals and content hashing throughput, in bytes of Arrow data per second
//! on one core. Lineitem-shaped batches (16 columns: integers, decimals, dates, short text), the
//! same totals a cleaned stage computes (key of two columns, four exact sums, the business date,
//! nulls, row hash and key hash).
//!
//! Full totals count keys two ways: with a digest of every key (rows in any order, as for a
//! model), and in key order (`keys in order`, as for a cleaned stage, whose rows arrive sorted).
//!
//! Batches of 8,192 rows (DataFusion's batch size), each read once before it is timed: a stage's
//! writer hashes each batch as the query produces it, while it is in cache. `encode only`,
//! `encode+sha256` and `both hashes` (row and key hashes, no other totals) show where the time
//! goes.
//!
//! `cargo bench -p strata-reconcile --bench hashing` (release build). `STRATA_BENCH_ROWS` sets the
//! rows (default 2,000,000), `STRATA_BENCH_ONLY` picks lines by name (`full totals`). Target: at
//! least 1 GB/s per core.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    ArrayRef, Date32Array, Decimal128Array, Int64Array, RecordBatch, StringArray, StringViewArray,
};
use arrow::datatypes::{DataType, Field, Schema};
use strata_reconcile::{EncodedRows, RowEncoder, Totals, TotalsSpec};

/// Lineitem-shaped rows; text as Utf8View (what DataFusion's VARCHAR, and so a cleaned stage,
/// produces) or as plain Utf8.
fn batch(start: i64, n: i64, view: bool) -> RecordBatch {
    let dec = |f: fn(i64) -> i128| -> ArrayRef {
        Arc::new(
            Decimal128Array::from_iter_values((start..start + n).map(f))
                .with_precision_and_scale(15, 2)
                .expect("decimal"),
        )
    };
    let text = |choices: &'static [&'static str]| -> ArrayRef {
        let values = (start..start + n).map(|i| choices[(i as usize) % choices.len()]);
        if view {
            Arc::new(StringViewArray::from_iter_values(values))
        } else {
            Arc::new(StringArray::from_iter_values(values))
        }
    };
    let date = |off: i32| -> ArrayRef {
        Arc::new(Date32Array::from_iter_values(
            (start..start + n).map(|i| 8_000 + (i % 2_500) as i32 + off),
        ))
    };
    let fields = vec![
        ("l_orderkey", DataType::Int64),
        ("l_partkey", DataType::Int64),
        ("l_suppkey", DataType::Int64),
        ("l_linenumber", DataType::Int64),
        ("l_quantity", DataType::Decimal128(15, 2)),
        ("l_extendedprice", DataType::Decimal128(15, 2)),
        ("l_discount", DataType::Decimal128(15, 2)),
        ("l_tax", DataType::Decimal128(15, 2)),
        ("l_returnflag", DataType::Utf8),
        ("l_linestatus", DataType::Utf8),
        ("l_shipdate", DataType::Date32),
        ("l_commitdate", DataType::Date32),
        ("l_receiptdate", DataType::Date32),
        ("l_shipinstruct", DataType::Utf8),
        ("l_shipmode", DataType::Utf8),
        ("l_comment", DataType::Utf8),
    ];
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values((start..start + n).map(|i| i / 4))),
        Arc::new(Int64Array::from_iter_values((start..start + n).map(|i| i * 7 % 200_000))),
        Arc::new(Int64Array::from_iter_values((start..start + n).map(|i| i * 13 % 10_000))),
        Arc::new(Int64Array::from_iter_values((start..start + n).map(|i| i % 4 + 1))),
        dec(|i| (i % 50 + 1) as i128 * 100),
        dec(|i| (i % 100_000) as i128 * 37),
        dec(|i| (i % 11) as i128),
        dec(|i| (i % 9) as i128),
        text(&["A", "N", "R"]),
        text(&["F", "O"]),
        date(0),
        date(30),
        date(15),
        text(&["DELIVER IN PERSON", "COLLECT COD", "NONE", "TAKE BACK RETURN"]),
        text(&["AIR", "MAIL", "SHIP", "TRUCK", "RAIL", "FOB", "REG AIR"]),
        text(&[
            "carefully final deposits",
            "quickly ironic packages",
            "furiously regular ideas sleep",
        ]),
    ];
    let text_type = if view { DataType::Utf8View } else { DataType::Utf8 };
    let schema = Arc::new(Schema::new(
        fields
            .into_iter()
            .map(|(n, t)| {
                let t = if t == DataType::Utf8 { text_type.clone() } else { t };
                Field::new(n, t, false)
            })
            .collect::<Vec<_>>(),
    ));
    RecordBatch::try_new(schema, cols).expect("batch")
}

/// Reads every cache line of a batch's buffers, as a batch a query just produced is in cache
/// when the writer hashes it.
fn touch(b: &RecordBatch) -> u8 {
    fn data(d: &arrow::array::ArrayData) -> u8 {
        let mut x = 0u8;
        for buf in d.buffers() {
            x ^= buf.as_slice().iter().step_by(64).fold(0, |a, v| a ^ v);
        }
        d.child_data().iter().fold(x, |a, c| a ^ data(c))
    }
    b.columns().iter().fold(0, |a, c| a ^ data(&c.to_data()))
}

/// Five samples, median: each sample makes a state with `begin`, runs `work` on it over every
/// batch (each touched first, untimed) and ends with `end`; the work and the end are timed.
fn measure<S>(
    batches: &[RecordBatch],
    mut begin: impl FnMut() -> S,
    mut work: impl FnMut(&mut S, &RecordBatch),
    mut end: impl FnMut(S),
) -> f64 {
    let mut samples = Vec::new();
    for _ in 0..5 {
        let mut state = begin();
        let mut timed = std::time::Duration::ZERO;
        for b in batches {
            std::hint::black_box(touch(b));
            let started = Instant::now();
            work(&mut state, b);
            timed += started.elapsed();
        }
        let started = Instant::now();
        end(state);
        timed += started.elapsed();
        samples.push(timed.as_secs_f64());
    }
    samples.sort_by(f64::total_cmp);
    samples[2]
}

fn main() {
    let rows: i64 =
        std::env::var("STRATA_BENCH_ROWS").ok().and_then(|s| s.parse().ok()).unwrap_or(2_000_000);
    // DataFusion's batch size: what a stage's writer hashes at a time.
    let size = 8_192;
    let spec = TotalsSpec {
        key: vec!["l_orderkey".into(), "l_linenumber".into()],
        sums: vec![
            "l_quantity".into(),
            "l_extendedprice".into(),
            "l_discount".into(),
            "l_tax".into(),
        ],
        time: Some("l_shipdate".into()),
    };
    let only_rows = TotalsSpec::default();
    let only = std::env::var("STRATA_BENCH_ONLY").unwrap_or_default();
    // What SHA-256 itself does over bulk data on this host this minute (its speed varies).
    let bulk = sha256_bulk();
    println!("sha256 over bulk data (sha2, 16 KiB updates): median {:.2} GB/s (one core)", bulk);
    println!(
        "row digests: {}",
        if strata_reconcile::lanes::available() {
            "AVX-512, sixteen rows at a time"
        } else {
            "sha2, one row at a time (no AVX-512 here)"
        }
    );
    for view in [true, false] {
        let batches: Vec<RecordBatch> =
            (0..rows).step_by(size as usize).map(|s| batch(s, size.min(rows - s), view)).collect();
        let bytes: usize = batches.iter().map(|b| b.get_array_memory_size()).sum();
        let text = if view { "Utf8View" } else { "Utf8" };
        let report = |name: &str, secs: f64| {
            let rate = bytes as f64 / secs / 1e9;
            println!(
                "{name:<14} text {text:<8} {rows} rows, {:>4.0} MiB of Arrow data: median {secs:.3} s = {rate:.2} GB/s ({:.2}x bulk sha256), {:.0} ns/row (one core)",
                bytes as f64 / 1048576.0,
                rate / bulk,
                secs * 1e9 / rows as f64
            );
        };
        // Where the time goes: the canonical encoding of whole rows alone; with their SHA-256
        // digests; and both content hashes (rows and keys, encoded, digested and summed) as the
        // totals compute them, 256 rows at a time, without the other totals.
        for (name, hash, keys) in [
            ("encode only", false, false),
            ("encode+sha256", true, false),
            ("both hashes", true, true),
        ] {
            if !name.contains(only.as_str()) {
                continue;
            }
            let mut rows_buf = EncodedRows::default();
            let mut keys_buf = EncodedRows::default();
            let mut words = Vec::new();
            let mut sums = [0u32; 2];
            let secs = measure(
                &batches,
                || (),
                |_, b| {
                    let rows = RowEncoder::new(b.columns());
                    let key_columns: Vec<ArrayRef> = spec
                        .key
                        .iter()
                        .map(|k| b.column_by_name(k).expect("key column").clone())
                        .collect();
                    let key_rows = RowEncoder::new(&key_columns);
                    for start in (0..b.num_rows()).step_by(128) {
                        let chunk = start..b.num_rows().min(start + 128);
                        rows.encode(chunk.clone(), &mut rows_buf);
                        if !hash {
                            sums[0] ^= u32::from(rows_buf.row(0)[0]);
                            continue;
                        }
                        rows_buf.digest_words(&mut words);
                        sums[0] = words.iter().fold(sums[0], |a, w| a.wrapping_add(w[0]));
                        if keys {
                            key_rows.encode(chunk, &mut keys_buf);
                            keys_buf.digest_words(&mut words);
                            sums[1] = words.iter().fold(sums[1], |a, w| a.wrapping_add(w[0]));
                        }
                    }
                },
                |_| (),
            );
            std::hint::black_box(sums);
            report(name, secs);
        }
        // Keys counted by digest (any order), or in key order (a cleaned stage: the rows are
        // generated sorted by (l_orderkey, l_linenumber)).
        let runs = [
            ("row hash only", &only_rows, false),
            ("full totals", &spec, false),
            ("keys in order", &spec, true),
        ];
        for (name, spec, in_order) in runs.into_iter().filter(|r| r.0.contains(only.as_str())) {
            let secs = measure(
                &batches,
                || if in_order { Totals::new_in_key_order(spec) } else { Totals::new(spec) },
                |t, b| t.update(b).expect("totals"),
                |t| {
                    let totals = t.finish();
                    assert_eq!(totals.rows, rows as u64);
                    assert_eq!(totals.keys.unwrap_or_default().out_of_order, 0);
                },
            );
            report(name, secs);
        }
    }
}

/// GB/s of SHA-256 over 256 MiB in 16 KiB updates, median of 5.
fn sha256_bulk() -> f64 {
    use sha2::{Digest, Sha256};
    let block: Vec<u8> = (0..16_384u32).map(|i| (i * 31 % 251) as u8).collect();
    let mut samples: Vec<f64> = (0..5)
        .map(|_| {
            let started = Instant::now();
            let mut h = Sha256::new();
            for _ in 0..16_384 {
                h.update(&block);
            }
            std::hint::black_box(h.finalize());
            (16_384.0 * 16_384.0) / started.elapsed().as_secs_f64() / 1e9
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[2]
}
