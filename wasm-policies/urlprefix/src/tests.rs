use super::*;

fn instance(id: &str, service: &str, port: u16, tags: &[&str]) -> Instance {
    Instance {
        id: id.into(),
        service: service.into(),
        address: "10.0.0.1".into(),
        port,
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        metadata: vec![],
        health: HealthStatus::Passing,
    }
}

fn policy(config: &str) -> UrlPrefix {
    UrlPrefix::configure(config).unwrap()
}

fn split(entries: Vec<RouteEntry>) -> (Vec<Route>, Vec<RouteError>) {
    let mut routes = Vec::new();
    let mut errors = Vec::new();
    for entry in entries {
        match entry {
            RouteEntry::Route(route) => routes.push(route),
            RouteEntry::Error(error) => errors.push(error),
        }
    }
    (routes, errors)
}

fn build(catalog: &[Instance]) -> (Vec<Route>, Vec<RouteError>) {
    split(policy("{}").build_routes(catalog).unwrap())
}

fn only_route(catalog: &[Instance]) -> Route {
    let (mut routes, errors) = build(catalog);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(routes.len(), 1, "{routes:?}");
    routes.remove(0)
}

#[test]
fn a_path_tag_routes_to_every_instance_carrying_it_equally() {
    let route = only_route(&[
        instance("web-1", "web", 8001, &["urlprefix-/web", "primary"]),
        instance("web-2", "web", 8002, &["urlprefix-/web"]),
    ]);
    assert_eq!(route.host, None);
    assert_eq!(route.path_prefix, "/web");
    assert_eq!(route.service, "web");
    assert_eq!(route.protocol, Protocol::Http);
    let ids: Vec<&str> = route
        .targets
        .iter()
        .map(|t| t.instance_id.as_str())
        .collect();
    assert_eq!(ids, ["web-1", "web-2"]);
    assert!(route.targets.iter().all(|t| (t.weight - 0.5).abs() < 1e-9));
    assert_eq!(route.targets[1].port, 8002);
}

#[test]
fn host_and_path_with_strip_prepend_and_upstream_host() {
    let route = only_route(&[instance(
        "ap1",
        "gw",
        80,
        &["urlprefix-Mirror.Example.com/ap1/ strip=/ap1 prepend=/csp host=dst"],
    )]);
    assert_eq!(route.host.as_deref(), Some("mirror.example.com"));
    assert_eq!(route.path_prefix, "/ap1/");
    assert_eq!(route.strip.as_deref(), Some("/ap1"));
    assert_eq!(route.prepend.as_deref(), Some("/csp"));
    assert_eq!(route.upstream_host.as_deref(), Some("dst"));
}

#[test]
fn proto_tls_and_redirect_options() {
    let route = only_route(&[instance(
        "s",
        "secure",
        443,
        &["urlprefix-/s proto=https tlsskipverify=true"],
    )]);
    assert_eq!(route.protocol, Protocol::Https);
    assert!(route.tls.skip_verify);

    let route = only_route(&[instance(
        "r",
        "old",
        80,
        &["urlprefix-/old redirect=301,https://new.example/$path"],
    )]);
    assert_eq!(
        route.redirect,
        Some(Redirect {
            code: 301,
            url: "https://new.example/$path".into()
        })
    );
}

#[test]
fn tcp_routes_listen_on_a_port() {
    let route = only_route(&[
        instance("ap1a", "iris", 1972, &["urlprefix-:1972 proto=tcp"]),
        instance("ap1b", "iris", 1972, &["urlprefix-:1972 proto=tcp"]),
    ]);
    assert_eq!(route.listen_port, Some(1972));
    assert_eq!(route.path_prefix, "");
    assert_eq!(route.protocol, Protocol::Tcp);
    assert_eq!(route.targets.len(), 2);
}

#[test]
fn access_rules_keep_their_order_and_normalise_ranges() {
    let route = only_route(&[instance(
        "a",
        "adm",
        80,
        &["urlprefix-/admin allow=ip:10.1.2.3/8,ip:fd00::/8"],
    )]);
    assert_eq!(
        route.access,
        vec![
            AccessRule {
                action: AccessAction::Allow,
                cidr: "10.0.0.0/8".into()
            },
            AccessRule {
                action: AccessAction::Allow,
                cidr: "fd00::/8".into()
            },
        ]
    );
    let route = only_route(&[instance(
        "a",
        "adm",
        80,
        &["urlprefix-/admin deny=ip:192.168.0.0/16"],
    )]);
    assert_eq!(route.access[0].action, AccessAction::Deny);
}

#[test]
fn fixed_weights_give_a_service_its_share_and_the_rest_is_split() {
    let route = only_route(&[
        instance("a-1", "svc-a", 1, &["urlprefix-/foo"]),
        instance("a-2", "svc-a", 2, &["urlprefix-/foo"]),
        instance("b-1", "svc-b", 3, &["urlprefix-/foo weight=0.2"]),
        instance("b-2", "svc-b", 4, &["urlprefix-/foo weight=0.2"]),
    ]);
    let weight = |id: &str| {
        route
            .targets
            .iter()
            .find(|t| t.instance_id == id)
            .unwrap()
            .weight
    };
    assert!(
        (weight("b-1") - 0.1).abs() < 1e-9,
        "svc-b's 20% is split over its two instances"
    );
    assert!((weight("b-2") - 0.1).abs() < 1e-9);
    assert!(
        (weight("a-1") - 0.4).abs() < 1e-9,
        "the other 80% is split evenly"
    );
    let total: f64 = route.targets.iter().map(|t| t.weight).sum();
    assert!((total - 1.0).abs() < 1e-9);
}

#[test]
fn fixed_weights_adding_up_to_more_than_one_are_normalised() {
    let route = only_route(&[
        instance("a", "svc-a", 1, &["urlprefix-/foo weight=1"]),
        instance("b", "svc-b", 2, &["urlprefix-/foo weight=1"]),
        instance("c", "svc-c", 3, &["urlprefix-/foo"]),
    ]);
    let weight = |id: &str| {
        route
            .targets
            .iter()
            .find(|t| t.instance_id == id)
            .unwrap()
            .weight
    };
    assert!((weight("a") - 0.5).abs() < 1e-9);
    assert!((weight("b") - 0.5).abs() < 1e-9);
    assert_eq!(weight("c"), 0.0);
}

#[test]
fn multiple_tags_per_instance_make_multiple_routes() {
    let (routes, errors) = build(&[instance(
        "web-1",
        "web",
        80,
        &[
            "urlprefix-/web",
            "urlprefix-/static strip=/static",
            "urlprefix-:8443 proto=tcp",
        ],
    )]);
    assert!(errors.is_empty(), "{errors:?}");
    let mut keys: Vec<(String, Option<u16>)> = routes
        .iter()
        .map(|r| (r.path_prefix.clone(), r.listen_port))
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            ("".into(), Some(8443)),
            ("/static".into(), None),
            ("/web".into(), None)
        ]
    );
}

#[test]
fn the_tag_prefix_is_configurable() {
    let catalog = [instance(
        "w",
        "web",
        80,
        &["fabio-/web", "urlprefix-/other"],
    )];
    let (routes, errors) = split(
        policy(r#"{"tag_prefix": "fabio-"}"#)
            .build_routes(&catalog)
            .unwrap(),
    );
    assert!(errors.is_empty());
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].path_prefix, "/web");
}

#[test]
fn critical_instances_drop_out() {
    let mut sick = instance("web-2", "web", 2, &["urlprefix-/web"]);
    sick.health = HealthStatus::Critical;
    let route = only_route(&[
        instance("web-1", "web", 1, &["urlprefix-/web"]),
        sick.clone(),
    ]);
    assert_eq!(route.targets.len(), 1);
    let (routes, _) = split(
        policy(r#"{"skip_critical": false}"#)
            .build_routes(&[sick])
            .unwrap(),
    );
    assert_eq!(routes.len(), 1, "kept when skip_critical is off");
}

#[test]
fn a_bad_tag_is_a_per_entry_error_and_never_blocks_the_others() {
    let catalog = [
        instance("good-1", "web", 1, &["urlprefix-/web"]),
        instance(
            "bad-1",
            "web",
            2,
            &["urlprefix-/web strip=nope", "urlprefix-/api"],
        ),
        instance("bad-2", "db", 3, &["urlprefix-:1972"]),
        instance("bad-3", "db", 4, &["urlprefix-/x proto=grpc"]),
        instance("bad-4", "db", 5, &["urlprefix-/x weight=2"]),
        instance("bad-5", "db", 6, &["urlprefix-/x redirect=200,http://a"]),
        instance("bad-6", "db", 7, &["urlprefix-/x allow=10.0.0.0/8"]),
        instance(
            "bad-7",
            "db",
            8,
            &["urlprefix-/x allow=ip:10.0.0.0/8 deny=ip:10.1.0.0/16"],
        ),
        instance("bad-8", "db", 9, &["urlprefix-/x colour=blue"]),
        instance("bad-9", "db", 10, &["urlprefix-nopath"]),
        instance("bad-10", "db", 11, &["urlprefix-/x tlsskipverify=maybe"]),
        instance("bad-11", "db", 12, &["urlprefix-:99999 proto=tcp"]),
        instance("bad-12", "db", 13, &["urlprefix-/x proto=tcp"]),
    ];
    let (routes, errors) = build(&catalog);
    let paths: Vec<&str> = routes.iter().map(|r| r.path_prefix.as_str()).collect();
    assert_eq!(
        paths,
        ["/api", "/web"],
        "the good tags still produce their routes"
    );
    let messages: Vec<(&str, &str)> = errors
        .iter()
        .map(|e| (e.instance_id.as_str(), e.message.as_str()))
        .collect();
    let expected = [
        ("bad-1", "strip=`nope` must start with `/`"),
        ("bad-2", "`:1972` routes need proto=tcp"),
        ("bad-3", "proto=`grpc` is not one of http, https, tcp"),
        ("bad-4", "weight=`2` is not a number in (0, 1]"),
        (
            "bad-5",
            "redirect code 200 is not one of 301, 302, 303, 307, 308",
        ),
        ("bad-6", "access rule `10.0.0.0/8` must be `ip:CIDR`"),
        ("bad-7", "allow= and deny= cannot be combined on one route"),
        (
            "bad-8",
            "unknown option `colour` (supported: strip, prepend, proto, tlsskipverify, weight, redirect, allow, deny, host)",
        ),
        ("bad-9", "`nopath` is neither `[host]/path` nor `:PORT`"),
        ("bad-10", "tlsskipverify=`maybe` is not true or false"),
        ("bad-11", "`:99999` is not a valid `:PORT`"),
        ("bad-12", "proto=tcp needs a `:PORT` route, not a path"),
    ];
    assert_eq!(messages, expected);
    assert_eq!(errors[0].input, "urlprefix-/web strip=nope");
}

#[test]
fn contradicting_options_for_one_route_reject_the_later_tag_only() {
    let (routes, errors) = build(&[
        instance("a", "web", 1, &["urlprefix-/web strip=/web"]),
        instance("b", "web", 2, &["urlprefix-/web"]),
        instance("c", "web", 3, &["urlprefix-/web strip=/web"]),
    ]);
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].targets.len(), 2, "a and c agree");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].instance_id, "b");
    assert!(
        errors[0].message.contains("instance `a`"),
        "{}",
        errors[0].message
    );
}

#[test]
fn contradicting_weights_within_a_service_are_rejected() {
    let (routes, errors) = build(&[
        instance("a", "web", 1, &["urlprefix-/web weight=0.5"]),
        instance("b", "web", 2, &["urlprefix-/web weight=0.3"]),
    ]);
    assert_eq!(routes[0].targets.len(), 1);
    assert_eq!(errors[0].instance_id, "b");
}

#[test]
fn duplicate_tags_on_one_instance_make_one_target() {
    let route = only_route(&[instance(
        "a",
        "web",
        1,
        &["urlprefix-/web", " urlprefix-/web "],
    )]);
    assert_eq!(route.targets.len(), 1);
    assert_eq!(route.targets[0].weight, 1.0);
}

#[test]
fn bad_configs_are_rejected() {
    assert!(UrlPrefix::configure(r#"{"tag_prefix": ""}"#).is_err());
    assert!(
        UrlPrefix::configure(r#"{"tagprefix": "x-"}"#)
            .unwrap_err()
            .contains("unknown field")
    );
}
