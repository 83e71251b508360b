//! Each world's happy path on the real shipped policies, `configure` errors, wrong worlds, and
//! the KV view.

mod common;

use std::sync::Arc;

use common::*;
use serde_json::json;
use sluice_config::PolicyWorld;
use sluice_policy_host::types::{
    Decision, ProbeError, ProbeErrorKind, ProbeKind, ProbeResult, Protocol, Role, Up, Verdict,
};
use sluice_policy_host::{
    AuthzOutcome, HealthOutcome, MemoryKv, PolicyState, ReloadOutcome, RoutingOutcome,
};
use sluice_policy_test_artifacts as artifacts;

#[test]
fn authz_ecp_allow_list_allows_listed_systems_and_denies_others() {
    let host = host();
    let report = host.apply_config(&[policy(
        "ecp",
        artifacts::ECP_AUTHZ,
        PolicyWorld::Authz,
        json!({"client_systems": "app1;app2", "source_cidrs": ["127.0.0.0/8"]}),
    )]);
    assert!(report.is_ok(), "{report:?}");
    let ecp = host.authz("ecp").expect("loaded as authz");
    assert_eq!(
        ecp.authorize(&peer("ecp", Some("app2"), "127.0.0.9")),
        AuthzOutcome::Decided(Decision::Allow)
    );
    assert_eq!(
        ecp.authorize(&peer("ecp", Some("intruder"), "127.0.0.9")),
        AuthzOutcome::Decided(Decision::Deny(
            "client system `intruder` is not in the allow-list".into()
        ))
    );
    assert_eq!(
        ecp.authorize(&peer("ecp", Some("app1"), "192.0.2.1")),
        AuthzOutcome::Decided(Decision::Deny(
            "source 192.0.2.1 is outside the allowed ranges".into()
        ))
    );
    assert!(
        host.health("ecp").is_none(),
        "a handle of another world is refused"
    );
}

#[test]
fn authz_allow_list_in_kv_changes_without_reload() {
    let kv = Arc::new(MemoryKv::new());
    let host = host_with_kv(kv.clone());
    let report = host.apply_config(&[policy(
        "ecp",
        artifacts::ECP_AUTHZ,
        PolicyWorld::Authz,
        json!({"client_systems_kv_key": "ecp/CLIENT_SYSTEMS"}),
    )]);
    assert!(report.is_ok(), "{report:?}");
    let ecp = host.authz("ecp").unwrap();
    let app3 = peer("ecp", Some("app3"), "10.0.0.3");
    assert!(!ecp.authorize(&app3).is_allowed());
    kv.set("ecp/CLIENT_SYSTEMS", "app1;app3");
    assert_eq!(ecp.authorize(&app3), AuthzOutcome::Decided(Decision::Allow));
    kv.remove("ecp/CLIENT_SYSTEMS");
    assert!(!ecp.authorize(&app3).is_allowed());
}

#[test]
fn health_mirror_primary_tells_primary_backup_and_down() {
    let host = host_loading(policy(
        "mirror",
        artifacts::MIRROR_PRIMARY,
        PolicyWorld::Health,
        json!({}),
    ));
    let mirror = host.health("mirror").unwrap();
    let member = instance("ap1a", "ap1", &[]);
    assert_eq!(
        mirror.evaluate(&member, &http_probe(200, "SUCCESS")),
        HealthOutcome::Verdict(Verdict::Up(Up {
            role: Role::Primary,
            weight: None
        }))
    );
    assert_eq!(
        mirror.evaluate(&member, &http_probe(503, "FAILED")),
        HealthOutcome::Verdict(Verdict::Up(Up {
            role: Role::Backup,
            weight: None
        }))
    );
    let timeout = ProbeResult {
        kind: ProbeKind::Http,
        status: None,
        headers: vec![],
        body_prefix: vec![],
        latency_us: 2_000_000,
        error: Some(ProbeError {
            kind: ProbeErrorKind::Timeout,
            message: "no answer in 2s".into(),
        }),
    };
    assert_eq!(
        mirror.evaluate(&member, &timeout),
        HealthOutcome::Verdict(Verdict::Down("timed out: no answer in 2s".into()))
    );
}

#[test]
fn routing_urlprefix_builds_routes_and_reports_bad_tags_per_entry() {
    let host = host_loading(policy(
        "tags",
        artifacts::URLPREFIX,
        PolicyWorld::Routing,
        json!({}),
    ));
    let tags = host.routing("tags").unwrap();
    let catalog = [
        instance("web-1", "web", &["urlprefix-/web strip=/web"]),
        instance("web-2", "web", &["urlprefix-/web strip=/web"]),
        instance(
            "db-1",
            "db",
            &["urlprefix-:1972 proto=tcp", "urlprefix-/bad proto=gopher"],
        ),
    ];
    let RoutingOutcome::Routes(table) = tags.build_routes(&catalog) else {
        panic!("the policy must answer");
    };
    assert_eq!(table.routes.len(), 2, "{table:?}");
    let tcp = table
        .routes
        .iter()
        .find(|r| r.listen_port == Some(1972))
        .unwrap();
    assert_eq!(tcp.protocol, Protocol::Tcp);
    let web = table
        .routes
        .iter()
        .find(|r| r.path_prefix == "/web")
        .unwrap();
    assert_eq!(web.targets.len(), 2);
    assert_eq!(web.strip.as_deref(), Some("/web"));
    assert_eq!(table.errors.len(), 1);
    assert_eq!(table.errors[0].instance_id, "db-1");
    assert!(
        table.errors[0].message.contains("gopher"),
        "{:?}",
        table.errors[0]
    );
}

#[test]
fn configure_errors_are_surfaced_and_the_policy_does_not_serve() {
    let host = host();
    let report = host.apply_config(&[
        policy(
            "empty-ecp",
            artifacts::ECP_AUTHZ,
            PolicyWorld::Authz,
            json!({}),
        ),
        policy(
            "bad-mirror",
            artifacts::MIRROR_PRIMARY,
            PolicyWorld::Health,
            json!({"primary_statuss": 200}),
        ),
        policy(
            "panics",
            artifacts::MISBEHAVING_AUTHZ,
            PolicyWorld::Authz,
            json!({"configure": "panic"}),
        ),
        policy(
            "loops",
            artifacts::MISBEHAVING_HEALTH,
            PolicyWorld::Health,
            json!({"configure": "loop"}),
        ),
    ]);
    let errors: std::collections::BTreeMap<&str, &str> = report.rejected().collect();
    assert_eq!(errors.len(), 4, "{report:?}");
    assert!(
        errors["empty-ecp"].starts_with("configure rejected the config: nothing to allow"),
        "{}",
        errors["empty-ecp"]
    );
    assert!(
        errors["bad-mirror"].contains("unknown field `primary_statuss`"),
        "{}",
        errors["bad-mirror"]
    );
    assert!(
        errors["panics"].contains("asked to panic in configure"),
        "guest stderr is shown: {}",
        errors["panics"]
    );
    assert!(errors["loops"].contains("timed out"), "{}", errors["loops"]);

    // A policy that never loaded answers with its failure mode.
    let ecp = host.authz("empty-ecp").unwrap();
    let outcome = ecp.authorize(&peer("ecp", Some("app1"), "127.0.0.1"));
    assert!(
        matches!(
            outcome,
            AuthzOutcome::Failed {
                decision: Decision::Deny(_),
                ..
            }
        ),
        "{outcome:?}"
    );
    let listing = host.list();
    assert!(
        listing
            .iter()
            .all(|p| p.state == PolicyState::Failed && p.last_load_error.is_some())
    );
}

#[test]
fn a_module_of_the_wrong_world_is_rejected_naming_the_missing_export() {
    let host = host();
    let report = host.apply_config(&[policy(
        "ecp",
        artifacts::WRONG_WORLD,
        PolicyWorld::Authz,
        json!({}),
    )]);
    let (_, error) = report.rejected().next().expect("rejected");
    assert!(
        error.contains("does not implement world `authz`: missing export `authorize`"),
        "{error}"
    );
    assert!(
        error.contains("the module exports: configure, authorise, evaluate"),
        "{error}"
    );

    let report = host.apply_config(&[policy(
        "mirror",
        artifacts::ECP_AUTHZ,
        PolicyWorld::Health,
        json!({}),
    )]);
    let (_, error) = report.rejected().next().expect("rejected");
    assert!(error.contains("missing export `evaluate`"), "{error}");
}

#[test]
fn a_module_with_a_mistyped_export_is_rejected_naming_the_world() {
    let host = host();
    // `evaluate: func(id: string) -> bool` instead of the contract's signature.
    let report = host.apply_config(&[policy(
        "mirror",
        artifacts::WRONG_WORLD,
        PolicyWorld::Health,
        json!({}),
    )]);
    let (_, error) = report.rejected().next().expect("rejected");
    assert!(
        error.contains("exports of world `health` do not match the contract's types"),
        "{error}"
    );
}

#[test]
fn unchanged_policies_are_not_reloaded_and_the_listing_shows_hash_and_counts() {
    let host = host();
    let config = policy(
        "mirror",
        artifacts::MIRROR_PRIMARY,
        PolicyWorld::Health,
        json!({}),
    );
    let first = host.apply_config(std::slice::from_ref(&config));
    let ReloadOutcome::Loaded { sha256 } = &first.policies[0].outcome else {
        panic!("{first:?}")
    };
    let again = host.reload();
    assert_eq!(
        again.policies[0].outcome,
        ReloadOutcome::Unchanged {
            sha256: sha256.clone()
        }
    );

    let mirror = host.health("mirror").unwrap();
    mirror.evaluate(&instance("a", "ap1", &[]), &http_probe(200, "SUCCESS"));
    let listing = host.list();
    assert_eq!(listing[0].sha256.as_deref(), Some(sha256.as_str()));
    assert_eq!(listing[0].calls, 1);
    assert_eq!(listing[0].errors, 0);
    let json = serde_json::to_value(&listing).unwrap();
    assert_eq!(json[0]["world"], "health");
    assert_eq!(json[0]["state"], "active");
    assert_eq!(json[0]["sha256"], sha256.as_str());

    let changed = policy(
        "mirror",
        artifacts::MIRROR_PRIMARY,
        PolicyWorld::Health,
        json!({"primary_body": "OK"}),
    );
    let report = host.apply_config(&[changed]);
    assert!(
        matches!(report.policies[0].outcome, ReloadOutcome::Loaded { .. }),
        "a config change reloads"
    );
    let removed = host.apply_config(&[]);
    assert_eq!(removed.policies[0].outcome, ReloadOutcome::Removed);
    assert!(host.health("mirror").is_none());
}
