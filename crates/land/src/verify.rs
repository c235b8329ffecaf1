//! Checking raw batches against their manifests before they are used.
//!
//! A raw batch's manifest records the size and sha256 of its data file. Nothing in the raw layer
//! is ever rewritten, so a data file that does not match is damaged (a bad disk, a bit flip, a
//! hand edit), and reading it would publish whatever it now says. The cleaned stage reads a
//! batch's data file through DataFusion's Parquet reader, by ranges (the footer, then the column
//! chunks it needs), so the check is a separate pass over the whole file, in large ranges, before
//! the file is used.

use futures::StreamExt;
use object_store::path::Path;
use object_store::ObjectStoreExt;
use sha2::{Digest, Sha256};
use strata_publish::Lake;

use crate::error::{Error, Result};
use crate::landing::{read_ranges, BatchManifest};

/// What a data file holds, against what its manifest records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileCheck {
    Intact,
    Missing,
    Size { found: u64, recorded: u64 },
    Sha256 { found: String, recorded: String },
}

/// The verdict on a data file of `size` bytes whose content hashes to `sha256` (`None`: not
/// read, since the size already differs), against the `recorded` size and sha256.
pub fn check_file(
    found: Option<(u64, Option<&str>)>,
    recorded_size: u64,
    recorded_sha256: &str,
) -> FileCheck {
    match found {
        None => FileCheck::Missing,
        Some((size, _)) if size != recorded_size => {
            FileCheck::Size { found: size, recorded: recorded_size }
        }
        Some((_, Some(sha))) if !sha.eq_ignore_ascii_case(recorded_sha256) => {
            FileCheck::Sha256 { found: sha.to_string(), recorded: recorded_sha256.to_string() }
        }
        Some(_) => FileCheck::Intact,
    }
}

/// Checks the data file of every batch against the size and sha256 its manifest records, two
/// files at a time; the first damaged one is an [`Error::DamagedBatch`].
pub async fn verify_batches(lake: &Lake, batches: &[BatchManifest]) -> Result<()> {
    let checks = batches.iter().map(|b| verify_batch(lake, b));
    let mut results = futures::stream::iter(checks).buffered(2);
    while let Some(result) = results.next().await {
        result?;
    }
    Ok(())
}

/// Checks the data file of one batch (see [`verify_batches`]).
pub async fn verify_batch(lake: &Lake, batch: &BatchManifest) -> Result<()> {
    let Some(data) = &batch.data else { return Ok(()) };
    let path = Path::from(data.path.as_str());
    let found = match lake.store().head(&path).await {
        Ok(meta) if meta.size != data.size => Some((meta.size, None)),
        Ok(meta) => {
            let mut hasher = Sha256::new();
            let store = lake.store().clone();
            let mut stream = read_ranges(store, path.clone(), data.path.clone(), meta);
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(chunk) => hasher.update(&chunk),
                    // Gone or replaced while it was read: not what was landed either.
                    Err(Error::Input { .. }) => {
                        return Err(damaged(batch, &data.path, "changed while it was being read"))
                    }
                    Err(e) => return Err(e),
                }
            }
            Some((data.size, Some(hex::encode(hasher.finalize()))))
        }
        Err(object_store::Error::NotFound { .. }) => None,
        Err(e) => return Err(Error::store("read", &data.path, e)),
    };
    let found = found.as_ref().map(|(size, sha)| (*size, sha.as_deref()));
    match check_file(found, data.size, &data.sha256) {
        FileCheck::Intact => Ok(()),
        verdict => Err(damaged(batch, &data.path, &describe(&verdict))),
    }
}

fn describe(verdict: &FileCheck) -> String {
    match verdict {
        FileCheck::Intact => "intact".into(),
        FileCheck::Missing => "is missing".into(),
        FileCheck::Size { found, recorded } => {
            format!("has {found} bytes where its manifest records {recorded}")
        }
        FileCheck::Sha256 { found, recorded } => format!(
            "has sha256 {}… where its manifest records {}…",
            &found[..found.len().min(12)],
            &recorded[..recorded.len().min(12)]
        ),
    }
}

fn damaged(batch: &BatchManifest, path: &str, detail: &str) -> Error {
    Error::DamagedBatch {
        raw_source: batch.source.clone(),
        batch: batch.batch_id.clone(),
        input: batch.input.name.clone(),
        path: path.to_string(),
        detail: detail.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_intact_only_with_the_recorded_size_and_sha256() {
        let sha = "ab".repeat(32);
        assert_eq!(check_file(Some((10, Some(&sha))), 10, &sha), FileCheck::Intact);
        assert_eq!(check_file(Some((10, Some(&sha.to_uppercase()))), 10, &sha), FileCheck::Intact);
        assert_eq!(check_file(None, 10, &sha), FileCheck::Missing);
        assert_eq!(
            check_file(Some((9, None)), 10, &sha),
            FileCheck::Size { found: 9, recorded: 10 }
        );
        let other = "cd".repeat(32);
        assert_eq!(
            check_file(Some((10, Some(&other))), 10, &sha),
            FileCheck::Sha256 { found: other.clone(), recorded: sha.clone() }
        );
        assert!(describe(&check_file(Some((10, Some(&other))), 10, &sha)).contains("cdcdcdcdcdcd…"));
    }
}
