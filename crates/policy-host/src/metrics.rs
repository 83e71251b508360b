//! Metric names the policy host records through the `metrics` facade. Every metric carries the
//! labels `policy` (its `[[policy]] name`) and `world` (`routing`, `health`, `authz`).
//!
//! Handles are registered when a policy is first loaded: install the recorder (the Prometheus
//! exporter) before creating the [`crate::PolicyHost`], or these metrics go nowhere.

/// Counter: calls into the policy (including those answered by the failure mode).
pub const POLICY_CALLS: &str = "sluice_policy_calls_total";
/// Counter: calls that did not produce a policy answer (any [`crate::CallError`]).
pub const POLICY_ERRORS: &str = "sluice_policy_errors_total";
/// Counter: calls that trapped (panic, `unreachable`, memory cap).
pub const POLICY_TRAPS: &str = "sluice_policy_traps_total";
/// Counter: calls stopped at their deadline.
pub const POLICY_TIMEOUTS: &str = "sluice_policy_timeouts_total";
/// Histogram: seconds spent in a call, instance checkout included.
pub const POLICY_CALL_DURATION: &str = "sluice_policy_call_duration_seconds";
/// Counter: requests a `request` policy's earlier answer was given to again, without a call,
/// because the policy allowed it (`cache-answer`).
pub const POLICY_ANSWERS_REUSED: &str = "sluice_policy_answers_reused_total";
/// Counter: successful (re)loads of a module version.
pub const POLICY_RELOADS: &str = "sluice_policy_reloads_total";
/// Counter: rejected (re)loads; the previous version keeps serving.
pub const POLICY_RELOAD_FAILURES: &str = "sluice_policy_reload_failures_total";
