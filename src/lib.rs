//! switchyard: a server-side-discovery gateway. Discovery sources report
//! instances, one writer turns them into immutable upstream tables swapped
//! through `ArcSwap`, and the listeners read the current table once per request.
//!
//! Layers, each importing only those below it:
//! `server` → `listener` → `http` → `upstream` → `discovery` → `config`.

#![forbid(unsafe_code)]

mod admin;
pub mod config;
pub mod demo;
pub mod discovery;
mod http;
mod listener;
pub mod logging;
pub mod metrics;
pub mod register;
pub mod server;
pub mod shard;
pub mod upstream;
