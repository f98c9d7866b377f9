//! The operator web UI, served by the fleet server itself.
//!
//! - `assets/`: one HTML page, one script, one stylesheet, embedded in the binary
//!   (`include_str!`): no build step, no CDN, works without internet access. The page
//!   is a client of the JSON admin API (`/api/v1/...`), which accepts a session
//!   cookie as well as the admin token (see [`crate::api::Admin`]).
//! - [`session`]: admin accounts (Argon2id), login, session cookies, CSRF tokens.
//! - [`events`]: the live event hub and the SSE stream `/ui/events`.
//!
//! Routes: `GET /` and `GET /ui` redirect to `/ui/`; `GET /ui/` the page;
//! `GET /ui/app.js`, `/ui/app.css`; `POST /ui/login` `{user, password}` →
//! `{user, csrf}` and the cookie; `GET /ui/session` → `{user, csrf}`;
//! `POST /ui/logout`; `GET /ui/events[?agent=ID]` (SSE).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::Stream;
use serde::Deserialize;

use crate::api::{json_body, validate_agent_id, Admin, ApiError, AppState};

pub mod events;
pub mod session;

/// Largest login body: a user name and a password.
const MAX_LOGIN_BYTES: usize = 16 * 1024;
/// How often open pages are told to refresh what they show.
const TICK: Duration = Duration::from_secs(2);

pub struct UiState {
    pub sessions: session::Sessions,
    pub hub: events::Hub,
}

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// Locks the page to its own origin: no inline script, no foreign resources, no
/// framing (clickjacking).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route(
            "/ui/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route("/ui/login", post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/session", get(session_info))
        .route("/ui/events", get(events_stream))
        .layer(DefaultBodyLimit::max(MAX_LOGIN_BYTES))
        .with_state(state)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // The assets change with the binary; revalidating is cheap on loopback or LAN.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    user: String,
    password: String,
}

async fn login(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    // JSON only: a cross-site HTML form cannot send it without a CORS preflight,
    // which this server never grants (no login CSRF).
    let req: Login = json_body(&headers, &body)?;
    let outcome = st
        .ui
        .sessions
        .login(&*st.store, &req.user, &req.password)
        .await;
    match outcome {
        Ok(Some((id, s))) => {
            tracing::info!(user = %s.user, "operator logged in");
            let cookie = HeaderValue::from_str(&st.ui.sessions.set_cookie(&id))
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            let mut resp =
                Json(serde_json::json!({ "user": s.user, "csrf": s.csrf })).into_response();
            resp.headers_mut().insert(header::SET_COOKIE, cookie);
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(resp)
        }
        Ok(None) => {
            crate::metrics::Metrics::add(&st.metrics.auth_failures, 1);
            tracing::warn!(user = %req.user.chars().take(64).collect::<String>(), "failed login");
            Err(ApiError::Unauthorized("wrong user name or password".into()))
        }
        Err(session::SessionError::RateLimited(u)) => Err(ApiError::TooManyRequests(format!(
            "too many failed logins for `{u}`; try again in a few minutes"
        ))),
        Err(session::SessionError::Invalid(m)) => Err(ApiError::BadRequest(m)),
        Err(session::SessionError::Store(e)) => Err(ApiError::Unavailable(e)),
        Err(e) => Err(ApiError::Internal(e.to_string())),
    }
}

async fn logout(
    State(st): State<Arc<AppState>>,
    _admin: Admin,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    st.ui.sessions.logout(&headers);
    let cookie = HeaderValue::from_str(&st.ui.sessions.clear_cookie())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut resp = Json(serde_json::json!({ "logged_out": true })).into_response();
    resp.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(resp)
}

async fn session_info(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let s = st
        .ui
        .sessions
        .authorize(&headers, &axum::http::Method::GET)
        .map_err(|_| ApiError::Unauthorized("not logged in".into()))?;
    let mut resp = Json(serde_json::json!({ "user": s.user, "csrf": s.csrf })).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

#[derive(Deserialize)]
struct EventsQuery {
    /// Window results are sent only for this agent (the agent page's charts).
    agent: Option<String>,
}

struct Feed {
    rx: tokio::sync::broadcast::Receiver<Arc<events::Event>>,
    epoch: tokio::sync::watch::Receiver<u64>,
    tick: tokio::time::Interval,
    agent: Option<String>,
    shutdown: tokio_util::sync::CancellationToken,
}

/// One SSE stream: `anomaly`, `dead_letter`, `window` (of `?agent=` only) events as
/// they are ingested, `config` when any desired config changes, `tick` every 2 s
/// (refresh what the page shows), `resync` after this client fell behind.
async fn events_stream(
    State(st): State<Arc<AppState>>,
    _admin: Admin,
    Query(q): Query<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    if let Some(a) = &q.agent {
        validate_agent_id(a)?;
    }
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let feed = Feed {
        rx: st.ui.hub.subscribe(),
        epoch: st.config_epoch.subscribe(),
        tick,
        agent: q.agent,
        // Ends the stream at shutdown: graceful shutdown waits for open responses.
        shutdown: st.shutdown.clone(),
    };
    let stream = futures_util::stream::unfold(feed, |mut f| async move {
        let event = next_event(&mut f).await?;
        Some((Ok(event), f))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

async fn next_event(f: &mut Feed) -> Option<SseEvent> {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        tokio::select! {
            _ = f.shutdown.cancelled() => return None,
            _ = f.tick.tick() => {
                return Some(SseEvent::default().event("tick").data(fieldline_common::now_ms().to_string()));
            }
            changed = f.epoch.changed() => {
                changed.ok()?;
                let epoch = *f.epoch.borrow_and_update();
                return Some(SseEvent::default().event("config").data(epoch.to_string()));
            }
            got = f.rx.recv() => match got {
                Ok(ev) => {
                    if matches!(*ev, events::Event::Window { .. })
                        && f.agent.as_deref() != Some(ev.agent())
                    {
                        continue;
                    }
                    return SseEvent::default().event(ev.name()).json_data(&*ev).ok();
                }
                Err(RecvError::Lagged(_)) => return Some(SseEvent::default().event("resync").data("")),
                Err(RecvError::Closed) => return None,
            },
        }
    }
}
