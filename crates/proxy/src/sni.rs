//! TLS passthrough (`[[listener.sni]]`): read a client's ClientHello without answering it, take
//! the server name out of it, and let the TCP listener pick the service from that name. The
//! bytes read are sent to the instance first and the rest of the connection is relayed
//! untouched, so the client completes its handshake with the backend (and sees the backend's
//! own certificate).
//!
//! The reader is defensive: it never reads more than `max_bytes`, gives up after `timeout`,
//! reassembles a ClientHello split over several TCP segments or several TLS records, and answers
//! every malformed input with a [`HelloError`] whose [`HelloError::reason`] labels the metric.

use std::time::Duration;

use sluice_codec::client_hello::{HelloError, parse};
use sluice_config::HostMatch;
use tokio::io::{AsyncRead, AsyncReadExt};
/// A complete ClientHello: every byte read so far, and its server name (lower-case, without a
/// trailing dot), if it sent one.
#[derive(Debug)]
pub(crate) struct Hello {
    pub(crate) bytes: Vec<u8>,
    pub(crate) sni: Option<String>,
}

/// Reads from `client` until `buf` holds a whole ClientHello, under `timeout`, never reading
/// more than `max_bytes`.
pub(crate) async fn read_hello<R: AsyncRead + Unpin>(
    client: &mut R,
    max_bytes: usize,
    timeout: Duration,
) -> Result<Hello, HelloError> {
    let mut buf = Vec::with_capacity(max_bytes.min(2048));
    let read = async {
        loop {
            if let Some(sni) = parse(&buf, max_bytes)? {
                return Ok(sni);
            }
            // `parse` asked for more, which it only does below `max_bytes`.
            let room = max_bytes.saturating_sub(buf.len());
            let mut limited = (&mut *client).take(room as u64);
            match limited.read_buf(&mut buf).await {
                Ok(0) => return Err(HelloError::Closed(buf.len())),
                Ok(_) => {}
                Err(e) => return Err(HelloError::Io(e.to_string())),
            }
        }
    };
    let sni = match tokio::time::timeout(timeout, read).await {
        Ok(r) => r?,
        Err(_) => return Err(HelloError::Timeout(timeout)),
    };
    Ok(Hello { bytes: buf, sni })
}

/// Picks the entry for `sni`: an exact name first, then the longest matching wildcard.
pub(crate) fn lookup<'a, T>(routes: &'a [(HostMatch, T)], sni: &str) -> Option<&'a T> {
    let sni = sni.to_ascii_lowercase();
    if let Some((_, t)) = routes
        .iter()
        .find(|(h, _)| matches!(h, HostMatch::Exact(name) if *name == sni))
    {
        return Some(t);
    }
    routes
        .iter()
        .filter_map(|(h, t)| match h {
            HostMatch::Wildcard(suffix)
                if sni.len() > suffix.len() + 1
                    && sni.ends_with(suffix.as_str())
                    && sni.as_bytes()[sni.len() - suffix.len() - 1] == b'.' =>
            {
                Some((suffix.len(), t))
            }
            _ => None,
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, t)| t)
}
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use sluice_codec::client_hello::example;

    use super::*;

    #[tokio::test]
    async fn reader_waits_for_segments_and_times_out_on_silence() {
        let bytes = example(b"seg.test");
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let sender = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for part in bytes.chunks(13) {
                client.write_all(part).await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            client
        });
        let hello = read_hello(&mut server, 16384, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(hello.sni.as_deref(), Some("seg.test"));
        assert_eq!(hello.bytes, example(b"seg.test"));
        let _client = sender.await.unwrap();
        let (_quiet, mut server) = tokio::io::duplex(1024);
        let e = read_hello(&mut server, 16384, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(e.reason(), "timeout");
    }

    #[test]
    fn exact_names_win_over_wildcards_and_the_longest_wildcard_wins() {
        let routes = vec![
            (HostMatch::Wildcard("example.com".into()), "wild"),
            (HostMatch::Wildcard("b.example.com".into()), "b-wild"),
            (HostMatch::Exact("a.example.com".into()), "a"),
        ];
        assert_eq!(lookup(&routes, "A.example.com"), Some(&"a"));
        assert_eq!(lookup(&routes, "x.example.com"), Some(&"wild"));
        assert_eq!(lookup(&routes, "x.b.example.com"), Some(&"b-wild"));
        assert_eq!(lookup(&routes, "example.com"), None);
        assert_eq!(lookup(&routes, "xexample.com"), None);
        assert_eq!(lookup(&routes, "other.test"), None);
    }
}
