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
    /// Validate config files without running; prints every problem as FILE: field: message.
    CheckConfig {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Publish simulated sensor readings over MQTT (random walks, QoS 1).
    Simulate {
        /// Broker address.
        #[arg(long, default_value = "127.0.0.1:1883")]
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
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    fieldline_common::duration::parse(s)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::CheckConfig { files } => return check_config(&files),
        Command::Run { config } => runtime().and_then(|rt| rt.block_on(run(config))),
        Command::Simulate {
            broker,
            devices,
            metrics,
            interval,
            rounds,
            seed,
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
    let cfg = AgentConfig::load(&config).map_err(|e| anyhow::anyhow!("invalid config\n{e}"))?;
    fieldline_agent::run(cfg, shutdown_on_signal()).await?;
    Ok(())
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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
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
