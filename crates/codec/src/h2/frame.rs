//! HTTP/2 frames (RFC 9113 §4, §6): reading one from the bytes that have arrived, with every
//! check the RFC asks of a frame on its own, and writing the frames a server sends.
//!
//! What a frame means for a connection's or stream's state (a HEADERS on a closed stream, a
//! window that overflows, a CONTINUATION that does not follow its HEADERS) is for the
//! connection to judge; this layer only refuses frames that are malformed whatever the state.

use bytes::BufMut;

/// What a client sends first (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A frame header's length.
pub const HEADER_LEN: usize = 9;
/// SETTINGS_MAX_FRAME_SIZE's initial value and smallest allowed one.
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 16_384;
/// SETTINGS_MAX_FRAME_SIZE's largest allowed value.
pub const MAX_MAX_FRAME_SIZE: u32 = (1 << 24) - 1;
/// The largest flow-control window (RFC 9113 §6.9.1).
pub const MAX_WINDOW: u32 = (1 << 31) - 1;

/// Frame flags.
pub mod flags {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// An error code of RST_STREAM and GOAWAY (RFC 9113 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    pub const NO_ERROR: Self = Self(0x0);
    pub const PROTOCOL_ERROR: Self = Self(0x1);
    pub const INTERNAL_ERROR: Self = Self(0x2);
    pub const FLOW_CONTROL_ERROR: Self = Self(0x3);
    pub const SETTINGS_TIMEOUT: Self = Self(0x4);
    pub const STREAM_CLOSED: Self = Self(0x5);
    pub const FRAME_SIZE_ERROR: Self = Self(0x6);
    pub const REFUSED_STREAM: Self = Self(0x7);
    pub const CANCEL: Self = Self(0x8);
    pub const COMPRESSION_ERROR: Self = Self(0x9);
    pub const CONNECT_ERROR: Self = Self(0xa);
    pub const ENHANCE_YOUR_CALM: Self = Self(0xb);
    pub const INADEQUATE_SECURITY: Self = Self(0xc);
    pub const HTTP_1_1_REQUIRED: Self = Self(0xd);
}

/// A setting's identifier (RFC 9113 §6.5.2).
pub mod setting {
    pub const HEADER_TABLE_SIZE: u16 = 0x1;
    pub const ENABLE_PUSH: u16 = 0x2;
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub const MAX_FRAME_SIZE: u16 = 0x5;
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
}

/// A frame's 9-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl FrameHeader {
    pub fn read(b: &[u8; HEADER_LEN]) -> Self {
        Self {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            // The reserved bit is ignored on receipt (RFC 9113 §4.1).
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & MAX_WINDOW,
        }
    }

    pub fn write(&self, out: &mut impl BufMut) {
        let len = self.len.to_be_bytes();
        out.put_slice(&[len[1], len[2], len[3], self.kind, self.flags]);
        out.put_u32(self.stream & MAX_WINDOW);
    }
}

/// Frame types.
pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

/// A frame read from the wire, borrowing its payload.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Data {
        stream: u32,
        end_stream: bool,
        data: &'a [u8],
        /// Where `data` starts in the frame's bytes (after the header and any pad length).
        offset: usize,
        /// The whole payload's length, padding included: what flow control counts.
        flow_len: u32,
    },
    Headers {
        stream: u32,
        end_stream: bool,
        end_headers: bool,
        /// The start of the field block (padding and priority removed).
        block: &'a [u8],
    },
    Priority {
        stream: u32,
    },
    RstStream {
        stream: u32,
        code: ErrorCode,
    },
    Settings(Settings<'a>),
    SettingsAck,
    PushPromise {
        stream: u32,
    },
    Ping {
        ack: bool,
        payload: [u8; 8],
    },
    GoAway {
        last_stream: u32,
        code: ErrorCode,
    },
    WindowUpdate {
        stream: u32,
        increment: u32,
    },
    Continuation {
        stream: u32,
        end_headers: bool,
        block: &'a [u8],
    },
    /// A frame of a type this side does not know: ignored (RFC 9113 §4.1).
    Unknown,
}

/// A SETTINGS frame's parameters, each already checked against its allowed range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings<'a>(&'a [u8]);

impl<'a> Settings<'a> {
    /// The parameters in the order sent: (identifier, value).
    pub fn iter(&self) -> impl Iterator<Item = (u16, u32)> + 'a {
        self.0.chunks_exact(6).map(|p| {
            (
                u16::from_be_bytes([p[0], p[1]]),
                u32::from_be_bytes([p[2], p[3], p[4], p[5]]),
            )
        })
    }
}

/// A frame that breaks the protocol, and whether the connection or only its stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("connection error {code:?}: {reason}")]
    Connection {
        code: ErrorCode,
        reason: &'static str,
    },
    #[error("stream {stream} error {code:?}: {reason}")]
    Stream {
        stream: u32,
        code: ErrorCode,
        reason: &'static str,
    },
}

fn conn(code: ErrorCode, reason: &'static str) -> FrameError {
    FrameError::Connection { code, reason }
}

/// Reads the frame at the start of `input`: `Ok(None)` until all of it has arrived, otherwise
/// the frame and the bytes it took. `max_frame_size` is the SETTINGS_MAX_FRAME_SIZE this side
/// announced. A frame longer than that is refused from its header alone, before its payload
/// is waited for.
pub fn read(input: &[u8], max_frame_size: u32) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    let Some(head) = input.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let head = FrameHeader::read(head);
    if head.len > max_frame_size {
        return Err(conn(
            ErrorCode::FRAME_SIZE_ERROR,
            "frame larger than SETTINGS_MAX_FRAME_SIZE",
        ));
    }
    let total = HEADER_LEN + head.len as usize;
    let Some(payload) = input.get(HEADER_LEN..total) else {
        return Ok(None);
    };
    Ok(Some((parse(head, payload)?, total)))
}

fn parse(head: FrameHeader, payload: &[u8]) -> Result<Frame<'_>, FrameError> {
    let stream = head.stream;
    let on_stream = || {
        if stream == 0 {
            Err(conn(
                ErrorCode::PROTOCOL_ERROR,
                "frame needs a stream but is on stream 0",
            ))
        } else {
            Ok(())
        }
    };
    let on_connection = || {
        if stream != 0 {
            Err(conn(
                ErrorCode::PROTOCOL_ERROR,
                "connection frame on a stream",
            ))
        } else {
            Ok(())
        }
    };
    match head.kind {
        kind::DATA => {
            on_stream()?;
            let data = unpad(head.flags, payload)?;
            let padded = head.flags & flags::PADDED != 0;
            Ok(Frame::Data {
                stream,
                end_stream: head.flags & flags::END_STREAM != 0,
                data,
                offset: HEADER_LEN + usize::from(padded),
                flow_len: head.len,
            })
        }
        kind::HEADERS => {
            on_stream()?;
            headers(head, payload)
        }
        kind::PRIORITY => {
            on_stream()?;
            if payload.len() != 5 {
                return Err(FrameError::Stream {
                    stream,
                    code: ErrorCode::FRAME_SIZE_ERROR,
                    reason: "PRIORITY frame not 5 bytes long",
                });
            }
            depends_on_itself(stream, payload)?;
            Ok(Frame::Priority { stream })
        }
        kind::RST_STREAM => {
            on_stream()?;
            let code = exact::<4>(payload, "RST_STREAM frame not 4 bytes long")?;
            Ok(Frame::RstStream {
                stream,
                code: ErrorCode(u32::from_be_bytes(code)),
            })
        }
        kind::SETTINGS => {
            on_connection()?;
            settings(head.flags, payload)
        }
        kind::PUSH_PROMISE => {
            on_stream()?;
            Ok(Frame::PushPromise { stream })
        }
        kind::PING => {
            on_connection()?;
            let payload = exact::<8>(payload, "PING frame not 8 bytes long")?;
            Ok(Frame::Ping {
                ack: head.flags & flags::ACK != 0,
                payload,
            })
        }
        kind::GOAWAY => {
            on_connection()?;
            goaway(payload)
        }
        kind::WINDOW_UPDATE => window_update(stream, payload),
        kind::CONTINUATION => {
            on_stream()?;
            Ok(Frame::Continuation {
                stream,
                end_headers: head.flags & flags::END_HEADERS != 0,
                block: payload,
            })
        }
        _ => Ok(Frame::Unknown),
    }
}

fn exact<const N: usize>(payload: &[u8], reason: &'static str) -> Result<[u8; N], FrameError> {
    payload
        .try_into()
        .map_err(|_| conn(ErrorCode::FRAME_SIZE_ERROR, reason))
}

/// A padded frame's content (RFC 9113 §6.1): padding that takes the whole payload or more is
/// a connection error.
fn unpad(frame_flags: u8, payload: &[u8]) -> Result<&[u8], FrameError> {
    if frame_flags & flags::PADDED == 0 {
        return Ok(payload);
    }
    let (&pad, rest) = payload.split_first().ok_or(conn(
        ErrorCode::FRAME_SIZE_ERROR,
        "padded frame without a pad length",
    ))?;
    rest.len()
        .checked_sub(usize::from(pad))
        .map(|len| &rest[..len])
        .ok_or(conn(
            ErrorCode::PROTOCOL_ERROR,
            "padding longer than the frame",
        ))
}

fn headers(head: FrameHeader, payload: &[u8]) -> Result<Frame<'_>, FrameError> {
    let mut block = unpad(head.flags, payload)?;
    if head.flags & flags::PRIORITY != 0 {
        let Some((priority, rest)) = block.split_first_chunk::<5>() else {
            return Err(conn(
                ErrorCode::FRAME_SIZE_ERROR,
                "HEADERS frame too short for its priority",
            ));
        };
        depends_on_itself(head.stream, priority)?;
        block = rest;
    }
    Ok(Frame::Headers {
        stream: head.stream,
        end_stream: head.flags & flags::END_STREAM != 0,
        end_headers: head.flags & flags::END_HEADERS != 0,
        block,
    })
}

/// Priority signals are not acted on (RFC 9113 §5.3.2 deprecates them), but a stream that
/// depends on itself is still an error (§5.3.1).
fn depends_on_itself(stream: u32, priority: &[u8]) -> Result<(), FrameError> {
    let dependency = u32::from_be_bytes([priority[0], priority[1], priority[2], priority[3]]);
    if dependency & MAX_WINDOW == stream {
        return Err(FrameError::Stream {
            stream,
            code: ErrorCode::PROTOCOL_ERROR,
            reason: "stream depends on itself",
        });
    }
    Ok(())
}

fn settings(frame_flags: u8, payload: &[u8]) -> Result<Frame<'_>, FrameError> {
    if frame_flags & flags::ACK != 0 {
        if !payload.is_empty() {
            return Err(conn(
                ErrorCode::FRAME_SIZE_ERROR,
                "SETTINGS acknowledgement with a payload",
            ));
        }
        return Ok(Frame::SettingsAck);
    }
    if !payload.len().is_multiple_of(6) {
        return Err(conn(
            ErrorCode::FRAME_SIZE_ERROR,
            "SETTINGS length not a multiple of 6",
        ));
    }
    let settings = Settings(payload);
    for (id, value) in settings.iter() {
        match id {
            setting::ENABLE_PUSH if value > 1 => {
                return Err(conn(
                    ErrorCode::PROTOCOL_ERROR,
                    "SETTINGS_ENABLE_PUSH not 0 or 1",
                ));
            }
            setting::INITIAL_WINDOW_SIZE if value > MAX_WINDOW => {
                return Err(conn(
                    ErrorCode::FLOW_CONTROL_ERROR,
                    "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1",
                ));
            }
            setting::MAX_FRAME_SIZE
                if !(DEFAULT_MAX_FRAME_SIZE..=MAX_MAX_FRAME_SIZE).contains(&value) =>
            {
                return Err(conn(
                    ErrorCode::PROTOCOL_ERROR,
                    "SETTINGS_MAX_FRAME_SIZE out of range",
                ));
            }
            _ => {}
        }
    }
    Ok(Frame::Settings(settings))
}

fn goaway(payload: &[u8]) -> Result<Frame<'_>, FrameError> {
    let Some((head, _debug)) = payload.split_first_chunk::<8>() else {
        return Err(conn(
            ErrorCode::FRAME_SIZE_ERROR,
            "GOAWAY frame shorter than 8 bytes",
        ));
    };
    Ok(Frame::GoAway {
        last_stream: u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & MAX_WINDOW,
        code: ErrorCode(u32::from_be_bytes([head[4], head[5], head[6], head[7]])),
    })
}

fn window_update(stream: u32, payload: &[u8]) -> Result<Frame<'_>, FrameError> {
    let raw = exact::<4>(payload, "WINDOW_UPDATE frame not 4 bytes long")?;
    let increment = u32::from_be_bytes(raw) & MAX_WINDOW;
    if increment == 0 {
        let reason = "WINDOW_UPDATE with an increment of 0";
        return Err(if stream == 0 {
            conn(ErrorCode::PROTOCOL_ERROR, reason)
        } else {
            FrameError::Stream {
                stream,
                code: ErrorCode::PROTOCOL_ERROR,
                reason,
            }
        });
    }
    Ok(Frame::WindowUpdate { stream, increment })
}

/// Appends a SETTINGS frame with `params`.
pub fn write_settings(out: &mut impl BufMut, params: &[(u16, u32)]) {
    write_header(out, params.len() * 6, kind::SETTINGS, 0, 0);
    for &(id, value) in params {
        out.put_u16(id);
        out.put_u32(value);
    }
}

pub fn write_settings_ack(out: &mut impl BufMut) {
    write_header(out, 0, kind::SETTINGS, flags::ACK, 0);
}

pub fn write_ping_ack(out: &mut impl BufMut, payload: [u8; 8]) {
    write_header(out, 8, kind::PING, flags::ACK, 0);
    out.put_slice(&payload);
}

pub fn write_goaway(out: &mut impl BufMut, last_stream: u32, code: ErrorCode) {
    write_header(out, 8, kind::GOAWAY, 0, 0);
    out.put_u32(last_stream & MAX_WINDOW);
    out.put_u32(code.0);
}

pub fn write_rst_stream(out: &mut impl BufMut, stream: u32, code: ErrorCode) {
    write_header(out, 4, kind::RST_STREAM, 0, stream);
    out.put_u32(code.0);
}

pub fn write_window_update(out: &mut impl BufMut, stream: u32, increment: u32) {
    write_header(out, 4, kind::WINDOW_UPDATE, 0, stream);
    out.put_u32(increment & MAX_WINDOW);
}

/// Appends a DATA frame's header; its `len` bytes of data follow.
pub fn write_data_header(out: &mut impl BufMut, stream: u32, len: usize, end_stream: bool) {
    let frame_flags = if end_stream { flags::END_STREAM } else { 0 };
    write_header(out, len, kind::DATA, frame_flags, stream);
}

/// Appends a field block as one HEADERS frame, followed by CONTINUATION frames when it is
/// longer than `max_frame_size` (the peer's).
pub fn write_headers(
    out: &mut impl BufMut,
    stream: u32,
    block: &[u8],
    end_stream: bool,
    max_frame_size: u32,
) {
    let max = max_frame_size.max(DEFAULT_MAX_FRAME_SIZE) as usize;
    let mut chunks = block.chunks(max).peekable();
    let first = chunks.next().unwrap_or_default();
    let mut frame_flags = if end_stream { flags::END_STREAM } else { 0 };
    if chunks.peek().is_none() {
        frame_flags |= flags::END_HEADERS;
    }
    write_header(out, first.len(), kind::HEADERS, frame_flags, stream);
    out.put_slice(first);
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        let frame_flags = if last { flags::END_HEADERS } else { 0 };
        write_header(out, chunk.len(), kind::CONTINUATION, frame_flags, stream);
        out.put_slice(chunk);
    }
}

fn write_header(out: &mut impl BufMut, len: usize, kind: u8, frame_flags: u8, stream: u32) {
    debug_assert!(len <= MAX_MAX_FRAME_SIZE as usize);
    FrameHeader {
        len: len as u32,
        kind,
        flags: frame_flags,
        stream,
    }
    .write(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, frame_flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_header(&mut out, payload.len(), kind, frame_flags, stream);
        out.extend_from_slice(payload);
        out
    }

    fn read_one(bytes: &[u8]) -> Result<Frame<'_>, FrameError> {
        let (frame, taken) = read(bytes, DEFAULT_MAX_FRAME_SIZE)?.expect("a whole frame");
        assert_eq!(taken, bytes.len());
        Ok(frame)
    }

    fn connection_error(bytes: &[u8]) -> ErrorCode {
        match read_one(bytes) {
            Err(FrameError::Connection { code, .. }) => code,
            other => panic!("expected a connection error, got {other:?}"),
        }
    }

    #[test]
    fn what_the_server_writes_reads_back() {
        let mut out = Vec::new();
        write_settings(&mut out, &[(setting::MAX_CONCURRENT_STREAMS, 100)]);
        let Frame::Settings(s) = read_one(&out).unwrap() else {
            panic!("not SETTINGS")
        };
        assert_eq!(s.iter().collect::<Vec<_>>(), [(3, 100)]);
        for (write, expected) in [
            (
                (|o: &mut Vec<u8>| write_settings_ack(o)) as fn(&mut Vec<u8>),
                Frame::SettingsAck,
            ),
            (
                |o| write_ping_ack(o, *b"12345678"),
                Frame::Ping {
                    ack: true,
                    payload: *b"12345678",
                },
            ),
            (
                |o| write_goaway(o, 7, ErrorCode::ENHANCE_YOUR_CALM),
                Frame::GoAway {
                    last_stream: 7,
                    code: ErrorCode::ENHANCE_YOUR_CALM,
                },
            ),
            (
                |o| write_rst_stream(o, 3, ErrorCode::CANCEL),
                Frame::RstStream {
                    stream: 3,
                    code: ErrorCode::CANCEL,
                },
            ),
            (
                |o| write_window_update(o, 0, 65_535),
                Frame::WindowUpdate {
                    stream: 0,
                    increment: 65_535,
                },
            ),
        ] {
            let mut out = Vec::new();
            write(&mut out);
            assert_eq!(read_one(&out).unwrap(), expected);
        }
        let mut out = Vec::new();
        write_data_header(&mut out, 5, 3, true);
        out.extend_from_slice(b"abc");
        assert_eq!(
            read_one(&out).unwrap(),
            Frame::Data {
                stream: 5,
                end_stream: true,
                data: b"abc",
                offset: 9,
                flow_len: 3
            }
        );
    }

    #[test]
    fn a_long_field_block_continues_in_continuation_frames() {
        let block: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
        let mut out = Vec::new();
        write_headers(&mut out, 1, &block, true, DEFAULT_MAX_FRAME_SIZE);
        let mut rest = &out[..];
        let mut got = Vec::new();
        let mut frames = Vec::new();
        while let Some((frame, taken)) = read(rest, DEFAULT_MAX_FRAME_SIZE).unwrap() {
            match frame {
                Frame::Headers {
                    end_stream,
                    end_headers,
                    block,
                    ..
                } => {
                    frames.push(("HEADERS", end_stream, end_headers));
                    got.extend_from_slice(block);
                }
                Frame::Continuation {
                    end_headers, block, ..
                } => {
                    frames.push(("CONTINUATION", false, end_headers));
                    got.extend_from_slice(block);
                }
                other => panic!("{other:?}"),
            }
            rest = &rest[taken..];
        }
        assert_eq!(got, block);
        assert_eq!(
            frames,
            [
                ("HEADERS", true, false),
                ("CONTINUATION", false, false),
                ("CONTINUATION", false, true)
            ]
        );
    }

    #[test]
    fn partial_frames_wait_and_oversized_ones_are_refused_from_the_header() {
        let whole = frame(kind::DATA, 0, 1, b"hello");
        for cut in 0..whole.len() {
            assert_eq!(read(&whole[..cut], DEFAULT_MAX_FRAME_SIZE), Ok(None));
        }
        let mut big = Vec::new();
        write_header(&mut big, 16_385, kind::DATA, 0, 1);
        assert_eq!(connection_error(&big), ErrorCode::FRAME_SIZE_ERROR);
        // The reserved bit of the stream id is ignored; unknown types are skipped.
        let mut reserved = frame(kind::RST_STREAM, 0, 1, &[0, 0, 0, 8]);
        reserved[5] |= 0x80;
        assert!(matches!(
            read_one(&reserved),
            Ok(Frame::RstStream { stream: 1, .. })
        ));
        assert_eq!(
            read_one(&frame(0xfa, 0xff, 9, b"whatever")),
            Ok(Frame::Unknown)
        );
    }

    #[test]
    fn padding_is_removed_and_padding_past_the_end_refused() {
        let padded = frame(kind::DATA, flags::PADDED, 1, b"\x02ab\0\0");
        assert_eq!(
            read_one(&padded).unwrap(),
            Frame::Data {
                stream: 1,
                end_stream: false,
                data: b"ab",
                offset: 10,
                flow_len: 5
            }
        );
        let over = frame(kind::DATA, flags::PADDED, 1, b"\x05ab");
        assert_eq!(connection_error(&over), ErrorCode::PROTOCOL_ERROR);
        let empty = frame(kind::HEADERS, flags::PADDED, 1, b"");
        assert_eq!(connection_error(&empty), ErrorCode::FRAME_SIZE_ERROR);
        let prioritized = frame(
            kind::HEADERS,
            flags::PADDED | flags::PRIORITY | flags::END_HEADERS,
            3,
            b"\x01\0\0\0\x01\x10\x82\0",
        );
        assert!(matches!(
            read_one(&prioritized),
            Ok(Frame::Headers {
                block: b"\x82",
                end_headers: true,
                ..
            })
        ));
    }

    #[test]
    fn frames_on_the_wrong_stream_or_of_the_wrong_size_are_connection_errors() {
        for bad in [
            frame(kind::DATA, 0, 0, b"x"),
            frame(kind::HEADERS, 0, 0, b""),
            frame(kind::SETTINGS, 0, 1, b""),
            frame(kind::PING, 0, 1, b"12345678"),
            frame(kind::GOAWAY, 0, 1, b"12345678"),
            frame(kind::CONTINUATION, 0, 0, b""),
            frame(kind::WINDOW_UPDATE, 0, 0, &[0, 0, 0, 0]),
        ] {
            assert_eq!(connection_error(&bad), ErrorCode::PROTOCOL_ERROR, "{bad:?}");
        }
        for bad in [
            frame(kind::PING, 0, 0, b"1234567"),
            frame(kind::RST_STREAM, 0, 1, b"123"),
            frame(kind::SETTINGS, 0, 0, b"12345"),
            frame(kind::SETTINGS, flags::ACK, 0, b"123456"),
            frame(kind::GOAWAY, 0, 0, b"1234567"),
            frame(kind::WINDOW_UPDATE, 0, 1, b"12345"),
        ] {
            assert_eq!(
                connection_error(&bad),
                ErrorCode::FRAME_SIZE_ERROR,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn settings_out_of_range_and_stream_level_errors() {
        let mut out = Vec::new();
        write_settings(&mut out, &[(setting::ENABLE_PUSH, 2)]);
        assert_eq!(connection_error(&out), ErrorCode::PROTOCOL_ERROR);
        out.clear();
        write_settings(&mut out, &[(setting::INITIAL_WINDOW_SIZE, 1 << 31)]);
        assert_eq!(connection_error(&out), ErrorCode::FLOW_CONTROL_ERROR);
        for size in [16_383, 1 << 24] {
            out.clear();
            write_settings(&mut out, &[(setting::MAX_FRAME_SIZE, size)]);
            assert_eq!(connection_error(&out), ErrorCode::PROTOCOL_ERROR);
        }
        out.clear();
        write_settings(
            &mut out,
            &[(0xff, u32::MAX), (setting::MAX_FRAME_SIZE, 1 << 20)],
        );
        assert!(read_one(&out).is_ok(), "unknown settings are ignored");
        let stream_error = |bytes: &[u8]| match read_one(bytes) {
            Err(FrameError::Stream { stream, code, .. }) => (stream, code),
            other => panic!("expected a stream error, got {other:?}"),
        };
        assert_eq!(
            stream_error(&frame(kind::WINDOW_UPDATE, 0, 5, &[0, 0, 0, 0])),
            (5, ErrorCode::PROTOCOL_ERROR)
        );
        assert_eq!(
            stream_error(&frame(kind::PRIORITY, 0, 5, &[0, 0, 0, 5, 16])),
            (5, ErrorCode::PROTOCOL_ERROR)
        );
        assert_eq!(
            stream_error(&frame(kind::PRIORITY, 0, 5, &[0, 0, 0, 1])),
            (5, ErrorCode::FRAME_SIZE_ERROR)
        );
    }
}
