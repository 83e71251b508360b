//! A compact JWS (RFC 7515 §7.1) taken apart, and the registered claims checked (RFC 7519 §4.1).
//! Every error is a short reason meant for the client (`detail` of the 401).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::config::Config;
use crate::keys::shown;

/// Longest token accepted, in bytes: far above real tokens, low enough to bound the work.
pub const MAX_TOKEN_BYTES: usize = 16 << 10;

/// The parts of a token, decoded; the signature is not yet checked.
#[derive(Debug)]
pub struct Token<'a> {
    pub alg: String,
    pub kid: Option<String>,
    /// `header.payload` as sent: the bytes the signature covers.
    pub signing_input: &'a str,
    pub payload: &'a str,
    pub signature: Vec<u8>,
}

impl<'a> Token<'a> {
    /// Splits and decodes the header and signature of `token`.
    pub fn parse(token: &'a str) -> Result<Token<'a>, String> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(format!(
                "token of {} bytes, over the {MAX_TOKEN_BYTES}-byte limit",
                token.len()
            ));
        }
        let segments = token.split('.').count();
        let (Some((signing_input, signature)), 3) = (token.rsplit_once('.'), segments) else {
            return Err(format!(
                "malformed token: {segments} dot-separated segments, a JWS has 3"
            ));
        };
        let (header, payload) = signing_input.split_once('.').unwrap_or((signing_input, ""));
        let header = decode_object(header, "header")?;
        if header.contains_key("crit") {
            return Err("the header's `crit` extensions are not supported".into());
        }
        let alg = match header.get("alg") {
            Some(Value::String(alg)) => alg.clone(),
            Some(_) => return Err("the header's `alg` is not a string".into()),
            None => return Err("the header names no `alg`".into()),
        };
        let kid = match header.get("kid") {
            None | Some(Value::Null) => None,
            Some(Value::String(kid)) => Some(kid.clone()),
            Some(_) => return Err("the header's `kid` is not a string".into()),
        };
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| "malformed token: the signature is not base64url".to_owned())?;
        Ok(Token {
            alg,
            kid,
            signing_input,
            payload,
            signature,
        })
    }

    /// The claims; call only after the signature verified.
    pub fn claims(&self) -> Result<Map<String, Value>, String> {
        decode_object(self.payload, "payload")
    }
}

/// A base64url segment holding a JSON object.
fn decode_object(segment: &str, what: &str) -> Result<Map<String, Value>, String> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| format!("malformed token: the {what} is not base64url"))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(object)) => Ok(object),
        _ => Err(format!("malformed token: the {what} is not a JSON object")),
    }
}

/// Checks `exp`, `nbf`, `iss` and `aud` against `config` at `now_ms`.
pub fn check_claims(
    claims: &Map<String, Value>,
    config: &Config,
    now_ms: u64,
) -> Result<(), String> {
    let now = now_ms as f64 / 1000.0;
    let skew = config.clock_skew_secs as f64;
    match numeric_date(claims, "exp")? {
        Some(exp) if now >= exp + skew => {
            return Err(format!("expired {} s ago", (now - exp).floor() as u64));
        }
        None if config.require_exp => return Err("no `exp` claim".into()),
        _ => {}
    }
    if let Some(nbf) = numeric_date(claims, "nbf")?
        && nbf > now + skew
    {
        return Err(format!(
            "not valid yet: nbf is {} s ahead",
            (nbf - now).ceil() as u64
        ));
    }
    if !config.issuers.is_empty() {
        match claims.get("iss") {
            None => return Err("no `iss` claim".into()),
            Some(Value::String(iss)) if config.issuers.contains(iss) => {}
            Some(Value::String(iss)) => return Err(format!("wrong issuer `{}`", shown(iss))),
            Some(_) => return Err("`iss` is not a string".into()),
        }
    }
    if !config.audiences.is_empty() {
        let accepted = |aud: &Value| {
            aud.as_str()
                .is_some_and(|aud| config.audiences.iter().any(|a| a == aud))
        };
        match claims.get("aud") {
            None => return Err("no `aud` claim".into()),
            Some(Value::Array(auds)) if auds.iter().any(accepted) => {}
            Some(aud) if accepted(aud) => {}
            Some(_) => return Err("wrong audience".into()),
        }
    }
    Ok(())
}

/// How long, from `now_ms`, the answer for a token with `claims` that passed
/// [`check_claims`] stays the same: `cache_seconds`, but never past `exp` (with the skew).
/// `nbf` needs no bound: a token valid now stays valid until `exp`.
pub fn answer_lifetime_ms(claims: &Map<String, Value>, config: &Config, now_ms: u64) -> u64 {
    let limit_ms = config.cache_secs.saturating_mul(1000);
    match numeric_date(claims, "exp") {
        Ok(Some(exp)) => {
            let ends_ms = (exp + config.clock_skew_secs as f64) * 1000.0;
            let left_ms = (ends_ms - now_ms as f64).max(0.0);
            // `as` saturates, and an hour's bound keeps the float exact enough.
            limit_ms.min(left_ms as u64)
        }
        Ok(None) => limit_ms,
        Err(_) => 0,
    }
}

/// A NumericDate claim (seconds since the epoch, possibly fractional).
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, String> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(_) => Err(format!("`{name}` is not a number")),
    }
}

/// A claim as a header value: strings, numbers and booleans as written, lists of them joined
/// with `,`; `None` for objects, null and nested lists.
pub fn header_value(claim: &Value) -> Option<String> {
    fn scalar(value: &Value) -> Option<String> {
        match value {
            Value::String(text) => Some(text.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
    match claim {
        Value::Array(items) => items
            .iter()
            .map(scalar)
            .collect::<Option<Vec<_>>>()
            .map(|items| items.join(",")),
        other => scalar(other),
    }
}
