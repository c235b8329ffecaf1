//! The raw log of a source, `_raw/<source>/_log/<seq>.json`: the truth about which batches the
//! source has.
//!
//! Every batch is announced in its source's log *before* its manifest commits it, so the log
//! names every batch: whoever reads the entries after those it has seen, and the manifests of
//! the batches they name, misses no batch and needs no listing (the index, `crate::index`, does
//! so). The log is a gap-free numbered log ([`strata_publish::numbered`]): entries are created
//! with create-if-absent, one sequence number after another, and never changed. A batch may be
//! announced more than once (a landing that crashed and ran again); it is read once.

use serde::{Deserialize, Serialize};
use strata_publish::numbered::{Naming, NumberedLog};
use strata_publish::Lake;

use crate::error::{Error, Result};
use crate::layout::source_prefix;

/// `format` of a log entry.
pub const LOG_FORMAT: &str = "strata.raw-log.v1";

/// How many entries one announcement tries before giving up: each failure means another landing
/// took the entry, so this bounds the landings racing on one source.
const APPEND_ATTEMPTS: u32 = 1000;

/// The log of `source`.
fn log(source: &str) -> NumberedLog {
    NumberedLog::new(format!("{}/_log", source_prefix(source)), Naming::Exact { width: 20 })
}

#[derive(Serialize, Deserialize)]
struct LogEntry {
    format: String,
    seq: u64,
    batch_id: String,
}

/// The batch log entry `seq` announces, `None` if there is no such entry.
pub(crate) async fn read(lake: &Lake, source: &str, seq: u64) -> Result<Option<String>> {
    let Some(bytes) = log(source).read(lake, seq).await? else { return Ok(None) };
    match serde_json::from_slice::<LogEntry>(&bytes) {
        Ok(e) if e.format == LOG_FORMAT && e.seq == seq => Ok(Some(e.batch_id)),
        Ok(_) | Err(_) => Err(Error::Corrupt {
            path: log(source).path(seq).to_string(),
            detail: "it is not a raw log entry; restore it from a backup (strata never \
                     rewrites log entries)"
                .into(),
        }),
    }
}

/// The last entry of the log, probing from `from` (an entry known to exist, or 0).
pub(crate) async fn end(lake: &Lake, source: &str, from: u64) -> Result<u64> {
    Ok(log(source).last(lake, from).await?)
}

/// Announces `batch_id` in the source's log: creates the entry after the log's last one (found
/// from `from`, a lower bound). Returns its sequence number. An entry of this batch already at
/// the end (an earlier attempt whose answer was lost) is reused.
pub(crate) async fn append(lake: &Lake, source: &str, batch_id: &str, from: u64) -> Result<u64> {
    let log = log(source);
    let mut seq = log.last(lake, from).await? + 1;
    for _ in 0..APPEND_ATTEMPTS {
        let entry = LogEntry { format: LOG_FORMAT.into(), seq, batch_id: batch_id.into() };
        let body = serde_json::to_vec(&entry)
            .map_err(|source| Error::Serialize { path: log.path(seq).to_string(), source })?;
        if log.create(lake, seq, body).await?
            || read(lake, source, seq).await?.as_deref() == Some(batch_id)
        {
            return Ok(seq);
        }
        seq += 1;
    }
    Err(Error::LogContended { raw_source: source.to_string(), attempts: APPEND_ATTEMPTS })
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::{ObjectStoreExt, PutPayload};
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
        lake.store().put(&log("orders").path(39), PutPayload::from_static(b"junk")).await.unwrap();
        let err = read(&lake, "orders", 39).await.unwrap_err();
        assert!(err.to_string().contains("_log/00000000000000000039.json"), "{err}");
    }

    /// The entries are byte for byte what strata always wrote: compact JSON, no newline.
    #[tokio::test]
    async fn entries_keep_their_format() {
        let lake = Lake::open("memory://", OpenMode::Create).unwrap();
        append(&lake, "orders", "ab", 0).await.unwrap();
        let path = object_store::path::Path::from("_raw/orders/_log/00000000000000000001.json");
        let body = lake.get_opt(&path).await.unwrap().unwrap();
        assert_eq!(&body[..], br#"{"format":"strata.raw-log.v1","seq":1,"batch_id":"ab"}"#);
    }
}
