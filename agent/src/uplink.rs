//! Drains the outbox to the fleet server and sends heartbeats.
//!
//! Store-and-forward loop: take the oldest records, POST them as one CBOR batch,
//! delete what the fleet acknowledged, repeat; on failure back off exponentially with
//! full jitter. Because deletion follows the acknowledgement and the fleet is
//! idempotent by (agent, seq), a crash anywhere resends at most one batch and adds
//! nothing twice.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fieldline_common::codec;
use fieldline_common::config::{AgentConfig, UplinkConfig};
use fieldline_common::wire::{
    ConfigPoll, ConfigPollReply, Heartbeat, HeartbeatReply, IngestAck, IngestBatch,
    PROTOCOL_VERSION,
};
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::counters::Counters;
use crate::outbox::Outbox;

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("fleet unreachable: {0}")]
    Transport(String),
    #[error("not enrolled: no credential in {0}; run `fieldline-agent enroll --fleet URL --token TOKEN`")]
    NotEnrolled(String),
    #[error("cannot read the credential: {0}")]
    Credential(String),
    #[error("fleet answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("bad answer from fleet: {0}")]
    Decode(String),
    #[error("outbox: {0}")]
    Outbox(#[from] crate::outbox::OutboxError),
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    agent_id: String,
    credential_file: PathBuf,
    /// Read lazily so an agent started before enrollment picks the credential up,
    /// and dropped on 401/403 so a re-enrolled credential is read again.
    credential: Arc<Mutex<Option<String>>>,
}

/// The HTTP client every request to the fleet goes through.
/// With `ca_file`, HTTPS trusts only the CA(s) in it; otherwise the system's.
pub fn http_client(
    timeout: Duration,
    ca_file: Option<&std::path::Path>,
) -> Result<reqwest::Client, UplinkError> {
    // One crypto provider for the process (ring, no C build of aws-lc); a second
    // install attempt is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .user_agent(concat!("fieldline-agent/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| {
            UplinkError::Transport(format!("cannot read ca_file {}: {e}", path.display()))
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            UplinkError::Transport(format!("ca_file {}: {}", path.display(), error_chain(&e)))
        })?;
        if certs.is_empty() {
            return Err(UplinkError::Transport(format!(
                "ca_file {} holds no certificate",
                path.display()
            )));
        }
        builder = builder.tls_certs_only(certs);
    }
    builder
        .build()
        .map_err(|e| UplinkError::Transport(error_chain(&e)))
}

impl Client {
    pub fn new(cfg: &AgentConfig) -> Result<Self, UplinkError> {
        let http = http_client(cfg.uplink.request_timeout, cfg.uplink.ca_file.as_deref())?;
        Ok(Self {
            http,
            base: cfg.uplink.fleet_url.clone(),
            agent_id: cfg.agent.id.clone(),
            credential_file: crate::enroll::credential_path(cfg),
            credential: Arc::new(Mutex::new(None)),
        })
    }

    fn credential(&self) -> Result<String, UplinkError> {
        let mut slot = self
            .credential
            .lock()
            .map_err(|_| UplinkError::Credential("lock poisoned".into()))?;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        match crate::enroll::read_credential(&self.credential_file) {
            Ok(Some(c)) => {
                *slot = Some(c.clone());
                Ok(c)
            }
            Ok(None) => Err(UplinkError::NotEnrolled(
                self.credential_file.display().to_string(),
            )),
            Err(e) => Err(UplinkError::Credential(format!(
                "{}: {e}",
                self.credential_file.display()
            ))),
        }
    }

    fn forget_credential(&self) {
        if let Ok(mut slot) = self.credential.lock() {
            *slot = None;
        }
    }

    async fn post<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        body: &Req,
    ) -> Result<Resp, UplinkError> {
        self.post_within(path, body, None).await
    }

    async fn post_within<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        body: &Req,
        timeout: Option<Duration>,
    ) -> Result<Resp, UplinkError> {
        let credential = self.credential()?;
        let bytes = codec::to_cbor(body).map_err(|e| UplinkError::Decode(e.to_string()))?;
        let mut req = self.http.post(format!("{}{path}", self.base));
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        let resp = req
            .bearer_auth(credential)
            .header(reqwest::header::CONTENT_TYPE, "application/cbor")
            .body(bytes)
            .send()
            .await
            .map_err(|e| UplinkError::Transport(error_chain(&e)))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| UplinkError::Transport(error_chain(&e)))?;
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            self.forget_credential();
        }
        if !status.is_success() {
            return Err(UplinkError::Status {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&body).chars().take(300).collect(),
            });
        }
        codec::from_cbor(&body, codec::MAX_MESSAGE_BYTES)
            .map_err(|e| UplinkError::Decode(e.to_string()))
    }

    pub async fn heartbeat(&self, hb: &Heartbeat) -> Result<HeartbeatReply, UplinkError> {
        self.post("/api/v1/heartbeat", hb).await
    }

    /// Long poll for the desired config; `timeout` must exceed the poll's `wait_ms`.
    pub async fn poll_config(
        &self,
        poll: &ConfigPoll,
        timeout: Duration,
    ) -> Result<ConfigPollReply, UplinkError> {
        self.post_within("/api/v1/config/poll", poll, Some(timeout))
            .await
    }

    pub async fn ingest(&self, batch: &IngestBatch) -> Result<IngestAck, UplinkError> {
        self.post("/api/v1/ingest", batch).await
    }

    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }
}

pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Exponential backoff with full jitter: each wait is uniform in `[min, current]`.
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            current: min,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let lo = self.min.as_millis() as u64;
        let hi = (self.current.as_millis() as u64).max(lo);
        self.current = (self.current * 2).min(self.max);
        Duration::from_millis(fastrand::u64(lo..=hi))
    }

    pub fn reset(&mut self) {
        self.current = self.min;
    }
}

/// Sends batches until `shutdown`; an in-flight batch is finished, not abandoned.
pub async fn run_drain(
    client: Client,
    cfg: UplinkConfig,
    outbox: Arc<Outbox>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(cfg.backoff_min, cfg.backoff_max);
    let mut failing = false;
    loop {
        match drain_once(&client, &outbox, cfg.batch_max_records).await {
            Ok(sent) => {
                if failing {
                    tracing::info!("fleet reachable again, outbox draining");
                    failing = false;
                }
                backoff.reset();
                if sent > 0 && !shutdown.is_cancelled() {
                    continue;
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, backlog = outbox.len(), "uplink failed; records stay in the outbox");
                    failing = true;
                }
                let delay = backoff.next_delay();
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(cfg.flush_interval) => {}
        }
    }
}

/// Sends one batch; returns how many records it carried.
async fn drain_once(client: &Client, outbox: &Outbox, max: usize) -> Result<usize, UplinkError> {
    let records = outbox.peek(max)?;
    if records.is_empty() {
        return Ok(0);
    }
    let n = records.len();
    let last = records[n - 1].seq;
    let ack = client
        .ingest(&IngestBatch {
            v: PROTOCOL_VERSION,
            agent_id: client.agent_id().to_string(),
            records,
        })
        .await?;
    if ack.acked_seq < last {
        return Err(UplinkError::Decode(format!(
            "fleet acknowledged through {} but the batch ended at {last}",
            ack.acked_seq
        )));
    }
    outbox.ack(ack.acked_seq)?;
    adopt_fleet_seq(outbox, ack.acked_seq);
    tracing::debug!(
        records = n,
        acked = ack.acked_seq,
        added = ack.added,
        "batch acknowledged"
    );
    Ok(n)
}

fn adopt_fleet_seq(outbox: &Outbox, fleet_seq: u64) {
    if outbox.raise_seq_floor(fleet_seq) {
        tracing::warn!(
            fleet_seq,
            "the fleet holds higher seqs for this agent than the local store (was it wiped?); numbering continues above them"
        );
    }
}

/// Sends a heartbeat every interval until `shutdown`.
pub async fn run_heartbeat(
    client: Client,
    interval: Duration,
    outbox: Arc<Outbox>,
    counters: Arc<Counters>,
    started_ms: i64,
    shutdown: CancellationToken,
) {
    let mut failing = false;
    loop {
        let hb = Heartbeat {
            v: PROTOCOL_VERSION,
            agent_id: client.agent_id().to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_ms,
            sent_ms: fieldline_common::now_ms(),
            counters: counters.snapshot(outbox.len(), outbox.last_seq()),
        };
        match client.heartbeat(&hb).await {
            Ok(reply) => {
                if failing {
                    tracing::info!("heartbeat delivered again");
                }
                failing = false;
                // Only adopt when nothing is pending: pending records are numbered
                // below the fleet's mark only if the store was replaced.
                if outbox.is_empty() {
                    adopt_fleet_seq(&outbox, reply.acked_seq);
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "heartbeat failed; will keep trying");
                }
                failing = true;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_within_bounds_and_grows() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let delays: Vec<_> = (0..10).map(|_| b.next_delay()).collect();
        assert!(delays
            .iter()
            .all(|d| *d >= Duration::from_millis(100) && *d <= Duration::from_millis(1000)));
        assert_eq!(b.current, Duration::from_millis(1000));
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }
}
