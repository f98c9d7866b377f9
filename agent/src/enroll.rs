//! `fieldline-agent enroll`: trades a bootstrap token for this agent's credential
//! and writes it where the uplink reads it (`[uplink] credential_file`).
//!
//! The credential is shown by the fleet exactly once (it keeps only a hash), so the
//! file is written atomically (temp file + rename) with mode 0600 before anything
//! else happens; an existing credential file is never overwritten silently.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fieldline_common::codec;
use fieldline_common::config::AgentConfig;
use fieldline_common::wire::{EnrollReply, EnrollRequest, PROTOCOL_VERSION};

/// File name of the credential in `agent.data_dir` when `credential_file` is unset.
pub const DEFAULT_CREDENTIAL_FILE: &str = "fleet-credential";

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("this agent already has a credential in {0}; delete it (and have an admin revoke and allow re-enrollment) to enroll again")]
    AlreadyHasCredential(PathBuf),
    #[error("fleet unreachable at {url}: {why}")]
    Transport { url: String, why: String },
    #[error("the fleet refused the enrollment ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("bad answer from the fleet: {0}")]
    Decode(String),
    #[error("cannot write the credential to {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where this agent's credential lives.
pub fn credential_path(cfg: &AgentConfig) -> PathBuf {
    cfg.uplink
        .credential_file
        .clone()
        .unwrap_or_else(|| cfg.agent.data_dir.join(DEFAULT_CREDENTIAL_FILE))
}

/// Reads the credential; `None` when the agent has not enrolled yet.
pub fn read_credential(path: &Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s.trim().to_string()).filter(|s| !s.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Enrolls with the fleet at `fleet_url` (default: the config's) and writes the
/// credential. Returns where it was written.
pub async fn enroll(
    cfg: &AgentConfig,
    fleet_url: Option<&str>,
    token: &str,
) -> Result<PathBuf, EnrollError> {
    let path = credential_path(cfg);
    if path.exists() {
        return Err(EnrollError::AlreadyHasCredential(path));
    }
    let base = fleet_url
        .unwrap_or(&cfg.uplink.fleet_url)
        .trim_end_matches('/');
    let url = format!("{base}/api/v1/enroll");
    let transport = |e: &dyn std::error::Error| EnrollError::Transport {
        url: url.clone(),
        why: crate::uplink::error_chain(e),
    };
    let http = crate::uplink::http_client(Duration::from_secs(10), cfg.uplink.ca_file.as_deref())
        .map_err(|e| EnrollError::Transport {
        url: url.clone(),
        why: e.to_string(),
    })?;
    let body = codec::to_cbor(&EnrollRequest {
        v: PROTOCOL_VERSION,
        agent_id: cfg.agent.id.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    })
    .map_err(|e| EnrollError::Decode(e.to_string()))?;
    let resp = http
        .post(&url)
        .bearer_auth(token)
        .header(reqwest::header::CONTENT_TYPE, "application/cbor")
        .body(body)
        .send()
        .await
        .map_err(|e| transport(&e))?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| transport(&e))?;
    if !status.is_success() {
        let message = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(300).collect());
        return Err(EnrollError::Refused {
            status: status.as_u16(),
            message,
        });
    }
    let reply: EnrollReply = codec::from_cbor(&bytes, codec::MAX_MESSAGE_BYTES)
        .map_err(|e| EnrollError::Decode(e.to_string()))?;
    if reply.agent_id != cfg.agent.id {
        return Err(EnrollError::Decode(format!(
            "credential issued for `{}`, expected `{}`",
            reply.agent_id, cfg.agent.id
        )));
    }
    write_private(&path, &reply.credential).map_err(|source| EnrollError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Writes `text` to `path` readable only by the owner, atomically.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_file_is_private_and_read_back_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/cred");
        assert_eq!(read_credential(&path).unwrap(), None);
        write_private(&path, "fla1.gw.abc").unwrap();
        assert_eq!(
            read_credential(&path).unwrap().as_deref(),
            Some("fla1.gw.abc")
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
