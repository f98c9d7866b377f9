//! Fleet configuration on the agent: receive, validate, persist, apply.
//!
//! The fleet sends a TOML fragment (`DesiredConfig`) merged over the agent's own
//! config file; it may not contain `[agent]`, so identity and data directory stay
//! local. A long poll (`POST /api/v1/config/poll`) brings changes within about a
//! second of an operator's change, and again on reconnect.
//!
//! Applying: a fragment that does not validate (`AgentConfig::from_toml`, the same
//! check `check-config` runs) is rejected and reported with the error; the running
//! config is not touched. A valid one is persisted as `trying` and the agent
//! restarts into it: the run stops gracefully (state flushed), then the binary
//! re-executes itself ([`Outcome::Restart`]), because the embedded MQTT broker can
//! only be released by ending the process. If the new config does not stay up for
//! [`CONFIRM_AFTER`] (fails to start, crashes), the next start reports it rejected
//! and runs the last good config again.
//!
//! State: `<data_dir>/fleet-config.json` ([`State`]), written atomically.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fieldline_common::config::AgentConfig;
use fieldline_common::wire::{ConfigPoll, ConfigReport, DesiredConfig, PROTOCOL_VERSION};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::uplink;

/// A new config that runs this long without failing is confirmed as good.
pub const CONFIRM_AFTER: Duration = Duration::from_secs(3);
/// How long one long poll may be held by the fleet.
const POLL_WAIT: Duration = Duration::from_secs(20);
pub const STATE_FILE: &str = "fleet-config.json";

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("invalid config\n{0}")]
    Config(#[from] fieldline_common::config::ConfigError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write the fleet config state {path}: {source}")]
    State {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Uplink(#[from] uplink::UplinkError),
    #[error(transparent)]
    Run(#[from] crate::run::RunError),
}

/// What the caller does after [`run`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stopped on request.
    Exit,
    /// A new config was accepted (or a trial failed): start the process again.
    Restart,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub generation: u64,
    pub toml: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The last fleet config that ran for [`CONFIRM_AFTER`].
    pub good: Option<Applied>,
    /// A config being tried; `started` is set when a run begins with it.
    pub trying: Option<Applied>,
    #[serde(default)]
    pub started: bool,
    /// The newest rejection, reported until a newer generation is applied.
    pub rejected: Option<ConfigReport>,
}

impl State {
    fn load(path: &Path) -> State {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "fleet config state unreadable; starting from the local file");
                State::default()
            }),
            Err(_) => State::default(),
        }
    }

    fn save(&self, path: &Path) -> Result<(), ReconcileError> {
        let err = |source| ReconcileError::State {
            path: path.display().to_string(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| err(e.into()))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes).map_err(err)?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }

    fn observed(&self) -> u64 {
        self.good.as_ref().map(|g| g.generation).unwrap_or(0)
    }

    fn received(&self) -> u64 {
        [&self.good, &self.trying]
            .into_iter()
            .flatten()
            .map(|a| a.generation)
            .chain(self.rejected.as_ref().map(|r| r.generation))
            .max()
            .unwrap_or(0)
    }

    /// What the next poll reports.
    fn report(&self) -> Option<ConfigReport> {
        match (&self.rejected, &self.good) {
            (Some(r), g) if g.as_ref().is_none_or(|g| r.generation > g.generation) => {
                Some(r.clone())
            }
            (_, Some(g)) => Some(ConfigReport {
                generation: g.generation,
                applied: true,
                error: String::new(),
            }),
            _ => None,
        }
    }
}

/// Deep-merges a fleet fragment over the local config text.
pub fn merge(local: &str, fragment: &str) -> Result<String, String> {
    let mut base: toml::Table = local
        .parse()
        .map_err(|e: toml::de::Error| format!("local config: {}", e.message()))?;
    let over: toml::Table = fragment
        .parse()
        .map_err(|e: toml::de::Error| format!("invalid toml: {}", e.message()))?;
    if over.contains_key("agent") {
        return Err("a fleet config may not contain [agent]".into());
    }
    fn deep(base: &mut toml::Table, over: toml::Table) {
        for (k, v) in over {
            match (base.get_mut(&k), v) {
                (Some(toml::Value::Table(b)), toml::Value::Table(o)) => deep(b, o),
                (_, v) => {
                    base.insert(k, v);
                }
            }
        }
    }
    deep(&mut base, over);
    Ok(base.to_string())
}

/// The config an agent runs with a fleet fragment applied, validated.
pub fn effective(path: &Path, local: &str, fragment: &str) -> Result<AgentConfig, String> {
    let merged = merge(local, fragment)?;
    AgentConfig::from_toml(&path.display().to_string(), &merged, std::env::vars()).map_err(|e| {
        e.problems
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    })
}

struct Shared {
    state: Mutex<State>,
    changed: Notify,
}

impl Shared {
    fn snapshot(&self) -> State {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Runs the agent from `config_path` with the fleet's config applied, until
/// `shutdown` or until a restart is needed.
pub async fn run(
    config_path: &Path,
    shutdown: CancellationToken,
) -> Result<Outcome, ReconcileError> {
    let local = std::fs::read_to_string(config_path).map_err(|source| ReconcileError::Read {
        path: config_path.display().to_string(),
        source,
    })?;
    let local_cfg =
        AgentConfig::from_toml(&config_path.display().to_string(), &local, std::env::vars())?;
    std::fs::create_dir_all(&local_cfg.agent.data_dir).map_err(|source| ReconcileError::State {
        path: local_cfg.agent.data_dir.display().to_string(),
        source,
    })?;
    let state_path = local_cfg.agent.data_dir.join(STATE_FILE);
    let mut state = State::load(&state_path);

    // Decide what to run: a trial on its first start, else the last good config.
    let mut trial = None;
    if let Some(t) = state.trying.take() {
        if state.started {
            tracing::warn!(
                generation = t.generation,
                "fleet config did not stay up; back to the last good one"
            );
            state.rejected = Some(ConfigReport {
                generation: t.generation,
                applied: false,
                error:
                    "the agent stopped before the config was confirmed (failed to start or crashed)"
                        .into(),
            });
            state.started = false;
        } else {
            state.trying = Some(t.clone());
            state.started = true;
            trial = Some(t);
        }
        state.save(&state_path)?;
    }
    let cfg = match trial.as_ref().or(state.good.as_ref()) {
        Some(a) => match effective(config_path, &local, &a.toml) {
            Ok(c) => c,
            Err(e) => {
                // The local file changed under a stored fleet config.
                tracing::warn!(generation = a.generation, error = %e, "stored fleet config no longer valid; running the local file");
                local_cfg.clone()
            }
        },
        None => local_cfg.clone(),
    };
    if let Some(t) = &trial {
        tracing::info!(generation = t.generation, "trying new fleet config");
    }

    let shared = Arc::new(Shared {
        state: Mutex::new(state),
        changed: Notify::new(),
    });
    let client = uplink::Client::new(&local_cfg)?;
    let (tx, mut rx) = mpsc::channel::<DesiredConfig>(4);
    let stop_poll = shutdown.child_token();
    let poller = tokio::spawn(poll_loop(
        client,
        local_cfg.clone(),
        shared.clone(),
        tx,
        stop_poll.clone(),
    ));

    let stop_run = shutdown.child_token();
    let mut task = tokio::spawn(crate::run(cfg, stop_run.clone()));
    let confirm = tokio::time::sleep(CONFIRM_AFTER);
    tokio::pin!(confirm);
    let mut confirmed = trial.is_none();
    let save = |shared: &Shared, f: &mut dyn FnMut(&mut State)| -> Result<(), ReconcileError> {
        let snapshot = {
            let mut s = shared.state.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut s);
            s.clone()
        };
        snapshot.save(&state_path)?;
        shared.changed.notify_one();
        Ok(())
    };

    let outcome = loop {
        tokio::select! {
            r = &mut task => {
                let r = r.unwrap_or(Ok(()));
                if !confirmed && !shutdown.is_cancelled() {
                    let error = match &r {
                        Err(e) => format!("failed to start: {e}"),
                        Ok(()) => "stopped before it was confirmed".to_string(),
                    };
                    tracing::warn!(%error, "new fleet config failed; restarting with the last good one");
                    save(&shared, &mut |s| {
                        if let Some(t) = s.trying.take() {
                            s.rejected = Some(ConfigReport { generation: t.generation, applied: false, error: error.clone() });
                        }
                        s.started = false;
                    })?;
                    break Ok(Outcome::Restart);
                }
                break r.map(|_| Outcome::Exit).map_err(ReconcileError::from);
            }
            _ = &mut confirm, if !confirmed => {
                confirmed = true;
                save(&shared, &mut |s| {
                    if let Some(t) = s.trying.take() {
                        tracing::info!(generation = t.generation, "fleet config applied");
                        s.good = Some(t);
                    }
                    s.started = false;
                })?;
            }
            Some(d) = rx.recv() => {
                let current = shared.snapshot();
                if current.good.as_ref().is_some_and(|g| g.generation == d.generation)
                    || current.trying.as_ref().is_some_and(|t| t.generation == d.generation)
                    || current.rejected.as_ref().is_some_and(|r| r.generation == d.generation)
                {
                    continue;
                }
                match effective(config_path, &local, &d.toml) {
                    Err(error) => {
                        tracing::warn!(generation = d.generation, %error, "fleet config rejected; the running config stays");
                        save(&shared, &mut |s| {
                            s.rejected = Some(ConfigReport { generation: d.generation, applied: false, error: error.clone() });
                        })?;
                    }
                    Ok(_) => {
                        tracing::info!(generation = d.generation, "new fleet config accepted; restarting into it");
                        save(&shared, &mut |s| {
                            s.trying = Some(Applied { generation: d.generation, toml: d.toml.clone() });
                            s.started = false;
                        })?;
                        stop_run.cancel();
                        let _ = (&mut task).await;
                        break Ok(Outcome::Restart);
                    }
                }
            }
            _ = shutdown.cancelled() => {
                let r = (&mut task).await.unwrap_or(Ok(()));
                break r.map(|_| Outcome::Exit).map_err(ReconcileError::from);
            }
        }
    };
    stop_poll.cancel();
    let _ = poller.await;
    outcome
}

/// Long-polls the fleet; hands every desired config to the run loop. A changed
/// report (a rejection) interrupts the poll so the fleet hears of it at once.
async fn poll_loop(
    client: uplink::Client,
    cfg: AgentConfig,
    shared: Arc<Shared>,
    tx: mpsc::Sender<DesiredConfig>,
    shutdown: CancellationToken,
) {
    let mut backoff = uplink::Backoff::new(cfg.uplink.backoff_min, cfg.uplink.backoff_max);
    let mut failing = false;
    loop {
        let s = shared.snapshot();
        let poll = ConfigPoll {
            v: PROTOCOL_VERSION,
            agent_id: cfg.agent.id.clone(),
            observed_generation: s.observed(),
            report: s.report(),
            received_generation: s.received(),
            wait_ms: POLL_WAIT.as_millis() as u64,
        };
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = shared.changed.notified() => continue,
            r = client.poll_config(&poll, POLL_WAIT + Duration::from_secs(10)) => r,
        };
        match result {
            Ok(reply) => {
                if failing {
                    tracing::info!("config poll works again");
                    failing = false;
                }
                backoff.reset();
                if let Some(d) = reply.desired {
                    if d.generation != s.received() {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            sent = tx.send(d) => if sent.is_err() { return },
                        }
                        // Let the run loop record what it did before polling again.
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = shared.changed.notified() => {}
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "config poll failed; will keep trying");
                    failing = true;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }
}

/// Where the state lives for a config (tests and tools).
pub fn state_path(cfg: &AgentConfig) -> PathBuf {
    cfg.agent.data_dir.join(STATE_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_merge_over_the_local_file_but_not_its_identity() {
        let local = "[agent]\nid = \"gw\"\ndata_dir = \"/d\"\n[window]\nsize = \"10s\"\nidle_timeout = \"5s\"\n";
        let merged = merge(local, "[window]\nsize = \"2s\"\n").unwrap();
        let t: toml::Table = merged.parse().unwrap();
        assert_eq!(t["window"]["size"].as_str(), Some("2s"));
        assert_eq!(t["window"]["idle_timeout"].as_str(), Some("5s"));
        assert_eq!(t["agent"]["id"].as_str(), Some("gw"));
        assert!(merge(local, "[agent]\nid = \"evil\"\n").is_err());
        assert!(merge(local, "[window\n")
            .unwrap_err()
            .contains("invalid toml"));
        let e = effective(Path::new("x.toml"), local, "[window]\nsize = \"nope\"\n").unwrap_err();
        assert!(e.contains("window.size"), "{e}");
    }

    #[test]
    fn reports_say_what_was_applied_or_rejected_last() {
        let mut s = State::default();
        assert_eq!(s.report(), None);
        s.good = Some(Applied {
            generation: 3,
            toml: String::new(),
        });
        assert_eq!(
            s.report().map(|r| (r.generation, r.applied)),
            Some((3, true))
        );
        s.rejected = Some(ConfigReport {
            generation: 5,
            applied: false,
            error: "bad".into(),
        });
        assert_eq!(
            s.report().map(|r| (r.generation, r.applied)),
            Some((5, false))
        );
        // An older rejection is superseded by a newer applied generation.
        s.good = Some(Applied {
            generation: 6,
            toml: String::new(),
        });
        assert_eq!(
            s.report().map(|r| (r.generation, r.applied)),
            Some((6, true))
        );
        assert_eq!(s.observed(), 6);
    }
}
