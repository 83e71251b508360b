//! Routes with a `request` policy (`[[route]] policy = NAME`): what the policy is shown of a
//! request, what it may answer, and how an answer changes the request.
//!
//! The proxy does not run policies itself: it asks a [`RequestPolicies`] (the binary supplies
//! its Wasm policies), which answers with plain data. Routes without a policy never reach this
//! module. A policy that cannot answer is refused closed with `503` (`policy_failed`) unless it
//! is configured open, in which case the request goes on unchanged.

use std::sync::Arc;

use bytes::Bytes;
use sluice_codec::request::{FieldEdit, RequestHead};
use sluice_config::RouteConfig;

use crate::error::{ProxyError, ProxyErrorKind};
use crate::upstream::Service;

/// What a `request` policy is shown of one request.
#[derive(Debug)]
pub struct PolicyRequest<'a> {
    /// The request head as received (before the route's strip/prepend).
    pub(crate) head: &'a RequestHead,
    /// `http` or `https`: how the client reached Sluice.
    pub scheme: &'static str,
    /// The connection the request came on.
    pub peer: sluice_tls::PeerFacts<'a>,
    /// The route's name.
    pub route: &'a str,
    /// The route's service.
    pub service: &'a str,
    /// Services the policy may pick instead (`policy_services`).
    pub allowed_services: &'a [String],
}

impl PolicyRequest<'_> {
    /// `GET`, `POST`, ...
    pub fn method(&self) -> &str {
        self.head.method.as_str()
    }

    /// The `Host` field, the host of an absolute-form target, or `:authority`.
    pub fn host(&self) -> Option<&[u8]> {
        self.head.host()
    }

    /// The path, without the query.
    pub fn path(&self) -> &str {
        self.head.path()
    }

    /// The query, without `?`.
    pub fn query(&self) -> Option<&str> {
        self.head.query()
    }

    /// The fields (name, value) in the order received.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let buf = self.head.buffer();
        self.head
            .field_list()
            .iter()
            .map(move |f| (f.name.get(buf), f.value.get(buf)))
    }
}

/// A `request` policy's answer, checked by the policy host before it gets here.
#[derive(Debug)]
pub enum PolicyAnswer {
    /// Send the request on, changed as listed.
    Forward(ForwardEdits),
    /// Answer the request without forwarding it.
    Reply {
        /// 200–599.
        status: u16,
        /// Field lines of the answer.
        headers: Vec<(String, String)>,
        /// At most 64 KiB.
        body: Bytes,
    },
    /// The policy could not answer and fails closed: `503 policy_failed`.
    Refuse {
        /// What went wrong (logged; the client sees the policy's name only).
        error: String,
    },
}

/// How a forwarded request changes.
#[derive(Debug, Default)]
pub struct ForwardEdits {
    /// Field edits, in order.
    pub headers: Vec<FieldEdit>,
    /// A new path (and query), before the route's strip/prepend.
    pub path: Option<String>,
    /// One of the route's `policy_services` to send to instead.
    pub service: Option<String>,
    /// When set, the response head is shown to the policy's `on-response` with this text.
    pub response_context: Option<String>,
}

/// The `request` policies of the process (the binary's Wasm policies).
pub trait RequestPolicies: Send + Sync + std::fmt::Debug {
    /// What `policy` makes of `request`. Never blocks on I/O; bounded by the policy's deadline.
    fn on_request(&self, policy: &str, request: &PolicyRequest<'_>) -> PolicyAnswer;
    /// Edits of a response head, for a request whose answer carried a `response_context`. A
    /// failed call edits nothing.
    fn on_response(
        &self,
        policy: &str,
        status: u16,
        headers: &[(String, String)],
        context: &str,
    ) -> Vec<FieldEdit>;
}

/// No policies available: every request on a route with a policy is refused (fail closed).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoRequestPolicies;

impl RequestPolicies for NoRequestPolicies {
    fn on_request(&self, policy: &str, _request: &PolicyRequest<'_>) -> PolicyAnswer {
        PolicyAnswer::Refuse {
            error: format!("request policy `{policy}` is not available"),
        }
    }

    fn on_response(&self, _: &str, _: u16, _: &[(String, String)], _: &str) -> Vec<FieldEdit> {
        Vec::new()
    }
}

/// A route's policy: its name, who runs it, and the services it may pick.
#[derive(Debug)]
pub(crate) struct RoutePolicy {
    pub(crate) name: Arc<str>,
    pub(crate) policies: Arc<dyn RequestPolicies>,
    /// `policy_services` by name, in config order (names for the policy, services to send to).
    pub(crate) allowed_names: Vec<String>,
    allowed: Vec<Arc<Service>>,
}

impl RoutePolicy {
    /// The policy of `rc`, if it names one; `services` are the services being applied.
    pub(crate) fn of(
        rc: &RouteConfig,
        services: &std::collections::HashMap<String, Arc<Service>>,
        policies: &Arc<dyn RequestPolicies>,
    ) -> Option<Self> {
        let name = rc.policy.as_deref()?;
        let (allowed_names, allowed) = rc
            .policy_services
            .iter()
            .filter_map(|s| Some((s.clone(), Arc::clone(services.get(s)?))))
            .unzip();
        Some(RoutePolicy {
            name: name.into(),
            policies: Arc::clone(policies),
            allowed_names,
            allowed,
        })
    }

    /// The allowed service called `name`.
    pub(crate) fn service(&self, name: &str) -> Option<&Arc<Service>> {
        self.allowed_names
            .iter()
            .position(|n| n == name)
            .map(|i| &self.allowed[i])
    }
}

/// What a route's policy made of a request, ready for the forwarding code.
pub(crate) enum PolicyStep {
    /// Go on, with a changed head and another service when the policy asked for them.
    Forward {
        head: Option<RequestHead>,
        service: Option<Arc<Service>>,
        response_context: Option<String>,
    },
    /// Answer with the policy's reply.
    Reply(http::Response<Bytes>),
    /// Refuse with `503 policy_failed`.
    Refuse(ProxyError),
}

/// Asks the route's policy about `request` and turns its answer into a step.
pub(crate) fn ask(policy: &RoutePolicy, request: &PolicyRequest<'_>) -> PolicyStep {
    match policy.policies.on_request(&policy.name, request) {
        PolicyAnswer::Forward(edits) => forward_step(policy, request, edits),
        PolicyAnswer::Reply {
            status,
            headers,
            body,
        } => reply_step(&policy.name, status, &headers, body),
        PolicyAnswer::Refuse { error } => refuse(&policy.name, request.route, &error),
    }
}

fn forward_step(
    policy: &RoutePolicy,
    request: &PolicyRequest<'_>,
    edits: ForwardEdits,
) -> PolicyStep {
    let service = match edits.service.as_deref() {
        None => None,
        Some(name) if name == request.service => None,
        Some(name) => match policy.service(name) {
            Some(service) => Some(Arc::clone(service)),
            None => {
                let error = format!("picked service `{name}`, not among policy_services");
                return refuse(&policy.name, request.route, &error);
            }
        },
    };
    let head = if edits.headers.is_empty() && edits.path.is_none() {
        None
    } else {
        match request.head.edited(&edits.headers, edits.path.as_deref()) {
            Ok(head) => Some(head),
            Err(e) => {
                let error = format!("its edits make an invalid request: {}", e.detail);
                return refuse(&policy.name, request.route, &error);
            }
        }
    };
    PolicyStep::Forward {
        head,
        service,
        response_context: edits.response_context,
    }
}

fn reply_step(policy: &str, status: u16, headers: &[(String, String)], body: Bytes) -> PolicyStep {
    let mut response = http::Response::new(body);
    let Ok(code) = http::StatusCode::from_u16(status) else {
        return refuse(policy, "", &format!("replied with status {status}"));
    };
    *response.status_mut() = code;
    let map = response.headers_mut();
    for (name, value) in headers {
        match (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            (Ok(n), Ok(v)) => {
                map.append(n, v);
            }
            _ => {
                return refuse(
                    policy,
                    "",
                    &format!("replied with an invalid field `{name}`"),
                );
            }
        }
    }
    PolicyStep::Reply(response)
}

fn refuse(policy: &str, route: &str, error: &str) -> PolicyStep {
    tracing::warn!(policy, route, error, "request policy failed closed: 503");
    PolicyStep::Refuse(ProxyError::new(
        ProxyErrorKind::PolicyFailed,
        format!("request policy `{policy}` could not decide"),
    ))
}
