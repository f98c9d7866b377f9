//! Binds the listener, serves the API, shuts down gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::metrics::Metrics;
use crate::store::{RedisStore, StoreError};

#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub listen: SocketAddr,
    pub redis_url: String,
    pub partitions: u32,
    pub stream_maxlen: u64,
    pub max_body_bytes: usize,
    pub max_batch_records: usize,
    pub stale_after: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("http server failed: {0}")]
    Serve(std::io::Error),
}

/// A bound, ready server; `serve` runs it until `shutdown`.
pub struct Fleet {
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
}

impl Fleet {
    pub async fn bind(cfg: &FleetConfig) -> Result<Self, ServeError> {
        let store = RedisStore::connect(&cfg.redis_url, cfg.partitions, cfg.stream_maxlen).await?;
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let state = Arc::new(AppState {
            store,
            metrics: Metrics::default(),
            max_body_bytes: cfg.max_body_bytes,
            max_batch_records: cfg.max_batch_records,
            stale_after: cfg.stale_after,
        });
        Ok(Self { listener, state })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), ServeError> {
        tracing::info!(
            listen = %self.listener.local_addr().map_err(ServeError::Serve)?,
            redis = %self.state.store.url(),
            partitions = self.state.store.partitions(),
            "fleet server running"
        );
        axum::serve(self.listener, api::router(self.state))
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .map_err(ServeError::Serve)?;
        tracing::info!("fleet server stopped");
        Ok(())
    }
}
