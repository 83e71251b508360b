//! Instance health for Sluice.
//!
//! Contract:
//! - **Active**: [`probe::run`] performs one HTTP, TCP, command or gRPC probe of an instance, bounded
//!   by the check's timeout and body cap, and always returns a [`ProbeResult`] (failures are
//!   data, never errors). An [`Evaluator`] turns it into a [`Verdict`] — up with a role, or down
//!   with a reason — natively ([`NativeEvaluator`]: the status, body and exit-code rules of the
//!   configuration) or through a Wasm health policy supplied by the binary
//!   ([`EvaluatorSource`]). [`InstanceHealth`] smooths up/down with rise/fall, follows the role
//!   of the latest verdict, and is read lock-free by the data path. [`choose_primary`] picks one
//!   primary deterministically when several claim the role, and calls it a split brain only
//!   when their claims overlap in time.
//! - **Passive**: [`OutlierState`] ejects an instance after consecutive failures on the data
//!   path, for a backoff that doubles on each repeat ejection up to a cap. Ejection is bounded
//!   by the caller (`may_eject`), so passive health can never empty a service on its own.
//! - All state is atomics (plus one `arc-swap` for the last probe's details); nothing here
//!   blocks the data path. Time is a process-local monotonic millisecond clock
//!   ([`clock::now_ms`]).

pub mod clock;
mod outlier;
pub mod probe;
mod state;
mod verdict;

pub use outlier::{Ejection, OutlierState};
pub use state::{Change, Claim, InstanceHealth, LastProbe, PrimaryChoice, Status, choose_primary};
pub use verdict::{
    Evaluation, Evaluator, EvaluatorSource, NativeEvaluator, NoPolicies, ProbeError,
    ProbeErrorKind, ProbeKind, ProbeResult, ProbedInstance, Role, Verdict,
};
