//! `request` guest that forwards every request unchanged without reading it: what an
//! `on-request` call costs before the policy does anything (the benchmarks' floor).
//! Config: anything.

use sluice_policy_sdk::{Action, Request, RequestPolicy, request};

struct Noop;

impl RequestPolicy for Noop {
    fn configure(_config: &str) -> Result<Self, String> {
        Ok(Noop)
    }

    fn on_request(&self, _request: &Request<'_>) -> Action {
        request::forward().into()
    }
}

sluice_policy_sdk::export_request!(Noop);
