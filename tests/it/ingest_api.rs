//! The fleet's agent endpoints against a real fleet server and redis-server.
//! (Enrollment, admin API and auth failures: `fleet_api.rs`.)

use std::time::Duration;

use fieldline_common::codec::to_cbor;
use fieldline_common::wire::*;

use crate::harness::*;

struct Setup {
    _dir: tempfile::TempDir,
    redis: Redis,
    fleet: Fleet,
    http: reqwest::blocking::Client,
    creds: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = spawn_redis(dir.path());
    let fleet = spawn_fleet(&redis.url(), dir.path());
    let http = http_builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    Setup {
        _dir: dir,
        redis,
        fleet,
        http,
        creds: Default::default(),
    }
}

fn window(seq: u64, count: u64) -> Record {
    Record {
        seq,
        created_ms: 1,
        body: RecordBody::Window(WindowResult {
            series: SeriesKey::new("d", "m"),
            start_ms: seq as i64 * 1000,
            end_ms: seq as i64 * 1000 + 1000,
            count,
            sum: 2.0,
            mean: 2.0 / count.max(1) as f64,
            min: 1.0,
            max: 1.0,
            revision: 0,
            pipeline: Default::default(),
            aggregates: Default::default(),
            unit: String::new(),
        }),
    }
}

fn batch(agent: &str, records: Vec<Record>) -> Vec<u8> {
    to_cbor(&IngestBatch {
        v: PROTOCOL_VERSION,
        agent_id: agent.into(),
        records,
    })
    .expect("encode")
}

/// Enrolls `agent` over HTTP with the harness bootstrap token; returns its credential.
pub fn enroll(http: &reqwest::blocking::Client, fleet_url: &str, agent: &str) -> String {
    let resp = http
        .post(format!("{fleet_url}/api/v1/enroll"))
        .bearer_auth(BOOTSTRAP_TOKEN)
        .header("content-type", "application/cbor")
        .body(
            to_cbor(&EnrollRequest {
                v: PROTOCOL_VERSION,
                agent_id: agent.into(),
                version: "test".into(),
            })
            .expect("encode"),
        )
        .send()
        .expect("enroll");
    let status = resp.status().as_u16();
    let bytes = resp.bytes().expect("body");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    let reply: EnrollReply = fieldline_common::codec::from_cbor(&bytes, 1 << 20).expect("reply");
    assert_eq!(reply.agent_id, agent);
    reply.credential
}

impl Setup {
    /// Posts as agent `gw` (enrolled on first use) unless `as_agent` names another.
    fn post_as(&self, as_agent: &str, path: &str, ct: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
        let credential = self.credential(as_agent);
        let resp = self
            .http
            .post(format!("{}{path}", self.fleet.url()))
            .bearer_auth(credential)
            .header("content-type", ct)
            .body(body)
            .send()
            .expect("request");
        (resp.status().as_u16(), resp.bytes().expect("body").to_vec())
    }

    fn credential(&self, agent: &str) -> String {
        let mut creds = self.creds.lock().expect("lock");
        creds
            .entry(agent.to_string())
            .or_insert_with(|| enroll(&self.http, &self.fleet.url(), agent))
            .clone()
    }

    fn post(&self, path: &str, ct: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
        self.post_as("gw", path, ct, body)
    }

    fn ingest_as(&self, agent: &str, body: Vec<u8>) -> IngestAck {
        let (status, bytes) = self.post_as(agent, "/api/v1/ingest", "application/cbor", body);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
        fieldline_common::codec::from_cbor(&bytes, 1 << 20).expect("ack")
    }

    fn ingest(&self, body: Vec<u8>) -> IngestAck {
        self.ingest_as("gw", body)
    }

    fn stream_len(&self, suffix: &str) -> usize {
        stream_entries(&mut self.redis.conn(), suffix).len()
    }
}

#[test]
fn a_replayed_batch_adds_nothing() {
    let s = setup();
    let b = batch("gw-a", (1..=5).map(|i| window(i, 2)).collect());
    let ack = s.ingest_as("gw-a", b.clone());
    assert_eq!((ack.acked_seq, ack.added, ack.duplicates), (5, 5, 0));
    let ack = s.ingest_as("gw-a", b);
    assert_eq!((ack.acked_seq, ack.added, ack.duplicates), (5, 0, 5));
    // Overlapping batch: only the new tail is added.
    let ack = s.ingest_as(
        "gw-a",
        batch("gw-a", (4..=7).map(|i| window(i, 2)).collect()),
    );
    assert_eq!((ack.acked_seq, ack.added, ack.duplicates), (7, 2, 2));
    assert_eq!(s.stream_len("records"), 7);
    // Another agent has its own sequence.
    let ack = s.ingest_as("gw-b", batch("gw-b", vec![window(1, 1)]));
    assert_eq!((ack.acked_seq, ack.added), (1, 1));
    assert_eq!(s.stream_len("records"), 8);
}

#[test]
fn bad_input_gets_a_clear_4xx_and_changes_nothing() {
    let s = setup();
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "application/cbor",
            b"\xff\x00garbage".to_vec(),
            400,
            "invalid cbor",
        ),
        (
            "application/json",
            batch("gw", vec![window(1, 1)]),
            415,
            "application/cbor",
        ),
        (
            "application/cbor",
            batch("gw", vec![window(2, 1), window(1, 1)]),
            400,
            "strictly increasing",
        ),
        (
            "application/cbor",
            batch("gw", vec![window(0, 1)]),
            400,
            "strictly increasing",
        ),
        (
            "application/cbor",
            batch("bad agent!", vec![window(1, 1)]),
            400,
            "agent_id",
        ),
        (
            "application/cbor",
            batch("gw-other", vec![window(1, 1)]),
            403,
            "cannot act for agent `gw-other`",
        ),
        (
            "application/cbor",
            to_cbor(&IngestBatch {
                v: 99,
                agent_id: "gw".into(),
                records: vec![],
            })
            .expect("encode"),
            400,
            "protocol version 99",
        ),
        ("application/cbor", vec![0u8; 9 * 1024 * 1024], 413, ""),
    ];
    for (ct, body, status, needle) in cases {
        let (got, bytes) = s.post("/api/v1/ingest", ct, body);
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(got, status, "{text}");
        assert!(text.contains(needle), "{needle:?} not in {text}");
    }
    assert_eq!(s.stream_len("records"), 0);
    assert_eq!(s.stream_len("dlq"), 0);
    let metrics = s
        .http
        .get(format!("{}/metrics", s.fleet.url()))
        .send()
        .expect("metrics")
        .text()
        .expect("text");
    assert!(
        metrics.contains("fieldline_fleet_ingest_rejected_total 7"),
        "{metrics}"
    );
}

#[test]
fn invalid_records_go_to_the_dead_letter_stream_with_the_reason() {
    let s = setup();
    let ack = s.ingest(batch("gw", vec![window(1, 1), window(2, 0), window(3, 1)]));
    assert_eq!(ack.acked_seq, 3);
    assert_eq!(s.stream_len("records"), 2);
    let dlq = stream_entries(&mut s.redis.conn(), "dlq");
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0]["seq"], "2");
    assert_eq!(dlq[0]["reason"], "window result with count 0");
}

#[test]
fn registry_health_and_metrics() {
    let s = setup();
    let hb = Heartbeat {
        v: PROTOCOL_VERSION,
        agent_id: "gw-hb".into(),
        version: "9.9.9".into(),
        started_ms: 5,
        sent_ms: 6,
        counters: AgentCounters {
            readings_decoded: 42,
            ..Default::default()
        },
    };
    let (status, bytes) = s.post_as(
        "gw-hb",
        "/api/v1/heartbeat",
        "application/cbor",
        to_cbor(&hb).expect("encode"),
    );
    assert_eq!(status, 200);
    let reply: HeartbeatReply = fieldline_common::codec::from_cbor(&bytes, 1 << 20).expect("reply");
    assert_eq!(reply.acked_seq, 0);
    s.ingest_as("gw-hb", batch("gw-hb", vec![window(1, 1), window(2, 1)]));

    let text = s
        .http
        .get(format!("{}/api/v1/agents", s.fleet.url()))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .expect("agents")
        .text()
        .expect("body");
    let agents: serde_json::Value = serde_json::from_str(&text).expect("json");
    let a = &agents["agents"][0];
    assert_eq!(a["id"], "gw-hb");
    assert_eq!(a["version"], "9.9.9");
    assert_eq!(a["status"], "online");
    assert_eq!(a["last_acked_seq"], 2);
    assert_eq!(a["counters"]["readings_decoded"], 42);

    let health = s
        .http
        .get(format!("{}/healthz", s.fleet.url()))
        .send()
        .expect("healthz");
    assert_eq!(health.status().as_u16(), 200);
    let metrics = s
        .http
        .get(format!("{}/metrics", s.fleet.url()))
        .send()
        .expect("metrics")
        .text()
        .expect("text");
    for line in [
        "fieldline_fleet_ingest_records_total{outcome=\"added\"} 2",
        "fieldline_fleet_heartbeats_total 1",
        "fieldline_fleet_agents 1",
        // The agent's own counters (flash wear, RSS, drops, ...) are scraped here too.
        "fieldline_agent_readings_decoded{agent=\"gw-hb\"} 42",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in\n{metrics}"
        );
    }

    // Redis gone: health says so instead of hanging.
    drop(s.redis);
    let health = s
        .http
        .get(format!("{}/healthz", s.fleet.url()))
        .send()
        .expect("healthz");
    assert_eq!(health.status().as_u16(), 503);
}
