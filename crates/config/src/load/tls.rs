//! Validation of `[listener.tls]` and `[listener.authz]`.

use std::path::PathBuf;

use toml::Spanned;

use super::Cx;
use crate::defaults as d;
use crate::policy::{PolicyConfig, PolicyWorld};
use crate::raw::{RawAcme, RawListenerAuthz, RawListenerTls, RawServiceTls};
use crate::tls::*;

impl Cx<'_> {
    pub(super) fn listener_tls(
        &mut self,
        t: &RawListenerTls,
        listener: &Spanned<String>,
    ) -> Option<ListenerTlsConfig> {
        let acme = t.acme.as_ref().and_then(|a| self.acme(a));
        let mut certificates = Vec::new();
        match (&t.cert, &t.key) {
            (Some(v), _) | (None, Some(v)) if t.acme.is_some() => self.error_hint(
                Some(v.span()),
                "with [listener.tls.acme] the certificate comes from the CA",
                "remove `cert` and `key`; more certificates can still be listed in `certificates`",
            ),
            (Some(cert), Some(key)) => certificates.push((cert.clone(), key.clone())),
            (None, None) => {}
            (Some(v), None) | (None, Some(v)) => self.error_hint(
                Some(v.span()),
                "`cert` and `key` go together",
                "give both, or list pairs in certificates = [{ cert = \"...\", key = \"...\" }]",
            ),
        }
        for pair in t.certificates.as_deref().unwrap_or_default() {
            match (&pair.get_ref().cert, &pair.get_ref().key) {
                (Some(cert), Some(key)) => certificates.push((cert.clone(), key.clone())),
                _ => self.error_hint(
                    Some(pair.span()),
                    "each entry of `certificates` needs `cert` and `key`",
                    "write { cert = \"server.pem\", key = \"server.key\" }",
                ),
            }
        }
        if certificates.is_empty() && t.cert.is_none() && t.key.is_none() && t.acme.is_none() {
            self.error_hint(
                Some(listener.span()),
                format!(
                    "[listener.tls] of `{}` has no certificate",
                    listener.get_ref()
                ),
                "add cert = \"server.pem\" and key = \"server.key\" (or a certificates list)",
            );
        }
        // The CA's certificate comes first (the default for unknown SNI); Sluice writes its
        // files before the listener starts, so they are not required to exist here.
        let acme_pair = acme.as_ref().map(|a| CertKeyFiles {
            cert: a.cert_path(),
            key: a.key_path(),
        });
        let certificates: Vec<CertKeyFiles> = acme_pair
            .into_iter()
            .chain(certificates.iter().map(|(c, k)| CertKeyFiles {
                cert: self.readable_file(c),
                key: self.readable_file(k),
            }))
            .collect();
        let client_auth = self.choice(
            t.client_auth.as_ref(),
            "client_auth",
            &[
                ("off", ClientAuthMode::Off),
                ("optional", ClientAuthMode::Optional),
                ("required", ClientAuthMode::Required),
            ],
        );
        let client_ca = t.client_ca.as_ref().map(|v| self.readable_file(v));
        if client_auth != ClientAuthMode::Off
            && client_ca.is_none()
            && let Some(v) = &t.client_auth
        {
            self.error_hint(
                Some(v.span()),
                format!("client_auth = \"{}\" needs `client_ca`", v.get_ref()),
                "add client_ca = \"ca.pem\": the CA bundle client certificates must chain to",
            );
        }
        let min_version = self.choice(
            t.min_version.as_ref(),
            "min_version",
            &[("1.2", TlsVersion::Tls12), ("1.3", TlsVersion::Tls13)],
        );
        let mut identity_headers = IdentityHeaders::default();
        if let Some(h) = &t.identity_headers {
            let mut header = |v: &Option<Spanned<String>>| {
                let v = v.as_ref()?;
                let name = v.get_ref().to_ascii_lowercase();
                if super::is_token(&name) {
                    Some(name)
                } else {
                    self.error_hint(
                        Some(v.span()),
                        format!("invalid header name `{}`", v.get_ref()),
                        "use letters, digits and `-`, e.g. \"x-client-cn\"",
                    );
                    None
                }
            };
            identity_headers = IdentityHeaders {
                cn: header(&h.cn),
                san: header(&h.san),
                fingerprint: header(&h.fingerprint),
                issuer: header(&h.issuer),
                not_after: header(&h.not_after),
            };
        }
        Some(ListenerTlsConfig {
            certificates,
            client_ca,
            client_auth,
            min_version,
            handshake_timeout: self
                .duration(t.handshake_timeout.as_ref(), d::TLS_HANDSHAKE_TIMEOUT),
            identity_headers,
            acme,
        })
    }

    /// `[listener.tls.acme]`: `directory`, `domains` and `storage` are required.
    fn acme(&mut self, raw: &Spanned<RawAcme>) -> Option<AcmeConfig> {
        let a = raw.get_ref();
        let required = |this: &mut Self, v: &Option<Spanned<String>>, key: &str| {
            if v.is_none() {
                this.error_hint(
                    Some(raw.span()),
                    format!("[listener.tls.acme] needs `{key}`"),
                    "e.g. directory = \"https://acme-v02.api.letsencrypt.org/directory\", domains = [\"www.example.com\"], storage = \"/var/lib/sluice/acme\"",
                );
            }
        };
        required(self, &a.directory, "directory");
        required(self, &a.storage, "storage");
        let directory = a.directory.as_ref()?;
        if !directory.get_ref().starts_with("https://") {
            self.error_hint(
                Some(directory.span()),
                format!(
                    "ACME directory `{}` is not an https:// URL",
                    directory.get_ref()
                ),
                "ACME runs over HTTPS (RFC 8555 §6.1)",
            );
        }
        let domains = self.acme_domains(raw)?;
        Some(AcmeConfig {
            directory: directory.get_ref().clone(),
            domains,
            contact: a
                .contact
                .iter()
                .flatten()
                .map(|c| c.get_ref().clone())
                .collect(),
            storage: self.relative_path(a.storage.as_ref()?),
            ca_root: a.ca_root.as_ref().map(|v| self.readable_file(v)),
            renew_before: self.duration(a.renew_before.as_ref(), d::ACME_RENEW_BEFORE),
            retry_every: self.duration(a.retry_every.as_ref(), d::ACME_RETRY_EVERY),
            challenge: self.choice(
                a.challenge.as_ref(),
                "challenge",
                &[
                    ("http-01", AcmeChallengeKind::Http01),
                    ("tls-alpn-01", AcmeChallengeKind::TlsAlpn01),
                ],
            ),
        })
    }

    /// `domains`: at least one; each a DNS name or an IP address.
    fn acme_domains(&mut self, raw: &Spanned<RawAcme>) -> Option<Vec<String>> {
        let listed = raw.get_ref().domains.as_deref().unwrap_or_default();
        if listed.is_empty() {
            self.error_hint(
                Some(raw.span()),
                "[listener.tls.acme] needs at least one name in `domains`",
                "e.g. domains = [\"www.example.com\", \"example.com\"]",
            );
            return None;
        }
        let mut domains = Vec::with_capacity(listed.len());
        for v in listed {
            let name = v.get_ref().to_ascii_lowercase();
            let is_ip = name.parse::<std::net::IpAddr>().is_ok();
            let is_dns = !name.is_empty()
                && name.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !is_ip && !is_dns {
                self.error_hint(
                    Some(v.span()),
                    format!("`{}` is neither a DNS name nor an IP address", v.get_ref()),
                    "ACME certificates name hosts: \"www.example.com\" (no wildcards: they need DNS-01)",
                );
            }
            domains.push(name);
        }
        Some(domains)
    }

    /// A path from the file, relative to the file's folder; not required to exist.
    fn relative_path(&self, v: &Spanned<String>) -> PathBuf {
        let raw = v.get_ref();
        match self.src.path().parent() {
            Some(dir) if std::path::Path::new(raw).is_relative() => dir.join(raw),
            _ => raw.into(),
        }
    }

    pub(super) fn listener_authz(&mut self, a: &RawListenerAuthz) -> ListenerAuthzConfig {
        let strings = |v: &Option<Vec<Spanned<String>>>| -> Vec<String> {
            v.as_deref()
                .unwrap_or_default()
                .iter()
                .map(|s| s.get_ref().clone())
                .collect()
        };
        let mut allow_fingerprint = strings(&a.allow_fingerprint);
        for (f, raw_f) in allow_fingerprint
            .iter_mut()
            .zip(a.allow_fingerprint.as_deref().unwrap_or_default())
        {
            *f = f.replace(':', "").to_ascii_lowercase();
            if f.len() != 64 || !f.bytes().all(|b| b.is_ascii_hexdigit()) {
                self.error_hint(
                    Some(raw_f.span()),
                    format!("`{}` is not a SHA-256 fingerprint", raw_f.get_ref()),
                    "64 hex digits, `:` separators allowed (openssl x509 -noout -fingerprint -sha256)",
                );
            }
        }
        let mut allow_cidr = Vec::new();
        for c in a.allow_cidr.as_deref().unwrap_or_default() {
            if let Some(n) = self.network(c) {
                allow_cidr.push(n);
            }
        }
        if let Some(p) = &a.policy {
            self.authz_policy_refs.push(p.clone());
        }
        ListenerAuthzConfig {
            allow_cn: strings(&a.allow_cn),
            allow_san: strings(&a.allow_san),
            allow_fingerprint,
            allow_cidr,
            policy: a.policy.as_ref().map(|p| p.get_ref().clone()),
        }
    }

    pub(super) fn authz_policy_references(&mut self, policies: &[PolicyConfig]) {
        for p in std::mem::take(&mut self.authz_policy_refs) {
            let name = p.get_ref().as_str();
            match policies.iter().find(|q| q.name == name) {
                Some(q) if q.world == PolicyWorld::Authz => {}
                Some(q) => self.error_hint(
                    Some(p.span()),
                    format!(
                        "policy `{name}` is a {} policy, not an authz policy",
                        q.world.as_str()
                    ),
                    "[listener.authz] policy needs a [[policy]] with world = \"authz\"",
                ),
                None => self.error_hint(
                    Some(p.span()),
                    format!("[listener.authz] refers to unknown policy `{name}`"),
                    format!("define it with [[policy]] name = \"{name}\", world = \"authz\""),
                ),
            }
        }
    }

    pub(super) fn service_tls(
        &mut self,
        t: &RawServiceTls,
        service: &Spanned<String>,
    ) -> Option<ServiceTlsConfig> {
        let insecure = t.insecure_skip_verify.unwrap_or(false);
        if t.ca.is_none() && !insecure {
            self.error_hint(
                Some(service.span()),
                format!("[service.tls] of `{}` has no `ca`", service.get_ref()),
                "add ca = \"ca.pem\" (the CA instance certificates chain to); insecure_skip_verify = true only for tests",
            );
        }
        let client = match (&t.cert, &t.key) {
            (Some(c), Some(k)) => Some(CertKeyFiles {
                cert: self.readable_file(c),
                key: self.readable_file(k),
            }),
            (None, None) => None,
            (Some(v), None) | (None, Some(v)) => {
                self.error_hint(
                    Some(v.span()),
                    "`cert` and `key` go together",
                    "give both for mutual TLS to the instances, or neither",
                );
                None
            }
        };
        if let Some(n) = &t.server_name
            && n.get_ref().is_empty()
        {
            self.error_hint(
                Some(n.span()),
                "`server_name` is empty",
                "remove it to use the instance's IP",
            );
        }
        Some(ServiceTlsConfig {
            ca: t.ca.as_ref().map(|c| self.readable_file(c)),
            client,
            server_name: t.server_name.as_ref().map(|n| n.get_ref().clone()),
            insecure_skip_verify: insecure,
        })
    }

    /// A path resolved against the config file's folder, which must be a readable file.
    pub(super) fn readable_file(&mut self, v: &Spanned<String>) -> PathBuf {
        let raw = v.get_ref();
        let path = match self.src.path().parent() {
            Some(dir) if std::path::Path::new(raw).is_relative() => dir.join(raw),
            _ => raw.into(),
        };
        if self.lookups == super::Lookups::Offline {
            return path;
        }
        if let Err(e) = std::fs::File::open(&path) {
            self.error_hint(
                Some(v.span()),
                format!("cannot read `{}`: {e}", path.display()),
                "give the path of a readable file (relative paths start at this file's folder)",
            );
        }
        path
    }
}
