//! The module graph, as a test: layers point down.
//!
//! ```text
//! cli (+ config, telemetry: only the CLI reads configuration and builds clients)
//!  → load, sync, checklist, mock          engines: return values and events, never print
//!  → store, kfr, maskinporten, input      the systems and data we talk to
//!  → http, ids, certs                     shared building blocks
//!  → error, env_vars, environment, clock  vocabulary every layer may name
//! ```
//!
//! A module may use modules of a lower layer, and of its own layer only through an edge listed
//! in [`SAME_LAYER`]. The table lives here, in the test, so that changing the architecture is a
//! visible decision in review rather than an import that slipped in. Every top-level module must
//! appear in [`LAYERS`]; a new one fails the test until it is placed.
//!
//! Inside the layers:
//! - a same-layer edge holds only where its [`Scope`] says (a path of the used module, or test
//!   code), so `sync → mock` for the tests does not let the agent's own code reach the mock;
//! - a crate in [`CONFINED_CRATES`] is named only in its home (`rusqlite`: `store/sqlite/`), plus
//!   listed test-code exceptions;
//! - the parts of a module (its files and subdirectories) do not import each other in a circle,
//!   except the [`KNOWN_CIRCLES`], each with its way out.
//!
//! Paths are read as text: `crate::`, `super::` and `self::` paths (groups included) outside
//! comments. Code after a file's `#[cfg(test)]`, and `tests.rs` files, count as test code.

/// Top-level module → layer (higher layers may use lower ones).
const LAYERS: &[(&str, u8)] = &[
    ("cli", 50),
    // Entry points for the fuzz targets in fuzz/: they drive the engines' parsers and the
    // mock's multipart reader, and nothing uses them but fuzz/ and tests.
    ("fuzzing", 45),
    ("config", 45),
    ("telemetry", 45),
    ("load", 40),
    ("sync", 40),
    ("checklist", 40),
    ("mock", 40),
    ("store", 30),
    ("kfr", 30),
    ("maskinporten", 30),
    ("input", 30),
    ("http", 20),
    // Connecting to PostgreSQL (the store's second backend, the outbox-table source).
    ("pg", 20),
    ("ids", 20),
    ("certs", 20),
    ("error", 10),
    // The Oslo calendar day: KFR's "today" for the client, the engines and the mock alike.
    ("clock", 10),
    ("env_vars", 10),
    // Whether certificate files changed on disk: the token client and the intake re-read theirs.
    ("file_stamp", 10),
    ("environment", 10),
];

/// Edges allowed inside one layer, each with its reason and the code it is scoped to.
const SAME_LAYER: &[(&str, &str, Scope, &str)] = &[
    (
        "kfr",
        "maskinporten",
        Scope::Anywhere,
        "every KFR call carries a Maskinporten token; the KFR client owns a token client",
    ),
    (
        "load",
        "sync",
        Scope::Paths(&["sync::outcome"]),
        "sync::outcome: the load's held operations are outbox events, their verdicts recorded by the one verdict-to-outcome rule the agent uses",
    ),
    (
        "sync",
        "mock",
        Scope::Tests(&["sync/testing.rs"]),
        "tests only: src/sync/testing.rs (cfg(test)) runs the dispatcher against the in-process mock",
    ),
];

/// Which code an allowed same-layer edge covers.
#[derive(Debug, Clone, Copy)]
enum Scope {
    /// Any file of the using module.
    Anywhere,
    /// Only these paths of the used module (`module::item` prefixes), from any file.
    Paths(&'static [&'static str]),
    /// Test code only: the files listed (relative to `src/`, test support compiled under
    /// `cfg(test)`) and test code of any file (see [`Path::test`]).
    Tests(&'static [&'static str]),
}

/// `(file relative to src/, reason)`: a file whose test code may name a confined crate.
type Exception = (&'static str, &'static str);

/// Crates only some files may name, each with the files allowed and the scoped exceptions.
/// Naming a crate elsewhere ties that code to one backend: `rusqlite` stays behind the store's
/// traits so a second backend (or none, in a test) needs no change above `store`.
const CONFINED_CRATES: &[(&str, &[&str], &[Exception])] = &[
    (
        "rusqlite",
        &["store/sqlite/"],
        &[(
            "sync/source/mod.rs",
            "test code only: the source tests' TestOutbox reads the SQLite file back to see exactly what was stored",
        )],
    ),
    // The PostgreSQL clients: connecting (pg/), the store's backend and the outbox-table source.
    (
        "tokio_postgres",
        &["pg/", "store/postgres/", "sync/source/pg_outbox"],
        &[],
    ),
];

/// Circles among a module's parts that are known and not yet broken, each as its parts in order
/// (from the smallest, back to it) with its reason and the way out. The test fails on any other
/// circle, and on a listed one that is gone (so the list only shrinks). Empty: the last three
/// (`cli/report ⇄ cli/sync`, `cli/relationship ⇄ cli/report`, `kfr/error ⇄ kfr/verdict`) were
/// broken by `Hinted::fallback_hint` and `error::StillQueued` (the wrapped errors no longer ask
/// `cli::report` for their cause's hint) and by the classification moving into `kfr/verdict.rs`.
const KNOWN_CIRCLES: &[(&[&str], &str)] = &[];

/// A forbidden import: which file, which line, from which module to which.
#[derive(Debug, PartialEq, Eq)]
struct Violation {
    file: String,
    line: usize,
    from: String,
    to: String,
}

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

/// One path the source names: `crate::a::b`, `super::x` or `self::y`, with its line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PathRef {
    line: usize,
    /// `crate`, `super` or `self` (repeated `super::super::` gives two `super`s at the front of
    /// `segments`).
    root: &'static str,
    /// The segments after the root; a `{a, b}` group gives one path per member.
    segments: Vec<String>,
    /// The line is test code: it follows a `#[cfg(test)]` in the file (test modules sit at the
    /// end of the file they test, by this crate's convention).
    test: bool,
}

fn ident(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// A file that is test code as a whole: a `tests.rs` module or anything under a `tests/`
/// directory (both are declared under `#[cfg(test)]` by this crate's convention).
fn test_file(file: &str) -> bool {
    file == "tests.rs" || file.ends_with("/tests.rs") || file.starts_with("tests/") || file.contains("/tests/")
}

/// [`paths`] of a file, with everything marked as test code when the file is a test module.
fn paths_of(file: &str, source: &str) -> Vec<PathRef> {
    let mut out = paths(source);
    if test_file(file) {
        out.iter_mut().for_each(|p| p.test = true);
    }
    out
}

/// Every `crate::`, `super::` and `self::` path of `source`, outside comments. Both `use` lines
/// and inline paths count: an inline `crate::cli::foo()` is as much a dependency as a `use`.
fn paths(source: &str) -> Vec<PathRef> {
    let mut out = Vec::new();
    let mut test = false;
    for (i, line) in source.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        if code.trim_start().starts_with("#[cfg(test)]") {
            test = true;
        }
        for root in ["crate", "super", "self"] {
            let needle = format!("{root}::");
            let mut from = 0;
            while let Some(pos) = code[from..].find(&needle) {
                let at = from + pos;
                from = at + needle.len();
                // A word boundary before the root: `mycrate::` or `x.self::` are not ours, and a
                // `super::` right after another root was taken with it.
                let before = code[..at].chars().next_back();
                if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                    continue;
                }
                let mut segments = Vec::new();
                let mut rest = &code[from..];
                loop {
                    let name = ident(rest);
                    if name.is_empty() {
                        break;
                    }
                    rest = &rest[name.len()..];
                    segments.push(name);
                    match rest.strip_prefix("::") {
                        Some(r) => rest = r,
                        None => break,
                    }
                }
                // `root::a::{b, c}` (or `root::{b, c}`): one path per member of the group.
                if let Some(group) = rest.strip_prefix('{') {
                    let group = &group[..group.find('}').unwrap_or(group.len())];
                    for part in group.split(',') {
                        let n = ident(part.trim());
                        if !n.is_empty() {
                            let mut seg = segments.clone();
                            seg.push(n);
                            out.push(PathRef {
                                line: i + 1,
                                root,
                                segments: seg,
                                test,
                            });
                        }
                    }
                } else if !segments.is_empty() {
                    out.push(PathRef {
                        line: i + 1,
                        root,
                        segments,
                        test,
                    });
                }
            }
        }
    }
    out
}

/// Whether the same-layer edge `from → to` is allowed for this path of `file`.
fn same_layer_allowed(file: &str, from: &str, to: &str, path: &PathRef) -> bool {
    SAME_LAYER
        .iter()
        .filter(|(a, b, ..)| *a == from && *b == to)
        .any(|(_, _, scope, _)| match scope {
            Scope::Anywhere => true,
            Scope::Paths(allowed) => {
                let named = path.segments.join("::");
                allowed
                    .iter()
                    .any(|a| named == *a || named.starts_with(&format!("{a}::")))
            }
            Scope::Tests(files) => path.test || files.contains(&file),
        })
}

/// Checks one file of module `from` against the table.
fn check_file(file: &str, from: &str, source: &str) -> Vec<Violation> {
    let Some(own) = layer(from) else {
        return vec![Violation {
            file: file.into(),
            line: 0,
            from: from.into(),
            to: "(module missing from the LAYERS table)".into(),
        }];
    };
    paths_of(file, source)
        .into_iter()
        .filter(|p| p.root == "crate" && p.segments[0] != from)
        .filter(|p| match layer(&p.segments[0]) {
            // Not a module of ours (e.g. a macro path such as `crate::VERSION`): lib.rs items.
            None => false,
            Some(l) if l < own => false,
            Some(l) if l == own => !same_layer_allowed(file, from, &p.segments[0], p),
            Some(_) => true,
        })
        .map(|p| Violation {
            file: file.into(),
            line: p.line,
            from: from.into(),
            to: p.segments[0].clone(),
        })
        .collect()
}

/// Lines of `file` (relative to `src/`) that name a confined crate where it may not be named.
fn check_confined(file: &str, source: &str) -> Vec<Violation> {
    let mut out = Vec::new();
    for (krate, homes, exceptions) in CONFINED_CRATES {
        if homes.iter().any(|home| file.starts_with(home)) {
            continue;
        }
        let home = homes.join(", ");
        let test_only = exceptions.iter().any(|(f, _)| *f == file);
        let mut test = test_file(file);
        for (i, line) in source.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if code.trim_start().starts_with("#[cfg(test)]") {
                test = true;
            }
            let named = code.match_indices(krate).any(|(at, _)| {
                let before = code[..at].chars().next_back();
                let after = code[at + krate.len()..].chars().next();
                !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            });
            if named && !(test_only && test) {
                out.push(Violation {
                    file: file.into(),
                    line: i + 1,
                    from: file.into(),
                    to: format!("{krate} (only {home} may name it)"),
                });
            }
        }
    }
    out
}

/// The module path of a file under `src/`: `a/b.rs` and `a/b/mod.rs` are `[a, b]`.
fn module_path(file: &str) -> Vec<String> {
    let mut parts: Vec<String> = file.trim_end_matches(".rs").split('/').map(str::to_string).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// Where `path` (named in `file`) points, as a module path from the crate root. `None` for
/// paths that cannot be placed (more `super`s than the file is deep).
fn resolve(file: &str, path: &PathRef) -> Option<Vec<String>> {
    let mut base = match path.root {
        "crate" => Vec::new(),
        "self" => module_path(file),
        _ => {
            let mut m = module_path(file);
            m.pop()?;
            m
        }
    };
    let mut segments = path.segments.iter().peekable();
    while segments.peek().is_some_and(|s| *s == "super") {
        segments.next();
        base.pop()?;
    }
    base.extend(segments.cloned());
    Some(base)
}

/// Circles among the parts of each directory of `files` (`(path under src/, source)`): at every
/// directory, its files and subdirectories are the parts (a subdirectory counts as one part, so
/// a circle through any of its files is the subdirectory's), and one part depends on another
/// when a file of it names the other by a `crate::`, `super::` or `self::` path. The
/// directory's own `mod.rs` is its face to the outside, not a part: parents re-export and
/// declare their children. Test code is not counted (it lives inside the file it tests).
/// Returns each circle once, as the parts in order.
fn circles(files: &[(String, String)]) -> Vec<Vec<String>> {
    use std::collections::{BTreeMap, BTreeSet};
    // dir → part → parts it depends on
    let modules: BTreeSet<Vec<String>> = files.iter().map(|(f, _)| module_path(f)).collect();
    let mut graphs: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (file, source) in files {
        let own = module_path(file);
        for p in paths_of(file, source).iter().filter(|p| !p.test) {
            let Some(target) = resolve(file, p) else { continue };
            // Every directory that holds both the file and the target, below the crate root
            // (the root's parts are the layers, checked above).
            for depth in 1..own.len() {
                let dir = &own[..depth];
                if target.len() <= depth || target[..depth] != *dir {
                    break;
                }
                let (from, to) = (&own[depth], &target[depth]);
                // Only parts count: `super::Item` names the directory's mod.rs, not a part.
                let is_part = modules.contains(&target[..=depth]);
                if from != to && is_part {
                    graphs
                        .entry(dir.join("/"))
                        .or_default()
                        .entry(from.clone())
                        .or_default()
                        .insert(to.clone());
                }
            }
        }
    }
    let mut found = BTreeSet::new();
    for (dir, graph) in &graphs {
        for start in graph.keys() {
            // Depth-first from `start`, looking for a way back to it.
            let mut stack = vec![(start.clone(), vec![start.clone()])];
            let mut seen = BTreeSet::new();
            while let Some((node, trail)) = stack.pop() {
                for next in graph.get(&node).into_iter().flatten() {
                    if next == start {
                        // Rotate so each circle is reported once, from its smallest part.
                        let min = trail
                            .iter()
                            .enumerate()
                            .min_by_key(|(_, n)| *n)
                            .map(|(i, _)| i)
                            .unwrap_or(0);
                        let mut c: Vec<String> = trail[min..]
                            .iter()
                            .chain(&trail[..min])
                            .map(|n| format!("{dir}/{n}"))
                            .collect();
                        c.push(c[0].clone());
                        found.insert(c);
                    } else if seen.insert(next.clone()) {
                        let mut t = trail.clone();
                        t.push(next.clone());
                        stack.push((next.clone(), t));
                    }
                }
            }
        }
    }
    found.into_iter().collect()
}

/// `circles` (as found) against a list of known ones: `(listed but gone, found but not listed)`.
fn against_known(found: &[Vec<String>], known: &[(&[&str], &str)]) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
    let known: Vec<Vec<String>> = known
        .iter()
        .map(|(c, _)| c.iter().map(|p| p.to_string()).collect())
        .collect();
    let gone = known.iter().filter(|k| !found.contains(k)).cloned().collect();
    let new = found.iter().filter(|c| !known.contains(c)).cloned().collect();
    (gone, new)
}

#[cfg(test)]
mod tests {
    use super::*;
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

    /// Every `.rs` file under `src/` but the crate root, the binary and this file, as
    /// `(path relative to src/ with '/', top-level module, source)`.
    fn sources() -> Vec<(String, String, String)> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let mut out = Vec::new();
        for path in files {
            let rel = path.strip_prefix(&src).unwrap();
            let parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().to_string())
                .collect();
            let module = parts[0].trim_end_matches(".rs").to_string();
            // The crate root and the binary are above every layer; this file names them all.
            if matches!(module.as_str(), "lib" | "main" | "architecture") {
                continue;
            }
            out.push((parts.join("/"), module, std::fs::read_to_string(&path).unwrap()));
        }
        assert!(out.len() > 20, "the walk found only {} files", out.len());
        out
    }

    fn listed(violations: &[Violation]) -> String {
        violations
            .iter()
            .map(|v| format!("  {}:{}: {} -> {}", v.file, v.line, v.from, v.to))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn every_import_points_down_the_layer_table() {
        let violations: Vec<Violation> = sources()
            .iter()
            .flat_map(|(file, module, text)| check_file(file, module, text))
            .collect();
        assert!(
            violations.is_empty(),
            "imports that point up or sideways (see src/architecture.rs):\n{}",
            listed(&violations)
        );
    }

    #[test]
    fn confined_crates_stay_where_they_belong() {
        let violations: Vec<Violation> = sources()
            .iter()
            .flat_map(|(file, _, text)| check_confined(file, text))
            .collect();
        assert!(
            violations.is_empty(),
            "a confined crate named outside its home (see CONFINED_CRATES in src/architecture.rs):\n{}",
            listed(&violations)
        );
    }

    #[test]
    fn no_module_has_a_circle_among_its_files() {
        let files: Vec<(String, String)> = sources().into_iter().map(|(f, _, t)| (f, t)).collect();
        let (gone, found) = against_known(&circles(&files), KNOWN_CIRCLES);
        assert!(
            gone.is_empty(),
            "listed in KNOWN_CIRCLES but no longer there, remove: {gone:?}"
        );
        assert!(
            found.is_empty(),
            "parts of a module that import each other in a circle:\n{}",
            found
                .iter()
                .map(|c| format!("  {}", c.join(" -> ")))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    #[test]
    fn a_listed_circle_is_tolerated_until_it_is_gone_and_no_other() {
        let circle = |parts: &[&str]| parts.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        let known: &[(&[&str], &str)] = &[(&["m/a", "m/b", "m/a"], "a reason, and the way out")];
        let listed = circle(&["m/a", "m/b", "m/a"]);
        let other = circle(&["m/c", "m/d", "m/c"]);
        // The listed one, still there: nothing to say.
        assert_eq!(against_known(std::slice::from_ref(&listed), known), (vec![], vec![]));
        // A new one beside it is found; the listed one does not hide it.
        assert_eq!(
            against_known(&[listed.clone(), other.clone()], known),
            (vec![], vec![other.clone()])
        );
        // The listed one broken: it must leave the list (the list only shrinks).
        assert_eq!(against_known(&[], known), (vec![listed], vec![]));
        // With nothing listed, every circle is found.
        assert_eq!(against_known(std::slice::from_ref(&other), &[]), (vec![], vec![other]));
    }

    #[test]
    fn an_engine_importing_the_cli_is_refused() {
        // The source is assembled so that a plain grep for upward imports does not find this test.
        let source = format!("use crate::{}::install_pseudonyms;\n", "cli");
        let v = check_file("load/mod.rs", "load", &source);
        assert_eq!(
            v,
            vec![Violation {
                file: "load/mod.rs".into(),
                line: 1,
                from: "load".into(),
                to: "cli".into()
            }]
        );
        // Grouped and inline paths count too; comments do not.
        let v = check_file(
            "ids/mod.rs",
            "ids",
            "// see crate::config\nuse crate::{error, config};\nlet p = crate::store::x();\n",
        );
        let tos: Vec<_> = v.iter().map(|v| (v.line, v.to.as_str())).collect();
        assert_eq!(tos, vec![(2, "config"), (3, "store")]);
    }

    #[test]
    fn same_layer_edges_need_a_listed_reason() {
        assert!(check_file("kfr/client.rs", "kfr", "use crate::maskinporten::TokenClient;").is_empty());
        assert_eq!(
            check_file("store/mod.rs", "store", "use crate::kfr::KfrClient;").len(),
            1
        );
        assert_eq!(
            check_file("load/mod.rs", "load", "use crate::mock::MockServer;").len(),
            1
        );
    }

    #[test]
    fn an_unplaced_module_fails() {
        assert_eq!(check_file("queue/mod.rs", "queue", "").len(), 1);
    }

    #[test]
    fn a_same_layer_edge_holds_only_where_it_is_scoped() {
        // load → sync: sync::outcome only.
        assert!(check_file("load/mod.rs", "load", "use crate::sync::outcome::{Effect, decide};").is_empty());
        assert_eq!(
            check_file("load/mod.rs", "load", "use crate::sync::dispatch::Dispatcher;").len(),
            1
        );
        assert_eq!(
            check_file("load/mod.rs", "load", "use crate::sync::{outcome, health};").len(),
            1
        );
        // sync → mock: src/sync/testing.rs, or test code of another file.
        let mock = format!("use crate::{}::MockServer;\n", "mock");
        assert!(check_file("sync/testing.rs", "sync", &mock).is_empty());
        assert_eq!(check_file("sync/event.rs", "sync", &mock).len(), 1);
        let in_tests = format!("fn f() {{}}\n#[cfg(test)]\nmod tests {{\n    {mock}}}\n");
        assert!(check_file("sync/event.rs", "sync", &in_tests).is_empty());
    }

    #[test]
    fn a_confined_crate_named_elsewhere_is_refused() {
        let krate = "rusqlite";
        let use_it = format!("use {krate}::Connection;\n");
        assert!(check_confined("store/sqlite/db.rs", &use_it).is_empty());
        let v = check_confined("sync/event.rs", &use_it);
        assert_eq!((v.len(), v[0].line), (1, 1));
        // The listed exception covers its test code, not the rest of the file.
        assert_eq!(check_confined("sync/source/mod.rs", &use_it).len(), 1);
        let in_tests = format!("#[cfg(test)]\nmod testkit {{\n    {use_it}}}\n");
        assert!(check_confined("sync/source/mod.rs", &in_tests).is_empty());
        // A longer name that merely contains it, and comments, do not count.
        assert!(check_confined("sync/event.rs", &format!("// {krate}\nlet my_{krate}_x = 1;\n")).is_empty());
    }

    #[test]
    fn a_circle_among_a_modules_files_is_found() {
        let file = |path: &str, text: &str| (path.to_string(), text.to_string());
        // a.rs → b.rs → c/ (through c/inner.rs) → a.rs; mod.rs and tests do not count.
        let files = vec![
            file("m/mod.rs", "pub use a::A;\nmod a;\nmod b;\nmod c;\n"),
            file("m/a.rs", "use super::b::B;\n"),
            file("m/b.rs", "use crate::m::c::inner::C;\n"),
            file("m/c/mod.rs", "mod inner;\n"),
            file("m/c/inner.rs", "use super::super::{a::A, Facade};\n"),
        ];
        assert_eq!(
            circles(&files),
            vec![vec!["m/a".to_string(), "m/b".into(), "m/c".into(), "m/a".into()]]
        );
        // The same, with the way back only in test code: no circle.
        let mut no_circle = files.clone();
        no_circle[4] = file(
            "m/c/inner.rs",
            "#[cfg(test)]\nmod tests {\n    use crate::m::a::A;\n}\n",
        );
        assert!(circles(&no_circle).is_empty());
        // Naming the parent's items (`super::Item`) is not an edge to a part.
        assert!(circles(&[file("m/mod.rs", "use a::X;"), file("m/a.rs", "use super::Facade;")]).is_empty());
    }
}
