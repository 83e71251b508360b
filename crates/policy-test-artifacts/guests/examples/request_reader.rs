//! `request` guest that answers every request with a JSON report of what each of the request
//! resource's methods returned: proves, field by field, what a policy is shown.
//! Config: anything. Reads the field named by the request's `x-read` field (default `x-probe`).

use serde_json::json;
use sluice_policy_sdk::{Action, Request, RequestPolicy, request};

struct Reader;

impl RequestPolicy for Reader {
    fn configure(_config: &str) -> Result<Self, String> {
        Ok(Reader)
    }

    fn on_request(&self, req: &Request<'_>) -> Action {
        let name = req.header("x-read").unwrap_or_else(|| "x-probe".into());
        let peer = req.peer();
        let route = req.route();
        let report = json!({
            "method": req.method(),
            "scheme": req.scheme(),
            "host": req.host(),
            "path": req.path(),
            "query": req.query(),
            "header": req.header(&name),
            "header_values": req.header_values(&name),
            "header_bytes": req.header_bytes(&name),
            "headers": req.headers(),
            "peer": {
                "listener": peer.listener,
                "source_address": peer.source_address,
                "sni": peer.sni,
                "subject_cn": peer.client_certificate.and_then(|c| c.subject_cn),
            },
            "route": {
                "listener": route.listener,
                "name": route.name,
                "service": route.service,
                "allowed_services": route.allowed_services,
            },
        });
        request::reply(
            200,
            &[("content-type", "application/json")],
            report.to_string(),
        )
    }
}

sluice_policy_sdk::export_request!(Reader);
