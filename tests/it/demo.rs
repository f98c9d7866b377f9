//! README command 1: `fieldline-fleet demo` (what `scripts/demo.sh` runs) brings up a
//! fleet server on its embedded store, two enrolled agents and their simulators; the
//! login it prints works, both agents report, their windows and the simulator's
//! spikes (found by the agents' detectors) reach the fleet, and Ctrl-C (SIGTERM)
//! stops everything it started.

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

/// `needle<value>` on one line of the demo's banner, up to the next `'` or space.
fn banner_value(log: &str, needle: &str) -> Option<String> {
    let line = log.lines().find(|l| l.contains(needle))?;
    let rest = &line[line.find(needle)? + needle.len()..];
    Some(rest.split(['\'', '`', ' ']).next()?.to_string())
}

#[test]
fn the_demo_runs_a_fleet_with_agents_windows_and_anomalies_and_stops_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut demo = Proc::spawn(
        "demo",
        Command::new(bin("fieldline-fleet"))
            .args(["demo", "--listen", &format!("127.0.0.1:{port}")])
            .env("FIELDLINE_LOG", "info"),
        dir.path(),
    );
    let base = format!("http://127.0.0.1:{port}");
    wait_until("the demo banner", Duration::from_secs(60), || {
        demo.log().contains("Logs:")
    });
    let log = demo.log();
    let token = banner_value(&log, "Authorization: Bearer ").expect("admin token in the banner");
    let password = banner_value(&log, "password `").expect("ui password in the banner");
    assert!(log.contains(&format!("{base}/ui/")), "{log}");
    let demo_dir = log
        .lines()
        .find(|l| l.trim_start().starts_with("Logs:"))
        .and_then(|l| l.split_whitespace().last())
        .expect("logs dir in the banner")
        .to_string();

    let http = http_builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let get = |path: &str| -> Value {
        let resp = http
            .get(format!("{base}{path}"))
            .bearer_auth(&token)
            .send()
            .expect("get");
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        serde_json::from_slice(&resp.bytes().expect("body")).expect("json")
    };

    // The printed login opens the web UI.
    let login = http
        .post(format!("{base}/ui/login"))
        .header("content-type", "application/json")
        .body(json!({"user": "admin", "password": password}).to_string())
        .send()
        .expect("login");
    assert_eq!(login.status().as_u16(), 200, "the demo's login works");

    // Both agents online, each with window results uplinked.
    wait_until(
        "two agents online with windows",
        Duration::from_secs(60),
        || {
            let list = get("/api/v1/agents")["agents"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            list.len() == 2
                && list.iter().all(|a| {
                    a["status"] == "online"
                        && a["counters"]["windows_emitted"].as_u64().unwrap_or(0) > 0
                })
        },
    );
    // A simulator spike every 40 rounds (20 s) is flagged by the demo's detectors.
    wait_until("an anomaly from the demo", Duration::from_secs(90), || {
        get("/api/v1/events/anomalies")["anomalies"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    });

    assert_eq!(
        demo.terminate(Duration::from_secs(30)),
        Some(0),
        "{}",
        demo.log()
    );
    let log = demo.log();
    assert!(
        log.contains("demo: stopping agents and simulators"),
        "{log}"
    );
    // Nothing the demo started is left behind.
    let left = Command::new("pgrep")
        .args(["-f", &demo_dir])
        .output()
        .expect("pgrep");
    assert!(
        String::from_utf8_lossy(&left.stdout).trim().is_empty(),
        "demo children still running: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}
