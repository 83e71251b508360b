//! Sluice's own HTTP/2 server code (`sluice_codec::h2`: frames, HPACK, the server connection)
//! against real clients on loopback: curl and nghttp (nghttp2, which Huffman-codes and indexes
//! fields), h2load (hundreds of streams in flight, uploads beyond the windows) and the `h2`
//! crate (a second, independent implementation, which also sends never-indexed fields). A small
//! blocking server drives a `ServerConn` per connection; each answer's body lists the request's
//! fields as decoded and how many body bytes arrived, so the clients check both directions.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::thread;

use sluice_codec::h2::head::Head;
use sluice_codec::h2::server::{Config, Event, ServerConn};

/// A value long enough that the answer's field block needs CONTINUATION frames.
const LONG: usize = 40_000;
/// The size of the answer to `/big`: more than the client's initial windows.
const BIG: usize = 1 << 20;

/// Serves every connection accepted on a new loopback port (one thread each) until the test
/// ends; the port.
fn start_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let port = listener.local_addr().expect("bound").port();
    thread::spawn(move || {
        for socket in listener.incoming().flatten() {
            thread::spawn(move || serve(socket));
        }
    });
    port
}

/// What one connection's streams have received so far, and what is left to send.
#[derive(Default)]
struct StreamState {
    listed: String,
    path: String,
    body_bytes: usize,
    unsent: Vec<u8>,
}

fn serve(mut socket: TcpStream) {
    let mut conn = ServerConn::new(Config {
        max_concurrent_streams: 200,
        max_header_list_size: 16 * 1024,
        stream_window: 256 * 1024,
        connection_window: 1024 * 1024,
        max_frame_size: 16_384,
        reset_budget: 100,
    });
    let mut streams: HashMap<u32, StreamState> = HashMap::new();
    let mut input = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        if socket.write_all(conn.output()).is_err() || conn.is_finished() {
            return;
        }
        let n = conn.output().len();
        conn.advance_output(n);
        let got = match socket.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(got) => got,
        };
        input.extend_from_slice(&chunk[..got]);
        let mut events = Vec::new();
        let Ok(read) = conn.receive(&input, &mut |e| events.push(e)) else {
            let _ = socket.write_all(conn.output());
            return;
        };
        input.drain(..read);
        for event in events {
            on_event(&mut conn, &mut streams, event);
        }
    }
}

fn on_event(conn: &mut ServerConn, streams: &mut HashMap<u32, StreamState>, event: Event) {
    match event {
        Event::Request {
            stream,
            head,
            end_stream,
        } => {
            let state = streams.entry(stream).or_default();
            state.path = String::from_utf8_lossy(head.path().unwrap_or_default()).into_owned();
            state.listed = list(&head);
            if end_stream {
                answer(conn, streams, stream);
            }
        }
        Event::Data {
            stream,
            at,
            end_stream,
        } => {
            let len = at.len();
            conn.release(stream, len);
            if let Some(state) = streams.get_mut(&stream) {
                state.body_bytes += len;
            }
            if end_stream {
                answer(conn, streams, stream);
            }
        }
        Event::Trailers { stream, trailers } => {
            if let Some(state) = streams.get_mut(&stream) {
                state
                    .listed
                    .push_str(&format!("trailers: {}\n", trailers.field_count()));
            }
            answer(conn, streams, stream);
        }
        Event::HeadTooLarge { stream } => {
            let _ = conn.send_head(stream, 431, [], true);
        }
        Event::Reset { stream, .. } => {
            streams.remove(&stream);
        }
        Event::Writable { stream } => send_more(conn, streams, stream),
        Event::Refused { .. } => {}
    }
}

/// The request's fields as decoded, one per line.
fn list(head: &Head) -> String {
    let mut listed = String::new();
    let pseudo = [
        (":method", Some(head.method())),
        (":scheme", head.scheme()),
        (":authority", head.authority()),
        (":path", head.path()),
    ];
    for (name, value) in pseudo {
        if let Some(value) = value {
            listed.push_str(&format!("{name}: {}\n", String::from_utf8_lossy(value)));
        }
    }
    for (name, value, sensitive) in head.fields() {
        let mark = if sensitive { " (never indexed)" } else { "" };
        let (name, value) = (
            String::from_utf8_lossy(name),
            String::from_utf8_lossy(value),
        );
        listed.push_str(&format!("{name}: {value}{mark}\n"));
    }
    listed
}

/// Answers a request with its own fields, as decoded, and its body's length, in the body.
fn answer(conn: &mut ServerConn, streams: &mut HashMap<u32, StreamState>, stream: u32) {
    let Some(state) = streams.get_mut(&stream) else {
        return;
    };
    let status = if state.path == "/teapot" { 418 } else { 200 };
    let long = vec![b'v'; LONG];
    let mut fields: Vec<(&[u8], &[u8], bool)> = vec![
        (b"Content-Type", b"text/plain", false),
        (b"X-Mixed-Case", b"Value As Sent", false),
        (b"set-cookie", b"session=42", true),
    ];
    if state.path == "/long" {
        fields.push((b"x-long", &long, false));
    }
    state.unsent = format!("{}body: {}\n", state.listed, state.body_bytes).into_bytes();
    if state.path == "/big" {
        state.unsent.resize(BIG, b'b');
    }
    if conn.send_head(stream, status, fields, false).is_ok() {
        send_more(conn, streams, stream);
    }
}

fn send_more(conn: &mut ServerConn, streams: &mut HashMap<u32, StreamState>, stream: u32) {
    let Some(state) = streams.get_mut(&stream) else {
        return;
    };
    match conn.send_data(stream, &state.unsent, true) {
        Ok(n) if n == state.unsent.len() => {
            streams.remove(&stream);
        }
        Ok(n) => {
            state.unsent.drain(..n);
        }
        Err(_) => {
            streams.remove(&stream);
        }
    }
}

/// Runs a client; its stdout.
fn run(program: &str, args: &[String]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} does not run ({e}): install it with scripts/setup.sh")
        });
    assert!(
        output.status.success(),
        "{program} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

#[test]
fn nghttp2s_requests_decode_and_answers_encode() {
    let port = start_server();
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    // Three requests on one connection: the second and third refer to fields the first put
    // into the dynamic table. (curl 7.88 cannot reuse a prior-knowledge connection, so
    // nghttp, the same library's own client, sends them.)
    let mut args: Vec<String> = ["-v", "-H", "X-Request-Field: alpha beta gamma"]
        .map(String::from)
        .to_vec();
    args.extend([url("/first"), url("/long"), url("/teapot")]);
    let text = run("nghttp", &args);
    for path in ["/first", "/long", "/teapot"] {
        assert!(
            text.contains(&format!(":path: {path}\n")),
            "{path} not decoded:\n{text}"
        );
    }
    assert_eq!(
        text.matches(":method: GET\n").count(),
        3 * 2,
        "sent and decoded: {text}"
    );
    assert_eq!(
        text.matches("x-request-field: alpha beta gamma\n").count(),
        3 * 2
    );
    assert_eq!(text.matches(":status: 200\n").count(), 2, "{text}");
    assert_eq!(text.matches(":status: 418\n").count(), 1, "{text}");
    assert_eq!(
        text.matches(") x-mixed-case: Value As Sent\n").count(),
        3,
        "{text}"
    );
    assert_eq!(
        text.matches(", sensitive) set-cookie: session=42\n")
            .count(),
        3
    );
    let long = format!(") x-long: {}\n", "v".repeat(LONG));
    assert_eq!(
        text.matches(&long).count(),
        1,
        "the long field did not arrive whole"
    );
}

#[test]
fn curls_request_decodes_and_its_answer_encodes() {
    let port = start_server();
    let args = [
        "-sS",
        "--http2-prior-knowledge",
        "-D",
        "-",
        "-H",
        "X-Request-Field: alpha beta gamma",
    ]
    .map(String::from);
    let mut args = args.to_vec();
    args.push(format!("http://127.0.0.1:{port}/long"));
    let text = run("curl", &args);
    assert!(text.starts_with("HTTP/2 200"), "{text}");
    assert!(text.contains("x-mixed-case: Value As Sent\r\n"), "{text}");
    assert!(text.contains(&format!("x-long: {}\r\n", "v".repeat(LONG))));
    assert!(text.contains(":path: /long\n"), "{text}");
    assert!(
        text.contains("x-request-field: alpha beta gamma\n"),
        "{text}"
    );
    assert!(text.contains("user-agent: curl/"), "{text}");
}

#[test]
fn the_h2_crates_requests_decode_and_answers_encode() {
    let port = start_server();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let socket = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (client, conn) = h2::client::handshake(socket).await.unwrap();
        tokio::spawn(conn);
        let mut client = client.ready().await.unwrap();
        let mut answers = Vec::new();
        for path in ["/a", "/long", "/teapot", "/b"] {
            let mut secret = http::HeaderValue::from_static("Bearer s3cr3t");
            secret.set_sensitive(true);
            let request = http::Request::get(format!("http://h2.test{path}"))
                .header("x-repeated", "same value every time")
                .header("authorization", secret)
                .body(())
                .unwrap();
            let (answer, _) = client.send_request(request, true).unwrap();
            answers.push(answer);
            client = client.ready().await.unwrap();
        }
        for (answer, path) in answers.into_iter().zip(["/a", "/long", "/teapot", "/b"]) {
            let (head, mut body) = answer.await.unwrap().into_parts();
            let expected_status = if path == "/teapot" { 418 } else { 200 };
            assert_eq!(head.status.as_u16(), expected_status);
            assert_eq!(head.headers["x-mixed-case"], "Value As Sent");
            assert_eq!(head.headers["content-type"], "text/plain");
            assert_eq!(head.headers["set-cookie"], "session=42");
            assert_eq!(
                head.headers.get("x-long").map(|v| v.len()),
                (path == "/long").then_some(LONG)
            );
            let mut listed = Vec::new();
            while let Some(chunk) = body.data().await {
                listed.extend_from_slice(&chunk.unwrap());
            }
            let listed = String::from_utf8(listed).unwrap();
            assert!(listed.contains(&format!(":path: {path}\n")), "{listed}");
            assert!(listed.contains(":authority: h2.test\n"), "{listed}");
            assert!(
                listed.contains("x-repeated: same value every time\n"),
                "{listed}"
            );
            assert!(
                listed.contains("authorization: Bearer s3cr3t (never indexed)\n"),
                "{listed}"
            );
        }
    });
}

#[test]
fn h2load_with_hundreds_of_streams_in_flight_and_uploads_beyond_the_windows() {
    let port = start_server();
    let url = format!("http://127.0.0.1:{port}/many");
    // 4 connections × 100 streams in flight, 4,000 requests.
    let args = ["-c", "4", "-m", "100", "-n", "4000", &url].map(String::from);
    let text = run("h2load", &args);
    assert_eq!(
        sluice_test_support::h2load_succeeded(&text),
        Some(4000),
        "{text}"
    );
    // Uploads of 100 KiB on 50 streams at once: 5 MiB in flight against a 1 MiB connection
    // window, which reopens only as the server releases what it read.
    let upload = std::env::temp_dir().join(format!("h2-wire-upload-{port}"));
    std::fs::write(&upload, vec![b'u'; 100 * 1024]).expect("a temporary file");
    let upload_path = upload.display().to_string();
    let args = ["-c", "1", "-m", "50", "-n", "200", "-d", &upload_path, &url].map(String::from);
    let text = run("h2load", &args);
    let _ = std::fs::remove_file(&upload);
    assert_eq!(
        sluice_test_support::h2load_succeeded(&text),
        Some(200),
        "{text}"
    );
}

#[test]
fn curl_uploads_and_downloads_past_the_windows_and_oversized_heads_get_431() {
    let port = start_server();
    let mut args = ["-sS", "--http2-prior-knowledge", "--data-binary", "@-"]
        .map(String::from)
        .to_vec();
    args.push(format!("http://127.0.0.1:{port}/upload"));
    let mut child = Command::new("curl")
        .args(&args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("curl runs (install it with scripts/setup.sh)");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(&vec![b'u'; 3 * 1024 * 1024])
        .expect("upload written");
    drop(stdin);
    let output = child.wait_with_output().expect("curl finishes");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains(&format!("body: {}\n", 3 * 1024 * 1024)),
        "{text}"
    );
    let args = ["-sS", "--http2-prior-knowledge", "-o", "-"].map(String::from);
    let mut download = args.to_vec();
    download.push(format!("http://127.0.0.1:{port}/big"));
    assert_eq!(run("curl", &download).len(), BIG);
    let mut oversized = [
        "-sS",
        "--http2-prior-knowledge",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
    ]
    .map(String::from)
    .to_vec();
    // 24 KB of fields against a 16 KiB limit (nghttp2 itself sends no more than 64 KiB).
    for i in 0..4 {
        oversized.extend(["-H".into(), format!("x-huge-{i}: {}", "h".repeat(6_000))]);
    }
    oversized.push(format!("http://127.0.0.1:{port}/"));
    assert_eq!(run("curl", &oversized), "431");
}
