//! The rules of `docs/ARCHITECTURE.md` that a machine can check, read from the
//! source text: modules depend one way, and each outside concern (SQL, AMQP, I/O)
//! stays in the module that owns it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each module's layer: a module may use only modules of a lower layer. A strict
/// order leaves no room for an import circle.
const LAYERS: &[(&str, u8)] = &[
    ("activity", 0),
    ("budget", 0),
    ("clock", 0),
    ("config", 0),
    ("event", 0),
    ("metrics", 0),
    ("pace", 0),
    ("telemetry", 1),
    ("providers", 2),
    ("outbox", 3),
    ("amqp", 3),
    ("ingress", 4),
    ("publisher", 4),
    ("recovery", 4),
    ("admin", 5),
    ("relay", 6),
    ("cli", 7),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, with its text.
fn rust_files(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("read source");
                files.push((path, text));
            }
        }
    }
    files.sort();
    files
}

/// The top-level module a file belongs to (`src/outbox/sqlite.rs` → `outbox`).
fn module_of(path: &Path) -> String {
    let relative = path.strip_prefix(src()).expect("under src");
    let first = relative.components().next().expect("a component");
    first
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches(".rs")
        .to_owned()
}

/// The crate modules a text names: `crate::x…` and `use crate::{x, y::…}`.
fn crate_modules(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                found.push(name);
            }
        } else {
            found.push(
                rest.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect(),
            );
        }
    }
    found.retain(|name| !name.is_empty());
    found
}

/// Lines of non-comment code in `text` that contain `needle`.
fn code_lines_with<'a>(text: &'a str, needle: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .filter(|line| line.contains(needle))
        .collect()
}

#[test]
fn modules_use_only_lower_layers_so_the_import_graph_has_no_circle() {
    let layers: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let mut violations = Vec::new();
    for (path, text) in rust_files(&src()) {
        let module = module_of(&path);
        let Some(&own) = layers.get(module.as_str()) else {
            assert!(
                ["lib", "main"].contains(&module.as_str()),
                "{} is not in the layer table of this test and docs/ARCHITECTURE.md",
                path.display()
            );
            continue;
        };
        for used in crate_modules(&text) {
            if used == module {
                continue;
            }
            match layers.get(used.as_str()) {
                Some(&layer) if layer < own => {}
                _ => violations.push(format!("{} uses crate::{used}", path.display())),
            }
        }
    }
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn the_layer_check_sees_grouped_and_nested_imports() {
    assert_eq!(
        crate_modules("use crate::{config::Config, event};\nlet x = crate::clock::now();"),
        vec!["config", "event", "clock"]
    );
}

#[test]
fn only_the_outbox_speaks_sql_or_names_a_backend() {
    let outbox = src().join("outbox");
    for (path, text) in rust_files(&src()) {
        if path.starts_with(&outbox) {
            continue;
        }
        for needle in [
            "rusqlite",
            "sqlite::",
            "Sqlite",
            "Postgres",
            "postgres::",
            "tokio_postgres",
            "deadpool",
        ] {
            let lines = code_lines_with(&text, needle);
            assert!(lines.is_empty(), "{}: {lines:?}", path.display());
        }
    }
}

#[test]
fn only_amqp_and_the_publisher_speak_amqp() {
    for (path, text) in rust_files(&src()) {
        let module = module_of(&path);
        if module == "amqp" || module == "publisher" {
            continue;
        }
        let lines = code_lines_with(&text, "lapin");
        assert!(lines.is_empty(), "{}: {lines:?}", path.display());
    }
}

#[test]
fn providers_are_pure_and_ingress_never_awaits_the_broker() {
    for (path, text) in rust_files(&src()) {
        let forbidden: &[&str] = match module_of(&path).as_str() {
            "providers" => &["crate::metrics", "tokio", "std::fs", "std::net"],
            "ingress" => &["crate::amqp", "crate::publisher"],
            _ => continue,
        };
        for needle in forbidden {
            let lines = code_lines_with(&text, needle);
            assert!(lines.is_empty(), "{}: {lines:?}", path.display());
        }
    }
}

/// The string literals of Rust source `text` (plain, byte and raw strings), as
/// written: a small lexer that passes over comments, char literals and
/// lifetimes, enough for the rules below.
fn string_literals(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'/' if bytes.get(at + 1) == Some(&b'/') => {
                at = text[at..].find('\n').map_or(bytes.len(), |end| at + end);
            }
            b'r' if !at.checked_sub(1).is_some_and(|before| {
                bytes[before].is_ascii_alphanumeric() || bytes[before] == b'_'
            }) && matches!(bytes.get(at + 1), Some(b'"' | b'#')) =>
            {
                let hashes = text[at + 1..].bytes().take_while(|b| *b == b'#').count();
                let open = at + 1 + hashes;
                if bytes.get(open) != Some(&b'"') {
                    at += 1;
                    continue;
                }
                let close = format!("\"{}", "#".repeat(hashes));
                let end = text[open + 1..]
                    .find(&close)
                    .map_or(bytes.len(), |end| open + 1 + end);
                found.push(&text[open + 1..end]);
                at = end + close.len();
            }
            b'"' => {
                let mut end = at + 1;
                while end < bytes.len() && bytes[end] != b'"' {
                    end += if bytes[end] == b'\\' { 2 } else { 1 };
                }
                found.push(&text[at + 1..end.min(bytes.len())]);
                at = end + 1;
            }
            b'\'' => {
                // A char literal ('x', '\n', '"') or a lifetime ('a).
                at += match (bytes.get(at + 1), bytes.get(at + 2)) {
                    (Some(b'\\'), _) => text[at + 2..].find('\'').map_or(1, |end| end + 3),
                    (Some(_), Some(b'\'')) => 3,
                    _ => 1,
                };
            }
            _ => at += 1,
        }
    }
    found
}

/// Whether a literal is an SQL statement: it starts with a statement's keyword.
fn is_sql(literal: &str) -> bool {
    const STATEMENTS: [&str; 17] = [
        "SELECT", "INSERT", "UPDATE", "DELETE", "WITH", "CREATE", "ALTER", "DROP", "PRAGMA",
        "BEGIN", "COMMIT", "ROLLBACK", "SET", "RESET", "VACUUM", "ANALYZE", "LISTEN",
    ];
    let start = literal.trim_start();
    // `BEGIN` also opens a PEM block's line; SQL's is followed by its end, or a
    // transaction's mode.
    let begins = [
        "BEGIN;",
        "BEGIN IMMEDIATE",
        "BEGIN TRANSACTION",
        "BEGIN ISOLATION",
    ];
    start == "BEGIN"
        || begins.iter().any(|b| start.starts_with(b))
        || STATEMENTS.iter().filter(|k| **k != "BEGIN").any(|keyword| {
            start
                .strip_prefix(keyword)
                .is_some_and(|rest| rest.starts_with([' ', '\n', ';']) || rest.is_empty())
        })
}

#[test]
fn the_literal_reader_sees_strings_and_passes_over_chars_and_comments() {
    let text = r##"let a = "SELECT 1"; // "not this"
let b: &'static str = r#"UPDATE "x""#; let c = '"'; let d = b"DELETE";"##;
    assert_eq!(
        string_literals(text),
        ["SELECT 1", "UPDATE \"x\"", "DELETE"]
    );
    assert!(is_sql("\n  SELECT id FROM t") && is_sql("BEGIN IMMEDIATE"));
    assert!(!is_sql("SELECTED") && !is_sql("BEGIN RSA PRIVATE KEY"));
}

/// Nothing outside a backend's `sql.rs` (or the shared `outbox/sql.rs`) speaks SQL,
/// but for a driver's own tests, which arrange rows of older releases.
#[test]
fn only_the_sql_files_of_the_outbox_speak_sql() {
    let outbox = src().join("outbox");
    let mut violations = Vec::new();
    for (path, text) in rust_files(&src()) {
        let own_sql = path.starts_with(&outbox)
            && path
                .file_name()
                .is_some_and(|name| name == "sql.rs" || name == "tests.rs");
        if own_sql {
            continue;
        }
        for literal in string_literals(&text).into_iter().filter(|l| is_sql(l)) {
            violations.push(format!("{}: {literal:?}", path.display()));
        }
    }
    assert!(violations.is_empty(), "{violations:#?}");
}

/// The tests and the bench reach the relay's tables only through the drivers
/// (`hookrelay::testing`) or the `outbox` commands: they open no SQLite file and
/// their SQL (databases of their own, server settings) names none of its tables.
#[test]
fn tests_and_the_bench_never_touch_the_outbox_tables() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    const TABLES: [&str; 5] = ["hr_", "events", "deliveries", "attempts", "health"];
    let mut violations = Vec::new();
    for dir in ["tests", "bench/src", "testkit/src"] {
        let dir = root.join(dir);
        if !dir.exists() {
            continue;
        }
        for (path, text) in rust_files(&dir) {
            if path.ends_with("architecture.rs") {
                continue;
            }
            for line in code_lines_with(&text, "rusqlite") {
                violations.push(format!("{}: {line}", path.display()));
            }
            for literal in string_literals(&text).into_iter().filter(|l| is_sql(l)) {
                if TABLES.iter().any(|table| literal.contains(table)) {
                    violations.push(format!("{}: {literal:?}", path.display()));
                }
            }
        }
    }
    assert!(violations.is_empty(), "{violations:#?}");
}

/// The `tracing::info!`, `warn!` and `error!` calls of `text`, each as written
/// from the macro's name to its closing parenthesis.
fn log_calls(text: &str) -> Vec<&str> {
    let mut calls = Vec::new();
    for level in ["tracing::info!(", "tracing::warn!(", "tracing::error!("] {
        for (start, _) in text.match_indices(level) {
            let mut depth = 0;
            let end = text[start..]
                .char_indices()
                .find(|(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    *c == ')' && depth == 0
                })
                .map_or(text.len(), |(end, _)| start + end + 1);
            calls.push(&text[start..end]);
        }
    }
    calls
}

/// Nothing logs a line per request that a sender controls without a `Throttle`
/// (whose `allow()` gives the `left_out` count every such line carries): a flood
/// of bad requests must not become a flood of log lines. The lines of these files
/// that are not per request are named here, with why.
#[test]
fn log_lines_a_sender_can_cause_are_throttled() {
    const NOT_PER_REQUEST: [(&str, &str); 3] = [
        // The listener's own socket error, not a request's.
        ("ingress.rs", "accept failed"),
        // Once, at shutdown.
        ("ingress.rs", "requests still in flight"),
        // A failing outbox, once per scrape of the admin listener.
        ("mod.rs", "cannot read outbox stats"),
    ];
    let mut unthrottled = Vec::new();
    let admin = src().join("admin");
    for (path, text) in rust_files(&src()) {
        if !(path.ends_with("ingress.rs") || path.starts_with(&admin)) {
            continue;
        }
        let file = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        for call in log_calls(&text) {
            let excepted = NOT_PER_REQUEST
                .iter()
                .any(|(f, words)| *f == file && call.contains(words));
            if !call.contains("left_out") && !excepted {
                unthrottled.push(format!("{}: {call}", path.display()));
            }
        }
    }
    assert!(unthrottled.is_empty(), "{unthrottled:#?}");
}

#[test]
fn the_log_rule_sees_whole_calls() {
    let text = "tracing::warn!(a = %f(x), \"one\"); tracing::info!(left_out, \"two\")";
    assert_eq!(
        log_calls(text),
        [
            "tracing::info!(left_out, \"two\")",
            "tracing::warn!(a = %f(x), \"one\")"
        ]
    );
}

/// The files of one crate and the files each one imports, read from the source
/// text as [`crate_modules`] reads `src/`, but to the file: `crate::a::b::…` (and
/// `use crate::{a, b::c}`) names the file of the deepest module of the path that
/// is one (`a/b.rs` or `a/b/mod.rs`, else `a.rs` or `a/mod.rs`), or the crate root
/// when it names an item of the root; a path that starts with a module the file
/// declares (`mod b;` … `b::f()`) is read the same way from the file's own module.
/// References between files are written so (not with `super::`).
fn file_imports(src: &Path, root: &str) -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let module_path = |file: &Path| -> Vec<String> {
        let relative = file.strip_prefix(src).expect("under src");
        let mut parts: Vec<String> = relative
            .components()
            .map(|c| {
                c.as_os_str()
                    .to_string_lossy()
                    .trim_end_matches(".rs")
                    .to_owned()
            })
            .collect();
        let last = parts.last().map(String::as_str);
        if last == Some("mod") || (parts.len() == 1 && last == Some(root)) {
            parts.pop();
        }
        parts
    };
    let file_of = |path: &[String]| -> PathBuf {
        for depth in (1..=path.len()).rev() {
            let dir = path[..depth - 1]
                .iter()
                .fold(src.to_owned(), |d, p| d.join(p));
            let name = &path[depth - 1];
            for candidate in [
                dir.join(format!("{name}.rs")),
                dir.join(name).join("mod.rs"),
            ] {
                if candidate.is_file() {
                    return candidate;
                }
            }
        }
        src.join(format!("{root}.rs"))
    };
    let mut graph = BTreeMap::new();
    for (file, text) in rust_files(src) {
        let own = module_path(&file);
        let mut paths: Vec<Vec<String>> = item_paths(&text, "crate::");
        for child in declared_modules(&text) {
            for tail in item_paths(&text, &format!("{child}::")) {
                let mut path = own.clone();
                path.push(child.clone());
                path.extend(tail);
                paths.push(path);
            }
        }
        let used: BTreeSet<PathBuf> = paths
            .iter()
            .map(|path| file_of(path))
            .filter(|used| *used != file)
            .collect();
        graph.insert(file, used);
    }
    graph
}

/// The modules a file declares (`mod x;`, `pub mod x;`).
fn declared_modules(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let rest = line.strip_prefix("pub ").unwrap_or(line);
            let name = rest.strip_prefix("mod ")?.strip_suffix(';')?;
            Some(name.trim().to_owned())
        })
        .collect()
}

/// The paths after each `prefix` (at the start of a path, not inside one), one
/// per item of a `{…}` group, nested groups included: `crate::a::{b, c::{d, e}}`
/// gives `a::b`, `a::c::d`, `a::c::e`. `self` in a group is its own prefix.
fn item_paths(text: &str, prefix: &str) -> Vec<Vec<String>> {
    fn ident(s: &str) -> &str {
        let end = s
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(s.len());
        &s[..end]
    }
    fn walk(rest: &str, path: Vec<String>, out: &mut Vec<Vec<String>>) {
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut start = 0;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        walk(group[start..i].trim(), path.clone(), out);
                        return;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        walk(group[start..i].trim(), path.clone(), out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            return;
        }
        let name = ident(rest);
        if name.is_empty() {
            if !path.is_empty() {
                out.push(path);
            }
            return;
        }
        let mut path = path;
        if name != "self" {
            path.push(name.to_owned());
        }
        match rest[name.len()..].strip_prefix("::") {
            Some(more) => walk(more, path, out),
            None => out.push(path),
        }
    }
    let mut out = Vec::new();
    for (at, _) in text.match_indices(prefix) {
        let before = text[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        walk(&text[at + prefix.len()..], Vec::new(), &mut out);
    }
    out
}

/// The import circles of a graph, each as its files in order (the first again at
/// the end).
fn import_circles(graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Vec<Vec<PathBuf>> {
    fn visit(
        file: &PathBuf,
        graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        stack: &mut Vec<PathBuf>,
        done: &mut BTreeSet<PathBuf>,
        circles: &mut Vec<Vec<PathBuf>>,
    ) {
        if let Some(at) = stack.iter().position(|f| f == file) {
            let mut circle = stack[at..].to_vec();
            circle.push(file.clone());
            circles.push(circle);
            return;
        }
        if !done.insert(file.clone()) {
            return;
        }
        stack.push(file.clone());
        for used in graph.get(file).into_iter().flatten() {
            visit(used, graph, stack, done, circles);
        }
        stack.pop();
    }
    let mut circles = Vec::new();
    let mut done = BTreeSet::new();
    for file in graph.keys() {
        visit(file, graph, &mut Vec::new(), &mut done, &mut circles);
    }
    circles
}

#[test]
fn no_two_files_of_the_bench_or_the_testkit_import_each_other() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (src, root) in [
        (workspace.join("bench/src"), "main"),
        (workspace.join("testkit/src"), "lib"),
    ] {
        let graph = file_imports(&src, root);
        assert!(
            graph.len() > 1 && graph.values().any(|used| !used.is_empty()),
            "{}: no files or no imports read",
            src.display()
        );
        let circles: Vec<String> = import_circles(&graph)
            .iter()
            .map(|circle| {
                circle
                    .iter()
                    .map(|f| f.strip_prefix(&src).unwrap_or(f).display().to_string())
                    .collect::<Vec<_>>()
                    .join(" → ")
            })
            .collect();
        assert!(circles.is_empty(), "{}: {circles:#?}", src.display());
    }
}

#[test]
fn the_file_check_sees_nested_groups_child_modules_and_circles() {
    assert_eq!(
        item_paths(
            "use crate::a::{b, c::{d, self}};\nx = crate::e();\ny = hook::crate::f;",
            "crate::"
        ),
        vec![
            vec!["a", "b"],
            vec!["a", "c", "d"],
            vec!["a", "c"],
            vec!["e"]
        ]
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path();
    std::fs::create_dir(src.join("family")).expect("mkdir");
    for (file, text) in [
        (
            "main.rs",
            "mod family;\nmod shared;\nfn main() { family::run(); }",
        ),
        ("shared.rs", "pub fn help() {}"),
        ("family/mod.rs", "pub mod one;\npub fn run() { one::go(); }"),
        (
            "family/one.rs",
            "use crate::shared::help;\npub fn go() { crate::family::run(); }",
        ),
    ] {
        std::fs::write(src.join(file), text).expect("write");
    }
    let graph = file_imports(src, "main");
    assert_eq!(
        graph[&src.join("family/one.rs")],
        BTreeSet::from([src.join("shared.rs"), src.join("family/mod.rs")])
    );
    assert_eq!(
        import_circles(&graph),
        vec![vec![
            src.join("family/mod.rs"),
            src.join("family/one.rs"),
            src.join("family/mod.rs")
        ]]
    );
}
