//! The control side of the table: the current instances of every service, the
//! state that must survive swaps (cursors, in-flight counts, metric handles), and
//! the build of a new [`Table`] after an update. Only services an update touched
//! are rebuilt; the others are shared with the previous table.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use super::endpoint::{Endpoint, Status};
use super::instance::InstanceState;
use super::load::Load;
use super::table::{Held, Service, ServiceState, Table};
use crate::config::ServicePolicy;
use crate::discovery::{Change, Instance, Update};
use crate::upstream::conn::pool::InstancePool;

#[derive(Debug, Default)]
pub struct Registry {
    /// service → id → instance.
    instances: BTreeMap<String, BTreeMap<String, Instance>>,
    revision: u64,
    version: u64,
    states: HashMap<String, Arc<ServiceState>>,
    /// service → id → what outlives a table: the in-flight count and the
    /// connection pool (kept while the instance exists or has requests in flight).
    carried: HashMap<String, HashMap<String, Carried>>,
    /// Services that some route balances by hash: they get a Maglev table.
    hashed: HashSet<String>,
    services: HashMap<Arc<str>, Arc<Held>>,
    dirty: HashSet<String>,
    /// `[[service]]` policies; other services get the defaults.
    policies: HashMap<String, Arc<ServicePolicy>>,
    default_policy: Arc<ServicePolicy>,
}

#[derive(Debug)]
struct Carried {
    load: Arc<Load>,
    pool: Arc<InstancePool>,
    state: Arc<InstanceState>,
}

/// The result of a build: the table, the services that were rebuilt for it
/// (the others are shared with the previous table), and what to log.
pub struct Built {
    pub table: Table,
    pub rebuilt: Vec<Arc<Service>>,
    pub warnings: Vec<BuildWarning>,
}

/// A problem found while building, to be logged by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildWarning {
    pub service: String,
    pub id: String,
    pub message: String,
}

impl Registry {
    pub fn new(hashed: HashSet<String>) -> Registry {
        Registry { hashed, ..Registry::default() }
    }

    /// The per-service policies of `[[service]]`.
    pub fn with_policies(mut self, policies: HashMap<String, Arc<ServicePolicy>>) -> Registry {
        self.policies = policies;
        self
    }

    /// Applies one update; returns whether anything changed.
    pub fn apply(&mut self, update: Update) -> bool {
        let revision = match update {
            Update::Replace { instances, revision } => {
                let mut next: BTreeMap<String, BTreeMap<String, Instance>> = BTreeMap::new();
                for i in instances {
                    next.entry(i.service.clone()).or_default().insert(i.id.clone(), i);
                }
                // A service that lost every instance stays known (answering 503, not 404).
                for name in self.instances.keys() {
                    next.entry(name.clone()).or_default();
                }
                for (name, now) in &next {
                    if self.instances.get(name) != Some(now) {
                        self.dirty.insert(name.clone());
                    }
                }
                self.instances = next;
                revision
            }
            Update::Settings { hashed, policies } => {
                for name in self.instances.keys() {
                    let hashing = self.hashed.contains(name) != hashed.contains(name);
                    let policy = self.policies.get(name) != policies.get(name);
                    if hashing || policy {
                        self.dirty.insert(name.clone());
                    }
                }
                self.hashed = hashed;
                self.policies = policies;
                self.revision
            }
            Update::Apply { changes, revision } => {
                for change in changes {
                    match change {
                        Change::Put(i) => {
                            let service = self.instances.entry(i.service.clone()).or_default();
                            if service.get(&i.id) != Some(&i) {
                                self.dirty.insert(i.service.clone());
                                service.insert(i.id.clone(), i);
                            }
                        }
                        Change::Delete { service, id } => {
                            if let Some(s) = self.instances.get_mut(&service) {
                                if s.remove(&id).is_some() {
                                    self.dirty.insert(service);
                                }
                            }
                        }
                    }
                }
                revision
            }
        };
        self.revision = self.revision.max(revision);
        !self.dirty.is_empty()
    }

    /// Builds the next table from the current instances.
    pub fn build(&mut self) -> Built {
        let mut warnings = Vec::new();
        let mut rebuilt = Vec::with_capacity(self.dirty.len());
        for name in std::mem::take(&mut self.dirty) {
            let service = Arc::new(self.build_service(&name, &mut warnings));
            self.services.insert(service.name.clone(), Arc::new(Held::new(service.clone())));
            rebuilt.push(service);
        }
        self.version += 1;
        let table = Table { version: self.version, revision: self.revision, services: self.services.clone() };
        Built { table, rebuilt, warnings }
    }

    fn build_service(&mut self, name: &str, warnings: &mut Vec<BuildWarning>) -> Service {
        let empty = BTreeMap::new();
        let instances = self.instances.get(name).unwrap_or(&empty);
        // Instances that join a service that already served ramp up (slow start); the
        // first table's instances take their full share at once.
        let ramp = self.services.contains_key(name);
        let carried = self.carried.entry(name.to_string()).or_default();
        carried.retain(|id, c| {
            let keep = instances.contains_key(id);
            if !keep {
                // Removed: in-flight requests finish on their connections; idle ones close now.
                c.pool.retire(true);
            }
            keep || c.load.get() > 0
        });
        let mut endpoints = Vec::with_capacity(instances.len());
        for (id, instance) in instances {
            let c = carried.entry(id.clone()).or_insert_with(|| Carried {
                load: Arc::default(),
                pool: Arc::new(InstancePool::new(&instance.addr)),
                state: Arc::new(InstanceState::new(ramp)),
            });
            // A new address for the same id: its old connections go to the wrong place,
            // and what was learnt about the old address says nothing about the new one.
            if c.pool.addr() != instance.addr {
                c.pool.retire(true);
                c.pool = Arc::new(InstancePool::new(&instance.addr));
                c.state = Arc::new(InstanceState::new(ramp));
            }
            match Endpoint::from_instance(instance, c.load.clone(), c.pool.clone(), c.state.clone()) {
                Ok((endpoint, problems)) => {
                    for p in problems {
                        warnings.push(BuildWarning {
                            service: name.to_string(),
                            id: id.clone(),
                            message: format!("metadata {}={:?} ignored", p.key, p.value),
                        });
                    }
                    // Draining or down: no new requests, so no use for idle connections.
                    endpoint.pool.retire(endpoint.status != Status::Up);
                    endpoints.push(Arc::new(endpoint));
                }
                Err(message) => warnings.push(BuildWarning { service: name.to_string(), id: id.clone(), message }),
            }
        }
        let state = self.states.entry(name.to_string()).or_insert_with(|| Arc::new(ServiceState::new(name))).clone();
        let policy = self.policies.get(name).unwrap_or(&self.default_policy).clone();
        Service::new(name.into(), endpoints, state, policy, self.hashed.contains(name))
    }
}

#[cfg(test)]
mod hashed_tests {
    use super::*;

    #[test]
    fn a_service_whose_settings_change_is_rebuilt() {
        let mut r = Registry::new(HashSet::new());
        let i =
            Instance { service: "a".into(), id: "1".into(), addr: "127.0.0.1:1".into(), metadata: Default::default() };
        r.apply(Update::Replace { instances: vec![i], revision: 1 });
        r.build();
        let settings = |hashed: &[&str], policies: &[(&str, ServicePolicy)]| Update::Settings {
            hashed: hashed.iter().map(|s| s.to_string()).collect(),
            policies: policies.iter().map(|(n, p)| (n.to_string(), Arc::new(p.clone()))).collect(),
        };
        assert!(!r.apply(settings(&[], &[])), "no change, no rebuild");
        assert!(r.apply(settings(&["a", "unknown"], &[])));
        let built = r.build();
        assert_eq!(built.rebuilt.len(), 1);
        assert_eq!(built.table.revision, 1);
        let mut policy = ServicePolicy::default();
        policy.limits.max_connections = 7;
        assert!(r.apply(settings(&["a"], &[("a", policy)])), "a new policy rebuilds the service");
        assert_eq!(r.build().rebuilt[0].policy.limits.max_connections, 7);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::table::Pick;

    /// A registry of one service, "a", with instances 1, 2 and 3.
    fn registry_of_three() -> Registry {
        let mut r = Registry::default();
        r.apply(Update::Replace {
            instances: vec![inst("a", "1", 1), inst("a", "2", 2), inst("a", "3", 3)],
            revision: 1,
        });
        r
    }

    fn inst(service: &str, id: &str, port: u16) -> Instance {
        Instance {
            service: service.into(),
            id: id.into(),
            addr: format!("127.0.0.1:{port}"),
            metadata: Default::default(),
        }
    }

    fn ids(table: &Table, service: &str) -> Vec<String> {
        table.service(service).map(|s| s.endpoints.iter().map(|e| e.id.to_string()).collect()).unwrap_or_default()
    }

    #[test]
    fn replace_then_apply() {
        let mut r = Registry::default();
        assert!(r.apply(Update::Replace {
            instances: vec![inst("a", "1", 1), inst("a", "2", 2), inst("b", "1", 3)],
            revision: 5
        }));
        let Built { table: t, warnings: w, .. } = r.build();
        assert!(w.is_empty());
        assert_eq!((t.version, t.revision), (1, 5));
        assert_eq!(ids(&t, "a"), ["1", "2"]);
        r.apply(Update::Apply {
            changes: vec![Change::Delete { service: "a".into(), id: "1".into() }, Change::Put(inst("a", "3", 4))],
            revision: 6,
        });
        let t2 = r.build().table;
        assert_eq!(ids(&t2, "a"), ["2", "3"]);
        // Untouched services are shared, not rebuilt.
        assert!(Arc::ptr_eq(t.service("b").unwrap(), t2.service("b").unwrap()));
    }

    #[test]
    fn replace_removes_ghosts_and_keeps_empty_services_known() {
        let mut r = Registry::default();
        r.apply(Update::Replace { instances: vec![inst("a", "1", 1), inst("b", "1", 2)], revision: 1 });
        r.build();
        r.apply(Update::Replace { instances: vec![inst("a", "2", 3)], revision: 9 });
        let t = r.build().table;
        assert_eq!(ids(&t, "a"), ["2"]);
        assert!(t.service("b").unwrap().endpoints.is_empty());
        assert!(t.service("b").unwrap().pick(Pick::RoundRobin).is_none());
    }

    #[test]
    fn unchanged_update_reports_no_change() {
        let mut r = Registry::default();
        r.apply(Update::Replace { instances: vec![inst("a", "1", 1)], revision: 1 });
        r.build();
        assert!(!r.apply(Update::Replace { instances: vec![inst("a", "1", 1)], revision: 2 }));
        assert!(!r.apply(Update::Apply {
            changes: vec![Change::Delete { service: "x".into(), id: "y".into() }],
            revision: 3
        }));
    }

    #[test]
    fn cursor_survives_swaps() {
        let mut r = Registry::default();
        r.apply(Update::Replace { instances: vec![inst("a", "1", 1), inst("a", "2", 2)], revision: 1 });
        let t = r.build().table;
        // This thread's cursor starts at its shard: instance `shard % 2` of two.
        let shard = crate::shard::index();
        let first = t.service("a").unwrap().pick(Pick::RoundRobin).unwrap().id.clone();
        assert_eq!(&*first, ["1", "2"][shard % 2]);
        r.apply(Update::Apply { changes: vec![Change::Put(inst("a", "3", 3))], revision: 2 });
        let t = r.build().table;
        let second = t.service("a").unwrap().pick(Pick::RoundRobin).unwrap().id.clone();
        // The same cursor goes on (one further) over three; a fresh one would pick `shard % 3`.
        assert_eq!(&*second, ["1", "2", "3"][(shard + 1) % 3]);
    }

    #[test]
    fn each_core_rotates_on_its_own_from_its_own_start() {
        let mut r = registry_of_three();
        let t = r.build().table;
        let s = t.service("a").unwrap();
        let position = |e: &Arc<Endpoint>| s.live.iter().position(|l| Arc::ptr_eq(l, e)).unwrap();
        // Threads one after another (each may take a shard of its own or share one).
        let mut started: HashMap<usize, usize> = HashMap::new();
        for _ in 0..crate::shard::count() + 1 {
            let (shard, picks) = std::thread::scope(|scope| {
                scope
                    .spawn(|| {
                        let picks: Vec<usize> = (0..7).map(|_| position(s.pick(Pick::RoundRobin).unwrap())).collect();
                        (crate::shard::index(), picks)
                    })
                    .join()
                    .unwrap()
            });
            for w in picks.windows(2) {
                assert_eq!(w[1], (w[0] + 1) % 3, "a core's picks rotate exactly: {picks:?}");
            }
            // A shard's first pick is instance `shard` (so cores do not all start on the
            // first one); a thread that shares a shard goes on from where it stopped.
            let expected = started.get(&shard).map_or(shard % 3, |&last| (last + 1) % 3);
            assert_eq!(picks[0], expected, "shard {shard}: {picks:?}");
            started.insert(shard, picks[6]);
        }
        assert_eq!(s.state.local.made().count(), started.len(), "one cursor per shard that picked");
    }

    #[test]
    fn requests_hold_their_cores_reference_and_keep_a_retired_service() {
        let mut r = Registry::default();
        r.apply(Update::Replace { instances: vec![inst("a", "1", 1)], revision: 1 });
        let t = r.build().table;
        let held = t.held("a").unwrap();
        let weak = Arc::downgrade(&held.service);
        let first = held.local();
        let requests: Vec<_> = (0..10).map(|_| held.local()).collect();
        assert!(requests.iter().all(|p| Arc::ptr_eq(p, &first)), "one reference per core");
        // The held service and this core's reference: ten requests did not touch its count.
        assert_eq!(Arc::strong_count(&held.service), 2);
        assert_eq!(Arc::strong_count(&first), 12, "the core's reference counts the requests");
        // The service is rebuilt and every table dropped: the requests still hold it.
        r.apply(Update::Replace { instances: vec![inst("a", "2", 2)], revision: 2 });
        drop((t, r.build()));
        drop(r);
        assert_eq!(&*first.live[0].id, "1", "a request keeps the service it started with");
        drop(requests);
        drop(first);
        assert!(weak.upgrade().is_none(), "freed with its last request");
    }

    #[test]
    fn draining_and_down_are_not_picked() {
        let mut r = Registry::default();
        let mut d = inst("a", "d", 1);
        d.metadata.insert("status".into(), "draining".into());
        let mut x = inst("a", "x", 2);
        x.metadata.insert("status".into(), "down".into());
        r.apply(Update::Replace { instances: vec![d, x, inst("a", "u", 3)], revision: 1 });
        let t = r.build().table;
        let s = t.service("a").unwrap();
        assert_eq!(s.endpoints.len(), 3);
        for _ in 0..10 {
            assert_eq!(&*s.pick(Pick::LeastRequest).unwrap().id, "u");
        }
    }

    #[test]
    fn ejected_instances_are_skipped_and_all_ejected_means_panic() {
        use crate::upstream::instance::now_ms;
        use crate::upstream::outlier::Outcome;
        let mut r = registry_of_three();
        let t = r.build().table;
        let s = t.service("a").unwrap();
        s.observe(&s.live[0], Outcome::ConnectFailure);
        let now = now_ms();
        for _ in 0..6 {
            let c: Vec<&str> = s.candidates(Pick::RoundRobin, now).map(|e| &*e.id).collect();
            assert_eq!(c.len(), 2, "{c:?}");
            assert!(!c.contains(&"1"));
        }
        // At most half of three may be out: a second connect failure does not eject.
        s.observe(&s.live[1], Outcome::ConnectFailure);
        assert!(!s.live[1].state.outlier.is_ejected(now_ms()));
        // Ejection state survives a table swap.
        r.apply(Update::Apply { changes: vec![Change::Put(inst("a", "4", 4))], revision: 2 });
        let t2 = r.build().table;
        let s2 = t2.service("a").unwrap();
        assert!(s2.live[0].state.outlier.is_ejected(now_ms()));
        // Every instance out for health: panic mode routes to all, each once.
        let mut r = Registry::default();
        r.apply(Update::Replace { instances: vec![inst("p", "1", 1), inst("p", "2", 2)], revision: 1 });
        let t = r.build().table;
        let s = t.service("p").unwrap();
        let policy = crate::config::OutlierPolicy::default();
        for e in &s.live {
            e.state.outlier.record(Outcome::ConnectFailure, now_ms, &policy, |_| true);
        }
        let mut c = s.candidates(Pick::RoundRobin, now_ms());
        let ids: Vec<&str> = c.by_ref().map(|e| &*e.id).collect();
        assert_eq!(ids.len(), 2);
        assert!(c.panicked());
    }
}
