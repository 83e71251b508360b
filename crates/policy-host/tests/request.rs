//! The `request` world (contract 0.3.0) on real guests: forward with edits, reply, the checks
//! on what a guest answers, failure modes, `on-response`, what the request resource shows; and
//! modules built against contracts 0.1.0 and 0.2.0 still loading.

mod common;

use common::*;
use serde_json::json;
use sluice_config::{FailureMode, PolicyWorld};
use sluice_policy_host::types::{Action, Decision, HeaderEdit};
use sluice_policy_host::{AuthzOutcome, CallError, RequestHandle, RequestOutcome, RequestView};
use sluice_policy_test_artifacts as artifacts;

fn gate(failure_mode: FailureMode) -> (sluice_policy_host::PolicyHost, RequestHandle) {
    let host = host();
    let mut config = policy(
        "gate",
        artifacts::HEADER_GATE,
        PolicyWorld::Request,
        json!({"key": "sesame"}),
    );
    config.failure_mode = failure_mode;
    let report = host.apply_config(&[config]);
    assert!(report.is_ok(), "{report:?}");
    let handle = host.request("gate").expect("loaded as a request policy");
    (host, handle)
}

fn edits(outcome: RequestOutcome) -> Vec<HeaderEdit> {
    match outcome {
        RequestOutcome::Decided(Action::Forward(f)) => f.headers,
        other => panic!("expected a forward, got {other:?}"),
    }
}

/// `header_gate` forwards a request with the right key, the key removed and the caller named.
fn passes_the_key_with_edits(gate: &RequestHandle) {
    let passed = gate.on_request(&http_request(
        "/x",
        &[("x-api-key", "sesame"), ("x-caller", "ann")],
    ));
    assert_eq!(
        edits(passed),
        vec![
            HeaderEdit::Set(("x-gate".into(), "passed".into())),
            HeaderEdit::Remove("x-api-key".into()),
            HeaderEdit::Set(("x-caller-name".into(), "ann".into())),
        ]
    );
}

fn failure(outcome: RequestOutcome) -> (CallError, bool) {
    match outcome {
        RequestOutcome::Failed { error, open } => (error, open),
        other => panic!("expected a failed call, got {other:?}"),
    }
}

#[test]
fn a_matching_key_forwards_with_edits_and_others_get_the_policys_reply() {
    let (host, gate) = gate(FailureMode::Closed);
    passes_the_key_with_edits(&gate);
    let refused = gate.on_request(&http_request("/x", &[("x-api-key", "guess")]));
    let RequestOutcome::Decided(Action::Reply(reply)) = refused else {
        panic!("expected a reply, got {refused:?}");
    };
    assert_eq!(reply.status, 401);
    let body: serde_json::Value = serde_json::from_slice(&reply.body).expect("JSON body");
    assert_eq!(body["error"], "unauthorized");
    assert!(
        reply
            .headers
            .contains(&("content-type".into(), "application/json".into()))
    );
    assert!(host_has_no_other_world(&host));
}

fn host_has_no_other_world(host: &sluice_policy_host::PolicyHost) -> bool {
    host.authz("gate").is_none() && host.health("gate").is_none()
}

#[test]
fn a_service_override_must_be_one_the_route_allows() {
    let (_host, gate) = gate(FailureMode::Closed);
    let key = ("x-api-key", "sesame");
    let allowed = gate.on_request(&http_request("/", &[key, ("x-route-to", "canary")]));
    let RequestOutcome::Decided(Action::Forward(forward)) = allowed else {
        panic!("expected a forward, got {allowed:?}");
    };
    assert_eq!(forward.service.as_deref(), Some("canary"));

    let outside = gate.on_request(&http_request("/", &[key, ("x-route-to", "billing")]));
    let (error, open) = failure(outside);
    assert!(!open, "closed by default");
    assert!(
        matches!(&error, CallError::InvalidAnswer(m) if m.contains("`billing`")),
        "{error}"
    );
}

#[test]
fn answers_that_would_break_framing_or_paths_are_refused() {
    let (_host, gate) = gate(FailureMode::Closed);
    let key = ("x-api-key", "sesame");
    let (error, _) =
        failure(gate.on_request(&http_request("/", &[key, ("x-misbehave", "framing")])));
    assert!(
        matches!(&error, CallError::InvalidAnswer(m) if m.contains("content-length")),
        "{error}"
    );
    let (error, _) =
        failure(gate.on_request(&http_request("/", &[key, ("x-rewrite", "no-slash")])));
    assert!(
        matches!(&error, CallError::InvalidAnswer(m) if m.contains("must start with '/'")),
        "{error}"
    );
    let rewritten = gate.on_request(&http_request("/", &[key, ("x-rewrite", "/v2/x?y=1")]));
    let RequestOutcome::Decided(Action::Forward(forward)) = rewritten else {
        panic!("expected a forward, got {rewritten:?}");
    };
    assert_eq!(forward.path.as_deref(), Some("/v2/x?y=1"));
}

#[test]
fn a_trapping_or_stuck_call_applies_the_failure_mode() {
    let (_host, closed) = gate(FailureMode::Closed);
    let (error, open) = failure(closed.on_request(&http_request("/", &[("x-misbehave", "panic")])));
    assert!(matches!(error, CallError::Trap(_)), "{error}");
    assert!(!open);

    let (_host, open_gate) = gate(FailureMode::Open);
    let (error, open) =
        failure(open_gate.on_request(&http_request("/", &[("x-misbehave", "loop")])));
    assert!(matches!(error, CallError::Timeout(_)), "{error}");
    assert!(open, "failure_mode = open forwards unchanged");
    // The instance that timed out was discarded; the next call is answered normally.
    let after = open_gate.on_request(&http_request("/", &[("x-api-key", "sesame")]));
    assert!(
        matches!(after, RequestOutcome::Decided(Action::Forward(_))),
        "{after:?}"
    );
}

#[test]
fn on_response_edits_the_response_head_with_the_context_given() {
    let (_host, gate) = gate(FailureMode::Closed);
    let asked = gate.on_request(&http_request(
        "/",
        &[("x-api-key", "sesame"), ("x-tag-response", "blue")],
    ));
    let RequestOutcome::Decided(Action::Forward(forward)) = asked else {
        panic!("expected a forward, got {asked:?}");
    };
    let context = forward
        .response_context
        .expect("the guest asked for on-response");
    let edits = gate
        .on_response(
            200,
            &[("content-type".into(), "text/plain".into())],
            &context,
        )
        .expect("answered");
    assert_eq!(
        edits,
        vec![HeaderEdit::Set(("x-tagged".into(), "blue".into()))]
    );
}

#[test]
fn a_module_built_against_contract_0_1_0_still_loads_and_answers() {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/ecp_authz_wit_0_1_0.wasm"
    );
    let host = host_loading(policy(
        "old",
        fixture,
        PolicyWorld::Authz,
        json!({"client_systems": "app1"}),
    ));
    let old = host.authz("old").expect("loaded");
    assert_eq!(
        old.authorize(&peer("ecp", Some("app1"), "127.0.0.1")),
        AuthzOutcome::Decided(Decision::Allow)
    );
    assert!(matches!(
        old.authorize(&peer("ecp", Some("other"), "127.0.0.1")),
        AuthzOutcome::Decided(Decision::Deny(_))
    ));
}

/// The reply body of the `request_reader` guest for `view`, as JSON.
fn read_back(handle: &RequestHandle, view: &mut RequestView) -> serde_json::Value {
    match handle.on_request_view(view) {
        RequestOutcome::Decided(Action::Reply(reply)) => {
            serde_json::from_slice(&reply.body).expect("the reader answers JSON")
        }
        other => panic!("expected the reader's reply, got {other:?}"),
    }
}

#[test]
fn the_request_resource_shows_each_part_and_field_bytes_as_sent() {
    let host = host_loading(policy(
        "reader",
        artifacts::REQUEST_READER,
        PolicyWorld::Request,
        json!({}),
    ));
    let reader = host.request("reader").expect("loaded");
    let mut view = RequestView::default();
    view.copy_from(&http_request("/a/b", &[]));
    view.set_request_line("POST", "https", Some(b"api.test"), "/a/b", Some("q=1"));
    view.push_field(b"X-Probe", b"caf\xc3\xa9");
    view.push_field(b"accept", b"*/*");
    view.push_field(b"x-probe", b"raw\xff");
    let seen = read_back(&reader, &mut view);
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["scheme"], "https");
    assert_eq!(seen["host"], "api.test");
    assert_eq!(
        (&seen["path"], &seen["query"]),
        (&json!("/a/b"), &json!("q=1"))
    );
    assert_eq!(seen["header"], "café");
    assert_eq!(seen["header_values"], json!(["café", "raw\u{fffd}"]));
    assert_eq!(seen["header_bytes"], json!(b"caf\xc3\xa9".to_vec()));
    assert_eq!(
        seen["headers"],
        json!([
            ["x-probe", "café"],
            ["accept", "*/*"],
            ["x-probe", "raw\u{fffd}"]
        ])
    );
    assert_eq!(seen["peer"]["listener"], "web");
    assert_eq!(seen["route"]["allowed_services"], json!(["canary"]));

    // The view comes back as it was lent, and a request without the field shows none.
    view.set_request_line("GET", "http", None, "/", None);
    view.push_field(b"x-read", b"x-absent");
    let seen = read_back(&reader, &mut view);
    assert_eq!(
        (&seen["header"], &seen["query"]),
        (&json!(null), &json!(null))
    );
    assert_eq!(seen["header_values"], json!([]));
    assert_eq!(seen["host"], "");
}

#[test]
fn a_request_module_built_against_contract_0_2_0_still_loads_and_answers() {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/header_gate_wit_0_2_0.wasm"
    );
    let host = host_loading(policy(
        "old",
        fixture,
        PolicyWorld::Request,
        json!({"key": "sesame"}),
    ));
    let old = host.request("old").expect("loaded");
    passes_the_key_with_edits(&old);
    let refused = old.on_request(&http_request("/x", &[("x-api-key", "guess")]));
    assert!(
        matches!(&refused, RequestOutcome::Decided(Action::Reply(r)) if r.status == 401),
        "{refused:?}"
    );
    let edits = old.on_response(200, &[], "blue").expect("answered");
    assert_eq!(
        edits,
        vec![HeaderEdit::Set(("x-tagged".into(), "blue".into()))]
    );
}
