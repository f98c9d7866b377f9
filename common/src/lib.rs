//! Types and codecs shared by the Fieldline agent and fleet server.
//!
//! # Layout
//! - [`wire`]: records, batches and heartbeats exchanged between agent and fleet.
//! - [`aggregates`]: the named aggregates of a window result, encoded as a map.
//! - [`codec`]: the only place that touches CBOR (serde_cbor is unmaintained, so it
//!   stays behind this one module).
//! - [`payload`]: decoding of sensor payloads (JSON, CBOR, SenML, bare number).
//! - [`senml`]: SenML (RFC 8428) packs in JSON and CBOR, resolved.
//! - [`topic`]: topic templates such as `sensors/{device}/{metric}`.
//! - [`config`]: the agent configuration schema, validation that reports every problem,
//!   and `FIELDLINE_*` environment overrides.
//! - [`civil`]: calendar arithmetic for timestamp parsing.
//! - [`duration`]: human durations (`"10s"`, `"1m"`) for config files.
//!
//! **Boundary**: this crate does no IO beyond reading a config file and has no tokio,
//! sled, redis or axum dependency, so both binaries and future tools can share it.

pub mod aggregates;
pub mod civil;
pub mod codec;
pub mod config;
pub mod duration;
pub mod payload;
pub mod senml;
pub mod topic;
pub mod wire;

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
