//! The `statemirror` binary: argument parsing and wiring only (see the library for the rest).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use statemirror::admin::client;
use statemirror::config::{read_secret, Config};

/// Exit code for a bad config or bad arguments (sysexits EX_USAGE / EX_CONFIG style).
const EXIT_CONFIG: u8 = 64;
/// Exit code when the admin API cannot be reached (EX_UNAVAILABLE).
const EXIT_UNAVAILABLE: u8 = 69;

#[derive(Parser)]
#[command(
    name = "statemirror",
    version,
    about = "Sidecar that keeps Redis / ZooKeeper coordination state safe across two regions",
    long_about = "statemirror sits next to a stateful engine (e.g. Apache NiFi) and speaks the backend's own \
protocol (Redis RESP, ZooKeeper's wire protocol). It forwards every request to the leader backend (this region), mirrors acknowledged writes \
asynchronously to a follower backend (the other region), serves reads from the follower when the leader \
is gone, and can freeze writes for maintenance through its HTTP admin API.\n\n\
Start with `statemirror check-config --config FILE`, then `statemirror run --config FILE`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar until SIGINT/SIGTERM.
    Run {
        /// TOML config file (see config/ for examples).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file; prints every error with its key path (exit 64 on errors).
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Freeze or resume writes, or show the state, through a running sidecar's admin API.
    Maintenance {
        action: MaintenanceAction,
        /// Admin API base URL.
        #[arg(long, default_value = "http://127.0.0.1:9480")]
        admin: String,
        /// File holding the admin bearer token (needed for on/off when the sidecar has one).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Give up after this many seconds (a freeze waits for the mirror to drain).
        #[arg(long, default_value_t = 60)]
        timeout_seconds: u64,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum MaintenanceAction {
    /// Freeze writes (waits for in-flight writes and the mirror to drain).
    On,
    /// Resume writes.
    Off,
    /// Show whether writes are frozen.
    Status,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let threads = std::env::var("STATEMIRROR_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2usize);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("statemirror: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        match cli.command {
            Command::Run { config } => run(config).await,
            Command::CheckConfig { config } => match Config::load(&config) {
                Ok(_) => {
                    eprintln!("{}: OK", config.display());
                    ExitCode::SUCCESS
                }
                Err(errs) => config_errors(&config, &errs),
            },
            Command::Maintenance {
                action,
                admin,
                token_file,
                timeout_seconds,
            } => maintenance(action, &admin, token_file, timeout_seconds).await,
        }
    })
}

fn config_errors(path: &std::path::Path, errs: &[statemirror::config::ConfigError]) -> ExitCode {
    eprintln!("{}: {} error(s)", path.display(), errs.len());
    for e in errs {
        eprintln!("  {e}");
    }
    ExitCode::from(EXIT_CONFIG)
}

async fn run(path: PathBuf) -> ExitCode {
    let resolved = match Config::load(&path) {
        Ok(r) => r,
        Err(errs) => return config_errors(&path, &errs),
    };
    statemirror::telemetry::init(&resolved.config.log);
    let app = match statemirror::start(resolved).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(admin = %app.admin_addr, "statemirror running");
    wait_for_signal().await;
    tracing::info!("shutting down");
    app.stop().await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

async fn maintenance(
    action: MaintenanceAction,
    admin: &str,
    token_file: Option<PathBuf>,
    timeout_seconds: u64,
) -> ExitCode {
    let token = match token_file.as_deref().map(read_secret).transpose() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("statemirror: --token-file: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let method = match action {
        MaintenanceAction::On => hyper::Method::PUT,
        MaintenanceAction::Off => hyper::Method::DELETE,
        MaintenanceAction::Status => hyper::Method::GET,
    };
    match client::request(
        admin,
        method,
        "/maintenance",
        token.as_deref(),
        Duration::from_secs(timeout_seconds),
    )
    .await
    {
        Ok((status, body)) => {
            // The JSON answer is the command's output, for people and scripts alike.
            #[allow(clippy::print_stdout)]
            {
                print!("{body}");
            }
            if (200..300).contains(&status) {
                ExitCode::SUCCESS
            } else {
                eprintln!("statemirror: admin API answered HTTP {status}");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("statemirror: {e}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}
