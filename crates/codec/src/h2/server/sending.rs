//! What the owner sends: answers' heads, bodies as far as the windows allow, trailers, resets.

use super::{ErrorCode, SendError, Sending, ServerConn, encode, frame};

/// A field to send: name, value, and whether it must never be indexed by anyone passing it on.
pub type OutField<'a> = (&'a [u8], &'a [u8], bool);

impl ServerConn {
    /// Sends the answer's head. Names are lowercased; the fields must already be free of
    /// HTTP/1.x connection-specific ones. `end_stream`: the answer has no body.
    pub fn send_head<'a>(
        &mut self,
        stream: u32,
        status: u16,
        fields: impl IntoIterator<Item = OutField<'a>>,
        end_stream: bool,
    ) -> Result<(), SendError> {
        let s = self.streams.get_mut(stream).ok_or(SendError::StreamGone)?;
        if s.sending != Sending::Head {
            return Err(SendError::HeadAlreadySent);
        }
        s.sending = Sending::Body;
        self.write_block(stream, Some(status), fields, end_stream);
        Ok(())
    }

    /// How many body bytes `stream` may send now; when none, the stream is noted as waiting,
    /// and [`super::Event::Writable`] comes once the client opens window for it.
    pub fn wait_for_window(&mut self, stream: u32) -> usize {
        let window = self.send_window(stream);
        if window == 0
            && let Some(s) = self.streams.get_mut(stream)
        {
            s.blocked = true;
        }
        window
    }

    /// How many body bytes `stream` may send now.
    pub fn send_window(&self, stream: u32) -> usize {
        self.streams.get(stream).map_or(0, |s| {
            s.send_window.min(self.conn_send_window).max(0) as usize
        })
    }

    /// Sends as much of `data` as the windows allow, in frames no larger than the client takes;
    /// returns how much. When it is less than all, [`super::Event::Writable`] comes once the
    /// client opens window. `end_stream` ends the answer with the last of `data` (an empty
    /// `data` ends it at once).
    pub fn send_data(
        &mut self,
        stream: u32,
        data: &[u8],
        end_stream: bool,
    ) -> Result<usize, SendError> {
        let window = self.send_window(stream);
        let s = self.streams.get_mut(stream).ok_or(SendError::StreamGone)?;
        if s.sending != Sending::Body {
            return Err(SendError::NoHead);
        }
        let n = data.len().min(window);
        s.send_window -= n as i64;
        self.conn_send_window -= n as i64;
        let ends = end_stream && n == data.len();
        s.blocked = n < data.len();
        let max = self.peer_max_frame as usize;
        let mut chunks = data[..n].chunks(max).peekable();
        if chunks.peek().is_none() && ends {
            frame::write_data_header(&mut self.out, stream, 0, true);
        }
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            frame::write_data_header(&mut self.out, stream, chunk.len(), last && ends);
            self.out.extend_from_slice(chunk);
        }
        if ends {
            self.finish_sending(stream);
        }
        Ok(n)
    }

    /// Ends the answer with a trailer section (e.g. `grpc-status`).
    pub fn send_trailers<'a>(
        &mut self,
        stream: u32,
        fields: impl IntoIterator<Item = OutField<'a>>,
    ) -> Result<(), SendError> {
        let s = self.streams.get(stream).ok_or(SendError::StreamGone)?;
        if s.sending != Sending::Body {
            return Err(SendError::NoHead);
        }
        self.write_block(stream, None, fields, true);
        Ok(())
    }

    /// Encodes a head (with `:status`) or trailers into HEADERS (and CONTINUATION) frames.
    fn write_block<'a>(
        &mut self,
        stream: u32,
        status: Option<u16>,
        fields: impl IntoIterator<Item = OutField<'a>>,
        end_stream: bool,
    ) {
        self.block.clear();
        if let Some(status) = status {
            encode::status(&mut self.block, status);
        }
        for (name, value, sensitive) in fields {
            encode::field(&mut self.block, name, value, sensitive);
        }
        let max_frame = self.peer_max_frame;
        frame::write_headers(&mut self.out, stream, &self.block, end_stream, max_frame);
        if end_stream {
            self.finish_sending(stream);
        }
    }

    /// Ends `stream` early (RST_STREAM with `code`), e.g. when its answer cannot be finished.
    pub fn reset(&mut self, stream: u32, code: ErrorCode) {
        if self.drop_stream(stream).is_some() {
            frame::write_rst_stream(&mut self.out, stream, code);
        }
    }

    /// The answer is complete. If the client is still sending, it is asked to stop without
    /// error (RST_STREAM NO_ERROR, RFC 9113 §8.1): the rest of its request is not needed.
    fn finish_sending(&mut self, stream: u32) {
        if let Some(s) = self.drop_stream(stream)
            && s.receiving
        {
            frame::write_rst_stream(&mut self.out, stream, ErrorCode::NO_ERROR);
        }
        self.budget = (self.budget + 1).min(self.config.reset_budget);
    }
}
