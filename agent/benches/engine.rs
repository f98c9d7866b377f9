//! Throughput of decode → window → aggregate, in process, one core.
//!
//! 10,000 series (1,000 devices × 10 metrics), one reading per series per second of
//! event time, two pipelines side by side: a 10 s tumbling window and a 30 s window
//! sliding every 10 s (each reading lands in 1 + 3 windows), every aggregate on
//! (count … rate, p50/p90/p95/p99 from the sketch). Watermarks are emitted every
//! 1,000 messages, as the live loop does per batch. Payloads are CBOR or JSON
//! objects `{"value", "ts"}`.
//!
//! `cargo bench -p fieldline-agent --bench engine`; numbers in docs/BENCHMARKS.md.

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use fieldline_agent::broker::Message;
use fieldline_agent::counters::Counters;
use fieldline_agent::pipeline::Pipeline;
use fieldline_common::config::pipeline::{default_pipeline, Aggregate, WindowSpec};
use fieldline_common::config::WindowConfig;
use fieldline_common::topic::TopicTemplate;

const DEVICES: usize = 1_000;
const METRICS: usize = 10;
const SECONDS: i64 = 20;
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

fn messages(json: bool) -> Vec<Message> {
    let mut out = Vec::with_capacity(DEVICES * METRICS * SECONDS as usize);
    let mut x = 1u64;
    for s in 0..SECONDS {
        for d in 0..DEVICES {
            for m in 0..METRICS {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
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

fn run(p: &mut Pipeline, msgs: &[Message]) -> usize {
    let mut out = Vec::new();
    let mut records = 0;
    for (i, m) in msgs.iter().enumerate() {
        p.handle(m, &mut out);
        if i % 1000 == 999 {
            p.advance(m.arrival_ms, &mut out);
            records += out.len();
            out.clear();
        }
    }
    records + out.len()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_window_aggregate_10k_series");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    for (name, json) in [("cbor", false), ("json", true)] {
        let msgs = messages(json);
        {
            let mut p = pipeline();
            let records = run(&mut p, &msgs);
            let st = p.stats();
            assert_eq!(st.late_dropped, 0);
            assert!(records > 0);
            eprintln!(
                "{name}: {} readings, {records} records, state {} bytes = {} bytes per series ({} open windows per series over both pipelines)",
                msgs.len(),
                p.state_bytes(),
                p.state_bytes() / (DEVICES * METRICS),
                p.jobs().len() + 2,
            );
        }
        {
            // Where the time goes, one pass each (not a statistic; criterion below is).
            let p = pipeline();
            let t = std::time::Instant::now();
            let decoded: Vec<_> = msgs.iter().map(|m| p.decode(m).expect("decodes")).collect();
            let decode = t.elapsed();
            let mut p = pipeline();
            let mut out = Vec::new();
            let t = std::time::Instant::now();
            for (i, (m, rs)) in msgs.iter().zip(&decoded).enumerate() {
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
                "{name}: decode {:.0} ns/reading, windows+aggregates (2 pipelines) {:.0} ns/reading",
                decode.as_nanos() as f64 / msgs.len() as f64,
                engine.as_nanos() as f64 / msgs.len() as f64
            );
        }
        g.throughput(Throughput::Elements(msgs.len() as u64));
        g.bench_function(name, |b| {
            b.iter_batched(
                pipeline,
                |mut p| run(&mut p, &msgs),
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
