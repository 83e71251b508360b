//! The shipped `jwt` request policy (seed 003) through the binary: real tokens made with the
//! `jsonwebtoken` library, curl as the client, the secret and the JWKS in a real etcd. Valid
//! tokens pass with their claims as request fields (a client's forged copy replaced); missing,
//! expired, wrongly signed or wrong-audience tokens get `401` JSON with `WWW-Authenticate`;
//! an etcd change rotates the secret without a reload, ending the reuse of the answers given
//! to tokens that verified before it; RS256 and ES256 tokens verify against
//! the JWKS by `kid`.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use sluice_test_support::etcd::Etcd;
use sluice_test_support::eventually_blocking;
use sluice_test_support::{
    Backend, CurlAnswer, SluiceProcess, curl, free_port, http_get, metric_value,
};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../wasm-policies/jwt/tests/fixtures"
);

fn addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

struct Setup {
    web: SocketAddr,
    admin: SocketAddr,
    etcd: Etcd,
    _sluice: SluiceProcess,
    _backend: Backend,
}

/// Sluice with two JWT routes: `/api` (HS256, secret in etcd) and `/keys` (RS256/ES256, JWKS
/// in etcd), both for issuer `seed-003` and audience `api`.
fn start() -> Setup {
    let etcd = Etcd::start();
    etcd.put("jwt/SECRET", "first-secret-0123456789abcdef");
    let jwks = std::fs::read_to_string(format!("{FIXTURES}/jwks.json")).unwrap();
    etcd.put("jwt/JWKS", &jwks);
    let (admin, web) = (addr(), addr());
    let backend = Backend::start("api");
    let checks = "issuer = \"seed-003\", audience = \"api\", \
                  claims_to_headers = { sub = \"x-user\", role = \"x-role\" }";
    let config = format!(
        "[admin]\nbind = \"{admin}\"\n\
         [[listener]]\nname = \"web\"\nbind = \"{web}\"\n\
         [[service]]\nname = \"api\"\ninstances = [\"{}\"]\n\
         [[kv]]\nsource = \"etcd\"\nendpoints = [\"{}\"]\nprefix = \"jwt/\"\n\
         [[policy]]\nname = \"hs\"\nworld = \"request\"\nfile = \"builtin:jwt\"\n\
         config = {{ secret_kv_key = \"jwt/SECRET\", {checks} }}\n\
         [[policy]]\nname = \"keys\"\nworld = \"request\"\nfile = \"builtin:jwt\"\n\
         config = {{ jwks_kv_key = \"jwt/JWKS\", {checks} }}\n\
         [[route]]\npath = \"/api\"\nservice = \"api\"\npolicy = \"hs\"\n\
         [[route]]\npath = \"/keys\"\nservice = \"api\"\npolicy = \"keys\"\n",
        backend.addr(),
        etcd.endpoint(),
    );
    let sluice = SluiceProcess::start(BIN.as_ref(), &config, admin);
    Setup {
        web,
        admin,
        etcd,
        _sluice: sluice,
        _backend: backend,
    }
}

fn claims(sub: &str, exp_in: i64) -> Value {
    json!({"sub": sub, "role": "reader", "iss": "seed-003", "aud": "api", "exp": now() + exp_in})
}

fn hs256(claims: &Value, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn signed(alg: Algorithm, kid: &str, pem: &str, claims: &Value) -> String {
    let pem = std::fs::read(format!("{FIXTURES}/{pem}")).unwrap();
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
        _ => EncodingKey::from_ec_pem(&pem).unwrap(),
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    encode(&header, claims, &key).unwrap()
}

/// A GET of `url` with `headers`.
fn get(url: &str, headers: &[String]) -> CurlAnswer {
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    curl(url, &headers, &[])
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

/// Waits (10 s at most) until a GET of `url` with `token` is answered `status`: a KV change
/// has reached the policy.
fn until_answered(url: &str, token: &str, status: u16) {
    let what = format!("{url} with the token answers {status}");
    eventually_blocking(&what, Duration::from_secs(10), || {
        match get(url, &[bearer(token)]).status {
            seen if seen == status => Ok(()),
            other => Err(format!("answered {other}")),
        }
    });
}

fn refused(seen: &CurlAnswer, error: &str, detail_has: &str) {
    assert_eq!(seen.status, 401, "{}", seen.body);
    let body = seen.json();
    assert_eq!(body["error"], error, "{body}");
    let detail = body["detail"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        detail.contains(detail_has),
        "detail {detail:?} should mention {detail_has:?}"
    );
    assert!(
        seen.fields.contains("www-authenticate: bearer"),
        "{}",
        seen.fields
    );
}

#[test]
fn hs256_tokens_pass_with_their_claims_and_bad_ones_get_401() {
    let s = start();
    let url = format!("http://{}/api/orders", s.web);
    let secret = "first-secret-0123456789abcdef";

    let token = hs256(&claims("alice", 300), secret);
    let seen = get(&url, &[bearer(&token), "x-user: mallory".into()]);
    assert_eq!(seen.status, 200, "{}", seen.body);
    let headers = &seen.json()["headers"];
    assert_eq!(
        headers["x-user"], "alice",
        "the claim replaces a forged field: {headers}"
    );
    assert_eq!(headers["x-role"], "reader");
    // The same over HTTP/2, where the second request is answered from the first's answer.
    for _ in 0..2 {
        let h2 = curl(&url, &[&bearer(&token)], &["--http2-prior-knowledge"]);
        assert_eq!(h2.status, 200, "{}", h2.body);
        assert_eq!(h2.json()["headers"]["x-user"], "alice");
    }

    refused(&get(&url, &[]), "missing_token", "");
    refused(
        &get(&url, &[bearer(&hs256(&claims("alice", -600), secret))]),
        "invalid_token",
        "expired",
    );
    refused(
        &get(
            &url,
            &[bearer(&hs256(&claims("alice", 300), "another-secret"))],
        ),
        "invalid_token",
        "signature",
    );
    let mut wrong_aud = claims("alice", 300);
    wrong_aud["aud"] = json!("billing");
    refused(
        &get(&url, &[bearer(&hs256(&wrong_aud, secret))]),
        "invalid_token",
        "aud",
    );
    refused(&get(&url, &[bearer("not.a.token")]), "invalid_token", "");
}

#[test]
fn an_etcd_change_rotates_the_secret_without_a_reload() {
    let s = start();
    let url = format!("http://{}/api/x", s.web);
    let old = hs256(&claims("alice", 300), "first-secret-0123456789abcdef");
    let new = hs256(&claims("alice", 300), "second-secret-0123456789abcdef");
    // The old token's answer is given again without a call while the secret stays.
    for _ in 0..4 {
        assert_eq!(get(&url, &[bearer(&old)]).status, 200);
    }
    let reused = metric_value(s.admin, "sluice_policy_answers_reused_total{policy=\"hs\"");
    assert!(reused.is_some_and(|n| n >= 1.0), "reused: {reused:?}");
    assert_eq!(get(&url, &[bearer(&new)]).status, 401);
    let reloads_before = http_get(s.admin, "/api/reloads").unwrap().1;

    s.etcd.put("jwt/SECRET", "second-secret-0123456789abcdef");
    until_answered(&url, &new, 200);
    assert_eq!(
        get(&url, &[bearer(&old)]).status,
        401,
        "the old secret no longer verifies"
    );
    assert_eq!(
        http_get(s.admin, "/api/reloads").unwrap().1,
        reloads_before,
        "no reload happened"
    );
}

#[test]
fn rs256_and_es256_tokens_verify_against_the_jwks_by_kid() {
    let s = start();
    let url = format!("http://{}/keys/x", s.web);
    let rs = signed(
        Algorithm::RS256,
        "rsa-1",
        "rsa_private.pem",
        &claims("bob", 300),
    );
    let es = signed(
        Algorithm::ES256,
        "ec-1",
        "ec_private.pem",
        &claims("carol", 300),
    );
    for (token, user) in [(rs, "bob"), (es, "carol")] {
        let seen = get(&url, &[bearer(&token)]);
        assert_eq!(seen.status, 200, "{}", seen.body);
        assert_eq!(seen.json()["headers"]["x-user"], user);
    }
    let unknown = signed(
        Algorithm::ES256,
        "ec-9",
        "ec_private.pem",
        &claims("carol", 300),
    );
    refused(&get(&url, &[bearer(&unknown)]), "invalid_token", "kid");
    // An HS256 token on a JWKS-only route is refused whatever its secret (no alg confusion).
    let hs = hs256(&claims("alice", 300), "first-secret-0123456789abcdef");
    refused(&get(&url, &[bearer(&hs)]), "invalid_token", "");
}

/// Under an open loop of 400 requests a second with more than 200 in flight (the instance
/// answers after 600 ms), every request with a valid token passes, most on a reused answer;
/// once the rotated secret shows, no request sent after that passes on an answer a worker
/// thread kept from before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_an_open_loop_a_rotated_secret_ends_the_reuse_on_every_worker_at_once() {
    use sluice_test_support::Mode;
    use sluice_test_support::open_loop::{self, OpenLoop, Outcome, Summary, Target};
    open_loop::ensure_open_files(8192);
    let s = start();
    s._backend.set_mode(Mode::Delay(600));
    let url = format!("http://{}/api/x", s.web);
    let token = hs256(&claims("alice", 300), "first-secret-0123456789abcdef");
    let target =
        Target::http_get(s.web, "/api/x").with_field("authorization", &format!("Bearer {token}"));
    let load = OpenLoop::new(target, 400.0)
        .max_duration(Duration::from_secs(4))
        .start();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rotated_at = std::time::Instant::now();
    s.etcd.put("jwt/SECRET", "second-secret-0123456789abcdef");
    let shown_at = tokio::task::spawn_blocking(move || {
        until_answered(&url, &token, 401);
        std::time::Instant::now()
    })
    .await
    .unwrap();
    // `finish` ends the schedule: let it run its 4 s first.
    tokio::time::sleep_until((load.started() + Duration::from_secs(4)).into()).await;
    let records = load.finish().await;
    let summary = Summary::of(&records);
    let status = |r: &open_loop::Record| match &r.outcome {
        Outcome::Http { status, .. } => *status,
        _ => panic!("{}: {}\n{summary}", r.kind(), r.detail()),
    };
    let settle = Duration::from_millis(50);
    for r in &records {
        if r.sent + settle < rotated_at {
            assert_eq!(status(r), 200, "sent before the rotation\n{summary}");
        } else if r.sent > shown_at + settle {
            assert_eq!(status(r), 401, "sent after the rotation showed\n{summary}");
        }
    }
    let after = records
        .iter()
        .filter(|r| r.sent > shown_at + settle)
        .count();
    assert!(
        after >= 100,
        "{after} requests after the rotation\n{summary}"
    );
    let (max_in_flight, _) = open_loop::max_in_flight(&records);
    assert!(max_in_flight >= 200, "{max_in_flight} in flight\n{summary}");
    let reused = metric_value(s.admin, "sluice_policy_answers_reused_total{policy=\"hs\"");
    assert!(reused.is_some_and(|n| n >= 400.0), "reused: {reused:?}");
}
