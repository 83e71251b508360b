//! Shared set-up for the proxy's integration tests: a proxy started in-process from TOML.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::net::SocketAddr;

use sluice_proxy::Proxy;

/// Starts a proxy from configuration text and returns it with its first listener's address.
pub async fn start(toml: &str) -> (Proxy, SocketAddr) {
    let cfg = sluice_config::parse_str("test.toml", toml)
        .unwrap_or_else(|e| panic!("bad test config:\n{e}"));
    let first = cfg.listeners[0].name.clone();
    let proxy = Proxy::start(cfg).await.expect("proxy starts");
    let addr = proxy.listener_addrs()[&first];
    (proxy, addr)
}

/// Re-parses and applies configuration text.
pub async fn apply(proxy: &Proxy, toml: &str) {
    let cfg = sluice_config::parse_str("test.toml", toml)
        .unwrap_or_else(|e| panic!("bad test config:\n{e}"));
    proxy.apply(cfg).await.expect("apply");
}

/// `instances = [...]` for these addresses.
pub fn instances(addrs: &[SocketAddr]) -> String {
    let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    format!("instances = [{}]", list.join(", "))
}

pub const LISTENER: &str =
    "[access_log]\npath = \"off\"\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n";

/// Tallies which backend answered each of `n` GETs to `url`.
pub async fn tally(
    client: &sluice_test_support::Client,
    url: &str,
    n: usize,
) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..n {
        let r = client.get(url).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        *counts.entry(r.backend()).or_insert(0) += 1;
    }
    counts
}
