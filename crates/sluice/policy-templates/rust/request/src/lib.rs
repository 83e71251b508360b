//! `{{name}}`: a Sluice `request` policy, attached to routes with `policy = "{{name}}"`.
//! Requests carrying the header `required_header` (default `authorization`) are forwarded with
//! `x-checked-by: {{name}}` added; others are answered `401` with Sluice's JSON error shape.

use serde::Deserialize;
use sluice_policy_sdk::{Action, HttpRequest, RequestPolicy, host, request};

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

    fn on_request(&self, request: &HttpRequest) -> Action {
        if request.header(&self.required_header).is_none() {
            host::info(&format!("refused {} {}", request.method, request.path));
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
    use sluice_policy_sdk::{Peer, RouteInfo};

    fn get(headers: &[(&str, &str)]) -> HttpRequest {
        HttpRequest {
            method: "GET".into(),
            scheme: "http".into(),
            host: "example.test".into(),
            path: "/".into(),
            query: None,
            headers: headers
                .iter()
                .map(|(name, value)| ((*name).into(), (*value).into()))
                .collect(),
            peer: Peer {
                listener: "web".into(),
                source_address: "127.0.0.1".into(),
                source_port: 40000,
                sni: None,
                alpn: None,
                client_certificate: None,
            },
            route: RouteInfo {
                listener: "web".into(),
                name: "api".into(),
                service: "api".into(),
                allowed_services: Vec::new(),
            },
        }
    }

    #[test]
    fn requests_without_the_header_get_401() {
        let policy = Policy::configure("{}").unwrap();
        assert!(matches!(
            policy.on_request(&get(&[])),
            Action::Reply(reply) if reply.status == 401
        ));
        assert!(matches!(
            policy.on_request(&get(&[("authorization", "Bearer x")])),
            Action::Forward(_)
        ));
    }
}
