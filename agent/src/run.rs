//! Wires the agent together and owns its lifecycle.
//!
//! Start-up order: open the state store, restore the latest checkpoint and replay
//! the ingest-log tail ([`crate::ingest::Processor::open`]), then start the broker.
//!
//! Shutdown order (one [`CancellationToken`] reaches every task): intake stops
//! first (the ingest loop finishes its batch and takes a checkpoint), the uplink
//! finishes its in-flight batch, then sled is flushed. A deadline bounds the whole
//! sequence.

use std::sync::Arc;
use std::time::Duration;

use fieldline_common::config::AgentConfig;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::broker::{self, BrokerSettings};
use crate::counters::Counters;
use crate::ingest::{self, IngestSettings, Processor};
use crate::local::{self, LocalPublisher};
use crate::outbox::{self, Outbox};
use crate::pipeline::Pipeline;
use crate::state::{Store, StoreOptions};
use crate::uplink;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot create data dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open state in {path}: {source}")]
    State {
        path: String,
        source: crate::ingest::IngestError,
    },
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    #[error(transparent)]
    Uplink(#[from] uplink::UplinkError),
    #[error("pipeline stopped: {0}")]
    Pipeline(crate::ingest::IngestError),
    #[error("{0}")]
    BrokerStopped(String),
}

const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(15);

pub async fn run(cfg: AgentConfig, shutdown: CancellationToken) -> Result<(), RunError> {
    let started_ms = fieldline_common::now_ms();
    let dir = &cfg.agent.data_dir;
    std::fs::create_dir_all(dir).map_err(|source| RunError::DataDir {
        path: dir.display().to_string(),
        source,
    })?;
    let counters = Arc::new(Counters::default());
    let state_err = |source: ingest::IngestError| RunError::State {
        path: dir.join("state").display().to_string(),
        source,
    };
    // One sled database per agent: ingest log, outbox, checkpoints, cursors.
    let store = Store::open(
        &dir.join("state"),
        &StoreOptions {
            cache_capacity_bytes: cfg.storage.cache_capacity_bytes,
            flush_every: Some(cfg.storage.flush_every),
        },
    )
    .map_err(|e| state_err(e.into()))?;
    let outbox = Arc::new(
        Outbox::open(
            &store,
            outbox::Bounds {
                max_bytes: cfg.outbox.max_bytes,
                max_age: cfg.outbox.max_age,
                on_full: cfg.outbox.on_full,
            },
        )
        .map_err(|e| state_err(e.into()))?,
    );
    // Recovery (restore the last checkpoint, replay the ingest-log tail) finishes
    // before the broker accepts the first sensor connection.
    let pipeline = Pipeline::from_config(&cfg, counters.clone());
    // Created before recovery so replayed alerts are queued; connected once the broker runs.
    let (publisher, local_loop) = LocalPublisher::new(
        cfg.mqtt.listen,
        &cfg.agent.id,
        cfg.mqtt.max_payload_bytes,
        counters.clone(),
    );
    let (processor, recovery) = Processor::open(
        pipeline,
        &store,
        outbox.clone(),
        counters.clone(),
        IngestSettings {
            durability: cfg.storage.durability,
            checkpoint_interval: cfg.storage.checkpoint_interval,
            forward_raw: cfg.outbox.forward_raw_readings,
            publisher: Some(publisher),
        },
    )
    .map_err(state_err)?;
    tracing::info!(
        checkpoint = ?recovery.checkpoint,
        replayed_entries = recovery.replayed_entries,
        replayed_readings = recovery.replayed_readings,
        records_recreated = recovery.records_recreated,
        corrupt_entries = recovery.corrupt_entries,
        "state recovered"
    );
    let client = uplink::Client::new(&cfg)?;

    let mut broker = broker::start(
        BrokerSettings {
            listen: cfg.mqtt.listen,
            filters: vec![cfg.mqtt.topic_template.filter()],
            max_payload_bytes: cfg.mqtt.max_payload_bytes,
            max_connections: cfg.mqtt.max_connections,
            buffer_bytes: cfg.mqtt.broker_buffer_bytes,
        },
        counters.clone(),
    )?;
    tracing::info!(
        agent = %cfg.agent.id,
        mqtt = %cfg.mqtt.listen,
        fleet = %cfg.uplink.fleet_url,
        backlog = outbox.len(),
        next_seq = outbox.last_seq() + 1,
        "agent running"
    );

    let wake = Arc::new(Notify::new());
    // Intake and uplink have their own tokens so intake can stop before the uplink.
    let stop_intake = CancellationToken::new();
    let stop_uplink = CancellationToken::new();
    let mut pipeline_task = tokio::spawn(ingest::run(
        processor,
        broker.messages,
        wake.clone(),
        stop_intake.clone(),
    ));
    let drain_task = tokio::spawn(uplink::run_drain(
        client.clone(),
        cfg.uplink.clone(),
        outbox.clone(),
        wake,
        stop_uplink.clone(),
    ));
    // Stopped with the uplink: after intake, so the last batch's alerts are queued.
    let local_task = tokio::spawn(local::run(local_loop, stop_uplink.clone()));
    let heartbeat_task = tokio::spawn(uplink::run_heartbeat(
        client,
        cfg.uplink.heartbeat_interval,
        outbox.clone(),
        counters,
        started_ms,
        stop_uplink.clone(),
    ));

    let mut result = Ok(());
    let mut pipeline_done = false;
    tokio::select! {
        _ = shutdown.cancelled() => tracing::info!("shutting down"),
        why = &mut broker.stopped => {
            result = Err(RunError::BrokerStopped(why.unwrap_or_else(|_| "mqtt broker stopped".into())));
        }
        r = &mut pipeline_task => {
            pipeline_done = true;
            if let Ok(Err(e)) = r {
                result = Err(RunError::Pipeline(e));
            }
        }
    }

    let finish = async {
        stop_intake.cancel();
        if !pipeline_done {
            if let Ok(Err(e)) = pipeline_task.await {
                tracing::error!(error = %e, "pipeline failed while stopping");
            }
        }
        stop_uplink.cancel();
        let _ = drain_task.await;
        let _ = heartbeat_task.await;
        let _ = local_task.await;
    };
    if tokio::time::timeout(SHUTDOWN_DEADLINE, finish)
        .await
        .is_err()
    {
        tracing::warn!("shutdown deadline passed; flushing state anyway");
    }
    match outbox.flush() {
        Ok(bytes) => tracing::info!(bytes, backlog = outbox.len(), "state flushed"),
        Err(e) => tracing::error!(error = %e, "cannot flush state"),
    }
    result
}
