//! HTTP/2 (RFC 9113, RFC 7541) for Sluice's own server side, in layers: [`frame`] reads and
//! writes frames, [`hpack`] decodes and encodes field blocks, [`head`] checks a request's
//! decoded fields, and [`server`] keeps one connection's state — streams, flow control, limits
//! — over them.
//!
//! Nothing here holds a socket or a timer. Reading takes whatever bytes have arrived and
//! answers "a frame", "need more" or an error that says whether the connection or only a
//! stream must end, with the RFC's error code.

pub mod frame;
pub mod head;
pub mod hpack;
pub mod server;
