//! The upstream table: one immutable snapshot of every service, its endpoints and
//! the pickers built for them. The data path does one `load()` of the
//! [`SharedTable`] per request and never locks; the control path builds a new
//! table off the request path and swaps it in.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::balance::{self, Maglev, Weighted};
use super::endpoint::Endpoint;
use super::instance::{now_ms, Admission};
use super::outlier::{self, Outcome};
use super::stats::ServiceStats;
use crate::config::ServicePolicy;
use crate::shard::PerShard;

pub type SharedTable = Arc<ArcSwap<Table>>;

#[derive(Debug, Default)]
pub struct Table {
    /// Increases by one per swap.
    pub version: u64,
    /// The discovery source's revision (etcd revision, or file generation).
    pub revision: u64,
    pub services: HashMap<Arc<str>, Arc<Held>>,
}

impl Table {
    pub fn service(&self, name: &str) -> Option<&Arc<Service>> {
        self.services.get(name).map(|held| &held.service)
    }

    /// `name`'s service as a request holds it (see [`Held`]).
    pub fn held(&self, name: &str) -> Option<&Held> {
        self.services.get(name).map(|held| &**held)
    }
}

/// A service as the tables hold it (shared by every table until the service is
/// rebuilt), with a reference per core for the requests that need one across
/// their awaits: cloning [`Held::local`] writes the count of this core's
/// [`Pinned`], not the service's own, which every worker would write for every
/// request of a busy service. A request that outlives its table keeps the
/// service through its `Pinned`.
#[derive(Debug)]
pub struct Held {
    pub service: Arc<Service>,
    local: PerShard<Arc<Pinned>>,
}

/// One core's reference to a service (see [`Held`]). Aligned to a cache line:
/// its `Arc`'s counts alone on theirs.
#[derive(Debug)]
#[repr(align(64))]
pub struct Pinned(pub Arc<Service>);

impl std::ops::Deref for Pinned {
    type Target = Service;
    fn deref(&self) -> &Service {
        &self.0
    }
}

impl Held {
    pub fn new(service: Arc<Service>) -> Held {
        Held { service, local: PerShard::new() }
    }

    /// This core's reference, made at its first request.
    pub fn local(&self) -> Arc<Pinned> {
        self.local.local_or(|_| Arc::new(Pinned(self.service.clone()))).clone()
    }
}

/// State of a service that outlives any one table: cursors, counts and metric handles.
#[derive(Debug)]
pub struct ServiceState {
    /// What every request writes, once per core (`crate::shard`): workers on
    /// different cores never write the same line for it.
    pub local: PerShard<Local>,
    pub stats: Arc<ServiceStats>,
    /// Requests of this service being retried now: with [`ServiceState::active`], the retry budget.
    pub retrying: AtomicUsize,
    /// Requests waiting for a connection slot (`max_pending`).
    pub pending: AtomicUsize,
}

/// One core's share of a service's per-request state.
#[derive(Debug)]
pub struct Local {
    /// The rotation cursors: each core rotates on its own, as each nginx worker
    /// does without a shared `zone`; a core's first pick is instance `shard`, so
    /// that cores do not start together on the first one.
    pub round_robin: AtomicUsize,
    pub weighted: AtomicUsize,
    /// Requests of this service being sent now from this core.
    pub active: AtomicUsize,
}

impl ServiceState {
    pub fn new(name: &str) -> Self {
        ServiceState {
            local: PerShard::new(),
            stats: ServiceStats::of(name),
            retrying: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
        }
    }

    /// This core's share (made at its first request).
    pub fn local(&self) -> &Local {
        self.local.local_or(|shard| Local {
            round_robin: AtomicUsize::new(shard),
            weighted: AtomicUsize::new(shard),
            active: AtomicUsize::new(0),
        })
    }

    /// Requests of this service being sent now, on every core.
    pub fn active(&self) -> usize {
        self.local.made().map(|l| l.active.load(Ordering::Relaxed)).sum()
    }
}

/// How to choose among a service's live endpoints.
#[derive(Debug, Clone, Copy)]
pub enum Pick {
    RoundRobin,
    Weighted,
    LeastRequest,
    /// The hash of the request's key (see `balance::hash_key`).
    Hash(u64),
}

#[derive(Debug)]
pub struct Service {
    pub name: Arc<str>,
    /// Every endpoint, sorted by id, whatever its status.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// The endpoints that take new requests (status `up`), sorted by id.
    pub live: Vec<Arc<Endpoint>>,
    pub state: Arc<ServiceState>,
    /// Outlier ejection, checks, limits, slow start, retry budget (`[[service]]`).
    pub policy: Arc<ServicePolicy>,
    /// Built only when weights differ; equal weights are round-robin.
    weighted: Option<Weighted>,
    /// Built only when a route hashes to this service.
    maglev: Option<Maglev>,
}

impl Service {
    pub fn new(
        name: Arc<str>,
        endpoints: Vec<Arc<Endpoint>>,
        state: Arc<ServiceState>,
        policy: Arc<ServicePolicy>,
        hashed: bool,
    ) -> Service {
        let live: Vec<Arc<Endpoint>> =
            endpoints.iter().filter(|e| e.status == super::endpoint::Status::Up).cloned().collect();
        let uneven = live.windows(2).any(|w| w[0].weight != w[1].weight);
        let weighted = uneven.then(|| Weighted::new(&live.iter().map(|e| e.weight).collect::<Vec<_>>()));
        let maglev = hashed.then(|| Maglev::new(&live.iter().map(|e| &*e.id).collect::<Vec<_>>()));
        Service { name, endpoints, live, state, policy, weighted, maglev }
    }

    /// The endpoint for a new request, or `None` when no endpoint is admitted.
    pub fn pick(&self, how: Pick) -> Option<&Arc<Endpoint>> {
        self.candidates(how, now_ms()).next()
    }

    /// The picker's choice and a deterministic fallback order (see [`Candidates`]).
    pub fn candidates(&self, how: Pick, now_ms: u64) -> Candidates<'_> {
        let n = self.live.len();
        // The first choice, and a seed for where the fallback starts, so that the
        // retries of one failed instance spread over the others instead of all
        // landing on its neighbour.
        let (first, seed) = match (how, &self.weighted, &self.maglev) {
            (_, _, _) if n == 0 => (None, 0),
            (Pick::Weighted, Some(w), _) => (w.pick(&self.state.local().weighted), fastrand::u64(..)),
            (Pick::LeastRequest, _, _) => {
                (balance::least_request::pick(n, |i| self.live[i].load.get()), fastrand::u64(..))
            }
            (Pick::Hash(key), _, Some(m)) => (m.pick(key), key >> 32),
            _ => match balance::round_robin::pick_in_round(&self.state.local().round_robin, n) {
                Some((i, round)) => (Some(i), round),
                None => (None, 0),
            },
        };
        let mut order = Order::new(n, first.unwrap_or(0), seed);
        // Not for hash: deferring a key's instance would move the key.
        let ramping = if matches!(how, Pick::Hash(_)) { None } else { self.live.get(order.first) };
        if let Some(ramp) = ramping.and_then(|e| e.state.ramp(now_ms, self.policy.slow_start)) {
            // Slow start: a ramping first choice keeps only its share of what it is
            // picked for; the rest goes to the fallback order, the ramping one last.
            if fastrand::f64() >= ramp {
                order.defer_first = true;
            }
        }
        Candidates {
            service: self,
            order,
            now_ms,
            pass: Pass::Admitted,
            yielded: 0,
            full: 0,
            held_back: 0,
            panicked: false,
        }
    }

    /// The outcome hook: every try at an instance, HTTP or TCP, reports here.
    pub fn observe(&self, endpoint: &Endpoint, outcome: Outcome) {
        // The clock is read where it is needed: a success usually needs none.
        let policy = &self.policy.outlier;
        let may_eject = |now| {
            let ejected = self.live.iter().filter(|e| e.state.outlier.is_ejected(now)).count();
            outlier::may_eject(ejected, self.live.len(), policy.max_ejected_percent)
        };
        if let Some(e) = endpoint.state.outlier.record(outcome, now_ms, policy, may_eject) {
            self.state.stats.ejected(e.reason);
            tracing::warn!(
                service = %self.name,
                id = %endpoint.id,
                addr = %endpoint.addr,
                reason = e.reason.as_str(),
                times = e.times,
                seconds = e.until_ms.saturating_sub(now_ms()) / 1000,
                "instance ejected"
            );
        }
    }
}

/// The positions of a service's live endpoints in the order one request tries
/// them: the picker's choice, then every other one exactly once, cyclically from
/// `first + offset`. Pure, so that it can be tested without endpoints.
#[derive(Debug, Clone)]
pub struct Order {
    n: usize,
    first: usize,
    offset: usize,
    /// The next step: 0 is `first`, 1..n the others.
    step: usize,
    /// Slow start: `first` goes last instead.
    defer_first: bool,
}

impl Order {
    pub fn new(n: usize, first: usize, seed: u64) -> Order {
        let offset = if n > 1 { 1 + (seed % (n as u64 - 1)) as usize } else { 0 };
        Order { n, first: first.min(n.saturating_sub(1)), offset, step: 0, defer_first: false }
    }
}

impl Iterator for Order {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        if self.step >= self.n {
            return None;
        }
        let k = self.step;
        self.step += 1;
        // The j-th of the others: positions first+1 ..= first+n-1, rotated to start at first+offset.
        let other = |j: usize| (self.first + 1 + (self.offset - 1 + j) % (self.n - 1)) % self.n;
        Some(match (self.defer_first, k) {
            (false, 0) => self.first,
            (false, k) => other(k - 1),
            (true, k) if k == self.n - 1 => self.first,
            (true, k) => other(k),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Instances that admit a request.
    Admitted,
    /// Panic: nothing was admitted, only for health reasons: every healthy-or-not
    /// instance that is not at its limit (Envoy's panic routing).
    Panic,
    Done,
}

/// Candidates for one request: the picker's choice first, then a deterministic
/// fallback order, each live endpoint at most once, filtered by
/// [`Endpoint::admits`]. When nothing at all is admitted because every instance
/// is ejected or unhealthy, a second pass routes to them anyway (panic mode,
/// counted) rather than failing every request.
pub struct Candidates<'a> {
    service: &'a Service,
    order: Order,
    now_ms: u64,
    pass: Pass,
    yielded: usize,
    /// Instances passed over for being at `max_inflight`.
    full: usize,
    /// Instances passed over for health (ejected, unhealthy).
    held_back: usize,
    panicked: bool,
}

impl Candidates<'_> {
    /// Why the iterator ran dry without yielding: some instance was at its limit
    /// (overloaded) or there was none to try.
    pub fn overloaded(&self) -> bool {
        self.yielded == 0 && self.full > 0
    }

    /// Whether the candidates came from the panic pass.
    pub fn panicked(&self) -> bool {
        self.panicked
    }
}

impl<'a> Iterator for Candidates<'a> {
    type Item = &'a Arc<Endpoint>;

    fn next(&mut self) -> Option<&'a Arc<Endpoint>> {
        let live = &self.service.live;
        loop {
            match self.pass {
                Pass::Done => return None,
                Pass::Admitted => match self.order.next() {
                    Some(i) => {
                        let e = &live[i];
                        match e.admits(self.now_ms, &self.service.policy) {
                            Admission::Admit => {
                                self.yielded += 1;
                                return Some(e);
                            }
                            Admission::Full => self.full += 1,
                            Admission::Ejected | Admission::Unhealthy => self.held_back += 1,
                        }
                    }
                    None if self.yielded == 0 && self.full == 0 && self.held_back > 0 => {
                        self.pass = Pass::Panic;
                        self.panicked = true;
                        self.service.state.stats.panic();
                        self.order.step = 0;
                    }
                    None => self.pass = Pass::Done,
                },
                Pass::Panic => match self.order.next() {
                    Some(i) => {
                        self.yielded += 1;
                        return Some(&live[i]);
                    }
                    None => self.pass = Pass::Done,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_visits_every_position_once_first_first() {
        for n in 1..8 {
            for first in 0..n {
                for seed in 0..20 {
                    let seq: Vec<usize> = Order::new(n, first, seed).collect();
                    assert_eq!(seq.len(), n);
                    assert_eq!(seq[0], first);
                    let mut sorted = seq.clone();
                    sorted.sort();
                    assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "n={n} first={first} seed={seed}");
                }
            }
        }
        assert_eq!(Order::new(0, 0, 7).count(), 0);
    }

    #[test]
    fn fallbacks_of_one_instance_spread_over_the_others() {
        // The retries of instance 0's requests: each of the others is the first
        // fallback equally often as the seed (round-robin round) varies.
        let mut counts = [0usize; 4];
        for seed in 0..300 {
            counts[Order::new(4, 0, seed).nth(1).unwrap()] += 1;
        }
        assert_eq!(counts, [0, 100, 100, 100]);
    }

    #[test]
    fn order_is_deterministic_and_defers_a_ramping_first() {
        let a: Vec<usize> = Order::new(5, 2, 9).collect();
        assert_eq!(a, Order::new(5, 2, 9).collect::<Vec<_>>());
        let mut o = Order::new(5, 2, 9);
        o.defer_first = true;
        let b: Vec<usize> = o.collect();
        assert_eq!(*b.last().unwrap(), 2);
        assert_eq!(&b[..4], &a[1..]);
    }
}
