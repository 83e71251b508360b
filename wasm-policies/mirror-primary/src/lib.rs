//! `mirror-primary`: a health policy that reads a mirror member's status page.
//!
//! Contract: an HTTP probe answering the primary status and body (default `200` + `SUCCESS`)
//! is up as **primary**; one answering the backup status and body (default `503` + `FAILED`) is
//! up as **backup**; anything else — another status, another body, a timeout, a refused or
//! reset connection, a non-HTTP probe — is **down**, with the reason. This is what
//! `/csp/mirror_status.cxw` answers on an IRIS mirror member (seed 001). Bodies match when the
//! body, with surrounding whitespace trimmed, starts with the expected text (an empty expected
//! text matches any body).

use serde::Deserialize;
use sluice_policy_sdk::{
    HealthPolicy, Instance, ProbeErrorKind, ProbeKind, ProbeResult, Role, Up, Verdict,
};

/// `[[policy]] config` of this policy; every field is optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub primary_status: u16,
    pub primary_body: String,
    pub backup_status: u16,
    pub backup_body: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            primary_status: 200,
            primary_body: "SUCCESS".into(),
            backup_status: 503,
            backup_body: "FAILED".into(),
        }
    }
}

/// The configured policy.
#[derive(Debug, Clone)]
pub struct MirrorPrimary {
    config: Config,
}

impl HealthPolicy for MirrorPrimary {
    fn configure(config: &str) -> Result<Self, String> {
        let config: Config = if config.trim().is_empty() {
            Config::default()
        } else {
            serde_json::from_str(config)
                .map_err(|e| format!("invalid mirror-primary config: {e}"))?
        };
        if config.primary_status == config.backup_status
            && config.primary_body == config.backup_body
        {
            return Err(
                "primary and backup answers are identical: a member could never be told apart"
                    .into(),
            );
        }
        Ok(MirrorPrimary { config })
    }

    fn evaluate(&self, _instance: &Instance, probe: &ProbeResult) -> Verdict {
        if let Some(error) = &probe.error {
            let what = match error.kind {
                ProbeErrorKind::Timeout => "timed out",
                ProbeErrorKind::Refused => "connection refused",
                ProbeErrorKind::Reset => "connection reset",
                ProbeErrorKind::Other => "probe failed",
            };
            return Verdict::Down(format!("{what}: {}", error.message));
        }
        if probe.kind != ProbeKind::Http {
            return Verdict::Down(
                "mirror-primary needs an HTTP probe of the mirror status page".into(),
            );
        }
        let Some(status) = probe.status else {
            return Verdict::Down("HTTP probe carried no status".into());
        };
        let body = String::from_utf8_lossy(&probe.body_prefix);
        let body = body.trim();
        let c = &self.config;
        if status == c.primary_status && body.starts_with(c.primary_body.as_str()) {
            Verdict::Up(Up {
                role: Role::Primary,
                weight: None,
            })
        } else if status == c.backup_status && body.starts_with(c.backup_body.as_str()) {
            Verdict::Up(Up {
                role: Role::Backup,
                weight: None,
            })
        } else {
            let shown: String = body.chars().take(64).collect();
            Verdict::Down(format!(
                "not a mirror member's answer: status {status}, body {shown:?}"
            ))
        }
    }
}

sluice_policy_sdk::export_health!(crate::MirrorPrimary);

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_policy_sdk::{HealthStatus, ProbeError};

    fn member() -> Instance {
        Instance {
            id: "ap1a".into(),
            service: "ap1".into(),
            address: "127.0.0.1".into(),
            port: 52773,
            tags: vec![],
            metadata: vec![],
            health: HealthStatus::Unknown,
        }
    }

    fn http(status: u16, body: &str) -> ProbeResult {
        ProbeResult {
            kind: ProbeKind::Http,
            status: Some(status),
            headers: vec![("content-type".into(), "text/plain".into())],
            body_prefix: body.as_bytes().to_vec(),
            latency_us: 900,
            error: None,
        }
    }

    fn failed(kind: ProbeErrorKind) -> ProbeResult {
        ProbeResult {
            kind: ProbeKind::Http,
            status: None,
            headers: vec![],
            body_prefix: vec![],
            latency_us: 5_000_000,
            error: Some(ProbeError {
                kind,
                message: "after 5s".into(),
            }),
        }
    }

    fn default_policy() -> MirrorPrimary {
        MirrorPrimary::configure("{}").unwrap()
    }

    #[test]
    fn success_is_primary_and_failed_is_backup() {
        let policy = default_policy();
        assert_eq!(
            policy.evaluate(&member(), &http(200, "SUCCESS\r\n")),
            Verdict::Up(Up {
                role: Role::Primary,
                weight: None
            })
        );
        assert_eq!(
            policy.evaluate(&member(), &http(503, "FAILED")),
            Verdict::Up(Up {
                role: Role::Backup,
                weight: None
            })
        );
    }

    #[test]
    fn timeouts_and_unexpected_answers_are_down_with_a_reason() {
        let policy = default_policy();
        let Verdict::Down(reason) = policy.evaluate(&member(), &failed(ProbeErrorKind::Timeout))
        else {
            panic!("a timeout must be down");
        };
        assert_eq!(reason, "timed out: after 5s");
        let Verdict::Down(reason) = policy.evaluate(&member(), &http(500, "Internal error")) else {
            panic!("a 500 must be down");
        };
        assert!(reason.contains("status 500"), "{reason}");
        assert!(matches!(
            policy.evaluate(&member(), &http(200, "FAILED")),
            Verdict::Down(_)
        ));
        assert!(matches!(
            policy.evaluate(&member(), &http(503, "SUCCESS")),
            Verdict::Down(_)
        ));
        assert!(matches!(
            policy.evaluate(&member(), &failed(ProbeErrorKind::Refused)),
            Verdict::Down(_)
        ));
    }

    #[test]
    fn non_http_probes_are_down() {
        let mut probe = http(200, "SUCCESS");
        probe.kind = ProbeKind::Tcp;
        assert!(matches!(
            default_policy().evaluate(&member(), &probe),
            Verdict::Down(_)
        ));
    }

    #[test]
    fn answers_are_configurable() {
        let policy = MirrorPrimary::configure(
            r#"{"primary_status": 200, "primary_body": "PRIMARY", "backup_status": 200, "backup_body": "BACKUP"}"#,
        )
        .unwrap();
        assert_eq!(
            policy.evaluate(&member(), &http(200, "PRIMARY")),
            Verdict::Up(Up {
                role: Role::Primary,
                weight: None
            })
        );
        assert_eq!(
            policy.evaluate(&member(), &http(200, "BACKUP")),
            Verdict::Up(Up {
                role: Role::Backup,
                weight: None
            })
        );
        assert!(matches!(
            policy.evaluate(&member(), &http(200, "SUCCESS")),
            Verdict::Down(_)
        ));
    }

    #[test]
    fn bad_configs_are_rejected() {
        assert!(
            MirrorPrimary::configure(r#"{"primary_statuss": 200}"#)
                .unwrap_err()
                .contains("unknown field")
        );
        assert!(MirrorPrimary::configure("not json").is_err());
        let same = r#"{"primary_status": 200, "primary_body": "X", "backup_status": 200, "backup_body": "X"}"#;
        assert!(
            MirrorPrimary::configure(same)
                .unwrap_err()
                .contains("identical")
        );
    }
}
