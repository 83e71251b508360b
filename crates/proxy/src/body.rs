//! The response body sent to the client ([`DownBody`]): a local (error) body, or the
//! instance's stream with idle and total-deadline timers. It carries the request's
//! [`Exchange`] record, which is finished — metrics, access log, pooled connection returned —
//! when the body ends or is dropped.
//!
//! Timers are armed lazily: a body whose next frame is already there never touches the timer
//! wheel, which is the common case for small responses.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use crate::exchange::Exchange;
use crate::link::{InstanceBody, InstanceBodyError};
use crate::request_body::{BoxError, StallTimer};

/// Why a response body stopped early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ResponseBodyError {
    #[error("upstream sent nothing for {0:?} while streaming the response body")]
    Idle(Duration),
    #[error("the request's total deadline passed while streaming the response body")]
    Deadline,
    #[error("upstream response body failed: {0}")]
    Upstream(#[source] InstanceBodyError),
}

#[derive(Debug)]
enum DownInner {
    Local(Option<Bytes>),
    Upstream {
        inner: InstanceBody,
        idle: Duration,
        deadline: Instant,
        timer: StallTimer,
    },
}

/// What [`DownBody::poll_frame`] gives: a frame, an error, or the end (`None`).
type Polled = Option<Result<Frame<Bytes>, BoxError>>;

/// The response body sent to the client.
#[derive(Debug)]
pub struct DownBody {
    inner: DownInner,
    /// Polled ahead by [`DownBody::first_bytes`]; handed out by the next `poll_frame`.
    ahead: Option<Polled>,
    bytes_out: u64,
    exchange: Option<Exchange>,
}

impl DownBody {
    pub(crate) fn local(bytes: Bytes, exchange: Exchange) -> Self {
        Self {
            inner: DownInner::Local(Some(bytes).filter(|b| !b.is_empty())),
            ahead: None,
            bytes_out: 0,
            exchange: Some(exchange),
        }
    }

    /// A body that belongs to no request record (a request refused before it had one).
    pub(crate) fn bare(bytes: Bytes) -> Self {
        Self {
            inner: DownInner::Local(Some(bytes).filter(|b| !b.is_empty())),
            ahead: None,
            bytes_out: 0,
            exchange: None,
        }
    }

    pub(crate) fn upstream(
        inner: InstanceBody,
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
            ahead: None,
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

    /// Waits for the body's first frame (or its end, or its failure) and keeps it for the
    /// next `poll_frame`, so that an answer's head can leave with its first bytes; the size
    /// hint still counts them.
    pub(crate) async fn first_bytes(&mut self) {
        if self.ahead.is_none() {
            let polled = std::future::poll_fn(|cx| Pin::new(&mut *self).poll_frame(cx)).await;
            self.ahead = Some(polled);
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
        if let Some(ahead) = this.ahead.take() {
            return Poll::Ready(ahead);
        }
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
        if let Some(ahead) = &self.ahead {
            return ahead.is_none();
        }
        match &self.inner {
            DownInner::Local(b) => b.is_none(),
            DownInner::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        let rest = match &self.inner {
            DownInner::Local(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            DownInner::Upstream { inner, .. } => inner.size_hint(),
        };
        let ahead = match &self.ahead {
            Some(Some(Ok(frame))) => frame.data_ref().map_or(0, |d| d.len() as u64),
            _ => return rest,
        };
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + ahead);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + ahead);
        }
        hint
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

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;

    use super::*;

    /// A frame polled ahead still counts in the size hint (an HTTP/2 head states
    /// `content-length` from it) and is the next frame handed out.
    #[tokio::test]
    async fn a_frame_polled_ahead_is_counted_and_handed_out_next() {
        let mut body = DownBody::bare(Bytes::from_static(b"hello"));
        body.first_bytes().await;
        assert_eq!(body.size_hint().exact(), Some(5));
        assert!(!body.is_end_stream());
        let frame = body.frame().await.expect("a frame").expect("data");
        assert_eq!(frame.into_data().ok(), Some(Bytes::from_static(b"hello")));
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
    }
}
