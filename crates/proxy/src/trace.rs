//! W3C Trace Context (`traceparent`, <https://www.w3.org/TR/trace-context/>): a request that
//! carries a valid one keeps it, unchanged, with its `tracestate`; any other request starts a
//! trace here, so that every instance and every access-log line can be joined on one trace id.
//!
//! Sluice records no spans of its own, so it passes a client's `traceparent` on as it came
//! (as a proxy without a tracer does) rather than inventing a parent. A trace it starts is
//! flagged sampled, so that services behind it that sample by their parent record it. An
//! invalid `traceparent` (or more than one) is replaced, and its `tracestate` dropped, as the
//! specification asks.

use sluice_codec::request::RequestHead;

/// Length of a version-00 `traceparent`: `00-` + 32 hex + `-` + 16 hex + `-` + 2 hex.
const LEN: usize = 55;

/// The trace a request belongs to.
#[derive(Debug, Clone)]
pub(crate) enum TraceContext {
    /// The client's `traceparent` is valid and goes on unchanged.
    Client { trace_id: [u8; 32] },
    /// Started here: the `traceparent` sent to the instance.
    Started { traceparent: [u8; LEN] },
}

impl TraceContext {
    /// The client's trace, or a new one.
    pub(crate) fn of(head: &RequestHead) -> Self {
        match head.traceparent().and_then(trace_id) {
            Some(trace_id) => TraceContext::Client { trace_id },
            None => Self::start(),
        }
    }

    fn start() -> Self {
        let mut traceparent = *b"00-00000000000000000000000000000000-0000000000000000-01";
        // All-zero ids are invalid: one draw in 2^64 (2^128 for the trace id) is drawn again.
        let (high, low) = loop {
            let id = (fastrand::u64(..), fastrand::u64(..));
            if id != (0, 0) {
                break id;
            }
        };
        let parent = loop {
            let id = fastrand::u64(..);
            if id != 0 {
                break id;
            }
        };
        put_hex(&mut traceparent[3..19], high);
        put_hex(&mut traceparent[19..35], low);
        put_hex(&mut traceparent[36..52], parent);
        TraceContext::Started { traceparent }
    }

    /// Whether the trace was started here (the client's trace fields then stay behind).
    pub(crate) fn started(&self) -> bool {
        matches!(self, TraceContext::Started { .. })
    }

    /// The `traceparent` to send, when Sluice started the trace.
    pub(crate) fn new_traceparent(&self) -> Option<&[u8]> {
        match self {
            TraceContext::Started { traceparent } => Some(traceparent),
            TraceContext::Client { .. } => None,
        }
    }

    /// The trace id, 32 lowercase hex digits (for the access log).
    pub(crate) fn trace_id(&self) -> &str {
        let bytes = match self {
            TraceContext::Client { trace_id } => &trace_id[..],
            TraceContext::Started { traceparent } => &traceparent[3..35],
        };
        std::str::from_utf8(bytes).unwrap_or_default()
    }
}

/// The trace id of a valid `traceparent`. Version `00` must be exactly 55 bytes; a later
/// version may carry more after its fourth field (read as version 00 says); `ff` is invalid.
fn trace_id(value: &[u8]) -> Option<[u8; 32]> {
    if value.len() < LEN || (value.len() > LEN && (value.starts_with(b"00") || value[LEN] != b'-'))
    {
        return None;
    }
    let (version, trace, parent, flags) =
        (&value[..2], &value[3..35], &value[36..52], &value[53..55]);
    let dashes = value[2] == b'-' && value[35] == b'-' && value[52] == b'-';
    let lower_hex = |s: &[u8]| s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let nonzero = |s: &[u8]| s.iter().any(|&b| b != b'0');
    let valid = dashes
        && version != b"ff"
        && [version, trace, parent, flags].into_iter().all(lower_hex)
        && nonzero(trace)
        && nonzero(parent);
    valid.then(|| trace.try_into().ok()).flatten()
}

/// `n` as 16 lowercase hex digits into `out`, most significant first.
fn put_hex(out: &mut [u8], n: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in out.iter_mut().enumerate().take(16) {
        *b = HEX[((n >> (60 - 4 * i)) & 0xf) as usize];
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const GOOD: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn valid_traceparents_are_kept_and_others_refused() {
        assert_eq!(
            &trace_id(GOOD).unwrap(),
            b"4bf92f3577b34da6a3ce929d0e0e4736"
        );
        // A later version may grow; version 00 may not.
        let mut v1 = b"01".to_vec();
        v1.extend_from_slice(&GOOD[2..]);
        v1.extend_from_slice(b"-what-comes-next");
        assert!(trace_id(&v1).is_some());
        let mut longer = GOOD.to_vec();
        longer.extend_from_slice(b"-x");
        for bad in [
            &longer[..],
            &GOOD[..54],
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert!(trace_id(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn started_traces_are_valid_sampled_and_new() {
        let a = TraceContext::start();
        let b = TraceContext::start();
        let value = a.new_traceparent().unwrap();
        assert!(trace_id(value).is_some());
        assert!(value.ends_with(b"-01"));
        assert_ne!(a.trace_id(), b.trace_id());
        assert_eq!(a.trace_id().len(), 32);
    }

    #[test]
    fn ids_are_written_as_hex_most_significant_digit_first() {
        let mut out = [b'.'; 17];
        put_hex(&mut out, 0x0123_4567_89ab_cdef);
        assert_eq!(&out, b"0123456789abcdef.");
        put_hex(&mut out, 0xf000_0000_0000_000a);
        assert_eq!(&out, b"f00000000000000a.");
    }
}
