//! Behavioural tests on seeded synthetic series. Detection latencies and false-alarm bounds
//! below are the documented guarantees; the seeds make every run identical.

use super::testutil::Rng;
use super::*;

const MIN: i64 = 60_000;
const T0: i64 = 1_400_000_000_000;

fn ts(i: usize) -> i64 {
    T0 + i as i64 * MIN
}

/// N(10, 1) noise, one point a minute.
fn noise(seed: u64, n: usize) -> Vec<f64> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| 10.0 + r.gauss()).collect()
}

fn scores(spec: &DetectorSpec, xs: &[f64]) -> Vec<f64> {
    assert_eq!(spec.validate(), Ok(()));
    let mut d = spec.build();
    xs.iter()
        .enumerate()
        .map(|(i, &x)| d.update(ts(i), x))
        .collect()
}

/// First index >= `from` whose score reaches the default alert threshold.
fn first_alert(s: &[f64], from: usize) -> Option<usize> {
    (from..s.len()).find(|&i| s[i] >= DEFAULT_ALERT_THRESHOLD)
}

fn quiet_before(s: &[f64], start: usize, end: usize) -> bool {
    s[start..end].iter().all(|&v| v < DEFAULT_ALERT_THRESHOLD)
}

fn general() -> DetectorSpec {
    DetectorSpec::default_general()
}

/// The general detector without its built-in suppressor (alert_threshold 0): used where a
/// test checks the onset itself, because with suppression a chance alert shortly before the
/// onset legitimately absorbs the onset into its episode.
fn general_unsuppressed() -> DetectorSpec {
    DetectorSpec::General(GeneralConfig {
        alert_threshold: 0.0,
        ..GeneralConfig::default()
    })
}

fn zscore() -> DetectorSpec {
    DetectorSpec::ZScore {
        window: 200,
        threshold: 5.0,
    }
}
fn ewma() -> DetectorSpec {
    DetectorSpec::Ewma {
        alpha: 0.01,
        threshold: 5.0,
    }
}
fn mad() -> DetectorSpec {
    DetectorSpec::Mad {
        window: 101,
        threshold: 6.0,
    }
}

const ONSET: usize = 1500;
const N: usize = 2000;

#[test]
fn spike_flagged_on_the_spike() {
    let mut xs = noise(1, N);
    xs[ONSET] += 12.0;
    for spec in [zscore(), ewma(), mad(), general()] {
        let s = scores(&spec, &xs);
        assert_eq!(first_alert(&s, 1000), Some(ONSET), "{spec:?}");
    }
    let s = scores(
        &DetectorSpec::RateOfChange {
            max_per_sec: 8.0 / 60.0,
        },
        &xs,
    );
    assert_eq!(first_alert(&s, 1000), Some(ONSET));
}

#[test]
fn level_shift_flagged_within_5_points() {
    let mut xs = noise(2, N);
    for x in &mut xs[ONSET..] {
        *x += 8.0;
    }
    for spec in [zscore(), ewma(), mad(), general_unsuppressed()] {
        let s = scores(&spec, &xs);
        if spec != general_unsuppressed() {
            assert!(quiet_before(&s, 1000, ONSET), "{spec:?}");
        }
        let a = first_alert(&s, ONSET)
            .unwrap_or_else(|| panic!("{spec:?} {:?}", &s[ONSET - 40..ONSET + 10]));
        assert!(
            a - ONSET <= 5,
            "{spec:?}: flagged after {} points",
            a - ONSET
        );
    }
}

#[test]
fn drift_flagged() {
    // +0.05 sd per point: after 100 points the level is 5 sd away.
    let mut xs = noise(3, N);
    for (k, x) in xs[ONSET..].iter_mut().enumerate() {
        *x += 0.05 * k as f64;
    }
    let limits = DetectorSpec::Threshold {
        min: None,
        max: Some(15.0),
    };
    let within = [(general(), 150), (limits, 150)];
    for (spec, max_lag) in within {
        let s = scores(&spec, &xs);
        assert!(quiet_before(&s, 1000, ONSET), "{spec:?}");
        let a = first_alert(&s, ONSET).unwrap_or_else(|| panic!("drift not flagged {spec:?}"));
        assert!(
            a - ONSET <= max_lag,
            "{spec:?}: flagged after {}",
            a - ONSET
        );
    }
}

#[test]
fn stuck_value_flagged_at_min_points() {
    let mut xs = noise(4, N);
    let v = xs[ONSET];
    for x in &mut xs[ONSET..] {
        *x = v;
    }
    let spec = DetectorSpec::FlatLine {
        min_points: 20,
        min_duration_ms: 0,
        tolerance: 0.0,
    };
    let s = scores(&spec, &xs);
    assert!(quiet_before(&s, 0, ONSET));
    // the run starts at ONSET, so its 20th point is ONSET + 19
    assert_eq!(first_alert(&s, ONSET), Some(ONSET + 19));
    // duration criterion: 30 minutes at one point a minute
    let spec = DetectorSpec::FlatLine {
        min_points: 0,
        min_duration_ms: 30 * MIN,
        tolerance: 1e-9,
    };
    let s = scores(&spec, &xs);
    assert_eq!(first_alert(&s, ONSET), Some(ONSET + 30));
}

#[test]
fn gap_flagged_at_next_point_and_by_idle_check() {
    for spec in [
        DetectorSpec::MissingData {
            expected_interval_ms: 0,
            factor: 3.0,
        },
        DetectorSpec::MissingData {
            expected_interval_ms: MIN,
            factor: 3.0,
        },
    ] {
        assert_eq!(spec.validate(), Ok(()));
        let mut d = spec.build();
        let mut r = Rng::new(5);
        let mut t = T0;
        for _ in 0..100 {
            // 60 s +- 5 s jitter
            t += MIN + ((r.uniform() - 0.5) * 10_000.0) as i64;
            assert!(d.update(t, 1.0) < DEFAULT_ALERT_THRESHOLD);
        }
        // 2 minutes of silence: not yet a gap; 10 minutes: a gap.
        assert!(d.check_idle(t + 2 * MIN) < DEFAULT_ALERT_THRESHOLD);
        assert!(d.check_idle(t + 10 * MIN) >= DEFAULT_ALERT_THRESHOLD);
        assert!(d.reason().contains("no data"), "{}", d.reason());
        // the idle check does not change how the gap is scored when data resumes
        let s = d.update(t + 10 * MIN, 1.0);
        assert!(s >= DEFAULT_ALERT_THRESHOLD);
        assert!(d.update(t + 11 * MIN, 1.0) < DEFAULT_ALERT_THRESHOLD);
    }
}

/// Clean Gaussian noise: after suppression the default detector raises fewer than 1 alert
/// per 5,000 points (bound checked over 100,000 points, 3 seeds).
#[test]
fn false_alarm_rate_on_clean_noise() {
    for seed in [11, 12, 13] {
        let xs = noise(seed, 100_000);
        let s = scores(&general(), &xs);
        let alerts = s.iter().filter(|&&v| v >= DEFAULT_ALERT_THRESHOLD).count();
        assert!(alerts < 50, "seed {seed}: {alerts} alerts");
        eprintln!("general seed {seed}: {alerts} alerts / 100000");

        // the simple detectors at their example thresholds, one alert per episode
        for spec in [zscore(), ewma(), mad()] {
            let s = scores(&spec, &xs);
            let mut sup = Suppressor::new(DEFAULT_ALERT_THRESHOLD, 60, 0);
            let alerts = s
                .iter()
                .enumerate()
                .filter(|&(i, &v)| sup.observe(ts(i), v))
                .count();
            eprintln!("{spec:?} seed {seed}: {alerts} alerts / 100000");
            assert!(alerts < 20, "{spec:?} seed {seed}: {alerts} alerts");
        }
    }
}

fn all_specs() -> Vec<DetectorSpec> {
    vec![
        DetectorSpec::Threshold {
            min: Some(0.0),
            max: Some(20.0),
        },
        zscore(),
        ewma(),
        mad(),
        DetectorSpec::RateOfChange { max_per_sec: 1.0 },
        DetectorSpec::FlatLine {
            min_points: 10,
            min_duration_ms: 0,
            tolerance: 0.0,
        },
        DetectorSpec::MissingData {
            expected_interval_ms: 0,
            factor: 3.0,
        },
        general(),
        DetectorSpec::WarmUp {
            points: 50,
            inner: Box::new(general()),
        },
    ]
}

#[test]
fn scores_finite_and_in_range_for_hostile_input() {
    let mut r = Rng::new(7);
    let specials = [
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        1e300,
        -1e300,
        f64::MAX,
        f64::MIN_POSITIVE,
        0.0,
        -0.0,
    ];
    for spec in all_specs() {
        let mut d = spec.build();
        for i in 0..5000 {
            let v = if r.uniform() < 0.1 {
                specials[(r.next_u64() % specials.len() as u64) as usize]
            } else {
                10.0 + r.gauss() * 10f64.powi((r.next_u64() % 7) as i32 - 3)
            };
            // also hostile timestamps: repeats and jumps backwards
            let t = ts(i) - if i % 97 == 0 { 10 * MIN } else { 0 };
            let s = d.update(t, v);
            assert!(
                s.is_finite() && (0.0..=1.0).contains(&s),
                "{spec:?}: {v} -> {s}"
            );
            let s = d.check_idle(t + MIN);
            assert!(s.is_finite() && (0.0..=1.0).contains(&s));
        }
        assert!(!d.reason().is_empty());
        assert!(d.state_bytes() > 0);
    }
}

#[test]
fn nan_does_not_poison_state() {
    let mut xs = noise(8, N);
    for x in &mut xs[800..900] {
        *x = f64::NAN;
    }
    xs[900] = f64::INFINITY;
    xs[ONSET] += 12.0;
    for spec in [zscore(), ewma(), mad(), general()] {
        let s = scores(&spec, &xs);
        assert!(s[800..=900].iter().all(|&v| v == 0.0), "{spec:?}");
        let from = if spec == general() { ONSET } else { 1000 };
        assert_eq!(first_alert(&s, from), Some(ONSET), "{spec:?}");
    }
}

#[test]
fn huge_values_do_not_break_later_detection() {
    // one absurd reading, then normal data with a later spike
    let mut xs = noise(9, 4000);
    xs[1000] = 1e300;
    xs[3500] += 12.0;
    for spec in [zscore(), mad(), general()] {
        let s = scores(&spec, &xs);
        assert!(s[1000] >= DEFAULT_ALERT_THRESHOLD, "{spec:?}");
        let from = if spec == general() { 3500 } else { 1300 };
        assert_eq!(
            first_alert(&s, from),
            Some(3500),
            "{spec:?} {:?}",
            &s[1195..1210]
        );
    }
}

#[test]
fn warmup_scores_zero() {
    let mut xs = noise(10, 300);
    xs[20] = 1e6;
    let spec = DetectorSpec::WarmUp {
        points: 100,
        inner: Box::new(zscore()),
    };
    let s = scores(&spec, &xs);
    assert!(s[..100].iter().all(|&v| v == 0.0));
    let s = scores(&general(), &xs);
    assert!(s[..GeneralConfig::default().warmup]
        .iter()
        .all(|&v| v == 0.0));
}

#[test]
fn general_is_deterministic_and_small() {
    let xs = noise(11, 5000);
    assert_eq!(scores(&general(), &xs), scores(&general(), &xs));
    // ~9.5 KiB of histograms and profile, ~7 KiB for the novelty's 256 prototypes, ~1 KiB
    // for the residual run test's calibration.
    let d = general().build();
    assert!(d.state_bytes() < 18 * 1024, "{}", d.state_bytes());
    let without = DetectorSpec::General(GeneralConfig {
        novelty_prototypes: 0,
        ..GeneralConfig::default()
    })
    .build();
    assert!(
        without.state_bytes() < 11 * 1024,
        "{}",
        without.state_bytes()
    );
}

/// The (level, time of day) novelty test (on by default): its state survives a save/load
/// mid-stream (same scores afterwards as an uninterrupted run), and it costs what its set
/// holds.
#[test]
fn general_with_novelty_round_trips_and_stays_small() {
    let cfg = GeneralConfig::default();
    assert!(cfg.novelty_prototypes > 0);
    let mut xs = noise(12, 4000);
    xs[3000] += 6.0;
    let spec = DetectorSpec::General(cfg.clone());
    let whole = scores(&spec, &xs);
    let mut first = GeneralDetector::new(cfg.clone());
    for (i, &x) in xs[..2000].iter().enumerate() {
        first.update(ts(i), x);
    }
    let mut buf = Vec::new();
    first.save_state(&mut StateWriter(&mut buf));
    let mut second = GeneralDetector::new(cfg.clone());
    let mut r = StateReader(&buf);
    assert!(second.load_state(&mut r) && r.is_empty());
    let rest: Vec<f64> = (2000..xs.len())
        .map(|i| second.update(ts(i), xs[i]))
        .collect();
    assert_eq!(rest, whole[2000..]);
    assert_eq!(first_alert(&whole, 2500), Some(3000));
    // Without the novelty's part the state does not fit.
    let mut plain = GeneralDetector::new(GeneralConfig {
        novelty_prototypes: 0,
        ..GeneralConfig::default()
    });
    let mut r = StateReader(&buf);
    assert!(!(plain.load_state(&mut r) && r.is_empty()));
    let bytes = GeneralDetector::new(cfg).state_bytes();
    assert!(bytes < 18 * 1024, "{bytes}");
}

/// Hourly values with a daily pattern: six values in a row sit 3 noise deviations above
/// the profile of their hours, well inside the series' range (the daily swing is ±10). The residual run test flags it (and names itself); without it the detector
/// stays quiet (at 3.5 deviations the residual view already flags the first of them).
#[test]
fn general_residual_run() {
    let per_day = 24;
    let mut r = Rng::new(21);
    let n = per_day * 40;
    let onset = per_day * 35 + 1;
    let xs: Vec<f64> = (0..n)
        .map(|i| {
            let phase = (i % per_day) as f64 / per_day as f64 * std::f64::consts::TAU;
            let lift = if (onset..onset + 6).contains(&i) {
                3.0
            } else {
                0.0
            };
            50.0 + 10.0 * phase.sin() + lift + r.gauss()
        })
        .collect();
    let run = |cfg: GeneralConfig| {
        let mut d = GeneralDetector::new(cfg);
        let mut why = String::new();
        let s: Vec<f64> = xs
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let v = d.update(T0 + i as i64 * 60 * MIN, x);
                if i >= onset && v >= DEFAULT_ALERT_THRESHOLD && why.is_empty() {
                    why = d.reason();
                }
                v
            })
            .collect();
        (s, why)
    };
    let (s, why) = run(GeneralConfig::default());
    let a = first_alert(&s, onset).expect("residual run not flagged");
    assert!(a < onset + 6, "flagged at {a}, onset {onset}");
    assert!(why.contains("residual has stayed"), "{why}");
    let (s, _) = run(GeneralConfig {
        run_memory: 0.0,
        ..GeneralConfig::default()
    });
    assert_eq!(first_alert(&s, onset), None);
}

#[test]
fn general_seasonal_break() {
    // daily sine with noise (5-minute samples); on day 10 the afternoon stays at the
    // morning level: every value is in the normal range, only the time of day is wrong.
    let per_day = 288;
    let mut r = Rng::new(12);
    let n = per_day * 12;
    let onset = per_day * 10 + per_day / 2;
    let xs: Vec<f64> = (0..n)
        .map(|i| {
            let phase = (i % per_day) as f64 / per_day as f64 * std::f64::consts::TAU;
            let base = if (onset..onset + 36).contains(&i) {
                -10.0
            } else {
                10.0 * phase.sin()
            };
            50.0 + base + 0.3 * r.gauss()
        })
        .collect();
    let mut d = general().build();
    let s: Vec<f64> = xs
        .iter()
        .enumerate()
        .map(|(i, &x)| d.update(T0 + i as i64 * 5 * MIN, x))
        .collect();
    let a = first_alert(&s, onset).expect("seasonal break not flagged");
    assert!(a - onset <= 5, "flagged after {}", a - onset);
}

#[test]
fn spec_validation_names_the_problem() {
    let bad = [
        (
            DetectorSpec::ZScore {
                window: 1,
                threshold: 3.0,
            },
            "window",
        ),
        (
            DetectorSpec::Ewma {
                alpha: 1.5,
                threshold: 3.0,
            },
            "alpha",
        ),
        (
            DetectorSpec::Mad {
                window: 5000,
                threshold: 3.0,
            },
            "window",
        ),
        (
            DetectorSpec::Threshold {
                min: Some(2.0),
                max: Some(1.0),
            },
            "min",
        ),
        (
            DetectorSpec::Threshold {
                min: None,
                max: None,
            },
            "min/max",
        ),
        (
            DetectorSpec::RateOfChange {
                max_per_sec: f64::NAN,
            },
            "max_per_sec",
        ),
        (
            DetectorSpec::MissingData {
                expected_interval_ms: 1000,
                factor: 0.5,
            },
            "factor",
        ),
        (
            DetectorSpec::General(GeneralConfig {
                memory: 0.0,
                ..GeneralConfig::default()
            }),
            "memory",
        ),
        (
            DetectorSpec::General(GeneralConfig {
                likelihood_short: 0.5,
                ..GeneralConfig::default()
            }),
            "likelihood_short",
        ),
        (
            DetectorSpec::General(GeneralConfig {
                residual_support: -1.0,
                ..GeneralConfig::default()
            }),
            "residual_support",
        ),
        (
            DetectorSpec::General(GeneralConfig {
                smoothed_support: f64::NAN,
                ..GeneralConfig::default()
            }),
            "smoothed_support",
        ),
        (
            DetectorSpec::WarmUp {
                points: 3,
                inner: Box::new(DetectorSpec::Ewma {
                    alpha: 0.0,
                    threshold: 3.0,
                }),
            },
            "alpha",
        ),
    ];
    for (spec, word) in bad {
        let e = spec.validate().unwrap_err();
        assert!(e.contains(word), "{spec:?}: {e}");
    }
    for spec in all_specs() {
        assert_eq!(spec.validate(), Ok(()));
    }
}

#[test]
fn one_sd_shift_flagged_within_60_points() {
    // Single points of a 1 sd shift are only mildly unusual; the sustained-rarity
    // (likelihood) stage exists for this. Without it seed 22 is never flagged.
    for seed in [21, 22, 23, 24, 25] {
        let mut xs = noise(seed, N);
        for x in &mut xs[ONSET..] {
            *x += 1.0;
        }
        let s = scores(&general(), &xs);
        let a = first_alert(&s, ONSET).unwrap_or_else(|| panic!("seed {seed}: not flagged"));
        assert!(a - ONSET <= 60, "seed {seed}: flagged after {}", a - ONSET);
    }
    let mut xs = noise(22, N);
    for x in &mut xs[ONSET..] {
        *x += 1.0;
    }
    let without = DetectorSpec::General(GeneralConfig {
        likelihood_short: 0.0,
        ..GeneralConfig::default()
    });
    assert_eq!(first_alert(&scores(&without, &xs), ONSET), None);
}
