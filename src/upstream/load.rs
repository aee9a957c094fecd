//! An instance's requests in flight, and its `max_inflight` limit, without a
//! line every worker writes per request.
//!
//! The count is kept per core (`crate::shard`). The limit is a pool of permits:
//! a core takes [`BATCH`] at a time from the instance's shared count of taken
//! permits and parks the ones it has not used yet, so its next requests start and
//! end on its own line; it gives a batch back once more than `2 × BATCH` are
//! parked. At the limit a core takes a parked permit from another core rather
//! than refuse, so a request is refused only when `max` requests are really in
//! flight (or while another core is in the middle of moving its permits). Envoy's
//! circuit breakers count in one shared atomic; this touches the shared count
//! once per batch instead.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::shard::PerShard;

/// Permits a core takes from the shared count at once.
pub const BATCH: usize = 4;

/// Requests in flight to one instance. Carried across table swaps with the instance.
#[derive(Debug, Default)]
pub struct Load {
    /// Permits of the limit held by cores: in flight there, or parked.
    taken: AtomicUsize,
    local: PerShard<Local>,
}

/// One core's counts. `limited`: requests in flight that hold a permit (low 32
/// bits) and the permits held (high 32 bits, never fewer than those requests),
/// in one word, so that a request ending on another core (its task moved by work
/// stealing) updates both at once. `unlimited`: requests counted without a limit
/// (TCP relays; `try_start` with no limit).
#[derive(Debug, Default)]
struct Local {
    limited: AtomicU64,
    unlimited: AtomicUsize,
}

const ONE_INFLIGHT: u64 = 1;
const ONE_PERMIT: u64 = 1 << 32;

fn inflight(word: u64) -> usize {
    (word & 0xffff_ffff) as usize
}

fn permits(word: u64) -> usize {
    (word >> 32) as usize
}

/// A permit is held but no request uses it.
fn has_spare(word: u64) -> bool {
    inflight(word) < permits(word)
}

impl Local {
    /// Changes `limited` by `change` if `ok` holds for it; whether it did.
    fn update(&self, ok: impl Fn(u64) -> bool, change: impl Fn(u64) -> u64) -> bool {
        self.limited.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| ok(w).then(|| change(w))).is_ok()
    }

    fn spare(&self) -> bool {
        has_spare(self.limited.load(Ordering::Relaxed))
    }

    /// Gives up spare permits while more than `keep` are spare: a batch, or all
    /// of them for `keep == 0`. How many it gave up (for the shared count).
    fn shed(&self, keep: usize) -> usize {
        let spare = |w: u64| permits(w) - inflight(w);
        let give = |w: u64| if keep == 0 { spare(w) } else { BATCH };
        let shed = |w: u64| (spare(w) > keep).then(|| w - give(w) as u64 * ONE_PERMIT);
        self.limited.fetch_update(Ordering::Relaxed, Ordering::Relaxed, shed).map_or(0, give)
    }

    fn inflight(&self) -> usize {
        inflight(self.limited.load(Ordering::Relaxed)) + self.unlimited.load(Ordering::Relaxed)
    }
}

impl Load {
    /// Requests in flight on every core (the admin view, `least_request`, and
    /// whether a removed instance still has work).
    pub fn get(&self) -> usize {
        self.local.made().map(Local::inflight).sum()
    }

    /// Counts one request in flight, with no limit, until the guard drops.
    pub fn start(&self) -> InflightGuard<'_> {
        let local = self.local.local();
        local.unlimited.fetch_add(1, Ordering::Relaxed);
        InflightGuard { load: self, local, max: usize::MAX }
    }

    /// [`Load::start`] unless `max` are in flight already. The guard borrows: the
    /// request holds its endpoint anyway, and a clone of an `Arc` would be two
    /// more writes per request on a line every worker writes.
    pub fn try_start(&self, max: usize) -> Option<InflightGuard<'_>> {
        if max == usize::MAX {
            return Some(self.start());
        }
        let local = self.local.local();
        // More taken than `max` (a reload lowered it): parked permits serve nobody
        // until enough requests ended.
        let within = self.taken.load(Ordering::Relaxed) <= max;
        if !(within && local.update(has_spare, |w| w + ONE_INFLIGHT)) {
            let got = self.take(max, local)?;
            local.limited.fetch_add(got as u64 * ONE_PERMIT + ONE_INFLIGHT, Ordering::Relaxed);
        }
        Some(InflightGuard { load: self, local, max })
    }

    /// Whether a request would be refused now (for [`Load::try_start`]'s caller to
    /// skip the instance before trying it): none left in the shared count, and
    /// no spare permit parked on any core. The usual answer costs one read.
    pub fn full(&self, max: usize) -> bool {
        max != usize::MAX && self.taken.load(Ordering::Relaxed) >= max && !self.local.made().any(Local::spare)
    }

    /// Permits for `local` from the shared count (up to a batch), or one parked on
    /// another core; `None` when there is none: `max` are in flight.
    fn take(&self, max: usize, local: &Local) -> Option<usize> {
        let from_shared = || {
            let mut got = 0;
            let taken = self.taken.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                got = BATCH.min(max.saturating_sub(t));
                (got > 0).then_some(t + got)
            });
            taken.is_ok().then_some(got)
        };
        if let Some(got) = from_shared() {
            return Some(got);
        }
        if self.taken.load(Ordering::Relaxed) > max {
            // A reload lowered the limit: every core's spare permits go back first.
            let shed: usize = self.local.made().map(|l| l.shed(0)).sum();
            self.taken.fetch_sub(shed, Ordering::Relaxed);
            return from_shared();
        }
        let mut others = self.local.made().filter(|l| !std::ptr::eq(*l, local));
        others.any(|other| other.update(has_spare, |w| w - ONE_PERMIT)).then_some(1)
    }

    /// One request of `local` (started under `max`) ended: its permit stays
    /// parked, and a batch goes back once more than two batches are (every spare
    /// one while more than `max` are taken: a reload lowered it).
    fn end(&self, local: &Local, max: usize) {
        if max == usize::MAX {
            local.unlimited.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let w = local.limited.fetch_sub(ONE_INFLIGHT, Ordering::Relaxed) - ONE_INFLIGHT;
        let keep = if self.taken.load(Ordering::Relaxed) > max { 0 } else { 2 * BATCH };
        if permits(w) - inflight(w) > keep {
            self.taken.fetch_sub(local.shed(keep), Ordering::Relaxed);
        }
    }
}

/// One request counted in flight (holding a permit of `max`, unless that is
/// `usize::MAX`: no limit) until dropped.
pub struct InflightGuard<'a> {
    load: &'a Load,
    local: &'a Local,
    max: usize,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.load.end(self.local, self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    #[test]
    fn counts_what_is_in_flight() {
        let load = Load::default();
        let a = load.start();
        let b = load.try_start(10).unwrap();
        assert_eq!(load.get(), 2);
        drop(a);
        drop(b);
        assert_eq!(load.get(), 0);
    }

    #[test]
    fn the_limit_is_exact_on_one_core() {
        for max in [1, 2, BATCH, BATCH + 1, 3 * BATCH + 2] {
            let load = Load::default();
            let held: Vec<_> = (0..max).map(|_| load.try_start(max).expect("under the limit")).collect();
            assert!(load.try_start(max).is_none(), "max {max}: one more is refused");
            assert!(load.full(max));
            drop(held);
            assert_eq!(load.get(), 0);
            assert!(!load.full(max));
            assert!(load.try_start(max).is_some(), "max {max}: free again");
        }
    }

    #[test]
    fn a_core_parks_at_most_two_batches_and_gives_the_rest_back() {
        let load = Load::default();
        let held: Vec<_> = (0..5 * BATCH).map(|_| load.try_start(1000).unwrap()).collect();
        assert_eq!(load.taken.load(Ordering::Relaxed), 5 * BATCH);
        drop(held);
        let parked = load.taken.load(Ordering::Relaxed);
        assert!(parked <= 2 * BATCH, "{parked} permits parked after every request ended");
        // Parked permits serve the next requests without the shared count.
        let again: Vec<_> = (0..parked).map(|_| load.try_start(1000).unwrap()).collect();
        assert_eq!(load.taken.load(Ordering::Relaxed), parked, "no permit taken from the shared count");
        drop(again);
    }

    #[test]
    fn permits_parked_on_other_cores_are_taken_rather_than_refusing() {
        // max = 2 × cores: each thread (each core's shard, some may share one)
        // ends with permits parked; then one thread alone reaches the whole limit.
        let max = 2 * crate::shard::count();
        let load = Load::default();
        let threads = crate::shard::count() + 1;
        let barrier = Barrier::new(threads);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    let g = load.try_start(max);
                    barrier.wait();
                    drop(g);
                });
            }
        });
        assert_eq!(load.get(), 0);
        let held: Vec<_> = std::iter::from_fn(|| load.try_start(max)).take(max + 1).collect();
        assert_eq!(held.len(), max, "every permit, wherever parked, serves; not one more");
        assert!(load.full(max));
        drop(held);
        assert!(!load.full(max));
    }

    #[test]
    fn a_lowered_limit_holds_at_once_and_the_excess_permits_go_back() {
        let load = Load::default();
        let held: Vec<_> = (0..3).map(|_| load.try_start(100).unwrap()).collect();
        // A reload lowers the limit to 2 with 3 in flight and a batch's spare parked.
        assert!(load.try_start(2).is_none(), "over the new limit: refused, spare permits or not");
        assert!(load.full(2));
        drop(held);
        // The requests under the old limit end; the new limit's requests get exactly two.
        let again: Vec<_> = std::iter::from_fn(|| load.try_start(2)).take(3).collect();
        assert_eq!(again.len(), 2, "the parked permits went back, the new limit holds");
        assert!(load.taken.load(Ordering::Relaxed) <= 2);
    }

    #[test]
    fn many_threads_never_exceed_the_limit() {
        let max = 5;
        let load = Load::default();
        let inside = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        let refused = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for i in 0..2_000 {
                        match load.try_start(max) {
                            Some(g) => {
                                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                                most.fetch_max(now, Ordering::SeqCst);
                                if i % 7 == 0 {
                                    std::thread::yield_now();
                                }
                                inside.fetch_sub(1, Ordering::SeqCst);
                                drop(g);
                            }
                            None => drop(refused.fetch_add(1, Ordering::Relaxed)),
                        }
                    }
                });
            }
        });
        assert!(most.load(Ordering::SeqCst) <= max, "{} in flight at once", most.load(Ordering::SeqCst));
        assert_eq!(load.get(), 0);
        let taken = load.taken.load(Ordering::Relaxed);
        let parked: usize = load.local.made().map(|l| permits(l.limited.load(Ordering::Relaxed))).sum();
        assert_eq!(taken, parked, "every permit taken is parked somewhere once all ended");
        assert!(taken <= max);
    }
}
