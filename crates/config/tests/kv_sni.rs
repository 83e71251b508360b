//! `[[kv]]` and `[[listener.sni]]`: values, defaults and positioned errors.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sluice_config::{HostMatch, KvSourceConfig, parse_str};

#[test]
fn kv_sources_are_parsed_with_defaults_and_relative_paths() {
    let text = r#"
[[kv]]
source = "etcd"
endpoints = ["http://127.0.0.1:2379"]
prefix = "ecp/"
request_timeout = "2s"
[[kv]]
source = "file"
path = "kv.toml"
[[kv]]
source = "env"
prefix = "CLIENT_"
"#;
    let cfg = parse_str("/etc/sluice/sluice.toml", text).unwrap();
    assert_eq!(cfg.kv.len(), 3);
    assert_eq!(
        cfg.kv[0].source,
        KvSourceConfig::Etcd {
            endpoints: vec!["http://127.0.0.1:2379".into()]
        }
    );
    assert_eq!(cfg.kv[0].prefix, "ecp/");
    assert_eq!(cfg.kv[0].request_timeout, Duration::from_secs(2));
    assert_eq!(
        cfg.kv[1].source,
        KvSourceConfig::File("/etc/sluice/kv.toml".into())
    );
    assert_eq!(cfg.kv[1].poll, Duration::from_secs(1));
    assert_eq!(cfg.kv[1].prefix, "");
    assert_eq!(cfg.kv[2].source, KvSourceConfig::Env);
}

#[test]
fn kv_errors_point_at_the_key() {
    let text = r#"[[kv]]
source = "consul"
[[kv]]
source = "file"
[[kv]]
source = "etcd"
endpoints = ["127.0.0.1:2379"]
poll = "1s"
[[kv]]
source = "env"
path = "x"
prefx = "a"
"#;
    let shown = parse_str("bad.toml", text).unwrap_err().to_string();
    for expect in [
        "bad.toml:2:10: error: unknown KV source \"consul\"",
        "bad.toml:4:10: error: a file KV source needs a `path`",
        "bad.toml:7:14: error: invalid etcd endpoint `127.0.0.1:2379`",
        "bad.toml:8:8: error: `poll` does not apply to source = \"etcd\"",
        "bad.toml:11:8: error: `path` does not apply to source = \"env\"",
        "bad.toml:12:1: error: unknown key `prefx` in [kv]",
    ] {
        assert!(shown.contains(expect), "missing {expect:?} in:\n{shown}");
    }
}

#[test]
fn sni_routes_default_service_and_limits() {
    let text = r#"
[[listener]]
name = "tls"
bind = "127.0.0.1:0"
protocol = "tcp"
service = "fallback"
sni_timeout = "2s"
[[listener.sni]]
host = "A.Example.com"
service = "a"
[[listener.sni]]
host = "*.example.com"
service = "b"

[[listener]]
name = "strict"
bind = "127.0.0.1:0"
protocol = "tcp"
[[listener.sni]]
host = "only.test"
service = "a"

[[service]]
name = "a"
[[service]]
name = "b"
[[service]]
name = "fallback"
"#;
    let cfg = parse_str("sni.toml", text).unwrap();
    let tcp = cfg.listeners[0].tcp.as_ref().unwrap();
    assert_eq!(tcp.service.as_deref(), Some("fallback"));
    let sni = tcp.sni.as_ref().unwrap();
    assert_eq!(sni.timeout, Duration::from_secs(2));
    assert_eq!(sni.max_bytes, 16 * 1024);
    assert_eq!(sni.routes[0].host, HostMatch::Exact("a.example.com".into()));
    assert_eq!(
        sni.routes[1].host,
        HostMatch::Wildcard("example.com".into())
    );
    let strict = cfg.listeners[1].tcp.as_ref().unwrap();
    assert_eq!(strict.service, None);
    assert_eq!(strict.sni.as_ref().unwrap().timeout, Duration::from_secs(5));
}

#[test]
fn sni_errors_point_at_the_key() {
    let text = r#"[[listener]]
name = "tls"
bind = "127.0.0.1:0"
protocol = "tcp"
sni_max_bytes = 10
[listener.tls]
cert = "a.pem"
key = "a.key"
[[listener.sni]]
host = "a.test"
service = "nope"
[[listener.sni]]
host = "*"
service = "a"
[[listener.sni]]
host = "A.test"
service = "a"

[[listener]]
name = "web"
bind = "127.0.0.2:0"
sni_timeout = "1s"

[[service]]
name = "a"
"#;
    let shown = parse_str("bad.toml", text).unwrap_err().to_string();
    for expect in [
        "bad.toml:2:8: error: listener `tls` has both [listener.tls] and [[listener.sni]]",
        "bad.toml:5:17: error: 10 is out of range",
        "bad.toml:11:11: error: TCP listener refers to unknown service `nope`",
        "bad.toml:13:8: error: an SNI entry needs a server name",
        "bad.toml:16:8: error: duplicate SNI entry for `a.test`",
        "bad.toml:22:15: error: `sni_timeout` only applies to a TCP listener",
    ] {
        assert!(shown.contains(expect), "missing {expect:?} in:\n{shown}");
    }
}
