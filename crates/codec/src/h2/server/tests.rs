//! The server connection driven by hand-written client frames.

use super::*;

fn config() -> Config {
    Config {
        max_concurrent_streams: 4,
        max_header_list_size: 4096,
        stream_window: 65_535,
        connection_window: 131_070,
        max_frame_size: 16_384,
        reset_budget: 10,
    }
}

/// What the client saw and the owner was told.
#[derive(Debug, Default)]
struct Seen {
    events: Vec<String>,
}

/// A connection past its preface and SETTINGS exchange, its output so far discarded.
fn connected(config: Config) -> ServerConn {
    let mut conn = ServerConn::new(config);
    let mut input = frame::PREFACE.to_vec();
    frame::write_settings(&mut input, &[]);
    let mut seen = Seen::default();
    feed(&mut conn, &input, &mut seen).expect("handshake");
    let out = conn.output().len();
    conn.advance_output(out);
    conn
}

fn feed(conn: &mut ServerConn, input: &[u8], seen: &mut Seen) -> Result<usize, ConnError> {
    conn.receive(input, &mut |e| seen.events.push(describe(&e)))
}

fn describe(e: &Event) -> String {
    match e {
        Event::Request {
            stream,
            head,
            end_stream,
        } => format!(
            "request {stream} {} {} end={end_stream}",
            String::from_utf8_lossy(head.method()),
            String::from_utf8_lossy(head.path().unwrap_or_default())
        ),
        Event::Data {
            stream,
            at,
            end_stream,
        } => format!("data {stream} {} end={end_stream}", at.len()),
        Event::Trailers { stream, trailers } => {
            format!("trailers {stream} {}", trailers.field_count())
        }
        Event::HeadTooLarge { stream } => format!("too large {stream}"),
        Event::Refused { stream, .. } => format!("refused {stream}"),
        Event::Reset { stream, code } => format!("reset {stream} {}", code.0),
        Event::Writable { stream } => format!("writable {stream}"),
    }
}

/// A request's field block (fields as given, no table).
fn request_block(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in [(":method", method), (":scheme", "https"), (":path", path)]
        .into_iter()
        .chain(extra.iter().copied())
    {
        encode::field(&mut block, name.as_bytes(), value.as_bytes(), false);
    }
    block
}

fn headers(stream: u32, block: &[u8], end_stream: bool) -> Vec<u8> {
    let mut out = Vec::new();
    frame::write_headers(&mut out, stream, block, end_stream, 16_384);
    out
}

fn data(stream: u32, len: usize, end_stream: bool) -> Vec<u8> {
    let mut out = Vec::new();
    frame::write_data_header(&mut out, stream, len, end_stream);
    out.resize(out.len() + len, b'x');
    out
}

/// The frames in the server's output, as (type, flags, stream, payload), and clears it.
fn frames_out(conn: &mut ServerConn) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let out = conn.output().to_vec();
    conn.advance_output(out.len());
    let mut rest = &out[..];
    let mut frames = Vec::new();
    while let Some(head) = rest.first_chunk::<{ frame::HEADER_LEN }>() {
        let h = frame::FrameHeader::read(head);
        let end = frame::HEADER_LEN + h.len as usize;
        frames.push((
            h.kind,
            h.flags,
            h.stream,
            rest[frame::HEADER_LEN..end].to_vec(),
        ));
        rest = &rest[end..];
    }
    frames
}

fn goaway_code(conn: &mut ServerConn) -> Option<u32> {
    frames_out(conn)
        .into_iter()
        .find(|f| f.0 == frame::kind::GOAWAY)
        .map(|f| u32::from_be_bytes([f.3[4], f.3[5], f.3[6], f.3[7]]))
}

fn rst_codes(frames: &[(u8, u8, u32, Vec<u8>)]) -> Vec<(u32, u32)> {
    frames
        .iter()
        .filter(|f| f.0 == frame::kind::RST_STREAM)
        .map(|f| (f.2, u32::from_be_bytes([f.3[0], f.3[1], f.3[2], f.3[3]])))
        .collect()
}

#[test]
fn the_server_speaks_first_and_acknowledges_the_clients_settings() {
    let mut conn = ServerConn::new(config());
    let first = frames_out(&mut conn);
    assert_eq!(first[0].0, frame::kind::SETTINGS);
    assert_eq!(
        first[1].0,
        frame::kind::WINDOW_UPDATE,
        "connection window raised"
    );
    let mut seen = Seen::default();
    // The preface may arrive a byte at a time.
    let settings_out = conn.output().len();
    for cut in 1..frame::PREFACE.len() {
        assert_eq!(feed(&mut conn, &frame::PREFACE[..cut], &mut seen), Ok(0));
        assert_eq!(conn.output().len(), settings_out);
    }
    let mut conn = ServerConn::new(config());
    let mut input = frame::PREFACE.to_vec();
    frame::write_settings(&mut input, &[(setting::MAX_FRAME_SIZE, 20_000)]);
    let mut ping = Vec::new();
    frame::FrameHeader {
        len: 8,
        kind: frame::kind::PING,
        flags: 0,
        stream: 0,
    }
    .write(&mut ping);
    ping.extend_from_slice(b"pingpong");
    input.extend_from_slice(&ping);
    assert_eq!(feed(&mut conn, &input, &mut seen), Ok(input.len()));
    let frames = frames_out(&mut conn);
    let kinds: Vec<(u8, u8)> = frames.iter().map(|f| (f.0, f.1)).collect();
    assert!(kinds.contains(&(frame::kind::SETTINGS, frame::flags::ACK)));
    assert!(
        frames
            .iter()
            .any(|f| f.0 == frame::kind::PING && f.3 == b"pingpong")
    );
}

#[test]
fn a_bad_preface_or_a_first_frame_other_than_settings_ends_the_connection() {
    let mut seen = Seen::default();
    let mut conn = ServerConn::new(config());
    let err = feed(&mut conn, b"GET / HTTP/1.1\r\n", &mut seen).unwrap_err();
    assert_eq!(err.code, ErrorCode::PROTOCOL_ERROR);
    let mut conn = ServerConn::new(config());
    let mut input = frame::PREFACE.to_vec();
    input.extend(headers(1, &request_block("GET", "/", &[]), true));
    assert_eq!(
        feed(&mut conn, &input, &mut seen).unwrap_err().code,
        ErrorCode::PROTOCOL_ERROR
    );
    assert_eq!(goaway_code(&mut conn), Some(ErrorCode::PROTOCOL_ERROR.0));
    assert!(conn.is_finished());
}

#[test]
fn a_request_is_answered_and_its_stream_closes() {
    let mut conn = connected(config());
    let mut seen = Seen::default();
    let input = headers(1, &request_block("GET", "/a", &[("accept", "*/*")]), true);
    // Byte by byte: nothing is read until a frame is whole.
    let mut pending = Vec::new();
    for b in &input {
        pending.push(*b);
        let read = feed(&mut conn, &pending, &mut seen).unwrap();
        pending.drain(..read);
    }
    assert_eq!(seen.events, ["request 1 GET /a end=true"]);
    conn.send_head(
        1,
        200,
        [(&b"Content-Type"[..], &b"text/plain"[..], false)],
        false,
    )
    .unwrap();
    assert_eq!(conn.send_data(1, b"hello", true), Ok(5));
    assert_eq!(conn.open_streams(), 0);
    let frames = frames_out(&mut conn);
    assert_eq!(frames.len(), 2);
    assert_eq!(
        (frames[0].0, frames[0].1),
        (frame::kind::HEADERS, frame::flags::END_HEADERS)
    );
    let mut fields = Vec::new();
    hpack::Decoder::new(4096)
        .decode(&frames[0].3, |f| {
            fields.push((f.name.to_vec(), f.value.to_vec()))
        })
        .unwrap();
    assert_eq!(
        fields,
        [
            (b":status".to_vec(), b"200".to_vec()),
            (b"content-type".to_vec(), b"text/plain".to_vec())
        ]
    );
    assert_eq!(
        (frames[1].0, frames[1].1, &frames[1].3[..]),
        (frame::kind::DATA, 1, &b"hello"[..])
    );
    assert_eq!(conn.send_data(1, b"more", true), Err(SendError::StreamGone));
}

#[test]
fn request_bodies_reopen_windows_only_as_they_are_released() {
    let mut conn = connected(config());
    let mut seen = Seen::default();
    let mut input = headers(1, &request_block("POST", "/up", &[]), false);
    input.extend(data(1, 16_384, false));
    input.extend(data(1, 16_384, false));
    feed(&mut conn, &input, &mut seen).unwrap();
    assert_eq!(
        seen.events,
        [
            "request 1 POST /up end=false",
            "data 1 16384 end=false",
            "data 1 16384 end=false"
        ]
    );
    assert!(
        frames_out(&mut conn).is_empty(),
        "nothing released, no window given back"
    );
    conn.release(1, 16_384);
    assert!(
        frames_out(&mut conn).is_empty(),
        "less than half the window used"
    );
    conn.release(1, 16_384);
    let updates: Vec<(u32, Vec<u8>)> = frames_out(&mut conn)
        .into_iter()
        .filter(|f| f.0 == frame::kind::WINDOW_UPDATE)
        .map(|f| (f.2, f.3))
        .collect();
    assert_eq!(updates, [(1, 32_768u32.to_be_bytes().to_vec())]);
    // The stream's window is 65,535: with 32,768 given back, 65,535 more fit, but not 65,536.
    seen.events.clear();
    let mut input = Vec::new();
    for _ in 0..4 {
        input.extend(data(1, 16_384, false));
    }
    feed(&mut conn, &input, &mut seen).unwrap();
    assert_eq!(
        seen.events.last().map(String::as_str),
        Some("reset 1 3"),
        "{:?}",
        seen.events
    );
    assert_eq!(
        rst_codes(&frames_out(&mut conn)),
        [(1, ErrorCode::FLOW_CONTROL_ERROR.0)]
    );
}

#[test]
fn the_connection_window_bounds_every_streams_body_together() {
    let mut conn = connected(config());
    let mut seen = Seen::default();
    let mut input = Vec::new();
    for stream in [1, 3, 5] {
        input.extend(headers(stream, &request_block("POST", "/", &[]), false));
        for _ in 0..3 {
            input.extend(data(stream, 16_000, false));
        }
    }
    // 144,000 bytes unreleased against a connection window of 131,070.
    let err = feed(&mut conn, &input, &mut seen).unwrap_err();
    assert_eq!(err.code, ErrorCode::FLOW_CONTROL_ERROR);
}

#[test]
fn answers_wait_for_the_clients_windows() {
    let mut conn = connected(config());
    let mut seen = Seen::default();
    feed(
        &mut conn,
        &headers(1, &request_block("GET", "/big", &[]), true),
        &mut seen,
    )
    .unwrap();
    conn.send_head(1, 200, [], false).unwrap();
    let body = vec![b'b'; 100_000];
    assert_eq!(conn.send_data(1, &body, true), Ok(65_535));
    assert_eq!(conn.send_window(1), 0);
    let sent: usize = frames_out(&mut conn)
        .iter()
        .filter(|f| f.0 == frame::kind::DATA)
        .map(|f| {
            assert!(f.3.len() <= 16_384);
            f.3.len()
        })
        .sum();
    assert_eq!(sent, 65_535);
    seen.events.clear();
    let mut input = Vec::new();
    frame::write_window_update(&mut input, 1, 50_000);
    feed(&mut conn, &input, &mut seen).unwrap();
    assert!(
        seen.events.is_empty(),
        "the connection's window is still shut"
    );
    input.clear();
    frame::write_window_update(&mut input, 0, 50_000);
    feed(&mut conn, &input, &mut seen).unwrap();
    assert_eq!(seen.events, ["writable 1"]);
    assert_eq!(conn.send_data(1, &body[65_535..], true), Ok(34_465));
    // A smaller SETTINGS_INITIAL_WINDOW_SIZE takes window back from open streams.
    feed(
        &mut conn,
        &headers(3, &request_block("GET", "/", &[]), true),
        &mut seen,
    )
    .unwrap();
    input.clear();
    frame::write_settings(&mut input, &[(setting::INITIAL_WINDOW_SIZE, 1_000)]);
    feed(&mut conn, &input, &mut seen).unwrap();
    conn.send_head(3, 200, [], false).unwrap();
    assert_eq!(conn.send_window(3), 1_000);
}

#[test]
fn streams_beyond_the_limit_are_refused_and_malformed_ones_reset() {
    let mut conn = connected(config());
    let mut seen = Seen::default();
    // Sent as a literal of its own: the encoder would lowercase the name.
    let mut upper = request_block("GET", "/", &[]);
    upper.extend_from_slice(b"\x00\x05Upper\x01x");
    let mut input = headers(1, &upper, true);
    input.extend(headers(
        3,
        &request_block("GET", "/", &[("connection", "close")]),
        true,
    ));
    for stream in [5, 7, 9, 11, 13] {
        input.extend(headers(stream, &request_block("GET", "/", &[]), false));
    }
    feed(&mut conn, &input, &mut seen).unwrap();
    assert_eq!(conn.open_streams(), 4);
    assert_eq!(seen.events[..2], ["refused 1", "refused 3"]);
    assert_eq!(seen.events[6..], ["refused 13"]);
    assert_eq!(
        rst_codes(&frames_out(&mut conn)),
        [
            (1, ErrorCode::PROTOCOL_ERROR.0),
            (3, ErrorCode::PROTOCOL_ERROR.0),
            (13, ErrorCode::REFUSED_STREAM.0)
        ]
    );
}

#[test]
fn a_rapid_reset_flood_ends_the_connection_but_cancelling_clients_do_not() {
    // Open and reset at once, stream after stream: the budget of 10 runs out.
    let mut conn = connected(config());
    let mut seen = Seen::default();
    let mut input = Vec::new();
    for i in 0..20u32 {
        let stream = 2 * i + 1;
        input.extend(headers(stream, &request_block("GET", "/", &[]), true));
        frame::write_rst_stream(&mut input, stream, ErrorCode::CANCEL);
    }
    let err = feed(&mut conn, &input, &mut seen).unwrap_err();
    assert_eq!(err.code, ErrorCode::ENHANCE_YOUR_CALM);
    assert_eq!(
        seen.events
            .iter()
            .filter(|e| e.starts_with("reset"))
            .count(),
        9
    );
    // A client that cancels one request in two, while the others are answered, goes on.
    let mut conn = connected(config());
    for i in 0..40u32 {
        let stream = 2 * i + 1;
        feed(
            &mut conn,
            &headers(stream, &request_block("GET", "/", &[]), true),
            &mut seen,
        )
        .unwrap();
        if i % 2 == 0 {
            let mut rst = Vec::new();
            frame::write_rst_stream(&mut rst, stream, ErrorCode::CANCEL);
            feed(&mut conn, &rst, &mut seen).unwrap();
        } else {
            conn.send_head(stream, 204, [], true).unwrap();
        }
    }
}

#[test]
fn field_blocks_continue_whole_or_end_the_connection() {
    let mut conn = connected(config());
    let mut seen = Seen::default();
    let long = "v".repeat(3000);
    let block = request_block("GET", "/c", &[("x-long", &long)]);
    let mut input = Vec::new();
    frame::write_headers(&mut input, 1, &block, true, 16_384);
    // Split by hand into HEADERS + two CONTINUATIONs.
    let mut split = Vec::new();
    let parts: Vec<&[u8]> = block.chunks(1200).collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let (kind, mut flags) = if i == 0 {
            (frame::kind::HEADERS, frame::flags::END_STREAM)
        } else {
            (frame::kind::CONTINUATION, 0)
        };
        if last {
            flags |= frame::flags::END_HEADERS;
        }
        frame::FrameHeader {
            len: part.len() as u32,
            kind,
            flags,
            stream: 1,
        }
        .write(&mut split);
        split.extend_from_slice(part);
    }
    feed(&mut conn, &split, &mut seen).unwrap();
    assert_eq!(seen.events, ["request 1 GET /c end=true"]);
    // A PING in the middle of a block.
    let mut interrupted = split[..frame::HEADER_LEN + 1200].to_vec();
    interrupted[3 + 1] &= !frame::flags::END_HEADERS;
    interrupted[8] = 3;
    frame::write_ping_ack(&mut interrupted, [0; 8]);
    assert_eq!(
        feed(&mut conn, &interrupted, &mut seen).unwrap_err().code,
        ErrorCode::PROTOCOL_ERROR
    );
    // A block that never ends: cut off past twice the header list limit, or 32 KiB.
    let mut conn = connected(config());
    let mut flood = Vec::new();
    frame::FrameHeader {
        len: 0,
        kind: frame::kind::HEADERS,
        flags: 0,
        stream: 1,
    }
    .write(&mut flood);
    for _ in 0..4 {
        frame::FrameHeader {
            len: 16_000,
            kind: frame::kind::CONTINUATION,
            flags: 0,
            stream: 1,
        }
        .write(&mut flood);
        flood.resize(flood.len() + 16_000, 0x82);
    }
    assert_eq!(
        feed(&mut conn, &flood, &mut seen).unwrap_err().code,
        ErrorCode::ENHANCE_YOUR_CALM
    );
    let mut conn = connected(config());
    let mut stray = Vec::new();
    frame::FrameHeader {
        len: 1,
        kind: frame::kind::CONTINUATION,
        flags: 4,
        stream: 1,
    }
    .write(&mut stray);
    stray.push(0x82);
    assert_eq!(
        feed(&mut conn, &stray, &mut seen).unwrap_err().code,
        ErrorCode::PROTOCOL_ERROR
    );
}

#[test]
fn an_oversized_head_is_left_to_the_owner_and_its_body_dropped() {
    let mut conn = connected(config());
    let mut seen = Seen::default();
    let big = "v".repeat(5000);
    let mut input = headers(1, &request_block("POST", "/", &[("x-big", &big)]), false);
    input.extend(data(1, 16_384, true));
    feed(&mut conn, &input, &mut seen).unwrap();
    assert_eq!(seen.events, ["too large 1"]);
    conn.send_head(1, 431, [], true).unwrap();
    assert_eq!(conn.open_streams(), 0);
}

#[test]
fn trailers_end_a_request_and_must_end_the_stream() {
    let mut conn = connected(config());
    let mut seen = Seen::default();
    let mut trailers = Vec::new();
    encode::field(&mut trailers, b"grpc-status", b"0", false);
    let mut input = headers(
        1,
        &request_block("POST", "/rpc", &[("te", "trailers")]),
        false,
    );
    input.extend(data(1, 10, false));
    input.extend(headers(1, &trailers, true));
    input.extend(headers(3, &request_block("POST", "/rpc", &[]), false));
    input.extend(headers(3, &trailers, false));
    feed(&mut conn, &input, &mut seen).unwrap();
    assert_eq!(
        seen.events,
        [
            "request 1 POST /rpc end=false",
            "data 1 10 end=false",
            "trailers 1 1",
            "request 3 POST /rpc end=false",
            "reset 3 1"
        ]
    );
}

#[test]
fn frames_on_streams_never_opened_or_with_even_ids_end_the_connection() {
    let mut seen = Seen::default();
    for bad in [
        data(1, 1, false),
        headers(2, &request_block("GET", "/", &[]), true),
        {
            let mut v = Vec::new();
            frame::write_window_update(&mut v, 7, 1);
            v
        },
        {
            let mut v = Vec::new();
            frame::write_rst_stream(&mut v, 7, ErrorCode::CANCEL);
            v
        },
    ] {
        let mut conn = connected(config());
        let err = feed(&mut conn, &bad, &mut seen).unwrap_err();
        assert_eq!(err.code, ErrorCode::PROTOCOL_ERROR, "{bad:?}");
    }
}

#[test]
fn going_away_takes_no_new_streams_and_finishes_the_open_ones() {
    let mut conn = connected(config());
    let mut seen = Seen::default();
    feed(
        &mut conn,
        &headers(1, &request_block("GET", "/", &[]), true),
        &mut seen,
    )
    .unwrap();
    conn.go_away();
    assert_eq!(goaway_code(&mut conn), Some(0));
    feed(
        &mut conn,
        &headers(3, &request_block("GET", "/", &[]), true),
        &mut seen,
    )
    .unwrap();
    assert_eq!(seen.events.len(), 1, "a stream after GOAWAY is not taken");
    assert!(!conn.is_finished());
    conn.send_head(1, 204, [], true).unwrap();
    assert!(conn.is_finished());
}

#[test]
fn a_streams_unreleased_body_gives_the_connection_window_back_when_the_stream_ends() {
    let mut conn = connected(config());
    let mut seen = Seen::default();
    let mut input = headers(1, &request_block("POST", "/", &[]), false);
    for _ in 0..4 {
        input.extend(data(1, 16_000, false));
    }
    frame::write_rst_stream(&mut input, 1, ErrorCode::CANCEL);
    input.extend(headers(3, &request_block("POST", "/", &[]), false));
    input.extend(data(3, 16_000, false));
    feed(&mut conn, &input, &mut seen).unwrap();
    frames_out(&mut conn);
    // More than was handed out is not released: only stream 3's 16,000 count.
    conn.release(3, 1_000_000);
    let updates: Vec<(u32, Vec<u8>)> = frames_out(&mut conn)
        .into_iter()
        .filter(|f| f.0 == frame::kind::WINDOW_UPDATE)
        .map(|f| (f.2, f.3))
        .collect();
    // Stream 1's 64,000 came back when it was reset: 80,000 is past half the window.
    assert_eq!(updates, [(0, 80_000u32.to_be_bytes().to_vec())]);
}

#[test]
fn a_stream_that_waits_for_window_before_sending_anything_is_woken() {
    let mut conn = connected(config());
    let mut seen = Seen::default();
    let mut input = Vec::new();
    frame::write_settings(&mut input, &[(setting::INITIAL_WINDOW_SIZE, 0)]);
    input.extend(headers(1, &request_block("GET", "/", &[]), true));
    feed(&mut conn, &input, &mut seen).unwrap();
    conn.send_head(1, 200, [], false).unwrap();
    assert_eq!(conn.wait_for_window(1), 0);
    seen.events.clear();
    input.clear();
    frame::write_window_update(&mut input, 1, 10);
    feed(&mut conn, &input, &mut seen).unwrap();
    assert_eq!(seen.events, ["writable 1"]);
    assert_eq!(conn.send_data(1, b"0123456789abc", true), Ok(10));
}

#[test]
fn body_data_is_found_where_the_event_says_padding_or_not() {
    let mut conn = connected(config());
    let mut input = headers(1, &request_block("POST", "/", &[]), false);
    frame::write_data_header(&mut input, 1, 3, false);
    input.extend_from_slice(b"abc");
    // Padded: pad length 2, "defg", two bytes of padding.
    frame::FrameHeader {
        len: 7,
        kind: frame::kind::DATA,
        flags: frame::flags::PADDED | frame::flags::END_STREAM,
        stream: 1,
    }
    .write(&mut input);
    input.extend_from_slice(b"\x02defg\0\0");
    let mut bodies = Vec::new();
    conn.receive(&input, &mut |e| {
        if let Event::Data { at, end_stream, .. } = e {
            bodies.push((input[at].to_vec(), end_stream));
        }
    })
    .unwrap();
    assert_eq!(bodies, [(b"abc".to_vec(), false), (b"defg".to_vec(), true)]);
}
