//! Enrollment, authentication and the admin API against a real fleet server on its
//! embedded store (no Redis: the quick-start setup). Bad input gets a clear 4xx and
//! changes nothing.

use std::process::Command;
use std::time::Duration;

use fieldline_common::codec::{from_cbor, to_cbor};
use fieldline_common::wire::*;
use serde_json::Value;

use crate::harness::*;

struct Setup {
    dir: tempfile::TempDir,
    fleet: Fleet,
    http: reqwest::blocking::Client,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = spawn_fleet_embedded_on(free_port(), dir.path());
    let http = http_builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    Setup { dir, fleet, http }
}

enum Body {
    None,
    Cbor(Vec<u8>),
    Json(&'static str),
}

impl Setup {
    #[track_caller]
    fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Body,
    ) -> (u16, Value, Vec<u8>) {
        let url = format!("{}{path}", self.fleet.url());
        let mut req = match method {
            "GET" => self.http.get(url),
            "POST" => self.http.post(url),
            "PUT" => self.http.put(url),
            "DELETE" => self.http.delete(url),
            other => panic!("method {other}"),
        };
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req = match body {
            Body::None => req,
            Body::Cbor(b) => req.header("content-type", "application/cbor").body(b),
            Body::Json(j) => req.header("content-type", "application/json").body(j),
        };
        let resp = req.send().expect("request");
        let status = resp.status().as_u16();
        let bytes = resp.bytes().expect("body").to_vec();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, json, bytes)
    }

    #[track_caller]
    fn admin(&self, method: &str, path: &str, body: Body) -> (u16, Value) {
        let (s, j, _) = self.call(method, path, Some(ADMIN_TOKEN), body);
        (s, j)
    }

    fn enroll(&self, token: &str, agent: &str) -> (u16, Value, Option<String>) {
        let body = to_cbor(&EnrollRequest {
            v: PROTOCOL_VERSION,
            agent_id: agent.into(),
            version: "t".into(),
        })
        .expect("encode");
        let (s, j, bytes) = self.call("POST", "/api/v1/enroll", Some(token), Body::Cbor(body));
        let cred = (s == 200).then(|| {
            from_cbor::<EnrollReply>(&bytes, 1 << 20)
                .expect("reply")
                .credential
        });
        (s, j, cred)
    }

    fn heartbeat(&self, credential: &str, agent: &str) -> (u16, Value) {
        let hb = Heartbeat {
            v: PROTOCOL_VERSION,
            agent_id: agent.into(),
            version: "1".into(),
            started_ms: 1,
            sent_ms: 2,
            counters: AgentCounters::default(),
        };
        let (s, j, _) = self.call(
            "POST",
            "/api/v1/heartbeat",
            Some(credential),
            Body::Cbor(to_cbor(&hb).expect("encode")),
        );
        (s, j)
    }

    fn ingest(&self, credential: &str, agent: &str, records: Vec<Record>) -> (u16, Value) {
        let body = to_cbor(&IngestBatch {
            v: PROTOCOL_VERSION,
            agent_id: agent.into(),
            records,
        })
        .expect("encode");
        let (s, j, _) = self.call("POST", "/api/v1/ingest", Some(credential), Body::Cbor(body));
        (s, j)
    }

    fn agent_ids(&self) -> Vec<String> {
        let (s, j) = self.admin("GET", "/api/v1/agents", Body::None);
        assert_eq!(s, 200, "{j}");
        j["agents"]
            .as_array()
            .expect("agents")
            .iter()
            .map(|a| a["id"].as_str().expect("id").to_string())
            .collect()
    }
}

fn window(seq: u64, count: u64) -> Record {
    Record {
        seq,
        created_ms: 1,
        body: RecordBody::Window(WindowResult {
            series: SeriesKey::new("d", "m"),
            start_ms: 0,
            end_ms: 1000,
            count,
            sum: 1.0,
            mean: 1.0,
            min: 1.0,
            max: 1.0,
            revision: 0,
            pipeline: Default::default(),
            aggregates: Default::default(),
            unit: String::new(),
        }),
    }
}

#[test]
fn the_admin_api_requires_the_admin_token() {
    let s = setup();
    let (_, _, cred) = s.enroll(BOOTSTRAP_TOKEN, "gw");
    let cred = cred.expect("enrolled");
    for token in [None, Some(BOOTSTRAP_TOKEN), Some(cred.as_str()), Some("x")] {
        for (method, path) in [
            ("GET", "/api/v1/agents"),
            ("GET", "/api/v1/agents/gw"),
            ("POST", "/api/v1/agents/gw/revoke"),
            ("GET", "/api/v1/dlq"),
            ("GET", "/api/v1/streams"),
        ] {
            let (status, json, _) = s.call(method, path, token, Body::None);
            assert_eq!(status, 401, "{method} {path} with {token:?}: {json}");
            assert!(json["error"].as_str().is_some(), "{json}");
        }
    }
    // Nothing above revoked anything.
    assert_eq!(s.heartbeat(&cred, "gw").0, 200);
    assert_eq!(s.admin("GET", "/api/v1/streams", Body::None).0, 200);
}

#[test]
fn enrollment_issues_a_credential_that_can_be_revoked() {
    let s = setup();
    // Wrong bootstrap token: refused, nothing registered.
    let (status, json, _) = s.enroll("not-the-bootstrap-token", "gw");
    assert_eq!(
        (status, json["error"].as_str()),
        (401, Some("invalid bootstrap token"))
    );
    let (status, _, _) = s.enroll(ADMIN_TOKEN, "gw");
    assert_eq!(status, 401);
    let (status, json, _) = s.enroll(BOOTSTRAP_TOKEN, "bad id!");
    assert_eq!(status, 400, "{json}");
    assert!(s.agent_ids().is_empty());

    let (status, _, cred) = s.enroll(BOOTSTRAP_TOKEN, "gw");
    assert_eq!(status, 200);
    let cred = cred.expect("credential");
    assert!(cred.starts_with("fla1.gw."), "{cred}");
    // A second enrollment must not hand out a second identity.
    let (status, json, _) = s.enroll(BOOTSTRAP_TOKEN, "gw");
    assert_eq!(status, 409, "{json}");
    assert!(json["error"]
        .as_str()
        .expect("msg")
        .contains("already enrolled"));

    assert_eq!(s.heartbeat(&cred, "gw").0, 200);
    // A credential with one digit changed, a credential of another agent, none.
    let mut wrong = cred.clone();
    let last = wrong.pop().expect("char");
    wrong.push(if last == '0' { '1' } else { '0' });
    assert_eq!(
        s.heartbeat(&wrong, "gw"),
        (
            401,
            serde_json::json!({"error": "invalid agent credential"})
        )
    );
    let (_, _, other) = s.enroll(BOOTSTRAP_TOKEN, "gw-2");
    let (status, json) = s.heartbeat(&other.expect("cred"), "gw");
    assert_eq!(status, 403, "{json}");
    let (status, json, _) = s.call("POST", "/api/v1/heartbeat", None, Body::Cbor(vec![]));
    assert_eq!(status, 401, "{json}");
    let (status, _) = s.ingest(&wrong, "gw", vec![window(1, 1)]);
    assert_eq!(status, 401);

    // Revocation shuts the agent out at once and blocks re-enrollment.
    let (status, json) = s.admin("POST", "/api/v1/agents/gw/revoke", Body::None);
    assert_eq!(status, 200, "{json}");
    let (status, json) = s.heartbeat(&cred, "gw");
    assert_eq!(status, 403, "{json}");
    assert!(json["error"].as_str().expect("msg").contains("revoked"));
    assert_eq!(s.ingest(&cred, "gw", vec![window(1, 1)]).0, 403);
    assert_eq!(s.enroll(BOOTSTRAP_TOKEN, "gw").0, 403);
    let (_, agent) = s.admin("GET", "/api/v1/agents/gw", Body::None);
    assert_eq!(agent["status"], "revoked");

    // An admin lets it back in; it gets a new credential and the old one stays dead.
    assert_eq!(
        s.admin("POST", "/api/v1/agents/gw/allow-reenroll", Body::None)
            .0,
        200
    );
    let (status, _, fresh) = s.enroll(BOOTSTRAP_TOKEN, "gw");
    assert_eq!(status, 200);
    let fresh = fresh.expect("credential");
    assert_ne!(fresh, cred);
    assert_eq!(s.heartbeat(&fresh, "gw").0, 200);
    assert_eq!(s.heartbeat(&cred, "gw").0, 401);
    // Nothing was ingested by any refused request.
    let (_, recs) = s.admin("GET", "/api/v1/agents/gw/records", Body::None);
    assert_eq!(recs["entries"], serde_json::json!([]));
}

#[test]
fn admin_api_agents_labels_dlq_and_bad_input() {
    let s = setup();
    let (_, _, cred) = s.enroll(BOOTSTRAP_TOKEN, "gw");
    let cred = cred.expect("credential");
    let (status, _) = s.ingest(&cred, "gw", vec![window(1, 1), window(2, 0), window(3, 1)]);
    assert_eq!(status, 200);

    // Unknown agent and bad input: clear 4xx.
    let cases: Vec<(&str, &str, Body, u16, &str)> = vec![
        (
            "GET",
            "/api/v1/agents/nope",
            Body::None,
            404,
            "agent `nope` is unknown",
        ),
        (
            "POST",
            "/api/v1/agents/nope/revoke",
            Body::None,
            404,
            "unknown",
        ),
        (
            "PUT",
            "/api/v1/agents/nope/labels",
            Body::Json(r#"{"site":"x"}"#),
            404,
            "unknown",
        ),
        (
            "PUT",
            "/api/v1/agents/gw/labels",
            Body::Json("{not json"),
            400,
            "invalid json",
        ),
        (
            "PUT",
            "/api/v1/agents/gw/labels",
            Body::Json(r#"{"site":"has space"}"#),
            400,
            "label `site=has space`",
        ),
        (
            "PUT",
            "/api/v1/agents/gw/labels",
            Body::Json(r#"{"site":1}"#),
            400,
            "invalid json",
        ),
        (
            "PUT",
            "/api/v1/agents/gw/labels",
            Body::Cbor(vec![0xa0]),
            415,
            "application/json",
        ),
        (
            "GET",
            "/api/v1/dlq?limit=0",
            Body::None,
            400,
            "limit must be",
        ),
        ("GET", "/api/v1/dlq?limit=abc", Body::None, 400, ""),
        ("DELETE", "/api/v1/dlq/12345", Body::None, 404, "not found"),
        (
            "POST",
            "/api/v1/dlq/garbage/replay",
            Body::None,
            404,
            "not found",
        ),
    ];
    for (method, path, body, status, needle) in cases {
        let (s_, json, raw) = s.call(method, path, Some(ADMIN_TOKEN), body);
        let text = String::from_utf8_lossy(&raw);
        assert_eq!(s_, status, "{method} {path}: {text}");
        assert!(
            text.contains(needle),
            "{method} {path}: {needle:?} not in {json}"
        );
    }
    let (_, agent) = s.admin("GET", "/api/v1/agents/gw", Body::None);
    assert_eq!(agent["labels"], serde_json::json!({}));

    let (status, json) = s.admin(
        "PUT",
        "/api/v1/agents/gw/labels",
        Body::Json(r#"{"site":"berlin","model":"rpi4"}"#),
    );
    assert_eq!(status, 200, "{json}");
    let (_, agent) = s.admin("GET", "/api/v1/agents/gw", Body::None);
    assert_eq!(
        agent["labels"],
        serde_json::json!({"site": "berlin", "model": "rpi4"})
    );
    assert_eq!(
        (agent["last_acked_seq"].as_u64(), agent["status"].as_str()),
        (Some(3), Some("never_seen"))
    );

    let (_, dlq) = s.admin("GET", "/api/v1/dlq", Body::None);
    let entries = dlq["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 1, "{dlq}");
    assert_eq!(entries[0]["fields"]["reason"], "window result with count 0");
    let id = entries[0]["id"].as_str().expect("id").to_string();
    let (_, streams) = s.admin("GET", "/api/v1/streams", Body::None);
    let len = |name: &str| {
        streams["streams"]
            .as_array()
            .expect("streams")
            .iter()
            .find(|st| st["name"] == name)
            .and_then(|st| st["length"].as_u64())
    };
    assert_eq!((len("records"), len("dlq")), (Some(2), Some(1)));

    assert_eq!(
        s.admin("POST", &format!("/api/v1/dlq/{id}/replay"), Body::None)
            .0,
        200
    );
    assert_eq!(
        s.admin("POST", &format!("/api/v1/dlq/{id}/replay"), Body::None)
            .0,
        404
    );
    let (_, recs) = s.admin("GET", "/api/v1/agents/gw/records", Body::None);
    let recs = recs["entries"].as_array().expect("entries").clone();
    assert_eq!(recs.len(), 3);
    assert_eq!(recs[2]["fields"]["replayed_from"], id.as_str());
    // Still broken: the global-state workers file it again, with their reason.
    let (_, dlq) = s.admin("GET", "/api/v1/dlq", Body::None);
    let entries = dlq["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 1, "{dlq}");
    assert_eq!(
        entries[0]["fields"]["reason"],
        "worker: field `mean` is missing"
    );
    assert_eq!(entries[0]["fields"]["replayed_from"], id.as_str());
    let again = entries[0]["id"].as_str().expect("id");
    assert_eq!(
        s.admin("DELETE", &format!("/api/v1/dlq/{again}"), Body::None)
            .0,
        200
    );
    let (_, dlq) = s.admin("GET", "/api/v1/dlq", Body::None);
    assert_eq!(dlq["entries"], serde_json::json!([]));
}

#[test]
fn an_enrolled_agent_delivers_to_the_embedded_store() {
    require_tool("mosquitto_pub");
    let s = setup();
    let agent = spawn_agent(s.dir.path(), "gw-quick", &s.fleet.url());
    // The enroll command wrote a private credential and refuses to run twice.
    let cred_file = s.dir.path().join("gw-quick").join("fleet-credential");
    let out = Command::new(bin("fieldline-agent"))
        .arg("enroll")
        .arg("--config")
        .arg(&agent.config)
        .args(["--token", BOOTSTRAP_TOKEN])
        .output()
        .expect("enroll");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already has a credential"), "{stderr}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&cred_file)
            .expect("credential")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    for v in ["21.5", "22.5", "not-a-number"] {
        let ok = Command::new("mosquitto_pub")
            .args(["-p", &agent.mqtt_port.to_string(), "-q", "1"])
            .args(["-t", "sensors/boiler/temp", "-m", v])
            .status()
            .expect("mosquitto_pub")
            .success();
        assert!(ok);
    }
    // The two readings may fall into one window or two.
    let totals = || {
        let (_, recs) = s.admin("GET", "/api/v1/agents/gw-quick/records", Body::None);
        recs["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .map(|e| &e["fields"])
            .filter(|f| f["series"] == "boiler/temp")
            .fold((0u64, 0f64), |(c, s), f| {
                let num = |k: &str| {
                    f[k].as_str()
                        .and_then(|v| v.parse::<f64>().ok())
                        .unwrap_or(0.0)
                };
                (c + num("count") as u64, s + num("sum"))
            })
    };
    wait_until(
        "the windows and the dead letter in the fleet",
        Duration::from_secs(20),
        || {
            let (_, dlq) = s.admin("GET", "/api/v1/dlq", Body::None);
            totals().0 >= 2 && dlq["entries"].as_array().is_some_and(|e| !e.is_empty())
        },
    );
    assert_eq!(totals(), (2, 44.0));
    let (_, a) = s.admin("GET", "/api/v1/agents/gw-quick", Body::None);
    assert_eq!(a["status"], "online", "{a}");
}
