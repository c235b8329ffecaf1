//! Writes the demo's input Parquet files into `testdata/demo/` (committed; rerun to regenerate,
//! the output is byte-identical):
//!
//!     cargo run -p strata-publish --example demo_data -- testdata/demo

use std::sync::Arc;

use arrow::array::{Date32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("order_id", DataType::Int64, false),
        Field::new("customer_id", DataType::Int64, false),
        Field::new("order_date", DataType::Date32, false),
        Field::new("amount_cents", DataType::Int64, false),
        Field::new("status", DataType::Utf8, true),
    ]))
}

/// Days since 1970-01-01 of 2026-01-`day`.
fn jan_2026(day: i32) -> i32 {
    20454 + day - 1
}

fn write(path: &std::path::Path, rows: &[(i64, i64, i32, i64, Option<&str>)]) {
    let batch = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())),
            Arc::new(Int64Array::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
            Arc::new(Date32Array::from(rows.iter().map(|r| jan_2026(r.2)).collect::<Vec<_>>())),
            Arc::new(Int64Array::from(rows.iter().map(|r| r.3).collect::<Vec<_>>())),
            Arc::new(StringArray::from(rows.iter().map(|r| r.4).collect::<Vec<_>>())),
        ],
    )
    .expect("batch");
    let file = std::fs::File::create(path).expect("create");
    let mut w = ArrowWriter::try_new(file, schema(), None).expect("writer");
    w.write(&batch).expect("write");
    w.close().expect("close");
    println!("wrote {} ({} rows)", path.display(), rows.len());
}

fn main() {
    let dir =
        std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "testdata/demo".into()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let mut january = Vec::new();
    let mut id = 1000;
    for day in 1..=5 {
        for k in 0..(4 + day as i64) {
            id += 1;
            let status = if k % 5 == 4 { Some("refunded") } else { Some("paid") };
            january.push((id, 100 + (id * 7) % 23, day, 1_000 + (id * 137) % 9_000, status));
        }
    }
    write(&dir.join("orders-2026-01.parquet"), &january);
    // A corrected extract for 3 January: two orders changed, one added.
    let mut correction: Vec<_> = january.iter().filter(|r| r.2 == 3).cloned().collect();
    correction[0].3 += 500;
    correction[1].4 = Some("refunded");
    correction.push((2001, 117, 3, 4_250, Some("paid")));
    write(&dir.join("orders-2026-01-03-correction.parquet"), &correction);
}
