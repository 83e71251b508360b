//! The shipped `jwt` policy, compiled to WebAssembly, on real tokens minted by `jsonwebtoken`:
//! HS256 with a secret in KV, RS256 and ES256 with the JWKS in KV, refusals, and a secret and a
//! JWKS changed in KV taking effect at the next request without a reload, and a verified
//! token's answer given again by the host until the secret rotates or the token expires.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sluice_config::PolicyWorld;
use sluice_policy_host::types::{Action, HeaderEdit, Reply};
use sluice_policy_host::{AnswerMemory, MemoryKv, RequestHandle, RequestOutcome, RequestView};
use sluice_policy_test_artifacts as artifacts;

/// The jwt policy's test keys and their JWKS (see that directory's README).
const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../wasm-policies/jwt/tests/fixtures"
);

fn fixture(name: &str) -> String {
    let path = format!("{FIXTURES}/{name}");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn mint(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("jsonwebtoken signs")
}

fn hs256(secret: &str, claims: &Value) -> String {
    let key = EncodingKey::from_secret(secret.as_bytes()).expect("HMAC key");
    mint(Algorithm::HS256, None, &key, claims)
}

/// Claims for service `svc-a`, audience `orders`, valid for five minutes.
fn valid_claims() -> Value {
    json!({"sub": "svc-a", "aud": "orders", "exp": now_secs() + 300})
}

fn loaded(kv: &Arc<MemoryKv>) -> (sluice_policy_host::PolicyHost, RequestHandle) {
    let host = host_with_kv(Arc::clone(kv) as Arc<dyn sluice_policy_host::KvView>);
    let config = json!({
        "secret_kv_key": "seed003/jwt-secret",
        "jwks_kv_key": "seed003/jwks",
        "audience": "orders",
        "claims_to_headers": {"sub": "x-user"},
    });
    let report = host.apply_config(&[policy("jwt", artifacts::JWT, PolicyWorld::Request, config)]);
    assert!(report.is_ok(), "{report:?}");
    let handle = host.request("jwt").expect("loaded as a request policy");
    (host, handle)
}

fn call(jwt: &RequestHandle, token: &str, extra: &[(&str, &str)]) -> Action {
    let value = format!("Bearer {token}");
    let mut headers = vec![("authorization", value.as_str())];
    headers.extend_from_slice(extra);
    match jwt.on_request(&http_request("/orders", &headers)) {
        RequestOutcome::Decided(action) => action,
        other => panic!("the policy did not answer: {other:?}"),
    }
}

fn forward_edits(action: Action) -> Vec<HeaderEdit> {
    match action {
        Action::Forward(forward) => forward.headers,
        Action::Reply(reply) => panic!(
            "expected a forward, got {} {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        ),
    }
}

fn reply(action: Action) -> (Reply, Value) {
    match action {
        Action::Reply(reply) => {
            let body = serde_json::from_slice(&reply.body).expect("JSON body");
            (reply, body)
        }
        Action::Forward(forward) => panic!("expected a reply, got {forward:?}"),
    }
}

fn kv_with_keys(secret: &str) -> Arc<MemoryKv> {
    let kv = Arc::new(MemoryKv::new());
    kv.set("seed003/jwt-secret", secret);
    kv.set("seed003/jwks", &fixture("jwks.json"));
    kv
}

#[test]
fn real_hs256_rs256_and_es256_tokens_are_verified_and_their_subject_forwarded() {
    let kv = kv_with_keys("first-secret");
    let (_host, jwt) = loaded(&kv);
    let rsa = EncodingKey::from_rsa_pem(fixture("rsa_private.pem").as_bytes()).expect("RSA key");
    let ec = EncodingKey::from_ec_pem(fixture("ec_private.pem").as_bytes()).expect("EC key");
    let tokens = [
        hs256("first-secret", &valid_claims()),
        mint(Algorithm::RS256, Some("rsa-1"), &rsa, &valid_claims()),
        mint(Algorithm::ES256, Some("ec-1"), &ec, &valid_claims()),
    ];
    for token in &tokens {
        assert_eq!(
            forward_edits(call(&jwt, token, &[("x-user", "forged")])),
            vec![HeaderEdit::Set(("x-user".into(), "svc-a".into()))]
        );
    }

    let mut expired = valid_claims();
    expired["exp"] = json!(now_secs() - 3600);
    let (refused, body) = reply(call(&jwt, &hs256("first-secret", &expired), &[]));
    assert_eq!(refused.status, 401);
    assert_eq!(body["error"], "invalid_token");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("expired ")),
        "{body}"
    );
    assert!(
        refused.headers.iter().any(
            |(n, v)| n == "www-authenticate" && v.starts_with("Bearer error=\"invalid_token\"")
        )
    );

    let mut other_audience = valid_claims();
    other_audience["aud"] = json!("billing");
    let (_, body) = reply(call(&jwt, &hs256("first-secret", &other_audience), &[]));
    assert_eq!(body["detail"], "wrong audience");

    let (missing, body) = reply(match jwt.on_request(&http_request("/orders", &[])) {
        RequestOutcome::Decided(action) => action,
        other => panic!("{other:?}"),
    });
    assert_eq!(
        (missing.status, &body["error"]),
        (401, &json!("missing_token"))
    );
}

#[test]
fn a_secret_and_a_jwks_changed_in_kv_apply_at_the_next_request_without_a_reload() {
    let kv = kv_with_keys("first-secret");
    let (_host, jwt) = loaded(&kv);
    let old = hs256("first-secret", &valid_claims());
    let new = hs256("second-secret", &valid_claims());
    forward_edits(call(&jwt, &old, &[]));
    let (refused, _) = reply(call(&jwt, &new, &[]));
    assert_eq!(refused.status, 401);

    kv.set("seed003/jwt-secret", "second-secret");
    forward_edits(call(&jwt, &new, &[]));
    let (refused, body) = reply(call(&jwt, &old, &[]));
    assert_eq!(
        (refused.status, &body["detail"]),
        (401, &json!("bad signature"))
    );

    // The JWKS: drop the EC key, and ES256 tokens stop verifying; put it back, they verify.
    let ec = EncodingKey::from_ec_pem(fixture("ec_private.pem").as_bytes()).expect("EC key");
    let es = mint(Algorithm::ES256, Some("ec-1"), &ec, &valid_claims());
    forward_edits(call(&jwt, &es, &[]));
    let mut rsa_only: Value = serde_json::from_str(&fixture("jwks.json")).expect("JSON");
    rsa_only["keys"].as_array_mut().expect("keys").truncate(1);
    kv.set("seed003/jwks", &rsa_only.to_string());
    let (_, body) = reply(call(&jwt, &es, &[]));
    assert_eq!(body["detail"], "unknown kid `ec-1`");
    kv.set("seed003/jwks", &fixture("jwks.json"));
    forward_edits(call(&jwt, &es, &[]));
}

#[test]
fn keys_missing_from_kv_answer_503_not_401() {
    let kv = kv_with_keys("first-secret");
    let (_host, jwt) = loaded(&kv);
    kv.remove("seed003/jwt-secret");
    let (unavailable, body) = reply(call(&jwt, &hs256("first-secret", &valid_claims()), &[]));
    assert_eq!(unavailable.status, 503);
    assert_eq!(body["error"], "jwt_keys_unavailable");
}

fn remembered(jwt: &RequestHandle, memory: &mut AnswerMemory, token: &str) -> Action {
    let mut view = RequestView::default();
    let value = format!("Bearer {token}");
    view.copy_from(&http_request("/orders", &[("authorization", &value)]));
    match jwt.on_request_remembered(&mut view, memory) {
        RequestOutcome::Decided(action) => action,
        other => panic!("the policy did not answer: {other:?}"),
    }
}

#[test]
fn a_verified_token_is_answered_again_until_the_secret_rotates_or_the_token_expires() {
    let kv = kv_with_keys("first-secret");
    let (host, jwt) = loaded(&kv);
    let calls = || host.list()[0].calls;
    let mut memory = AnswerMemory::new();
    let token = hs256("first-secret", &valid_claims());
    for _ in 0..3 {
        let edits = forward_edits(remembered(&jwt, &mut memory, &token));
        assert_eq!(
            edits,
            vec![HeaderEdit::Set(("x-user".into(), "svc-a".into()))]
        );
    }
    assert_eq!((calls(), memory.reused()), (1, 2));

    // Refusals are not reused: a client cannot fill the memory with tokens that fail.
    let forged = hs256("guessed-secret", &valid_claims());
    for _ in 0..2 {
        assert_eq!(reply(remembered(&jwt, &mut memory, &forged)).0.status, 401);
    }
    assert_eq!((calls(), memory.reused()), (3, 2));

    kv.set("seed003/jwt-secret", "second-secret");
    let (refused, body) = reply(remembered(&jwt, &mut memory, &token));
    assert_eq!(
        (refused.status, &body["detail"]),
        (401, &json!("bad signature"))
    );

    // With no clock skew, a token's answer lasts until its `exp` and not a moment more.
    let strict = policy(
        "jwt",
        artifacts::JWT,
        PolicyWorld::Request,
        json!({"secret": "s3", "clock_skew": 0}),
    );
    assert!(host.apply_config(&[strict]).is_ok());
    let jwt = host.request("jwt").expect("reloaded");
    let expires_soon = hs256("s3", &json!({"sub": "b", "exp": now_secs() + 2}));
    forward_edits(remembered(&jwt, &mut memory, &expires_soon));
    forward_edits(remembered(&jwt, &mut memory, &expires_soon));
    assert_eq!(memory.reused(), 3);
    // `exp` is at most 2 s after the token was minted.
    std::thread::sleep(Duration::from_millis(2100));
    let (expired, body) = reply(remembered(&jwt, &mut memory, &expires_soon));
    assert_eq!(expired.status, 401, "{body}");
    assert_eq!(memory.reused(), 3);
}
