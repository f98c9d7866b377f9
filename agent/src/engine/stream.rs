//! The fluent API: `DataStream` → `KeyedStream` → `WindowedStream` → [`Job`].
//!
//! ```
//! use fieldline_agent::engine::{Aggregate, DataStream, KeyBy, WindowSpec};
//! use fieldline_common::payload::Reading;
//! use fieldline_common::wire::{RecordBody, SeriesKey};
//!
//! // °F → °C, drop implausible values, one-minute tumbling mean and p99 per series.
//! let mut job = DataStream::new()
//!     .map(|mut r: Reading| { r.value = (r.value - 32.0) / 1.8; r })
//!     .filter(|r| (-50.0..150.0).contains(&r.value))
//!     .key_by(KeyBy::Series)
//!     .window(WindowSpec::Tumbling { size_ms: 60_000 })
//!     .aggregate(&[Aggregate::Mean, Aggregate::Quantile(0.99)])
//!     .named("celsius");
//!
//! let mut out = Vec::new();
//! for (ts, f) in [(1_000, 68.0), (2_000, 86.0), (61_000, 50.0)] {
//!     let r = Reading { series: SeriesKey::new("dev1", "temp"), ts_ms: ts, value: f };
//!     job.process(&r, ts, &mut out);
//!     job.advance(ts, &mut out);
//! }
//! job.flush(&mut out);
//! let RecordBody::Window(first) = &out[0] else { panic!() };
//! assert_eq!((first.start_ms, first.count, first.mean), (0, 2, 25.0));
//! assert_eq!(first.pipeline, "celsius");
//! ```
//!
//! `flat_map` and `reduce`:
//!
//! ```
//! use fieldline_agent::engine::{DataStream, KeyBy, WindowSpec};
//! use fieldline_common::payload::Reading;
//! use fieldline_common::wire::{RecordBody, SeriesKey};
//!
//! // Split each power reading into two phases, sum them per device every 3 readings.
//! let mut job = DataStream::new()
//!     .flat_map(|r: Reading| {
//!         let half = r.value / 2.0;
//!         ["l1", "l2"].map(|m| Reading { series: SeriesKey::new(r.series.device.clone(), m), value: half, ..r.clone() }).to_vec()
//!     })
//!     .key_by(KeyBy::Device)
//!     .window(WindowSpec::Count { count: 3 })
//!     .reduce(|a, b| a.max(b));
//! let mut out = Vec::new();
//! for (ts, w) in [(1, 10.0), (2, 30.0)] {
//!     let r = Reading { series: SeriesKey::new("meter", "p"), ts_ms: ts, value: w };
//!     job.process(&r, ts, &mut out);
//! }
//! let RecordBody::Window(w) = &out[0] else { panic!() };
//! assert_eq!((w.count, w.sum, w.aggregates["reduce"]), (3, 25.0, 15.0));
//! ```

use std::sync::Arc;

use fieldline_common::config::pipeline::{
    Aggregate, KeyBy, LateConfig, SeriesOverflow, WatermarkConfig, WindowSpec,
};
use fieldline_common::payload::Reading;
use fieldline_common::wire::SeriesKey;

use super::aggregate::AggSpec;
use super::job::{Job, KeySelector, Step};

/// Readings before keying: `filter`, `map`, `flat_map`.
#[derive(Clone, Default)]
pub struct DataStream {
    steps: Vec<Step>,
}

impl DataStream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps readings for which `f` is true.
    pub fn filter(mut self, f: impl Fn(&Reading) -> bool + Send + Sync + 'static) -> Self {
        self.steps.push(Step::Filter(Arc::new(f)));
        self
    }

    /// Replaces each reading (value, series or time).
    pub fn map(mut self, f: impl Fn(Reading) -> Reading + Send + Sync + 'static) -> Self {
        self.steps.push(Step::Map(Arc::new(f)));
        self
    }

    /// Replaces each reading with zero or more readings.
    pub fn flat_map(mut self, f: impl Fn(Reading) -> Vec<Reading> + Send + Sync + 'static) -> Self {
        self.steps.push(Step::FlatMap(Arc::new(f)));
        self
    }

    pub fn key_by(self, key: KeyBy) -> KeyedStream {
        KeyedStream {
            steps: self.steps,
            key: KeySelector::By(key),
        }
    }

    /// Keys by a computed series key. Such keys may span devices, so their windows
    /// close on the pipeline-wide watermark.
    pub fn key_by_fn(
        self,
        f: impl Fn(&Reading) -> SeriesKey + Send + Sync + 'static,
    ) -> KeyedStream {
        KeyedStream {
            steps: self.steps,
            key: KeySelector::Custom(Arc::new(f)),
        }
    }
}

/// Keyed readings, ready for a window.
#[derive(Clone)]
pub struct KeyedStream {
    steps: Vec<Step>,
    key: KeySelector,
}

impl KeyedStream {
    pub fn window(self, window: WindowSpec) -> WindowedStream {
        WindowedStream {
            steps: self.steps,
            key: self.key,
            window,
            watermark: super::job::DEFAULT_WATERMARK,
            late: None,
            cap: None,
            unit: String::new(),
        }
    }
}

/// Keyed, windowed readings: set time and late handling, then `aggregate` or `reduce`.
#[derive(Clone)]
pub struct WindowedStream {
    steps: Vec<Step>,
    key: KeySelector,
    window: WindowSpec,
    watermark: WatermarkConfig,
    late: Option<LateConfig>,
    cap: Option<(usize, SeriesOverflow)>,
    unit: String,
}

impl WindowedStream {
    /// The unit of the values after the stream's maps, copied into every result.
    pub fn unit(mut self, unit: &str) -> Self {
        self.unit = unit.to_string();
        self
    }

    pub fn watermark(mut self, w: WatermarkConfig) -> Self {
        self.watermark = w;
        self
    }

    pub fn late(mut self, late: LateConfig) -> Self {
        self.late = Some(late);
        self
    }

    /// At most `n` keys with state; `overflow` says what happens to the next one.
    pub fn max_series(mut self, n: usize, overflow: SeriesOverflow) -> Self {
        self.cap = Some((n.max(1), overflow));
        self
    }

    /// Reports the fixed fields (count, sum, mean, min, max) and `aggs`.
    pub fn aggregate(self, aggs: &[Aggregate]) -> Job {
        let spec = AggSpec::new(aggs);
        self.build(spec)
    }

    /// Folds values with `f`, reported as aggregate `reduce` next to the fixed fields.
    /// `f` must be associative (and should be commutative): partial folds, per pane
    /// of a time window or per merged session, are combined with `f` too.
    pub fn reduce(self, f: impl Fn(f64, f64) -> f64 + Send + Sync + 'static) -> Job {
        let spec = AggSpec::new(&[]).with_reduce(Arc::new(f));
        self.build(spec)
    }

    fn build(self, aggs: AggSpec) -> Job {
        let aggs = aggs.with_unit(&self.unit);
        let mut job = Job::new(self.steps, self.key, self.window, aggs);
        job.watermark = self.watermark;
        if let Some(late) = self.late {
            job.late = late;
        }
        if let Some((n, overflow)) = self.cap {
            job.max_series = n;
            job.overflow = overflow;
        }
        job
    }
}
