//! What Sluice's own HTTP/2 wire code costs per request: encoding an answer's head (the
//! fields an nginx instance sends, as Sluice passes them on) and decoding request field blocks
//! as a client's encoder writes them (Huffman-coded literals that fill the dynamic table, then
//! blocks that only refer to it).

use criterion::{Criterion, criterion_group, criterion_main};
use sluice_codec::h2::frame;
use sluice_codec::h2::hpack::{self, Decoder, encode};
use std::hint::black_box;

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

criterion_group!(benches, bench_encode, bench_decode);
criterion_main!(benches);
