//! Upstreams: the immutable table the data path reads (`table`), the control-side
//! registry that applies discovery updates and builds each new table
//! (`registry`), the task that swaps it in (`writer`), and the pure pickers
//! (`balance`).

pub mod balance;
pub mod endpoint;
pub mod registry;
pub mod table;
pub mod writer;

pub use endpoint::{Endpoint, Protocol, Status};
pub use table::{Pick, Service, SharedTable, Table};
