//! Publishes records on the agent's own MQTT broker: window results of `mqtt:` sinks and
//! anomaly alerts (QoS 1), so local actuators can react while the fleet is unreachable.
//!
//! rumqttd's local link publishes at QoS 0 only (STYLE.md, rumqttd quirks), so this is a
//! rumqttc client connected to the agent's own listener over loopback: its publishes are
//! QoS 1 and a QoS 1 subscriber gets them at QoS 1.
//!
//! **Never blocks ingest**: [`LocalPublisher::publish`] only queues (`try_publish` into
//! rumqttc's bounded request channel, [`QUEUE`] messages); when the queue is full the
//! message is dropped and counted (`local_dropped`). **Delivery**: at most once across an
//! agent crash (the queue is in memory; alerts are also in the outbox for the fleet), at
//! least once to a connected QoS 1 subscriber while the agent runs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, EventLoop, MqttOptions, QoS};
use tokio_util::sync::CancellationToken;

use crate::counters::Counters;
use crate::pipeline::LocalMessage;

/// Messages waiting for the local broker before new ones are dropped.
pub const QUEUE: usize = 4096;
/// Wait between reconnect attempts (the broker is in-process: it is back soon or never).
const RECONNECT: Duration = Duration::from_millis(500);

#[derive(Clone)]
pub struct LocalPublisher {
    client: AsyncClient,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for LocalPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalPublisher")
    }
}

impl LocalPublisher {
    /// A publisher for the broker listening on `listen`; drive the returned event loop
    /// with [`run`] once the broker accepts connections.
    pub fn new(
        listen: SocketAddr,
        agent_id: &str,
        max_payload_bytes: usize,
        counters: Arc<Counters>,
    ) -> (Self, EventLoop) {
        let host = match listen.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let mut opts = MqttOptions::new(
            format!("fieldline-local-{agent_id}"),
            host.to_string(),
            listen.port(),
        );
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(max_payload_bytes + 1024, max_payload_bytes + 1024);
        let (client, eventloop) = AsyncClient::new(opts, QUEUE);
        (Self { client, counters }, eventloop)
    }

    /// Queues one message (QoS 1); drops and counts it when the queue is full.
    pub fn publish(&self, msg: LocalMessage) {
        match self
            .client
            .try_publish(msg.topic, QoS::AtLeastOnce, false, msg.payload)
        {
            Ok(()) => self.counters.inc(&self.counters.local_published),
            Err(_) => self.counters.inc(&self.counters.local_dropped),
        }
    }
}

/// Drives the client until `shutdown`, reconnecting after errors.
pub async fn run(mut eventloop: EventLoop, shutdown: CancellationToken) {
    let mut connected = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = eventloop.poll() => match ev {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    tracing::debug!("local publisher connected to the embedded broker");
                    connected = true;
                }
                Ok(_) => {}
                Err(e) => {
                    if connected {
                        tracing::warn!(error = %e, "local publisher lost the embedded broker; reconnecting");
                    }
                    connected = false;
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(RECONNECT) => {}
                    }
                }
            }
        }
    }
}
