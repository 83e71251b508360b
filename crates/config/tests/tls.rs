//! `[listener.tls]` and `[listener.authz]`: values, defaults and positioned errors.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sluice_config::{ClientAuthMode, TlsVersion, parse_str};

#[test]
fn tls_and_authz_sections_are_parsed_with_defaults_and_relative_paths() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["a.pem", "a.key", "b.pem", "b.key", "ca.pem"] {
        std::fs::write(dir.path().join(f), "x").unwrap();
    }
    let text = r#"
[[listener]]
name = "db"
bind = "127.0.0.1:0"
protocol = "tcp"
service = "data"
[listener.tls]
cert = "a.pem"
key = "a.key"
certificates = [{ cert = "b.pem", key = "b.key" }]
client_ca = "ca.pem"
client_auth = "required"
min_version = "1.3"
identity_headers = { cn = "X-Client-CN", fingerprint = "x-client-fp" }
[listener.authz]
allow_cn = ["app1"]
allow_fingerprint = ["AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89"]
allow_cidr = ["10.0.0.0/8", "192.0.2.7"]
policy = "ecp"

[[service]]
name = "data"
instances = ["127.0.0.1:1972"]

[[policy]]
name = "ecp"
file = "ecp.wasm"
world = "authz"
"#;
    let path = dir.path().join("sluice.toml");
    let cfg = parse_str(&path, text).unwrap();
    let tls = cfg.listeners[0].tls.as_ref().unwrap();
    assert_eq!(tls.certificates.len(), 2);
    assert_eq!(tls.certificates[0].cert, dir.path().join("a.pem"));
    assert_eq!(tls.certificates[1].key, dir.path().join("b.key"));
    assert_eq!(tls.client_auth, ClientAuthMode::Required);
    assert_eq!(tls.min_version, TlsVersion::Tls13);
    assert_eq!(tls.handshake_timeout, Duration::from_secs(10));
    assert_eq!(tls.identity_headers.cn.as_deref(), Some("x-client-cn"));
    assert_eq!(tls.identity_headers.names().count(), 2);
    let authz = cfg.listeners[0].authz.as_ref().unwrap();
    assert_eq!(authz.allow_fingerprint[0].len(), 64);
    assert_eq!(authz.allow_cidr.len(), 2);
    assert_eq!(authz.policy.as_deref(), Some("ecp"));
}

#[test]
fn tls_errors_point_at_the_key() {
    let text = r#"[[listener]]
name = "web"
bind = "127.0.0.1:0"
[listener.tls]
cert = "/nonexistent/server.pem"
client_auth = "requird"
min_version = "1.1"
handshake_timeout = "soon"
identity_headers = { cn = "bad header", serial = "x" }
sni = true
[listener.authz]
allow_fingerprint = ["abc"]
allow_cidr = ["10.0.0.0/33"]
policy = "nope"
"#;
    let shown = parse_str("bad.toml", text).unwrap_err().to_string();
    let expect = [
        "bad.toml:5:8: error: `cert` and `key` go together",
        "bad.toml:6:15: error: unknown client_auth \"requird\"",
        "hint: did you mean \"required\"?",
        "bad.toml:7:15: error: unknown min_version \"1.1\"",
        "bad.toml:8:21: error: invalid duration `soon`",
        "bad.toml:9:27: error: invalid header name `bad header`",
        "bad.toml:9:41: error: unknown key `serial` in [listener.tls.identity_headers]",
        "bad.toml:10:1: error: unknown key `sni` in [listener.tls]",
        "bad.toml:12:22: error: `abc` is not a SHA-256 fingerprint",
        "bad.toml:13:15: error: invalid network `10.0.0.0/33`",
        "bad.toml:14:10: error: [listener.authz] refers to unknown policy `nope`",
    ];
    for e in expect {
        assert!(shown.contains(e), "missing {e:?} in:\n{shown}");
    }
    let missing = r#"[[listener]]
name = "web"
bind = "127.0.0.1:0"
[listener.tls]
cert = "/nonexistent/server.pem"
key = "/nonexistent/server.key"
client_auth = "optional"
"#;
    let shown = parse_str("m.toml", missing).unwrap_err().to_string();
    assert!(
        shown.contains("m.toml:5:8: error: cannot read `/nonexistent/server.pem`"),
        "{shown}"
    );
    assert!(
        shown.contains("m.toml:6:7: error: cannot read `/nonexistent/server.key`"),
        "{shown}"
    );
    assert!(
        shown.contains("m.toml:7:15: error: client_auth = \"optional\" needs `client_ca`"),
        "{shown}"
    );
}

#[test]
fn service_tls_needs_a_ca_unless_verification_is_explicitly_off() {
    let text = r#"[[listener]]
name = "web"
bind = "127.0.0.1:0"
[[service]]
name = "s"
[service.tls]
cert = "/nonexistent/c.pem"
server_name = ""
verify = false
"#;
    let shown = parse_str("s.toml", text).unwrap_err().to_string();
    for e in [
        "s.toml:5:8: error: [service.tls] of `s` has no `ca`",
        "s.toml:7:8: error: `cert` and `key` go together",
        "s.toml:8:15: error: `server_name` is empty",
        "s.toml:9:1: error: unknown key `verify` in [service.tls]",
    ] {
        assert!(shown.contains(e), "missing {e:?} in:\n{shown}");
    }
    let ok = "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n[[service]]\nname = \"s\"\ntls = { insecure_skip_verify = true, server_name = \"db.test\" }\n";
    let cfg = parse_str("ok.toml", ok).unwrap();
    let tls = cfg.services[0].tls.as_ref().unwrap();
    assert!(tls.insecure_skip_verify && tls.ca.is_none());
    assert_eq!(tls.server_name.as_deref(), Some("db.test"));
}
