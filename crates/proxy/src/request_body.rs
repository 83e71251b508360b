//! Request bodies: what the client sends and what goes to the instance.
//!
//! - [`RequestBody`] is the client's: read from the HTTP/1.x connection itself (through
//!   [`H1BodyReader`], which `server_h1` implements) or from an HTTP/2 stream ([`H2Body`]).
//! - [`UpBody`] goes to the instance: empty, a small buffered body that can be replayed on a
//!   retry, or the client's stream passed through with a stall timer ([`ClientStream`]).
//!
//! Timers are armed lazily ([`StallTimer`]): a body whose next frame is already there never
//! touches the timer wheel.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use sluice_codec::h2::frame::ErrorCode;
use tokio::time::{Instant, Sleep};

use crate::error::ClientBodyTimedOut;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client's request body failed (aborted, malformed); carried as the body's error so the
/// handler can answer 400 instead of blaming the instance.
#[derive(Debug, thiserror::Error)]
#[error("client request body failed: {0}")]
pub(crate) struct ClientBodyFailed(#[source] pub(crate) BoxError);

/// A client's HTTP/1.x connection, from which the request's own task reads the request body.
/// `server_h1` implements it; the trait keeps this module below the connection's.
pub(crate) trait H1BodyReader: std::fmt::Debug + Send {
    /// The next frame of the body, `None` once it ended.
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>;
    /// Whether the body ended (or failed): nothing more will come.
    fn body_ended(&self) -> bool;
    fn body_size_hint(&self) -> SizeHint;
}

/// The client's request body, as its connection delivers it.
#[derive(Debug)]
pub(crate) enum RequestBody<'a> {
    /// Read from the HTTP/1.x connection by the request's own task.
    H1(&'a mut (dyn H1BodyReader + 'static)),
    H2(H2Body),
}

/// Where an HTTP/2 request body comes from: the stream as the connection's driver receives it
/// (`h2_conn::StreamBody`). The trait keeps this module below the connection's.
pub(crate) trait H2BodySource: std::fmt::Debug + Send {
    /// The next frame: data (taking it reopens the client's window), then trailers, if any.
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>;
    /// Whether the body ended (or failed).
    fn is_end_stream(&self) -> bool;
    /// Ends the stream with `code`: the body broke the protocol.
    fn reset(&mut self, code: ErrorCode);
}

/// An HTTP/2 request body: the stream's data, then its trailers. The client's flow-control
/// window is reopened as data is taken (not as it arrives), so a slow instance slows the
/// client down instead of filling memory. A body longer or shorter than its `content-length`
/// is malformed (RFC 9113 §8.1.1): the stream is reset (PROTOCOL_ERROR) and the body fails.
#[derive(Debug)]
pub(crate) struct H2Body {
    source: Box<dyn H2BodySource>,
    /// What `content-length` announced, less the data taken.
    remaining: Option<u64>,
}

/// A request body that does not match its `content-length`.
#[derive(Debug, thiserror::Error)]
#[error("request body {0} than its content-length")]
struct LengthMismatch(&'static str);

impl H2Body {
    pub(crate) fn new(source: Box<dyn H2BodySource>, content_length: Option<u64>) -> Self {
        Self {
            source,
            remaining: content_length,
        }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = std::task::ready!(self.source.poll_frame(cx));
        let mismatch = match (&frame, &mut self.remaining) {
            (Some(Ok(f)), Some(n)) if f.is_data() => {
                let len = f.data_ref().map_or(0, |d| d.len() as u64);
                let over = len > *n;
                *n = n.saturating_sub(len);
                over.then_some("longer")
            }
            (None | Some(Ok(_)), Some(n)) if *n > 0 => Some("shorter"),
            _ => None,
        };
        if let Some(how) = mismatch {
            self.source.reset(ErrorCode::PROTOCOL_ERROR);
            return Poll::Ready(Some(Err(LengthMismatch(how).into())));
        }
        Poll::Ready(frame)
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        self.source.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.remaining
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

impl Body for RequestBody<'_> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::H1(b) => b.poll_body(cx),
            RequestBody::H2(b) => b.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::H1(b) => b.body_ended(),
            RequestBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::H1(b) => b.body_size_hint(),
            RequestBody::H2(b) => b.size_hint(),
        }
    }
}

/// The request body sent to an instance.
#[derive(Debug)]
pub(crate) enum UpBody<'a> {
    Empty,
    /// A body read in full beforehand (small, idempotent requests), cloned for each attempt.
    Full(Option<Bytes>),
    Stream(ClientStream<'a>),
}

impl Body for UpBody<'_> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpBody::Empty => Poll::Ready(None),
            UpBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            UpBody::Stream(s) => s.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Empty => true,
            UpBody::Full(b) => b.is_none(),
            UpBody::Stream(s) => s.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::Empty => SizeHint::with_exact(0),
            UpBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            UpBody::Stream(s) => s.inner.size_hint(),
        }
    }
}

/// The client's body passed through, failing with [`ClientBodyTimedOut`] when the client stalls.
#[derive(Debug)]
pub(crate) struct ClientStream<'a> {
    inner: RequestBody<'a>,
    stall: Duration,
    timer: StallTimer,
    bytes: Arc<AtomicU64>,
}

impl<'a> ClientStream<'a> {
    pub(crate) fn new(inner: RequestBody<'a>, stall: Duration, bytes: Arc<AtomicU64>) -> Self {
        Self {
            inner,
            stall,
            timer: StallTimer::default(),
            bytes,
        }
    }

    /// The same stream free of the client connection's borrow, when it has none (an HTTP/2
    /// client's stream): it can then be sent by a task of its own. An HTTP/1.x client's body is
    /// read by its connection's task and comes back as it was.
    pub(crate) fn into_owned(self) -> Result<ClientStream<'static>, Self> {
        match self.inner {
            RequestBody::H2(body) => Ok(ClientStream {
                inner: RequestBody::H2(body),
                stall: self.stall,
                timer: self.timer,
                bytes: self.bytes,
            }),
            inner @ RequestBody::H1(_) => Err(ClientStream { inner, ..self }),
        }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes.fetch_add(data.len() as u64, Relaxed);
                }
                self.timer.progressed();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(ClientBodyFailed(e))))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if self.timer.poll_stalled(self.stall, None, cx).is_ready() {
                    return Poll::Ready(Some(Err(Box::new(ClientBodyTimedOut))));
                }
                Poll::Pending
            }
        }
    }
}

/// A body's stall timer, armed only when the body actually waits: a body whose frames are
/// ready when polled never reads the clock or touches the timer wheel.
///
/// The stall is measured from the first wait after the last frame, which is within
/// microseconds of the last frame itself.
#[derive(Debug, Default)]
pub(crate) struct StallTimer {
    sleep: Option<Pin<Box<Sleep>>>,
    /// A frame went through since the timer was armed.
    progressed: bool,
}

impl StallTimer {
    pub(crate) fn progressed(&mut self) {
        self.progressed = true;
    }

    /// Polls the stall deadline (`stall` after the first wait following progress), capped by an
    /// absolute `deadline`. `Ready` carries whether the cap (rather than the stall) fired.
    pub(crate) fn poll_stalled(
        &mut self,
        stall: Duration,
        deadline: Option<Instant>,
        cx: &mut Context<'_>,
    ) -> Poll<bool> {
        // Progress is always consumed: left set by the first arming, it re-armed the timer
        // when it first fired, and every stall lasted twice its limit.
        let progressed = std::mem::take(&mut self.progressed);
        let rearm = self.sleep.is_none() || progressed;
        if rearm {
            let stall_at = Instant::now() + stall;
            let at = deadline.map_or(stall_at, |d| d.min(stall_at));
            match &mut self.sleep {
                Some(s) => s.as_mut().reset(at),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        let Some(sleep) = &mut self.sleep else {
            return Poll::Pending;
        };
        let at = sleep.deadline();
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(deadline.is_some_and(|d| at >= d)),
            Poll::Pending => Poll::Pending,
        }
    }
}
