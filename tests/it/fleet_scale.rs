//! Scale-out: two fleet-server processes on one Redis share ingest and the
//! global-state workers; one is killed with SIGKILL mid-stream. Agents (HTTP
//! clients speaking the real protocol, behind a round-robin "load balancer") retry
//! a failed batch on the other server, as the agent's uplink does. Nothing may be
//! lost or duplicated, in the streams or in the global state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fieldline_common::codec::{from_cbor, to_cbor};
use fieldline_common::wire::*;

use crate::harness::*;
use crate::ingest_api::enroll;

const AGENTS: usize = 6;
const RECORDS: u64 = 600;
const BATCH: u64 = 20;

fn window(seq: u64) -> Record {
    Record {
        seq,
        created_ms: 1,
        body: RecordBody::Window(WindowResult {
            series: SeriesKey::new("dev", format!("m{}", seq % 3)),
            start_ms: seq as i64 * 1000,
            end_ms: seq as i64 * 1000 + 1000,
            count: 1,
            sum: seq as f64,
            mean: seq as f64,
            min: seq as f64,
            max: seq as f64,
            revision: 0,
            pipeline: Default::default(),
            aggregates: Default::default(),
            unit: String::new(),
        }),
    }
}

/// Sends `RECORDS` records in batches, alternating servers; a failed batch is
/// resent to the next server until it is acknowledged.
fn run_agent(agent: String, credential: String, urls: Vec<String>, sent: Arc<AtomicU64>) {
    let http = http_builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let mut next = 0usize;
    let mut seq = 0u64;
    while seq < RECORDS {
        let records: Vec<Record> = (seq + 1..=(seq + BATCH).min(RECORDS)).map(window).collect();
        let last = records.last().expect("records").seq;
        let body = to_cbor(&IngestBatch {
            v: PROTOCOL_VERSION,
            agent_id: agent.clone(),
            records,
        })
        .expect("encode");
        loop {
            let url = &urls[next % urls.len()];
            next += 1;
            let resp = http
                .post(format!("{url}/api/v1/ingest"))
                .bearer_auth(&credential)
                .header("content-type", "application/cbor")
                .body(body.clone())
                .send();
            match resp {
                Ok(r) if r.status().is_success() => {
                    let ack: IngestAck =
                        from_cbor(&r.bytes().expect("body"), 1 << 20).expect("ack");
                    assert!(
                        ack.acked_seq >= last,
                        "{agent}: acked {} < {last}",
                        ack.acked_seq
                    );
                    break;
                }
                Ok(r) => assert!(
                    r.status().is_server_error(),
                    "{agent}: {} {}",
                    r.status(),
                    r.text().unwrap_or_default()
                ),
                Err(_) => {}
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        seq = last;
        sent.fetch_add(BATCH, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn two_fleet_servers_share_the_work_and_lose_nothing_when_one_is_killed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = spawn_redis(dir.path());
    let args = ["--worker-lease", "1s", "--partitions", "4"];
    let mut a = spawn_fleet_with(free_port(), &redis.url(), dir.path(), &args);
    let b = spawn_fleet_with(free_port(), &redis.url(), dir.path(), &args);
    let urls = vec![a.url(), b.url()];
    let http = http_builder().build().expect("client");

    // Both servers take partitions before any traffic.
    wait_until(
        "both servers hold partition leases",
        Duration::from_secs(10),
        || {
            a.proc.log().contains("partition lease acquired")
                && b.proc.log().contains("partition lease acquired")
        },
    );

    let sent = Arc::new(AtomicU64::new(0));
    let agents: Vec<_> = (0..AGENTS)
        .map(|i| {
            let id = format!("gw-scale-{i}");
            // Enrolled on one server, valid on both: credentials live in Redis.
            let cred = enroll(&http, &urls[i % 2], &id);
            let (urls, sent) = (urls.clone(), sent.clone());
            std::thread::spawn(move || run_agent(id, cred, urls, sent))
        })
        .collect();

    let total = AGENTS as u64 * RECORDS;
    wait_until(
        "a third of the stream sent",
        Duration::from_secs(60),
        || sent.load(Ordering::Relaxed) >= total / 3,
    );
    a.proc.kill9();
    let killed_at = sent.load(Ordering::Relaxed);
    assert!(killed_at < total, "the kill must happen mid-stream");
    for t in agents {
        t.join().expect("agent thread");
    }

    // Streams: every seq of every agent exactly once, in order.
    let mut conn = redis.conn();
    let mut seqs: HashMap<String, Vec<u64>> = HashMap::new();
    for e in stream_entries(&mut conn, "records") {
        seqs.entry(e["agent"].clone())
            .or_default()
            .push(e["seq"].parse().expect("seq"));
    }
    assert_eq!(seqs.len(), AGENTS);
    for (agent, s) in &seqs {
        assert_eq!(s, &(1..=RECORDS).collect::<Vec<_>>(), "{agent}");
    }

    // Global state: the survivor takes over the dead server's partitions and its
    // unacknowledged entries; every record is counted exactly once.
    let summary = || -> serde_json::Value {
        http.get(format!("{}/api/v1/state/summary", b.url()))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .expect("summary")
            .bytes()
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    };
    let applied = |s: &serde_json::Value| -> u64 {
        s["agent_counters"]
            .as_object()
            .map(|m| m.values().filter_map(|c| c["window"].as_u64()).sum())
            .unwrap_or(0)
    };
    wait_until(
        "the workers applied every record",
        Duration::from_secs(30),
        || applied(&summary()) >= total,
    );
    // Anything applied twice would show up now.
    std::thread::sleep(Duration::from_millis(1500));
    let s = summary();
    for i in 0..AGENTS {
        assert_eq!(
            s["agent_counters"][format!("gw-scale-{i}")]["window"],
            RECORDS,
            "{s}"
        );
    }
    assert_eq!(s["distinct_series"], AGENTS as u64 * 3, "{s}");
    assert!(b.proc.log().contains("partition lease acquired"));
    let streams: serde_json::Value = http
        .get(format!("{}/api/v1/streams", b.url()))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .expect("streams")
        .bytes()
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .expect("json");
    for st in streams["streams"].as_array().expect("streams") {
        for g in st["groups"].as_array().expect("groups") {
            assert_eq!(
                (g["pending"].as_u64(), g["lag"].as_u64()),
                (Some(0), Some(0)),
                "{st}"
            );
        }
    }
}
