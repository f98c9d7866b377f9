//! Credentials: agent credentials issued at enrollment, the bootstrap token(s) that
//! allow enrollment, and the admin token.
//!
//! Agent credentials are 256 random bits, so a single SHA-256 is enough to store
//! them (a slow password hash protects low-entropy secrets, which these are not);
//! only the hash is stored. Comparisons are constant-time.
//!
//! Wire form of an agent credential: `fla1.<agent_id>.<64 hex digits>`, sent as
//! `Authorization: Bearer <credential>`. Carrying the id lets the server find the
//! stored hash before it reads the body.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const PREFIX: &str = "fla1.";

/// Shortest accepted admin or bootstrap token.
pub const MIN_TOKEN_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no randomness available: {0}")]
    Random(String),
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// 256 random bits as 64 hex digits.
pub fn random_secret() -> Result<String, AuthError> {
    let mut buf = [0u8; 32];
    getrandom::getrandom(&mut buf).map_err(|e| AuthError::Random(e.to_string()))?;
    Ok(hex(&buf))
}

/// A new credential for `agent` and the hash to store.
pub fn issue(agent: &str) -> Result<(String, String), AuthError> {
    let credential = format!("{PREFIX}{agent}.{}", random_secret()?);
    let hash = sha256_hex(credential.as_bytes());
    Ok((credential, hash))
}

/// The agent id a credential claims, if it is well formed.
pub fn credential_agent(credential: &str) -> Option<&str> {
    let rest = credential.strip_prefix(PREFIX)?;
    let (agent, secret) = rest.rsplit_once('.')?;
    (secret.len() == 64 && secret.bytes().all(|b| b.is_ascii_hexdigit()) && !agent.is_empty())
        .then_some(agent)
}

/// Constant-time check of a presented secret against a stored hex hash.
pub fn verify(presented: &str, stored_hash: &str) -> bool {
    let h = sha256_hex(presented.as_bytes());
    h.as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

/// Configured tokens (admin, bootstrap), kept only as hashes in memory.
#[derive(Clone)]
pub struct Tokens {
    admin: String,
    bootstrap: Vec<String>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens(..)")
    }
}

impl Tokens {
    /// Fails with a message naming the offending setting.
    pub fn new(admin: &str, bootstrap: &[String]) -> Result<Self, String> {
        if admin.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "the admin token must be at least {MIN_TOKEN_LEN} characters (e.g. `openssl rand -hex 32`)"
            ));
        }
        if bootstrap.is_empty() {
            return Err("at least one bootstrap token is needed for agents to enroll".into());
        }
        if let Some(t) = bootstrap.iter().find(|t| t.len() < MIN_TOKEN_LEN) {
            let _ = t;
            return Err(format!(
                "every bootstrap token must be at least {MIN_TOKEN_LEN} characters"
            ));
        }
        if bootstrap.iter().any(|t| t == admin) {
            return Err("the admin token must differ from every bootstrap token".into());
        }
        Ok(Self {
            admin: sha256_hex(admin.as_bytes()),
            bootstrap: bootstrap.iter().map(|t| sha256_hex(t.as_bytes())).collect(),
        })
    }

    pub fn is_admin(&self, presented: &str) -> bool {
        verify(presented, &self.admin)
    }

    pub fn is_bootstrap(&self, presented: &str) -> bool {
        // Check all of them so timing does not tell which one matched.
        self.bootstrap
            .iter()
            .fold(false, |ok, h| verify(presented, h) | ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn issued_credentials_verify_and_name_their_agent() {
        let (cred, hash) = issue("gw-1.a").unwrap();
        assert_eq!(credential_agent(&cred), Some("gw-1.a"));
        assert!(verify(&cred, &hash));
        assert!(!hash.contains(&cred[cred.len() - 64..]));
        let (other, _) = issue("gw-1.a").unwrap();
        assert_ne!(cred, other);
        assert!(!verify(&other, &hash));
    }

    #[test]
    fn tokens_are_validated() {
        let long = "x".repeat(20);
        assert!(Tokens::new("short", std::slice::from_ref(&long)).is_err());
        assert!(Tokens::new(&long, &[]).is_err());
        assert!(Tokens::new(&long, std::slice::from_ref(&long)).is_err());
        let t = Tokens::new(&long, &["b".repeat(20)]).unwrap();
        assert!(t.is_admin(&long) && !t.is_admin(&"b".repeat(20)));
        assert!(t.is_bootstrap(&"b".repeat(20)) && !t.is_bootstrap(&long));
    }

    proptest! {
        #[test]
        fn malformed_credentials_name_no_agent(s in ".{0,100}") {
            if let Some(agent) = credential_agent(&s) {
                prop_assert!(s.starts_with(PREFIX) && s.ends_with(&s[s.len() - 64..]));
                prop_assert!(!agent.is_empty());
            }
        }
    }
}
