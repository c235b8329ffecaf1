//! Shadow refs: versions computed beside production and published to a name instead of the
//! datasets' pointers.
//!
//! ```text
//! _strata/shadows/<name>.json      one per shadow: the run, and per dataset the version it
//!                                  computed and the pointer entry it was built on
//! ```
//!
//! A shadow run prepares its version records as any run does (they take version numbers, and no
//! pointer entry names them), then creates its ref with create-if-absent: that one object is the
//! shadow's commit point, so a shadow of several datasets appears whole or not at all, and two
//! runs can never publish under one name. Readers name a shadow version `dataset@shadow:name`;
//! `strata promote` makes the versions current (see `strata_runs::shadow`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use object_store::path::Path;
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::lake::Lake;
use crate::names::MAX_NAME_LEN;

/// `format` of a shadow ref.
pub const SHADOW_FORMAT: &str = "strata.shadow.v1";
/// Where shadow refs live, relative to the lake root.
pub const SHADOWS_DIR: &str = "_strata/shadows";

/// A named set of versions computed by one shadow run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowRef {
    pub format: String,
    pub name: String,
    /// The run that computed the versions (and that `strata promote` continues).
    pub run_id: String,
    pub created_at: DateTime<Utc>,
    /// Dataset → the version the shadow holds of it.
    pub datasets: BTreeMap<String, ShadowVersion>,
}

/// One dataset of a shadow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowVersion {
    /// The version record the shadow run prepared (never named by a pointer entry until
    /// promoted).
    pub version: u64,
    /// The version that was current when the shadow was built (its parent), if any.
    pub base_version: Option<u64>,
    /// The pointer entry that was current then (0: none).
    pub base_seq: u64,
}

/// Checks a shadow name: one path segment of letters, digits, `_`, `-` and `.`, starting with a
/// letter or digit.
pub fn validate_shadow_name(name: &str) -> Result<()> {
    let bad = |reason: String| {
        Err(Error::InvalidName { what: "shadow name", value: name.to_string(), reason })
    };
    if name.is_empty() {
        return bad("it is empty; use letters, digits, '_', '-' or '.', e.g. fix-123".into());
    }
    if name.len() > MAX_NAME_LEN {
        return bad(format!("it is longer than {MAX_NAME_LEN} characters"));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return bad("it must start with a letter or digit".into());
    }
    if let Some(c) =
        name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return bad(format!("it contains {c:?}; use letters, digits, '_', '-' or '.'"));
    }
    if name.contains("..") {
        return bad("it contains '..'".into());
    }
    Ok(())
}

pub fn shadow_path(name: &str) -> Path {
    Path::from(format!("{SHADOWS_DIR}/{name}.json"))
}

impl ShadowRef {
    /// The version of `dataset` this shadow holds, or an error naming what it holds.
    pub fn version_of(&self, dataset: &str) -> Result<&ShadowVersion> {
        self.datasets.get(dataset).ok_or_else(|| Error::NotInShadow {
            shadow: self.name.clone(),
            dataset: dataset.to_string(),
            holds: self.datasets.keys().cloned().collect(),
        })
    }
}

impl Lake {
    /// The shadow named `name`, or `None`.
    pub async fn shadow(&self, name: &str) -> Result<Option<ShadowRef>> {
        validate_shadow_name(name)?;
        self.read_json(&shadow_path(name)).await
    }

    /// The shadow named `name`, or [`Error::ShadowNotFound`].
    pub async fn require_shadow(&self, name: &str) -> Result<ShadowRef> {
        self.shadow(name).await?.ok_or_else(|| Error::ShadowNotFound {
            shadow: name.to_string(),
            lake: self.url().into(),
        })
    }

    /// Every shadow of the lake, by name.
    pub async fn shadows(&self) -> Result<Vec<ShadowRef>> {
        let mut found = Vec::new();
        for path in self.list_paths(&Path::from(SHADOWS_DIR)).await? {
            let Some(name) = path.filename().and_then(|f| f.strip_suffix(".json")) else {
                continue;
            };
            if validate_shadow_name(name).is_err() {
                continue;
            }
            if let Some(r) = self.read_json::<ShadowRef>(&path).await? {
                found.push(r);
            }
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(found)
    }

    /// Creates the ref: the commit point of a shadow run. `Ok(false)` when the name is taken by
    /// another run's shadow; `Ok(true)` when this ref is there now (created now, or by an earlier
    /// attempt of the same run whose answer was lost).
    pub async fn create_shadow(&self, shadow: &ShadowRef) -> Result<bool> {
        let path = shadow_path(&shadow.name);
        let mut body = serde_json::to_vec_pretty(shadow)
            .map_err(|source| Error::Serialize { what: "shadow ref", source })?;
        body.push(b'\n');
        if self.create_if_absent(&path, body).await? {
            return Ok(true);
        }
        let found: Option<ShadowRef> = self.read_json(&path).await?;
        Ok(found.is_some_and(|f| f.run_id == shadow.run_id))
    }

    /// Removes the ref of `name` (nothing if it is gone already).
    pub async fn delete_shadow(&self, name: &str) -> Result<()> {
        let path = shadow_path(name);
        match self.store().delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::store("delete", &path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_names() {
        for ok in ["fix-123", "a", "Q3.restate_2", "2026-12"] {
            assert!(validate_shadow_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", ".x", "a/b", "a b", "a..b", "x@y", "é"] {
            let e = validate_shadow_name(bad).unwrap_err().to_string();
            assert!(e.contains("shadow name"), "{bad}: {e}");
        }
        assert_eq!(shadow_path("fix").as_ref(), "_strata/shadows/fix.json");
    }
}
