//! HTTP API: agent endpoints (CBOR) and admin endpoints (JSON).
//!
//! Every write path is authenticated: enrollment with a bootstrap token, agent
//! endpoints with the agent's credential, admin endpoints with the admin token.
//! Authentication happens before the body is read, and a request that fails any
//! check changes nothing. docs/API.md documents the routes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use fieldline_common::codec;
use fieldline_common::wire::{
    ConfigPoll, ConfigPollReply, DesiredConfig, EnrollReply, EnrollRequest, Heartbeat,
    HeartbeatReply, IngestAck, IngestBatch, PROTOCOL_VERSION,
};
use serde::{Deserialize, Serialize};

use crate::auth::{self, Tokens};
use crate::configs::{self, ConfigError, RolloutSpec, Scope};
use crate::metrics::Metrics;
use crate::store::{self, Store, StoreError};

pub struct AppState {
    pub store: Arc<dyn Store>,
    /// The store's config epoch, watched so long-polls wake on any server's change.
    pub config_epoch: tokio::sync::watch::Sender<u64>,
    /// Longest a config long-poll is held.
    pub max_poll_wait: Duration,
    /// Cancelled at shutdown: long polls answer at once so graceful shutdown does
    /// not wait for them.
    pub shutdown: tokio_util::sync::CancellationToken,
    pub tokens: Tokens,
    pub metrics: Metrics,
    pub max_body_bytes: usize,
    pub max_batch_records: usize,
    /// An agent whose last heartbeat is older than this is `stale`; 3× is `offline`.
    pub stale_after: Duration,
    /// Web UI: sessions and the live event hub.
    pub ui: crate::ui::UiState,
}

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.max_body_bytes;
    Router::new()
        .route("/api/v1/enroll", post(enroll))
        .route("/api/v1/ingest", post(ingest))
        .route("/api/v1/heartbeat", post(heartbeat))
        .route("/api/v1/config/poll", post(config_poll))
        .route("/api/v1/configs", get(configs_list))
        .route("/api/v1/configs/drift", get(configs_drift))
        .route(
            "/api/v1/configs/agents/{id}",
            get(config_get_agent).put(config_put_agent),
        )
        .route(
            "/api/v1/configs/groups/{key}/{value}",
            get(config_get_group).put(config_put_group),
        )
        .route(
            "/api/v1/configs/groups/{key}/{value}/rollout",
            post(config_widen),
        )
        .route("/api/v1/agents", get(agents))
        .route("/api/v1/agents/{id}", get(agent))
        .route("/api/v1/agents/{id}/labels", put(put_labels))
        .route("/api/v1/agents/{id}/records", get(agent_records))
        .route("/api/v1/agents/{id}/revoke", post(revoke))
        .route("/api/v1/agents/{id}/allow-reenroll", post(allow_reenroll))
        .route("/api/v1/configs/validate", post(config_validate))
        .route(
            "/api/v1/configs/agents/{id}/rollback",
            post(config_rollback_agent),
        )
        .route(
            "/api/v1/configs/groups/{key}/{value}/rollback",
            post(config_rollback_group),
        )
        .route("/api/v1/agents/{id}/windows", get(agent_windows))
        .route("/api/v1/events/anomalies", get(recent_anomalies))
        .route("/api/v1/streams", get(streams))
        .route("/api/v1/state/latest", get(state_latest))
        .route("/api/v1/state/anomalies", get(state_anomalies))
        .route("/api/v1/state/summary", get(state_summary))
        .route("/api/v1/dlq", get(dlq_list))
        .route("/api/v1/dlq/{id}", delete(dlq_delete))
        .route("/api/v1/dlq/{id}/replay", post(dlq_replay))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state.clone())
        .merge(crate::ui::router(state))
        .layer(axum::middleware::map_response(close_after_oversized_body))
}

/// A body over the limit is answered before it has been read, so the connection
/// still holds the unread rest: tell the client not to reuse it. Without this, a
/// pooling client (reqwest in the agent) sends its next request on a connection
/// the server is closing and gets `IncompleteMessage`.
async fn close_after_oversized_body(mut res: Response) -> Response {
    if res.status() == StatusCode::PAYLOAD_TOO_LARGE {
        res.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    res
}

/// The one error type of the API: 4xx carry a useful message, 5xx a generic one
/// (the cause is logged).
#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    Unauthorized(String),
    Forbidden(String),
    NotFound(String),
    Conflict(String),
    TooManyRequests(String),
    UnsupportedMediaType(&'static str),
    Unavailable(StoreError),
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Unavailable(e)
    }
}

impl From<ConfigError> for ApiError {
    fn from(e: ConfigError) -> Self {
        match e {
            ConfigError::Invalid(m) => ApiError::BadRequest(m),
            ConfigError::NotFound(m) => ApiError::NotFound(m),
            ConfigError::Conflict(m) => ApiError::Conflict(m),
            ConfigError::Store(e) => ApiError::Unavailable(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m),
            ApiError::TooManyRequests(m) => (StatusCode::TOO_MANY_REQUESTS, m),
            ApiError::UnsupportedMediaType(ct) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("content-type must be {ct}"),
            ),
            ApiError::Unavailable(e) => {
                tracing::error!(error = %e, "store unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store unavailable, retry later".to_string(),
                )
            }
            ApiError::Internal(e) => {
                tracing::error!(error = %e, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error".to_string(),
                )
            }
        };
        let mut resp = (status, Json(serde_json::json!({ "error": message }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn cbor_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
    limit: usize,
) -> Result<T, ApiError> {
    if !content_type(headers).starts_with("application/cbor") {
        return Err(ApiError::UnsupportedMediaType("application/cbor"));
    }
    codec::from_cbor(body, limit).map_err(|e| ApiError::BadRequest(e.to_string()))
}

pub fn json_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, ApiError> {
    if !content_type(headers).starts_with("application/json") {
        return Err(ApiError::UnsupportedMediaType("application/json"));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("invalid json: {e}")))
}

fn cbor<T: Serialize>(value: &T) -> Response {
    match codec::to_cbor(value) {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/cbor")], bytes).into_response(),
        Err(e) => ApiError::Internal(format!("cannot encode response: {e}")).into_response(),
    }
}

fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::Unauthorized("missing `Authorization: Bearer <token>`".into()))
}

fn unknown_agent(id: &str) -> ApiError {
    ApiError::NotFound(format!("agent `{id}` is unknown"))
}

/// Extractor that admits only operators, so admin handlers cannot forget the check:
/// taking `_admin: Admin` is the check. An operator presents the admin token
/// (scripts, not CSRF-prone: browsers never attach it on their own) or a web UI
/// session cookie, with the session's CSRF token on every state change.
pub struct Admin;

impl axum::extract::FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        st: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        if parts.headers.contains_key(header::AUTHORIZATION) {
            return require_admin(st, &parts.headers).map(|()| Admin);
        }
        match st.ui.sessions.authorize(&parts.headers, &parts.method) {
            Ok(_) => Ok(Admin),
            Err(crate::ui::session::Refusal::Unauthenticated) => Err(ApiError::Unauthorized(
                "log in, or send `Authorization: Bearer <admin token>`".into(),
            )),
            Err(crate::ui::session::Refusal::Csrf) => {
                Metrics::add(&st.metrics.auth_failures, 1);
                Err(ApiError::Forbidden(
                    "missing or wrong x-csrf-token header for this session".into(),
                ))
            }
        }
    }
}

fn require_admin(st: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if st.tokens.is_admin(bearer(headers)?) {
        Ok(())
    } else {
        Metrics::add(&st.metrics.auth_failures, 1);
        Err(ApiError::Unauthorized("invalid admin token".into()))
    }
}

/// Checks the agent credential; returns the agent id it belongs to.
async fn require_agent(st: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    let presented = bearer(headers)?;
    let fail = |m: &str| {
        Metrics::add(&st.metrics.auth_failures, 1);
        ApiError::Unauthorized(m.to_string())
    };
    let Some(agent) = auth::credential_agent(presented) else {
        return Err(fail(
            "malformed agent credential (enroll with `fieldline-agent enroll`)",
        ));
    };
    match st.store.credential(agent).await? {
        Some(c) if c.revoked => {
            Metrics::add(&st.metrics.auth_failures, 1);
            Err(ApiError::Forbidden(format!(
                "the credential of agent `{agent}` was revoked"
            )))
        }
        Some(c) if auth::verify(presented, &c.hash) => Ok(agent.to_string()),
        _ => Err(fail("invalid agent credential")),
    }
}

fn same_agent(authenticated: &str, claimed: &str) -> Result<(), ApiError> {
    if authenticated != claimed {
        return Err(ApiError::Forbidden(format!(
            "credential of agent `{authenticated}` cannot act for agent `{}`",
            claimed.chars().take(80).collect::<String>()
        )));
    }
    Ok(())
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

async fn enroll(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    if !st.tokens.is_bootstrap(bearer(&headers)?) {
        Metrics::add(&st.metrics.auth_failures, 1);
        return Err(ApiError::Unauthorized("invalid bootstrap token".into()));
    }
    let req: EnrollRequest = cbor_body(&headers, &body, st.max_body_bytes)?;
    check_version(req.v)?;
    validate_agent_id(&req.agent_id)?;
    let (credential, hash) =
        auth::issue(&req.agent_id).map_err(|e| ApiError::Internal(e.to_string()))?;
    match st
        .store
        .enroll(&req.agent_id, &hash, fieldline_common::now_ms())
        .await?
    {
        store::EnrollOutcome::Enrolled => {
            tracing::info!(agent = %req.agent_id, version = %req.version, "agent enrolled");
            Ok(cbor(&EnrollReply {
                v: PROTOCOL_VERSION,
                agent_id: req.agent_id,
                credential,
            }))
        }
        store::EnrollOutcome::AlreadyEnrolled => Err(ApiError::Conflict(format!(
            "agent `{}` is already enrolled; revoke it and allow re-enrollment through the admin API to issue a new credential",
            req.agent_id
        ))),
        store::EnrollOutcome::Revoked => Err(ApiError::Forbidden(format!(
            "agent `{}` was revoked; an admin must allow re-enrollment",
            req.agent_id
        ))),
    }
}

async fn ingest(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let result = ingest_inner(&st, &headers, &body).await;
    if let Err(
        ApiError::BadRequest(_)
        | ApiError::UnsupportedMediaType(_)
        | ApiError::Unauthorized(_)
        | ApiError::Forbidden(_),
    ) = &result
    {
        Metrics::add(&st.metrics.ingest_rejected, 1);
    }
    result
}

async fn ingest_inner(
    st: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let agent = require_agent(st, headers).await?;
    let batch: IngestBatch = cbor_body(headers, body, st.max_body_bytes)?;
    check_version(batch.v)?;
    validate_agent_id(&batch.agent_id)?;
    same_agent(&agent, &batch.agent_id)?;
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
    let now = fieldline_common::now_ms();
    let outcome = st
        .store
        .ingest(&batch.agent_id, &entries, now)
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
    // The store adds exactly the records above the agent's high-water mark, and seqs
    // increase: the added ones are the batch's tail.
    let fresh = (outcome.added + outcome.dead_letters) as usize;
    let tail = batch.records.len().saturating_sub(fresh);
    st.ui
        .hub
        .ingested(&batch.agent_id, &batch.records[tail..], now);
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
    let agent = require_agent(&st, &headers).await?;
    let hb: Heartbeat = cbor_body(&headers, &body, st.max_body_bytes)?;
    check_version(hb.v)?;
    validate_agent_id(&hb.agent_id)?;
    same_agent(&agent, &hb.agent_id)?;
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

fn view(st: &AppState, info: store::AgentInfo, now: i64) -> AgentView {
    let stale = st.stale_after.as_millis() as i64;
    let age = now - info.last_seen_ms;
    let status = if info.revoked {
        "revoked"
    } else if info.last_seen_ms == 0 {
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
}

async fn agents(
    State(st): State<Arc<AppState>>,
    _admin: Admin,
) -> Result<Json<serde_json::Value>, ApiError> {
    let now = fieldline_common::now_ms();
    let agents = st.store.agents().await?;
    let views: Vec<AgentView> = agents.into_iter().map(|i| view(&st, i, now)).collect();
    Ok(Json(
        serde_json::json!({ "agents": views, "server_ms": now }),
    ))
}

async fn known_agent(st: &AppState, id: &str) -> Result<store::AgentInfo, ApiError> {
    validate_agent_id(id)?;
    st.store.agent(id).await?.ok_or_else(|| unknown_agent(id))
}

async fn agent(
    State(st): State<Arc<AppState>>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let info = known_agent(&st, &id).await?;
    let now = fieldline_common::now_ms();
    Ok(Json(
        serde_json::to_value(view(&st, info, now))
            .map_err(|e| ApiError::Internal(e.to_string()))?,
    ))
}

fn check_limit(q: &Limit) -> Result<usize, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::BadRequest(format!(
            "limit must be 1..=1000, got {limit}"
        )));
    }
    Ok(limit)
}

/// The oldest retained records of one agent (inspection, not a hot path).
async fn agent_records(
    State(st): State<Arc<AppState>>,
    _admin: Admin,
    Path(id): Path<String>,
    Query(q): Query<Limit>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = check_limit(&q)?;
    known_agent(&st, &id).await?;
    let entries = st.store.records_of(&id, limit).await?;
    Ok(Json(serde_json::json!({
        "entries": entries.iter().map(entry_json).collect::<Vec<_>>()
    })))
}

/// Label keys and values: short, printable, no `=` or `,` so selectors stay simple.
fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if labels.len() > 32 {
        return Err(ApiError::BadRequest(format!(
            "at most 32 labels, got {}",
            labels.len()
        )));
    }
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
    };
    for (k, v) in labels {
        if !ok(k) || !ok(v) {
            return Err(ApiError::BadRequest(format!(
                "label `{k}={v}`: keys and values must be 1-63 characters of [A-Za-z0-9-_./]"
            )));
        }
    }
    Ok(())
}

async fn put_labels(
    State(st): State<Arc<AppState>>,
    _admin: Admin,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    validate_agent_id(&id)?;
    let labels: BTreeMap<String, String> = json_body(&headers, &body)?;
    validate_labels(&labels)?;
    if !st.store.set_labels(&id, &labels).await? {
        return Err(unknown_agent(&id));
    }
    // Labels decide group configs: wake the agent's long-poll.
    st.store.counter_next(configs::EPOCH).await?;
    Ok(Json(serde_json::json!({ "id": id, "labels": labels })))
}

async fn revoke(
    State(st): State<Arc<AppState>>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    validate_agent_id(&id)?;
    if !st.store.revoke(&id).await? {
        return Err(unknown_agent(&id));
    }
    tracing::info!(agent = %id, "agent credential revoked");
    Ok(Json(serde_json::json!({ "id": id, "revoked": true })))
}

async fn allow_reenroll(
    State(st): State<Arc<AppState>>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    validate_agent_id(&id)?;
    if !st.store.allow_reenroll(&id).await? {
        return Err(unknown_agent(&id));
    }
    Ok(Json(serde_json::json!({ "id": id, "revoked": false })))
}

async fn streams(
    State(st): State<Arc<AppState>>,
    _admin: Admin,
) -> Result<Json<serde_json::Value>, ApiError> {
    let streams = st.store.stream_stats().await?;
    Ok(Json(serde_json::json!({ "streams": streams })))
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<usize>,
}

fn entry_json(e: &store::StreamEntry) -> serde_json::Value {
    let fields: serde_json::Map<String, serde_json::Value> = e
        .fields
        .iter()
        .map(|(k, v)| {
            let v = match std::str::from_utf8(v) {
                Ok(s) => serde_json::Value::String(s.to_string()),
                // Undecodable payloads are often binary: show them as bytes.
                Err(_) => serde_json::Value::Array(v.iter().map(|b| (*b).into()).collect()),
            };
            (k.clone(), v)
        })
        .collect();
    serde_json::json!({ "id": e.id, "fields": fields })
}

async fn dlq_list(
    State(st): State<Arc<AppState>>,
    _admin: Admin,
    Query(q): Query<Limit>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = check_limit(&q)?;
    let entries = st.store.dlq_list(limit).await?;
    Ok(Json(serde_json::json!({
        "entries": entries.iter().map(entry_json).collect::<Vec<_>>()
    })))
}

async fn dlq_delete(
    State(st): State<Arc<AppState>>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !st.store.dlq_delete(&id).await? {
        return Err(ApiError::NotFound(format!("dead letter `{id}` not found")));
    }
    Ok(Json(serde_json::json!({ "id": id, "deleted": true })))
}

async fn dlq_replay(
    State(st): State<Arc<AppState>>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !st.store.dlq_replay(&id).await? {
        return Err(ApiError::NotFound(format!("dead letter `{id}` not found")));
    }
    Ok(Json(serde_json::json!({ "id": id, "replayed": true })))
}

#[derive(Deserialize)]
struct LatestQuery {
    agent: Option<String>,
    limit: Option<usize>,
}

async fn state_latest(
    State(st): State<Arc<AppState>>,
    _admin: Admin,
    Query(q): Query<LatestQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = check_limit(&Limit { limit: q.limit })?;
    if let Some(a) = &q.agent {
        validate_agent_id(a)?;
    }
    let values = st.store.latest_values(q.agent.as_deref(), limit).await?;
    Ok(Json(serde_json::json!({ "latest": values })))
}

async fn state_anomalies(
    State(st): State<Arc<AppState>>,
    _admin: Admin,
    Query(q): Query<Limit>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = check_limit(&q)?;
    let top = st.store.top_anomalies(limit).await?;
    let top: Vec<_> = top
        .into_iter()
        .map(|(series, score)| serde_json::json!({ "series": series, "score": score }))
        .collect();
    Ok(Json(serde_json::json!({ "top_anomalies": top })))
}

async fn state_summary(
    State(st): State<Arc<AppState>>,
    _admin: Admin,
) -> Result<Json<serde_json::Value>, ApiError> {
    let summary = st.store.global_summary().await?;
    Ok(Json(
        serde_json::to_value(summary).map_err(|e| ApiError::Internal(e.to_string()))?,
    ))
}

async fn config_poll(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let agent = require_agent(&st, &headers).await?;
    let poll: ConfigPoll = cbor_body(&headers, &body, st.max_body_bytes)?;
    check_version(poll.v)?;
    validate_agent_id(&poll.agent_id)?;
    same_agent(&agent, &poll.agent_id)?;
    let mut epoch = st.config_epoch.subscribe();
    let labels = known_agent(&st, &agent).await?.labels;
    let now = fieldline_common::now_ms();
    configs::report(
        &*st.store,
        &agent,
        &labels,
        poll.observed_generation,
        poll.report.as_ref(),
        now,
    )
    .await?;
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(poll.wait_ms).min(st.max_poll_wait);
    loop {
        epoch.borrow_and_update();
        let labels = known_agent(&st, &agent).await?.labels;
        let desired = configs::resolve(&*st.store, &agent, &labels).await?;
        let news = desired.as_ref().is_some_and(|d| {
            d.generation != poll.observed_generation && d.generation != poll.received_generation
        });
        let timed_out = tokio::time::Instant::now() >= deadline || st.shutdown.is_cancelled();
        if news || timed_out {
            return Ok(cbor(&ConfigPollReply {
                v: PROTOCOL_VERSION,
                desired: desired.map(|d| DesiredConfig {
                    generation: d.generation,
                    toml: d.toml,
                }),
            }));
        }
        tokio::select! {
            _ = epoch.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = st.shutdown.cancelled() => {}
        }
    }
}

#[derive(Deserialize)]
struct PutConfig {
    toml: String,
    #[serde(default)]
    note: String,
    #[serde(default)]
    rollout: Option<RolloutSpec>,
}

fn group_scope(key: String, value: String) -> Result<Scope, ApiError> {
    let mut one = BTreeMap::new();
    one.insert(key.clone(), value.clone());
    validate_labels(&one)?;
    Ok(Scope::Group { key, value })
}

async fn config_put(
    st: &AppState,
    scope: Scope,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Json<serde_json::Value>, ApiError> {
    let req: PutConfig = json_body(headers, body)?;
    if req.note.len() > 1000 {
        return Err(ApiError::BadRequest(
            "note must be at most 1000 bytes".into(),
        ));
    }
    let generation = configs::put(
        &*st.store,
        &scope,
        &req.toml,
        &req.note,
        req.rollout,
        fieldline_common::now_ms(),
    )
    .await?;
    tracing::info!(scope = %scope.name(), generation, "desired config stored");
    Ok(Json(
        serde_json::json!({ "scope": scope.name(), "generation": generation }),
    ))
}

async fn config_get(st: &AppState, scope: Scope) -> Result<Json<serde_json::Value>, ApiError> {
    let doc = configs::get(&*st.store, &scope).await?;
    Ok(Json(serde_json::json!({
        "scope": scope.name(),
        "desired": doc.versions.last(),
        "history": doc.versions,
        "rollout": doc.rollout,
    })))
}

async fn config_put_agent(
    State(st): State<Arc<AppState>>,
    _admin: Admin,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    known_agent(&st, &id).await?;
    config_put(&st, Scope::Agent(id), &headers, &body).await
}

async fn config_get_agent(
    State(st): State<Arc<AppState>>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let info = known_agent(&st, &id).await?;
    let resolved = configs::resolve(&*st.store, &id, &info.labels).await?;
    let report = configs::get_report(&*st.store, &id).await?;
    let own = configs::get(&*st.store, &Scope::Agent(id.clone()))
        .await
        .ok();
    Ok(Json(serde_json::json!({
        "agent": id,
        "resolved": resolved,
        "report": report,
        "drift": configs::drift(&id, resolved.as_ref(), report.as_ref()),
        "override_history": own.map(|d| d.versions).unwrap_or_default(),
    })))
}

async fn config_put_group(
    State(st): State<Arc<AppState>>,
    _admin: Admin,
    Path((key, value)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let scope = group_scope(key, value)?;
    config_put(&st, scope, &headers, &body).await
}

async fn config_get_group(
    State(st): State<Arc<AppState>>,
    _admin: Admin,
    Path((key, value)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    config_get(&st, group_scope(key, value)?).await
}

async fn config_widen(
    State(st): State<Arc<AppState>>,
    _admin: Admin,
    Path((key, value)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let scope = group_scope(key, value)?;
    let spec: RolloutSpec = json_body(&headers, &body)?;
    let rollout = configs::widen(&*st.store, &scope, spec).await?;
    Ok(Json(
        serde_json::json!({ "scope": scope.name(), "rollout": rollout }),
    ))
}

async fn configs_list(
    State(st): State<Arc<AppState>>,
    _admin: Admin,
) -> Result<Json<serde_json::Value>, ApiError> {
    let scopes: Vec<_> = configs::list(&*st.store)
        .await?
        .into_iter()
        .map(|(scope, doc)| {
            serde_json::json!({
                "scope": scope,
                "generation": doc.versions.last().map(|v| v.generation),
                "versions": doc.versions.len(),
                "rollout": doc.rollout,
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "configs": scopes })))
}

async fn configs_drift(
    State(st): State<Arc<AppState>>,
    _admin: Admin,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut out = Vec::new();
    for a in st.store.agents().await? {
        let resolved = configs::resolve(&*st.store, &a.id, &a.labels).await?;
        let report = configs::get_report(&*st.store, &a.id).await?;
        out.push(configs::drift(&a.id, resolved.as_ref(), report.as_ref()));
    }
    Ok(Json(serde_json::json!({ "agents": out })))
}

#[derive(Deserialize)]
struct ValidateConfig {
    toml: String,
}

/// Dry run of a config fragment with the agent's own validation; stores nothing.
async fn config_validate(
    _admin: Admin,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let req: ValidateConfig = json_body(&headers, &body)?;
    let problems = configs::problems(&req.toml);
    Ok(Json(
        serde_json::json!({ "valid": problems.is_empty(), "problems": problems }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rollback {
    generation: u64,
}

async fn config_rollback(
    st: &AppState,
    scope: Scope,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Json<serde_json::Value>, ApiError> {
    let req: Rollback = json_body(headers, body)?;
    let generation = configs::rollback(
        &*st.store,
        &scope,
        req.generation,
        fieldline_common::now_ms(),
    )
    .await?;
    tracing::info!(scope = %scope.name(), to = req.generation, generation, "desired config rolled back");
    Ok(Json(serde_json::json!({
        "scope": scope.name(),
        "generation": generation,
        "rolled_back_to": req.generation,
    })))
}

async fn config_rollback_agent(
    State(st): State<Arc<AppState>>,
    _admin: Admin,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    known_agent(&st, &id).await?;
    config_rollback(&st, Scope::Agent(id), &headers, &body).await
}

async fn config_rollback_group(
    State(st): State<Arc<AppState>>,
    _admin: Admin,
    Path((key, value)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let scope = group_scope(key, value)?;
    config_rollback(&st, scope, &headers, &body).await
}

/// Recent window results of an agent's series as ingested by this server (charts).
async fn agent_windows(
    State(st): State<Arc<AppState>>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    validate_agent_id(&id)?;
    let series = st.ui.hub.windows(&id);
    Ok(Json(serde_json::json!({ "agent": id, "series": series })))
}

#[derive(Deserialize)]
struct AnomalyQuery {
    agent: Option<String>,
    limit: Option<usize>,
}

/// Recent anomalies as ingested by this server, newest first.
async fn recent_anomalies(
    State(st): State<Arc<AppState>>,
    _admin: Admin,
    Query(q): Query<AnomalyQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = check_limit(&Limit { limit: q.limit })?;
    if let Some(a) = &q.agent {
        validate_agent_id(a)?;
    }
    Ok(Json(serde_json::json!({
        "anomalies": st.ui.hub.anomalies(q.agent.as_deref(), limit),
        "server_ms": fieldline_common::now_ms(),
    })))
}

async fn healthz(State(st): State<Arc<AppState>>) -> Response {
    match tokio::time::timeout(Duration::from_secs(2), st.store.ping()).await {
        Ok(Ok(())) => Json(serde_json::json!({ "status": "ok" })).into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "health check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({ "status": "unavailable", "store": "unreachable" })),
            )
                .into_response()
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "unavailable", "store": "timeout" })),
        )
            .into_response(),
    }
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let agents = st.store.agents().await.unwrap_or_default();
    let mut body = st.metrics.render(agents.len());
    body.push_str(&crate::metrics::render_agents(&agents));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
