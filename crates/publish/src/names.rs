//! Validation of the names that become object-store paths: dataset names, column names used for
//! partitioning, and partition values. Pure functions, no IO.
//!
//! Everything a user types that ends up in a path is checked here, so that no name can climb out
//! of its dataset (`..`, `/`, `\`), hide a control character, or collide with strata's own files.

use crate::error::{Error, Result};

/// The value Hive uses for a null partition value.
pub const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// Characters that object stores percent-encode or advise against in keys; a partition value
/// containing one would not be stored under the path its record names.
pub const UNSAFE_IN_KEYS: &str = "\\{}^%`[]\"<>~#|*?";

/// Longest dataset name accepted.
pub const MAX_NAME_LEN: usize = 128;

/// Checks a dataset name: ASCII letters, digits, `_`, `-` and `.`, starting with a letter or
/// digit, without `..`, and not containing `@` (which names a version in SQL: `"orders@3"`).
pub fn validate_dataset_name(name: &str) -> Result<()> {
    let bad = |reason: &str| {
        Err(Error::InvalidName {
            what: "dataset name",
            value: name.to_string(),
            reason: reason.into(),
        })
    };
    if name.is_empty() {
        return bad("it is empty; use letters, digits, '_', '-' or '.'");
    }
    if name.len() > MAX_NAME_LEN {
        return bad(&format!("it is longer than {MAX_NAME_LEN} characters"));
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return bad(&format!("it contains the control character {:?}", c));
    }
    if name.contains("..") {
        return bad("it contains '..'; dataset names cannot refer to other paths");
    }
    if let Some(c) = name.chars().find(|c| matches!(c, '/' | '\\')) {
        return bad(&format!("it contains {c:?}; dataset names are a single path segment"));
    }
    if name.contains('@') {
        return bad("it contains '@', which strata uses to name versions (\"orders@3\")");
    }
    let first = name.chars().next().unwrap_or('_');
    if !first.is_ascii_alphanumeric() {
        return bad("it must start with a letter or digit ('_' and '.' prefixes are reserved)");
    }
    if let Some(c) =
        name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return bad(&format!("it contains {c:?}; use letters, digits, '_', '-' or '.'"));
    }
    Ok(())
}

/// Checks a column name used as a partition key (it becomes the `col` of `col=value`).
pub fn validate_partition_column(name: &str) -> Result<()> {
    let bad = |reason: &str| {
        Err(Error::InvalidName {
            what: "partition column",
            value: name.to_string(),
            reason: reason.into(),
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name == "run_id" {
        return bad("'run_id' is the staging directory of each run; rename the column");
    }
    check_segment(name).or_else(|r| bad(&r))?;
    if name.contains('=') {
        return bad("it contains '=', which separates column and value in a partition path");
    }
    Ok(())
}

/// Why `value` cannot be a partition value (the `value` of `col=value`), if it cannot: the
/// reason alone, for a row's quarantine reason.
pub fn partition_value_problem(value: &str) -> Option<String> {
    if value.is_empty() {
        return Some("an empty string cannot name a directory".into());
    }
    check_segment(value).err()
}

/// Checks a partition value (the `value` of `col=value`). Null values use [`NULL_PARTITION`].
pub fn validate_partition_value(column: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::InvalidName {
            what: "partition value",
            value: value.to_string(),
            reason: format!(
                "column {column:?} has an empty string, which cannot name a directory; \
                 clean it to NULL or a real value before publishing"
            ),
        });
    }
    check_segment(value).map_err(|reason| Error::InvalidName {
        what: "partition value",
        value: value.to_string(),
        reason: format!(
            "in column {column:?}, {reason}; clean the value or partition by another column"
        ),
    })
}

/// The longest partition value, in bytes: a path segment of most file systems holds 255.
pub const MAX_PARTITION_VALUE_LEN: usize = 200;

/// The checks shared by every path segment built from user data.
fn check_segment(s: &str) -> std::result::Result<(), String> {
    if s.len() > MAX_PARTITION_VALUE_LEN {
        return Err(format!(
            "it is {} bytes long; a partition value is at most {MAX_PARTITION_VALUE_LEN}",
            s.len()
        ));
    }
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(format!("it contains the control character {c:?}"));
    }
    if s.contains("..") {
        return Err("it contains '..'".into());
    }
    if let Some(c) = s.chars().find(|c| matches!(c, '/' | '\\')) {
        return Err(format!("it contains {c:?}"));
    }
    if s.starts_with('.') || s.starts_with('_') && s != NULL_PARTITION {
        return Err("it starts with '.' or '_', which readers treat as hidden".into());
    }
    if let Some(c) = s.chars().find(|c| UNSAFE_IN_KEYS.contains(*c)) {
        return Err(format!(
            "it contains {c:?}, which object stores escape in keys (unsafe characters: {UNSAFE_IN_KEYS})"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataset_names() {
        for ok in ["orders", "daily_revenue", "cleaned.orders", "v2-orders", "A1"] {
            assert!(validate_dataset_name(ok).is_ok(), "{ok}");
        }
        for bad in
            ["", "../x", "a/b", "a\\b", "a\nb", "_strata", ".hidden", "x@3", "a..b", "sp ace", "é"]
        {
            let err = validate_dataset_name(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidName { .. }), "{bad}: {err}");
        }
        assert!(validate_dataset_name(&"a".repeat(MAX_NAME_LEN + 1)).is_err());
    }

    #[test]
    fn partition_values() {
        for ok in ["2026-01-01", "New York", "42", "-7", NULL_PARTITION, "a=b"] {
            assert!(validate_partition_value("c", ok).is_ok(), "{ok}");
        }
        for bad in ["", "..", "a/b", "a\\b", "x\u{1}", "tab\t", ".x", "_x", "a#1", "50%", "a*"] {
            assert!(validate_partition_value("c", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn partition_columns() {
        assert!(validate_partition_column("order_date").is_ok());
        for bad in ["", "run_id", "a=b", "a/b", "..", "_x"] {
            assert!(validate_partition_column(bad).is_err(), "{bad:?}");
        }
    }
}
