//! How sending a request to an instance can fail, whatever the protocol (`h1`, `h2_up`): the
//! attempt logic in `forward` tells from it whether the request may go elsewhere.

use std::io;

use sluice_codec::chunked::ChunkError;
use sluice_codec::response::ResponseError;

use crate::request_body::{BoxError, UpBody};

/// Why an exchange failed.
#[derive(Debug)]
pub(crate) enum SendError<'b> {
    /// Nothing reached the instance's application: writing the head failed, or a reused
    /// connection closed before any response byte. The body comes back for another attempt
    /// when it was not consumed.
    Unsent {
        reused: bool,
        body: Option<UpBody<'b>>,
    },
    /// The connection failed after the request (or part of it) went out.
    Io(io::Error),
    /// The instance closed the connection before a complete response head.
    Closed,
    /// The response head is malformed, too large, or frames its body ambiguously.
    BadResponse(ResponseError),
    /// The first chunk-size line of a chunked body is malformed.
    BadChunk(ChunkError),
    /// The client's body failed or stalled (`ClientBodyFailed` / `ClientBodyTimedOut`).
    ClientBody(BoxError),
    /// The instance reset the HTTP/2 stream, or its connection failed, after the request
    /// went out.
    Stream(h2::Error),
}

impl std::fmt::Display for SendError<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Unsent { .. } => {
                f.write_str("connection closed before the request was sent")
            }
            SendError::Io(e) => write!(f, "connection error: {e}"),
            SendError::Closed => f.write_str("connection closed before a complete response head"),
            SendError::BadResponse(why) => write!(f, "{why}"),
            SendError::BadChunk(why) => write!(f, "malformed chunked response body: {why}"),
            SendError::ClientBody(e) => write!(f, "{e}"),
            SendError::Stream(e) => write!(f, "HTTP/2 stream failed: {e}"),
        }
    }
}
