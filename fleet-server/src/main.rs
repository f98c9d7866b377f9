//! `fieldline-fleet`: thin binary over the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fieldline_fleet::auth::Tokens;
use fieldline_fleet::demo::{self, DemoOptions};
use fieldline_fleet::server::{Fleet, FleetConfig, StoreConfig};
use fieldline_fleet::store::workers::{Retention, WorkerConfig};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "fieldline-fleet",
    version,
    about = "Fieldline fleet server: enrollment, agent registry and idempotent ingest into Redis Streams or an embedded store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the fleet server.
    Run(Box<RunArgs>),
    /// Generate a development CA and a server certificate signed by it (for the
    /// quick start and tests; use your own PKI in production).
    DevCa(DevCaArgs),
    /// Start this fleet server (embedded store), two agents and simulated sensors on
    /// this machine, and print where to look. No Redis needed.
    Demo {
        /// Address of the fleet HTTP API.
        #[arg(long, env = "FIELDLINE_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Number of agents to start.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=20))]
        agents: u8,
    },
    /// Manage web UI admin accounts (in the store the server uses; for the embedded
    /// store, while the server is stopped: sled allows one process).
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create an account; the password comes from FIELDLINE_ADMIN_PASSWORD or the
    /// first line of stdin (never the command line, which other users can see).
    Add {
        #[arg(long)]
        user: String,
        /// Replace the password of an existing account.
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List the accounts.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// Where the fleet's data lives (`run` and `admin` take the same flags).
#[derive(clap::Args)]
struct StoreArgs {
    /// Redis URL, e.g. redis://redis.internal:6379/0 or rediss://... for TLS. Without it the
    /// fleet runs on its embedded store in --data-dir (a single node).
    #[arg(long, env = "FIELDLINE_REDIS_URL")]
    redis_url: Option<String>,
    /// Directory of the embedded store (used when no --redis-url is given).
    #[arg(
        long,
        env = "FIELDLINE_DATA_DIR",
        default_value = "fieldline-fleet-data"
    )]
    data_dir: PathBuf,
    /// Stream partitions (Redis only); fixed for the lifetime of a Redis dataset.
    #[arg(long, env = "FIELDLINE_PARTITIONS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    partitions: u32,
}

#[derive(clap::Args)]
struct DevCaArgs {
    /// Directory for ca.pem, fleet.pem and fleet-key.pem.
    #[arg(long)]
    out: PathBuf,
    /// DNS names or IP addresses the server certificate is valid for.
    #[arg(long = "host", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
    hosts: Vec<String>,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Address of the HTTP API.
    #[arg(long, env = "FIELDLINE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    #[command(flatten)]
    store: StoreArgs,
    /// Token for the admin API (at least 16 characters; prefer the environment
    /// variable, command lines are visible to other users).
    #[arg(long, env = "FIELDLINE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
    /// Token(s) agents present to enroll (comma-separated; at least 16 characters each).
    #[arg(
        long,
        env = "FIELDLINE_BOOTSTRAP_TOKEN",
        value_delimiter = ',',
        required = true,
        hide_env_values = true
    )]
    bootstrap_token: Vec<String>,
    /// Do not run global-state workers in this process (Redis only; at least one
    /// fleet server per Redis should run them).
    #[arg(long, env = "FIELDLINE_NO_WORKERS")]
    no_workers: bool,
    /// Stream retention applied by the workers: maxlen:<entries> or age:<duration>
    /// (e.g. age:7d). Default: only --stream-maxlen bounds the streams.
    #[arg(long, env = "FIELDLINE_RETENTION", value_parser = Retention::parse)]
    retention: Option<Retention>,
    /// Attempts before a record the workers cannot apply goes to the DLQ.
    #[arg(long, env = "FIELDLINE_WORKER_MAX_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    worker_max_attempts: u32,
    /// Partition lease time; a crashed server's partitions move after this.
    #[arg(long, env = "FIELDLINE_WORKER_LEASE", default_value = "10s", value_parser = fieldline_common::duration::parse)]
    worker_lease: Duration,
    /// PEM certificate chain for HTTPS (with --tls-key); `fieldline-fleet dev-ca`
    /// makes one for testing.
    #[arg(long, env = "FIELDLINE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "FIELDLINE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
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
    /// Lifetime of a web UI login session, e.g. 12h.
    #[arg(long, env = "FIELDLINE_SESSION_TTL", default_value = "12h", value_parser = fieldline_common::duration::parse)]
    session_ttl: Duration,
    /// User name of the first web UI account, created from FIELDLINE_ADMIN_PASSWORD
    /// when the store has no account yet.
    #[arg(long, env = "FIELDLINE_ADMIN_USER", default_value = "admin")]
    admin_user: String,
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
            let tokens = Tokens::new(&a.admin_token, &a.bootstrap_token)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let store = match a.store.redis_url {
                Some(url) => StoreConfig::Redis {
                    url,
                    partitions: a.store.partitions,
                    workers: (!a.no_workers).then(|| WorkerConfig {
                        lease: a.worker_lease.max(Duration::from_millis(500)),
                        max_attempts: a.worker_max_attempts,
                        retention: a.retention,
                        ..WorkerConfig::default()
                    }),
                },
                None => StoreConfig::Embedded {
                    dir: a.store.data_dir,
                },
            };
            let cfg = FleetConfig {
                listen: a.listen,
                store,
                tokens,
                tls: a.tls_cert.zip(a.tls_key),
                stream_maxlen: a.stream_maxlen,
                max_body_bytes: a.max_body_bytes,
                max_batch_records: a.max_batch_records,
                stale_after: a.stale_after,
                session_ttl: a.session_ttl,
                // Environment only: a password on the command line is visible to
                // every user of the machine.
                admin_bootstrap: std::env::var("FIELDLINE_ADMIN_PASSWORD")
                    .ok()
                    .filter(|p| !p.is_empty())
                    .map(|p| (a.admin_user.clone(), p)),
            };
            Fleet::bind(&cfg).await?.serve(shutdown).await?;
        }
        Command::DevCa(a) => {
            let files = fieldline_fleet::tls::generate_dev_ca(&a.out, &a.hosts)?;
            println!(
                "CA certificate (agents: [uplink] ca_file): {}\nserver certificate: {}\nserver key: {}\n\nfieldline-fleet run --tls-cert {} --tls-key {} ...",
                files.ca_cert.display(),
                files.server_cert.display(),
                files.server_key.display(),
                files.server_cert.display(),
                files.server_key.display()
            );
        }
        Command::Admin { command } => admin(command).await?,
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

async fn admin(command: AdminCommand) -> anyhow::Result<()> {
    use fieldline_fleet::ui::session;
    let open = |s: StoreArgs| async move {
        let cfg = match s.redis_url {
            Some(url) => StoreConfig::Redis {
                url,
                partitions: s.partitions,
                workers: None,
            },
            None => StoreConfig::Embedded { dir: s.data_dir },
        };
        fieldline_fleet::server::open_store(&cfg, 1_000_000)
            .await
            .map(|(store, _)| store)
            .context("cannot open the fleet store")
    };
    match command {
        AdminCommand::Add {
            user,
            replace,
            store,
        } => {
            let password = match std::env::var("FIELDLINE_ADMIN_PASSWORD") {
                Ok(p) if !p.is_empty() => p,
                _ => {
                    let mut line = String::new();
                    std::io::stdin()
                        .read_line(&mut line)
                        .context("cannot read the password from stdin")?;
                    line.trim_end_matches(['\r', '\n']).to_string()
                }
            };
            let store = open(store).await?;
            session::add_account(
                &*store,
                &user,
                &password,
                replace,
                fieldline_common::now_ms(),
            )
            .await?;
            println!("account `{user}` saved");
        }
        AdminCommand::List { store } => {
            let store = open(store).await?;
            for user in session::accounts(&*store).await? {
                println!("{user}");
            }
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
