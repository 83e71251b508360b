//! The wire formats Sluice reads from the network, as a layer of their own.
//!
//! Contract:
//! - Pure functions over bytes, or state machines fed bytes (an HTTP/2 connection's): no
//!   sockets, no timers, no knowledge of routes, instances or listeners. Every parser takes whatever bytes have arrived, answers "complete", "need more"
//!   or a typed error, and never panics — whatever the input (each has a fuzz target in
//!   `fuzz/`).
//! - HTTP/1.x ([`request`], [`response`], [`chunked`], [`fields`]) follows RFC 9112 strictly
//!   where leniency lets two parsers disagree on a message's length: CRLF-only chunk lines,
//!   chunk extensions by their grammar, a single `Content-Length` value (identical repeats are
//!   folded into one), no `Transfer-Encoding` beside `Content-Length`, a valid `Host`.
//! - Heads are parsed once into spans of their buffer ([`fields::Field`]), so a proxy passes
//!   fields on as received without copying them into maps.
//! - Request paths are brought to one canonical form ([`path`]: unreserved escapes decoded,
//!   `//` merged, dot segments removed) before anything routes on them.
//! - [`h2`] is HTTP/2 for a server of Sluice's own: frames checked as the RFC asks of each on
//!   its own, field blocks decoded against the peer's dynamic table and answers' fields
//!   encoded with no table at all, request heads checked, and a connection's streams, flow
//!   control and limits kept by a state machine the proxy drives.
//! - [`client_hello`] reads the server name of a TLS ClientHello; [`proxy_protocol`] reads the
//!   PROXY protocol header (versions 1 and 2) a load balancer in front may send.
//!
//! Nothing here imports from the proxy; the proxy's request, upstream and listener layers
//! import from here.

pub mod chunked;
pub mod client_hello;
pub mod fields;
pub mod h2;
pub mod path;
pub mod proxy_protocol;
pub mod request;
pub mod response;
#[cfg(test)]
mod testing;
