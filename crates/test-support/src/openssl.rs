//! `openssl s_client` as a real TLS client for end-to-end tests.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::certs::TestCa;
use crate::require_tool;

/// [`s_client_first_line`] as `client`, a leaf `ca` issued (its `<client>.pem` and
/// `<client>.key`), to a listener whose certificate is for `data.test` from the same CA.
pub fn s_client_first_line_as(addr: SocketAddr, ca: &TestCa, client: &str) -> String {
    s_client_first_line(
        addr,
        "data.test",
        &ca.ca_path,
        &ca.dir().join(format!("{client}.pem")),
        &ca.dir().join(format!("{client}.key")),
    )
}

/// The first line a mutual-TLS `openssl s_client` reads from `addr`, presenting `cert`/`key`,
/// sending `server_name` and verifying the server against `ca` (a failed verification fails the
/// handshake). Empty when the proxy closed the connection (a refused handshake or a denial).
/// The client gives up after 3 s.
pub fn s_client_first_line(
    addr: SocketAddr,
    server_name: &str,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> String {
    require_tool("openssl");
    let out = Command::new(require_tool("timeout"))
        .args(["3", "openssl", "s_client", "-quiet", "-connect"])
        .arg(addr.to_string())
        .args([
            "-servername",
            server_name,
            "-verify_return_error",
            "-CAfile",
        ])
        .arg(ca)
        .arg("-cert")
        .arg(cert)
        .arg("-key")
        .arg(key)
        .arg("-ign_eof")
        .stdin(Stdio::null())
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) => panic!("cannot run openssl s_client: {e}"),
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned()
}
