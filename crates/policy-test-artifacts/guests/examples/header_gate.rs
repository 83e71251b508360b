//! `request` guest: forwards requests whose `x-api-key` (or query `key=`, for load generators
//! that send no fields) matches the configured key, adding
//! `x-gate: passed` (and the caller's name from `x-caller`, if any); refuses others with 401 JSON.
//!
//! For the proxy's tests: `x-route-to: SERVICE` asks for a service override, `x-rewrite: PATH`
//! for a new path, `x-tag-response: TEXT` for an `on-response` call that adds `x-tagged: TEXT`.
//! It misbehaves on request: `x-misbehave: loop | greedy | panic` (see the crate's contract),
//! `x-misbehave: framing` answers with an edit of `content-length` (an invalid action).
//! Config: `{"key": "..."}`.

use sluice_policy_sdk::{Action, HeaderEdit, Request, RequestPolicy, request};

struct HeaderGate {
    key: String,
}

impl RequestPolicy for HeaderGate {
    fn configure(config: &str) -> Result<Self, String> {
        sluice_policy_test_guests::configure(config)?;
        let value: serde_json::Value =
            serde_json::from_str(config).map_err(|e| format!("config is not JSON: {e}"))?;
        let key = value["key"]
            .as_str()
            .ok_or("config needs a string `key`")?
            .to_owned();
        Ok(HeaderGate { key })
    }

    fn on_request(&self, req: &Request<'_>) -> Action {
        if let Some(how) = req.header("x-misbehave") {
            if how == "framing" {
                return request::forward().set_header("content-length", "0").into();
            }
            sluice_policy_test_guests::misbehave_on(&how);
        }
        let key_in_field = req.header("x-api-key").as_deref() == Some(self.key.as_str());
        let key_in_query = || {
            req.query().is_some_and(|q| {
                q.split('&')
                    .any(|kv| kv.strip_prefix("key=") == Some(&self.key))
            })
        };
        if !key_in_field && !key_in_query() {
            return request::error_reply(401, "unauthorized", "missing or wrong x-api-key");
        }
        let mut forward = request::forward()
            .set_header("x-gate", "passed")
            .remove_header("x-api-key");
        if let Some(caller) = req.header("x-caller") {
            forward = forward.set_header("x-caller-name", &caller);
        }
        if let Some(service) = req.header("x-route-to") {
            forward = forward.to_service(&service);
        }
        if let Some(path) = req.header("x-rewrite") {
            forward = forward.with_path(&path);
        }
        forward.response_context = req.header("x-tag-response");
        forward.into()
    }

    fn on_response(
        &self,
        _status: u16,
        _headers: &[(String, String)],
        context: &str,
    ) -> Vec<HeaderEdit> {
        vec![HeaderEdit::Set(("x-tagged".into(), context.into()))]
    }
}

sluice_policy_sdk::export_request!(HeaderGate);
