//! Fleet benchmarks; prints tables for docs/BENCHMARKS.md.
//!
//! `cargo bench -p fieldline-tests --bench fleet` (build the binaries first:
//! `cargo build --release --workspace --bins`; FIELDLINE_BIN_DIR points elsewhere).
//!
//! 1. Ingest into Redis: records/s through the idempotent Lua script (the store
//!    call the HTTP handler makes) and through the whole HTTP path (CBOR, auth,
//!    validation), against raw pipelined `XADD` of the same fields measured with
//!    `redis-benchmark` on the same private redis-server in the same run.
//! 2. Heartbeats: N simulated agents (default 5,000) each heartbeating every 5 s
//!    against one fleet-server process; latency percentiles.
//!
//! Environment: BENCH_RECORDS (default 200000), BENCH_AGENTS (5000),
//! BENCH_DURATION_S (30), BENCH_INGEST_AGENTS (8), FIELDLINE_BIN_DIR.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fieldline_common::codec::{from_cbor, to_cbor};
use fieldline_common::wire::*;
use fieldline_fleet::store::redis::RedisStore;
use fieldline_fleet::store::{entry, Store};

const ADMIN: &str = "bench-admin-token-0123456789";
const BOOT: &str = "bench-bootstrap-token-0123456789";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn wait_port(port: u16) {
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end {
        // A socket connected to itself (simultaneous open on an ephemeral port) is
        // not a server.
        if std::net::TcpStream::connect(("127.0.0.1", port))
            .is_ok_and(|s| s.local_addr().ok() != s.peer_addr().ok())
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("port {port} never opened");
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bin(name: &str) -> PathBuf {
    if let Some(d) = std::env::var_os("FIELDLINE_BIN_DIR") {
        return PathBuf::from(d).join(name);
    }
    let exe = std::env::current_exe().expect("exe");
    exe.parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .join(name)
}

fn window(seq: u64) -> Record {
    Record {
        seq,
        created_ms: 1_700_000_000_000,
        body: RecordBody::Window(WindowResult {
            series: SeriesKey::new(format!("dev{}", seq % 10), "temp"),
            start_ms: seq as i64 * 1000,
            end_ms: seq as i64 * 1000 + 1000,
            count: 10,
            sum: 215.0,
            mean: 21.5,
            min: 20.5,
            max: 22.5,
            revision: 0,
            pipeline: "default".into(),
            aggregates: Default::default(),
            unit: String::new(),
        }),
    }
}

fn spawn_redis(dir: &std::path::Path) -> (Kill, u16) {
    let port = free_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server");
    wait_port(port);
    (Kill(child), port)
}

/// Raw pipelined XADD of the same 16 field/value pairs an ingested window has.
fn raw_xadd_rps(port: u16, n: u64) -> f64 {
    let sample = entry(&window(1));
    let mut args: Vec<String> = vec![
        "-p".into(),
        port.to_string(),
        "-n".into(),
        n.to_string(),
        "-P".into(),
        "100".into(),
        "-c".into(),
        "8".into(),
        "--csv".into(),
        "XADD".into(),
        "bench:raw".into(),
        "MAXLEN".into(),
        "~".into(),
        "1000000".into(),
        "*".into(),
        "agent".into(),
        "gw-bench".into(),
        "seq".into(),
        "1".into(),
    ];
    for (k, v) in sample.all_fields() {
        args.push(k.to_string());
        args.push(String::from_utf8_lossy(v).into_owned());
    }
    let out = Command::new("redis-benchmark")
        .args(&args)
        .output()
        .expect("redis-benchmark");
    let text = String::from_utf8_lossy(&out.stdout);
    // "test","rps",...  then  "XADD bench:raw ...","123456.78",...
    text.lines()
        .filter_map(|l| l.split("\",\"").nth(1))
        .filter_map(|v| v.trim_matches('"').parse::<f64>().ok())
        .next()
        .unwrap_or_else(|| panic!("cannot parse redis-benchmark output: {text}"))
}

async fn store_ingest_rps(url: &str, n: u64, agents: u64, batch: u64) -> f64 {
    let store = Arc::new(
        RedisStore::connect(url, 4, 1_000_000)
            .await
            .expect("connect"),
    );
    let per_agent = n / agents;
    let started = Instant::now();
    let tasks: Vec<_> = (0..agents)
        .map(|a| {
            let store = store.clone();
            tokio::spawn(async move {
                let agent = format!("gw-store-{a}");
                let mut seq = 0;
                while seq < per_agent {
                    let entries: Vec<_> = (seq + 1..=(seq + batch).min(per_agent))
                        .map(|s| entry(&window(s)))
                        .collect();
                    seq += entries.len() as u64;
                    store.ingest(&agent, &entries, 1).await.expect("ingest");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    (per_agent * agents) as f64 / started.elapsed().as_secs_f64()
}

async fn http_ingest_rps(base: &str, n: u64, agents: u64, batch: u64) -> f64 {
    let http = reqwest::Client::new();
    let mut creds = Vec::new();
    for a in 0..agents {
        creds.push(enroll(&http, base, &format!("gw-http-{a}")).await);
    }
    let per_agent = n / agents;
    let started = Instant::now();
    let tasks: Vec<_> = creds
        .into_iter()
        .enumerate()
        .map(|(a, cred)| {
            let (http, base) = (http.clone(), base.to_string());
            tokio::spawn(async move {
                let agent = format!("gw-http-{a}");
                let mut seq = 0;
                while seq < per_agent {
                    let records: Vec<_> = (seq + 1..=(seq + batch).min(per_agent))
                        .map(window)
                        .collect();
                    seq += records.len() as u64;
                    let body = to_cbor(&IngestBatch {
                        v: PROTOCOL_VERSION,
                        agent_id: agent.clone(),
                        records,
                    })
                    .expect("cbor");
                    let r = http
                        .post(format!("{base}/api/v1/ingest"))
                        .bearer_auth(&cred)
                        .header("content-type", "application/cbor")
                        .body(body)
                        .send()
                        .await
                        .expect("ingest");
                    assert!(r.status().is_success(), "{}", r.status());
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    (per_agent * agents) as f64 / started.elapsed().as_secs_f64()
}

async fn enroll(http: &reqwest::Client, base: &str, agent: &str) -> String {
    let body = to_cbor(&EnrollRequest {
        v: PROTOCOL_VERSION,
        agent_id: agent.into(),
        version: "bench".into(),
    })
    .expect("cbor");
    let r = http
        .post(format!("{base}/api/v1/enroll"))
        .bearer_auth(BOOT)
        .header("content-type", "application/cbor")
        .body(body)
        .send()
        .await
        .expect("enroll");
    assert!(r.status().is_success(), "enroll {}", r.status());
    from_cbor::<EnrollReply>(&r.bytes().await.expect("body"), 1 << 20)
        .expect("reply")
        .credential
}

fn spawn_fleet(args: &[&str], dir: &std::path::Path) -> (Kill, String) {
    let port = free_port();
    let log = std::fs::File::create(dir.join(format!("fleet-{port}.log"))).expect("log");
    let child = Command::new(bin("fieldline-fleet"))
        .args(["run", "--listen", &format!("127.0.0.1:{port}")])
        .args(args)
        .env("FIELDLINE_ADMIN_TOKEN", ADMIN)
        .env("FIELDLINE_BOOTSTRAP_TOKEN", BOOT)
        .env("FIELDLINE_LOG", "warn")
        .stderr(log)
        .spawn()
        .expect("fieldline-fleet (build it: cargo build --release --workspace --bins)");
    wait_port(port);
    (Kill(child), format!("http://127.0.0.1:{port}"))
}

async fn heartbeat_latencies(
    base: &str,
    agents: u64,
    interval: Duration,
    duration: Duration,
) -> Vec<Duration> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(usize::MAX)
        .build()
        .expect("client");
    let mut creds = Vec::new();
    for a in 0..agents {
        creds.push(enroll(&http, base, &format!("gw-hb-{a}")).await);
    }
    let end = Instant::now() + duration;
    let tasks: Vec<_> = creds
        .into_iter()
        .enumerate()
        .map(|(a, cred)| {
            let (http, base) = (http.clone(), base.to_string());
            tokio::spawn(async move {
                let agent = format!("gw-hb-{a}");
                // Spread the fleet over the interval, as real agents are.
                tokio::time::sleep(interval.mul_f64(a as f64 / agents as f64)).await;
                let mut lat = Vec::new();
                while Instant::now() < end {
                    let hb = Heartbeat {
                        v: PROTOCOL_VERSION,
                        agent_id: agent.clone(),
                        version: "bench".into(),
                        started_ms: 1,
                        sent_ms: 2,
                        counters: AgentCounters::default(),
                    };
                    let body = to_cbor(&hb).expect("cbor");
                    let t = Instant::now();
                    let r = http
                        .post(format!("{base}/api/v1/heartbeat"))
                        .bearer_auth(&cred)
                        .header("content-type", "application/cbor")
                        .body(body)
                        .send()
                        .await;
                    if let Ok(r) = r {
                        if r.status().is_success() && r.bytes().await.is_ok() {
                            lat.push(t.elapsed());
                        }
                    }
                    tokio::time::sleep(interval.saturating_sub(t.elapsed())).await;
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    all.sort();
    all
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn main() {
    // reqwest is built with rustls and no bundled provider (ring is the project's).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let records = env_u64("BENCH_RECORDS", 200_000);
    let agents = env_u64("BENCH_AGENTS", 5_000);
    let duration = Duration::from_secs(env_u64("BENCH_DURATION_S", 30));
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let (_redis, port) = spawn_redis(dir.path());
    let url = format!("redis://127.0.0.1:{port}/");
    let writers = env_u64("BENCH_INGEST_AGENTS", 8);
    let raw = raw_xadd_rps(port, records);
    let store = rt.block_on(store_ingest_rps(&url, records, writers, 500));
    let (_fleet, base) = spawn_fleet(&["--redis-url", &url, "--no-workers"], dir.path());
    let http = rt.block_on(http_ingest_rps(&base, records, writers, 500));
    println!("\n## Ingest into Redis ({records} records of 16 fields; redis-server on loopback, same run)\n");
    println!("| path | records/s | ratio to raw XADD |");
    println!("|---|---:|---:|");
    println!("| raw pipelined XADD (`redis-benchmark -P 100 -c 8`) | {raw:.0} | 1.00 |");
    println!(
        "| idempotent Lua ingest, {writers} agents × batches of 500 (store call) | {store:.0} | {:.2} |",
        store / raw
    );
    println!("| HTTP CBOR ingest, {writers} agents × batches of 500 (auth, validation, Lua) | {http:.0} | {:.2} |", http / raw);

    for (name, args) in [
        (
            "embedded store",
            vec![
                "--data-dir".to_string(),
                dir.path().join("hb-store").display().to_string(),
            ],
        ),
        ("Redis", vec!["--redis-url".to_string(), url.clone()]),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (_fleet, base) = spawn_fleet(&args, dir.path());
        let lat = rt.block_on(heartbeat_latencies(
            &base,
            agents,
            Duration::from_secs(5),
            duration,
        ));
        println!(
            "\n## Heartbeats: {agents} agents every 5 s for {}s, one fleet server ({name})\n",
            duration.as_secs()
        );
        println!("| heartbeats | p50 ms | p90 ms | p99 ms | max ms |");
        println!("|---:|---:|---:|---:|---:|");
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            lat.len(),
            pct(&lat, 0.5),
            pct(&lat, 0.9),
            pct(&lat, 0.99),
            pct(&lat, 1.0)
        );
    }
}
