//! HTTP/2's wire format (RFC 9113, RFC 7541), for a server that keeps its own connection
//! state: [`frame`] reads and writes frames, [`hpack`] decodes and encodes field blocks.
//!
//! Nothing here holds a socket or a timer. Reading takes whatever bytes have arrived and
//! answers "a frame", "need more" or an error that says whether the connection or only a
//! stream must end, with the RFC's error code.

pub mod frame;
pub mod hpack;
