//! Detectors end to end: readings published with `mosquitto_pub`, alerts read with
//! `mosquitto_sub -q 1` from the agent's own broker, anomaly records in the fleet's
//! Redis streams; `mqtt:` sinks delivering window results.

use std::process::Command;
use std::time::Duration;

use crate::harness::*;

const PIPELINES: &str = r#"
[[pipeline]]
name = "temp"
metrics = ["temp"]
window = { kind = "tumbling", size = "1s" }
aggregates = ["count", "mean", "p99"]
sinks = ["outbox", "mqtt:fieldline/windows/temp"]
[[pipeline.detector]]
kind = "zscore"
window = 20
threshold = 4.0
"#;

/// `mosquitto_sub -d -v -q 1` on `filter`; its output (debug lines and `topic payload`
/// lines) goes to its log. Returns once the broker acknowledged the subscription.
fn subscribe(dir: &std::path::Path, name: &str, port: u16, filter: &str) -> Proc {
    require_tool("mosquitto_sub");
    require_tool("stdbuf");
    // Line-buffered: its stdout is a log file, and the test reads it while it runs.
    let sub = Proc::spawn(
        name,
        Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub"])
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-q", "1", "-d", "-v", "-i", name, "-t", filter]),
        dir,
    );
    wait_until(&format!("{name} SUBACK"), Duration::from_secs(10), || {
        sub.log().contains("SUBACK")
    });
    sub
}

/// The `topic payload` lines of `prefix/...` in a subscriber's log.
fn messages(sub: &Proc, prefix: &str) -> Vec<(String, serde_json::Value)> {
    sub.log()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.split_once(' '))
        .map(|(t, p)| {
            (
                t.to_string(),
                serde_json::from_str(p).unwrap_or_else(|e| panic!("{p}: {e}")),
            )
        })
        .collect()
}

/// Publishes `values` on `sensors/{device}/temp` with one `mosquitto_pub -q 1`, 100 ms
/// apart in event time, the last one now; returns their timestamps. (Not ahead of the
/// agent clock: an idle device's event time advances with the agent clock from its last
/// reading, so readings stamped ahead would make the next ones after a restart late.)
fn publish(port: u16, device: &str, values: &[f64]) -> Vec<i64> {
    require_tool("mosquitto_pub");
    let n = values.len() as i64;
    let now = fieldline_common::now_ms();
    let ts: Vec<i64> = (0..n).map(|i| now - (n - 1 - i) * 100).collect();
    let lines: String = values
        .iter()
        .zip(&ts)
        .map(|(v, t)| format!("{{\"value\": {v}, \"ts\": {t}}}\n"))
        .collect();
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-l"])
        .args(["-t", &format!("sensors/{device}/temp")])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_pub");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(lines.as_bytes())
        .expect("write readings");
    assert!(child.wait().expect("mosquitto_pub").success());
    ts
}

/// `n` quiet readings: 20.0 .. 20.4.
fn quiet(n: usize) -> Vec<f64> {
    (0..n).map(|i| 20.0 + (i % 5) as f64 * 0.1).collect()
}

/// 40 quiet readings, one spike of 100, 20 quiet readings; returns the spike's time.
fn publish_spike(port: u16, device: &str) -> i64 {
    let mut values = quiet(40);
    values.push(100.0);
    values.extend(quiet(20));
    publish(port, device, &values)[40]
}

fn anomalies(conn: &mut redis::Connection) -> Vec<std::collections::HashMap<String, String>> {
    stream_entries(conn, "records")
        .into_iter()
        .filter(|e| e.get("kind").map(String::as_str) == Some("anomaly"))
        .collect()
}

#[track_caller]
fn check_alert(topic: &str, alert: &serde_json::Value, device: &str, spike_ts: i64) {
    assert_eq!(topic, format!("alerts/{device}/temp"));
    assert_eq!(alert["series"], format!("{device}/temp"));
    assert_eq!(alert["device"], device);
    assert_eq!(alert["metric"], "temp");
    assert_eq!(alert["pipeline"], "temp");
    assert_eq!(alert["detector"], "zscore");
    assert_eq!(alert["ts"], spike_ts);
    assert_eq!(alert["value"], 100.0);
    let score = alert["score"].as_f64().expect("score");
    assert!((0.5..=1.0).contains(&score), "{alert}");
    let reason = alert["reason"].as_str().expect("reason");
    assert!(reason.contains("std devs"), "{reason}");
}

/// A spike: exactly one QoS 1 alert on `alerts/{device}/{metric}`, exactly one anomaly
/// record in Redis; window results on the `mqtt:` sink topic.
#[test]
fn a_spike_is_one_local_alert_and_one_anomaly_record_in_the_fleet() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let redis = spawn_redis(tmp.path());
    let fleet = spawn_fleet(&redis.url(), tmp.path());
    let agent = spawn_agent_with(tmp.path(), "gw-alerts", &fleet.url(), PIPELINES);
    let alerts = subscribe(tmp.path(), "sub-alerts", agent.mqtt_port, "alerts/#");
    let windows = subscribe(
        tmp.path(),
        "sub-windows",
        agent.mqtt_port,
        "fieldline/windows/#",
    );

    let spike_ts = publish_spike(agent.mqtt_port, "pump1");

    wait_until("the alert", Duration::from_secs(20), || {
        !messages(&alerts, "alerts/").is_empty()
    });
    let mut conn = redis.conn();
    wait_until(
        "the anomaly record in Redis",
        Duration::from_secs(20),
        || !anomalies(&mut conn).is_empty(),
    );
    wait_until(
        "window results on the mqtt sink",
        Duration::from_secs(20),
        || !messages(&windows, "fieldline/windows/temp").is_empty(),
    );
    // Anything extra would have arrived by now (windows close within ~3 s).
    std::thread::sleep(Duration::from_secs(3));

    let got = messages(&alerts, "alerts/");
    assert_eq!(got.len(), 1, "exactly one alert: {got:?}");
    check_alert(&got[0].0, &got[0].1, "pump1", spike_ts);
    assert!(
        alerts
            .log()
            .lines()
            .any(|l| l.contains("received PUBLISH (d0, q1") && l.contains("alerts/pump1/temp")),
        "the alert was not delivered at QoS 1:\n{}",
        alerts.log()
    );

    let records = anomalies(&mut conn);
    assert_eq!(records.len(), 1, "exactly one anomaly record: {records:?}");
    let r = &records[0];
    assert_eq!(r["agent"], "gw-alerts");
    assert_eq!(r["series"], "pump1/temp");
    assert_eq!(r["detector"], "zscore");
    assert_eq!(r["pipeline"], "temp");
    assert_eq!(r["ts_ms"], spike_ts.to_string());
    assert_eq!(r["value"].parse::<f64>().expect("value"), 100.0);
    assert!(r["reason"].contains("std devs"), "{r:?}");

    // The fleet's global state ranks the series by its anomaly score.
    let http = http_builder().build().expect("http client");
    let top = || -> serde_json::Value {
        http.get(format!("{}/api/v1/state/anomalies", fleet.url()))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .and_then(|r| r.bytes())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    };
    wait_until("the top anomalies", Duration::from_secs(20), || {
        top()["top_anomalies"][0]["series"] == "gw-alerts/pump1/temp"
    });
    let score = top()["top_anomalies"][0]["score"].as_f64().expect("score");
    assert_eq!(score, r["score"].parse::<f64>().expect("score"));

    // Window results on the sink topic: the window record as JSON (as `replay` prints
    // it); together they count every reading once.
    let total = || {
        messages(&windows, "fieldline/windows/temp")
            .iter()
            .map(|(_, w)| w["count"].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    wait_until(
        "all windows on the mqtt sink",
        Duration::from_secs(10),
        || total() >= 61,
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(total(), 61);
    for (topic, w) in messages(&windows, "fieldline/windows/temp") {
        assert_eq!(topic, "fieldline/windows/temp");
        assert_eq!(w["kind"], "window");
        assert_eq!(w["series"]["device"], "pump1");
        assert_eq!(w["pipeline"], "temp");
        assert!(w["aggregates"]["p99"].is_number(), "{w}");
    }
}

/// With no fleet to talk to, the local alert still goes out.
#[test]
fn an_offline_fleet_does_not_stop_local_alerts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let agent = spawn_agent_with(tmp.path(), "gw-offline", &nowhere, PIPELINES);
    let alerts = subscribe(tmp.path(), "sub-offline", agent.mqtt_port, "alerts/#");
    let spike_ts = publish_spike(agent.mqtt_port, "pump2");
    wait_until("the alert", Duration::from_secs(20), || {
        !messages(&alerts, "alerts/").is_empty()
    });
    std::thread::sleep(Duration::from_secs(1));
    let got = messages(&alerts, "alerts/");
    assert_eq!(got.len(), 1, "exactly one alert: {got:?}");
    check_alert(&got[0].0, &got[0].1, "pump2", spike_ts);
}

/// The z-score window (20 points) is restored from the shutdown checkpoint: a spike 4
/// readings after a restart is flagged, which a fresh detector could not do. After a
/// SIGKILL the ingest-log replay re-creates nothing the fleet already has.
#[test]
fn detector_state_survives_a_restart_and_a_crash_duplicates_no_anomaly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let redis = spawn_redis(tmp.path());
    let fleet = spawn_fleet(&redis.url(), tmp.path());
    let mut agent = spawn_agent_with(tmp.path(), "gw-restart", &fleet.url(), PIPELINES);
    let (config, port) = (agent.config.clone(), agent.mqtt_port);
    let mut conn = redis.conn();
    let windows = |conn: &mut redis::Connection| {
        stream_entries(conn, "records")
            .into_iter()
            .filter(|e| e.get("kind").map(String::as_str) == Some("window"))
            .map(|e| e["count"].parse::<u64>().expect("count"))
            .sum::<u64>()
    };
    publish(port, "pump3", &quiet(30));
    wait_until("the first windows", Duration::from_secs(20), || {
        windows(&mut conn) == 30
    });
    assert_eq!(agent.proc.terminate(Duration::from_secs(20)), Some(0));

    agent = run_agent(tmp.path(), "gw-restart", config.clone(), port);
    let alerts = subscribe(tmp.path(), "sub-restart", port, "alerts/#");
    let mut values = quiet(4);
    values.push(100.0);
    let spike_ts = publish(port, "pump3", &values)[4];
    wait_until(
        "the alert after the restart",
        Duration::from_secs(20),
        || !messages(&alerts, "alerts/").is_empty(),
    );
    let got = messages(&alerts, "alerts/");
    assert_eq!(got.len(), 1, "{got:?}");
    check_alert(&got[0].0, &got[0].1, "pump3", spike_ts);
    wait_until("the anomaly record", Duration::from_secs(20), || {
        anomalies(&mut conn).len() == 1
    });

    agent.proc.kill9();
    drop(alerts);
    let _agent = run_agent(tmp.path(), "gw-restart", config, port);
    publish(port, "pump3", &quiet(5));
    wait_until(
        "the windows after the crash",
        Duration::from_secs(20),
        || windows(&mut conn) == 40,
    );
    let records = anomalies(&mut conn);
    assert_eq!(records.len(), 1, "exactly one anomaly record: {records:?}");
    assert_eq!(records[0]["ts_ms"], spike_ts.to_string());
}
