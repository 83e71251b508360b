//! Real parts for Sluice's tests: backends bound to `127.0.0.1:0`, a real HTTP client (and curl), a real
//! gRPC server and client (grpcio, [`grpc`]), child processes that are stopped when dropped, and
//! polling assertions with deadlines instead of sleeps.
//!
//! Nothing here is a mock: every backend is a real server speaking real protocols on loopback.
//! Helpers that need an external tool fail with a message naming `scripts/setup.sh`.

#![allow(clippy::unwrap_used)]

mod backend;
pub mod certs;
mod client;
mod curl;
pub mod etcd;
mod eventually;
pub mod grpc;
mod h2_raw;
mod h2load;
mod mirror;
pub mod module_layers;
pub mod open_loop;
mod openssl;
mod process;

pub use backend::{Backend, Blackhole, Mode};
pub use client::{Client, Reply};
pub use curl::{CurlAnswer, curl};
pub use eventually::{eventually, eventually_blocking};
pub use grpc::{
    GrpcCall, GrpcKind, GrpcOutcome, GrpcServer, GrpcTls, SeenCall, grpc_call, grpc_calls,
};
pub use h2_raw::h2c_get_with_widest_windows;
pub use h2load::{h2load, h2load_succeeded};
pub use mirror::{Answer, AnswerKind, MirrorMember, MirrorRole, StatusProbes};
pub use openssl::{s_client_first_line, s_client_first_line_as};
pub use process::{
    SluiceProcess, free_port, free_port_on, http_get, http_request, metric_value, require_tool,
};
