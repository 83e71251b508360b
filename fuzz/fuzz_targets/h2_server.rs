//! The server side of an HTTP/2 connection (`sluice_codec::h2::server::ServerConn`) fed
//! arbitrary client bytes, in arbitrary reads, after a valid preface and SETTINGS (so the
//! fuzzer starts past the handshake), answering every request it is given.
//!
//! Properties:
//! - never panics;
//! - never reads more than it was given, and never holds more streams than its limit;
//! - everything it writes reads back as valid frames;
//! - it hands out no more body bytes than arrived.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_codec::h2::frame;
use sluice_codec::h2::server::{Config, Event, ServerConn};

const MAX_STREAMS: u32 = 8;

fuzz_target!(|input: (Vec<u8>, Vec<u16>)| {
    let (bytes, cuts) = input;
    let mut conn = ServerConn::new(Config {
        max_concurrent_streams: MAX_STREAMS,
        max_header_list_size: 4096,
        stream_window: 65_535,
        connection_window: 100_000,
        max_frame_size: 16_384,
        reset_budget: 5,
    });
    let mut stream_bytes = frame::PREFACE.to_vec();
    frame::write_settings(&mut stream_bytes, &[]);
    stream_bytes.extend_from_slice(&bytes);
    let mut pending = Vec::new();
    let mut fed = 0;
    let mut cut = cuts.iter();
    while fed < stream_bytes.len() {
        let step = cut.next().map_or(stream_bytes.len(), |&c| usize::from(c).max(1));
        let end = (fed + step).min(stream_bytes.len());
        pending.extend_from_slice(&stream_bytes[fed..end]);
        fed = end;
        let mut body_bytes = 0;
        let mut actions = Vec::new();
        let result = conn.receive(&pending, &mut |e| match e {
            Event::Request { stream, end_stream, .. } => actions.push((stream, end_stream)),
            Event::Data { stream, at, .. } => {
                assert!(at.end <= pending.len(), "body bytes outside the input");
                body_bytes += at.len();
                actions.push((stream, false));
            }
            Event::HeadTooLarge { stream } | Event::Writable { stream } => {
                actions.push((stream, true))
            }
            _ => {}
        });
        assert!(body_bytes <= pending.len());
        check_output(&conn);
        let Ok(read) = result else {
            return;
        };
        assert!(read <= pending.len());
        pending.drain(..read);
        for (stream, answer) in actions {
            conn.release(stream, 1000);
            if answer {
                let _ = conn.send_head(stream, 200, [(&b"x"[..], &b"y"[..], false)], false);
                let _ = conn.send_data(stream, &[0u8; 70_000], true);
            }
        }
        assert!(conn.open_streams() <= MAX_STREAMS as usize);
        check_output(&conn);
        let written = conn.output().len();
        conn.advance_output(written);
    }
});

/// The server's output is a sequence of valid frames (the last may not be cut).
fn check_output(conn: &ServerConn) {
    let mut rest = conn.output();
    while !rest.is_empty() {
        match frame::read(rest, frame::MAX_MAX_FRAME_SIZE) {
            Ok(Some((_, taken))) => rest = &rest[taken..],
            other => panic!("the server wrote a bad frame: {other:?}"),
        }
    }
}
