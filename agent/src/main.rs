//! `fieldline-agent`: thin binary over the library. Parses arguments, loads config,
//! initialises logging, runs, and maps the outcome to an exit code.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fieldline_agent::simulate::{self, SimulateOptions};
use fieldline_common::config::AgentConfig;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "fieldline-agent",
    version,
    about = "Fieldline edge agent: MQTT in, windowed aggregates out to the fleet"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: embedded MQTT broker, windows, durable outbox, uplink.
    ///
    /// Every config key can be overridden with FIELDLINE_<SECTION>__<KEY>, e.g.
    /// FIELDLINE_UPLINK__FLEET_URL=http://fleet:8080. Log filter: FIELDLINE_LOG.
    Run {
        /// Agent config file (TOML); see docs/CONFIG.md.
        #[arg(long, short, env = "FIELDLINE_CONFIG")]
        config: PathBuf,
    },
    /// Enroll with the fleet: trade a bootstrap token for this agent's credential and
    /// write it to `[uplink] credential_file` (default: DATA_DIR/fleet-credential).
    Enroll {
        /// Agent config file (TOML); gives the agent id and where the credential goes.
        #[arg(long, short, env = "FIELDLINE_CONFIG")]
        config: PathBuf,
        /// Fleet URL (default: `[uplink] fleet_url` of the config).
        #[arg(long)]
        fleet: Option<String>,
        /// Bootstrap token issued by the fleet operator.
        #[arg(long, env = "FIELDLINE_BOOTSTRAP_TOKEN", hide_env_values = true)]
        token: String,
    },
    /// Run the config's pipelines over recorded messages and print every record as JSON
    /// lines (no broker, fleet or disk state). Input lines: {"topic": "...",
    /// "payload": "..." | "payload_b64": "...", "received_at": MS}; see docs/CONFIG.md.
    Replay {
        /// Agent config file (TOML) whose pipelines to run.
        #[arg(long, short)]
        config: PathBuf,
        /// Recorded messages, JSON lines ("-" for stdin).
        #[arg(long, short)]
        input: PathBuf,
    },
    /// Inspect, verify and repair the agent's state store (stop the agent first).
    #[command(subcommand)]
    State(StateCommand),
    /// Validate config files without running; prints every problem as FILE: field: message.
    CheckConfig {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Publish simulated sensor readings over MQTT (random walks, QoS 1).
    Simulate {
        /// Broker address as HOST:PORT (the agent's `mqtt.listen`); no default, so a
        /// simulator never publishes into whatever broker happens to run on 1883.
        #[arg(long)]
        broker: String,
        /// Device names (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "dev1,dev2")]
        devices: Vec<String>,
        /// Metric names (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "temp,humidity")]
        metrics: Vec<String>,
        /// Time between rounds (one reading per series per round), e.g. 500ms.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        interval: Duration,
        /// Stop after this many rounds (default: run until interrupted).
        #[arg(long)]
        rounds: Option<u64>,
        /// Seed of the random walk.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Every N rounds one series (chosen by the seed) reads a spike, so attached
        /// detectors have something to find (default: never).
        #[arg(long)]
        spike_every: Option<u64>,
    },
    /// Numenta Anomaly Benchmark: stream every `<category>/<file>.csv` under DATA
    /// (header `timestamp,value`) through the default anomaly detector, one row at a time,
    /// and write `OUT/<category>/<file>.csv` (`timestamp,anomaly_score`, one row per row).
    Nab {
        /// Corpus directory.
        #[arg(long)]
        data: PathBuf,
        /// Results directory (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum StateCommand {
    /// Verify every record (checksums, keys, contents) through sled and by a raw scan
    /// of the files; exit 0 when clean, 1 when damaged, 2 when records are lost.
    Check {
        /// The store: `<data_dir>/state` (or the data_dir holding it).
        dir: PathBuf,
    },
    /// Salvage every intact record into a fresh store, keep the damaged one as
    /// DIR.damaged-<time>, and report exactly what was lost.
    Repair { dir: PathBuf },
    /// List checkpoints.
    Checkpoints { dir: PathBuf },
    /// Make checkpoint ID the one the next start restores.
    Restore { dir: PathBuf, id: u64 },
    /// Delete checkpoint ID.
    Delete { dir: PathBuf, id: u64 },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    fieldline_common::duration::parse(s)
}

fn main() -> ExitCode {
    tune_malloc();
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::CheckConfig { files } => return check_config(&files),
        Command::State(cmd) => return state(cmd),
        Command::Replay { config, input } => return replay(&config, &input),
        Command::Nab { data, out } => return nab(&data, &out),
        Command::Run { config } => runtime().and_then(|rt| rt.block_on(run(config))),
        Command::Enroll {
            config,
            fleet,
            token,
        } => runtime().and_then(|rt| rt.block_on(enroll(config, fleet, token))),
        Command::Simulate {
            broker,
            devices,
            metrics,
            interval,
            rounds,
            seed,
            spike_every,
        } => runtime().and_then(|rt| {
            rt.block_on(async {
                let (host, port) = broker
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h.to_string(), p.parse().ok()?)))
                    .with_context(|| format!("--broker `{broker}` must be HOST:PORT"))?;
                let shutdown = shutdown_on_signal();
                let n = simulate::run(
                    SimulateOptions {
                        host,
                        port,
                        devices,
                        metrics,
                        interval,
                        rounds,
                        seed,
                        spike_every: spike_every.filter(|n| *n > 0),
                    },
                    shutdown,
                )
                .await?;
                tracing::info!(published = n, "simulator done");
                Ok(())
            })
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fieldline-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: PathBuf) -> anyhow::Result<()> {
    AgentConfig::load(&config).map_err(|e| anyhow::anyhow!("invalid config\n{e}"))?;
    // The fleet's config is applied on top of the file (fieldline_agent::reconcile).
    match fieldline_agent::reconcile::run(&config, shutdown_on_signal()).await? {
        fieldline_agent::reconcile::Outcome::Exit => Ok(()),
        fieldline_agent::reconcile::Outcome::Restart => restart_self(),
    }
}

/// Replaces this process with a fresh copy (same binary, same arguments): the only
/// way to release the embedded broker's listeners before running a new config.
fn restart_self() -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot locate this executable")?;
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let err = std::process::Command::new(&exe)
            .args(std::env::args_os().skip(1))
            .exec();
        Err(anyhow::anyhow!("cannot restart {}: {err}", exe.display()))
    }
    #[cfg(not(unix))]
    {
        anyhow::bail!(
            "restart into a new fleet config needs unix exec; restart {} by hand",
            exe.display()
        )
    }
}

async fn enroll(config: PathBuf, fleet: Option<String>, token: String) -> anyhow::Result<()> {
    let cfg = AgentConfig::load(&config).map_err(|e| anyhow::anyhow!("invalid config\n{e}"))?;
    let path = fieldline_agent::enroll::enroll(&cfg, fleet.as_deref(), &token).await?;
    println!(
        "enrolled agent `{}`; credential written to {}",
        cfg.agent.id,
        path.display()
    );
    Ok(())
}

fn replay(config: &std::path::Path, input: &std::path::Path) -> ExitCode {
    let result = (|| -> anyhow::Result<fieldline_agent::replay::Summary> {
        let cfg = AgentConfig::load(config).map_err(|e| anyhow::anyhow!("invalid config\n{e}"))?;
        let stdout = std::io::stdout().lock();
        let out = std::io::BufWriter::new(stdout);
        let summary = if input.as_os_str() == "-" {
            fieldline_agent::replay::replay(&cfg, std::io::stdin().lock(), out)?
        } else {
            let file = std::fs::File::open(input)
                .with_context(|| format!("cannot open {}", input.display()))?;
            fieldline_agent::replay::replay(&cfg, std::io::BufReader::new(file), out)?
        };
        Ok(summary)
    })();
    match result {
        Ok(summary) if summary.bad_lines.is_empty() => ExitCode::SUCCESS,
        Ok(summary) => {
            for b in &summary.bad_lines {
                eprintln!("{}:{}: {}", input.display(), b.line, b.reason);
            }
            eprintln!(
                "fieldline-agent: {} malformed input line(s) skipped; {} messages replayed",
                summary.bad_lines.len(),
                summary.messages
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("fieldline-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The store directory: DIR itself, or DIR/state when DIR is an agent's data_dir.
fn state_dir(dir: PathBuf) -> PathBuf {
    let inner = dir.join("state");
    if !dir.join("db").exists() && inner.join("db").exists() {
        inner
    } else {
        dir
    }
}

fn state(cmd: StateCommand) -> ExitCode {
    use fieldline_agent::state::{check, Checkpoints, Store, StoreOptions};
    let verdict = |r: &check::Report| {
        if r.is_clean() {
            ExitCode::SUCCESS
        } else if r.lost_count() == 0 {
            ExitCode::from(1)
        } else {
            ExitCode::from(2)
        }
    };
    let checkpoints = |dir: PathBuf| -> anyhow::Result<Checkpoints> {
        let dir = state_dir(dir);
        let opts = StoreOptions {
            cache_capacity_bytes: 8 * 1024 * 1024,
            flush_every: None,
        };
        let store = Store::open(&dir, &opts)
            .with_context(|| format!("cannot open {} (is the agent running?)", dir.display()))?;
        Ok(Checkpoints::open(&store)?)
    };
    let result: anyhow::Result<ExitCode> = (|| match cmd {
        StateCommand::Check { dir } => {
            let r = check::check(&state_dir(dir))?;
            println!("{r}");
            Ok(verdict(&r))
        }
        StateCommand::Repair { dir } => {
            let r = check::repair(&state_dir(dir))?;
            println!("{r}");
            println!(
                "repaired: {} live records written",
                r.live.values().sum::<u64>()
            );
            Ok(if r.lost_count() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        StateCommand::Checkpoints { dir } => {
            println!("id\tname\tcreated_ms\tingest_pos\toutbox_seq\tstate_bytes");
            for c in checkpoints(dir)?.list()? {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    c.id, c.name, c.created_ms, c.ingest_pos, c.outbox_seq, c.state_bytes
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        StateCommand::Restore { dir, id } => {
            let c = checkpoints(dir)?.select(id)?;
            println!(
                "the next start restores checkpoint {} ({}, ingest position {})",
                c.id, c.name, c.ingest_pos
            );
            Ok(ExitCode::SUCCESS)
        }
        StateCommand::Delete { dir, id } => {
            if checkpoints(dir)?.delete(id)? {
                println!("deleted checkpoint {id}");
                Ok(ExitCode::SUCCESS)
            } else {
                anyhow::bail!("no checkpoint {id}")
            }
        }
    })();
    result.unwrap_or_else(|e| {
        eprintln!("fieldline-agent: error: {e:#}");
        ExitCode::from(3)
    })
}

fn check_config(files: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    for file in files {
        match AgentConfig::load(file) {
            Ok(_) => {}
            Err(e) => {
                ok = false;
                println!("{e}");
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn nab(data: &std::path::Path, out: &std::path::Path) -> ExitCode {
    match fieldline_agent::detect::run_nab(data, out) {
        Ok(s) => {
            println!(
                "{} files, {} rows, {} rows >= alert threshold, {:.3} s",
                s.files.len(),
                s.rows,
                s.alerts,
                s.elapsed.as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fieldline-agent: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// glibc raises its mmap threshold each time a large mmapped block is freed (up to
/// 32 MiB); blocks of that size then come from the thread arenas, whose holes stay
/// resident. rumqttd's log segments (Vecs of several MiB, dropped as the log rolls)
/// trigger exactly that: about 4 MiB more RSS at 10,000 msg/s (docs/BENCHMARKS.md).
/// Fixing the threshold at glibc's initial 128 KiB keeps large blocks in mmap, so
/// freeing one returns it to the kernel. An operator's MALLOC_MMAP_THRESHOLD_ wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn tune_malloc() {
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; it runs before any other
        // thread exists, and a failure (return 0) leaves glibc's default in place.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // Two workers carry the agent (one runs the ingest loop, the other the uplink and
    // heartbeats); tokio's default of one per core would add, on a 4-core Pi, two more
    // threads with their own stacks and malloc arenas for nothing (docs/BENCHMARKS.md).
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(2));
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn init_tracing() {
    // rumqttd logs every ordinary client disconnect at ERROR; FIELDLINE_LOG=info,rumqttd=warn
    // shows its internals when debugging the broker.
    let filter = tracing_subscriber::EnvFilter::try_from_env("FIELDLINE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttd=off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Cancelled on the first SIGINT or SIGTERM.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot listen for SIGTERM");
                        let _ = ctrl_c.await;
                        t.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        t.cancel();
    });
    token
}
