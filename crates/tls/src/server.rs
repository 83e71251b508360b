//! Server-side TLS: configuration from files, SNI selection, the handshake.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, Error as RustlsError, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::acme_alpn::{ACME_TLS_ALPN, AlpnChallenges};
use crate::identity::{ClientIdentity, server_names};
use crate::{TlsError, file_error, provider, read_certs, read_key, read_roots};

/// A certificate chain and its key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertKeyPaths {
    /// Leaf first, then intermediates.
    pub cert: PathBuf,
    /// PKCS#8, PKCS#1 or SEC1 private key.
    pub key: PathBuf,
}

/// Whether clients must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Clients are not asked for a certificate.
    Off,
    /// Asked; a client without one is let in anonymously, one with a bad one is refused.
    Optional,
    /// A certificate signed by the client CA is required.
    Required,
}

/// The oldest TLS version accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinVersion {
    /// TLS 1.2 and 1.3.
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

/// Everything a listener's TLS needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsSettings {
    /// Certificates; the first is the default for unknown or absent SNI. At least one.
    pub certs: Vec<CertKeyPaths>,
    /// CA bundle client certificates must chain to; required unless `client_auth` is off.
    pub client_ca: Option<PathBuf>,
    /// Client certificate policy.
    pub client_auth: ClientAuth,
    /// Oldest version accepted.
    pub min_version: MinVersion,
    /// Offer `h2` in ALPN (HTTP listeners with HTTP/2 on); `http/1.1` is offered for HTTP.
    pub alpn_h2: bool,
    /// Offer `http/1.1` in ALPN (HTTP listeners); TCP listeners offer nothing.
    pub alpn_http1: bool,
}

/// A loaded server configuration, ready to accept handshakes. Cheap to clone.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
    /// Names of the certificates, in order, for logs and the API.
    names: Arc<Vec<Vec<String>>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

/// What a completed handshake negotiated.
#[derive(Debug, Clone, Default)]
pub struct HandshakeInfo {
    /// The SNI the client sent.
    pub sni: Option<String>,
    /// The negotiated ALPN protocol.
    pub alpn: Option<Vec<u8>>,
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: &'static str,
    /// The verified client certificate's identity (None: anonymous client).
    pub identity: Option<Arc<ClientIdentity>>,
}

/// A failed handshake.
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake failed ({reason}): {detail}")]
pub struct HandshakeError {
    /// Stable label: `timeout`, `not_tls`, `no_client_cert`, `cert_untrusted`, `cert_expired`,
    /// `cert_not_yet_valid`, `cert_wrong_usage`, `cert_revoked`, `cert_invalid`,
    /// `incompatible`, `alert`, `eof`, `io`, `other`.
    pub reason: &'static str,
    /// The underlying error's text.
    pub detail: String,
}

impl ServerTls {
    /// Reads the files and builds the configuration. Any problem is an error naming the file.
    pub fn load(settings: &ServerTlsSettings) -> Result<Self, TlsError> {
        Self::load_with_acme(settings, None)
    }

    /// Like [`ServerTls::load`]; with `acme`, handshakes that offer `acme-tls/1` for a
    /// pending name get its TLS-ALPN-01 certificate (RFC 8737).
    pub fn load_with_acme(
        settings: &ServerTlsSettings,
        acme: Option<Arc<AlpnChallenges>>,
    ) -> Result<Self, TlsError> {
        let provider = provider();
        if settings.certs.is_empty() {
            return Err(TlsError::Settings(
                "a TLS listener needs at least one certificate".into(),
            ));
        }
        let mut resolver = SniResolver {
            acme_offered: acme.is_some(),
            acme,
            ..SniResolver::default()
        };
        let mut names = Vec::new();
        for pair in &settings.certs {
            let chain = read_certs(&pair.cert)?;
            let key = read_key(&pair.key)?;
            let cert_names = server_names(&chain[0]).map_err(|e| file_error(&pair.cert, e))?;
            let certified =
                CertifiedKey::from_der(chain, key, &provider).map_err(|e| TlsError::Rustls {
                    context: format!("{} with {}", pair.cert.display(), pair.key.display()),
                    source: e,
                })?;
            resolver.add(Arc::new(certified), &cert_names);
            names.push(cert_names);
        }
        let versions: &[&rustls::SupportedProtocolVersion] = match settings.min_version {
            MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            MinVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(versions)
            .map_err(|e| TlsError::Rustls {
                context: "protocol versions".into(),
                source: e,
            })?;
        let builder = match (settings.client_auth, &settings.client_ca) {
            (ClientAuth::Off, _) => builder.with_no_client_auth(),
            (_, None) => {
                return Err(TlsError::Settings(
                    "client_auth needs client_ca (the CA bundle client certificates chain to)"
                        .into(),
                ));
            }
            (mode, Some(ca)) => {
                let roots = read_roots(ca)?;
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    Arc::clone(&provider),
                );
                let verifier = if mode == ClientAuth::Optional {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                let verifier = verifier
                    .build()
                    .map_err(|e| file_error(ca, format!("client CA bundle: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let resolver_offers_acme = resolver.acme_offered;
        let mut config = builder.with_cert_resolver(Arc::new(resolver));
        if settings.alpn_h2 {
            config.alpn_protocols.push(b"h2".to_vec());
        }
        if settings.alpn_http1 {
            config.alpn_protocols.push(b"http/1.1".to_vec());
        }
        if resolver_offers_acme {
            // Last: only a validation handshake, which offers nothing else, agrees to it.
            config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
        }
        // Resumption: the default in-memory session-ID cache, plus stateless tickets.
        config.ticketer =
            rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| TlsError::Rustls {
                context: "session tickets".into(),
                source: e,
            })?;
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            names: Arc::new(names),
        })
    }

    /// Names of each certificate (DNS SANs, or CN), default first.
    pub fn certificate_names(&self) -> &[Vec<String>] {
        &self.names
    }

    /// Runs the server side of a handshake on `io`, giving up after `timeout`.
    pub async fn accept<IO>(
        &self,
        io: IO,
        timeout: Duration,
    ) -> Result<(TlsStream<IO>, HandshakeInfo), HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let stream = match tokio::time::timeout(timeout, self.acceptor.accept(io)).await {
            Err(_) => {
                return Err(HandshakeError {
                    reason: "timeout",
                    detail: format!("no complete handshake within {}ms", timeout.as_millis()),
                });
            }
            Ok(Err(e)) => return Err(classify(&e)),
            Ok(Ok(s)) => s,
        };
        let conn = stream.get_ref().1;
        let identity = match conn.peer_certificates().and_then(|c| c.first()) {
            None => None,
            Some(leaf) => Some(Arc::new(ClientIdentity::from_der(leaf).map_err(|e| {
                HandshakeError {
                    reason: "cert_invalid",
                    detail: e.to_string(),
                }
            })?)),
        };
        let info = HandshakeInfo {
            sni: conn.server_name().map(str::to_owned),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            version: match conn.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                _ => "TLS",
            },
            identity,
        };
        Ok((stream, info))
    }
}

/// Maps a handshake's I/O error to a stable reason label.
fn classify(e: &io::Error) -> HandshakeError {
    let detail = e.to_string();
    let reason = match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<RustlsError>())
    {
        Some(RustlsError::InvalidMessage(_)) => "not_tls",
        Some(RustlsError::NoCertificatesPresented) => "no_client_cert",
        Some(RustlsError::InvalidCertificate(c)) => match c {
            CertificateError::UnknownIssuer => "cert_untrusted",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "cert_expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "cert_not_yet_valid"
            }
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "cert_wrong_usage"
            }
            CertificateError::Revoked => "cert_revoked",
            _ => "cert_invalid",
        },
        Some(RustlsError::PeerIncompatible(_)) => "incompatible",
        Some(RustlsError::AlertReceived(_)) => "alert",
        Some(_) => "other",
        None if e.kind() == io::ErrorKind::UnexpectedEof => "eof",
        None if e.kind() == io::ErrorKind::InvalidData => "not_tls",
        None => "io",
    };
    HandshakeError { reason, detail }
}

/// Picks a certificate by SNI: a pending TLS-ALPN-01 challenge's for a validation handshake,
/// then the exact name, then a `*.parent` wildcard, then the default.
#[derive(Debug, Default)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the parent domain of `*.parent`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
    acme: Option<Arc<AlpnChallenges>>,
    /// Whether `acme-tls/1` is offered in ALPN (the listener takes ACME challenges).
    acme_offered: bool,
}

impl SniResolver {
    fn add(&mut self, key: Arc<CertifiedKey>, names: &[String]) {
        if self.default.is_none() {
            self.default = Some(Arc::clone(&key));
        }
        for name in names {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            // The first certificate naming a host wins, like the default.
            match name.strip_prefix("*.") {
                Some(parent) => self.wildcard.entry(parent.to_owned()),
                None => self.exact.entry(name),
            }
            .or_insert_with(|| Arc::clone(&key));
        }
    }

    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(sni) = sni {
            let sni = sni.trim_end_matches('.').to_ascii_lowercase();
            if let Some(k) = self.exact.get(&sni) {
                return Some(Arc::clone(k));
            }
            if let Some((_, parent)) = sni.split_once('.')
                && let Some(k) = self.wildcard.get(parent)
            {
                return Some(Arc::clone(k));
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let (Some(acme), Some(alpn)) = (&self.acme, hello.alpn())
            && let Some(challenge) = acme.pick(hello.server_name(), alpn)
        {
            return Some(challenge);
        }
        self.pick(hello.server_name())
    }
}
