//! Balancers: pick an instance index for a request, skipping instances the caller rules out.
//!
//! All balancers are built once per configuration (off the data path) and picked from without
//! locks: round-robin walks a precomputed schedule with one shared atomic cursor; the others
//! read the instances' atomic counters.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use sluice_config::HashKey;
use xxhash_rust::xxh3::xxh3_64;

/// Longest round-robin schedule; larger weight sums are scaled down to fit.
const MAX_SCHEDULE: u64 = 1 << 16;
/// Ring points per unit of weight in the consistent-hash ring.
const POINTS_PER_WEIGHT: u64 = 160;
/// Largest ring; more points are scaled down to fit.
const MAX_RING_POINTS: u64 = 1 << 18;

/// The load figures a balancer may read from an instance.
pub(crate) trait Load {
    /// Requests in flight.
    fn outstanding(&self) -> u32;
    /// Peak-EWMA response latency in nanoseconds (0 when unknown).
    fn ewma_ns(&self) -> f64;
}

#[derive(Debug)]
pub(crate) enum Balancer {
    RoundRobin {
        schedule: Box<[u32]>,
        cursor: AtomicUsize,
    },
    LeastRequest,
    P2cEwma,
    Hash {
        key: HashKey,
        ring: Box<[(u64, u32)]>,
    },
}

impl Balancer {
    /// Builds a balancer for instances with these weights and identities (the identity, e.g.
    /// `ip:port`, places instances on the hash ring so placement survives reloads and restarts).
    pub(crate) fn new(
        kind: &sluice_config::Balancer,
        weights: &[u32],
        identities: &[String],
    ) -> Self {
        match kind {
            sluice_config::Balancer::RoundRobin => Balancer::RoundRobin {
                schedule: smooth_schedule(weights),
                // Start at a random place so several proxies do not all hit instance 0 first.
                cursor: AtomicUsize::new(fastrand::usize(..)),
            },
            sluice_config::Balancer::LeastRequest => Balancer::LeastRequest,
            sluice_config::Balancer::P2cEwma => Balancer::P2cEwma,
            sluice_config::Balancer::Hash(key) => Balancer::Hash {
                key: key.clone(),
                ring: build_ring(weights, identities),
            },
        }
    }

    /// The hash key this balancer needs from the request, if any.
    pub(crate) fn hash_key(&self) -> Option<&HashKey> {
        match self {
            Balancer::Hash { key, .. } => Some(key),
            _ => None,
        }
    }

    /// Picks an instance among those `usable` accepts; `None` if it accepts none.
    pub(crate) fn pick<L: Load>(
        &self,
        instances: &[L],
        weights: &[u32],
        hash: Option<u64>,
        usable: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = instances.len();
        if n == 0 {
            return None;
        }
        match self {
            Balancer::RoundRobin { schedule, cursor } => {
                let len = schedule.len();
                let start = cursor.fetch_add(1, Relaxed);
                (0..len)
                    .map(|i| schedule[(start.wrapping_add(i)) % len] as usize)
                    .find(|&idx| usable(idx))
            }
            Balancer::LeastRequest => {
                // Exact minimum of outstanding/weight, scanning from a random start so ties
                // spread: an idle instance always wins while any request waits (seed 002).
                let start = fastrand::usize(..n);
                (0..n)
                    .map(|i| (start + i) % n)
                    .filter(|&idx| usable(idx))
                    .min_by_key(|&idx| {
                        u64::from(instances[idx].outstanding()) * 1_000_000
                            / u64::from(weights[idx].max(1))
                    })
            }
            Balancer::P2cEwma => {
                let a = probe_from(fastrand::usize(..n), n, &usable, None)?;
                let Some(b) = probe_from(fastrand::usize(..n), n, &usable, Some(a)) else {
                    return Some(a);
                };
                let cost = |i: usize| {
                    // An instance without a latency sample yet is tried: cost 0.
                    instances[i].ewma_ns() * f64::from(instances[i].outstanding() + 1)
                        / f64::from(weights[i].max(1))
                };
                Some(if cost(b) < cost(a) { b } else { a })
            }
            Balancer::Hash { ring, .. } => {
                if ring.is_empty() {
                    return None;
                }
                let h = hash.unwrap_or(0);
                let start = ring.partition_point(|&(point, _)| point < h);
                (0..ring.len())
                    .map(|i| ring[(start + i) % ring.len()].1 as usize)
                    .find(|&idx| usable(idx))
            }
        }
    }
}

/// The first index from `start` (wrapping) that is usable and not `except`.
fn probe_from(
    start: usize,
    n: usize,
    usable: &impl Fn(usize) -> bool,
    except: Option<usize>,
) -> Option<usize> {
    (0..n)
        .map(|i| (start + i) % n)
        .find(|&idx| Some(idx) != except && usable(idx))
}

/// Hashes a request key for the ring.
pub(crate) fn hash_bytes(bytes: &[u8]) -> u64 {
    xxh3_64(bytes)
}

/// A smooth weighted round-robin schedule: each instance appears `weight` times (after scaling
/// to at most [`MAX_SCHEDULE`] slots) and its slots are spread evenly, earliest-deadline-first
/// with deadlines at the middle of each share — weights 5,1,1 give `a a a b c a a`, never
/// five `a` in a row as naive weighted round-robin does.
fn smooth_schedule(weights: &[u32]) -> Box<[u32]> {
    if weights.is_empty() {
        return Box::new([]);
    }
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let mut w: Vec<u64> = weights.iter().map(|&x| u64::from(x / g).max(1)).collect();
    let total: u64 = w.iter().sum();
    if total > MAX_SCHEDULE {
        for x in &mut w {
            *x = (*x * MAX_SCHEDULE / total).max(1);
        }
    }
    if w.iter().all(|&x| x == 1) {
        return (0..weights.len() as u32).collect();
    }
    // Min-heap of (deadline, index); the deadline of instance i's k-th slot is (2k + 1) / 2w_i,
    // kept as an exact fraction and compared by cross-multiplication.
    #[derive(PartialEq, Eq)]
    struct Slot {
        num: u64, // (2k + 1)
        den: u64, // 2·w
        idx: u32,
    }
    impl Ord for Slot {
        fn cmp(&self, o: &Self) -> std::cmp::Ordering {
            // Reversed for a min-heap; ties by index.
            (u128::from(o.num) * u128::from(self.den))
                .cmp(&(u128::from(self.num) * u128::from(o.den)))
                .then(o.idx.cmp(&self.idx))
        }
    }
    impl PartialOrd for Slot {
        fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(o))
        }
    }
    let mut heap: std::collections::BinaryHeap<Slot> = w
        .iter()
        .enumerate()
        .map(|(i, &wi)| Slot {
            num: 1,
            den: 2 * wi,
            idx: i as u32,
        })
        .collect();
    let slots: u64 = w.iter().sum();
    let mut out = Vec::with_capacity(slots as usize);
    while (out.len() as u64) < slots {
        let Some(mut s) = heap.pop() else { break };
        out.push(s.idx);
        s.num += 2;
        heap.push(s);
    }
    out.into_boxed_slice()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// A consistent-hash ring: `POINTS_PER_WEIGHT × weight` points per instance, placed by hashing
/// the instance's identity, so adding or removing one instance moves only its share of keys.
fn build_ring(weights: &[u32], identities: &[String]) -> Box<[(u64, u32)]> {
    let total: u64 = weights
        .iter()
        .map(|&w| u64::from(w) * POINTS_PER_WEIGHT)
        .sum();
    let scale = |w: u32| {
        let pts = u64::from(w) * POINTS_PER_WEIGHT;
        if total > MAX_RING_POINTS {
            (pts * MAX_RING_POINTS / total).max(1)
        } else {
            pts
        }
    };
    let mut ring = Vec::new();
    let mut key = String::new();
    for (idx, (&w, id)) in weights.iter().zip(identities).enumerate() {
        for point in 0..scale(w) {
            key.clear();
            key.push_str(id);
            key.push('#');
            key.push_str(&point.to_string());
            ring.push((xxh3_64(key.as_bytes()), idx as u32));
        }
    }
    ring.sort_unstable();
    ring.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    struct Fake {
        outstanding: Cell<u32>,
        ewma: f64,
    }
    impl Load for Fake {
        fn outstanding(&self) -> u32 {
            self.outstanding.get()
        }
        fn ewma_ns(&self) -> f64 {
            self.ewma
        }
    }
    fn fakes(n: usize) -> Vec<Fake> {
        (0..n)
            .map(|_| Fake {
                outstanding: Cell::new(0),
                ewma: 0.0,
            })
            .collect()
    }

    #[test]
    fn smooth_schedule_interleaves() {
        let s = smooth_schedule(&[5, 1, 1]);
        assert_eq!(&*s, &[0, 0, 0, 1, 2, 0, 0]);
        let s = smooth_schedule(&[2, 4]);
        assert_eq!(&*s, &[1, 0, 1]);
        assert_eq!(&*smooth_schedule(&[3, 3, 3]), &[0, 1, 2]);
    }

    #[test]
    fn huge_weights_are_scaled() {
        let s = smooth_schedule(&[60_000, 60_000, 1]);
        assert!(s.len() as u64 <= MAX_SCHEDULE, "{}", s.len());
        assert_eq!(
            s.iter().filter(|&&i| i == 2).count(),
            1,
            "a small weight keeps one slot"
        );
        let zeros = s.iter().filter(|&&i| i == 0).count();
        assert_eq!(zeros, s.iter().filter(|&&i| i == 1).count());
    }

    #[test]
    fn round_robin_skips_unusable() {
        let b = Balancer::new(&sluice_config::Balancer::RoundRobin, &[1, 1, 1], &[]);
        let inst = fakes(3);
        let picks: Vec<_> = (0..6)
            .map(|_| b.pick(&inst, &[1, 1, 1], None, |i| i != 1).unwrap())
            .collect();
        assert!(!picks.contains(&1));
        assert!(picks.contains(&0) && picks.contains(&2));
        assert_eq!(b.pick(&inst, &[1, 1, 1], None, |_| false), None);
    }

    #[test]
    fn least_request_prefers_the_idle() {
        let b = Balancer::new(&sluice_config::Balancer::LeastRequest, &[1, 1, 1], &[]);
        let inst = fakes(3);
        inst[0].outstanding.set(3);
        inst[1].outstanding.set(1);
        inst[2].outstanding.set(2);
        for _ in 0..20 {
            assert_eq!(b.pick(&inst, &[1, 1, 1], None, |_| true), Some(1));
        }
    }

    #[test]
    fn ring_moves_few_keys_when_an_instance_goes() {
        let ids: Vec<String> = (0..4).map(|i| format!("10.0.0.{i}:80")).collect();
        let key = sluice_config::Balancer::Hash(HashKey::ClientIp);
        let b = Balancer::new(&key, &[1; 4], &ids);
        let inst = fakes(4);
        let mut moved = 0;
        for k in 0..1000u32 {
            let h = hash_bytes(&k.to_le_bytes());
            let before = b.pick(&inst, &[1; 4], Some(h), |_| true).unwrap();
            let after = b.pick(&inst, &[1; 4], Some(h), |i| i != 3).unwrap();
            if before != 3 {
                assert_eq!(before, after, "keys of surviving instances stay put");
            } else {
                moved += 1;
            }
        }
        assert!(
            (150..350).contains(&moved),
            "about a quarter of keys lived on instance 3: {moved}"
        );
    }
}
