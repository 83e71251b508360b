//! `jwt`: a `request` policy that verifies JSON Web Tokens and maps their claims to request
//! headers (seed 003 signs the requests between its parts with a shared secret).
//!
//! Contract:
//! - The token is read from the field `header` (default `authorization`) after the `scheme`
//!   (default `Bearer`; empty: the whole value). It must be a compact JWS signed with one of
//!   `algorithms`: HS256 with `secret` or the KV key `secret_kv_key` (read on every request, so
//!   a KV change rotates the secret without a reload), RS256 or ES256 with a key of the JWKS in
//!   the KV key `jwks_kv_key` (parsed again only when its text changes). `alg: none` and every
//!   algorithm not listed are refused; a key only ever verifies its own algorithm.
//! - Claims: `exp` must lie ahead (unless `require_exp = false` and it is absent), `nbf` must
//!   not, both with `clock_skew` seconds of leeway; `iss` must be one of `issuer` and `aud`
//!   (string or list) must contain one of `audience`, when those are configured.
//! - A valid token forwards the request with each `claims_to_headers` field set from its claim
//!   (or removed when the claim is absent: a client never forges them), and the token's field
//!   removed when `forward_token = false`.
//! - Refusals: `401` JSON `{"error":"missing_token"|"invalid_token","detail":REASON}` with an
//!   RFC 6750 `WWW-Authenticate`; `503` `{"error":"jwt_keys_unavailable"}` when the keys cannot be
//!   read (KV key absent, JWKS malformed), logged at `warn` once per distinct cause.
//! - A token that verified is remembered by its exact text (per instance, at most
//!   1,024): a client sends one token with many requests, and its signature and JSON are not
//!   worked through again while the key it verified against is unchanged. The claims are
//!   checked again on every request, so an expired token stops passing on time, and a rotated
//!   secret or JWKS forgets what verified against the old one.
//! - A request whose token verified lets the host give the same answer again, without a call,
//!   to requests carrying the same field value (and, with a KV key source, while KV is
//!   unchanged) for `cache_seconds` (default 60, at most 600, 0: never), never past `exp` with
//!   the clock skew.
//! - Nothing panics on input; `configure` rejects a bad config with an error naming the key.

pub mod config;
pub mod keys;
pub mod token;

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher, Hasher};
use std::rc::Rc;
use std::time::Duration;

use rustc_hash::FxHasher;

use sluice_policy_sdk::{Action, Request, RequestPolicy, host, request};

use crate::config::{Alg, Config, SecretSource};
use crate::keys::{Jwks, shown};
use crate::token::Token;

/// The configured policy, with its per-instance JWKS cache.
#[derive(Debug)]
pub struct JwtPolicy {
    config: Config,
    /// The JWKS text last read from KV and what it parsed to.
    jwks: RefCell<Option<(String, Result<Jwks, String>)>>,
    /// The last "keys unavailable" cause logged, so a missing key logs once, not per request.
    last_warning: RefCell<Option<String>>,
    /// Tokens that verified, by a hash of their text (see [`TokenMemory`]).
    verified: RefCell<TokenMemory>,
    /// The hash of the inline secret, worked out once (a KV secret is hashed per request).
    inline_key_hash: Option<u64>,
}

/// Verified tokens by a seeded 64-bit hash of their text. The hash is cheap where SipHash over
/// a 150-byte token is not, and the seed (random per instance) keeps clients from choosing
/// tokens that collide; a collision only replaces an entry, because a hit compares the text.
#[derive(Debug)]
struct TokenMemory {
    seed: u64,
    entries: HashMap<u64, Verified, BuildHasherDefault<FxHasher>>,
}

impl TokenMemory {
    fn new() -> Self {
        TokenMemory {
            seed: std::collections::hash_map::RandomState::new().hash_one(0u64),
            entries: HashMap::default(),
        }
    }

    fn hash(&self, text: &str) -> u64 {
        let mut hasher = FxHasher::with_seed(self.seed as usize);
        hasher.write(text.as_bytes());
        hasher.finish()
    }

    /// The entry remembered for exactly `text`.
    fn get(&self, hash: u64, text: &str) -> Option<&Verified> {
        self.entries.get(&hash).filter(|v| same_text(&v.text, text))
    }
}

/// Equality of two texts, eight bytes at a time: WebAssembly's `memcmp` compares byte by byte,
/// and every remembered token is compared in full on every request.
fn same_text(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let (a_words, b_words) = (a.chunks_exact(8), b.chunks_exact(8));
    let tails_equal = a_words.remainder() == b_words.remainder();
    tails_equal
        && a_words.zip(b_words).all(|(x, y)| {
            u64::from_ne_bytes(x.try_into().unwrap_or_default())
                == u64::from_ne_bytes(y.try_into().unwrap_or_default())
        })
}

/// Claims as a map, shared between the cache and the call that uses them.
type Claims = Rc<serde_json::Map<String, serde_json::Value>>;

/// A token that verified: with which algorithm, against which key text (a hash of the secret
/// or the JWKS), and its claims.
#[derive(Debug)]
struct Verified {
    /// The token's text, compared on a hit of its hash.
    text: Box<str>,
    alg: Alg,
    key: u64,
    claims: Claims,
}

/// Verified tokens remembered per instance; past this the memory starts over (a flood of
/// valid tokens needs the signing key, so only their holders can fill it).
const MAX_VERIFIED: usize = 1024;

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    /// No token where the config says it is (401 `missing_token`).
    Missing(String),
    /// A token that does not verify or whose claims fail (401 `invalid_token`).
    Invalid(String),
    /// The keys cannot be read: not the client's fault (503, logged).
    KeysUnavailable(String),
}

impl RequestPolicy for JwtPolicy {
    fn configure(config: &str) -> Result<Self, String> {
        let config = config::parse(config)?;
        let inline_key_hash = match &config.secret {
            Some(SecretSource::Inline(secret)) => Some(text_hash(secret)),
            _ => None,
        };
        Ok(JwtPolicy {
            config,
            jwks: RefCell::new(None),
            last_warning: RefCell::new(None),
            verified: RefCell::new(TokenMemory::new()),
            inline_key_hash,
        })
    }

    fn on_request(&self, request: &Request<'_>) -> Action {
        let now_ms = host::now_ms();
        match self.verified_claims(request, now_ms) {
            Ok(claims) => {
                let action = self.forward(&claims);
                let lifetime_ms = token::answer_lifetime_ms(&claims, &self.config, now_ms);
                // Only a token that verified is answered again: a client with tokens that do
                // not verify cannot fill the host's memory.
                if matches!(action, Action::Forward(_)) && lifetime_ms > 0 {
                    request.cache_answer(Duration::from_millis(lifetime_ms));
                }
                action
            }
            Err(refusal) => self.refuse(refusal),
        }
    }
}

impl JwtPolicy {
    /// The claims of the request's token, once its signature and claims are checked.
    fn verified_claims(&self, request: &Request<'_>, now_ms: u64) -> Result<Claims, Refusal> {
        let field = &self.config.header;
        let value = request
            .header(field)
            .ok_or_else(|| Refusal::Missing(format!("no `{field}` field")))?;
        let text = self.token_text(&value)?;
        let claims = match self.remembered(text)? {
            Some(claims) => claims,
            None => self.verify(text)?,
        };
        token::check_claims(&claims, &self.config, now_ms).map_err(Refusal::Invalid)?;
        Ok(claims)
    }

    /// The claims of `text` if it verified before against the key that is current now.
    fn remembered(&self, text: &str) -> Result<Option<Claims>, Refusal> {
        let (hash, remembered) = {
            let memory = self.verified.borrow();
            let hash = memory.hash(text);
            match memory.get(hash, text) {
                Some(v) => (hash, (v.alg, v.key, Rc::clone(&v.claims))),
                None => return Ok(None),
            }
        };
        let (alg, key, claims) = remembered;
        // Outside the borrow: a KV secret is read through the host.
        if self.key_hash(alg)? == key {
            return Ok(Some(claims));
        }
        self.verified.borrow_mut().entries.remove(&hash);
        Ok(None)
    }

    /// Verifies `text` in full and remembers it.
    fn verify(&self, text: &str) -> Result<Claims, Refusal> {
        let token = Token::parse(text).map_err(Refusal::Invalid)?;
        let alg = self.accepted_alg(&token.alg)?;
        if !self.signature_verifies(alg, &token)? {
            return Err(Refusal::Invalid("bad signature".into()));
        }
        let claims = Rc::new(token.claims().map_err(Refusal::Invalid)?);
        let key = self.key_hash(alg)?;
        let mut memory = self.verified.borrow_mut();
        if memory.entries.len() >= MAX_VERIFIED {
            memory.entries.clear();
        }
        let entry = Verified {
            text: text.into(),
            alg,
            key,
            claims: Rc::clone(&claims),
        };
        let hash = memory.hash(text);
        memory.entries.insert(hash, entry);
        Ok(claims)
    }

    /// A hash of the key text `alg` verifies with now: the secret, or the JWKS document.
    fn key_hash(&self, alg: Alg) -> Result<u64, Refusal> {
        match (alg, &self.config.secret) {
            (Alg::Hs256, Some(SecretSource::Inline(_))) => self
                .inline_key_hash
                .ok_or_else(|| Refusal::KeysUnavailable("no HS256 secret".into())),
            (Alg::Hs256, Some(SecretSource::Kv(key))) => {
                Ok(text_hash(self.kv_text(key, "secret_kv_key")?.as_bytes()))
            }
            (Alg::Hs256, None) => Err(Refusal::KeysUnavailable("no HS256 secret".into())),
            _ => {
                let Some(key) = &self.config.jwks_kv_key else {
                    return Err(Refusal::KeysUnavailable("no JWKS configured".into()));
                };
                Ok(text_hash(self.kv_text(key, "jwks_kv_key")?.as_bytes()))
            }
        }
    }

    /// The token in the field's value, after the scheme.
    fn token_text<'v>(&self, value: &'v str) -> Result<&'v str, Refusal> {
        let field = &self.config.header;
        let value = value.trim();
        let scheme = &self.config.scheme;
        if scheme.is_empty() {
            return non_empty(value, field);
        }
        match value.split_once(' ') {
            Some((given, token)) if given.eq_ignore_ascii_case(scheme) => {
                non_empty(token.trim_start(), field)
            }
            _ => Err(Refusal::Missing(format!(
                "`{field}` does not carry a {scheme} token"
            ))),
        }
    }

    fn accepted_alg(&self, name: &str) -> Result<Alg, Refusal> {
        if name.eq_ignore_ascii_case("none") {
            return Err(Refusal::Invalid(
                "unsigned tokens (alg none) are refused".into(),
            ));
        }
        Alg::parse(name)
            .filter(|alg| self.config.algorithms.contains(alg))
            .ok_or_else(|| {
                let accepted: Vec<&str> = self.config.algorithms.iter().map(|a| a.name()).collect();
                Refusal::Invalid(format!(
                    "alg `{}` is not accepted (accepted: {})",
                    shown(name),
                    accepted.join(", ")
                ))
            })
    }

    /// Whether the token's signature verifies with the key for `alg`.
    fn signature_verifies(&self, alg: Alg, token: &Token<'_>) -> Result<bool, Refusal> {
        let input = token.signing_input.as_bytes();
        if alg == Alg::Hs256 {
            let from_kv;
            let secret: &[u8] = match &self.config.secret {
                Some(SecretSource::Inline(secret)) => secret,
                Some(SecretSource::Kv(key)) => {
                    from_kv = self.kv_text(key, "secret_kv_key")?;
                    from_kv.as_bytes()
                }
                // `configure` accepts HS256 only with a secret source.
                None => return Err(Refusal::KeysUnavailable("no HS256 secret".into())),
            };
            if secret.is_empty() {
                return Err(Refusal::KeysUnavailable(
                    "the HS256 secret read from KV is empty".into(),
                ));
            }
            return Ok(keys::hs256_verifies(secret, input, &token.signature));
        }
        let Some(key_name) = &self.config.jwks_kv_key else {
            return Err(Refusal::KeysUnavailable("no JWKS configured".into()));
        };
        let text = self.kv_text(key_name, "jwks_kv_key")?;
        let mut cache = self.jwks.borrow_mut();
        if cache.as_ref().is_none_or(|(cached, _)| *cached != text) {
            let parsed = Jwks::parse(&text);
            if let Ok(jwks) = &parsed {
                jwks.skipped.iter().for_each(|skipped| {
                    host::warn(&format!("jwt: JWKS in KV key `{key_name}`: {skipped}"));
                });
            }
            *cache = Some((text, parsed));
        }
        let Some((_, parsed)) = cache.as_ref() else {
            return Err(Refusal::KeysUnavailable("JWKS cache empty".into()));
        };
        let jwks = parsed.as_ref().map_err(|e| {
            Refusal::KeysUnavailable(format!("the JWKS in KV key `{key_name}` is malformed: {e}"))
        })?;
        let key = jwks
            .select(alg, token.kid.as_deref())
            .map_err(Refusal::Invalid)?;
        Ok(key.verifies(input, &token.signature))
    }

    fn kv_text(&self, key: &str, config_key: &str) -> Result<String, Refusal> {
        host::kv_get(key).ok_or_else(|| {
            Refusal::KeysUnavailable(format!("KV key `{key}` ({config_key}) is absent"))
        })
    }

    /// Forwards with the mapped claims set (or their fields removed) and maybe the token dropped.
    fn forward(&self, claims: &serde_json::Map<String, serde_json::Value>) -> Action {
        *self.last_warning.borrow_mut() = None;
        let mut forward = request::forward();
        for (claim, field) in &self.config.claims_to_headers {
            match claims.get(claim).and_then(token::header_value) {
                Some(value) if value.chars().any(char::is_control) => {
                    return self.refuse(Refusal::Invalid(format!(
                        "claim `{claim}` holds control characters: it cannot be a header value"
                    )));
                }
                Some(value) => forward = forward.set_header(field, &value),
                None => forward = forward.remove_header(field),
            }
        }
        if !self.config.forward_token {
            forward = forward.remove_header(&self.config.header);
        }
        forward.into()
    }

    fn refuse(&self, refusal: Refusal) -> Action {
        match refusal {
            Refusal::Missing(detail) => unauthorized("missing_token", &detail, "Bearer".into()),
            Refusal::Invalid(detail) => {
                let challenge = format!(
                    "Bearer error=\"invalid_token\", error_description=\"{}\"",
                    quotable(&detail)
                );
                unauthorized("invalid_token", &detail, challenge)
            }
            Refusal::KeysUnavailable(cause) => {
                let mut last = self.last_warning.borrow_mut();
                if last.as_deref() != Some(cause.as_str()) {
                    host::warn(&format!("jwt: cannot verify tokens: {cause}"));
                    *last = Some(cause);
                }
                request::error_reply(
                    503,
                    "jwt_keys_unavailable",
                    "the proxy cannot read the keys to verify tokens",
                )
            }
        }
    }
}

/// A hash of key text: a changed secret or JWKS changes it (SipHash, as collisions here would
/// let a token outlive a rotated key).
fn text_hash(bytes: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    hasher.write(bytes);
    hasher.finish()
}

fn non_empty<'r>(token: &'r str, field: &str) -> Result<&'r str, Refusal> {
    if token.is_empty() {
        Err(Refusal::Missing(format!(
            "`{field}` carries an empty token"
        )))
    } else {
        Ok(token)
    }
}

/// A 401 with the JSON body and the `WWW-Authenticate` challenge given.
fn unauthorized(code: &str, detail: &str, challenge: String) -> Action {
    let mut action = request::error_reply(401, code, detail);
    if let Action::Reply(reply) = &mut action {
        reply.headers.push(("www-authenticate".into(), challenge));
    }
    action
}

/// `text` with the characters RFC 6750 §3 forbids in `error_description` replaced by `?`.
fn quotable(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            ' '..='~' if c != '"' && c != '\\' => c,
            _ => '?',
        })
        .collect()
}

sluice_policy_sdk::export_request!(crate::JwtPolicy);

#[cfg(test)]
mod tests;
