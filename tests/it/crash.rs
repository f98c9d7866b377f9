//! kill -9 under load: the agent is killed at random moments and restarted while a
//! sensor keeps publishing numbered readings over MQTT QoS 1. One agent runs both
//! pipelines: raw forwarding (`outbox.forward_raw_readings`) and the default
//! aggregating one, with `storage.durability = "batch-fsync"`.
//!
//! What must hold (see docs/OPERATIONS.md, "Agent state"):
//! - every reading in the ingest log reaches Redis exactly once: a number appears
//!   twice only if the sensor itself sent it twice (an MQTT QoS 1 retransmission
//!   after a kill swallowed the PUBACK);
//! - the window results in Redis equal an uninterrupted aggregation of exactly the
//!   readings that were logged (the raw records), with no window twice;
//! - readings the broker acknowledged but the agent had not yet logged when it was
//!   killed are lost (rumqttd sends the PUBACK before anyone sees the message); the
//!   test counts them and they stay within the documented window.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::*;

const KILLS: usize = 20;
const RATE_PER_S: u64 = 200;
const WINDOW_MS: i64 = 1000;
/// The documented loss window with batch-fsync: what rumqttd acknowledged in the
/// last moments before the kill and had not yet handed to the log. At this rate a
/// quarter second is 50 readings per kill; the measured number is far below.
const MAX_LOST_PER_KILL: u64 = RATE_PER_S / 4;

#[derive(Default)]
struct Track {
    acked: HashSet<u64>,
    /// Sent again after a reconnect because no PUBACK had come.
    retransmitted: HashSet<u64>,
}

const MAX_INFLIGHT: usize = 100;

/// Publishes `sensors/dev{n%4}/m` readings numbered 0, 1, ... at RATE_PER_S until
/// `stop`, then keeps going until every one is acknowledged. Like any QoS 1 client
/// it resends unacknowledged publishes (DUP set) after reconnecting.
fn sensor(port: u16, stop: Arc<AtomicBool>, published: Arc<AtomicU64>, track: Arc<Mutex<Track>>) {
    use std::io::{Read, Write};
    let every = Duration::from_micros(1_000_000 / RATE_PER_S);
    let mut inflight: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut next = 0u64;
    let mut conn: Option<std::net::TcpStream> = None;
    let mut buf = Vec::new();
    let mut last_send = Instant::now() - every;
    let deadline_after_stop = Duration::from_secs(40);
    let mut stopped_at: Option<Instant> = None;
    loop {
        if stop.load(Ordering::SeqCst) {
            let at = *stopped_at.get_or_insert_with(Instant::now);
            if inflight.is_empty() || at.elapsed() > deadline_after_stop {
                return;
            }
        }
        let Some(c) = conn.as_mut() else {
            match mqtt_connect(port) {
                Some(c) => {
                    conn = Some(c);
                    buf.clear();
                    let c = conn.as_mut().expect("just set");
                    let mut t = track.lock().unwrap();
                    for (n, packet) in &inflight {
                        t.retransmitted.insert(*n);
                        let mut p = packet.clone();
                        p[0] |= 0x08; // DUP
                        if c.write_all(&p).is_err() {
                            break;
                        }
                    }
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
            continue;
        };
        let mut ok = true;
        if stopped_at.is_none() && inflight.len() < MAX_INFLIGHT && last_send.elapsed() >= every {
            last_send = Instant::now();
            let n = next;
            next += 1;
            let payload = format!(r#"{{"value": {n}, "ts": {}}}"#, fieldline_common::now_ms());
            let packet = mqtt_publish(
                &format!("sensors/dev{}/m", n % 4),
                (n % 65_535) as u16 + 1,
                payload.as_bytes(),
            );
            ok &= c.write_all(&packet).is_ok();
            inflight.insert(n, packet);
            published.store(next, Ordering::SeqCst);
        }
        let mut chunk = [0u8; 4096];
        match c.read(&mut chunk) {
            Ok(0) => ok = false,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => ok = false,
        }
        // PUBACK = 0x40 0x02 pkid; nothing else arrives after the CONNACK.
        while buf.len() >= 4 {
            if buf[0] == 0x40 && buf[1] == 0x02 {
                let pkid = u16::from_be_bytes([buf[2], buf[3]]);
                let n = inflight
                    .keys()
                    .copied()
                    .find(|n| (n % 65_535) as u16 + 1 == pkid);
                if let Some(n) = n {
                    inflight.remove(&n);
                    track.lock().unwrap().acked.insert(n);
                }
            }
            buf.drain(..4);
        }
        if !ok {
            conn = None;
        }
    }
}

fn mqtt_connect(port: u16) -> Option<std::net::TcpStream> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_nodelay(true).ok()?;
    let id = b"crash-sensor";
    let mut var = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
    var.extend_from_slice(&(id.len() as u16).to_be_bytes());
    var.extend_from_slice(id);
    let mut packet = vec![0x10];
    remaining_length(&mut packet, var.len());
    packet.extend_from_slice(&var);
    s.write_all(&packet).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).ok()?;
    if connack[0] != 0x20 || connack[3] != 0 {
        return None;
    }
    s.set_read_timeout(Some(Duration::from_millis(1))).ok()?;
    Some(s)
}

fn mqtt_publish(topic: &str, pkid: u16, payload: &[u8]) -> Vec<u8> {
    let mut var = Vec::with_capacity(topic.len() + payload.len() + 4);
    var.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    var.extend_from_slice(topic.as_bytes());
    var.extend_from_slice(&pkid.to_be_bytes());
    var.extend_from_slice(payload);
    let mut packet = vec![0x32];
    remaining_length(&mut packet, var.len());
    packet.extend_from_slice(&var);
    packet
}

fn remaining_length(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return;
        }
    }
}

fn spawn_agent_proc(dir: &std::path::Path, config: &std::path::Path, n: usize) -> Proc {
    Proc::spawn(
        &format!("gw-crash-{n}"),
        Command::new(bin("fieldline-agent"))
            .arg("run")
            .arg("--config")
            .arg(config)
            // Wide bounds: nothing is late whatever the restarts delay, so the
            // reference is a plain aggregation of the logged readings.
            .env("FIELDLINE_WINDOW__MAX_OUT_OF_ORDERNESS", "\"20s\"")
            .env("FIELDLINE_WINDOW__IDLE_TIMEOUT", "\"10m\"")
            .env("FIELDLINE_WINDOW__MAX_FUTURE", "\"1h\"")
            .env("FIELDLINE_LOG", "info"),
        dir,
    )
}

#[test]
fn sigkill_under_load_loses_nothing_logged_and_duplicates_nothing() {
    require_tool("mosquitto_pub");
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = spawn_redis(dir.path());
    let fleet = spawn_fleet(&redis.url(), dir.path());
    let mqtt_port = free_port();
    let config = agent_config(
        dir.path(),
        "gw-crash",
        mqtt_port,
        &fleet.url(),
        r#"
[storage]
durability = "batch-fsync"
checkpoint_interval = "300ms"

[outbox]
forward_raw_readings = true
"#,
    );
    enroll_agent(&config);
    let mut agent = spawn_agent_proc(dir.path(), &config, 0);
    wait_for_port(mqtt_port);

    // The sensor: a minimal MQTT 3.1.1 QoS 1 publisher over TCP (below), so the
    // test knows exactly which numbered reading each PUBACK acknowledges and which
    // ones it had to send again after a kill.
    let track = Arc::new(Mutex::new(Track::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (stop, published, track) = (stop.clone(), published.clone(), track.clone());
        std::thread::spawn(move || sensor(mqtt_port, stop, published, track))
    };

    let started = Instant::now();
    let mut rng = fastrand_like(0x5eed);
    for k in 1..=KILLS {
        std::thread::sleep(Duration::from_millis(250 + rng() % 700));
        agent.kill9();
        agent = spawn_agent_proc(dir.path(), &config, k);
        wait_for_port(mqtt_port);
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    // The sensor returns once everything it sent is acknowledged.
    publisher.join().expect("publisher");
    let total = published.load(Ordering::SeqCst);
    // Closes every window: a reading far ahead in event time on every series
    // (watermarks are per series).
    let far = fieldline_common::now_ms() + 30 * 60_000;
    for d in 0..4 {
        // Retried: under a loaded CI machine the just-restarted agent's broker can
        // drop a connection it accepted (seen once in the full suite). A duplicate
        // from a retry after a lost PUBACK changes nothing checked: value -1 is left
        // out of the counts, and its far window never closes during the test.
        let mut last_err = String::new();
        let sent = (0..5).any(|attempt| {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(300));
            }
            let out = Command::new("mosquitto_pub")
                .args(["-p", &mqtt_port.to_string(), "-q", "1"])
                .args(["-t", &format!("sensors/dev{d}/m")])
                .args(["-m", &format!(r#"{{"value": -1, "ts": {far}}}"#)])
                .output()
                .expect("mosquitto_pub");
            last_err = String::from_utf8_lossy(&out.stderr).into_owned();
            out.status.success()
        });
        assert!(sent, "mosquitto_pub failed 5 times: {last_err}");
    }

    let mut conn = redis.conn();
    let mut raw: Vec<HashMap<String, String>> = Vec::new();
    let mut windows: Vec<HashMap<String, String>> = Vec::new();
    let mut fetch = |raw: &mut Vec<_>, windows: &mut Vec<_>| {
        let all = stream_entries(&mut conn, "records");
        let mine = all
            .into_iter()
            .filter(|e| e.get("agent").map(String::as_str) == Some("gw-crash"));
        raw.clear();
        windows.clear();
        for e in mine {
            match e.get("kind").map(String::as_str) {
                Some("reading") if e["value"] != "-1" => raw.push(e),
                Some("window") => windows.push(e),
                _ => {}
            }
        }
    };
    // Settled when every raw reading's window is in Redis with its full count.
    let settle = Instant::now() + Duration::from_secs(40);
    loop {
        fetch(&mut raw, &mut windows);
        let raw_n = raw.len() as u64;
        let win_n: u64 = windows
            .iter()
            .map(|w| w["count"].parse::<u64>().unwrap_or(0))
            .sum();
        if raw_n > 0 && win_n >= raw_n {
            break;
        }
        assert!(
            Instant::now() < settle,
            "timed out waiting for the windows of every logged reading: {raw_n} raw readings, windows count {win_n}\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(1000));
    fetch(&mut raw, &mut windows);
    let elapsed = started.elapsed();

    // Exactly once: a number twice only when the sensor sent it twice.
    let t = track.lock().unwrap();
    let mut seen: HashMap<u64, u32> = HashMap::new();
    for r in &raw {
        *seen
            .entry(r["value"].parse::<f64>().expect("value") as u64)
            .or_default() += 1;
    }
    assert!(
        t.acked.len() as u64 == total,
        "the sensor could not deliver everything"
    );
    let dup_retransmitted = seen
        .iter()
        .filter(|(n, c)| **c > 1 && t.retransmitted.contains(n))
        .count();
    let dup_bad: Vec<_> = seen
        .iter()
        .filter(|(n, c)| **c > 1 && !t.retransmitted.contains(n))
        .collect();
    assert!(
        dup_bad.is_empty(),
        "readings in Redis twice without a retransmission: {dup_bad:?}"
    );

    // Lost: acknowledged by the broker, never logged.
    let lost: Vec<u64> = (0..total)
        .filter(|n| t.acked.contains(n) && !seen.contains_key(n))
        .collect();
    eprintln!(
        "crash test: {KILLS} kills in {elapsed:?}, {total} readings published, {} in Redis, \
         {} broker-acked but not logged ({} allowed), {dup_retransmitted} sent twice by the sensor and logged twice",
        seen.len(),
        lost.len(),
        MAX_LOST_PER_KILL * KILLS as u64
    );
    assert!(
        (lost.len() as u64) <= MAX_LOST_PER_KILL * KILLS as u64,
        "{} acknowledged readings lost, beyond the documented window: {lost:?}",
        lost.len()
    );
    assert!(
        seen.len() as u64 >= total * 9 / 10,
        "most readings must arrive"
    );

    // Windows equal an uninterrupted aggregation of the logged readings.
    let mut want: BTreeMap<(String, i64), (u64, f64)> = BTreeMap::new();
    for r in &raw {
        let ts: i64 = r["ts_ms"].parse().expect("ts_ms");
        let e = want
            .entry((r["series"].clone(), ts - ts.rem_euclid(WINDOW_MS)))
            .or_default();
        e.0 += 1;
        e.1 += r["value"].parse::<f64>().expect("value");
    }
    let mut got: BTreeMap<(String, i64), (u64, f64)> = BTreeMap::new();
    for w in &windows {
        let key = (
            w["series"].clone(),
            w["start_ms"].parse().expect("start_ms"),
        );
        let prev = got.insert(
            key.clone(),
            (
                w["count"].parse().expect("count"),
                w["sum"].parse().expect("sum"),
            ),
        );
        assert!(prev.is_none(), "window {key:?} is in Redis twice");
    }
    assert_eq!(got, want, "window results differ from the logged readings");
    drop(agent);
}

/// A tiny deterministic generator (the tests crate has no rand dependency).
fn fastrand_like(mut s: u64) -> impl FnMut() -> u64 {
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    }
}
