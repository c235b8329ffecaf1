//! Reading Parquet that users hand to strata (`strata publish --from`), through object_store.

// parquet 59 deprecates ParquetObjectReader in favour of hand-written AsyncFileReaders; it is
// still the reader DataFusion 55 pairs with, and does exactly what is needed here.
#![allow(deprecated)]

use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::async_reader::{ParquetObjectReader, ParquetRecordBatchStream};
use parquet::arrow::ParquetRecordBatchStreamBuilder;

use crate::error::{Error, Result};

/// An input Parquet file, opened and ready to stream.
#[derive(Debug)]
pub struct ParquetInput {
    /// How the user named it, for messages.
    pub display: String,
    pub schema: SchemaRef,
    pub rows: u64,
    stream: ParquetRecordBatchStream<ParquetObjectReader>,
}

impl ParquetInput {
    /// Opens `path` in `store`. `display` is the name used in errors.
    pub async fn open(store: Arc<dyn ObjectStore>, path: Path, display: String) -> Result<Self> {
        let invalid = |detail: String| Error::InvalidInput { path: display.clone(), detail };
        let meta = match store.head(&path).await {
            Ok(m) => m,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(invalid("no such file; check the path".into()));
            }
            Err(e) => {
                return Err(invalid(format!("cannot read it ({e}); check that it may be read")))
            }
        };
        let reader = ParquetObjectReader::new(store, path).with_file_size(meta.size);
        let builder = ParquetRecordBatchStreamBuilder::new(reader).await.map_err(|e| {
            invalid(format!(
                "it is not a readable Parquet file ({e}); convert it to Parquet or leave it out \
                     of --from"
            ))
        })?;
        let rows = builder.metadata().file_metadata().num_rows().max(0) as u64;
        // Keep names, types and nullability; drop writer-specific metadata (pandas, Spark…) so
        // schemas compare on what matters.
        let schema = Arc::new(strip_metadata(builder.schema()));
        let stream = builder
            .with_batch_size(64 * 1024)
            .build()
            .map_err(|e| invalid(format!("cannot read it ({e})")))?;
        Ok(ParquetInput { display, schema, rows, stream })
    }

    /// The next batch, with the stripped schema.
    pub async fn next_batch(&mut self) -> Result<Option<arrow::array::RecordBatch>> {
        let batch = self.stream.try_next().await.map_err(|e| Error::InvalidInput {
            path: self.display.clone(),
            detail: format!("it is damaged ({e}); re-export it, or leave it out of --from"),
        })?;
        Ok(match batch {
            Some(b) => {
                Some(arrow::array::RecordBatch::try_new(self.schema.clone(), b.columns().to_vec())?)
            }
            None => None,
        })
    }
}

/// The schema with no schema- or field-level metadata.
pub fn strip_metadata(schema: &Schema) -> Schema {
    let fields: Vec<arrow::datatypes::Field> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_metadata(Default::default()))
        .collect();
    Schema::new(fields)
}
