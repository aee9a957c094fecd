//! Per-core shards: which one the current thread uses. State that every request
//! updates — a service's request counts and latency histograms, an instance's idle
//! upstream connections — is kept once per shard, so that workers on different
//! cores never write the same cache line per request: with one shared atomic or
//! lock, each update on a 16-core machine would pull the line from the core that
//! last wrote it (~100–200 cycles), for every request of a busy service.
//!
//! There are as many shards as cores this process may run on (its CPU affinity,
//! at most [`MAX`]); a thread takes the next index the first time it asks and
//! keeps it. Tokio's workers are the threads that ask: with `workers` ≤ cores
//! each has a shard of its own. A thread beyond that shares one, which stays
//! correct (a shard is atomics or a lock) and only costs what sharing costs.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::LazyLock;

/// Most shards: beyond this many cores, threads share them.
pub const MAX: usize = 64;

static COUNT: LazyLock<usize> =
    LazyLock::new(|| std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, MAX));
static NEXT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// How many shards a sharded series has.
pub fn count() -> usize {
    *COUNT
}

/// This thread's shard, below [`count`].
pub fn index() -> usize {
    INDEX.with(|index| match index.get() {
        usize::MAX => {
            let taken = NEXT.fetch_add(1, Ordering::Relaxed) % count();
            index.set(taken);
            taken
        }
        taken => taken,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_keeps_its_shard_and_threads_take_the_next_ones() {
        let here = index();
        assert!(here < count());
        assert_eq!(index(), here, "the same shard on every call");
        let others: Vec<usize> = (0..count() + 1)
            .map(|_| std::thread::spawn(|| (index(), index())).join().unwrap())
            .map(|(a, b)| {
                assert_eq!(a, b);
                a
            })
            .collect();
        assert!(others.iter().all(|&i| i < count()), "{others:?}");
        // Consecutive new threads take consecutive shards (other tests may take some in between).
        let distinct: std::collections::HashSet<_> = others.iter().collect();
        assert!(distinct.len() > 1 || count() == 1, "{others:?}");
        assert!(count() <= MAX);
    }
}
