//! Load-balancing pickers: one pure picker per file, plus the request-key hash.
//!
//! Pickers are built once per upstream-table change (off the request path) from an
//! immutable snapshot of the healthy instances, and then only read on the request
//! path: no locks, no allocation, and never a panic on an empty set (they return
//! `None`, which the proxy turns into a 503). Health filtering happens before a
//! picker is built, so a picker never has to skip an instance.
//!
//! Counters that must survive a table swap (round-robin cursors) live outside the
//! pickers and are passed in, so that a swap does not restart every service at its
//! first instance.

pub mod least_request;
pub mod maglev;
pub mod round_robin;
pub mod weighted;

use std::hash::Hasher;

pub use maglev::Maglev;
pub use weighted::Weighted;

/// FNV-1a's 64-bit offset basis.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a's 64-bit prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Hashes a request key (header value, cookie, client IP, ...) for hash balancing.
///
/// The value must be the same in every process and every run — otherwise two
/// gateway replicas, or one gateway before and after a restart, would send the same
/// user to different backends — so std's randomly keyed `RandomState` is out.
/// FNV-1a alone is fast and deterministic but mixes poorly: a change in the last
/// byte never reaches the lower bits, and Maglev uses the low bits via `% M`. The
/// murmur3 `fmix64` finalizer spreads every input bit over the whole word; being a
/// bijection it adds no collisions of its own.
pub fn hash_key(bytes: &[u8]) -> u64 {
    hash_seeded(bytes, 0)
}

/// `hash_key` with the FNV basis perturbed by `seed`, for callers that need several
/// independent hashes of one input (Maglev's offset and skip). `seed == 0` is
/// `hash_key`.
pub(crate) fn hash_seeded(bytes: &[u8], seed: u64) -> u64 {
    let mut h = Fnv1a(FNV_OFFSET ^ fmix64(seed));
    h.write(bytes);
    h.finish()
}

/// FNV-1a over everything written, `fmix64` at the end: [`hash_key`]'s hash as a
/// [`Hasher`], also for in-process maps whose keys come from configuration (the
/// per-service request counters), where SipHash's keying against flooding buys
/// nothing and costs ~400 instructions a lookup.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Fnv1a {
        Fnv1a(FNV_OFFSET)
    }
}

impl Hasher for Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
    }

    fn finish(&self) -> u64 {
        fmix64(self.0)
    }
}

/// murmur3's 64-bit finalizer: every input bit affects every output bit with
/// probability close to 1/2, and it maps 0 to 0 (hence `hash_seeded(_, 0)` keeps
/// the plain FNV basis).
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn hash_key_is_pinned_across_runs_and_builds() {
        // Values computed once by this function. If they change, every hash-balanced
        // user moves to another backend on upgrade: change them only on purpose.
        assert_eq!(hash_key(b""), PINNED_EMPTY);
        assert_eq!(hash_key(b"key-0"), PINNED_KEY0);
        assert_eq!(hash_key(b"10.0.0.1"), PINNED_IP);
    }

    const PINNED_EMPTY: u64 = 0xefd0_1f60_ba99_2926;
    const PINNED_KEY0: u64 = 0x1813_7ad0_31db_6589;
    const PINNED_IP: u64 = 0xc879_e56d_dc6c_5c88;

    /// FNV-1a 64 then murmur3's fmix64, written out from their specifications
    /// with the published constants, independently of the code under test.
    fn reference(bytes: &[u8]) -> u64 {
        let mut h: u64 = 14_695_981_039_346_656_037;
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(1_099_511_628_211);
        }
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }

    #[test]
    fn hash_key_is_fnv1a_then_fmix64() {
        // FNV-1a's published test vectors, through the finalizer: proves `reference`
        // (and with it `hash_key`) starts from the real FNV-1a, not a look-alike.
        let fnv = |s: &[u8]| {
            s.iter().fold(14_695_981_039_346_656_037u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(1_099_511_628_211))
        };
        assert_eq!(fnv(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv(b"foobar"), 0x8594_4171_f739_67e8);
        // Every key, not only the three pinned ones, hashes as the documented algorithm does.
        for i in 0..1000 {
            let k = format!("user-{i}");
            assert_eq!(hash_key(k.as_bytes()), reference(k.as_bytes()), "{k}");
        }
        assert_eq!(hash_key(&[0xff; 300]), reference(&[0xff; 300]));
    }

    #[test]
    fn hash_key_has_no_collisions_over_100k_keys() {
        let mut seen = HashSet::with_capacity(100_000);
        for i in 0..100_000 {
            let h = hash_key(format!("key-{i}").as_bytes());
            assert!(seen.insert(h), "collision at key-{i}");
        }
    }

    #[test]
    fn hash_key_low_bits_are_uniform() {
        // Maglev reduces the hash `% M`, and sequential keys are the common case
        // (user ids), so the low bits must be as good as the high ones. Pearson's
        // chi-square over 64 buckets (63 degrees of freedom): a uniform hash stays
        // under 110 with probability > 0.9998, so a failure means a real bias.
        let buckets = 64usize;
        let n = 64_000usize;
        let mut counts = vec![0usize; buckets];
        for i in 0..n {
            counts[(hash_key(format!("{i}").as_bytes()) % buckets as u64) as usize] += 1;
        }
        let even = (n / buckets) as f64;
        let chi2: f64 = counts.iter().map(|&c| (c as f64 - even).powi(2) / even).sum();
        assert!(chi2 < 110.0, "chi-square {chi2}: {counts:?}");
    }

    #[test]
    fn hash_key_avalanches_on_a_single_bit_flip() {
        // Plain FNV-1a fails this: a flip in the last byte only reaches bits at or
        // above its position, so the average distance stays well under 32.
        let mut total_bits = 0u64;
        let mut trials = 0u64;
        for i in 0..2_000 {
            let key = format!("key-{i}").into_bytes();
            let base = hash_key(&key);
            for byte in 0..key.len() {
                for bit in 0..8 {
                    let mut flipped = key.clone();
                    flipped[byte] ^= 1 << bit;
                    total_bits += u64::from((hash_key(&flipped) ^ base).count_ones());
                    trials += 1;
                }
            }
        }
        let mean = total_bits as f64 / trials as f64;
        assert!((31.0..=33.0).contains(&mean), "mean flipped bits {mean}");
    }

    #[test]
    fn seeds_give_independent_hashes() {
        let a = hash_seeded(b"backend-1", 0);
        let b = hash_seeded(b"backend-1", 1);
        assert_ne!(a, b);
        assert_eq!(a, hash_key(b"backend-1"));
        assert!((a ^ b).count_ones() > 16);
    }
}
