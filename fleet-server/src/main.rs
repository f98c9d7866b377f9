//! `fieldline-fleet`: thin binary over the library.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fieldline_fleet::demo::{self, DemoOptions};
use fieldline_fleet::server::{Fleet, FleetConfig};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "fieldline-fleet",
    version,
    about = "Fieldline fleet server: agent registry and idempotent ingest into Redis Streams"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the fleet server.
    Run(RunArgs),
    /// Start a private redis-server, this fleet server, two agents and simulated
    /// sensors on this machine, and print where to look.
    Demo {
        /// Address of the fleet HTTP API.
        #[arg(long, env = "FIELDLINE_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Number of agents to start.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=20))]
        agents: u8,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Address of the HTTP API.
    #[arg(long, env = "FIELDLINE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Redis URL, e.g. redis://127.0.0.1:6379/0 or rediss://... for TLS.
    #[arg(long, env = "FIELDLINE_REDIS_URL")]
    redis_url: String,
    /// Stream partitions; fixed for the lifetime of a Redis dataset.
    #[arg(long, env = "FIELDLINE_PARTITIONS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    partitions: u32,
    /// Approximate max entries kept per stream partition (XADD MAXLEN ~).
    #[arg(long, env = "FIELDLINE_STREAM_MAXLEN", default_value_t = 1_000_000)]
    stream_maxlen: u64,
    /// Largest accepted request body in bytes.
    #[arg(long, env = "FIELDLINE_MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Most records accepted in one ingest batch.
    #[arg(long, env = "FIELDLINE_MAX_BATCH_RECORDS", default_value_t = 10_000)]
    max_batch_records: usize,
    /// An agent silent for longer than this is `stale` (3x: `offline`), e.g. 15s.
    #[arg(long, env = "FIELDLINE_STALE_AFTER", default_value = "15s", value_parser = fieldline_common::duration::parse)]
    stale_after: Duration,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("FIELDLINE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|rt| rt.block_on(run(cli.command)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fieldline-fleet: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    let shutdown = shutdown_on_signal();
    match command {
        Command::Run(a) => {
            let cfg = FleetConfig {
                listen: a.listen,
                redis_url: a.redis_url,
                partitions: a.partitions,
                stream_maxlen: a.stream_maxlen,
                max_body_bytes: a.max_body_bytes,
                max_batch_records: a.max_batch_records,
                stale_after: a.stale_after,
            };
            Fleet::bind(&cfg).await?.serve(shutdown).await?;
        }
        Command::Demo { listen, agents } => {
            demo::run(
                DemoOptions {
                    listen,
                    agents: usize::from(agents),
                },
                shutdown,
            )
            .await?
        }
    }
    Ok(())
}

/// Cancelled on the first SIGINT or SIGTERM.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
        }
        t.cancel();
    });
    token
}
