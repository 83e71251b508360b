//! A route's own rules: `redirect`, `allow` / `deny`, `upstream_host` and `rate_limit`, parsed
//! and refused with positions.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::Duration;

use sluice_config::{
    AccessAction, RateLimitConfig, RateLimitKey, RedirectConfig, ServiceConfig, UpstreamHost,
    parse_str,
};

const HEAD: &str =
    "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:1\"\n[[service]]\nname = \"s\"\n";

#[test]
fn redirect_access_and_upstream_host_are_parsed() {
    let text = format!(
        "{HEAD}\
         [[route]]\npath = \"/old\"\nredirect = {{ code = 301, url = \"https://new.example.com$path\" }}\n\
         [[route]]\npath = \"/admin\"\nservice = \"s\"\nallow = [\"10.1.2.3/8\", \"192.0.2.7\", \"2001:db8::/32\"]\n\
         [[route]]\npath = \"/public\"\nservice = \"s\"\ndeny = [\"203.0.113.0/24\"]\nupstream_host = \"api.internal:8080\"\n\
         [[route]]\npath = \"/dst\"\nservice = \"s\"\nupstream_host = \"dst\"\n"
    );
    let cfg = parse_str("r.toml", &text).unwrap_or_else(|e| panic!("{e}"));
    let old = &cfg.routes[0];
    assert_eq!(
        old.redirect,
        Some(RedirectConfig {
            code: 301,
            url: "https://new.example.com$path".into()
        })
    );
    assert_eq!(old.service, "", "a redirect needs no service");
    let admin = cfg.routes[1].access.as_ref().unwrap();
    assert_eq!(admin.action, AccessAction::Allow);
    let nets: Vec<String> = admin.networks.iter().map(ToString::to_string).collect();
    assert_eq!(nets, ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]);
    assert!(admin.admits("10.200.0.1".parse().unwrap()));
    assert!(!admin.admits("11.0.0.1".parse().unwrap()));
    let public = &cfg.routes[2];
    assert_eq!(
        public.access.as_ref().map(|a| a.action),
        Some(AccessAction::Deny)
    );
    assert_eq!(
        public.upstream_host,
        Some(UpstreamHost::Name("api.internal:8080".into()))
    );
    assert_eq!(cfg.routes[3].upstream_host, Some(UpstreamHost::Dst));
    assert_eq!(cfg.routes[3].redirect, None);
    assert_eq!(cfg.routes[3].access, None);
}

#[test]
fn bad_rules_are_reported_with_positions() {
    let text = format!(
        "{HEAD}\
         [[route]]\npath = \"/a\"\nredirect = {{ code = 200, url = \"https://x.example\" }}\n\
         [[route]]\npath = \"/b\"\nredirect = {{ code = 302, url = \"ftp://x.example\" }}\n\
         [[route]]\npath = \"/c\"\nredirect = {{ code = 302, url = \"https:///nohost\" }}\n\
         [[route]]\npath = \"/d\"\nservice = \"s\"\nallow = [\"10.0.0.0/8\"]\ndeny = [\"10.1.0.0/16\"]\n\
         [[route]]\npath = \"/e\"\nservice = \"s\"\nallow = [\"10.0.0.0/33\", \"nowhere\"]\n\
         [[route]]\npath = \"/f\"\nservice = \"s\"\nupstream_host = \"bad host\"\n\
         [[route]]\npath = \"/g\"\n\
         [[route]]\npath = \"/h\"\nredirect = {{ code = 301, url = \"/new\" }}\nupstream_host = \"dst\"\n\
         [[route]]\npath = \"/i\"\nredirect = {{ code = 301, url = \"/x\", keep = true }}\n\
         [[route]]\npath = \"/j\"\nservice = \"s\"\ndeny = []\n"
    );
    let shown = parse_str("bad.toml", &text).unwrap_err().to_string();
    for expected in [
        "bad.toml:8:21: error: redirect code 200 is not a redirect status",
        "hint: use 301, 302, 303, 307 or 308",
        "bad.toml:11:32: error: invalid redirect url `ftp://x.example`: it is neither a path nor an http:// or https:// URL",
        "bad.toml:14:32: error: invalid redirect url `https:///nohost`: the URL has no host",
        "bad.toml:19:8: error: a route takes `allow` or `deny`, not both",
        "bad.toml:23:10: error: invalid network `10.0.0.0/33`",
        "bad.toml:23:25: error: invalid network `nowhere`",
        "bad.toml:27:17: error: invalid upstream_host `bad host`",
        "bad.toml:28:1: error: route has no `service`",
        "bad.toml:33:17: error: `upstream_host` has no effect on a redirect route",
        "bad.toml:36:38: error: unknown key `keep` in [route.redirect]",
        "bad.toml:40:8: error: an empty access list",
    ] {
        assert!(
            shown.contains(expected),
            "missing {expected:?} in:\n{shown}"
        );
    }
}

#[test]
fn a_service_with_defaults_is_what_the_file_gives() {
    let cfg = parse_str("s.toml", HEAD).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.services[0], ServiceConfig::with_defaults("s"));
}

#[test]
fn rate_limits_are_parsed_with_their_defaults() {
    let text = format!(
        "{HEAD}\
         [[route]]\npath = \"/a\"\nservice = \"s\"\nrate_limit = {{ rate = 50 }}\n\
         [[route]]\npath = \"/b\"\nservice = \"s\"\n\
         rate_limit = {{ rate = 600, per = \"1m\", burst = 5, key = \"header:X-Api-Key\", max_keys = 1000 }}\n\
         [[route]]\npath = \"/c\"\nservice = \"s\"\nrate_limit = {{ rate = 1, key = \"tls_identity\" }}\n"
    );
    let cfg = parse_str("r.toml", &text).unwrap_or_else(|e| panic!("{e}"));
    let limit = |i: usize| cfg.routes[i].rate_limit.clone().unwrap();
    assert_eq!(
        limit(0),
        RateLimitConfig {
            rate: 50,
            per: Duration::from_secs(1),
            burst: 50,
            key: RateLimitKey::Client,
            max_keys: 100_000,
        }
    );
    assert_eq!(
        limit(1),
        RateLimitConfig {
            rate: 600,
            per: Duration::from_secs(60),
            burst: 5,
            key: RateLimitKey::Header("x-api-key".into()),
            max_keys: 1000,
        }
    );
    assert_eq!(limit(2).key, RateLimitKey::TlsIdentity);
}

#[test]
fn bad_rate_limits_are_reported_with_positions() {
    let text = format!(
        "{HEAD}\
         [[route]]\npath = \"/a\"\nservice = \"s\"\nrate_limit = {{ per = \"1s\" }}\n\
         [[route]]\npath = \"/b\"\nservice = \"s\"\nrate_limit = {{ rate = 0 }}\n\
         [[route]]\npath = \"/c\"\nservice = \"s\"\nrate_limit = {{ rate = 5, per = \"2d\" }}\n\
         [[route]]\npath = \"/d\"\nservice = \"s\"\nrate_limit = {{ rate = 5, key = \"cookie:id\" }}\n\
         [[route]]\npath = \"/e\"\nservice = \"s\"\nrate_limit = {{ rate = 1000, per = \"100ns\" }}\n\
         [[route]]\npath = \"/f\"\nservice = \"s\"\nrate_limit = {{ rate = 5, max_keys = 0 }}\n\
         [[route]]\npath = \"/g\"\nservice = \"s\"\nrate_limit = {{ rate = 5, bucket = 9 }}\n"
    );
    let shown = parse_str("bad.toml", &text).unwrap_err().to_string();
    for expected in [
        "bad.toml:9:14: error: `rate_limit` needs `rate`",
        "bad.toml:13:23: error: 0 is out of range",
        "hint: use a value from 1 to 1000000000",
        "bad.toml:17:32: error: `per` is longer than a day",
        "bad.toml:21:32: error: invalid rate limit key `cookie:id`",
        "hint: use \"client\", \"tls_identity\" or \"header:NAME\"",
        "bad.toml:25:35: error: 1000 requests per 100ns is faster than one a nanosecond",
        "bad.toml:29:37: error: 0 is out of range",
        "bad.toml:33:26: error: unknown key `bucket` in [route.rate_limit]",
    ] {
        assert!(
            shown.contains(expected),
            "missing {expected:?} in:\n{shown}"
        );
    }
}
