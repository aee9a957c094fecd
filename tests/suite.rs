//! The integration suite: one test binary for every file in `tests/`.
//!
//! Each file is a module here rather than a binary of its own, so the suite links once
//! instead of once per file (each binary carried the whole crate and its dependencies,
//! and they dominated the build's disk use and link time). `.ci/run` still runs each
//! file in a process of its own: `cargo test --test suite <file>::`, e.g.
//! `cargo test --test suite etcd_outage::` (a filter is a substring: `process::` also
//! takes `hardening_process::`; `.ci/run` passes exact names). `layout.rs` checks that
//! every file is here.

mod support;

mod balancing;
mod dashboard;
mod deploy;
mod docs;
mod etcd_discovery;
mod etcd_keepalive;
mod etcd_outage;
mod etcd_register;
mod etcd_security;
mod grpc;
mod h1_server;
mod hardening;
mod hardening_process;
mod hardening_requests;
mod https;
mod layout;
mod logs;
mod passthrough;
mod process;
mod prometheus;
mod promises;
mod proxy;
mod register_cli;
mod reload;
mod reload_config;
mod resilience;
mod restart;
mod status_page;
mod tcp;
mod upstream_h1;
mod upstream_h2;
mod upstream_tls;
mod websocket;
