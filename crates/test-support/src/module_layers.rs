//! The import graph between a crate's modules, to test that they import downward only
//! (docs/ARCHITECTURE.md): which modules each file names as `crate::NAME`, and a cycle if there
//! is one. Test modules are left out (a test may reach anywhere).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module name → the modules its non-test code names as `crate::NAME`, for the files directly
/// in `src` (a crate with flat modules; the crate root, `lib.rs` or `main.rs`, left out).
pub fn imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut code = BTreeMap::new();
    let listing = std::fs::read_dir(src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    for entry in listing {
        let path = entry
            .unwrap_or_else(|e| panic!("{}: {e}", src.display()))
            .path();
        let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if path.extension().is_some_and(|e| e == "rs") && name != "lib" && name != "main" {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let end = text.find("#[cfg(test)]").unwrap_or(text.len());
            code.insert(name.to_owned(), text[..end].to_owned());
        }
    }
    let names: BTreeSet<String> = code.keys().cloned().collect();
    code.iter()
        .map(|(name, text)| {
            let used = names
                .iter()
                .filter(|other| *other != name && names_module(text, other))
                .cloned()
                .collect();
            (name.clone(), used)
        })
        .collect()
}

/// Whether `text` names `module` as `crate::module` or inside `use crate::{…}`.
fn names_module(text: &str, module: &str) -> bool {
    let direct = format!("crate::{module}");
    let is_boundary = |rest: &str| !rest.starts_with(|c: char| c.is_alphanumeric() || c == '_');
    if text
        .match_indices(&direct)
        .any(|(at, _)| is_boundary(&text[at + direct.len()..]))
    {
        return true;
    }
    text.match_indices("use crate::{").any(|(at, _)| {
        let group = &text[at + "use crate::{".len()..];
        let group = &group[..group.find("};").unwrap_or(group.len())];
        group
            .split([',', '{', '}', '\n', ' '])
            .any(|part| part.split("::").next() == Some(module))
    })
}

/// An import cycle of `graph` (its modules in order, the first repeated at the end), if any.
pub fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|module| cycle(graph, module, &mut Vec::new(), &mut done))
}

/// A cycle through `from`, if the graph has one reachable from it.
fn cycle(
    graph: &BTreeMap<String, BTreeSet<String>>,
    from: &str,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(at) = path.iter().position(|m| m == from) {
        let mut found = path[at..].to_vec();
        found.push(from.to_owned());
        return Some(found);
    }
    if done.contains(from) {
        return None;
    }
    path.push(from.to_owned());
    for next in &graph[from] {
        if let Some(found) = cycle(graph, next, path, done) {
            return Some(found);
        }
    }
    path.pop();
    done.insert(from.to_owned());
    None
}
