//! The Fieldline edge agent.
//!
//! # Layout
//! - [`broker`]: the embedded rumqttd broker and the local link that feeds the pipeline
//!   (the only module that imports rumqttd).
//! - [`pipeline`]: decode, then every configured pipeline side by side (pure, no IO).
//! - [`engine`]: the stream engine: fluent API, windows, watermarks, aggregates,
//!   late data, quantile sketch (pure, no IO).
//! - [`replay`]: offline replay of recorded messages through the pipelines.
//! - [`local`]: publishes `mqtt:` sink results and alerts on the agent's own broker
//!   (QoS 1, bounded queue, never blocks ingest).
//! - [`ingest`]: the processing loop: decode → ingest log → pipeline → outbox;
//!   checkpoints and crash recovery (restore + replay).
//! - [`state`]: the agent's one sled database: ingest log, checkpoints, keyed state
//!   with TTL, the on-disk record format, `state check` / `state repair`.
//! - [`outbox`]: the seq-numbered, bounded outbox (with [`state`], the only modules
//!   that touch sled).
//! - [`enroll`]: trades a bootstrap token for the agent credential (`enroll` command).
//! - [`reconcile`]: fleet config: long poll, validate, persist, apply (restart), fall back.
//! - [`uplink`]: drains the outbox to the fleet in CBOR batches; heartbeats.
//! - [`run`]: wiring, lifecycle and graceful shutdown.
//! - [`simulate`]: simulated sensors publishing over MQTT (demo and tests).
//! - [`counters`]: process-wide counters reported in heartbeats.

pub mod broker;
pub mod counters;
pub mod detect;
pub mod engine;
pub mod enroll;
pub mod ingest;
pub mod local;
pub mod outbox;
pub mod pipeline;
pub mod reconcile;
pub mod replay;
pub mod run;
pub mod simulate;
pub mod state;
pub mod uplink;

pub use run::run;
