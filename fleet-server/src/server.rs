//! Binds the listener, serves the API, shuts down gracefully.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::auth::Tokens;
use crate::metrics::Metrics;
use crate::store::embedded::SledStore;
use crate::store::redis::RedisStore;
use crate::store::workers::{WorkerConfig, Workers};
use crate::store::{Store, StoreError};
use crate::tls::TlsListener;

/// Where the fleet keeps its data.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// Redis (or Redis Cluster): production and scale-out.
    Redis {
        url: String,
        partitions: u32,
        /// Global-state workers in this process (`None`: ingest only).
        workers: Option<WorkerConfig>,
    },
    /// One sled database in this directory: a single node without Redis.
    Embedded { dir: PathBuf },
}

#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub listen: SocketAddr,
    pub store: StoreConfig,
    pub stream_maxlen: u64,
    pub max_body_bytes: usize,
    pub max_batch_records: usize,
    pub stale_after: Duration,
    pub tokens: Tokens,
    /// PEM certificate chain and private key; `None` serves plain HTTP.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Lifetime of a web UI login session.
    pub session_ttl: Duration,
    /// `(user, password)` of the first web UI account, created when the store has
    /// no account yet (`FIELDLINE_ADMIN_PASSWORD`).
    pub admin_bootstrap: Option<(String, String)>,
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
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("web ui accounts: {0}")]
    Accounts(#[from] crate::ui::session::SessionError),
}

/// Opens the configured store, and the workers that go with it.
pub async fn open_store(
    cfg: &StoreConfig,
    maxlen: u64,
) -> Result<(Arc<dyn Store>, Option<Workers>), StoreError> {
    Ok(match cfg {
        StoreConfig::Redis {
            url,
            partitions,
            workers,
        } => {
            let store = RedisStore::connect(url, *partitions, maxlen).await?;
            let workers = match workers {
                Some(w) => Some(Workers::new(&store, w.clone())?),
                None => None,
            };
            (Arc::new(store), workers)
        }
        StoreConfig::Embedded { dir } => (Arc::new(SledStore::open(dir, maxlen)?), None),
    })
}

/// A bound, ready server; `serve` runs it until `shutdown`.
pub struct Fleet {
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    workers: Option<Workers>,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Fleet {
    pub async fn bind(cfg: &FleetConfig) -> Result<Self, ServeError> {
        // Certificates first: a bad file should fail before anything else starts.
        let tls = match &cfg.tls {
            Some((cert, key)) => Some(crate::tls::server_config(cert, key)?),
            None => None,
        };
        let (store, workers) = open_store(&cfg.store, cfg.stream_maxlen).await?;
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: cfg.listen,
                source,
            })?;
        if let Some((user, password)) = &cfg.admin_bootstrap {
            if crate::ui::session::bootstrap(&*store, user, password, fieldline_common::now_ms())
                .await?
            {
                tracing::info!(user = %user, "created the first web ui account");
            }
        }
        if crate::ui::session::accounts(&*store).await?.is_empty() {
            tracing::warn!(
                "no web ui account yet: set FIELDLINE_ADMIN_PASSWORD or run `fieldline-fleet admin add --user NAME`"
            );
        }
        let epoch = store.counter_get(crate::configs::EPOCH).await?;
        let state = Arc::new(AppState {
            store,
            config_epoch: tokio::sync::watch::Sender::new(epoch),
            max_poll_wait: Duration::from_secs(25),
            shutdown: CancellationToken::new(),
            tokens: cfg.tokens.clone(),
            metrics: Metrics::default(),
            max_body_bytes: cfg.max_body_bytes,
            max_batch_records: cfg.max_batch_records,
            stale_after: cfg.stale_after,
            ui: crate::ui::UiState {
                // Secure cookies exactly when served over TLS: a browser would not
                // send a Secure cookie back over plain HTTP.
                sessions: crate::ui::session::Sessions::new(cfg.session_ttl, tls.is_some())?,
                hub: Default::default(),
            },
        });
        Ok(Self {
            listener,
            state,
            workers,
            tls,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn store(&self) -> Arc<dyn Store> {
        self.state.store.clone()
    }

    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), ServeError> {
        tracing::info!(
            listen = %self.listener.local_addr().map_err(ServeError::Serve)?,
            store = %self.state.store.describe(),
            tls = self.tls.is_some(),
            "fleet server running"
        );
        let workers = self
            .workers
            .map(|w| tokio::spawn(w.run(shutdown.child_token())));
        let watcher = tokio::spawn(watch_config_epoch(
            self.state.clone(),
            shutdown.child_token(),
        ));
        let http_shutdown = shutdown.clone();
        let polls = self.state.shutdown.clone();
        let stop_polls = shutdown.clone();
        tokio::spawn(async move {
            stop_polls.cancelled().await;
            polls.cancel();
        });
        let router = api::router(self.state.clone());
        let served = match self.tls {
            Some(tls) => {
                let listener = TlsListener::spawn(self.listener, tls, shutdown.child_token())
                    .map_err(ServeError::Serve)?;
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
                    .await
            }
            None => {
                axum::serve(self.listener, router)
                    .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
                    .await
            }
        }
        .map_err(ServeError::Serve);
        // Workers stop after intake so they release their leases last.
        shutdown.cancel();
        if let Some(w) = workers {
            let _ = w.await;
        }
        let _ = watcher.await;
        served?;
        // The embedded store flushes on ingest; this makes heartbeats durable too.
        if let Err(e) = self.state.store.ping().await {
            tracing::warn!(error = %e, "store not healthy at shutdown");
        }
        tracing::info!("fleet server stopped");
        Ok(())
    }
}

/// Wakes config long-polls when any fleet server (or this one) changes a desired
/// config: one store read per interval for the whole process, not per agent.
async fn watch_config_epoch(state: Arc<AppState>, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match state.store.counter_get(crate::configs::EPOCH).await {
            Ok(epoch) => {
                state.config_epoch.send_if_modified(|cur| {
                    let changed = *cur != epoch;
                    *cur = epoch;
                    changed
                });
            }
            Err(e) => tracing::debug!(error = %e, "cannot read the config epoch"),
        }
    }
}
