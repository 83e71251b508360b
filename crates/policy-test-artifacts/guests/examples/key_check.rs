//! `request` guest: the header check of the policy guide (docs/policy-authoring.md, "A request
//! policy"), as an author writes it from the docs. A request whose `x-api-key` matches the
//! configured key is forwarded with the key removed and `x-authenticated: api-key` set; others
//! are answered 401 with Sluice's JSON error shape. Config: `{"api_key": "..."}`. The benchmarks'
//! header check.

use sluice_policy_sdk::{Action, Request, RequestPolicy, request};

struct ApiKey {
    key: String,
}

impl RequestPolicy for ApiKey {
    fn configure(config: &str) -> Result<Self, String> {
        let v: serde_json::Value = serde_json::from_str(config).map_err(|e| e.to_string())?;
        let key = v["api_key"]
            .as_str()
            .ok_or("config needs a string `api_key`")?
            .to_owned();
        Ok(ApiKey { key })
    }

    fn on_request(&self, req: &Request<'_>) -> Action {
        if req.header("x-api-key").as_deref() != Some(self.key.as_str()) {
            return request::error_reply(401, "unauthorized", "missing or wrong x-api-key");
        }
        request::forward()
            .remove_header("x-api-key")
            .set_header("x-authenticated", "api-key")
            .into()
    }
}

sluice_policy_sdk::export_request!(ApiKey);
