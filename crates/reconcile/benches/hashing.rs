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
//! Samples are taken round-robin over the lines (and SHA-256 over bulk data, the host's own
//! speed), so that a slow minute of a shared host falls on every line alike; each line reports
//! its median and its best sample.
//!
//! `cargo bench -p strata-reconcile --bench hashing` (release build). `STRATA_BENCH_ROWS` sets the
//! rows (default 2,000,000), `STRATA_BENCH_SAMPLES` the samples per line (default 7),
//! `STRATA_BENCH_ONLY` picks lines by name (`full totals`). Target: at least 1 GB/s per core.

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

/// One sample: makes a state with `begin`, runs `work` on it over every batch (each touched
/// first, untimed) and ends with `end`; the work and the end are timed, in seconds.
fn sample<S>(
    batches: &[RecordBatch],
    begin: &mut impl FnMut() -> S,
    work: &mut impl FnMut(&mut S, &RecordBatch),
    end: &mut impl FnMut(S),
) -> f64 {
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
    timed.as_secs_f64()
}

/// A line of the report: its name, the bytes it reads, and one timed sample of it.
struct Line<'a> {
    name: String,
    bytes: usize,
    run: Box<dyn FnMut() -> f64 + 'a>,
}

fn line<'a, S: 'a>(
    name: String,
    batches: &'a [RecordBatch],
    mut begin: impl FnMut() -> S + 'a,
    mut work: impl FnMut(&mut S, &RecordBatch) + 'a,
    mut end: impl FnMut(S) + 'a,
) -> Line<'a> {
    let bytes = batches.iter().map(|b| b.get_array_memory_size()).sum();
    Line { name, bytes, run: Box::new(move || sample(batches, &mut begin, &mut work, &mut end)) }
}

fn main() {
    let rows: i64 =
        std::env::var("STRATA_BENCH_ROWS").ok().and_then(|s| s.parse().ok()).unwrap_or(2_000_000);
    let samples: usize =
        std::env::var("STRATA_BENCH_SAMPLES").ok().and_then(|s| s.parse().ok()).unwrap_or(7);
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
    let data: Vec<(&str, Vec<RecordBatch>)> = [true, false]
        .into_iter()
        .map(|view| {
            let batches = (0..rows)
                .step_by(size as usize)
                .map(|s| batch(s, size.min(rows - s), view))
                .collect();
            (if view { "Utf8View" } else { "Utf8" }, batches)
        })
        .collect();
    // SHA-256 itself (sha2, SHA-NI where the CPU has it) over 64 MiB in 16 KiB updates: this
    // host's speed varies from minute to minute, so it is sampled with the other lines.
    let block: Vec<u8> = (0..16_384u32).map(|i| (i * 31 % 251) as u8).collect();
    let mut lines = vec![Line {
        name: "sha256 over bulk data (sha2, 16 KiB updates)".into(),
        bytes: 4096 * block.len(),
        run: Box::new(|| {
            use sha2::{Digest, Sha256};
            let started = Instant::now();
            let mut h = Sha256::new();
            for _ in 0..4096 {
                h.update(&block);
            }
            std::hint::black_box(h.finalize());
            started.elapsed().as_secs_f64()
        }),
    }];
    for (text, batches) in &data {
        // Where the time goes: the canonical encoding of whole rows alone; with their SHA-256
        // digests; and both content hashes (rows and keys, encoded, digested and summed) as the
        // totals compute them, 128 rows at a time, without the other totals.
        for (name, hash, keys) in [
            ("encode only", false, false),
            ("encode+sha256", true, false),
            ("both hashes", true, true),
        ] {
            let (spec, name) = (&spec, format!("{name:<14} text {text:<8}"));
            lines.push(line(
                name,
                batches,
                || (EncodedRows::default(), EncodedRows::default(), Vec::new(), [0u32; 2]),
                move |(rows_buf, keys_buf, words, sums), b| {
                    let rows = RowEncoder::new(b.columns());
                    let key_columns: Vec<ArrayRef> = spec
                        .key
                        .iter()
                        .map(|k| b.column_by_name(k).expect("key column").clone())
                        .collect();
                    let key_rows = RowEncoder::new(&key_columns);
                    for start in (0..b.num_rows()).step_by(128) {
                        let chunk = start..b.num_rows().min(start + 128);
                        rows.encode(chunk.clone(), rows_buf);
                        if !hash {
                            sums[0] ^= u32::from(rows_buf.row(0)[0]);
                            continue;
                        }
                        rows_buf.digest_words(words);
                        sums[0] = words.iter().fold(sums[0], |a, w| a.wrapping_add(w[0]));
                        if keys {
                            key_rows.encode(chunk, keys_buf);
                            keys_buf.digest_words(words);
                            sums[1] = words.iter().fold(sums[1], |a, w| a.wrapping_add(w[0]));
                        }
                    }
                },
                |state| {
                    std::hint::black_box(state.3);
                },
            ));
        }
        // Keys counted by digest (any order), or in key order (a cleaned stage: the rows are
        // generated sorted by (l_orderkey, l_linenumber)).
        for (name, spec, in_order) in [
            ("row hash only", &only_rows, false),
            ("full totals", &spec, false),
            ("keys in order", &spec, true),
        ] {
            lines.push(line(
                format!("{name:<14} text {text:<8}"),
                batches,
                move || if in_order { Totals::new_in_key_order(spec) } else { Totals::new(spec) },
                |t, b| t.update(b).expect("totals"),
                |t| {
                    let totals = t.finish();
                    assert_eq!(totals.rows, rows as u64);
                    assert_eq!(totals.keys.unwrap_or_default().out_of_order, 0);
                },
            ));
        }
    }
    lines.retain(|l| l.name.starts_with("sha256") || l.name.contains(only.as_str()));
    // Samples taken round-robin, so that every line sees the host's slow and fast minutes
    // alike and their ratios hold; the median and the fastest sample of each.
    let mut times = vec![Vec::new(); lines.len()];
    for _ in 0..samples {
        for (l, t) in lines.iter_mut().zip(&mut times) {
            t.push((l.run)());
        }
    }
    let rate = |bytes: usize, secs: f64| bytes as f64 / secs / 1e9;
    let median = |t: &mut Vec<f64>| {
        t.sort_by(f64::total_cmp);
        (t[t.len() / 2], t[0])
    };
    let (bulk, bulk_best) = median(&mut times[0]);
    let (bulk, bulk_best) = (rate(lines[0].bytes, bulk), rate(lines[0].bytes, bulk_best));
    println!("{}: median {bulk:.2} GB/s, best {bulk_best:.2} GB/s (one core)", lines[0].name);
    for (l, t) in lines.iter().zip(&mut times).skip(1) {
        let (secs, best) = median(t);
        println!(
            "{} {rows} rows, {:>4.0} MiB of Arrow data: median {secs:.3} s = {:.2} GB/s ({:.2}x bulk sha256), {:.0} ns/row; best {:.2} GB/s (one core)",
            l.name,
            l.bytes as f64 / 1048576.0,
            rate(l.bytes, secs),
            rate(l.bytes, secs) / bulk,
            secs * 1e9 / rows as f64,
            rate(l.bytes, best),
        );
    }
}
