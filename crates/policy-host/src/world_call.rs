//! One call of a policy's world export from JSON: the input parsed for the world, the typed
//! answer (or the failure and what the proxy would do instead), and an expected answer to
//! compare with. Shared by `sluice policy check --input` and `sluice policy test`; a new world
//! adds one arm to each `match` here.

use serde::{Deserialize, Serialize};
use sluice_config::PolicyWorld;

use crate::bindings::types::{
    Action, Decision, HeaderEdit, HttpRequest, Instance, Peer, ProbeResult, Route, RouteError,
    Verdict,
};
use crate::error::CallError;
use crate::host::PolicyHost;
use crate::policy::{AuthzOutcome, HealthOutcome, RouteTable, RoutingOutcome};
use crate::request::RequestOutcome;

/// The input of one call, typed for its world.
#[derive(Debug, Clone)]
pub(crate) enum CallInput {
    Authz(Peer),
    Health {
        instance: Instance,
        probe: ProbeResult,
    },
    Routing(Vec<Instance>),
    Request(Box<HttpRequest>),
    /// A response head shown to `on-response`, with the context `on-request` returned.
    Response(ResponseInput),
}

/// The input of an `on-response` call.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResponseInput {
    status: u16,
    #[serde(default)]
    headers: Vec<(String, String)>,
    context: String,
}

/// The second export of the `request` world, which test cases may call by name.
pub(crate) const ON_RESPONSE: &str = "on-response";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthInput {
    instance: Instance,
    probe: ProbeResult,
}

/// An input that does not fit the world's call.
#[derive(Debug)]
pub(crate) struct InputError {
    /// What the world's call takes, in words.
    pub(crate) expected: &'static str,
    /// The JSON error.
    pub(crate) detail: String,
}

/// The export each world's calls go to.
pub(crate) fn call_export(world: PolicyWorld) -> &'static str {
    match world {
        PolicyWorld::Authz => "authorize",
        PolicyWorld::Health => "evaluate",
        PolicyWorld::Routing => "build-routes",
        PolicyWorld::Request => "on-request",
    }
}

impl CallInput {
    /// Parses `value` as the input of `world`'s call.
    pub(crate) fn parse(world: PolicyWorld, value: serde_json::Value) -> Result<Self, InputError> {
        let invalid = |expected: &'static str| {
            move |e: serde_json::Error| InputError {
                expected,
                detail: e.to_string(),
            }
        };
        Ok(match world {
            PolicyWorld::Authz => {
                CallInput::Authz(serde_json::from_value(value).map_err(invalid("peer object"))?)
            }
            PolicyWorld::Health => {
                let input: HealthInput = serde_json::from_value(value)
                    .map_err(invalid("{\"instance\": …, \"probe\": …} object"))?;
                CallInput::Health {
                    instance: input.instance,
                    probe: input.probe,
                }
            }
            PolicyWorld::Routing => CallInput::Routing(
                serde_json::from_value(value).map_err(invalid("array of instances"))?,
            ),
            PolicyWorld::Request => CallInput::Request(
                serde_json::from_value(value).map_err(invalid("http-request object"))?,
            ),
        })
    }

    /// Parses `value` as the input of `call` (the world's main export when `None`); only the
    /// `request` world has a second one, `on-response`.
    pub(crate) fn parse_call(
        world: PolicyWorld,
        call: Option<&str>,
        value: serde_json::Value,
    ) -> Result<Self, InputError> {
        if calls_on_response(world, call) {
            let expected =
                "{\"status\": …, \"headers\": [[name, value], …], \"context\": …} object";
            return from_json(value, expected).map(CallInput::Response);
        }
        Self::parse(world, value)
    }
}

/// Whether a case's `call` is the `request` world's second export.
pub(crate) fn calls_on_response(world: PolicyWorld, call: Option<&str>) -> bool {
    world == PolicyWorld::Request && call == Some(ON_RESPONSE)
}

fn from_json<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
    expected: &'static str,
) -> Result<T, InputError> {
    serde_json::from_value(value).map_err(|e| InputError {
        expected,
        detail: e.to_string(),
    })
}

/// A policy's answer to one call.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub(crate) enum Answer {
    Decision(Decision),
    Verdict(Verdict),
    Routes(RouteTable),
    Action(Action),
    Edits(Vec<HeaderEdit>),
}

/// A call that produced no policy answer.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub(crate) error: CallError,
    /// What the proxy would do instead, in words.
    pub(crate) instead: String,
}

/// Calls the policy called `name` in `host` once with `input`.
pub(crate) fn call(host: &PolicyHost, name: &str, input: &CallInput) -> Result<Answer, Failure> {
    let not_loaded = || Failure {
        error: CallError::NotLoaded,
        instead: "the proxy would apply the failure mode".into(),
    };
    match input {
        CallInput::Authz(peer) => match host.authz(name).map(|h| h.authorize(peer)) {
            Some(AuthzOutcome::Decided(decision)) => Ok(Answer::Decision(decision)),
            Some(AuthzOutcome::Failed { decision, error }) => Err(Failure {
                error,
                instead: format!("failing closed, the proxy would apply {}", json(&decision)),
            }),
            None => Err(not_loaded()),
        },
        CallInput::Health { instance, probe } => {
            match host.health(name).map(|h| h.evaluate(instance, probe)) {
                Some(HealthOutcome::Verdict(verdict)) => Ok(Answer::Verdict(verdict)),
                Some(HealthOutcome::KeepPrevious { error }) => Err(Failure {
                    error,
                    instead: "the proxy would keep the previous verdict, marked stale".into(),
                }),
                None => Err(not_loaded()),
            }
        }
        CallInput::Routing(catalog) => match host.routing(name).map(|h| h.build_routes(catalog)) {
            Some(RoutingOutcome::Routes(table)) => Ok(Answer::Routes(RouteTable::clone(&table))),
            Some(RoutingOutcome::KeepLast { error, .. }) => Err(Failure {
                error,
                instead: "the proxy would keep its last good table".into(),
            }),
            None => Err(not_loaded()),
        },
        CallInput::Request(request) => match host.request(name).map(|h| h.on_request(request)) {
            Some(RequestOutcome::Decided(action)) => Ok(Answer::Action(action)),
            Some(RequestOutcome::Failed { error, open }) => Err(Failure {
                error,
                instead: if open {
                    "failing open, the proxy would forward the request unchanged".into()
                } else {
                    "failing closed, the proxy would answer 503".into()
                },
            }),
            None => Err(not_loaded()),
        },
        CallInput::Response(response) => {
            let handle = host.request(name).ok_or_else(not_loaded)?;
            handle
                .on_response(response.status, &response.headers, &response.context)
                .map(Answer::Edits)
                .map_err(|error| Failure {
                    error,
                    instead: "the response would go on unedited".into(),
                })
        }
    }
}

/// The answer a test case expects, typed for its world.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expected {
    Decision(Decision),
    Verdict(Verdict),
    Routes(ExpectedRoutes),
    /// `build-routes` returned `err(message)`.
    Rejected(String),
    Action(Action),
    /// `on-response`'s header edits.
    Edits(Vec<HeaderEdit>),
}

/// A routing answer: routes and per-entry errors, both optional in the cases file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExpectedRoutes {
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    errors: Vec<RouteError>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedRejection {
    rejected: String,
}

impl Expected {
    /// Parses `value` as an answer of `world`'s call.
    pub(crate) fn parse(world: PolicyWorld, value: serde_json::Value) -> Result<Self, InputError> {
        let invalid = |expected: &'static str| {
            move |e: serde_json::Error| InputError {
                expected,
                detail: e.to_string(),
            }
        };
        Ok(match world {
            PolicyWorld::Authz => Expected::Decision(
                serde_json::from_value(value)
                    .map_err(invalid("decision (\"Allow\" or {\"Deny\": \"reason\"})"))?,
            ),
            PolicyWorld::Health => Expected::Verdict(
                serde_json::from_value(value)
                    .map_err(invalid("verdict ({\"Up\": {…}} or {\"Down\": \"reason\"})"))?,
            ),
            PolicyWorld::Routing => {
                if value.get("rejected").is_some() {
                    let rejection: ExpectedRejection = serde_json::from_value(value)
                        .map_err(invalid("{\"rejected\": \"message\"} object"))?;
                    Expected::Rejected(rejection.rejected)
                } else {
                    Expected::Routes(
                        serde_json::from_value(value)
                            .map_err(invalid("{\"routes\": […], \"errors\": […]} object"))?,
                    )
                }
            }
            PolicyWorld::Request => Expected::Action(
                serde_json::from_value(body_as_bytes(value))
                    .map_err(invalid("action ({\"Forward\": {…}} or {\"Reply\": {…}})"))?,
            ),
        })
    }

    /// Parses `value` as the answer of `call` (see [`CallInput::parse_call`]).
    pub(crate) fn parse_call(
        world: PolicyWorld,
        call: Option<&str>,
        value: serde_json::Value,
    ) -> Result<Self, InputError> {
        if calls_on_response(world, call) {
            let expected =
                "list of header edits ([{\"Set\": [name, value]}, {\"Remove\": name}, …])";
            return from_json(value, expected).map(Expected::Edits);
        }
        Self::parse(world, value)
    }

    /// Whether the call's outcome is this answer.
    pub(crate) fn matches(&self, got: &Result<Answer, Failure>) -> bool {
        match (self, got) {
            (Expected::Decision(want), Ok(Answer::Decision(got))) => want == got,
            (Expected::Verdict(want), Ok(Answer::Verdict(got))) => want == got,
            (Expected::Action(want), Ok(Answer::Action(got))) => want == got,
            (Expected::Edits(want), Ok(Answer::Edits(got))) => want == got,
            (Expected::Routes(want), Ok(Answer::Routes(got))) => {
                want.routes == got.routes && want.errors == got.errors
            }
            (
                Expected::Rejected(want),
                Err(Failure {
                    error: CallError::Rejected(got),
                    ..
                }),
            ) => want == got,
            _ => false,
        }
    }

    /// Pretty JSON, in the cases file's format.
    pub(crate) fn to_json(&self) -> String {
        match self {
            Expected::Decision(decision) => json(decision),
            Expected::Verdict(verdict) => json(verdict),
            Expected::Action(action) => json(&readable_action(action)),
            Expected::Edits(edits) => json(edits),
            Expected::Routes(routes) => json(routes),
            Expected::Rejected(message) => json(&serde_json::json!({ "rejected": message })),
        }
    }
}

/// An outcome as pretty JSON in the cases file's format (a failure as `{"failed": …}`).
pub(crate) fn outcome_json(got: &Result<Answer, Failure>) -> String {
    match got {
        Ok(answer) => answer_json(answer),
        Err(Failure {
            error: CallError::Rejected(message),
            ..
        }) => json(&serde_json::json!({ "rejected": message })),
        Err(failure) => json(&serde_json::json!({ "failed": failure.error.to_string() })),
    }
}

/// An answer as pretty JSON in the cases file's format.
pub(crate) fn answer_json(answer: &Answer) -> String {
    match answer {
        Answer::Action(action) => json(&readable_action(action)),
        other => json(other),
    }
}

/// An action as JSON with a UTF-8 reply body as a string (the cases file may write it so).
fn readable_action(action: &Action) -> serde_json::Value {
    let mut value = serde_json::to_value(action).unwrap_or_default();
    if let Action::Reply(reply) = action
        && let Ok(text) = std::str::from_utf8(&reply.body)
    {
        value["Reply"]["body"] = serde_json::Value::String(text.to_owned());
    }
    value
}

/// A `{"Reply": {"body": "text"}}` written with a string body, as the bytes the type holds.
fn body_as_bytes(mut value: serde_json::Value) -> serde_json::Value {
    if let Some(body) = value.pointer_mut("/Reply/body")
        && let Some(text) = body.as_str()
    {
        *body = text.bytes().map(serde_json::Value::from).collect();
    }
    value
}

/// Pretty JSON of any answer type (they all derive `Serialize`).
pub(crate) fn json<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("<unprintable: {e}>"))
}
