//! Verification keys and signature checks: the HS256 secret, and the RSA and P-256 public keys
//! of a JWKS document (RFC 7517). Only RustCrypto's verifiers touch key material; nothing here
//! signs or decrypts.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::Verifier as _;
use rsa::traits::PublicKeyParts as _;
use serde_json::Value;
use sha2::Sha256;

use crate::config::Alg;

/// Smallest RSA modulus accepted; shorter keys are skipped (NIST SP 800-131A: 2048 bits).
const MIN_RSA_BITS: usize = 2048;

/// A public key from the JWKS, ready to verify.
#[derive(Debug, Clone)]
pub enum PublicKey {
    Rsa(rsa::pkcs1v15::VerifyingKey<Sha256>),
    P256(p256::ecdsa::VerifyingKey),
}

impl PublicKey {
    /// The algorithm this key verifies (a key never serves another: no algorithm confusion).
    pub fn alg(&self) -> Alg {
        match self {
            PublicKey::Rsa(_) => Alg::Rs256,
            PublicKey::P256(_) => Alg::Es256,
        }
    }

    /// Whether `signature` signs `input` under this key.
    pub fn verifies(&self, input: &[u8], signature: &[u8]) -> bool {
        match self {
            PublicKey::Rsa(key) => rsa::pkcs1v15::Signature::try_from(signature)
                .is_ok_and(|signature| key.verify(input, &signature).is_ok()),
            // JWS carries ECDSA signatures as r || s, 32 bytes each (RFC 7518 §3.4).
            PublicKey::P256(key) => p256::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|signature| key.verify(input, &signature).is_ok()),
        }
    }
}

/// Whether `signature` is the HMAC-SHA256 of `input` under `secret`, compared in constant time.
pub fn hs256_verifies(secret: &[u8], input: &[u8], signature: &[u8]) -> bool {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(input);
    mac.verify_slice(signature).is_ok()
}

/// One usable key of a JWKS.
#[derive(Debug, Clone)]
pub struct Jwk {
    pub kid: Option<String>,
    pub key: PublicKey,
}

/// The usable keys of a JWKS document, and why the others were skipped.
#[derive(Debug, Clone)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
    pub skipped: Vec<String>,
}

impl Jwks {
    /// Parses a JWKS document. Keys of other types, curves or uses are skipped (and named in
    /// `skipped`); a document that is not a JWKS, or has no usable key, is an error.
    pub fn parse(text: &str) -> Result<Jwks, String> {
        let document: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let entries = document
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("no `keys` list")?;
        let mut jwks = Jwks {
            keys: Vec::new(),
            skipped: Vec::new(),
        };
        for (index, entry) in entries.iter().enumerate() {
            let kid = entry.get("kid").and_then(Value::as_str).map(str::to_owned);
            match public_key(entry) {
                Ok(key) => jwks.keys.push(Jwk { kid, key }),
                Err(reason) => jwks.skipped.push(format!(
                    "key {} skipped: {reason}",
                    kid.unwrap_or_else(|| format!("#{index}"))
                )),
            }
        }
        if jwks.keys.is_empty() {
            let why = if jwks.skipped.is_empty() {
                "the list is empty".to_owned()
            } else {
                jwks.skipped.join("; ")
            };
            return Err(format!("no usable key ({why})"));
        }
        Ok(jwks)
    }

    /// The key for a token signed with `alg` naming `kid`. A token's `kid` must match a key's;
    /// a key without `kid` serves any token of its algorithm when it is the only key of it.
    pub fn select(&self, alg: Alg, kid: Option<&str>) -> Result<&PublicKey, String> {
        let mut of_alg = self.keys.iter().filter(|jwk| jwk.key.alg() == alg);
        let only = match (of_alg.next(), of_alg.next()) {
            (Some(only), None) => Some(only),
            _ => None,
        };
        match kid {
            Some(kid) => match self.keys.iter().find(|jwk| jwk.kid.as_deref() == Some(kid)) {
                Some(jwk) if jwk.key.alg() == alg => Ok(&jwk.key),
                Some(jwk) => Err(format!(
                    "kid `{}` names a {} key, the token says {}",
                    shown(kid),
                    jwk.key.alg().name(),
                    alg.name()
                )),
                None => match only {
                    Some(jwk) if jwk.kid.is_none() => Ok(&jwk.key),
                    _ => Err(format!("unknown kid `{}`", shown(kid))),
                },
            },
            None => match only {
                Some(jwk) => Ok(&jwk.key),
                None if self.keys.iter().all(|jwk| jwk.key.alg() != alg) => {
                    Err(format!("no {} key in the JWKS", alg.name()))
                }
                None => Err(format!(
                    "the token names no kid and the JWKS has several {} keys",
                    alg.name()
                )),
            },
        }
    }
}

/// The verifying key of one JWK, or why it cannot serve RS256 or ES256.
fn public_key(jwk: &Value) -> Result<PublicKey, String> {
    let text = |name: &str| jwk.get(name).and_then(Value::as_str);
    if let Some(usage) = text("use")
        && usage != "sig"
    {
        return Err(format!("`use` is `{usage}`, not `sig`"));
    }
    let (key, alg) = match text("kty") {
        Some("RSA") => (rsa_key(jwk)?, Alg::Rs256),
        Some("EC") => (p256_key(jwk)?, Alg::Es256),
        Some(other) => return Err(format!("key type `{other}` is not supported")),
        None => return Err("no `kty`".into()),
    };
    match text("alg") {
        Some(named) if named != alg.name() => Err(format!(
            "`alg` is `{named}`, only {} is verified",
            alg.name()
        )),
        _ => Ok(key),
    }
}

fn rsa_key(jwk: &Value) -> Result<PublicKey, String> {
    let n = rsa::BigUint::from_bytes_be(&member_bytes(jwk, "n")?);
    let e = rsa::BigUint::from_bytes_be(&member_bytes(jwk, "e")?);
    let key = rsa::RsaPublicKey::new(n, e).map_err(|e| format!("invalid RSA key: {e}"))?;
    let bits = key.n().bits();
    if bits < MIN_RSA_BITS {
        return Err(format!("RSA modulus of {bits} bits, under {MIN_RSA_BITS}"));
    }
    Ok(PublicKey::Rsa(rsa::pkcs1v15::VerifyingKey::new(key)))
}

fn p256_key(jwk: &Value) -> Result<PublicKey, String> {
    match jwk.get("crv").and_then(Value::as_str) {
        Some("P-256") => {}
        Some(other) => return Err(format!("curve `{other}` is not supported (P-256 is)")),
        None => return Err("no `crv`".into()),
    }
    let x = member_bytes(jwk, "x")?;
    let y = member_bytes(jwk, "y")?;
    if x.len() != 32 || y.len() != 32 {
        return Err("P-256 coordinates must be 32 bytes each".into());
    }
    let point = p256::EncodedPoint::from_affine_coordinates(
        p256::FieldBytes::from_slice(&x),
        p256::FieldBytes::from_slice(&y),
        false,
    );
    p256::ecdsa::VerifyingKey::from_encoded_point(&point)
        .map(PublicKey::P256)
        .map_err(|_| "the point is not on P-256".into())
}

/// A base64url member of a JWK, decoded.
fn member_bytes(jwk: &Value, name: &str) -> Result<Vec<u8>, String> {
    let text = jwk
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("no `{name}`"))?;
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| format!("`{name}` is not base64url"))
}

/// `text` shortened for an error message: token fields are the client's, and may be long.
pub fn shown(text: &str) -> String {
    const LIMIT: usize = 64;
    match text.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}
