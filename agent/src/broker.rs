//! The embedded MQTT broker. **Boundary**: the only module that imports rumqttd.
//!
//! rumqttd 0.20 has no shutdown API and does not report the port it bound, so we
//! check the address ourselves before starting it, run `Broker::start` (which
//! blocks) on its own thread, and let the broker live as long as the process.
//! Messages reach the agent through a local link subscribed to the configured
//! filters; the link must answer `Unschedule` with `ready()` or the router pauses it.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread;

use rumqttd::local::LinkRx;
use rumqttd::{Config, ConnectionSettings, Notification, RouterConfig, ServerSettings};
use tokio::sync::mpsc;

use crate::counters::Counters;

/// One MQTT publish as received by the broker.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub arrival_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen for mqtt on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot attach to the embedded broker: {0}")]
    Link(String),
    #[error("cannot start the broker thread: {0}")]
    Thread(std::io::Error),
}

pub struct BrokerSettings {
    pub listen: SocketAddr,
    pub filters: Vec<String>,
    pub max_payload_bytes: usize,
    pub max_connections: usize,
    /// Payload bytes rumqttd retains for the local link (see `mqtt.broker_buffer_bytes`).
    pub buffer_bytes: usize,
}

/// Handle to the running broker.
pub struct EmbeddedBroker {
    /// Publishes from sensors, in the order the router forwarded them.
    pub messages: mpsc::Receiver<Message>,
    /// Resolves when the broker stops, which only happens when its listener failed.
    pub stopped: tokio::sync::oneshot::Receiver<String>,
}

/// Capacity of the link → pipeline channel; when full the link thread blocks and
/// rumqttd buffers in its own segments.
const CHANNEL_CAPACITY: usize = 16_384;

pub fn start(
    settings: BrokerSettings,
    counters: Arc<Counters>,
) -> Result<EmbeddedBroker, BrokerError> {
    // rumqttd binds on its own thread and only logs a failure; binding here first
    // turns "port in use" into an error the operator sees.
    TcpListener::bind(settings.listen).map_err(|source| BrokerError::Bind {
        addr: settings.listen,
        source,
    })?;

    let mut broker = rumqttd::Broker::new(config(&settings));
    let (mut link_tx, link_rx) = broker
        .link("fieldline-pipeline")
        .map_err(|e| BrokerError::Link(e.to_string()))?;
    for filter in &settings.filters {
        link_tx
            .subscribe(filter.clone())
            .map_err(|e| BrokerError::Link(e.to_string()))?;
    }

    let (stop_tx, stopped) = tokio::sync::oneshot::channel();
    let listen = settings.listen;
    thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let why = match broker.start() {
                Ok(()) => format!("mqtt listener on {listen} stopped"),
                Err(e) => format!("mqtt broker failed: {e}"),
            };
            let _ = stop_tx.send(why);
        })
        .map_err(BrokerError::Thread)?;

    let (tx, messages) = mpsc::channel(CHANNEL_CAPACITY);
    thread::Builder::new()
        .name("mqtt-link".into())
        .spawn(move || {
            // Keep the sender side alive for the life of the link.
            let _link_tx = link_tx;
            forward(link_rx, tx, counters);
        })
        .map_err(BrokerError::Thread)?;

    Ok(EmbeddedBroker { messages, stopped })
}

fn forward(mut rx: LinkRx, tx: mpsc::Sender<Message>, counters: Arc<Counters>) {
    loop {
        let notification = match rx.recv() {
            Ok(Some(n)) => n,
            Ok(None) => continue,
            Err(e) => {
                tracing::error!(error = %e, "mqtt link closed");
                return;
            }
        };
        match notification {
            Notification::Forward(forward) => {
                counters.inc(&counters.messages_received);
                let msg = Message {
                    topic: String::from_utf8_lossy(&forward.publish.topic).into_owned(),
                    payload: forward.publish.payload.to_vec(),
                    arrival_ms: fieldline_common::now_ms(),
                };
                if tx.blocking_send(msg).is_err() {
                    // The pipeline has shut down; nothing more to deliver.
                    return;
                }
            }
            Notification::Unschedule => {
                if let Err(e) = rx.ready() {
                    tracing::error!(error = %e, "mqtt link cannot resume");
                    return;
                }
            }
            _ => {}
        }
    }
}

fn config(s: &BrokerSettings) -> Config {
    let server = ServerSettings {
        name: "sensors-v4".into(),
        listen: s.listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: s.max_payload_bytes,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            // Without this, a sensor publishing to a topic nobody subscribes to is disconnected.
            dynamic_filters: true,
        },
    };
    Config {
        id: 0,
        router: RouterConfig {
            // + the pipeline's local link and the local publisher (`local.rs`).
            max_connections: s.max_connections + 2,
            max_outgoing_packet_count: 200,
            // The pipeline's link reads one log (its wildcard filter): `buffer_bytes`
            // of payload in 4 segments, the oldest dropped as a whole. Measured RSS
            // at 10k msg/s is dominated by this (docs/BENCHMARKS.md).
            max_segment_size: (s.buffer_bytes / 4).max(16 * 1024),
            max_segment_count: 3,
            ..Default::default()
        },
        v4: Some(HashMap::from([("sensors".to_string(), server)])),
        ..Default::default()
    }
}
