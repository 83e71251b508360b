//! A route's own rules: `redirect`, `allow` / `deny` and `upstream_host`, parsed and refused
//! with positions.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use sluice_config::{AccessAction, RedirectConfig, ServiceConfig, UpstreamHost, parse_str};

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
