//! The upstream table: one immutable snapshot of every service, its endpoints and
//! the pickers built for them. The data path does one `load()` of the
//! [`SharedTable`] per request and never locks; the control path builds a new
//! table off the request path and swaps it in.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::balance::{self, Maglev, Weighted};
use super::endpoint::Endpoint;
use super::stats::ServiceStats;

pub type SharedTable = Arc<ArcSwap<Table>>;

#[derive(Debug, Default)]
pub struct Table {
    /// Increases by one per swap.
    pub version: u64,
    /// The discovery source's revision (etcd revision, or file generation).
    pub revision: u64,
    pub services: HashMap<Arc<str>, Arc<Service>>,
}

impl Table {
    pub fn service(&self, name: &str) -> Option<&Arc<Service>> {
        self.services.get(name)
    }
}

/// State of a service that outlives any one table: cursors and metric handles.
#[derive(Debug)]
pub struct ServiceState {
    pub round_robin: AtomicUsize,
    pub weighted: AtomicUsize,
    pub stats: Arc<ServiceStats>,
}

impl ServiceState {
    pub fn new(name: &str) -> Self {
        ServiceState { round_robin: AtomicUsize::new(0), weighted: AtomicUsize::new(0), stats: ServiceStats::of(name) }
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
    /// Built only when weights differ; equal weights are round-robin.
    weighted: Option<Weighted>,
    /// Built only when a route hashes to this service.
    maglev: Option<Maglev>,
}

impl Service {
    pub fn new(name: Arc<str>, endpoints: Vec<Arc<Endpoint>>, state: Arc<ServiceState>, hashed: bool) -> Service {
        let live: Vec<Arc<Endpoint>> =
            endpoints.iter().filter(|e| e.status == super::endpoint::Status::Up).cloned().collect();
        let uneven = live.windows(2).any(|w| w[0].weight != w[1].weight);
        let weighted = uneven.then(|| Weighted::new(&live.iter().map(|e| e.weight).collect::<Vec<_>>()));
        let maglev = hashed.then(|| Maglev::new(&live.iter().map(|e| &*e.id).collect::<Vec<_>>()));
        Service { name, endpoints, live, state, weighted, maglev }
    }

    /// The endpoint for a new request, or `None` when no endpoint is live.
    pub fn pick(&self, how: Pick) -> Option<&Arc<Endpoint>> {
        let index = match (how, &self.weighted, &self.maglev) {
            (Pick::Weighted, Some(w), _) => w.pick(&self.state.weighted),
            (Pick::LeastRequest, _, _) => balance::least_request::pick(self.live.len(), |i| self.live[i].load.get()),
            (Pick::Hash(key), _, Some(m)) => m.pick(key),
            _ => balance::round_robin::pick(&self.state.round_robin, self.live.len()),
        };
        self.live.get(index?)
    }
}
