//! Real processes on free ports, temp dirs, clean teardown, logs on failure.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A blocking HTTP client. reqwest is built with rustls but no bundled crypto
/// provider (the agent uses ring, not aws-lc): every test process must install one
/// before building a client, so build clients through this.
pub fn http_builder() -> reqwest::blocking::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::blocking::Client::builder()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Directory holding the workspace binaries (`target/<profile>`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FIELDLINE_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // target/<profile>/deps/it-<hash> → target/<profile>
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the binaries first with `cargo build --workspace --bins` (scripts/test.sh does)",
        path.display()
    );
    path
}

pub fn require_tool(name: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(found, "`{name}` is not installed: scripts/test.sh installs it (apt-get install -y redis-server mosquitto-clients)");
}

pub fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

pub fn wait_for_port(port: u16) {
    wait_until(
        &format!("port {port} to accept connections"),
        Duration::from_secs(15),
        || accepts(port),
    );
}

/// Whether a server listens on `port`. Polling a port in the ephemeral range that
/// nobody listens on yet can connect the socket to itself (TCP simultaneous open: the
/// kernel picked the same port as the source), which looks like a server and is not
/// one; such a connection does not count.
pub fn accepts(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port))
        .is_ok_and(|s| s.local_addr().ok() != s.peer_addr().ok())
}

/// A child process whose output goes to a log file; killed on drop, and its log is
/// printed if the test is failing.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log_dir: &Path) -> Proc {
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let child = cmd
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name: name.to_string(),
            child: Some(child),
            log,
        }
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits for the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        panic!(
            "{} did not exit within {timeout:?} after SIGTERM\n{}",
            self.name,
            self.log()
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "----- log of {} -----\n{}\n----- end of {} -----",
                self.name,
                self.log(),
                self.name
            );
        }
    }
}

pub struct Redis {
    pub port: u16,
    /// Kept for its Drop: the server stops with the test.
    _proc: Proc,
}

impl Redis {
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("redis connection")
    }
}

pub fn spawn_redis(dir: &Path) -> Redis {
    require_tool("redis-server");
    let port = free_port();
    let proc = Proc::spawn(
        &format!("redis-{port}"),
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir),
        dir,
    );
    wait_for_port(port);
    Redis { port, _proc: proc }
}

pub struct Fleet {
    pub port: u16,
    pub proc: Proc,
}

impl Fleet {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Token for the admin API of every fleet the harness starts.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
/// Token agents enroll with on every fleet the harness starts.
pub const BOOTSTRAP_TOKEN: &str = "test-bootstrap-token-0123456789";

/// A `fieldline-fleet run` command with the harness tokens and no store chosen yet.
pub fn fleet_command(port: u16) -> Command {
    let mut cmd = Command::new(bin("fieldline-fleet"));
    cmd.args(["run", "--listen", &format!("127.0.0.1:{port}")])
        .env("FIELDLINE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("FIELDLINE_BOOTSTRAP_TOKEN", BOOTSTRAP_TOKEN)
        .env("FIELDLINE_LOG", "info");
    cmd
}

pub fn spawn_fleet_on(port: u16, redis_url: &str, dir: &Path) -> Fleet {
    let proc = Proc::spawn(
        &format!("fleet-{port}"),
        fleet_command(port).args(["--redis-url", redis_url]),
        dir,
    );
    wait_for_port(port);
    Fleet { port, proc }
}

/// A fleet on Redis with extra `run` arguments (e.g. `--worker-lease 1s`).
pub fn spawn_fleet_with(port: u16, redis_url: &str, dir: &Path, extra: &[&str]) -> Fleet {
    let proc = Proc::spawn(
        &format!("fleet-{port}"),
        fleet_command(port)
            .args(["--redis-url", redis_url])
            .args(extra),
        dir,
    );
    wait_for_port(port);
    Fleet { port, proc }
}

/// A fleet on its embedded store in `dir/fleet-store` (no Redis).
pub fn spawn_fleet_embedded_on(port: u16, dir: &Path) -> Fleet {
    let proc = Proc::spawn(
        &format!("fleet-{port}"),
        fleet_command(port)
            .arg("--data-dir")
            .arg(dir.join("fleet-store")),
        dir,
    );
    wait_for_port(port);
    Fleet { port, proc }
}

pub fn spawn_fleet(redis_url: &str, dir: &Path) -> Fleet {
    spawn_fleet_on(free_port(), redis_url, dir)
}

pub struct Agent {
    pub mqtt_port: u16,
    pub proc: Proc,
    pub config: PathBuf,
}

/// Writes an agent config with short windows for tests; `extra` is appended TOML.
pub fn agent_config(dir: &Path, id: &str, mqtt_port: u16, fleet_url: &str, extra: &str) -> PathBuf {
    let path = dir.join(format!("{id}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"[agent]
id = "{id}"
data_dir = "{data}"

[mqtt]
listen = "127.0.0.1:{mqtt_port}"

[window]
size = "1s"
max_out_of_orderness = "2s"
idle_timeout = "1s"

[uplink]
fleet_url = "{fleet_url}"
heartbeat_interval = "500ms"
flush_interval = "200ms"
backoff_min = "50ms"
backoff_max = "500ms"
request_timeout = "2s"
{extra}"#,
            data = dir.join(id).display()
        ),
    )
    .expect("write agent config");
    path
}

/// Runs `fieldline-agent enroll` with the harness bootstrap token; panics with the
/// output when it fails.
pub fn enroll_agent(config: &Path) {
    let out = Command::new(bin("fieldline-agent"))
        .arg("enroll")
        .arg("--config")
        .arg(config)
        .args(["--token", BOOTSTRAP_TOKEN])
        .output()
        .expect("run fieldline-agent enroll");
    assert!(
        out.status.success(),
        "enroll failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn fleet_reachable(fleet_url: &str) -> bool {
    fleet_url
        .rsplit_once(':')
        .and_then(|(_, port)| port.trim_end_matches('/').parse::<u16>().ok())
        .is_some_and(accepts)
}

/// Starts an agent; it enrolls first when the fleet is up and it has no
/// credential yet (tests of an unreachable fleet get an unenrolled agent).
pub fn spawn_agent(dir: &Path, id: &str, fleet_url: &str) -> Agent {
    spawn_agent_with(dir, id, fleet_url, "")
}

/// [`spawn_agent`] with `extra` TOML appended to its config (e.g. `[[pipeline]]`s).
pub fn spawn_agent_with(dir: &Path, id: &str, fleet_url: &str, extra: &str) -> Agent {
    let mqtt_port = free_port();
    let config = agent_config(dir, id, mqtt_port, fleet_url, extra);
    if !dir.join(id).join("fleet-credential").exists() && fleet_reachable(fleet_url) {
        enroll_agent(&config);
    }
    run_agent(dir, id, config, mqtt_port)
}

/// Starts (or restarts, with its data dir as it is) the agent of `config`.
pub fn run_agent(dir: &Path, id: &str, config: PathBuf, mqtt_port: u16) -> Agent {
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

/// All entries of every `fl:{pN}:<suffix>` stream, as field maps.
pub fn stream_entries(
    conn: &mut redis::Connection,
    suffix: &str,
) -> Vec<std::collections::HashMap<String, String>> {
    let partitions: u32 = redis::cmd("HGET")
        .arg("fl:meta")
        .arg("partitions")
        .query::<Option<u32>>(conn)
        .expect("HGET fl:meta")
        .unwrap_or(0);
    let mut out = Vec::new();
    for p in 0..partitions {
        let entries: Vec<(String, std::collections::HashMap<String, String>)> =
            redis::cmd("XRANGE")
                .arg(format!("fl:{{p{p}}}:{suffix}"))
                .arg("-")
                .arg("+")
                .query(conn)
                .expect("XRANGE");
        out.extend(entries.into_iter().map(|(_, fields)| fields));
    }
    out
}
