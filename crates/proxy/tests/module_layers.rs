//! The proxy's modules import downward only (docs/ARCHITECTURE.md, "Inside sluice-proxy"):
//! the graph of `crate::` imports between the files of `src/` has no cycle. Test modules are
//! left out (a test may reach anywhere).

use std::path::Path;

use sluice_test_support::module_layers::{find_cycle, imports};

#[test]
fn modules_import_downward_only() {
    let graph = imports(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(
        graph.len() > 20,
        "expected the proxy's modules in src/, found {:?}",
        graph.keys()
    );
    if let Some(found) = find_cycle(&graph) {
        panic!("import cycle between modules: {}", found.join(" -> "));
    }
    // The scan sees imports (else the check above would pass on an empty graph): a few
    // edges of the layering in docs/ARCHITECTURE.md.
    for (module, imported) in [
        ("h1", "request_body"),
        ("h1", "headers"),
        ("body", "link"),
        ("link", "h2_up"),
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
