//! The Fieldline fleet server.
//!
//! # Layout
//! - [`server`]: binds, serves and shuts down; [`server::FleetConfig`] is the validated config.
//! - [`api`]: HTTP routes: agent endpoints (CBOR), admin endpoints (JSON), health, metrics.
//! - [`store`]: the store contract ([`store::Store`]) and its two implementations:
//!   Redis (idempotent ingest in one Lua script, key layout; the only module that
//!   imports redis) and the embedded sled store (the only module that imports sled).
//! - [`configs`]: desired agent configs (per agent, per label group), generations,
//!   history, staged rollouts, reports and drift; store-independent.
//! - [`auth`]: agent credentials, bootstrap and admin tokens (hashed, constant-time).
//! - [`tls`]: rustls (ring) listener with bounded, timed handshakes; the dev CA.
//! - [`metrics`]: counters rendered in the Prometheus text format.
//! - [`ui`]: the operator web UI (embedded assets, login sessions with CSRF tokens,
//!   live events over SSE), a client of the admin API.
//! - [`demo`]: the one-command demo (private redis-server, agents, simulators).

pub mod api;
pub mod auth;
pub mod configs;
pub mod demo;
pub mod metrics;
pub mod server;
pub mod store;
pub mod tls;
pub mod ui;
