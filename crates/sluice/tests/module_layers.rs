//! The binary's modules import downward only (docs/ARCHITECTURE.md, "Inside the `sluice`
//! binary"): discovery hands rebuilt routes to the application over a channel, so nothing
//! below `app` names it, and the graph of `crate::` imports between the files of `src/` has no
//! cycle.

use std::path::Path;

use sluice_test_support::module_layers::{find_cycle, imports};

#[test]
fn modules_import_downward_only() {
    let graph = imports(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(
        graph.len() > 10,
        "expected the binary's modules in src/, found {:?}",
        graph.keys()
    );
    if let Some(found) = find_cycle(&graph) {
        panic!("import cycle between modules: {}", found.join(" -> "));
    }
    // The scan sees imports (else the check above would pass on an empty graph): the one-way
    // path of a catalog change, and what acts on the application.
    for (module, imported) in [
        ("discovery_rebuild", "discovery"),
        ("discovery", "discovery_health"),
        ("app", "discovery_rebuild"),
        ("admin", "app"),
        ("run", "app"),
    ] {
        assert!(
            graph[module].contains(imported),
            "{module} is expected to import {imported}; update this test and the document if the layers changed"
        );
    }
    for below in [
        "discovery",
        "discovery_rebuild",
        "discovery_reload",
        "discovery_health",
    ] {
        assert!(
            !graph[below].contains("app"),
            "{below} imports app: discovery must hand its results over, not call into the application"
        );
    }
}
