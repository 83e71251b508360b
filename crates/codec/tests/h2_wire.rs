//! The HTTP/2 framing and HPACK code against real clients on loopback: curl (nghttp2's
//! encoder, which Huffman-codes and indexes fields) and the `h2` crate (a second, independent
//! implementation, which also sends never-indexed fields). A small server built only from
//! `sluice_codec::h2` decodes each request's field block and answers with a head encoded by
//! it; the clients check the answer, and the answer's body lists the fields as decoded.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::thread;

use sluice_codec::h2::frame::{self, ErrorCode, Frame, setting};
use sluice_codec::h2::hpack::{self, Decoder, encode};

/// A value long enough that the answer's field block needs CONTINUATION frames.
const LONG: usize = 40_000;

/// Serves every connection accepted on `listener` (one thread each) until the test ends.
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

fn serve(mut socket: TcpStream) {
    let mut input = Vec::new();
    if read_at_least(&mut socket, &mut input, frame::PREFACE.len()).is_err()
        || &input[..24] != frame::PREFACE
    {
        return;
    }
    input.drain(..24);
    let mut out = Vec::new();
    frame::write_settings(&mut out, &[(setting::MAX_CONCURRENT_STREAMS, 100)]);
    let mut conn = Conn {
        decoder: Decoder::new(hpack::DEFAULT_TABLE_SIZE),
        block: Vec::new(),
        peer_max_frame: frame::DEFAULT_MAX_FRAME_SIZE,
    };
    loop {
        while let Some((f, taken)) =
            frame::read(&input, frame::DEFAULT_MAX_FRAME_SIZE).expect("clients send valid frames")
        {
            let go_on = conn.on_frame(f, &mut out);
            input.drain(..taken);
            if !go_on {
                let _ = socket.write_all(&out);
                return;
            }
        }
        if socket.write_all(&out).is_err() {
            return;
        }
        out.clear();
        let mut chunk = [0u8; 16_384];
        match socket.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => input.extend_from_slice(&chunk[..n]),
        }
    }
}

fn read_at_least(socket: &mut TcpStream, input: &mut Vec<u8>, n: usize) -> std::io::Result<()> {
    let mut chunk = [0u8; 1024];
    while input.len() < n {
        let got = socket.read(&mut chunk)?;
        if got == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        input.extend_from_slice(&chunk[..got]);
    }
    Ok(())
}

struct Conn {
    decoder: Decoder,
    block: Vec<u8>,
    peer_max_frame: u32,
}

impl Conn {
    /// Handles one frame; false once the client goes away.
    fn on_frame(&mut self, f: Frame<'_>, out: &mut Vec<u8>) -> bool {
        match f {
            Frame::Settings(s) => {
                for (id, value) in s.iter() {
                    if id == setting::MAX_FRAME_SIZE {
                        self.peer_max_frame = value;
                    }
                }
                frame::write_settings_ack(out);
            }
            Frame::Ping {
                ack: false,
                payload,
            } => frame::write_ping_ack(out, payload),
            Frame::Headers {
                stream,
                end_headers,
                block,
                ..
            }
            | Frame::Continuation {
                stream,
                end_headers,
                block,
            } => {
                self.block.extend_from_slice(block);
                if end_headers {
                    self.answer(stream, out);
                }
            }
            Frame::GoAway { .. } => return false,
            _ => {}
        }
        true
    }

    /// Answers a request with its own fields, as decoded, in the body.
    fn answer(&mut self, stream: u32, out: &mut Vec<u8>) {
        let mut listed = String::new();
        let mut path = String::new();
        let block = std::mem::take(&mut self.block);
        let decoded = self.decoder.decode(&block, |f| {
            let name = String::from_utf8_lossy(f.name);
            let value = String::from_utf8_lossy(f.value);
            if name == ":path" {
                path = value.to_string();
            }
            let mark = if f.sensitive { " (never indexed)" } else { "" };
            listed.push_str(&format!("{name}: {value}{mark}\n"));
        });
        if decoded.is_err() {
            frame::write_goaway(out, stream, ErrorCode::COMPRESSION_ERROR);
            return;
        }
        let mut head = Vec::new();
        encode::status(&mut head, if path == "/teapot" { 418 } else { 200 });
        encode::field(&mut head, b"Content-Type", b"text/plain", false);
        encode::field(&mut head, b"X-Mixed-Case", b"Value As Sent", false);
        encode::field(&mut head, b"set-cookie", b"session=42", true);
        if path == "/long" {
            encode::field(&mut head, b"x-long", &vec![b'v'; LONG], false);
        }
        frame::write_headers(out, stream, &head, false, self.peer_max_frame);
        frame::write_data_header(out, stream, listed.len(), true);
        out.extend_from_slice(listed.as_bytes());
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
