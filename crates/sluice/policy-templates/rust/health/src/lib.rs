//! `{{name}}`: a Sluice `health` policy. A probe answering one of `up_statuses` (default: 200)
//! is up; anything else — another status, a timeout, a refused connection — is down, with the
//! reason shown in the admin API.

use serde::Deserialize;
use sluice_policy_sdk::{HealthPolicy, Instance, ProbeResult, Role, Up, Verdict, host};

/// `[[policy]] config`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// Statuses (HTTP status, or a command's exit code) that mean "up".
    up_statuses: Vec<u16>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            up_statuses: vec![200],
        }
    }
}

/// The configured policy, built once per instance by `configure`.
pub struct Policy {
    up_statuses: Vec<u16>,
}

impl HealthPolicy for Policy {
    fn configure(config: &str) -> Result<Self, String> {
        let config: Config =
            serde_json::from_str(config).map_err(|e| format!("invalid config: {e}"))?;
        if config.up_statuses.is_empty() {
            return Err("up_statuses is empty: nothing could ever be up".into());
        }
        host::info(&format!("configured: up on {:?}", config.up_statuses));
        Ok(Policy {
            up_statuses: config.up_statuses,
        })
    }

    fn evaluate(&self, instance: &Instance, probe: &ProbeResult) -> Verdict {
        if let Some(error) = &probe.error {
            return Verdict::Down(format!("probe failed: {}", error.message));
        }
        match probe.status {
            Some(status) if self.up_statuses.contains(&status) => Verdict::Up(Up {
                role: Role::Any,
                weight: None,
            }),
            Some(status) => {
                host::info(&format!("{} answered {status}", instance.id));
                Verdict::Down(format!("status {status}"))
            }
            None => Verdict::Down("the probe carried no status".into()),
        }
    }
}

sluice_policy_sdk::export_health!(Policy);

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_policy_sdk::{HealthStatus, ProbeKind};

    fn probe(status: u16) -> ProbeResult {
        ProbeResult {
            kind: ProbeKind::Http,
            status: Some(status),
            headers: Vec::new(),
            body_prefix: b"ok".to_vec(),
            latency_us: 900,
            error: None,
        }
    }

    fn instance() -> Instance {
        Instance {
            id: "web-1".into(),
            service: "web".into(),
            address: "127.0.0.1".into(),
            port: 8080,
            tags: Vec::new(),
            metadata: Vec::new(),
            health: HealthStatus::Unknown,
        }
    }

    #[test]
    fn status_200_is_up_and_others_down() {
        let policy = Policy::configure("{}").unwrap();
        assert!(matches!(
            policy.evaluate(&instance(), &probe(200)),
            Verdict::Up(_)
        ));
        assert_eq!(
            policy.evaluate(&instance(), &probe(503)),
            Verdict::Down("status 503".into())
        );
    }
}
