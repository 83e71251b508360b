//! Sluice's data plane.
//!
//! Contract:
//! - [`Proxy::start`] binds every listener of a validated [`sluice_config::Config`] and serves
//!   HTTP/1.1 and HTTP/2 (prior knowledge) on them, speaking HTTP/1.1 or HTTP/2 (`protocol`) to
//!   instances, gRPC passed through; [`Proxy::apply`] swaps in a new
//!   configuration atomically (all of it or none of it) without dropping in-flight requests,
//!   idle upstream connections or instance health; [`Proxy::shutdown`] drains gracefully.
//! - Every request gets an answer: the instance's, or a JSON error with a precise status
//!   (404 no route, 502 connect failure/reset, 503 no instance, 504 timeout, 408 slow client,
//!   431 oversized head) within the configured timeouts — never a hang.
//! - Load beyond what is configured is refused at once, never queued until timeouts fire: a
//!   route's `rate_limit` answers 429 with `Retry-After`, a service's `[service.concurrency]`
//!   and the process's `[overload]` watermarks answer 503 `overloaded`; ACME HTTP-01
//!   challenges ([`AcmeChallenges`]) are answered before routing.
//! - A route with a `request` policy asks it about every request ([`RequestPolicies`], the
//!   binary's Wasm policies) after its own rules and limits and before admission: the policy
//!   edits the head, rewrites the path, picks one of the route's `policy_services`, or
//!   replies itself; a policy that cannot answer gets `503 policy_failed` unless configured
//!   open. Routes without one never call it.
//! - The request path takes no lock shared between threads: snapshots are read through
//!   `arc-swap`, instance state is atomics, idle connections sit in lock-free queues. The one
//!   exception is a request waiting for a connection while an instance's connects are all under
//!   way (`max_connecting`): the line of such waiters is a mutex-guarded queue.
//! - Passive health never removes more than `max_ejected_percent` of a service's instances.
//! - Modules import downward only (layers in docs/ARCHITECTURE.md, checked by
//!   `tests/module_layers.rs`); the wire formats themselves are `sluice-codec`'s.

mod access_log;
mod acme_challenge;
mod admission;
mod balance;
mod body;
mod checks;
mod conn;
mod error;
mod exchange;
mod failover;
mod forward;
mod grpc;
mod h1;
mod h2_conn;
mod h2_io;
mod h2_stream;
mod h2_up;
mod headers;
mod held_writes;
mod link;
mod listener;
mod listener_state;
pub mod metrics;
mod overload;
mod pool;
mod proxy;
mod proxy_protocol;
mod rate_limit;
mod request_body;
mod request_policy;
mod response;
mod retry;
mod route_rules;
mod routing;
mod send_error;
mod server_h1;
mod server_h2;
mod sni;
mod tcp;
mod tls;
mod trace;
mod tunnel;
mod upstream;

pub use access_log::AccessLog;
pub use acme_challenge::AcmeChallenges;
pub use body::DownBody;
pub use error::{ProxyError, ProxyErrorKind};
pub use proxy::{
    ApplyError, ApplySummary, HealthView, InstanceView, LastProbeView, Policies, Proxy,
    RedirectView, RouteView, ServiceView,
};
pub use request_policy::{
    ForwardEdits, NoRequestPolicies, PolicyAnswer, PolicyRequest, RequestPolicies,
};
pub use routing::{Route, RouteTable};
pub use sluice_codec::request::FieldEdit;
pub use upstream::{Instance, Service};
