//! Discovery: sources that report instance changes. A source never touches the
//! upstream table; it sends [`Update`]s on a channel and the table writer
//! (`upstream::writer`) applies each one as a batch and swaps in a new table.

pub(crate) mod etcd;
pub(crate) mod events;
pub mod file;
pub(crate) mod instance;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::ServicePolicy;
pub use instance::{decode, DecodeError, Instance};

/// What a source reports. Each update becomes exactly one new table.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// The complete set of instances at `revision`: anything not listed is gone.
    Replace { instances: Vec<Instance>, revision: u64 },
    /// Changes in order, applied together.
    Apply { changes: Vec<Change>, revision: u64 },
    /// Not from a source but from a config reload: the services that some route
    /// balances by hash (they get a consistent-hash table), and the `[[service]]`
    /// policies, are now these.
    Settings { hashed: HashSet<String>, policies: HashMap<String, Arc<ServicePolicy>> },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Adds the instance, or replaces the one with the same service and id.
    Put(Instance),
    /// Removes one instance; unknown ones are ignored.
    Delete { service: String, id: String },
}

/// A discovery source. `run` owns the source until `shutdown` is cancelled; it
/// logs and retries its own errors and returns only on shutdown (or when the
/// receiving side is gone).
pub trait Source: Send + 'static {
    fn run(self, updates: mpsc::Sender<Update>, shutdown: CancellationToken) -> impl Future<Output = ()> + Send;
}
