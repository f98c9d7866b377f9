//! The store contract: everything the fleet server persists, behind one trait.
//!
//! Two implementations, held to the same conformance suite (`tests/it/fleet_store.rs`):
//! - [`redis::RedisStore`]: production and scale-out; several fleet servers share one
//!   Redis (or Redis Cluster: every key carries a hash tag). **Boundary**: the only
//!   module that imports redis.
//! - [`embedded::SledStore`]: single node, no Redis install; the default when no
//!   `--redis-url` is given. **Boundary**: the only module that imports sled.
//!
//! Guarantees both give:
//! - ingest is idempotent per `(agent, seq)` with no time limit: a record is stored iff
//!   its seq is above the agent's high-water mark, and the mark moves in the same
//!   atomic step as the write;
//! - records that fail validation go to the dead-letter stream with the reason;
//! - an agent's credential is stored only as a SHA-256 hash; a revoked agent cannot
//!   enroll again until an admin allows it.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use fieldline_common::wire::{Heartbeat, Record, RecordBody};

pub mod embedded;
pub mod redis;
pub mod workers;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis url `{url}` is invalid: {why}")]
    Url { url: String, why: String },
    #[error("cannot reach redis at {url}: {why}")]
    Unreachable { url: String, why: String },
    #[error("redis: {0}")]
    Redis(String),
    #[error("redis already holds data for {existing} partitions, this server is configured for {configured}; partitions cannot change")]
    Partitions { existing: u32, configured: u32 },
    #[error("embedded store at {path}: {why}")]
    Embedded { path: String, why: String },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IngestOutcome {
    pub hwm: u64,
    pub added: u32,
    pub duplicates: u32,
    pub dead_letters: u32,
}

/// What the registry knows about one agent.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct AgentInfo {
    pub id: String,
    pub version: String,
    pub last_seen_ms: i64,
    pub started_ms: i64,
    pub last_ingest_ms: i64,
    pub last_acked_seq: u64,
    pub counters: serde_json::Value,
    pub labels: BTreeMap<String, String>,
    /// 0 when the agent never enrolled (e.g. it only appears through old data).
    pub enrolled_ms: i64,
    pub revoked: bool,
}

/// The stored form of an agent credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// Hex SHA-256 of the secret; the secret itself is never stored.
    pub hash: String,
    pub revoked: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrollOutcome {
    Enrolled,
    /// The agent holds a live credential; a second enrollment would let anyone with
    /// the bootstrap token take over its identity.
    AlreadyEnrolled,
    /// Revoked agents stay out until an admin allows re-enrollment.
    Revoked,
}

/// One entry of a stream (records or dead letters). `id` is opaque to callers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    pub id: String,
    pub fields: Vec<(String, Vec<u8>)>,
}

impl StreamEntry {
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    pub fn field_str(&self, name: &str) -> Option<String> {
        self.field(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// Length and consumer groups of one stream.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StreamStats {
    pub name: String,
    pub length: u64,
    pub groups: Vec<GroupStats>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GroupStats {
    pub name: String,
    /// Entries not yet delivered to the group; `None` when Redis cannot tell.
    pub lag: Option<u64>,
    /// Delivered but not acknowledged.
    pub pending: u64,
}

/// One record as it will be written: target stream and field/value pairs.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub seq: u64,
    pub dead: bool,
    pub fields: Vec<(&'static str, Vec<u8>)>,
    /// Fields with computed names (e.g. `agg.p99`).
    pub extra: Vec<(String, Vec<u8>)>,
}

impl Entry {
    /// Every field/value pair, fixed ones first.
    pub fn all_fields(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.fields
            .iter()
            .map(|(k, v)| (*k, v.as_slice()))
            .chain(self.extra.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
    }
}

/// The newest value seen for one series (window mean, anomaly or late reading).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LatestValue {
    /// `<agent>/<device>/<metric>`.
    pub series: String,
    pub agent: String,
    pub kind: String,
    pub value: f64,
    pub ts_ms: i64,
}

/// Fleet-wide counts maintained by the global-state workers.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct GlobalSummary {
    /// Distinct `<agent>/<device>/<metric>` (HyperLogLog on Redis: ±0.81%).
    pub distinct_series: u64,
    /// Distinct `<agent>/<device>`.
    pub distinct_devices: u64,
    /// Records applied per agent and kind.
    pub agent_counters: BTreeMap<String, BTreeMap<String, u64>>,
}

/// Everything the fleet server persists. Both stores pass `tests/it/fleet_store.rs`.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Where the data lives, for logs (never includes a password).
    fn describe(&self) -> String;

    async fn ping(&self) -> Result<(), StoreError>;

    /// Adds entries whose seq is above the agent's high-water mark, atomically with
    /// moving the mark. Entries must be in strictly increasing seq order.
    async fn ingest(
        &self,
        agent: &str,
        entries: &[Entry],
        now_ms: i64,
    ) -> Result<IngestOutcome, StoreError>;

    /// Records a heartbeat; returns the agent's high-water mark.
    async fn heartbeat(&self, hb: &Heartbeat, now_ms: i64) -> Result<u64, StoreError>;

    /// All known agents, sorted by id.
    async fn agents(&self) -> Result<Vec<AgentInfo>, StoreError>;

    async fn agent(&self, id: &str) -> Result<Option<AgentInfo>, StoreError>;

    /// Stores the hash of a new agent credential, unless the agent already holds a
    /// live one or was revoked.
    async fn enroll(
        &self,
        id: &str,
        credential_hash: &str,
        now_ms: i64,
    ) -> Result<EnrollOutcome, StoreError>;

    async fn credential(&self, id: &str) -> Result<Option<Credential>, StoreError>;

    /// Revokes the agent's credential; false when the agent is unknown.
    async fn revoke(&self, id: &str) -> Result<bool, StoreError>;

    /// Clears a revocation so the agent can enroll again (it gets a new
    /// credential); false when the agent is unknown.
    async fn allow_reenroll(&self, id: &str) -> Result<bool, StoreError>;

    /// Replaces the agent's labels; false when the agent is unknown.
    async fn set_labels(
        &self,
        id: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<bool, StoreError>;

    /// Up to `limit` dead letters, oldest first.
    async fn dlq_list(&self, limit: usize) -> Result<Vec<StreamEntry>, StoreError>;

    /// Deletes one dead letter; false when the id is unknown.
    async fn dlq_delete(&self, id: &str) -> Result<bool, StoreError>;

    /// Moves one dead letter back to the records stream (marked `replayed_from`);
    /// false when the id is unknown.
    async fn dlq_replay(&self, id: &str) -> Result<bool, StoreError>;

    /// Up to `limit` records of one agent, oldest first (reads every partition's
    /// stream, so it is for inspection and tests, not a hot path).
    async fn records_of(&self, agent: &str, limit: usize) -> Result<Vec<StreamEntry>, StoreError>;

    /// Length and consumer groups of every stream.
    async fn stream_stats(&self) -> Result<Vec<StreamStats>, StoreError>;

    /// Newest value per series, optionally of one agent only; at most `limit`.
    async fn latest_values(
        &self,
        agent: Option<&str>,
        limit: usize,
    ) -> Result<Vec<LatestValue>, StoreError>;

    /// The `limit` series with the highest anomaly score seen, highest first.
    async fn top_anomalies(&self, limit: usize) -> Result<Vec<(String, f64)>, StoreError>;

    async fn global_summary(&self) -> Result<GlobalSummary, StoreError>;

    /// A small document store for fleet settings (desired configs, rollouts,
    /// reports): the value under `key`.
    async fn doc_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Sets `key` to `new` iff its current value is `expected` (`None`: absent).
    async fn doc_cas(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, StoreError>;

    /// Every document whose key starts with `prefix`, sorted by key.
    async fn doc_list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Increments the counter `name` and returns the new value (first call: 1).
    async fn counter_next(&self, name: &str) -> Result<u64, StoreError>;

    /// The counter's current value (0 if never incremented).
    async fn counter_get(&self, name: &str) -> Result<u64, StoreError>;

    /// Applies everything ingested so far to the global state, retries included
    /// without waiting for their backoff (tests and tools; on Redis it works on the
    /// partitions no running worker holds).
    async fn settle(&self) -> Result<(), StoreError>;
}

/// What one record contributes to the global state.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub agent: String,
    pub kind: String,
    pub series: String,
    pub device: String,
    pub value: f64,
    pub ts_ms: i64,
    pub score: Option<f64>,
}

/// Reads what the global state needs from a record's fields; the error is the
/// reason the record cannot be applied.
pub fn update_of(fields: &HashMap<String, Vec<u8>>) -> Result<Update, String> {
    let text = |k: &str| {
        fields
            .get(k)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .ok_or_else(|| format!("field `{k}` is missing"))
    };
    let num = |k: &str| -> Result<f64, String> {
        let t = text(k)?;
        t.parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| format!("field `{k}` is not a finite number: `{t}`"))
    };
    let agent = text("agent")?;
    let kind = text("kind")?;
    let series = text("series")?;
    let device = series
        .split_once('/')
        .map(|(d, _)| d.to_string())
        .ok_or_else(|| format!("series `{series}` is not device/metric"))?;
    let (value, ts, score) = match kind.as_str() {
        "window" => (num("mean")?, num("end_ms")?, None),
        "anomaly" => {
            let score = num("score")?;
            if !(0.0..=1.0).contains(&score) {
                return Err(format!("anomaly score {score} is outside [0, 1]"));
            }
            (num("value")?, num("ts_ms")?, Some(score))
        }
        "late" => (num("value")?, num("ts_ms")?, None),
        // Raw forwarded readings (agent `outbox.forward_raw_readings`) update the
        // latest value like any other measurement.
        "reading" => (num("value")?, num("ts_ms")?, None),
        other => return Err(format!("record kind `{other}` has no global state")),
    };
    Ok(Update {
        series: format!("{agent}/{series}"),
        device: format!("{agent}/{device}"),
        agent,
        kind,
        value,
        ts_ms: ts as i64,
        score,
    })
}

/// FNV-1a, 64 bit: stable across versions and platforms, which the partition
/// assignment depends on.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Turns a record into stream fields; records that fail validation go to the DLQ.
pub fn entry(record: &Record) -> Entry {
    let num = |v: f64| v.to_string().into_bytes();
    let mut fields: Vec<(&'static str, Vec<u8>)> = vec![
        ("kind", record.body.kind().as_bytes().to_vec()),
        ("created_ms", record.created_ms.to_string().into_bytes()),
    ];
    let (dead, extra) = match &record.body {
        RecordBody::Window(w) => {
            if let Err(why) = validate_window(w) {
                fields.push(("reason", why.into_bytes()));
                fields.push(("series", w.series.to_string().into_bytes()));
                (true, Vec::new())
            } else {
                fields.extend([
                    ("series", w.series.to_string().into_bytes()),
                    ("device", w.series.device.as_bytes().to_vec()),
                    ("metric", w.series.metric.as_bytes().to_vec()),
                    ("start_ms", w.start_ms.to_string().into_bytes()),
                    ("end_ms", w.end_ms.to_string().into_bytes()),
                    ("count", w.count.to_string().into_bytes()),
                    ("sum", num(w.sum)),
                    ("mean", num(w.mean)),
                    ("min", num(w.min)),
                    ("max", num(w.max)),
                    ("revision", w.revision.to_string().into_bytes()),
                    ("pipeline", w.pipeline.as_bytes().to_vec()),
                ]);
                if !w.unit.is_empty() {
                    // Only when known, so entries of unit-less pipelines stay as before.
                    fields.push(("unit", w.unit.clone().into_bytes()));
                }
                // Extra aggregates become `agg.<name>` fields, so they cannot collide
                // with the fixed ones.
                let extra = w
                    .aggregates
                    .iter()
                    .map(|(name, v)| (format!("agg.{name}"), num(*v)))
                    .collect();
                (false, extra)
            }
        }
        RecordBody::DeadLetter(d) => {
            fields.extend([
                ("topic", d.topic.clone().into_bytes()),
                ("payload", d.payload.clone()),
                ("reason", d.reason.clone().into_bytes()),
                ("received_ms", d.received_ms.to_string().into_bytes()),
            ]);
            (true, Vec::new())
        }
        RecordBody::Late(l) => {
            fields.extend([
                ("pipeline", l.pipeline.clone().into_bytes()),
                ("series", l.series.to_string().into_bytes()),
                ("ts_ms", l.ts_ms.to_string().into_bytes()),
                ("value", num(l.value)),
                ("watermark_ms", l.watermark_ms.to_string().into_bytes()),
                ("received_ms", l.received_ms.to_string().into_bytes()),
            ]);
            (false, Vec::new())
        }
        RecordBody::Anomaly(a) => {
            fields.extend([
                ("pipeline", a.pipeline.clone().into_bytes()),
                ("series", a.series.to_string().into_bytes()),
                ("ts_ms", a.ts_ms.to_string().into_bytes()),
                ("value", num(a.value)),
                ("score", num(a.score)),
                ("detector", a.detector.clone().into_bytes()),
                ("reason", a.reason.clone().into_bytes()),
            ]);
            (false, Vec::new())
        }
        RecordBody::Reading(r) => {
            fields.extend([
                ("series", r.series.to_string().into_bytes()),
                ("device", r.series.device.as_bytes().to_vec()),
                ("metric", r.series.metric.as_bytes().to_vec()),
                ("ts_ms", r.ts_ms.to_string().into_bytes()),
                ("value", num(r.value)),
                ("arrival_ms", r.arrival_ms.to_string().into_bytes()),
            ]);
            (false, Vec::new())
        }
    };
    Entry {
        seq: record.seq,
        dead,
        fields,
        extra,
    }
}

fn validate_window(w: &fieldline_common::wire::WindowResult) -> Result<(), String> {
    if w.count == 0 {
        return Err("window result with count 0".into());
    }
    if w.end_ms <= w.start_ms {
        return Err(format!(
            "window end {} is not after start {}",
            w.end_ms, w.start_ms
        ));
    }
    if ![w.sum, w.mean, w.min, w.max].iter().all(|v| v.is_finite())
        || !w.aggregates.values().all(|v| v.is_finite())
    {
        return Err("window result with a non-finite aggregate".into());
    }
    if w.min > w.max {
        return Err(format!("window min {} exceeds max {}", w.min, w.max));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> HashMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn updates_name_series_per_agent_and_refuse_broken_records() {
        let w = fields(&[
            ("agent", "gw"),
            ("kind", "window"),
            ("series", "boiler/temp"),
            ("mean", "21.5"),
            ("end_ms", "2000"),
        ]);
        let u = update_of(&w).unwrap();
        assert_eq!(
            (
                u.series.as_str(),
                u.device.as_str(),
                u.value,
                u.ts_ms,
                u.score
            ),
            ("gw/boiler/temp", "gw/boiler", 21.5, 2000, None)
        );
        let mut broken = w.clone();
        broken.remove("mean");
        assert_eq!(update_of(&broken).unwrap_err(), "field `mean` is missing");
        let mut nan = w.clone();
        nan.insert("mean".into(), b"NaN".to_vec());
        assert!(update_of(&nan).unwrap_err().contains("not a finite number"));
        let a = fields(&[
            ("agent", "gw"),
            ("kind", "anomaly"),
            ("series", "pump/rpm"),
            ("value", "9"),
            ("ts_ms", "5"),
            ("score", "1.5"),
        ]);
        assert!(update_of(&a).unwrap_err().contains("outside [0, 1]"));
    }

    #[test]
    fn a_window_entry_has_a_unit_field_only_when_the_pipeline_has_one() {
        let mut w = fieldline_common::wire::WindowResult {
            series: fieldline_common::wire::SeriesKey::new("boiler", "temp"),
            start_ms: 0,
            end_ms: 1000,
            count: 1,
            sum: 1.0,
            mean: 1.0,
            min: 1.0,
            max: 1.0,
            revision: 0,
            pipeline: "p".into(),
            aggregates: Default::default(),
            unit: String::new(),
        };
        let unit_of = |w: &fieldline_common::wire::WindowResult| {
            let e = entry(&Record {
                seq: 1,
                created_ms: 0,
                body: RecordBody::Window(w.clone()),
            });
            assert!(!e.dead);
            e.fields
                .iter()
                .find(|(k, _)| *k == "unit")
                .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
        };
        assert_eq!(unit_of(&w), None);
        w.unit = "°C".into();
        assert_eq!(unit_of(&w).as_deref(), Some("°C"));
    }

    #[test]
    fn fnv_is_stable() {
        // Partition assignment must never change between releases.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"gw-1"), fnv1a64(b"gw-1"));
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
