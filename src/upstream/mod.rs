//! Upstreams: the immutable table the data path reads (`table`, with the
//! candidates iterator and the `observe` hook), the control-side registry that
//! applies discovery updates and builds each new table (`registry`), the task that
//! swaps it in (`writer`), the pure pickers (`balance`), per-instance state that
//! survives swaps (`instance`: `outlier` ejection, `health` checks, slow start,
//! admission; `load`: requests in flight and the `max_inflight` permits), per-service metric handles (`stats`) and the connections to
//! instances (`conn`).

pub(crate) mod balance;
pub mod conn;
pub(crate) mod endpoint;
pub(crate) mod health;
pub(crate) mod instance;
pub(crate) mod load;
pub(crate) mod outlier;
pub(crate) mod registry;
pub(crate) mod stats;
pub(crate) mod table;
pub(crate) mod writer;

pub(crate) use conn::Protocol;
pub(crate) use endpoint::{Endpoint, Status};
pub(crate) use table::{Pick, Service};
pub use table::{SharedTable, Table};
