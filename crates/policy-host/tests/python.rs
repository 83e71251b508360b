//! Policies written in Python (componentize-py, `sdk/python`): the examples in
//! `examples/policies-python/` (an `authz` and a `request` policy) built by their own `build.sh`
//! (cached by source hash), loaded by the host under the default limits, and asked for
//! decisions; bad configs and a too small memory cap rejected with precise errors.
//!
//! componentize-py must be installed (scripts/setup.sh); without it these tests fail saying so.
//! One host per test: compiling an 18 MB Python component takes seconds, and the host's compile
//! cache shares it between every config loaded from the same bytes.

mod common;

use std::sync::Arc;

use common::*;
use serde_json::json;
use sluice_config::{POLICY_MAX_MEMORY_BYTES, PolicyWorld};
use sluice_policy_host::types::{Action, Decision, HeaderEdit};
use sluice_policy_host::{AuthzOutcome, MemoryKv, PolicyState, RequestOutcome};
use sluice_policy_test_artifacts::python_example;

#[test]
fn python_authz_allows_listed_cns_from_allowed_sources_and_denies_the_rest() {
    let kv = Arc::new(MemoryKv::new());
    let host = host_with_kv(kv.clone());
    let file = python_example("authz");
    let mut config = policy(
        "py",
        &file,
        PolicyWorld::Authz,
        json!({
            "allowed_cns": ["app1", "app2"],
            "allowed_cns_kv_key": "py/CNS",
            "source_cidrs": ["127.0.0.0/8", "fd00::/8"],
        }),
    );
    // The default cap of a `[[policy]]` entry (16 MiB) is enough for the Python interpreter.
    config.limits.max_memory_bytes = POLICY_MAX_MEMORY_BYTES;
    let report = host.apply_config(&[config]);
    assert!(report.is_ok(), "{report:?}");
    let py = host.authz("py").expect("loaded as authz");

    let decide = |cn: Option<&str>, source: &str| py.authorize(&peer("mtls", cn, source));
    let deny = |reason: &str| AuthzOutcome::Decided(Decision::Deny(reason.into()));
    assert_eq!(
        decide(Some("app2"), "127.0.0.9"),
        AuthzOutcome::Decided(Decision::Allow)
    );
    assert_eq!(
        decide(Some("app1"), "fd00::1"),
        AuthzOutcome::Decided(Decision::Allow)
    );
    assert_eq!(
        decide(Some("intruder"), "127.0.0.9"),
        deny("client `intruder` is not in the allow-list")
    );
    assert_eq!(
        decide(Some("app1"), "192.0.2.1"),
        deny("source 192.0.2.1 is outside the allowed ranges")
    );
    assert_eq!(decide(None, "127.0.0.9"), deny("no client certificate CN"));

    // The KV list is read on every call: a change admits at once, without a reload.
    assert!(!decide(Some("app3"), "127.0.0.3").is_allowed());
    kv.set("py/CNS", "app9; app3");
    assert_eq!(
        decide(Some("app3"), "127.0.0.3"),
        AuthzOutcome::Decided(Decision::Allow)
    );

    let status = &host.list()[0];
    assert_eq!(status.state, PolicyState::Active);
    assert_eq!((status.calls, status.errors, status.traps), (7, 0, 0));
}

#[test]
fn python_authz_rejects_bad_configs_and_a_memory_cap_below_its_heap_precisely() {
    let host = host();
    let file = python_example("authz");
    // The interpreter's heap snapshot is 12.3 MiB of initial linear memory: 8 MiB cannot hold it.
    let mut small_cap = policy(
        "small-cap",
        &file,
        PolicyWorld::Authz,
        json!({"allowed_cns": ["app1"]}),
    );
    small_cap.limits.max_memory_bytes = 8 << 20;
    // A good policy first: it keeps the compiled module alive, so the rejected ones reuse it.
    let report = host.apply_config(&[
        policy(
            "good",
            &file,
            PolicyWorld::Authz,
            json!({"allowed_cns": ["app1"]}),
        ),
        policy(
            "bad-cidr",
            &file,
            PolicyWorld::Authz,
            json!({"allowed_cns": ["app1"], "source_cidrs": ["10.0.0.0/33"]}),
        ),
        policy("nobody", &file, PolicyWorld::Authz, json!({})),
        policy("not-json-object", &file, PolicyWorld::Authz, json!([1, 2])),
        small_cap,
    ]);
    let errors: std::collections::BTreeMap<&str, &str> = report.rejected().collect();
    assert_eq!(errors.len(), 4, "{report:?}");
    assert!(
        errors["small-cap"].contains("memory"),
        "{}",
        errors["small-cap"]
    );
    assert!(
        errors["bad-cidr"].starts_with(
            "configure rejected the config: `source_cidrs`: '10.0.0.0/33' is not a CIDR range"
        ),
        "{}",
        errors["bad-cidr"]
    );
    assert_eq!(
        errors["nobody"],
        "configure rejected the config: give `allowed_cns` or `allowed_cns_kv_key`: nobody would be allowed"
    );
    assert_eq!(
        errors["not-json-object"],
        "configure rejected the config: config must be a JSON object, not list"
    );
}

fn forwarded(outcome: RequestOutcome) -> sluice_policy_host::types::Forward {
    match outcome {
        RequestOutcome::Decided(Action::Forward(forward)) => forward,
        other => panic!("expected a forward, got {other:?}"),
    }
}

/// The reply's status and its JSON body.
fn replied(outcome: RequestOutcome) -> (u16, serde_json::Value) {
    match outcome {
        RequestOutcome::Decided(Action::Reply(reply)) => {
            assert!(
                reply
                    .headers
                    .contains(&("content-type".into(), "application/json".into())),
                "{reply:?}"
            );
            let body = serde_json::from_slice(&reply.body).expect("a JSON body");
            (reply.status, body)
        }
        other => panic!("expected a reply, got {other:?}"),
    }
}

#[test]
fn python_request_policy_checks_the_api_key_edits_headers_and_answers_401() {
    let kv = Arc::new(MemoryKv::new());
    let host = host_with_kv(kv.clone());
    let report = host.apply_config(&[policy(
        "keys",
        python_example("request"),
        PolicyWorld::Request,
        json!({"api_key": "sesame", "api_key_kv_key": "keys/API_KEY"}),
    )]);
    assert!(report.is_ok(), "{report:?}");
    let keys = host.request("keys").expect("loaded as a request policy");

    let passed = forwarded(keys.on_request(&http_request(
        "/x",
        &[("x-api-key", "sesame"), ("accept", "*/*")],
    )));
    assert_eq!(
        passed.headers,
        vec![
            HeaderEdit::Remove("x-api-key".into()),
            HeaderEdit::Set(("x-authenticated".into(), "api-key".into())),
        ]
    );
    assert_eq!((passed.path, passed.service), (None, None));
    let context = passed.response_context.expect("asks for on-response");
    assert_eq!(
        keys.on_response(
            200,
            &[("content-type".into(), "text/plain".into())],
            &context
        ),
        Ok(vec![HeaderEdit::Set((
            "x-policy".into(),
            "python-request".into()
        ))])
    );

    // `canary` is among the route's allowed services (tests/common's route).
    let canary = forwarded(keys.on_request(&http_request(
        "/x",
        &[("x-api-key", "sesame"), ("x-canary", "1")],
    )));
    assert_eq!(canary.service.as_deref(), Some("canary"));

    assert_eq!(
        replied(keys.on_request(&http_request("/x", &[]))),
        (
            401,
            json!({"error": "unauthorized", "reason": "missing x-api-key"})
        )
    );
    assert_eq!(
        replied(keys.on_request(&http_request("/x", &[("x-api-key", "guess")]))),
        (
            401,
            json!({"error": "unauthorized", "reason": "wrong x-api-key"})
        )
    );

    // The key rotates through KV, without a reload.
    kv.set("keys/API_KEY", "rotated");
    let old = keys.on_request(&http_request("/x", &[("x-api-key", "sesame")]));
    assert_eq!(replied(old).0, 401);
    forwarded(keys.on_request(&http_request("/x", &[("x-api-key", "rotated")])));
}
