//! `ecp-authz`: which client systems may open an ECP connection to a data server (seed 000).
//!
//! Contract:
//! - A connecting peer is allowed when it passes every configured check: its source address
//!   lies in one of `source_cidrs`, and its verified client certificate names an allowed client
//!   system (subject CN, a DNS SAN or a URI SAN, compared case-insensitively).
//! - Allowed client systems come from `client_systems` (a list, or one `;`-separated string as
//!   `CLIENT_SYSTEMS` is written in the seed) and from the KV key `client_systems_kv_key`, read
//!   on every call, so the allow-list changes at run time without a reload.
//! - `admission_window_secs` (default 0: off) admits unknown clients that present a verified
//!   certificate during that many seconds after the policy was loaded — the seed's 100 s
//!   "auto-approval" done properly: opt-in, bounded, and every admission is logged at `warn`.
//!   Source ranges are enforced during the window too.
//! - Everything else is denied with a reason naming what failed.

use std::net::IpAddr;

use serde::Deserialize;
use sluice_policy_sdk::cidr::Cidr;
use sluice_policy_sdk::{AuthzPolicy, ClientCertificate, Decision, Peer, host};

/// `[[policy]] config` of this policy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub client_systems: ClientSystems,
    pub client_systems_kv_key: Option<String>,
    pub source_cidrs: Vec<String>,
    pub admission_window_secs: u64,
}

/// A list of names, or one `;`-separated string.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ClientSystems {
    List(Vec<String>),
    Joined(String),
}

impl Default for ClientSystems {
    fn default() -> Self {
        ClientSystems::List(Vec::new())
    }
}

/// The configured policy.
#[derive(Debug, Clone)]
pub struct EcpAuthz {
    names: Vec<String>,
    kv_key: Option<String>,
    source_ranges: Vec<Cidr>,
    admission_window_ms: u64,
}

/// Splits a `;`-separated list of client systems, ignoring blanks.
pub fn split_client_systems(joined: &str) -> impl Iterator<Item = &str> {
    joined
        .split(';')
        .map(str::trim)
        .filter(|name| !name.is_empty())
}

impl AuthzPolicy for EcpAuthz {
    fn configure(config: &str) -> Result<Self, String> {
        let config: Config =
            serde_json::from_str(config).map_err(|e| format!("invalid ecp-authz config: {e}"))?;
        let names: Vec<String> = match &config.client_systems {
            ClientSystems::List(names) => names
                .iter()
                .map(|n| n.trim().to_ascii_lowercase())
                .filter(|n| !n.is_empty())
                .collect(),
            ClientSystems::Joined(joined) => split_client_systems(joined)
                .map(str::to_ascii_lowercase)
                .collect(),
        };
        let source_ranges = config
            .source_cidrs
            .iter()
            .map(|text| Cidr::parse(text).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(key) = &config.client_systems_kv_key
            && key.trim().is_empty()
        {
            return Err("client_systems_kv_key is empty".into());
        }
        if names.is_empty() && config.client_systems_kv_key.is_none() && source_ranges.is_empty() {
            return Err(
                "nothing to allow: set client_systems, client_systems_kv_key or source_cidrs"
                    .into(),
            );
        }
        Ok(EcpAuthz {
            names,
            kv_key: config.client_systems_kv_key,
            source_ranges,
            admission_window_ms: config.admission_window_secs.saturating_mul(1000),
        })
    }

    fn authorize(&self, peer: &Peer) -> Decision {
        if !self.source_ranges.is_empty() {
            let Ok(source) = peer.source_address.parse::<IpAddr>() else {
                return Decision::Deny(format!(
                    "source `{}` is not an IP address",
                    peer.source_address
                ));
            };
            if !self
                .source_ranges
                .iter()
                .any(|range| range.contains(source))
            {
                return Decision::Deny(format!("source {source} is outside the allowed ranges"));
            }
        }
        if self.names.is_empty() && self.kv_key.is_none() {
            return Decision::Allow;
        }
        let Some(certificate) = &peer.client_certificate else {
            return Decision::Deny("no verified client certificate".into());
        };
        let kv_names = self.kv_key.as_deref().and_then(host::kv_get);
        let allowed = |identity: &str| {
            self.names
                .iter()
                .any(|name| name.eq_ignore_ascii_case(identity))
                || kv_names.as_deref().is_some_and(|joined| {
                    split_client_systems(joined).any(|name| name.eq_ignore_ascii_case(identity))
                })
        };
        if identities(certificate).any(allowed) {
            return Decision::Allow;
        }
        let shown = identities(certificate)
            .next()
            .unwrap_or("<certificate without a name>");
        if self.in_admission_window() {
            host::warn(&format!(
                "admission window: admitting unknown client system `{shown}` from {} (fingerprint {})",
                peer.source_address, certificate.sha256_fingerprint
            ));
            return Decision::Allow;
        }
        Decision::Deny(format!("client system `{shown}` is not in the allow-list"))
    }
}

impl EcpAuthz {
    fn in_admission_window(&self) -> bool {
        self.admission_window_ms > 0
            && host::now_ms() < host::loaded_at_ms().saturating_add(self.admission_window_ms)
    }
}

/// The names a certificate vouches for: subject CN first, then DNS SANs, then URI SANs.
fn identities(certificate: &ClientCertificate) -> impl Iterator<Item = &str> {
    certificate
        .subject_cn
        .as_deref()
        .into_iter()
        .chain(certificate.dns_sans.iter().map(String::as_str))
        .chain(certificate.uri_sans.iter().map(String::as_str))
}

sluice_policy_sdk::export_authz!(crate::EcpAuthz);

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_policy_sdk::{LogLevel, testing};

    fn peer(cn: Option<&str>, source: &str) -> Peer {
        Peer {
            listener: "ecp".into(),
            source_address: source.into(),
            source_port: 40000,
            sni: Some("data".into()),
            alpn: None,
            client_certificate: cn.map(|cn| ClientCertificate {
                subject_cn: Some(cn.into()),
                dns_sans: vec![format!("{cn}.example")],
                uri_sans: vec![],
                issuer: "CN=Sluice test CA".into(),
                sha256_fingerprint: "ab".repeat(32),
                not_before: 0,
                not_after: 4_000_000_000,
            }),
        }
    }

    fn denied(decision: Decision) -> String {
        match decision {
            Decision::Deny(reason) => reason,
            Decision::Allow => panic!("expected a denial"),
        }
    }

    #[test]
    fn listed_client_systems_are_allowed_by_cn_or_san() {
        let policy = EcpAuthz::configure(r#"{"client_systems": "app1;APP2; ;"}"#).unwrap();
        assert_eq!(
            policy.authorize(&peer(Some("app1"), "10.0.0.5")),
            Decision::Allow
        );
        assert_eq!(
            policy.authorize(&peer(Some("App2"), "10.0.0.6")),
            Decision::Allow
        );
        let mut by_san = peer(Some("unrelated"), "10.0.0.7");
        by_san.client_certificate.as_mut().unwrap().dns_sans = vec!["app1".into()];
        assert_eq!(policy.authorize(&by_san), Decision::Allow);
        assert_eq!(
            denied(policy.authorize(&peer(Some("intruder"), "10.0.0.8"))),
            "client system `intruder` is not in the allow-list"
        );
        assert_eq!(
            denied(policy.authorize(&peer(None, "10.0.0.8"))),
            "no verified client certificate"
        );
    }

    #[test]
    fn the_allow_list_follows_the_kv_key_without_reconfiguring() {
        let policy = EcpAuthz::configure(r#"{"client_systems_kv_key": "ecp/clients"}"#).unwrap();
        testing::remove_kv("ecp/clients");
        assert!(matches!(
            policy.authorize(&peer(Some("app3"), "10.0.0.5")),
            Decision::Deny(_)
        ));
        testing::set_kv("ecp/clients", "app1;app3");
        assert_eq!(
            policy.authorize(&peer(Some("app3"), "10.0.0.5")),
            Decision::Allow
        );
        testing::set_kv("ecp/clients", "app1");
        assert!(matches!(
            policy.authorize(&peer(Some("app3"), "10.0.0.5")),
            Decision::Deny(_)
        ));
    }

    #[test]
    fn source_ranges_are_enforced_alongside_identity() {
        let policy = EcpAuthz::configure(
            r#"{"client_systems": ["app1"], "source_cidrs": ["10.0.0.0/8", "fd00::/8"]}"#,
        )
        .unwrap();
        assert_eq!(
            policy.authorize(&peer(Some("app1"), "10.9.9.9")),
            Decision::Allow
        );
        assert_eq!(
            policy.authorize(&peer(Some("app1"), "fd00::1")),
            Decision::Allow
        );
        assert_eq!(
            denied(policy.authorize(&peer(Some("app1"), "192.168.1.1"))),
            "source 192.168.1.1 is outside the allowed ranges"
        );
        let only_ranges = EcpAuthz::configure(r#"{"source_cidrs": ["127.0.0.0/8"]}"#).unwrap();
        assert_eq!(
            only_ranges.authorize(&peer(None, "127.0.0.1")),
            Decision::Allow
        );
    }

    #[test]
    fn the_admission_window_admits_and_logs_unknown_clients_then_closes() {
        let policy =
            EcpAuthz::configure(r#"{"client_systems": ["app1"], "admission_window_secs": 100}"#)
                .unwrap();
        testing::set_loaded_at_ms(1_000_000);
        testing::set_now_ms(Some(1_000_000 + 99_000));
        testing::take_logs();
        assert_eq!(
            policy.authorize(&peer(Some("newcomer"), "10.0.0.9")),
            Decision::Allow
        );
        let logs = testing::take_logs();
        assert_eq!(logs.len(), 1);
        assert_eq!(logs[0].0, LogLevel::Warn);
        assert!(
            logs[0]
                .1
                .contains("admitting unknown client system `newcomer`"),
            "{}",
            logs[0].1
        );
        assert!(
            matches!(policy.authorize(&peer(None, "10.0.0.9")), Decision::Deny(_)),
            "no cert, no admission"
        );

        testing::set_now_ms(Some(1_000_000 + 100_000));
        assert!(matches!(
            policy.authorize(&peer(Some("newcomer"), "10.0.0.9")),
            Decision::Deny(_)
        ));
        testing::set_now_ms(None);
    }

    #[test]
    fn the_admission_window_is_off_by_default() {
        let policy = EcpAuthz::configure(r#"{"client_systems": ["app1"]}"#).unwrap();
        testing::take_logs();
        assert!(matches!(
            policy.authorize(&peer(Some("newcomer"), "10.0.0.9")),
            Decision::Deny(_)
        ));
        assert!(testing::take_logs().is_empty());
    }

    #[test]
    fn bad_configs_are_rejected_with_a_reason() {
        assert!(
            EcpAuthz::configure("{}")
                .unwrap_err()
                .contains("nothing to allow")
        );
        assert!(
            EcpAuthz::configure(r#"{"source_cidrs": ["10.0.0.0/40"]}"#)
                .unwrap_err()
                .contains("10.0.0.0/40")
        );
        assert!(
            EcpAuthz::configure(r#"{"client_system": ["a"]}"#)
                .unwrap_err()
                .contains("unknown field")
        );
        assert!(EcpAuthz::configure(r#"{"client_systems_kv_key": " "}"#).is_err());
    }
}
