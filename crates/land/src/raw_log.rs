//! The raw log of a source, `_raw/<source>/_log/<seq>.json`: the truth about which batches the
//! source has.
//!
//! Every batch is announced in its source's log *before* its manifest commits it, so the log
//! names every batch: whoever reads the entries after those it has seen, and the manifests of
//! the batches they name, misses no batch and needs no listing (the index, `crate::index`, does
//! so). Entries are created with create-if-absent, one sequence number after another, and never
//! changed. A batch may be announced more than once (a landing that crashed and ran again); it
//! is read once.

use object_store::path::Path;
use object_store::{PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use strata_publish::Lake;

use crate::error::{Error, Result};
use crate::layout::source_prefix;

/// How many entries one announcement tries before giving up: each failure means another landing
/// took the entry, so this bounds the landings racing on one source.
const APPEND_ATTEMPTS: u32 = 1000;

/// `format` of a log entry.
pub const LOG_FORMAT: &str = "strata.raw-log.v1";

fn log_path(source: &str, seq: u64) -> Path {
    Path::from(format!("{}/_log/{seq:020}.json", source_prefix(source)))
}

#[derive(Serialize, Deserialize)]
struct LogEntry {
    format: String,
    seq: u64,
    batch_id: String,
}

/// The batch log entry `seq` announces, `None` if there is no such entry.
pub(crate) async fn read(lake: &Lake, source: &str, seq: u64) -> Result<Option<String>> {
    let path = log_path(source, seq);
    let Some(bytes) = lake.get_opt(&path).await? else { return Ok(None) };
    match serde_json::from_slice::<LogEntry>(&bytes) {
        Ok(e) if e.format == LOG_FORMAT && e.seq == seq => Ok(Some(e.batch_id)),
        Ok(_) | Err(_) => Err(Error::Corrupt {
            path: path.to_string(),
            detail: "it is not a raw log entry; restore it from a backup (strata never \
                     rewrites log entries)"
                .into(),
        }),
    }
}

/// The last entry of the log, probing from `from` (an entry known to exist, or 0). Entries are
/// created one after another, so the log has no holes.
pub(crate) async fn end(lake: &Lake, source: &str, from: u64) -> Result<u64> {
    strata_publish::protocol::last_in_sequence(from, |seq| async move {
        Ok(lake.exists(&log_path(source, seq)).await?)
    })
    .await
}

/// Announces `batch_id` in the source's log: creates the entry after the log's last one (found
/// from `from`, a lower bound). Returns its sequence number. An entry of this batch already at
/// the end (an earlier attempt whose answer was lost) is reused.
pub(crate) async fn append(lake: &Lake, source: &str, batch_id: &str, from: u64) -> Result<u64> {
    let mut seq = end(lake, source, from).await? + 1;
    for _ in 0..APPEND_ATTEMPTS {
        let path = log_path(source, seq);
        let entry = LogEntry { format: LOG_FORMAT.into(), seq, batch_id: batch_id.into() };
        let body = serde_json::to_vec(&entry)
            .map_err(|source| Error::Serialize { path: path.to_string(), source })?;
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match lake.store().put_opts(&path, PutPayload::from(body), opts).await {
            Ok(_) => return Ok(seq),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => {
                if read(lake, source, seq).await?.as_deref() == Some(batch_id) {
                    return Ok(seq);
                }
                seq += 1;
            }
            Err(e) => return Err(Error::store("create", &path, e)),
        }
    }
    Err(Error::LogContended { raw_source: source.to_string(), attempts: APPEND_ATTEMPTS })
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;
    use strata_publish::OpenMode;

    #[tokio::test]
    async fn the_end_of_the_log_is_found_from_any_lower_bound() {
        let lake = Lake::open("memory://", OpenMode::Create).unwrap();
        assert_eq!(end(&lake, "orders", 0).await.unwrap(), 0);
        for i in 1..=37u64 {
            let seq = append(&lake, "orders", &format!("{i:064}"), i / 3).await.unwrap();
            assert_eq!(seq, i);
        }
        for from in [0, 1, 5, 36, 37] {
            assert_eq!(end(&lake, "orders", from).await.unwrap(), 37, "from {from}");
        }
        // Announcing a batch again takes a new entry (a landing that crashed and ran again
        // does that); a batch is read once however often it is announced.
        assert_eq!(append(&lake, "orders", &format!("{:064}", 37), 0).await.unwrap(), 38);
        assert_eq!(read(&lake, "orders", 38).await.unwrap(), Some(format!("{:064}", 37)));
        assert_eq!(read(&lake, "orders", 39).await.unwrap(), None);
        lake.store().put(&log_path("orders", 39), PutPayload::from_static(b"junk")).await.unwrap();
        let err = read(&lake, "orders", 39).await.unwrap_err();
        assert!(err.to_string().contains("_log/00000000000000000039.json"), "{err}");
    }
}
