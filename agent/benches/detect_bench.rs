//! Throughput and state size per anomaly detector (numbers in docs/BENCHMARKS.md).
//!
//!     cargo bench -p fieldline-agent --bench detect_bench [-- POINTS [NAME] [KEY=VALUE ...]]
//!
//! POINTS defaults to 10,000,000; NAME runs only the detectors whose name starts with it;
//! `KEY=VALUE` sets a numeric field of the general detector (any `GeneralConfig::set`
//! key, e.g. `novelty_prototypes=0`).
//! Single thread, so points/s is per core. On a shared machine wall-clock rate understates
//! it, so the run's on-CPU time (Linux /proc/thread-self/schedstat) is reported as well. Input is a deterministic noisy daily sine with
//! occasional spikes, 1-minute timestamps. For a load-independent figure, count instructions
//! under valgrind's callgrind at two point counts (method in docs/BENCHMARKS.md). Plain `main` rather than criterion: the number
//! that matters is sustained points/s over millions of points, not per-call latency.

use std::hint::black_box;
use std::time::Instant;

use fieldline_agent::detect::{DetectorSpec, GeneralConfig, DEFAULT_ALERT_THRESHOLD};

#[path = "util/cpu.rs"]
mod cpu;
use cpu::thread_cpu_ns;

fn main() {
    // `cargo bench` passes `--bench`; the first numeric argument is the point count.
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10_000_000);
    let only: Option<String> = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-') && !a.contains('=') && a.parse::<usize>().is_err());
    let mut general = GeneralConfig::default();
    for a in std::env::args().skip(1) {
        if let Some((k, v)) = a.split_once('=') {
            let v: f64 = v.parse().expect("KEY=VALUE: VALUE must be a number");
            general.set(k, v).unwrap_or_else(|e| panic!("{e}"));
        }
    }
    // Pre-generate so the RNG is not timed (xorshift64*).
    let mut st: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = || {
        st ^= st >> 12;
        st ^= st << 25;
        st ^= st >> 27;
        (st.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    };
    let values: Vec<f64> = (0..n)
        .map(|i| {
            let day = (i % 1440) as f64 / 1440.0 * std::f64::consts::TAU;
            let spike = if next() < 1e-4 { 20.0 } else { 0.0 };
            50.0 + 10.0 * day.sin() + (next() - 0.5) * 4.0 + spike
        })
        .collect();
    let specs: Vec<(&str, DetectorSpec)> = vec![
        (
            if general == GeneralConfig::default() {
                "general (default)"
            } else {
                "general (KEY=VALUE)"
            },
            DetectorSpec::General(general),
        ),
        (
            "threshold",
            DetectorSpec::Threshold {
                min: Some(0.0),
                max: Some(100.0),
            },
        ),
        (
            "zscore w=200",
            DetectorSpec::ZScore {
                window: 200,
                threshold: 4.0,
            },
        ),
        (
            "ewma",
            DetectorSpec::Ewma {
                alpha: 0.01,
                threshold: 4.0,
            },
        ),
        (
            "mad w=101",
            DetectorSpec::Mad {
                window: 101,
                threshold: 5.0,
            },
        ),
        (
            "rate of change",
            DetectorSpec::RateOfChange { max_per_sec: 1.0 },
        ),
        (
            "flat line",
            DetectorSpec::FlatLine {
                min_points: 10,
                min_duration_ms: 0,
                tolerance: 0.0,
            },
        ),
        (
            "missing data",
            DetectorSpec::MissingData {
                expected_interval_ms: 0,
                factor: 3.0,
            },
        ),
    ];
    println!("{n} points per detector, single thread");
    println!(
        "{:<20} {:>14} {:>14} {:>10} {:>12} {:>8}",
        "detector", "points/s", "points/cpu-s", "ns/point", "state bytes", "alerts"
    );
    for (name, spec) in specs {
        if only.as_deref().is_some_and(|o| !name.starts_with(o)) {
            continue;
        }
        spec.validate().expect("bench spec");
        // MAD sorts its window per point: bench it on fewer points to keep runs short.
        let m = if name.starts_with("mad") {
            n.min(1_000_000)
        } else {
            n
        };
        let mut d = spec.build();
        let cpu0 = thread_cpu_ns();
        let start = Instant::now();
        let mut alerts = 0u64;
        for (i, &v) in values[..m].iter().enumerate() {
            let s = d.update(i as i64 * 60_000, black_box(v));
            alerts += (s >= DEFAULT_ALERT_THRESHOLD) as u64;
        }
        let el = start.elapsed().as_secs_f64();
        let cpu = match (cpu0, thread_cpu_ns()) {
            (Some(a), Some(b)) if b > a => format!("{:.0}", m as f64 / ((b - a) as f64 * 1e-9)),
            _ => "-".to_string(),
        };
        println!(
            "{:<20} {:>14.0} {:>14} {:>10.1} {:>12} {:>8}",
            name,
            m as f64 / el,
            cpu,
            el * 1e9 / m as f64,
            d.state_bytes(),
            black_box(alerts)
        );
    }
}
