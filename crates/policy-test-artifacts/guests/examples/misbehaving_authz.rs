//! `authz` guest: allows everyone, unless the listener is named `loop`, `greedy` or `panic`.

use sluice_policy_sdk::{AuthzPolicy, Decision, Peer};

struct Misbehaving;

impl AuthzPolicy for Misbehaving {
    fn configure(config: &str) -> Result<Self, String> {
        sluice_policy_test_guests::configure(config).map(|()| Misbehaving)
    }

    fn authorize(&self, peer: &Peer) -> Decision {
        sluice_policy_test_guests::misbehave_on(&peer.listener);
        Decision::Allow
    }
}

sluice_policy_sdk::export_authz!(Misbehaving);
