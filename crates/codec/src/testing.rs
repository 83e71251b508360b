//! Helpers for the crate's unit tests.

/// Mutates `bytes` one to three times: a byte replaced by a random one, a byte dropped, one of
/// `specials` inserted, or a byte doubled (for robustness tests of the parsers).
pub(crate) fn mutate(rng: &mut fastrand::Rng, bytes: &mut Vec<u8>, specials: &[u8]) {
    for _ in 0..rng.usize(1..4) {
        if bytes.is_empty() {
            return;
        }
        let at = rng.usize(..bytes.len());
        match rng.u8(..4) {
            0 => bytes[at] = rng.u8(..),
            1 => {
                bytes.remove(at);
            }
            2 => bytes.insert(at, specials[rng.usize(..specials.len())]),
            _ => bytes.insert(at, bytes[at]),
        }
    }
}
