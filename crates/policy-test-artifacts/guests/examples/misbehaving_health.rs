//! `health` guest: every member is a primary, unless its id, or the text its probe read, is
//! `loop`, `greedy` or `panic`.

use sluice_policy_sdk::{HealthPolicy, Instance, ProbeResult, Role, Up, Verdict};

struct Misbehaving;

impl HealthPolicy for Misbehaving {
    fn configure(config: &str) -> Result<Self, String> {
        sluice_policy_test_guests::configure(config).map(|()| Misbehaving)
    }

    fn evaluate(&self, instance: &Instance, probe: &ProbeResult) -> Verdict {
        sluice_policy_test_guests::misbehave_on(&instance.id);
        sluice_policy_test_guests::misbehave_on(String::from_utf8_lossy(&probe.body_prefix).trim());
        Verdict::Up(Up {
            role: Role::Primary,
            weight: None,
        })
    }
}

sluice_policy_sdk::export_health!(Misbehaving);
