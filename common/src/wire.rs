//! Records and messages exchanged between agent and fleet server.
//!
//! Every message carries a protocol version `v`; a receiver rejects versions it does
//! not know instead of guessing. See `docs/PROTOCOL.md`.

use serde::{Deserialize, Serialize};

pub use crate::aggregates::Aggregates;

/// Version of the agent↔fleet wire protocol described in `docs/PROTOCOL.md`.
pub const PROTOCOL_VERSION: u16 = 1;

/// Identifies one time series: the device that sent it and the metric it measures.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SeriesKey {
    pub device: Name,
    pub metric: Name,
}

/// By device, then metric, as strings: what a derived `Ord` gives, without a
/// `memcmp` call per name when the first eight bytes decide (they nearly always do;
/// a close pass sorts thousands of results by key).
impl Ord for SeriesKey {
    #[inline]
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        cmp_name(&self.device, &other.device).then_with(|| cmp_name(&self.metric, &other.metric))
    }
}

impl PartialOrd for SeriesKey {
    #[inline]
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// `a.cmp(b)` for strings, deciding on the first eight bytes (zero-padded, big-endian)
/// where it can: a shorter string that is a prefix of the other sorts first either way.
#[inline]
fn cmp_name(a: &str, b: &str) -> std::cmp::Ordering {
    fn head(s: &[u8]) -> u64 {
        match s.first_chunk::<8>() {
            Some(h) => u64::from_be_bytes(*h),
            None => s
                .iter()
                .enumerate()
                .fold(0, |h, (i, &c)| h | u64::from(c) << (56 - 8 * i)),
        }
    }
    let (a, b) = (a.as_bytes(), b.as_bytes());
    match head(a).cmp(&head(b)) {
        std::cmp::Ordering::Equal if a.len() <= 8 && b.len() <= 8 => a.len().cmp(&b.len()),
        std::cmp::Ordering::Equal => a[8.min(a.len())..].cmp(&b[8.min(b.len())..]),
        decided => decided,
    }
}

/// A device or metric name: a string stored inline up to 24 bytes (sensor names
/// nearly always are), so a key is built, cloned and compared without the heap.
/// Serialized as a plain string.
pub type Name = compact_str::CompactString;

impl SeriesKey {
    pub fn new(device: impl Into<Name>, metric: impl Into<Name>) -> Self {
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
    /// The pipeline that produced it (empty for the built-in default pipeline). Inline
    /// up to 24 bytes: one heap allocation less for every result.
    #[serde(default)]
    pub pipeline: Name,
    /// Further aggregates by name, e.g. `stddev`, `p99`, `rate`.
    #[serde(default)]
    pub aggregates: Aggregates,
    /// Unit of the values (the pipeline's `unit`); left out when empty so records
    /// without one encode exactly as before and older peers read them unchanged.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub unit: String,
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

/// One decoded reading forwarded as is (the agent's `outbox.forward_raw_readings`),
/// e.g. for fleet-side storage of raw data; `arrival_ms` is the agent clock at arrival.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawReading {
    pub series: SeriesKey,
    pub ts_ms: i64,
    pub value: f64,
    pub arrival_ms: i64,
}

/// What an outbox record carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordBody {
    Window(WindowResult),
    DeadLetter(DeadLetter),
    Late(LateReading),
    Anomaly(Anomaly),
    Reading(RawReading),
}

impl RecordBody {
    /// Stable name used as the `kind` field in Redis stream entries.
    pub fn kind(&self) -> &'static str {
        match self {
            RecordBody::Window(_) => "window",
            RecordBody::DeadLetter(_) => "dead_letter",
            RecordBody::Late(_) => "late",
            RecordBody::Anomaly(_) => "anomaly",
            RecordBody::Reading(_) => "reading",
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
    /// Bytes the outbox holds (what `outbox.max_bytes` bounds).
    #[serde(default)]
    pub outbox_bytes: u64,
    /// Outbox records dropped by `outbox.max_bytes` / `outbox.max_age` since the
    /// store was created (persisted across restarts).
    #[serde(default)]
    pub outbox_dropped: u64,
    #[serde(default)]
    pub outbox_dropped_bytes: u64,
    /// Readings appended to the ingest log by this process.
    #[serde(default)]
    pub readings_logged: u64,
    /// Bytes this process wrote to the block device (flash wear), from /proc/self/io.
    #[serde(default)]
    pub disk_write_bytes: u64,
    /// Resident set size of the agent process.
    #[serde(default)]
    pub rss_bytes: u64,
    /// Size of the agent's sled database on disk.
    #[serde(default)]
    pub state_disk_bytes: u64,
    /// Anomaly records raised by the pipelines' detectors.
    #[serde(default)]
    pub anomalies: u64,
    /// Readings not scored because their pipeline's detectors track `max_series` series.
    #[serde(default)]
    pub detector_series_rejected: u64,
    /// Messages queued for / dropped before the agent's own broker (`mqtt:` sinks and
    /// alert topics; dropped when the bounded queue is full).
    #[serde(default)]
    pub local_published: u64,
    #[serde(default)]
    pub local_dropped: u64,
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

/// `POST /api/v1/enroll` body, sent with `Authorization: Bearer <bootstrap token>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    pub v: u16,
    pub agent_id: String,
    pub version: String,
}

/// `POST /api/v1/enroll` answer. The credential is shown exactly once: the fleet
/// keeps only its hash. Agents send it as `Authorization: Bearer <credential>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollReply {
    pub v: u16,
    pub agent_id: String,
    pub credential: String,
}

/// What an agent reports about the fleet config it last received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigReport {
    pub generation: u64,
    /// False when the agent rejected it (invalid, or failed to start); the previous
    /// config keeps running.
    pub applied: bool,
    /// Why it was rejected (empty when applied).
    #[serde(default)]
    pub error: String,
}

/// `POST /api/v1/config/poll` body (agent credential). The fleet answers at once when
/// the desired config differs from `observed_generation`, else when it changes or
/// after about `wait_ms` (long poll; the fleet caps it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigPoll {
    pub v: u16,
    pub agent_id: String,
    /// Generation of the fleet config the agent runs (0: none, local file only).
    pub observed_generation: u64,
    /// Outcome of the newest generation the agent received, if any.
    #[serde(default)]
    pub report: Option<ConfigReport>,
    /// Newest generation the agent has received (applied, being tried, or
    /// rejected): the fleet does not send it again.
    #[serde(default)]
    pub received_generation: u64,
    pub wait_ms: u64,
}

/// A fleet config for one agent: a TOML fragment merged over the agent's own file
/// (it may not contain `[agent]`: identity and data directory stay local).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredConfig {
    pub generation: u64,
    pub toml: String,
}

/// `POST /api/v1/config/poll` answer; `desired` is `None` when the fleet has no
/// config for the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigPollReply {
    pub v: u16,
    pub desired: Option<DesiredConfig>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name() -> impl Strategy<Value = String> {
        // Short and long, shared prefixes, NULs and non-ASCII: where the first eight
        // bytes tie and where the length decides.
        prop_oneof![
            "[a-c\\x00]{0,10}",
            "dev[0-9]{0,3}/?[a-b\\x00]{0,12}",
            "\\PC{0,12}",
        ]
    }

    proptest! {
        #[test]
        fn series_order_is_the_order_of_its_strings(a in name(), b in name(), c in name(), d in name()) {
            let (x, y) = (SeriesKey::new(a.as_str(), b.as_str()), SeriesKey::new(c.as_str(), d.as_str()));
            prop_assert_eq!(x.cmp(&y), (a.as_str(), b.as_str()).cmp(&(c.as_str(), d.as_str())));
            prop_assert_eq!(x.cmp(&x.clone()), std::cmp::Ordering::Equal);
            prop_assert_eq!(cmp_name(&a, &c), a.cmp(&c));
        }
    }
}
