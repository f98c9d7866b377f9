//! Live events for the web UI: what this process ingests (window results,
//! anomalies, dead letters) fanned out to Server-Sent-Event streams, plus the
//! recent window results per series (for charts) and the recent anomalies (for the
//! feed).
//!
//! Design constraints:
//! - Fed by the ingest handler with the records a batch *added* (duplicates of a
//!   replayed batch are not events), so the feed shows each anomaly once.
//! - Bounded: [`MAX_ANOMALIES`] anomalies, [`MAX_POINTS`] points per series and
//!   [`MAX_SERIES`] series in all; a series beyond the cap is not charted (counted in
//!   `untracked_series`). A slow SSE client lags behind the broadcast channel and is
//!   told to `resync` (refetch) instead of holding memory.
//! - **Absent**: nothing here is persisted or shared between fleet servers: with
//!   several servers behind a balancer a UI sees the events of the server it is
//!   connected to, and a restart starts the charts empty. Fleet-wide facts (latest
//!   value per series, top anomalies, DLQ, streams) come from the store.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fieldline_common::wire::{Record, RecordBody};
use serde::Serialize;
use tokio::sync::broadcast;

pub const MAX_ANOMALIES: usize = 1000;
pub const MAX_POINTS: usize = 240;
pub const MAX_SERIES: usize = 20_000;
const CHANNEL: usize = 1024;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnomalyEvent {
    pub agent: String,
    pub series: String,
    pub pipeline: String,
    pub ts_ms: i64,
    pub value: f64,
    pub score: f64,
    pub detector: String,
    pub reason: String,
    /// When the fleet received it.
    pub received_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    pub start_ms: i64,
    pub end_ms: i64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Anomaly(AnomalyEvent),
    Window {
        agent: String,
        series: String,
        /// The pipeline's unit; left out when unknown.
        #[serde(skip_serializing_if = "String::is_empty")]
        unit: String,
        point: Point,
    },
    DeadLetter {
        agent: String,
        topic: String,
        reason: String,
    },
}

impl Event {
    pub fn name(&self) -> &'static str {
        match self {
            Event::Anomaly(_) => "anomaly",
            Event::Window { .. } => "window",
            Event::DeadLetter { .. } => "dead_letter",
        }
    }

    /// The agent it concerns.
    pub fn agent(&self) -> &str {
        match self {
            Event::Anomaly(a) => &a.agent,
            Event::Window { agent, .. } | Event::DeadLetter { agent, .. } => agent,
        }
    }
}

#[derive(Default)]
struct Recent {
    anomalies: VecDeque<AnomalyEvent>,
    /// agent → series → points, oldest first.
    windows: HashMap<String, HashMap<String, Recorded>>,
    series: usize,
}

/// The recent points of one series and their unit (one per series, not per point).
#[derive(Default)]
struct Recorded {
    unit: String,
    points: VecDeque<Point>,
}

/// One series of [`Hub::windows`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesWindows {
    pub series: String,
    /// Empty when the pipeline has no `unit`.
    pub unit: String,
    pub points: Vec<Point>,
}

pub struct Hub {
    tx: broadcast::Sender<Arc<Event>>,
    recent: Mutex<Recent>,
    untracked_series: AtomicU64,
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(CHANNEL).0,
            recent: Mutex::new(Recent::default()),
            untracked_series: AtomicU64::new(0),
        }
    }
}

impl Hub {
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    /// Records that `agent`'s batch added `records`. On the ingest path: allocates
    /// only for new series and for events someone is subscribed to.
    pub fn ingested(&self, agent: &str, records: &[Record], now_ms: i64) {
        use std::fmt::Write;
        let live = self.tx.receiver_count() > 0;
        let mut events = Vec::new();
        let mut name = String::new();
        {
            let mut recent = self.recent.lock().expect("hub lock");
            for r in records {
                match &r.body {
                    RecordBody::Anomaly(a) => {
                        let e = AnomalyEvent {
                            agent: agent.to_string(),
                            series: a.series.to_string(),
                            pipeline: a.pipeline.clone(),
                            ts_ms: a.ts_ms,
                            value: a.value,
                            score: a.score,
                            detector: a.detector.clone(),
                            reason: a.reason.clone(),
                            received_ms: now_ms,
                        };
                        if recent.anomalies.len() == MAX_ANOMALIES {
                            recent.anomalies.pop_front();
                        }
                        if live {
                            events.push(Event::Anomaly(e.clone()));
                        }
                        recent.anomalies.push_back(e);
                    }
                    RecordBody::Window(w) => {
                        name.clear();
                        let _ = write!(name, "{}", w.series);
                        if !w.pipeline.is_empty() {
                            // Two pipelines may aggregate the same series differently.
                            let _ = write!(name, " [{}]", w.pipeline);
                        }
                        let point = Point {
                            start_ms: w.start_ms,
                            end_ms: w.end_ms,
                            mean: w.mean,
                            min: w.min,
                            max: w.max,
                            count: w.count,
                        };
                        if self.keep_point(&mut recent, agent, &name, &w.unit, &point) && live {
                            events.push(Event::Window {
                                agent: agent.to_string(),
                                series: name.clone(),
                                unit: w.unit.clone(),
                                point,
                            });
                        }
                    }
                    RecordBody::DeadLetter(d) if live => events.push(Event::DeadLetter {
                        agent: agent.to_string(),
                        topic: d.topic.clone(),
                        reason: d.reason.clone(),
                    }),
                    _ => {}
                }
            }
        }
        for e in events {
            // A receiver gone since the check is not an error.
            let _ = self.tx.send(Arc::new(e));
        }
    }

    fn keep_point(
        &self,
        recent: &mut Recent,
        agent: &str,
        name: &str,
        unit: &str,
        point: &Point,
    ) -> bool {
        let Recent {
            windows, series, ..
        } = recent;
        // The common case, a known series: two lookups, no allocation.
        if let Some(rec) = windows.get_mut(agent).and_then(|m| m.get_mut(name)) {
            if rec.unit != unit {
                // The pipeline's config changed: the newest unit labels the chart.
                rec.unit = unit.to_string();
            }
            add_point(&mut rec.points, point);
            return true;
        }
        if *series >= MAX_SERIES {
            self.untracked_series.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        *series += 1;
        let mut rec = Recorded {
            unit: unit.to_string(),
            points: VecDeque::new(),
        };
        add_point(&mut rec.points, point);
        windows
            .entry(agent.to_string())
            .or_default()
            .insert(name.to_string(), rec);
        true
    }

    /// Newest first, optionally of one agent, at most `limit`.
    pub fn anomalies(&self, agent: Option<&str>, limit: usize) -> Vec<AnomalyEvent> {
        let recent = self.recent.lock().expect("hub lock");
        recent
            .anomalies
            .iter()
            .rev()
            .filter(|a| agent.is_none_or(|x| a.agent == x))
            .take(limit)
            .cloned()
            .collect()
    }

    /// Recent window results of every series of `agent`, sorted by series.
    pub fn windows(&self, agent: &str) -> Vec<SeriesWindows> {
        let recent = self.recent.lock().expect("hub lock");
        let mut out: Vec<_> = recent
            .windows
            .get(agent)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| SeriesWindows {
                        series: k.clone(),
                        unit: v.unit.clone(),
                        points: v.points.iter().cloned().collect(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by(|a, b| a.series.cmp(&b.series));
        out
    }

    pub fn untracked_series(&self) -> u64 {
        self.untracked_series.load(Ordering::Relaxed)
    }
}

/// Points stay sorted by window end; a revision (allowed lateness) replaces the
/// window it revises.
fn add_point(points: &mut VecDeque<Point>, point: &Point) {
    match points.binary_search_by_key(&point.end_ms, |p| p.end_ms) {
        Ok(i) => points[i] = point.clone(),
        Err(i) => {
            points.insert(i, point.clone());
            if points.len() > MAX_POINTS {
                points.pop_front();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldline_common::wire::{Anomaly, SeriesKey, WindowResult};

    fn window(seq: u64, end_ms: i64, mean: f64) -> Record {
        Record {
            seq,
            created_ms: 0,
            body: RecordBody::Window(WindowResult {
                series: SeriesKey::new("boiler", "temp"),
                start_ms: end_ms - 1000,
                end_ms,
                count: 1,
                sum: mean,
                mean,
                min: mean,
                max: mean,
                revision: 0,
                pipeline: Default::default(),
                aggregates: Default::default(),
                unit: String::new(),
            }),
        }
    }

    #[test]
    fn windows_are_kept_in_time_order_bounded_and_revised_in_place() {
        let hub = Hub::default();
        let mut rx = hub.subscribe();
        hub.ingested("gw", &[window(1, 3000, 1.0), window(2, 1000, 2.0)], 5);
        hub.ingested("gw", &[window(3, 3000, 9.0)], 6);
        let w = hub.windows("gw");
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].series, "boiler/temp");
        let ends: Vec<_> = w[0].points.iter().map(|p| (p.end_ms, p.mean)).collect();
        assert_eq!(ends, vec![(1000, 2.0), (3000, 9.0)]);
        assert_eq!(rx.try_recv().unwrap().name(), "window");
        for i in 0..(MAX_POINTS as i64 + 10) {
            hub.ingested("gw", &[window(10 + i as u64, 10_000 + i * 1000, 0.0)], 7);
        }
        assert_eq!(hub.windows("gw")[0].points.len(), MAX_POINTS);
        assert!(hub.windows("other").is_empty());
    }

    #[test]
    fn the_pipeline_unit_reaches_the_chart_data_and_the_live_event() {
        let hub = Hub::default();
        let mut rx = hub.subscribe();
        hub.ingested("gw", &[window(1, 1000, 1.0)], 5);
        assert_eq!(hub.windows("gw")[0].unit, "");
        let json = serde_json::to_value(&*rx.try_recv().unwrap()).unwrap();
        assert!(json.get("unit").is_none(), "no unit, no field: {json}");
        let mut with_unit = window(2, 2000, 2.0);
        if let RecordBody::Window(w) = &mut with_unit.body {
            w.unit = "°C".into();
        }
        hub.ingested("gw", &[with_unit], 6);
        assert_eq!(hub.windows("gw")[0].unit, "°C");
        let json = serde_json::to_value(&*rx.try_recv().unwrap()).unwrap();
        assert_eq!(json["unit"], "°C", "{json}");
    }

    #[test]
    fn anomalies_are_listed_newest_first_per_agent() {
        let hub = Hub::default();
        let anomaly = |seq, score| Record {
            seq,
            created_ms: 0,
            body: RecordBody::Anomaly(Anomaly {
                pipeline: String::new(),
                series: SeriesKey::new("pump", "pressure"),
                ts_ms: seq as i64,
                value: 99.0,
                score,
                detector: "threshold".into(),
                reason: "above 90".into(),
            }),
        };
        hub.ingested("a", &[anomaly(1, 0.5)], 1);
        hub.ingested("b", &[anomaly(2, 0.9)], 2);
        let all = hub.anomalies(None, 10);
        assert_eq!(
            all.iter().map(|a| a.agent.as_str()).collect::<Vec<_>>(),
            ["b", "a"]
        );
        assert_eq!(hub.anomalies(Some("a"), 10).len(), 1);
        assert_eq!(hub.anomalies(None, 1).len(), 1);
    }
}
