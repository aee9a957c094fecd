//! Least-request by the power of two random choices: sample two distinct instances,
//! send to the one with fewer requests in flight.
//!
//! Scanning every instance for the global minimum costs O(n) per request, and with
//! many gateways (or threads) reading slightly stale counts they all pile onto the
//! same "least loaded" instance at once. Two random choices cost O(1), keep the
//! maximum load within O(log log n) of the mean, and spread the herd because each
//! request compares a different pair. `fastrand`'s generator is thread-local, so
//! sampling takes no lock.

/// Picks one of `n` instances; `load(i)` is instance `i`'s current in-flight count.
///
/// `None` when `n == 0`. The two candidates are always distinct, so with two or more
/// instances the more loaded of any pair never wins. On a tie either is fine: both
/// were drawn at random.
pub fn pick(n: usize, load: impl Fn(usize) -> usize) -> Option<usize> {
    match n {
        0 => None,
        1 => Some(0),
        _ => {
            let a = fastrand::usize(..n);
            // Draw from the n - 1 others and step over `a`: distinct without a retry
            // loop, and still uniform over the pairs.
            let mut b = fastrand::usize(..n - 1);
            if b >= a {
                b += 1;
            }
            Some(if load(b) < load(a) { b } else { a })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(n: usize, loads: &[usize], picks: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for _ in 0..picks {
            c[pick(n, |i| loads[i]).expect("non-empty")] += 1;
        }
        c
    }

    #[test]
    fn prefers_the_idle_instance() {
        fastrand::seed(1);
        let c = tally(3, &[5, 0, 5], 30_000);
        // Index 1 is in 2 of the 3 possible pairs and wins both: expect 2/3.
        assert!(c[1] > 18_000, "{c:?}");
        // The others only win the pair {0, 2} on a tie: about 1/6 each.
        assert!(c[0] > 3_000 && c[0] < 7_000, "{c:?}");
        assert!(c[2] > 3_000 && c[2] < 7_000, "{c:?}");
    }

    #[test]
    fn most_loaded_never_wins() {
        fastrand::seed(2);
        let c = tally(4, &[9, 1, 5, 3], 20_000);
        assert_eq!(c[0], 0, "{c:?}");
        // The least loaded wins every pair it is in: 3 of 6 pairs.
        assert!(c[1] > 9_000, "{c:?}");
    }

    #[test]
    fn candidates_are_distinct() {
        // With two instances a repeated draw of the busy one would return it.
        fastrand::seed(3);
        for _ in 0..10_000 {
            assert_eq!(pick(2, |i| [1, 0][i]), Some(1));
            assert_eq!(pick(2, |i| [0, 1][i]), Some(0));
        }
    }

    #[test]
    fn equal_loads_spread_evenly() {
        fastrand::seed(4);
        let c = tally(4, &[0; 4], 40_000);
        for &x in &c {
            assert!(x.abs_diff(10_000) < 1_000, "{c:?}");
        }
    }

    #[test]
    fn one_and_none() {
        assert_eq!(pick(1, |_| 100), Some(0));
        assert_eq!(pick(0, |_| unreachable!("no instance to load")), None);
    }
}
