//! The crate's modules depend one way: each top-level module of `src/` names only the modules
//! before it in the layer order that docs/ARCHITECTURE.md declares. This test reads the sources
//! and the document, so a new import against the order, a module left out of the order, or a
//! document that drifts from the test all fail here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Lowest first. Kept equal to the `layers:` line of docs/ARCHITECTURE.md.
const LAYERS: [&str; 24] = [
    "util",
    "pickle",
    "metrics",
    "data",
    "augment",
    "models",
    "analysis",
    "optim",
    "dist",
    "config",
    "weights",
    "transfer",
    "error",
    "report",
    "inspect",
    "train",
    "contrastive",
    "probe",
    "finetune",
    "predict",
    "export",
    "experiment",
    "bench",
    "cli",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file of `src/` belongs to (None for lib.rs and main.rs).
fn module_of(file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src()).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    match first.strip_suffix(".rs") {
        Some("lib" | "main") => None,
        Some(m) => Some(m.to_string()),
        None => Some(first),
    }
}

fn strip_line_comments(text: &str) -> String {
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn identifier(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// The top-level modules named by `crate::x` paths and `crate::{x, y::z}` groups.
fn named_modules(text: &str) -> BTreeSet<String> {
    let text = strip_line_comments(text);
    let mut names = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let (mut depth, mut item_start) = (0usize, true);
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        names.insert(identifier(&group[i..]));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            names.insert(identifier(rest));
        }
    }
    names
}

#[test]
fn every_module_imports_only_from_the_layers_below_it() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let rank = |m: &str| LAYERS.iter().position(|l| *l == m);
    let mut problems = Vec::new();
    for file in &files {
        let Some(me) = module_of(file) else { continue };
        let Some(mine) = rank(&me) else {
            problems.push(format!(
                "{me} ({}) is not in the layer order",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for name in named_modules(&text) {
            if let Some(theirs) = rank(&name)
                && theirs > mine
            {
                problems.push(format!(
                    "{}: {me} imports {name}, a layer above it",
                    file.display()
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_architecture_document_declares_the_same_order() {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/ARCHITECTURE.md");
    let text = std::fs::read_to_string(&doc).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("layers:"))
        .expect("docs/ARCHITECTURE.md has a `layers:` line");
    let declared: Vec<&str> = line.split("->").map(str::trim).collect();
    assert_eq!(declared, LAYERS, "docs/ARCHITECTURE.md and tests/layers.rs");
}

#[test]
fn the_parser_sees_paths_and_groups() {
    let text = "use crate::{data::loader, models::{self, Ctx}, util};\n\
                // crate::cli in a comment\n\
                let x = crate::train::run();";
    let names: Vec<String> = named_modules(text).into_iter().collect();
    assert_eq!(names, ["data", "models", "train", "util"]);
}
