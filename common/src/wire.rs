//! Records and messages exchanged between agent and fleet server.
//!
//! Every message carries a protocol version `v`; a receiver rejects versions it does
//! not know instead of guessing. See `docs/PROTOCOL.md`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version of the agent↔fleet wire protocol described in `docs/PROTOCOL.md`.
pub const PROTOCOL_VERSION: u16 = 1;

/// Identifies one time series: the device that sent it and the metric it measures.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SeriesKey {
    pub device: String,
    pub metric: String,
}

impl SeriesKey {
    pub fn new(device: impl Into<String>, metric: impl Into<String>) -> Self {
        Self {
            device: device.into(),
            metric: metric.into(),
        }
    }
}

impl std::fmt::Display for SeriesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.device, self.metric)
    }
}

/// The aggregate of one series over one closed event-time window `[start_ms, end_ms)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowResult {
    pub series: SeriesKey,
    pub start_ms: i64,
    pub end_ms: i64,
    pub count: u64,
    pub sum: f64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    /// 0 for the first emission; consumers upsert by (series, start_ms, revision).
    pub revision: u32,
    /// The pipeline that produced it (empty for the built-in default pipeline).
    #[serde(default)]
    pub pipeline: String,
    /// Further aggregates by name, e.g. `stddev`, `p99`, `rate`.
    #[serde(default)]
    pub aggregates: BTreeMap<String, f64>,
}

/// A reading that arrived after its window closed, kept as its own record when the
/// pipeline's late policy is `side_output`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LateReading {
    pub pipeline: String,
    pub series: SeriesKey,
    pub ts_ms: i64,
    pub value: f64,
    pub watermark_ms: i64,
    pub received_ms: i64,
}

/// A detector's verdict on one reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    pub pipeline: String,
    pub series: SeriesKey,
    pub ts_ms: i64,
    pub value: f64,
    /// In [0, 1].
    pub score: f64,
    pub detector: String,
    pub reason: String,
}

/// A payload the agent could not decode. It is kept and uplinked, never dropped silently.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub topic: String,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    pub reason: String,
    pub received_ms: i64,
}

/// What an outbox record carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordBody {
    Window(WindowResult),
    DeadLetter(DeadLetter),
    Late(LateReading),
    Anomaly(Anomaly),
}

impl RecordBody {
    /// Stable name used as the `kind` field in Redis stream entries.
    pub fn kind(&self) -> &'static str {
        match self {
            RecordBody::Window(_) => "window",
            RecordBody::DeadLetter(_) => "dead_letter",
            RecordBody::Late(_) => "late",
            RecordBody::Anomaly(_) => "anomaly",
        }
    }
}

/// One outbox entry. `seq` is assigned by the agent, strictly increasing and never reused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    pub created_ms: i64,
    pub body: RecordBody,
}

/// `POST /api/v1/ingest` body: records in strictly increasing `seq` order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IngestBatch {
    pub v: u16,
    pub agent_id: String,
    pub records: Vec<Record>,
}

/// `POST /api/v1/ingest` answer. Everything with `seq <= acked_seq` is durable in the
/// fleet and may be deleted by the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestAck {
    pub v: u16,
    pub acked_seq: u64,
    pub added: u32,
    pub duplicates: u32,
}

/// Counters an agent reports with each heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentCounters {
    pub messages_received: u64,
    pub readings_decoded: u64,
    pub dead_letters: u64,
    pub late_dropped: u64,
    pub windows_emitted: u64,
    pub outbox_len: u64,
    pub last_seq: u64,
}

/// `POST /api/v1/heartbeat` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub v: u16,
    pub agent_id: String,
    pub version: String,
    pub started_ms: i64,
    pub sent_ms: i64,
    pub counters: AgentCounters,
}

/// `POST /api/v1/heartbeat` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    pub v: u16,
    pub server_ms: i64,
    /// The highest `seq` the fleet holds for this agent (0 when none).
    pub acked_seq: u64,
}
