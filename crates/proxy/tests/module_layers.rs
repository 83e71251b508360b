//! The proxy's modules import downward only (docs/ARCHITECTURE.md, "Inside sluice-proxy"):
//! the graph of `crate::` imports between the files of `src/` has no cycle. Test modules are
//! left out (a test may reach anywhere).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module name → the modules its non-test code names as `crate::NAME`.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut code = BTreeMap::new();
    for entry in std::fs::read_dir(&src).expect("read crates/proxy/src") {
        let path = entry.expect("list crates/proxy/src").path();
        let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if path.extension().is_some_and(|e| e == "rs") && name != "lib" {
            let text = std::fs::read_to_string(&path).expect("read a module");
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

#[test]
fn modules_import_downward_only() {
    let graph = imports();
    assert!(
        graph.len() > 20,
        "expected the proxy's modules in src/, found {:?}",
        graph.keys()
    );
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        if let Some(found) = cycle(&graph, module, &mut Vec::new(), &mut done) {
            panic!("import cycle between modules: {}", found.join(" -> "));
        }
    }
    // The scan sees imports (else the check above would pass on an empty graph): a few
    // edges of the layering in docs/ARCHITECTURE.md.
    for (module, imported) in [
        ("h1", "request_body"),
        ("h1", "headers"),
        ("body", "h1"),
        ("forward", "listener_state"),
        ("server_h1", "forward"),
        ("listener", "server_h1"),
    ] {
        assert!(
            graph[module].contains(imported),
            "{module} is expected to import {imported}; update this test and the document if the layers changed"
        );
    }
}
