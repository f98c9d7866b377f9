//! Turns broker messages into records: decode → every configured pipeline
//! ([`crate::engine::Job`] and its detectors, [`crate::detect::attach`]) → records,
//! routed by the pipeline's sinks to the outbox and/or the local broker ([`Pipeline::route`]).
//!
//! Decoding is shared by all pipelines and pure ([`Pipeline::decode`]), so readings
//! can be logged before they are processed. Undecodable payloads, and readings
//! stamped more than `window.max_future` ahead of the agent clock, become dead
//! letters next to the good readings around them. **Invariant**: no IO, no clock
//! reads: the caller passes arrival and wall-clock times in.

use std::sync::Arc;
use std::time::Duration;

use fieldline_common::config::pipeline::{default_pipeline, PipelineConfig, Sink};
use fieldline_common::config::{AgentConfig, WindowConfig};
use fieldline_common::payload::{self, Reading};
use fieldline_common::topic::TopicTemplate;
use fieldline_common::wire::{Anomaly, DeadLetter, RecordBody};
use serde::{Deserialize, Serialize};

use crate::broker::Message;
use crate::counters::Counters;
use crate::detect::attach::Attached;
use crate::engine::{Job, JobState, JobStats};

/// Version of the [`Pipeline::snapshot`] encoding; restore refuses others.
/// v3 added detector state; v2 snapshots (no detectors) are still restored.
const SNAPSHOT_VERSION: u16 = 3;
const SNAPSHOT_V2: u16 = 2;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("cannot decode pipeline snapshot: {0}")]
    Snapshot(String),
    #[error("pipeline snapshot version {found} is not supported (expected {expected})")]
    SnapshotVersion { found: u16, expected: u16 },
}

#[derive(Serialize)]
struct SnapshotRef<'a> {
    v: u16,
    jobs: Vec<(&'a str, String, &'a JobState)>,
    detectors: Vec<(&'a str, String, serde_bytes::ByteBuf)>,
}

#[derive(Deserialize)]
struct SnapshotOwned {
    v: u16,
    /// (pipeline name, fingerprint, state)
    jobs: Vec<(String, String, JobState)>,
    /// (pipeline name, detector fingerprint, state); absent in v2.
    #[serde(default)]
    detectors: Vec<(String, String, serde_bytes::ByteBuf)>,
}

/// A record for the agent's own MQTT broker (an `mqtt:` sink or an alert topic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalMessage {
    pub topic: String,
    pub payload: Vec<u8>,
}

pub struct Pipeline {
    template: TopicTemplate,
    jobs: Vec<Job>,
    /// Per job: its detectors.
    detectors: Vec<Attached>,
    /// Per job: its config (detectors are rebuilt from it on restore).
    configs: Vec<PipelineConfig>,
    /// Per job: local MQTT topics its records go to besides (or instead of) the outbox.
    sinks: Vec<Vec<Sink>>,
    /// Per job: the alert topic template of its anomaly records.
    alert_topics: Vec<Option<String>>,
    max_future_ms: i64,
    counters: Arc<Counters>,
    /// [`Pipeline::totals`] already added to `counters`.
    reported: [u64; 4],
    /// Readings of the message [`Pipeline::handle`] is processing: one buffer for
    /// every message instead of a vector each.
    decoded: Vec<Reading>,
    /// Every job's key hasher: a reading's series is hashed once for all the jobs
    /// that key by it.
    hasher: ahash::RandomState,
    /// Per job: whether it keys by series ([`Job::keys_by_series`]), so it takes the
    /// reading's series hash (fixed once the jobs are built).
    by_series: Vec<bool>,
    /// Any of `by_series`.
    hash_series: bool,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Pipeline {
    /// One default pipeline from `[window]` (configs without `[[pipeline]]`).
    pub fn new(template: TopicTemplate, window: &WindowConfig, counters: Arc<Counters>) -> Self {
        Self::with_pipelines(template, window, &[default_pipeline(window)], counters)
    }

    /// Every `[[pipeline]]` of `cfg`, side by side (or the `[window]` default).
    pub fn from_config(cfg: &AgentConfig, counters: Arc<Counters>) -> Self {
        Self::with_pipelines(
            cfg.mqtt.topic_template.clone(),
            &cfg.window,
            &cfg.pipelines,
            counters,
        )
    }

    pub fn with_pipelines(
        template: TopicTemplate,
        window: &WindowConfig,
        pipelines: &[PipelineConfig],
        counters: Arc<Counters>,
    ) -> Self {
        let hasher = ahash::RandomState::new();
        let jobs: Vec<Job> = pipelines
            .iter()
            .map(|p| Job::from_config(p).with_hasher(hasher.clone()))
            .collect();
        Self {
            template,
            by_series: jobs.iter().map(Job::keys_by_series).collect(),
            hash_series: jobs.iter().any(Job::keys_by_series),
            hasher,
            jobs,
            detectors: pipelines.iter().map(Attached::new).collect(),
            configs: pipelines.to_vec(),
            sinks: pipelines.iter().map(|p| p.sinks.clone()).collect(),
            alert_topics: pipelines.iter().map(|p| p.alert_topic.clone()).collect(),
            max_future_ms: ms(window.max_future),
            counters,
            reported: [0; 4],
            decoded: Vec::new(),
        }
    }

    pub fn jobs(&self) -> &[Job] {
        &self.jobs
    }

    /// Per job, its detectors.
    pub fn detectors(&self) -> &[Attached] {
        &self.detectors
    }

    /// The sinks of the pipeline named `name` (the outbox for the default pipeline).
    pub fn sinks(&self, name: &str) -> &[Sink] {
        self.jobs
            .iter()
            .position(|j| j.name() == name)
            .map_or(&[Sink::Outbox][..], |i| &self.sinks[i])
    }

    /// Sum of every job's counters.
    pub fn stats(&self) -> JobStats {
        let mut t = JobStats::default();
        for s in self.jobs.iter().map(Job::stats) {
            t.readings += s.readings;
            t.filtered += s.filtered;
            t.late_dropped += s.late_dropped;
            t.late_revised += s.late_revised;
            t.late_side_output += s.late_side_output;
            t.series_rejected += s.series_rejected;
            t.series_evicted += s.series_evicted;
            t.windows_emitted += s.windows_emitted;
        }
        t
    }

    /// Bytes of window and detector state over all jobs.
    pub fn state_bytes(&self) -> usize {
        self.jobs.iter().map(Job::state_bytes).sum::<usize>()
            + self
                .detectors
                .iter()
                .map(Attached::state_bytes)
                .sum::<usize>()
    }

    /// Splits `records` by the sinks of the pipeline that produced each: what belongs in
    /// the outbox stays in `records` (in order), local publishes are pushed onto `local`.
    /// Dead letters and raw readings always go to the outbox. Anomalies go to the outbox
    /// when the pipeline has the outbox sink, and to its alert topic when it has one.
    pub fn route(&self, records: &mut Vec<RecordBody>, local: &mut Vec<LocalMessage>) {
        let alerts = |i: usize| self.alert_topics[i].is_some() && !self.detectors[i].is_empty();
        if self.sinks.iter().all(|s| s == &[Sink::Outbox]) && !(0..self.jobs.len()).any(alerts) {
            // The common case: everything to the outbox, in order.
            return;
        }
        records.retain(|body| {
            let name = match body {
                RecordBody::Window(w) => w.pipeline.as_str(),
                RecordBody::Late(l) => l.pipeline.as_str(),
                RecordBody::Anomaly(a) => a.pipeline.as_str(),
                RecordBody::DeadLetter(_) | RecordBody::Reading(_) => return true,
            };
            let Some(i) = self.jobs.iter().position(|j| j.name() == name) else {
                return true;
            };
            match body {
                RecordBody::Window(_) | RecordBody::Late(_) => {
                    for s in &self.sinks[i] {
                        if let Sink::Mqtt(topic) = s {
                            // The replay output format: `{"kind": "window", ...fields}`.
                            let json = crate::replay::to_json(body.clone());
                            local.push(LocalMessage {
                                topic: topic.clone(),
                                payload: serde_json::to_vec(&json).unwrap_or_default(),
                            });
                        }
                    }
                }
                RecordBody::Anomaly(a) => {
                    if let Some(t) = &self.alert_topics[i] {
                        local.push(LocalMessage {
                            topic: alert_topic(t, a),
                            payload: alert_json(a),
                        });
                    }
                }
                _ => {}
            }
            self.sinks[i].contains(&Sink::Outbox)
        });
    }

    /// Late readings dropped, windows emitted, anomalies and detector series rejected,
    /// over every job: what [`Pipeline::report`] publishes.
    fn totals(&self) -> [u64; 4] {
        let (late, emitted) = self.jobs.iter().fold((0, 0), |(l, e), j| {
            let s = j.stats();
            (l + s.late_dropped, e + s.windows_emitted)
        });
        let (anomalies, rejected) = self.detector_totals();
        [late, emitted, anomalies, rejected]
    }

    /// Publishes what changed in the shared counters. Called per reading, so it skips
    /// the atomic adds (shared cache lines) when nothing changed, which is nearly
    /// always.
    fn report(&mut self) {
        let now = self.totals();
        if now == self.reported {
            return;
        }
        let c = &self.counters;
        let targets = [
            &c.late_dropped,
            &c.windows_emitted,
            &c.anomalies,
            &c.detector_series_rejected,
        ];
        for ((counter, n), was) in targets.into_iter().zip(now).zip(self.reported) {
            c.add(counter, n.saturating_sub(was));
        }
        self.reported = now;
    }

    /// (anomalies, series rejected) over every pipeline's detectors.
    fn detector_totals(&self) -> (u64, u64) {
        self.detectors.iter().fold((0, 0), |(a, r), d| {
            let s = d.stats();
            (a + s.anomalies, r + s.series_rejected)
        })
    }

    /// Encodes all engine state (open and kept windows, sketches, watermarks, device
    /// clocks, late-data revisions, series slots, detector state) as CBOR. Restoring it
    /// and feeding the same inputs gives the same outputs as an uninterrupted run (except
    /// for detectors that cannot save their state, see [`crate::detect::attach`]).
    pub fn snapshot(&self) -> Vec<u8> {
        let snap = SnapshotRef {
            v: SNAPSHOT_VERSION,
            jobs: self
                .jobs
                .iter()
                .map(|j| (j.name(), j.fingerprint(), j.snapshot_state()))
                .collect(),
            detectors: self
                .jobs
                .iter()
                .zip(&self.detectors)
                .filter(|(_, d)| !d.is_empty())
                .map(|(j, d)| {
                    (
                        j.name(),
                        d.fingerprint(),
                        serde_bytes::ByteBuf::from(d.snapshot()),
                    )
                })
                .collect(),
        };
        // Plain data (numbers, strings, vectors): encoding cannot fail.
        fieldline_common::codec::to_cbor(&snap).unwrap_or_default()
    }

    /// Replaces all engine state with a [`Pipeline::snapshot`]. On error nothing
    /// changes. A pipeline whose window, key or aggregates changed since the snapshot
    /// starts empty (its old state would not fit); one that is gone is dropped.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), PipelineError> {
        let snap: SnapshotOwned = fieldline_common::codec::from_cbor(bytes, usize::MAX)
            .map_err(|e| PipelineError::Snapshot(e.to_string()))?;
        if snap.v != SNAPSHOT_VERSION && snap.v != SNAPSHOT_V2 {
            return Err(PipelineError::SnapshotVersion {
                found: snap.v,
                expected: SNAPSHOT_VERSION,
            });
        }
        // Detector state first: it is the part that can be refused as a whole, and on
        // error nothing may have changed.
        let mut detector_states = Vec::new();
        for (name, fingerprint, state) in snap.detectors {
            match self.jobs.iter().position(|j| j.name() == name) {
                Some(i) if self.detectors[i].fingerprint() == fingerprint => {
                    detector_states.push((i, state))
                }
                Some(_) => tracing::warn!(
                    pipeline = %name,
                    "detectors changed since the checkpoint; they start learning again"
                ),
                None => {}
            }
        }
        let mut restored = self.detectors_fresh();
        for (i, state) in detector_states {
            let fresh = restored[i].restore(&state).map_err(|e| {
                PipelineError::Snapshot(format!("pipeline {}: {e}", self.jobs[i].name()))
            })?;
            if fresh > 0 {
                tracing::warn!(
                    pipeline = %self.jobs[i].name(),
                    detectors = fresh,
                    "some detectors cannot restore their state and start learning again"
                );
            }
        }
        self.detectors = restored;
        // Counters are per process: what the restored state already counted is not new.
        let (anomalies, rejected) = self.detector_totals();
        self.reported[2..].copy_from_slice(&[anomalies, rejected]);
        for (name, fingerprint, state) in snap.jobs {
            match self.jobs.iter_mut().find(|j| j.name() == name) {
                Some(job) if job.fingerprint() == fingerprint => job.restore_state(state),
                Some(_) => tracing::warn!(
                    pipeline = %name,
                    "pipeline changed since the checkpoint; its open windows start empty"
                ),
                None => tracing::info!(pipeline = %name, "pipeline removed; its state is dropped"),
            }
        }
        Ok(())
    }

    fn detectors_fresh(&self) -> Vec<Attached> {
        self.configs.iter().map(Attached::new).collect()
    }

    /// Decodes one message into readings, or the dead letter that keeps it. Pure:
    /// no state changes, so decoded readings can be logged before they are processed.
    pub fn decode(&self, msg: &Message) -> Result<Vec<Reading>, DeadLetter> {
        let mut readings = Vec::with_capacity(1);
        self.decode_into(msg, &mut readings)?;
        Ok(readings)
    }

    /// [`Pipeline::decode`] appending to `out`; on a dead letter `out` is as it was.
    pub fn decode_into(&self, msg: &Message, out: &mut Vec<Reading>) -> Result<(), DeadLetter> {
        let before = out.len();
        self.decode_one(msg, out).map_err(|reason| {
            out.truncate(before);
            DeadLetter {
                topic: msg.topic.clone(),
                payload: msg.payload.clone(),
                reason,
                received_ms: msg.arrival_ms,
            }
        })
    }

    fn decode_one(&self, msg: &Message, out: &mut Vec<Reading>) -> Result<(), String> {
        let series = self
            .template
            .series(&msg.topic)
            .map_err(|e| e.to_string())?;
        let before = out.len();
        payload::decode_owned(series, &msg.payload, msg.arrival_ms, out)
            .map_err(|e| e.to_string())?;
        for reading in &out[before..] {
            if reading.ts_ms > msg.arrival_ms.saturating_add(self.max_future_ms) {
                return Err(format!(
                    "timestamp {} of {} is {} ms ahead of the agent clock (window.max_future)",
                    reading.ts_ms,
                    reading.series,
                    reading.ts_ms - msg.arrival_ms
                ));
            }
        }
        Ok(())
    }

    /// Feeds one decoded reading to every pipeline; `arrival_ms` is the agent clock
    /// when it arrived.
    pub fn process(&mut self, reading: &Reading, arrival_ms: i64, out: &mut Vec<RecordBody>) {
        let hash = self
            .hash_series
            .then(|| self.hasher.hash_one(&reading.series));
        let jobs = self.jobs.iter_mut().zip(&mut self.detectors);
        for ((job, det), &by_series) in jobs.zip(&self.by_series) {
            let hash = hash.filter(|_| by_series);
            job.process_hashed(reading, arrival_ms, hash, out);
            det.process(reading, out);
        }
        self.report();
    }

    /// Decodes and processes one message (dead letters go to `out` too).
    pub fn handle(&mut self, msg: &Message, out: &mut Vec<RecordBody>) {
        let mut readings = std::mem::take(&mut self.decoded);
        readings.clear();
        match self.decode_into(msg, &mut readings) {
            Ok(()) => {
                self.counters
                    .add(&self.counters.readings_decoded, readings.len() as u64);
                for r in &readings {
                    self.process(r, msg.arrival_ms, out);
                }
            }
            Err(dead) => {
                self.counters.inc(&self.counters.dead_letters);
                out.push(RecordBody::DeadLetter(dead));
            }
        }
        self.decoded = readings;
    }

    /// Emits watermarks and closes due windows, pushing their results onto `out`.
    pub fn advance(&mut self, wall_ms: i64, out: &mut Vec<RecordBody>) {
        for (job, det) in self.jobs.iter_mut().zip(&mut self.detectors) {
            job.advance(wall_ms, out);
            det.advance(wall_ms, out);
        }
        self.report();
    }

    /// End of input (offline replay): closes every window.
    pub fn flush(&mut self, out: &mut Vec<RecordBody>) {
        for job in &mut self.jobs {
            job.flush(out);
        }
        self.report();
    }
}

/// Fills `{device}`, `{metric}`, `{pipeline}` and `{detector}` of an alert topic.
fn alert_topic(template: &str, a: &Anomaly) -> String {
    template
        .replace("{device}", &a.series.device)
        .replace("{metric}", &a.series.metric)
        .replace("{pipeline}", &a.pipeline)
        .replace("{detector}", &a.detector)
}

/// The alert message on the local broker (docs/CONFIG.md, "Detectors").
fn alert_json(a: &Anomaly) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "pipeline": a.pipeline,
        "series": a.series.to_string(),
        "device": a.series.device,
        "metric": a.series.metric,
        "ts": a.ts_ms,
        "value": a.value,
        "score": a.score,
        "detector": a.detector,
        "reason": a.reason,
    }))
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CONFIG: &str = r#"
[agent]
id = "t"
[window]
max_future = "1h"
[[pipeline]]
name = "tumbling"
window = { kind = "tumbling", size = "1s" }
watermark = { max_out_of_orderness = "300ms", idle_timeout = "2s" }
late = { policy = "allowed_lateness", allowed_lateness = "1s" }
detectors = ["mad"]
[[pipeline.detector]]
kind = "zscore"
window = 5
threshold = 1.0
cooldown_points = 2
cooldown = "0s"
[[pipeline.detector]]
kind = "ewma"
alpha = 0.3
warmup = 3
[[pipeline.detector]]
kind = "threshold"
max = 1000
suppress = "off"
[[pipeline.detector]]
kind = "rate_of_change"
max_per_sec = 10000
metrics = ["m1"]
[[pipeline.detector]]
kind = "flat_line"
min_points = 2
[[pipeline.detector]]
kind = "missing_data"
expected_interval = "300ms"
devices = ["d1", "d2"]
cooldown = "500ms"
[[pipeline]]
name = "sliding"
key_by = "metric"
window = { kind = "sliding", size = "2s", slide = "500ms" }
late = { policy = "recompute", allowed_lateness = "1s", side_output_beyond = true }
max_series = 2
series_overflow = "evict_oldest"
[[pipeline]]
name = "session"
window = { kind = "session", gap = "700ms" }
watermark = { strategy = "monotonic", idle_timeout = "1s", emit_interval = "300ms" }
late = { policy = "side_output" }
[[pipeline]]
name = "count"
devices = ["d1", "d2"]
map = { scale = 2.0 }
window = { kind = "count", count = 3 }
max_series = 3
"#;

    fn pipeline() -> Pipeline {
        let cfg = AgentConfig::from_toml("t.toml", CONFIG, Vec::new()).expect("config");
        Pipeline::from_config(&cfg, Arc::new(Counters::default()))
    }

    #[derive(Debug, Clone)]
    enum Op {
        Msg {
            dev: u8,
            metric: u8,
            dt: i64,
            value: i16,
            json: bool,
        },
        Tick(i64),
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..4, 0u8..2, -1500i64..500, any::<i16>(), any::<bool>())
                .prop_map(|(dev, metric, dt, value, json)| Op::Msg { dev, metric, dt, value, json }),
            1 => (0i64..3000).prop_map(Op::Tick),
        ]
    }

    /// Applies `ops`, the agent clock advancing 100 ms per op.
    fn apply(p: &mut Pipeline, ops: &[Op], clock: &mut i64, out: &mut Vec<RecordBody>) {
        for op in ops {
            *clock += 100;
            match op {
                Op::Msg {
                    dev,
                    metric,
                    dt,
                    value,
                    json,
                } => {
                    let ts = *clock + dt;
                    let payload = if *json {
                        format!(r#"{{"value": {value}, "ts": {ts}}}"#)
                    } else {
                        value.to_string()
                    };
                    let msg = Message {
                        topic: format!("sensors/d{dev}/m{metric}"),
                        payload: payload.into_bytes(),
                        arrival_ms: *clock,
                    };
                    // Decode, then process: as the ingest loop does after logging.
                    match p.decode(&msg) {
                        Ok(rs) => rs.iter().for_each(|r| p.process(r, msg.arrival_ms, out)),
                        Err(d) => out.push(RecordBody::DeadLetter(d)),
                    }
                }
                Op::Tick(extra) => *clock += extra,
            }
            p.advance(*clock, out);
        }
    }

    proptest! {
        /// restore(snapshot) then the same inputs gives the same outputs as an
        /// uninterrupted run, for every window kind and late policy.
        #[test]
        fn snapshot_restore_is_transparent(
            ops in proptest::collection::vec(arb_op(), 1..120),
            cut in any::<prop::sample::Index>(),
        ) {
            let cut = cut.index(ops.len());
            let (mut whole, mut clock_a, mut out_a) = (pipeline(), 1_700_000_000_000i64, Vec::new());
            apply(&mut whole, &ops, &mut clock_a, &mut out_a);
            whole.flush(&mut out_a);

            let (mut first, mut clock_b, mut out_b) = (pipeline(), 1_700_000_000_000i64, Vec::new());
            apply(&mut first, &ops[..cut], &mut clock_b, &mut out_b);
            let snap = first.snapshot();
            drop(first);
            let mut second = pipeline();
            second.restore(&snap).expect("restore");
            prop_assert_eq!(second.snapshot(), snap, "restore is exact");
            apply(&mut second, &ops[cut..], &mut clock_b, &mut out_b);
            second.flush(&mut out_b);
            prop_assert_eq!(out_a, out_b);
        }
    }

    #[test]
    fn restore_refuses_garbage_and_other_versions() {
        let mut p = pipeline();
        assert!(matches!(
            p.restore(b"\x01\x02"),
            Err(PipelineError::Snapshot(_))
        ));
        let other = fieldline_common::codec::to_cbor(&SnapshotRef {
            v: 99,
            jobs: vec![],
            detectors: vec![],
        })
        .expect("encode");
        assert!(matches!(
            p.restore(&other),
            Err(PipelineError::SnapshotVersion { found: 99, .. })
        ));
    }

    #[test]
    fn a_changed_pipeline_starts_empty_instead_of_misreading_old_state() {
        let mut p = pipeline();
        let mut out = Vec::new();
        let msg = Message {
            topic: "sensors/d1/m0".into(),
            payload: b"5".to_vec(),
            arrival_ms: 1_700_000_000_000,
        };
        p.handle(&msg, &mut out);
        let snap = p.snapshot();
        let changed = CONFIG.replace(r#"size = "1s""#, r#"size = "5s""#);
        let cfg = AgentConfig::from_toml("t.toml", &changed, Vec::new()).expect("config");
        let mut q = Pipeline::from_config(&cfg, Arc::new(Counters::default()));
        q.restore(&snap).expect("restore");
        assert_eq!(q.jobs()[0].keys(), 0, "tumbling changed: empty");
        assert_eq!(q.jobs()[2].keys(), 1, "session unchanged: restored");
    }

    #[test]
    fn records_are_routed_by_their_pipeline_sinks() {
        let cfg = AgentConfig::from_toml(
            "t.toml",
            r#"
[agent]
id = "t"
[[pipeline]]
name = "local"
window = { kind = "count", count = 2 }
aggregates = ["count"]
sinks = ["mqtt:site/windows"]
alert_topic = "site/{pipeline}/{detector}/{device}/{metric}"
detectors = [{ kind = "threshold", max = 10 }]
[[pipeline]]
name = "both"
window = { kind = "count", count = 2 }
aggregates = ["count"]
sinks = ["outbox", "mqtt:site/both"]
detectors = [{ kind = "threshold", max = 10 }]
[[pipeline]]
name = "quiet"
window = { kind = "count", count = 2 }
aggregates = ["count"]
alert_topic = ""
detectors = [{ kind = "threshold", max = 10 }]
"#,
            Vec::new(),
        )
        .expect("config");
        let mut p = Pipeline::from_config(&cfg, Arc::new(Counters::default()));
        let mut out = Vec::new();
        for (i, v) in [1.0, 50.0].into_iter().enumerate() {
            let msg = Message {
                topic: "sensors/d1/temp".into(),
                payload: format!(
                    r#"{{"value": {v}, "ts": {}}}"#,
                    1_700_000_000_000i64 + i as i64
                )
                .into_bytes(),
                arrival_ms: 1_700_000_000_000,
            };
            p.handle(&msg, &mut out);
        }
        let kinds = |out: &[RecordBody]| {
            out.iter()
                .map(|r| match r {
                    RecordBody::Window(w) => format!("window {}", w.pipeline),
                    RecordBody::Anomaly(a) => format!("anomaly {}", a.pipeline),
                    other => other.kind().to_string(),
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            kinds(&out),
            [
                "window local",
                "anomaly local",
                "window both",
                "anomaly both",
                "window quiet",
                "anomaly quiet"
            ]
        );
        let mut local = Vec::new();
        p.route(&mut out, &mut local);
        assert_eq!(
            kinds(&out),
            [
                "window both",
                "anomaly both",
                "window quiet",
                "anomaly quiet"
            ]
        );
        let topics: Vec<&str> = local.iter().map(|m| m.topic.as_str()).collect();
        assert_eq!(
            topics,
            [
                "site/windows",
                "site/local/threshold/d1/temp",
                "site/both",
                "alerts/d1/temp"
            ]
        );
        let alert: serde_json::Value = serde_json::from_slice(&local[1].payload).expect("json");
        assert_eq!(
            alert,
            serde_json::json!({
                "pipeline": "local",
                "series": "d1/temp",
                "device": "d1",
                "metric": "temp",
                "ts": 1_700_000_000_001i64,
                "value": 50.0,
                "score": 1.0,
                "detector": "threshold",
                "reason": "value 50 above max 10",
            })
        );
        let window: serde_json::Value =
            serde_json::from_slice(&local[0].payload).expect("window json");
        assert_eq!(
            (&window["kind"], &window["count"], &window["pipeline"]),
            (&"window".into(), &2.into(), &"local".into())
        );
        assert_eq!(
            p.counters
                .anomalies
                .load(std::sync::atomic::Ordering::Relaxed),
            3
        );
    }
}
