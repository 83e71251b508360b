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
use sluice_test_support::Backend;

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
    let request = http::Request::post(format!("http://{addr}/echo"))
        .body(())
        .unwrap();
    let (response, mut upload) = send
        .clone()
        .ready()
        .await
        .unwrap()
        .send_request(request, false)
        .unwrap();
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

/// POSTs `body` and reads the answer's body.
async fn post(
    send: &h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    path: &str,
    body: Bytes,
) -> Vec<u8> {
    let request = http::Request::post(format!("http://{addr}{path}"))
        .body(())
        .unwrap();
    let (response, mut upload) = send
        .clone()
        .ready()
        .await
        .unwrap()
        .send_request(request, false)
        .unwrap();
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
