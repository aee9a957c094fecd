//! Upstreams: the immutable table the data path reads (`table`), the control-side
//! registry that applies discovery updates and builds each new table
//! (`registry`), the task that swaps it in (`writer`), the pure pickers
//! (`balance`), per-service metric handles (`stats`) and the connections to
//! instances (`conn`).

pub mod balance;
pub(crate) mod conn;
pub mod endpoint;
pub mod registry;
pub(crate) mod stats;
pub mod table;
pub mod writer;

pub use endpoint::{Endpoint, Protocol, Status};
pub use table::{Pick, Service, SharedTable, Table};
