//! HTTP API: agent endpoints (CBOR) and admin endpoints (JSON).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fieldline_common::codec;
use fieldline_common::wire::{Heartbeat, HeartbeatReply, IngestAck, IngestBatch, PROTOCOL_VERSION};
use serde::Serialize;

use crate::metrics::Metrics;
use crate::store::{self, RedisStore, StoreError};

pub struct AppState {
    pub store: RedisStore,
    pub metrics: Metrics,
    pub max_body_bytes: usize,
    pub max_batch_records: usize,
    /// An agent whose last heartbeat is older than this is `stale`; 3× is `offline`.
    pub stale_after: Duration,
}

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.max_body_bytes;
    Router::new()
        .route("/api/v1/ingest", post(ingest))
        .route("/api/v1/heartbeat", post(heartbeat))
        .route("/api/v1/agents", get(agents))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// The one error type of the API: 4xx carry a useful message, 5xx a generic one
/// (the cause is logged).
#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    UnsupportedMediaType,
    Unavailable(StoreError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "content-type must be application/cbor".to_string(),
            ),
            ApiError::Unavailable(e) => {
                tracing::error!(error = %e, "store unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store unavailable, retry later".to_string(),
                )
            }
        };
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    }
}

fn cbor_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
    limit: usize,
) -> Result<T, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/cbor") {
        return Err(ApiError::UnsupportedMediaType);
    }
    codec::from_cbor(body, limit).map_err(|e| ApiError::BadRequest(e.to_string()))
}

fn cbor<T: Serialize>(value: &T) -> Response {
    match codec::to_cbor(value) {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/cbor")], bytes).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode response");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

pub fn validate_agent_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(ApiError::BadRequest(format!(
            "agent_id `{}` must be 1-64 characters of [A-Za-z0-9-_.]",
            id.chars().take(80).collect::<String>()
        )));
    }
    Ok(())
}

fn check_version(v: u16) -> Result<(), ApiError> {
    if v != PROTOCOL_VERSION {
        return Err(ApiError::BadRequest(format!(
            "protocol version {v} is not supported (this server speaks {PROTOCOL_VERSION})"
        )));
    }
    Ok(())
}

async fn ingest(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let result = ingest_inner(&st, &headers, &body).await;
    if let Err(ApiError::BadRequest(_) | ApiError::UnsupportedMediaType) = &result {
        Metrics::add(&st.metrics.ingest_rejected, 1);
    }
    result
}

async fn ingest_inner(
    st: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let batch: IngestBatch = cbor_body(headers, body, st.max_body_bytes)?;
    check_version(batch.v)?;
    validate_agent_id(&batch.agent_id)?;
    if batch.records.len() > st.max_batch_records {
        return Err(ApiError::BadRequest(format!(
            "batch has {} records, the limit is {}",
            batch.records.len(),
            st.max_batch_records
        )));
    }
    let mut prev = 0u64;
    for r in &batch.records {
        if r.seq <= prev {
            return Err(ApiError::BadRequest(format!(
                "seq must be positive and strictly increasing: {} follows {prev}",
                r.seq
            )));
        }
        prev = r.seq;
    }
    let entries: Vec<_> = batch.records.iter().map(store::entry).collect();
    let started = Instant::now();
    let outcome = st
        .store
        .ingest(&batch.agent_id, &entries, fieldline_common::now_ms())
        .await
        .map_err(|e| {
            Metrics::add(&st.metrics.store_errors, 1);
            ApiError::Unavailable(e)
        })?;
    let m = &st.metrics;
    Metrics::add(&m.ingest_micros, started.elapsed().as_micros() as u64);
    Metrics::add(&m.ingest_batches, 1);
    Metrics::add(&m.ingest_added, u64::from(outcome.added));
    Metrics::add(&m.ingest_duplicates, u64::from(outcome.duplicates));
    Metrics::add(&m.ingest_dead_letters, u64::from(outcome.dead_letters));
    Ok(cbor(&IngestAck {
        v: PROTOCOL_VERSION,
        acked_seq: outcome.hwm,
        added: outcome.added + outcome.dead_letters,
        duplicates: outcome.duplicates,
    }))
}

async fn heartbeat(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let hb: Heartbeat = cbor_body(&headers, &body, st.max_body_bytes)?;
    check_version(hb.v)?;
    validate_agent_id(&hb.agent_id)?;
    let now = fieldline_common::now_ms();
    let acked_seq = st.store.heartbeat(&hb, now).await.map_err(|e| {
        Metrics::add(&st.metrics.store_errors, 1);
        ApiError::Unavailable(e)
    })?;
    Metrics::add(&st.metrics.heartbeats, 1);
    Ok(cbor(&HeartbeatReply {
        v: PROTOCOL_VERSION,
        server_ms: now,
        acked_seq,
    }))
}

#[derive(Serialize)]
struct AgentView {
    #[serde(flatten)]
    info: store::AgentInfo,
    status: &'static str,
    last_seen_age_s: f64,
}

async fn agents(State(st): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, ApiError> {
    let now = fieldline_common::now_ms();
    let agents = st.store.agents().await.map_err(ApiError::Unavailable)?;
    let stale = st.stale_after.as_millis() as i64;
    let views: Vec<AgentView> = agents
        .into_iter()
        .map(|info| {
            let age = now - info.last_seen_ms;
            let status = if info.last_seen_ms == 0 {
                "never_seen"
            } else if age <= stale {
                "online"
            } else if age <= 3 * stale {
                "stale"
            } else {
                "offline"
            };
            AgentView {
                last_seen_age_s: if info.last_seen_ms == 0 {
                    -1.0
                } else {
                    age as f64 / 1000.0
                },
                status,
                info,
            }
        })
        .collect();
    Ok(Json(
        serde_json::json!({ "agents": views, "server_ms": now }),
    ))
}

async fn healthz(State(st): State<Arc<AppState>>) -> Response {
    match tokio::time::timeout(Duration::from_secs(2), st.store.ping()).await {
        Ok(Ok(())) => Json(serde_json::json!({ "status": "ok" })).into_response(),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "unavailable", "store": e.to_string() })),
        )
            .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "unavailable", "store": "timeout" })),
        )
            .into_response(),
    }
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let known = st.store.agents().await.map(|a| a.len()).unwrap_or(0);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(known),
    )
        .into_response()
}
