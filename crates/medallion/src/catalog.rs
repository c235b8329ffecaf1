//! A lake as a DataFusion catalog: one table per dataset, at its current or a named version.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::NaiveDate;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::datasource::TableType;
use datafusion::error::DataFusionError;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use strata_publish::checked::CheckedStore;
use strata_publish::{Lake, VersionRecord};

use crate::error::Result;

/// The object-store URL under which a session sees the lake's store. Paths in version records
/// are relative to the lake root, which is this URL's root.
pub const LAKE_URL: &str = "strata://lake";

/// Settings of a query session.
#[derive(Debug, Clone)]
pub struct QueryOptions {
    /// Rows per record batch.
    pub batch_size: usize,
    /// Parallelism; 0 means the number of cores.
    pub target_partitions: usize,
}

impl Default for QueryOptions {
    fn default() -> Self {
        QueryOptions { batch_size: 8192, target_partitions: 0 }
    }
}

/// Which version of a dataset a table name reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionRef<'a> {
    /// `orders`: the current version.
    Current,
    /// `orders@3`.
    Number(u64),
    /// `orders@2026-12-01T10:00:00Z`: the version current at that instant (RFC 3339).
    At(chrono::DateTime<chrono::Utc>),
    /// `orders@shadow:fix-123`: the version shadow `fix-123` holds.
    Shadow(&'a str),
}

/// Splits `"orders@3"` into `("orders", Number(3))`, `"orders@2026-12-01T10:00:00Z"` into
/// `("orders", At(…))` and `"orders"` into `("orders", Current)`. Returns `None` when the part
/// after `@` is neither a version number nor an RFC 3339 time.
pub fn parse_table_name(name: &str) -> Option<(&str, VersionRef<'_>)> {
    match name.rsplit_once('@') {
        None => Some((name, VersionRef::Current)),
        Some((base, v)) => {
            if let Some(shadow) = v.strip_prefix("shadow:") {
                return Some((base, VersionRef::Shadow(shadow)));
            }
            if let Ok(n) = v.parse() {
                return Some((base, VersionRef::Number(n)));
            }
            let at = chrono::DateTime::parse_from_rfc3339(v).ok()?;
            Some((base, VersionRef::At(at.with_timezone(&chrono::Utc))))
        }
    }
}

/// The record a version reference names.
pub async fn record_of(
    dataset: &strata_publish::Dataset,
    r: VersionRef<'_>,
) -> std::result::Result<VersionRecord, strata_publish::Error> {
    match r {
        VersionRef::Current => dataset.current().await,
        VersionRef::Number(v) => dataset.version(v).await,
        VersionRef::At(t) => dataset.version(dataset.version_at(t).await?).await,
        VersionRef::Shadow(name) => {
            let shadow = dataset.lake().require_shadow(name).await?;
            let v = shadow.version_of(dataset.name())?.version;
            dataset.full(&*dataset.shadow_head(v, &shadow.run_id).await?).await
        }
    }
}

/// A session whose default schema is the lake: `SELECT * FROM orders` reads the current version
/// of `orders`, `SELECT * FROM "orders@3"` reads version 3.
pub async fn session_for_lake(lake: &Lake, options: QueryOptions) -> Result<SessionContext> {
    // information_schema makes `SHOW TABLES` and `information_schema.tables` list the datasets.
    let mut config =
        SessionConfig::new().with_batch_size(options.batch_size).with_information_schema(true);
    if options.target_partitions > 0 {
        config = config.with_target_partitions(options.target_partitions);
    }
    // Identifiers keep their case only when quoted; dataset names are matched as DataFusion
    // normalises them (lower case for unquoted names).
    let ctx = read_checked(lake, config, Arc::new(RuntimeEnv::default()))?;
    let url = ObjectStoreUrl::parse(LAKE_URL)?;
    let names = lake.datasets().await?;
    let schema = Arc::new(LakeSchema { lake: lake.clone(), names, url });
    let catalog = ctx
        .catalog("datafusion")
        .ok_or_else(|| DataFusionError::Internal("default catalog missing".into()))?;
    catalog.register_schema("public", schema)?;
    Ok(ctx)
}

/// A session over `runtime` whose lake store checks every read of a published file against the
/// size and block checksums its version record lists ([`strata_publish::checked`]): a
/// [`VersionTable`] registers its files when it is scanned.
pub(crate) fn read_checked(
    lake: &Lake,
    config: SessionConfig,
    runtime: Arc<RuntimeEnv>,
) -> Result<SessionContext> {
    let checked = CheckedStore::new(lake.store().clone());
    let config = config.with_extension(checked.clone());
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    let url = ObjectStoreUrl::parse(LAKE_URL)?;
    ctx.register_object_store(url.as_ref(), checked);
    Ok(ctx)
}

/// The lake's datasets as the tables of a schema.
#[derive(Debug)]
struct LakeSchema {
    lake: Lake,
    names: Vec<String>,
    url: ObjectStoreUrl,
}

#[async_trait]
impl SchemaProvider for LakeSchema {
    fn table_names(&self) -> Vec<String> {
        self.names.clone()
    }

    async fn table(&self, name: &str) -> datafusion::error::Result<Option<Arc<dyn TableProvider>>> {
        let Some((base, version)) = parse_table_name(name) else { return Ok(None) };
        // A shadow may hold a dataset never published (a new model backfilled in a shadow).
        let shadow = matches!(version, VersionRef::Shadow(_));
        if !shadow && !self.names.iter().any(|n| n == base) {
            return Ok(None);
        }
        let dataset = self.lake.dataset(base).map_err(external)?;
        let record = record_of(&dataset, version).await.map_err(external)?;
        Ok(Some(Arc::new(VersionTable::new(record, self.url.clone()))))
    }

    fn table_exist(&self, name: &str) -> bool {
        parse_table_name(name).is_some_and(|(base, v)| {
            matches!(v, VersionRef::Shadow(_)) || self.names.iter().any(|n| n == base)
        })
    }
}

fn external(e: strata_publish::Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// Whether a partition with `values` (of columns `by`) can hold a row whose `column` is within
/// `[from, to]`: when the version is partitioned first by that date (`column=YYYY-MM-DD`) or by
/// its month (`<column>_month=YYYY-MM`), whatever columns follow, the others are not read at
/// all. Any other layout, and a value that is not a date, may hold anything.
pub fn may_hold_dates(
    by: &[String],
    values: &[Option<String>],
    column: &str,
    from: NaiveDate,
    to: NaiveDate,
) -> bool {
    let month = match by.first() {
        Some(first) if first == column => false,
        Some(first) if *first == format!("{column}_month") => true,
        _ => return true,
    };
    let v = match values.first() {
        Some(Some(v)) => v,
        // A null date is in no window.
        Some(None) => return false,
        None => return true,
    };
    if month {
        match NaiveDate::parse_from_str(&format!("{v}-01"), "%Y-%m-%d") {
            Ok(first) => {
                let next = first.checked_add_months(chrono::Months::new(1)).unwrap_or(first);
                first <= to && next > from
            }
            Err(_) => true,
        }
    } else {
        match NaiveDate::parse_from_str(v, "%Y-%m-%d") {
            Ok(d) => d >= from && d <= to,
            Err(_) => true,
        }
    }
}

/// One published version of a dataset as a DataFusion table.
#[derive(Debug)]
pub struct VersionTable {
    record: VersionRecord,
    schema: SchemaRef,
    url: ObjectStoreUrl,
}

impl VersionTable {
    /// A table over the files of `record`, read from the store registered at `url`.
    pub fn new(record: VersionRecord, url: ObjectStoreUrl) -> Self {
        let schema = Arc::new(record.schema.clone());
        VersionTable { record, schema, url }
    }

    pub fn record(&self) -> &VersionRecord {
        &self.record
    }

    /// Keeps only the partitions that can hold a row whose `column` is within `[from, to]`
    /// (see [`may_hold_dates`]); the caller still filters the rows.
    pub fn only_dates(mut self, column: &str, from: NaiveDate, to: NaiveDate) -> Self {
        let by = self.record.partition_by.clone();
        self.record.partitions.retain(|p| may_hold_dates(&by, &p.values, column, from, to));
        self
    }

    /// The version's files in `n` groups of about equal bytes, largest files first.
    fn file_groups(&self, n: usize) -> Vec<FileGroup> {
        let mut files: Vec<_> = self.record.files().collect();
        files.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.path.cmp(&b.path)));
        let n = n.clamp(1, files.len().max(1));
        let mut groups: Vec<(u64, Vec<PartitionedFile>)> =
            (0..n).map(|_| (0, Vec::new())).collect();
        for f in files {
            let smallest = groups.iter_mut().min_by_key(|g| g.0).expect("n >= 1");
            smallest.0 += f.size;
            smallest.1.push(PartitionedFile::new(f.path.clone(), f.size));
        }
        groups.into_iter().filter(|g| !g.1.is_empty()).map(|g| FileGroup::new(g.1)).collect()
    }
}

#[async_trait]
impl TableProvider for VersionTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        if let Some(checked) = state.config().get_extension::<CheckedStore>() {
            checked.expect(self.record.files());
        }
        let groups = self.file_groups(state.config().target_partitions());
        let table_schema = TableSchema::from(self.schema.clone());
        parquet_scan(state, &self.url, table_schema, &self.schema, groups, projection, limit).await
    }
}

/// A Parquet scan of known files (no listing, no probing), or an empty plan when there are none.
async fn parquet_scan(
    state: &dyn Session,
    url: &ObjectStoreUrl,
    table_schema: TableSchema,
    schema: &SchemaRef,
    groups: Vec<FileGroup>,
    projection: Option<&Vec<usize>>,
    limit: Option<usize>,
) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
    if groups.is_empty() {
        let projected = match projection {
            Some(p) => Arc::new(schema.project(p)?),
            None => schema.clone(),
        };
        return Ok(Arc::new(EmptyExec::new(projected)));
    }
    let format = ParquetFormat::default().with_options(state.table_options().parquet.clone());
    let source = format.file_source(table_schema);
    let config = FileScanConfigBuilder::new(url.clone(), source)
        .with_file_groups(groups)
        .with_projection_indices(projection.cloned())?
        .with_limit(limit)
        .build();
    format.create_physical_plan(state, config).await
}

/// The name of the column that carries a raw row's batch id.
pub const BATCH_COLUMN: &str = "_batch";

/// The name of the column that carries the landing order of a raw row's batch: 0 for the
/// batch landed first among those read, and so on ([`strata_land::BatchManifest::landing_key`]).
pub const ORDER_COLUMN: &str = "_order";

/// The type of [`BATCH_COLUMN`]: dictionary-encoded, so that a row carries two bytes, not the
/// 64 characters of the id, through the sort of the cleaned stage.
fn batch_type() -> datafusion::arrow::datatypes::DataType {
    use datafusion::arrow::datatypes::DataType;
    DataType::Dictionary(Box::new(DataType::UInt16), Box::new(DataType::Utf8))
}

/// Raw batches of one source as a table: the union of their columns (a column missing from a
/// batch reads as null), plus `_batch`, the id of the batch each row came from, and `_order`,
/// its landing order. A column whose type differs between batches is read as text (see
/// [`strata_land::columns`]).
#[derive(Debug)]
pub struct RawTable {
    file_schema: SchemaRef,
    schema: SchemaRef,
    /// Each data file: path, size, batch id, landing order.
    files: Vec<(String, u64, String, u32)>,
    url: ObjectStoreUrl,
}

/// The columns a raw table adds to its files' columns.
fn provenance_fields() -> Vec<datafusion::arrow::datatypes::FieldRef> {
    use datafusion::arrow::datatypes::{DataType, Field};
    vec![
        Arc::new(Field::new(BATCH_COLUMN, batch_type(), false)),
        Arc::new(Field::new(ORDER_COLUMN, DataType::UInt32, false)),
    ]
}

impl RawTable {
    /// The table of `batches`, of which the caller reads the columns `reads`: a column whose
    /// types across the batches cannot be read as one is an error if it is read, and left out
    /// of the table otherwise.
    pub fn new(
        batches: &[strata_land::BatchManifest],
        url: ObjectStoreUrl,
        reads: &std::collections::BTreeSet<String>,
    ) -> Result<Self> {
        let (mut fields, conflicts) = strata_land::read_columns(batches);
        if let Some(c) = conflicts.iter().find(|c| reads.contains(&c.column)) {
            let source = batches.first().map(|b| b.source.as_str()).unwrap_or_default();
            return Err(crate::error::Error::Land(c.error(source)));
        }
        if !fields.iter().any(|f| f.name() == strata_land::LINE_COLUMN) {
            // No batch (a window no batch holds a row of): the provenance column still exists.
            fields.push(datafusion::arrow::datatypes::Field::new(
                strata_land::LINE_COLUMN,
                datafusion::arrow::datatypes::DataType::Int64,
                true,
            ));
        }
        let file_schema = Arc::new(datafusion::arrow::datatypes::Schema::new(fields.clone()));
        let mut all: Vec<datafusion::arrow::datatypes::FieldRef> =
            fields.into_iter().map(Arc::new).collect();
        all.extend(provenance_fields());
        let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(all));
        let mut ordered: Vec<&strata_land::BatchManifest> = batches.iter().collect();
        ordered.sort_by(|a, b| a.landing_key().cmp(&b.landing_key()));
        let files = ordered
            .iter()
            .enumerate()
            .filter_map(|(order, b)| {
                let d = b.data.as_ref()?;
                Some((d.path.clone(), d.size, b.batch_id.clone(), order as u32))
            })
            .collect();
        Ok(RawTable { file_schema, schema, files, url })
    }
}

impl RawTable {
    /// The names of the columns found in the batches.
    pub fn schema_fields(&self) -> std::collections::BTreeSet<String> {
        self.file_schema.fields().iter().map(|f| f.name().clone()).collect()
    }
}

#[async_trait]
impl TableProvider for RawTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let n = state.config().target_partitions().clamp(1, self.files.len().max(1));
        let mut groups: Vec<Vec<PartitionedFile>> = (0..n).map(|_| Vec::new()).collect();
        for (i, (path, size, batch, order)) in self.files.iter().enumerate() {
            let mut f = PartitionedFile::new(path.clone(), *size);
            f.partition_values = vec![
                datafusion::common::ScalarValue::Dictionary(
                    Box::new(datafusion::arrow::datatypes::DataType::UInt16),
                    Box::new(datafusion::common::ScalarValue::Utf8(Some(batch.clone()))),
                ),
                datafusion::common::ScalarValue::UInt32(Some(*order)),
            ];
            groups[i % n].push(f);
        }
        let groups = groups.into_iter().filter(|g| !g.is_empty()).map(FileGroup::new).collect();
        let table_schema = TableSchema::builder(self.file_schema.clone())
            .with_table_partition_cols(provenance_fields())
            .build();
        parquet_scan(state, &self.url, table_schema, &self.schema, groups, projection, limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version record with one partition per value of `by`.
    fn record(by: &str, values: &[Option<&str>]) -> VersionRecord {
        let partitions: Vec<strata_publish::PartitionEntry> = values
            .iter()
            .map(|v| {
                serde_json::from_value(serde_json::json!({
                    "key": format!("{by}={}", v.unwrap_or(strata_publish::names::NULL_PARTITION)),
                    "values": [v], "run_id": "r", "written_in": 1, "rows": 1, "bytes": 1,
                    "files": [],
                }))
                .unwrap()
            })
            .collect();
        let head: strata_publish::RecordHead = serde_json::from_value(serde_json::json!({
            "format": "strata.version.v2", "dataset": "d", "version": 1, "parent": null,
            "publish_seq": 1, "run_id": "r", "created_at": "2026-01-01T00:00:00Z",
            "partition_by": [by], "schema": {"fields": [], "metadata": {}},
            "summary": {"rows": 0, "files": 0, "bytes": 0, "partitions": 0,
                        "partitions_written": 0, "partitions_reused": 0, "partitions_dropped": 0},
        }))
        .unwrap();
        head.with_partitions(partitions)
    }

    fn kept(table: VersionTable) -> Vec<Option<String>> {
        table.record().partitions.iter().map(|p| p.values[0].clone()).collect()
    }

    #[test]
    fn only_the_partitions_of_the_dates_are_read() {
        let url = ObjectStoreUrl::parse("strata://lake").unwrap();
        let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        let days = record(
            "day",
            &[Some("2026-01-01"), Some("2026-01-02"), Some("2026-01-05"), Some("odd"), None],
        );
        let t = VersionTable::new(days.clone(), url.clone()).only_dates(
            "day",
            d("2026-01-02"),
            d("2026-01-04"),
        );
        // In the window, plus a value that is not a date (kept: it cannot be ruled out).
        assert_eq!(kept(t), vec![Some("2026-01-02".into()), Some("odd".into())]);
        let months = record(
            "day_month",
            &[Some("2025-12"), Some("2026-01"), Some("2026-02"), Some("2026-03")],
        );
        let t = VersionTable::new(months, url.clone()).only_dates(
            "day",
            d("2026-01-31"),
            d("2026-02-01"),
        );
        assert_eq!(kept(t), vec![Some("2026-01".into()), Some("2026-02".into())]);
        // Partitioned by something else: everything is read.
        let t = VersionTable::new(days, url).only_dates("other", d("2026-01-02"), d("2026-01-02"));
        assert_eq!(kept(t).len(), 5);
    }

    #[test]
    fn table_names() {
        use VersionRef::*;
        assert_eq!(parse_table_name("orders"), Some(("orders", Current)));
        assert_eq!(parse_table_name("orders@3"), Some(("orders", Number(3))));
        assert_eq!(parse_table_name("cleaned.orders@12"), Some(("cleaned.orders", Number(12))));
        let at = chrono::DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z").unwrap();
        assert_eq!(
            parse_table_name("orders@2026-12-01T10:00:00Z"),
            Some(("orders", At(at.with_timezone(&chrono::Utc))))
        );
        assert_eq!(parse_table_name("orders@x"), None);
        assert_eq!(parse_table_name("orders@shadow:fix-1"), Some(("orders", Shadow("fix-1"))));
        assert_eq!(parse_table_name("orders@2026-12-01"), None, "a time, not a date");
    }
}
