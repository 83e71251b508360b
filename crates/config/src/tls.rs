//! `[listener.tls]` and `[listener.authz]`: the validated model.

use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

/// A certificate chain file and its key file (paths resolved against the config's folder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertKeyFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// `client_auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthMode {
    /// Clients are not asked for a certificate.
    Off,
    /// Asked; clients without one are anonymous, bad ones are refused.
    Optional,
    /// A certificate chaining to `client_ca` is required.
    Required,
}

/// `min_version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 (and 1.3).
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

/// Request headers carrying the client identity to HTTP upstreams; `None` = not sent.
/// Incoming copies of every configured name are always removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentityHeaders {
    /// Subject CN.
    pub cn: Option<String>,
    /// SANs, comma-separated.
    pub san: Option<String>,
    /// SHA-256 fingerprint, hex.
    pub fingerprint: Option<String>,
    /// Issuer DN.
    pub issuer: Option<String>,
    /// Not-after, RFC 3339.
    pub not_after: Option<String>,
}

impl IdentityHeaders {
    /// Every configured header name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        [
            &self.cn,
            &self.san,
            &self.fingerprint,
            &self.issuer,
            &self.not_after,
        ]
        .into_iter()
        .filter_map(|n| n.as_deref())
    }
}

/// `[listener.tls]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTlsConfig {
    /// Certificates; the first is the default for unknown or absent SNI.
    pub certificates: Vec<CertKeyFiles>,
    /// CA bundle for client certificates.
    pub client_ca: Option<PathBuf>,
    /// Client certificate policy.
    pub client_auth: ClientAuthMode,
    /// Oldest TLS version accepted.
    pub min_version: TlsVersion,
    /// Time a client has to complete the handshake.
    pub handshake_timeout: Duration,
    /// Identity headers to HTTP upstreams.
    pub identity_headers: IdentityHeaders,
    /// `[listener.tls.acme]`: the first certificate is obtained and renewed from an ACME CA.
    pub acme: Option<AcmeConfig>,
}

/// `[listener.tls.acme]`: a certificate for `domains` obtained from the ACME CA at
/// `directory` (RFC 8555; HTTP-01 or TLS-ALPN-01), kept in `storage` and renewed
/// `renew_before` its expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeConfig {
    /// The CA's directory URL (`https://`).
    pub directory: String,
    /// DNS names (or IP addresses) the certificate is for; the first is its subject.
    pub domains: Vec<String>,
    /// Account contacts (`mailto:` URLs).
    pub contact: Vec<String>,
    /// Where the account, the certificate and its key are kept.
    pub storage: PathBuf,
    /// Extra root certificate (PEM) trusted for the directory's HTTPS, for private CAs.
    pub ca_root: Option<PathBuf>,
    /// Renew once the certificate expires within this.
    pub renew_before: Duration,
    /// After a failed attempt, try again after this (doubling up to an hour).
    pub retry_every: Duration,
    /// How the CA checks that Sluice serves the names.
    pub challenge: AcmeChallengeKind,
}

/// `[listener.tls.acme] challenge`: how the CA validates the names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AcmeChallengeKind {
    /// HTTP-01 (RFC 8555 §8.3): a plain-HTTP listener on port 80 answers a token.
    #[default]
    Http01,
    /// TLS-ALPN-01 (RFC 8737): this listener, on port 443, answers a special handshake.
    TlsAlpn01,
}

impl AcmeConfig {
    /// The certificate Sluice serves and renews (PEM chain).
    pub fn cert_path(&self) -> PathBuf {
        self.storage.join("cert.pem")
    }
    /// Its private key (PEM).
    pub fn key_path(&self) -> PathBuf {
        self.storage.join("key.pem")
    }
    /// The ACME account's credentials (JSON).
    pub fn account_path(&self) -> PathBuf {
        self.storage.join("account.json")
    }
}

/// `[listener.authz]`: who may connect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerAuthzConfig {
    /// Allowed subject CNs.
    pub allow_cn: Vec<String>,
    /// Allowed DNS/URI SANs.
    pub allow_san: Vec<String>,
    /// Allowed SHA-256 fingerprints (hex, `:` optional).
    pub allow_fingerprint: Vec<String>,
    /// Allowed source networks.
    pub allow_cidr: Vec<IpNet>,
    /// A `world = "authz"` [[policy]] asked after the allow-list passes.
    pub policy: Option<String>,
}

/// `[service.tls]`: TLS towards the service's instances (HTTP services).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceTlsConfig {
    /// CA bundle the instances' certificates must chain to.
    pub ca: Option<PathBuf>,
    /// Client certificate and key (mutual TLS).
    pub client: Option<CertKeyFiles>,
    /// SNI and the name checked in the instance's certificate; default: the instance's IP.
    pub server_name: Option<String>,
    /// Accept any instance certificate (logged at `warn` on every load).
    pub insecure_skip_verify: bool,
}
