//! switchyard: a server-side-discovery gateway. Discovery sources report
//! instances, one writer turns them into immutable upstream tables swapped
//! through `ArcSwap`, and the proxies read the current table once per request.

pub mod admin;
pub mod config;
pub mod demo;
pub mod discovery;
pub mod etcd_client;
pub mod metrics;
pub mod proxy;
pub mod register;
pub mod server;
pub mod upstream;
