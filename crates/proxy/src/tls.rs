//! TLS termination and per-connection authorization on listeners.
//!
//! On accept: handshake under `handshake_timeout` (failures are logged with their reason,
//! counted, and the socket closed), then the `[listener.authz]` allow-list (denials likewise).
//! The handshake's result travels with the connection as a [`ConnTls`]: HTTP puts it in the
//! access log and the identity headers, TCP in its session line.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use metrics::counter;
use serde::Serialize;
use sluice_config::{ClientAuthMode, IdentityHeaders, ListenerConfig, TlsVersion};
use sluice_tls::{
    ACME_TLS_ALPN, AllowList, AlpnChallenges, CertKeyPaths, ClientAuth, Denied, HandshakeInfo,
    MaybeTls, MinVersion, PeerFacts, ServerTls, ServerTlsSettings, TlsError,
};
use tokio::net::TcpStream;

use crate::metrics::{AUTHZ_DENIED_TOTAL, TLS_HANDSHAKE_FAILURES_TOTAL, TLS_HANDSHAKES_TOTAL};

/// A listener's loaded TLS: rebuilt (files re-read) on every apply.
#[derive(Debug)]
pub(crate) struct ListenerTls {
    server: ServerTls,
    timeout: Duration,
    headers: IdentityHeaders,
    /// Every configured identity header name, removed from incoming requests.
    strip: Vec<HeaderName>,
}

impl ListenerTls {
    /// Loads the certificates of `lc` (None: a plain listener); a listener with
    /// `[listener.tls.acme]` also answers the TLS-ALPN-01 challenges in `acme`.
    pub(crate) fn load(
        lc: &ListenerConfig,
        acme: &Arc<AlpnChallenges>,
    ) -> Result<Option<Self>, TlsError> {
        let Some(t) = &lc.tls else { return Ok(None) };
        let http = lc.tcp.is_none();
        let settings = ServerTlsSettings {
            certs: t
                .certificates
                .iter()
                .map(|c| CertKeyPaths {
                    cert: c.cert.clone(),
                    key: c.key.clone(),
                })
                .collect(),
            client_ca: t.client_ca.clone(),
            client_auth: match t.client_auth {
                ClientAuthMode::Off => ClientAuth::Off,
                ClientAuthMode::Optional => ClientAuth::Optional,
                ClientAuthMode::Required => ClientAuth::Required,
            },
            min_version: match t.min_version {
                TlsVersion::Tls12 => MinVersion::Tls12,
                TlsVersion::Tls13 => MinVersion::Tls13,
            },
            alpn_h2: http && lc.http2,
            alpn_http1: http,
        };
        Ok(Some(Self {
            server: ServerTls::load_with_acme(
                &settings,
                t.acme.as_ref().map(|_| Arc::clone(acme)),
            )?,
            timeout: t.handshake_timeout,
            strip: t
                .identity_headers
                .names()
                .filter_map(|n| HeaderName::try_from(n).ok())
                .collect(),
            headers: t.identity_headers.clone(),
        }))
    }

    /// The identity fields sent upstream for a verified client identity (none without one).
    fn identity_fields(&self, info: &HandshakeInfo) -> Vec<(HeaderName, HeaderValue)> {
        let Some(id) = info.identity.as_deref() else {
            return Vec::new();
        };
        let mut fields = Vec::new();
        let mut put = |name: &Option<String>, value: &str| {
            if let (Some(name), Ok(v)) = (name, HeaderValue::from_str(value))
                && let Ok(name) = HeaderName::try_from(name.as_str())
            {
                fields.push((name, v));
            }
        };
        if let Some(cn) = &id.subject_cn {
            put(&self.headers.cn, cn);
        }
        let sans: Vec<&str> = id.sans().collect();
        if !sans.is_empty() {
            put(&self.headers.san, &sans.join(","));
        }
        put(&self.headers.fingerprint, &id.fingerprint_sha256);
        put(&self.headers.issuer, &id.issuer);
        put(&self.headers.not_after, &id.not_after);
        fields
    }
}

/// The TLS side of one client connection.
#[derive(Debug)]
pub(crate) struct ConnTls {
    pub(crate) info: HandshakeInfo,
    /// The listener TLS that accepted it (identity header settings).
    pub(crate) listener: Arc<ListenerTls>,
    /// The identity fields for upstream requests, made once per connection.
    identity: Vec<(HeaderName, HeaderValue)>,
}

/// The access log's `tls` object.
#[derive(Debug, Serialize)]
pub(crate) struct TlsLog<'a> {
    version: &'static str,
    sni: Option<&'a str>,
    alpn: Option<String>,
    cn: Option<&'a str>,
    sans: Vec<&'a str>,
    issuer: Option<&'a str>,
    fingerprint: Option<&'a str>,
    not_after: Option<&'a str>,
}

impl ConnTls {
    pub(crate) fn new(info: HandshakeInfo, listener: Arc<ListenerTls>) -> Self {
        Self {
            identity: listener.identity_fields(&info),
            info,
            listener,
        }
    }

    /// The verified identity's fields, added to every request of the connection.
    pub(crate) fn identity_fields(&self) -> &[(HeaderName, HeaderValue)] {
        &self.identity
    }

    /// Whether a client field called `name` is one of the configured identity fields, which
    /// only Sluice may set.
    pub(crate) fn strips(&self, name: &[u8]) -> bool {
        self.listener
            .strip
            .iter()
            .any(|n| n.as_str().as_bytes().eq_ignore_ascii_case(name))
    }

    pub(crate) fn log(&self) -> TlsLog<'_> {
        let id = self.info.identity.as_deref();
        TlsLog {
            version: self.info.version,
            sni: self.info.sni.as_deref(),
            alpn: self
                .info
                .alpn
                .as_ref()
                .map(|a| String::from_utf8_lossy(a).into_owned()),
            cn: id.and_then(|i| i.subject_cn.as_deref()),
            sans: id.map(|i| i.sans().collect()).unwrap_or_default(),
            issuer: id.map(|i| i.issuer.as_str()),
            fingerprint: id.map(|i| i.fingerprint_sha256.as_str()),
            not_after: id.map(|i| i.not_after.as_str()),
        }
    }
}

/// The native authorizer of a listener, from `[listener.authz]`.
pub(crate) fn allow_list(lc: &ListenerConfig) -> Option<AllowList> {
    let a = lc.authz.as_ref()?;
    let list = AllowList {
        cns: a.allow_cn.clone(),
        sans: a.allow_san.clone(),
        fingerprints: a.allow_fingerprint.clone(),
        cidrs: a.allow_cidr.clone(),
    }
    .normalized();
    (!list.is_empty()).then_some(list)
}

/// What a listener checks before it serves a connection.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    /// Present when the listener has `[listener.tls]`.
    pub(crate) tls: Option<Arc<ListenerTls>>,
    /// Present when `[listener.authz]` has rules.
    pub(crate) authz: Option<sluice_tls::AllowList>,
    /// `[listener.authz] policy` and who decides it.
    pub(crate) policy: Option<(String, Arc<dyn sluice_tls::PolicyAuthorizer>)>,
}

/// Handshake (when the listener has TLS) and authorization of a new connection. `None`: the
/// connection was refused, logged and counted; the socket is closed when dropped.
pub(crate) async fn admit(
    stream: TcpStream,
    peer: SocketAddr,
    listener: &str,
    gate: &Gate,
) -> Option<(MaybeTls<TcpStream>, Option<Arc<ConnTls>>)> {
    let (tls, authz) = (gate.tls.as_ref(), gate.authz.as_ref());
    let _ = stream.set_nodelay(true);
    let (stream, conn) = match tls {
        None => (MaybeTls::Plain(stream), None),
        Some(tls) => match tls.server.accept(stream, tls.timeout).await {
            Ok((_, info)) if info.alpn.as_deref() == Some(ACME_TLS_ALPN) => {
                // A CA validating a TLS-ALPN-01 challenge: the handshake was the answer.
                tracing::info!(listener, client = %peer, sni = info.sni.as_deref(), "ACME TLS-ALPN-01 validation handshake answered");
                return None;
            }
            Ok((s, info)) => {
                counter!(TLS_HANDSHAKES_TOTAL, "listener" => listener.to_owned(), "version" => info.version)
                        .increment(1);
                (
                    MaybeTls::Tls(Box::new(s)),
                    Some(Arc::new(ConnTls::new(info, Arc::clone(tls)))),
                )
            }
            Err(e) => {
                counter!(TLS_HANDSHAKE_FAILURES_TOTAL, "listener" => listener.to_owned(), "reason" => e.reason)
                        .increment(1);
                tracing::info!(listener, client = %peer, reason = e.reason, detail = %e.detail, "TLS handshake failed; connection closed");
                return None;
            }
        },
    };
    if let Some(list) = authz {
        let identity = conn.as_ref().and_then(|c| c.info.identity.as_deref());
        if let Err(denied) = list.check(peer.ip(), identity) {
            let reason = match denied {
                Denied::Source(_) => "source",
                Denied::Anonymous => "anonymous",
                Denied::Identity { .. } => "identity",
            };
            counter!(AUTHZ_DENIED_TOTAL, "listener" => listener.to_owned(), "reason" => reason)
                .increment(1);
            tracing::info!(
                listener,
                client = %peer,
                reason,
                cn = identity.and_then(|i| i.subject_cn.as_deref()),
                fingerprint = identity.map(|i| i.fingerprint_sha256.as_str()),
                detail = %denied,
                "connection denied by [listener.authz]"
            );
            return None;
        }
    }
    if let Some((policy, authorizer)) = &gate.policy {
        let info = conn.as_ref().map(|c| &c.info);
        let identity = info.and_then(|i| i.identity.as_deref());
        let facts = PeerFacts {
            listener,
            source: peer,
            sni: info.and_then(|i| i.sni.as_deref()),
            alpn: info.and_then(|i| i.alpn.as_deref()),
            identity,
        };
        if let Err(detail) = authorizer.authorize(policy, &facts) {
            counter!(AUTHZ_DENIED_TOTAL, "listener" => listener.to_owned(), "reason" => "policy")
                .increment(1);
            tracing::info!(
                listener,
                client = %peer,
                reason = "policy",
                policy = %policy,
                cn = identity.and_then(|i| i.subject_cn.as_deref()),
                fingerprint = identity.map(|i| i.fingerprint_sha256.as_str()),
                %detail,
                "connection denied by [listener.authz]"
            );
            return None;
        }
    }
    Some((stream, conn))
}

/// Loads `[service.tls]` (files re-read on every apply), warning when verification is off.
/// ALPN offers the service's protocol alone: an instance that cannot speak it fails the
/// handshake (or agrees to nothing, which `pool::connect` refuses for HTTP/2) rather than
/// being spoken to in a protocol it did not choose.
pub(crate) fn client_tls(
    service: &str,
    t: &sluice_config::ServiceTlsConfig,
    protocol: sluice_config::UpstreamProtocol,
) -> Result<sluice_tls::ClientTls, TlsError> {
    if t.insecure_skip_verify {
        tracing::warn!(
            service,
            "[service.tls] insecure_skip_verify = true: instance certificates are NOT verified; anyone on the path can impersonate them"
        );
    }
    sluice_tls::ClientTls::load(
        &sluice_tls::ClientTlsSettings {
            ca: t.ca.clone(),
            cert: t.client.as_ref().map(|c| c.cert.clone()),
            key: t.client.as_ref().map(|c| c.key.clone()),
            server_name: t.server_name.clone(),
            insecure_skip_verify: t.insecure_skip_verify,
        },
        if protocol.is_http2() {
            &[b"h2"]
        } else {
            &[b"http/1.1"]
        },
    )
}
