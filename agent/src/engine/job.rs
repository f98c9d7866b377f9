//! One compiled pipeline: operators → key → windows → aggregates, with its own
//! watermarks, late-data policy and series cap. Built by the fluent API
//! ([`super::stream`]) or from a `[[pipeline]]` rule ([`Job::from_config`]).
//!
//! Lifecycle hooks: [`Job::process`] (one reading), [`Job::advance`] (watermark
//! emission: closes and retires windows), [`Job::snapshot_state`] /
//! [`Job::restore_state`] (checkpoint), [`Job::flush`] (end of input).
//! **Invariant**: no IO and no clock reads; same inputs, same outputs.

use std::collections::HashMap;

use hashbrown::HashTable;
use std::sync::Arc;

use fieldline_common::config::pipeline::{
    KeyBy, LateConfig, LatePolicy, PipelineConfig, SeriesOverflow, WatermarkConfig, WindowSpec,
};
use fieldline_common::payload::Reading;
use fieldline_common::wire::{LateReading, RecordBody, SeriesKey, WindowResult};
use serde::{Deserialize, Serialize};

use super::aggregate::{Acc, AggSpec};
use super::sketch::Sketch;
use super::watermark::Watermarks;
use super::{count, session, sliding, tumbling};

pub(crate) type FilterFn = Arc<dyn Fn(&Reading) -> bool + Send + Sync>;
pub(crate) type MapFn = Arc<dyn Fn(Reading) -> Reading + Send + Sync>;
pub(crate) type FlatMapFn = Arc<dyn Fn(Reading) -> Vec<Reading> + Send + Sync>;
pub(crate) type KeyFn = Arc<dyn Fn(&Reading) -> SeriesKey + Send + Sync>;

/// One stateless operator before the key.
#[derive(Clone)]
pub(crate) enum Step {
    Filter(FilterFn),
    Map(MapFn),
    FlatMap(FlatMapFn),
}

/// How readings are keyed.
#[derive(Clone)]
pub enum KeySelector {
    By(KeyBy),
    /// A custom key; such keys span devices, so they close on the global watermark.
    Custom(KeyFn),
}

impl KeySelector {
    fn per_device(&self) -> bool {
        matches!(self, Self::By(KeyBy::Series | KeyBy::Device))
    }
}

/// Counters of one job; never reset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct JobStats {
    pub readings: u64,
    pub filtered: u64,
    pub late_dropped: u64,
    pub late_revised: u64,
    pub late_side_output: u64,
    pub series_rejected: u64,
    pub series_evicted: u64,
    pub windows_emitted: u64,
}

#[cfg(test)]
pub(crate) type WinForSize = Win;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Win {
    start: i64,
    end: i64,
    acc: Acc,
    /// Last revision emitted; `None` while open.
    emitted: Option<u32>,
    /// Changed since the last emission (recompute policy).
    dirty: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct KeyState {
    key: SeriesKey,
    /// Device clock this key closes on (per-device keys only).
    device: Option<u32>,
    /// Sorted by start; open windows and closed ones kept for late data.
    windows: Vec<Win>,
    /// Time windows with quantiles: one sketch per pane (`gcd(size, slide)`), sorted
    /// by start; a window's quantiles merge the panes it covers, so a reading
    /// updates one sketch however many windows overlap.
    #[serde(default)]
    panes: Vec<Pane>,
    /// Logical time of the last reading, for `evict_oldest`.
    touched: u64,
    /// Earliest watermark at which a window closes or retires.
    deadline: i64,
}

impl KeyState {
    /// The earliest watermark at which one of the windows closes or retires.
    fn next_deadline(&self, lateness: i64) -> i64 {
        self.windows
            .iter()
            .map(|w| deadline(w, lateness))
            .min()
            .unwrap_or(i64::MAX)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Pane {
    start: i64,
    sketch: Sketch,
}

/// The sketch of the window `[start, end)`: its one pane, or its panes merged into
/// `scratch` (reused, so emitting a sliding window allocates no sketch).
fn pane_sketch<'a>(
    panes: &'a [Pane],
    start: i64,
    end: i64,
    scratch: &'a mut Sketch,
) -> Option<&'a Sketch> {
    let from = panes.partition_point(|p| p.start < start);
    let to = panes.partition_point(|p| p.start < end);
    match &panes[from..to] {
        [] => None,
        [one] => Some(&one.sketch),
        many => {
            scratch.clear();
            for p in many {
                scratch.merge(&p.sketch);
            }
            Some(scratch)
        }
    }
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Everything a checkpoint holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    keys: Vec<Option<KeyState>>,
    free: Vec<u32>,
    clocks: Watermarks,
    tick: u64,
}

pub struct Job {
    pub(crate) name: String,
    pub(crate) steps: Vec<Step>,
    pub(crate) key: KeySelector,
    pub(crate) window: WindowSpec,
    pub(crate) aggs: AggSpec,
    pub(crate) watermark: WatermarkConfig,
    pub(crate) late: LateConfig,
    pub(crate) max_series: usize,
    pub(crate) overflow: SeriesOverflow,
    state: JobState,
    /// Key → slab id. The table holds only ids (4 bytes a bucket, so it stays in
    /// cache for 10,000s of keys); equality is checked on the slab entry, which the
    /// reading touches next anyway.
    key_index: HashTable<u32>,
    hasher: ahash::RandomState,
    device_index: HashMap<String, u32, ahash::RandomState>,
    live_keys: usize,
    /// No key has a window due before this (derived; `i64::MIN` forces a pass).
    min_deadline: i64,
    /// Pane length of time windows with quantiles: `gcd(size, slide)`.
    pane_ms: i64,
    /// Per device clock (by id): its keys and their earliest deadline (derived from
    /// the slab, rebuilt on restore). Per-device keys close on their device's
    /// watermark, so a close pass visits the devices whose watermark passed that
    /// deadline instead of every key.
    device_keys: Vec<DeviceKeys>,
    /// Window quantiles merge their panes into this, reused between windows.
    merged: Sketch,
    /// Results of a close pass, sorted before they go out; kept between passes so a
    /// pass that closes thousands of windows does not allocate (and free) its list.
    closed: Vec<WindowResult>,
    stats: JobStats,
    scratch: Vec<Reading>,
}

/// Capacity of the close-pass result list kept between passes (~600 KB at most).
const MAX_KEPT_RESULTS: usize = 4096;

#[derive(Debug, Clone, Default)]
struct DeviceKeys {
    keys: Vec<u32>,
    /// No key of the device has a window due before this (`i64::MAX`: none).
    deadline: i64,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("name", &self.name)
            .field("window", &self.window)
            .field("keys", &self.live_keys)
            .finish_non_exhaustive()
    }
}

/// Defaults of the fluent API: 2 s out-of-orderness, 5 s idle timeout, drop late data.
pub(crate) const DEFAULT_WATERMARK: WatermarkConfig = WatermarkConfig {
    strategy: fieldline_common::config::pipeline::WatermarkStrategy::BoundedOutOfOrderness {
        max_out_of_orderness_ms: 2000,
    },
    idle_timeout_ms: 5000,
    emit_interval_ms: 0,
};

impl Job {
    pub(crate) fn new(
        steps: Vec<Step>,
        key: KeySelector,
        window: WindowSpec,
        aggs: AggSpec,
    ) -> Self {
        Self {
            name: String::new(),
            steps,
            key,
            window,
            aggs,
            watermark: DEFAULT_WATERMARK,
            late: LateConfig {
                policy: LatePolicy::Drop,
                allowed_lateness_ms: 0,
                side_output_beyond: false,
            },
            max_series: fieldline_common::config::pipeline::DEFAULT_MAX_SERIES,
            overflow: SeriesOverflow::DropNew,
            state: JobState::default(),
            key_index: HashTable::new(),
            hasher: ahash::RandomState::new(),
            device_index: HashMap::default(),
            live_keys: 0,
            min_deadline: i64::MIN,
            pane_ms: match window {
                WindowSpec::Tumbling { size_ms } => size_ms,
                WindowSpec::Sliding { size_ms, slide_ms } => gcd(size_ms, slide_ms),
                WindowSpec::Session { .. } | WindowSpec::Count { .. } => 0,
            },
            device_keys: Vec::new(),
            merged: Sketch::new(),
            closed: Vec::new(),
            stats: JobStats::default(),
            scratch: Vec::new(),
        }
    }

    /// Compiles a `[[pipeline]]` rule into the same operators the fluent API builds.
    pub fn from_config(cfg: &PipelineConfig) -> Self {
        let mut stream = super::DataStream::new();
        if !cfg.devices.is_empty() {
            let globs = cfg.devices.clone();
            stream = stream.filter(move |r| globs.iter().any(|g| glob(g, &r.series.device)));
        }
        if !cfg.metrics.is_empty() {
            let globs = cfg.metrics.clone();
            stream = stream.filter(move |r| globs.iter().any(|g| glob(g, &r.series.metric)));
        }
        if cfg.value_min.is_some() || cfg.value_max.is_some() {
            let (lo, hi) = (
                cfg.value_min.unwrap_or(f64::NEG_INFINITY),
                cfg.value_max.unwrap_or(f64::INFINITY),
            );
            stream = stream.filter(move |r| r.value >= lo && r.value <= hi);
        }
        if cfg.scale != 1.0 || cfg.offset != 0.0 {
            let (scale, offset) = (cfg.scale, cfg.offset);
            stream = stream.map(move |mut r| {
                r.value = r.value * scale + offset;
                r
            });
        }
        stream
            .key_by(cfg.key_by)
            .window(cfg.window)
            .watermark(cfg.watermark)
            .late(cfg.late)
            .max_series(cfg.max_series, cfg.series_overflow)
            .unit(&cfg.unit)
            .aggregate(&cfg.aggregates)
            .named(&cfg.name)
    }

    /// Names the job; the name is copied into every record it emits.
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn stats(&self) -> JobStats {
        self.stats
    }

    /// Keys with state right now.
    pub fn keys(&self) -> usize {
        self.live_keys
    }

    /// Bytes of state held, from the capacities actually allocated: the key slab,
    /// key strings, windows and their accumulators, pane sketches, the key and device
    /// indexes and the device clocks.
    pub fn state_bytes(&self) -> usize {
        let heap: usize = self
            .state
            .keys
            .iter()
            .flatten()
            .map(|k| {
                heap_bytes(&k.key.device)
                    + heap_bytes(&k.key.metric)
                    + k.windows.capacity() * std::mem::size_of::<Win>()
                    + k.windows
                        .iter()
                        .map(|w| w.acc.bytes() - std::mem::size_of::<Acc>())
                        .sum::<usize>()
                    + k.panes.capacity() * std::mem::size_of::<Pane>()
                    + k.panes
                        .iter()
                        .map(|p| p.sketch.bytes() - std::mem::size_of::<Sketch>())
                        .sum::<usize>()
            })
            .sum();
        heap + self.state.keys.capacity() * std::mem::size_of::<Option<KeyState>>()
            + self.state.free.capacity() * 4
            + table_bytes::<u32>(self.key_index.capacity())
            + table_bytes::<(String, u32)>(self.device_index.capacity())
            + self
                .device_index
                .keys()
                .map(String::capacity)
                .sum::<usize>()
            + self.state.clocks.bytes()
            + self.merged.bytes()
            + self
                .device_keys
                .iter()
                .map(|d| d.keys.capacity() * 4)
                .sum::<usize>()
            + self.device_keys.capacity() * std::mem::size_of::<DeviceKeys>()
            + self.closed.capacity() * std::mem::size_of::<WindowResult>()
    }

    /// Windows held over all keys (open, and closed ones kept for late data).
    pub fn open_windows(&self) -> usize {
        self.state
            .keys
            .iter()
            .flatten()
            .map(|k| k.windows.len())
            .sum()
    }

    /// Feeds one reading; `arrival_ms` is the agent clock when it arrived.
    pub fn process(&mut self, reading: &Reading, arrival_ms: i64, out: &mut Vec<RecordBody>) {
        self.stats.readings += 1;
        if self.steps.iter().all(|s| matches!(s, Step::Filter(_))) {
            for s in &self.steps {
                if let Step::Filter(f) = s {
                    if !f(reading) {
                        self.stats.filtered += 1;
                        return;
                    }
                }
            }
            return self.ingest(reading, arrival_ms, out);
        }
        let mut batch = std::mem::take(&mut self.scratch);
        batch.clear();
        batch.push(reading.clone());
        for s in &self.steps {
            match s {
                Step::Filter(f) => batch.retain(|r| f(r)),
                Step::Map(f) => {
                    for r in batch.iter_mut() {
                        let taken = std::mem::replace(
                            r,
                            Reading {
                                series: SeriesKey::new("", ""),
                                ts_ms: 0,
                                value: 0.0,
                            },
                        );
                        *r = f(taken);
                    }
                }
                Step::FlatMap(f) => {
                    batch = batch.into_iter().flat_map(|r| f(r)).collect();
                }
            }
        }
        if batch.is_empty() {
            self.stats.filtered += 1;
        }
        for r in &batch {
            if r.value.is_finite() {
                self.ingest(r, arrival_ms, out);
            } else {
                self.stats.filtered += 1;
            }
        }
        self.scratch = batch;
    }

    fn key_of(&self, r: &Reading) -> Option<SeriesKey> {
        let any = || fieldline_common::wire::Name::const_new("*");
        match &self.key {
            KeySelector::By(KeyBy::Series) => None,
            KeySelector::By(KeyBy::Device) => Some(SeriesKey {
                device: r.series.device.clone(),
                metric: any(),
            }),
            KeySelector::By(KeyBy::Metric) => Some(SeriesKey {
                device: any(),
                metric: r.series.metric.clone(),
            }),
            KeySelector::By(KeyBy::All) => Some(SeriesKey {
                device: any(),
                metric: any(),
            }),
            KeySelector::Custom(f) => Some(f(r)),
        }
    }

    fn device_id(&mut self, device: &str) -> u32 {
        if let Some(id) = self.device_index.get(device) {
            return *id;
        }
        let id = self.state.clocks.insert(device.to_string());
        self.device_index.insert(device.to_string(), id);
        id
    }

    /// The key slot for `r`, creating it (subject to the series cap).
    fn slot(&mut self, r: &Reading, out: &mut Vec<RecordBody>) -> Option<u32> {
        let owned = self.key_of(r);
        let key = owned.as_ref().unwrap_or(&r.series);
        let hash = self.hasher.hash_one(key);
        let keys = &self.state.keys;
        let found = self.key_index.find(hash, |&id| {
            keys[id as usize].as_ref().is_some_and(|k| k.key == *key)
        });
        if let Some(id) = found {
            return Some(*id);
        }
        if self.live_keys >= self.max_series {
            match self.overflow {
                SeriesOverflow::DropNew => {
                    self.stats.series_rejected += 1;
                    return None;
                }
                SeriesOverflow::EvictOldest => self.evict_oldest(out),
            }
        }
        let key = owned.unwrap_or_else(|| r.series.clone());
        let device = if self.key.per_device() {
            let id = self.device_id(&r.series.device);
            if let Some(d) = self.state.clocks.get_mut(id) {
                d.refs += 1;
            }
            Some(id)
        } else {
            None
        };
        let ks = Some(KeyState {
            key: key.clone(),
            device,
            windows: Vec::new(),
            panes: Vec::new(),
            touched: 0,
            deadline: i64::MAX,
        });
        let id = match self.state.free.pop() {
            Some(id) => {
                self.state.keys[id as usize] = ks;
                id
            }
            None => {
                self.state.keys.push(ks);
                (self.state.keys.len() - 1) as u32
            }
        };
        let (keys, hasher) = (&self.state.keys, &self.hasher);
        self.key_index.insert_unique(hash, id, |&id| {
            keys[id as usize]
                .as_ref()
                .map_or(0, |k| hasher.hash_one(&k.key))
        });
        self.live_keys += 1;
        if let Some(d) = device {
            self.device_keys_mut(d).keys.push(id);
        }
        Some(id)
    }

    fn evict_oldest(&mut self, out: &mut Vec<RecordBody>) {
        let Some(id) = self
            .state
            .keys
            .iter()
            .enumerate()
            .filter_map(|(i, k)| k.as_ref().map(|k| (k.touched, i)))
            .min()
            .map(|(_, i)| i as u32)
        else {
            return;
        };
        let mut results = Vec::new();
        if let Some(k) = &mut self.state.keys[id as usize] {
            for w in k.windows.drain(..) {
                let rev = match (w.emitted, w.dirty) {
                    (None, _) => Some(0),
                    (Some(r), true) => Some(r + 1),
                    (Some(_), false) => None,
                };
                if let Some(rev) = rev {
                    if !matches!(self.window, WindowSpec::Count { .. }) {
                        let sk = pane_sketch(&k.panes, w.start, w.end, &mut self.merged);
                        results.push(
                            self.aggs
                                .finish(&w.acc, sk, &self.name, &k.key, w.start, w.end, rev),
                        );
                    }
                }
            }
        }
        self.stats.series_evicted += 1;
        self.stats.windows_emitted += results.len() as u64;
        out.extend(results.into_iter().map(RecordBody::Window));
        self.remove_key(id);
    }

    fn device_keys_mut(&mut self, device: u32) -> &mut DeviceKeys {
        let i = device as usize;
        if self.device_keys.len() <= i {
            self.device_keys.resize(
                i + 1,
                DeviceKeys {
                    keys: Vec::new(),
                    deadline: i64::MAX,
                },
            );
        }
        &mut self.device_keys[i]
    }

    fn remove_key(&mut self, id: u32) {
        if let Some(k) = self.state.keys[id as usize].take() {
            if let Ok(entry) = self
                .key_index
                .find_entry(self.hasher.hash_one(&k.key), |&x| x == id)
            {
                entry.remove();
            }
            if let Some(d) = k.device {
                let dk = self.device_keys_mut(d);
                if let Some(i) = dk.keys.iter().position(|&x| x == id) {
                    dk.keys.swap_remove(i);
                }
                if dk.keys.is_empty() {
                    dk.deadline = i64::MAX;
                }
            }
            if let Some(d) = k.device.and_then(|d| self.state.clocks.get_mut(d)) {
                d.refs = d.refs.saturating_sub(1);
            }
            self.state.free.push(id);
            self.live_keys -= 1;
        }
    }

    fn lateness_ms(&self) -> i64 {
        match self.late.policy {
            LatePolicy::AllowedLateness | LatePolicy::Recompute => self.late.allowed_lateness_ms,
            LatePolicy::Drop | LatePolicy::SideOutput => 0,
        }
    }

    fn ingest(&mut self, r: &Reading, arrival_ms: i64, out: &mut Vec<RecordBody>) {
        let Some(id) = self.slot(r, out) else {
            return;
        };
        self.state.tick += 1;
        let tick = self.state.tick;
        let per_device = self.key.per_device();
        let device = match self.state.keys[id as usize].as_ref().and_then(|k| k.device) {
            Some(d) => d,
            None => self.device_id(&r.series.device),
        };
        self.state.clocks.observe(device, r.ts_ms, arrival_ms);
        let wm = if per_device {
            self.state.clocks.device_ms(device)
        } else {
            self.state.clocks.global_ms()
        };
        let lateness = self.lateness_ms();
        let keeps_late = lateness > 0;
        let Some(k) = self.state.keys[id as usize].as_mut() else {
            return;
        };
        k.touched = tick;
        let aggs = &self.aggs;
        let mut missed = false;
        let mut revised: Vec<WindowResult> = Vec::new();
        let immediate = self.late.policy == LatePolicy::AllowedLateness;
        let accepts = |end: i64| !(end <= wm && !(keeps_late && end.saturating_add(lateness) > wm));
        let panes = aggs.has_sketch();
        let merged = &mut self.merged;
        // Time windows: the reading's pane sketch first (re-emits below read it). The
        // window containing it with the latest end decides whether any takes it.
        // The latest window start: one division per reading, the panes and the other
        // windows derive from it (a pane is the slide when the slide divides the size).
        let latest = match self.window {
            WindowSpec::Tumbling { size_ms } => {
                Some((tumbling::assign(r.ts_ms, size_ms).0, size_ms))
            }
            WindowSpec::Sliding { size_ms, slide_ms } => {
                Some((tumbling::assign(r.ts_ms, slide_ms).0, size_ms))
            }
            WindowSpec::Session { .. } | WindowSpec::Count { .. } => None,
        };
        if let Some((latest_start, size_ms)) = latest {
            if panes && accepts(latest_start.saturating_add(size_ms)) {
                let start = match self.window {
                    WindowSpec::Sliding { slide_ms, .. } if self.pane_ms != slide_ms => {
                        tumbling::assign(r.ts_ms, self.pane_ms).0
                    }
                    _ => latest_start,
                };
                let i = match k.panes.binary_search_by_key(&start, |p| p.start) {
                    Ok(i) => i,
                    Err(i) => {
                        // Sized like its neighbour: one allocation per pane
                        // instead of one per bucket range it grows into.
                        let sketch = k
                            .panes
                            .get(i.wrapping_sub(1))
                            .or(k.panes.get(i))
                            .map_or_else(Sketch::new, |p| p.sketch.empty_like());
                        k.panes.insert(i, Pane { start, sketch });
                        i
                    }
                };
                k.panes[i].sketch.add(r.value);
            }
        }
        let mut time_window = |k: &mut KeyState, start: i64, end: i64| {
            let pos = k.windows.binary_search_by_key(&start, |w| w.start);
            if !accepts(end) {
                missed = true;
                return;
            }
            match pos {
                Ok(i) => {
                    let w = &mut k.windows[i];
                    aggs.add(&mut w.acc, r.ts_ms, r.value);
                    if let Some(rev) = w.emitted {
                        if immediate {
                            w.emitted = Some(rev + 1);
                            let sk = pane_sketch(&k.panes, w.start, w.end, merged);
                            revised.push(aggs.finish(
                                &w.acc,
                                sk,
                                &self.name,
                                &k.key,
                                w.start,
                                w.end,
                                rev + 1,
                            ));
                        } else {
                            w.dirty = true;
                        }
                    }
                }
                Err(i) => {
                    let mut acc = aggs.new_acc_without_sketch();
                    aggs.add(&mut acc, r.ts_ms, r.value);
                    k.windows.insert(
                        i,
                        Win {
                            start,
                            end,
                            acc,
                            emitted: None,
                            dirty: false,
                        },
                    );
                    k.deadline = k.deadline.min(end);
                }
            }
        };
        match self.window {
            WindowSpec::Tumbling { size_ms } => {
                let s = latest.map_or(0, |l| l.0);
                time_window(k, s, s.saturating_add(size_ms));
            }
            WindowSpec::Sliding { size_ms, slide_ms } => {
                let s = latest.map_or(0, |l| l.0);
                sliding::assign_from(s, r.ts_ms, size_ms, slide_ms, |s, e| time_window(k, s, e));
            }
            WindowSpec::Session { gap_ms } => {
                let (s, e) = session::span(r.ts_ms, gap_ms);
                let open = |w: &Win| w.emitted.is_none() && session::overlaps(w.start, w.end, s, e);
                if !k.windows.iter().any(open) && e <= wm {
                    // Late for a session: update a kept session that contains it.
                    let kept = k.windows.iter_mut().find(|w| {
                        w.emitted.is_some()
                            && w.start <= s
                            && s < w.end
                            && w.end.saturating_add(lateness) > wm
                    });
                    match kept {
                        Some(w) if keeps_late => {
                            aggs.add(&mut w.acc, r.ts_ms, r.value);
                            w.end = w.end.max(e);
                            let rev = w.emitted.unwrap_or(0);
                            if immediate {
                                w.emitted = Some(rev + 1);
                                revised.push(aggs.finish(
                                    &w.acc,
                                    None,
                                    &self.name,
                                    &k.key,
                                    w.start,
                                    w.end,
                                    rev + 1,
                                ));
                            } else {
                                w.dirty = true;
                            }
                        }
                        _ if keeps_late && e.saturating_add(lateness) > wm => {
                            let mut acc = aggs.new_acc();
                            aggs.add(&mut acc, r.ts_ms, r.value);
                            let i = k.windows.partition_point(|w| w.start <= s);
                            k.windows.insert(
                                i,
                                Win {
                                    start: s,
                                    end: e,
                                    acc,
                                    emitted: None,
                                    dirty: false,
                                },
                            );
                            k.deadline = k.deadline.min(e);
                        }
                        _ => missed = true,
                    }
                } else {
                    let mut acc = aggs.new_acc();
                    aggs.add(&mut acc, r.ts_ms, r.value);
                    let (mut start, mut end) = (s, e);
                    let mut i = 0;
                    while i < k.windows.len() {
                        if open(&k.windows[i]) {
                            let w = k.windows.remove(i);
                            aggs.merge(&mut acc, &w.acc);
                            start = start.min(w.start);
                            end = end.max(w.end);
                        } else {
                            i += 1;
                        }
                    }
                    let i = k.windows.partition_point(|w| w.start <= start);
                    k.windows.insert(
                        i,
                        Win {
                            start,
                            end,
                            acc,
                            emitted: None,
                            dirty: false,
                        },
                    );
                    k.deadline = k.next_deadline(lateness);
                }
            }
            WindowSpec::Count { count } => {
                if k.windows.is_empty() {
                    k.windows.push(Win {
                        start: r.ts_ms,
                        end: r.ts_ms,
                        acc: aggs.new_acc(),
                        emitted: None,
                        dirty: false,
                    });
                }
                let w = &mut k.windows[0];
                aggs.add(&mut w.acc, r.ts_ms, r.value);
                w.start = w.start.min(r.ts_ms);
                w.end = w.end.max(r.ts_ms.saturating_add(1));
                if count::full(w.acc.count, count) {
                    revised.push(aggs.finish(&w.acc, None, &self.name, &k.key, w.start, w.end, 0));
                    k.windows.clear();
                }
            }
        }
        self.min_deadline = self.min_deadline.min(k.deadline);
        if let (true, Some(dk)) = (per_device, self.device_keys.get_mut(device as usize)) {
            dk.deadline = dk.deadline.min(k.deadline);
        }
        // A key that holds nothing (its only reading was late) goes now, not at the
        // next close pass, so passes skipped or not leave the same state.
        let empty = k.windows.is_empty() && !matches!(self.window, WindowSpec::Count { .. });
        if empty {
            self.remove_key(id);
        }
        if missed {
            let side = self.late.policy == LatePolicy::SideOutput
                || (keeps_late && self.late.side_output_beyond);
            if side {
                self.stats.late_side_output += 1;
                out.push(RecordBody::Late(LateReading {
                    pipeline: self.name.clone(),
                    series: r.series.clone(),
                    ts_ms: r.ts_ms,
                    value: r.value,
                    watermark_ms: wm,
                    received_ms: arrival_ms,
                }));
            } else {
                self.stats.late_dropped += 1;
            }
        }
        if !revised.is_empty() {
            if !matches!(self.window, WindowSpec::Count { .. }) {
                self.stats.late_revised += revised.len() as u64;
            }
            self.stats.windows_emitted += revised.len() as u64;
            out.extend(revised.into_iter().map(RecordBody::Window));
        }
    }

    /// Emits watermarks (at most once per `emit_interval`) from what was seen and the
    /// wall clock, then closes and retires due windows. Results of one call are
    /// ordered by window end, then start, then key.
    pub fn advance(&mut self, wall_ms: i64, out: &mut Vec<RecordBody>) {
        if self.state.clocks.emit(&self.watermark, wall_ms) {
            self.close_due(out);
            // A device's clock outlives its keys, so a straggler for a window that
            // already closed is judged late instead of opening it again. Only past the
            // series cap are idle devices without keys forgotten.
            if self.state.clocks.devices() > self.max_series {
                let index = &mut self.device_index;
                self.state.clocks.prune(|_, name| {
                    index.remove(name);
                });
            }
        }
    }

    /// End of input: every open window closes and every kept one retires.
    pub fn flush(&mut self, out: &mut Vec<RecordBody>) {
        self.state.clocks.finish();
        self.close_due(out);
    }

    fn close_due(&mut self, out: &mut Vec<RecordBody>) {
        if matches!(self.window, WindowSpec::Count { .. }) {
            return;
        }
        let lateness = self.lateness_ms();
        let per_device = self.key.per_device();
        let global = self.state.clocks.global_ms();
        let highest = if per_device {
            self.state.clocks.max_device_ms()
        } else {
            global
        };
        if self.min_deadline > highest {
            // Nothing can be due: skip the pass.
            return;
        }
        let mut closer = Closer {
            aggs: &self.aggs,
            name: &self.name,
            lateness,
            merged: &mut self.merged,
            results: std::mem::take(&mut self.closed),
        };
        let mut min_deadline = i64::MAX;
        let mut emptied = Vec::new();
        if per_device {
            for (d, dk) in self.device_keys.iter_mut().enumerate() {
                let wm = self.state.clocks.device_ms(d as u32);
                if dk.deadline > wm {
                    min_deadline = min_deadline.min(dk.deadline);
                    continue;
                }
                let mut next = i64::MAX;
                for &id in &dk.keys {
                    let Some(k) = &mut self.state.keys[id as usize] else {
                        continue;
                    };
                    if k.deadline <= wm {
                        closer.close(k, wm);
                        if k.windows.is_empty() {
                            emptied.push(id);
                        }
                    }
                    next = next.min(k.deadline);
                }
                dk.deadline = next;
                min_deadline = min_deadline.min(next);
            }
        } else {
            for (id, slot) in self.state.keys.iter_mut().enumerate() {
                let Some(k) = slot else { continue };
                if k.deadline <= global {
                    closer.close(k, global);
                    if k.windows.is_empty() {
                        emptied.push(id as u32);
                    }
                }
                min_deadline = min_deadline.min(k.deadline);
            }
        }
        let mut results = closer.results;
        self.min_deadline = min_deadline;
        for id in emptied {
            self.remove_key(id);
        }

        // Unique per result (a window is emitted once per revision): unstable is stable.
        results.sort_unstable_by(|a, b| {
            (a.end_ms, a.start_ms, &a.series, a.revision)
                .cmp(&(b.end_ms, b.start_ms, &b.series, b.revision))
        });
        self.stats.windows_emitted += results.len() as u64;
        out.extend(results.drain(..).map(RecordBody::Window));
        // A flush closes everything at once: that list is not worth keeping.
        if results.capacity() <= MAX_KEPT_RESULTS {
            self.closed = results;
        }
    }

    /// The job's state for a checkpoint (configuration is not included).
    pub fn snapshot_state(&self) -> &JobState {
        &self.state
    }

    /// Replaces the job's state with a checkpointed one.
    pub fn restore_state(&mut self, state: JobState) {
        self.key_index.clear();
        let hasher = &self.hasher;
        let hash = |k: &Option<KeyState>| k.as_ref().map_or(0, |k| hasher.hash_one(&k.key));
        for (id, k) in state.keys.iter().enumerate() {
            if k.is_some() {
                self.key_index
                    .insert_unique(hash(k), id as u32, |&i| hash(&state.keys[i as usize]));
            }
        }
        self.device_index = state
            .clocks
            .names()
            .map(|(i, n)| (n.to_string(), i))
            .collect();
        self.live_keys = self.key_index.len();
        self.min_deadline = i64::MIN;
        self.device_keys.clear();
        for (id, k) in state.keys.iter().enumerate() {
            if let Some(KeyState {
                device: Some(d),
                deadline,
                ..
            }) = k
            {
                let dk = self.device_keys_mut(*d);
                dk.keys.push(id as u32);
                dk.deadline = dk.deadline.min(*deadline);
            }
        }
        self.state = state;
    }

    /// Identifies what the state depends on: a checkpoint taken under another window,
    /// key or aggregate set is not restored into this job.
    pub fn fingerprint(&self) -> String {
        let key = match &self.key {
            KeySelector::By(k) => format!("{k:?}"),
            KeySelector::Custom(_) => "custom".into(),
        };
        format!("{:?}|{key}|{:?}", self.window, self.aggs)
    }
}

/// Closes and retires the due windows of keys during one close pass.
struct Closer<'a> {
    aggs: &'a AggSpec,
    name: &'a str,
    lateness: i64,
    merged: &'a mut Sketch,
    results: Vec<WindowResult>,
}

impl Closer<'_> {
    /// Emits the windows of `k` that end by `wm`, retires those past their allowed
    /// lateness (re-emitting a dirty one), drops panes no window needs, and
    /// recomputes the key's deadline.
    fn close(&mut self, k: &mut KeyState, wm: i64) {
        let (panes, key) = (&k.panes, &k.key);
        let lateness = self.lateness;
        k.windows.retain_mut(|w| {
            if w.emitted.is_none() && w.end <= wm {
                let sk = pane_sketch(panes, w.start, w.end, self.merged);
                self.results.push(
                    self.aggs
                        .finish(&w.acc, sk, self.name, key, w.start, w.end, 0),
                );
                w.emitted = Some(0);
                w.dirty = false;
            }
            if w.end.saturating_add(lateness) <= wm {
                if w.dirty {
                    let rev = w.emitted.map_or(0, |r| r + 1);
                    let sk = pane_sketch(panes, w.start, w.end, self.merged);
                    self.results.push(
                        self.aggs
                            .finish(&w.acc, sk, self.name, key, w.start, w.end, rev),
                    );
                }
                return false;
            }
            true
        });
        // Panes before the first remaining window serve no window any more.
        let first = k.windows.first().map_or(i64::MAX, |w| w.start);
        let dead = k.panes.partition_point(|p| p.start < first);
        k.panes.drain(..dead);
        k.deadline = k.next_deadline(lateness);
    }
}

/// Bytes of a hash map's table: hashbrown keeps `buckets ≥ capacity · 8/7` (a power of
/// two) entries plus one control byte per bucket and a group of 16.
fn table_bytes<T>(capacity: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    let buckets = (capacity * 8 / 7).next_power_of_two();
    buckets * (std::mem::size_of::<T>() + 1) + 16
}

/// Heap bytes of a name: none when it is stored inline (up to 24 bytes).
fn heap_bytes(name: &fieldline_common::wire::Name) -> usize {
    if name.is_heap_allocated() {
        name.capacity()
    } else {
        0
    }
}

fn deadline(w: &Win, lateness: i64) -> i64 {
    match w.emitted {
        None => w.end,
        Some(_) => w.end.saturating_add(lateness),
    }
}

/// `*` matches any run of characters, `?` any one; everything else literally.
pub(crate) fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}
