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

fn spawn_configured_agent(dir: &std::path::Path, id: &str, fleet_url: &str) -> Agent {
    let mqtt_port = free_port();
    let config = agent_config(dir, id, mqtt_port, fleet_url, PIPELINES);
    if fleet_url_up(fleet_url) {
        enroll_agent(&config);
    }
    let proc = Proc::spawn(
        id,
        Command::new(bin("fieldline-agent"))
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env("FIELDLINE_LOG", "info,fieldline_agent=debug"),
        dir,
    );
    wait_for_port(mqtt_port);
    Agent {
        mqtt_port,
        proc,
        config,
    }
}

fn fleet_url_up(url: &str) -> bool {
    url.rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .is_some_and(|p| std::net::TcpStream::connect(("127.0.0.1", p)).is_ok())
}

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

/// 40 quiet readings (20.0 .. 20.4), one spike of 100, 20 quiet readings; 100 ms apart
/// in event time.
fn publish_spike(port: u16, device: &str) -> i64 {
    require_tool("mosquitto_pub");
    let base = fieldline_common::now_ms();
    let mut lines = String::new();
    for i in 0..61i64 {
        let value = if i == 40 {
            100.0
        } else {
            20.0 + (i % 5) as f64 * 0.1
        };
        lines.push_str(&format!(
            "{{\"value\": {value}, \"ts\": {}}}\n",
            base + i * 100
        ));
    }
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
    base + 40 * 100
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
    let agent = spawn_configured_agent(tmp.path(), "gw-alerts", &fleet.url());
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
    let anomalies = |conn: &mut redis::Connection| {
        stream_entries(conn, "records")
            .into_iter()
            .filter(|e| e.get("kind").map(String::as_str) == Some("anomaly"))
            .collect::<Vec<_>>()
    };
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
    let agent = spawn_configured_agent(tmp.path(), "gw-offline", &nowhere);
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
