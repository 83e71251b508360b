//! Sending one HTTP/2 answer: the head, then the body as the client's flow-control window lets
//! it through, under the stream's deadlines.
//!
//! A body chunk is sent only as far as the window the client granted (nothing is queued
//! beyond it, [`crate::h2_conn::StreamHandle`]), so "the client took bytes" and "the stream
//! progressed" are the same thing.
//! While a stream waits for window:
//! - `send_timeout` after the wait began, or at the request's total deadline, the stream is
//!   reset (CANCEL), like nginx's `send_timeout` on a stream blocked by flow control;
//! - once it has waited `stall_grace` it counts against the connection's
//!   `http2_max_stalled_streams`; a stream beyond that bound is reset (ENHANCE_YOUR_CALM).
//!
//! Either way the response body is dropped unfinished, which closes the instance's connection
//! (a half-read connection is never pooled) and releases the instance.

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body::{Body, Frame};
use metrics::counter;
use sluice_codec::h2::frame::ErrorCode;
use tokio::time::{Instant, Sleep};

use crate::body::DownBody;
use crate::conn::ConnWatch;
use crate::h2_conn::{StreamGone, StreamHandle};
use crate::metrics::HTTP2_STREAM_RESETS_TOTAL;
use crate::request_body::BoxError;
use crate::response::H2Answer;

/// What every stream of one HTTP/2 connection is held to.
#[derive(Debug)]
pub(crate) struct StreamLimits {
    pub(crate) send_timeout: Duration,
    pub(crate) stall_grace: Duration,
    pub(crate) stalls: StallGate,
    /// The connection's socket: while it is backed up, streams wait on it (the connection's
    /// own `send_timeout` covers that), not on a shut window.
    pub(crate) watch: Arc<ConnWatch>,
}

/// Counts the streams of a connection that wait for window past the grace period.
#[derive(Debug)]
pub(crate) struct StallGate {
    max: u32,
    stalled: AtomicU32,
}

impl StallGate {
    pub(crate) fn new(max: u32) -> Self {
        Self {
            max,
            stalled: AtomicU32::new(0),
        }
    }

    /// A place among the stalled streams, if the bound leaves one.
    fn enter(&self) -> Option<StallSlot<'_>> {
        self.stalled
            .fetch_update(Relaxed, Relaxed, |n| (n < self.max).then_some(n + 1))
            .ok()
            .map(|_| StallSlot(self))
    }
}

/// A stalled stream's place in its [`StallGate`], given back when it progresses or ends.
#[derive(Debug)]
struct StallSlot<'a>(&'a StallGate);

impl Drop for StallSlot<'_> {
    fn drop(&mut self) {
        self.0.stalled.fetch_sub(1, Relaxed);
    }
}

/// Why a stream's answer stopped short.
#[derive(Debug)]
enum Cut {
    SendTimeout(Duration),
    Deadline,
    TooManyStalled,
    /// The instance's body failed (already recorded by the body itself).
    Upstream(BoxError),
    /// The client reset the stream, or the connection ended.
    ClientGone(StreamGone),
}

impl Cut {
    /// The reset sent to the client and the `reason` it is counted under, if Sluice ends the
    /// stream (rather than the client).
    fn reset(&self) -> Option<(ErrorCode, Option<&'static str>)> {
        match self {
            Cut::SendTimeout(_) => Some((ErrorCode::CANCEL, Some("send_timeout"))),
            Cut::Deadline => Some((ErrorCode::CANCEL, Some("deadline"))),
            // Not REFUSED_STREAM: that tells the client the request was not processed and may
            // be retried anywhere (RFC 9113 §8.7), and this one was. Not GOAWAY: the
            // connection's other streams may be well-behaved.
            Cut::TooManyStalled => Some((ErrorCode::ENHANCE_YOUR_CALM, Some("stalled_streams"))),
            Cut::Upstream(_) => Some((ErrorCode::INTERNAL_ERROR, None)),
            Cut::ClientGone(_) => None,
        }
    }
}

impl fmt::Display for Cut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cut::SendTimeout(t) => write!(
                f,
                "the client opened no window for this stream for {}ms (send_timeout)",
                t.as_millis()
            ),
            Cut::Deadline => f.write_str(
                "the request's total deadline passed while the client kept the window shut",
            ),
            Cut::TooManyStalled => f.write_str(
                "too many streams of this connection wait for window (http2_max_stalled_streams)",
            ),
            Cut::Upstream(e) => write!(f, "{e}"),
            Cut::ClientGone(e) => write!(f, "{e}"),
        }
    }
}

impl From<StreamGone> for Cut {
    fn from(e: StreamGone) -> Self {
        Cut::ClientGone(e)
    }
}

/// `fut`'s output, or `None` once the client resets the stream or the connection ends.
pub(crate) async fn unless_reset<F: Future>(stream: &StreamHandle, fut: F) -> Option<F::Output> {
    let mut fut = pin!(fut);
    poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        stream.poll_reset(cx).map(|_| None)
    })
    .await
}

/// Sends `answer` on the stream; resets the stream when its answer cannot be finished.
pub(crate) async fn respond(
    stream: StreamHandle,
    mut answer: H2Answer,
    limits: &StreamLimits,
    listener: &str,
) {
    if let Err(cut) = head_waits_for_body(&mut answer.body, &stream).await {
        answer.body.abandon(&cut);
        return;
    }
    let end = answer.body.is_end_stream();
    let status = answer.head.status.as_u16();
    let sent = answer.send_head(|fields| stream.send_head(status, fields, end));
    let mut body = answer.body;
    if let Err(e) = sent {
        tracing::debug!(error = %e, "HTTP/2 response head not sent");
        body.abandon(&e);
        return;
    }
    if end {
        return;
    }
    if let Err(cut) = send_body(&mut body, &stream, limits).await {
        if let Some((code, counted)) = cut.reset() {
            stream.reset(code);
            if let Some(label) = counted {
                counter!(HTTP2_STREAM_RESETS_TOTAL, "listener" => listener.to_owned(), "reason" => label)
                    .increment(1);
            }
        }
        tracing::debug!(error = %cut, "HTTP/2 response cut off");
        body.abandon(&cut);
    }
}

/// The head waits for the first bytes of a body of stated length, as on HTTP/1.x (server_h1's
/// `write_response`): HEADERS and the first DATA then leave in one write. A body of unknown
/// length may be a stream that starts late; its head goes at once. The client resetting the
/// stream ends the wait.
async fn head_waits_for_body(body: &mut DownBody, stream: &StreamHandle) -> Result<(), Cut> {
    let stated = body.size_hint().exact().is_some_and(|n| n > 0);
    if !stated || body.is_end_stream() {
        return Ok(());
    }
    let mut first = pin!(body.first_bytes());
    poll_fn(|cx| {
        if first.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(()));
        }
        stream.poll_reset(cx).map(|gone| Err(gone.into()))
    })
    .await
}

async fn send_body(
    body: &mut DownBody,
    stream: &StreamHandle,
    limits: &StreamLimits,
) -> Result<(), Cut> {
    let mut pace = Pace::new(limits, body.deadline());
    loop {
        let Some(frame) = next_frame(body, stream).await? else {
            stream.send_data(&[], true)?;
            return Ok(());
        };
        match frame.into_data() {
            Ok(data) => {
                let end = body.is_end_stream();
                pace.send(stream, data, end).await?;
                if end {
                    return Ok(());
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    stream.send_trailers(&trailers)?;
                    return Ok(());
                }
            }
        }
    }
}

/// The body's next frame; the client resetting the stream meanwhile ends the wait.
async fn next_frame(
    body: &mut DownBody,
    stream: &StreamHandle,
) -> Result<Option<Frame<Bytes>>, Cut> {
    poll_fn(|cx| match Pin::new(&mut *body).poll_frame(cx) {
        Poll::Ready(Some(Ok(frame))) => Poll::Ready(Ok(Some(frame))),
        Poll::Ready(Some(Err(e))) => Poll::Ready(Err(Cut::Upstream(e))),
        Poll::Ready(None) => Poll::Ready(Ok(None)),
        Poll::Pending => stream.poll_reset(cx).map(|gone| Err(gone.into())),
    })
    .await
}

/// A stream's sending under its deadlines: the timer is armed only when the stream waits for
/// window, so a client that keeps up never touches the timer wheel.
struct Pace<'a> {
    limits: &'a StreamLimits,
    /// The request's total deadline (none for Sluice's own answers).
    deadline: Option<Instant>,
    /// When the current wait for window began.
    waiting_since: Option<Instant>,
    /// Held while this stream counts as stalled.
    slot: Option<StallSlot<'a>>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<'a> Pace<'a> {
    fn new(limits: &'a StreamLimits, deadline: Option<Instant>) -> Self {
        Self {
            limits,
            deadline,
            waiting_since: None,
            slot: None,
            sleep: None,
        }
    }

    /// Sends `chunk` as the window opens; `end` marks its last piece as the end of the stream.
    async fn send(
        &mut self,
        stream: &StreamHandle,
        mut chunk: Bytes,
        end: bool,
    ) -> Result<(), Cut> {
        if chunk.is_empty() {
            stream.send_data(&[], end)?;
            return Ok(());
        }
        while !chunk.is_empty() {
            poll_fn(|cx| self.poll_window(stream, cx)).await?;
            let sent = stream.send_data(&chunk, end)?;
            chunk.advance(sent);
        }
        Ok(())
    }

    /// The window the client granted, once there is some.
    fn poll_window(
        &mut self,
        stream: &StreamHandle,
        cx: &mut Context<'_>,
    ) -> Poll<Result<usize, Cut>> {
        match stream.poll_window(cx) {
            Poll::Ready(Ok(granted)) => {
                self.waiting_since = None;
                self.slot = None;
                Poll::Ready(Ok(granted))
            }
            Poll::Ready(Err(gone)) => Poll::Ready(Err(gone.into())),
            Poll::Pending => self.poll_stall(cx).map(Err),
        }
    }

    /// Ready with the reason to give up once a deadline of the current wait passes. The timer
    /// keeps the moment it was set for until it fires, which is then decided on.
    fn poll_stall(&mut self, cx: &mut Context<'_>) -> Poll<Cut> {
        let since = match self.waiting_since {
            Some(since) => since,
            None => {
                let since = Instant::now();
                self.waiting_since = Some(since);
                let at = self.next_check(since);
                match &mut self.sleep {
                    Some(s) => s.as_mut().reset(at),
                    None => self.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
                }
                since
            }
        };
        loop {
            let Some(sleep) = &mut self.sleep else {
                return Poll::Pending;
            };
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let at = sleep.deadline();
            if let Some(cut) = self.check(since, at) {
                return Poll::Ready(cut);
            }
            let next = self.next_check(since);
            if let Some(sleep) = &mut self.sleep {
                sleep.as_mut().reset(next);
            }
        }
    }

    /// The next moment something is decided for a wait that began at `since`.
    fn next_check(&self, since: Instant) -> Instant {
        let mut at = since + self.limits.send_timeout;
        if let Some(d) = self.deadline {
            at = at.min(d);
        }
        if self.slot.is_none() {
            at = at.min(self.grace_check(since));
        }
        at
    }

    /// When a waiting stream is (next) considered for a stall slot: at the end of the grace
    /// period, then at each later multiple of it (while the socket is what holds it back).
    fn grace_check(&self, since: Instant) -> Instant {
        let grace = self.limits.stall_grace.max(Duration::from_millis(1));
        let first = since + grace;
        let now = Instant::now();
        if now < first {
            return first;
        }
        let periods = (now - since).as_nanos() / grace.as_nanos() + 1;
        since + grace * u32::try_from(periods).unwrap_or(u32::MAX)
    }

    /// What the timer set for `at` decides.
    fn check(&mut self, since: Instant, at: Instant) -> Option<Cut> {
        if self.deadline.is_some_and(|d| at >= d) {
            return Some(Cut::Deadline);
        }
        if at >= since + self.limits.send_timeout {
            return Some(Cut::SendTimeout(self.limits.send_timeout));
        }
        if self.slot.is_none() && !self.limits.watch.socket_blocked() {
            match self.limits.stalls.enter() {
                Some(slot) => self.slot = Some(slot),
                None => return Some(Cut::TooManyStalled),
            }
        }
        None
    }
}
