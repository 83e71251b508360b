//! HTTP/2 streams at the client edge, with the h2 crate's client on loopback: streams whose
//! flow-control window the client keeps shut are reset at their deadline and release the
//! instance, the number of such streams per connection is bounded, well-behaved clients get
//! whole bodies, trailers and uploads through, and draining finishes open streams.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use sluice_test_support::{Backend, Client};

const MIB: usize = 1024 * 1024;

fn config(backend: SocketAddr, listener_extra: &str) -> String {
    format!(
        "[access_log]\npath = \"off\"\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n{listener_extra}\n\
         [[route]]\nservice = \"s\"\n[[service]]\nname = \"s\"\n{}\n",
        instances(&[backend])
    )
}

/// An HTTP/1.1 instance that answers `/empty` with a 204 and anything else with `body`, and
/// counts the connections open to it (closed when the proxy closes its end).
struct CountingBackend {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
}

impl CountingBackend {
    fn start(body: &'static [u8]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&open);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let open = Arc::clone(&counted);
                open.fetch_add(1, SeqCst);
                std::thread::spawn(move || {
                    serve_counted(conn, body);
                    open.fetch_sub(1, SeqCst);
                });
            }
        });
        Self { addr, open }
    }

    fn open(&self) -> usize {
        self.open.load(SeqCst)
    }
}

/// Answers requests (without bodies) until the peer closes the connection.
fn serve_counted(mut conn: TcpStream, body: &[u8]) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        let wrote = if head.starts_with("GET /empty ") {
            conn.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
        } else {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
            conn.write_all(head.as_bytes())
                .and_then(|()| conn.write_all(body))
        };
        if wrote.is_err() {
            return;
        }
    }
}

/// An h2c connection whose streams start with `stream_window` bytes of window (the
/// connection's own window is wide open); the connection is driven in the background, which
/// answers the server's PINGs and SETTINGS.
async fn h2_connect(addr: SocketAddr, stream_window: u32) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(stream_window)
        .initial_connection_window_size(1 << 30)
        .handshake(tcp)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

async fn get(
    send: &h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    path: &str,
) -> Result<http::Response<h2::RecvStream>, h2::Error> {
    let request = http::Request::get(format!("http://{addr}{path}"))
        .body(())
        .unwrap();
    let (response, _) = send.clone().ready().await?.send_request(request, true)?;
    response.await
}

/// Reads a body to its end (releasing window as it goes): the bytes, or the error that ended
/// it.
async fn read_body(body: &mut h2::RecvStream) -> Result<Vec<u8>, h2::Error> {
    let mut out = Vec::new();
    while let Some(data) = body.data().await {
        let data = data?;
        body.flow_control().release_capacity(data.len()).unwrap();
        out.extend_from_slice(&data);
    }
    Ok(out)
}

/// Waits for a body's end without ever reopening its window: the bytes that came (within the
/// window granted at the start), or the error that ended it.
async fn read_keeping_window_shut(body: &mut h2::RecvStream) -> Result<usize, h2::Error> {
    let mut got = 0;
    while let Some(data) = body.data().await {
        got += data?.len();
    }
    Ok(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_whose_window_stays_shut_are_reset_at_the_send_timeout_and_bounded() {
    static BODY: [u8; MIB] = [b'x'; MIB];
    let backend = CountingBackend::start(&BODY);
    let (proxy, addr) = start(&config(
        backend.addr,
        "send_timeout = \"2s\"\nhttp2_max_stalled_streams = 4",
    ))
    .await;
    // Every stream's window is shut and never reopened; the connection itself stays up.
    let send = h2_connect(addr, 0).await;
    let started = Instant::now();
    let streams: Vec<_> = (0..12)
        .map(|_| {
            let send = send.clone();
            tokio::spawn(async move {
                let mut body = get(&send, addr, "/big").await.unwrap().into_body();
                let ended = read_keeping_window_shut(&mut body).await;
                (started.elapsed(), ended)
            })
        })
        .collect();
    let mut calm = Vec::new();
    let mut cancelled = Vec::new();
    for stream in streams {
        let (at, ended) = tokio::time::timeout(Duration::from_secs(10), stream)
            .await
            .expect("every stream is ended by the proxy")
            .unwrap();
        match ended.map_err(|e| e.reason()) {
            Err(Some(h2::Reason::ENHANCE_YOUR_CALM)) => calm.push(at),
            Err(Some(h2::Reason::CANCEL)) => cancelled.push(at),
            other => panic!("unexpected end of a stalled stream: {other:?} after {at:?}"),
        }
    }
    // Four streams may wait; the other eight are reset once they have waited a second.
    assert_eq!(
        (calm.len(), cancelled.len()),
        (8, 4),
        "{calm:?} {cancelled:?}"
    );
    let in_window = |at: &Duration, from: u64, to: u64| {
        (Duration::from_millis(from)..Duration::from_millis(to)).contains(at)
    };
    assert!(calm.iter().all(|at| in_window(at, 900, 1900)), "{calm:?}");
    assert!(
        cancelled.iter().all(|at| in_window(at, 1900, 3500)),
        "reset at the send timeout: {cancelled:?}"
    );
    // The instance's connections were closed, not kept half read, and nothing is in flight.
    assert_eventually(
        Duration::from_secs(3),
        || backend.open() == 0,
        || format!("{} instance connections still open", backend.open()),
    )
    .await;
    let outstanding: u32 = proxy.services()[0]
        .instances
        .iter()
        .map(|i| i.outstanding)
        .sum();
    assert_eq!(outstanding, 0);
    // The connection itself is still served.
    let r = get(&send, addr, "/empty").await.unwrap();
    assert_eq!(r.status(), 204);
}

/// Polls `ok` until it holds or `within` passes (then fails with `why`).
async fn assert_eventually(within: Duration, ok: impl Fn() -> bool, why: impl Fn() -> String) {
    let until = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < until, "{}", why());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_window_stays_shut_is_reset_at_the_total_deadline() {
    static BODY: [u8; MIB] = [b'x'; MIB];
    let backend = CountingBackend::start(&BODY);
    let toml =
        config(backend.addr, "send_timeout = \"60s\"") + "[service.timeouts]\ntotal = \"1s\"\n";
    let (_proxy, addr) = start(&toml).await;
    let send = h2_connect(addr, 1).await;
    let started = Instant::now();
    let mut body = get(&send, addr, "/big").await.unwrap().into_body();
    let ended = read_keeping_window_shut(&mut body).await;
    assert_eq!(ended.map_err(|e| e.reason()), Err(Some(h2::Reason::CANCEL)));
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(3)).contains(&started.elapsed()),
        "{:?}",
        started.elapsed()
    );
    assert_eventually(
        Duration::from_secs(3),
        || backend.open() == 0,
        || format!("{} instance connections still open", backend.open()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_gets_whole_bodies_uploads_and_trailers() {
    let b = Backend::start("b");
    let (_p, addr) = start(&config(b.addr(), "send_timeout = \"1s\"")).await;
    // Small windows (the default 65,535) that the client reopens as it reads.
    let send = h2_connect(addr, 65_535).await;
    let mut downloads = Vec::new();
    for _ in 0..4 {
        let send = send.clone();
        downloads.push(tokio::spawn(async move {
            let r = get(&send, addr, &format!("/big/{MIB}")).await.unwrap();
            assert_eq!(r.status(), 200);
            read_body(&mut r.into_body()).await.unwrap().len()
        }));
    }
    for d in downloads {
        assert_eq!(d.await.unwrap(), MIB);
    }

    // An upload of 3 MB (streamed to the instance), ending with trailers.
    let (response, mut upload) = open_upload(&send, addr, "/echo").await;
    let sent = tokio::spawn(async move {
        for _ in 0..30 {
            upload.reserve_capacity(100_000);
            while upload.capacity() < 100_000 {
                let _ = std::future::poll_fn(|cx| upload.poll_capacity(cx)).await;
            }
            upload
                .send_data(Bytes::from(vec![b'u'; 100_000]), false)
                .unwrap();
        }
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-upload-sum", "3000000".parse().unwrap());
        upload.send_trailers(trailers).unwrap();
    });
    let r = response.await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        read_body(&mut r.into_body()).await.unwrap().len(),
        3_000_000
    );
    sent.await.unwrap();

    // Trailers from the instance reach the client.
    let scripted = scripted_backend(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n\
          5\r\nhello\r\n0\r\nx-checksum: 42\r\n\r\n",
    );
    let (_p2, addr2) = start(&config(scripted, "")).await;
    let send2 = h2_connect(addr2, 65_535).await;
    let mut body = get(&send2, addr2, "/t").await.unwrap().into_body();
    assert_eq!(read_body(&mut body).await.unwrap(), b"hello");
    let trailers = body.trailers().await.unwrap().expect("trailers");
    assert_eq!(trailers["x-checksum"], "42");
}

/// An instance that answers every request on every connection with `reply`.
fn scripted_backend(reply: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n) = conn.read(&mut chunk) {
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        if conn.write_all(reply).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_finishes_open_streams_and_refuses_new_ones() {
    let b = Backend::start("b");
    let (proxy, addr) = start(&config(b.addr(), "")).await;
    let send = h2_connect(addr, 65_535).await;
    let slow = {
        let send = send.clone();
        tokio::spawn(async move {
            let r = get(&send, addr, "/delay/500").await.unwrap();
            (
                r.status(),
                read_body(&mut r.into_body()).await.map(|b| b.len()),
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let shutdown = tokio::spawn(async move { proxy.shutdown(Duration::from_secs(10)).await });
    let (status, body) = slow.await.unwrap();
    assert_eq!(status, 200, "the stream open when draining began finishes");
    assert!(body.unwrap() > 0);
    // GOAWAY came first: the connection takes no new stream.
    assert!(get(&send, addr, "/after").await.is_err());
    shutdown.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown waited for the open stream only: {:?}",
        started.elapsed()
    );
}

/// Answers of many streams finishing together go out in shared writes (`h2_io`): each stream
/// still gets its own body, whole and in order, at every size from one byte to beyond the
/// bytes a connection holds back (64 KiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_answered_together_each_get_their_own_body_whole() {
    let b = Backend::start("b");
    let (_p, addr) = start(&config(b.addr(), "")).await;
    let sizes = [
        1,
        64,
        300,
        1024,
        5000,
        16 * 1024,
        16 * 1024 + 7,
        70_000,
        200_000,
    ];
    let mut streams = Vec::new();
    for connection in 0..3 {
        let send = h2_connect(addr, 65_535).await;
        for i in 0..60 {
            let send = send.clone();
            let size = sizes[i % sizes.len()];
            // Bytes no other stream sends: the stream's number, then a counter.
            let body: Vec<u8> = (0..size).map(|n| (connection * 61 + i + n) as u8).collect();
            streams.push(tokio::spawn(async move {
                let echoed = post(&send, addr, "/echo", Bytes::from(body.clone())).await;
                assert!(
                    echoed == body,
                    "stream {connection}/{i}: its {size} bytes came back changed"
                );
            }));
        }
    }
    for s in streams {
        s.await.unwrap();
    }
}

/// A POST whose body is still to send: the answer to come, and the body's stream.
async fn open_upload(
    send: &h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    path: &str,
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    let request = http::Request::post(format!("http://{addr}{path}"))
        .body(())
        .unwrap();
    send.clone()
        .ready()
        .await
        .unwrap()
        .send_request(request, false)
        .unwrap()
}

/// POSTs `body` and reads the answer's body.
async fn post(
    send: &h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    path: &str,
    body: Bytes,
) -> Vec<u8> {
    let (response, mut upload) = open_upload(send, addr, path).await;
    let mut rest = body;
    while !rest.is_empty() {
        upload.reserve_capacity(rest.len());
        let room = std::future::poll_fn(|cx| upload.poll_capacity(cx))
            .await
            .unwrap()
            .unwrap();
        upload
            .send_data(rest.split_to(room.min(rest.len())), false)
            .unwrap();
    }
    upload.send_data(Bytes::new(), true).unwrap();
    let r = response.await.unwrap();
    assert_eq!(r.status(), 200);
    read_body(&mut r.into_body()).await.unwrap()
}

/// One raw HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The client preface and an empty SETTINGS frame.
fn preface() -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    out
}

/// Reads until the proxy closes the connection (or `within` passes): the bytes, and how long
/// that took.
fn read_until_closed(s: &mut TcpStream, within: Duration) -> (Vec<u8>, Duration) {
    let t = Instant::now();
    s.set_read_timeout(Some(within)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    while t.elapsed() < within {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    (got, t.elapsed())
}

/// A client that floods PINGs and reads none of the PONGs: the PONGs Sluice owes it back up,
/// and the connection ends at `send_timeout` (here within a second), not at the head timeout
/// (60 s) nor never. Other clients are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_from_a_client_that_never_reads_ends_at_the_send_timeout() {
    let b = Backend::start("b");
    let listener = "send_timeout = \"500ms\"\nheader_read_timeout = \"60s\"";
    let (_p, addr) = start(&config(b.addr(), listener)).await;
    let s = TcpStream::connect(addr).unwrap();
    let ping = frame(0x6, 0, 0, b"12345678");
    let burst: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 4096)
        .collect();
    // Up to 700 MB of PINGs, far beyond every buffer on the way: the writes block once Sluice
    // stops reading, and fail once it closes.
    let mut writer = s.try_clone().unwrap();
    let (done, flooded) = std::sync::mpsc::channel();
    let started = Instant::now();
    std::thread::spawn(move || {
        let mut sent = 0usize;
        let mut ok = writer.write_all(&preface()).is_ok();
        while ok && sent < 10_000 {
            ok = writer.write_all(&burst).is_ok();
            sent += 1;
        }
        let _ = done.send((ok, sent));
    });
    std::thread::sleep(Duration::from_millis(300));
    let r = Client::h2c()
        .get(&format!("http://{addr}/ok"))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "another client is served during the flood");
    let (still_open, sent) = flooded
        .recv_timeout(Duration::from_secs(30))
        .expect("the flood neither blocked for good nor ended: the proxy kept reading it");
    assert!(
        !still_open,
        "the proxy read all {sent} bursts of PINGs from a client that took none of its PONGs"
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(20),
        "closed {elapsed:?} after the flood began ({sent} bursts), not at the send timeout"
    );
}

/// Rapid reset (CVE-2023-44487): streams opened and reset at once, in a loop. The connection
/// is ended with GOAWAY (ENHANCE_YOUR_CALM) long before the streams reach the instance in
/// numbers, and other clients are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_ends_the_connection_with_goaway() {
    let b = Backend::start("b");
    let (_p, addr) = start(&config(b.addr(), "")).await;
    let mut s = TcpStream::connect(addr).unwrap();
    let mut out = preface();
    // GET / on authority "x": :method GET, :scheme http, :path /, :authority x (HPACK).
    let head = [0x82, 0x86, 0x84, 0x41, 0x01, b'x'];
    for i in 0..5000u32 {
        let stream = 2 * i + 1;
        out.extend(frame(0x1, 0x5, stream, &head)); // HEADERS, END_STREAM | END_HEADERS
        out.extend(frame(0x3, 0, stream, &8u32.to_be_bytes())); // RST_STREAM CANCEL
    }
    let mut writer = s.try_clone().unwrap();
    let writing = std::thread::spawn(move || {
        let _ = writer.write_all(&out);
    });
    let (got, after) = read_until_closed(&mut s, Duration::from_secs(10));
    let _ = writing.join();
    assert!(after < Duration::from_secs(5), "closed after {after:?}");
    assert!(
        contains_goaway(&got, 0xb),
        "GOAWAY with ENHANCE_YOUR_CALM ({} bytes read)",
        got.len()
    );
    assert!(
        b.hits() < 1000,
        "{} of 5000 reset streams reached the instance",
        b.hits()
    );
    let r = Client::h2c()
        .get(&format!("http://{addr}/ok"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}

/// Stream 1's frames read off `s` — kind, flags, and when the read that completed each one
/// returned — until the stream ends or `within` passes.
fn stream_frames(s: &mut TcpStream, within: Duration) -> Vec<(u8, u8, Instant)> {
    let start = Instant::now();
    s.set_read_timeout(Some(within)).unwrap();
    let (mut buf, mut frames) = (Vec::new(), Vec::new());
    let mut chunk = [0u8; 64 * 1024];
    while start.elapsed() < within {
        let Ok(n @ 1..) = s.read(&mut chunk) else {
            break;
        };
        let at = Instant::now();
        buf.extend_from_slice(&chunk[..n]);
        while buf.len() >= 9 {
            let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let (kind, flags) = (buf[3], buf[4]);
            let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            buf.drain(..9 + len);
            if stream == 1 {
                frames.push((kind, flags, at));
                // END_STREAM on DATA (0x0) or HEADERS (0x1).
                if kind <= 0x1 && flags & 0x1 != 0 {
                    return frames;
                }
            }
        }
    }
    frames
}

/// As on HTTP/1.x: an answer's HEADERS wait for the first bytes of a body of stated length
/// and leave with its first DATA, when the instance writes its head and its body apart. The
/// head of a body of unknown length, which may be a stream that starts late, goes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_waits_for_the_first_bytes_of_a_body_of_stated_length_only() {
    for (parts, together) in [(STATED, true), (STATED_LARGE, true), (STREAMED, false)] {
        let instance = scripted_in_parts(parts, Duration::from_millis(500));
        let (_p, addr) = start(&config(instance, "")).await;
        let mut s = TcpStream::connect(addr).unwrap();
        let mut out = preface();
        // GET / on authority "x", END_STREAM | END_HEADERS (as in the rapid-reset test).
        out.extend(frame(0x1, 0x5, 1, &[0x82, 0x86, 0x84, 0x41, 0x01, b'x']));
        s.write_all(&out).unwrap();
        let frames = stream_frames(&mut s, Duration::from_secs(5));
        let at = |kind| frames.iter().find(|f| f.0 == kind).map(|f| f.2);
        let (Some(head), Some(data)) = (at(0x1), at(0x0)) else {
            panic!("HEADERS and DATA on stream 1: {frames:?}");
        };
        let apart = data - head;
        assert_eq!(
            apart < Duration::from_millis(250),
            together,
            "HEADERS and DATA arrived {apart:?} apart"
        );
    }
}

/// Whether `bytes`, read from the start of a connection, hold a GOAWAY frame with `code`.
fn contains_goaway(bytes: &[u8], code: u32) -> bool {
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let len = usize::from(bytes[at]) << 16
            | usize::from(bytes[at + 1]) << 8
            | usize::from(bytes[at + 2]);
        let end = at + 9 + len;
        if end > bytes.len() {
            return false;
        }
        if bytes[at + 3] == 0x7 && len >= 8 {
            let got = u32::from_be_bytes(bytes[at + 13..at + 17].try_into().unwrap());
            if got == code {
                return true;
            }
        }
        at = end;
    }
    false
}

/// Hundreds of streams in flight at once, on four connections, and uploads larger than the
/// connection's window on a hundred streams at once: every request is answered, and every one
/// reaches the instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_streams_in_flight_are_all_answered() {
    let b = Backend::start("b");
    let (_p, addr) = start(&config(b.addr(), "")).await;
    let url = format!("http://{addr}/many");
    let got = tokio::task::spawn_blocking({
        let url = url.clone();
        move || sluice_test_support::h2load(&["-c", "4", "-m", "100", "-n", "4000", &url])
    })
    .await
    .unwrap();
    assert_eq!(
        sluice_test_support::h2load_succeeded(&got),
        Some(4000),
        "{got}"
    );
    assert_eq!(b.hits(), 4000);
    let upload = std::env::temp_dir().join(format!("sluice-h2-upload-{}", addr.port()));
    std::fs::write(&upload, vec![b'u'; 64 * 1024]).unwrap();
    let path = upload.display().to_string();
    let got = tokio::task::spawn_blocking(move || {
        sluice_test_support::h2load(&["-c", "1", "-m", "100", "-n", "400", "-d", &path, &url])
    })
    .await
    .unwrap();
    let _ = std::fs::remove_file(&upload);
    assert_eq!(
        sluice_test_support::h2load_succeeded(&got),
        Some(400),
        "{got}"
    );
    assert!(got.contains("status codes: 400 2xx"), "{got}");
    assert_eq!(b.hits(), 4400);
}

/// A raw HTTP/2 client on one connection: what it reads back, frame by frame.
struct RawClient {
    socket: TcpStream,
    read: Vec<u8>,
    decoder: sluice_codec::h2::hpack::Decoder,
}

/// One frame the proxy sent: type, flags, stream, payload.
type RawFrame = (u8, u8, u32, Vec<u8>);
/// A field as a raw client sends it: name and value, any bytes.
type RawField<'a> = (&'a [u8], &'a [u8]);

impl RawClient {
    fn connect(addr: SocketAddr) -> Self {
        let mut socket = TcpStream::connect(addr).unwrap();
        socket.write_all(&preface()).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Self {
            socket,
            read: Vec::new(),
            decoder: sluice_codec::h2::hpack::Decoder::new(4096),
        }
    }

    /// Sends a request with `fields` (raw HPACK literals, any bytes) and, if given, a body.
    fn send(&mut self, stream: u32, fields: &[RawField<'_>], body: Option<&[u8]>) {
        let mut block = vec![0x82, 0x86, 0x84, 0x41, 0x01, b'x']; // GET http / authority x
        if body.is_some() {
            block[0] = 0x83; // POST
        }
        for (name, value) in fields {
            block.push(0x00);
            block.push(u8::try_from(name.len()).unwrap());
            block.extend_from_slice(name);
            block.push(u8::try_from(value.len()).unwrap());
            block.extend_from_slice(value);
        }
        let flags = if body.is_some() { 0x4 } else { 0x5 };
        let mut out = frame(0x1, flags, stream, &block);
        if let Some(body) = body {
            out.extend(frame(0x0, 0x1, stream, body));
        }
        self.socket.write_all(&out).unwrap();
    }

    /// Frames until one on `stream` ends it (END_STREAM or RST_STREAM).
    fn until_stream_ends(&mut self, stream: u32) -> Vec<RawFrame> {
        let mut frames = Vec::new();
        loop {
            while self.read.len() >= 9 {
                let len = usize::from(self.read[0]) << 16
                    | usize::from(self.read[1]) << 8
                    | usize::from(self.read[2]);
                if self.read.len() < 9 + len {
                    break;
                }
                let f: Vec<u8> = self.read.drain(..9 + len).collect();
                let id = u32::from_be_bytes(f[5..9].try_into().unwrap()) & 0x7fff_ffff;
                let (kind, flags) = (f[3], f[4]);
                let ends = id == stream && (kind == 0x3 || flags & 0x1 != 0 && kind <= 0x1);
                frames.push((kind, flags, id, f[9..].to_vec()));
                if ends {
                    return frames;
                }
            }
            let mut buf = [0u8; 64 * 1024];
            let n = self
                .socket
                .read(&mut buf)
                .expect("the proxy answers in time");
            assert!(n > 0, "connection closed; frames so far: {frames:?}");
            self.read.extend_from_slice(&buf[..n]);
        }
    }

    /// The `:status` and body of `stream`'s answer in `frames`, or its RST_STREAM code.
    fn answer(&mut self, frames: &[RawFrame], stream: u32) -> Result<(String, Vec<u8>), u32> {
        let mut status = String::new();
        let mut body = Vec::new();
        for (kind, _, id, payload) in frames.iter().filter(|f| f.2 == stream) {
            match kind {
                0x1 => self
                    .decoder
                    .decode(payload, |f| {
                        if f.name == b":status" {
                            status = String::from_utf8_lossy(f.value).into_owned();
                        }
                    })
                    .unwrap(),
                0x0 => body.extend_from_slice(payload),
                0x3 => return Err(u32::from_be_bytes(payload[..4].try_into().unwrap())),
                _ => {}
            }
            let _ = id;
        }
        Ok((status, body))
    }
}

/// Hostile and odd requests on one connection: each malformed one is reset
/// (PROTOCOL_ERROR, RFC 9113 §8.1.1, §8.2) and the connection goes on serving; a value that
/// is not UTF-8 reaches the instance byte for byte. Malformed heads never reach the instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_reset_and_odd_bytes_pass_through() {
    let b = Backend::start("b");
    let (_p, addr) = start(&config(b.addr(), "")).await;
    tokio::task::spawn_blocking(move || {
        let mut c = RawClient::connect(addr);
        let protocol_error = 0x1;
        let cases: [(&[RawField<'_>], Option<&[u8]>); 5] = [
            (&[(b"X-Upper", b"1")], None),
            (&[(b"connection", b"close")], None),
            (&[(b"x-bad", b"a\r\nb")], None),
            (&[(b"content-length", b"5")], None),
            (&[(b"content-length", b"5")], Some(b"toolong")),
        ];
        let mut stream = 1;
        for (fields, body) in cases {
            c.send(stream, fields, body);
            let frames = c.until_stream_ends(stream);
            assert_eq!(c.answer(&frames, stream), Err(protocol_error), "{fields:?}");
            stream += 2;
        }
        c.send(stream, &[(b"x-latin1", b"caf\xe9")], None);
        let frames = c.until_stream_ends(stream);
        let (status, body) = c.answer(&frames, stream).unwrap();
        assert_eq!(status, "200");
        let echoed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        // The test instance writes a value that is not UTF-8 as escapes, byte by byte.
        assert_eq!(
            echoed["headers"]["x-latin1"], "\\x63\\x61\\x66\\xe9",
            "{echoed}"
        );
        stream += 2;
        c.send(stream, &[(b"content-length", b"3")], Some(b"abc"));
        let frames = c.until_stream_ends(stream);
        let (status, body) = c.answer(&frames, stream).unwrap();
        assert_eq!(status, "200");
        let echoed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(echoed["body_len"], 3);
    })
    .await
    .unwrap();
    // The two well-formed requests, and maybe the head of the one whose body ran past its
    // `content-length`: bodies are streamed, so its head may have gone on before the body
    // failed (its instance connection is then closed). No other reaches the instance.
    let hits = b.hits();
    assert!(
        (2..=3).contains(&hits),
        "{hits} requests reached the instance"
    );
}

/// A request whose fields exceed `max_header_bytes` (32 KiB) gets 431, as over HTTP/1.1, and
/// never reaches the instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_http2_head_gets_431() {
    let b = Backend::start("b");
    let (_p, addr) = start(&config(b.addr(), "")).await;
    let fields: Vec<String> = (0..4)
        .map(|i| format!("x-big-{i}: {}", "b".repeat(10_000)))
        .collect();
    let answer = tokio::task::spawn_blocking(move || {
        let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
        sluice_test_support::curl(
            &format!("http://{addr}/"),
            &fields,
            &["--http2-prior-knowledge"],
        )
    })
    .await
    .unwrap();
    assert_eq!(answer.status, 431, "{}", answer.body);
    assert!(
        answer.body.contains("request_head_too_large"),
        "{}",
        answer.body
    );
    assert_eq!(b.hits(), 0);
}
