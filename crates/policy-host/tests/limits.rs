//! Limits and failure modes on real misbehaving guests: deadlines, memory caps, traps, the
//! crash budget, input bounds.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;
use sluice_config::{FailureMode, PolicyWorld};
use sluice_policy_host::types::{Decision, Role, Up, Verdict};
use sluice_policy_host::{
    AuthzOutcome, CallError, CrashBudgetConfig, HealthOutcome, HostConfig, MemoryKv, PolicyHost,
    PolicyState, RoutingOutcome,
};
use sluice_policy_test_artifacts as artifacts;

#[test]
fn a_looping_guest_is_stopped_at_its_deadline_and_the_host_keeps_answering() {
    let host = host();
    let mut config = policy(
        "spin",
        artifacts::MISBEHAVING_HEALTH,
        PolicyWorld::Health,
        json!({}),
    );
    config.limits.timeout = Duration::from_millis(20);
    assert!(host.apply_config(&[config]).is_ok());
    let spin = host.health("spin").unwrap();

    let started = std::time::Instant::now();
    let outcome = spin.evaluate(&instance("loop", "svc", &[]), &http_probe(200, ""));
    let took = started.elapsed();
    assert_eq!(
        outcome,
        HealthOutcome::KeepPrevious {
            error: CallError::Timeout(Duration::from_millis(20))
        }
    );
    assert!(
        took >= Duration::from_millis(20),
        "not stopped before its deadline ({took:?})"
    );

    for id in ["a", "b", "c"] {
        assert_eq!(
            spin.evaluate(&instance(id, "svc", &[]), &http_probe(200, "")),
            HealthOutcome::Verdict(Verdict::Up(Up {
                role: Role::Primary,
                weight: None
            })),
            "the host keeps answering after discarding the stuck instance"
        );
    }
    let status = &host.list()[0];
    assert_eq!(
        (status.calls, status.errors, status.timeouts, status.traps),
        (4, 1, 1, 0)
    );
    assert!(status.last_error.as_deref().unwrap().contains("timed out"));
}

#[test]
fn a_memory_hungry_guest_hits_its_cap_and_authz_fails_closed() {
    let host = host();
    let mut config = policy(
        "greedy",
        artifacts::MISBEHAVING_AUTHZ,
        PolicyWorld::Authz,
        json!({}),
    );
    config.limits.max_memory_bytes = 4 << 20;
    config.limits.timeout = Duration::from_secs(2);
    assert!(host.apply_config(&[config]).is_ok());
    let greedy = host.authz("greedy").unwrap();

    let outcome = greedy.authorize(&peer("greedy", None, "127.0.0.1"));
    let AuthzOutcome::Failed {
        decision: Decision::Deny(reason),
        error,
    } = outcome
    else {
        panic!("must fail closed: {outcome:?}");
    };
    assert_eq!(error, CallError::MemoryLimit(4 << 20));
    assert!(reason.contains("failed closed"), "{reason}");
    assert_eq!(
        greedy.authorize(&peer("calm", None, "127.0.0.1")),
        AuthzOutcome::Decided(Decision::Allow)
    );
    assert_eq!(host.list()[0].traps, 1);
}

#[test]
fn an_authz_policy_configured_open_allows_when_it_traps() {
    let host = host();
    let mut config = policy(
        "lenient",
        artifacts::MISBEHAVING_AUTHZ,
        PolicyWorld::Authz,
        json!({}),
    );
    config.failure_mode = FailureMode::Open;
    assert!(host.apply_config(&[config]).is_ok());
    let outcome = host
        .authz("lenient")
        .unwrap()
        .authorize(&peer("panic", None, "127.0.0.1"));
    assert!(
        matches!(
            outcome,
            AuthzOutcome::Failed {
                decision: Decision::Allow,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert!(outcome.is_allowed());
}

#[test]
fn a_trap_applies_each_worlds_failure_mode() {
    let host = host();
    let report = host.apply_config(&[
        policy(
            "authz",
            artifacts::MISBEHAVING_AUTHZ,
            PolicyWorld::Authz,
            json!({}),
        ),
        policy(
            "health",
            artifacts::MISBEHAVING_HEALTH,
            PolicyWorld::Health,
            json!({}),
        ),
        policy(
            "routing",
            artifacts::MISBEHAVING_ROUTING,
            PolicyWorld::Routing,
            json!({}),
        ),
    ]);
    assert!(report.is_ok(), "{report:?}");

    let authz = host
        .authz("authz")
        .unwrap()
        .authorize(&peer("panic", None, "127.0.0.1"));
    let AuthzOutcome::Failed {
        decision: Decision::Deny(_),
        error: CallError::Trap(detail),
    } = &authz
    else {
        panic!("authz fails closed: {authz:?}");
    };
    assert!(
        detail.contains("asked to panic"),
        "the guest's panic message is kept: {detail}"
    );

    let health = host
        .health("health")
        .unwrap()
        .evaluate(&instance("panic", "svc", &[]), &http_probe(200, ""));
    assert!(
        matches!(
            health,
            HealthOutcome::KeepPrevious {
                error: CallError::Trap(_)
            }
        ),
        "{health:?}"
    );

    let routing = host.routing("routing").unwrap();
    let good = routing.build_routes(&[instance("web", "web", &[])]);
    let RoutingOutcome::Routes(table) = good else {
        panic!("{good:?}")
    };
    assert_eq!(table.routes[0].path_prefix, "/web");
    let failed =
        routing.build_routes(&[instance("web", "web", &[]), instance("panic", "web", &[])]);
    let RoutingOutcome::KeepLast {
        last_good: Some(last_good),
        error: CallError::Trap(_),
    } = failed
    else {
        panic!("routing keeps the last good table: {failed:?}");
    };
    assert_eq!(last_good, table);
}

/// The proxy calls policies on its runtime's worker threads. A guest that panics writes its
/// message to stderr; wasmtime-wasi would run that write through `Handle::block_on`, which
/// panics on such a thread. The host's non-blocking `wasi:io` makes it an ordinary trap.
#[test]
fn a_guest_that_panics_on_a_runtime_thread_traps_without_panicking_the_host() {
    let host = Arc::new(host());
    let report = host.apply_config(&[policy(
        "authz",
        artifacts::MISBEHAVING_AUTHZ,
        PolicyWorld::Authz,
        json!({}),
    )]);
    assert!(report.is_ok(), "{report:?}");
    let current_thread = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let multi_thread = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    for runtime in [&current_thread, &multi_thread] {
        let host = Arc::clone(&host);
        let outcome = runtime.block_on(async move {
            tokio::spawn(async move {
                host.authz("authz")
                    .unwrap()
                    .authorize(&peer("panic", None, "127.0.0.1"))
            })
            .await
            .expect("the call must not panic the task")
        });
        let AuthzOutcome::Failed {
            decision: Decision::Deny(_),
            error: CallError::Trap(detail),
        } = &outcome
        else {
            panic!("authz fails closed: {outcome:?}");
        };
        assert!(detail.contains("asked to panic"), "{detail}");
    }
}

#[test]
fn a_policy_that_keeps_crashing_is_suspended_with_backoff() {
    let config = HostConfig {
        crash_budget: CrashBudgetConfig {
            max_crashes: 2,
            window: Duration::from_secs(60),
            initial_backoff: Duration::from_secs(30),
            max_backoff: Duration::from_secs(60),
        },
        ..host_config()
    };
    let host = PolicyHost::new(config, Arc::new(MemoryKv::new())).unwrap();
    assert!(
        host.apply_config(&[policy(
            "flaky",
            artifacts::MISBEHAVING_AUTHZ,
            PolicyWorld::Authz,
            json!({})
        )])
        .is_ok()
    );
    let flaky = host.authz("flaky").unwrap();
    for _ in 0..2 {
        assert!(matches!(
            flaky.authorize(&peer("panic", None, "127.0.0.1")),
            AuthzOutcome::Failed { .. }
        ));
    }
    let outcome = flaky.authorize(&peer("calm", None, "127.0.0.1"));
    let AuthzOutcome::Failed {
        error: CallError::Suspended(remaining),
        decision,
    } = outcome
    else {
        panic!("suspended after the budget is spent: {outcome:?}");
    };
    assert!(remaining > Duration::from_secs(25), "{remaining:?}");
    assert!(matches!(decision, Decision::Deny(_)));
    assert!(matches!(
        host.list()[0].state,
        PolicyState::Suspended { .. }
    ));

    // A new version starts with a full budget.
    let changed = policy(
        "flaky",
        artifacts::MISBEHAVING_AUTHZ,
        PolicyWorld::Authz,
        json!({"version": 2}),
    );
    assert!(host.apply_config(&[changed]).is_ok());
    assert_eq!(
        flaky.authorize(&peer("calm", None, "127.0.0.1")),
        AuthzOutcome::Decided(Decision::Allow)
    );
}

#[test]
fn inputs_over_the_size_bound_are_refused_without_calling_the_guest() {
    let config = HostConfig {
        max_input_bytes: 4096,
        ..host_config()
    };
    let host = PolicyHost::new(config, Arc::new(MemoryKv::new())).unwrap();
    assert!(
        host.apply_config(&[policy(
            "mirror",
            artifacts::MIRROR_PRIMARY,
            PolicyWorld::Health,
            json!({})
        )])
        .is_ok()
    );
    let huge = http_probe(200, &"x".repeat(10_000));
    let outcome = host
        .health("mirror")
        .unwrap()
        .evaluate(&instance("a", "svc", &[]), &huge);
    assert!(
        matches!(
            outcome,
            HealthOutcome::KeepPrevious {
                error: CallError::InputTooLarge { limit: 4096, .. }
            }
        ),
        "{outcome:?}"
    );
}
