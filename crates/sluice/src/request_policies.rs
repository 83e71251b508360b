//! `[[route]] policy`: the proxy's [`RequestPolicies`] answered by the Wasm `request` policies —
//! the request as the contract's `http-request`, the policy's answer as the proxy's.

use bytes::Bytes;
use sluice_policy_host::types::{self, Action, HeaderEdit};
use sluice_policy_host::{FieldFilter, RequestOutcome};
use sluice_proxy::{FieldEdit, ForwardEdits, PolicyAnswer, PolicyRequest, RequestPolicies};

use crate::policies::{Policies, wasm_peer};

impl RequestPolicies for Policies {
    /// Fails closed when the policy is not loaded; applies its failure mode when a call fails.
    fn on_request(&self, policy: &str, request: &PolicyRequest<'_>) -> PolicyAnswer {
        let Some(handle) = self.current().and_then(|h| h.request(policy)) else {
            return PolicyAnswer::Refuse {
                error: "not loaded".into(),
            };
        };
        match handle.on_request(&http_request(request, &handle.field_filter())) {
            RequestOutcome::Decided(action) => answer(action),
            RequestOutcome::Failed { error, open: true } => {
                tracing::warn!(policy, %error, "request policy call failed; failure_mode = open: forwarding unchanged");
                PolicyAnswer::Forward(ForwardEdits::default())
            }
            RequestOutcome::Failed { error, open: false } => PolicyAnswer::Refuse {
                error: error.to_string(),
            },
        }
    }

    fn on_response(
        &self,
        policy: &str,
        status: u16,
        headers: &[(String, String)],
        context: &str,
    ) -> Vec<FieldEdit> {
        let Some(handle) = self.current().and_then(|h| h.request(policy)) else {
            return Vec::new();
        };
        match handle.on_response(status, headers, context) {
            Ok(edits) => edits.into_iter().map(field_edit).collect(),
            Err(error) => {
                tracing::warn!(policy, %error, "on-response failed; the response goes on unedited");
                Vec::new()
            }
        }
    }
}

/// The contract's view of a request: text fields, non-UTF-8 bytes replaced (documented in
/// the WIT), only the fields the policy's `request_fields` name.
fn http_request(request: &PolicyRequest<'_>, shown: &FieldFilter) -> types::HttpRequest {
    // Checked first as whole UTF-8 (fast for the usual ASCII); replaced only when it is not.
    let text = |b: &[u8]| match std::str::from_utf8(b) {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(b).into_owned(),
    };
    types::HttpRequest {
        method: request.method().to_owned(),
        scheme: request.scheme.to_owned(),
        host: request.host().map(text).unwrap_or_default(),
        path: request.path().to_owned(),
        query: request.query().map(str::to_owned),
        headers: request
            .fields()
            .filter(|(name, _)| shown.shows(name))
            .map(|(name, value)| {
                let mut name = text(name);
                name.make_ascii_lowercase();
                (name, text(value))
            })
            .collect(),
        peer: wasm_peer(&request.peer),
        route: types::RouteInfo {
            listener: request.peer.listener.to_owned(),
            name: request.route.to_owned(),
            service: request.service.to_owned(),
            allowed_services: request.allowed_services.to_vec(),
        },
    }
}

fn answer(action: Action) -> PolicyAnswer {
    match action {
        Action::Forward(f) => PolicyAnswer::Forward(ForwardEdits {
            headers: f.headers.into_iter().map(field_edit).collect(),
            path: f.path,
            service: f.service,
            response_context: f.response_context,
        }),
        Action::Reply(r) => PolicyAnswer::Reply {
            status: r.status,
            headers: r.headers,
            body: Bytes::from(r.body),
        },
    }
}

fn field_edit(edit: HeaderEdit) -> FieldEdit {
    match edit {
        HeaderEdit::Set((name, value)) => FieldEdit::Set(name, value),
        HeaderEdit::Append((name, value)) => FieldEdit::Append(name, value),
        HeaderEdit::Remove(name) => FieldEdit::Remove(name),
    }
}
