//! Helpers shared by the discovery tests (discovery.rs, discovery_ops.rs): registrations,
//! configuration text, and waiting for what the proxy serves.

// Each test crate that includes this module uses a different subset of it.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use sluice_test_support::{Backend, Client, SluiceProcess, eventually, free_port, http_get};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_sluice");
pub(crate) const WITHIN: Duration = Duration::from_secs(20);
pub(crate) const EVERY: Duration = Duration::from_millis(100);

pub(crate) fn addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

pub(crate) fn definition(id: &str, backend: &Backend, tags: &[&str]) -> String {
    serde_json::json!({"service": {
        "name": "web", "id": id, "address": "127.0.0.1", "port": backend.addr().port(),
        "tags": tags,
        "check": {"tcp": backend.addr().to_string(), "interval": "10s", "timeout": "1s"}
    }})
    .to_string()
}

pub(crate) fn write_atomically(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

pub(crate) fn config(admin: SocketAddr, web: SocketAddr, discovery: &str) -> String {
    format!(
        "[admin]\nbind = \"{admin}\"\n[access_log]\npath = \"off\"\n\
         [[listener]]\nname = \"web\"\nbind = \"{web}\"\n\
         [routing]\ndebounce = \"20ms\"\n{discovery}"
    )
}

/// The backends that answered 20 requests to `path`.
pub(crate) async fn backends_seen(
    client: &Client,
    web: SocketAddr,
    path: &str,
) -> Result<BTreeSet<String>, String> {
    let mut seen = BTreeSet::new();
    for _ in 0..20 {
        let reply = client.get(&format!("http://{web}{path}")).await?;
        if reply.status != 200 {
            return Err(format!("status {}: {}", reply.status, reply.text()));
        }
        seen.insert(reply.backend());
    }
    Ok(seen)
}

pub(crate) async fn until_backends(client: &Client, web: SocketAddr, path: &str, want: &[&str]) {
    let want: BTreeSet<String> = want.iter().map(|s| (*s).to_owned()).collect();
    eventually(WITHIN, EVERY, || {
        let want = want.clone();
        async move {
            let seen = backends_seen(client, web, path).await?;
            if seen == want {
                Ok(())
            } else {
                Err(format!("saw {seen:?}, want {want:?}"))
            }
        }
    })
    .await;
}

pub(crate) fn catalog(admin: SocketAddr) -> serde_json::Value {
    let (status, body) = http_get(admin, "/api/catalog").unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

pub(crate) async fn until_log(process: &SluiceProcess, needle: &str) {
    eventually(WITHIN, EVERY, || async {
        let log = process.stderr();
        if log.contains(needle) {
            Ok(())
        } else {
            Err(format!("`{needle}` not in the log:\n{log}"))
        }
    })
    .await;
}

/// Waits until `GET {web}{path}` answers `status`.
pub(crate) async fn until_status(client: &Client, web: SocketAddr, path: &str, status: u16) {
    eventually(WITHIN, EVERY, || async {
        let reply = client.get(&format!("http://{web}{path}")).await?;
        if reply.status == status {
            Ok(())
        } else {
            Err(format!("{path}: status {}, want {status}", reply.status))
        }
    })
    .await;
}
