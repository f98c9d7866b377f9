//! Durable state: outbox appends/s, bytes written per ingested reading (flash wear),
//! and time from start to processing with a 1,000,000-record outbox backlog.
//! Numbers in docs/BENCHMARKS.md.
//!
//!     cargo bench -p fieldline-agent --bench outbox [-- RECORDS]   (default 1_000_000)
//!
//! Plain `main` rather than criterion: what matters is sustained throughput and
//! one-off start-up time on a real file system, not per-call latency. Bytes written
//! come from /proc/self/io (`write_bytes`: what reached the block layer; `wchar`:
//! what was handed to write(2)); the benchmark does no other IO while measuring.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fieldline_agent::broker::Message;
use fieldline_agent::counters::Counters;
use fieldline_agent::ingest::{IngestSettings, Processor};
use fieldline_agent::outbox::{Bounds, Outbox};
use fieldline_agent::pipeline::Pipeline;
use fieldline_agent::state::{Footprint, Store, StoreOptions};
use fieldline_common::config::{Durability, WindowConfig};
use fieldline_common::topic::TopicTemplate;
use fieldline_common::wire::{RecordBody, SeriesKey, WindowResult};

fn opts() -> StoreOptions {
    // The gateway default: 16 MiB cache, 500 ms background flush.
    StoreOptions::default()
}

fn window(i: u64) -> RecordBody {
    RecordBody::Window(WindowResult {
        series: SeriesKey::new(format!("dev{}", i % 1000), "temp"),
        start_ms: 1_732_000_000_000 + (i as i64) * 1000,
        end_ms: 1_732_000_001_000 + (i as i64) * 1000,
        count: 10,
        sum: 215.5,
        mean: 21.55,
        min: 20.0,
        max: 23.0,
        revision: 0,
        pipeline: Default::default(),
        aggregates: Default::default(),
        unit: String::new(),
    })
}

fn pipeline(counters: &Arc<Counters>) -> Pipeline {
    Pipeline::new(
        TopicTemplate::parse("sensors/{device}/{metric}").expect("template"),
        &WindowConfig {
            size: Duration::from_secs(10),
            max_out_of_orderness: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(5),
            max_future: Duration::from_secs(60),
        },
        counters.clone(),
    )
}

fn processor(store: &Store, durability: Durability) -> Processor {
    let outbox = Arc::new(Outbox::open(store, Bounds::default()).expect("outbox"));
    let counters = Arc::new(Counters::default());
    Processor::open(
        pipeline(&counters),
        store,
        outbox,
        counters,
        IngestSettings {
            durability,
            checkpoint_interval: Duration::from_secs(30),
            forward_raw: false,
            publisher: None,
        },
    )
    .expect("processor")
    .0
}

fn appends(dir: &Path, batch: usize, records: u64) {
    let store = Store::open(dir, &opts()).expect("store");
    let outbox = Outbox::open(&store, Bounds::default()).expect("outbox");
    let t = Instant::now();
    let mut i = 0;
    while i < records {
        outbox
            .append((i..i + batch as u64).map(window).collect(), 0)
            .expect("append");
        i += batch as u64;
    }
    store.flush().expect("flush");
    let s = t.elapsed().as_secs_f64();
    println!(
        "outbox appends, batches of {batch:>4}: {:>9.0} records/s ({records} records, {:.2} s, flushed)",
        records as f64 / s,
        s
    );
}

fn wear(dir: &Path, durability: Durability, readings: u64, batch: u64) {
    let store = Store::open(dir, &opts()).expect("store");
    let mut p = processor(&store, durability);
    let before = Footprint::read();
    let t = Instant::now();
    let mut now = 1_732_000_000_000i64;
    let mut n = 0;
    while n < readings {
        // 100 series, one reading each per second of event time.
        let msgs: Vec<Message> = (n..n + batch)
            .map(|i| Message {
                topic: format!("sensors/dev{}/temp", i % 100),
                payload: format!(r#"{{"value": {}.5, "ts": {now}}}"#, i % 40).into_bytes(),
                arrival_ms: now,
            })
            .collect();
        p.ingest(&msgs, now).expect("ingest");
        n += batch;
        if n % 100 == 0 {
            now += 1000;
        }
        if n % 20_000 == 0 {
            p.checkpoint("auto", now).expect("checkpoint");
        }
    }
    store.flush().expect("flush");
    let s = t.elapsed().as_secs_f64();
    let after = Footprint::read();
    let disk = after.disk_write_bytes - before.disk_write_bytes;
    let calls = after.write_call_bytes - before.write_call_bytes;
    println!(
        "ingest {durability:?}, batches of {batch:>3}: {:>8.0} readings/s; per reading: {:.0} B to disk (write_bytes), {:.0} B written (wchar); store {} MiB; RSS {} MiB",
        readings as f64 / s,
        disk as f64 / readings as f64,
        calls as f64 / readings as f64,
        store.size_on_disk() / (1 << 20),
        after.rss_bytes / (1 << 20),
    );
}

fn backlog_start(dir: &Path, records: u64) {
    {
        let store = Store::open(dir, &opts()).expect("store");
        let outbox = Outbox::open(&store, Bounds::default()).expect("outbox");
        let mut i = 0;
        while i < records {
            outbox
                .append((i..i + 1000).map(window).collect(), 0)
                .expect("append");
            i += 1000;
        }
        // Leave an ingest-log tail to replay, as after a crash.
        let mut p = processor(&store, Durability::Interval);
        p.checkpoint("auto", 0).expect("checkpoint");
        for b in 0..50 {
            let msgs: Vec<Message> = (0..100)
                .map(|i| Message {
                    topic: format!("sensors/dev{i}/temp"),
                    payload: format!(
                        r#"{{"value": 1, "ts": {}}}"#,
                        1_732_000_000_000i64 + b * 100
                    )
                    .into_bytes(),
                    arrival_ms: 1_732_000_000_000 + b * 100,
                })
                .collect();
            p.ingest(&msgs, 1_732_000_000_000 + b * 100)
                .expect("ingest");
        }
        store.flush().expect("flush");
    }
    // Start in a fresh process, so its RSS is what an agent starting on this store
    // would have (this one still holds everything it built).
    std::thread::sleep(Duration::from_millis(500));
    let status = std::process::Command::new(std::env::current_exe().expect("exe"))
        .arg("--start-only")
        .arg(dir)
        .status()
        .expect("start child");
    assert!(status.success());
}

fn start_only(dir: &Path) {
    let t = Instant::now();
    let store = Store::open(dir, &opts()).expect("store");
    let opened = t.elapsed();
    let mut p = processor(&store, Durability::Interval);
    let recovered = t.elapsed();
    let msg = Message {
        topic: "sensors/new/temp".into(),
        payload: b"21.5".to_vec(),
        arrival_ms: 1_732_000_100_000,
    };
    p.ingest(&[msg], 1_732_000_100_000).expect("ingest");
    let first = t.elapsed();
    let backlog = p.outbox().len();
    let peek = Instant::now();
    let batch = p.outbox().peek(500).expect("peek");
    println!(
        "start with a backlog of {backlog} records: sled open {:.0} ms, recovery (checkpoint + 5,000-reading replay) done at {:.0} ms, first new reading processed at {:.0} ms; first uplink batch of {} read in {:.0} ms; RSS {} MiB; store {} MiB",
        opened.as_secs_f64() * 1e3,
        recovered.as_secs_f64() * 1e3,
        first.as_secs_f64() * 1e3,
        batch.len(),
        peek.elapsed().as_secs_f64() * 1e3,
        Footprint::read().rss_bytes / (1 << 20),
        store.size_on_disk() / (1 << 20),
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--start-only") {
        start_only(Path::new(&args[i + 1]));
        return;
    }
    let records: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let root =
        tempfile::tempdir_in(std::env::var_os("FIELDLINE_BENCH_DIR").unwrap_or_else(|| ".".into()))
            .expect("tempdir");
    println!("store in {} (cache 16 MiB)", root.path().display());
    appends(&root.path().join("a1"), 1, 20_000);
    appends(&root.path().join("a100"), 100, 200_000);
    appends(&root.path().join("a1000"), 1000, 500_000);
    wear(&root.path().join("w1"), Durability::Interval, 200_000, 100);
    wear(&root.path().join("w2"), Durability::BatchFsync, 50_000, 100);
    wear(&root.path().join("w3"), Durability::BatchFsync, 20_000, 10);
    backlog_start(&root.path().join("b"), records);
}
