//! The PROXY protocol header (versions 1 and 2) that tells an instance who the client really
//! was, sent before any byte of the client's connection.

use std::net::{IpAddr, SocketAddr};

use sluice_config::ProxyProtocol;

use sluice_codec::proxy_protocol::V2_SIGNATURE;

/// The header for a connection from `client` to `local` (the address the client connected to),
/// or `None` when the protocol is off.
pub(crate) fn header(
    version: ProxyProtocol,
    client: SocketAddr,
    local: SocketAddr,
) -> Option<Vec<u8>> {
    // Mixed families (a v4 client on a v6 listener) are sent as v6, v4 addresses mapped.
    let (client_ip, local_ip) = match (client.ip(), local.ip()) {
        (IpAddr::V4(c), IpAddr::V4(l)) => (IpAddr::V4(c), IpAddr::V4(l)),
        (c, l) => (IpAddr::V6(to_v6(c)), IpAddr::V6(to_v6(l))),
    };
    match version {
        ProxyProtocol::Off => None,
        ProxyProtocol::V1 => {
            let family = if client_ip.is_ipv4() { "TCP4" } else { "TCP6" };
            Some(
                format!(
                    "PROXY {family} {client_ip} {local_ip} {} {}\r\n",
                    client.port(),
                    local.port()
                )
                .into_bytes(),
            )
        }
        ProxyProtocol::V2 => {
            let mut h = Vec::with_capacity(16 + 36);
            h.extend_from_slice(&V2_SIGNATURE);
            h.push(0x21); // version 2, command PROXY
            match (client_ip, local_ip) {
                (IpAddr::V4(c), IpAddr::V4(l)) => {
                    h.push(0x11); // AF_INET, STREAM
                    h.extend_from_slice(&12u16.to_be_bytes());
                    h.extend_from_slice(&c.octets());
                    h.extend_from_slice(&l.octets());
                }
                (c, l) => {
                    h.push(0x21); // AF_INET6, STREAM
                    h.extend_from_slice(&36u16.to_be_bytes());
                    h.extend_from_slice(&to_v6(c).octets());
                    h.extend_from_slice(&to_v6(l).octets());
                }
            }
            h.extend_from_slice(&client.port().to_be_bytes());
            h.extend_from_slice(&local.port().to_be_bytes());
            Some(h)
        }
    }
}

fn to_v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_is_a_text_line() {
        let h = header(
            ProxyProtocol::V1,
            "10.0.0.7:51000".parse().unwrap(),
            "10.0.0.1:1972".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(h, b"PROXY TCP4 10.0.0.7 10.0.0.1 51000 1972\r\n");
        let h = header(
            ProxyProtocol::V1,
            "[::1]:5".parse().unwrap(),
            "[::2]:6".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(h, b"PROXY TCP6 ::1 ::2 5 6\r\n");
        assert_eq!(
            header(
                ProxyProtocol::Off,
                "[::1]:5".parse().unwrap(),
                "[::2]:6".parse().unwrap()
            ),
            None
        );
    }

    #[test]
    fn v2_is_binary_with_addresses_and_ports() {
        let h = header(
            ProxyProtocol::V2,
            "10.0.0.7:51000".parse().unwrap(),
            "10.0.0.1:1972".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(&h[..12], &V2_SIGNATURE);
        assert_eq!(&h[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(&h[16..20], &[10, 0, 0, 7]);
        assert_eq!(&h[20..24], &[10, 0, 0, 1]);
        assert_eq!(&h[24..28], &[0xC7, 0x38, 0x07, 0xB4]);
        assert_eq!(h.len(), 28);
        let h = header(
            ProxyProtocol::V2,
            "10.0.0.7:1".parse().unwrap(),
            "[::1]:2".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(&h[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(h.len(), 16 + 36);
    }
}
