//! The columns of a source's raw batches, read together.
//!
//! CSV and JSON lines land as text, but Parquet keeps its types, and two Parquet files of one
//! source may disagree: `order_id` as int64 in one export and as text in the next. Read with the
//! first batch's type, the other batch's values would be cast to it, and one value that does not
//! cast (`'x'` as int64) would fail every run, naming no file. So a column whose type differs
//! between batches is read as text: the cleaned stage reads every contract column through its
//! text anyway (see `strata_text`), so a value reads the same whichever batch it comes from, and a
//! value that does not cast to the contract type fails rule `contract` and goes to the
//! quarantine, like a bad CSV field. Types that cannot be read as text (structs, lists, maps)
//! cannot be reconciled that way: such a column is a [`TypeConflict`].

use arrow::datatypes::{DataType, Field};

use crate::error::Error;
use crate::landing::BatchManifest;

/// A column whose types across batches cannot be read as one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeConflict {
    pub column: String,
    /// The batch id, input name and type of the column where it was first seen.
    pub first: (String, String, DataType),
    /// The same for a batch with another type, one of which cannot be read as text.
    pub other: (String, String, DataType),
}

impl TypeConflict {
    /// The error to report when the column is read.
    pub fn error(&self, source: &str) -> Error {
        let short = |id: &str| id[..id.len().min(12)].to_string();
        let unreadable =
            if can_read_as_text(&self.first.2) { &self.other.2 } else { &self.first.2 };
        let ((b1, in1, t1), (b2, in2, t2)) = (&self.first, &self.other);
        Error::ColumnTypes {
            raw_source: source.to_string(),
            column: self.column.clone(),
            detail: format!(
                "is {t1} in batch {}… (input {in1}) but {t2} in batch {}… (input {in2}), and \
                 {unreadable} cannot be read as text; leave {:?} out of the contract, or land \
                 the input again with the column as {t1}",
                short(b1),
                short(b2),
                self.column
            ),
        }
    }
}

/// Whether values of type `t` can be read as text (by a cast to `Utf8`).
fn can_read_as_text(t: &DataType) -> bool {
    arrow::compute::can_cast_types(t, &DataType::Utf8)
}

/// The columns of `batches` read together, in order of first appearance, each nullable: the
/// type every batch has, or text (`Utf8`) where the batches disagree and every type can be read
/// as text. A column whose types cannot all be read as text is left out and reported as a
/// conflict.
pub fn read_columns(batches: &[BatchManifest]) -> (Vec<Field>, Vec<TypeConflict>) {
    // Per column: its field, where it was first seen, and the conflict found, if any.
    let mut columns: Vec<(Field, usize, Option<TypeConflict>)> = Vec::new();
    for (i, b) in batches.iter().enumerate() {
        for f in b.schema.fields() {
            let Some((field, first, conflict)) =
                columns.iter_mut().find(|(x, _, _)| x.name() == f.name())
            else {
                columns.push((f.as_ref().clone().with_nullable(true), i, None));
                continue;
            };
            let seen = batches[*first].schema.field_with_name(f.name()).map(|x| x.data_type());
            let seen = seen.unwrap_or(field.data_type()).clone();
            if seen == *f.data_type() || conflict.is_some() {
                continue;
            }
            if can_read_as_text(&seen) && can_read_as_text(f.data_type()) {
                *field = field.clone().with_data_type(DataType::Utf8);
            } else {
                let at = |b: &BatchManifest, t: &DataType| {
                    (b.batch_id.clone(), b.input.name.clone(), t.clone())
                };
                *conflict = Some(TypeConflict {
                    column: f.name().clone(),
                    first: at(&batches[*first], &seen),
                    other: at(b, f.data_type()),
                });
            }
        }
    }
    let mut fields = Vec::new();
    let mut conflicts = Vec::new();
    for (field, _, conflict) in columns {
        match conflict {
            Some(c) => conflicts.push(c),
            None => fields.push(field),
        }
    }
    (fields, conflicts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{Fields, Schema};

    fn batch(id: &str, fields: Vec<Field>) -> BatchManifest {
        let input = serde_json::json!({
            "name": format!("{id}.parquet"), "sha256": id, "size": 1, "format": "parquet"
        });
        BatchManifest {
            format: crate::BATCH_FORMAT.into(),
            source: "orders".into(),
            batch_id: id.into(),
            input: serde_json::from_value(input).unwrap(),
            rows: 1,
            rejected: 0,
            blank_lines: 0,
            schema: Schema::new(fields),
            data: None,
            rejects: None,
            run_id: "r".into(),
            landed_at: chrono::DateTime::UNIX_EPOCH,
            log_seq: None,
        }
    }

    fn f(name: &str, t: DataType) -> Field {
        Field::new(name, t, false)
    }

    #[test]
    fn a_column_whose_type_differs_is_read_as_text() {
        let a = batch("a", vec![f("id", DataType::Int64), f("amount", DataType::Int64)]);
        let b = batch("b", vec![f("id", DataType::Utf8), f("amount", DataType::Int64)]);
        let c = batch("c", vec![f("id", DataType::Int32), f("note", DataType::Utf8)]);
        let (fields, conflicts) = read_columns(&[a.clone(), b, c]);
        let got: Vec<(&str, &DataType, bool)> =
            fields.iter().map(|f| (f.name().as_str(), f.data_type(), f.is_nullable())).collect();
        assert_eq!(
            got,
            vec![
                ("id", &DataType::Utf8, true),
                ("amount", &DataType::Int64, true),
                ("note", &DataType::Utf8, true),
            ]
        );
        assert!(conflicts.is_empty());
        // One type throughout: kept.
        let (fields, _) = read_columns(&[a.clone(), a]);
        assert_eq!(fields[0].data_type(), &DataType::Int64);
    }

    #[test]
    fn a_struct_that_differs_is_a_conflict_naming_both_batches() {
        let s = DataType::Struct(Fields::from(vec![f("x", DataType::Int64)]));
        let a = batch("a", vec![f("id", DataType::Int64), f("meta", s.clone())]);
        let b = batch("b", vec![f("id", DataType::Int64), f("meta", DataType::Utf8)]);
        let (fields, conflicts) = read_columns(&[a.clone(), b, a.clone()]);
        assert_eq!(fields.iter().map(|f| f.name().as_str()).collect::<Vec<_>>(), vec!["id"]);
        assert_eq!(conflicts.len(), 1);
        let c = &conflicts[0];
        assert_eq!(c.column, "meta");
        assert_eq!(c.first, ("a".into(), "a.parquet".into(), s));
        assert_eq!(c.other, ("b".into(), "b.parquet".into(), DataType::Utf8));
        let message = c.error("orders").to_string();
        for needle in ["\"meta\"", "orders", "a.parquet", "b.parquet", "Struct", "Utf8"] {
            assert!(message.contains(needle), "{needle}: {message}");
        }
        assert!(c.error("orders").is_user_error());
        // The same struct in every batch is no conflict.
        let (fields, conflicts) = read_columns(&[a.clone(), a]);
        assert_eq!(fields.len(), 2);
        assert!(conflicts.is_empty());
    }
}
