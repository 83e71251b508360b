//! Calls of `request` policies: per HTTP request, on the routes that name them.
//!
//! What a guest answers is checked here before the proxy acts on it, so that a policy can break
//! neither the framing of the exchange (no `content-length`, `transfer-encoding` or hop-by-hop
//! fields, no CR/LF in a value) nor the route's bounds (a service override must be one of the
//! route's allowed services). An answer that fails a check is a failed call: the policy's
//! failure mode decides what happens to the request.

use std::sync::Arc;
use std::time::Instant;

use sluice_config::{FailureMode, PolicyConfig};

use wasmtime::component::Resource;

use crate::answer_memory::AnswerMemory;
use crate::bindings::types::{Action, Forward, HeaderEdit, HttpRequest, Reply, RouteInfo};
use crate::error::CallError;
use crate::policy::{PolicySlot, WorldBindings, truncate};
use crate::reads::ReadLog;
use crate::request_view::RequestView;

/// Largest body a `reply` may carry.
pub const MAX_REPLY_BODY: usize = 64 << 10;
/// Largest `response-context` kept between `on-request` and `on-response`.
pub const MAX_RESPONSE_CONTEXT: usize = 4 << 10;
/// Most header edits (or reply fields) one answer may list.
pub const MAX_HEADER_EDITS: usize = 100;
/// Longest path a `forward` may rewrite to.
const MAX_PATH: usize = 8 << 10;

/// Fields a policy may not set or remove: they frame the exchange or belong to one hop, and the
/// proxy owns them.
const PROXY_OWNED_FIELDS: [&str; 8] = [
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Calls a `request` policy. Cheap to clone; stays valid across reloads (it follows the slot).
#[derive(Clone)]
pub struct RequestHandle(pub(crate) std::sync::Arc<PolicySlot>);

impl std::fmt::Debug for RequestHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RequestHandle")
            .field(&&*self.0.name)
            .finish()
    }
}

/// What became of one `on-request` call.
#[derive(Debug)]
pub enum RequestOutcome {
    /// The policy answered, and the answer passed the checks.
    Decided(Action),
    /// The call failed (or its answer was invalid); `open` tells whether the policy's failure
    /// mode forwards the request unchanged (`true`) or refuses it (`false`, the default).
    Failed {
        /// Why.
        error: CallError,
        /// `failure_mode = "open"`.
        open: bool,
    },
}

impl RequestHandle {
    /// Asks the policy what to do with `request`. Never panics. The view is lent to the guest
    /// for the call and handed back as it was, so the caller may reuse its buffers.
    pub fn on_request_view(&self, request: &mut RequestView) -> RequestOutcome {
        self.decide(request, None)
    }

    /// [`RequestHandle::on_request_view`], giving again an answer in `memory` when the policy
    /// let the host reuse it (`cache-answer`) and `request` agrees with the one it answered on
    /// every part that call read. Such an answer is checked against `request`'s route again;
    /// the policy is not called, and the reuse is counted in
    /// `sluice_policy_answers_reused_total` instead of its calls.
    pub fn on_request_remembered(
        &self,
        request: &mut RequestView,
        memory: &mut AnswerMemory,
    ) -> RequestOutcome {
        let current = self.0.current.load();
        let Some(version) = current.as_ref() else {
            return self.decide(request, None);
        };
        let kv = &*self.0.engine.kv;
        // Read before the call, so that a KV change during it keys its answer to before.
        let kv_generation = kv.generation();
        let now = Instant::now();
        let recalled = memory
            .of(&self.0, version)
            .recall(request, kv, kv_generation, now)
            .and_then(|action| checked_action(action, &request.route).ok());
        if let Some(action) = recalled {
            memory.reused += 1;
            self.0.record_reuse();
            return RequestOutcome::Decided(action);
        }
        let mut reads = std::mem::take(&mut memory.reads);
        let outcome = self.decide(request, Some(&mut reads));
        if let RequestOutcome::Decided(action) = &outcome {
            memory
                .of(&self.0, version)
                .remember(&reads, request, kv_generation, action, now);
        }
        memory.reads = reads;
        outcome
    }

    /// Calls the policy; hands what the call read to `reads` when asked.
    fn decide(&self, request: &mut RequestView, reads: Option<&mut ReadLog>) -> RequestOutcome {
        let result = self
            .0
            .call(request.size(), |bindings, store| match bindings {
                WorldBindings::Request(b) => {
                    std::mem::swap(&mut store.data_mut().request, request);
                    // The one request lent at a time: the resource's methods read the store's view.
                    let answer = b.call_on_request(&mut *store, Resource::new_borrow(0));
                    std::mem::swap(&mut store.data_mut().request, request);
                    if let Some(reads) = reads {
                        std::mem::swap(&mut store.data_mut().reads, reads);
                    }
                    Some(answer)
                }
                WorldBindings::RequestCopied(b) => {
                    Some(b.call_on_request(store, &request.to_http_request()))
                }
                _ => None,
            });
        match result.and_then(|action| checked_action(action, &request.route)) {
            Ok(action) => RequestOutcome::Decided(action),
            Err(error) => RequestOutcome::Failed {
                error,
                open: self.0.failure_mode() == FailureMode::Open,
            },
        }
    }

    /// [`RequestHandle::on_request_view`] on a whole request (tests, `policy test` cases).
    pub fn on_request(&self, request: &HttpRequest) -> RequestOutcome {
        let mut view = RequestView::default();
        view.copy_from(request);
        self.on_request_view(&mut view)
    }

    /// Asks the policy for edits of a response head, after `on-request` returned a
    /// `response-context`. A failed call edits nothing (the response is already on its way).
    pub fn on_response(
        &self,
        status: u16,
        headers: &[(String, String)],
        context: &str,
    ) -> Result<Vec<HeaderEdit>, CallError> {
        let size = 64 + context.len() + fields_size(headers);
        let edits = self.0.call(size, |bindings, store| match bindings {
            WorldBindings::Request(b) => Some(b.call_on_response(store, status, headers, context)),
            WorldBindings::RequestCopied(b) => {
                Some(b.call_on_response(store, status, headers, context))
            }
            _ => None,
        })?;
        check_edits(&edits)?;
        Ok(edits)
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Which request fields to show the policy: its `request_fields`, as configured for the
    /// version that answers now.
    pub fn field_filter(&self) -> FieldFilter {
        let config = match self.0.current.load().as_ref() {
            Some(version) => Arc::clone(&version.config),
            None => self.0.desired.load_full(),
        };
        FieldFilter(config)
    }
}

/// The request fields a `request` policy is shown (`[[policy]] request_fields`; all without).
#[derive(Debug, Clone)]
pub struct FieldFilter(Arc<PolicyConfig>);

impl FieldFilter {
    /// Whether the field called `name` (any case) is shown.
    pub fn shows(&self, name: &[u8]) -> bool {
        self.0.request_fields.as_ref().is_none_or(|names| {
            names
                .iter()
                .any(|shown| shown.as_bytes().eq_ignore_ascii_case(name))
        })
    }
}

fn checked_action(action: Action, route: &RouteInfo) -> Result<Action, CallError> {
    match &action {
        Action::Forward(forward) => check_forward(forward, route)?,
        Action::Reply(reply) => check_reply(reply)?,
    }
    Ok(action)
}

fn invalid(what: String) -> CallError {
    CallError::InvalidAnswer(truncate(what))
}

fn check_forward(forward: &Forward, route: &RouteInfo) -> Result<(), CallError> {
    check_edits(&forward.headers)?;
    if let Some(path) = &forward.path {
        check_path(path)?;
    }
    if let Some(service) = &forward.service {
        let allowed = &route.allowed_services;
        if *service != route.service && !allowed.contains(service) {
            return Err(invalid(format!(
                "service `{service}` is not among the route's policy_services {allowed:?}"
            )));
        }
    }
    match &forward.response_context {
        Some(context) if context.len() > MAX_RESPONSE_CONTEXT => Err(invalid(format!(
            "response-context of {} bytes exceeds {MAX_RESPONSE_CONTEXT}",
            context.len()
        ))),
        _ => Ok(()),
    }
}

fn check_reply(reply: &Reply) -> Result<(), CallError> {
    if !(200..=599).contains(&reply.status) {
        return Err(invalid(format!(
            "reply status {} is outside 200–599",
            reply.status
        )));
    }
    if reply.body.len() > MAX_REPLY_BODY {
        return Err(invalid(format!(
            "reply body of {} bytes exceeds {MAX_REPLY_BODY}",
            reply.body.len()
        )));
    }
    if reply.headers.len() > MAX_HEADER_EDITS {
        return Err(invalid(format!(
            "{} reply fields exceed {MAX_HEADER_EDITS}",
            reply.headers.len()
        )));
    }
    reply
        .headers
        .iter()
        .try_for_each(|(name, value)| check_field(name, Some(value)))
}

fn check_edits(edits: &[HeaderEdit]) -> Result<(), CallError> {
    if edits.len() > MAX_HEADER_EDITS {
        return Err(invalid(format!(
            "{} header edits exceed {MAX_HEADER_EDITS}",
            edits.len()
        )));
    }
    edits.iter().try_for_each(|edit| match edit {
        HeaderEdit::Set((name, value)) | HeaderEdit::Append((name, value)) => {
            check_field(name, Some(value))
        }
        HeaderEdit::Remove(name) => check_field(name, None),
    })
}

/// A field name must be an HTTP token the proxy does not own; a value must not end the line.
fn check_field(name: &str, value: Option<&str>) -> Result<(), CallError> {
    let token = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token {
        return Err(invalid(format!("invalid header name {name:?}")));
    }
    if PROXY_OWNED_FIELDS
        .iter()
        .any(|owned| owned.eq_ignore_ascii_case(name))
    {
        return Err(invalid(format!(
            "header `{name}` is the proxy's to set (framing or hop-by-hop)"
        )));
    }
    match value {
        Some(v) if v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) => Err(invalid(format!(
            "the value of header `{name}` contains CR, LF or NUL"
        ))),
        _ => Ok(()),
    }
}

fn check_path(path: &str) -> Result<(), CallError> {
    let printable = path.bytes().all(|b| b.is_ascii_graphic());
    if !path.starts_with('/') || !printable || path.len() > MAX_PATH {
        return Err(invalid(format!(
            "path {:?} must start with '/', hold no spaces or control bytes and fit {MAX_PATH} bytes",
            path.chars().take(80).collect::<String>()
        )));
    }
    Ok(())
}

fn fields_size(fields: &[(String, String)]) -> usize {
    fields.iter().map(|(k, v)| k.len() + v.len() + 16).sum()
}
