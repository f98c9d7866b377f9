//! Agent configuration: TOML file + `FIELDLINE_*` overrides → validated [`AgentConfig`].
//!
//! Loading happens once, in three steps:
//! 1. the file is merged over the embedded `default.toml`;
//! 2. environment overrides `FIELDLINE_<SECTION>__<KEY>=value` are applied
//!    (e.g. `FIELDLINE_UPLINK__FLEET_URL`); values are parsed as TOML when they can
//!    be (numbers, booleans, arrays) and taken as strings otherwise;
//! 3. each section is deserialized and validated; **every** problem is collected with
//!    its field path, so `check-config` can list them all at once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::duration;
use crate::topic::TopicTemplate;

pub mod detector;
pub mod pipeline;
mod raw;

pub use pipeline::PipelineConfig;

const DEFAULTS: &str = include_str!("default.toml");

/// Environment variables with this prefix override config keys.
pub const ENV_PREFIX: &str = "FIELDLINE_";
/// `FIELDLINE_*` variables that are not config keys.
/// (The tokens are read by `fieldline-agent enroll` and the fleet server, which may
/// share an environment with an agent.)
const ENV_RESERVED: &[&str] = &["LOG", "CONFIG", "BOOTSTRAP_TOKEN", "ADMIN_TOKEN"];

/// One thing wrong with a config, at a field path such as `window.size`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in one config source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .problems.iter().map(|p| format!("{}: {p}", .file)).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    /// The file name the problems belong to.
    pub file: String,
    pub problems: Vec<Problem>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    pub agent: AgentSection,
    pub mqtt: MqttConfig,
    pub window: WindowConfig,
    pub uplink: UplinkConfig,
    pub storage: StorageConfig,
    pub outbox: OutboxConfig,
    /// `[[pipeline]]` rules; the `[window]` section as the default pipeline when none.
    pub pipelines: Vec<PipelineConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSection {
    pub id: String,
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttConfig {
    pub listen: SocketAddr,
    pub topic_template: TopicTemplate,
    pub max_payload_bytes: usize,
    pub max_connections: usize,
    pub broker_buffer_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowConfig {
    pub size: Duration,
    pub max_out_of_orderness: Duration,
    pub idle_timeout: Duration,
    pub max_future: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkConfig {
    pub fleet_url: String,
    pub batch_max_records: usize,
    pub flush_interval: Duration,
    pub heartbeat_interval: Duration,
    pub request_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// `None`: `fleet-credential` in `agent.data_dir`.
    pub credential_file: Option<PathBuf>,
    /// Trusted CA for an https `fleet_url`; `None`: the system trust store.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    pub cache_capacity_bytes: u64,
    pub flush_every: Duration,
    pub durability: Durability,
    pub checkpoint_interval: Duration,
}

/// When an ingest-log batch becomes durable (`storage.durability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync before the batch is processed.
    BatchFsync,
    /// sled's periodic flush, every `storage.flush_every`.
    Interval,
}

/// `[outbox]`: bounds of the records waiting for the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxConfig {
    pub max_bytes: u64,
    /// `None`: no age bound.
    pub max_age: Option<Duration>,
    pub on_full: OnFull,
    pub forward_raw_readings: bool,
}

/// What a full outbox does (`outbox.on_full`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFull {
    /// Delete the oldest records (counted and reported).
    DropOldest,
    /// Stop taking readings until the fleet acknowledges.
    Block,
}

impl AgentConfig {
    /// Reads `path`, applies the process environment, validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: source.clone(),
            problems: vec![Problem {
                path: "<file>".into(),
                message: format!("cannot read: {e}"),
            }],
        })?;
        Self::from_toml(&source, &text, std::env::vars())
    }

    /// Parses `text` (named `source` in errors) with the given environment.
    pub fn from_toml(
        source: &str,
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let fail = |problems| ConfigError {
            file: source.to_string(),
            problems,
        };
        let mut merged: toml::Table = DEFAULTS.parse().expect("embedded default.toml parses");
        let mut user: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            fail(vec![Problem {
                path: "<toml>".into(),
                message: e.message().to_string().replace('\n', " "),
            }])
        })?;
        let mut problems = Vec::new();
        // An array of tables has no defaults to merge over; validated on its own.
        let pipelines = user.remove("pipeline");
        merge(&mut merged, user, "", &mut problems);
        apply_env(&mut merged, env, &mut problems);
        let cfg = validate(&merged, pipelines.as_ref(), &mut problems);
        match cfg {
            Some(cfg) if problems.is_empty() => Ok(cfg),
            _ => Err(fail(problems)),
        }
    }
}

/// Deep-merges `user` over `base`, reporting keys that the defaults do not know.
fn merge(base: &mut toml::Table, user: toml::Table, prefix: &str, problems: &mut Vec<Problem>) {
    for (key, value) in user {
        let path = join(prefix, &key);
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(u)) => merge(b, u, &path, problems),
            (Some(toml::Value::Table(_)), _) => problems.push(Problem {
                path,
                message: "must be a table".into(),
            }),
            (Some(slot), v) => *slot = v,
            (None, _) => problems.push(Problem {
                path,
                message: "unknown key".into(),
            }),
        }
    }
}

fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
    problems: &mut Vec<Problem>,
) {
    for (name, value) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if ENV_RESERVED.contains(&rest) {
            continue;
        }
        let parts: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        let path = parts.join(".");
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(value));
        let (last, sections) = parts.split_last().expect("split yields at least one part");
        match table_at(table, sections) {
            Some(slot) if slot.get(last).is_some_and(|v| !v.is_table()) => {
                slot.insert(last.clone(), parsed);
            }
            _ => problems.push(Problem {
                path: format!("env {name}"),
                message: format!("`{path}` is not a config key (use FIELDLINE_<SECTION>__<KEY>)"),
            }),
        }
    }
}

fn table_at<'a>(table: &'a mut toml::Table, path: &[String]) -> Option<&'a mut toml::Table> {
    match path.split_first() {
        None => Some(table),
        Some((head, rest)) => match table.get_mut(head) {
            Some(toml::Value::Table(t)) => table_at(t, rest),
            _ => None,
        },
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Deserializes one section, recording a type error with its exact path.
fn section<T: for<'de> Deserialize<'de>>(
    table: &toml::Table,
    name: &str,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    let value = table
        .get(name)
        .cloned()
        .unwrap_or(toml::Value::Table(Default::default()));
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let inner = e.path().to_string();
            problems.push(Problem {
                path: if inner == "." {
                    name.to_string()
                } else {
                    join(name, &inner)
                },
                message: e.into_inner().message().to_string(),
            });
            None
        }
    }
}

/// Collects problems for one section's fields.
struct Checker<'a> {
    section: &'static str,
    problems: &'a mut Vec<Problem>,
}

impl Checker<'_> {
    fn problem(&mut self, field: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            path: join(self.section, field),
            message: message.into(),
        });
    }

    fn duration(&mut self, field: &str, text: &str, min: Duration) -> Duration {
        match duration::parse(text) {
            Ok(d) if d < min => {
                self.problem(
                    field,
                    format!("must be at least {}, got {text}", duration::format(min)),
                );
                min
            }
            Ok(d) => d,
            Err(e) => {
                self.problem(field, e);
                min
            }
        }
    }

    fn at_least<T: PartialOrd + std::fmt::Display + Copy>(
        &mut self,
        field: &str,
        v: T,
        min: T,
    ) -> T {
        if v < min {
            self.problem(field, format!("must be at least {min}, got {v}"));
        }
        v
    }
}

fn validate(
    table: &toml::Table,
    pipelines: Option<&toml::Value>,
    problems: &mut Vec<Problem>,
) -> Option<AgentConfig> {
    let agent: Option<raw::Agent> = section(table, "agent", problems);
    let mqtt: Option<raw::Mqtt> = section(table, "mqtt", problems);
    let window: Option<raw::Window> = section(table, "window", problems);
    let uplink: Option<raw::Uplink> = section(table, "uplink", problems);
    let storage: Option<raw::Storage> = section(table, "storage", problems);
    let outbox: Option<raw::Outbox> = section(table, "outbox", problems);

    let agent = agent.map(|a| {
        let mut c = Checker {
            section: "agent",
            problems,
        };
        if a.id.is_empty() {
            c.problem("id", "must be set (a unique name for this gateway)");
        } else if a.id.len() > 64
            || !a
                .id
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
        {
            c.problem(
                "id",
                format!("`{}` must be 1-64 characters of [A-Za-z0-9-_.]", a.id),
            );
        }
        if a.data_dir.as_os_str().is_empty() {
            c.problem("data_dir", "must be set");
        }
        AgentSection {
            id: a.id,
            data_dir: a.data_dir,
        }
    });

    let mqtt = mqtt.and_then(|m| {
        let mut c = Checker {
            section: "mqtt",
            problems,
        };
        let listen = m
            .listen
            .parse::<SocketAddr>()
            .map_err(|_| {
                c.problem(
                    "listen",
                    format!("`{}` is not an address like 0.0.0.0:1883", m.listen),
                )
            })
            .ok();
        let template = TopicTemplate::parse(&m.topic_template)
            .map_err(|e| c.problem("topic_template", e.to_string()))
            .ok();
        let max_payload_bytes = c.at_least("max_payload_bytes", m.max_payload_bytes, 16);
        if max_payload_bytes > 256 * 1024 * 1024 {
            c.problem(
                "max_payload_bytes",
                "must be at most 268435456 (MQTT's limit)",
            );
        }
        let max_connections = c.at_least("max_connections", m.max_connections, 1);
        let broker_buffer_bytes = c.at_least("broker_buffer_bytes", m.broker_buffer_bytes, 65536);
        Some(MqttConfig {
            listen: listen?,
            topic_template: template?,
            max_payload_bytes,
            max_connections,
            broker_buffer_bytes,
        })
    });

    let window = window.map(|w| {
        let mut c = Checker {
            section: "window",
            problems,
        };
        WindowConfig {
            size: c.duration("size", &w.size, Duration::from_millis(1)),
            max_out_of_orderness: c.duration(
                "max_out_of_orderness",
                &w.max_out_of_orderness,
                Duration::ZERO,
            ),
            idle_timeout: c.duration("idle_timeout", &w.idle_timeout, Duration::from_millis(10)),
            max_future: c.duration("max_future", &w.max_future, Duration::ZERO),
        }
    });

    let uplink = uplink.map(|u| {
        let mut c = Checker {
            section: "uplink",
            problems,
        };
        if !(u.fleet_url.starts_with("http://") || u.fleet_url.starts_with("https://")) {
            c.problem(
                "fleet_url",
                format!("`{}` must start with http:// or https://", u.fleet_url),
            );
        }
        let batch_max_records = c.at_least("batch_max_records", u.batch_max_records, 1);
        if batch_max_records > 10_000 {
            c.problem(
                "batch_max_records",
                format!("must be at most 10000, got {batch_max_records}"),
            );
        }
        let cfg = UplinkConfig {
            fleet_url: u.fleet_url.trim_end_matches('/').to_string(),
            batch_max_records,
            flush_interval: c.duration(
                "flush_interval",
                &u.flush_interval,
                Duration::from_millis(10),
            ),
            heartbeat_interval: c.duration(
                "heartbeat_interval",
                &u.heartbeat_interval,
                Duration::from_millis(100),
            ),
            request_timeout: c.duration(
                "request_timeout",
                &u.request_timeout,
                Duration::from_millis(100),
            ),
            backoff_min: c.duration("backoff_min", &u.backoff_min, Duration::from_millis(1)),
            backoff_max: c.duration("backoff_max", &u.backoff_max, Duration::from_millis(1)),
            credential_file: (!u.credential_file.is_empty())
                .then(|| PathBuf::from(&u.credential_file)),
            ca_file: (!u.ca_file.is_empty()).then(|| PathBuf::from(&u.ca_file)),
        };
        if cfg.backoff_max < cfg.backoff_min {
            c.problem("backoff_max", "must not be below backoff_min");
        }
        cfg
    });

    let storage = storage.map(|s| {
        let mut c = Checker {
            section: "storage",
            problems,
        };
        let durability = match s.durability.as_str() {
            "batch-fsync" => Durability::BatchFsync,
            "interval" => Durability::Interval,
            other => {
                c.problem(
                    "durability",
                    format!("`{other}` must be \"batch-fsync\" or \"interval\""),
                );
                Durability::Interval
            }
        };
        StorageConfig {
            cache_capacity_bytes: c.at_least(
                "cache_capacity_bytes",
                s.cache_capacity_bytes,
                1024 * 1024,
            ),
            flush_every: c.duration("flush_every", &s.flush_every, Duration::from_millis(1)),
            durability,
            checkpoint_interval: c.duration(
                "checkpoint_interval",
                &s.checkpoint_interval,
                Duration::from_millis(100),
            ),
        }
    });

    let outbox = outbox.map(|o| {
        let mut c = Checker {
            section: "outbox",
            problems,
        };
        let on_full = match o.on_full.as_str() {
            "drop_oldest" => OnFull::DropOldest,
            "block" => OnFull::Block,
            other => {
                c.problem(
                    "on_full",
                    format!("`{other}` must be \"drop_oldest\" or \"block\""),
                );
                OnFull::DropOldest
            }
        };
        let max_age = c.duration("max_age", &o.max_age, Duration::ZERO);
        OutboxConfig {
            max_bytes: c.at_least("max_bytes", o.max_bytes, 64 * 1024),
            max_age: (!max_age.is_zero()).then_some(max_age),
            on_full,
            forward_raw_readings: o.forward_raw_readings,
        }
    });

    let filter = mqtt.as_ref().map(|m| m.topic_template.filter());
    let pipelines = pipeline::validate(pipelines, window.as_ref(), filter.as_deref(), problems);

    Some(AgentConfig {
        pipelines,
        agent: agent?,
        mqtt: mqtt?,
        window: window?,
        uplink: uplink?,
        storage: storage?,
        outbox: outbox?,
    })
}

#[cfg(test)]
mod tests;
