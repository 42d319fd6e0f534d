//! The layer rule of ARCHITECTURE.md ("Layers"), checked on the source: a module of `node/src`
//! may use its own layer and the layers below it, never one above. Reads every `crate::<layer>`
//! path in every source file, so a new upward `use` fails here with the file and the edge named.

use std::path::{Path, PathBuf};

/// The layers, bottom first: the order of the table in ARCHITECTURE.md.
const LAYERS: [&str; 11] = [
    "fault",
    "domain",
    "access",
    "error",
    "telemetry",
    "security",
    "storage",
    "cluster",
    "audit",
    "api",
    "ops",
];

fn rank(layer: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == layer)
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("reading node/src") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The layer a source file belongs to: its first folder (or file name) under `src/`.
fn layer_of(src: &Path, file: &Path) -> Option<&'static str> {
    let first = file.strip_prefix(src).ok()?.components().next()?;
    let name = first.as_os_str().to_str()?.trim_end_matches(".rs");
    LAYERS.iter().copied().find(|l| *l == name)
}

fn ident(text: &str) -> String {
    text.trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// Every `crate::<name>` a file mentions (imports and paths alike), including each name of a
/// grouped import `crate::{a::x, b}`.
fn crate_paths(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            // The names at the top level of the group.
            let mut depth = 0;
            let mut start = 0;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        found.push(ident(&group[start..j]));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.push(ident(&group[start..j]));
                        start = j + 1;
                    }
                    _ => {}
                }
            }
        } else {
            found.push(ident(after));
        }
        rest = after;
    }
    found
}

#[test]
fn no_module_uses_a_layer_above_its_own() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut upward = Vec::new();
    let mut checked = 0;
    for file in &files {
        let Some(layer) = layer_of(&src, file) else {
            continue; // lib.rs (the map) and bin/ (the composition's caller)
        };
        let text = std::fs::read_to_string(file).expect("reading a source file");
        for used in crate_paths(&text) {
            let (Some(from), Some(to)) = (rank(layer), rank(&used)) else {
                continue;
            };
            checked += 1;
            if to > from {
                upward.push(format!(
                    "{}: `{layer}` uses `{used}`, a layer above it",
                    file.strip_prefix(&src).unwrap_or(file).display()
                ));
            }
        }
    }
    assert!(
        checked > 200,
        "found only {checked} crate paths: is the source tree where the test looks?"
    );
    assert!(
        upward.is_empty(),
        "edges that point up the layer table of ARCHITECTURE.md:\n{}",
        upward.join("\n")
    );
}

#[test]
fn grouped_imports_are_read_name_by_name() {
    assert_eq!(
        crate_paths("use crate::{api::x, domain::{ids, clock}, error};\nlet _ = crate::ops::y;"),
        ["api", "domain", "error", "ops"]
    );
}

#[test]
fn every_layer_of_the_table_is_a_module_of_the_crate() {
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs"))
        .expect("reading lib.rs");
    for layer in LAYERS {
        assert!(
            lib.contains(&format!("pub mod {layer};")),
            "lib.rs declares no module `{layer}`"
        );
    }
}
