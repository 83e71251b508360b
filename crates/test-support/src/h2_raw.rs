//! HTTP/2 bytes written by hand, for clients that misbehave on purpose (hyper's client always
//! reads and always manages its windows).

/// One HTTP/2 frame: the 9-byte header (length, type, flags, stream) and its payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("a frame payload fits in 24 bits");
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An h2c prior-knowledge connection's first bytes: the preface, stream and connection
/// windows opened as wide as HTTP/2 allows, and one `GET path` (authority `x`) on stream 1.
/// A client that sends this and reads nothing lets the server send until the socket's
/// buffers are full.
pub fn h2c_get_with_widest_windows(path: &str) -> Vec<u8> {
    const SETTINGS: u8 = 0x4;
    const WINDOW_UPDATE: u8 = 0x8;
    const HEADERS: u8 = 0x1;
    const END_STREAM: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;
    const INITIAL_WINDOW_SIZE: u16 = 0x4;
    let widest: u32 = 0x7fff_ffff;

    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    let mut settings = INITIAL_WINDOW_SIZE.to_be_bytes().to_vec();
    settings.extend_from_slice(&widest.to_be_bytes());
    out.extend(frame(SETTINGS, 0, 0, &settings));
    // The connection window starts at 65,535 whatever the settings say.
    out.extend(frame(WINDOW_UPDATE, 0, 0, &(widest - 65_535).to_be_bytes()));
    // HPACK: `:method GET` and `:scheme http` from the static table, `:path` and
    // `:authority` as literals with indexed names (no Huffman coding).
    // A string length under 127 fits the 7-bit prefix in one byte.
    let path_len = u8::try_from(path.len())
        .ok()
        .filter(|&n| n < 0x7f)
        .expect("a path under 127 bytes");
    let mut block = vec![0x82, 0x86, 0x44, path_len];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x41, 1, b'x']);
    out.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &block));
    out
}
