//! An HTTP/2 client connection's state, shared by the task that drives its socket
//! (`server_h2`) and the tasks of its streams: Sluice's own server connection
//! ([`ServerConn`], `sluice_codec::h2::server`) and, per stream, what the client sent that the
//! stream's task has not taken yet.
//!
//! - A stream's task sends its answer through a [`StreamHandle`]: the head, then the body as
//!   the client's windows allow. What it sends is encoded into the connection's output at
//!   once, and the driving task is woken to write it.
//! - A request body is read through a [`StreamBody`]: data the driver received, handed over
//!   without copying; taking it reopens the client's window.
//! - The driver wakes a stream when its client resets it, opens its window, or sends more.
//!
//! The state sits behind one mutex. A worker's tasks run on one thread, so it is never
//! contended; it is held only to move bytes and flags, never across a wait.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::Frame;
use sluice_codec::h2::frame::ErrorCode;
use sluice_codec::h2::server::{OutField, SendError, ServerConn};

use crate::request_body::{BoxError, H2BodySource};

/// How many bytes may wait to be written to the client before streams stop adding more: a
/// client that grants windows but does not read cannot make the connection buffer without
/// bound.
pub(crate) const OUTPUT_HIGH_WATER: usize = 256 * 1024;

/// The connection's state.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) conn: ServerConn,
    slots: Vec<(u32, Slot)>,
    /// The driving task, woken when there is output or a stream ended.
    driver: Option<Waker>,
    /// Bytes taken for writing and not yet written (the driver's own buffer).
    pub(crate) unwritten: usize,
    /// Streams waiting for the driver to write out what is queued.
    waiting_for_socket: Vec<Waker>,
}

/// What one stream's client sent that its tasks have not taken, and who waits for what.
#[derive(Debug, Default)]
struct Slot {
    body: VecDeque<Bytes>,
    /// Trailers that ended the body.
    trailers: Option<HeaderMap>,
    /// The client ended its side.
    ended: bool,
    /// The client reset the stream (or broke the protocol on it).
    reset: Option<ErrorCode>,
    /// The body's reader, waiting for data.
    reader: Option<Waker>,
    /// The answer's sender, waiting for window or watching for a reset.
    sender: Option<Waker>,
}

/// The connection's state as its tasks hold it.
pub(crate) type SharedConn = Arc<Mutex<Shared>>;

pub(crate) fn shared(conn: ServerConn) -> SharedConn {
    Arc::new(Mutex::new(Shared {
        conn,
        slots: Vec::new(),
        driver: None,
        unwritten: 0,
        waiting_for_socket: Vec::new(),
    }))
}

pub(crate) fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // Nothing panics while holding it; a poisoned lock still guards consistent state.
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn slot(&mut self, stream: u32) -> Option<&mut Slot> {
        let i = self
            .slots
            .binary_search_by_key(&stream, |(id, _)| *id)
            .ok()?;
        Some(&mut self.slots[i].1)
    }

    /// A new stream's slot (streams open in increasing order).
    pub(crate) fn open(&mut self, stream: u32, ended: bool) {
        let at = self.slots.partition_point(|(id, _)| *id < stream);
        let slot = Slot {
            ended,
            ..Slot::default()
        };
        self.slots.insert(at, (stream, slot));
    }

    fn remove(&mut self, stream: u32) {
        if let Ok(i) = self.slots.binary_search_by_key(&stream, |(id, _)| *id) {
            self.slots.remove(i);
        }
    }

    /// The client sent body bytes (the driver hands them over).
    pub(crate) fn data(&mut self, stream: u32, data: Bytes, end: bool) {
        if let Some(slot) = self.slot(stream) {
            if !data.is_empty() {
                slot.body.push_back(data);
            }
            slot.ended |= end;
            wake(&mut slot.reader);
        } else {
            // Nobody reads it any more: the window is the client's again.
            self.conn.release(stream, data.len());
        }
    }

    pub(crate) fn trailers(&mut self, stream: u32, trailers: HeaderMap) {
        if let Some(slot) = self.slot(stream) {
            slot.trailers = Some(trailers);
            slot.ended = true;
            wake(&mut slot.reader);
        }
    }

    pub(crate) fn reset(&mut self, stream: u32, code: ErrorCode) {
        if let Some(slot) = self.slot(stream) {
            slot.reset = Some(code);
            wake(&mut slot.reader);
            wake(&mut slot.sender);
        }
    }

    pub(crate) fn writable(&mut self, stream: u32) {
        if let Some(slot) = self.slot(stream) {
            wake(&mut slot.sender);
        }
    }

    /// The connection ended: every stream's tasks stop.
    pub(crate) fn close(&mut self) {
        for (_, slot) in &mut self.slots {
            slot.reset.get_or_insert(ErrorCode::CANCEL);
            wake(&mut slot.reader);
            wake(&mut slot.sender);
        }
        self.socket_drained();
    }

    /// The driver wrote out what was queued: streams waiting on the socket go on.
    pub(crate) fn socket_drained(&mut self) {
        for waker in self.waiting_for_socket.drain(..) {
            waker.wake();
        }
    }

    /// Registers the driving task.
    pub(crate) fn set_driver(&mut self, waker: &Waker) {
        if !self.driver.as_ref().is_some_and(|w| w.will_wake(waker)) {
            self.driver = Some(waker.clone());
        }
    }

    /// Wakes the driver if there is something to write.
    fn kick(&mut self) {
        if self.conn.has_output() {
            wake(&mut self.driver);
        }
    }

    fn output_backed_up(&self) -> bool {
        self.unwritten + self.conn.output().len() > OUTPUT_HIGH_WATER
    }
}

fn wake(waker: &mut Option<Waker>) {
    if let Some(w) = waker.take() {
        w.wake();
    }
}

/// Why a stream's answer cannot go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the client's stream ended ({0:?})")]
pub(crate) struct StreamGone(pub(crate) ErrorCode);

/// A stream's hold on its answer. Dropping it before the answer ended resets the stream.
#[derive(Debug)]
pub(crate) struct StreamHandle {
    shared: SharedConn,
    stream: u32,
}

impl StreamHandle {
    pub(crate) fn new(shared: SharedConn, stream: u32) -> Self {
        Self { shared, stream }
    }

    /// The client's reset, once there is one (the task is woken when it comes).
    pub(crate) fn poll_reset(&self, cx: &mut Context<'_>) -> Poll<StreamGone> {
        let mut s = lock(&self.shared);
        let Some(slot) = s.slot(self.stream) else {
            return Poll::Ready(StreamGone(ErrorCode::CANCEL));
        };
        if let Some(code) = slot.reset {
            return Poll::Ready(StreamGone(code));
        }
        slot.sender = Some(cx.waker().clone());
        Poll::Pending
    }

    pub(crate) fn send_head<'a>(
        &self,
        status: u16,
        fields: impl IntoIterator<Item = OutField<'a>>,
        end: bool,
    ) -> Result<(), StreamGone> {
        let mut s = lock(&self.shared);
        let sent = s.conn.send_head(self.stream, status, fields, end);
        s.kick();
        sent.map_err(gone)
    }

    /// How much body the stream may send now, once it may send some: the client's windows,
    /// and room in the connection's output.
    pub(crate) fn poll_window(&self, cx: &mut Context<'_>) -> Poll<Result<usize, StreamGone>> {
        let mut s = lock(&self.shared);
        let slot = s.slot(self.stream).ok_or(StreamGone(ErrorCode::CANCEL))?;
        if let Some(code) = slot.reset {
            return Poll::Ready(Err(StreamGone(code)));
        }
        slot.sender = Some(cx.waker().clone());
        if s.output_backed_up() {
            s.waiting_for_socket.push(cx.waker().clone());
            return Poll::Pending;
        }
        match s.conn.wait_for_window(self.stream) {
            0 => Poll::Pending,
            n => Poll::Ready(Ok(n)),
        }
    }

    /// Sends what the window allows of `data`; returns how much.
    pub(crate) fn send_data(&self, data: &[u8], end: bool) -> Result<usize, StreamGone> {
        let mut s = lock(&self.shared);
        let sent = s.conn.send_data(self.stream, data, end);
        s.kick();
        sent.map_err(gone)
    }

    pub(crate) fn send_trailers(&self, trailers: &HeaderMap) -> Result<(), StreamGone> {
        let fields = trailers
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes(), v.is_sensitive()));
        let mut s = lock(&self.shared);
        let sent = s.conn.send_trailers(self.stream, fields);
        s.kick();
        sent.map_err(gone)
    }

    /// Ends the stream early with `code`.
    pub(crate) fn reset(&self, code: ErrorCode) {
        let mut s = lock(&self.shared);
        s.conn.reset(self.stream, code);
        s.kick();
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        let mut s = lock(&self.shared);
        // An answer that did not end (the handler gave up, or the client went away).
        if s.conn.is_open(self.stream) {
            s.conn.reset(self.stream, ErrorCode::CANCEL);
        }
        s.remove(self.stream);
        s.kick();
    }
}

fn gone(e: SendError) -> StreamGone {
    match e {
        SendError::StreamGone => StreamGone(ErrorCode::CANCEL),
        // The handle sends each part once, in order: this is Sluice's own mistake.
        SendError::HeadAlreadySent | SendError::NoHead => StreamGone(ErrorCode::INTERNAL_ERROR),
    }
}

/// A stream's request body as the driver receives it.
#[derive(Debug)]
pub(crate) struct StreamBody {
    shared: SharedConn,
    stream: u32,
    done: bool,
}

impl StreamBody {
    pub(crate) fn new(shared: SharedConn, stream: u32) -> Self {
        Self {
            shared,
            stream,
            done: false,
        }
    }
}

impl H2BodySource for StreamBody {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let mut s = lock(&self.shared);
        let Some(slot) = s.slot(self.stream) else {
            self.done = true;
            return Poll::Ready(Some(Err(StreamGone(ErrorCode::CANCEL).into())));
        };
        if let Some(data) = slot.body.pop_front() {
            // Taken, not merely received: the client may send as much again.
            s.conn.release(self.stream, data.len());
            s.kick();
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(code) = slot.reset {
            self.done = true;
            return Poll::Ready(Some(Err(StreamGone(code).into())));
        }
        if let Some(trailers) = slot.trailers.take() {
            self.done = true;
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        if slot.ended {
            self.done = true;
            return Poll::Ready(None);
        }
        slot.reader = Some(cx.waker().clone());
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn reset(&mut self, code: ErrorCode) {
        let mut s = lock(&self.shared);
        s.conn.reset(self.stream, code);
        s.reset(self.stream, code);
        s.kick();
    }
}
