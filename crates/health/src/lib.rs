//! Instance health for Sluice.
//!
//! Contract:
//! - [`OutlierState`] is the passive half: the data path reports each attempt's outcome, and
//!   consecutive failures eject the instance for a backoff that doubles on each repeat ejection
//!   up to a cap. All state is atomics; reporting never blocks and never allocates.
//! - Ejection is *bounded by the caller*: [`OutlierState::record_failure`] only ejects when the
//!   caller's `may_eject` says the service can spare the instance (Sluice's panic threshold,
//!   `max_ejected_percent`), so passive health can never empty a service on its own.
//! - Time is a process-local monotonic millisecond clock ([`clock::now_ms`]), so states can be
//!   compared and shown without system-clock jumps.

pub mod clock;
mod outlier;

pub use outlier::{Ejection, OutlierState};
