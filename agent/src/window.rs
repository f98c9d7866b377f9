//! Tumbling event-time windows per series. **Invariant**: no IO, no clock reads:
//! callers pass wall-clock time in, so the engine is deterministic under test.
//!
//! Windows are aligned to the epoch (`start = ts - ts mod size`) and shared by all
//! series. The watermark is `max event time seen - max_out_of_orderness`; a window
//! `[start, end)` closes once the watermark reaches `end`. When no reading arrives
//! for `idle_timeout`, event time is assumed to advance with the wall clock so the
//! last windows still close. A reading whose window already closed is late and
//! dropped (counted by the caller).

use std::collections::{BTreeMap, HashMap};

use fieldline_common::payload::Reading;
use fieldline_common::wire::{SeriesKey, WindowResult};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Acc {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

impl Acc {
    fn new(v: f64) -> Self {
        Self {
            count: 1,
            sum: v,
            min: v,
            max: v,
        }
    }

    fn add(&mut self, v: f64) {
        self.count += 1;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    Yes,
    /// The reading's window had already closed.
    Late,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TumblingWindows {
    size_ms: i64,
    bound_ms: i64,
    idle_ms: i64,
    /// window start → open accumulators of every series with data in it.
    #[serde(with = "open_as_pairs")]
    open: BTreeMap<i64, HashMap<SeriesKey, Acc>>,
    max_event_ms: Option<i64>,
    last_arrival_wall_ms: i64,
    watermark_ms: i64,
}

impl TumblingWindows {
    pub fn new(size_ms: i64, max_out_of_orderness_ms: i64, idle_timeout_ms: i64) -> Self {
        assert!(size_ms > 0, "window size must be positive");
        Self {
            size_ms,
            bound_ms: max_out_of_orderness_ms.max(0),
            idle_ms: idle_timeout_ms.max(0),
            open: BTreeMap::new(),
            max_event_ms: None,
            last_arrival_wall_ms: 0,
            watermark_ms: i64::MIN,
        }
    }

    pub fn watermark_ms(&self) -> i64 {
        self.watermark_ms
    }

    pub fn open_windows(&self) -> usize {
        self.open.values().map(HashMap::len).sum()
    }

    fn start_of(&self, ts: i64) -> i64 {
        ts - ts.rem_euclid(self.size_ms)
    }

    /// Adds one reading. `wall_ms` is the agent's clock at arrival.
    pub fn add(&mut self, r: &Reading, wall_ms: i64) -> Accepted {
        let start = self.start_of(r.ts_ms);
        if start.saturating_add(self.size_ms) <= self.watermark_ms {
            return Accepted::Late;
        }
        self.last_arrival_wall_ms = wall_ms;
        self.max_event_ms = Some(self.max_event_ms.map_or(r.ts_ms, |m| m.max(r.ts_ms)));
        self.open
            .entry(start)
            .or_default()
            .entry(r.series.clone())
            .and_modify(|a| a.add(r.value))
            .or_insert_with(|| Acc::new(r.value));
        Accepted::Yes
    }

    /// Advances the watermark from what was seen and the wall clock, and returns
    /// every window that closed, ordered by window start then series.
    pub fn advance(&mut self, wall_ms: i64) -> Vec<WindowResult> {
        let Some(max_event) = self.max_event_ms else {
            return Vec::new();
        };
        let idle_for = wall_ms.saturating_sub(self.last_arrival_wall_ms);
        let mut wm = max_event.saturating_sub(self.bound_ms);
        if idle_for >= self.idle_ms {
            wm = wm.saturating_add(idle_for);
        }
        self.watermark_ms = self.watermark_ms.max(wm);
        self.close_through(self.watermark_ms)
    }

    fn close_through(&mut self, watermark: i64) -> Vec<WindowResult> {
        let mut out = Vec::new();
        while let Some(entry) = self.open.first_entry() {
            let start = *entry.key();
            if start.saturating_add(self.size_ms) > watermark {
                break;
            }
            let mut series: Vec<_> = entry.remove().into_iter().collect();
            series.sort_by(|a, b| a.0.cmp(&b.0));
            out.extend(series.into_iter().map(|(key, acc)| WindowResult {
                series: key,
                start_ms: start,
                end_ms: start + self.size_ms,
                count: acc.count,
                sum: acc.sum,
                mean: acc.sum / acc.count as f64,
                min: acc.min,
                max: acc.max,
                revision: 0,
                pipeline: String::new(),
                aggregates: Default::default(),
            }));
        }
        out
    }
}

/// CBOR map keys must be plain values; open windows are stored as sorted pairs so a
/// snapshot is also byte-for-byte deterministic.
mod open_as_pairs {
    use super::*;

    type Open = BTreeMap<i64, HashMap<SeriesKey, Acc>>;

    pub fn serialize<S: serde::Serializer>(open: &Open, s: S) -> Result<S::Ok, S::Error> {
        let pairs: Vec<(i64, BTreeMap<&SeriesKey, &Acc>)> = open
            .iter()
            .map(|(start, m)| (*start, m.iter().collect()))
            .collect();
        let pairs: Vec<(i64, Vec<(&SeriesKey, &Acc)>)> = pairs
            .into_iter()
            .map(|(start, m)| (start, m.into_iter().collect()))
            .collect();
        pairs.serialize(s)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Open, D::Error> {
        let pairs: Vec<(i64, Vec<(SeriesKey, Acc)>)> = Deserialize::deserialize(d)?;
        Ok(pairs
            .into_iter()
            .map(|(start, m)| (start, m.into_iter().collect()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reading(dev: &str, ts: i64, v: f64) -> Reading {
        Reading {
            series: SeriesKey::new(dev, "m"),
            ts_ms: ts,
            value: v,
        }
    }

    #[test]
    fn closes_when_watermark_passes_end() {
        let mut w = TumblingWindows::new(1000, 100, 10_000);
        assert_eq!(w.add(&reading("a", 100, 1.0), 0), Accepted::Yes);
        assert_eq!(w.add(&reading("a", 900, 3.0), 0), Accepted::Yes);
        assert!(w.advance(0).is_empty());
        w.add(&reading("a", 1099, 5.0), 0);
        assert!(w.advance(0).is_empty(), "watermark 999 < end 1000");
        w.add(&reading("a", 1100, 5.0), 0);
        let out = w.advance(0);
        assert_eq!(out.len(), 1);
        let r = &out[0];
        assert_eq!(
            (r.start_ms, r.end_ms, r.count, r.sum, r.min, r.max),
            (0, 1000, 2, 4.0, 1.0, 3.0)
        );
        assert_eq!(r.mean, 2.0);
        assert_eq!(w.add(&reading("a", 999, 1.0), 0), Accepted::Late);
    }

    #[test]
    fn idle_source_still_closes_windows() {
        let mut w = TumblingWindows::new(1000, 100, 500);
        w.add(&reading("a", 10_050, 1.0), 50_000);
        assert!(w.advance(50_400).is_empty(), "not idle yet");
        assert!(w.advance(50_900).is_empty(), "idle, watermark 10_850");
        let out = w.advance(51_100);
        assert_eq!(out.len(), 1, "watermark 11_050 passes end 11_000");
    }

    #[test]
    fn negative_timestamps_align_down() {
        let mut w = TumblingWindows::new(1000, 0, 0);
        w.add(&reading("a", -1, 1.0), 0);
        w.add(&reading("a", 5000, 1.0), 0);
        let out = w.advance(0);
        assert_eq!(out[0].start_ms, -1000);
    }

    proptest! {
        /// Against a naive model: every reading within the bound lands in exactly its
        /// window; counts and sums are conserved regardless of arrival order.
        #[test]
        fn matches_reference_model(
            mut readings in proptest::collection::vec((0usize..4, 0i64..20_000, -1000i32..1000), 1..300),
            shuffle_seed in any::<u64>(),
        ) {
            let size = 1000;
            // Sort by time, then perturb order within the out-of-orderness bound.
            readings.sort_by_key(|r| r.1);
            let bound = 500;
            let mut rng = shuffle_seed;
            let mut keyed: Vec<(i64, (usize, i64, i32))> = readings.iter().map(|r| {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (r.1 + ((rng >> 33) as i64 % bound), *r)
            }).collect();
            keyed.sort_by_key(|k| k.0);
            let arrival: Vec<_> = keyed.into_iter().map(|k| k.1).collect();

            let mut w = TumblingWindows::new(size, bound, i64::MAX / 4);
            let mut out = Vec::new();
            for (dev, ts, v) in &arrival {
                let acc = w.add(&reading(&format!("d{dev}"), *ts, *v as f64), 0);
                prop_assert_eq!(acc, Accepted::Yes);
                out.extend(w.advance(0));
            }
            // Flush everything: a reading far in the future closes all earlier windows.
            w.add(&reading("flush", 1_000_000, 0.0), 0);
            out.extend(w.advance(0));
            out.retain(|r| r.series.device != "flush");

            let mut model: BTreeMap<(String, i64), (u64, f64)> = BTreeMap::new();
            for (dev, ts, v) in &readings {
                let e = model.entry((format!("d{dev}"), ts - ts % size)).or_default();
                e.0 += 1;
                e.1 += *v as f64;
            }
            let got: BTreeMap<(String, i64), (u64, f64)> = out
                .iter()
                .map(|r| ((r.series.device.clone(), r.start_ms), (r.count, r.sum)))
                .collect();
            prop_assert_eq!(got.len(), out.len(), "a window was emitted twice");
            prop_assert_eq!(got, model);
        }
    }
}
