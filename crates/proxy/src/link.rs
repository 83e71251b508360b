//! The way to an instance for one attempt — an HTTP/1.1 connection (`h1`) or a stream on an
//! HTTP/2 connection (`h2_up`) — and what an exchange over it gives back, in one shape for
//! the attempt logic (`forward`) and the response body (`body`).

use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::StatusCode;
use http::header::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use sluice_codec::response::UpstreamHead;

use crate::h1::{BodyError, OutgoingRequest, UpConn, UpstreamBody};
use crate::h2_up::{self, H2Link, H2UpBody};
use crate::request_body::UpBody;
use crate::send_error::SendError;

/// Where one attempt's request goes.
#[derive(Debug)]
pub(crate) enum UpLink {
    H1(Box<UpConn>),
    /// A stream on an HTTP/2 connection, and the `:scheme` it is sent with.
    H2(H2Link, &'static str),
}

impl UpLink {
    /// Whether the connection was opened for this attempt.
    pub(crate) fn is_fresh(&self) -> bool {
        match self {
            UpLink::H1(conn) => conn.is_fresh(),
            UpLink::H2(link, _) => link.is_fresh(),
        }
    }

    /// Sends the request and reads the response head. `uploaded` is set once the whole
    /// request has gone out.
    pub(crate) async fn exchange<'b>(
        self,
        req: &OutgoingRequest<'_>,
        body: UpBody<'b>,
        uploaded: &AtomicBool,
    ) -> Result<InstanceResponse, SendError<'b>> {
        match self {
            UpLink::H1(conn) => {
                let r = conn.exchange(req, body, uploaded).await?;
                Ok(InstanceResponse {
                    status: r.status,
                    head: InstanceHead::H1(r.head),
                    body: InstanceBody::H1(r.body),
                })
            }
            UpLink::H2(link, scheme) => {
                // Boxed: HTTP/1.1 requests, the most, would otherwise carry its size.
                let r = Box::pin(h2_up::exchange(link, req, scheme, body, uploaded)).await?;
                Ok(InstanceResponse {
                    status: r.parts.status,
                    head: InstanceHead::H2(r.parts.headers),
                    body: InstanceBody::H2(r.body),
                })
            }
        }
    }
}

/// An instance's response head and its body still to read.
#[derive(Debug)]
pub(crate) struct InstanceResponse {
    pub(crate) status: StatusCode,
    pub(crate) head: InstanceHead,
    pub(crate) body: InstanceBody,
}

/// The fields of an instance's response: the bytes an HTTP/1.1 instance sent, or the map h2
/// decoded.
#[derive(Debug)]
pub(crate) enum InstanceHead {
    H1(UpstreamHead),
    H2(HeaderMap),
}

/// An instance's response body.
#[derive(Debug)]
pub(crate) enum InstanceBody {
    H1(UpstreamBody),
    H2(H2UpBody),
}

/// Why reading an instance's response body failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InstanceBodyError {
    #[error(transparent)]
    H1(#[from] BodyError),
    #[error("the instance's HTTP/2 stream failed: {0}")]
    H2(#[from] h2::Error),
}

impl InstanceBody {
    /// The HTTP/1.1 connection, if the body ended cleanly and it may carry another request
    /// (an HTTP/2 stream gives its place back by itself).
    pub(crate) fn take_reusable(&mut self) -> Option<Box<UpConn>> {
        match self {
            InstanceBody::H1(b) => b.take_reusable(),
            InstanceBody::H2(_) => None,
        }
    }

    /// The connection after `101 Switching Protocols` (HTTP/1.1 only).
    pub(crate) fn take_switched(&mut self) -> Option<Box<UpConn>> {
        match self {
            InstanceBody::H1(b) => b.take_switched(),
            InstanceBody::H2(_) => None,
        }
    }
}

impl Body for InstanceBody {
    type Data = Bytes;
    type Error = InstanceBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, InstanceBodyError>>> {
        match self.get_mut() {
            InstanceBody::H1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            InstanceBody::H2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            InstanceBody::H1(b) => b.is_end_stream(),
            InstanceBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            InstanceBody::H1(b) => b.size_hint(),
            InstanceBody::H2(b) => b.size_hint(),
        }
    }
}
