//! `fieldline-fleet demo`: one command that shows the whole data path on one machine.
//!
//! Starts this fleet server on its embedded store (no Redis needed), two
//! `fieldline-agent` processes (each enrolled with a fresh bootstrap token, each with
//! its embedded broker on a free port) and a simulator per agent publishing over
//! real MQTT. Everything it starts is stopped
//! again on Ctrl-C, and its files live in one temporary directory.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio_util::sync::CancellationToken;

use crate::auth::{self, Tokens};
use crate::server::{Fleet, FleetConfig, StoreConfig};

pub struct DemoOptions {
    pub listen: SocketAddr,
    pub agents: usize,
}

/// Children are stopped when this is dropped, also on error paths.
struct Children(Vec<(String, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            // SIGTERM first so agents flush their state; std only offers SIGKILL.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (name, child) in &mut self.0 {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if let Ok(None) = child.try_wait() {
                eprintln!("demo: {name} did not stop in time; killing it");
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate this executable")?;
    let path = exe.with_file_name(name);
    if path.is_file() {
        return Ok(path);
    }
    bail!(
        "{name} not found next to {}; build both binaries with `cargo build -p fieldline-agent -p fieldline-fleet`",
        exe.display()
    )
}

fn wait_for_port(port: u16, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} did not start listening on port {port} within 10s")
}

pub async fn run(opts: DemoOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let agent_bin = sibling_binary("fieldline-agent")?;
    let dir = std::env::temp_dir().join(format!("fieldline-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut children = Children(Vec::new());

    // Fresh tokens per demo run: nothing guessable ever listens, even on loopback.
    let admin_token = auth::random_secret()?;
    let bootstrap_token = auth::random_secret()?;
    let ui_password = auth::random_secret()?[..20].to_string();
    let fleet = Fleet::bind(&FleetConfig {
        listen: opts.listen,
        store: StoreConfig::Embedded {
            dir: dir.join("fleet-store"),
        },
        stream_maxlen: 1_000_000,
        max_body_bytes: 8 * 1024 * 1024,
        max_batch_records: 10_000,
        stale_after: Duration::from_secs(15),
        tokens: Tokens::new(&admin_token, std::slice::from_ref(&bootstrap_token))
            .map_err(|e| anyhow::anyhow!(e))?,
        tls: None,
        session_ttl: Duration::from_secs(12 * 3600),
        admin_bootstrap: Some(("admin".into(), ui_password.clone())),
    })
    .await?;
    let fleet_addr = fleet.local_addr()?;
    let fleet_shutdown = shutdown.child_token();
    let fleet_task = tokio::spawn(fleet.serve(fleet_shutdown.clone()));

    let mut brokers = Vec::new();
    for i in 1..=opts.agents {
        let id = format!("demo-gw-{i}");
        let mqtt_port = free_port()?;
        let config = dir.join(format!("{id}.toml"));
        std::fs::write(
            &config,
            format!(
                "[agent]\nid = \"{id}\"\ndata_dir = \"{}\"\n\n[mqtt]\nlisten = \"127.0.0.1:{mqtt_port}\"\n\n\
                 [[pipeline]]\nname = \"demo\"\nwindow = {{ kind = \"tumbling\", size = \"5s\" }}\n\
                 watermark = {{ max_out_of_orderness = \"1s\" }}\n\
                 detectors = [{{ kind = \"zscore\", window = 30, threshold = 6.0 }}]\n\n[uplink]\nfleet_url = \"http://{fleet_addr}\"\nheartbeat_interval = \"2s\"\n",
                dir.join(&id).display()
            ),
        )?;
        let mut enroll = Command::new(&agent_bin);
        enroll
            .arg("enroll")
            .arg("--config")
            .arg(&config)
            .args(["--token", &bootstrap_token])
            .stdout(Stdio::null())
            .stderr(log_file(&dir, &format!("{id}-enroll.log"))?);
        // Blocking wait off the runtime: the fleet answering the enrollment runs on it.
        let enrolled = tokio::task::spawn_blocking(move || enroll.status())
            .await?
            .with_context(|| format!("cannot start {}", agent_bin.display()))?;
        if !enrolled.success() {
            bail!(
                "enrolling {id} failed; see {}",
                dir.join(format!("{id}-enroll.log")).display()
            );
        }
        let agent = Command::new(&agent_bin)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log_file(&dir, &format!("{id}.log"))?)
            .spawn()
            .with_context(|| format!("cannot start {}", agent_bin.display()))?;
        children.0.push((id.clone(), agent));
        wait_for_port(mqtt_port, &id)?;
        let sim = Command::new(&agent_bin)
            .args(["simulate", "--broker", &format!("127.0.0.1:{mqtt_port}")])
            .args([
                "--devices",
                &format!("{id}-boiler,{id}-pump"),
                "--metrics",
                "temp,pressure",
            ])
            .args(["--interval", "500ms", "--seed", &i.to_string()])
            // A spike every ~20 s so the Anomalies page has something to show.
            .args(["--spike-every", "40"])
            .stdout(Stdio::null())
            .stderr(log_file(&dir, &format!("{id}-sim.log"))?)
            .spawn()?;
        children.0.push((format!("{id}-simulator"), sim));
        brokers.push((id, mqtt_port));
    }

    println!("\nFieldline demo is running (Ctrl-C stops everything).\n");
    println!("  Web UI:                http://{fleet_addr}/ui/");
    println!("  Login:                 user `admin`, password `{ui_password}`");
    println!("  Fleet (agents, JSON):  curl -H 'Authorization: Bearer {admin_token}' http://{fleet_addr}/api/v1/agents");
    println!("  Dead letters:          curl -H 'Authorization: Bearer {admin_token}' http://{fleet_addr}/api/v1/dlq");
    println!("  Metrics:               http://{fleet_addr}/metrics");
    println!(
        "  Store:                 embedded (sled) in {}",
        dir.join("fleet-store").display()
    );
    for (id, port) in &brokers {
        println!("  {id} MQTT:       mosquitto_pub -p {port} -t sensors/dev1/temp -m 21.5");
    }
    println!("  Logs:                  {}\n", dir.display());

    shutdown.cancelled().await;
    println!("demo: stopping agents and simulators");
    drop(children);
    fleet_shutdown.cancel();
    let _ = fleet_task.await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn log_file(dir: &Path, name: &str) -> anyhow::Result<std::fs::File> {
    std::fs::File::create(dir.join(name)).with_context(|| format!("cannot create log {name}"))
}
