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
    ("ids", 20),
    ("certs", 20),
    ("error", 10),
    // The Oslo calendar day: KFR's "today" for the client, the engines and the mock alike.
    ("clock", 10),
    ("env_vars", 10),
    ("environment", 10),
];

/// Edges allowed inside one layer, each with its reason.
const SAME_LAYER: &[(&str, &str, &str)] = &[
    (
        "kfr",
        "maskinporten",
        "every KFR call carries a Maskinporten token; the KFR client owns a token client",
    ),
    (
        "load",
        "sync",
        "sync::outcome: the load's held operations are outbox events, their verdicts recorded by the one verdict-to-outcome rule the agent uses",
    ),
    (
        "sync",
        "mock",
        "tests only: src/sync/testing.rs (cfg(test)) runs the dispatcher against the in-process mock",
    ),
];

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

/// The top-level modules `source` (a file of module `from`) refers to as `crate::<module>`,
/// outside comments, with their line numbers. Both `use crate::x::…` lines and inline paths
/// count: an inline `crate::cli::foo()` is as much a dependency as a `use`.
fn references(source: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, line) in source.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(pos) = rest.find("crate::") {
            let after = &rest[pos + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `crate::{a, b}` groups: take every name in the braces.
            if name.is_empty() && after.starts_with('{') {
                let group = &after[1..after.find('}').unwrap_or(after.len())];
                for part in group.split(',') {
                    let n: String = part
                        .trim()
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !n.is_empty() {
                        out.push((i + 1, n));
                    }
                }
            } else if !name.is_empty() {
                out.push((i + 1, name));
            }
            rest = after;
        }
    }
    out
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
    references(source)
        .into_iter()
        .filter(|(_, to)| to != from)
        .filter(|(_, to)| match layer(to) {
            // Not a module of ours (e.g. a macro path such as `crate::VERSION`): lib.rs items.
            None => false,
            Some(l) if l < own => false,
            Some(l) if l == own => !SAME_LAYER.iter().any(|(a, b, _)| *a == from && b == to),
            Some(_) => true,
        })
        .map(|(line, to)| Violation {
            file: file.into(),
            line,
            from: from.into(),
            to,
        })
        .collect()
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

    #[test]
    fn every_import_points_down_the_layer_table() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let mut violations = Vec::new();
        let mut checked = 0;
        for path in files {
            let rel = path.strip_prefix(&src).unwrap();
            let first = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .to_string();
            let module = first.trim_end_matches(".rs").to_string();
            // The crate root and the binary are above every layer; this file names them all.
            if matches!(module.as_str(), "lib" | "main" | "architecture") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            violations.extend(check_file(&rel.display().to_string(), &module, &text));
            checked += 1;
        }
        assert!(checked > 20, "the walk found only {checked} files");
        assert!(
            violations.is_empty(),
            "imports that point up or sideways (see src/architecture.rs):\n{}",
            violations
                .iter()
                .map(|v| format!("  {}:{}: {} -> {}", v.file, v.line, v.from, v.to))
                .collect::<Vec<_>>()
                .join("\n")
        );
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
}
