//! No two source files of `src/` import each other, directly or through others:
//! a circle means neither file can be read, changed or tested without the
//! other. This reads the `use crate::…` and `use super::…` statements of every
//! file (tests apart), and the `crate::…` paths written inline in its code, and
//! fails on a cycle, naming its files. A `mod.rs` naming its own children
//! (`listen::accept_loop`) is a parent using what it declares, not an import,
//! and is not followed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file: `src/server/conn.rs` is `["server", "conn"]`,
/// `src/server/mod.rs` is `["server"]`, `src/lib.rs` is `[]`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src).expect("file under src");
    let mut parts: Vec<String> = relative
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        parts.pop();
    }
    parts
}

/// A file's lines of code before its inline test module (tests may import
/// whatever they check), comments cut off.
fn code_lines(text: &str) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().map(|l| l.split("//").next().unwrap_or_default()).collect();
    let test_module = lines.windows(2).position(|pair| {
        pair[0].trim() == "#[cfg(test)]"
            && pair[1].trim_start().starts_with("mod ")
            && pair[1].trim_end().ends_with('{')
    });
    lines[..test_module.unwrap_or(lines.len())].to_vec()
}

/// The `use` statements of a file's code, each whole on one line.
fn use_statements(text: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current: Option<String> = None;
    for line in code_lines(text) {
        let code = line.trim();
        if current.is_none() {
            let stripped = code
                .strip_prefix("pub(crate) ")
                .or_else(|| code.strip_prefix("pub "))
                .unwrap_or(code);
            if stripped.starts_with("use ") {
                current = Some(String::new());
            }
        }
        if let Some(statement) = current.as_mut() {
            statement.push_str(code);
            if code.ends_with(';') {
                statements.push(std::mem::take(statement));
                current = None;
            }
        }
    }
    statements
}

/// Paths written inline in code, such as `crate::cli::secret_from_line(..)`.
fn inline_paths(text: &str) -> Vec<String> {
    let mut paths = Vec::new();
    for code in code_lines(text) {
        if code.trim_start().starts_with("use ") || code.trim_start().starts_with("pub use ") {
            continue;
        }
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let before = rest[..at].chars().next_back();
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            if !before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                paths.push(tail[..end].trim_end_matches(':').to_string());
            }
            rest = &tail[end..];
        }
    }
    paths
}

/// `use a::{b, c::{d, e}};` as the paths `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str, prefix: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    match tree.find('{') {
        None => out.push(format!("{prefix}{}", tree.split(" as ").next().unwrap_or(tree).trim())),
        Some(open) => {
            let head = &tree[..open];
            let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
            let mut depth = 0;
            let mut start = 0;
            for (i, ch) in inner.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand(&inner[start..i], &format!("{prefix}{head}"), out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            if !inner[start..].trim().is_empty() {
                expand(&inner[start..], &format!("{prefix}{head}"), out);
            }
        }
    }
}

/// The file a path from `module` lands in: the longest prefix naming a file.
fn target_file(files: &BTreeMap<Vec<String>, PathBuf>, module: &[String], path: &str) -> Option<PathBuf> {
    let mut segments: Vec<&str> = path.split("::").map(str::trim).collect();
    let mut base: Vec<String> = match segments.first().copied() {
        Some("crate") => Vec::new(),
        Some("super") => module.to_vec(),
        _ => return None,
    };
    while segments.first() == Some(&"super") {
        base.pop();
        segments.remove(0);
    }
    if segments.first() == Some(&"crate") {
        segments.remove(0);
    }
    let mut best = None;
    let mut walked = base.clone();
    if files.contains_key(&walked) {
        best = files.get(&walked).cloned();
    }
    for segment in segments {
        walked.push(segment.to_string());
        match files.get(&walked) {
            Some(file) => best = Some(file.clone()),
            None => break,
        }
    }
    best
}

#[test]
fn source_files_import_no_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    let tests = |p: &PathBuf| {
        p.file_name().is_some_and(|n| n == "tests.rs") || p.components().any(|c| c.as_os_str() == "fixtures")
    };
    paths.retain(|p| !tests(p));
    let files: BTreeMap<Vec<String>, PathBuf> = paths.iter().map(|p| (module_of(&src, p), p.clone())).collect();
    assert!(files.len() > 40, "expected the relay's sources, found {}", files.len());
    let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    for (module, file) in &files {
        let text = std::fs::read_to_string(file).expect("read source");
        for statement in use_statements(&text) {
            let tree = statement
                .trim_start_matches("pub(crate) ")
                .trim_start_matches("pub ")
                .trim_start_matches("use ")
                .trim_end_matches(';');
            let mut used = Vec::new();
            expand(tree, "", &mut used);
            for path in used {
                if let Some(target) = target_file(&files, module, &path) {
                    if &target != file {
                        edges.entry(file.clone()).or_default().insert(target);
                    }
                }
            }
        }
    }
    for (module, file) in &files {
        let text = std::fs::read_to_string(file).expect("read source");
        for path in inline_paths(&text) {
            if let Some(target) = target_file(&files, module, &path) {
                if &target != file {
                    edges.entry(file.clone()).or_default().insert(target);
                }
            }
        }
    }
    let circles = cycles(&edges);
    let shown: Vec<String> = circles
        .iter()
        .map(|circle| {
            circle
                .iter()
                .map(|f| f.strip_prefix(&src).unwrap_or(f).display().to_string())
                .collect::<Vec<_>>()
                .join(" -> ")
        })
        .collect();
    assert!(shown.is_empty(), "import circles between files:\n{}", shown.join("\n"));
}

/// Strongly connected components of more than one file (Tarjan's algorithm).
fn cycles(edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Vec<Vec<PathBuf>> {
    struct Walk<'a> {
        edges: &'a BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        index: BTreeMap<&'a PathBuf, usize>,
        low: BTreeMap<&'a PathBuf, usize>,
        stack: Vec<&'a PathBuf>,
        on_stack: BTreeSet<&'a PathBuf>,
        found: Vec<Vec<PathBuf>>,
    }
    fn visit<'a>(walk: &mut Walk<'a>, node: &'a PathBuf) {
        let n = walk.index.len();
        walk.index.insert(node, n);
        walk.low.insert(node, n);
        walk.stack.push(node);
        walk.on_stack.insert(node);
        let edges = walk.edges;
        for next in edges.get(node).into_iter().flatten() {
            if !walk.index.contains_key(next) {
                visit(walk, next);
                let low = walk.low[next].min(walk.low[node]);
                walk.low.insert(node, low);
            } else if walk.on_stack.contains(next) {
                let low = walk.index[next].min(walk.low[node]);
                walk.low.insert(node, low);
            }
        }
        if walk.low[node] == walk.index[node] {
            let mut component = Vec::new();
            while let Some(top) = walk.stack.pop() {
                walk.on_stack.remove(top);
                component.push(top.clone());
                if top == node {
                    break;
                }
            }
            if component.len() > 1 {
                walk.found.push(component);
            }
        }
    }
    let mut walk = Walk {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for node in edges.keys() {
        if !walk.index.contains_key(node) {
            visit(&mut walk, node);
        }
    }
    walk.found
}

#[test]
fn the_reader_finds_a_circle_it_is_shown() {
    let a = PathBuf::from("a.rs");
    let b = PathBuf::from("b.rs");
    let c = PathBuf::from("c.rs");
    let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    edges.entry(a.clone()).or_default().insert(b.clone());
    edges.entry(b.clone()).or_default().insert(c.clone());
    assert!(cycles(&edges).is_empty());
    edges.entry(c.clone()).or_default().insert(a.clone());
    assert_eq!(cycles(&edges).len(), 1);
    let mut paths = Vec::new();
    expand("super::{conn::Ender, limits::{Pending, Slot}, Shared}", "", &mut paths);
    assert_eq!(
        paths,
        [
            "super::conn::Ender",
            "super::limits::Pending",
            "super::limits::Slot",
            "super::Shared"
        ]
    );
    let statements =
        use_statements("use crate::a::{\n    b,\n    c,\n};\nfn f() {}\n#[cfg(test)]\nmod tests {\nuse crate::z;\n}\n");
    assert_eq!(statements, ["use crate::a::{b,c,};"]);
    assert_eq!(
        inline_paths("    let x = crate::cli::secret_from_line(&l); // crate::no\nuse crate::y;\n"),
        ["crate::cli::secret_from_line"]
    );
}
