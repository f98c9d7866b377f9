//! Window accumulators: one [`Acc`] per pane of a key's time windows, per session
//! or count window.
//!
//! Count, sum, min, max, Welford's mean and M2 (variance), first and last (by event
//! time) are always kept: they cost a few adds. The quantile sketch exists only when
//! the pipeline asks for a quantile. Accumulators merge (session windows join, a
//! time window merges its panes), and the merge of two is the accumulator of the
//! union — so a `reduce` function must be associative, and should be commutative:
//! a window folds its panes' partial results in time order.
//!
//! Bytes: 104 per accumulator. Time windows keep theirs, and their quantile sketch,
//! per pane (see `job.rs`); session and count windows carry their own. See
//! `docs/ARCHITECTURE.md` for the measured budget per series.

use std::sync::Arc;

use fieldline_common::config::pipeline::Aggregate;
use fieldline_common::wire::{Aggregates, SeriesKey, WindowResult};
use serde::{Deserialize, Serialize};

use super::sketch::Sketch;

/// A user reduce function (`WindowedStream::reduce`), kept as aggregate `reduce`.
pub type ReduceFn = Arc<dyn Fn(f64, f64) -> f64 + Send + Sync>;

/// Which aggregates a pipeline reports.
#[derive(Clone)]
pub struct AggSpec {
    /// Sorted by name, so a result's [`Aggregates`] is built by appending; the names
    /// are shared with every result (a reference count, not a copy).
    extra: Vec<(Arc<str>, Aggregate)>,
    /// The quantiles among `extra`, in order.
    quantiles: Vec<f64>,
    sketch: bool,
    pub(crate) reduce: Option<ReduceFn>,
    /// Copied into every result: one short clone per result, nothing per reading.
    unit: String,
}

impl std::fmt::Debug for AggSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AggSpec")
            .field("extra", &self.extra)
            .field("reduce", &self.reduce.is_some())
            .field("unit", &self.unit)
            .finish()
    }
}

impl AggSpec {
    pub fn new(aggs: &[Aggregate]) -> Self {
        let core = [
            Aggregate::Count,
            Aggregate::Sum,
            Aggregate::Mean,
            Aggregate::Min,
            Aggregate::Max,
        ];
        let mut extra: Vec<(Arc<str>, Aggregate)> = aggs
            .iter()
            .filter(|a| !core.contains(a))
            .map(|a| (Arc::from(a.name()), *a))
            .collect();
        extra.sort_by(|a, b| a.0.cmp(&b.0));
        // A name asked for twice is reported once (results push names in order).
        extra.dedup_by(|a, b| a.0 == b.0);
        Self {
            quantiles: extra
                .iter()
                .filter_map(|(_, a)| match a {
                    Aggregate::Quantile(q) => Some(*q),
                    _ => None,
                })
                .collect(),
            extra,
            sketch: aggs.iter().any(|a| matches!(a, Aggregate::Quantile(_))),
            reduce: None,
            unit: String::new(),
        }
    }

    /// The unit of the values the job aggregates (after its map).
    pub fn with_unit(mut self, unit: &str) -> Self {
        self.unit = unit.to_string();
        self
    }

    pub fn with_reduce(mut self, f: ReduceFn) -> Self {
        self.reduce = Some(f);
        self
    }

    /// Whether quantiles (and so a sketch) are asked for.
    pub(crate) fn has_sketch(&self) -> bool {
        self.sketch
    }

    /// An accumulator whose quantiles come from elsewhere (time windows keep one
    /// sketch per pane, shared by the overlapping windows).
    pub(crate) fn new_acc_without_sketch(&self) -> Acc {
        Acc::empty()
    }

    pub(crate) fn new_acc(&self) -> Acc {
        Acc {
            sketch: self.sketch.then(Box::default),
            ..self.new_acc_without_sketch()
        }
    }

    pub(crate) fn add(&self, acc: &mut Acc, ts: i64, v: f64) {
        acc.count += 1;
        acc.sum += v;
        acc.min = acc.min.min(v);
        acc.max = acc.max.max(v);
        let d = v - acc.mean;
        acc.mean += d / acc.count as f64;
        acc.m2 += d * (v - acc.mean);
        // Ties keep the earliest arrival as first and the latest as last.
        if ts < acc.first.0 {
            acc.first = (ts, v);
        }
        if ts >= acc.last.0 {
            acc.last = (ts, v);
        }
        if let Some(f) = &self.reduce {
            acc.reduced = Some(acc.reduced.map_or(v, |r| f(r, v)));
        }
        if let Some(s) = &mut acc.sketch {
            s.add(v);
        }
    }

    /// Folds `other` into `acc` (Chan et al. for the variance).
    pub(crate) fn merge(&self, acc: &mut Acc, other: &Acc) {
        if other.count == 0 {
            return;
        }
        if acc.count == 0 {
            *acc = other.clone();
            return;
        }
        let n = (acc.count + other.count) as f64;
        let d = other.mean - acc.mean;
        acc.mean += d * other.count as f64 / n;
        acc.m2 += other.m2 + d * d * acc.count as f64 * other.count as f64 / n;
        acc.count += other.count;
        acc.sum += other.sum;
        acc.min = acc.min.min(other.min);
        acc.max = acc.max.max(other.max);
        if other.first.0 < acc.first.0 {
            acc.first = other.first;
        }
        if other.last.0 >= acc.last.0 {
            acc.last = other.last;
        }
        acc.reduced = match (acc.reduced, other.reduced, &self.reduce) {
            (Some(a), Some(b), Some(f)) => Some(f(a, b)),
            (a, b, _) => a.or(b),
        };
        if let (Some(a), Some(b)) = (&mut acc.sketch, &other.sketch) {
            a.merge(b);
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn finish(
        &self,
        acc: &Acc,
        panes: Option<&Sketch>,
        pipeline: &str,
        series: &SeriesKey,
        start_ms: i64,
        end_ms: i64,
        revision: u32,
    ) -> WindowResult {
        let mut aggregates =
            Aggregates::with_capacity(self.extra.len() + usize::from(acc.reduced.is_some()));
        let n = acc.count as f64;
        let sketch = panes.or(acc.sketch.as_deref());
        // The first quantiles in one walk over the sketch; more than that one each.
        let mut quantiles = [None; super::sketch::MAX_QUANTILES_PER_WALK];
        if let Some(s) = sketch {
            s.quantiles(&self.quantiles, &mut quantiles);
        }
        let mut nth_quantile = 0;
        for (name, agg) in &self.extra {
            let v = match agg {
                Aggregate::Variance => Some(acc.m2.max(0.0) / n),
                Aggregate::Stddev => Some((acc.m2.max(0.0) / n).sqrt()),
                Aggregate::First => Some(acc.first.1),
                Aggregate::Last => Some(acc.last.1),
                Aggregate::Rate => (acc.last.0 > acc.first.0).then(|| {
                    (acc.last.1 - acc.first.1) / ((acc.last.0 - acc.first.0) as f64 / 1000.0)
                }),
                // Within the sketch's error and never outside what was seen.
                Aggregate::Quantile(q) => {
                    let i = nth_quantile;
                    nth_quantile += 1;
                    match quantiles.get(i) {
                        Some(v) => *v,
                        None => sketch.and_then(|s| s.quantile(*q)),
                    }
                    .map(|v| v.clamp(acc.min, acc.max))
                }
                Aggregate::Count
                | Aggregate::Sum
                | Aggregate::Mean
                | Aggregate::Min
                | Aggregate::Max => None,
            };
            // Undefined values (rate of a single reading) are left out rather than NaN.
            if let Some(v) = v.filter(|v| v.is_finite()) {
                // `extra` is sorted and deduplicated (`new`).
                aggregates.push(name, v);
            }
        }
        if let Some(r) = acc.reduced {
            aggregates.insert("reduce", r);
        }
        WindowResult {
            series: series.clone(),
            start_ms,
            end_ms,
            count: acc.count,
            sum: acc.sum,
            mean: acc.sum / n,
            min: acc.min,
            max: acc.max,
            revision,
            pipeline: pipeline.into(),
            aggregates,
            unit: self.unit.clone(),
        }
    }
}

/// The running state of one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Acc {
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    mean: f64,
    m2: f64,
    first: (i64, f64),
    last: (i64, f64),
    reduced: Option<f64>,
    sketch: Option<Box<Sketch>>,
}

impl Default for Acc {
    fn default() -> Self {
        Self::empty()
    }
}

impl Acc {
    /// The accumulator of no readings, without a sketch.
    pub fn empty() -> Self {
        Acc {
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            mean: 0.0,
            m2: 0.0,
            first: (i64::MAX, 0.0),
            last: (i64::MIN, 0.0),
            reduced: None,
            sketch: None,
        }
    }

    pub(crate) fn set_sketch(&mut self, sketch: Option<Sketch>) {
        self.sketch = sketch.map(Box::new);
    }

    /// Bytes held, inline and on the heap.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.sketch.as_ref().map_or(0, |s| s.bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn result(spec: &AggSpec, acc: &Acc) -> WindowResult {
        spec.finish(acc, None, "p", &SeriesKey::new("d", "m"), 0, 1000, 0)
    }

    #[test]
    fn all_aggregates_of_a_small_window() {
        let spec = AggSpec::new(&Aggregate::all());
        let mut acc = spec.new_acc();
        for (ts, v) in [(300, 4.0), (100, 2.0), (200, 6.0), (400, 8.0)] {
            spec.add(&mut acc, ts, v);
        }
        let r = result(&spec, &acc);
        assert_eq!(
            (r.count, r.sum, r.mean, r.min, r.max),
            (4, 20.0, 5.0, 2.0, 8.0)
        );
        let a = &r.aggregates;
        assert_eq!(a["variance"], 5.0);
        assert_eq!(a["stddev"], 5f64.sqrt());
        assert_eq!((a["first"], a["last"]), (2.0, 8.0));
        assert_eq!(a["rate"], 6.0 / 0.3);
        assert!((a["p50"] - 4.0).abs() <= 0.02, "{a:?}");
        assert!((a["p99"] - 8.0).abs() <= 8.0 * 0.005, "nearest rank: {a:?}");
        assert!(a.contains_key("p90") && a.contains_key("p95"));
        assert!(!a.contains_key("count"), "core fields are not repeated");
    }

    #[test]
    fn rate_of_one_reading_is_left_out() {
        let spec = AggSpec::new(&[Aggregate::Rate]);
        let mut acc = spec.new_acc();
        spec.add(&mut acc, 5, 1.0);
        assert!(result(&spec, &acc).aggregates.is_empty());
    }

    proptest! {
        /// Merging accumulators of two halves equals accumulating the whole.
        #[test]
        fn merge_is_union(values in proptest::collection::vec((0i64..1000, -1000i32..1000), 1..100), cut in any::<prop::sample::Index>()) {
            let spec = AggSpec::new(&Aggregate::all());
            let cut = cut.index(values.len());
            let (mut a, mut b, mut whole) = (spec.new_acc(), spec.new_acc(), spec.new_acc());
            for (i, (ts, v)) in values.iter().enumerate() {
                spec.add(if i < cut { &mut a } else { &mut b }, *ts, f64::from(*v));
                spec.add(&mut whole, *ts, f64::from(*v));
            }
            spec.merge(&mut a, &b);
            let (ra, rw) = (result(&spec, &a), result(&spec, &whole));
            prop_assert_eq!((ra.count, ra.sum, ra.min, ra.max), (rw.count, rw.sum, rw.min, rw.max));
            for (k, v) in &rw.aggregates {
                prop_assert!((ra.aggregates[k] - v).abs() <= 1e-6 * v.abs().max(1.0), "{} {} {}", k, ra.aggregates[k], v);
            }
        }
    }
}
