//! The whole data path: MQTT → agent → fleet → Redis, with real processes.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::harness::*;

const WINDOW_MS: i64 = 1000;

type Reference = BTreeMap<(String, i64), (u64, f64)>;

/// One MQTT publisher per series: Debian's `mosquitto_pub -l` (one line = one
/// message, one connection) or rumqttc.
enum Publisher {
    Mosquitto(Child),
    Rumqttc(rumqttc::Client),
}

struct Publishers {
    series: Vec<(String, String)>,
    pubs: Vec<Publisher>,
    acks: Arc<AtomicU64>,
    client: rumqttc::Client,
    stop: Arc<std::sync::atomic::AtomicBool>,
    sent_rumqttc: u64,
    reference: Reference,
    total: u64,
}

impl Publishers {
    fn connect(port: u16, series: Vec<(String, String)>) -> Self {
        let acks = Arc::new(AtomicU64::new(0));
        // A fresh client id per publisher set: a broker drops the older of two
        // connections with the same id, and the old event loop would reconnect.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let id = format!("e2e-rumqttc-{}", NEXT.fetch_add(1, Ordering::SeqCst));
        let mut opts = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, mut connection) = rumqttc::Client::new(opts, 1000);
        let a = acks.clone();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            for ev in connection.iter() {
                match ev {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                        a.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) if stopped.load(Ordering::SeqCst) => return,
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        let pubs = series
            .iter()
            .enumerate()
            .map(|(i, (device, metric))| {
                if i % 2 == 0 {
                    let child = Command::new("mosquitto_pub")
                        .args(["-p", &port.to_string(), "-q", "1", "-l"])
                        .args(["-i", &format!("e2e-mosq-{i}")])
                        .args(["-t", &format!("sensors/{device}/{metric}")])
                        .stdin(Stdio::piped())
                        .stdout(Stdio::null())
                        .spawn()
                        .expect("mosquitto_pub");
                    Publisher::Mosquitto(child)
                } else {
                    Publisher::Rumqttc(client.clone())
                }
            })
            .collect();
        Self {
            series,
            pubs,
            acks,
            client,
            stop,
            sent_rumqttc: 0,
            reference: BTreeMap::new(),
            total: 0,
        }
    }

    /// Publishes one reading per series, stamped with the current time.
    fn round(&mut self, round: u64) {
        let ts = fieldline_common::now_ms();
        for (i, ((device, metric), publisher)) in self.series.iter().zip(&mut self.pubs).enumerate()
        {
            // Multiples of 0.25 keep every sum exact whatever the addition order.
            let value = ((round * 7 + i as u64 * 3) % 41) as f64 * 0.25 - 2.0;
            let payload = format!(r#"{{"value": {value}, "ts": {ts}}}"#);
            match publisher {
                Publisher::Mosquitto(child) => {
                    let stdin = child.stdin.as_mut().expect("stdin");
                    writeln!(stdin, "{payload}").expect("write to mosquitto_pub");
                    stdin.flush().expect("flush");
                }
                Publisher::Rumqttc(client) => {
                    client
                        .publish(
                            format!("sensors/{device}/{metric}"),
                            rumqttc::QoS::AtLeastOnce,
                            false,
                            payload,
                        )
                        .expect("rumqttc publish");
                    self.sent_rumqttc += 1;
                }
            }
            let e = self
                .reference
                .entry((format!("{device}/{metric}"), ts - ts.rem_euclid(WINDOW_MS)))
                .or_default();
            e.0 += 1;
            e.1 += value;
            self.total += 1;
        }
    }

    /// Closes mosquitto_pub's stdin (it exits after sending) and waits for rumqttc's acks.
    fn finish(mut self) -> (Reference, u64) {
        for p in &mut self.pubs {
            if let Publisher::Mosquitto(child) = p {
                drop(child.stdin.take());
                let status = child.wait().expect("mosquitto_pub exit");
                assert!(status.success(), "mosquitto_pub failed: {status}");
            }
        }
        let want = self.sent_rumqttc;
        let acks = self.acks.clone();
        wait_until("rumqttc PUBACKs", Duration::from_secs(20), || {
            acks.load(Ordering::SeqCst) >= want
        });
        // Ends the connection thread, so nothing reconnects later.
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.client.disconnect();
        (self.reference, self.total)
    }
}

fn windows_in_redis(redis: &Redis, agent: &str) -> Vec<HashMap<String, String>> {
    let mut conn = redis.conn();
    stream_entries(&mut conn, "records")
        .into_iter()
        .filter(|e| {
            e.get("agent").map(String::as_str) == Some(agent)
                && e.get("kind").map(String::as_str) == Some("window")
        })
        .collect()
}

fn count_sum(entries: &[HashMap<String, String>]) -> u64 {
    entries
        .iter()
        .map(|e| e["count"].parse::<u64>().expect("count"))
        .sum()
}

#[track_caller]
fn assert_matches_reference(entries: &[HashMap<String, String>], reference: &Reference) {
    let mut got: BTreeMap<(String, i64), (u64, f64, f64)> = BTreeMap::new();
    for e in entries {
        let key = (
            e["series"].clone(),
            e["start_ms"].parse::<i64>().expect("start_ms"),
        );
        let value = (
            e["count"].parse().expect("count"),
            e["sum"].parse().expect("sum"),
            e["mean"].parse().expect("mean"),
        );
        assert!(
            got.insert(key.clone(), value).is_none(),
            "window {key:?} is in Redis twice"
        );
    }
    let got_keys: Vec<_> = got.keys().collect();
    let want_keys: Vec<_> = reference.keys().collect();
    assert_eq!(
        got_keys, want_keys,
        "windows in Redis differ from the reference"
    );
    for (key, (count, sum)) in reference {
        let (gc, gs, gm) = got[key];
        assert_eq!(gc, *count, "count of {key:?}");
        assert_eq!(gs, *sum, "sum of {key:?}");
        assert!(
            (gm - sum / *count as f64).abs() < 1e-9,
            "mean of {key:?}: {gm}"
        );
    }
}

/// Per-agent order, and no seq reused: seqs in the stream strictly increase.
#[track_caller]
fn assert_seqs_increase(entries: &[HashMap<String, String>]) {
    let seqs: Vec<u64> = entries
        .iter()
        .map(|e| e["seq"].parse().expect("seq"))
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seqs reused or out of order: {seqs:?}"
    );
}

fn ten_series() -> Vec<(String, String)> {
    (0..10)
        .map(|i| {
            (
                format!("dev{}", i / 2),
                if i % 2 == 0 { "temp" } else { "hum" }.to_string(),
            )
        })
        .collect()
}

#[test]
fn window_results_reach_redis_exactly_once_across_a_fleet_crash() {
    require_tool("mosquitto_pub");
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = spawn_redis(dir.path());
    let fleet_port = free_port();
    let mut fleet = spawn_fleet_on(fleet_port, &redis.url(), dir.path());
    let agent = spawn_agent(dir.path(), "gw-e2e", &fleet.url());

    let mut pubs = Publishers::connect(agent.mqtt_port, ten_series());
    let mut round = 0;
    let mut publish_for = |pubs: &mut Publishers, d: Duration| {
        let end = std::time::Instant::now() + d;
        while std::time::Instant::now() < end {
            pubs.round(round);
            round += 1;
            std::thread::sleep(Duration::from_millis(40));
        }
    };
    publish_for(&mut pubs, Duration::from_millis(2500));
    // Let some windows go out, then crash the fleet while records keep flowing.
    fleet.proc.kill9();
    publish_for(&mut pubs, Duration::from_millis(2500));
    let mut fleet = spawn_fleet_on(fleet_port, &redis.url(), dir.path());
    publish_for(&mut pubs, Duration::from_millis(1500));
    let (reference, total) = pubs.finish();

    wait_until(
        "all readings reflected in Redis",
        Duration::from_secs(30),
        || count_sum(&windows_in_redis(&redis, "gw-e2e")) >= total,
    );
    // Anything duplicated would show up now.
    std::thread::sleep(Duration::from_millis(1500));
    let entries = windows_in_redis(&redis, "gw-e2e");
    assert_matches_reference(&entries, &reference);

    assert_seqs_increase(&entries);
    assert_eq!(fleet.proc.terminate(Duration::from_secs(10)), Some(0));
}

#[test]
fn mosquitto_pub_bare_number_becomes_a_window_result_and_bad_readings_dead_letters() {
    require_tool("mosquitto_pub");
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = spawn_redis(dir.path());
    let fleet = spawn_fleet(&redis.url(), dir.path());
    let agent = spawn_agent(dir.path(), "gw-bare", &fleet.url());

    let publish = |topic: &str, msg: &str| {
        let st = Command::new("mosquitto_pub")
            .args([
                "-p",
                &agent.mqtt_port.to_string(),
                "-q",
                "1",
                "-t",
                topic,
                "-m",
                msg,
            ])
            .status()
            .expect("mosquitto_pub");
        assert!(st.success());
    };
    publish("sensors/dev1/temp", "not a number");
    publish("sensors/dev1/temp", "21.5");
    let ahead = fieldline_common::now_ms() + 3_600_000;
    publish(
        "sensors/dev2/temp",
        &format!(r#"{{"value": 1, "ts": {ahead}}}"#),
    );

    wait_until(
        "the window result in Redis",
        Duration::from_secs(20),
        || !windows_in_redis(&redis, "gw-bare").is_empty(),
    );
    let w = &windows_in_redis(&redis, "gw-bare")[0];
    assert_eq!(
        (w["series"].as_str(), w["count"].as_str(), w["sum"].as_str()),
        ("dev1/temp", "1", "21.5")
    );

    let mut conn = redis.conn();
    wait_until("two dead letters", Duration::from_secs(10), || {
        stream_entries(&mut conn, "dlq").len() >= 2
    });
    let dlq = stream_entries(&mut conn, "dlq");
    let garbage = dlq
        .iter()
        .find(|e| e["payload"] == "not a number")
        .expect("garbage kept");
    assert!(
        garbage["reason"].contains("neither a number nor a json object"),
        "{garbage:?}"
    );
    assert_eq!(garbage["topic"], "sensors/dev1/temp");
    let future = dlq
        .iter()
        .find(|e| e["topic"] == "sensors/dev2/temp")
        .expect("future reading kept");
    assert!(
        future["reason"].contains("ahead of the agent clock"),
        "{future:?}"
    );
}

#[test]
fn agent_restart_resumes_from_the_last_acknowledged_seq() {
    require_tool("mosquitto_pub");
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = spawn_redis(dir.path());
    let fleet_port = free_port();
    let mut fleet = spawn_fleet_on(fleet_port, &redis.url(), dir.path());
    let mut agent = spawn_agent(dir.path(), "gw-restart", &fleet.url());

    // Phase 1 reaches Redis; phase 2 is produced while the fleet is down and is
    // still in the outbox when the agent restarts.
    let mut pubs = Publishers::connect(agent.mqtt_port, ten_series());
    for r in 0..10 {
        pubs.round(r);
        std::thread::sleep(Duration::from_millis(30));
    }
    let (mut reference, total1) = pubs.finish();
    wait_until("phase 1 in Redis", Duration::from_secs(20), || {
        count_sum(&windows_in_redis(&redis, "gw-restart")) >= total1
    });
    fleet.proc.kill9();

    let mut pubs = Publishers::connect(agent.mqtt_port, ten_series());
    for r in 10..20 {
        pubs.round(r);
        std::thread::sleep(Duration::from_millis(30));
    }
    let (reference2, total2) = pubs.finish();
    // Wait until the windows closed into the outbox (idle timeout), then stop gracefully.
    std::thread::sleep(Duration::from_millis(4500));
    assert_eq!(
        agent.proc.terminate(Duration::from_secs(20)),
        Some(0),
        "{}",
        agent.proc.log()
    );
    assert!(agent.proc.log().contains("state flushed"));

    let fleet2 = spawn_fleet_on(fleet_port, &redis.url(), dir.path());
    let restarted = Proc::spawn(
        "gw-restart-2",
        Command::new(bin("fieldline-agent"))
            .arg("run")
            .arg("--config")
            .arg(&agent.config),
        dir.path(),
    );
    wait_until("phase 2 in Redis", Duration::from_secs(30), || {
        count_sum(&windows_in_redis(&redis, "gw-restart")) >= total1 + total2
    });
    std::thread::sleep(Duration::from_millis(1000));
    for (k, v) in reference2 {
        let e = reference.entry(k).or_default();
        e.0 += v.0;
        e.1 += v.1;
    }
    let entries = windows_in_redis(&redis, "gw-restart");
    assert_matches_reference(&entries, &reference);
    assert_seqs_increase(&entries);
    drop((restarted, fleet2));
}
