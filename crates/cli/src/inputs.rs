//! Expanding the input arguments of `land`: files, directories and glob patterns.

use std::path::{Path, PathBuf};

use crate::user_error;

/// Whether a file name has an extension `land` knows.
fn landable(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| strata_land::InputFormat::from_name(n).is_some())
}

/// Expands files, directories (recursively, landable files only) and glob patterns (`*`, `?`
/// within path components) into a sorted, de-duplicated list of files.
pub fn expand(args: &[String]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for arg in args {
        if arg.contains(['*', '?']) {
            let matches = glob(arg);
            if matches.is_empty() {
                return Err(user_error!("{arg:?} matches no file; check the pattern"));
            }
            out.extend(matches);
            continue;
        }
        let path = PathBuf::from(arg);
        let meta = std::fs::metadata(&path)
            .map_err(|e| user_error!("cannot read {arg}: {e}; check the path"))?;
        if meta.is_dir() {
            let before = out.len();
            walk(&path, &mut out)?;
            if out.len() == before {
                return Err(user_error!(
                    "{arg} is a directory with no .csv, .jsonl, .ndjson, .json or .parquet files"
                ));
            }
        } else {
            out.push(path);
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut unique = Vec::new();
    for f in out {
        let canonical = std::fs::canonicalize(&f)
            .map_err(|e| user_error!("cannot read {}: {e}", f.display()))?;
        if seen.insert(canonical.clone()) {
            unique.push(canonical);
        }
    }
    Ok(unique)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| user_error!("cannot list {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else if landable(&p) {
            out.push(p);
        }
    }
    Ok(())
}

/// Files matching a pattern whose components may hold `*` and `?`.
fn glob(pattern: &str) -> Vec<PathBuf> {
    let absolute = pattern.starts_with('/');
    let mut current = vec![if absolute { PathBuf::from("/") } else { PathBuf::from(".") }];
    let parts: Vec<&str> = pattern.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let mut next = Vec::new();
        for base in &current {
            if part.contains(['*', '?']) {
                let Ok(entries) = std::fs::read_dir(base) else { continue };
                let mut names: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_str().is_some_and(|n| wildcard(part, n)))
                    .map(|e| e.path())
                    .collect();
                names.sort();
                next.extend(
                    names.into_iter().filter(|p| if last { p.is_file() } else { p.is_dir() }),
                );
            } else {
                let p = base.join(part);
                if p.exists() {
                    next.push(p);
                }
            }
        }
        current = next;
    }
    current.into_iter().filter(|p| p.is_file()).collect()
}

/// `*` matches any run of characters, `?` any one character.
fn wildcard(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::wildcard;

    #[test]
    fn wildcards() {
        assert!(wildcard("*.csv", "a.csv"));
        assert!(wildcard("orders-*.csv", "orders-2026-01-01.csv"));
        assert!(!wildcard("orders-*.csv", "orders.csv"));
        assert!(wildcard("a?c", "abc"));
        assert!(!wildcard("a?c", "ac"));
        assert!(wildcard("*", ""));
        assert!(wildcard("*a*b", "xxaxxb"));
    }
}
