//! The configuration loader on real files: defaults, every-error reporting, positions, hints.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::Duration;

use sluice_config::{Balancer, HashKey, HostMatch, parse_str};

const GOOD: &str = r#"
[admin]
bind = "127.0.0.1:19901"

[[listener]]
name = "web"
bind = "127.0.0.1:18080"

[[route]]
host = "*.example.com"
path = "/ap1a"
strip = "/ap1a"
service = "ap1a"

[[route]]
path = "/"
prepend = "/base/"
service = "gw"

[[service]]
name = "ap1a"
balancer = "hash"
hash_on = "cookie:JSESSIONID"
instances = ["127.0.0.1:9001", { address = "127.0.0.1:9002", weight = 3 }]
timeouts = { connect = "250ms" }

[[service]]
name = "gw"
instances = []
[service.retries]
attempts = 1
"#;

#[test]
fn good_file_gets_defaults_and_normalised_values() {
    let cfg = parse_str("good.toml", GOOD).expect("valid");
    assert_eq!(cfg.listeners[0].max_header_bytes, 32 * 1024);
    assert_eq!(cfg.routes.len(), 2);
    // A route without `listener` takes the only listener.
    assert_eq!(cfg.routes[0].listener, "web");
    assert_eq!(
        cfg.routes[0].host,
        HostMatch::Wildcard("example.com".into())
    );
    assert_eq!(cfg.routes[0].name, "*.example.com/ap1a");
    assert_eq!(cfg.routes[1].prepend.as_deref(), Some("/base"));
    let ap1a = cfg.service("ap1a").unwrap();
    assert_eq!(
        ap1a.balancer,
        Balancer::Hash(HashKey::Cookie("JSESSIONID".into()))
    );
    assert_eq!(ap1a.instances[1].weight, 3);
    assert_eq!(ap1a.timeouts.connect, Duration::from_millis(250));
    assert_eq!(ap1a.timeouts.response_header, Duration::from_secs(15));
    assert_eq!(cfg.service("gw").unwrap().retries.attempts, 1);
    assert_eq!(cfg.service("gw").unwrap().retries.on_status, vec![502, 503]);
}

#[test]
fn every_error_is_reported_with_its_position() {
    let text = r#"[[listener]]
name = "web"
bnd = "127.0.0.1:8080"

[[listener]]
name = "api"
bind = "not-an-address"
max_header_bytes = 10

[[route]]
listener = "wbe"
path = "api"
service = "missing"

[[service]]
name = "svc"
balancer = "round-robin"
instances = ["127.0.0.1"]
timeouts = { conect = "1s", idle = "soon" }
"#;
    let errs = parse_str("bad.toml", text).unwrap_err();
    let shown = errs.to_string();
    let expect = [
        "bad.toml:1:1: error: in [listener]: missing field `bind`",
        "bad.toml:3:1: error: unknown key `bnd` in [listener]",
        "bad.toml:7:8: error: invalid bind address `not-an-address`",
        "bad.toml:8:20: error: 10 is out of range",
        "bad.toml:11:12: error: route refers to unknown listener `wbe`",
        "hint: did you mean `web`?",
        "bad.toml:12:8: error: `path` must start with '/'",
        "bad.toml:13:11: error: route refers to unknown service `missing`",
        "bad.toml:17:12: error: unknown balancer \"round-robin\"",
        "hint: did you mean \"round_robin\"?",
        "bad.toml:18:14: error: instance address `127.0.0.1` has no port",
        "bad.toml:19:14: error: unknown key `conect` in [service.timeouts]",
        "hint: did you mean `connect`?",
        "bad.toml:19:36: error: invalid duration `soon`",
    ];
    for e in expect {
        assert!(shown.contains(e), "missing {e:?} in:\n{shown}");
    }
}

#[test]
fn syntax_errors_point_at_the_line() {
    let errs = parse_str("s.toml", "[[listener]]\nname = \"a\nbind = 1\n").unwrap_err();
    let d = &errs.0[0];
    assert_eq!((d.line, d.file.to_str().unwrap()), (2, "s.toml"));
    assert!(d.message.starts_with("invalid TOML"), "{d}");
}

#[test]
fn unknown_sections_and_duplicates_are_errors() {
    let text = r#"
[[listeners]]
name = "web"

[[listener]]
name = "web"
bind = "127.0.0.1:1"

[[listener]]
name = "web"
bind = "127.0.0.1:1"

[[service]]
name = "s"
instances = ["127.0.0.1:1", "127.0.0.1:1"]
"#;
    let shown = parse_str("d.toml", text).unwrap_err().to_string();
    for e in [
        "d.toml:2:3: error: unknown section `listeners`",
        "did you mean `listener`?",
        "d.toml:10:8: error: duplicate listener name `web`",
        "first defined on line 6",
        "d.toml:11:8: error: address 127.0.0.1:1 is bound by two listeners",
        "d.toml:15:29: error: instance 127.0.0.1:1 is listed twice",
    ] {
        assert!(shown.contains(e), "missing {e:?} in:\n{shown}");
    }
}

#[test]
fn hash_and_host_validation() {
    let text = r#"
[[listener]]
name = "web"
bind = "127.0.0.1:1"

[[route]]
host = "exa mple.com"
service = "s"

[[route]]
host = "Example.COM"
path = "/x"
service = "s"

[[service]]
name = "s"
hash_on = "header:x-user"
[[service]]
name = "t"
balancer = "hash"
hash_on = "body"
"#;
    let shown = parse_str("h.toml", text).unwrap_err().to_string();
    assert!(
        shown.contains("h.toml:7:8: error: invalid host `exa mple.com`"),
        "{shown}"
    );
    assert!(
        shown.contains("`hash_on` only applies to balancer = \"hash\""),
        "{shown}"
    );
    assert!(
        shown.contains("h.toml:21:11: error: invalid hash_on `body`"),
        "{shown}"
    );
    // The upper-case host is fine: it is lower-cased.
    assert!(!shown.contains("Example.COM"), "{shown}");
}

#[test]
fn empty_file_is_a_valid_config_with_defaults() {
    let cfg = parse_str("empty.toml", "").unwrap();
    assert_eq!(cfg.admin.bind.to_string(), "127.0.0.1:9901");
    assert!(cfg.listeners.is_empty());
}

/// Mirror members on one host: one IP, each with its own web server port to be checked on.
#[test]
fn instances_name_their_own_check_target_over_the_services() {
    let text = r#"
[[listener]]
name = "web"
bind = "127.0.0.1:1"

[[service]]
name = "iris"
instances = [
    { address = "127.0.0.1:1972", check_port = 52773 },
    { address = "127.0.0.1:1973", check_port = 52774, check_address = "127.0.0.11" },
    "127.0.0.1:1974",
]
[service.health]
kind = "http"
port = 52000
"#;
    let cfg = parse_str("m.toml", text).expect("valid");
    let iris = cfg.service("iris").unwrap();
    let check = iris.health.as_ref().unwrap();
    let targets: Vec<String> = iris
        .instances
        .iter()
        .map(|i| i.check_target(check).to_string())
        .collect();
    assert_eq!(
        targets,
        ["127.0.0.1:52773", "127.0.0.11:52774", "127.0.0.1:52000"],
        "the instance's own, else the service's port, else the instance's address"
    );
    let mut bare = check.clone();
    bare.port = None;
    assert_eq!(
        iris.instances[2].check_target(&bare).to_string(),
        "127.0.0.1:1974",
        "without either, the instance itself"
    );
}

#[test]
fn bad_instance_check_targets_are_reported_with_positions() {
    let text = r#"
[[listener]]
name = "web"
bind = "127.0.0.1:1"

[[service]]
name = "iris"
instances = [
  { address = "127.0.0.1:1972", check_port = 70000 },
  { address = "127.0.0.1:1973", check_address = "mirror-b" },
  { address = "127.0.0.1:1974", check_prot = 52773 },
]
[service.health]
kind = "tcp"
"#;
    let shown = parse_str("c.toml", text).unwrap_err().to_string();
    for e in [
        "c.toml:9:46: error: 70000 is out of range",
        "use a value from 1 to 65535",
        "c.toml:10:49: error: invalid check address `mirror-b`",
        "use an IP address",
        "c.toml:11:33: error: unknown key `check_prot` in [service.instances]",
        "did you mean `check_port`?",
    ] {
        assert!(shown.contains(e), "missing {e:?} in:\n{shown}");
    }
}

#[test]
fn closed_choices_take_their_value_and_report_a_misspelling_with_the_closest() {
    let good = r#"
[log]
format = "json"
[access_log]
format = "combined"
[[listener]]
name = "tcp"
bind = "127.0.0.1:1"
protocol = "tcp"
service = "s"
proxy_protocol = "v2"
[[service]]
name = "s"
instances = []
on_demotion = "keep"
"#;
    let cfg = parse_str("c.toml", good).expect("valid");
    assert_eq!(cfg.log.format, sluice_config::LogFormat::Json);
    assert_eq!(
        cfg.access_log.format,
        sluice_config::AccessLogFormat::Combined
    );
    let tcp = &cfg.listeners[0];
    assert_eq!(tcp.protocol, sluice_config::ListenerProtocol::Tcp);
    assert_eq!(
        tcp.tcp.as_ref().unwrap().proxy_protocol,
        sluice_config::ProxyProtocol::V2
    );
    assert_eq!(cfg.services[0].on_demotion, sluice_config::OnDemotion::Keep);

    let bad = r#"
[log]
format = "jsn"
[access_log]
format = "common"
[[listener]]
name = "web"
bind = "127.0.0.1:1"
protocol = "htp"
[[listener]]
name = "tcp"
bind = "127.0.0.1:2"
protocol = "tcp"
service = "s"
proxy_protocol = "v3"
[[service]]
name = "s"
instances = []
serve = "primay"
on_demotion = "kep"
"#;
    let shown = parse_str("c.toml", bad).unwrap_err().to_string();
    for e in [
        "c.toml:3:10: error: unknown log format \"jsn\"",
        "did you mean \"json\"?",
        "c.toml:5:10: error: unknown access log format \"common\"",
        "choose one of: json, combined",
        "c.toml:9:12: error: unknown listener protocol \"htp\"",
        "did you mean \"http\"?",
        "c.toml:15:18: error: unknown proxy_protocol \"v3\"",
        "c.toml:19:9: error: unknown serve \"primay\"",
        "did you mean \"primary\"?",
        "c.toml:20:15: error: unknown on_demotion \"kep\"",
        "did you mean \"keep\"?",
    ] {
        assert!(shown.contains(e), "missing {e:?} in:\n{shown}");
    }
}

#[test]
fn a_service_protocol_agrees_with_its_tls() {
    let service = |extra: &str| {
        format!(
            "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:1\"\n[[route]]\nservice = \"s\"\n\
             [[service]]\nname = \"s\"\ninstances = [\"127.0.0.1:2\"]\n{extra}\n"
        )
    };
    let cfg = parse_str("c.toml", &service("")).expect("valid");
    assert_eq!(
        cfg.services[0].protocol,
        sluice_config::UpstreamProtocol::Http1
    );
    assert_eq!(cfg.services[0].pool.http2_max_connections, 4);
    assert_eq!(cfg.services[0].pool.max_connecting, 64);
    let cfg = parse_str("c.toml", &service("[service.pool]\nmax_connecting = 8")).expect("valid");
    assert_eq!(cfg.services[0].pool.max_connecting, 8);
    let cfg = parse_str(
        "c.toml",
        &service("protocol = \"h2c\"\n[service.pool]\nhttp2_max_connections = 2"),
    )
    .expect("valid");
    assert_eq!(
        cfg.services[0].protocol,
        sluice_config::UpstreamProtocol::H2c
    );
    assert_eq!(cfg.services[0].pool.http2_max_connections, 2);
    let tls = "[service.tls]\ninsecure_skip_verify = true";
    let cfg = parse_str("c.toml", &service(&format!("protocol = \"h2\"\n{tls}"))).expect("valid");
    assert_eq!(
        cfg.services[0].protocol,
        sluice_config::UpstreamProtocol::H2
    );

    for (extra, want) in [
        (
            "protocol = \"h2\"".to_owned(),
            "c.toml:9:12: error: protocol = \"h2\" is HTTP/2 over TLS, and this service has no [service.tls]",
        ),
        (
            format!("protocol = \"h2c\"\n{tls}"),
            "c.toml:9:12: error: protocol = \"h2c\" is cleartext HTTP/2, but this service has [service.tls]",
        ),
        (
            "protocol = \"http2\"".to_owned(),
            "c.toml:9:12: error: unknown protocol \"http2\"",
        ),
        (
            "[service.pool]\nhttp2_max_connections = 0".to_owned(),
            "c.toml:10:25: error:",
        ),
        (
            "[service.pool]\nmax_connecting = 0".to_owned(),
            "c.toml:10:18: error:",
        ),
    ] {
        let shown = parse_str("c.toml", &service(&extra))
            .unwrap_err()
            .to_string();
        assert!(shown.contains(want), "missing {want:?} in:\n{shown}");
    }
}

#[test]
fn a_grpc_check_asks_about_a_service_or_the_whole_server() {
    let service = |health: &str| {
        format!("[[service]]\nname = \"s\"\ninstances = []\n[service.health]\n{health}\n")
    };
    let kind = |health: &str| {
        let cfg = parse_str("g.toml", &service(health)).unwrap_or_else(|e| panic!("{e}"));
        cfg.services[0].health.as_ref().unwrap().kind.clone()
    };
    assert_eq!(
        kind("kind = \"grpc\""),
        sluice_config::CheckKind::Grpc {
            service: String::new()
        },
        "no grpc_service: the server's overall health"
    );
    assert_eq!(
        kind("kind = \"grpc\"\ngrpc_service = \"sluice.test.Echo\"\nport = 50051"),
        sluice_config::CheckKind::Grpc {
            service: "sluice.test.Echo".into()
        }
    );
    for (health, want) in [
        (
            "kind = \"grpc\"\ngrpc_service = \"a\tb\"",
            "g.toml:6:16: error: gRPC service name \"a\\tb\" contains whitespace or control characters",
        ),
        (
            "kind = \"grpcc\"",
            "g.toml:5:8: error: unknown health check kind \"grpcc\"\n  hint: did you mean \"grpc\"?",
        ),
        (
            "kind = \"health\"",
            "choose one of: http, tcp, command, grpc",
        ),
        (
            "timeout = \"1s\"",
            "add kind = \"http\", \"tcp\", \"command\" or \"grpc\"",
        ),
    ] {
        let shown = parse_str("g.toml", &service(health))
            .unwrap_err()
            .to_string();
        assert!(shown.contains(want), "missing {want:?} in:\n{shown}");
    }
}

/// Keys of one kind given with another are errors at their position: a `grpc` check with a
/// `path` would otherwise probe something else than its author meant.
#[test]
fn keys_of_another_check_kind_are_errors_with_positions() {
    let text = r#"
[[service]]
name = "g"
instances = []
[service.health]
kind = "grpc"
path = "/healthz"
expect_status = [200]
send = "PING"
args = ["/bin/true"]
grpc_service = "ok"

[[service]]
name = "h"
instances = []
[service.health]
kind = "http"
grpc_service = "billing.Ledger"
"#;
    let shown = parse_str("k.toml", text).unwrap_err().to_string();
    for e in [
        "k.toml:7:8: error: `path` only applies to kind = \"http\"",
        "k.toml:8:18: error: `expect_status` only applies to kind = \"http\"",
        "k.toml:9:8: error: `send` only applies to kind = \"tcp\"",
        "k.toml:10:9: error: `args` only applies to kind = \"command\"",
        "k.toml:18:16: error: `grpc_service` only applies to kind = \"grpc\"",
        "hint: remove it, or change the check's kind",
    ] {
        assert!(shown.contains(e), "missing {e:?} in:\n{shown}");
    }
    assert!(
        !shown.contains("k.toml:11:"),
        "grpc_service belongs to a grpc check:\n{shown}"
    );
}

#[test]
fn an_admin_api_off_loopback_needs_tokens_or_says_insecure() {
    let admin = |body: &str| format!("[admin]\n{body}\n");
    for ok in [
        "bind = \"127.0.0.5:9901\"",
        "bind = \"[::1]:9901\"",
        "bind = \"0.0.0.0:9901\"\ninsecure = true",
        "bind = \"0.0.0.0:9901\"\ntoken_env = \"SLUICE_ADMIN_TOKEN\"",
        "bind = \"10.0.0.1:9901\"\nread_token_env = \"READ\"",
    ] {
        let cfg = parse_str("c.toml", &admin(ok)).unwrap_or_else(|e| panic!("{ok}: {e}"));
        assert_eq!(cfg.admin.authenticates(), ok.contains("token"), "{ok}");
    }
    for (bad, want) in [
        (
            "bind = \"0.0.0.0:9901\"",
            "c.toml:2:8: error: the admin API on 0.0.0.0:9901 would let anyone who reaches it reload the proxy",
        ),
        (
            "token_env = \"\"",
            "c.toml:2:13: error: `` is not an environment variable name",
        ),
        (
            "tokens_file = \"/nonexistent/tokens\"",
            "c.toml:2:15: error: cannot read `/nonexistent/tokens`",
        ),
    ] {
        let shown = parse_str("c.toml", &admin(bad)).unwrap_err().to_string();
        assert!(shown.contains(want), "missing {want:?} in:\n{shown}");
    }
}

#[test]
fn the_policy_compile_cache_defaults_to_the_user_cache_and_can_be_moved_or_turned_off() {
    let cache = |runtime: &str| {
        let text = format!("[runtime]\n{runtime}\n{GOOD}");
        parse_str("/etc/sluice/sluice.toml", &text)
            .expect("valid")
            .runtime
            .policy_cache
    };
    let default = cache("");
    assert_eq!(default, sluice_config::defaults::policy_cache());
    if std::env::var_os("HOME").is_some() {
        assert!(default.unwrap().ends_with("sluice/policies"));
    }
    assert_eq!(cache("policy_cache = \"\""), None);
    assert_eq!(
        cache("policy_cache = \"cache\"").as_deref(),
        Some(std::path::Path::new("/etc/sluice/cache"))
    );
    assert_eq!(
        cache("policy_cache = \"/var/cache/sluice\"").as_deref(),
        Some(std::path::Path::new("/var/cache/sluice"))
    );
}
