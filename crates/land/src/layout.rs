//! Where the raw layer lives in a lake, relative to the lake root. Pure path building.
//!
//! ```text
//! _raw/<source>/batch=<sha256>/…          a raw batch (its manifest `_batch.json` written last)
//! _raw/<source>/_log/<seq, 20 digits>.json the source's log of batches (crate::raw_log)
//! _raw/<source>/_index.json               the index, a cache (crate::index)
//! ```

use object_store::path::Path;

/// Directory of the raw layer, relative to the lake root.
pub const RAW_DIR: &str = "_raw";

pub fn source_prefix(source: &str) -> Path {
    Path::from(format!("{RAW_DIR}/{source}"))
}

pub fn batch_dir(source: &str, batch_id: &str) -> String {
    format!("{RAW_DIR}/{source}/batch={batch_id}")
}

pub fn manifest_path(source: &str, batch_id: &str) -> Path {
    Path::from(format!("{}/_batch.json", batch_dir(source, batch_id)))
}
