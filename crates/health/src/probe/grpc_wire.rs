//! The bytes of a gRPC health check (`grpc.health.v1`), encoded and decoded by hand: the two
//! messages have one field each, so a protobuf library (and code generation) would be far more
//! than the ~100 lines they need. Pure functions, no I/O.
//!
//! - A gRPC message travels in a frame: 1 byte "compressed" flag, 4 bytes big-endian length,
//!   then the message.
//! - `HealthCheckRequest { string service = 1; }`: tag `0x0a` (field 1, length-delimited),
//!   varint length, UTF-8 bytes; nothing at all for `""` (proto3 leaves default values out).
//! - `HealthCheckResponse { ServingStatus status = 1; }`: tag `0x08` (field 1, varint), the
//!   value; absent means 0 (`UNKNOWN`).

use bytes::Bytes;

/// The method every gRPC health service serves.
pub(crate) const PATH: &str = "/grpc.health.v1.Health/Check";

/// `ServingStatus.SERVING`, the one status that means up.
pub(crate) const SERVING: u16 = 1;

/// Why a response is not one `HealthCheckResponse`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Malformed {
    #[error("no response message")]
    NoMessage,
    #[error("the message is compressed, though no compression was offered")]
    Compressed,
    #[error("the message frame says {said} bytes, {got} arrived")]
    Truncated { said: usize, got: usize },
    #[error("{0} bytes after the message (one was expected)")]
    Trailing(usize),
    #[error("the message is not protobuf: {0}")]
    Protobuf(&'static str),
    #[error("serving status {0} is out of range")]
    OutOfRange(u64),
}

/// The frame holding `HealthCheckRequest { service }`.
pub(crate) fn request(service: &str) -> Bytes {
    let mut message = Vec::with_capacity(service.len() + 6);
    if !service.is_empty() {
        message.push(0x0a);
        put_varint(&mut message, service.len() as u64);
        message.extend_from_slice(service.as_bytes());
    }
    let mut frame = Vec::with_capacity(5 + message.len());
    frame.push(0);
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    Bytes::from(frame)
}

/// The message of the one frame `data` holds (a unary call answers exactly one).
pub(crate) fn message(data: &[u8]) -> Result<&[u8], Malformed> {
    let Some((head, rest)) = data.split_first_chunk::<5>() else {
        return Err(Malformed::NoMessage);
    };
    if head[0] != 0 {
        return Err(Malformed::Compressed);
    }
    let said = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    match rest.len() {
        got if got < said => Err(Malformed::Truncated { said, got }),
        got if got > said => Err(Malformed::Trailing(got - said)),
        _ => Ok(rest),
    }
}

/// `HealthCheckResponse.status`. Fields this version does not know are skipped, as protobuf
/// readers must; a repeated field 1 keeps its last value, as protobuf says.
pub(crate) fn serving_status(mut message: &[u8]) -> Result<u16, Malformed> {
    let mut status = 0;
    while !message.is_empty() {
        let tag = varint(&mut message)?;
        match (tag >> 3, tag & 7) {
            (1, 0) => status = varint(&mut message)?,
            (_, 0) => {
                varint(&mut message)?;
            }
            (_, 1) => skip(&mut message, 8)?,
            (_, 2) => {
                let len = varint(&mut message)?;
                skip(&mut message, usize::try_from(len).unwrap_or(usize::MAX))?;
            }
            (_, 5) => skip(&mut message, 4)?,
            _ => return Err(Malformed::Protobuf("unsupported wire type")),
        }
    }
    u16::try_from(status).map_err(|_| Malformed::OutOfRange(status))
}

/// The name `ServingStatus` gives `status`.
pub(crate) fn serving_status_name(status: u16) -> String {
    match status {
        0 => "UNKNOWN".to_owned(),
        1 => "SERVING".to_owned(),
        2 => "NOT_SERVING".to_owned(),
        3 => "SERVICE_UNKNOWN".to_owned(),
        other => format!("{other} (not a ServingStatus)"),
    }
}

/// The name of a gRPC status code, as the gRPC documents spell it.
pub(crate) fn code_name(code: u32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|c| NAMES.get(c))
        .copied()
        .unwrap_or("not a gRPC code")
}

/// `grpc-message` as sent: UTF-8, percent-encoded. A `%` not followed by two hex digits is kept
/// as it is (the spec asks readers to be lenient here).
pub(crate) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let hex = |b: Option<&u8>| b.and_then(|b| char::from(*b).to_digit(16));
    while i < bytes.len() {
        match (bytes[i], hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads a varint off the front of `bytes` (at most 10 bytes, as a u64 needs).
fn varint(bytes: &mut &[u8]) -> Result<u64, Malformed> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *bytes = &bytes[i + 1..];
            return Ok(value);
        }
    }
    Err(Malformed::Protobuf("varint cut short or too long"))
}

fn skip(bytes: &mut &[u8], n: usize) -> Result<(), Malformed> {
    *bytes = bytes
        .get(n..)
        .ok_or(Malformed::Protobuf("field cut short"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_framed_and_leave_the_empty_service_out() {
        assert_eq!(&request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(
            &request("a.B")[..],
            &[0, 0, 0, 0, 5, 0x0a, 3, b'a', b'.', b'B']
        );
        let long = "s".repeat(200);
        let framed = request(&long);
        assert_eq!(&framed[..8], &[0, 0, 0, 0, 203, 0x0a, 0xc8, 0x01]);
    }

    #[test]
    fn responses_give_their_serving_status() {
        let status = |data: &[u8]| message(data).and_then(serving_status);
        assert_eq!(status(&[0, 0, 0, 0, 2, 0x08, 1]), Ok(1));
        assert_eq!(status(&[0, 0, 0, 0, 0]), Ok(0), "absent is UNKNOWN");
        // An unknown string field 2, then status 2.
        assert_eq!(
            status(&[0, 0, 0, 0, 6, 0x12, 2, b'h', b'i', 0x08, 2]),
            Ok(2)
        );
        assert_eq!(status(&[]), Err(Malformed::NoMessage));
        assert_eq!(
            status(&[1, 0, 0, 0, 2, 0x08, 1]),
            Err(Malformed::Compressed)
        );
        assert_eq!(
            status(&[0, 0, 0, 0, 3, 0x08, 1]),
            Err(Malformed::Truncated { said: 3, got: 2 })
        );
        assert_eq!(
            status(&[0, 0, 0, 0, 2, 0x08, 1, 0]),
            Err(Malformed::Trailing(1))
        );
        assert!(matches!(
            status(&[0, 0, 0, 0, 2, 0x08, 0x80]),
            Err(Malformed::Protobuf(_))
        ));
        assert!(matches!(
            status(&[0, 0, 0, 0, 2, 0x12, 5]),
            Err(Malformed::Protobuf(_))
        ));
        assert_eq!(
            status(&[0, 0, 0, 0, 4, 0x08, 0x80, 0x80, 0x04]),
            Err(Malformed::OutOfRange(65536))
        );
    }

    #[test]
    fn names_and_messages_read_as_sent() {
        assert_eq!(serving_status_name(2), "NOT_SERVING");
        assert_eq!(serving_status_name(9), "9 (not a ServingStatus)");
        assert_eq!(code_name(12), "UNIMPLEMENTED");
        assert_eq!(code_name(99), "not a gRPC code");
        assert_eq!(
            percent_decode("unknown%20service%3A x"),
            "unknown service: x"
        );
        assert_eq!(percent_decode("caf%C3%A9 100%"), "café 100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
