//! Desired agent configuration: per agent and per group (a label `key=value`),
//! versioned by a fleet-wide generation number, with history, staged rollouts and
//! the agents' reports. Store-independent: it keeps JSON documents in the store's
//! document API (compare-and-set, so concurrent fleet servers cannot lose updates).
//!
//! Resolution for one agent: its own config (an override) wins; otherwise, among the
//! groups whose label the agent carries, the one with the highest generation the
//! agent is eligible for. A group config under rollout goes only to its canaries and
//! to the agents whose `fnv1a(agent/generation) mod 100` is below the percentage;
//! the others keep the group's previous version. A rollout halts as soon as an agent
//! rejects its generation, and cannot be widened until a new config is put.
//!
//! Documents: `config/agent/<id>`, `config/group/<key>=<value>` ([`ScopeDoc`]),
//! `report/<id>` ([`Report`]); counters `generation` and `config_epoch` (bumped on
//! every change so long-polls on every server wake up).

use std::collections::BTreeMap;

use fieldline_common::config::AgentConfig;
use serde::{Deserialize, Serialize};

use crate::store::{fnv1a64, Store, StoreError};

/// Versions kept per scope.
pub const HISTORY: usize = 50;
/// Largest accepted config fragment.
pub const MAX_TOML_BYTES: usize = 256 * 1024;
pub const EPOCH: &str = "config_epoch";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Agent(String),
    Group { key: String, value: String },
}

impl Scope {
    fn doc_key(&self) -> String {
        match self {
            Scope::Agent(id) => format!("config/agent/{id}"),
            Scope::Group { key, value } => format!("config/group/{key}={value}"),
        }
    }

    pub fn name(&self) -> String {
        match self {
            Scope::Agent(id) => format!("agent {id}"),
            Scope::Group { key, value } => format!("group {key}={value}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub generation: u64,
    pub toml: String,
    pub created_ms: i64,
    #[serde(default)]
    pub note: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// The staged generation (the scope's newest version).
    pub generation: u64,
    pub canary: Vec<String>,
    /// 0..=100; 100 means everyone in the group.
    pub percent: u8,
    pub halted: Option<Halt>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Halt {
    pub agent: String,
    pub error: String,
    pub at_ms: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeDoc {
    /// Oldest first; the last one is the desired version.
    pub versions: Vec<Version>,
    #[serde(default)]
    pub rollout: Option<Rollout>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub observed_generation: u64,
    /// Generation the report is about (the newest the agent received).
    pub generation: u64,
    pub applied: bool,
    pub error: String,
    pub reported_ms: i64,
}

/// What one agent should run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resolved {
    pub generation: u64,
    pub toml: String,
    /// e.g. `agent gw-1` or `group site=berlin`.
    pub source: String,
}

/// Staged rollout requested with a new config or to widen a running one.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    #[serde(default)]
    pub canary: Vec<String>,
    pub percent: Option<u8>,
}

/// Checks a fragment the way an agent will: merged over a minimal local file.
pub fn validate_fragment(toml_text: &str) -> Result<(), ConfigError> {
    let problems = problems(toml_text);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::Invalid(problems.join("; ")))
    }
}

/// Every problem of a fragment, each with its field path (empty: valid). The same
/// check as [`put`] and the agent's `check-config`, without storing anything.
pub fn problems(toml_text: &str) -> Vec<String> {
    if toml_text.len() > MAX_TOML_BYTES {
        return vec![format!(
            "config is {} bytes, the limit is {MAX_TOML_BYTES}",
            toml_text.len()
        )];
    }
    let table: toml::Table = match toml_text.parse() {
        Ok(t) => t,
        Err(e) => {
            let e: toml::de::Error = e;
            return vec![format!("invalid toml: {}", e.message())];
        }
    };
    if table.contains_key("agent") {
        return vec![
            "a fleet config may not contain [agent]: identity and data_dir stay in the agent's own file"
                .into(),
        ];
    }
    let text =
        format!("[agent]\nid = \"fleet-validation\"\ndata_dir = \"/nonexistent\"\n{toml_text}");
    match AgentConfig::from_toml("desired config", &text, std::iter::empty()) {
        Ok(_) => Vec::new(),
        Err(e) => e.problems.iter().map(|p| p.to_string()).collect(),
    }
}

fn decode<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> Result<T, ConfigError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ConfigError::Store(StoreError::Corrupt(format!("{key}: {e}"))))
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, ConfigError> {
    serde_json::to_vec(v).map_err(|e| ConfigError::Store(StoreError::Corrupt(e.to_string())))
}

/// Read-modify-write of one document with compare-and-set; `f` returns `Ok(None)`
/// to leave it alone.
async fn update<T, R>(
    store: &dyn Store,
    key: &str,
    mut f: impl FnMut(Option<T>) -> Result<Option<(T, R)>, ConfigError>,
) -> Result<Option<R>, ConfigError>
where
    T: Serialize + for<'de> Deserialize<'de>,
{
    loop {
        let cur = store.doc_get(key).await?;
        let parsed = cur.as_deref().map(|b| decode::<T>(key, b)).transpose()?;
        let Some((next, out)) = f(parsed)? else {
            return Ok(None);
        };
        if store.doc_cas(key, cur.as_deref(), &encode(&next)?).await? {
            return Ok(Some(out));
        }
    }
}

pub fn eligible(rollout: &Rollout, agent: &str) -> bool {
    rollout.percent >= 100
        || rollout.canary.iter().any(|c| c == agent)
        || fnv1a64(format!("{agent}/{}", rollout.generation).as_bytes()) % 100
            < u64::from(rollout.percent)
}

/// Stores a new desired version for `scope`; returns its generation.
pub async fn put(
    store: &dyn Store,
    scope: &Scope,
    toml_text: &str,
    note: &str,
    rollout: Option<RolloutSpec>,
    now_ms: i64,
) -> Result<u64, ConfigError> {
    validate_fragment(toml_text)?;
    if let (Scope::Agent(_), Some(_)) = (scope, &rollout) {
        return Err(ConfigError::Invalid(
            "rollouts are for group configs; an agent config goes to its agent".into(),
        ));
    }
    if let Some(p) = rollout.as_ref().and_then(|r| r.percent) {
        if p > 100 {
            return Err(ConfigError::Invalid(format!(
                "percent must be 0..=100, got {p}"
            )));
        }
    }
    let generation = store.counter_next("generation").await?;
    let key = scope.doc_key();
    update::<ScopeDoc, ()>(store, &key, |doc| {
        let mut doc = doc.unwrap_or_default();
        doc.versions.push(Version {
            generation,
            toml: toml_text.to_string(),
            created_ms: now_ms,
            note: note.to_string(),
        });
        if doc.versions.len() > HISTORY {
            let extra = doc.versions.len() - HISTORY;
            doc.versions.drain(..extra);
        }
        doc.rollout = rollout.as_ref().map(|r| Rollout {
            generation,
            canary: r.canary.clone(),
            percent: r.percent.unwrap_or(0),
            halted: None,
        });
        Ok(Some((doc, ())))
    })
    .await?;
    store.counter_next(EPOCH).await?;
    Ok(generation)
}

/// Makes an earlier version of `scope` the desired one again, as a new generation
/// (history only grows, and agents see a change). A group rollback goes to every
/// agent of the group at once: it is the way out of a bad rollout.
pub async fn rollback(
    store: &dyn Store,
    scope: &Scope,
    generation: u64,
    now_ms: i64,
) -> Result<u64, ConfigError> {
    let doc = get(store, scope).await?;
    let Some(v) = doc.versions.iter().find(|v| v.generation == generation) else {
        return Err(ConfigError::NotFound(format!(
            "{} has no generation {generation} in its history",
            scope.name()
        )));
    };
    let note = format!("rollback to generation {generation}");
    put(store, scope, &v.toml, &note, None, now_ms).await
}

pub async fn get(store: &dyn Store, scope: &Scope) -> Result<ScopeDoc, ConfigError> {
    let key = scope.doc_key();
    match store.doc_get(&key).await? {
        Some(b) => decode(&key, &b),
        None => Err(ConfigError::NotFound(format!(
            "no config for {}",
            scope.name()
        ))),
    }
}

/// Widens a running rollout (more canaries, a higher percentage).
pub async fn widen(
    store: &dyn Store,
    scope: &Scope,
    spec: RolloutSpec,
) -> Result<Rollout, ConfigError> {
    let key = scope.doc_key();
    if store.doc_get(&key).await?.is_none() {
        return Err(ConfigError::NotFound(format!(
            "no config for {}",
            scope.name()
        )));
    }
    let out = update::<ScopeDoc, Rollout>(store, &key, |doc| {
        let mut doc = doc.unwrap_or_default();
        let Some(r) = doc.rollout.as_mut() else {
            return Err(ConfigError::Conflict(format!(
                "{} has no rollout in progress",
                scope.name()
            )));
        };
        if let Some(h) = &r.halted {
            return Err(ConfigError::Conflict(format!(
                "the rollout of generation {} halted: agent `{}` rejected it: {}; put a fixed config",
                r.generation, h.agent, h.error
            )));
        }
        if let Some(p) = spec.percent {
            if p > 100 || p < r.percent {
                return Err(ConfigError::Invalid(format!(
                    "percent must be {}..=100, got {p}",
                    r.percent
                )));
            }
            r.percent = p;
        }
        for c in &spec.canary {
            if !r.canary.contains(c) {
                r.canary.push(c.clone());
            }
        }
        let r = r.clone();
        Ok(Some((doc, r)))
    })
    .await?;
    store.counter_next(EPOCH).await?;
    out.ok_or_else(|| ConfigError::NotFound(format!("no config for {}", scope.name())))
}

/// What `agent` (with `labels`) should run.
pub async fn resolve(
    store: &dyn Store,
    agent: &str,
    labels: &BTreeMap<String, String>,
) -> Result<Option<Resolved>, ConfigError> {
    let own = Scope::Agent(agent.to_string());
    if let Some(b) = store.doc_get(&own.doc_key()).await? {
        let doc: ScopeDoc = decode(&own.doc_key(), &b)?;
        if let Some(v) = doc.versions.last() {
            return Ok(Some(Resolved {
                generation: v.generation,
                toml: v.toml.clone(),
                source: own.name(),
            }));
        }
    }
    let mut best: Option<Resolved> = None;
    for (key, value) in labels {
        let scope = Scope::Group {
            key: key.clone(),
            value: value.clone(),
        };
        let Some(b) = store.doc_get(&scope.doc_key()).await? else {
            continue;
        };
        let doc: ScopeDoc = decode(&scope.doc_key(), &b)?;
        let n = doc.versions.len();
        let version = match (&doc.rollout, doc.versions.last()) {
            (Some(r), Some(last)) if r.generation == last.generation && !eligible(r, agent) => {
                n.checked_sub(2).map(|i| &doc.versions[i])
            }
            (_, last) => last,
        };
        if let Some(v) = version {
            if best.as_ref().is_none_or(|b| v.generation > b.generation) {
                best = Some(Resolved {
                    generation: v.generation,
                    toml: v.toml.clone(),
                    source: scope.name(),
                });
            }
        }
    }
    Ok(best)
}

/// Records an agent's report; a rejection halts the rollout of that generation.
pub async fn report(
    store: &dyn Store,
    agent: &str,
    labels: &BTreeMap<String, String>,
    observed: u64,
    r: Option<&fieldline_common::wire::ConfigReport>,
    now_ms: i64,
) -> Result<(), ConfigError> {
    let new = Report {
        observed_generation: observed,
        generation: r.map(|r| r.generation).unwrap_or(observed),
        applied: r.is_none_or(|r| r.applied),
        error: r.map(|r| r.error.clone()).unwrap_or_default(),
        reported_ms: now_ms,
    };
    let key = format!("report/{agent}");
    let changed = update::<Report, ()>(store, &key, |cur| {
        // Unchanged reports are not rewritten: polls are frequent.
        match cur {
            Some(c)
                if c.observed_generation == new.observed_generation
                    && c.generation == new.generation
                    && c.applied == new.applied
                    && c.error == new.error =>
            {
                Ok(None)
            }
            _ => Ok(Some((new.clone(), ()))),
        }
    })
    .await?;
    if changed.is_none() || new.applied {
        return Ok(());
    }
    tracing::warn!(agent, generation = new.generation, error = %new.error, "agent rejected its config");
    for (key, value) in labels {
        let scope = Scope::Group {
            key: key.clone(),
            value: value.clone(),
        };
        let halted = update::<ScopeDoc, ()>(store, &scope.doc_key(), |doc| {
            let Some(mut doc) = doc else { return Ok(None) };
            match doc.rollout.as_mut() {
                Some(r) if r.generation == new.generation && r.halted.is_none() => {
                    r.halted = Some(Halt {
                        agent: agent.to_string(),
                        error: new.error.clone(),
                        at_ms: now_ms,
                    });
                    Ok(Some((doc, ())))
                }
                _ => Ok(None),
            }
        })
        .await?;
        if halted.is_some() {
            tracing::warn!(scope = %scope.name(), generation = new.generation, "rollout halted");
            store.counter_next(EPOCH).await?;
        }
    }
    Ok(())
}

pub async fn get_report(store: &dyn Store, agent: &str) -> Result<Option<Report>, ConfigError> {
    let key = format!("report/{agent}");
    store
        .doc_get(&key)
        .await?
        .map(|b| decode(&key, &b))
        .transpose()
}

/// Every scope that has a config, with its document.
pub async fn list(store: &dyn Store) -> Result<Vec<(String, ScopeDoc)>, ConfigError> {
    store
        .doc_list("config/")
        .await?
        .into_iter()
        .map(|(k, v)| {
            let doc = decode(&k, &v)?;
            Ok((k.trim_start_matches("config/").to_string(), doc))
        })
        .collect()
}

/// Desired vs. reported for one agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drift {
    pub agent: String,
    pub desired_generation: Option<u64>,
    pub desired_source: Option<String>,
    pub observed_generation: Option<u64>,
    /// `in_sync`, `pending` (not reported yet), `rejected`, or `no_config`.
    pub state: &'static str,
    pub error: Option<String>,
}

pub fn drift(agent: &str, desired: Option<&Resolved>, report: Option<&Report>) -> Drift {
    let state = match (desired, report) {
        (None, _) => "no_config",
        (Some(d), Some(r)) if r.observed_generation == d.generation => "in_sync",
        (Some(d), Some(r)) if r.generation == d.generation && !r.applied => "rejected",
        (Some(_), _) => "pending",
    };
    Drift {
        agent: agent.to_string(),
        desired_generation: desired.map(|d| d.generation),
        desired_source: desired.map(|d| d.source.clone()),
        observed_generation: report.map(|r| r.observed_generation),
        state,
        error: report.filter(|r| !r.applied).map(|r| r.error.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_are_validated_like_the_agent_does() {
        assert!(validate_fragment("[window]\nsize = \"5s\"\n").is_ok());
        let e = validate_fragment("[window]\nsize = \"-1s\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("window.size"), "{e}");
        let e = validate_fragment("[agent]\nid = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("may not contain [agent]"), "{e}");
        let e = validate_fragment("[window\n").unwrap_err().to_string();
        assert!(e.contains("invalid toml"), "{e}");
        let e = validate_fragment("[typo]\n").unwrap_err().to_string();
        assert!(e.contains("typo: unknown key"), "{e}");
    }

    #[test]
    fn percentage_rollouts_pick_a_stable_share() {
        let r = Rollout {
            generation: 7,
            canary: vec!["gw-canary".into()],
            percent: 30,
            halted: None,
        };
        let picked = (0..1000)
            .filter(|i| eligible(&r, &format!("gw-{i}")))
            .count();
        assert!((200..400).contains(&picked), "{picked}");
        assert!(eligible(&r, "gw-canary"));
        let all = Rollout {
            percent: 100,
            ..r.clone()
        };
        assert!((0..100).all(|i| eligible(&all, &format!("gw-{i}"))));
        let none = Rollout {
            percent: 0,
            canary: vec![],
            ..r
        };
        assert!(!(0..100).any(|i| eligible(&none, &format!("gw-{i}"))));
    }
}
