//! Config reconciliation end to end: a real fleet (embedded store) and a real agent
//! process. Desired config per group, delivery by long poll, agent-side validation,
//! fallback when a config fails to start, staged rollout halting on rejection, drift.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::*;

struct Admin {
    http: reqwest::blocking::Client,
    base: String,
}

impl Admin {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let mut req = match method {
            "GET" => self.http.get(url),
            "PUT" => self.http.put(url),
            _ => self.http.post(url),
        }
        .bearer_auth(ADMIN_TOKEN);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().expect("request");
        let status = resp.status().as_u16();
        let json = serde_json::from_slice(&resp.bytes().expect("body")).unwrap_or(Value::Null);
        (status, json)
    }

    fn drift(&self, agent: &str) -> Value {
        self.call("GET", &format!("/api/v1/configs/agents/{agent}"), None)
            .1["drift"]
            .clone()
    }
}

#[test]
fn group_configs_reach_the_agent_and_bad_ones_keep_the_old_config_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = spawn_fleet_embedded_on(free_port(), dir.path());
    let agent = spawn_agent(dir.path(), "gw-cfg", &fleet.url());
    let admin = Admin {
        http: http_builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client"),
        base: fleet.url(),
    };
    wait_until("the agent registered", Duration::from_secs(15), || {
        admin.call("GET", "/api/v1/agents/gw-cfg", None).0 == 200
    });
    assert_eq!(admin.drift("gw-cfg")["state"], "no_config");
    let (s, _) = admin.call(
        "PUT",
        "/api/v1/agents/gw-cfg/labels",
        Some(json!({"site": "berlin"})),
    );
    assert_eq!(s, 200);

    // Invalid configs are refused by the fleet with the agent's own validation
    // message and change nothing.
    for (toml, needle) in [
        ("[window]\nsize = \"-1s\"\n", "window.size"),
        ("[agent]\nid = \"other\"\n", "[agent]"),
        ("[window\n", "invalid toml"),
    ] {
        let (s, j) = admin.call(
            "PUT",
            "/api/v1/configs/groups/site/berlin",
            Some(json!({ "toml": toml })),
        );
        assert_eq!(s, 400, "{j}");
        assert!(j["error"].as_str().expect("error").contains(needle), "{j}");
    }
    assert_eq!(
        admin
            .call("GET", "/api/v1/configs/groups/site/berlin", None)
            .0,
        404
    );

    // A valid group config reaches the online agent within 2 s (long poll).
    let sent = Instant::now();
    let (s, j) = admin.call(
        "PUT",
        "/api/v1/configs/groups/site/berlin",
        Some(json!({ "toml": "[window]\nsize = \"2s\"\n", "note": "faster windows" })),
    );
    assert_eq!(s, 200, "{j}");
    let g1 = j["generation"].as_u64().expect("generation");
    let accepted = format!("new fleet config accepted; restarting into it generation={g1}");
    wait_until(
        "the agent received the config",
        Duration::from_secs(2),
        || agent.proc.log().contains(&accepted),
    );
    eprintln!("config delivered in {:?}", sent.elapsed());
    wait_until("the agent applied it", Duration::from_secs(20), || {
        admin.drift("gw-cfg")["state"] == "in_sync"
    });
    assert_eq!(admin.drift("gw-cfg")["observed_generation"], g1);
    let state = std::fs::read_to_string(dir.path().join("gw-cfg").join("fleet-config.json"))
        .expect("agent state");
    assert!(state.contains(r#"size = \"2s\""#), "{state}");

    // Valid for the fleet, invalid merged with this agent's file (its backoff_max is
    // 500ms): rejected by the agent, which keeps running generation g1. Staged to a
    // canary, so the rollout halts.
    let (s, j) = admin.call(
        "PUT",
        "/api/v1/configs/groups/site/berlin",
        Some(json!({
            "toml": "[uplink]\nbackoff_min = \"1s\"\n",
            "rollout": { "canary": ["gw-cfg"], "percent": 0 }
        })),
    );
    assert_eq!(s, 200, "{j}");
    let g2 = j["generation"].as_u64().expect("generation");
    wait_until("the rejection reported", Duration::from_secs(10), || {
        admin.drift("gw-cfg")["state"] == "rejected"
    });
    let d = admin.drift("gw-cfg");
    assert_eq!(
        (
            d["desired_generation"].as_u64(),
            d["observed_generation"].as_u64()
        ),
        (Some(g2), Some(g1)),
        "{d}"
    );
    assert!(
        d["error"].as_str().expect("error").contains("backoff_max"),
        "{d}"
    );
    let (_, cfg) = admin.call("GET", "/api/v1/configs/groups/site/berlin", None);
    assert_eq!(cfg["rollout"]["halted"]["agent"], "gw-cfg", "{cfg}");
    assert_eq!(cfg["history"].as_array().expect("history").len(), 2);
    let (s, j) = admin.call(
        "POST",
        "/api/v1/configs/groups/site/berlin/rollout",
        Some(json!({ "percent": 100 })),
    );
    assert_eq!(s, 409, "{j}");
    assert!(
        j["error"].as_str().expect("error").contains("halted"),
        "{j}"
    );

    // A config that validates but cannot start (its MQTT port is taken): the agent
    // tries it, falls back to the last good config and reports why.
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port();
    let (s, j) = admin.call(
        "PUT",
        "/api/v1/configs/agents/gw-cfg",
        Some(json!({ "toml": format!("[mqtt]\nlisten = \"127.0.0.1:{port}\"\n") })),
    );
    assert_eq!(s, 200, "{j}");
    let g3 = j["generation"].as_u64().expect("generation");
    wait_until("the failed start reported", Duration::from_secs(30), || {
        let d = admin.drift("gw-cfg");
        d["state"] == "rejected" && d["desired_generation"] == g3
    });
    let d = admin.drift("gw-cfg");
    assert_eq!(d["observed_generation"], g1, "{d}");
    assert!(
        d["error"]
            .as_str()
            .expect("error")
            .contains("failed to start"),
        "{d}"
    );
    // Back on the last good config: its broker listens again.
    wait_for_port(agent.mqtt_port);
    let (_, drift) = admin.call("GET", "/api/v1/configs/drift", None);
    assert_eq!(drift["agents"][0]["agent"], "gw-cfg", "{drift}");
}

#[test]
fn an_unchanged_pipeline_keeps_its_state_across_a_config_change() {
    // A count window ignores time, so the check cannot race the clock: 6 readings
    // before the change and 4 after must come out as one window of 10.
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = spawn_redis(dir.path());
    let fleet = spawn_fleet(&redis.url(), dir.path());
    let mqtt_port = free_port();
    let config = agent_config(
        dir.path(),
        "gw-keep",
        mqtt_port,
        &fleet.url(),
        "\n[[pipeline]]\nname = \"keep\"\nwindow = { kind = \"count\", count = 10 }\naggregates = [\"count\", \"sum\"]\n",
    );
    enroll_agent(&config);
    let agent = Proc::spawn(
        "gw-keep",
        std::process::Command::new(bin("fieldline-agent"))
            .arg("run")
            .arg("--config")
            .arg(&config),
        dir.path(),
    );
    wait_for_port(mqtt_port);
    let admin = Admin {
        http: http_builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client"),
        base: fleet.url(),
    };
    let publish = |v: u32| {
        let ok = std::process::Command::new("mosquitto_pub")
            .args([
                "-p",
                &mqtt_port.to_string(),
                "-q",
                "1",
                "-t",
                "sensors/boiler/temp",
            ])
            .args(["-m", &v.to_string()])
            .status()
            .expect("mosquitto_pub")
            .success();
        assert!(ok, "publish {v}");
    };
    let decoded = || {
        admin.call("GET", "/api/v1/agents/gw-keep", None).1["counters"]["readings_decoded"]
            .as_u64()
            .unwrap_or(0)
    };
    require_tool("mosquitto_pub");
    for v in 1..=6 {
        publish(v);
    }
    wait_until("six readings processed", Duration::from_secs(15), || {
        decoded() >= 6
    });

    // A change that leaves the pipeline as it is; the agent restarts into it.
    let (s, j) = admin.call(
        "PUT",
        "/api/v1/configs/agents/gw-keep",
        Some(json!({ "toml": "[uplink]\nheartbeat_interval = \"400ms\"\n" })),
    );
    assert_eq!(s, 200, "{j}");
    wait_until(
        "the agent runs the new config",
        Duration::from_secs(30),
        || admin.drift("gw-keep")["state"] == "in_sync",
    );
    wait_for_port(mqtt_port);
    assert!(
        agent.log().contains("restarting into it"),
        "the agent did not restart:\n{}",
        agent.log()
    );
    for v in 7..=10 {
        publish(v);
    }

    let keep = || {
        stream_entries(&mut redis.conn(), "records")
            .into_iter()
            .filter(|e| e.get("pipeline").map(String::as_str) == Some("keep"))
            .collect::<Vec<_>>()
    };
    wait_until("the count window in Redis", Duration::from_secs(20), || {
        !keep().is_empty()
    });
    let w = &keep()[0];
    assert_eq!(
        (w["count"].as_str(), w["sum"].as_str()),
        ("10", "55"),
        "{w:?}\n{}",
        agent.log()
    );
    assert_eq!(keep().len(), 1);
}
