//! Built-in policies (`builtin:NAME`): loaded from the bytes the embedding binary registers,
//! shown as `builtin:NAME`, never watched, and never "reloaded" into anything else.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::sync::Arc;

use common::*;
use serde_json::json;
use sluice_config::{PolicySource, PolicyWorld};
use sluice_policy_host::check::{CheckError, check_source};
use sluice_policy_host::types::Decision;
use sluice_policy_host::{AuthzOutcome, BuiltinModules, MemoryKv, PolicyHost, ReloadOutcome};
use sluice_policy_test_artifacts as artifacts;

fn builtins() -> Arc<BuiltinModules> {
    let read = |path: &str| std::fs::read(path).expect("the test artifacts are built");
    Arc::new(
        BuiltinModules::new()
            .with("ecp-authz", read(artifacts::ECP_AUTHZ))
            .with("mirror-primary", read(artifacts::MIRROR_PRIMARY)),
    )
}

fn host_with_builtins() -> Arc<PolicyHost> {
    let config = sluice_policy_host::HostConfig {
        builtins: builtins(),
        ..host_config()
    };
    Arc::new(PolicyHost::new(config, Arc::new(MemoryKv::new())).expect("engine starts"))
}

fn builtin_ecp() -> sluice_config::PolicyConfig {
    let mut config = policy(
        "ecp",
        "unused",
        PolicyWorld::Authz,
        json!({"client_systems": ["app1"]}),
    );
    config.file = PolicySource::Builtin("ecp-authz".into());
    config
}

fn decision(host: &PolicyHost, cn: &str) -> AuthzOutcome {
    host.authz("ecp")
        .unwrap()
        .authorize(&peer("ecp", Some(cn), "127.0.0.1"))
}

#[test]
fn a_builtin_loads_from_its_bytes_and_shows_its_source() {
    let host = host_with_builtins();
    let report = host.apply_config(&[builtin_ecp()]);
    let ReloadOutcome::Loaded { sha256 } = &report.policies[0].outcome else {
        panic!("{report:?}");
    };
    let status = &host.list()[0];
    assert_eq!(status.file, "builtin:ecp-authz");
    assert_eq!(status.sha256.as_ref(), Some(sha256));
    assert_eq!(
        decision(&host, "app1"),
        AuthzOutcome::Decided(Decision::Allow)
    );
    assert!(matches!(
        decision(&host, "app2"),
        AuthzOutcome::Decided(Decision::Deny(_))
    ));
    // Nothing for the watcher to watch.
    assert!(host.files().is_empty());
}

#[test]
fn a_builtin_cannot_be_reloaded_into_something_else() {
    // A file named like the builtin, holding a policy that allows everyone, where a relative
    // path would be looked up: the builtin must not be read from it.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        artifacts::MISBEHAVING_AUTHZ,
        dir.path().join("builtin:ecp-authz"),
    )
    .unwrap();
    std::env::set_current_dir(dir.path()).unwrap();

    let host = host_with_builtins();
    let first = host.apply_config(&[builtin_ecp()]);
    let ReloadOutcome::Loaded { sha256 } = &first.policies[0].outcome else {
        panic!("{first:?}");
    };
    let _watcher = sluice_policy_host::PolicyWatcher::start(&host, std::time::Duration::ZERO)
        .expect("a watcher with nothing to watch starts");
    for _ in 0..2 {
        let report = host.reload();
        assert_eq!(
            report.policies[0].outcome,
            ReloadOutcome::Unchanged {
                sha256: sha256.clone()
            },
            "{report:?}"
        );
    }
    assert!(matches!(
        decision(&host, "app2"),
        AuthzOutcome::Decided(Decision::Deny(_))
    ));
    assert_eq!(host.list()[0].file, "builtin:ecp-authz");
    assert_eq!(host.list()[0].last_load_error, None);
}

#[test]
fn an_unknown_builtin_is_rejected_naming_the_known_ones() {
    let host = host_with_builtins();
    let mut config = builtin_ecp();
    config.file = PolicySource::Builtin("nope".into());
    let report = host.apply_config(&[config]);
    let rejected: Vec<_> = report.rejected().collect();
    assert_eq!(
        rejected,
        [(
            "ecp",
            "no built-in policy `nope` (built-in policies: ecp-authz, mirror-primary)"
        )]
    );
}

#[test]
fn check_runs_a_builtin_and_lists_the_names_for_an_unknown_one() {
    let source = PolicySource::Builtin("mirror-primary".into());
    let report = check_source(&source, &builtins(), None, None).unwrap();
    assert_eq!(report.world, PolicyWorld::Health);
    assert!(report.passed(), "{report}");
    assert!(
        report
            .to_string()
            .starts_with("module:    builtin:mirror-primary ("),
        "{report}"
    );

    let source = PolicySource::Builtin("nope".into());
    let error = check_source(&source, &builtins(), None, None).unwrap_err();
    assert!(matches!(error, CheckError::UnknownBuiltin { .. }));
    assert_eq!(
        error.to_string(),
        "no built-in policy `nope` (built-in policies: ecp-authz, mirror-primary)"
    );
}
