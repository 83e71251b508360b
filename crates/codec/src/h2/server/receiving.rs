//! What the client sends: field blocks, bodies, windows, resets and settings.

use std::ops::Range;

use super::{
    ConnError, ErrorCode, Event, Failure, Head, HeadBuilder, HeadError, MAX_WINDOW, PendingBlock,
    Phase, Sending, ServerConn, Stream, frame, setting,
};

/// How many bytes of compressed field block one request may take, at least: blocks longer than
/// twice the header list limit (or this) end the connection.
const MIN_BLOCK_CAP: usize = 32 * 1024;

impl ServerConn {
    pub(super) fn on_headers(
        &mut self,
        stream: u32,
        end_stream: bool,
        end_headers: bool,
        block: &[u8],
        on: &mut impl FnMut(Event),
    ) -> Result<(), Failure> {
        if end_headers {
            return self.on_block(stream, end_stream, block, on);
        }
        self.check_block_size(block.len())?;
        self.pending = Some(PendingBlock {
            stream,
            end_stream,
            block: block.to_vec(),
        });
        Ok(())
    }

    pub(super) fn on_continuation(
        &mut self,
        end_headers: bool,
        part: &[u8],
        on: &mut impl FnMut(Event),
    ) -> Result<(), Failure> {
        let Some(pending) = &mut self.pending else {
            return Err((
                ErrorCode::PROTOCOL_ERROR,
                "CONTINUATION without a field block",
            ));
        };
        pending.block.extend_from_slice(part);
        let len = pending.block.len();
        self.check_block_size(len)?;
        if !end_headers {
            return Ok(());
        }
        let Some(pending) = self.pending.take() else {
            return Ok(());
        };
        self.on_block(pending.stream, pending.end_stream, &pending.block, on)
    }

    fn check_block_size(&self, len: usize) -> Result<(), Failure> {
        let cap = (2 * self.config.max_header_list_size as usize).max(MIN_BLOCK_CAP);
        if len > cap {
            return Err((ErrorCode::ENHANCE_YOUR_CALM, "field block too large"));
        }
        Ok(())
    }

    /// A whole field block: a new request, trailers, or one to decode only to keep the table.
    fn on_block(
        &mut self,
        stream: u32,
        end_stream: bool,
        block: &[u8],
        on: &mut impl FnMut(Event),
    ) -> Result<(), Failure> {
        if let Some(s) = self.streams.get(stream) {
            let receiving = s.receiving;
            let decoded = self.decode(block, true)?;
            if !receiving {
                return self.reset_known(stream, ErrorCode::STREAM_CLOSED, on);
            }
            if !end_stream {
                return self.reset_known(stream, ErrorCode::PROTOCOL_ERROR, on);
            }
            return match decoded {
                Ok(trailers) => {
                    self.end_receiving(stream);
                    on(Event::Trailers { stream, trailers });
                    Ok(())
                }
                Err(_) => self.reset_known(stream, ErrorCode::PROTOCOL_ERROR, on),
            };
        }
        let decoded = self.decode(block, false)?;
        if stream <= self.last_stream {
            // A stream this side reset: what was in flight is dropped.
            return Ok(());
        }
        if stream.is_multiple_of(2) {
            return Err((
                ErrorCode::PROTOCOL_ERROR,
                "client stream with an even identifier",
            ));
        }
        self.last_stream = stream;
        if self.going_away {
            return Ok(());
        }
        if self.streams.len() >= self.config.max_concurrent_streams as usize {
            return self.refuse(stream, ErrorCode::REFUSED_STREAM, "too many streams", on);
        }
        match decoded {
            Ok(head) => {
                self.open(stream, end_stream, false);
                on(Event::Request {
                    stream,
                    head,
                    end_stream,
                });
                Ok(())
            }
            Err(HeadError::TooLarge) => {
                self.open(stream, end_stream, true);
                on(Event::HeadTooLarge { stream });
                Ok(())
            }
            Err(HeadError::Malformed(reason)) => {
                self.refuse(stream, ErrorCode::PROTOCOL_ERROR, reason, on)
            }
        }
    }

    /// Decodes a block; an HPACK error ends the connection, a bad field list only the stream.
    fn decode(&mut self, block: &[u8], trailers: bool) -> Result<Result<Head, HeadError>, Failure> {
        let max = self.config.max_header_list_size as usize;
        let mut builder = HeadBuilder::new(max, trailers, block.len());
        self.decoder
            .decode(block, |f| builder.push(f))
            .map_err(|_| (ErrorCode::COMPRESSION_ERROR, "field block does not decode"))?;
        Ok(builder.finish())
    }

    fn open(&mut self, stream: u32, end_stream: bool, discard_body: bool) {
        self.streams.insert(
            stream,
            Stream {
                receiving: !end_stream,
                sending: Sending::Head,
                send_window: self.peer_initial_window,
                recv_window: i64::from(self.config.stream_window),
                held: 0,
                unannounced: 0,
                blocked: false,
                discard_body,
            },
        );
    }

    pub(super) fn on_data(
        &mut self,
        stream: u32,
        end_stream: bool,
        data: Range<usize>,
        flow_len: u32,
        on: &mut impl FnMut(Event),
    ) -> Result<(), Failure> {
        let flow = i64::from(flow_len);
        if flow > self.conn_recv_window {
            return Err((
                ErrorCode::FLOW_CONTROL_ERROR,
                "DATA beyond the connection's window",
            ));
        }
        self.conn_recv_window -= flow;
        let Some(s) = self.streams.get_mut(stream) else {
            if stream > self.last_stream {
                return Err((ErrorCode::PROTOCOL_ERROR, "DATA on a stream never opened"));
            }
            self.release_connection(flow_len);
            return Ok(());
        };
        if !s.receiving {
            self.release_connection(flow_len);
            return self.reset_known(stream, ErrorCode::STREAM_CLOSED, on);
        }
        if flow > s.recv_window {
            self.release_connection(flow_len);
            return self.reset_known(stream, ErrorCode::FLOW_CONTROL_ERROR, on);
        }
        s.recv_window -= flow;
        let discard = s.discard_body;
        // Padding is never the owner's to release, nor is a dropped body.
        let kept = if discard { 0 } else { data.len() as u32 };
        s.held += kept;
        self.give_back(stream, flow_len - kept);
        if end_stream {
            self.end_receiving(stream);
        }
        if !discard && (!data.is_empty() || end_stream) {
            on(Event::Data {
                stream,
                at: data,
                end_stream,
            });
        }
        Ok(())
    }

    /// The owner passed on `n` bytes of a stream's body: the client may send as much again.
    /// Windows are given back once half of them is used, in one WINDOW_UPDATE each. Only what
    /// was handed out counts; a stream that ended gave its bytes back when it did.
    pub fn release(&mut self, stream: u32, n: usize) {
        let Some(s) = self.streams.get_mut(stream) else {
            return;
        };
        let n = u32::try_from(n).unwrap_or(u32::MAX).min(s.held);
        s.held -= n;
        self.give_back(stream, n);
    }

    /// `n` bytes of a stream's window are the client's again.
    fn give_back(&mut self, stream: u32, n: u32) {
        if n == 0 {
            return;
        }
        self.release_connection(n);
        let half = self.config.stream_window / 2;
        if let Some(s) = self.streams.get_mut(stream)
            && s.receiving
        {
            s.unannounced += n;
            if s.unannounced >= half {
                frame::write_window_update(&mut self.out, stream, s.unannounced);
                s.recv_window += i64::from(s.unannounced);
                s.unannounced = 0;
            }
        }
    }

    fn release_connection(&mut self, n: u32) {
        if n == 0 {
            return;
        }
        self.conn_unannounced = self.conn_unannounced.saturating_add(n);
        if self.conn_unannounced >= self.config.connection_window / 2 {
            frame::write_window_update(&mut self.out, 0, self.conn_unannounced);
            self.conn_recv_window += i64::from(self.conn_unannounced);
            self.conn_unannounced = 0;
        }
    }

    pub(super) fn on_window_update(
        &mut self,
        stream: u32,
        increment: u32,
        on: &mut impl FnMut(Event),
    ) -> Result<(), Failure> {
        if stream == 0 {
            self.conn_send_window += i64::from(increment);
            if self.conn_send_window > i64::from(MAX_WINDOW) {
                return Err((
                    ErrorCode::FLOW_CONTROL_ERROR,
                    "connection window above 2^31-1",
                ));
            }
            let blocked: Vec<u32> = self
                .streams
                .iter()
                .filter(|(_, s)| s.blocked && s.send_window > 0)
                .map(|(id, _)| id)
                .collect();
            for stream in blocked {
                self.wake(stream, on);
            }
            return Ok(());
        }
        let Some(s) = self.streams.get_mut(stream) else {
            if stream > self.last_stream {
                return Err((
                    ErrorCode::PROTOCOL_ERROR,
                    "WINDOW_UPDATE on a stream never opened",
                ));
            }
            return Ok(());
        };
        s.send_window += i64::from(increment);
        if s.send_window > i64::from(MAX_WINDOW) {
            return self.reset_known(stream, ErrorCode::FLOW_CONTROL_ERROR, on);
        }
        if s.blocked && s.send_window > 0 && self.conn_send_window > 0 {
            self.wake(stream, on);
        }
        Ok(())
    }

    fn wake(&mut self, stream: u32, on: &mut impl FnMut(Event)) {
        if let Some(s) = self.streams.get_mut(stream) {
            s.blocked = false;
            on(Event::Writable { stream });
        }
    }

    pub(super) fn on_rst_stream(
        &mut self,
        stream: u32,
        code: ErrorCode,
        on: &mut impl FnMut(Event),
    ) -> Result<(), Failure> {
        let Some(s) = self.drop_stream(stream) else {
            if stream > self.last_stream {
                return Err((
                    ErrorCode::PROTOCOL_ERROR,
                    "RST_STREAM on a stream never opened",
                ));
            }
            return Ok(());
        };
        // Resetting a stream whose answer has not gone out is what a rapid-reset flood does.
        if s.sending == Sending::Head {
            self.spend_budget()?;
        }
        on(Event::Reset { stream, code });
        Ok(())
    }

    pub(super) fn on_settings(
        &mut self,
        settings: impl Iterator<Item = (u16, u32)>,
        on: &mut impl FnMut(Event),
    ) -> Result<(), Failure> {
        for (id, value) in settings {
            match id {
                setting::INITIAL_WINDOW_SIZE => self.new_initial_window(value, on)?,
                setting::MAX_FRAME_SIZE => self.peer_max_frame = value,
                _ => {}
            }
        }
        frame::write_settings_ack(&mut self.out);
        Ok(())
    }

    /// SETTINGS_INITIAL_WINDOW_SIZE changes every open stream's window by the difference
    /// (RFC 9113 §6.9.2), which may leave it negative.
    fn new_initial_window(
        &mut self,
        value: u32,
        on: &mut impl FnMut(Event),
    ) -> Result<(), Failure> {
        let delta = i64::from(value) - self.peer_initial_window;
        self.peer_initial_window = i64::from(value);
        let mut woken = Vec::new();
        for (id, s) in self.streams.iter_mut() {
            s.send_window += delta;
            if s.send_window > i64::from(MAX_WINDOW) {
                return Err((ErrorCode::FLOW_CONTROL_ERROR, "stream window above 2^31-1"));
            }
            if delta > 0 && s.blocked && s.send_window > 0 {
                woken.push(id);
            }
        }
        for stream in woken {
            self.wake(stream, on);
        }
        Ok(())
    }

    /// A stream error on a stream the owner knows: reset it and tell the owner.
    fn reset_known(
        &mut self,
        stream: u32,
        code: ErrorCode,
        on: &mut impl FnMut(Event),
    ) -> Result<(), Failure> {
        frame::write_rst_stream(&mut self.out, stream, code);
        if self.drop_stream(stream).is_some() {
            on(Event::Reset { stream, code });
        }
        Ok(())
    }

    /// A new stream refused before the owner saw it.
    fn refuse(
        &mut self,
        stream: u32,
        code: ErrorCode,
        reason: &'static str,
        on: &mut impl FnMut(Event),
    ) -> Result<(), Failure> {
        frame::write_rst_stream(&mut self.out, stream, code);
        on(Event::Refused { stream, reason });
        self.spend_budget()
    }

    /// A stream error reported by the frame layer.
    pub(super) fn stream_error(
        &mut self,
        stream: u32,
        code: ErrorCode,
        reason: &'static str,
        on: &mut impl FnMut(Event),
    ) -> Result<(), ConnError> {
        if self.streams.contains(stream) {
            self.reset_known(stream, code, on)
                .map_err(|(code, reason)| self.fail(code, reason))
        } else {
            frame::write_rst_stream(&mut self.out, stream, code);
            on(Event::Refused { stream, reason });
            self.spend_budget()
                .map_err(|(code, reason)| self.fail(code, reason))
        }
    }

    fn spend_budget(&mut self) -> Result<(), Failure> {
        self.budget = self.budget.saturating_sub(1);
        if self.budget == 0 {
            return Err((
                ErrorCode::ENHANCE_YOUR_CALM,
                "too many streams reset before an answer, or refused",
            ));
        }
        Ok(())
    }

    /// Removes a stream; the body bytes the owner still holds give their connection window
    /// back (the owner drops them with the stream).
    pub(super) fn drop_stream(&mut self, stream: u32) -> Option<Stream> {
        let s = self.streams.remove(stream)?;
        self.release_connection(s.held);
        Some(s)
    }

    /// The client ended its side of `stream`.
    fn end_receiving(&mut self, stream: u32) {
        if let Some(s) = self.streams.get_mut(stream) {
            s.receiving = false;
        }
    }

    /// Ends the connection: GOAWAY with `code`.
    pub(super) fn fail(&mut self, code: ErrorCode, reason: &'static str) -> ConnError {
        if self.phase != Phase::Failed {
            frame::write_goaway(&mut self.out, self.last_stream, code);
            self.phase = Phase::Failed;
        }
        ConnError { code, reason }
    }
}
