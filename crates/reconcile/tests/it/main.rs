//! The one integration-test binary of strata-reconcile: totals are exact, and the hashes do not
//! depend on row order or on how rows are split, but catch a lost or a duplicated row.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Date32Array, Decimal128Array, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::compute::{concat_batches, take};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use strata_reconcile::{compare, ControlTotals, Totals, TotalsSpec};

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("day", DataType::Date32, true),
        Field::new("amount", DataType::Decimal128(12, 2), true),
        Field::new("note", DataType::Utf8, true),
        Field::new("score", DataType::Float64, true),
        Field::new("at", DataType::Timestamp(TimeUnit::Microsecond, None), true),
    ]))
}

/// `n` rows with some nulls and repeated text.
fn rows(n: i64) -> RecordBatch {
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(0..n)),
        Arc::new(Date32Array::from_iter(
            (0..n).map(|i| (i % 7 != 3).then_some(20_000 + (i % 30) as i32)),
        )),
        Arc::new(
            Decimal128Array::from_iter(
                (0..n).map(|i| (i % 11 != 5).then_some(i as i128 * 137 - 5_000)),
            )
            .with_precision_and_scale(12, 2)
            .unwrap(),
        ),
        Arc::new(StringArray::from_iter(
            (0..n).map(|i| (i % 13 != 0).then(|| format!("note {}", i % 17))),
        )),
        Arc::new(Float64Array::from_iter((0..n).map(|i| Some(i as f64 / 3.0)))),
        Arc::new(TimestampMicrosecondArray::from_iter(
            (0..n).map(|i| Some(1_700_000_000_000_000 + i)),
        )),
    ];
    RecordBatch::try_new(schema(), cols).unwrap()
}

fn spec() -> TotalsSpec {
    TotalsSpec {
        key: vec!["id".into()],
        sums: vec!["amount".into(), "id".into()],
        time: Some("day".into()),
    }
}

fn totals(batches: &[RecordBatch]) -> ControlTotals {
    let mut t = Totals::new(&spec());
    for b in batches {
        t.update(b).unwrap();
    }
    t.finish()
}

/// The rows of `b` in the order of `idx`.
fn pick(b: &RecordBatch, idx: &[u32]) -> RecordBatch {
    let idx = arrow::array::UInt32Array::from(idx.to_vec());
    let cols = b.columns().iter().map(|c| take(c, &idx, None).unwrap()).collect();
    RecordBatch::try_new(b.schema(), cols).unwrap()
}

#[test]
fn exact_totals() {
    let t = totals(&[rows(100)]);
    assert_eq!(t.rows, 100);
    // Sum of i*137-5000 over i in 0..100 except i%11==5, in cents.
    let cents: i128 = (0..100i128).filter(|i| i % 11 != 5).map(|i| i * 137 - 5_000).sum();
    assert_eq!(t.sums["amount"], format!("{}.{:02}", cents / 100, (cents % 100).abs()));
    assert_eq!(t.sums["id"], "4950");
    assert_eq!(t.nulls["amount"], 9);
    assert_eq!(t.nulls["day"], (0..100).filter(|i| i % 7 == 3).count() as u64);
    assert_eq!(t.nulls["id"], 0);
    let time = t.time.as_ref().unwrap();
    assert_eq!(
        (time.min.as_deref(), time.max.as_deref()),
        (Some("2024-10-04"), Some("2024-11-02"))
    );
    assert_eq!(t.keys.unwrap().distinct, 100);
    assert_eq!(t.keys.unwrap().duplicates, 0);
    // Summing a float column is refused: it could not be exact.
    let mut bad = Totals::new(&TotalsSpec { sums: vec!["score".into()], ..Default::default() });
    assert!(bad.update(&rows(3)).unwrap_err().to_string().contains("cannot be summed exactly"));
    let mut missing = Totals::new(&TotalsSpec { key: vec!["nope".into()], ..Default::default() });
    assert!(missing
        .update(&rows(3))
        .unwrap_err()
        .to_string()
        .contains("\"nope\" is not in the data"));
}

#[test]
fn hashes_do_not_depend_on_order_or_split() {
    let all = rows(1000);
    let base = totals(std::slice::from_ref(&all));
    // Reversed, shuffled by a stride, and split into uneven batches.
    let reversed: Vec<u32> = (0..1000).rev().collect();
    assert_eq!(totals(&[pick(&all, &reversed)]), base);
    let strided: Vec<u32> = (0..1000u32).map(|i| (i * 7919) % 1000).collect();
    let shuffled = pick(&all, &strided);
    let parts = [
        shuffled.slice(0, 1),
        shuffled.slice(1, 333),
        shuffled.slice(334, 600),
        shuffled.slice(934, 66),
    ];
    assert_eq!(totals(&parts), base);
    // Partitions totalled apart and combined give the same totals as all at once.
    let combined = ControlTotals::combine(&[totals(&parts[..2]), totals(&parts[2..])]).unwrap();
    assert_eq!(combined, base);
    // Column order does not matter either.
    let swapped = RecordBatch::try_new(
        Arc::new(Schema::new(schema().fields().iter().rev().cloned().collect::<Vec<_>>())),
        all.columns().iter().rev().cloned().collect(),
    )
    .unwrap();
    assert_eq!(totals(&[swapped]), base);
}

#[test]
fn a_lost_or_duplicated_row_is_caught() {
    let all = rows(500);
    let base = totals(std::slice::from_ref(&all));
    // Lost row 123.
    let kept: Vec<u32> = (0..500).filter(|i| *i != 123).collect();
    let lost = totals(&[pick(&all, &kept)]);
    let what: Vec<String> = compare(&base, &lost).into_iter().map(|d| d.what).collect();
    assert!(
        what.contains(&"rows".into())
            && what.contains(&"row hash".into())
            && what.contains(&"key hash".into()),
        "{what:?}"
    );
    // Row 77 twice: same row count as a lost-and-duplicated pair, still caught.
    let mut twice: Vec<u32> = (0..500).filter(|i| *i != 123).collect();
    twice.push(77);
    let dup = totals(&[pick(&all, &twice)]);
    assert_eq!(dup.rows, base.rows);
    assert_eq!(dup.keys.unwrap().duplicates, 1);
    let what: Vec<String> = compare(&base, &dup).into_iter().map(|d| d.what).collect();
    assert!(
        what.contains(&"row hash".into()) && what.contains(&"duplicate keys".into()),
        "{what:?}"
    );
    // Duplicated across batches (files) too.
    let dup2 = totals(&[all.clone(), all.slice(10, 1)]);
    assert_eq!(dup2.keys.unwrap().duplicates, 1);
    // One changed value changes the row hash, not the key hash.
    let mut amounts: Vec<Option<i128>> =
        (0..500).map(|i| (i % 11 != 5).then_some(i as i128 * 137 - 5_000)).collect();
    amounts[200] = Some(amounts[200].unwrap() + 1);
    let mut cols = all.columns().to_vec();
    cols[2] = Arc::new(Decimal128Array::from(amounts).with_precision_and_scale(12, 2).unwrap());
    let changed = totals(&[RecordBatch::try_new(schema(), cols).unwrap()]);
    let what: Vec<String> = compare(&base, &changed).into_iter().map(|d| d.what).collect();
    assert_eq!(what, vec!["sum(amount)".to_string(), "row hash".to_string()]);
    assert!(compare(&base, &base).is_empty());
}

#[test]
fn totals_hashed_over_another_encoding_say_so() {
    let base = totals(&[rows(50)]);
    assert_eq!(base.encoding, strata_reconcile::ENCODING);
    // Totals hashed over another encoding (here the pre-release one) say so.
    let mut json = serde_json::to_value(&base).unwrap();
    json["encoding"] = "strata.row.v1".into();
    let old: ControlTotals = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(old.encoding, "strata.row.v1");
    let diffs = compare(&old, &base);
    assert_eq!(diffs.len(), 1, "{diffs:?}");
    assert_eq!(
        (diffs[0].what.as_str(), diffs[0].left.as_str(), diffs[0].right.as_str()),
        ("hash encoding", "strata.row.v1", strata_reconcile::ENCODING)
    );
    let err = ControlTotals::combine([&base, &old]).unwrap_err().to_string();
    assert!(err.contains("strata.row.v1") && err.contains("recompute"), "{err}");
    assert_eq!(ControlTotals::combine([&base, &base]).unwrap().encoding, base.encoding);
    // Totals that do not say their encoding (pre-release strata) are not read.
    json.as_object_mut().unwrap().remove("encoding");
    let err = serde_json::from_value::<ControlTotals>(json).unwrap_err();
    assert!(err.to_string().contains("encoding"), "{err}");
}

#[test]
fn widening_a_column_keeps_the_hashes() {
    let narrow = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, false),
            Field::new("s", DataType::Utf8, true),
        ])),
        vec![
            Arc::new(arrow::array::Int32Array::from(vec![1, 2])),
            Arc::new(StringArray::from(vec![Some("a"), None])),
        ],
    )
    .unwrap();
    let wide = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("s", DataType::LargeUtf8, true),
        ])),
        vec![
            Arc::new(Int64Array::from(vec![1, 2])),
            Arc::new(arrow::array::LargeStringArray::from(vec![Some("a"), None])),
        ],
    )
    .unwrap();
    let spec = TotalsSpec { key: vec!["id".into()], ..Default::default() };
    let t = |b: &RecordBatch| {
        let mut t = Totals::new(&spec);
        t.update(b).unwrap();
        t.finish()
    };
    assert_eq!(t(&narrow).row_hash, t(&wide).row_hash);
    // Moving a value between adjacent text cells changes the hash (lengths are encoded).
    let a = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("a", DataType::Utf8, false),
            Field::new("b", DataType::Utf8, false),
        ])),
        vec![Arc::new(StringArray::from(vec!["ab"])), Arc::new(StringArray::from(vec!["c"]))],
    )
    .unwrap();
    let b = RecordBatch::try_new(
        a.schema(),
        vec![Arc::new(StringArray::from(vec!["a"])), Arc::new(StringArray::from(vec!["bc"]))],
    )
    .unwrap();
    assert_ne!(t2(&a), t2(&b));
    let _ = concat_batches(&a.schema(), [&a, &b]).unwrap();
}

fn t2(b: &RecordBatch) -> String {
    let mut t = Totals::new(&TotalsSpec::default());
    t.update(b).unwrap();
    t.finish().row_hash
}

#[test]
fn keys_in_order_are_counted_without_remembering_them() {
    use strata_reconcile::KeyOrder;
    let spec = TotalsSpec { key: vec!["id".into(), "s".into()], ..Default::default() };
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("s", DataType::Utf8, true),
    ]));
    let batch = |ids: Vec<Option<i64>>, s: Vec<Option<&str>>| {
        RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from(ids)), Arc::new(StringArray::from(s))],
        )
        .unwrap()
    };
    // Sorted as ORDER BY id, s sorts (nulls last), across two batches; (2, "b") twice, once
    // across the batch boundary, and (null, null) twice.
    let b1 = batch(vec![Some(1), Some(1), Some(2)], vec![Some("a"), Some("b"), Some("b")]);
    let b2 = batch(
        vec![Some(2), Some(3), Some(3), None, None],
        vec![Some("b"), Some("a"), None, None, None],
    );
    let (mut ordered, mut any) = (Totals::new_in_key_order(&spec), Totals::new(&spec));
    for b in [&b1, &b2] {
        ordered.update(b).unwrap();
        any.update(b).unwrap();
    }
    let (ordered, any) = (ordered.finish(), any.finish());
    let k = ordered.keys.unwrap();
    assert_eq!((k.distinct, k.duplicates, k.out_of_order), (6, 2, 0));
    assert_eq!(k, any.keys.unwrap(), "both ways of counting agree on sorted rows");
    assert_eq!(ordered.key_hash, any.key_hash);
    assert_eq!(ordered.row_hash, any.row_hash);
    // Rows out of order are never taken for unique keys.
    let mut order = KeyOrder::default();
    let shuffled = batch(vec![Some(3), Some(1), Some(2)], vec![Some("a"), Some("a"), Some("a")]);
    order.update(&shuffled.columns()[..2]).unwrap();
    let k = order.counts();
    assert_eq!((k.distinct, k.duplicates, k.out_of_order), (3, 0, 1));
    // In JSON the field appears only when it is not zero.
    let json = serde_json::to_string(&any.keys.unwrap()).unwrap();
    assert!(!json.contains("out_of_order"), "{json}");
    assert!(serde_json::to_string(&k).unwrap().contains("\"out_of_order\":1"));
}

/// The hashes' definition, computed the plain way: the sum, as four little-endian 64-bit lanes
/// (wrapping), of the standard SHA-256 of every row's canonical encoding (columns in name order;
/// the key's columns in the key's order). Evidence stored by earlier runs depends on it.
#[test]
fn hashes_are_sums_of_standard_sha256_digests() {
    use sha2::{Digest, Sha256};
    // 600 rows: 37 groups of sixteen digests and a tail of eight.
    let b = rows(600);
    let schema = b.schema();
    let mut names: Vec<&String> = schema.fields().iter().map(|f| f.name()).collect();
    names.sort();
    let by_name: Vec<ArrayRef> =
        names.iter().map(|n| b.column_by_name(n).unwrap().clone()).collect();
    let key = vec![b.column_by_name("id").unwrap().clone()];
    let sum = |cols: &[ArrayRef]| {
        let mut lanes = [0u64; 4];
        for i in 0..b.num_rows() {
            let d = Sha256::digest(strata_reconcile::encode(cols, i));
            for (l, lane) in lanes.iter_mut().enumerate() {
                let word = u64::from_le_bytes(d[l * 8..l * 8 + 8].try_into().unwrap());
                *lane = lane.wrapping_add(word);
            }
        }
        lanes.iter().flat_map(|l| l.to_le_bytes()).map(|x| format!("{x:02x}")).collect::<String>()
    };
    let t = totals(std::slice::from_ref(&b));
    assert_eq!(t.row_hash, sum(&by_name));
    assert_eq!(t.key_hash.as_deref(), Some(sum(&key).as_str()));
    let keys = t.keys.unwrap();
    assert_eq!((keys.distinct, keys.duplicates), (600, 0));
}
