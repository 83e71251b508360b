//! The identity a verified client certificate carries.

use std::fmt::Write as _;

use serde::Serialize;
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;

use crate::TlsError;

/// Who a client is, from its verified leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientIdentity {
    /// The subject's first common name, when it has one.
    pub subject_cn: Option<String>,
    /// DNS names among the subject alternative names.
    pub dns_sans: Vec<String>,
    /// URIs among the subject alternative names (e.g. SPIFFE IDs).
    pub uri_sans: Vec<String>,
    /// The issuer's distinguished name, RFC 4514 style (`CN=Test CA, O=Example`).
    pub issuer: String,
    /// SHA-256 of the DER certificate, lower-case hex without separators.
    pub fingerprint_sha256: String,
    /// End of validity, RFC 3339 UTC.
    pub not_after: String,
    /// Start of validity, seconds since the Unix epoch.
    pub not_before_unix: i64,
    /// End of validity, seconds since the Unix epoch.
    pub not_after_unix: i64,
}

impl ClientIdentity {
    /// Parses a DER certificate. Malformed input is an error, never a panic.
    pub fn from_der(der: &[u8]) -> Result<Self, TlsError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
        let subject_cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let mut dns_sans = Vec::new();
        let mut uri_sans = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => dns_sans.push((*d).to_owned()),
                    GeneralName::URI(u) => uri_sans.push((*u).to_owned()),
                    _ => {}
                }
            }
        }
        let not_after = cert
            .validity()
            .not_after
            .to_datetime()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        Ok(Self {
            subject_cn,
            dns_sans,
            uri_sans,
            issuer: cert.issuer().to_string(),
            fingerprint_sha256: fingerprint(der),
            not_after,
            not_before_unix: cert.validity().not_before.timestamp(),
            not_after_unix: cert.validity().not_after.timestamp(),
        })
    }

    /// Every SAN, DNS then URI.
    pub fn sans(&self) -> impl Iterator<Item = &str> {
        self.dns_sans
            .iter()
            .chain(self.uri_sans.iter())
            .map(String::as_str)
    }
}

/// SHA-256 of `der` as lower-case hex.
pub(crate) fn fingerprint(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let mut out = String::with_capacity(64);
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Names a server certificate answers to: its DNS SANs, or its CN when it has none.
pub(crate) fn server_names(der: &[u8]) -> Result<Vec<String>, TlsError> {
    let id = ClientIdentity::from_der(der)?;
    if id.dns_sans.is_empty() {
        Ok(id.subject_cn.into_iter().collect())
    } else {
        Ok(id.dns_sans)
    }
}
