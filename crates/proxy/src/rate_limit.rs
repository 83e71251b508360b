//! A route's `rate_limit`: one bucket per client key, refusing with `429` and `Retry-After`
//! what goes past it.
//!
//! **Buckets.** Each bucket is one atomic word: the generic cell rate algorithm's theoretical
//! arrival time, in nanoseconds since the limiter started. A request is admitted when that time
//! is at most `tolerance` (= `interval` × (`burst` − 1)) ahead of now, and pushes it
//! `interval` (= `per` / `rate`) further; so a key idle long enough may send `burst` requests
//! at once and `rate` every `per` after that. A bucket whose time has passed holds the same
//! credit as a new one, so evicting it changes nothing a client can see.
//!
//! **Cost.** A request on a limited route hashes its key (SipHash with a per-limiter random
//! seed, so clients cannot aim collisions), reads one shard of a `DashMap` and updates the
//! bucket with a compare-and-swap: no allocation and no lock shared by all requests. A new key
//! takes a shard's write lock once. Routes without a limit pay nothing.
//!
//! **Memory** is bounded by `max_keys` buckets (a 16-byte entry each, 20–40 bytes with the
//! table's slack). Buckets that are full again are swept out every [`SWEEP_EVERY`], and as
//! soon as the table is full (at most once a second). When `max_keys` buckets are all busy, new keys share one overflow bucket of the
//! same rate: a flood of new addresses is limited as one client, and the clients already
//! held keep their own buckets.
//!
//! **Keys.** `client` counts an IPv4 client by its address and an IPv6 client by its /64 (a
//! single host commonly holds a whole /64). `header:NAME` counts by the header's value, and
//! `tls_identity` by the verified client certificate's fingerprint; a request without either
//! is counted by its client address, so leaving the header out escapes nothing.

use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use metrics::{Counter, Gauge, counter, gauge};
use rustc_hash::FxHasher;
use sluice_codec::request::RequestHead;
use sluice_config::{RateLimitConfig, RateLimitKey};

use crate::metrics::{
    ROUTE_RATE_LIMIT_KEYS, ROUTE_RATE_LIMIT_OVERFLOW_TOTAL, ROUTE_RATE_LIMITED_TOTAL,
};

/// How often buckets that are full again are swept out while the table has room.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// The least time between two sweeps forced by a full table.
const FULL_SWEEP_EVERY: Duration = Duration::from_secs(1);

/// One route's limiter; kept across reloads that leave its settings unchanged.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    config: RateLimitConfig,
    /// Nanoseconds between requests at the sustained rate.
    interval: u64,
    /// Nanoseconds of credit a full bucket holds beyond the next request.
    tolerance: u64,
    /// Buckets by keyed hash (already uniform: hashed again with Fx, the cheapest).
    buckets: DashMap<u64, Bucket, BuildHasherDefault<FxHasher>>,
    held: AtomicUsize,
    seed: RandomState,
    overflow: Bucket,
    epoch: Instant,
    last_sweep: AtomicU64,
    metrics: LimitMetrics,
}

#[derive(Debug)]
struct LimitMetrics {
    limited: Counter,
    overflowed: Counter,
    keys: Gauge,
}

/// The theoretical arrival time of a key's next request (ns since the limiter's epoch).
#[derive(Debug)]
struct Bucket(AtomicU64);

/// What a request is counted by; borrowed from the request and its connection.
pub(crate) struct KeySource<'a> {
    pub(crate) client: IpAddr,
    pub(crate) head: &'a RequestHead,
    /// The verified client certificate's fingerprint, on mutual-TLS connections.
    pub(crate) identity: Option<&'a str>,
}

/// A refused request: how long until the key may send again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limited {
    pub(crate) retry_after: Duration,
}

impl RateLimiter {
    /// A limiter for `config`, its metrics labelled with `listener` and `route`.
    pub(crate) fn new(config: RateLimitConfig, listener: &str, route: &str) -> Self {
        let interval = (config.per.as_nanos() / u128::from(config.rate)).max(1) as u64;
        let labels = [
            ("listener", listener.to_owned()),
            ("route", route.to_owned()),
        ];
        Self {
            tolerance: interval.saturating_mul(u64::from(config.burst) - 1),
            interval,
            config,
            buckets: DashMap::default(),
            held: AtomicUsize::new(0),
            seed: RandomState::new(),
            overflow: Bucket(AtomicU64::new(0)),
            epoch: Instant::now(),
            last_sweep: AtomicU64::new(0),
            metrics: LimitMetrics {
                limited: counter!(ROUTE_RATE_LIMITED_TOTAL, &labels),
                overflowed: counter!(ROUTE_RATE_LIMIT_OVERFLOW_TOTAL, &labels),
                keys: gauge!(ROUTE_RATE_LIMIT_KEYS, &labels),
            },
        }
    }

    /// The settings this limiter enforces.
    pub(crate) fn config(&self) -> &RateLimitConfig {
        &self.config
    }

    /// Counts one request of `source`'s key: `Err` when the key is over its limit.
    pub(crate) fn check(&self, source: &KeySource<'_>) -> Result<(), Limited> {
        self.check_key(self.key_of(source), self.now())
    }

    fn check_key(&self, key: u64, now: u64) -> Result<(), Limited> {
        let taken = match self.buckets.get(&key) {
            Some(bucket) => self.take(&bucket, now),
            None => self.take_new(key, now),
        };
        if taken.is_err() {
            self.metrics.limited.increment(1);
        }
        taken
    }

    /// A key without a bucket: a new one while there is room, the shared overflow otherwise.
    fn take_new(&self, key: u64, now: u64) -> Result<(), Limited> {
        let full = self.held.load(Relaxed) >= self.config.max_keys;
        if full
            || now.saturating_sub(self.last_sweep.load(Relaxed)) >= SWEEP_EVERY.as_nanos() as u64
        {
            self.sweep(now, full);
        }
        if self.held.load(Relaxed) >= self.config.max_keys {
            self.metrics.overflowed.increment(1);
            return self.take(&self.overflow, now);
        }
        let bucket = self.buckets.entry(key).or_insert_with(|| {
            self.held.fetch_add(1, Relaxed);
            self.metrics.keys.increment(1.0);
            Bucket(AtomicU64::new(now))
        });
        self.take(&bucket, now)
    }

    /// Admits a request against `bucket` at `now`, or says how long to wait.
    fn take(&self, bucket: &Bucket, now: u64) -> Result<(), Limited> {
        let mut arrival = bucket.0.load(Relaxed);
        loop {
            let start = arrival.max(now);
            let ahead = start - now;
            if ahead > self.tolerance {
                let wait = ahead - self.tolerance;
                return Err(Limited {
                    retry_after: Duration::from_nanos(wait),
                });
            }
            match bucket
                .0
                .compare_exchange_weak(arrival, start + self.interval, Relaxed, Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(current) => arrival = current,
            }
        }
    }

    /// Drops the buckets that are full again (their keys lose nothing). One caller sweeps at a
    /// time; a full table forces a sweep at most every [`FULL_SWEEP_EVERY`].
    fn sweep(&self, now: u64, full: bool) {
        let last = self.last_sweep.load(Relaxed);
        let gap = if full { FULL_SWEEP_EVERY } else { SWEEP_EVERY };
        if now.saturating_sub(last) < gap.as_nanos() as u64
            || self
                .last_sweep
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_err()
        {
            return;
        }
        self.buckets.retain(|_, bucket| {
            let busy = bucket.0.load(Relaxed) > now;
            if !busy {
                self.held.fetch_sub(1, Relaxed);
            }
            busy
        });
        self.metrics.keys.set(self.held.load(Relaxed) as f64);
    }

    /// Nanoseconds since the limiter started (never 0, so that a new limiter sweeps first
    /// after [`SWEEP_EVERY`]).
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64 + 1
    }

    /// The keyed hash of what `source` is counted by.
    fn key_of(&self, source: &KeySource<'_>) -> u64 {
        let mut h = self.seed.build_hasher();
        let counted = match &self.config.key {
            RateLimitKey::Header(name) => source.head.get(name),
            RateLimitKey::TlsIdentity => source.identity.map(str::as_bytes),
            RateLimitKey::Client => None,
        };
        match counted {
            Some(value) => {
                1u8.hash(&mut h);
                value.hash(&mut h);
            }
            None => hash_client(source.client, &mut h),
        }
        h.finish()
    }
}

/// An IPv4 client by address, an IPv6 client by its /64.
fn hash_client(client: IpAddr, h: &mut impl Hasher) {
    match client.to_canonical() {
        IpAddr::V4(v4) => {
            4u8.hash(h);
            v4.octets().hash(h);
        }
        IpAddr::V6(v6) => {
            6u8.hash(h);
            v6.octets()[..8].hash(h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn limiter(rate: u32, per: Duration, burst: u32, max_keys: usize) -> RateLimiter {
        let config = RateLimitConfig {
            rate,
            per,
            burst,
            key: RateLimitKey::Client,
            max_keys,
        };
        RateLimiter::new(config, "web", "r")
    }

    #[test]
    fn a_key_sends_its_burst_then_one_request_per_interval() {
        // 10 a second: one every 100 ms, 3 at once.
        let l = limiter(10, Duration::from_secs(1), 3, 10);
        let t0 = 5 * MS;
        for _ in 0..3 {
            assert_eq!(l.check_key(7, t0), Ok(()));
        }
        let refused = l.check_key(7, t0).expect_err("the burst is spent");
        assert_eq!(refused.retry_after, Duration::from_millis(100));
        assert!(l.check_key(7, t0 + 99 * MS).is_err(), "too early by 1 ms");
        assert_eq!(l.check_key(7, t0 + 100 * MS), Ok(()));
        assert!(l.check_key(7, t0 + 150 * MS).is_err());
        // After a full refill (3 intervals idle) the burst is back, and no more.
        let later = t0 + 1000 * MS;
        let admitted = (0..10).filter(|_| l.check_key(7, later).is_ok()).count();
        assert_eq!(admitted, 3);
    }

    #[test]
    fn a_sustained_stream_gets_the_rate_and_no_more() {
        // 100 a second, burst 1; a client trying every 1 ms for 2 s.
        let l = limiter(100, Duration::from_secs(1), 1, 10);
        let admitted = (0..2000)
            .filter(|i| l.check_key(1, MS + i * MS).is_ok())
            .count();
        assert_eq!(admitted, 200);
    }

    #[test]
    fn a_sweep_drops_refilled_buckets_and_keeps_busy_ones() {
        // One request per 8 s: key 1 (at 1 ms) is full again at 8 s, key 2 (at 5 s) at 13 s.
        let l = limiter(1, Duration::from_secs(8), 1, 10);
        l.check_key(1, MS).expect("first request of key 1");
        l.check_key(2, 5000 * MS).expect("first request of key 2");
        assert_eq!(l.held.load(Relaxed), 2);
        l.sweep(SWEEP_EVERY.as_nanos() as u64, false);
        assert_eq!(l.held.load(Relaxed), 1);
        assert!(l.buckets.get(&1).is_none(), "key 1 was full again");
        assert!(l.buckets.get(&2).is_some(), "key 2 still owes time");
        assert!(
            l.check_key(2, SWEEP_EVERY.as_nanos() as u64).is_err(),
            "and still owes it"
        );
    }

    #[test]
    fn a_full_table_is_swept_before_new_keys_go_to_the_overflow_bucket() {
        let l = limiter(1, Duration::from_secs(1), 1, 2);
        let t0 = MS;
        l.check_key(1, t0).expect("key 1");
        l.check_key(2, t0).expect("key 2");
        // Both busy: key 3 counts in the overflow bucket, and key 4 finds it spent.
        assert_eq!(l.check_key(3, t0 + MS), Ok(()));
        assert!(l.check_key(4, t0 + 2 * MS).is_err());
        assert!(l.buckets.get(&3).is_none());
        // Two seconds on, both buckets are full again: a sweep makes room for key 5's own.
        assert_eq!(l.check_key(5, t0 + 2000 * MS), Ok(()));
        assert!(l.buckets.get(&5).is_some());
        assert_eq!(l.held.load(Relaxed), 1);
    }
}
