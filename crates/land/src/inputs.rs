//! Expanding input arguments: files, directories and glob patterns.
//!
//! The walking is [`walkdir`]'s: it follows links, detects a link that leads back to a directory
//! containing it, and reports every directory it cannot read, with its path. The matching is
//! [`glob`]'s [`Pattern`]: `*`, `?` and `[...]` within one path component, `**` across any
//! number of them, and no wildcard matching a leading `.`. What is decided here: a pattern is
//! walked from its last directory before the first wildcard, directories that cannot match are
//! not entered, hidden names are skipped, and a file reached twice (through a link, or by two
//! arguments) is listed once, under its real path.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use glob::{MatchOptions, Pattern};
use walkdir::WalkDir;

use crate::error::{Error, Result};

fn input_error(path: impl std::fmt::Display, detail: impl Into<String>) -> Error {
    Error::Input { path: path.to_string(), detail: detail.into() }
}

/// How pattern components match names: case matters, a wildcard never matches `/`, and a name
/// starting with `.` is matched only by a component that starts with a literal `.`.
const MATCH: MatchOptions = MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: true,
};

/// The characters that make an argument a pattern.
const WILDCARDS: [char; 3] = ['*', '?', '['];

/// Whether a file name has an extension `land` knows.
fn landable(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| crate::InputFormat::from_name(n).is_some())
}

/// Whether a name is hidden (starts with `.`).
fn hidden(name: &OsStr) -> bool {
    name.as_encoded_bytes().first() == Some(&b'.')
}

/// Expands files, directories and glob patterns into a de-duplicated list of files: each
/// argument's files in sorted order, the arguments in the order given, each file once, under its
/// real path (links resolved). Relative arguments are taken relative to `base`.
///
/// - A file is taken as it is, whatever its name.
/// - A directory is searched recursively for files with a landable extension (`.csv`, `.jsonl`,
///   `.ndjson`, `.json`, `.parquet`); names starting with `.` are skipped.
/// - A pattern matches files: `*`, `?` and `[...]` within one path component, `**` across any
///   number of directories. A wildcard does not match a leading `.`: `.hidden/*.csv` does,
///   `*/*.csv` does not look in `.hidden`. An argument with `[` but no `*` or `?` that names an
///   existing file is taken as that file.
///
/// Links are followed. A link back to a directory that contains it, a directory that cannot be
/// read and a link to nothing where a file was wanted are errors that name the path: no input is
/// skipped silently.
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
        let path = base.join(arg);
        let before = out.len();
        let pattern = arg.contains(['*', '?'])
            || (arg.contains('[') && std::fs::symlink_metadata(&path).is_err());
        if pattern {
            glob(base, arg, &mut out)?;
            if out.len() == before && !allow_empty {
                return Err(input_error(arg, "the pattern matches no file; check it"));
            }
            continue;
        }
        let meta = std::fs::metadata(&path)
            .map_err(|e| input_error(arg, format!("{e}; check the path")))?;
        if meta.is_dir() {
            walk(&path, &mut out)?;
            if out.len() == before && !allow_empty {
                return Err(input_error(
                    arg,
                    "it is a directory with no .csv, .jsonl, .ndjson, .json or .parquet files",
                ));
            }
        } else if meta.is_file() {
            out.push((path, false));
        } else {
            return Err(input_error(
                arg,
                "it is not a regular file (a FIFO, socket or device); strata reads files only",
            ));
        }
    }
    // Paths are compared and hashed as bytes: `PathBuf`'s own comparison and hash go component
    // by component, which costs more than the rest of a glob over thousands of files.
    let mut seen: HashSet<OsString> = HashSet::new();
    let mut unique = Vec::new();
    // A file reached under two names through a hard link is the same file.
    let mut linked = HardLinks::default();
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
        if seen.insert(canonical.as_os_str().to_owned()) && !linked.is_hard_link_seen(&canonical)? {
            unique.push(canonical);
        }
    }
    Ok(unique)
}

/// The files with more than one name already seen, by device and inode.
#[derive(Default)]
struct HardLinks(HashSet<(u64, u64)>);

impl HardLinks {
    /// Whether `path` is a file with several names, one of which was seen before.
    fn is_hard_link_seen(&mut self, path: &Path) -> Result<bool> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let meta =
                std::fs::metadata(path).map_err(|e| input_error(path.display(), e.to_string()))?;
            if meta.nlink() > 1 {
                return Ok(!self.0.insert((meta.dev(), meta.ino())));
            }
        }
        let _ = path;
        Ok(false)
    }
}

/// The landable files under `dir`, in sorted order, skipping hidden names.
fn walk(dir: &Path, out: &mut Vec<(PathBuf, bool)>) -> Result<()> {
    let entries = WalkDir::new(dir)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !hidden(e.file_name()));
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                match walk_error(e, dir, |p| landable(p) && !p.file_name().is_some_and(hidden)) {
                    Some(e) => return Err(e),
                    None => continue,
                }
            }
        };
        if entry.file_type().is_file() && landable(entry.path()) {
            let not_link = !entry.path_is_symlink();
            out.push((entry.into_path(), not_link));
        }
    }
    Ok(())
}

/// The files matching `arg`, a pattern taken relative to `base`, in sorted order.
fn glob(base: &Path, arg: &str, out: &mut Vec<(PathBuf, bool)>) -> Result<()> {
    // The directory before the first wildcard is walked, and the rest is matched below it: the
    // directories of `base` (and of the literal part) are names, never patterns.
    let first = arg.find(WILDCARDS).unwrap_or(arg.len());
    let (dir, rest) = match arg[..first].rfind('/') {
        None => ("", arg),
        Some(0) => ("/", &arg[1..]),
        Some(i) => (&arg[..i], &arg[i + 1..]),
    };
    let mut parts = Vec::new();
    for part in rest.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(input_error(
                    arg,
                    "`..` cannot follow a wildcard; move it before the first `*`, `?` or `[`",
                ))
            }
            part => parts.push(part),
        }
    }
    let invalid = |e: glob::PatternError| {
        input_error(
            arg,
            format!(
                "it is not a valid pattern ({}); `*`, `?` and `[...]` match within one path \
                 component, `**` (a whole component) across directories",
                e.msg
            ),
        )
    };
    let whole = Pattern::new(&parts.join("/")).map_err(invalid)?;
    // Up to the first `**`, each component matches one level, so a directory whose name does
    // not match its level is not entered; below a `**`, hidden directories are not entered
    // unless a later component starts with a literal `.`.
    let recursive = parts.iter().position(|p| *p == "**");
    let levels: Vec<Pattern> = parts[..recursive.unwrap_or(parts.len())]
        .iter()
        .map(|p| Pattern::new(p))
        .collect::<Result<_, _>>()
        .map_err(invalid)?;
    let dotted = recursive.is_some_and(|r| parts[r + 1..].iter().any(|p| p.starts_with('.')));
    let enter = |e: &walkdir::DirEntry| match e.depth() {
        0 => true,
        depth => match levels.get(depth - 1) {
            Some(level) => e.file_name().to_str().is_some_and(|n| level.matches_with(n, MATCH)),
            None => dotted || !hidden(e.file_name()),
        },
    };

    let root = base.join(dir);
    let matches = |p: &Path| p.strip_prefix(&root).is_ok_and(|r| whole.matches_path_with(r, MATCH));
    let mut walk = WalkDir::new(&root).follow_links(true).min_depth(1).sort_by_file_name();
    if recursive.is_none() {
        walk = walk.max_depth(parts.len());
    }
    for entry in walk.into_iter().filter_entry(enter) {
        let entry = match entry {
            Ok(entry) => entry,
            // No directory before the wildcard: nothing matches.
            Err(e)
                if e.depth() == 0
                    && e.io_error().is_some_and(|e| e.kind() == ErrorKind::NotFound) =>
            {
                return Ok(())
            }
            Err(e) => match walk_error(e, &root, matches) {
                Some(e) => return Err(e),
                None => continue,
            },
        };
        if entry.file_type().is_file() && matches(entry.path()) {
            let not_link = !entry.path_is_symlink();
            out.push((entry.into_path(), not_link));
        }
    }
    Ok(())
}

/// The error to report for a failure of the walk under `root`, or `None` for a link to nothing
/// whose name is not one the walk would take (`wanted`): it is no input, as a file of another
/// extension is not.
fn walk_error(err: walkdir::Error, root: &Path, wanted: impl Fn(&Path) -> bool) -> Option<Error> {
    // walkdir names the path of every failure but one: opening a linked directory to compare
    // it with its ancestors.
    let path = err.path().unwrap_or(root).to_path_buf();
    if let Some(ancestor) = err.loop_ancestor() {
        return Some(input_error(
            path.display(),
            format!(
                "it is a link to {}, a directory that contains it (a link loop); remove the link \
                 or point it elsewhere",
                ancestor.display()
            ),
        ));
    }
    let Some(io) = err.io_error() else {
        return Some(input_error(path.display(), format!("{err}; check the path")));
    };
    let link = || std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
    let detail = match io.kind() {
        ErrorKind::NotFound if link() => {
            if !wanted(&path) {
                return None;
            }
            "it is a link to nothing; remove the link or restore what it pointed to".to_string()
        }
        ErrorKind::PermissionDenied => format!(
            "{io}; make it readable (chmod, chown) or leave it out of the inputs, since a \
             directory that cannot be read could hold inputs"
        ),
        _ => format!("{io}; check the path"),
    };
    Some(input_error(path.display(), detail))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::path::{Path, PathBuf};

    use super::{expand_inputs, expand_inputs_allow_empty};

    /// Writes each file (creating its directories) under a new temporary directory.
    fn tree(files: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for f in files {
            let p = dir.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "a\n1\n").unwrap();
        }
        dir
    }

    /// The expansion of `args` under `dir`, as paths relative to the directory's real path.
    fn expand(dir: &Path, args: &[&str]) -> Vec<String> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let real = dir.canonicalize().unwrap();
        expand_inputs(dir, &args)
            .unwrap()
            .iter()
            .map(|p| p.strip_prefix(&real).unwrap().to_string_lossy().into_owned())
            .collect()
    }

    /// The error message of expanding `args` under `dir`.
    fn error(dir: &Path, args: &[&str]) -> String {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        match expand_inputs(dir, &args) {
            Ok(files) => panic!("{args:?} expanded to {files:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn wildcards_match_within_a_component() {
        let dir = tree(&["a.csv", "b.csv", "ab.csv", "c.jsonl", "x/a.csv", "éà.csv", "dät-1.csv"]);
        let d = dir.path();
        assert_eq!(expand(d, &["*.csv"]), ["a.csv", "ab.csv", "b.csv", "dät-1.csv", "éà.csv"]);
        assert_eq!(expand(d, &["?.csv"]), ["a.csv", "b.csv"]);
        // Characters, not bytes, outside ASCII.
        assert_eq!(expand(d, &["??.csv"]), ["ab.csv", "éà.csv"]);
        assert_eq!(expand(d, &["d?t-*.csv"]), ["dät-1.csv"]);
        assert_eq!(expand(d, &["[ab].csv"]), ["a.csv", "b.csv"]);
        assert_eq!(expand(d, &["[!a]*.csv"]), ["b.csv", "dät-1.csv", "éà.csv"]);
        assert_eq!(expand(d, &["*/*.csv"]), ["x/a.csv"]);
        // A pattern's directory part is relative to `base`; an absolute pattern is not.
        let absolute = format!("{}/x/*", d.display());
        let found = expand_inputs(Path::new("/nonexistent"), &[absolute]).unwrap();
        assert_eq!(found, [d.canonicalize().unwrap().join("x/a.csv")]);
        assert!(error(d, &["nothing-*.csv"]).contains("the pattern matches no file"));
        assert!(error(d, &["missing/*.csv"]).contains("the pattern matches no file"));
        assert!(error(d, &["[.csv"]).contains("not a valid pattern"));
        // A name with `[` that exists is that file.
        std::fs::write(d.join("e[1].csv"), "a\n").unwrap();
        assert_eq!(expand(d, &["e[1].csv"]), ["e[1].csv"]);
    }

    #[test]
    fn double_star_crosses_directories() {
        let dir = tree(&["top.csv", "a/one.csv", "a/b/two.csv", "a/b/c/three.csv", "a/b/c/x.txt"]);
        let d = dir.path();
        assert_eq!(
            expand(d, &["**/*.csv"]),
            ["a/b/c/three.csv", "a/b/two.csv", "a/one.csv", "top.csv"]
        );
        assert_eq!(expand(d, &["a/**/*.csv"]), ["a/b/c/three.csv", "a/b/two.csv", "a/one.csv"]);
        assert_eq!(expand(d, &["a/**/c/*"]), ["a/b/c/three.csv", "a/b/c/x.txt"]);
        assert_eq!(expand(d, &["**/t*.csv"]), ["a/b/c/three.csv", "a/b/two.csv", "top.csv"]);
        // A pattern matches files, whatever their extension; never directories.
        assert_eq!(
            expand(d, &["a/**"]),
            ["a/b/c/three.csv", "a/b/c/x.txt", "a/b/two.csv", "a/one.csv"]
        );
        assert!(error(d, &["a/b**/*.csv"]).contains("not a valid pattern"));
    }

    #[test]
    fn hidden_names_need_a_literal_dot() {
        let dir = tree(&[
            "a.csv",
            ".hidden.csv",
            ".git/x.csv",
            "d/.x.csv",
            "d/.h/y.csv",
            "d/z.csv",
            ".data/w.csv",
        ]);
        let d = dir.path();
        assert_eq!(expand(d, &["*.csv"]), ["a.csv"]);
        assert_eq!(expand(d, &["**/*.csv"]), ["a.csv", "d/z.csv"]);
        assert_eq!(expand(d, &["*/*.csv"]), ["d/z.csv"]);
        // A directory walk skips them too, but not a directory named as an argument.
        assert_eq!(expand(d, &["d"]), ["d/z.csv"]);
        assert_eq!(expand(d, &["."]), ["a.csv", "d/z.csv"]);
        assert_eq!(expand(d, &[".data"]), [".data/w.csv"]);
        // A literal dot matches them.
        assert_eq!(expand(d, &[".*.csv"]), [".hidden.csv"]);
        assert_eq!(expand(d, &["d/.*"]), ["d/.x.csv"]);
        assert_eq!(expand(d, &[".git/*.csv"]), [".git/x.csv"]);
        assert_eq!(expand(d, &["**/.h/*.csv"]), ["d/.h/y.csv"]);
        assert_eq!(expand(d, &[".hidden.csv"]), [".hidden.csv"]);
    }

    #[test]
    fn directories_keep_landable_files_in_sorted_order() {
        let dir =
            tree(&["d/b.csv", "d/a/z.parquet", "d/a/y.txt", "d/c.ndjson", "d/B.json", "e/f.txt"]);
        let d = dir.path();
        assert_eq!(expand(d, &["d"]), ["d/B.json", "d/a/z.parquet", "d/b.csv", "d/c.ndjson"]);
        assert!(error(d, &["e"]).contains("it is a directory with no .csv"));
        assert!(error(d, &["nope.csv"]).contains("cannot land nope.csv"));
        let args = ["e".to_string(), "none-*.csv".to_string()];
        assert_eq!(expand_inputs_allow_empty(d, &args).unwrap(), Vec::<PathBuf>::new());
        // Each argument in the order given, each file once.
        assert_eq!(
            expand(d, &["d/c.ndjson", "d", "d/*.csv", "./d/b.csv"]),
            ["d/c.ndjson", "d/B.json", "d/a/z.parquet", "d/b.csv"]
        );
    }

    #[test]
    fn a_file_reached_through_links_is_listed_once_under_its_real_path() {
        let dir = tree(&["real/a.csv", "real/b.csv"]);
        let d = dir.path();
        symlink(d.join("real"), d.join("alias")).unwrap();
        symlink(d.join("real/a.csv"), d.join("link.csv")).unwrap();
        // A link is followed, and the file it leads to is named by its real path.
        assert_eq!(expand(d, &["alias"]), ["real/a.csv", "real/b.csv"]);
        assert_eq!(expand(d, &["link.csv"]), ["real/a.csv"]);
        assert_eq!(expand(d, &["**/*.csv"]), ["real/a.csv", "real/b.csv"]);
        assert_eq!(expand(d, &["."]), ["real/a.csv", "real/b.csv"]);
        assert_eq!(expand(d, &["link.csv", "real", "alias/*.csv"]), ["real/a.csv", "real/b.csv"]);
    }

    #[test]
    fn a_hard_link_is_the_same_file() {
        let dir = tree(&["real/a.csv", "real/b.csv"]);
        let d = dir.path();
        std::fs::hard_link(d.join("real/a.csv"), d.join("real/c.csv")).unwrap();
        assert_eq!(expand(d, &["real"]), ["real/a.csv", "real/b.csv"]);
        assert_eq!(expand(d, &["real/c.csv", "real/a.csv"]), ["real/c.csv"]);
    }

    #[test]
    fn a_fifo_is_refused_not_read() {
        let dir = tree(&["a.csv"]);
        let d = dir.path();
        let made = std::process::Command::new("mkfifo").arg(d.join("f.csv")).status().unwrap();
        assert!(made.success());
        let e = expand_inputs(d, &["f.csv".to_string()]).unwrap_err().to_string();
        assert!(e.contains("f.csv") && e.contains("not a regular file"), "{e}");
        // In a directory it is not a file to land.
        assert_eq!(expand(d, &["."]), ["a.csv"]);
    }

    #[test]
    fn a_link_loop_is_an_error_naming_it() {
        let dir = tree(&["a/x.csv"]);
        let d = dir.path();
        symlink(d.join("a"), d.join("a/back")).unwrap();
        for args in [["a"], ["**/*.csv"], ["a/*/*.csv"]] {
            let e = error(d, &args);
            assert!(e.contains("a/back") && e.contains("link loop"), "{args:?}: {e}");
        }
        // Two links into the same directory are no loop.
        let dir = tree(&["a/x.csv"]);
        let d = dir.path();
        symlink(d.join("a"), d.join("b")).unwrap();
        symlink(d.join("a"), d.join("c")).unwrap();
        assert_eq!(expand(d, &["**/*.csv"]), ["a/x.csv"]);
    }

    #[test]
    fn a_link_to_nothing_is_an_error_only_where_a_file_was_wanted() {
        let dir = tree(&["d/a.csv"]);
        let d = dir.path();
        // Editors' lock files are such links.
        symlink("nowhere", d.join("d/.#a.csv")).unwrap();
        symlink("nowhere", d.join("d/notes.txt")).unwrap();
        assert_eq!(expand(d, &["d"]), ["d/a.csv"]);
        assert_eq!(expand(d, &["d/*.csv"]), ["d/a.csv"]);
        symlink("nowhere", d.join("d/b.csv")).unwrap();
        for args in [["d"], ["d/*.csv"]] {
            let e = error(d, &args);
            assert!(e.contains("d/b.csv") && e.contains("a link to nothing"), "{args:?}: {e}");
        }
    }

    #[test]
    fn an_unreadable_directory_is_an_error_naming_it() {
        let dir = tree(&["d/a.csv", "d/locked/b.csv"]);
        let d = dir.path();
        let locked = d.join("d/locked");
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
        // Root reads any directory: there is nothing to test then.
        let readable = std::fs::read_dir(&locked).is_ok();
        let results: Vec<_> = [["d"], ["d/*/*.csv"], ["**/*.csv"]]
            .iter()
            .map(|args| (args, (!readable).then(|| error(d, args))))
            .collect();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
        if readable {
            eprintln!("skipped: running as a user who can read a directory with mode 000");
            return;
        }
        for (args, e) in results {
            let e = e.unwrap();
            assert!(
                e.contains("d/locked") && e.contains("denied") && e.contains("make it readable"),
                "{args:?}: {e}"
            );
        }
    }
}
