//! Sluice's TLS layer, on rustls (the aws-lc-rs crypto provider) and tokio-rustls.
//!
//! Contract:
//! - [`ServerTls::load`] reads PEM certificate chains and private keys from files and builds a
//!   rustls server configuration: several certificates selected by SNI (exact names from each
//!   certificate's DNS SANs, or CN when it has none; `*.example.com` wildcards one label deep),
//!   the first one the default for unknown or absent SNI; ALPN `h2` and `http/1.1` (or only
//!   `http/1.1`); TLS 1.2 and 1.3 with a configurable minimum; session resumption by ID cache and
//!   tickets; client authentication `off`, `optional` or `required` against a CA bundle.
//!   Every failure is a typed [`TlsError`] naming the file and what is wrong with it (a key
//!   that does not match its certificate included); nothing panics on bad files.
//! - [`ServerTls::accept`] runs one handshake under a timeout and returns the stream with its
//!   [`HandshakeInfo`] (SNI, ALPN, version, and the verified [`ClientIdentity`]), or a
//!   [`HandshakeError`] whose [`HandshakeError::reason`] is a short, stable label for logs and
//!   metrics (`not_tls`, `timeout`, `cert_untrusted`, `cert_expired`, ...).
//! - [`ClientIdentity::from_der`] extracts subject CN, DNS and URI SANs, issuer, SHA-256
//!   fingerprint and not-after from a DER certificate (with `x509-parser`).
//! - [`AllowList`] is the native per-connection authorizer (CN, SAN, fingerprint, source CIDR).
//! - [`ClientTls::load`] builds the configuration for TLS towards upstream instances.
//! - [`ServerTls::load_with_acme`] also answers ACME TLS-ALPN-01 validation (RFC 8737): a
//!   handshake offering `acme-tls/1` for a name pending in [`AlpnChallenges`] gets that
//!   challenge's certificate.
//!
//! Reloading is the caller's business: build a new [`ServerTls`]; when loading fails, keep the
//! old one (it holds everything in memory and never re-reads files).

mod acme_alpn;
mod authz;
mod client;
mod identity;
mod server;
mod stream;

pub use acme_alpn::{ACME_TLS_ALPN, AlpnChallenges};
pub use authz::{AllowList, Denied, NoPolicyAuthorizer, PeerFacts, PolicyAuthorizer, PolicyDenied};
pub use client::{ClientTls, ClientTlsSettings};
pub use identity::ClientIdentity;
pub use server::{
    CertKeyPaths, ClientAuth, HandshakeError, HandshakeInfo, MinVersion, ServerTls,
    ServerTlsSettings,
};
pub use stream::MaybeTls;

use std::path::PathBuf;

/// What went wrong building a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM item.
    #[error("{path}: {detail}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// rustls refused the material (e.g. a key that does not match its certificate).
    #[error("{context}: {source}")]
    Rustls {
        /// What was being built.
        context: String,
        /// rustls's error.
        source: rustls::Error,
    },
    /// A certificate could not be parsed as X.509.
    #[error("invalid certificate: {0}")]
    Certificate(String),
    /// Something else about the settings.
    #[error("{0}")]
    Settings(String),
}

/// The crypto provider every configuration uses: aws-lc-rs, whose RSA and P-256 signing are
/// assembly-optimised like OpenSSL's (with ring, an RSA-2048 handshake cost 1.1× nginx's CPU;
/// see docs/benchmarks.md). It builds with the C compiler alone, no cmake.
pub(crate) fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<std::sync::Arc<rustls::crypto::CryptoProvider>> =
        std::sync::OnceLock::new();
    std::sync::Arc::clone(
        PROVIDER.get_or_init(|| std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider())),
    )
}

pub(crate) fn file_error(path: &std::path::Path, detail: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    }
}

/// Reads every certificate in a PEM file; an empty file is an error.
pub(crate) fn read_certs(
    path: &std::path::Path,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, TlsError> {
    use rustls_pki_types::pem::PemObject;
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no PEM CERTIFICATE block in the file"));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub(crate) fn read_key(
    path: &std::path::Path,
) -> Result<rustls_pki_types::PrivateKeyDer<'static>, TlsError> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            file_error(path, "no PEM PRIVATE KEY block in the file")
        }
        e => file_error(path, e),
    })
}

/// A root store from a PEM CA bundle.
pub(crate) fn read_roots(path: &std::path::Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| file_error(path, format!("CA certificate refused: {e}")))?;
    }
    Ok(roots)
}
