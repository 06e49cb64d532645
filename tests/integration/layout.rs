//! The house as docs/architecture.md draws it: every source file in the layer table once, each
//! opening with a `//!` line; folders import each other without circles and never import the
//! layers above them; only the entry and the commands read the configuration; no file holds
//! more than a tenth of the crate's non-test lines.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under src/ but the reference backend's (src/bin/), relative to src/.
fn sources() -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in fs::read_dir(dir).expect("read src/").flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let src = root().join("src");
    let mut all = Vec::new();
    walk(&src, &mut all);
    let mut rel: Vec<String> = all
        .iter()
        .map(|p| {
            p.strip_prefix(&src)
                .expect("under src/")
                .to_string_lossy()
                .into_owned()
        })
        .filter(|p| !p.starts_with("bin/"))
        .collect();
    rel.sort();
    rel
}

/// A file's text before its first `#[cfg(test)]` (what the product is built from).
fn non_test(rel: &str) -> String {
    let text = fs::read_to_string(root().join("src").join(rel)).expect("read source");
    match text.find("#[cfg(test)]") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// The top-level unit a file belongs to: its folder, or the file's own name at the top.
fn unit(rel: &str) -> String {
    let first = rel.split('/').next().unwrap_or(rel);
    first.trim_end_matches(".rs").to_string()
}

#[test]
fn the_layer_table_names_every_source_file_once() {
    let doc = fs::read_to_string(root().join("docs/architecture.md")).expect("architecture.md");
    let mut listed: Vec<String> = Vec::new();
    for row in doc
        .lines()
        .filter(|l| l.starts_with("| ") && l.contains("`src/"))
    {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (folder, files) = (cells[2].trim_matches('`'), cells[3]);
        let folder = folder.trim_start_matches("src/");
        for f in files.split(',').map(|f| f.trim().trim_matches('`')) {
            listed.push(format!("{folder}{f}"));
        }
    }
    listed.sort();
    let mut dup = listed.clone();
    dup.dedup();
    assert_eq!(
        dup.len(),
        listed.len(),
        "a file is listed twice: {listed:?}"
    );
    assert_eq!(
        listed,
        sources(),
        "docs/architecture.md's layer table and src/ differ"
    );
}

#[test]
fn every_source_file_opens_with_a_doc_line() {
    for rel in sources() {
        let text = fs::read_to_string(root().join("src").join(&rel)).expect("read");
        assert!(
            text.starts_with("//!"),
            "src/{rel} does not open with a `//!` line"
        );
    }
}

#[test]
fn folders_import_each_other_without_circles_and_never_upward() {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for rel in sources() {
        let from = unit(&rel);
        let text = non_test(&rel);
        for (i, _) in text.match_indices("crate::") {
            let to: String = text[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !to.is_empty() && to != from {
                edges.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    // Only the entry point imports the commands; only they (and the entry) import the loop.
    for (from, tos) in &edges {
        if tos.contains("cmd") {
            assert_eq!(from, "main", "{from} imports cmd/, which sits above it");
        }
        if tos.contains("agent") {
            assert!(
                from == "main" || from == "cmd",
                "{from} imports the loop (agent/), which sits above it"
            );
        }
    }
    // Components take their own typed options: only the entry and the commands read `Config`.
    for (from, tos) in &edges {
        if tos.contains("config") {
            assert!(
                ["main", "cli", "cmd"].contains(&from.as_str()),
                "{from} imports config: components take typed options (cmd/options.rs builds them)"
            );
        }
    }
    // No circles: repeatedly remove units that import nothing left.
    let mut left = edges.clone();
    loop {
        let sinks: Vec<String> = left
            .iter()
            .filter(|(_, tos)| tos.iter().all(|t| !left.contains_key(t)))
            .map(|(k, _)| k.clone())
            .collect();
        if sinks.is_empty() {
            break;
        }
        for k in sinks {
            left.remove(&k);
        }
    }
    assert!(
        left.is_empty(),
        "folders that import each other in a circle: {left:?}"
    );
}

/// The module a `crate::` path names: `a/b` when `src/a/b.rs` exists, else `a` (a top file or a
/// folder's facade).
fn module_of(path: &str) -> String {
    let mut parts = path.split("::");
    let a = parts.next().unwrap_or_default();
    if let Some(b) = parts.next() {
        if root().join("src").join(a).join(format!("{b}.rs")).exists() {
            return format!("{a}/{b}");
        }
    }
    a.to_string()
}

/// Files import each other without circles too (a folder's facade, `mod.rs`, aside).
#[test]
fn files_import_each_other_without_circles() {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for rel in sources() {
        let from = rel
            .trim_end_matches(".rs")
            .trim_end_matches("/mod")
            .to_string();
        let text = non_test(&rel);
        for (i, _) in text.match_indices("crate::") {
            let path: String = text[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let to = module_of(path.trim_end_matches(':'));
            let facade = !to.contains('/') && root().join("src").join(&to).is_dir();
            if to != from && !facade {
                edges.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    let mut left = edges;
    loop {
        let sinks: Vec<String> = left
            .iter()
            .filter(|(_, tos)| tos.iter().all(|t| !left.contains_key(t)))
            .map(|(k, _)| k.clone())
            .collect();
        if sinks.is_empty() {
            break;
        }
        for k in sinks {
            left.remove(&k);
        }
    }
    assert!(
        left.is_empty(),
        "files that import each other in a circle: {left:?}"
    );
}

#[test]
fn no_file_holds_more_than_a_tenth_of_the_crate() {
    let sizes: Vec<(String, usize)> = sources()
        .into_iter()
        .map(|rel| {
            let n = non_test(&rel).lines().count();
            (rel, n)
        })
        .collect();
    let total: usize = sizes.iter().map(|(_, n)| n).sum();
    for (rel, n) in sizes {
        assert!(
            n * 10 <= total,
            "src/{rel} holds {n} of the crate's {total} non-test lines (more than a tenth)"
        );
    }
}
