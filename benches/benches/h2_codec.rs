//! What Sluice's own HTTP/2 code costs per request: encoding an answer's head (the fields an
//! nginx instance sends, as Sluice passes them on), decoding request field blocks as a
//! client's encoder writes them (Huffman-coded literals that fill the dynamic table, then
//! blocks that only refer to it), and serving 100 requests on one connection — the server
//! connection state, HPACK both ways and framing, no sockets — next to the `h2` crate's server
//! (what Sluice serves clients with today) given the same client bytes.

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use sluice_codec::h2::frame;
use sluice_codec::h2::hpack::{self, Decoder, encode};
use sluice_codec::h2::server::{Config, Event, ServerConn};
use std::hint::black_box;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An nginx instance's answer head, as an HTTP/1.1 head hands its fields over.
const ANSWER: [(&[u8], &[u8], bool); 8] = [
    (b"Server", b"nginx/1.22.1", false),
    (b"Date", b"Mon, 07 Dec 2026 16:00:00 GMT", false),
    (b"Content-Type", b"application/octet-stream", false),
    (b"Content-Length", b"64", false),
    (b"Last-Modified", b"Mon, 07 Dec 2026 15:00:00 GMT", false),
    (b"ETag", b"\"6756f1f0-40\"", false),
    (b"Accept-Ranges", b"bytes", false),
    (b"x-request-id", b"4bf92f3577b34da6a3ce929d0e0e4736", true),
];

/// RFC 7541 C.4: a connection's first three requests, Huffman-coded, filling the table.
const FIRST_REQUESTS: [&[u8]; 3] = [
    &[
        0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90,
        0xf4, 0xff,
    ],
    &[
        0x82, 0x86, 0x84, 0xbe, 0x58, 0x86, 0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf,
    ],
    &[
        0x82, 0x87, 0x85, 0xbf, 0x40, 0x88, 0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xa9, 0x7d, 0x7f, 0x89,
        0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xb8, 0xe8, 0xb4, 0xbf,
    ],
];
/// A later request on that connection: every field from a table.
const REPEAT_REQUEST: &[u8] = &[0x82, 0x87, 0x85, 0xbf, 0xbe, 0xc0];

fn bench_encode(c: &mut Criterion) {
    let mut out = Vec::with_capacity(1024);
    c.bench_function("h2/encode_answer_head_and_frame", |b| {
        b.iter(|| {
            out.clear();
            let mut block = Vec::with_capacity(256);
            encode::status(&mut block, 200);
            for (name, value, sensitive) in ANSWER {
                encode::field(&mut block, black_box(name), black_box(value), sensitive);
            }
            frame::write_headers(&mut out, 1, &block, false, frame::DEFAULT_MAX_FRAME_SIZE);
            black_box(&out);
        })
    });
}

fn bench_decode(c: &mut Criterion) {
    c.bench_function("h2/decode_first_three_requests", |b| {
        b.iter(|| {
            let mut decoder = Decoder::new(hpack::DEFAULT_TABLE_SIZE);
            let mut bytes = 0;
            for block in FIRST_REQUESTS {
                decoder
                    .decode(black_box(block), |f| bytes += f.name.len() + f.value.len())
                    .expect("valid block");
            }
            black_box(bytes)
        })
    });
    let mut decoder = Decoder::new(hpack::DEFAULT_TABLE_SIZE);
    for block in FIRST_REQUESTS {
        decoder.decode(block, |_| {}).expect("valid block");
    }
    c.bench_function("h2/decode_indexed_request", |b| {
        b.iter(|| {
            let mut bytes = 0;
            decoder
                .decode(black_box(REPEAT_REQUEST), |f| {
                    bytes += f.name.len() + f.value.len()
                })
                .expect("valid block");
            black_box(bytes)
        })
    });
}

const REQUESTS: usize = 100;
const BODY: &[u8] = &[b'x'; 64];

/// What the `h2` crate's client writes for `REQUESTS` GETs on one connection (preface,
/// SETTINGS, field blocks Huffman-coded and indexed as real clients do).
fn client_bytes(rt: &tokio::runtime::Runtime) -> Vec<u8> {
    rt.block_on(async {
        let (client_io, mut server_io) = tokio::io::duplex(1 << 20);
        let (mut client, conn) = h2::client::handshake(client_io).await.expect("handshake");
        tokio::spawn(conn);
        // Kept: a dropped answer would reset its stream.
        let mut answers = Vec::new();
        for i in 0..REQUESTS {
            let request = http::Request::get(format!("http://bench.test/item/{i}"))
                .header("user-agent", "bench/1.0")
                .header("accept", "*/*")
                .header("accept-encoding", "gzip, deflate, br")
                .body(())
                .expect("request");
            client = client.ready().await.expect("ready");
            let (answer, _) = client.send_request(request, true).expect("sent");
            answers.push(answer);
        }
        let mut captured = Vec::new();
        let mut chunk = vec![0u8; 1 << 16];
        while let Ok(Ok(n)) = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            server_io.read(&mut chunk),
        )
        .await
        {
            if n == 0 {
                break;
            }
            captured.extend_from_slice(&chunk[..n]);
        }
        drop(answers);
        captured
    })
}

fn own_config() -> Config {
    Config {
        max_concurrent_streams: 200,
        max_header_list_size: 64 * 1024,
        stream_window: 1 << 20,
        connection_window: 1 << 20,
        max_frame_size: 16_384,
        reset_budget: 100,
    }
}

/// Sluice's server connection: reads the requests, answers each with the nginx head and body.
fn serve_own(input: &[u8]) -> usize {
    let mut conn = ServerConn::new(own_config());
    let mut streams = Vec::with_capacity(REQUESTS);
    conn.receive(input, &mut |e| {
        if let Event::Request { stream, .. } = e {
            streams.push(stream);
        }
    })
    .expect("valid client bytes");
    for stream in &streams {
        let fields = ANSWER.iter().map(|&(n, v, s)| (n, v, s));
        conn.send_head(*stream, 200, fields, false)
            .expect("open stream");
        conn.send_data(*stream, BODY, true).expect("open stream");
    }
    assert_eq!(streams.len(), REQUESTS);
    conn.output().len()
}

/// The `h2` crate's server on the same bytes, answering the same way (a `HeaderMap` of the
/// same fields, as Sluice builds it from the instance's head).
async fn serve_h2(input: &[u8]) -> usize {
    let (mut client_io, server_io) = tokio::io::duplex(1 << 20);
    client_io.write_all(input).await.expect("written");
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(1 << 20)
        .initial_connection_window_size(1 << 20)
        .max_concurrent_streams(200);
    let mut conn = builder
        .handshake::<_, Bytes>(server_io)
        .await
        .expect("handshake");
    for _ in 0..REQUESTS {
        let (_request, mut respond) = conn.accept().await.expect("a request").expect("valid");
        let mut answer = http::Response::new(());
        for &(name, value, sensitive) in &ANSWER {
            let mut value = http::HeaderValue::from_bytes(value).expect("value");
            value.set_sensitive(sensitive);
            let name = http::HeaderName::from_bytes(name).expect("name");
            answer.headers_mut().append(name, value);
        }
        let mut body = respond.send_response(answer, false).expect("open stream");
        body.send_data(Bytes::from_static(BODY), true)
            .expect("open stream");
    }
    // Let the connection write out what the streams queued.
    let _ = tokio::time::timeout(std::time::Duration::ZERO, conn.accept()).await;
    let mut out = vec![0u8; 1 << 20];
    client_io.read(&mut out).await.expect("read")
}

fn bench_serve(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let input = client_bytes(&rt);
    c.bench_function("h2/serve_100_requests_sluice", |b| {
        b.iter(|| black_box(serve_own(black_box(&input))))
    });
    c.bench_function("h2/serve_100_requests_h2_crate", |b| {
        b.iter(|| black_box(rt.block_on(serve_h2(black_box(&input)))))
    });
}

criterion_group!(benches, bench_encode, bench_decode, bench_serve);
criterion_main!(benches);
