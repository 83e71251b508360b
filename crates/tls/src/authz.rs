//! The native per-connection authorizer: allow-lists on identity and source address.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::ClientIdentity;

/// Allow-list rules. A connection is allowed when its source address is in `cidrs` (if any
/// are given) **and** its certificate matches one of `cns`, `sans` or `fingerprints` (if any
/// identity rule is given). An empty list allows everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    /// Subject common names, exact.
    pub cns: Vec<String>,
    /// DNS or URI SANs, exact (DNS compared case-insensitively).
    pub sans: Vec<String>,
    /// SHA-256 fingerprints, hex; `:` separators and case are ignored.
    pub fingerprints: Vec<String>,
    /// Source networks.
    pub cidrs: Vec<IpNet>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The source address is not in any allowed network.
    #[error("source address {0} is not in an allowed network")]
    Source(IpAddr),
    /// The client presented no certificate, and identity rules exist.
    #[error("no client certificate, and the allow-list names identities")]
    Anonymous,
    /// The certificate matches no identity rule.
    #[error("client certificate (CN {cn:?}, fingerprint {fingerprint}) is not on the allow-list")]
    Identity {
        /// The certificate's CN.
        cn: Option<String>,
        /// Its SHA-256 fingerprint.
        fingerprint: String,
    },
}

impl AllowList {
    /// Normalises fingerprints (lower case, no `:`); returns the list.
    pub fn normalized(mut self) -> Self {
        for f in &mut self.fingerprints {
            *f = f.replace(':', "").to_ascii_lowercase();
        }
        self
    }

    /// Whether the list has any rule at all.
    pub fn is_empty(&self) -> bool {
        self.cns.is_empty()
            && self.sans.is_empty()
            && self.fingerprints.is_empty()
            && self.cidrs.is_empty()
    }

    /// Decides one connection.
    pub fn check(&self, source: IpAddr, identity: Option<&ClientIdentity>) -> Result<(), Denied> {
        // An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d.
        let source = match source {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(source, IpAddr::V4),
            v4 => v4,
        };
        if !self.cidrs.is_empty() && !self.cidrs.iter().any(|n| n.contains(&source)) {
            return Err(Denied::Source(source));
        }
        if self.cns.is_empty() && self.sans.is_empty() && self.fingerprints.is_empty() {
            return Ok(());
        }
        let Some(id) = identity else {
            return Err(Denied::Anonymous);
        };
        let cn_ok = id
            .subject_cn
            .as_ref()
            .is_some_and(|cn| self.cns.iter().any(|c| c == cn));
        let san_ok = || {
            id.dns_sans
                .iter()
                .any(|d| self.sans.iter().any(|s| s.eq_ignore_ascii_case(d)))
                || id.uri_sans.iter().any(|u| self.sans.contains(u))
        };
        let fp_ok = || self.fingerprints.contains(&id.fingerprint_sha256);
        if cn_ok || san_ok() || fp_ok() {
            Ok(())
        } else {
            Err(Denied::Identity {
                cn: id.subject_cn.clone(),
                fingerprint: id.fingerprint_sha256.clone(),
            })
        }
    }
}

/// What a policy authorizer is told about a new connection.
#[derive(Debug, Clone, Copy)]
pub struct PeerFacts<'a> {
    /// The listener's name.
    pub listener: &'a str,
    /// The client's address.
    pub source: std::net::SocketAddr,
    /// SNI, on TLS connections that sent one.
    pub sni: Option<&'a str>,
    /// Negotiated ALPN protocol.
    pub alpn: Option<&'a [u8]>,
    /// The verified client certificate.
    pub identity: Option<&'a ClientIdentity>,
}

/// Why a [`PolicyAuthorizer`] refused a connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyDenied {
    /// The policy is not loaded, or there is no policy host: the connection is refused
    /// (fail closed).
    #[error("authz policy `{policy}` is not loaded (failing closed)")]
    Unavailable {
        /// The policy's name.
        policy: String,
    },
    /// The policy denied, or its call failed and its failure mode denies.
    #[error("policy `{policy}`: {reason}")]
    Denied {
        /// The policy's name.
        policy: String,
        /// The policy's reason (or the failure's).
        reason: String,
    },
}

/// Decides connections through a named policy (the binary supplies its Wasm `authz` policies).
pub trait PolicyAuthorizer: Send + Sync + std::fmt::Debug {
    /// `Ok` to allow; `Err` to deny. Must fail closed: a policy that cannot answer (not
    /// loaded, trapped, timed out) denies unless configured `failure_mode = "open"`.
    fn authorize(&self, policy: &str, peer: &PeerFacts<'_>) -> Result<(), PolicyDenied>;
}

/// No policies available: every policy-authorized connection is denied (fail closed).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoPolicyAuthorizer;

impl PolicyAuthorizer for NoPolicyAuthorizer {
    fn authorize(&self, policy: &str, _peer: &PeerFacts<'_>) -> Result<(), PolicyDenied> {
        Err(PolicyDenied::Unavailable {
            policy: policy.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(cn: &str, dns: &[&str], uri: &[&str], fp: &str) -> ClientIdentity {
        ClientIdentity {
            subject_cn: Some(cn.to_owned()),
            dns_sans: dns.iter().map(|s| (*s).to_owned()).collect(),
            uri_sans: uri.iter().map(|s| (*s).to_owned()).collect(),
            issuer: "CN=CA".into(),
            fingerprint_sha256: fp.to_owned(),
            not_after: String::new(),
            not_before_unix: 0,
            not_after_unix: 0,
        }
    }

    #[test]
    fn rules_combine_source_and_identity() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let list = AllowList {
            cns: vec!["app1".into()],
            sans: vec!["App2.Test".into(), "spiffe://ecp/app3".into()],
            fingerprints: vec!["AA:BB".into()],
            cidrs: vec!["10.0.0.0/8".parse().unwrap_or_else(|_| IpNet::default())],
        }
        .normalized();
        let inside = ip("10.1.2.3");
        assert_eq!(list.check(inside, Some(&id("app1", &[], &[], "x"))), Ok(()));
        assert_eq!(
            list.check(inside, Some(&id("z", &["app2.test"], &[], "x"))),
            Ok(())
        );
        assert_eq!(
            list.check(inside, Some(&id("z", &[], &["spiffe://ecp/app3"], "x"))),
            Ok(())
        );
        assert_eq!(list.check(inside, Some(&id("z", &[], &[], "aabb"))), Ok(()));
        assert_eq!(
            list.check(ip("::ffff:10.0.0.1"), Some(&id("app1", &[], &[], "x"))),
            Ok(())
        );
        assert!(matches!(
            list.check(inside, Some(&id("z", &[], &["spiffe://ecp/APP3"], "x"))),
            Err(Denied::Identity { .. })
        ));
        assert_eq!(list.check(inside, None), Err(Denied::Anonymous));
        assert_eq!(
            list.check(ip("192.168.1.1"), Some(&id("app1", &[], &[], "x"))),
            Err(Denied::Source(ip("192.168.1.1")))
        );
        let only_net = AllowList {
            cidrs: list.cidrs.clone(),
            ..AllowList::default()
        };
        assert_eq!(only_net.check(inside, None), Ok(()));
        assert!(AllowList::default().is_empty());
        assert_eq!(AllowList::default().check(ip("1.2.3.4"), None), Ok(()));
    }
}
