//! The PROXY protocol header (haproxy's specification, versions 1 and 2), read from a client
//! connection: a load balancer in front of Sluice sends it first to say who the client really
//! is. Writing the header to instances is the proxy's business; reading it is here.
//!
//! The reader takes whatever bytes have arrived and answers "complete" (with the header's
//! length, so exactly those bytes are consumed), "need more", or an error. It accepts only
//! what the specification allows: v1 is one line of at most 107 bytes ending in CRLF with
//! `TCP4`, `TCP6` or `UNKNOWN`, addresses in canonical form and ports of at most five digits;
//! v2 is the 12-byte signature, version 2, command `LOCAL` or `PROXY`, and a length that
//! holds the addresses of the family it names (TLVs after them are skipped, bounded by
//! [`MAX_V2_LENGTH`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The version 2 signature.
pub const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
/// Longest version 1 line, CRLF included (the specification's bound).
pub const MAX_V1_LENGTH: usize = 107;
/// Largest version 2 address-and-TLV block accepted (the specification allows 64 KiB; senders
/// use a few hundred bytes).
pub const MAX_V2_LENGTH: usize = 2048;

/// What the header says of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The client's address and the address it connected to, when the header gives them:
    /// `None` for v1 `UNKNOWN`, v2 `LOCAL` (health checks of the balancer itself), and address
    /// families other than TCP/UDP over IPv4/IPv6 (the connection's own addresses then stand).
    pub addresses: Option<(SocketAddr, SocketAddr)>,
}

/// Why a header is refused (the connection is closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("the connection does not start with a PROXY protocol header")]
    Missing,
    #[error("malformed PROXY protocol v1 line: {0}")]
    V1(&'static str),
    #[error("malformed PROXY protocol v2 header: {0}")]
    V2(&'static str),
}

/// Parses a header at the start of `buf`: `Ok(Some((header, length)))` when complete,
/// `Ok(None)` when more bytes are needed.
pub fn parse(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyHeaderError> {
    let v1 = b"PROXY ";
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return if n < V2_SIGNATURE.len() {
            Ok(None)
        } else {
            parse_v2(buf)
        };
    }
    let n = buf.len().min(v1.len());
    if buf[..n] == v1[..n] {
        return if n < v1.len() {
            Ok(None)
        } else {
            parse_v1(buf)
        };
    }
    Err(ProxyHeaderError::Missing)
}

fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyHeaderError> {
    let window = &buf[..buf.len().min(MAX_V1_LENGTH)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_V1_LENGTH {
            Err(ProxyHeaderError::V1("longer than 107 bytes"))
        } else {
            Ok(None)
        };
    };
    let line = window[..lf]
        .strip_suffix(b"\r")
        .ok_or(ProxyHeaderError::V1("not ended by CRLF"))?;
    let line = std::str::from_utf8(line).map_err(|_| ProxyHeaderError::V1("not ASCII"))?;
    let mut parts = line.split(' ').skip(1);
    let addresses = match parts.next() {
        // UNKNOWN may be followed by anything; the receiver ignores it.
        Some("UNKNOWN") => None,
        Some(family @ ("TCP4" | "TCP6")) => {
            let fields: Vec<&str> = parts.collect();
            let [src, dst, sport, dport] = fields[..] else {
                return Err(ProxyHeaderError::V1("expected four address fields"));
            };
            let ip = |s: &str| -> Result<IpAddr, ProxyHeaderError> {
                let ip = match family {
                    "TCP4" => s.parse::<Ipv4Addr>().map(IpAddr::V4),
                    _ => s.parse::<Ipv6Addr>().map(IpAddr::V6),
                };
                ip.map_err(|_| ProxyHeaderError::V1("address not of the named family"))
            };
            Some((
                SocketAddr::new(ip(src)?, v1_port(sport)?),
                SocketAddr::new(ip(dst)?, v1_port(dport)?),
            ))
        }
        _ => return Err(ProxyHeaderError::V1("unknown protocol family")),
    };
    Ok(Some((ProxyHeader { addresses }, lf + 1)))
}

/// A v1 port: 1–5 digits, no sign or leading zero, at most 65535.
fn v1_port(s: &str) -> Result<u16, ProxyHeaderError> {
    let digits = !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits || (s.len() > 1 && s.starts_with('0')) {
        return Err(ProxyHeaderError::V1("invalid port"));
    }
    s.parse().map_err(|_| ProxyHeaderError::V1("invalid port"))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyHeaderError> {
    let Some(fixed) = buf.get(..16) else {
        return Ok(None);
    };
    let (version_command, family) = (fixed[12], fixed[13]);
    let length = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if version_command >> 4 != 2 {
        return Err(ProxyHeaderError::V2("version is not 2"));
    }
    let local = match version_command & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(ProxyHeaderError::V2("unknown command")),
    };
    if length > MAX_V2_LENGTH {
        return Err(ProxyHeaderError::V2("longer than 2048 bytes"));
    }
    let Some(block) = buf.get(16..16 + length) else {
        return Ok(None);
    };
    let addresses = match family {
        // TCP or UDP over IPv4.
        0x11 | 0x12 => {
            let b = block
                .get(..12)
                .ok_or(ProxyHeaderError::V2("too short for IPv4 addresses"))?;
            let ip = |at: usize| IpAddr::V4(Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]));
            Some(pair(ip(0), ip(4), &b[8..12]))
        }
        // TCP or UDP over IPv6.
        0x21 | 0x22 => {
            let b = block
                .get(..36)
                .ok_or(ProxyHeaderError::V2("too short for IPv6 addresses"))?;
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&b[at..at + 16]);
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            Some(pair(ip(0), ip(16), &b[32..36]))
        }
        // Unspecified, or UNIX sockets: no address Sluice can use.
        0x00 | 0x31 | 0x32 => None,
        _ => return Err(ProxyHeaderError::V2("unknown address family")),
    };
    let addresses = if local { None } else { addresses };
    Ok(Some((ProxyHeader { addresses }, 16 + length)))
}

fn pair(src: IpAddr, dst: IpAddr, ports: &[u8]) -> (SocketAddr, SocketAddr) {
    (
        SocketAddr::new(src, u16::from_be_bytes([ports[0], ports[1]])),
        SocketAddr::new(dst, u16::from_be_bytes([ports[2], ports[3]])),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn addrs(src: &str, dst: &str) -> Option<(SocketAddr, SocketAddr)> {
        Some((src.parse().unwrap(), dst.parse().unwrap()))
    }

    #[test]
    fn v1_lines() {
        let line = b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\r\nGET / HTTP/1.1\r\n";
        let (h, len) = parse(line).unwrap().unwrap();
        assert_eq!(h.addresses, addrs("192.0.2.7:56324", "10.0.0.1:443"));
        assert_eq!(&line[len..], b"GET / HTTP/1.1\r\n");
        let (h, _) = parse(b"PROXY TCP6 2001:db8::1 ::1 1 65535\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.addresses, addrs("[2001:db8::1]:1", "[::1]:65535"));
        let (h, len) = parse(b"PROXY UNKNOWN ignored stuff\r\n").unwrap().unwrap();
        assert_eq!((h.addresses, len), (None, 29));
        for prefix in [&b""[..], b"PRO", b"PROXY TCP4 1.2.3.4"] {
            assert_eq!(parse(prefix).unwrap(), None, "{prefix:?}");
        }
    }

    #[test]
    fn v1_lines_outside_the_grammar_are_refused() {
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(ProxyHeaderError::V1(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [&b"PROXY UNKNOWN "[..], &[b'x'; 120]].concat();
        assert_eq!(
            parse(&long),
            Err(ProxyHeaderError::V1("longer than 107 bytes"))
        );
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ProxyHeaderError::Missing));
    }

    fn v2(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend([0x20 | command, family]);
        h.extend((block.len() as u16).to_be_bytes());
        h.extend(block);
        h
    }

    #[test]
    fn v2_headers() {
        let mut block = vec![192, 0, 2, 7, 10, 0, 0, 1];
        block.extend(56324u16.to_be_bytes());
        block.extend(443u16.to_be_bytes());
        block.extend([0x04, 0, 1, b'x']); // a TLV, skipped
        let mut bytes = v2(1, 0x11, &block);
        bytes.extend(b"rest");
        let (h, len) = parse(&bytes).unwrap().unwrap();
        assert_eq!(h.addresses, addrs("192.0.2.7:56324", "10.0.0.1:443"));
        assert_eq!(&bytes[len..], b"rest");
        for cut in 0..bytes.len() - 4 {
            assert_eq!(parse(&bytes[..cut]).unwrap(), None, "cut {cut}");
        }
        let mut block6 = [0u8; 36];
        block6[15] = 1;
        block6[31] = 2;
        block6[33] = 80;
        let (h, _) = parse(&v2(1, 0x21, &block6)).unwrap().unwrap();
        assert_eq!(h.addresses, addrs("[::1]:80", "[::2]:0"));
        let (h, len) = parse(&v2(0, 0x11, &block)).unwrap().unwrap();
        assert_eq!((h.addresses, len), (None, 16 + block.len()));
        let (h, _) = parse(&v2(1, 0x00, &[])).unwrap().unwrap();
        assert_eq!(h.addresses, None);
    }

    #[test]
    fn v2_headers_outside_the_specification_are_refused() {
        let mut wrong_version = v2(1, 0x11, &[0; 12]);
        wrong_version[12] = 0x11;
        let mut huge = v2(1, 0x11, &[]);
        huge[14..16].copy_from_slice(&4000u16.to_be_bytes());
        for bad in [
            v2(2, 0x11, &[0; 12]),
            v2(1, 0x11, &[0; 11]),
            v2(1, 0x21, &[0; 35]),
            v2(1, 0x41, &[0; 12]),
            wrong_version,
            huge,
        ] {
            assert!(
                matches!(parse(&bad), Err(ProxyHeaderError::V2(_))),
                "{bad:?}"
            );
        }
    }
}
