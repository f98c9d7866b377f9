//! Admin accounts, login sessions and CSRF tokens of the web UI.
//!
//! Design constraints:
//! - Passwords are stored only as Argon2id PHC strings (documents `admin/<user>` in
//!   the store, so every fleet server sharing a store knows the same accounts).
//!   Hashing and verifying run on the blocking pool, at most [`MAX_VERIFYING`] at
//!   once: each costs ~19 MiB and tens of milliseconds, which must not starve the
//!   agents' requests.
//! - An unknown user costs the same verification as a wrong password, so timing
//!   does not tell which accounts exist. After [`MAX_FAILURES`] failures within
//!   [`FAILURE_WINDOW`] a user name is refused without checking until the window ends.
//! - A session id is 256 random bits, sent only in an `HttpOnly; SameSite=Strict`
//!   cookie (`Secure` over TLS); the server keeps its SHA-256, never the id.
//!   Sessions live in this process (a restart logs operators out; behind a load
//!   balancer use sticky sessions) and expire after a fixed lifetime.
//! - Every state change made with a session needs the session's CSRF token in the
//!   `x-csrf-token` header. The token reaches the page only through a same-origin
//!   JSON answer, which another site cannot read.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use axum::http::{HeaderMap, Method};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::auth::{random_secret, sha256_hex};
use crate::store::{Store, StoreError};

pub const COOKIE: &str = "fl_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
pub const MIN_PASSWORD_LEN: usize = 12;
const MAX_PASSWORD_LEN: usize = 1024;
pub const MAX_FAILURES: u32 = 5;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(300);
const MAX_VERIFYING: usize = 2;
/// Bounds the session table: a flood of logins cannot grow memory without limit.
const MAX_SESSIONS: usize = 10_000;
const ACCOUNT_PREFIX: &str = "admin/";

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    Invalid(String),
    #[error("account `{0}` already exists")]
    Exists(String),
    #[error("too many failed logins for `{0}`; try again in a few minutes")]
    RateLimited(String),
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a request was not admitted by its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No cookie, an unknown or an expired session.
    Unauthenticated,
    /// A state change without the session's CSRF token.
    Csrf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Account {
    user: String,
    /// Argon2id PHC string.
    hash: String,
    created_ms: i64,
}

#[derive(Debug, Clone)]
pub struct Session {
    pub user: String,
    pub csrf: String,
    expires: Instant,
}

pub struct Sessions {
    ttl: Duration,
    secure: bool,
    live: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<String, (u32, Instant)>>,
    verifying: tokio::sync::Semaphore,
    /// Verified against when the user is unknown, so both paths cost the same.
    dummy_hash: String,
}

pub fn validate_user(user: &str) -> Result<(), SessionError> {
    if user.is_empty()
        || user.len() > 64
        || !user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
    {
        return Err(SessionError::Invalid(
            "user name must be 1-64 characters of [A-Za-z0-9-_.@]".into(),
        ));
    }
    Ok(())
}

fn validate_password(password: &str) -> Result<(), SessionError> {
    let n = password.chars().count();
    if n < MIN_PASSWORD_LEN || password.len() > MAX_PASSWORD_LEN {
        return Err(SessionError::Invalid(format!(
            "password must be {MIN_PASSWORD_LEN}-{MAX_PASSWORD_LEN} characters, got {n}"
        )));
    }
    Ok(())
}

fn hash_password(password: &str) -> Result<String, SessionError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| SessionError::Hash(e.to_string()))
}

fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Creates an admin account, or replaces its password when `replace` is set.
pub async fn add_account(
    store: &dyn Store,
    user: &str,
    password: &str,
    replace: bool,
    now_ms: i64,
) -> Result<(), SessionError> {
    validate_user(user)?;
    validate_password(password)?;
    let pw = password.to_string();
    let hash = tokio::task::spawn_blocking(move || hash_password(&pw))
        .await
        .map_err(|e| SessionError::Hash(e.to_string()))??;
    let doc = serde_json::to_vec(&Account {
        user: user.to_string(),
        hash,
        created_ms: now_ms,
    })
    .map_err(|e| SessionError::Hash(e.to_string()))?;
    let key = format!("{ACCOUNT_PREFIX}{user}");
    loop {
        let cur = store.doc_get(&key).await?;
        if cur.is_some() && !replace {
            return Err(SessionError::Exists(user.to_string()));
        }
        if store.doc_cas(&key, cur.as_deref(), &doc).await? {
            return Ok(());
        }
    }
}

/// Creates the first account from `FIELDLINE_ADMIN_PASSWORD` when the store has
/// none yet; returns whether it did. Later runs leave existing accounts alone, so
/// a changed variable does not silently reset a password.
pub async fn bootstrap(
    store: &dyn Store,
    user: &str,
    password: &str,
    now_ms: i64,
) -> Result<bool, SessionError> {
    if !store.doc_list(ACCOUNT_PREFIX).await?.is_empty() {
        return Ok(false);
    }
    match add_account(store, user, password, false, now_ms).await {
        Ok(()) => Ok(true),
        // Another server sharing the store created it at the same moment.
        Err(SessionError::Exists(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

pub async fn accounts(store: &dyn Store) -> Result<Vec<String>, SessionError> {
    Ok(store
        .doc_list(ACCOUNT_PREFIX)
        .await?
        .into_iter()
        .map(|(k, _)| k.trim_start_matches(ACCOUNT_PREFIX).to_string())
        .collect())
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Methods that change nothing and so need no CSRF token.
fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

impl Sessions {
    pub fn new(ttl: Duration, secure: bool) -> Result<Self, SessionError> {
        let dummy = random_secret().map_err(|e| SessionError::Hash(e.to_string()))?;
        Ok(Self {
            ttl,
            secure,
            live: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            verifying: tokio::sync::Semaphore::new(MAX_VERIFYING),
            dummy_hash: hash_password(&dummy)?,
        })
    }

    /// Checks a login; on success returns the new session id and its CSRF token.
    pub async fn login(
        &self,
        store: &dyn Store,
        user: &str,
        password: &str,
    ) -> Result<Option<(String, Session)>, SessionError> {
        validate_user(user)?;
        if password.len() > MAX_PASSWORD_LEN {
            return Ok(None);
        }
        self.check_rate(user)?;
        let stored = match store.doc_get(&format!("{ACCOUNT_PREFIX}{user}")).await? {
            Some(b) => serde_json::from_slice::<Account>(&b)
                .map(|a| a.hash)
                .map_err(|e| StoreError::Corrupt(format!("account {user}: {e}")))?,
            None => String::new(),
        };
        let known = !stored.is_empty();
        let phc = if known {
            stored
        } else {
            self.dummy_hash.clone()
        };
        let ok = {
            let _permit = self
                .verifying
                .acquire()
                .await
                .map_err(|e| SessionError::Hash(e.to_string()))?;
            let pw = password.to_string();
            tokio::task::spawn_blocking(move || verify_password(&pw, &phc))
                .await
                .map_err(|e| SessionError::Hash(e.to_string()))?
        };
        if !(ok && known) {
            self.record_failure(user);
            return Ok(None);
        }
        self.failures.lock().expect("failures lock").remove(user);
        let id = random_secret().map_err(|e| SessionError::Hash(e.to_string()))?;
        let session = Session {
            user: user.to_string(),
            csrf: random_secret().map_err(|e| SessionError::Hash(e.to_string()))?,
            expires: Instant::now() + self.ttl,
        };
        let mut live = self.live.lock().expect("sessions lock");
        let now = Instant::now();
        live.retain(|_, s| s.expires > now);
        if live.len() >= MAX_SESSIONS {
            // Drop the session closest to expiry rather than refusing logins.
            if let Some(k) = live
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
            {
                live.remove(&k);
            }
        }
        live.insert(sha256_hex(id.as_bytes()), session.clone());
        Ok(Some((id, session)))
    }

    fn check_rate(&self, user: &str) -> Result<(), SessionError> {
        let mut f = self.failures.lock().expect("failures lock");
        let now = Instant::now();
        f.retain(|_, (_, since)| now.duration_since(*since) < FAILURE_WINDOW);
        match f.get(user) {
            Some((n, _)) if *n >= MAX_FAILURES => Err(SessionError::RateLimited(user.to_string())),
            _ => Ok(()),
        }
    }

    fn record_failure(&self, user: &str) {
        let mut f = self.failures.lock().expect("failures lock");
        let e = f.entry(user.to_string()).or_insert((0, Instant::now()));
        e.0 += 1;
    }

    /// The session a request belongs to; state changes also need its CSRF token.
    pub fn authorize(&self, headers: &HeaderMap, method: &Method) -> Result<Session, Refusal> {
        let id = cookie_value(headers, COOKIE).ok_or(Refusal::Unauthenticated)?;
        let key = sha256_hex(id.as_bytes());
        let session = {
            let mut live = self.live.lock().expect("sessions lock");
            match live.get(&key) {
                Some(s) if s.expires > Instant::now() => s.clone(),
                Some(_) => {
                    live.remove(&key);
                    return Err(Refusal::Unauthenticated);
                }
                None => return Err(Refusal::Unauthenticated),
            }
        };
        if !is_safe(method) {
            let presented = headers
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !bool::from(presented.as_bytes().ct_eq(session.csrf.as_bytes())) {
                return Err(Refusal::Csrf);
            }
        }
        Ok(session)
    }

    /// Ends the session of this request (if any).
    pub fn logout(&self, headers: &HeaderMap) {
        if let Some(id) = cookie_value(headers, COOKIE) {
            self.live
                .lock()
                .expect("sessions lock")
                .remove(&sha256_hex(id.as_bytes()));
        }
    }

    pub fn set_cookie(&self, id: &str) -> String {
        format!(
            "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
            self.ttl.as_secs(),
            if self.secure { "; Secure" } else { "" }
        )
    }

    pub fn clear_cookie(&self) -> String {
        format!(
            "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
            if self.secure { "; Secure" } else { "" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::SledStore;

    fn headers(cookie: Option<&str>, csrf: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(c) = cookie {
            h.insert("cookie", format!("other=1; {COOKIE}={c}").parse().unwrap());
        }
        if let Some(t) = csrf {
            h.insert(CSRF_HEADER, t.parse().unwrap());
        }
        h
    }

    #[tokio::test]
    async fn login_sessions_and_csrf() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 1000).unwrap();
        let sessions = Sessions::new(Duration::from_secs(60), false).unwrap();
        assert!(matches!(
            add_account(&store, "ops", "short", false, 1).await,
            Err(SessionError::Invalid(_))
        ));
        assert!(bootstrap(&store, "ops", "correct horse battery", 1)
            .await
            .unwrap());
        // A second bootstrap does not reset the password.
        assert!(!bootstrap(&store, "ops", "another password!!", 2)
            .await
            .unwrap());
        assert!(matches!(
            add_account(&store, "ops", "another password!!", false, 2).await,
            Err(SessionError::Exists(_))
        ));
        assert!(sessions
            .login(&store, "ops", "another password!!")
            .await
            .unwrap()
            .is_none());
        assert!(sessions
            .login(&store, "nobody", "correct horse battery")
            .await
            .unwrap()
            .is_none());
        let (id, s) = sessions
            .login(&store, "ops", "correct horse battery")
            .await
            .unwrap()
            .expect("logged in");
        assert_eq!(id.len(), 64);
        assert!(!store
            .doc_get("admin/ops")
            .await
            .unwrap()
            .map(|d| String::from_utf8_lossy(&d).contains("correct horse"))
            .unwrap_or(true));

        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(
            sessions.authorize(&headers(None, None), &get).unwrap_err(),
            Refusal::Unauthenticated
        );
        assert_eq!(
            sessions
                .authorize(&headers(Some("f00"), None), &get)
                .unwrap_err(),
            Refusal::Unauthenticated
        );
        assert_eq!(
            sessions
                .authorize(&headers(Some(&id), None), &get)
                .unwrap()
                .user,
            "ops"
        );
        assert_eq!(
            sessions
                .authorize(&headers(Some(&id), None), &post)
                .unwrap_err(),
            Refusal::Csrf
        );
        assert_eq!(
            sessions
                .authorize(&headers(Some(&id), Some("wrong")), &Method::DELETE)
                .unwrap_err(),
            Refusal::Csrf
        );
        assert!(sessions
            .authorize(&headers(Some(&id), Some(&s.csrf)), &post)
            .is_ok());
        let cookie = sessions.set_cookie(&id);
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
        assert!(!cookie.contains("Secure"));
        sessions.logout(&headers(Some(&id), None));
        assert_eq!(
            sessions
                .authorize(&headers(Some(&id), None), &get)
                .unwrap_err(),
            Refusal::Unauthenticated
        );
    }

    #[tokio::test]
    async fn repeated_failures_lock_the_user_name_out() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 1000).unwrap();
        let sessions = Sessions::new(Duration::from_secs(60), true).unwrap();
        add_account(&store, "ops", "correct horse battery", false, 1)
            .await
            .unwrap();
        for _ in 0..MAX_FAILURES {
            assert!(sessions
                .login(&store, "ops", "wrong password!!")
                .await
                .unwrap()
                .is_none());
        }
        // Even the right password is refused until the window passes.
        assert!(matches!(
            sessions.login(&store, "ops", "correct horse battery").await,
            Err(SessionError::RateLimited(_))
        ));
        assert!(sessions.set_cookie("x").ends_with("; Secure"));
    }
}
