//! The `[[policy]] config` of the jwt policy, read key by key so that every error names its key
//! (a derived deserializer would say "invalid type: integer, expected a string" without one).

use serde_json::{Map, Value};

/// A signature algorithm the policy verifies. `none` and every other name are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// HMAC with SHA-256 and a shared secret.
    Hs256,
    /// RSASSA-PKCS1-v1_5 with SHA-256 and an RSA public key from the JWKS.
    Rs256,
    /// ECDSA on P-256 with SHA-256 and an EC public key from the JWKS.
    Es256,
}

impl Alg {
    /// The name as JOSE spells it (`alg` header).
    pub fn name(self) -> &'static str {
        match self {
            Alg::Hs256 => "HS256",
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
        }
    }

    /// The algorithm named `name` (exact JOSE spelling), if the policy supports it.
    pub fn parse(name: &str) -> Option<Alg> {
        [Alg::Hs256, Alg::Rs256, Alg::Es256]
            .into_iter()
            .find(|alg| alg.name() == name)
    }
}

/// Where the HS256 secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `secret`: the UTF-8 bytes of the configured text.
    Inline(Vec<u8>),
    /// `secret_kv_key`: read on every request, so a KV change rotates the secret.
    Kv(String),
}

/// The checked configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The field carrying the token, lower case.
    pub header: String,
    /// The scheme before the token (`Bearer`); empty: the whole value is the token.
    pub scheme: String,
    pub secret: Option<SecretSource>,
    pub jwks_kv_key: Option<String>,
    /// Accepted algorithms; never empty.
    pub algorithms: Vec<Alg>,
    pub require_exp: bool,
    /// Accepted `iss` values; empty: not checked.
    pub issuers: Vec<String>,
    /// Accepted `aud` values; empty: not checked.
    pub audiences: Vec<String>,
    pub clock_skew_secs: u64,
    /// (claim, request field in lower case), in the order configured.
    pub claims_to_headers: Vec<(String, String)>,
    pub forward_token: bool,
    /// `cache_seconds`: how long the host may give a verified token's answer again.
    pub cache_secs: u64,
}

const KEYS: [&str; 13] = [
    "header",
    "scheme",
    "secret",
    "secret_kv_key",
    "jwks_kv_key",
    "algorithms",
    "require_exp",
    "issuer",
    "audience",
    "clock_skew",
    "claims_to_headers",
    "forward_token",
    "cache_seconds",
];

/// Fields the proxy owns (the host refuses edits of them) or that carry the request's target.
const RESERVED_FIELDS: [&str; 9] = [
    "connection",
    "content-length",
    "host",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Longest `clock_skew` accepted: a day. More would make `exp` meaningless.
const MAX_CLOCK_SKEW_SECS: u64 = 86_400;
/// Longest `cache_seconds`: the host's limit on giving one answer again.
const MAX_CACHE_SECS: u64 = 600;

/// Parses and checks `text`, the policy's config as JSON.
pub fn parse(text: &str) -> Result<Config, String> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("jwt: config is not JSON: {e}"))?;
    let map = match value {
        Value::Object(map) => map,
        Value::Null => Map::new(),
        _ => return Err("jwt: config must be a table of keys".into()),
    };
    if let Some(unknown) = map.keys().find(|key| !KEYS.contains(&key.as_str())) {
        return Err(format!(
            "jwt: unknown config key `{unknown}` (known: {})",
            KEYS.join(", ")
        ));
    }
    let header = field_name(&map, "header")?.unwrap_or_else(|| "authorization".into());
    let secret = secret_source(&map)?;
    let jwks_kv_key = non_empty_string(&map, "jwks_kv_key")?;
    let algorithms = algorithms(&map, secret.is_some(), jwks_kv_key.is_some())?;
    let claims_to_headers = claims_to_headers(&map, &header)?;
    Ok(Config {
        scheme: string(&map, "scheme")?.unwrap_or_else(|| "Bearer".into()),
        secret,
        jwks_kv_key,
        algorithms,
        require_exp: boolean(&map, "require_exp", true)?,
        issuers: strings(&map, "issuer")?,
        audiences: strings(&map, "audience")?,
        clock_skew_secs: seconds(&map, "clock_skew", 60, MAX_CLOCK_SKEW_SECS)?,
        cache_secs: seconds(&map, "cache_seconds", 60, MAX_CACHE_SECS)?,
        claims_to_headers,
        forward_token: boolean(&map, "forward_token", true)?,
        header,
    })
}

fn secret_source(map: &Map<String, Value>) -> Result<Option<SecretSource>, String> {
    match (
        non_empty_string(map, "secret")?,
        non_empty_string(map, "secret_kv_key")?,
    ) {
        (Some(_), Some(_)) => Err("jwt: give either `secret` or `secret_kv_key`, not both".into()),
        (Some(secret), None) => Ok(Some(SecretSource::Inline(secret.into_bytes()))),
        (None, Some(key)) => Ok(Some(SecretSource::Kv(key))),
        (None, None) => Ok(None),
    }
}

/// `algorithms`, or by default every algorithm whose keys are configured.
fn algorithms(
    map: &Map<String, Value>,
    has_secret: bool,
    has_jwks: bool,
) -> Result<Vec<Alg>, String> {
    if !has_secret && !has_jwks {
        return Err("jwt: no key source: give secret, secret_kv_key or jwks_kv_key".into());
    }
    let Some(listed) = map.get("algorithms").filter(|v| !v.is_null()) else {
        let hs = has_secret.then_some(Alg::Hs256);
        let jwks = [Alg::Rs256, Alg::Es256].into_iter().filter(|_| has_jwks);
        return Ok(hs.into_iter().chain(jwks).collect());
    };
    let names = listed
        .as_array()
        .ok_or("jwt: `algorithms` must be a list of strings")?;
    let mut algorithms = Vec::new();
    for name in names {
        let name = name
            .as_str()
            .ok_or("jwt: `algorithms` must be a list of strings")?;
        let alg = Alg::parse(name).ok_or_else(|| {
            format!("jwt: `algorithms`: `{name}` is not supported (HS256, RS256, ES256)")
        })?;
        let keyed = if alg == Alg::Hs256 {
            has_secret
        } else {
            has_jwks
        };
        if !keyed {
            let source = if alg == Alg::Hs256 {
                "secret or secret_kv_key"
            } else {
                "jwks_kv_key"
            };
            return Err(format!(
                "jwt: `algorithms` lists {name} but no {source} is given"
            ));
        }
        if !algorithms.contains(&alg) {
            algorithms.push(alg);
        }
    }
    if algorithms.is_empty() {
        return Err("jwt: `algorithms` is empty: no token could be accepted".into());
    }
    Ok(algorithms)
}

fn claims_to_headers(
    map: &Map<String, Value>,
    token_field: &str,
) -> Result<Vec<(String, String)>, String> {
    let Some(mapping) = map.get("claims_to_headers").filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let mapping = mapping
        .as_object()
        .ok_or("jwt: `claims_to_headers` must be a table of claim = \"header-name\"")?;
    let mut pairs = Vec::with_capacity(mapping.len());
    for (claim, field) in mapping {
        let field = field.as_str().ok_or_else(|| {
            format!("jwt: `claims_to_headers`: the header for claim `{claim}` must be a string")
        })?;
        let field = checked_field_name(field)
            .map_err(|e| format!("jwt: `claims_to_headers`: claim `{claim}`: {e}"))?;
        if field == token_field {
            return Err(format!(
                "jwt: `claims_to_headers`: claim `{claim}` maps onto the token's own field `{field}`"
            ));
        }
        pairs.push((claim.clone(), field));
    }
    Ok(pairs)
}

/// A whole number of seconds from 0 to `max` under `key`, or `default`.
fn seconds(map: &Map<String, Value>, key: &str, default: u64, max: u64) -> Result<u64, String> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(value) => value.as_u64().filter(|secs| *secs <= max).ok_or_else(|| {
            format!("jwt: `{key}` must be a whole number of seconds from 0 to {max}")
        }),
    }
}

/// A request field name: an HTTP token, lower-cased, not one the proxy owns.
fn checked_field_name(name: &str) -> Result<String, String> {
    let token = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token {
        return Err(format!("`{name}` is not a valid header name"));
    }
    let name = name.to_ascii_lowercase();
    if RESERVED_FIELDS.contains(&name.as_str()) {
        return Err(format!("`{name}` is set by the proxy, not by a policy"));
    }
    Ok(name)
}

fn field_name(map: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    non_empty_string(map, key)?
        .map(|name| checked_field_name(&name).map_err(|e| format!("jwt: `{key}`: {e}")))
        .transpose()
}

fn string(map: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(format!("jwt: `{key}` must be a string")),
    }
}

fn non_empty_string(map: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match string(map, key)? {
        Some(text) if text.trim().is_empty() => Err(format!("jwt: `{key}` is empty")),
        other => Ok(other),
    }
}

fn boolean(map: &Map<String, Value>, key: &str, default: bool) -> Result<bool, String> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(format!("jwt: `{key}` must be true or false")),
    }
}

/// One string or a list of strings; empty strings are refused (they would match nothing).
fn strings(map: &Map<String, Value>, key: &str) -> Result<Vec<String>, String> {
    let must = || format!("jwt: `{key}` must be a string or a list of strings");
    let values = match map.get(key) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(one)) => vec![one.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(must))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(must()),
    };
    if values.is_empty() {
        return Err(format!(
            "jwt: `{key}` is an empty list: leave it out to skip the check"
        ));
    }
    if values.iter().any(String::is_empty) {
        return Err(format!("jwt: `{key}` contains an empty string"));
    }
    Ok(values)
}
