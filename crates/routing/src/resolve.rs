//! Instance host names to addresses, each looked up once per rebuild.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Deadline for resolving one instance host name.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// `address:port` as a socket address: an IP as it is, a host name looked up (the first
/// address) under [`RESOLVE_TIMEOUT`]; `None` when it does not resolve.
pub async fn resolve(address: &str, port: u16) -> Option<SocketAddr> {
    if let Ok(ip) = address.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, port));
    }
    if address.is_empty() {
        return None;
    }
    match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((address, port))).await {
        Ok(Ok(mut found)) => found.next(),
        _ => None,
    }
}

/// [`resolve`] with its answers remembered: a catalog names one host for many instances.
#[derive(Debug, Default)]
pub struct Resolver {
    known: BTreeMap<(String, u16), Option<SocketAddr>>,
}

impl Resolver {
    /// Whether `address:port` was looked up already (its failure already reported).
    pub fn seen(&self, address: &str, port: u16) -> bool {
        self.known.contains_key(&(address.to_owned(), port))
    }

    pub async fn resolve(&mut self, address: &str, port: u16) -> Option<SocketAddr> {
        let key = (address.to_owned(), port);
        if let Some(found) = self.known.get(&key) {
            return *found;
        }
        let found = resolve(address, port).await;
        self.known.insert(key, found);
        found
    }
}
