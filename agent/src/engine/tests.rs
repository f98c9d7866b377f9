//! Engine tests against naive reference models: windows, order independence, late
//! policies, per-device watermarks, series cap, checkpoint transparency.

use std::collections::BTreeMap;

use fieldline_common::payload::Reading;
use fieldline_common::wire::{RecordBody, SeriesKey, WindowResult};
use proptest::prelude::*;

use super::*;

fn reading(dev: &str, ts: i64, v: f64) -> Reading {
    Reading {
        series: SeriesKey::new(dev, "m"),
        ts_ms: ts,
        value: v,
    }
}

fn wm(bound: i64, idle: i64) -> WatermarkConfig {
    WatermarkConfig {
        strategy: WatermarkStrategy::BoundedOutOfOrderness {
            max_out_of_orderness_ms: bound,
        },
        idle_timeout_ms: idle,
        emit_interval_ms: 0,
    }
}

fn late(policy: LatePolicy, allowed: i64) -> LateConfig {
    LateConfig {
        policy,
        allowed_lateness_ms: allowed,
        side_output_beyond: false,
    }
}

fn job(window: WindowSpec, bound: i64) -> Job {
    DataStream::new()
        .key_by(KeyBy::Series)
        .window(window)
        .watermark(wm(bound, i64::MAX / 4))
        .aggregate(&Aggregate::all())
}

/// Feeds readings (arrival = 0, advance after each), then flushes.
fn run(job: &mut Job, readings: &[Reading]) -> Vec<RecordBody> {
    let mut out = Vec::new();
    for r in readings {
        job.process(r, 0, &mut out);
        job.advance(0, &mut out);
    }
    job.flush(&mut out);
    out
}

fn windows(out: &[RecordBody]) -> Vec<WindowResult> {
    out.iter()
        .filter_map(|b| match b {
            RecordBody::Window(w) => Some(w.clone()),
            _ => None,
        })
        .collect()
}

/// Sorted by time, then perturbed by less than `bound`: a legal arrival order.
fn perturb(readings: &[(usize, i64, i32)], bound: i64, seed: u64) -> Vec<Reading> {
    let mut rng = seed;
    let mut keyed: Vec<(i64, usize)> = readings
        .iter()
        .enumerate()
        .map(|(i, r)| {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (r.1 + ((rng >> 33) as i64 % bound.max(1)), i)
        })
        .collect();
    keyed.sort();
    keyed
        .into_iter()
        .map(|(_, i)| {
            let (d, ts, v) = readings[i];
            reading(&format!("d{d}"), ts, f64::from(v))
        })
        .collect()
}

type Model = BTreeMap<(String, i64, i64), (u64, f64)>;

fn model_of(out: &[WindowResult]) -> Model {
    out.iter()
        .map(|r| {
            (
                (r.series.device.to_string(), r.start_ms, r.end_ms),
                (r.count, r.sum),
            )
        })
        .collect()
}

fn arb_readings() -> impl Strategy<Value = Vec<(usize, i64, i32)>> {
    proptest::collection::vec((0usize..4, 0i64..20_000, -1000i32..1000), 1..200)
}

proptest! {
    /// Every reading lands in exactly the windows its timestamp belongs to (tumbling
    /// and sliding), nothing is emitted twice, and counts and sums are conserved,
    /// for any arrival order within the out-of-orderness bound.
    #[test]
    fn time_windows_match_reference_model(
        readings in arb_readings(),
        seed in any::<u64>(),
        (size, slide) in prop_oneof![Just((1000i64, 1000i64)), Just((1000, 250)), Just((700, 300)), Just((1000, 999))],
    ) {
        let bound = 500;
        let window = if size == slide {
            WindowSpec::Tumbling { size_ms: size }
        } else {
            WindowSpec::Sliding { size_ms: size, slide_ms: slide }
        };
        let mut j = job(window, bound);
        let out = run(&mut j, &perturb(&readings, bound, seed));
        prop_assert_eq!(j.stats().late_dropped, 0);
        let got = windows(&out);

        let mut model = Model::new();
        for (d, ts, v) in &readings {
            sliding::assign(*ts, size, slide, |s, e| {
                let m = model.entry((format!("d{d}"), s, e)).or_default();
                m.0 += 1;
                m.1 += f64::from(*v);
            });
        }
        prop_assert_eq!(model_of(&got).len(), got.len(), "a window was emitted twice");
        prop_assert_eq!(model_of(&got), model);
        // Quantiles (pane sketches merged per window) within the sketch's bound.
        for w in &got {
            let mut vals: Vec<f64> = readings
                .iter()
                .filter(|(d, ts, _)| format!("d{d}") == w.series.device && w.start_ms <= *ts && *ts < w.end_ms)
                .map(|r| f64::from(r.2))
                .collect();
            vals.sort_by(f64::total_cmp);
            for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
                let want = vals[sketch::rank(q, vals.len() as u64) as usize];
                let got = w.aggregates[name];
                prop_assert!((got - want).abs() <= sketch::RELATIVE_ACCURACY * want.abs() + 1e-9, "{} got {} want {}", name, got, want);
            }
        }
        let copies = (size / slide) as f64;
        if size % slide == 0 {
            let total: f64 = got.iter().map(|w| w.sum).sum();
            let input: f64 = readings.iter().map(|r| f64::from(r.2)).sum();
            prop_assert_eq!(total, input * copies);
        }
    }

    /// Results do not depend on the arrival order within the bound: two legal orders
    /// give the same windows with the same aggregates (quantiles included).
    #[test]
    fn arrival_order_within_bound_does_not_matter(
        readings in arb_readings(), a in any::<u64>(), b in any::<u64>(),
    ) {
        // Distinct timestamps per series, so `first` and `last` are well defined.
        let mut seen = std::collections::HashSet::new();
        let readings: Vec<_> = readings.into_iter().filter(|r| seen.insert((r.0, r.1))).collect();
        let window = WindowSpec::Sliding { size_ms: 2000, slide_ms: 500 };
        let x = windows(&run(&mut job(window, 800), &perturb(&readings, 800, a)));
        let y = windows(&run(&mut job(window, 800), &perturb(&readings, 800, b)));
        let key = |w: &WindowResult| (w.series.clone(), w.start_ms);
        let mut x = x; x.sort_by_key(key);
        let mut y = y; y.sort_by_key(key);
        prop_assert_eq!(x.len(), y.len());
        for (p, q) in x.iter().zip(&y) {
            prop_assert_eq!((&p.series, p.start_ms, p.count, p.sum, p.min, p.max), (&q.series, q.start_ms, q.count, q.sum, q.min, q.max));
            for (k, v) in &p.aggregates {
                let w = q.aggregates[k];
                prop_assert!((v - w).abs() <= 1e-9 * v.abs().max(1.0), "{} {} {}", k, v, w);
            }
        }
    }

    /// Session windows are the maximal runs of a key's readings closer than `gap`.
    #[test]
    fn sessions_match_reference_model(readings in arb_readings(), seed in any::<u64>()) {
        let (gap, bound) = (700, 300);
        let out = windows(&run(&mut job(WindowSpec::Session { gap_ms: gap }, bound), &perturb(&readings, bound, seed)));
        let mut by_dev: BTreeMap<String, Vec<(i64, i32)>> = BTreeMap::new();
        for (d, ts, v) in &readings {
            by_dev.entry(format!("d{d}")).or_default().push((*ts, *v));
        }
        let mut model = Model::new();
        for (dev, mut rs) in by_dev {
            rs.sort();
            let mut cur: Option<(i64, i64, u64, f64)> = None;
            for (ts, v) in rs {
                cur = match cur {
                    Some((s, last, n, sum)) if ts < last + gap => Some((s, ts, n + 1, sum + f64::from(v))),
                    Some((s, last, n, sum)) => {
                        model.insert((dev.clone(), s, last + gap), (n, sum));
                        Some((ts, ts, 1, f64::from(v)))
                    }
                    None => Some((ts, ts, 1, f64::from(v))),
                };
            }
            if let Some((s, last, n, sum)) = cur {
                model.insert((dev.clone(), s, last + gap), (n, sum));
            }
        }
        prop_assert_eq!(model_of(&out), model);
    }

    /// Late policies: with `drop` every reading is either in a window or counted as
    /// dropped; with `side_output` it is either in a window or a late record; with
    /// enough allowed lateness the last revision of every window equals the model
    /// over all readings, and revisions count up from 0.
    #[test]
    fn late_policies_behave_as_specified(readings in arb_readings(), seed in any::<u64>(), which in 0u8..3) {
        let bound = 100;
        // Readings arrive up to 3 s late, far beyond the 100 ms bound.
        let arrival = perturb(&readings, 3000, seed);
        let window = WindowSpec::Tumbling { size_ms: 1000 };
        let policy = match which {
            0 => late(LatePolicy::Drop, 0),
            1 => late(LatePolicy::SideOutput, 0),
            _ => late(LatePolicy::AllowedLateness, 5000),
        };
        let mut j = DataStream::new().key_by(KeyBy::Series).window(window)
            .watermark(wm(bound, i64::MAX / 4)).late(policy).aggregate(&[]);
        let out = run(&mut j, &arrival);
        let ws = windows(&out);
        let lates = out.iter().filter(|b| matches!(b, RecordBody::Late(_))).count() as u64;
        let n = readings.len() as u64;
        let mut model = Model::new();
        for (d, ts, v) in &readings {
            let (s, e) = tumbling::assign(*ts, 1000);
            let m = model.entry((format!("d{d}"), s, e)).or_default();
            m.0 += 1;
            m.1 += f64::from(*v);
        }
        match which {
            0 => {
                prop_assert_eq!(ws.iter().map(|w| w.count).sum::<u64>() + j.stats().late_dropped, n);
                prop_assert!(ws.iter().all(|w| w.revision == 0));
            }
            1 => {
                prop_assert_eq!(ws.iter().map(|w| w.count).sum::<u64>() + lates, n);
                prop_assert_eq!(lates, j.stats().late_side_output);
            }
            _ => {
                let mut last: BTreeMap<(String, i64, i64), &WindowResult> = BTreeMap::new();
                for w in &ws {
                    let k = (w.series.device.to_string(), w.start_ms, w.end_ms);
                    let expected_rev = last.get(&k).map_or(0, |p| p.revision + 1);
                    prop_assert_eq!(w.revision, expected_rev);
                    last.insert(k, w);
                }
                let finals: Model = last.into_iter().map(|(k, w)| (k, (w.count, w.sum))).collect();
                prop_assert_eq!(finals, model);
                prop_assert_eq!(j.stats().late_dropped, 0);
            }
        }
    }
}

proptest! {
    /// Late data with sliding windows, where one reading can be late for some of its
    /// windows and on time for others that share its pane: against a model that
    /// judges each window on its own (a reading is in a window iff that window took
    /// it when it arrived, by the watermark of that moment and the allowed lateness),
    /// the final revision of every window has exactly the readings the model gives
    /// it, quantiles included, whatever the batches between watermark updates; revisions count up from 0; every reading too late for
    /// one of its windows is counted (or side-output) once.
    #[test]
    fn late_data_in_sliding_windows_matches_per_window_model(
        readings in arb_readings(), seed in any::<u64>(), which in 0u8..4, batch in 1usize..30,
        (size, slide) in prop_oneof![Just((1000i64, 250i64)), Just((700, 300)), Just((1000, 1000)), Just((1000, 999))],
    ) {
        let bound = 100;
        let arrival = perturb(&readings, 3000, seed);
        let window = if size == slide {
            WindowSpec::Tumbling { size_ms: size }
        } else {
            WindowSpec::Sliding { size_ms: size, slide_ms: slide }
        };
        let (policy, lateness) = match which {
            0 => (late(LatePolicy::Drop, 0), 0),
            1 => (late(LatePolicy::SideOutput, 0), 0),
            2 => (late(LatePolicy::AllowedLateness, 1200), 1200),
            _ => (late(LatePolicy::Recompute, 1200), 1200),
        };
        let mut j = DataStream::new().key_by(KeyBy::Series).window(window)
            .watermark(wm(bound, i64::MAX / 4)).late(policy).aggregate(&Aggregate::all());
        let mut out = Vec::new();
        let mut model: BTreeMap<(String, i64, i64), Vec<f64>> = BTreeMap::new();
        let mut missed = 0u64;
        let mut n = 0;
        for r in &arrival {
            let wm = j.watermark_of(&r.series.device);
            let mut late_for_one = false;
            sliding::assign(r.ts_ms, size, slide, |s, e| {
                if e > wm || (lateness > 0 && e + lateness > wm) {
                    model.entry((r.series.device.to_string(), s, e)).or_default().push(r.value);
                } else {
                    late_for_one = true;
                }
            });
            missed += u64::from(late_for_one);
            j.process(r, 0, &mut out);
            // Watermarks move between batches, as in the live loop: a window whose
            // end the watermark passed stays open until then, and readings late for it
            // may land in panes it shares with newer windows.
            n += 1;
            if n % batch == 0 {
                j.advance(0, &mut out);
            }
        }
        j.flush(&mut out);
        let ws = windows(&out);
        let mut last: BTreeMap<(String, i64, i64), &WindowResult> = BTreeMap::new();
        for w in &ws {
            let k = (w.series.device.to_string(), w.start_ms, w.end_ms);
            let expected_rev = last.get(&k).map_or(0, |p| p.revision + 1);
            prop_assert!(w.revision >= expected_rev, "revision {} after {}", w.revision, expected_rev);
            if which < 2 {
                prop_assert_eq!(w.revision, 0, "no revisions without allowed lateness");
            }
            last.insert(k, w);
        }
        prop_assert_eq!(last.len(), model.len(), "windows emitted");
        for (k, w) in &last {
            let Some(vals) = model.get_mut(k) else {
                return Err(TestCaseError::fail(format!("unexpected window {k:?}")));
            };
            let sum: f64 = vals.iter().sum();
            prop_assert_eq!((w.count, w.sum), (vals.len() as u64, sum), "{:?}", k);
            vals.sort_by(f64::total_cmp);
            for (name, q) in [("p50", 0.5), ("p99", 0.99)] {
                let want = vals[sketch::rank(q, vals.len() as u64) as usize];
                let got = w.aggregates[name];
                prop_assert!((got - want).abs() <= sketch::RELATIVE_ACCURACY * want.abs() + 1e-9,
                    "{:?} {} got {} want {}", k, name, got, want);
            }
        }
        let lates = out.iter().filter(|b| matches!(b, RecordBody::Late(_))).count() as u64;
        let counted = j.stats().late_dropped + j.stats().late_side_output;
        prop_assert_eq!(counted, missed);
        prop_assert_eq!(lates, j.stats().late_side_output);
    }
}

/// A window frozen by a reading too late for it keeps taking readings when a restore
/// gives it more allowed lateness (the late policy is not part of the checkpoint's
/// fingerprint).
#[test]
fn a_frozen_window_takes_readings_after_a_restore_with_more_lateness() {
    let window = WindowSpec::Sliding {
        size_ms: 1000,
        slide_ms: 500,
    };
    let make = |policy: LateConfig| {
        DataStream::new()
            .key_by(KeyBy::Series)
            .window(window)
            .watermark(wm(0, i64::MAX / 4))
            .late(policy)
            .aggregate(&Aggregate::all())
    };
    let mut out = Vec::new();
    let mut a = make(late(LatePolicy::AllowedLateness, 2000));
    a.process(&reading("a", 600, 1.0), 0, &mut out);
    a.process(&reading("a", 1600, 1.0), 0, &mut out);
    a.advance(0, &mut out); // emits [0,1000) and [500,1500), keeps them
    let mut b = make(late(LatePolicy::Drop, 0));
    b.restore_state(a.snapshot_state().clone());
    b.process(&reading("a", 1100, 1.0), 0, &mut out); // too late for [500,1500) only
    assert_eq!(b.stats().late_dropped, 1);
    let mut c = make(late(LatePolicy::AllowedLateness, 5000));
    c.restore_state(b.snapshot_state().clone());
    out.clear();
    c.process(&reading("a", 1200, 100.0), 0, &mut out);
    let revised: Vec<_> = windows(&out)
        .into_iter()
        .filter(|w| w.start_ms == 500)
        .collect();
    assert_eq!(revised.len(), 1, "{out:?}");
    let w = &revised[0];
    assert_eq!((w.revision, w.count, w.sum, w.max), (1, 2, 101.0, 100.0));
    assert!((w.aggregates["p99"] - 100.0).abs() <= 1.0, "{w:?}");
}

/// A slide sharing only a tiny divisor with the size (1 ms here) would need a pane per
/// millisecond; such windows keep their own accumulators, and the state stays small.
#[test]
fn windows_of_tiny_panes_keep_their_own_accumulators() {
    let window = WindowSpec::Sliding {
        size_ms: 1000,
        slide_ms: 999,
    };
    let mut j = DataStream::new()
        .key_by(KeyBy::Series)
        .window(window)
        .watermark(wm(0, i64::MAX / 4))
        .aggregate(&[Aggregate::Mean]);
    let mut out = Vec::new();
    let mut peak = 0;
    for ts in 0..5000 {
        j.process(&reading("a", ts, 1.0), 0, &mut out);
        if ts % 100 == 0 {
            j.advance(0, &mut out);
        }
        peak = peak.max(j.state_bytes());
    }
    j.flush(&mut out);
    assert!(peak < 20_000, "peak state {peak} bytes");
    let mut model = Model::new();
    for ts in 0..5000 {
        sliding::assign(ts, 1000, 999, |s, e| {
            let m = model.entry(("a".to_string(), s, e)).or_default();
            m.0 += 1;
            m.1 += 1.0;
        });
    }
    assert_eq!(model_of(&windows(&out)), model);
}

#[test]
fn allowed_lateness_revises_and_recompute_corrects_once() {
    let window = WindowSpec::Tumbling { size_ms: 1000 };
    let feed = |policy: LateConfig| {
        let mut j = DataStream::new()
            .key_by(KeyBy::Series)
            .window(window)
            .watermark(wm(0, i64::MAX / 4))
            .late(policy)
            .aggregate(&[]);
        let mut out = Vec::new();
        for ts in [100, 1500, 200, 300, 2600, 400] {
            j.process(&reading("a", ts, 1.0), 0, &mut out);
            j.advance(0, &mut out);
        }
        (j, out)
    };
    // Watermark 1500 closes [0,1000); 200 and 300 are late but within 1500 ms;
    // 2600 moves the watermark past 1000 + 1500, so 400 is beyond it.
    let (j, out) = feed(late(LatePolicy::AllowedLateness, 1500));
    let revs: Vec<(i64, u32, u64)> = windows(&out)
        .iter()
        .map(|w| (w.start_ms, w.revision, w.count))
        .collect();
    assert_eq!(revs, vec![(0, 0, 1), (0, 1, 2), (0, 2, 3), (1000, 0, 1)]);
    assert_eq!(j.stats().late_revised, 2);
    assert_eq!(j.stats().late_dropped, 1);

    let (j, out) = feed(late(LatePolicy::Recompute, 1500));
    let revs: Vec<(i64, u32, u64)> = windows(&out)
        .iter()
        .map(|w| (w.start_ms, w.revision, w.count))
        .collect();
    assert_eq!(revs, vec![(0, 0, 1), (0, 1, 3), (1000, 0, 1)]);
    assert_eq!(j.stats().late_dropped, 1);

    let mut side = late(LatePolicy::AllowedLateness, 1500);
    side.side_output_beyond = true;
    let (_, out) = feed(side);
    assert!(
        matches!(out.last(), Some(RecordBody::Late(l)) if l.ts_ms == 400 && l.watermark_ms == 2600)
    );
}

#[test]
fn a_device_ahead_does_not_make_others_late_and_idle_ones_still_close() {
    let mut j = DataStream::new()
        .key_by(KeyBy::Series)
        .window(WindowSpec::Tumbling { size_ms: 1000 })
        .watermark(wm(100, 5000))
        .aggregate(&[]);
    let mut out = Vec::new();
    j.process(&reading("fast", 900_000, 1.0), 0, &mut out);
    j.advance(0, &mut out);
    j.process(&reading("slow", 500, 1.0), 10, &mut out);
    j.advance(10, &mut out);
    assert_eq!(j.stats().late_dropped, 0, "slow's data is not late");
    assert!(out.is_empty());
    // `slow` goes quiet; after the idle timeout its window closes by itself.
    j.advance(4000, &mut out);
    assert!(out.is_empty());
    j.advance(5010, &mut out);
    let ws = windows(&out);
    assert_eq!(ws.iter().filter(|w| w.series.device == "slow").count(), 1);
}

#[test]
fn cross_device_keys_wait_for_the_slowest_active_device_only() {
    let mut j = DataStream::new()
        .key_by(KeyBy::Metric)
        .window(WindowSpec::Tumbling { size_ms: 1000 })
        .watermark(wm(0, 5000))
        .aggregate(&[]);
    let mut out = Vec::new();
    j.process(&reading("a", 100, 1.0), 0, &mut out);
    j.process(&reading("b", 100, 2.0), 0, &mut out);
    j.process(&reading("a", 2500, 1.0), 0, &mut out);
    j.advance(0, &mut out);
    assert!(out.is_empty(), "b still at 100");
    // b silent for 5 s: idle, no longer holds the window back.
    j.process(&reading("a", 2600, 1.0), 6000, &mut out);
    j.advance(6000, &mut out);
    let ws = windows(&out);
    assert_eq!(
        (ws[0].series.device.as_str(), ws[0].count, ws[0].sum),
        ("*", 2, 3.0)
    );
}

#[test]
fn series_cap_drop_new_and_evict_oldest() {
    let build = |overflow| {
        DataStream::new()
            .key_by(KeyBy::Series)
            .window(WindowSpec::Tumbling { size_ms: 1000 })
            .max_series(2, overflow)
            .aggregate(&[])
    };
    let mut j = build(SeriesOverflow::DropNew);
    let mut out = Vec::new();
    for d in ["a", "b", "c", "a"] {
        j.process(&reading(d, 10, 1.0), 0, &mut out);
    }
    assert_eq!((j.keys(), j.stats().series_rejected), (2, 1));

    let mut j = build(SeriesOverflow::EvictOldest);
    for d in ["a", "b", "c"] {
        j.process(&reading(d, 10, 1.0), 0, &mut out);
    }
    assert_eq!((j.keys(), j.stats().series_evicted), (2, 1));
    let ws = windows(&out);
    assert_eq!(ws.len(), 1, "a's open window is emitted early");
    assert_eq!(ws[0].series.device, "a");
}

#[test]
fn count_windows_emit_every_n_readings() {
    let mut j = DataStream::new()
        .key_by(KeyBy::Series)
        .window(WindowSpec::Count { count: 3 })
        .aggregate(&[Aggregate::Last]);
    let out = run(&mut j, &[5, 3, 9, 1, 2].map(|t| reading("a", t, t as f64)));
    let ws = windows(&out);
    assert_eq!(ws.len(), 1, "the partial second window is not emitted");
    assert_eq!(
        (
            ws[0].start_ms,
            ws[0].end_ms,
            ws[0].count,
            ws[0].aggregates["last"]
        ),
        (3, 10, 3, 9.0)
    );
}

#[test]
fn filter_map_flat_map_and_custom_key() {
    let mut j = DataStream::new()
        .filter(|r| r.value >= 0.0)
        .map(|mut r| {
            r.value *= 10.0;
            r
        })
        .flat_map(|r| vec![r.clone(), r])
        .key_by_fn(|r| SeriesKey::new("site", r.series.metric.clone()))
        .window(WindowSpec::Tumbling { size_ms: 1000 })
        .aggregate(&[]);
    let out = run(
        &mut j,
        &[
            reading("a", 1, 1.0),
            reading("b", 2, -1.0),
            reading("c", 3, 2.0),
        ],
    );
    let ws = windows(&out);
    assert_eq!((ws.len(), ws[0].count, ws[0].sum), (1, 4, 60.0));
    assert_eq!(ws[0].series, SeriesKey::new("site", "m"));
    assert_eq!(j.stats().filtered, 1);
}

/// The per-window state budget documented in docs/ARCHITECTURE.md; a change that
/// grows it should update the docs.
#[test]
fn window_state_size_is_as_documented() {
    assert_eq!(std::mem::size_of::<aggregate::Acc>(), 104);
    assert_eq!(std::mem::size_of::<job::WinForSize>(), 40);
    assert_eq!(std::mem::size_of::<job::PaneForSize>(), 192);
    assert_eq!(std::mem::size_of::<Option<job::KeyStateForSize>>(), 128);
    // A reading touches its key's slab entry and newest pane: whole cache lines.
    assert_eq!(std::mem::align_of::<job::PaneForSize>(), 64);
    assert_eq!(std::mem::align_of::<job::KeyStateForSize>(), 64);
    assert_eq!(std::mem::size_of::<sketch::Sketch>(), 80);
}

/// Regression: a straggler for a window that closed after its key went quiet must
/// be late, not re-open the window as a second revision 0.
#[test]
fn straggler_after_a_key_was_dropped_is_still_late() {
    let mut j = DataStream::new()
        .key_by(KeyBy::Series)
        .window(WindowSpec::Tumbling { size_ms: 1000 })
        .watermark(wm(0, 1000))
        .aggregate(&[]);
    let mut out = Vec::new();
    j.process(&reading("a", 100, 1.0), 0, &mut out);
    j.advance(5000, &mut out);
    assert_eq!(
        (windows(&out).len(), j.keys()),
        (1, 0),
        "closed on idle, key dropped"
    );
    j.process(&reading("a", 200, 1.0), 5001, &mut out);
    j.advance(5001, &mut out);
    assert_eq!(windows(&out).len(), 1);
    assert_eq!(j.stats().late_dropped, 1);
}

#[test]
fn a_pipeline_unit_is_on_every_result_and_absent_without_one() {
    let cfg = fieldline_common::config::AgentConfig::from_toml(
        "t.toml",
        r#"
[agent]
id = "t"
[[pipeline]]
name = "f"
map = { scale = 1.8, offset = 32.0 }
window = { kind = "count", count = 2 }
unit = "°F"
[[pipeline]]
name = "bare"
window = { kind = "count", count = 2 }
"#,
        Vec::new(),
    )
    .expect("config");
    let readings = [1, 2, 3, 4].map(|t| reading("a", t, 0.0));
    let mut with = Job::from_config(&cfg.pipelines[0]);
    let ws = windows(&run(&mut with, &readings));
    assert_eq!(ws.len(), 2);
    assert!(
        ws.iter().all(|w| w.unit == "°F" && w.mean == 32.0),
        "{ws:?}"
    );
    let mut bare = Job::from_config(&cfg.pipelines[1]);
    assert!(windows(&run(&mut bare, &readings))
        .iter()
        .all(|w| w.unit.is_empty()));
    // The fluent API sets it too.
    let mut fluent = DataStream::new()
        .key_by(KeyBy::Series)
        .window(WindowSpec::Count { count: 2 })
        .unit("bar")
        .aggregate(&[]);
    assert_eq!(windows(&run(&mut fluent, &readings))[0].unit, "bar");
}
