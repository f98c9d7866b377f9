//! Detectors attached to a pipeline (`detect/attach.rs`): readings/s through the
//! per-series detector state, state bytes per series, snapshot size and time
//! (numbers in docs/BENCHMARKS.md).
//!
//!     cargo bench -p fieldline-agent --bench attach_bench [-- SERIES POINTS]
//!
//! SERIES (default 1,000) series × POINTS (default 1,000) readings each, round robin,
//! one config with four simple detectors, one with the general detector and one with
//! the general detector without its novelty test. Single
//! thread; plain `main`: the number that matters is sustained readings/s.

use std::hint::black_box;
use std::time::Instant;

use fieldline_agent::detect::attach::Attached;
use fieldline_common::config::AgentConfig;
use fieldline_common::payload::Reading;
use fieldline_common::wire::SeriesKey;

#[path = "util/cpu.rs"]
mod cpu;

const SIMPLE: &str = r#"
[[pipeline.detector]]
kind = "zscore"
window = 120
[[pipeline.detector]]
kind = "ewma"
[[pipeline.detector]]
kind = "flat_line"
[[pipeline.detector]]
kind = "missing_data"
expected_interval = "1m"
"#;

const GENERAL: &str = "detectors = [\"general\"]";

/// The general detector without its (level, time of day) novelty test: the lean
/// option for gateways with many series (about half the state).
const GENERAL_LEAN: &str = r#"
[[pipeline.detector]]
kind = "general"
novelty_prototypes = 0
"#;

fn main() {
    let nums: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let series = nums.first().copied().unwrap_or(1_000);
    let points = nums.get(1).copied().unwrap_or(1_000);
    let keys: Vec<SeriesKey> = (0..series)
        .map(|i| SeriesKey::new(format!("dev{:05}", i / 4), format!("m{}", i % 4)))
        .collect();
    let mut st: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move || {
        st ^= st >> 12;
        st ^= st << 25;
        st ^= st >> 27;
        (st.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    };
    let values: Vec<f64> = (0..series * points)
        .map(|_| 50.0 + (next() - 0.5) * 4.0 + if next() < 1e-4 { 20.0 } else { 0.0 })
        .collect();
    println!("{series} series x {points} points, single thread");
    println!(
        "{:<28} {:>14} {:>16} {:>10} {:>18} {:>14} {:>12} {:>12} {:>12} {:>8}",
        "detectors",
        "readings/s",
        "readings/cpu-s",
        "ns/read",
        "state B/series",
        "snapshot B",
        "snapshot ms",
        "restore ms",
        "advance us",
        "alerts"
    );
    for (name, detectors) in [
        ("4 simple (zscore w=120 ...)", SIMPLE),
        ("general", GENERAL),
        ("general, novelty off", GENERAL_LEAN),
    ] {
        let text = format!(
            "[agent]\nid = \"b\"\n[[pipeline]]\nname = \"p\"\nwindow = {{ kind = \"tumbling\", size = \"1m\" }}\n{detectors}"
        );
        let cfg = AgentConfig::from_toml("bench.toml", &text, Vec::new()).expect("config");
        let mut a = Attached::new(&cfg.pipelines[0]);
        let mut out = Vec::new();
        let mut alerts = 0usize;
        let cpu0 = cpu::thread_cpu_ns();
        let start = Instant::now();
        for p in 0..points {
            for (s, key) in keys.iter().enumerate() {
                let r = Reading {
                    series: key.clone(),
                    ts_ms: 1_700_000_000_000 + p as i64 * 60_000,
                    value: values[p * series + s],
                };
                a.process(black_box(&r), &mut out);
                alerts += out.len();
                out.clear();
            }
        }
        let el = start.elapsed().as_secs_f64();
        let n = (series * points) as f64;
        let per_cpu = match (cpu0, cpu::thread_cpu_ns()) {
            (Some(a), Some(b)) if b > a => format!("{:.0}", n / ((b - a) as f64 * 1e-9)),
            _ => "-".to_string(),
        };
        // The gap check runs on every engine tick over every series with a
        // missing_data detector (one minute after the last reading: no alert).
        let last = 1_700_000_000_000 + (points as i64 - 1) * 60_000;
        let t = Instant::now();
        for k in 0..100 {
            a.advance(last + 1_000 + k, &mut out);
        }
        let advance_us = t.elapsed().as_secs_f64() * 1e6 / 100.0;
        out.clear();
        let t = Instant::now();
        let snap = a.snapshot();
        let snap_ms = t.elapsed().as_secs_f64() * 1e3;
        let mut b = Attached::new(&cfg.pipelines[0]);
        let t = Instant::now();
        let fresh = b.restore(&snap).expect("restore");
        let restore_ms = t.elapsed().as_secs_f64() * 1e3;
        println!(
            "{:<28} {:>14.0} {:>16} {:>10.1} {:>18} {:>14} {:>12.1} {:>12.1} {:>12.1} {:>8}{}",
            name,
            n / el,
            per_cpu,
            el * 1e9 / n,
            a.state_bytes() / series,
            snap.len(),
            snap_ms,
            restore_ms,
            advance_us,
            alerts,
            if fresh > 0 {
                format!("  ({fresh} detectors not restorable)")
            } else {
                String::new()
            }
        );
    }
}
