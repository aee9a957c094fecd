//! Round-robin: instance `i`, then `i + 1`, and so on, equally for all.
//!
//! The cursor is owned by the service, not by the table, so a table swap (an
//! instance joining or leaving) continues the rotation instead of sending the next
//! request of every service to instance 0 — a thundering herd on one instance each
//! time discovery changes anything.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Picks the next of `n` instances, or `None` when there are none.
///
/// `Relaxed` is enough: the cursor orders nothing else, it only has to hand out
/// distinct numbers to concurrent requests. `fetch_add` wraps at `usize::MAX`, so
/// the counter never panics; the wrap skips the rotation by a few places once every
/// 2^64 requests, which nobody can observe.
#[cfg(test)]
pub fn pick(cursor: &AtomicUsize, n: usize) -> Option<usize> {
    pick_in_round(cursor, n).map(|(i, _)| i)
}

/// [`pick`], and which round of the rotation it is in (how many times the cursor
/// went round): the fallback order uses it to spread a failed instance's retries.
pub fn pick_in_round(cursor: &AtomicUsize, n: usize) -> Option<(usize, u64)> {
    if n == 0 {
        return None;
    }
    let c = cursor.fetch_add(1, Ordering::Relaxed);
    Some((c % n, (c / n) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_exactly_evenly() {
        let cursor = AtomicUsize::new(0);
        let mut counts = [0usize; 3];
        for _ in 0..300 {
            counts[pick(&cursor, 3).expect("non-empty")] += 1;
        }
        assert_eq!(counts, [100, 100, 100]);
    }

    #[test]
    fn visits_in_order() {
        let cursor = AtomicUsize::new(0);
        let seq: Vec<usize> = (0..6).filter_map(|_| pick(&cursor, 3)).collect();
        assert_eq!(seq, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn empty_set_is_none_and_does_not_advance() {
        let cursor = AtomicUsize::new(5);
        assert_eq!(pick(&cursor, 0), None);
        assert_eq!(cursor.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn cursor_wraps_at_usize_max_without_panicking() {
        let cursor = AtomicUsize::new(usize::MAX - 2);
        for _ in 0..10 {
            let i = pick(&cursor, 3).expect("non-empty");
            assert!(i < 3);
        }
        assert_eq!(cursor.load(Ordering::Relaxed), 7);
    }

    #[test]
    fn one_cursor_continues_across_set_sizes() {
        // The picker side of "the cursor survives a table swap": given the same
        // cursor, a new size continues from where it was instead of restarting at 0.
        // That the service really keeps its cursor across a swap is tested end to
        // end in tests/balancing.rs (`round_robin_continues_across_a_table_swap`).
        let cursor = AtomicUsize::new(0);
        assert_eq!(pick(&cursor, 4), Some(0));
        assert_eq!(pick(&cursor, 4), Some(1));
        assert_eq!(pick(&cursor, 2), Some(0));
        assert_eq!(pick(&cursor, 5), Some(3));
    }
}
