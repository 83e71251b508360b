//! `[[discovery]]` and `[routing]`: defaults, kinds, and errors with their positions.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::Duration;

use sluice_config::{DiscoveredRoutePolicy, DiscoverySource, parse_str};

#[test]
fn sources_get_defaults_and_routing_takes_the_first_http_listener() {
    let text = r#"
[[listener]]
name = "web"
bind = "127.0.0.1:18080"

[[discovery]]
kind = "file"
dir = "registry"

[[discovery]]
kind = "etcd"
endpoints = ["http://127.0.0.1:2379"]

[[discovery]]
name = "pinned"
kind = "static"
[[discovery.instances]]
name = "web"
address = "10.0.0.9"
port = 8000
tags = ["urlprefix-/legacy"]
"#;
    let cfg = parse_str("/etc/sluice/sluice.toml", text).expect("valid");
    assert_eq!(cfg.discovery.len(), 3);
    assert_eq!(cfg.discovery[0].name, "file");
    assert_eq!(
        cfg.discovery[0].source,
        DiscoverySource::File {
            dir: "/etc/sluice/registry".into(),
            poll_interval: Duration::from_secs(1),
            notify: true,
            fallback_poll_interval: Duration::from_secs(10),
        }
    );
    match &cfg.discovery[1].source {
        DiscoverySource::Etcd {
            prefix,
            request_timeout,
            ..
        } => {
            assert_eq!(prefix, "/sluice/services/");
            assert_eq!(*request_timeout, Duration::from_secs(5));
        }
        other => panic!("{other:?}"),
    }
    match &cfg.discovery[2].source {
        DiscoverySource::Static { instances } => {
            assert_eq!(instances[0].id, "web", "the id defaults to the name");
            assert_eq!(instances[0].port, 8000);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(cfg.routing.listener.as_deref(), Some("web"));
    assert_eq!(cfg.routing.policy, None);
    assert_eq!(cfg.routing.debounce, Duration::from_millis(100));
}

#[test]
fn discovery_errors_say_where() {
    let text = r#"[[listener]]
name = "web"
bind = "127.0.0.1:18080"

[[discovery]]
kind = "fiel"

[[discovery]]
kind = "file"
endpoints = ["http://x:1"]

[[discovery]]
kind = "etcd"
endpoints = ["127.0.0.1:2379"]
prefix = "/no-slash"

[[discovery]]
kind = "etcd"
endpoints = ["http://127.0.0.1:2379"]

[[discovery]]
kind = "static"
[[discovery.instances]]
name = "a/b"
prot = 1

[routing]
listener = "wbe"
policy = "nope"
"#;
    let expect = [
        "bad.toml:6:8: error: unknown discovery kind \"fiel\"",
        "hint: did you mean \"file\"?",
        "bad.toml:10:13: error: `endpoints` is only valid with kind = \"etcd\"",
        "bad.toml:9:8: error: a file discovery source needs `dir`",
        "bad.toml:14:14: error: invalid etcd endpoint `127.0.0.1:2379`",
        "bad.toml:15:10: error: etcd prefix `/no-slash` must end with '/'",
        "bad.toml:18:8: error: duplicate discovery source name `etcd`",
        "bad.toml:24:8: error: invalid instance name `a/b`",
        "bad.toml:25:1: error: unknown key `prot` in [discovery.instances]",
        "hint: did you mean `port`?",
        "bad.toml:23:1: error: static instance has no `port`",
        "bad.toml:28:12: error: [routing] listener `wbe` is not an HTTP listener",
        "hint: did you mean `web`?",
        "bad.toml:29:10: error: [routing] refers to unknown policy `nope`",
    ];
    assert_reports(text, &expect);
}

#[test]
fn override_errors_point_into_the_string() {
    let text = r#"[[listener]]
name = "web"
bind = "127.0.0.1:18080"

[routing]
overrides = """
route add web /web http://127.0.0.1:8001/ weight 0.2
route add web /web http://db.local:1
route del web /web tags "a"
"""
"#;
    assert_reports(
        text,
        &[
            "bad.toml:8:20: error: in [routing] overrides: `http://db.local:1` is not `http://IP:PORT`",
            "bad.toml:9:20: error: in [routing] overrides: `tags` is not supported in overrides",
        ],
    );
    let good = parse_str(
        "good.toml",
        &text
            .replace("http://db.local:1", "http://127.0.0.1:1")
            .replace(" tags \"a\"", ""),
    )
    .expect("valid");
    assert_eq!(good.routing.overrides.len(), 3);
}

#[test]
fn file_watch_settings_and_the_overrides_key() {
    let text = r#"[[listener]]
name = "web"
bind = "127.0.0.1:18080"

[[kv]]
source = "file"
path = "kv.toml"

[[discovery]]
kind = "file"
dir = "/registry"
notify = false
fallback_poll_interval = "30s"

[routing]
overrides_key = "sluice/overrides"
"#;
    let cfg = parse_str("/etc/sluice/sluice.toml", text).expect("valid");
    assert_eq!(
        cfg.discovery[0].source,
        DiscoverySource::File {
            dir: "/registry".into(),
            poll_interval: Duration::from_secs(1),
            notify: false,
            fallback_poll_interval: Duration::from_secs(30),
        }
    );
    assert_eq!(
        cfg.routing.overrides_key.as_deref(),
        Some("sluice/overrides")
    );

    let without_kv = text.replace("[[kv]]\nsource = \"file\"\npath = \"kv.toml\"\n", "");
    let shown = parse_str("bad.toml", &without_kv).unwrap_err().to_string();
    assert!(
        shown.contains("bad.toml:13:17: error: [routing] overrides_key `sluice/overrides` needs a [[kv]] source"),
        "{shown}"
    );
    let etcd_with_notify = text.replace(
        "kind = \"file\"\ndir = \"/registry\"",
        "kind = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]",
    );
    let shown = parse_str("bad.toml", &etcd_with_notify)
        .unwrap_err()
        .to_string();
    assert!(
        shown.contains("`notify` is only valid with kind = \"file\""),
        "{shown}"
    );
    assert!(
        shown.contains("`fallback_poll_interval` is only valid with kind = \"file\""),
        "{shown}"
    );
}

#[test]
fn request_policies_of_discovered_routes_name_request_policies() {
    let head = r#"[[listener]]
name = "web"
bind = "127.0.0.1:18080"

[[policy]]
name = "jwt"
world = "request"
file = "builtin:jwt"
config = { secret = "s" }

[[policy]]
name = "mirror"
world = "health"
file = "builtin:mirror-primary"
"#;
    let good = format!(
        "{head}\n[[discovery]]\nkind = \"static\"\n[[discovery.instances]]\nname = \"api\"\naddress = \"127.0.0.1\"\nport = 9\n\n[routing]\nrequest_policies = {{ api = \"jwt\", \"*\" = \"jwt\" }}\n"
    );
    let config = parse_str("good.toml", &good).unwrap_or_else(|e| panic!("{e}"));
    let jwt = DiscoveredRoutePolicy {
        policy: "jwt".into(),
        services: vec![],
    };
    assert_eq!(config.routing.request_policy_for("api"), Some(&jwt));
    assert_eq!(config.routing.request_policy_for("other"), Some(&jwt));

    let with_services = good.replace(
        "api = \"jwt\"",
        "api = { policy = \"jwt\", services = [\"api-canary\", \"web\"] }",
    );
    let config = parse_str("good.toml", &with_services).unwrap_or_else(|e| panic!("{e}"));
    let picks = DiscoveredRoutePolicy {
        policy: "jwt".into(),
        services: vec!["api-canary".into(), "web".into()],
    };
    assert_eq!(config.routing.request_policy_for("api"), Some(&picks));
    assert_eq!(config.routing.request_policy_for("other"), Some(&jwt));

    let bad = format!(
        "{head}\n[routing]\nrequest_policies = {{ api = \"jtw\", web = \"mirror\", \"\" = \"jwt\" }}\n"
    );
    assert_reports(
        &bad,
        &[
            "bad.toml:17:20: error: [routing] request_policies applies to discovered routes, and there is no [[discovery]] source",
            "bad.toml:17:56: error: [routing] request_policies has an empty service name",
            "bad.toml:17:28: error: [routing] request_policies refers to unknown policy `jtw`",
            "hint: did you mean `jwt`?",
            "bad.toml:17:41: error: policy `mirror` is a health policy, not a request policy",
        ],
    );

    let bad_table = format!(
        "{head}\n[[discovery]]\nkind = \"static\"\n\n[routing.request_policies.shop]\n\
         policy = \"jwt\"\nservices = [\"a\", \"\", \"a\"]\npolcy = 1\n"
    );
    assert_reports(
        &bad_table,
        &[
            "bad.toml:21:18: error: an empty service name in `services`",
            "bad.toml:21:22: error: service `a` is listed twice",
            "bad.toml:22:1: error: unknown key `polcy` in [routing.request_policies.shop]",
            "hint: did you mean `policy`?",
        ],
    );
}

/// `text`, loaded as `bad.toml`, is refused with every one of `expected` in the report.
fn assert_reports(text: &str, expected: &[&str]) {
    let shown = parse_str("bad.toml", text).unwrap_err().to_string();
    for e in expected {
        assert!(shown.contains(e), "missing {e:?} in:\n{shown}");
    }
}
