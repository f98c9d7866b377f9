//! Costs the web UI adds to the fleet server (numbers in docs/BENCHMARKS.md).
//!
//!     cargo bench -p fieldline-fleet --bench ui
//!
//! 1. The live hub on the ingest path: `Hub::ingested` for a batch of 1,000 window
//!    results over 100 series (what one agent batch costs in addition to the store
//!    write), without and with one SSE subscriber attached.
//! 2. A session check (`Sessions::authorize`: cookie parse, SHA-256, map lookup, CSRF
//!    comparison), paid by every UI request.
//! 3. A login (`Sessions::login` on the embedded store: Argon2id verification with the
//!    default parameters, 19 MiB, 2 passes), sequential.
//!
//! Plain `main`: each figure is the median of 5 runs of many iterations.

use std::hint::black_box;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Method};
use fieldline_common::wire::{Record, RecordBody, SeriesKey, WindowResult};
use fieldline_fleet::store::embedded::SledStore;
use fieldline_fleet::ui::events::Hub;
use fieldline_fleet::ui::session::{self, Sessions, COOKIE, CSRF_HEADER};

fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

fn batch(first_seq: u64, n: u64) -> Vec<Record> {
    (0..n)
        .map(|i| {
            let seq = first_seq + i;
            Record {
                seq,
                created_ms: 0,
                body: RecordBody::Window(WindowResult {
                    series: SeriesKey::new(format!("dev{}", i % 100), "temp"),
                    start_ms: seq as i64 * 1000,
                    end_ms: seq as i64 * 1000 + 1000,
                    count: 10,
                    sum: 215.0,
                    mean: 21.5,
                    min: 20.0,
                    max: 23.0,
                    revision: 0,
                    pipeline: Default::default(),
                    aggregates: Default::default(),
                    unit: String::new(),
                }),
            }
        })
        .collect()
}

fn main() {
    let batches: Vec<_> = (0..200).map(|b| batch(b * 1000 + 1, 1000)).collect();
    for subscribed in [false, true] {
        let hub = Hub::default();
        let mut rx = subscribed.then(|| hub.subscribe());
        let runs = (0..5)
            .map(|_| {
                let t = Instant::now();
                for b in &batches {
                    hub.ingested("gw-bench", black_box(b), 0);
                    // Drain like a connected page would, so the channel does not lag.
                    if let Some(rx) = rx.as_mut() {
                        while rx.try_recv().is_ok() {}
                    }
                }
                t.elapsed() / batches.len() as u32
            })
            .collect();
        let per_batch = median(runs);
        println!(
            "hub.ingested, 1,000 window results over 100 series, {}: {per_batch:?} per batch ({:.0} ns per record)",
            if subscribed { "one SSE subscriber" } else { "no subscriber" },
            per_batch.as_nanos() as f64 / 1000.0
        );
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path(), 1000).expect("store");
    let sessions = Sessions::new(Duration::from_secs(3600), false).expect("sessions");
    let password = "correct horse battery staple";
    rt.block_on(session::add_account(&store, "bench", password, false, 0))
        .expect("account");
    let (id, s) = rt
        .block_on(sessions.login(&store, "bench", password))
        .expect("login")
        .expect("logged in");
    let mut headers = HeaderMap::new();
    headers.insert(
        "cookie",
        format!("theme=dark; {COOKIE}={id}")
            .parse()
            .expect("header"),
    );
    headers.insert(CSRF_HEADER, s.csrf.parse().expect("header"));
    let n = 200_000u32;
    let runs = (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..n {
                black_box(sessions.authorize(black_box(&headers), &Method::POST)).expect("ok");
            }
            t.elapsed() / n
        })
        .collect();
    println!(
        "session check (cookie + CSRF): {:?} per request",
        median(runs)
    );

    let n = 10u32;
    let runs = (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..n {
                rt.block_on(sessions.login(&store, "bench", password))
                    .expect("login")
                    .expect("logged in");
            }
            t.elapsed() / n
        })
        .collect();
    println!(
        "login (Argon2id verify, embedded store): {:?}",
        median(runs)
    );
}
