//! Shared set-up for the proxy's integration tests: a proxy started in-process from TOML.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

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

/// An instance on 127.0.0.1:0 whose every connection `serve` answers, in a thread of its own.
pub fn instance(serve: impl Fn(BufReader<TcpStream>) + Copy + Send + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            std::thread::spawn(move || serve(BufReader::new(stream)));
        }
    });
    addr
}

/// Reads one request head (these tests send no bodies to scripted instances); false at the
/// connection's end.
pub fn read_request_head(r: &mut BufReader<TcpStream>) -> bool {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return false;
        }
        if line == "\r\n" {
            return true;
        }
    }
}

/// An instance that answers one request per connection with `parts`, pausing between them.
pub fn scripted_in_parts(parts: &'static [&'static [u8]], pause: Duration) -> SocketAddr {
    instance(move |mut r| {
        if !read_request_head(&mut r) {
            return;
        }
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                std::thread::sleep(pause);
            }
            if r.get_mut().write_all(part).is_err() {
                return;
            }
        }
    })
}

/// An answer whose head and body an instance writes apart ([`scripted_in_parts`]): with a
/// body of stated length,
pub const STATED: &[&[u8]] = &[b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b"hello"];
/// with a body of stated length larger than a read,
pub const STATED_LARGE: &[&[u8]] = &[
    b"HTTP/1.1 200 OK\r\nContent-Length: 32768\r\n\r\n",
    &[b'x'; 32768],
];
/// and with a chunked one, as a stream that starts late would be.
pub const STREAMED: &[&[u8]] = &[
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"5\r\nhello\r\n0\r\n\r\n",
];
