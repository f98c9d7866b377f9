//! Detectors attached to a pipeline: per-series detector state fed with the pipeline's
//! readings, turned into `anomaly` records with one alert per episode.
//!
//! - **Input**: the readings the pipeline's job sees, after its filter (device / metric
//!   globs, `value_min` / `value_max`) and map (`scale`, `offset`), per series
//!   (device, metric) whatever the job's `key_by`. Window aggregates are not scored: a
//!   detector on raw readings sees a spike the moment it arrives, and a window result only
//!   exists after its window closed, which is too late for a local actuator.
//! - **Gaps**: `missing_data` detectors are also asked on every `advance(wall_ms)`
//!   ([`Detector::check_idle`]). That check is pure unless it raises an alert, so an idle
//!   tick that emits nothing can be left out of the ingest log (see `ingest.rs`).
//! - **Memory**: constant per series and detector; at most the pipeline's `max_series`
//!   series have detector state, further series are not scored and are counted
//!   (`series_rejected`); state of a series is kept while the pipeline runs.
//! - **Determinism**: no clock, no randomness; [`Attached::snapshot`] / [`restore`]
//!   cover all state, so restoring a checkpoint and replaying the log gives the same
//!   records. Every built-in detector saves its state; one that cannot (the trait's
//!   default) restarts learning after a restore, and its series warm up again.
//!
//! **Boundary**: the one module of `detect/` that knows the agent's config and records;
//! the detectors themselves stay std-only.
//!
//! [`restore`]: Attached::restore

use std::collections::BTreeMap;

use fieldline_common::config::pipeline::{
    DetectorConfig, DetectorKind, PipelineConfig, Suppression,
};
use fieldline_common::payload::Reading;
use fieldline_common::wire::{Anomaly, RecordBody, SeriesKey};

use super::{Detector, DetectorSpec, GeneralConfig, StateReader, StateWriter, Suppressor};
use crate::engine::job::glob;

/// Version of the per-pipeline state encoding ([`Attached::snapshot`]).
const STATE_VERSION: u64 = 1;

/// The detector spec a validated config entry stands for.
pub fn spec_of(cfg: &DetectorConfig) -> DetectorSpec {
    let base = match &cfg.kind {
        DetectorKind::Threshold { min, max } => DetectorSpec::Threshold {
            min: *min,
            max: *max,
        },
        DetectorKind::ZScore { window, threshold } => DetectorSpec::ZScore {
            window: *window,
            threshold: *threshold,
        },
        DetectorKind::Ewma { alpha, threshold } => DetectorSpec::Ewma {
            alpha: *alpha,
            threshold: *threshold,
        },
        DetectorKind::Mad { window, threshold } => DetectorSpec::Mad {
            window: *window,
            threshold: *threshold,
        },
        DetectorKind::RateOfChange { max_per_sec } => DetectorSpec::RateOfChange {
            max_per_sec: *max_per_sec,
        },
        DetectorKind::FlatLine {
            min_points,
            min_duration_ms,
            tolerance,
        } => DetectorSpec::FlatLine {
            min_points: *min_points,
            min_duration_ms: *min_duration_ms,
            tolerance: *tolerance,
        },
        DetectorKind::MissingData {
            expected_interval_ms,
            factor,
        } => DetectorSpec::MissingData {
            expected_interval_ms: *expected_interval_ms,
            factor: *factor,
        },
        DetectorKind::General {
            memory,
            alert_nats,
            season_period_ms,
            novelty_prototypes,
        } => {
            let d = GeneralConfig::default();
            // The general detector warms up and suppresses by itself (its NAB-tuned
            // episode logic); the attachment's warm-up and alert score are handed to it
            // so that its capped, suppressed scores stay below the alert score.
            return DetectorSpec::General(GeneralConfig {
                warmup: if cfg.warmup > 0 { cfg.warmup } else { d.warmup },
                memory: memory.unwrap_or(d.memory),
                alert_nats: alert_nats.unwrap_or(d.alert_nats),
                season_period_ms: season_period_ms.unwrap_or(d.season_period_ms),
                novelty_prototypes: novelty_prototypes.unwrap_or(d.novelty_prototypes),
                alert_threshold: cfg.alert_score,
                ..d
            });
        }
    };
    if cfg.warmup > 0 {
        DetectorSpec::WarmUp {
            points: cfg.warmup,
            inner: Box::new(base),
        }
    } else {
        base
    }
}

/// One configured detector of the pipeline.
struct Attachment {
    cfg: DetectorConfig,
    spec: DetectorSpec,
    idle_checked: bool,
}

impl Attachment {
    fn applies(&self, s: &SeriesKey) -> bool {
        (self.cfg.devices.is_empty() || self.cfg.devices.iter().any(|g| glob(g, &s.device)))
            && (self.cfg.metrics.is_empty() || self.cfg.metrics.iter().any(|g| glob(g, &s.metric)))
    }

    fn suppressor(&self) -> Option<Suppressor> {
        match self.cfg.suppress {
            Suppression::Off => None,
            Suppression::Episode {
                cooldown_points,
                cooldown_ms,
            } => Some(Suppressor::new(
                self.cfg.alert_score,
                cooldown_points,
                cooldown_ms,
            )),
        }
    }
}

/// One detector on one series.
struct Slot {
    det: Box<dyn Detector>,
    sup: Option<Suppressor>,
}

struct SeriesState {
    last_value: f64,
    /// Per attachment; `None` where the attachment's series match excludes this series.
    slots: Vec<Option<Slot>>,
}

/// Counters of one pipeline's detectors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttachStats {
    pub anomalies: u64,
    /// Series not scored because `max_series` series already have detector state.
    pub series_rejected: u64,
}

/// The detectors of one pipeline.
pub struct Attached {
    pipeline: String,
    attachments: Vec<Attachment>,
    devices: Vec<String>,
    metrics: Vec<String>,
    value_min: f64,
    value_max: f64,
    scale: f64,
    offset: f64,
    max_series: usize,
    series: BTreeMap<SeriesKey, SeriesState>,
    stats: AttachStats,
}

impl Attached {
    pub fn new(cfg: &PipelineConfig) -> Self {
        let attachments = cfg
            .detectors
            .iter()
            .map(|d| {
                let spec = spec_of(d);
                Attachment {
                    idle_checked: matches!(d.kind, DetectorKind::MissingData { .. }),
                    cfg: d.clone(),
                    spec,
                }
            })
            .collect();
        Self {
            pipeline: cfg.name.clone(),
            attachments,
            devices: cfg.devices.clone(),
            metrics: cfg.metrics.clone(),
            value_min: cfg.value_min.unwrap_or(f64::NEG_INFINITY),
            value_max: cfg.value_max.unwrap_or(f64::INFINITY),
            scale: cfg.scale,
            offset: cfg.offset,
            max_series: cfg.max_series,
            series: BTreeMap::new(),
            stats: AttachStats::default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.attachments.is_empty()
    }

    pub fn stats(&self) -> AttachStats {
        self.stats
    }

    /// Series with detector state.
    pub fn series(&self) -> usize {
        self.series.len()
    }

    /// Bytes of detector state over all series.
    pub fn state_bytes(&self) -> usize {
        self.series
            .iter()
            .map(|(k, s)| {
                std::mem::size_of::<SeriesKey>()
                    + k.device.capacity()
                    + k.metric.capacity()
                    + std::mem::size_of::<SeriesState>()
                    + s.slots
                        .iter()
                        .flatten()
                        .map(|sl| sl.det.state_bytes() + std::mem::size_of::<Slot>())
                        .sum::<usize>()
            })
            .sum()
    }

    /// What a state must have been taken under to be restored here.
    pub fn fingerprint(&self) -> String {
        let cfgs: Vec<&DetectorConfig> = self.attachments.iter().map(|a| &a.cfg).collect();
        format!(
            "{cfgs:?}|{:?}|{:?}|{}|{}|{}|{}",
            self.devices, self.metrics, self.value_min, self.value_max, self.scale, self.offset
        )
    }

    /// The job's filter and map, so detectors see what the windows see.
    fn admit(&self, r: &Reading) -> Option<f64> {
        if !self.devices.is_empty() && !self.devices.iter().any(|g| glob(g, &r.series.device)) {
            return None;
        }
        if !self.metrics.is_empty() && !self.metrics.iter().any(|g| glob(g, &r.series.metric)) {
            return None;
        }
        if !(r.value >= self.value_min && r.value <= self.value_max) {
            return None;
        }
        let v = r.value * self.scale + self.offset;
        v.is_finite().then_some(v)
    }

    fn new_series(&self, key: &SeriesKey) -> SeriesState {
        SeriesState {
            last_value: f64::NAN,
            slots: self
                .attachments
                .iter()
                .map(|a| {
                    a.applies(key).then(|| Slot {
                        det: a.spec.build(),
                        sup: a.suppressor(),
                    })
                })
                .collect(),
        }
    }

    /// Scores one reading with every detector that applies to its series.
    pub fn process(&mut self, r: &Reading, out: &mut Vec<RecordBody>) {
        if self.attachments.is_empty() {
            return;
        }
        let Some(value) = self.admit(r) else { return };
        // One lookup for a known series (every reading but its first).
        let state = match self.series.get_mut(&r.series) {
            Some(state) => state,
            None => {
                if !self.attachments.iter().any(|a| a.applies(&r.series)) {
                    return;
                }
                if self.series.len() >= self.max_series {
                    self.stats.series_rejected += 1;
                    return;
                }
                let state = self.new_series(&r.series);
                self.series.entry(r.series.clone()).or_insert(state)
            }
        };
        state.last_value = value;
        for (a, slot) in self.attachments.iter().zip(state.slots.iter_mut()) {
            let Some(slot) = slot else { continue };
            let score = slot.det.update(r.ts_ms, value);
            if alert(a, slot, r.ts_ms, score) {
                self.stats.anomalies += 1;
                out.push(record(
                    &self.pipeline,
                    a,
                    slot,
                    &r.series,
                    r.ts_ms,
                    value,
                    score,
                ));
            }
        }
    }

    /// Asks the gap detectors whether their series went silent by `wall_ms`.
    pub fn advance(&mut self, wall_ms: i64, out: &mut Vec<RecordBody>) {
        if !self.attachments.iter().any(|a| a.idle_checked) {
            return;
        }
        for (key, state) in &mut self.series {
            for (a, slot) in self.attachments.iter().zip(state.slots.iter_mut()) {
                let Some(slot) = slot.as_mut().filter(|_| a.idle_checked) else {
                    continue;
                };
                let score = slot.det.check_idle(wall_ms);
                if score < a.cfg.alert_score {
                    // Not a point: it must neither count as quiet for the suppressor
                    // nor otherwise change state (idle ticks are not all logged).
                    continue;
                }
                if alert(a, slot, wall_ms, score) {
                    self.stats.anomalies += 1;
                    out.push(record(
                        &self.pipeline,
                        a,
                        slot,
                        key,
                        wall_ms,
                        state.last_value,
                        score,
                    ));
                }
            }
        }
    }

    /// All detector state, for the engine snapshot. Byte layout: see `detect/state.rs`.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        if self.attachments.is_empty() {
            return buf;
        }
        let mut w = StateWriter(&mut buf);
        w.u64(STATE_VERSION);
        w.u64(self.stats.anomalies);
        w.u64(self.stats.series_rejected);
        w.u64(self.series.len() as u64);
        for (key, state) in &self.series {
            write_str(&mut w, &key.device);
            write_str(&mut w, &key.metric);
            w.f64(state.last_value);
            for slot in &state.slots {
                let Some(slot) = slot else {
                    w.bool(false);
                    continue;
                };
                w.bool(true);
                if let Some(sup) = &slot.sup {
                    sup.save_state(&mut w);
                }
                // Length-prefixed so a detector that cannot save leaves a readable gap.
                let mut det = Vec::new();
                let saved = slot.det.save_state(&mut StateWriter(&mut det));
                w.bool(saved);
                if saved {
                    w.u64(det.len() as u64);
                    w.0.extend_from_slice(&det);
                }
            }
        }
        buf
    }

    /// Replaces all detector state with a [`snapshot`](Self::snapshot) taken under the same
    /// [`fingerprint`](Self::fingerprint). Returns how many detectors could not be restored
    /// (they start learning again); on malformed input nothing changes.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<usize, String> {
        if bytes.is_empty() {
            self.series.clear();
            self.stats = AttachStats::default();
            return Ok(0);
        }
        let bad = || "malformed detector state".to_string();
        let mut r = StateReader(bytes);
        let version = r.u64().ok_or_else(bad)?;
        if version != STATE_VERSION {
            return Err(format!("detector state version {version} is not supported"));
        }
        let stats = AttachStats {
            anomalies: r.u64().ok_or_else(bad)?,
            series_rejected: r.u64().ok_or_else(bad)?,
        };
        let n = r.usize().ok_or_else(bad)?;
        let mut series = BTreeMap::new();
        let mut fresh = 0;
        for _ in 0..n {
            let key = SeriesKey::new(
                read_str(&mut r).ok_or_else(bad)?,
                read_str(&mut r).ok_or_else(bad)?,
            );
            let mut state = self.new_series(&key);
            state.last_value = r.f64().ok_or_else(bad)?;
            for (a, slot) in self.attachments.iter().zip(state.slots.iter_mut()) {
                let present = r.bool().ok_or_else(bad)?;
                if present != slot.is_some() {
                    return Err(bad());
                }
                let Some(slot) = slot else { continue };
                if let Some(sup) = &mut slot.sup {
                    sup.load_state(&mut r).ok_or_else(bad)?;
                }
                if !r.bool().ok_or_else(bad)? {
                    fresh += 1;
                    continue;
                }
                let len = r.usize().ok_or_else(bad)?;
                if len > r.0.len() {
                    return Err(bad());
                }
                let (det, rest) = r.0.split_at(len);
                r.0 = rest;
                let mut dr = StateReader(det);
                if !slot.det.load_state(&mut dr) || !dr.is_empty() {
                    return Err(format!(
                        "state of detector `{}` on {key} does not fit",
                        a.cfg.name
                    ));
                }
            }
            series.insert(key, state);
        }
        if !r.is_empty() {
            return Err(bad());
        }
        self.series = series;
        self.stats = stats;
        Ok(fresh)
    }
}

/// Applies the attachment's alert score and suppression to one score.
fn alert(a: &Attachment, slot: &mut Slot, ts_ms: i64, score: f64) -> bool {
    match &mut slot.sup {
        Some(sup) => sup.observe(ts_ms, score),
        None => score >= a.cfg.alert_score,
    }
}

fn record(
    pipeline: &str,
    a: &Attachment,
    slot: &Slot,
    series: &SeriesKey,
    ts_ms: i64,
    value: f64,
    score: f64,
) -> RecordBody {
    RecordBody::Anomaly(Anomaly {
        pipeline: pipeline.to_string(),
        series: series.clone(),
        ts_ms,
        value,
        score,
        detector: a.cfg.name.clone(),
        reason: slot.det.reason(),
    })
}

fn write_str(w: &mut StateWriter, s: &str) {
    w.u64(s.len() as u64);
    w.0.extend_from_slice(s.as_bytes());
}

fn read_str(r: &mut StateReader) -> Option<String> {
    let len = r.usize()?;
    if len > r.0.len() {
        return None;
    }
    let (s, rest) = r.0.split_at(len);
    r.0 = rest;
    String::from_utf8(s.to_vec()).ok()
}

#[cfg(test)]
#[path = "attach_tests.rs"]
mod tests;
