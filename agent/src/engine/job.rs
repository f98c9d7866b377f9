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
#[cfg(test)]
pub(crate) type PaneForSize = Pane;
#[cfg(test)]
pub(crate) type KeyStateForSize = KeyState;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Win {
    start: i64,
    end: i64,
    /// Session and count windows: the window's accumulator (always present).
    ///
    /// Time windows: readings go to their pane ([`Pane::acc`]), and a window's
    /// aggregates merge the panes it covers, so a reading costs one accumulator
    /// update however many sliding windows overlap. Here a time window holds only
    /// what its panes must not supply: its complete aggregates once it is `frozen`,
    /// or, restored from a checkpoint written before panes had accumulators, what it
    /// had gathered by then (its panes hold the rest). A checkpoint's `Acc` here reads
    /// back as `Some`, so those checkpoints restore unchanged.
    acc: Option<Box<Acc>>,
    /// Last revision emitted; `None` while open.
    emitted: Option<u32>,
    /// Changed since the last emission (recompute policy).
    dirty: bool,
    /// Time windows: a reading in one of its panes was too late for this window
    /// (though not for a newer one that shares the pane), so before that reading
    /// entered the pane the window took its aggregates from its panes into `acc`
    /// and reads only that from then on; a reading it takes later (its allowed
    /// lateness grew across a restore) goes into `acc` too. Windows of a job with
    /// `per_window` accumulators are frozen from the start.
    #[serde(default)]
    frozen: bool,
}

impl Win {
    fn new(start: i64, end: i64, acc: Option<Box<Acc>>) -> Self {
        Win {
            start,
            end,
            acc,
            emitted: None,
            dirty: false,
            frozen: false,
        }
    }

    /// The accumulator of a session or count window.
    fn own_acc(&mut self, aggs: &AggSpec) -> &mut Acc {
        self.acc.get_or_insert_with(|| Box::new(aggs.new_acc()))
    }
}

// Aligned to cache lines: a reading touches a key's state and its newest pane, and
// an unaligned 120- or 192-byte slot straddles one line more than it needs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[repr(align(64))]
pub(crate) struct KeyState {
    key: SeriesKey,
    /// Device clock this key closes on (per-device keys only).
    device: Option<u32>,
    /// Sorted by start; open windows and closed ones kept for late data.
    windows: Vec<Win>,
    /// Time windows: one accumulator (and, with quantiles, one sketch) per pane
    /// (`gcd(size, slide)`), sorted by start; a window's aggregates merge the panes
    /// it covers, so a reading updates one pane however many windows overlap.
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

/// One `gcd(size, slide)` slice of a key's time windows: every reading in it, in one
/// accumulator and (with quantiles) one sketch. A window covers whole panes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[repr(align(64))]
pub(crate) struct Pane {
    start: i64,
    /// Empty unless the pipeline asks for quantiles.
    sketch: Sketch,
    /// Checkpoints written before panes had accumulators read back an empty one:
    /// their windows carry what came before in [`Win::acc`].
    #[serde(default = "Acc::empty")]
    acc: Acc,
}

/// Scratch space for the aggregates of a time window made of several panes, reused
/// so that emitting a sliding window allocates nothing.
#[derive(Debug, Default)]
struct Merged {
    acc: Acc,
    sketch: Sketch,
}

/// The aggregates and quantile sketch of the window `w`: a session or count
/// window's own accumulator; a time window's frozen accumulator, its one pane (a
/// tumbling window: nothing is copied), or its panes (and any pre-pane part) merged
/// into `scratch`.
fn window_acc<'a>(
    aggs: &AggSpec,
    w: &'a Win,
    panes: &'a [Pane],
    scratch: &'a mut Merged,
) -> (&'a Acc, Option<&'a Sketch>) {
    if w.frozen {
        if let Some(acc) = w.acc.as_deref() {
            // The sketch it took from its panes, if any, is in the accumulator.
            return (acc, None);
        }
    }
    let from = panes.partition_point(|p| p.start < w.start);
    let to = panes.partition_point(|p| p.start < w.end);
    let sketch = aggs.has_sketch();
    match (&panes[from..to], w.acc.as_deref()) {
        ([], Some(own)) => (own, None),
        ([one], None) => (&one.acc, sketch.then_some(&one.sketch)),
        (many, own) => {
            scratch.acc = aggs.new_acc_without_sketch();
            if let Some(own) = own {
                aggs.merge(&mut scratch.acc, own);
            }
            for p in many {
                aggs.merge(&mut scratch.acc, &p.acc);
            }
            if sketch {
                scratch.sketch.assign_merged(many.iter().map(|p| &p.sketch));
            }
            (&scratch.acc, sketch.then_some(&scratch.sketch))
        }
    }
}

/// Freezes the time window `w` (see [`Win::frozen`]): its aggregates, quantile
/// sketch included, move from its panes into its own accumulator.
fn freeze(aggs: &AggSpec, w: &mut Win, panes: &[Pane], scratch: &mut Merged) {
    let (acc, sketch) = window_acc(aggs, w, panes, scratch);
    let mut own = acc.clone();
    own.set_sketch(sketch.cloned());
    w.acc = Some(Box::new(own));
    w.frozen = true;
}

fn add_to_pane(aggs: &AggSpec, pane: &mut Pane, r: &Reading) {
    aggs.add(&mut pane.acc, r.ts_ms, r.value);
    if aggs.has_sketch() {
        pane.sketch.add(r.value);
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
    /// Pane length of time windows: `gcd(size, slide)`.
    pane_ms: i64,
    /// Time windows of more than [`MAX_PANES_PER_WINDOW`] panes (a slide that shares
    /// only a tiny divisor with the size, 1000 ms / 999 ms say) keep their own
    /// accumulator and sketch instead: one pane per millisecond would cost far more
    /// than the updates it saves. Such windows are created `frozen`.
    per_window: bool,
    /// Per device clock (by id): its keys and their earliest deadline (derived from
    /// the slab, rebuilt on restore). Per-device keys close on their device's
    /// watermark, so a close pass visits the devices whose watermark passed that
    /// deadline instead of every key.
    device_keys: Vec<DeviceKeys>,
    /// Device ids by name (rebuilt when `device_order_dirty`): a close pass visits the
    /// devices, and each device's keys, in key order, so its results need ordering by
    /// time only, not by key.
    device_order: Vec<u32>,
    device_order_dirty: bool,
    /// Windows of several panes merge them into this, reused between windows.
    merged: Merged,
    /// Results of a close pass, put in order before they go out; kept between passes
    /// so a pass that closes thousands of windows does not allocate (and free) its
    /// list. Each is taken out once, in `order`.
    closed: Vec<Option<WindowResult>>,
    /// `closed`'s indexes, sorted: sorting 200-byte results moved each several times.
    order: Vec<u32>,
    stats: JobStats,
    scratch: Vec<Reading>,
}

/// Most panes a time window is made of; beyond, windows keep their own accumulators.
const MAX_PANES_PER_WINDOW: i64 = 64;

/// Capacity of the close-pass result list kept between passes (~600 KB at most).
const MAX_KEPT_RESULTS: usize = 4096;

#[derive(Debug, Clone, Default)]
struct DeviceKeys {
    /// In key order when `sorted`.
    keys: Vec<u32>,
    /// No key of the device has a window due before this (`i64::MAX`: none).
    deadline: i64,
    sorted: bool,
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
            per_window: match window {
                WindowSpec::Sliding { size_ms, slide_ms } => {
                    size_ms / gcd(size_ms, slide_ms).max(1) > MAX_PANES_PER_WINDOW
                }
                _ => false,
            },
            device_keys: Vec::new(),
            device_order: Vec::new(),
            device_order_dirty: true,
            merged: Merged::default(),
            closed: Vec::new(),
            order: Vec::new(),
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

    /// Hashes keys with `hasher`: jobs side by side sharing one let the caller hash a
    /// reading's series once for all of them ([`Job::process_hashed`]).
    pub(crate) fn with_hasher(mut self, hasher: ahash::RandomState) -> Self {
        debug_assert!(self.key_index.is_empty(), "before any key is indexed");
        self.hasher = hasher;
        self
    }

    /// Whether this job keys readings by their own series, unchanged (filters only):
    /// then the key's hash is the hash of `reading.series`.
    pub(crate) fn keys_by_series(&self) -> bool {
        matches!(self.key, KeySelector::By(KeyBy::Series))
            && self.steps.iter().all(|s| matches!(s, Step::Filter(_)))
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

    /// The watermark a reading from `device` is judged by now.
    #[cfg(test)]
    pub(crate) fn watermark_of(&self, device: &str) -> i64 {
        if !self.key.per_device() {
            return self.state.clocks.global_ms();
        }
        self.device_index
            .get(device)
            .map_or(i64::MIN, |&d| self.state.clocks.device_ms(d))
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
                        .filter_map(|w| w.acc.as_deref().map(Acc::bytes))
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
            + self.merged.sketch.bytes()
            + self
                .device_keys
                .iter()
                .map(|d| d.keys.capacity() * 4)
                .sum::<usize>()
            + self.device_keys.capacity() * std::mem::size_of::<DeviceKeys>()
            + self.closed.capacity() * std::mem::size_of::<Option<WindowResult>>()
            + self.order.capacity() * std::mem::size_of::<u32>()
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
        self.process_hashed(reading, arrival_ms, None, out)
    }

    /// [`Job::process`] with `series_hash`, when given, the job's hasher's hash of
    /// `reading.series` (only used when [`Job::keys_by_series`]).
    pub(crate) fn process_hashed(
        &mut self,
        reading: &Reading,
        arrival_ms: i64,
        series_hash: Option<u64>,
        out: &mut Vec<RecordBody>,
    ) {
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
            return self.ingest(reading, arrival_ms, series_hash, out);
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
                self.ingest(r, arrival_ms, None, out);
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
    fn slot(
        &mut self,
        r: &Reading,
        series_hash: Option<u64>,
        out: &mut Vec<RecordBody>,
    ) -> Option<u32> {
        let owned = self.key_of(r);
        let key = owned.as_ref().unwrap_or(&r.series);
        let hash = match (&owned, series_hash) {
            (None, Some(h)) => h,
            _ => self.hasher.hash_one(key),
        };
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
            let dk = self.device_keys_mut(d);
            dk.keys.push(id);
            dk.sorted = dk.keys.len() == 1;
            // A device's first key: a new device, or an id reused under another name.
            self.device_order_dirty |= dk.keys.len() == 1;
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
                        let (acc, sk) = window_acc(&self.aggs, &w, &k.panes, &mut self.merged);
                        results.push(
                            self.aggs
                                .finish(acc, sk, &self.name, &k.key, w.start, w.end, rev),
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
                    sorted: true,
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
                    dk.keys.remove(i);
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

    fn ingest(
        &mut self,
        r: &Reading,
        arrival_ms: i64,
        series_hash: Option<u64>,
        out: &mut Vec<RecordBody>,
    ) {
        let Some(id) = self.slot(r, series_hash, out) else {
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
        let merged = &mut self.merged;
        let per_window = self.per_window;
        match self.window {
            WindowSpec::Tumbling { size_ms } | WindowSpec::Sliding { size_ms, .. } => {
                let slide_ms = match self.window {
                    WindowSpec::Sliding { slide_ms, .. } => slide_ms,
                    _ => size_ms,
                };
                // One division per reading: the latest window start; the other windows
                // and the pane derive from it (the pane is the slide when the slide
                // divides the size, as it nearly always does).
                let latest_start = tumbling::assign(r.ts_ms, slide_ms).0;
                let pane_start = if self.pane_ms == slide_ms {
                    latest_start
                } else {
                    tumbling::assign(r.ts_ms, self.pane_ms).0
                };
                let mut earliest_start = latest_start;
                sliding::assign_from(latest_start, r.ts_ms, size_ms, slide_ms, |s, _| {
                    earliest_start = s
                });
                let pane = match k.panes.last() {
                    Some(p) if p.start == pane_start => Ok(k.panes.len() - 1),
                    _ => k.panes.binary_search_by_key(&pane_start, |p| p.start),
                };
                match pane {
                    // Every window containing the reading is open and exists: they
                    // were created with the pane's first reading, and the watermark is
                    // below the earliest end among them, so none has closed. The
                    // reading touches its pane only.
                    Ok(i) if !per_window && earliest_start.saturating_add(size_ms) > wm => {
                        add_to_pane(aggs, &mut k.panes[i], r);
                        // Nothing below applies: no window changed, so the key's
                        // deadline (which the job's and device's minima already
                        // cover) did not move, it has windows, and nothing was late.
                        return;
                    }
                    _ if !accepts(latest_start.saturating_add(size_ms)) => {
                        // Too late for the newest window containing it: for all.
                        missed = true;
                    }
                    _ => {
                        // First, windows this reading is too late for freeze their
                        // aggregates, so that it does not reach them through the pane.
                        // The close pass after each watermark update retires such
                        // windows, except after a restore into a job with less allowed
                        // lateness (the late policy is not part of the fingerprint),
                        // where they wait for the next pass.
                        sliding::assign_from(latest_start, r.ts_ms, size_ms, slide_ms, |s, e| {
                            if accepts(e) {
                                return;
                            }
                            missed = true;
                            if let Ok(i) = k.windows.binary_search_by_key(&s, |w| w.start) {
                                if !k.windows[i].frozen {
                                    freeze(aggs, &mut k.windows[i], &k.panes, merged);
                                }
                            }
                        });
                        let i = (!per_window).then(|| {
                            pane.unwrap_or_else(|i| {
                                // Sized like its neighbour: one allocation per pane instead
                                // of one per bucket range it grows into.
                                let sketch = match k.panes.get(i.wrapping_sub(1)).or(k.panes.get(i))
                                {
                                    Some(p) if aggs.has_sketch() => p.sketch.empty_like(),
                                    _ => Sketch::new(),
                                };
                                k.panes.insert(
                                    i,
                                    Pane {
                                        start: pane_start,
                                        sketch,
                                        acc: Acc::empty(),
                                    },
                                );
                                i
                            })
                        });
                        if let Some(i) = i {
                            add_to_pane(aggs, &mut k.panes[i], r);
                        }
                        // Then the windows that take it: new ones open, emitted ones
                        // within their allowed lateness are revised.
                        sliding::assign_from(latest_start, r.ts_ms, size_ms, slide_ms, |s, e| {
                            if !accepts(e) {
                                return;
                            }
                            match k.windows.binary_search_by_key(&s, |w| w.start) {
                                Ok(i) => {
                                    let w = &mut k.windows[i];
                                    // A frozen window reads only its own accumulator.
                                    if w.frozen {
                                        aggs.add(w.own_acc(aggs), r.ts_ms, r.value);
                                    }
                                    let Some(rev) = w.emitted else { return };
                                    if immediate {
                                        w.emitted = Some(rev + 1);
                                        let (acc, sk) = window_acc(aggs, w, &k.panes, merged);
                                        revised.push(aggs.finish(
                                            acc,
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
                                Err(i) => {
                                    let w = if per_window {
                                        let mut acc = aggs.new_acc();
                                        aggs.add(&mut acc, r.ts_ms, r.value);
                                        Win {
                                            frozen: true,
                                            ..Win::new(s, e, Some(Box::new(acc)))
                                        }
                                    } else {
                                        Win::new(s, e, None)
                                    };
                                    k.windows.insert(i, w);
                                    k.deadline = k.deadline.min(e);
                                }
                            }
                        });
                    }
                }
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
                            aggs.add(w.own_acc(aggs), r.ts_ms, r.value);
                            w.end = w.end.max(e);
                            let rev = w.emitted.unwrap_or(0);
                            if immediate {
                                w.emitted = Some(rev + 1);
                                let (start, end) = (w.start, w.end);
                                let acc = &*w.own_acc(aggs);
                                revised.push(aggs.finish(
                                    acc,
                                    None,
                                    &self.name,
                                    &k.key,
                                    start,
                                    end,
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
                            k.windows.insert(i, Win::new(s, e, Some(Box::new(acc))));
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
                            if let Some(a) = &w.acc {
                                aggs.merge(&mut acc, a);
                            }
                            start = start.min(w.start);
                            end = end.max(w.end);
                        } else {
                            i += 1;
                        }
                    }
                    let i = k.windows.partition_point(|w| w.start <= start);
                    k.windows
                        .insert(i, Win::new(start, end, Some(Box::new(acc))));
                    k.deadline = k.next_deadline(lateness);
                }
            }
            WindowSpec::Count { count } => {
                if k.windows.is_empty() {
                    let acc = Some(Box::new(aggs.new_acc()));
                    k.windows.push(Win::new(r.ts_ms, r.ts_ms, acc));
                }
                let w = &mut k.windows[0];
                aggs.add(w.own_acc(aggs), r.ts_ms, r.value);
                w.start = w.start.min(r.ts_ms);
                w.end = w.end.max(r.ts_ms.saturating_add(1));
                let (start, end) = (w.start, w.end);
                let acc = &*w.own_acc(aggs);
                if count::full(acc.count, count) {
                    revised.push(aggs.finish(acc, None, &self.name, &k.key, start, end, 0));
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
            if self.device_order_dirty {
                let clocks = &self.state.clocks;
                self.device_order.clear();
                self.device_order.extend(0..self.device_keys.len() as u32);
                self.device_order
                    .sort_by(|a, b| clocks.name(*a).cmp(&clocks.name(*b)));
                self.device_order_dirty = false;
            }
            for &d in &self.device_order {
                let dk = &mut self.device_keys[d as usize];
                let wm = self.state.clocks.device_ms(d);
                if dk.deadline > wm {
                    min_deadline = min_deadline.min(dk.deadline);
                    continue;
                }
                if !dk.sorted {
                    let keys = &self.state.keys;
                    let key = |id: &u32| keys[*id as usize].as_ref().map(|k| &k.key);
                    dk.keys.sort_unstable_by(|a, b| key(a).cmp(&key(b)));
                    dk.sorted = true;
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

        let mut order = std::mem::take(&mut self.order);
        order.clear();
        order.extend(0..results.len() as u32);
        let sort_key = |i: &u32| {
            let r = results[*i as usize].as_ref().expect("taken below, once");
            (r.end_ms, r.start_ms, &r.series, r.revision)
        };
        if per_device {
            // Pushed in key order (one result per window, a key's windows by start):
            // a stable sort by time gives time, then key.
            order.sort_by_key(|i| {
                let (end, start, ..) = sort_key(i);
                (end, start)
            });
        } else {
            // Unique per result (a window is emitted once per revision): unstable is
            // stable.
            order.sort_unstable_by(|a, b| sort_key(a).cmp(&sort_key(b)));
        }
        debug_assert!(order.is_sorted_by(|a, b| sort_key(a) < sort_key(b)));
        self.stats.windows_emitted += results.len() as u64;
        out.reserve(order.len());
        for &i in &order {
            if let Some(r) = results[i as usize].take() {
                out.push(RecordBody::Window(r));
            }
        }
        results.clear();
        // A flush closes everything at once: those lists are not worth keeping.
        if results.capacity() <= MAX_KEPT_RESULTS {
            self.closed = results;
            self.order = order;
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
        self.device_order_dirty = true;
        for (id, k) in state.keys.iter().enumerate() {
            if let Some(KeyState {
                device: Some(d),
                deadline,
                ..
            }) = k
            {
                let dk = self.device_keys_mut(*d);
                dk.keys.push(id as u32);
                dk.sorted = dk.keys.len() == 1;
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
        // Windows with their own accumulators hold no panes: a checkpoint of the other
        // layout does not fit.
        let layout = if self.per_window { "|per-window" } else { "" };
        format!("{:?}|{key}|{:?}{layout}", self.window, self.aggs)
    }
}

/// Closes and retires the due windows of keys during one close pass.
struct Closer<'a> {
    aggs: &'a AggSpec,
    name: &'a str,
    lateness: i64,
    merged: &'a mut Merged,
    results: Vec<Option<WindowResult>>,
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
                let (acc, sk) = window_acc(self.aggs, w, panes, self.merged);
                let r = self.aggs.finish(acc, sk, self.name, key, w.start, w.end, 0);
                self.results.push(Some(r));
                w.emitted = Some(0);
                w.dirty = false;
            }
            if w.end.saturating_add(lateness) <= wm {
                if w.dirty {
                    let rev = w.emitted.map_or(0, |r| r + 1);
                    let (acc, sk) = window_acc(self.aggs, w, panes, self.merged);
                    let r = self
                        .aggs
                        .finish(acc, sk, self.name, key, w.start, w.end, rev);
                    self.results.push(Some(r));
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

#[cfg(test)]
mod checkpoint_compat {
    use super::*;
    use fieldline_common::config::pipeline::Aggregate;

    /// Window and pane as checkpoints wrote them before panes had accumulators.
    #[derive(Serialize)]
    struct OldWin {
        start: i64,
        end: i64,
        acc: Acc,
        emitted: Option<u32>,
        dirty: bool,
    }

    #[derive(Serialize)]
    struct OldPane {
        start: i64,
        sketch: Sketch,
    }

    /// An old checkpoint's window keeps what it had gathered in its own accumulator;
    /// readings after the upgrade go to its panes; its result is the sum of both.
    #[test]
    fn windows_from_checkpoints_before_pane_accumulators_keep_their_data() {
        let aggs = AggSpec::new(&Aggregate::all());
        let mut acc = aggs.new_acc_without_sketch();
        let mut sketch = Sketch::new();
        for (ts, v) in [(100, 1.0), (200, 2.0)] {
            aggs.add(&mut acc, ts, v);
            sketch.add(v);
        }
        let old_win = OldWin {
            start: 0,
            end: 1000,
            acc,
            emitted: None,
            dirty: false,
        };
        let old_pane = OldPane { start: 0, sketch };
        let bytes = fieldline_common::codec::to_cbor(&(old_win, vec![old_pane])).unwrap();
        let (w, mut panes): (Win, Vec<Pane>) =
            fieldline_common::codec::from_cbor(&bytes, usize::MAX).unwrap();
        assert!(!w.frozen);
        assert_eq!(w.acc.as_ref().map(|a| a.count), Some(2));
        assert_eq!(panes[0].acc.count, 0);
        let after = Reading {
            series: SeriesKey::new("d", "m"),
            ts_ms: 300,
            value: 4.0,
        };
        add_to_pane(&aggs, &mut panes[0], &after);
        let mut scratch = Merged::default();
        let (acc, sk) = window_acc(&aggs, &w, &panes, &mut scratch);
        let r = aggs.finish(acc, sk, "p", &after.series, 0, 1000, 0);
        assert_eq!((r.count, r.sum, r.min, r.max), (3, 7.0, 1.0, 4.0));
        assert_eq!(r.aggregates.get("first"), Some(1.0));
        assert_eq!(r.aggregates.get("last"), Some(4.0));
        assert!(r
            .aggregates
            .get("p99")
            .is_some_and(|q| (q - 4.0).abs() < 0.05));
    }
}
