//! Expanding input arguments: files, directories and glob patterns.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

fn input_error(path: impl std::fmt::Display, detail: impl Into<String>) -> Error {
    Error::Input { path: path.to_string(), detail: detail.into() }
}

/// Whether a file name has an extension `land` knows.
fn landable(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| crate::InputFormat::from_name(n).is_some())
}

/// Expands files, directories (recursively, landable files only) and glob patterns (`*`, `?`
/// within path components) into a sorted, de-duplicated list of files. Relative arguments are
/// taken relative to `base`.
pub fn expand_inputs(base: &Path, args: &[String]) -> Result<Vec<PathBuf>> {
    expand(base, args, false)
}

/// Like [`expand_inputs`], but a pattern or directory that matches nothing yields no files
/// instead of an error (a pipeline source whose files were already landed and moved away).
pub fn expand_inputs_allow_empty(base: &Path, args: &[String]) -> Result<Vec<PathBuf>> {
    expand(base, args, true)
}

fn expand(base: &Path, args: &[String], allow_empty: bool) -> Result<Vec<PathBuf>> {
    // Each file, and whether it is known not to be a link (from its directory entry).
    let mut out: Vec<(PathBuf, bool)> = Vec::new();
    for arg in args {
        let joined = base.join(arg).to_string_lossy().to_string();
        if arg.contains(['*', '?']) {
            let matches = glob(&joined);
            if matches.is_empty() && !allow_empty {
                return Err(input_error(arg, "the pattern matches no file; check it"));
            }
            out.extend(matches);
            continue;
        }
        let path = PathBuf::from(&joined);
        let meta = std::fs::metadata(&path)
            .map_err(|e| input_error(arg, format!("{e}; check the path")))?;
        if meta.is_dir() {
            let before = out.len();
            walk(&path, &mut out)?;
            if out.len() == before && !allow_empty {
                return Err(input_error(
                    arg,
                    "it is a directory with no .csv, .jsonl, .ndjson, .json or .parquet files",
                ));
            }
        } else {
            out.push((path, false));
        }
    }
    // Paths are compared and hashed as bytes: `PathBuf`'s own comparison and hash go component
    // by component, which costs more than the rest of a glob over thousands of files.
    let mut seen: HashSet<OsString> = HashSet::new();
    let mut unique = Vec::new();
    // Each directory is resolved once; a file is resolved on its own only when it is a link.
    let mut dirs: HashMap<OsString, PathBuf> = HashMap::new();
    for (f, not_link) in out {
        let fail = |e: std::io::Error| input_error(f.display(), e.to_string());
        let link =
            !not_link && std::fs::symlink_metadata(&f).map_err(fail)?.file_type().is_symlink();
        let canonical = match (f.parent(), f.file_name()) {
            (Some(parent), Some(name)) if !link => {
                let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
                let dir = match dirs.get(parent.as_os_str()) {
                    Some(dir) => dir,
                    None => {
                        let dir = std::fs::canonicalize(parent).map_err(fail)?;
                        dirs.entry(parent.as_os_str().to_owned()).or_insert(dir)
                    }
                };
                dir.join(name)
            }
            _ => std::fs::canonicalize(&f).map_err(fail)?,
        };
        if seen.insert(canonical.as_os_str().to_owned()) {
            unique.push(canonical);
        }
    }
    Ok(unique)
}

fn walk(dir: &Path, out: &mut Vec<(PathBuf, bool)>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| input_error(dir.display(), e.to_string()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else if landable(&p) {
            out.push((p, false));
        }
    }
    Ok(())
}

/// Files matching a pattern whose components may hold `*` and `?`, each with whether its
/// directory entry showed it is not a link.
fn glob(pattern: &str) -> Vec<(PathBuf, bool)> {
    let absolute = pattern.starts_with('/');
    let mut current = vec![(if absolute { PathBuf::from("/") } else { PathBuf::from(".") }, false)];
    let parts: Vec<&str> = pattern.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let mut next = Vec::new();
        for (base, _) in &current {
            if part.contains(['*', '?']) {
                let Ok(entries) = std::fs::read_dir(base) else { continue };
                let mut names: Vec<(OsString, bool)> = entries
                    .filter_map(|e| e.ok())
                    .filter_map(|e| {
                        let name = e.file_name();
                        if !name.to_str().is_some_and(|n| wildcard(part, n)) {
                            return None;
                        }
                        // The entry's own type needs no extra call; a link is followed.
                        let kind = e.file_type().ok().filter(|t| !t.is_symlink());
                        let wanted = match kind {
                            Some(t) if last => t.is_file(),
                            Some(t) => t.is_dir(),
                            None if last => e.path().is_file(),
                            None => e.path().is_dir(),
                        };
                        wanted.then_some((name, kind.is_some()))
                    })
                    .collect();
                // Names in one directory: their order is the order of the paths.
                names.sort_unstable();
                next.extend(names.into_iter().map(|(name, not_link)| (base.join(name), not_link)));
            } else {
                let p = base.join(part);
                if p.exists() {
                    next.push((p, false));
                }
            }
        }
        current = next;
    }
    if parts.last().is_some_and(|p| p.contains(['*', '?'])) {
        current
    } else {
        current.into_iter().filter(|(p, _)| p.is_file()).collect()
    }
}

/// `*` matches any run of characters, `?` any one character.
fn wildcard(pattern: &str, name: &str) -> bool {
    if pattern.is_ascii() && name.is_ascii() {
        return matches(pattern.as_bytes(), name.as_bytes(), b'?', b'*');
    }
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    matches(&p, &n, '?', '*')
}

/// Wildcard matching over any symbols: `one` matches one symbol, `any` a run of them.
fn matches<T: PartialEq + Copy>(p: &[T], n: &[T], one: T, any: T) -> bool {
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == one || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == any {
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
    while pi < p.len() && p[pi] == any {
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
        // Characters, not bytes, outside ASCII.
        assert!(wildcard("d?t?-*.csv", "dät?-1.csv"));
        assert!(wildcard("??.csv", "éà.csv"));
        assert!(!wildcard("?.csv", "éà.csv"));
    }
}
