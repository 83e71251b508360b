//! `rate_limit` on a route: its rate, period, burst, key and key bound.

use std::time::Duration;

use toml::Spanned;

use super::{Cx, is_token};
use crate::defaults as d;
use crate::model::{RateLimitConfig, RateLimitKey};
use crate::raw::RawRateLimit;

/// The longest `per`: a day (a bucket's arithmetic stays far inside 64-bit nanoseconds).
const MAX_PER: Duration = Duration::from_secs(86_400);

impl Cx<'_> {
    /// A route's `rate_limit`, or `None` (after an error) when it cannot be one.
    pub(super) fn rate_limit(&mut self, v: &Spanned<RawRateLimit>) -> Option<RateLimitConfig> {
        let raw = v.get_ref();
        let Some(rate) = &raw.rate else {
            self.error_hint(
                Some(v.span()),
                "`rate_limit` needs `rate`",
                "e.g. rate_limit = { rate = 100, per = \"1s\" }: 100 requests a second per client",
            );
            return None;
        };
        let rate = self.int_in(Some(rate), 1, 1_000_000_000, 1) as u32;
        let per = self.rate_period(raw.per.as_ref(), rate)?;
        let burst = self.int_in(raw.burst.as_ref(), 1, 1_000_000_000, i64::from(rate)) as u32;
        let key = raw
            .key
            .as_ref()
            .map_or(Some(RateLimitKey::Client), |k| self.rate_key(k))?;
        let max_keys = self.int_in(
            raw.max_keys.as_ref(),
            1,
            100_000_000,
            d::RATE_LIMIT_MAX_KEYS as i64,
        ) as usize;
        Some(RateLimitConfig {
            rate,
            per,
            burst,
            key,
            max_keys,
        })
    }

    /// `per`: at most a day, and long enough that `rate` requests are at least 1 ns apart.
    fn rate_period(&mut self, per: Option<&Spanned<String>>, rate: u32) -> Option<Duration> {
        let period = self.duration(per, d::RATE_LIMIT_PER);
        let span = per.map(Spanned::span);
        if period > MAX_PER {
            self.error_hint(
                span,
                "`per` is longer than a day",
                "count over a shorter period: rate = 10, per = \"1h\" rather than rate = 240, per = \"1d\"",
            );
            return None;
        }
        if period.as_nanos() < u128::from(rate) {
            self.error_hint(
                span,
                format!("{rate} requests per {period:?} is faster than one a nanosecond"),
                "lower `rate` or lengthen `per`",
            );
            return None;
        }
        Some(period)
    }

    /// `key`: `client`, `tls_identity` or `header:NAME`.
    fn rate_key(&mut self, k: &Spanned<String>) -> Option<RateLimitKey> {
        match k.get_ref().split_once(':') {
            None if k.get_ref() == "client" => Some(RateLimitKey::Client),
            None if k.get_ref() == "tls_identity" => Some(RateLimitKey::TlsIdentity),
            Some(("header", name)) if is_token(name) => {
                Some(RateLimitKey::Header(name.to_ascii_lowercase()))
            }
            _ => {
                self.error_hint(
                    Some(k.span()),
                    format!("invalid rate limit key `{}`", k.get_ref()),
                    "use \"client\", \"tls_identity\" or \"header:NAME\" (e.g. \"header:x-api-key\")",
                );
                None
            }
        }
    }
}
