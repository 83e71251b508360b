//! ACME TLS-ALPN-01 challenges (RFC 8737): while one is pending, a handshake that offers only
//! the `acme-tls/1` protocol for a pending name gets the challenge's self-signed certificate
//! (its `acmeIdentifier` extension carries the key authorization's digest) instead of the
//! listener's own; the connection carries nothing after the handshake.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use crate::{TlsError, provider};

/// The ALPN protocol of TLS-ALPN-01 validation.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Pending TLS-ALPN-01 challenge certificates, by name.
#[derive(Debug, Default)]
pub struct AlpnChallenges {
    certs: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    any: AtomicBool,
}

impl AlpnChallenges {
    /// Serves `cert` (DER, self-signed, with the `acmeIdentifier` extension) with its PKCS#8
    /// `key` to validation handshakes for `name` from now on.
    pub fn add(&self, name: &str, cert: Vec<u8>, key: Vec<u8>) -> Result<(), TlsError> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key));
        // Not `CertifiedKey::from_der`: its key check parses the certificate with webpki, which
        // refuses the critical `acmeIdentifier` extension this certificate must carry.
        let signing_key =
            provider()
                .key_provider
                .load_private_key(key)
                .map_err(|e| TlsError::Rustls {
                    context: format!("the TLS-ALPN-01 key for {name}"),
                    source: e,
                })?;
        let certified = CertifiedKey::new(vec![CertificateDer::from(cert)], signing_key);
        let mut certs = self.certs.write().unwrap_or_else(|p| p.into_inner());
        certs.insert(name.to_ascii_lowercase(), Arc::new(certified));
        self.any.store(true, Relaxed);
        Ok(())
    }

    /// Whether no challenge is pending.
    pub fn is_empty(&self) -> bool {
        !self.any.load(Relaxed)
    }

    /// Stops serving the challenge for `name`.
    pub fn remove(&self, name: &str) {
        let mut certs = self.certs.write().unwrap_or_else(|p| p.into_inner());
        certs.remove(&name.to_ascii_lowercase());
        self.any.store(!certs.is_empty(), Relaxed);
    }

    /// The challenge certificate for a handshake naming `sni` and offering `alpn`, if it is a
    /// validation handshake for a pending name.
    pub(crate) fn pick<'a>(
        &self,
        sni: Option<&str>,
        mut alpn: impl Iterator<Item = &'a [u8]>,
    ) -> Option<Arc<CertifiedKey>> {
        if !self.any.load(Relaxed) || !alpn.any(|p| p == ACME_TLS_ALPN) {
            return None;
        }
        let sni = sni?.trim_end_matches('.').to_ascii_lowercase();
        let certs = self.certs.read().unwrap_or_else(|p| p.into_inner());
        certs.get(&sni).cloned()
    }
}
