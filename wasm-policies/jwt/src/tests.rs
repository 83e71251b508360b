//! The policy's logic, natively, on real tokens minted by `jsonwebtoken` (an independent JOSE
//! implementation) with the RSA and P-256 keys committed under `tests/fixtures`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use rsa::pkcs8::DecodePrivateKey as _;
use rsa::traits::PublicKeyParts as _;
use serde_json::{Value, json};
use sluice_policy_sdk::{
    Action, Forward, HeaderEdit, HttpRequest, LogLevel, Reply, Request, testing,
};

use super::*;

/// The frozen clock of every test, in seconds since the epoch.
const NOW: u64 = 1_800_000_000;
const SECRET: &str = "seed-003-shared-secret";
const RSA_PEM: &str = include_str!("../tests/fixtures/rsa_private.pem");
const EC_PEM: &str = include_str!("../tests/fixtures/ec_private.pem");
const JWKS_FIXTURE: &str = include_str!("../tests/fixtures/jwks.json");

/// The JWKS of the fixture keys (`kid` "rsa-1" and "ec-1"), built from the private keys.
fn jwks() -> Value {
    let rsa = rsa::RsaPrivateKey::from_pkcs8_pem(RSA_PEM).expect("RSA fixture");
    let ec = p256::SecretKey::from_pkcs8_pem(EC_PEM).expect("EC fixture");
    let point = ec.public_key().to_encoded_point(false);
    let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
    json!({"keys": [
        {"kty": "RSA", "kid": "rsa-1", "use": "sig", "alg": "RS256",
         "n": b64(&rsa.n().to_bytes_be()), "e": b64(&rsa.e().to_bytes_be())},
        {"kty": "EC", "kid": "ec-1", "use": "sig", "crv": "P-256",
         "x": b64(point.x().expect("uncompressed")), "y": b64(point.y().expect("uncompressed"))},
    ]})
}

fn mint(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let key = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(SECRET.as_bytes()).expect("HMAC key"),
        Algorithm::RS256 => EncodingKey::from_rsa_pem(RSA_PEM.as_bytes()).expect("RSA key"),
        Algorithm::ES256 => EncodingKey::from_ec_pem(EC_PEM.as_bytes()).expect("EC key"),
        other => panic!("no test key for {other:?}"),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key).expect("jsonwebtoken signs")
}

fn hs256_with(secret: &str, claims: &Value) -> String {
    let key = EncodingKey::from_secret(secret.as_bytes()).expect("HMAC key");
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).expect("signs")
}

/// Claims valid at [`NOW`] for a minute, plus `extra`.
fn claims(extra: Value) -> Value {
    let mut claims = json!({"sub": "svc-a", "iat": NOW, "exp": NOW + 60});
    if let (Some(claims), Value::Object(extra)) = (claims.as_object_mut(), extra) {
        claims.extend(extra);
    }
    claims
}

fn configured(config: Value) -> JwtPolicy {
    testing::set_now_ms(Some(NOW * 1000));
    testing::set_kv("jwt/jwks", &jwks().to_string());
    JwtPolicy::configure(&config.to_string()).expect("valid config")
}

fn request(headers: &[(&str, &str)]) -> HttpRequest {
    let mut request = testing::http_request("/orders", headers);
    request.host = "api.test".into();
    request.route.name = "api".into();
    request.route.service = "orders".into();
    request
}

fn bearer(policy: &JwtPolicy, token: &str) -> Action {
    policy.on_request(&Request::from(&request(&[(
        "authorization",
        &format!("Bearer {token}"),
    )])))
}

fn forwarded(action: Action) -> Forward {
    match action {
        Action::Forward(forward) => forward,
        Action::Reply(reply) => panic!(
            "expected a forward, got {} {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        ),
    }
}

fn replied(action: Action) -> Reply {
    match action {
        Action::Reply(reply) => reply,
        Action::Forward(forward) => panic!("expected a reply, got a forward {forward:?}"),
    }
}

/// The 401's `error` and `detail`, after checking its shape.
fn refused(action: Action) -> (String, String) {
    let reply = replied(action);
    assert_eq!(reply.status, 401);
    let body: Value = serde_json::from_slice(&reply.body).expect("JSON body");
    let header = |name: &str| {
        reply
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("content-type").as_deref(), Some("application/json"));
    let challenge = header("www-authenticate").expect("a Bearer challenge");
    let error = body["error"].as_str().expect("error").to_owned();
    let detail = body["detail"].as_str().expect("detail").to_owned();
    if error == "invalid_token" {
        assert!(
            challenge.starts_with("Bearer error=\"invalid_token\", error_description=\""),
            "{challenge}"
        );
    } else {
        assert_eq!(challenge, "Bearer");
    }
    (error, detail)
}

fn invalid_detail(action: Action) -> String {
    let (error, detail) = refused(action);
    assert_eq!(error, "invalid_token", "{detail}");
    detail
}

fn all_keys() -> Value {
    json!({"secret": SECRET, "jwks_kv_key": "jwt/jwks"})
}

#[test]
fn the_committed_jwks_fixture_is_the_one_the_keys_give() {
    let committed: Value = serde_json::from_str(JWKS_FIXTURE).expect("JSON fixture");
    assert_eq!(
        committed,
        jwks(),
        "tests/fixtures/jwks.json must be the JWKS of the committed keys (used by the host tests)"
    );
}

#[test]
fn valid_hs256_rs256_and_es256_tokens_are_forwarded() {
    let policy = configured(all_keys());
    for (alg, kid) in [
        (Algorithm::HS256, None),
        (Algorithm::RS256, Some("rsa-1")),
        (Algorithm::ES256, Some("ec-1")),
    ] {
        let forward = forwarded(bearer(&policy, &mint(alg, kid, &claims(json!({})))));
        assert!(forward.headers.is_empty(), "{alg:?}: {forward:?}");
    }
}

#[test]
fn expired_tokens_and_tokens_not_yet_valid_are_refused_outside_the_clock_skew() {
    let policy = configured(all_keys());
    let at = |exp: u64| mint(Algorithm::HS256, None, &claims(json!({"exp": exp})));
    assert_eq!(
        invalid_detail(bearer(&policy, &at(NOW - 100))),
        "expired 100 s ago"
    );
    forwarded(bearer(&policy, &at(NOW - 30)));
    assert_eq!(
        invalid_detail(bearer(&policy, &at(NOW - 60))),
        "expired 60 s ago"
    );

    let nbf = |nbf: u64| {
        mint(
            Algorithm::RS256,
            Some("rsa-1"),
            &claims(json!({"nbf": nbf})),
        )
    };
    forwarded(bearer(&policy, &nbf(NOW + 59)));
    assert_eq!(
        invalid_detail(bearer(&policy, &nbf(NOW + 120))),
        "not valid yet: nbf is 120 s ahead"
    );

    let strict = configured(json!({"secret": SECRET, "clock_skew": 0}));
    assert_eq!(
        invalid_detail(bearer(&strict, &at(NOW - 1))),
        "expired 1 s ago"
    );
    forwarded(bearer(&strict, &at(NOW + 1)));
}

#[test]
fn exp_is_required_unless_configured_otherwise() {
    let no_exp = mint(Algorithm::HS256, None, &json!({"sub": "svc-a"}));
    let policy = configured(json!({"secret": SECRET}));
    assert_eq!(invalid_detail(bearer(&policy, &no_exp)), "no `exp` claim");
    let lenient = configured(json!({"secret": SECRET, "require_exp": false}));
    forwarded(bearer(&lenient, &no_exp));
    let bad_exp = mint(Algorithm::HS256, None, &json!({"exp": "tomorrow"}));
    assert_eq!(
        invalid_detail(bearer(&lenient, &bad_exp)),
        "`exp` is not a number"
    );
}

#[test]
fn issuer_and_audience_must_match_one_configured() {
    let policy = configured(json!({
        "secret": SECRET, "issuer": ["auth.seed", "auth2.seed"], "audience": "orders",
    }));
    let token = |extra| mint(Algorithm::HS256, None, &claims(extra));
    forwarded(bearer(
        &policy,
        &token(json!({"iss": "auth2.seed", "aud": "orders"})),
    ));
    forwarded(bearer(
        &policy,
        &token(json!({"iss": "auth.seed", "aud": ["billing", "orders"]})),
    ));
    assert_eq!(
        invalid_detail(bearer(
            &policy,
            &token(json!({"iss": "evil", "aud": "orders"}))
        )),
        "wrong issuer `evil`"
    );
    assert_eq!(
        invalid_detail(bearer(
            &policy,
            &token(json!({"iss": "auth.seed", "aud": ["billing"]}))
        )),
        "wrong audience"
    );
    assert_eq!(
        invalid_detail(bearer(&policy, &token(json!({"aud": "orders"})))),
        "no `iss` claim"
    );
    assert_eq!(
        invalid_detail(bearer(&policy, &token(json!({"iss": "auth.seed"})))),
        "no `aud` claim"
    );
}

#[test]
fn a_bad_signature_is_refused_whatever_the_algorithm() {
    let policy = configured(all_keys());
    let other_secret = hs256_with("another-secret", &claims(json!({})));
    assert_eq!(
        invalid_detail(bearer(&policy, &other_secret)),
        "bad signature"
    );
    for (alg, kid) in [
        (Algorithm::HS256, None),
        (Algorithm::RS256, Some("rsa-1")),
        (Algorithm::ES256, Some("ec-1")),
    ] {
        let token = mint(alg, kid, &claims(json!({})));
        let (header, rest) = token.split_once('.').expect("three segments");
        let (_, signature) = rest.split_once('.').expect("three segments");
        let forged_payload = URL_SAFE_NO_PAD.encode(claims(json!({"sub": "admin"})).to_string());
        let forged = format!("{header}.{forged_payload}.{signature}");
        assert_eq!(
            invalid_detail(bearer(&policy, &forged)),
            "bad signature",
            "{alg:?}"
        );
    }
}

/// A token assembled by hand from a header and claims, with `signature` as its third segment.
fn assembled(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

#[test]
fn unsigned_and_unlisted_algorithms_are_refused() {
    let policy = configured(all_keys());
    for alg in ["none", "None", "NONE"] {
        let token = assembled(&json!({"alg": alg, "typ": "JWT"}), &claims(json!({})), b"");
        assert_eq!(
            invalid_detail(bearer(&policy, &token)),
            "unsigned tokens (alg none) are refused"
        );
    }
    let hs384 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS384),
        &claims(json!({})),
        &EncodingKey::from_secret(SECRET.as_bytes()).expect("HMAC key"),
    )
    .expect("signs");
    assert_eq!(
        invalid_detail(bearer(&policy, &hs384)),
        "alg `HS384` is not accepted (accepted: HS256, RS256, ES256)"
    );
    let rs_only = configured(json!({
        "secret": SECRET, "jwks_kv_key": "jwt/jwks", "algorithms": ["RS256"],
    }));
    let hs = mint(Algorithm::HS256, None, &claims(json!({})));
    assert_eq!(
        invalid_detail(bearer(&rs_only, &hs)),
        "alg `HS256` is not accepted (accepted: RS256)"
    );
    forwarded(bearer(
        &rs_only,
        &mint(Algorithm::RS256, Some("rsa-1"), &claims(json!({}))),
    ));
}

#[test]
fn an_hs256_token_keyed_with_the_public_key_is_refused_by_a_jwks_only_policy() {
    // The classic confusion: HMAC "signed" with the RSA public key's bytes, which the
    // attacker knows. A JWKS-only policy does not accept HS256 at all.
    let policy = configured(json!({"jwks_kv_key": "jwt/jwks"}));
    let public = jwks()["keys"][0]["n"].as_str().expect("n").to_owned();
    let token = hs256_with(&public, &claims(json!({})));
    assert_eq!(
        invalid_detail(bearer(&policy, &token)),
        "alg `HS256` is not accepted (accepted: RS256, ES256)"
    );
}

#[test]
fn keys_are_selected_by_kid_and_by_type() {
    let policy = configured(json!({"jwks_kv_key": "jwt/jwks"}));
    let ok = claims(json!({}));
    assert_eq!(
        invalid_detail(bearer(&policy, &mint(Algorithm::RS256, Some("rsa-9"), &ok))),
        "unknown kid `rsa-9`"
    );
    assert_eq!(
        invalid_detail(bearer(&policy, &mint(Algorithm::RS256, Some("ec-1"), &ok))),
        "kid `ec-1` names a ES256 key, the token says RS256"
    );
    // Without a kid, the only key of the token's type serves.
    forwarded(bearer(&policy, &mint(Algorithm::RS256, None, &ok)));
    forwarded(bearer(&policy, &mint(Algorithm::ES256, None, &ok)));

    // A key without kid serves tokens naming any kid when it is the only one of its type.
    let mut no_kids = jwks();
    for key in no_kids["keys"].as_array_mut().expect("keys") {
        key.as_object_mut().expect("key").remove("kid");
    }
    testing::set_kv("jwt/jwks", &no_kids.to_string());
    forwarded(bearer(
        &policy,
        &mint(Algorithm::RS256, Some("rotated-7"), &ok),
    ));

    // Two RSA keys and a token without kid: ambiguous.
    let mut two = jwks();
    let mut second = two["keys"][0].clone();
    second["kid"] = json!("rsa-2");
    two["keys"].as_array_mut().expect("keys").push(second);
    testing::set_kv("jwt/jwks", &two.to_string());
    assert_eq!(
        invalid_detail(bearer(&policy, &mint(Algorithm::RS256, None, &ok))),
        "the token names no kid and the JWKS has several RS256 keys"
    );
    forwarded(bearer(&policy, &mint(Algorithm::RS256, Some("rsa-2"), &ok)));
}

#[test]
fn the_jwks_is_read_again_when_its_kv_text_changes() {
    let policy = configured(json!({"jwks_kv_key": "jwt/jwks"}));
    let es = mint(Algorithm::ES256, Some("ec-1"), &claims(json!({})));
    forwarded(bearer(&policy, &es));
    let mut rsa_only = jwks();
    rsa_only["keys"].as_array_mut().expect("keys").truncate(1);
    testing::set_kv("jwt/jwks", &rsa_only.to_string());
    assert_eq!(invalid_detail(bearer(&policy, &es)), "unknown kid `ec-1`");
    testing::set_kv("jwt/jwks", &jwks().to_string());
    forwarded(bearer(&policy, &es));
}

#[test]
fn missing_or_unreadable_keys_answer_503_and_log_once() {
    let policy = configured(json!({"jwks_kv_key": "jwt/jwks", "secret_kv_key": "jwt/secret"}));
    testing::remove_kv("jwt/secret");
    testing::take_logs();
    let hs = mint(Algorithm::HS256, None, &claims(json!({})));
    for _ in 0..3 {
        let reply = replied(bearer(&policy, &hs));
        assert_eq!(reply.status, 503);
        let body: Value = serde_json::from_slice(&reply.body).expect("JSON");
        assert_eq!(body["error"], "jwt_keys_unavailable");
    }
    let logs = testing::take_logs();
    assert_eq!(logs.len(), 1, "one warning for one cause: {logs:?}");
    assert_eq!(logs[0].0, LogLevel::Warn);
    assert!(
        logs[0]
            .1
            .contains("KV key `jwt/secret` (secret_kv_key) is absent"),
        "{}",
        logs[0].1
    );

    let rs = mint(Algorithm::RS256, Some("rsa-1"), &claims(json!({})));
    for malformed in [
        "not json",
        r#"{"keys": []}"#,
        r#"{"keys": [{"kty": "OKP"}]}"#,
    ] {
        testing::set_kv("jwt/jwks", malformed);
        assert_eq!(replied(bearer(&policy, &rs)).status, 503, "{malformed}");
    }
    let logs = testing::take_logs();
    assert_eq!(logs.len(), 3, "{logs:?}");
    assert!(
        logs[2].1.contains("key #0 skipped: key type `OKP`"),
        "{}",
        logs[2].1
    );
    testing::remove_kv("jwt/jwks");
    assert_eq!(replied(bearer(&policy, &rs)).status, 503);
}

#[test]
fn a_missing_or_wrongly_framed_token_is_a_missing_token() {
    let policy = configured(all_keys());
    assert_eq!(
        refused(policy.on_request(&Request::from(&request(&[])))),
        ("missing_token".into(), "no `authorization` field".into())
    );
    assert_eq!(
        refused(policy.on_request(&Request::from(&request(&[(
            "authorization",
            "Basic dXNlcjpwdw=="
        )])))),
        (
            "missing_token".into(),
            "`authorization` does not carry a Bearer token".into()
        )
    );
    assert_eq!(
        refused(policy.on_request(&Request::from(&request(&[("authorization", "Bearer ")])))).0,
        "missing_token"
    );
    // The scheme is case-insensitive (RFC 7235 §2.1).
    let token = mint(Algorithm::HS256, None, &claims(json!({})));
    forwarded(policy.on_request(&Request::from(&request(&[(
        "Authorization",
        &format!("bearer {token}"),
    )]))));
}

#[test]
fn another_field_and_an_empty_scheme_take_the_whole_value() {
    let policy = configured(json!({"secret": SECRET, "header": "X-Service-Token", "scheme": ""}));
    let token = mint(Algorithm::HS256, None, &claims(json!({})));
    forwarded(policy.on_request(&Request::from(&request(&[("x-service-token", &token)]))));
    assert_eq!(
        refused(policy.on_request(&Request::from(&request(&[(
            "authorization",
            &format!("Bearer {token}")
        )])))),
        ("missing_token".into(), "no `x-service-token` field".into())
    );
}

#[test]
fn malformed_tokens_are_refused_with_what_is_wrong() {
    let policy = configured(all_keys());
    let cases = [
        (
            "abc.def",
            "malformed token: 2 dot-separated segments, a JWS has 3",
        ),
        (
            "a.b.c.d",
            "malformed token: 4 dot-separated segments, a JWS has 3",
        ),
        (
            "!!!.e30.sig",
            "malformed token: the header is not base64url",
        ),
        ("e30.e30.sig", "the header names no `alg`"),
        (
            "bm90IGpzb24.e30.c2ln",
            "malformed token: the header is not a JSON object",
        ),
    ];
    for (token, detail) in cases {
        assert_eq!(invalid_detail(bearer(&policy, token)), detail, "{token}");
    }
    let huge = format!("{}.{}.sig", "e".repeat(9000), "e".repeat(9000));
    assert_eq!(
        invalid_detail(bearer(&policy, &huge)),
        "token of 18005 bytes, over the 16384-byte limit"
    );
    let bad_sig_b64 = format!("{}!", mint(Algorithm::HS256, None, &claims(json!({}))));
    assert_eq!(
        invalid_detail(bearer(&policy, &bad_sig_b64)),
        "malformed token: the signature is not base64url"
    );
    let crit = assembled(
        &json!({"alg": "HS256", "crit": ["b64"]}),
        &claims(json!({})),
        b"x",
    );
    assert_eq!(
        invalid_detail(bearer(&policy, &crit)),
        "the header's `crit` extensions are not supported"
    );
}

#[test]
fn a_signed_payload_that_is_not_json_is_refused_after_the_signature() {
    let policy = configured(json!({"secret": SECRET}));
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256"}"#);
    let payload = URL_SAFE_NO_PAD.encode("not json");
    let input = format!("{header}.{payload}");
    let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(SECRET.as_bytes())
        .expect("any key length");
    hmac::Mac::update(&mut mac, input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(hmac::Mac::finalize(mac).into_bytes());
    assert_eq!(
        invalid_detail(bearer(&policy, &format!("{input}.{signature}"))),
        "malformed token: the payload is not a JSON object"
    );
}

#[test]
fn claims_are_mapped_to_fields_and_forged_fields_removed() {
    let policy = configured(json!({
        "secret": SECRET,
        "claims_to_headers": {"sub": "X-User", "role": "x-role", "admin": "x-admin",
                              "level": "x-level", "tenant": "x-tenant"},
        "forward_token": false,
    }));
    let token = mint(
        Algorithm::HS256,
        None,
        &claims(json!({"role": ["reader", "writer"], "admin": false, "level": 3})),
    );
    let forward = forwarded(policy.on_request(&Request::from(&request(&[
        ("authorization", &format!("Bearer {token}")),
        ("x-user", "forged-admin"),
        ("x-tenant", "forged-tenant"),
    ]))));
    let mut edits = forward.headers;
    edits.sort_by_key(|edit| format!("{edit:?}"));
    let set = |n: &str, v: &str| HeaderEdit::Set((n.into(), v.into()));
    let mut expected = vec![
        set("x-user", "svc-a"),
        set("x-role", "reader,writer"),
        set("x-admin", "false"),
        set("x-level", "3"),
        HeaderEdit::Remove("x-tenant".into()),
        HeaderEdit::Remove("authorization".into()),
    ];
    expected.sort_by_key(|edit| format!("{edit:?}"));
    assert_eq!(edits, expected);

    let control = mint(
        Algorithm::HS256,
        None,
        &claims(json!({"sub": "a\r\nx-admin: true"})),
    );
    assert_eq!(
        invalid_detail(bearer(&policy, &control)),
        "claim `sub` holds control characters: it cannot be a header value"
    );
}

#[test]
fn a_secret_rotated_in_kv_applies_at_the_next_request() {
    let policy = configured(json!({"secret_kv_key": "jwt/secret"}));
    testing::set_kv("jwt/secret", "old-secret");
    let old = hs256_with("old-secret", &claims(json!({})));
    let new = hs256_with("new-secret", &claims(json!({})));
    forwarded(bearer(&policy, &old));
    assert_eq!(invalid_detail(bearer(&policy, &new)), "bad signature");
    testing::set_kv("jwt/secret", "new-secret");
    forwarded(bearer(&policy, &new));
    assert_eq!(invalid_detail(bearer(&policy, &old)), "bad signature");
}

#[test]
fn a_remembered_token_still_expires_on_time() {
    let policy = configured(json!({"secret": "shared"}));
    let token = hs256_with("shared", &claims(json!({})));
    forwarded(bearer(&policy, &token));
    forwarded(bearer(&policy, &token));
    // exp is NOW + 60, with the default 60 s of skew.
    testing::set_now_ms(Some((NOW + 121) * 1000));
    let detail = invalid_detail(bearer(&policy, &token));
    assert!(detail.contains("expired"), "{detail}");
    testing::set_now_ms(Some(NOW * 1000));
}

#[test]
fn a_changed_copy_of_a_remembered_token_is_verified_again() {
    let policy = configured(json!({"secret": "shared"}));
    let token = hs256_with("shared", &claims(json!({})));
    forwarded(bearer(&policy, &token));
    // Same length, one byte changed: in the signature's last word, then in the header's first.
    for at in [token.len() - 1, 0] {
        let mut bytes = token.clone().into_bytes();
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).expect("ASCII");
        let detail = invalid_detail(bearer(&policy, &tampered));
        assert!(!detail.is_empty(), "byte {at} changed: {detail}");
    }
    forwarded(bearer(&policy, &token));
}

#[test]
fn texts_compare_equal_only_when_every_byte_is() {
    for (a, b, equal) in [
        ("", "", true),
        ("abcdefgh", "abcdefgh", true),
        ("abcdefghij", "abcdefghij", true),
        ("abcdefghij", "abcdefghik", false),
        ("xbcdefghij", "abcdefghij", false),
        ("abcdefgh", "abcdefg", false),
        ("abcdefgh", "abcdefgi", false),
    ] {
        assert_eq!(crate::same_text(a, b), equal, "{a:?} vs {b:?}");
    }
}

#[test]
fn error_descriptions_are_quotable() {
    let policy = configured(json!({"jwks_kv_key": "jwt/jwks"}));
    let token = mint(Algorithm::RS256, Some("k\"i\\d\u{e9}"), &claims(json!({})));
    let reply = replied(bearer(&policy, &token));
    let challenge = &reply
        .headers
        .iter()
        .find(|(n, _)| n == "www-authenticate")
        .expect("challenge")
        .1;
    assert_eq!(
        challenge,
        "Bearer error=\"invalid_token\", error_description=\"unknown kid `k?i?d?`\""
    );
}

#[test]
fn bad_configs_are_rejected_naming_the_key() {
    let error = |config: Value| JwtPolicy::configure(&config.to_string()).unwrap_err();
    assert_eq!(
        error(json!({})),
        "jwt: no key source: give secret, secret_kv_key or jwks_kv_key"
    );
    assert_eq!(
        error(json!({"jwks_kv_key": 7})),
        "jwt: `jwks_kv_key` must be a string"
    );
    assert_eq!(
        error(json!({"secret": "a", "secret_kv_key": "b"})),
        "jwt: give either `secret` or `secret_kv_key`, not both"
    );
    assert_eq!(error(json!({"secret": " "})), "jwt: `secret` is empty");
    assert_eq!(
        error(json!({"secret": "s", "algorithms": ["RS256"]})),
        "jwt: `algorithms` lists RS256 but no jwks_kv_key is given"
    );
    assert_eq!(
        error(json!({"secret": "s", "algorithms": ["none"]})),
        "jwt: `algorithms`: `none` is not supported (HS256, RS256, ES256)"
    );
    assert_eq!(
        error(json!({"secret": "s", "algorithms": []})),
        "jwt: `algorithms` is empty: no token could be accepted"
    );
    assert_eq!(
        error(json!({"secret": "s", "clock_skew": -1})),
        "jwt: `clock_skew` must be a whole number of seconds from 0 to 86400"
    );
    assert_eq!(
        error(json!({"secret": "s", "cache_seconds": 601})),
        "jwt: `cache_seconds` must be a whole number of seconds from 0 to 600"
    );
    assert_eq!(
        error(json!({"secret": "s", "audience": 3})),
        "jwt: `audience` must be a string or a list of strings"
    );
    assert_eq!(
        error(json!({"secret": "s", "issuer": []})),
        "jwt: `issuer` is an empty list: leave it out to skip the check"
    );
    assert_eq!(
        error(json!({"secret": "s", "claims_to_headers": {"sub": "x user"}})),
        "jwt: `claims_to_headers`: claim `sub`: `x user` is not a valid header name"
    );
    assert_eq!(
        error(json!({"secret": "s", "claims_to_headers": {"sub": "Content-Length"}})),
        "jwt: `claims_to_headers`: claim `sub`: `content-length` is set by the proxy, not by a policy"
    );
    assert_eq!(
        error(json!({"secret": "s", "claims_to_headers": {"sub": "authorization"}})),
        "jwt: `claims_to_headers`: claim `sub` maps onto the token's own field `authorization`"
    );
    assert_eq!(
        error(json!({"secret": "s", "forward_token": "no"})),
        "jwt: `forward_token` must be true or false"
    );
    assert!(
        error(json!({"secret": "s", "audiences": "x"}))
            .starts_with("jwt: unknown config key `audiences` (known: header, scheme,")
    );
    assert!(
        JwtPolicy::configure("null").is_err(),
        "no key source in an empty config"
    );
}

#[test]
fn the_default_algorithms_follow_the_configured_keys() {
    let algs = |config: Value| {
        config::parse(&config.to_string())
            .expect("valid")
            .algorithms
    };
    assert_eq!(algs(json!({"secret": "s"})), [Alg::Hs256]);
    assert_eq!(algs(json!({"jwks_kv_key": "k"})), [Alg::Rs256, Alg::Es256]);
    assert_eq!(algs(all_keys()), [Alg::Hs256, Alg::Rs256, Alg::Es256]);
}

#[test]
fn an_answer_is_reused_for_cache_seconds_but_never_past_exp_and_its_skew() {
    let lifetime = |config: Value, claims: Value| {
        let config = config::parse(&config.to_string()).expect("config");
        let claims = claims.as_object().cloned().expect("object");
        token::answer_lifetime_ms(&claims, &config, NOW * 1000)
    };
    let default = json!({"secret": SECRET});
    assert_eq!(
        lifetime(default.clone(), json!({"exp": NOW + 3600})),
        60_000
    );
    // exp 10 s ahead plus 5 s of skew.
    let skew = json!({"secret": SECRET, "clock_skew": 5});
    assert_eq!(lifetime(skew, json!({"exp": NOW + 10})), 15_000);
    let strict = json!({"secret": SECRET, "clock_skew": 0, "cache_seconds": 600});
    assert_eq!(lifetime(strict.clone(), json!({"exp": NOW + 10})), 10_000);
    assert_eq!(lifetime(strict.clone(), json!({"exp": NOW - 1})), 0);
    assert_eq!(lifetime(strict, json!({"exp": NOW as f64 + 0.25})), 250);
    let never = json!({"secret": SECRET, "cache_seconds": 0, "require_exp": false});
    assert_eq!(lifetime(never, json!({"sub": "a"})), 0);
    let no_exp = json!({"secret": SECRET, "require_exp": false});
    assert_eq!(lifetime(no_exp, json!({"sub": "a", "nbf": NOW})), 60_000);
}

#[test]
fn only_a_verified_token_lets_the_host_reuse_the_answer() {
    let policy = configured(json!({"secret": SECRET, "clock_skew": 0}));
    testing::take_cache_answer();
    let token = mint(Algorithm::HS256, None, &claims(json!({"exp": NOW + 20})));
    forwarded(bearer(&policy, &token));
    assert_eq!(
        testing::take_cache_answer(),
        Some(std::time::Duration::from_secs(20))
    );
    let forged = hs256_with("another-secret", &claims(json!({})));
    invalid_detail(bearer(&policy, &forged));
    assert_eq!(testing::take_cache_answer(), None);
}
