//! Real parts for Sluice's tests: backends bound to `127.0.0.1:0`, child processes that are
//! killed when dropped, and polling assertions with deadlines instead of sleeps.
//!
//! Nothing here is a mock: every backend is a real server speaking real protocols on loopback.
//! Helpers that need an external tool fail with a message naming `scripts/setup.sh`.

pub mod etcd;
