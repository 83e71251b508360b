//! One HTTP/2 connection's server side as a state machine without I/O: bytes from the client
//! go in ([`ServerConn::receive`]) and come out as [`Event`]s; answers go in (`send_*`) and
//! come out as bytes to write ([`ServerConn::output`]). The connection's owner holds the
//! socket and the timers, and may keep every stream's state in one task, taking no lock.
//!
//! What is enforced here, whatever the client does:
//! - stream identifiers, states and frame order (RFC 9113 §5.1, §6): a frame that breaks them
//!   ends the stream or the connection with the RFC's error code;
//! - flow control both ways (§5.2, §6.9): the client may send no more than the windows it was
//!   given, which reopen only as the owner [`ServerConn::release`]s what it consumed, so a
//!   connection never holds more than its window of unread request bodies; answers go out only
//!   as far as the client's windows allow;
//! - `max_concurrent_streams` (streams beyond it are refused, REFUSED_STREAM), a header list
//!   limit (the stream stays open so the owner can answer 431; its body is dropped), a cap on a
//!   field block's compressed size across CONTINUATION frames (the connection ends,
//!   ENHANCE_YOUR_CALM), and a budget of streams the client resets before they are answered or
//!   has refused (rapid reset, CVE-2023-44487), refilled by each stream answered in full.
//!
//! What is not: time (SETTINGS acknowledgement, idle connections and stalled streams are the
//! owner's timers), and the size of [`ServerConn::output`]: an owner that cannot write it out
//! stops reading, which stops PING and SETTINGS floods from growing it.

use std::ops::Range;

use super::frame::{self, ErrorCode, Frame, FrameError, MAX_WINDOW, setting};
use super::head::{Head, HeadBuilder, HeadError};
use super::hpack::{self, Decoder, encode};

/// A connection's limits, announced to the client in SETTINGS where the protocol has a setting.
#[derive(Debug, Clone)]
pub struct Config {
    pub max_concurrent_streams: u32,
    pub max_header_list_size: u32,
    /// Each stream's receive window (at least 65,535, the protocol's initial one).
    pub stream_window: u32,
    /// The connection's receive window: all streams' unread bodies together.
    pub connection_window: u32,
    /// The largest frame the client may send (16 KiB to 16 MiB).
    pub max_frame_size: u32,
    /// Streams the client may reset before they are answered, or have refused, beyond those
    /// paid back by answered ones, before the connection is ended.
    pub reset_budget: u32,
}

/// What the client's bytes meant.
#[derive(Debug)]
pub enum Event {
    /// A new request's head. `end_stream`: it has no body.
    Request {
        stream: u32,
        head: Head,
        end_stream: bool,
    },
    /// Body bytes, at `at` in the input given to [`ServerConn::receive`]; the owner calls
    /// [`ServerConn::release`] with their length once it has passed them on, which reopens
    /// the client's windows.
    Data {
        stream: u32,
        at: Range<usize>,
        end_stream: bool,
    },
    /// The request's trailer section, which ends it.
    Trailers { stream: u32, trailers: Head },
    /// A request whose fields exceed `max_header_list_size`: the owner answers it (431); its
    /// body is dropped.
    HeadTooLarge { stream: u32 },
    /// A stream refused before the owner saw it (malformed, or over the concurrency limit); a
    /// reset was already sent. For logs and metrics.
    Refused { stream: u32, reason: &'static str },
    /// The stream ended early: the client reset it, or broke the protocol on it (a reset was
    /// sent). The owner drops its answer.
    Reset { stream: u32, code: ErrorCode },
    /// The client opened window for a stream that had more to send.
    Writable { stream: u32 },
}

/// The connection must end: a GOAWAY with `code` is already in the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("HTTP/2 connection error {code:?}: {reason}")]
pub struct ConnError {
    pub code: ErrorCode,
    pub reason: &'static str,
}

/// Why something could not be sent on a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("the stream is closed or was reset")]
    StreamGone,
    #[error("the answer's head was already sent")]
    HeadAlreadySent,
    #[error("the answer's head has not been sent")]
    NoHead,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sending {
    Head,
    Body,
}

#[derive(Debug)]
struct Stream {
    /// The client has not ended its side yet.
    receiving: bool,
    sending: Sending,
    send_window: i64,
    /// What the client may still send on the stream.
    recv_window: i64,
    /// Body bytes handed to the owner and not yet released by it.
    held: u32,
    /// Released by the owner and not yet given back in a WINDOW_UPDATE.
    unannounced: u32,
    /// Waiting for window to send more.
    blocked: bool,
    /// A head that was too large: the body is dropped as it comes.
    discard_body: bool,
}

/// A field block still arriving in CONTINUATION frames.
#[derive(Debug)]
struct PendingBlock {
    stream: u32,
    end_stream: bool,
    block: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the client's preface.
    Preface,
    /// The preface arrived; the client's first frame must be SETTINGS.
    FirstSettings,
    Open,
    /// A connection error was sent.
    Failed,
}

/// The server side of one HTTP/2 connection.
#[derive(Debug)]
pub struct ServerConn {
    config: Config,
    phase: Phase,
    decoder: Decoder,
    streams: Streams,
    /// The highest stream the client opened.
    last_stream: u32,
    pending: Option<PendingBlock>,
    /// The client's settings that shape what is sent.
    peer_max_frame: u32,
    peer_initial_window: i64,
    conn_send_window: i64,
    conn_recv_window: i64,
    conn_unannounced: u32,
    budget: u32,
    /// A GOAWAY was sent (no new streams are taken) or received.
    going_away: bool,
    peer_going_away: bool,
    out: Vec<u8>,
    /// Where an answer's field block is put together.
    block: Vec<u8>,
}

/// The protocol's initial window, before SETTINGS and WINDOW_UPDATE change it.
const INITIAL_WINDOW: u32 = 65_535;

impl ServerConn {
    /// A connection whose SETTINGS (and the rest of its connection window) are already in the
    /// output, as the server's preface.
    pub fn new(mut config: Config) -> Self {
        config.stream_window = config.stream_window.clamp(INITIAL_WINDOW, MAX_WINDOW);
        config.connection_window = config.connection_window.clamp(INITIAL_WINDOW, MAX_WINDOW);
        config.max_frame_size = config
            .max_frame_size
            .clamp(frame::DEFAULT_MAX_FRAME_SIZE, frame::MAX_MAX_FRAME_SIZE);
        let mut out = Vec::with_capacity(64);
        frame::write_settings(
            &mut out,
            &[
                (
                    setting::MAX_CONCURRENT_STREAMS,
                    config.max_concurrent_streams,
                ),
                (setting::INITIAL_WINDOW_SIZE, config.stream_window),
                (setting::MAX_FRAME_SIZE, config.max_frame_size),
                // Not SETTINGS_MAX_HEADER_LIST_SIZE: nghttp2 (curl's HTTP/2) refuses to send a
                // request over it and fails the whole connection, where an answer of 431 tells
                // the user what happened. nginx does not announce its limit either.
            ],
        );
        if config.connection_window > INITIAL_WINDOW {
            frame::write_window_update(&mut out, 0, config.connection_window - INITIAL_WINDOW);
        }
        Self {
            phase: Phase::Preface,
            decoder: Decoder::new(hpack::DEFAULT_TABLE_SIZE),
            streams: Streams::default(),
            last_stream: 0,
            pending: None,
            peer_max_frame: frame::DEFAULT_MAX_FRAME_SIZE,
            peer_initial_window: i64::from(INITIAL_WINDOW),
            conn_send_window: i64::from(INITIAL_WINDOW),
            conn_recv_window: i64::from(config.connection_window),
            conn_unannounced: 0,
            budget: config.reset_budget,
            going_away: false,
            peer_going_away: false,
            out,
            block: Vec::new(),
            config,
        }
    }

    /// The bytes to write to the client.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// Moves the bytes to write into `into` (after what it holds).
    pub fn take_output(&mut self, into: &mut Vec<u8>) {
        if into.is_empty() {
            std::mem::swap(into, &mut self.out);
        } else {
            into.append(&mut self.out);
        }
    }

    /// Whether there are bytes to write.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Whether `stream` is open (the client's request not yet answered in full or reset).
    pub fn is_open(&self, stream: u32) -> bool {
        self.streams.contains(stream)
    }

    /// `n` bytes of [`Self::output`] were written.
    pub fn advance_output(&mut self, n: usize) {
        self.out.drain(..n.min(self.out.len()));
    }

    /// Streams open (and half-closed) now.
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// A GOAWAY went either way and no stream is left: the connection can be closed.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Failed
            || ((self.going_away || self.peer_going_away) && self.streams.is_empty())
    }

    /// Takes no new streams (GOAWAY, NO_ERROR); the open ones finish.
    pub fn go_away(&mut self) {
        if !self.going_away && self.phase != Phase::Failed {
            self.going_away = true;
            frame::write_goaway(&mut self.out, self.last_stream, ErrorCode::NO_ERROR);
        }
    }

    /// Reads as many whole frames of `input` as there are, handing what they mean to `on`;
    /// returns the bytes read (the rest is an incomplete frame, to be passed again with what
    /// follows). After an error the connection must be closed once the output is written.
    pub fn receive(
        &mut self,
        input: &[u8],
        on: &mut impl FnMut(Event),
    ) -> Result<usize, ConnError> {
        let mut read = 0;
        if self.phase == Phase::Failed {
            return Err(self.fail(ErrorCode::PROTOCOL_ERROR, "connection already failed"));
        }
        if self.phase == Phase::Preface {
            let Some(preface) = input.get(..frame::PREFACE.len()) else {
                if !frame::PREFACE.starts_with(input) {
                    return Err(self.fail(ErrorCode::PROTOCOL_ERROR, "not the HTTP/2 preface"));
                }
                return Ok(0);
            };
            if preface != frame::PREFACE {
                return Err(self.fail(ErrorCode::PROTOCOL_ERROR, "not the HTTP/2 preface"));
            }
            self.phase = Phase::FirstSettings;
            read = preface.len();
        }
        loop {
            let next = frame::read(&input[read..], self.config.max_frame_size);
            let (f, taken) = match next {
                Ok(Some(found)) => found,
                Ok(None) => return Ok(read),
                Err(FrameError::Connection { code, reason }) => return Err(self.fail(code, reason)),
                Err(FrameError::Stream {
                    stream,
                    code,
                    reason,
                }) => {
                    // Only a whole frame is judged, so all of it is there to skip.
                    read += frame_len(&input[read..]);
                    self.stream_error(stream, code, reason, on)?;
                    continue;
                }
            };
            self.on_frame(f, read, on)
                .map_err(|(code, reason)| self.fail(code, reason))?;
            read += taken;
        }
    }

    /// One frame, which starts at `at` in the input.
    fn on_frame(
        &mut self,
        f: Frame<'_>,
        at: usize,
        on: &mut impl FnMut(Event),
    ) -> Result<(), Failure> {
        if self.phase == Phase::FirstSettings {
            if !matches!(f, Frame::Settings(_)) {
                return Err((ErrorCode::PROTOCOL_ERROR, "first frame is not SETTINGS"));
            }
            self.phase = Phase::Open;
        }
        if let Some(pending) = &self.pending
            && !matches!(f, Frame::Continuation { stream, .. } if stream == pending.stream)
        {
            return Err((ErrorCode::PROTOCOL_ERROR, "field block interrupted"));
        }
        match f {
            Frame::Headers {
                stream,
                end_stream,
                end_headers,
                block,
            } => self.on_headers(stream, end_stream, end_headers, block, on),
            Frame::Continuation {
                end_headers, block, ..
            } => self.on_continuation(end_headers, block, on),
            Frame::Data {
                stream,
                end_stream,
                data,
                offset,
                flow_len,
            } => {
                let start = at + offset;
                let data = start..start + data.len();
                self.on_data(stream, end_stream, data, flow_len, on)
            }
            Frame::WindowUpdate { stream, increment } => {
                self.on_window_update(stream, increment, on)
            }
            Frame::RstStream { stream, code } => self.on_rst_stream(stream, code, on),
            Frame::Settings(settings) => self.on_settings(settings.iter(), on),
            Frame::Ping {
                ack: false,
                payload,
            } => {
                frame::write_ping_ack(&mut self.out, payload);
                Ok(())
            }
            Frame::GoAway { .. } => {
                self.peer_going_away = true;
                Ok(())
            }
            Frame::PushPromise { .. } => {
                Err((ErrorCode::PROTOCOL_ERROR, "PUSH_PROMISE from a client"))
            }
            Frame::SettingsAck | Frame::Ping { ack: true, .. } | Frame::Priority { .. } => Ok(()),
            Frame::Unknown => Ok(()),
        }
    }
}

/// The length of the frame at the start of `input`, header included.
fn frame_len(input: &[u8]) -> usize {
    match input.first_chunk::<{ frame::HEADER_LEN }>() {
        Some(head) => frame::HEADER_LEN + frame::FrameHeader::read(head).len as usize,
        None => input.len(),
    }
}

/// A connection error's code and reason, before the GOAWAY is written.
type Failure = (ErrorCode, &'static str);

mod receiving;
mod sending;
mod streams;

use streams::Streams;

pub use sending::OutField;

#[cfg(test)]
mod tests;
