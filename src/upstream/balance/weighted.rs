//! Smooth weighted round-robin (nginx's algorithm), precomputed so that picking is
//! one atomic increment and one array read.
//!
//! nginx keeps a mutable `current` per peer and updates all of them on every
//! request, which needs a lock (or a per-worker copy) on the request path. The
//! sequence it produces is periodic, though — after `sum(weights)` rounds every
//! `current` is back to zero — so it is computed once per table change and the
//! request path just walks it with a cursor (one per core) kept across table swaps. Dividing the
//! weights by their gcd first gives the same interleaving with the shortest period.
//!
//! "Smooth" matters: weights {5, 1, 1} give `a a b a c a a`, not `a a a a a b c`,
//! so a heavy instance never receives a burst of consecutive requests.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Upper bound on one weight. Config validation already rejects larger values; the
/// clamp keeps a bad value that slips through from asking for a sequence of up to
/// 2^32 entries per instance.
pub const MAX_WEIGHT: u32 = 1000;

/// The precomputed smooth weighted round-robin sequence for one set of instances.
#[derive(Debug, Clone, Default)]
pub struct Weighted {
    /// Instance indices in nginx's order, one full period. `u32` halves the memory
    /// of `usize` for tables that can reach `1000 × instances` entries.
    seq: Box<[u32]>,
}

impl Weighted {
    /// Builds the sequence for `weights` (one per instance, in instance order).
    ///
    /// A weight of 0 counts as 1: an instance that is in the table is meant to
    /// receive traffic (draining is done by removing it), and a zero would make it
    /// silently unreachable. Weights above [`MAX_WEIGHT`] are clamped to it.
    ///
    /// Cost: `len() × distinct weights` steps and `4 × len()` bytes. Microseconds
    /// for the usual few distinct weights; the worst case, 1000 instances with
    /// weights 1..=1000, is a 500,500-entry sequence and about 2 s in release, so
    /// build off the async runtime's worker threads.
    pub fn new(weights: &[u32]) -> Weighted {
        if weights.is_empty() {
            return Weighted::default();
        }
        let clamped: Vec<u64> = weights.iter().map(|&w| u64::from(w.clamp(1, MAX_WEIGHT))).collect();
        let g = clamped.iter().copied().fold(0, gcd);
        let reduced: Vec<u64> = clamped.iter().map(|&w| w / g.max(1)).collect();
        Weighted { seq: smooth_sequence(&reduced).into_boxed_slice() }
    }

    /// The next instance index, or `None` when built from no instances.
    pub fn pick(&self, cursor: &AtomicUsize) -> Option<usize> {
        if self.seq.is_empty() {
            return None;
        }
        let at = cursor.fetch_add(1, Ordering::Relaxed) % self.seq.len();
        self.seq.get(at).map(|&i| i as usize)
    }

    /// The period of the sequence: the sum of the gcd-reduced weights.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.seq.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.seq.is_empty()
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Instances that share a weight. Within such a group nginx always picks the member
/// picked least often so far (lowest index on a tie), i.e. the members take turns
/// in index order; only the group's current leader can win a round. Tracking groups
/// instead of instances makes a build cost `period × distinct weights` rather than
/// `period × instances` — with equal weights (the default) that is linear, which
/// matters for a thousand instances whose period is a thousand times longer.
struct Group {
    weight: u64,
    /// Instance indices, ascending.
    members: Vec<u32>,
    picks: u64,
}

/// nginx's smooth weighted round-robin, one period of it.
///
/// After `t` rounds, an instance with weight `w` picked `k` times so far has
/// `current = t·w − total·k`; each round the instance with the largest `current`
/// wins, the first (lowest index) one on a tie, as nginx's strict `>` does.
fn smooth_sequence(weights: &[u64]) -> Vec<u32> {
    let total: u64 = weights.iter().sum();
    let mut by_weight: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    for (i, &w) in weights.iter().enumerate() {
        // Indices come from a slice whose length the caller bounds far below u32.
        by_weight.entry(w).or_default().push(i as u32);
    }
    let mut groups: Vec<Group> =
        by_weight.into_iter().map(|(weight, members)| Group { weight, members, picks: 0 }).collect();

    let mut seq = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for t in 1..=total {
        let mut best: Option<(usize, i128, u32)> = None;
        for (gi, g) in groups.iter().enumerate() {
            let len = g.members.len() as u64;
            let leader = g.members[(g.picks % len) as usize];
            let score = i128::from(t * g.weight) - i128::from(total) * i128::from(g.picks / len);
            let better = match best {
                None => true,
                Some((_, s, idx)) => score > s || (score == s && leader < idx),
            };
            if better {
                best = Some((gi, score, leader));
            }
        }
        if let Some((gi, _, leader)) = best {
            groups[gi].picks += 1;
            seq.push(leader);
        }
    }
    seq
}

#[cfg(test)]
mod tests {
    use super::*;

    /// nginx's loop as written in `ngx_http_upstream_get_peer`, as the oracle.
    fn nginx_reference(weights: &[u64]) -> Vec<u32> {
        let total: i64 = weights.iter().map(|&w| w as i64).sum();
        let mut current = vec![0i64; weights.len()];
        let mut out = Vec::new();
        for _ in 0..total {
            let mut best: Option<usize> = None;
            for i in 0..weights.len() {
                current[i] += weights[i] as i64;
                if best.is_none() || best.is_some_and(|b| current[i] > current[b]) {
                    best = Some(i);
                }
            }
            let b = best.expect("non-empty");
            current[b] -= total;
            out.push(b as u32);
        }
        assert!(current.iter().all(|&c| c == 0), "period is sum(weights)");
        out
    }

    fn counts(w: &Weighted, picks: usize, n: usize) -> Vec<usize> {
        let cursor = AtomicUsize::new(0);
        let mut c = vec![0; n];
        for _ in 0..picks {
            c[w.pick(&cursor).expect("non-empty")] += 1;
        }
        c
    }

    #[test]
    fn weights_1_2_3_give_exact_shares() {
        let w = Weighted::new(&[1, 2, 3]);
        assert_eq!(counts(&w, 600, 3), [100, 200, 300]);
    }

    #[test]
    fn five_one_one_is_nginx_sequence() {
        // Hand-run, (current after adding weights) -> pick, total 7:
        // (5,1,1)->a  (3,2,2)->a  (1,3,3)->b  (6,-3,4)->a
        // (4,-2,5)->c (9,-1,-1)->a (7,0,0)->a, and all currents are 0 again.
        let w = Weighted::new(&[5, 1, 1]);
        assert_eq!(&*w.seq, &[0, 0, 1, 0, 2, 0, 0]);
        let cursor = AtomicUsize::new(0);
        let two_periods: Vec<usize> = (0..14).filter_map(|_| w.pick(&cursor)).collect();
        assert_eq!(two_periods, [0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn matches_nginx_for_many_weight_sets() {
        fastrand::seed(0x5eed);
        for _ in 0..300 {
            let n = fastrand::usize(1..12);
            // Few distinct values so that groups of equal weights are exercised, and
            // a common factor half of the time so that the gcd reduction is too.
            let factor = if fastrand::bool() { 3 } else { 1 };
            let weights: Vec<u32> = (0..n).map(|_| fastrand::u32(1..8) * factor).collect();
            let reduced: Vec<u64> = {
                let g = weights.iter().map(|&w| u64::from(w)).fold(0, gcd);
                weights.iter().map(|&w| u64::from(w) / g).collect()
            };
            let w = Weighted::new(&weights);
            assert_eq!(&*w.seq, nginx_reference(&reduced).as_slice(), "{weights:?}");
        }
    }

    #[test]
    fn gcd_shortens_the_period() {
        let w = Weighted::new(&[2, 4, 6]);
        assert_eq!(w.len(), 6);
        assert_eq!(&*w.seq, &*Weighted::new(&[1, 2, 3]).seq);
    }

    #[test]
    fn empty_is_none() {
        let w = Weighted::new(&[]);
        assert!(w.is_empty());
        assert_eq!(w.len(), 0);
        assert_eq!(w.pick(&AtomicUsize::new(0)), None);
    }

    #[test]
    fn thousand_equal_heavy_weights_reduce_to_plain_rotation() {
        let w = Weighted::new(&[1000; 1000]);
        assert_eq!(w.len(), 1000);
        let expected: Vec<u32> = (0..1000).collect();
        assert_eq!(&*w.seq, expected.as_slice());
    }

    #[test]
    fn zero_weight_counts_as_one_and_huge_is_clamped() {
        let w = Weighted::new(&[0, 1]);
        assert_eq!(counts(&w, 100, 2), [50, 50]);
        let w = Weighted::new(&[u32::MAX, 1]);
        assert_eq!(w.len(), (MAX_WEIGHT + 1) as usize);
    }

    #[test]
    fn cursor_wrap_does_not_panic() {
        let w = Weighted::new(&[3, 1]);
        let cursor = AtomicUsize::new(usize::MAX - 1);
        for _ in 0..10 {
            assert!(w.pick(&cursor).is_some_and(|i| i < 2));
        }
    }
}
