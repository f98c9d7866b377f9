//! Simulated sensors: publish readings over real MQTT (rumqttc) for demos and tests.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct SimulateOptions {
    pub host: String,
    pub port: u16,
    pub devices: Vec<String>,
    pub metrics: Vec<String>,
    pub interval: Duration,
    /// Stop after this many rounds (one reading per series per round); None = forever.
    pub rounds: Option<u64>,
    pub seed: u64,
    /// Every this many rounds one series reads a spike (the walk itself is unchanged).
    pub spike_every: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("mqtt broker {0} unreachable: {1}")]
    Connect(String, String),
    #[error("mqtt publish failed: {0}")]
    Publish(String),
}

/// Publishes a random walk per series as `{"value": v, "ts": ms}` with QoS 1, plus a
/// one-reading spike on one series every `spike_every` rounds.
/// Returns the number of readings published.
pub async fn run(opts: SimulateOptions, shutdown: CancellationToken) -> Result<u64, SimulateError> {
    let mut mqtt = MqttOptions::new(
        format!("fieldline-sim-{}", opts.seed),
        &opts.host,
        opts.port,
    );
    mqtt.set_keep_alive(Duration::from_secs(10));
    let (client, mut eventloop) = AsyncClient::new(mqtt, 1024);
    let addr = format!("{}:{}", opts.host, opts.port);

    // Wait for CONNACK so a wrong address is one clear error.
    loop {
        match tokio::time::timeout(Duration::from_secs(5), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => break,
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => return Err(SimulateError::Connect(addr, e.to_string())),
            Err(_) => return Err(SimulateError::Connect(addr, "no answer within 5s".into())),
        }
    }
    let stop_loop = CancellationToken::new();
    let loop_guard = stop_loop.clone();
    let poller = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = loop_guard.cancelled() => return,
                ev = eventloop.poll() => if let Err(e) = ev {
                    tracing::warn!(error = %e, "simulator connection lost; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });

    let mut rng = fastrand::Rng::with_seed(opts.seed);
    let mut values: Vec<f64> = vec![20.0; opts.devices.len() * opts.metrics.len()];
    let mut published = 0u64;
    let mut round = 0u64;
    let mut tick = tokio::time::interval(opts.interval);
    let result = loop {
        if opts.rounds.is_some_and(|r| round >= r) {
            break Ok(published);
        }
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(published),
            _ = tick.tick() => {}
        }
        let ts = fieldline_common::now_ms();
        let series = values.len();
        let spike = opts
            .spike_every
            .filter(|n| round > 0 && round.is_multiple_of(*n))
            .map(|_| rng.usize(..series));
        let mut failed = None;
        for (i, (device, metric)) in opts
            .devices
            .iter()
            .flat_map(|d| opts.metrics.iter().map(move |m| (d, m)))
            .enumerate()
        {
            values[i] += rng.f64() - 0.5;
            let value = values[i] + if spike == Some(i) { 25.0 } else { 0.0 };
            let payload = format!(r#"{{"value": {value:.3}, "ts": {ts}}}"#);
            if let Err(e) = client
                .publish(
                    format!("sensors/{device}/{metric}"),
                    QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .await
            {
                failed = Some(e);
                break;
            }
            published += 1;
        }
        if let Some(e) = failed {
            break Err(SimulateError::Publish(e.to_string()));
        }
        round += 1;
    };
    // Give queued QoS 1 publishes a moment to leave before disconnecting.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = client.disconnect().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop_loop.cancel();
    let _ = poller.await;
    result
}
