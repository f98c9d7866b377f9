//! The store contract: one conformance suite, run against the Redis store (a real
//! `redis-server`) and the embedded sled store. Every case is written against
//! `dyn Store` only, so it survives a rewrite of either implementation.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use fieldline_common::wire::*;
use fieldline_fleet::store::embedded::SledStore;
use fieldline_fleet::store::redis::RedisStore;
use fieldline_fleet::store::{entry, EnrollOutcome, Store};
use proptest::prelude::*;

use crate::harness::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn with_redis<F, Fut>(case: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = spawn_redis(dir.path());
    runtime().block_on(async {
        let store = RedisStore::connect(&redis.url(), 4, 10_000)
            .await
            .expect("connect");
        case(Arc::new(store)).await
    });
}

fn with_sled<F, Fut>(case: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(&dir.path().join("store"), 10_000).expect("open");
    runtime().block_on(case(Arc::new(store)));
}

/// Generates one `#[test]` per case and store.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod on_redis {
            $( #[test] fn $case() { super::with_redis(super::$case) } )*
        }
        mod on_sled {
            $( #[test] fn $case() { super::with_sled(super::$case) } )*
        }
    };
}

conformance!(
    a_replayed_batch_adds_nothing,
    overlapping_batches_add_only_the_new_tail,
    agents_have_independent_sequences,
    records_keep_order_and_every_field,
    invalid_records_go_to_the_dlq_with_the_reason,
    dlq_replay_and_delete,
    registry_heartbeats_and_labels,
    enrollment_and_revocation,
    stream_stats_count_entries,
    global_state_follows_the_records_exactly_once,
    records_the_workers_cannot_apply_end_in_the_dlq,
    documents_compare_and_set_and_counters,
    config_generations_rollouts_and_reports,
);

fn window(seq: u64, count: u64) -> Record {
    Record {
        seq,
        created_ms: 7,
        body: RecordBody::Window(WindowResult {
            series: SeriesKey::new("boiler", "temp"),
            start_ms: seq as i64 * 1000,
            end_ms: seq as i64 * 1000 + 1000,
            count,
            sum: 2.0,
            mean: 1.0,
            min: 0.5,
            max: 1.5,
            revision: 0,
            pipeline: "p".into(),
            aggregates: [("p99".to_string(), 1.25)].into_iter().collect(),
            unit: String::new(),
        }),
    }
}

async fn ingest(
    s: &dyn Store,
    agent: &str,
    seqs: impl IntoIterator<Item = u64>,
) -> (u64, u32, u32) {
    let entries: Vec<_> = seqs.into_iter().map(|q| entry(&window(q, 1))).collect();
    let o = s.ingest(agent, &entries, 1).await.expect("ingest");
    (o.hwm, o.added, o.duplicates)
}

async fn seqs_of(s: &dyn Store, agent: &str) -> Vec<u64> {
    s.records_of(agent, 100_000)
        .await
        .expect("records")
        .iter()
        .map(|e| e.field_str("seq").expect("seq").parse().expect("number"))
        .collect()
}

async fn a_replayed_batch_adds_nothing(s: Arc<dyn Store>) {
    assert_eq!(ingest(&*s, "gw", 1..=5).await, (5, 5, 0));
    assert_eq!(ingest(&*s, "gw", 1..=5).await, (5, 0, 5));
    assert_eq!(seqs_of(&*s, "gw").await, vec![1, 2, 3, 4, 5]);
}

async fn overlapping_batches_add_only_the_new_tail(s: Arc<dyn Store>) {
    ingest(&*s, "gw", 1..=5).await;
    assert_eq!(ingest(&*s, "gw", 4..=7).await, (7, 2, 2));
    // A gap (records the agent's outbox bound dropped) is accepted, not refilled.
    assert_eq!(ingest(&*s, "gw", [10, 11]).await, (11, 2, 0));
    assert_eq!(ingest(&*s, "gw", [8, 9]).await, (11, 0, 2));
    assert_eq!(seqs_of(&*s, "gw").await, vec![1, 2, 3, 4, 5, 6, 7, 10, 11]);
}

async fn agents_have_independent_sequences(s: Arc<dyn Store>) {
    ingest(&*s, "gw-a", 1..=3).await;
    assert_eq!(ingest(&*s, "gw-b", 1..=2).await, (2, 2, 0));
    assert_eq!(seqs_of(&*s, "gw-a").await, vec![1, 2, 3]);
    assert_eq!(seqs_of(&*s, "gw-b").await, vec![1, 2]);
}

async fn records_keep_order_and_every_field(s: Arc<dyn Store>) {
    let anomaly = Record {
        seq: 2,
        created_ms: 9,
        body: RecordBody::Anomaly(Anomaly {
            pipeline: "p".into(),
            series: SeriesKey::new("pump", "rpm"),
            ts_ms: 1234,
            value: 99.5,
            score: 0.75,
            detector: "zscore".into(),
            reason: "z=4.1".into(),
        }),
    };
    let entries = vec![entry(&window(1, 3)), entry(&anomaly)];
    s.ingest("gw", &entries, 1).await.expect("ingest");
    let got = s.records_of("gw", 10).await.expect("records");
    assert_eq!(got.len(), 2);
    let w = &got[0];
    for (k, v) in [
        ("agent", "gw"),
        ("seq", "1"),
        ("kind", "window"),
        ("series", "boiler/temp"),
        ("count", "3"),
        ("min", "0.5"),
        ("pipeline", "p"),
        // Named aggregates must survive (they were once dropped on the way to Redis).
        ("agg.p99", "1.25"),
    ] {
        assert_eq!(w.field_str(k).as_deref(), Some(v), "field {k}");
    }
    let a = &got[1];
    assert_eq!(a.field_str("kind").as_deref(), Some("anomaly"));
    assert_eq!(a.field_str("score").as_deref(), Some("0.75"));
    assert_eq!(a.field_str("detector").as_deref(), Some("zscore"));
}

async fn invalid_records_go_to_the_dlq_with_the_reason(s: Arc<dyn Store>) {
    let dead = Record {
        seq: 3,
        created_ms: 1,
        body: RecordBody::DeadLetter(DeadLetter {
            topic: "sensors/x/y".into(),
            payload: vec![0xff, 0x00, 0x80],
            reason: "not a number".into(),
            received_ms: 5,
        }),
    };
    let entries = vec![entry(&window(1, 1)), entry(&window(2, 0)), entry(&dead)];
    let o = s.ingest("gw", &entries, 1).await.expect("ingest");
    assert_eq!((o.hwm, o.added, o.dead_letters), (3, 1, 2));
    assert_eq!(seqs_of(&*s, "gw").await, vec![1]);
    let dlq = s.dlq_list(100).await.expect("dlq");
    assert_eq!(dlq.len(), 2);
    assert_eq!(dlq[0].field_str("seq").as_deref(), Some("2"));
    assert_eq!(
        dlq[0].field_str("reason").as_deref(),
        Some("window result with count 0")
    );
    assert_eq!(dlq[1].field("payload"), Some(&[0xff, 0x00, 0x80][..]));
    // Replaying the batch changes nothing: dead letters are idempotent too.
    let o = s.ingest("gw", &entries, 1).await.expect("ingest");
    assert_eq!((o.added, o.dead_letters, o.duplicates), (0, 0, 3));
    assert_eq!(s.dlq_list(100).await.expect("dlq").len(), 2);
}

async fn dlq_replay_and_delete(s: Arc<dyn Store>) {
    let entries = vec![entry(&window(1, 0)), entry(&window(2, 0))];
    s.ingest("gw", &entries, 1).await.expect("ingest");
    let dlq = s.dlq_list(100).await.expect("dlq");
    let (first, second) = (dlq[0].id.clone(), dlq[1].id.clone());
    assert!(s.dlq_replay(&first).await.expect("replay"));
    assert!(!s.dlq_replay(&first).await.expect("replay twice"));
    let records = s.records_of("gw", 10).await.expect("records");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].field_str("replayed_from"), Some(first.clone()));
    assert_eq!(records[0].field_str("seq").as_deref(), Some("1"));
    assert!(s.dlq_delete(&second).await.expect("delete"));
    assert!(!s.dlq_delete(&second).await.expect("delete twice"));
    for bogus in ["", "nonsense", "p99-1-1", "p0-x-1", "18446744073709551615"] {
        assert!(!s.dlq_delete(bogus).await.expect("delete bogus"), "{bogus}");
        assert!(!s.dlq_replay(bogus).await.expect("replay bogus"), "{bogus}");
    }
    // Still broken, so the workers file it again, with their reason.
    s.settle().await.expect("settle");
    let dlq = s.dlq_list(100).await.expect("dlq");
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(
        dlq[0].field_str("reason").as_deref(),
        Some("worker: field `mean` is missing")
    );
    assert!(s.dlq_delete(&dlq[0].id).await.expect("delete"));
    assert!(s.dlq_list(100).await.expect("dlq").is_empty());
}

fn heartbeat(agent: &str, version: &str) -> Heartbeat {
    Heartbeat {
        v: PROTOCOL_VERSION,
        agent_id: agent.into(),
        version: version.into(),
        started_ms: 11,
        sent_ms: 12,
        counters: AgentCounters {
            readings_decoded: 42,
            ..Default::default()
        },
    }
}

async fn registry_heartbeats_and_labels(s: Arc<dyn Store>) {
    assert_eq!(s.agent("gw-b").await.expect("agent"), None);
    assert_eq!(
        s.heartbeat(&heartbeat("gw-b", "1.0"), 100)
            .await
            .expect("hb"),
        0
    );
    ingest(&*s, "gw-a", 1..=4).await;
    assert_eq!(
        s.heartbeat(&heartbeat("gw-a", "2.0"), 200)
            .await
            .expect("hb"),
        4
    );
    let agents = s.agents().await.expect("agents");
    let ids: Vec<_> = agents.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["gw-a", "gw-b"]);
    let a = &agents[0];
    assert_eq!(
        (
            a.version.as_str(),
            a.last_seen_ms,
            a.started_ms,
            a.last_acked_seq
        ),
        ("2.0", 200, 11, 4)
    );
    assert_eq!(a.counters["readings_decoded"], 42);

    let labels: BTreeMap<String, String> = [("site".to_string(), "berlin".to_string())].into();
    assert!(s.set_labels("gw-a", &labels).await.expect("labels"));
    assert!(!s.set_labels("gw-unknown", &labels).await.expect("labels"));
    assert_eq!(
        s.agent("gw-a").await.expect("agent").expect("known").labels,
        labels
    );
    assert_eq!(s.agent("gw-unknown").await.expect("agent"), None);
}

async fn enrollment_and_revocation(s: Arc<dyn Store>) {
    assert_eq!(s.credential("gw").await.expect("cred"), None);
    assert_eq!(
        s.enroll("gw", "hash-1", 5).await.expect("enroll"),
        EnrollOutcome::Enrolled
    );
    assert_eq!(
        s.enroll("gw", "hash-2", 6).await.expect("enroll"),
        EnrollOutcome::AlreadyEnrolled
    );
    let c = s.credential("gw").await.expect("cred").expect("stored");
    assert_eq!((c.hash.as_str(), c.revoked), ("hash-1", false));
    let info = s.agent("gw").await.expect("agent").expect("known");
    assert_eq!((info.enrolled_ms, info.revoked), (5, false));

    assert!(s.revoke("gw").await.expect("revoke"));
    assert!(!s.revoke("gw-unknown").await.expect("revoke"));
    let c = s.credential("gw").await.expect("cred").expect("stored");
    assert!(c.revoked);
    assert_ne!(c.hash, "hash-1", "a revoked hash must not stay usable");
    assert_eq!(
        s.enroll("gw", "hash-3", 7).await.expect("enroll"),
        EnrollOutcome::Revoked
    );
    assert!(s.agent("gw").await.expect("agent").expect("known").revoked);

    assert!(s.allow_reenroll("gw").await.expect("allow"));
    assert!(!s.allow_reenroll("gw-unknown").await.expect("allow"));
    assert_eq!(
        s.enroll("gw", "hash-4", 8).await.expect("enroll"),
        EnrollOutcome::Enrolled
    );
    let c = s.credential("gw").await.expect("cred").expect("stored");
    assert_eq!((c.hash.as_str(), c.revoked), ("hash-4", false));
}

async fn stream_stats_count_entries(s: Arc<dyn Store>) {
    ingest(&*s, "gw", 1..=3).await;
    s.ingest("gw", &[entry(&window(4, 0))], 1)
        .await
        .expect("ingest");
    let stats = s.stream_stats().await.expect("stats");
    let total = |suffix: &str| -> u64 {
        stats
            .iter()
            .filter(|st| st.name.ends_with(suffix))
            .map(|st| st.length)
            .sum()
    };
    assert_eq!((total("records"), total("dlq")), (3, 1));
}

fn anomaly(seq: u64, series: (&str, &str), ts_ms: i64, score: f64) -> Record {
    Record {
        seq,
        created_ms: 1,
        body: RecordBody::Anomaly(Anomaly {
            pipeline: "p".into(),
            series: SeriesKey::new(series.0, series.1),
            ts_ms,
            value: seq as f64,
            score,
            detector: "zscore".into(),
            reason: "r".into(),
        }),
    }
}

fn window_at(seq: u64, device: &str, end_ms: i64, mean: f64) -> Record {
    let mut r = window(seq, 2);
    if let RecordBody::Window(w) = &mut r.body {
        w.series = SeriesKey::new(device, "temp");
        w.start_ms = end_ms - 1000;
        w.end_ms = end_ms;
        w.mean = mean;
    }
    r
}

async fn global_state_follows_the_records_exactly_once(s: Arc<dyn Store>) {
    let a: Vec<Record> = vec![
        window_at(1, "boiler", 2000, 20.0),
        window_at(2, "boiler", 3000, 21.0),
        anomaly(3, ("pump", "rpm"), 2500, 0.4),
        anomaly(4, ("pump", "rpm"), 2600, 0.9),
        anomaly(5, ("pump", "rpm"), 2700, 0.2),
        anomaly(6, ("boiler", "temp"), 1500, 0.6),
    ];
    let entries: Vec<_> = a.iter().map(entry).collect();
    s.ingest("gw-a", &entries, 1).await.expect("ingest");
    s.ingest("gw-b", &[entry(&window_at(1, "boiler", 9000, 5.0))], 1)
        .await
        .expect("ingest");
    s.settle().await.expect("settle");
    // A replayed batch and a second settle change nothing.
    s.ingest("gw-a", &entries, 1).await.expect("ingest");
    s.settle().await.expect("settle");

    let latest = s.latest_values(None, 100).await.expect("latest");
    let view: Vec<(&str, &str, f64, i64)> = latest
        .iter()
        .map(|l| (l.series.as_str(), l.kind.as_str(), l.value, l.ts_ms))
        .collect();
    assert_eq!(
        view,
        [
            // The anomaly at 1500 is older than the window ending at 3000.
            ("gw-a/boiler/temp", "window", 21.0, 3000),
            ("gw-a/pump/rpm", "anomaly", 5.0, 2700),
            ("gw-b/boiler/temp", "window", 5.0, 9000),
        ]
    );
    let only_b = s.latest_values(Some("gw-b"), 100).await.expect("latest");
    assert_eq!(only_b.len(), 1);
    assert_eq!(
        s.top_anomalies(10).await.expect("top"),
        [
            ("gw-a/pump/rpm".to_string(), 0.9),
            ("gw-a/boiler/temp".to_string(), 0.6)
        ]
    );
    assert_eq!(s.top_anomalies(1).await.expect("top").len(), 1);
    let sum = s.global_summary().await.expect("summary");
    assert_eq!((sum.distinct_series, sum.distinct_devices), (3, 3));
    let counters = |agent: &str| sum.agent_counters.get(agent).cloned().unwrap_or_default();
    assert_eq!(
        counters("gw-a"),
        [("anomaly".to_string(), 4), ("window".to_string(), 2)].into()
    );
    assert_eq!(counters("gw-b"), [("window".to_string(), 1)].into());
}

async fn records_the_workers_cannot_apply_end_in_the_dlq(s: Arc<dyn Store>) {
    // A NaN score passes ingest (anomalies are not validated there) but cannot be
    // applied; a broken window replayed from the DLQ cannot either.
    let records = [
        anomaly(1, ("pump", "rpm"), 5, f64::NAN),
        window(2, 0),
        window(3, 1),
    ];
    let entries: Vec<_> = records.iter().map(entry).collect();
    s.ingest("gw", &entries, 1).await.expect("ingest");
    s.settle().await.expect("settle");
    let dlq = s.dlq_list(100).await.expect("dlq");
    assert_eq!(dlq.len(), 2, "{dlq:?}");
    let broken_window = dlq
        .iter()
        .find(|e| e.field_str("seq").as_deref() == Some("2"))
        .expect("count-0 window");
    let nan = dlq
        .iter()
        .find(|e| e.field_str("seq").as_deref() == Some("1"))
        .expect("nan anomaly");
    assert_eq!(
        nan.field_str("reason").as_deref(),
        Some("worker: field `score` is not a finite number: `NaN`")
    );
    assert!(nan.field_str("source_id").is_some());
    assert!(s.dlq_replay(&broken_window.id).await.expect("replay"));
    s.settle().await.expect("settle");
    let dlq = s.dlq_list(100).await.expect("dlq");
    assert_eq!(dlq.len(), 2, "{dlq:?}");
    assert!(dlq
        .iter()
        .any(|e| e.field_str("reason").as_deref() == Some("worker: field `mean` is missing")));
    // The good record still counts, once.
    let sum = s.global_summary().await.expect("summary");
    assert_eq!(sum.agent_counters["gw"], [("window".to_string(), 1)].into());
}

#[test]
fn redis_workers_take_over_a_crashed_consumers_pending_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = spawn_redis(dir.path());
    let rt = runtime();
    let store = rt
        .block_on(RedisStore::connect(&redis.url(), 1, 10_000))
        .expect("connect");
    rt.block_on(ingest(&store, "gw", 1..=10));
    // A consumer that read five entries, never acknowledged them and died holding
    // the partition lease.
    let mut conn = redis.conn();
    let stream = "fl:{p0}:records";
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg("fl-workers")
        .arg("0")
        .query(&mut conn)
        .expect("group");
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("fl-workers")
        .arg("crashed")
        .arg("COUNT")
        .arg(5)
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query(&mut conn)
        .expect("read");
    let _: () = redis::cmd("SET")
        .arg("fl:{p0}:lease")
        .arg("crashed")
        .arg("PX")
        .arg(300)
        .query(&mut conn)
        .expect("lease");
    // While the lease lives nobody else touches the partition.
    rt.block_on(store.settle()).expect("settle");
    let sum = rt.block_on(store.global_summary()).expect("summary");
    assert!(sum.agent_counters.is_empty(), "{sum:?}");
    std::thread::sleep(std::time::Duration::from_millis(400));
    rt.block_on(store.settle()).expect("settle");
    let sum = rt.block_on(store.global_summary()).expect("summary");
    assert_eq!(
        sum.agent_counters["gw"],
        [("window".to_string(), 10)].into()
    );
    let pending: (u64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
        .arg(stream)
        .arg("fl-workers")
        .query(&mut conn)
        .expect("xpending");
    assert_eq!(pending.0, 0);
}

async fn documents_compare_and_set_and_counters(s: Arc<dyn Store>) {
    assert_eq!(s.doc_get("a/1").await.expect("get"), None);
    assert!(!s.doc_cas("a/1", Some(b"x"), b"y").await.expect("cas"));
    assert!(s.doc_cas("a/1", None, b"one").await.expect("cas"));
    assert!(
        !s.doc_cas("a/1", None, b"two").await.expect("cas"),
        "must not overwrite"
    );
    assert!(s.doc_cas("a/1", Some(b"one"), b"two").await.expect("cas"));
    assert!(s.doc_cas("a/2", None, b"x").await.expect("cas"));
    assert!(s.doc_cas("b/1", None, b"z").await.expect("cas"));
    assert_eq!(
        s.doc_get("a/1").await.expect("get").as_deref(),
        Some(&b"two"[..])
    );
    let listed = s.doc_list("a/").await.expect("list");
    assert_eq!(
        listed,
        [
            ("a/1".to_string(), b"two".to_vec()),
            ("a/2".to_string(), b"x".to_vec())
        ]
    );
    assert_eq!(s.counter_get("g").await.expect("counter"), 0);
    assert_eq!(s.counter_next("g").await.expect("counter"), 1);
    assert_eq!(s.counter_next("g").await.expect("counter"), 2);
    assert_eq!(s.counter_get("g").await.expect("counter"), 2);
}

async fn config_generations_rollouts_and_reports(s: Arc<dyn Store>) {
    use fieldline_fleet::configs::{self, RolloutSpec, Scope};
    let berlin: BTreeMap<String, String> = [("site".to_string(), "berlin".to_string())].into();
    let group = Scope::Group {
        key: "site".into(),
        value: "berlin".into(),
    };
    let g1 = configs::put(&*s, &group, "[window]\nsize = \"2s\"\n", "", None, 1)
        .await
        .expect("put");
    // A staged version reaches only the canary; the rest keep g1.
    let g2 = configs::put(
        &*s,
        &group,
        "[window]\nsize = \"3s\"\n",
        "",
        Some(RolloutSpec {
            canary: vec!["gw-canary".into()],
            percent: Some(0),
        }),
        2,
    )
    .await
    .expect("put");
    assert!(g2 > g1);
    let resolve = |a: &'static str| {
        let (s, berlin) = (s.clone(), berlin.clone());
        async move {
            configs::resolve(&*s, a, &berlin)
                .await
                .expect("resolve")
                .map(|r| r.generation)
        }
    };
    assert_eq!(resolve("gw-canary").await, Some(g2));
    assert_eq!(resolve("gw-other").await, Some(g1));
    // An override wins; an invalid config is refused and changes nothing.
    let own = configs::put(
        &*s,
        &Scope::Agent("gw-other".into()),
        "[window]\nsize = \"4s\"\n",
        "",
        None,
        3,
    )
    .await
    .expect("put");
    assert_eq!(resolve("gw-other").await, Some(own));
    assert!(
        configs::put(&*s, &group, "[window]\nsize = 5\n", "", None, 4)
            .await
            .is_err()
    );
    assert_eq!(
        configs::get(&*s, &group).await.expect("get").versions.len(),
        2
    );
    // The canary rejects: the rollout halts and cannot be widened.
    let rejected = ConfigReport {
        generation: g2,
        applied: false,
        error: "boom".into(),
    };
    configs::report(&*s, "gw-canary", &berlin, g1, Some(&rejected), 5)
        .await
        .expect("report");
    let doc = configs::get(&*s, &group).await.expect("get");
    assert_eq!(
        doc.rollout.and_then(|r| r.halted).map(|h| h.agent),
        Some("gw-canary".into())
    );
    assert!(configs::widen(
        &*s,
        &group,
        RolloutSpec {
            canary: vec![],
            percent: Some(100)
        }
    )
    .await
    .is_err());
    let report = configs::get_report(&*s, "gw-canary")
        .await
        .expect("report")
        .expect("stored");
    let resolved = configs::resolve(&*s, "gw-canary", &berlin)
        .await
        .expect("resolve");
    assert_eq!(
        configs::drift("gw-canary", resolved.as_ref(), Some(&report)).state,
        "rejected"
    );
}

/// Model test: any sequence of (possibly overlapping, replayed, gapped) batches
/// leaves exactly the seqs a high-water-mark model keeps, in order.
fn model_check(
    store: &dyn Store,
    rt: &tokio::runtime::Runtime,
    agent: &str,
    batches: &[Vec<u64>],
) -> Result<(), TestCaseError> {
    let mut hwm = 0u64;
    let mut expected = Vec::new();
    for b in batches {
        let mut added = 0;
        for &q in b {
            if q > hwm {
                hwm = q;
                expected.push(q);
                added += 1;
            }
        }
        let (got_hwm, got_added, got_dups) = rt.block_on(ingest(store, agent, b.iter().copied()));
        prop_assert_eq!(got_hwm, hwm);
        prop_assert_eq!(got_added as usize, added);
        prop_assert_eq!(got_dups as usize, b.len() - added);
    }
    prop_assert_eq!(rt.block_on(seqs_of(store, agent)), expected);
    Ok(())
}

fn batches() -> impl Strategy<Value = Vec<Vec<u64>>> {
    proptest::collection::vec(
        (1u64..40, 0usize..8).prop_map(|(start, len)| (start..start + len as u64).collect()),
        1..12,
    )
}

#[test]
fn both_stores_agree_with_the_high_water_mark_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = spawn_redis(dir.path());
    let rt = runtime();
    let redis_store = rt
        .block_on(RedisStore::connect(&redis.url(), 4, 100_000))
        .expect("connect");
    let sled_store = SledStore::open(&dir.path().join("store"), 100_000).expect("open");
    let case = std::sync::atomic::AtomicU32::new(0);
    proptest!(ProptestConfig::with_cases(48), |(b in batches())| {
        // A fresh agent per case stands in for a fresh store.
        let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let agent = format!("gw-{n}");
        model_check(&redis_store, &rt, &agent, &b)?;
        model_check(&sled_store, &rt, &agent, &b)?;
    });
}

#[test]
fn the_embedded_store_keeps_everything_across_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let rt = runtime();
    {
        let s = SledStore::open(&path, 10_000).expect("open");
        rt.block_on(async {
            ingest(&s, "gw", 1..=3).await;
            s.enroll("gw", "h", 1).await.expect("enroll");
        });
    }
    let s = SledStore::open(&path, 10_000).expect("reopen");
    rt.block_on(async {
        assert_eq!(ingest(&s, "gw", 1..=4).await, (4, 1, 3));
        assert_eq!(seqs_of(&s, "gw").await, vec![1, 2, 3, 4]);
        assert_eq!(
            s.credential("gw").await.expect("cred").expect("kept").hash,
            "h"
        );
    });
}

#[test]
fn the_embedded_store_trims_to_about_maxlen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = SledStore::open(&dir.path().join("store"), 100).expect("open");
    runtime().block_on(async {
        for chunk in 0..10u64 {
            ingest(&s, "gw", chunk * 50 + 1..=chunk * 50 + 50).await;
        }
        let seqs = seqs_of(&s, "gw").await;
        assert!(seqs.len() >= 100 && seqs.len() <= 110, "{}", seqs.len());
        // The newest survive.
        assert_eq!(seqs.last(), Some(&500));
        // The mark is not trimmed: old seqs stay duplicates.
        assert_eq!(ingest(&s, "gw", [1, 2]).await, (500, 0, 2));
    });
}
