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
//! [`PerShard`] holds one value per shard.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, OnceLock};

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
#[inline]
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

/// One `T` per shard, each on cache lines of its own, made at its shard's first
/// use: what no request touched on a core costs a pointer, not a `T`.
pub struct PerShard<T> {
    slots: Box<[OnceLock<Box<Lines<T>>>]>,
}

/// Aligned to two cache lines (the adjacent-line prefetcher pulls them in pairs):
/// no two shards' values share one.
#[repr(align(128))]
struct Lines<T>(T);

impl<T> PerShard<T> {
    pub fn new() -> PerShard<T> {
        PerShard { slots: (0..count()).map(|_| OnceLock::new()).collect() }
    }

    /// This thread's `T`, made by `init(shard)` at the shard's first use.
    #[inline]
    pub fn local_or(&self, init: impl FnOnce(usize) -> T) -> &T {
        let shard = index();
        &self.slots[shard].get_or_init(|| Box::new(Lines(init(shard)))).0
    }

    /// The values made so far, in shard order.
    pub fn made(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().filter_map(|slot| slot.get().map(|lines| &lines.0))
    }
}

impl<T: Default> PerShard<T> {
    /// This thread's `T`, `T::default()` at the shard's first use.
    pub fn local(&self) -> &T {
        self.local_or(|_| T::default())
    }
}

impl<T> Default for PerShard<T> {
    fn default() -> PerShard<T> {
        PerShard::new()
    }
}

impl<T: fmt::Debug> fmt::Debug for PerShard<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.made()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_shard_values_are_made_once_per_shard_on_lines_of_their_own() {
        let values: PerShard<AtomicUsize> = PerShard::new();
        assert_eq!(values.made().count(), 0, "nothing made before a first use");
        let here = values.local_or(|shard| AtomicUsize::new(shard * 1000));
        assert_eq!(here.load(Ordering::Relaxed), index() * 1000, "made with this thread's shard");
        here.fetch_add(1, Ordering::Relaxed);
        assert!(std::ptr::eq(here, values.local()), "the same value on every call");
        assert_eq!(values.local().load(Ordering::Relaxed), index() * 1000 + 1);
        assert_eq!((here as *const AtomicUsize as usize) % 128, 0, "each value starts a line pair");
        std::thread::scope(|s| {
            for _ in 0..count() + 1 {
                s.spawn(|| values.local().fetch_add(1, Ordering::Relaxed));
            }
        });
        let made: Vec<usize> = values.made().map(|v| v.load(Ordering::Relaxed)).collect();
        assert!(made.len() <= count() && !made.is_empty(), "{made:?}");
        // This thread's value started at its shard × 1000, the others at 0.
        let counted = made.iter().sum::<usize>() - index() * 1000;
        assert_eq!(counted, count() + 2, "every count lands in exactly one shard: {made:?}");
    }

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
