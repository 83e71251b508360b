//! `[[route]] policy`: the proxy's [`RequestPolicies`] answered by the Wasm `request` policies —
//! the request as the policy host's [`RequestView`], the policy's answer as the proxy's.

use std::cell::RefCell;
use std::net::IpAddr;

use bytes::Bytes;
use sluice_policy_host::types::{Action, HeaderEdit};
use sluice_policy_host::{AnswerMemory, FieldFilter, RequestOutcome, RequestView, set_text};
use sluice_proxy::{FieldEdit, ForwardEdits, PolicyAnswer, PolicyRequest, RequestPolicies};

use crate::policies::{Policies, fill_peer};

thread_local! {
    /// One view per data-plane thread, refilled for each request: its buffers keep their
    /// capacity, so a warm request builds it without allocating.
    static VIEW: RefCell<ThreadView> = RefCell::new(ThreadView::default());
}

/// A thread's view, with the client address its peer text spells (requests in a row from one
/// client, a keep-alive connection, do not format the address again), and the answers the
/// thread's policies let it give again.
#[derive(Default)]
struct ThreadView {
    view: RequestView,
    shown_ip: Option<IpAddr>,
    answers: AnswerMemory,
}

impl RequestPolicies for Policies {
    /// Fails closed when the policy is not loaded; applies its failure mode when a call fails.
    fn on_request(&self, policy: &str, request: &PolicyRequest<'_>) -> PolicyAnswer {
        let Some(handle) = self.current().and_then(|h| h.request(policy)) else {
            return PolicyAnswer::Refuse {
                error: "not loaded".into(),
            };
        };
        let filter = handle.field_filter();
        let outcome = VIEW.with(|view| match view.try_borrow_mut() {
            Ok(mut kept) => {
                let ThreadView {
                    view,
                    shown_ip,
                    answers,
                } = &mut *kept;
                fill_view(view, shown_ip, request, &filter);
                handle.on_request_remembered(view, answers)
            }
            // Not reached (a policy call never calls a policy), but a fresh view is as right.
            Err(_) => {
                let mut view = RequestView::default();
                fill_view(&mut view, &mut None, request, &filter);
                handle.on_request_view(&mut view)
            }
        });
        match outcome {
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

/// The contract's view of a request: only the fields the policy's `request_fields` name.
fn fill_view(
    view: &mut RequestView,
    shown_ip: &mut Option<IpAddr>,
    request: &PolicyRequest<'_>,
    shown: &FieldFilter,
) {
    view.set_request_line(
        request.method(),
        request.scheme,
        request.host(),
        request.path(),
        request.query(),
    );
    for (name, value) in request.fields().filter(|(name, _)| shown.shows(name)) {
        view.push_field(name, value);
    }
    fill_peer(&mut view.peer, &request.peer, shown_ip);
    let route = &mut view.route;
    set_text(&mut route.listener, request.peer.listener);
    set_text(&mut route.name, request.route);
    set_text(&mut route.service, request.service);
    if route.allowed_services != request.allowed_services {
        route.allowed_services = request.allowed_services.to_vec();
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
