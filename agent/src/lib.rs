//! The Fieldline edge agent.
//!
//! # Layout
//! - [`broker`]: the embedded rumqttd broker and the local link that feeds the pipeline
//!   (the only module that imports rumqttd).
//! - [`pipeline`]: decode → window → outbox, run as one task.
//! - [`window`]: tumbling event-time windows and the watermark (pure, no IO).
//! - [`outbox`]: the sled-backed, seq-numbered outbox (the only module that touches sled).
//! - [`uplink`]: drains the outbox to the fleet in CBOR batches; heartbeats.
//! - [`run`]: wiring, lifecycle and graceful shutdown.
//! - [`simulate`]: simulated sensors publishing over MQTT (demo and tests).
//! - [`counters`]: process-wide counters reported in heartbeats.

pub mod broker;
pub mod counters;
pub mod outbox;
pub mod pipeline;
pub mod run;
pub mod simulate;
pub mod uplink;
pub mod window;

pub use run::run;
