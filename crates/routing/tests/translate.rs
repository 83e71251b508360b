//! The policy's routes become the file's model: services per target set, the file's settings
//! and routes winning, route options checked with the file's rules, overrides applied.

use std::time::Duration;

use sluice_discovery::Catalog;
use sluice_policy_host::types;
use sluice_routing::checks::health_from_check;
use sluice_routing::{Discovered, Scope, apply_overrides, merge, routes_to_config};

fn scope<'a>(base: &'a sluice_config::Config, catalog: &'a Catalog) -> Scope<'a> {
    Scope {
        listener: "web",
        base,
        catalog,
        held_ports: &[],
        parked: &[],
    }
}

fn route(path: &str, service: &str, ports: &[u16]) -> types::Route {
    types::Route {
        host: None,
        path_prefix: path.into(),
        listen_port: None,
        service: service.into(),
        targets: ports
            .iter()
            .map(|port| types::RouteTarget {
                instance_id: format!("{service}-{port}"),
                service: service.into(),
                address: "127.0.0.1".into(),
                port: *port,
                weight: 1.0 / ports.len() as f64,
            })
            .collect(),
        strip: None,
        prepend: None,
        protocol: types::Protocol::Http,
        tls: types::TlsOptions { skip_verify: false },
        upstream_host: None,
        redirect: None,
        access: vec![],
    }
}

#[tokio::test]
async fn routes_become_services_split_by_target_set_and_the_file_wins() {
    let base = sluice_config::parse_str(
        "t.toml",
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:1\"\n\
         [[route]]\npath = \"/file\"\nservice = \"api\"\n\
         [[service]]\nname = \"api\"\ninstances = [\"127.0.0.1:9\"]\ntimeouts = { connect = \"250ms\" }\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let tcp_route = |port: u16| {
        let mut tcp = route("", "db", &[5432]);
        tcp.protocol = types::Protocol::Tcp;
        tcp.listen_port = Some(port);
        tcp
    };
    let busy = std::net::TcpListener::bind("0.0.0.0:0").unwrap_or_else(|e| panic!("{e}"));
    let busy_port = busy.local_addr().map(|a| a.port()).unwrap_or_default();
    let free_port = std::net::TcpListener::bind("0.0.0.0:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_default();
    let mut guarded = route("/admin", "web", &[1, 2]);
    guarded.access = vec![types::AccessRule {
        action: types::AccessAction::Allow,
        cidr: "10.0.0.0/8".into(),
    }];
    let routes = [
        route("/a", "web", &[1]),
        route("/b", "web", &[2]),
        route("/api", "api", &[3, 4]),
        route("/file", "api", &[3, 4]),
        tcp_route(busy_port),
        tcp_route(free_port),
        guarded,
    ];
    let catalog = Catalog::empty();
    let (found, skipped) = routes_to_config(&routes, scope(&base, &catalog)).await;
    let services: Vec<(&str, Vec<u16>)> = found
        .services
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                s.instances.iter().map(|i| i.address.port()).collect(),
            )
        })
        .collect();
    assert_eq!(
        services,
        [
            ("api", vec![9, 3, 4]),
            ("db", vec![5432]),
            ("web@/a", vec![1]),
            ("web@/admin", vec![1, 2]),
            ("web@/b", vec![2])
        ],
        "one service per distinct target set; the file's api keeps its instance"
    );
    let api = found
        .services
        .iter()
        .find(|s| s.name == "api")
        .unwrap_or_else(|| panic!("api"));
    assert_eq!(
        api.timeouts.connect,
        Duration::from_millis(250),
        "the file's settings"
    );
    let routes: Vec<(&str, &str)> = found
        .routes
        .iter()
        .map(|r| (r.path.as_str(), r.service.as_str()))
        .collect();
    assert_eq!(
        routes,
        [
            ("/a", "web@/a"),
            ("/b", "web@/b"),
            ("/api", "api"),
            ("/admin", "web@/admin")
        ]
    );
    let admin = &found.routes[3];
    assert_eq!(
        admin.access,
        Some(sluice_config::AccessRules {
            action: sluice_config::AccessAction::Allow,
            networks: sluice_config::AccessRules::parse_network("10.0.0.0/8")
                .into_iter()
                .collect(),
        }),
        "allow= becomes the route's access rules"
    );
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(skipped[0].contains("the file wins"), "{skipped:?}");
    assert!(skipped[1].contains("cannot be bound"), "{skipped:?}");
    assert_eq!(found.listeners.len(), 1);
    assert_eq!(found.listeners[0].bind.port(), free_port);
    assert_eq!(
        found.listeners[0]
            .tcp
            .as_ref()
            .and_then(|t| t.service.as_deref()),
        Some("db")
    );
    let merged = merge(&base, &found);
    assert_eq!(merged.routes.len(), 5);
    assert_eq!(merged.services.len(), 5);
    assert_eq!(merged.listeners.len(), 2);
    drop(busy);
}

#[tokio::test]
async fn route_options_become_route_fields_and_bad_ones_skip_the_route() {
    let base = sluice_config::parse_str(
        "t.toml",
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:1\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut moved = route("/old", "web", &[1]);
    moved.redirect = Some(types::Redirect {
        code: 308,
        url: "https://new.example.com$path".into(),
    });
    moved.upstream_host = Some("dst".into());
    let mut secure = route("/secure", "web", &[1]);
    secure.protocol = types::Protocol::Https;
    secure.tls.skip_verify = true;
    let mut bad_url = route("/bad", "web", &[1]);
    bad_url.redirect = Some(types::Redirect {
        code: 301,
        url: "ftp://x".into(),
    });
    let mut mixed = route("/mixed", "web", &[1]);
    mixed.access = vec![
        types::AccessRule {
            action: types::AccessAction::Allow,
            cidr: "10.0.0.0/8".into(),
        },
        types::AccessRule {
            action: types::AccessAction::Deny,
            cidr: "10.1.0.0/16".into(),
        },
    ];
    let free_port = || {
        std::net::TcpListener::bind("0.0.0.0:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_default()
    };
    let tcp = |port: u16, action: types::AccessAction| {
        let mut tcp = route("", "db", &[5432]);
        tcp.protocol = types::Protocol::Tcp;
        tcp.listen_port = Some(port);
        tcp.access = vec![types::AccessRule {
            action,
            cidr: "10.0.0.0/8".into(),
        }];
        tcp
    };
    let routes = [
        moved,
        secure,
        bad_url,
        mixed,
        tcp(free_port(), types::AccessAction::Allow),
        tcp(free_port(), types::AccessAction::Deny),
    ];
    let catalog = Catalog::empty();
    let (found, skipped) = routes_to_config(&routes, scope(&base, &catalog)).await;
    assert_eq!(skipped.len(), 3, "{skipped:?}");
    assert!(skipped[0].contains("ftp://x"), "{skipped:?}");
    assert!(skipped[1].contains("cannot be combined"), "{skipped:?}");
    assert!(skipped[2].contains("deny= is not supported"), "{skipped:?}");
    let allow: Vec<String> = found.listeners[0]
        .authz
        .iter()
        .flat_map(|a| a.allow_cidr.iter().map(ToString::to_string))
        .collect();
    assert_eq!(
        allow,
        ["10.0.0.0/8"],
        "allow= on a TCP route: the listener's allow-list"
    );
    let old = &found.routes[0];
    assert_eq!(
        old.redirect.as_ref().map(|r| (r.code, r.url.as_str())),
        Some((308, "https://new.example.com$path"))
    );
    assert_eq!(old.upstream_host, Some(sluice_config::UpstreamHost::Dst));
    // Same targets, different TLS: two proxy services.
    let tls: Vec<(&str, Option<bool>)> = found
        .services
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                s.tls.as_ref().map(|t| t.insecure_skip_verify),
            )
        })
        .collect();
    assert_eq!(
        tls,
        [
            ("db", None),
            ("web@/old", None),
            ("web@/secure", Some(true))
        ]
    );
}

#[test]
fn a_file_service_without_health_gets_the_registrations_check() {
    let base = sluice_config::parse_str(
        "sluice.toml",
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n\
         [[service]]\nname = \"web\"\ntimeouts = { connect = \"500ms\" }\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut service = base.services[0].clone();
    let check = serde_json::from_str(r#"{"tcp": "127.0.0.1:8001", "interval": "1s"}"#)
        .unwrap_or_else(|e| panic!("{e}"));
    service.health = Some(health_from_check(&check).unwrap_or_else(|e| panic!("{e}")));
    let found = Discovered {
        services: vec![service],
        ..Discovered::default()
    };
    let merged = merge(&base, &found);
    assert_eq!(merged.services.len(), 1);
    let web = &merged.services[0];
    assert_eq!(
        web.timeouts.connect,
        Duration::from_millis(500),
        "the file's"
    );
    let health = web.health.as_ref().unwrap_or_else(|| panic!("no check"));
    assert_eq!(
        health.interval,
        Duration::from_secs(1),
        "the registration's"
    );
}

#[test]
fn overrides_add_delete_and_reweight() {
    let parse = |text: &str| {
        sluice_config::parse_str(
            "o.toml",
            &format!("[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:1\"\n[routing]\noverrides = \"\"\"\n{text}\"\"\"\n"),
        )
        .unwrap_or_else(|e| panic!("{e}"))
        .routing
        .overrides
    };
    let mut routes = vec![route("/web", "web", &[1, 2]), route("/old", "old", &[3])];
    apply_overrides(
        &mut routes,
        &parse(
            "route add canary /web http://127.0.0.1:9/ weight 0.1\n\
             route del old\n\
             route add api /api http://127.0.0.1:7\n\
             route del web /web http://127.0.0.1:2\n",
        ),
    );
    let shares: Vec<(&str, Vec<(u16, f64)>)> = routes
        .iter()
        .map(|r| {
            (
                r.path_prefix.as_str(),
                r.targets
                    .iter()
                    .map(|t| (t.port, (t.weight * 1000.0).round() / 1000.0))
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        shares,
        [
            ("/web", vec![(1, 0.818), (9, 0.182)]),
            ("/api", vec![(7, 1.0)])
        ],
        "the canary had 0.1 next to two web targets (0.45 each); deleting one rescales the rest in proportion"
    );
    apply_overrides(&mut routes, &parse("route weight canary /web weight 0.2\n"));
    let web: Vec<f64> = routes[0]
        .targets
        .iter()
        .map(|t| (t.weight * 1000.0).round() / 1000.0)
        .collect();
    assert_eq!(web, [0.8, 0.2]);
}

#[tokio::test]
async fn parked_instances_stay_where_the_checker_probes_them() {
    let base = sluice_config::parse_str(
        "t.toml",
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:1\"\n\
         [[service]]\nname = \"api\"\n[service.health]\nkind = \"tcp\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let catalog = Catalog::empty();
    let parked = |service: &str, proxy_service: &str, port: u16| sluice_routing::ParkedInstance {
        id: format!("{service}-{port}"),
        catalog_service: service.into(),
        proxy_service: proxy_service.into(),
        address: ([127, 0, 0, 1], port).into(),
    };
    // web's instance 2 is down and left out by the policy; api's only instance too, so api
    // has no route left.
    let parked = [parked("web", "web", 2), parked("api", "api", 3)];
    let routes = [route("/web", "web", &[1])];
    let scope = Scope {
        parked: &parked,
        ..scope(&base, &catalog)
    };
    let (found, skipped) = routes_to_config(&routes, scope).await;
    assert!(skipped.is_empty(), "{skipped:?}");
    let services: Vec<(&str, Vec<u16>, bool)> = found
        .services
        .iter()
        .map(|s| {
            let ports = s.instances.iter().map(|i| i.address.port()).collect();
            (s.name.as_str(), ports, s.health.is_some())
        })
        .collect();
    assert_eq!(
        services,
        [("api", vec![3], true), ("web", vec![1, 2], false)],
        "the parked instance joins its service; api stays, route-less, with the file's check"
    );
    let routed: Vec<&str> = found.routes.iter().map(|r| r.service.as_str()).collect();
    assert_eq!(routed, ["web"], "no route is made for a parked instance");
}

#[tokio::test]
async fn discovered_routes_get_the_request_policy_named_for_their_service() {
    let base = sluice_config::parse_str(
        "t.toml",
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:1\"\n\
         [[policy]]\nname = \"jwt\"\nworld = \"request\"\nfile = \"builtin:jwt\"\nconfig = { secret = \"s\" }\n\
         [[policy]]\nname = \"gate\"\nworld = \"request\"\nfile = \"builtin:jwt\"\nconfig = { secret = \"t\" }\n\
         [[discovery]]\nkind = \"static\"\n\
         [[discovery.instances]]\nname = \"api\"\naddress = \"127.0.0.1\"\nport = 3\n\
         [routing]\nrequest_policies = { api = { policy = \"jwt\", services = [\"web\", \"api-next\"] }, \"*\" = \"gate\" }\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let catalog = Catalog::empty();
    let routes = [route("/api", "api", &[3]), route("/web", "web", &[4])];
    let (found, skipped) = routes_to_config(&routes, scope(&base, &catalog)).await;
    assert!(skipped.is_empty(), "{skipped:?}");
    let policy_of = |path: &str| {
        let r = found
            .routes
            .iter()
            .find(|r| r.path == path)
            .unwrap_or_else(|| panic!("a route for {path}"));
        (r.policy.clone(), r.policy_services.clone())
    };
    assert_eq!(
        policy_of("/api"),
        (Some("jwt".into()), vec!["web".into(), "api-next".into()])
    );
    assert_eq!(
        policy_of("/web"),
        (Some("gate".into()), vec![]),
        "\"*\" for the rest, without services"
    );

    let without = sluice_config::parse_str(
        "t.toml",
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:1\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (found, _) = routes_to_config(&routes, scope(&without, &catalog)).await;
    assert!(found.routes.iter().all(|r| r.policy.is_none()));
}
