//! Throughput of decode → window → aggregate → records out, in process, one core.
//!
//! 10,000 series (1,000 devices × 10 metrics), one reading per series per second of
//! event time, interleaved across series as a gateway receives them (every device's
//! metrics each second, up to 1 s out of order within the 2 s bound), two pipelines
//! side by side: a 10 s tumbling window and a 30 s window sliding every 10 s (each
//! reading lands in 1 + 3 windows), every aggregate on (count … rate,
//! p50/p90/p95/p99 from the sketch). Watermarks are emitted every 1,000 messages, as
//! the live loop does per batch, so windows close and results are emitted while
//! readings keep arriving.
//!
//! **Steady state**: each iteration starts from an engine that has already seen
//! `WARM_S` seconds (every series known, every window kind open, untimed), then
//! times `MEASURE_S` further seconds: 300,000 readings, 60,000 window results.
//!
//! ```text
//! cargo bench -p fieldline-agent --bench engine
//! # load-independent counts: instructions per reading = difference of two runs
//! ENGINE_PROFILE=cbor:20 perf stat -e instructions,cache-misses target/release/deps/engine-*
//! ENGINE_PROFILE=cbor:60 perf stat -e instructions,cache-misses target/release/deps/engine-*
//! ```
//! Numbers in docs/BENCHMARKS.md.

use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput};
use fieldline_agent::broker::Message;
use fieldline_agent::counters::Counters;
use fieldline_agent::pipeline::Pipeline;
use fieldline_common::config::pipeline::{default_pipeline, Aggregate, WindowSpec};
use fieldline_common::config::WindowConfig;
use fieldline_common::topic::TopicTemplate;
use fieldline_common::wire::RecordBody;

const DEVICES: usize = 1_000;
const METRICS: usize = 10;
const SERIES: usize = DEVICES * METRICS;
const WARM_S: i64 = 30;
const MEASURE_S: i64 = 30;
const T0: i64 = 1_732_200_000_000;

fn pipeline() -> Pipeline {
    let window = WindowConfig {
        size: Duration::from_secs(10),
        max_out_of_orderness: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(30),
        max_future: Duration::from_secs(60),
    };
    let mut tumbling = default_pipeline(&window);
    tumbling.name = "tumbling".into();
    tumbling.aggregates = Aggregate::all();
    let mut sliding = tumbling.clone();
    sliding.name = "sliding".into();
    sliding.window = WindowSpec::Sliding {
        size_ms: 30_000,
        slide_ms: 10_000,
    };
    Pipeline::with_pipelines(
        TopicTemplate::parse("sensors/{device}/{metric}").expect("template"),
        &window,
        &[tumbling, sliding],
        Arc::new(Counters::default()),
    )
}

fn cbor(value: f64, ts: i64) -> Vec<u8> {
    let mut b = vec![0xa2, 0x65];
    b.extend_from_slice(b"value");
    b.push(0xfb);
    b.extend_from_slice(&value.to_be_bytes());
    b.extend_from_slice(&[0x62, b't', b's', 0x1b]);
    b.extend_from_slice(&(ts as u64).to_be_bytes());
    b
}

/// Seconds `from..to` of event time, every series once per second.
fn messages(json: bool, from: i64, to: i64) -> Vec<Message> {
    let mut out = Vec::with_capacity(SERIES * (to - from) as usize);
    let mut x = 1u64.wrapping_add(from as u64);
    for s in from..to {
        for d in 0..DEVICES {
            for m in 0..METRICS {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                // A sensor drifting in a narrow range, as temperatures do.
                let value = 20.0 + (x >> 40) as f64 / 1e6;
                // Up to 1 s out of order, within the 2 s bound.
                let ts = T0 + s * 1000 + (x >> 54) as i64;
                let payload = if json {
                    format!(r#"{{"value":{value},"ts":{ts}}}"#).into_bytes()
                } else {
                    cbor(value, ts)
                };
                out.push(Message {
                    topic: format!("sensors/dev{d}/m{m}"),
                    payload,
                    arrival_ms: T0 + s * 1000 + 1000,
                });
            }
        }
    }
    out
}

/// Feeds `msgs` as the live loop does (watermarks every 1,000 messages); returns the
/// number of window results emitted.
fn run(p: &mut Pipeline, msgs: &[Message], out: &mut Vec<RecordBody>) -> usize {
    let mut records = 0;
    for (i, m) in msgs.iter().enumerate() {
        p.handle(m, out);
        if i % 1000 == 999 {
            p.advance(m.arrival_ms, out);
            records += out
                .iter()
                .filter(|r| matches!(r, RecordBody::Window(_)))
                .count();
            out.clear();
        }
    }
    records + out.len()
}

struct Input {
    warm: Vec<Message>,
    measured: Vec<Message>,
}

impl Input {
    fn new(json: bool, measure_s: i64) -> Self {
        Self {
            warm: messages(json, 0, WARM_S),
            measured: messages(json, WARM_S, WARM_S + measure_s),
        }
    }

    fn warm_pipeline(&self) -> Pipeline {
        let mut p = pipeline();
        run(&mut p, &self.warm, &mut Vec::new());
        p
    }
}

/// What one steady-state pass does and holds, printed next to criterion's numbers.
fn describe(name: &str, input: &Input) {
    let mut p = input.warm_pipeline();
    let (before, t) = (p.stats(), std::time::Instant::now());
    let records = run(&mut p, &input.measured, &mut Vec::new());
    let elapsed = t.elapsed();
    let st = p.stats();
    assert_eq!(
        st.late_dropped, 0,
        "the arrival order stays within the bound"
    );
    assert_eq!(
        st.windows_emitted - before.windows_emitted,
        records as u64,
        "every emitted window reached the output"
    );
    let n = input.measured.len();
    // 3 tumbling + 3 sliding windows end in 30 s, for every series.
    assert_eq!(records, 6 * SERIES, "windows close while readings arrive");
    let open: usize = p.jobs().iter().map(|j| j.open_windows()).sum();
    eprintln!(
        "{name}: {n} readings → {records} window results; one pass {:.0} ns/reading; \
         state {} bytes = {} bytes per series over both pipelines ({:.1} windows open per series)",
        elapsed.as_nanos() as f64 / n as f64,
        p.state_bytes(),
        p.state_bytes() / SERIES,
        open as f64 / SERIES as f64,
    );
    for j in p.jobs() {
        eprintln!(
            "  {}: {} bytes per series, {:.1} windows open per series",
            j.name(),
            j.state_bytes() / SERIES,
            j.open_windows() as f64 / SERIES as f64
        );
    }

    // Where the time goes, one pass each (not a statistic; criterion below is).
    let t = std::time::Instant::now();
    let decoded: Vec<_> = input
        .measured
        .iter()
        .map(|m| p.decode(m).expect("decodes"))
        .collect();
    let decode = t.elapsed();
    let mut p = input.warm_pipeline();
    let mut out = Vec::new();
    let t = std::time::Instant::now();
    for (i, (m, rs)) in input.measured.iter().zip(&decoded).enumerate() {
        for r in rs {
            p.process(r, m.arrival_ms, &mut out);
        }
        if i % 1000 == 999 {
            p.advance(m.arrival_ms, &mut out);
            out.clear();
        }
    }
    let engine = t.elapsed();
    eprintln!(
        "{name}: decode {:.0} ns/reading, windows+aggregates+results (2 pipelines) {:.0} ns/reading",
        decode.as_nanos() as f64 / n as f64,
        engine.as_nanos() as f64 / n as f64
    );
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_window_aggregate_10k_series");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    for (name, json) in [("cbor", false), ("json", true)] {
        let input = Input::new(json, MEASURE_S);
        describe(name, &input);
        g.throughput(Throughput::Elements(input.measured.len() as u64));
        g.bench_function(name, |b| {
            let mut out = Vec::new();
            b.iter_batched(
                || input.warm_pipeline(),
                |mut p| run(&mut p, &input.measured, &mut out),
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

/// `ENGINE_PROFILE=cbor:SECONDS` (or `json:…`): warm up, then one pass over SECONDS
/// (≤ 60) of readings, no criterion. For `perf stat` / callgrind: the input is always
/// generated for 60 s, so two runs with different SECONDS differ only by the readings
/// processed, and their difference per reading is free of setup and warm-up.
fn profile(spec: &str) {
    let (kind, secs) = spec.split_once(':').unwrap_or((spec, "30"));
    let secs: usize = secs.parse().expect("ENGINE_PROFILE=cbor:SECONDS");
    let input = Input::new(kind == "json", 60);
    let mut p = input.warm_pipeline();
    let measured = &input.measured[..(secs * SERIES).min(input.measured.len())];
    let records = run(&mut p, measured, &mut Vec::new());
    eprintln!("{kind}: {} readings, {records} results", measured.len());
}

fn main() {
    if let Ok(spec) = std::env::var("ENGINE_PROFILE") {
        return profile(&spec);
    }
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
