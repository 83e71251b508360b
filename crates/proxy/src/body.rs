//! Bodies in both directions.
//!
//! - [`RequestBody`] is the client's: read from the HTTP/1.x connection itself
//!   ([`crate::server_h1::H1Body`]) or from an HTTP/2 stream ([`H2Body`]).
//! - [`UpBody`] goes to the instance: empty, a small buffered body that can be replayed on a
//!   retry, or the client's stream passed through with a stall timer.
//! - [`DownBody`] goes to the client: a local (error) body, or the instance's stream with idle
//!   and total-deadline timers. It carries the request's [`Exchange`] record, which is finished
//!   — metrics, access log, pooled connection returned — when the body ends or is dropped.
//!
//! Timers are armed lazily: a body whose next frame is already there never touches the timer
//! wheel, which is the common case for small responses.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::error::ClientBodyTimedOut;
use crate::exchange::Exchange;
use crate::h1::UpstreamBody;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client's request body failed (aborted, malformed); carried as the body's error so the
/// handler can answer 400 instead of blaming the instance.
#[derive(Debug, thiserror::Error)]
#[error("client request body failed: {0}")]
pub(crate) struct ClientBodyFailed(#[source] pub(crate) BoxError);

/// The client's request body, as its connection delivers it.
#[derive(Debug)]
pub(crate) enum RequestBody<'a> {
    /// Read from the HTTP/1.x connection by the request's own task.
    H1(crate::server_h1::H1Body<'a>),
    H2(H2Body),
}

/// An HTTP/2 request body: the stream's data, then its trailers. The client's flow-control
/// window is reopened as data is taken (not as it arrives), so a slow instance slows the
/// client down instead of filling memory.
#[derive(Debug)]
pub(crate) struct H2Body {
    recv: h2::RecvStream,
    /// What `content-length` announced, less the data taken (h2 checks the two agree).
    remaining: Option<u64>,
    data_done: bool,
}

impl H2Body {
    pub(crate) fn new(recv: h2::RecvStream, content_length: Option<u64>) -> Self {
        Self {
            recv,
            remaining: content_length,
            data_done: false,
        }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.data_done {
            match std::task::ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Fails only if the stream is already gone, which the next poll reports.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    if let Some(n) = &mut self.remaining {
                        *n = n.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => self.data_done = true,
            }
        }
        match std::task::ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e.into()))),
        }
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
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
            RequestBody::H1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            RequestBody::H2(b) => b.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::H1(b) => b.is_end_stream(),
            RequestBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::H1(b) => b.size_hint(),
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
struct StallTimer {
    sleep: Option<Pin<Box<Sleep>>>,
    /// A frame went through since the timer was armed.
    progressed: bool,
}

impl StallTimer {
    fn progressed(&mut self) {
        self.progressed = true;
    }

    /// Polls the stall deadline (`stall` after the first wait following progress), capped by an
    /// absolute `deadline`. `Ready` carries whether the cap (rather than the stall) fired.
    fn poll_stalled(
        &mut self,
        stall: Duration,
        deadline: Option<Instant>,
        cx: &mut Context<'_>,
    ) -> Poll<bool> {
        let rearm = self.sleep.is_none() || std::mem::take(&mut self.progressed);
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

/// Why a response body stopped early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ResponseBodyError {
    #[error("upstream sent nothing for {0:?} while streaming the response body")]
    Idle(Duration),
    #[error("the request's total deadline passed while streaming the response body")]
    Deadline,
    #[error("upstream response body failed: {0}")]
    Upstream(#[source] crate::h1::BodyError),
}

#[derive(Debug)]
enum DownInner {
    Local(Option<Bytes>),
    Upstream {
        inner: UpstreamBody,
        idle: Duration,
        deadline: Instant,
        timer: StallTimer,
    },
}

/// The response body sent to the client.
#[derive(Debug)]
pub struct DownBody {
    inner: DownInner,
    bytes_out: u64,
    exchange: Option<Exchange>,
}

impl DownBody {
    pub(crate) fn local(bytes: Bytes, exchange: Exchange) -> Self {
        Self {
            inner: DownInner::Local(Some(bytes).filter(|b| !b.is_empty())),
            bytes_out: 0,
            exchange: Some(exchange),
        }
    }

    /// A body that belongs to no request record (a request refused before it had one).
    pub(crate) fn bare(bytes: Bytes) -> Self {
        Self {
            inner: DownInner::Local(Some(bytes).filter(|b| !b.is_empty())),
            bytes_out: 0,
            exchange: None,
        }
    }

    pub(crate) fn upstream(
        inner: UpstreamBody,
        idle: Duration,
        deadline: Instant,
        exchange: Exchange,
    ) -> Self {
        Self {
            inner: DownInner::Upstream {
                inner,
                idle,
                deadline,
                timer: StallTimer::default(),
            },
            bytes_out: 0,
            exchange: Some(exchange),
        }
    }

    /// When the request's total deadline passes (`None` for a local answer).
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match &self.inner {
            DownInner::Local(_) => None,
            DownInner::Upstream { deadline, .. } => Some(*deadline),
        }
    }

    /// The client will not get the rest: the request is recorded as cut off for `why`, and
    /// the instance's connection (half read) is closed rather than pooled.
    pub(crate) fn abandon(&mut self, why: &dyn std::fmt::Display) {
        self.finish(false, Some(why));
    }

    fn finish(&mut self, completed: bool, error: Option<&dyn std::fmt::Display>) {
        if let Some(mut exchange) = self.exchange.take() {
            if completed
                && let DownInner::Upstream { inner, .. } = &mut self.inner
                && let Some(upstream) = exchange.upstream.as_mut()
            {
                upstream.conn = inner.take_reusable();
            }
            exchange.finish(self.bytes_out, completed, error);
        }
    }
}

impl Body for DownBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.inner {
            DownInner::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            DownInner::Upstream {
                inner,
                idle,
                deadline,
                timer,
            } => match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    timer.progressed();
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(ResponseBodyError::Upstream(e)))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => match timer.poll_stalled(*idle, Some(*deadline), cx) {
                    Poll::Ready(true) => Poll::Ready(Some(Err(ResponseBodyError::Deadline))),
                    Poll::Ready(false) => Poll::Ready(Some(Err(ResponseBodyError::Idle(*idle)))),
                    Poll::Pending => Poll::Pending,
                },
            },
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes_out += data.len() as u64;
                }
                if this.is_end_stream() {
                    this.finish(true, None);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                tracing::debug!(error = %e, "response body to client aborted");
                this.finish(false, Some(&e));
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => {
                this.finish(true, None);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            DownInner::Local(b) => b.is_none(),
            DownInner::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            DownInner::Local(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            DownInner::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}

impl Drop for DownBody {
    fn drop(&mut self) {
        // Dropped before its end: the client went away (or the response had no body and the server
        // never polled it, which `is_end_stream` tells apart).
        let completed = self.is_end_stream();
        self.finish(completed, None);
    }
}
