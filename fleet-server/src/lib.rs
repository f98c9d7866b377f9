//! The Fieldline fleet server.
//!
//! # Layout
//! - [`server`]: binds, serves and shuts down; [`server::FleetConfig`] is the validated config.
//! - [`api`]: HTTP routes: agent endpoints (CBOR), admin endpoints (JSON), health, metrics.
//! - [`store`]: Redis: idempotent ingest (one Lua script), registry, key layout
//!   (the only module that imports redis).
//! - [`metrics`]: counters rendered in the Prometheus text format.
//! - [`demo`]: the one-command demo (private redis-server, agents, simulators).

pub mod api;
pub mod demo;
pub mod metrics;
pub mod server;
pub mod store;
