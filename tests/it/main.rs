//! End-to-end tests across real processes: `redis-server`, `fieldline-fleet`,
//! `fieldline-agent`, Debian's `mosquitto_pub` and rumqttc. One test binary
//! (see `tests/Cargo.toml`), one module per area; [`harness`] starts and stops
//! everything on free loopback ports and shows process logs when a test fails.

mod alerts;
mod cli;
mod crash;
mod demo;
mod e2e;
mod engine;
mod firmware;
mod fleet_api;
mod fleet_config;
mod fleet_scale;
mod fleet_store;
mod fleet_tls;
mod harness;
mod ingest_api;
mod package;
mod state;
mod web_ui;
