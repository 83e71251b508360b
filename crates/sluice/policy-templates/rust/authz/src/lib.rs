//! `{{name}}`: a Sluice `authz` policy. Allows peers whose source address lies in `allowed`
//! (default: loopback) and, when `client_cns` is set, that present a verified client
//! certificate with one of those subject CNs. Everything else is denied with a reason.

use std::net::IpAddr;

use serde::Deserialize;
use sluice_policy_sdk::cidr::Cidr;
use sluice_policy_sdk::{AuthzPolicy, Decision, Peer, host};

/// `[[policy]] config`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// Source address ranges allowed, CIDR notation.
    allowed: Vec<String>,
    /// When not empty, the client certificate's subject CN must be one of these.
    client_cns: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            allowed: vec!["127.0.0.0/8".into(), "::1/128".into()],
            client_cns: Vec::new(),
        }
    }
}

/// The configured policy, built once per instance by `configure`.
pub struct Policy {
    ranges: Vec<Cidr>,
    client_cns: Vec<String>,
}

impl AuthzPolicy for Policy {
    fn configure(config: &str) -> Result<Self, String> {
        let config: Config =
            serde_json::from_str(config).map_err(|e| format!("invalid config: {e}"))?;
        let ranges = config
            .allowed
            .iter()
            .map(|range| Cidr::parse(range).map_err(|e| format!("allowed: {range:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        host::info(&format!(
            "configured: {} address ranges, {} client CNs",
            ranges.len(),
            config.client_cns.len()
        ));
        Ok(Policy {
            ranges,
            client_cns: config.client_cns,
        })
    }

    fn authorize(&self, peer: &Peer) -> Decision {
        let Ok(address) = peer.source_address.parse::<IpAddr>() else {
            return Decision::Deny(format!("unparsable source address {}", peer.source_address));
        };
        if !self.ranges.iter().any(|range| range.contains(address)) {
            host::info(&format!("denied {address}: not in an allowed range"));
            return Decision::Deny(format!("source {address} is not allowed"));
        }
        if self.client_cns.is_empty() {
            return Decision::Allow;
        }
        // `subject_cn` is an `Option<String>`: a certificate need not have a CN.
        let cn = peer
            .client_certificate
            .as_ref()
            .and_then(|certificate| certificate.subject_cn.as_deref());
        match cn {
            Some(cn) if self.client_cns.iter().any(|allowed| allowed == cn) => Decision::Allow,
            Some(cn) => Decision::Deny(format!("client certificate CN {cn:?} is not allowed")),
            None => Decision::Deny("no client certificate with a subject CN".into()),
        }
    }
}

sluice_policy_sdk::export_authz!(Policy);

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_policy_sdk::ClientCertificate;

    fn peer(address: &str, cn: Option<&str>) -> Peer {
        Peer {
            listener: "main".into(),
            source_address: address.into(),
            source_port: 40000,
            sni: None,
            alpn: None,
            client_certificate: cn.map(|cn| ClientCertificate {
                subject_cn: Some(cn.into()),
                dns_sans: Vec::new(),
                uri_sans: Vec::new(),
                issuer: "CN=test CA".into(),
                sha256_fingerprint: "00".repeat(32),
                not_before: 0,
                not_after: i64::MAX,
            }),
        }
    }

    #[test]
    fn loopback_is_allowed_by_default() {
        let policy = Policy::configure("{}").unwrap();
        assert_eq!(policy.authorize(&peer("127.0.0.1", None)), Decision::Allow);
        assert!(matches!(
            policy.authorize(&peer("192.0.2.1", None)),
            Decision::Deny(_)
        ));
    }

    #[test]
    fn client_cns_require_a_matching_certificate() {
        let policy = Policy::configure(r#"{"client_cns": ["app1"]}"#).unwrap();
        assert_eq!(
            policy.authorize(&peer("127.0.0.1", Some("app1"))),
            Decision::Allow
        );
        assert!(matches!(
            policy.authorize(&peer("127.0.0.1", Some("app2"))),
            Decision::Deny(_)
        ));
        assert!(matches!(
            policy.authorize(&peer("127.0.0.1", None)),
            Decision::Deny(_)
        ));
    }
}
