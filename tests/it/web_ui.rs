//! The operator web UI in a real headless Chromium (Debian's `chromium` driven by
//! `chromedriver` over WebDriver, through fantoccini) against a real fleet server
//! (embedded store), real agent processes (one fed by the MQTT simulator, one whose
//! detectors flag a spike published with `mosquitto_pub`), and real HTTP/MQTT input. Screenshots of every page go to `tests/artifacts/ui/`, and
//! `failure.png` when a step fails.
//!
//! The security of the UI (cookies, CSRF, refusals) is tested over plain HTTP in
//! `ui_security_over_http`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use fieldline_common::codec::to_cbor;
use fieldline_common::wire::*;
use serde_json::{json, Value};

use crate::harness::*;

const USER: &str = "ops";
const PASSWORD: &str = "correct horse battery staple";

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts/ui");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

/// A fleet whose first UI account is `USER`: on its embedded store, or on Redis.
fn spawn_ui_fleet(dir: &Path, redis_url: Option<&str>) -> Fleet {
    let port = free_port();
    let mut cmd = fleet_command(port);
    match redis_url {
        Some(url) => cmd.args(["--redis-url", url]),
        None => cmd.arg("--data-dir").arg(dir.join("fleet-store")),
    };
    let proc = Proc::spawn(
        &format!("fleet-{port}"),
        cmd.env("FIELDLINE_ADMIN_USER", USER)
            .env("FIELDLINE_ADMIN_PASSWORD", PASSWORD),
        dir,
    );
    wait_for_port(port);
    Fleet { port, proc }
}

/// A headless Chromium session; blocking methods over fantoccini's async API, so
/// the test can mix browser steps with the harness's blocking HTTP client.
struct Browser {
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
    _driver: Proc,
    shots: PathBuf,
}

type Step<T> = Result<T, String>;

impl Browser {
    fn start(dir: &Path) -> Browser {
        require_tool("chromium");
        require_tool("chromedriver");
        let port = free_port();
        let driver = Proc::spawn(
            "chromedriver",
            Command::new("chromedriver").arg(format!("--port={port}")),
            dir,
        );
        wait_for_port(port);
        let profile = dir.join("chromium-profile");
        let caps = json!({
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                // Chromium's background connections are refused on a closed network:
                // switch them off so pages load without waiting for them.
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.display()),
                ]
            }
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let client = rt
            .block_on(async {
                let connector = hyper_util::client::legacy::connect::HttpConnector::new();
                ClientBuilder::new(connector)
                    .capabilities(caps)
                    .connect(&format!("http://127.0.0.1:{port}"))
                    .await
            })
            .expect("a chromium session through chromedriver");
        let shots = artifacts();
        // A failure screenshot left by an earlier run would mislead.
        let _ = std::fs::remove_file(shots.join("failure.png"));
        Browser {
            rt,
            client: Some(client),
            _driver: driver,
            shots,
        }
    }

    fn c(&self) -> &Client {
        self.client.as_ref().expect("browser open")
    }

    fn goto(&self, url: &str) -> Step<()> {
        self.rt
            .block_on(self.c().goto(url))
            .map_err(|e| format!("goto {url}: {e}"))
    }

    fn eval(&self, js: &str) -> Step<Value> {
        self.rt
            .block_on(self.c().execute(js, vec![]))
            .map_err(|e| format!("script {js}: {e}"))
    }

    /// Waits until `css` matches an element whose text contains `needle`.
    fn wait_text(&self, css: &str, needle: &str, timeout: Duration) -> Step<String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            let found = self.rt.block_on(async {
                let mut texts = Vec::new();
                for el in self.c().find_all(Locator::Css(css)).await? {
                    texts.push(el.text().await.unwrap_or_default());
                }
                Ok::<_, fantoccini::error::CmdError>(texts)
            });
            if let Ok(texts) = found {
                if let Some(t) = texts.iter().find(|t| t.contains(needle)) {
                    return Ok(t.clone());
                }
                last = texts.join(" | ");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "timed out after {timeout:?} waiting for `{css}` to contain `{needle}`; it shows: {last}"
        ))
    }

    /// Waits until the script `js` returns `true`.
    fn wait_true(&self, what: &str, js: &str, timeout: Duration) -> Step<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.eval(js)? == json!(true) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!("timed out after {timeout:?} waiting for {what}"))
    }

    /// Clicks `css`, finding it again when a live refresh replaced it meanwhile
    /// (a stale element).
    fn click(&self, css: &str) -> Step<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = self.rt.block_on(async {
                self.c()
                    .wait()
                    .at_most(Duration::from_secs(10))
                    .for_element(Locator::Css(css))
                    .await?
                    .click()
                    .await
            });
            match r {
                Ok(()) => return Ok(()),
                Err(e) if e.to_string().contains("stale") && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(format!("click {css}: {e}")),
            }
        }
    }

    fn type_into(&self, css: &str, text: &str, clear: bool) -> Step<()> {
        self.rt
            .block_on(async {
                let el = self
                    .c()
                    .wait()
                    .at_most(Duration::from_secs(10))
                    .for_element(Locator::Css(css))
                    .await?;
                if clear {
                    el.clear().await?;
                }
                el.send_keys(text).await
            })
            .map_err(|e| format!("type into {css}: {e}"))
    }

    fn is_enabled(&self, css: &str) -> Step<bool> {
        self.rt
            .block_on(async { self.c().find(Locator::Css(css)).await?.is_enabled().await })
            .map_err(|e| format!("{css}: {e}"))
    }

    fn select(&self, css: &str, value: &str) -> Step<()> {
        self.rt
            .block_on(async {
                self.c()
                    .find(Locator::Css(css))
                    .await?
                    .select_by_value(value)
                    .await
            })
            .map_err(|e| format!("select {value} in {css}: {e}"))
    }

    fn set_size(&self, w: u32, h: u32) -> Step<()> {
        self.rt
            .block_on(self.c().set_window_size(w, h))
            .map_err(|e| format!("window size: {e}"))
    }

    /// Readable at phone width (390 px): tables stack, nothing scrolls sideways.
    /// Leaves a `<page>-phone.png` screenshot.
    fn phone_check(&self, page: &str) -> Step<()> {
        self.set_size(390, 844)?;
        std::thread::sleep(Duration::from_millis(300));
        let overflow =
            self.eval("return document.documentElement.scrollWidth - window.innerWidth")?;
        self.screenshot(&format!("{page}-phone"));
        self.set_size(1280, 900)?;
        if overflow.as_f64().unwrap_or(1e9) > 1.0 {
            return Err(format!(
                "the {page} page scrolls sideways at 390 px by {overflow} px"
            ));
        }
        Ok(())
    }

    fn screenshot(&self, name: &str) {
        match self.rt.block_on(self.c().screenshot()) {
            Ok(png) => {
                let path = self.shots.join(format!("{name}.png"));
                std::fs::write(&path, png).expect("write screenshot");
                eprintln!("screenshot: {}", path.display());
            }
            Err(e) => eprintln!("screenshot {name} failed: {e}"),
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            let _ = self.rt.block_on(c.close());
        }
    }
}

/// The pipeline of `gw-anom`, the agent whose detectors produce the anomalies the
/// browser sees (`gw-ui` gets fleet configs during the test, which re-exec it and
/// would replace its pipelines). Two detectors so the minimum-score filter has
/// something to hide: the threshold scores the spike 1, the rate of change (about
/// 770/s against a limit of 600/s) about 0.68.
const ANOMALY_PIPELINE: &str = r#"
[[pipeline]]
name = "pressure"
metrics = ["pressure"]
window = { kind = "tumbling", size = "1s" }
aggregates = ["max"]
unit = "bar"
[[pipeline.detector]]
kind = "threshold"
max = 90.0
[[pipeline.detector]]
kind = "rate_of_change"
max_per_sec = 600.0
"#;

/// Readings 100 ms apart in event time, the last one now: 20 quiet ones around 20,
/// a spike of 97.5, 5 quiet ones. Stamped rather than timed by arrival, so the rate
/// of change (and its score) is the same on every run; none is ahead of the agent
/// clock.
fn pressure_spike() -> Vec<String> {
    let quiet = |n: usize| (0..n).map(|i| 20.0 + (i % 5) as f64 * 0.1);
    let values: Vec<f64> = quiet(20).chain([97.5]).chain(quiet(5)).collect();
    let now = fieldline_common::now_ms();
    let last = values.len() as i64 - 1;
    values
        .iter()
        .zip(0..)
        .map(|(v, i)| json!({"value": v, "ts": now - (last - i) * 100}).to_string())
        .collect()
}

/// Publishes each payload as one message on `topic`, QoS 1, with one
/// `mosquitto_pub -l`: the agent's broker has them all when it returns.
fn mosquitto_pub(port: u16, topic: &str, payloads: &[String]) -> Step<()> {
    use std::io::Write;
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-l"])
        .args(["-t", topic])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("mosquitto_pub: {e}"))?;
    let lines: String = payloads.iter().map(|p| format!("{p}\n")).collect();
    // Dropping stdin at the end of the statement ends the input, so it exits.
    child
        .stdin
        .take()
        .ok_or("mosquitto_pub has no stdin")?
        .write_all(lines.as_bytes())
        .map_err(|e| format!("mosquitto_pub stdin: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("mosquitto_pub: {e}"))?;
    if !out.status.success() {
        return Err(format!("mosquitto_pub on {topic}: {out:?}"));
    }
    Ok(())
}

fn anomaly_batch(agent: &str, seq: u64) -> Vec<u8> {
    to_cbor(&IngestBatch {
        v: PROTOCOL_VERSION,
        agent_id: agent.into(),
        records: vec![Record {
            seq,
            created_ms: fieldline_common::now_ms(),
            body: RecordBody::Anomaly(Anomaly {
                pipeline: String::new(),
                series: SeriesKey::new("pump", "pressure"),
                ts_ms: fieldline_common::now_ms(),
                value: 97.5,
                score: 0.93,
                detector: "threshold".into(),
                reason: "pressure above 90".into(),
            }),
        }],
    })
    .expect("encode")
}

fn admin_get(http: &reqwest::blocking::Client, url: &str) -> Value {
    let resp = http.get(url).bearer_auth(ADMIN_TOKEN).send().expect("get");
    assert!(resp.status().is_success(), "{url}: {}", resp.status());
    serde_json::from_slice(&resp.bytes().expect("body")).expect("json")
}

#[test]
fn web_ui_in_a_browser_fleet_agent_config_anomaly_and_dead_letter() {
    require_tool("mosquitto_pub");
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = spawn_ui_fleet(dir.path(), None);
    let agent = spawn_agent(dir.path(), "gw-ui", &fleet.url());
    let anom = spawn_agent_with(dir.path(), "gw-anom", &fleet.url(), ANOMALY_PIPELINE);
    let _sim = Proc::spawn(
        "simulator",
        Command::new(bin("fieldline-agent"))
            .args(["simulate", "--broker"])
            .arg(format!("127.0.0.1:{}", agent.mqtt_port))
            .args(["--devices", "boiler", "--metrics", "temp"])
            .args(["--interval", "200ms", "--seed", "7"]),
        dir.path(),
    );
    let http = http_builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let browser = Browser::start(dir.path());
    if let Err(e) = browser_steps(&browser, &fleet, &agent, &anom, &http) {
        browser.screenshot("failure");
        panic!("{e}");
    }
}

fn browser_steps(
    b: &Browser,
    fleet: &Fleet,
    agent: &Agent,
    anom: &Agent,
    http: &reqwest::blocking::Client,
) -> Step<()> {
    let base = fleet.url();
    let long = Duration::from_secs(30);

    // Log in (a wrong password first).
    b.goto(&format!("{base}/"))?;
    b.wait_text("#login-title", "log in", long)?;
    b.screenshot("login");
    b.type_into("#login-user", USER, true)?;
    b.type_into("#login-password", "not the password", true)?;
    b.click("#login-submit")?;
    b.wait_text("#login-error", "wrong user name or password", long)?;
    // Keyboard only: Enter in the password field submits (WebDriver's Enter key).
    b.type_into("#login-password", &format!("{PASSWORD}\u{E007}"), true)?;

    // Fleet: the agents are listed and online, with their version.
    b.wait_text("#user", USER, long)?;
    b.wait_text("tr[data-id='gw-ui']", "online", long)?;
    b.wait_text("#fleet-summary", "2 agents: 2 online", long)?;
    b.screenshot("fleet");
    b.phone_check("fleet")?;
    // The filter hides agents without the label.
    b.type_into("#fleet-filter", "site=nowhere", true)?;
    b.wait_text("#fleet-summary", "showing 0", long)?;
    b.type_into("#fleet-filter", "gw-", true)?;
    b.wait_text("#fleet-summary", "showing 2", long)?;

    // Agent: series with latest values and a live chart of window aggregates.
    b.click("a[href='#/agent/gw-ui']")?;
    b.wait_text("#agent-series", "boiler/temp", long)?;
    b.wait_text("#agent-charts figcaption", "boiler/temp", long)?;
    // gw-ui's default pipeline has no unit: the axis does not invent one.
    b.wait_text(
        "#agent-charts figcaption",
        "y: temp in the sensor's unit",
        long,
    )?;
    let points = b.eval(
        "return document.querySelector('#agent-charts polyline').getAttribute('points').split(' ').length",
    )?;
    let before = points.as_u64().unwrap_or(0);
    // New windows arrive over SSE and extend the chart without a reload.
    let start = Instant::now();
    loop {
        let now = b
            .eval("return document.querySelector('#agent-charts polyline').getAttribute('points').split(' ').length")?
            .as_u64()
            .unwrap_or(0);
        if now > before {
            break;
        }
        if start.elapsed() > long {
            return Err(format!("the chart did not grow past {before} points"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    b.screenshot("agent");
    b.phone_check("agent")?;
    // Labels set on the agent page select it in the fleet filter.
    b.type_into("#agent-labels", "site=lab rack=3", true)?;
    b.click("#agent-labels-save")?;
    b.wait_text("#agent-labels-msg", "labels saved", long)?;
    b.click("a[href='#/fleet']")?;
    b.type_into("#fleet-filter", "site=lab", true)?;
    b.wait_text("#fleet-summary", "showing 1", long)?;
    b.wait_text("tr[data-id='gw-ui']", "rack=3 site=lab", long)?;
    b.type_into("#fleet-filter", "site=elsewhere", true)?;
    b.wait_text("#fleet-summary", "showing 0", long)?;
    b.type_into("#fleet-filter", "", true)?;

    // Configs: validation errors before saving, a diff, save, the agent reports
    // the new generation.
    b.goto(&format!("{base}/ui/#/configs/agent/gw-ui"))?;
    b.wait_text("#cfg-problems", "valid", long)?;
    b.type_into("#cfg-toml", "[window]\nsize = \"-1s\"\n", true)?;
    b.wait_text("#cfg-problems", "window.size", long)?;
    if b.is_enabled("#cfg-save")? {
        return Err("an invalid config can be saved".into());
    }
    b.screenshot("configs-invalid");
    b.type_into("#cfg-toml", "[window]\nsize = \"2s\"\n", true)?;
    b.wait_text("#cfg-valid", "valid", long)?;
    b.wait_text("#cfg-diff", "+ size = \"2s\"", long)?;
    b.type_into("#cfg-note", "slower windows", true)?;
    b.click("#cfg-save")?;
    let saved = b.wait_text("#cfg-saved", "Saved generation", long)?;
    let g1: u64 = saved
        .split_whitespace()
        .nth(2)
        .and_then(|g| g.parse().ok())
        .ok_or_else(|| format!("no generation in `{saved}`"))?;
    b.screenshot("configs");
    b.click("a[href='#/fleet']")?;
    b.wait_text(
        "tr[data-id='gw-ui']",
        &format!("g{g1} / g{g1} in sync"),
        Duration::from_secs(60),
    )?;
    b.screenshot("fleet-config-applied");

    // One-click rollback: a second version, then back to the first one.
    b.goto(&format!("{base}/ui/#/configs/agent/gw-ui"))?;
    b.wait_text("#cfg-history", "slower windows", long)?;
    b.type_into("#cfg-toml", "[window]\nsize = \"3s\"\n", true)?;
    b.wait_text("#cfg-valid", "valid", long)?;
    b.click("#cfg-save")?;
    b.wait_text("#cfg-saved", "Saved generation", long)?;
    b.click(&format!("button[data-rollback='{g1}']"))?;
    b.wait_text(
        "#cfg-history",
        &format!("rollback to generation {g1}"),
        long,
    )?;
    let c = admin_get(http, &format!("{base}/api/v1/configs/agents/gw-ui"));
    let resolved = c["resolved"]["toml"].as_str().unwrap_or("");
    if !resolved.contains("size = \"2s\"") {
        return Err(format!(
            "after the rollback the desired config is {resolved}"
        ));
    }
    let g3 = c["resolved"]["generation"].as_u64().unwrap_or(0);
    b.screenshot("configs-history");
    b.phone_check("configs")?;

    // A staged rollout to a group: one canary, 0 % of the rest. (gw-ui keeps its
    // own override, which wins; this checks what the page sends and shows.)
    b.select("#cfg-kind", "group")?;
    b.type_into("#cfg-gkey", "site", true)?;
    b.type_into("#cfg-gval", "lab", true)?;
    b.click("#cfg-load")?;
    b.wait_text("#cfg-history", "no versions", long)?;
    b.type_into("#cfg-toml", "[window]\nsize = \"4s\"\n", true)?;
    b.wait_text("#cfg-valid", "valid", long)?;
    b.type_into("#cfg-canary", "gw-ui", true)?;
    b.type_into("#cfg-percent", "0", true)?;
    b.click("#cfg-save")?;
    b.wait_text("#cfg-status", "0% and canaries gw-ui", long)?;
    let g = admin_get(http, &format!("{base}/api/v1/configs/groups/site/lab"));
    if g["rollout"]["canary"] != json!(["gw-ui"]) || g["rollout"]["percent"] != json!(0) {
        return Err(format!("the group rollout is {g}"));
    }
    b.screenshot("configs-rollout");

    // Anomalies: a spike published to gw-anom's broker; its detectors flag it, the
    // anomaly records travel its outbox and uplink, and they appear live.
    b.goto(&format!("{base}/ui/#/anomalies"))?;
    b.wait_text("#an-feed", "no anomaly", long)?;
    b.wait_text("#live", "live", long)?;
    b.eval("window.__notReloaded = 42; return 1")?;
    mosquitto_pub(anom.mqtt_port, "sensors/pump/pressure", &pressure_spike())?;
    let item = "#an-feed li[data-series='gw-anom/pump/pressure']";
    b.wait_text(item, "threshold: value 97.5 above max 90", long)?;
    b.wait_text(item, "rate_of_change: rate of change", long)?;
    if b.eval("return window.__notReloaded")? != json!(42) {
        return Err("the anomalies page reloaded instead of updating live".into());
    }
    // One alert per detector: the quiet readings after the spike end no episode.
    let items = b.eval(&format!(
        "return document.querySelectorAll(\"{item}\").length"
    ))?;
    if items != json!(2) {
        return Err(format!("{items} anomalies of the spike in the feed, not 2"));
    }
    b.wait_text("#an-top", "gw-anom/pump/pressure", long)?;
    b.screenshot("anomalies");
    b.phone_check("anomalies")?;
    // Filters apply to the feed at once: the rate of change scores below 0.9.
    b.type_into("#an-min", "0.9", true)?;
    b.wait_true(
        "the minimum score to hide the rate-of-change anomaly",
        "const t = document.querySelector('#an-feed').textContent; \
         return t.includes('above max 90') && !t.includes('rate of change')",
        long,
    )?;
    b.type_into("#an-agent", "gw-ui", true)?;
    b.wait_text("#an-feed", "no anomaly matches", long)?;
    b.type_into("#an-agent", "gw-anom", true)?;
    b.type_into("#an-min", "0.5", true)?;
    b.wait_text("#an-feed", "rate of change", long)?;
    b.wait_text("#an-feed", "above max 90", long)?;

    // The agent's own page lists them under recent anomalies.
    b.goto(&format!("{base}/ui/#/agent/gw-anom"))?;
    b.wait_text("#agent-anomalies", "value 97.5 above max 90", long)?;
    b.wait_text("#agent-anomalies", "rate of change", long)?;
    // Its pipeline has `unit = "bar"`: the window chart's axis says so.
    b.wait_text("#agent-charts figcaption", "y: bar", long)?;
    b.eval("document.querySelector('#agent-anomalies').scrollIntoView(); return 1")?;
    b.screenshot("agent-anomalies");

    // Dead letters: an undecodable MQTT payload reaches the fleet DLQ through the
    // agent; inspect it and replay it from the UI.
    b.goto(&format!("{base}/ui/#/dlq"))?;
    b.wait_text("#dlq-list", "empty", long)?;
    mosquitto_pub(
        agent.mqtt_port,
        "sensors/boiler/temp",
        &["not a number {".into()],
    )?;
    b.wait_text("#dlq-list", "sensors/boiler/temp", long)?;
    let dlq = admin_get(http, &format!("{base}/api/v1/dlq"));
    let id = dlq["entries"][0]["id"]
        .as_str()
        .ok_or("no dead letter in the api")?
        .to_string();
    b.click(&format!("button[data-inspect='{id}']"))?;
    b.wait_text("#dlq-payload-text", "not a number {", long)?;
    b.screenshot("dlq");
    b.phone_check("dlq")?;
    b.click(&format!("button[data-replay='{id}']"))?;
    b.wait_text("#toast", &format!("dead letter {id} replayed"), long)?;
    // A dead letter has no global state, so the workers file it again with a new
    // id that names the one it was replayed from.
    let start = Instant::now();
    loop {
        let dlq = admin_get(http, &format!("{base}/api/v1/dlq"));
        let entries = dlq["entries"].as_array().cloned().unwrap_or_default();
        let gone = entries.iter().all(|e| e["id"] != json!(id));
        let refiled = entries
            .iter()
            .any(|e| e["fields"]["replayed_from"] == json!(id));
        if gone && refiled {
            break;
        }
        if start.elapsed() > long {
            return Err(format!("after replaying {id} the dlq holds {dlq}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let records = admin_get(
        http,
        &format!("{base}/api/v1/agents/gw-ui/records?limit=1000"),
    );
    if !records["entries"]
        .as_array()
        .is_some_and(|r| r.iter().any(|e| e["fields"]["replayed_from"] == json!(id)))
    {
        return Err(format!(
            "the replayed record is not in the records stream: {records}"
        ));
    }

    // Delete the re-filed one, after the confirmation dialog.
    let dlq = admin_get(http, &format!("{base}/api/v1/dlq"));
    let refiled = dlq["entries"][0]["id"]
        .as_str()
        .ok_or("no re-filed dead letter")?
        .to_string();
    b.wait_text("#dlq-list", &refiled, long)?;
    b.click(&format!("button[data-delete='{refiled}']"))?;
    b.rt.block_on(b.c().accept_alert())
        .map_err(|e| format!("confirm the delete: {e}"))?;
    b.wait_text("#dlq-list", "empty", long)?;

    // Streams: partitions and lengths.
    b.click("a[href='#/streams']")?;
    b.wait_text("#streams-list", "records", long)?;
    b.wait_text("#streams-summary", "distinct series", long)?;
    b.screenshot("streams");
    b.phone_check("streams")?;

    // The rolled-back config reached the agent meanwhile.
    b.click("a[href='#/fleet']")?;
    b.wait_text(
        "tr[data-id='gw-ui']",
        &format!("g{g3} / g{g3} in sync"),
        Duration::from_secs(60),
    )?;

    // A config valid for the fleet but not merged with this agent's file (its
    // backoff_max is 500ms): the agent rejects it, keeps g3, and the agent page and
    // the fleet row show the rejection.
    b.goto(&format!("{base}/ui/#/configs/agent/gw-ui"))?;
    b.wait_text("#cfg-history", "rollback to generation", long)?;
    b.type_into("#cfg-toml", "[uplink]\nbackoff_min = \"1s\"\n", true)?;
    b.wait_text("#cfg-valid", "valid", long)?;
    b.click("#cfg-save")?;
    b.wait_text("#cfg-saved", "Saved generation", long)?;
    b.click("a[href='#/fleet']")?;
    b.click("a[href='#/agent/gw-ui']")?;
    b.wait_text("#agent-config", "backoff_max", long)?;
    b.wait_text("#agent-config", "Rejected", long)?;
    b.wait_text("#agent-config", &format!("observed generation {g3}"), long)?;
    b.screenshot("agent-rejected");
    b.click("a[href='#/fleet']")?;
    b.wait_text("tr[data-id='gw-ui']", "rejected drift", long)?;

    // Sorting (two agents): the Agent column toggles, and keyboard focus
    // stays on the sort button across the re-render.
    b.click("button[data-sort='id']")?;
    b.wait_text("#page tbody tr:first-child", "gw-ui", long)?;
    b.click("button[data-sort='id']")?;
    b.wait_text("#page tbody tr:first-child", "gw-anom", long)?;
    if b.eval("return document.activeElement.dataset.sort")? != json!("id") {
        return Err("sorting lost the keyboard focus".into());
    }

    // Log out: the session no longer works.
    b.click("#logout")?;
    b.wait_text("#login-title", "log in", long)?;
    Ok(())
}

#[test]
fn ui_security_over_http_embedded_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    ui_security(&spawn_ui_fleet(dir.path(), None));
}

/// Accounts live in the store's documents: the same checks on Redis.
#[test]
fn ui_security_over_http_redis_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = spawn_redis(dir.path());
    ui_security(&spawn_ui_fleet(dir.path(), Some(&redis.url())));
}

/// The UI's security over plain HTTP: refusals, cookie flags, CSRF, logout, lockout.
fn ui_security(fleet: &Fleet) {
    let base = fleet.url();
    let http = http_builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let send = |method: &str,
                path: &str,
                cookie: Option<&str>,
                csrf: Option<&str>,
                body: Option<Value>| {
        let url = format!("{base}{path}");
        let mut req = match method {
            "GET" => http.get(url),
            "POST" => http.post(url),
            "PUT" => http.put(url),
            _ => http.delete(url),
        };
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        if let Some(t) = csrf {
            req = req.header("x-csrf-token", t);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        req.send().expect("request")
    };
    let login = |user: &str, password: &str| {
        send(
            "POST",
            "/ui/login",
            None,
            None,
            Some(json!({"user": user, "password": password})),
        )
    };

    // The page itself is public (it holds no data) and locked to its origin.
    let page = send("GET", "/ui/", None, None, None);
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(page.text().unwrap().contains("/ui/app.js"));
    assert_eq!(send("GET", "/", None, None, None).status(), 303);

    // Unauthenticated: no data, no session, no events.
    for path in [
        "/api/v1/agents",
        "/api/v1/dlq",
        "/ui/session",
        "/ui/events",
        "/api/v1/events/anomalies",
    ] {
        assert_eq!(send("GET", path, None, None, None).status(), 401, "{path}");
    }
    assert_eq!(
        send("GET", "/api/v1/agents", Some("fl_session=00ff"), None, None).status(),
        401
    );

    // Wrong password, unknown user, wrong content type: refused, no cookie.
    for (user, pw) in [(USER, "wrong password!!"), ("nobody", PASSWORD)] {
        let r = login(user, pw);
        assert_eq!(r.status(), 401);
        assert!(r.headers().get("set-cookie").is_none());
    }
    let form = http
        .post(format!("{base}/ui/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("user={USER}&password={PASSWORD}"))
        .send()
        .unwrap();
    assert_eq!(form.status(), 415, "a cross-site form cannot log in");
    let huge = login(USER, &"x".repeat(100_000));
    assert_eq!(huge.status(), 413);

    // Login: the cookie is HttpOnly, SameSite=Strict, bounded in time.
    let r = login(USER, PASSWORD);
    assert_eq!(r.status(), 200);
    let set_cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(set_cookie.contains(flag), "{set_cookie} lacks {flag}");
    }
    assert!(
        !set_cookie.contains("Secure"),
        "plain HTTP: a Secure cookie would never come back"
    );
    let body: Value = serde_json::from_slice(&r.bytes().unwrap()).unwrap();
    let csrf = body["csrf"].as_str().unwrap().to_string();
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let id = cookie.trim_start_matches("fl_session=");
    assert_eq!(id.len(), 64, "256 random bits");

    // Reads work with the cookie alone.
    assert_eq!(
        send("GET", "/api/v1/agents", Some(&cookie), None, None).status(),
        200
    );
    assert_eq!(
        send("GET", "/ui/session", Some(&cookie), None, None).status(),
        200
    );

    // Every state change needs the CSRF token; without it nothing changes.
    let cfg = json!({"toml": "[window]\nsize = \"2s\"\n"});
    for (method, path, body) in [
        (
            "PUT",
            "/api/v1/configs/groups/site/berlin",
            Some(cfg.clone()),
        ),
        ("POST", "/api/v1/configs/validate", Some(cfg.clone())),
        ("DELETE", "/api/v1/dlq/1", None),
        ("POST", "/api/v1/dlq/1/replay", None),
        ("POST", "/ui/logout", None),
    ] {
        for token in [None, Some("0".repeat(64))] {
            let r = send(method, path, Some(&cookie), token.as_deref(), body.clone());
            assert_eq!(r.status(), 403, "{method} {path} with {token:?}");
        }
    }
    assert_eq!(
        send(
            "GET",
            "/api/v1/configs/groups/site/berlin",
            Some(&cookie),
            None,
            None
        )
        .status(),
        404,
        "the refused PUT stored nothing"
    );
    let r = send(
        "PUT",
        "/api/v1/configs/groups/site/berlin",
        Some(&cookie),
        Some(&csrf),
        Some(cfg),
    );
    assert_eq!(r.status(), 200);
    // Another session's token does not work for this one.
    let r2 = login(USER, PASSWORD);
    let other: Value = serde_json::from_slice(&r2.bytes().unwrap()).unwrap();
    let other_csrf = other["csrf"].as_str().unwrap();
    assert_ne!(other_csrf, csrf);
    assert_eq!(
        send(
            "POST",
            "/api/v1/configs/validate",
            Some(&cookie),
            Some(other_csrf),
            Some(json!({"toml": ""}))
        )
        .status(),
        403
    );

    // The admin token keeps working for scripts, no CSRF token needed.
    let r = http
        .post(format!("{base}/api/v1/configs/validate"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body(json!({"toml": "[window]\nsize = \"0s\"\n"}).to_string())
        .send()
        .unwrap();
    let v: Value = serde_json::from_slice(&r.bytes().unwrap()).unwrap();
    assert_eq!(v["valid"], false);
    assert!(
        v["problems"][0].as_str().unwrap().contains("window.size"),
        "{v}"
    );

    // Logout ends the session on the server, not only in the browser.
    let r = send("POST", "/ui/logout", Some(&cookie), Some(&csrf), None);
    assert_eq!(r.status(), 200);
    assert!(r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    assert_eq!(
        send("GET", "/api/v1/agents", Some(&cookie), None, None).status(),
        401
    );

    // Five wrong passwords lock the user name out for a while, even with the right one.
    for _ in 0..5 {
        login(USER, "wrong password!!");
    }
    let r = login(USER, PASSWORD);
    assert_eq!(r.status(), 429);
}

/// The live feed shows what a batch added: an agent resending a batch (after a lost
/// ack) must not show its anomaly twice.
#[test]
fn a_resent_batch_adds_no_second_live_anomaly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = spawn_ui_fleet(dir.path(), None);
    let base = fleet.url();
    let http = http_builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let credential = crate::ingest_api::enroll(&http, &base, "gw-resend");
    for _ in 0..2 {
        let resp = http
            .post(format!("{base}/api/v1/ingest"))
            .bearer_auth(&credential)
            .header("content-type", "application/cbor")
            .body(anomaly_batch("gw-resend", 1))
            .send()
            .expect("ingest");
        assert_eq!(resp.status(), 200);
    }
    let feed = admin_get(&http, &format!("{base}/api/v1/events/anomalies"));
    let anomalies = feed["anomalies"].as_array().expect("anomalies");
    assert_eq!(anomalies.len(), 1, "{feed}");
    assert_eq!(anomalies[0]["series"], "pump/pressure");
    assert_eq!(anomalies[0]["agent"], "gw-resend");
    let other = admin_get(
        &http,
        &format!("{base}/api/v1/events/anomalies?agent=gw-other"),
    );
    assert_eq!(other["anomalies"], json!([]));
}

/// `fieldline-fleet admin add|list` manage accounts in the store the server opens;
/// the password comes from stdin, never the command line.
#[test]
fn admin_add_creates_an_account_the_server_accepts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("fleet-store");
    let admin = |args: &[&str], stdin: &str| {
        use std::io::Write;
        let mut child = Command::new(bin("fieldline-fleet"))
            .arg("admin")
            .args(args)
            .arg("--data-dir")
            .arg(&store)
            .env_remove("FIELDLINE_ADMIN_PASSWORD")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("fieldline-fleet admin");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write password");
        let out = child.wait_with_output().expect("exit");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = admin(&["add", "--user", "alice"], "too short\n");
    assert!(
        !ok && out.contains("password must be 12-1024 characters"),
        "{out}"
    );
    let (ok, out) = admin(&["add", "--user", "alice"], "alice's long passphrase\n");
    assert!(ok, "{out}");
    let (ok, out) = admin(&["add", "--user", "alice"], "another long passphrase\n");
    assert!(
        !ok && out.contains("account `alice` already exists"),
        "{out}"
    );
    let (ok, out) = admin(&["list"], "");
    assert!(ok && out.trim() == "alice", "{out}");

    // The server started on that store accepts the account; no bootstrap needed.
    let port = free_port();
    let _fleet = Proc::spawn(
        "fleet-admin",
        fleet_command(port).arg("--data-dir").arg(&store),
        dir.path(),
    );
    wait_for_port(port);
    let http = http_builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let login = |pw: &str| {
        http.post(format!("http://127.0.0.1:{port}/ui/login"))
            .header("content-type", "application/json")
            .body(json!({"user": "alice", "password": pw}).to_string())
            .send()
            .expect("login")
            .status()
    };
    assert_eq!(login("another long passphrase"), 401);
    assert_eq!(login("alice's long passphrase"), 200);
}

/// The endpoints the Configs page adds: a dry-run validation listing every problem,
/// and rollback to a version of the history (a new generation; it ends a rollout).
#[test]
fn config_validation_and_rollback_endpoints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = spawn_fleet_embedded_on(free_port(), dir.path());
    let http = http_builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let call = |method: &str, path: &str, body: Value| -> (u16, Value) {
        let url = format!("{}{path}", fleet.url());
        let req = match method {
            "PUT" => http.put(url),
            _ => http.post(url),
        };
        let resp = req
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .expect("request");
        let status = resp.status().as_u16();
        (
            status,
            serde_json::from_slice(&resp.bytes().expect("body")).unwrap_or(Value::Null),
        )
    };

    let (s, v) = call(
        "POST",
        "/api/v1/configs/validate",
        json!({"toml": "[window]\nsize = \"0s\"\n[uplink]\nbatch_max_records = 0\n"}),
    );
    assert_eq!(s, 200);
    assert_eq!(v["valid"], false);
    let problems = v["problems"].as_array().expect("problems");
    assert!(problems.len() >= 2, "every problem, not the first: {v}");
    assert!(
        problems
            .iter()
            .any(|p| p.as_str().unwrap().contains("window.size")),
        "{v}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.as_str().unwrap().contains("uplink.batch_max_records")),
        "{v}"
    );
    let (_, v) = call(
        "POST",
        "/api/v1/configs/validate",
        json!({"toml": "[window]\nsize = \"5s\"\n"}),
    );
    assert_eq!(v, json!({"valid": true, "problems": []}));
    let (_, v) = call(
        "POST",
        "/api/v1/configs/validate",
        json!({"toml": "[agent]\nid = \"x\"\n"}),
    );
    assert!(
        v["problems"][0].as_str().unwrap().contains("[agent]"),
        "{v}"
    );

    let group = "/api/v1/configs/groups/site/lab";
    let (_, v) = call("PUT", group, json!({"toml": "[window]\nsize = \"2s\"\n"}));
    let g1 = v["generation"].as_u64().expect("generation");
    let (_, v) = call(
        "PUT",
        group,
        json!({"toml": "[window]\nsize = \"3s\"\n", "rollout": {"canary": ["gw-1"], "percent": 10}}),
    );
    let g2 = v["generation"].as_u64().expect("generation");
    let (s, v) = call(
        "POST",
        &format!("{group}/rollback"),
        json!({"generation": g1}),
    );
    assert_eq!(s, 200, "{v}");
    let g3 = v["generation"].as_u64().expect("generation");
    assert!(g3 > g2 && v["rolled_back_to"] == json!(g1), "{v}");
    let doc = admin_get(&http, &format!("{}{group}", fleet.url()));
    assert_eq!(doc["desired"]["toml"], "[window]\nsize = \"2s\"\n");
    assert_eq!(
        doc["desired"]["note"],
        format!("rollback to generation {g1}")
    );
    assert_eq!(
        doc["rollout"],
        Value::Null,
        "a rollback goes to the whole group"
    );
    assert_eq!(doc["history"].as_array().expect("history").len(), 3);

    let (s, v) = call(
        "POST",
        &format!("{group}/rollback"),
        json!({"generation": 999}),
    );
    assert_eq!(s, 404, "{v}");
    let (s, _) = call(
        "POST",
        "/api/v1/configs/groups/site/none/rollback",
        json!({"generation": g1}),
    );
    assert_eq!(s, 404);
    let (s, _) = call(
        "POST",
        "/api/v1/configs/agents/gw-unknown/rollback",
        json!({"generation": g1}),
    );
    assert_eq!(s, 404);
    let (s, _) = call(
        "POST",
        &format!("{group}/rollback"),
        json!({"generation": "one"}),
    );
    assert_eq!(s, 400);
}
