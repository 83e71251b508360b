//! `{{name}}`: a Sluice `request` policy, attached to routes with `policy = "{{name}}"`.
//! Requests carrying the header `required_header` (default `authorization`) are forwarded with
//! `x-checked-by: {{name}}` added; others are answered `401` with Sluice's JSON error shape.

use serde::Deserialize;
use sluice_policy_sdk::{Action, Request, RequestPolicy, host, request};

/// `[[policy]] config`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// The header every request must carry (lower case).
    required_header: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            required_header: "authorization".into(),
        }
    }
}

/// The configured policy, built once per instance by `configure`.
pub struct Policy {
    required_header: String,
}

impl RequestPolicy for Policy {
    fn configure(config: &str) -> Result<Self, String> {
        let config: Config =
            serde_json::from_str(config).map_err(|e| format!("invalid config: {e}"))?;
        if config.required_header.is_empty() {
            return Err("required_header is empty".into());
        }
        host::info(&format!(
            "configured: requests need `{}`",
            config.required_header
        ));
        Ok(Policy {
            // Header names reach the policy in lower case.
            required_header: config.required_header.to_ascii_lowercase(),
        })
    }

    // Each read of the request (`header`, `path`, ...) asks the host for that part only.
    fn on_request(&self, request: &Request<'_>) -> Action {
        if request.header(&self.required_header).is_none() {
            host::info(&format!("refused {} {}", request.method(), request.path()));
            return request::error_reply(
                401,
                "unauthorized",
                &format!("missing {}", self.required_header),
            );
        }
        request::forward()
            .set_header("x-checked-by", "{{name}}")
            .into()
    }
}

sluice_policy_sdk::export_request!(Policy);

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_policy_sdk::testing::http_request;

    #[test]
    fn requests_without_the_header_get_401() {
        let policy = Policy::configure("{}").unwrap();
        let bare = http_request("/", &[]);
        assert!(matches!(
            policy.on_request(&Request::from(&bare)),
            Action::Reply(reply) if reply.status == 401
        ));
        let signed = http_request("/", &[("authorization", "Bearer x")]);
        assert!(matches!(
            policy.on_request(&Request::from(&signed)),
            Action::Forward(_)
        ));
    }
}
