//! The `statemirror` binary: argument parsing and wiring only (see the library for the rest).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use statemirror::admin::client;
use statemirror::backup;
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
        /// File holding the admin bearer token (on/off need it). Default: the token file
        /// the sidecar generated for this admin port when it has no `admin.token_file`
        /// (`$STATEMIRROR_RUNTIME_DIR`, `/run/statemirror` or the temporary directory,
        /// `statemirror-admin-<port>.token`).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Give up after this many seconds (a freeze waits for the mirror to drain). Default
        /// 60; with `--cluster`, the sidecar's own wait (`maintenance.drain_timeout_ms` + 2 s)
        /// unless given.
        #[arg(long)]
        timeout_seconds: Option<u64>,
        /// Every sidecar of the cluster (`[cluster]`): `on` returns once each one confirmed
        /// (exit 1 naming those that did not: the freeze is not proven).
        #[arg(long)]
        cluster: bool,
    },
    /// Show a running sidecar's `/status`, or with `--cluster` every sidecar of the cluster
    /// (queue, lag, sync, maintenance, heartbeat age).
    Status {
        /// The cluster's member list instead of this sidecar's status.
        #[arg(long)]
        cluster: bool,
        /// Admin API base URL.
        #[arg(long, default_value = "http://127.0.0.1:9480")]
        admin: String,
    },

    /// Compare leader and follower now, straight from the config's backends (no running
    /// sidecar needed). Prints a JSON report; exit 0 when equal, 1 when they differ, 69 when a
    /// backend cannot be read.
    Verify {
        #[arg(long, short)]
        config: PathBuf,
        /// Most differing keys/paths listed per protocol (all are counted).
        #[arg(long)]
        max_differences: Option<usize>,
    },
    /// Ask the running sidecar (admin API from the config) for a full resync of the follower.
    Resync {
        #[arg(long, short)]
        config: PathBuf,
        /// Resync even when the leader is empty and the follower is not (erases the follower).
        #[arg(long)]
        force: bool,
        /// Wait until the resync finished and the follower is in sync.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds (exit 1).
        #[arg(long, default_value_t = 600)]
        timeout_seconds: u64,
    },
    /// Restore a leader that lost data from the follower, online: copies every key the
    /// leader lacks (nothing the leader holds is overwritten), then gives both the same new
    /// generation, which clears a running sidecar's leader-data-loss flag. Refuses unless
    /// the follower's generation marker shows it is the newer copy. Redis and ZooKeeper.
    /// Prints a JSON report; exit 0 done, 1 refused, 69 a backend cannot be reached.
    Recover {
        #[arg(long, short)]
        config: PathBuf,
        /// Copy from the follower to the leader (the only direction; required, so the
        /// command says what it does).
        #[arg(long, required = true)]
        from_follower: bool,
        /// Copy what the leader lacks even when the generations do not show a loss.
        #[arg(long)]
        force: bool,
    },
    /// Write every key / znode within the config's filters to one checksummed file (see
    /// README "Backup and restore"). Refuses unless the cluster is frozen or --allow-live.
    /// With --list FILE: check a backup and show what it holds (no config needed).
    Backup {
        #[arg(long, short, required_unless_present = "list")]
        config: Option<PathBuf>,
        /// The backup file to write (via a temporary file and a rename).
        #[arg(long, required_unless_present = "list")]
        out: Option<PathBuf>,
        /// Which backend to read.
        #[arg(long, value_enum, default_value_t = SideArg::Leader)]
        from: SideArg,
        /// Back up even though the cluster is not frozen (a warning; may not be consistent).
        #[arg(long)]
        allow_live: bool,
        /// Which protocol, when the config has both [redis] and [zookeeper].
        #[arg(long, value_enum)]
        protocol: Option<ProtocolArg>,
        /// Show what this backup file holds (after checking its checksum) instead.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["config", "out", "allow_live", "protocol"])]
        list: Option<PathBuf>,
    },
    /// Restore a backup file into the leader or the follower, then compare the destination
    /// with it key by key. Exit 0 equal, 1 refused / corrupted file / differences remain.
    Restore {
        #[arg(long, short)]
        config: PathBuf,
        /// The backup file.
        #[arg(long = "in", value_name = "FILE")]
        input: PathBuf,
        /// Which backend to write.
        #[arg(long, value_enum)]
        to: SideArg,
        /// Restore into a non-empty destination, replacing it exactly: keys / znodes within
        /// the filters that the backup lacks are deleted.
        #[arg(long)]
        force: bool,
        /// A state identity map (README "State identity"): NiFi's keys / znodes of region
        /// 1's backup are restored under region 2's component ids.
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
    },
    /// NiFi state identity across regions (README "State identity"): the map from region
    /// 1's component ids to region 2's, which statemirror applies on every path into the
    /// follower. The file is --file, or the config's `[identity] file`.
    Identity {
        #[command(subcommand)]
        action: statemirror::nifi::identity_cli::IdentityAction,
    },
    /// Copy NiFi component state between providers (NiFi not writing): ZooKeeper <-> Redis,
    /// Redis -> Redis, ZooKeeper -> ZooKeeper (another root). Refuses a destination that
    /// already holds NiFi state unless --force; verifies every component and entry after
    /// copying. `migrate verify` only compares (also against a live online migration).
    /// Exit 0 done and equal, 1 refused / failures / differences, 64 bad arguments,
    /// 69 a backend cannot be read.
    Migrate {
        /// `copy` (the default) or `verify` (compare only, write nothing).
        #[arg(value_enum, default_value_t = MigrateMode::Copy)]
        mode: MigrateMode,
        /// Source: `redis://[user:pass@]host:port[/db][?prefix=nifi/components/]`,
        /// `rediss://…`, or `zk://host:port[,host:port]/nifi` (NiFi's root node).
        #[arg(long)]
        from: String,
        /// Destination, same forms.
        #[arg(long)]
        to: String,
        /// Identity map file: source component ids -> destination ids.
        #[arg(long)]
        identity: Option<PathBuf>,
        /// List what would move (components, entries per component); write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Copy into a destination that already holds NiFi state, replacing it: its
        /// components the source lacks are deleted.
        #[arg(long)]
        force: bool,
        /// Compare only (same as `migrate verify`).
        #[arg(long)]
        verify_only: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum MigrateMode {
    Copy,
    Verify,
}

#[derive(Clone, Copy, ValueEnum)]
enum SideArg {
    Leader,
    Follower,
}

impl From<SideArg> for backup::Side {
    fn from(s: SideArg) -> Self {
        match s {
            SideArg::Leader => backup::Side::Leader,
            SideArg::Follower => backup::Side::Follower,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum ProtocolArg {
    Redis,
    Zookeeper,
}

impl From<ProtocolArg> for backup::Protocol {
    fn from(p: ProtocolArg) -> Self {
        match p {
            ProtocolArg::Redis => backup::Protocol::Redis,
            ProtocolArg::Zookeeper => backup::Protocol::Zookeeper,
        }
    }
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
    // Usage errors exit EXIT_CONFIG like every other "fix the invocation" error (clap's
    // own default would be 2); `--help` and `--version` exit 0.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
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
                cluster,
            } => maintenance(action, &admin, token_file, timeout_seconds, cluster).await,
            Command::Status { cluster, admin } => {
                let path = if cluster { "/cluster" } else { "/status" };
                admin_call(&admin, hyper::Method::GET, path, None, 10).await
            }
            Command::Verify {
                config,
                max_differences,
            } => verify(config, max_differences).await,
            Command::Resync {
                config,
                force,
                wait,
                timeout_seconds,
            } => resync(config, force, wait, timeout_seconds).await,
            Command::Recover { config, force, .. } => recover(config, force).await,
            Command::Backup {
                config,
                out,
                from,
                allow_live,
                protocol,
                list,
            } => match (list, config, out) {
                (Some(file), _, _) => {
                    backup_outcome("backup --list", backup::commands::list(&file))
                }
                (None, Some(config), Some(out)) => {
                    let args = backup::commands::BackupArgs {
                        out,
                        from: from.into(),
                        allow_live,
                        protocol: protocol.map(Into::into),
                    };
                    match Config::load(&config) {
                        Ok(r) => {
                            backup_outcome("backup", backup::commands::backup(&r, &args).await)
                        }
                        Err(errs) => config_errors(&config, &errs),
                    }
                }
                _ => {
                    eprintln!("statemirror: backup needs --config and --out (or --list FILE)");
                    ExitCode::from(EXIT_CONFIG)
                }
            },
            Command::Restore {
                config,
                input,
                to,
                force,
                identity,
            } => {
                let args = backup::commands::RestoreArgs {
                    input,
                    to: to.into(),
                    force,
                    identity,
                };
                match Config::load(&config) {
                    Ok(r) => backup_outcome("restore", backup::commands::restore(&r, &args).await),
                    Err(errs) => config_errors(&config, &errs),
                }
            }
            Command::Migrate {
                mode,
                from,
                to,
                identity,
                dry_run,
                force,
                verify_only,
                json,
            } => {
                let verify_only = verify_only || matches!(mode, MigrateMode::Verify);
                migrate(from, to, identity, dry_run, force, verify_only, json).await
            }
            Command::Identity { action } => identity(action).await,
        }
    })
}

async fn migrate(
    from: String,
    to: String,
    identity: Option<PathBuf>,
    dry_run: bool,
    force: bool,
    verify_only: bool,
    json: bool,
) -> ExitCode {
    use statemirror::migrate::{self, offline, Endpoint};
    let parse = |what: &str, s: &str| {
        Endpoint::parse(s).map_err(|e| eprintln!("statemirror: migrate --{what}: {e}"))
    };
    let (Ok(from), Ok(to)) = (parse("from", &from), parse("to", &to)) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    let map = match identity.as_deref().map(migrate::load_identity) {
        None => migrate::identity(),
        Some(Ok(m)) => m,
        Some(Err(e)) => {
            eprintln!("statemirror: migrate --identity: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let out = offline::run(offline::Options {
        from,
        to,
        map,
        dry_run,
        force,
        verify_only,
        timeout: Duration::from_secs(10),
    })
    .await;
    #[allow(clippy::print_stdout)]
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&out.report).unwrap_or_default()
        );
    } else if out.code == 0 {
        println!("{}", out.text);
    } else {
        eprintln!("statemirror: migrate: {}", out.text);
    }
    ExitCode::from(out.code)
}

/// `statemirror identity …` (the logic is in `nifi::identity_cli`).
async fn identity(action: statemirror::nifi::identity_cli::IdentityAction) -> ExitCode {
    match statemirror::nifi::identity_cli::run(action).await {
        Ok(o) => {
            #[allow(clippy::print_stdout)]
            {
                print!("{}", o.stdout);
            }
            ExitCode::from(o.code)
        }
        Err(e) => {
            eprintln!("statemirror: identity: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Prints a backup command's output (stdout) or failure (stderr) and gives its exit code.
fn backup_outcome(what: &str, r: Result<backup::commands::Output, backup::Failure>) -> ExitCode {
    match r {
        Ok(o) => {
            #[allow(clippy::print_stdout)]
            {
                print!("{}", o.stdout);
            }
            ExitCode::from(o.code)
        }
        Err(e) => {
            eprintln!("statemirror: {what}: {e}");
            ExitCode::from(e.exit_code())
        }
    }
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
    tracing::info!("shutting down: finishing owed replies and draining the mirror");
    if app.stop().await {
        tracing::info!("stopped; every acknowledged write reached the follower");
    }
    // Exit 0 either way: a timed-out drain is logged above and repaired by the next start's
    // resync; a non-zero exit would only make Kubernetes report a crash.
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
    timeout_seconds: Option<u64>,
    cluster: bool,
) -> ExitCode {
    let token = match token_file.as_deref().map(read_secret).transpose() {
        Ok(Some(t)) => Some(t),
        Ok(None) => client::discover_token(admin),
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
    let path = match (cluster, &method, timeout_seconds) {
        (false, _, _) => "/maintenance".to_string(),
        (true, &hyper::Method::GET, _) | (true, _, None) => "/cluster/maintenance".to_string(),
        (true, _, Some(t)) => {
            // The sidecar gives up a little before this command does, so its answer (which
            // names the members that did not confirm) arrives.
            let ms = t.saturating_mul(1000).saturating_sub(2000).max(1000);
            format!("/cluster/maintenance?timeout_ms={ms}")
        }
    };
    let timeout = timeout_seconds.unwrap_or(60);
    admin_call(admin, method, &path, token.as_deref(), timeout).await
}

/// One admin API call: prints the JSON answer; exit 0 on 2xx, 1 otherwise, 69 unreachable.
async fn admin_call(
    admin: &str,
    method: hyper::Method,
    path: &str,
    token: Option<&str>,
    timeout_seconds: u64,
) -> ExitCode {
    match client::request(
        admin,
        method,
        path,
        token,
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
                if status == 401 {
                    eprintln!(
                        "statemirror: pass --token-file (the sidecar's admin.token_file), or \
                         run as the sidecar's user on its host so its generated token file \
                         is found"
                    );
                }
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("statemirror: {e}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}

async fn verify(path: PathBuf, max: Option<usize>) -> ExitCode {
    let resolved = match Config::load(&path) {
        Ok(r) => r,
        Err(errs) => return config_errors(&path, &errs),
    };
    let max = max.unwrap_or(resolved.config.verify.max_differences).max(1);
    let verifiers = statemirror::verifiers(&resolved);
    if verifiers.is_empty() {
        eprintln!(
            "statemirror: no sidecar in {} has a follower",
            path.display()
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    let mut out = serde_json::Map::new();
    let (mut differ, mut failed) = (false, false);
    for v in verifiers {
        let r = match v.verify(max).await {
            Ok(rep) => {
                differ |= rep.total_differences() > 0;
                let mut v = serde_json::to_value(&rep).unwrap_or_default();
                v["total_differences"] = rep.total_differences().into();
                v
            }
            Err(e) => {
                failed = true;
                eprintln!("statemirror: {}: {e}", v.protocol());
                serde_json::json!({ "error": e })
            }
        };
        out.insert(v.protocol().into(), r);
    }
    #[allow(clippy::print_stdout)]
    {
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    }
    if failed {
        ExitCode::from(EXIT_UNAVAILABLE)
    } else if differ {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

async fn recover(path: PathBuf, force: bool) -> ExitCode {
    let resolved = match Config::load(&path) {
        Ok(r) => r,
        Err(errs) => return config_errors(&path, &errs),
    };
    let mut out = serde_json::Map::new();
    let mut code = ExitCode::SUCCESS;
    let mut outcome = |protocol: &str, r: Result<serde_json::Value, String>| match r {
        Ok(v) => {
            out.insert(protocol.into(), v);
        }
        Err(e) => {
            let unavailable = e.starts_with("leader") || e.starts_with("follower");
            eprintln!("statemirror: recover ({protocol}): {e}");
            out.insert(protocol.into(), serde_json::json!({ "error": e }));
            code = ExitCode::from(if unavailable { EXIT_UNAVAILABLE } else { 1 });
        }
    };
    let mut any = false;
    if let (Some(r), Some(rc)) = (&resolved.redis, &resolved.config.redis) {
        if let Some(f) = &r.follower {
            any = true;
            let timeout = Duration::from_millis(rc.connect_timeout_ms.max(1000));
            let work = statemirror::redis::generation::recover_from_follower(
                &r.leader,
                f,
                timeout,
                &rc.key_patterns,
                force,
            );
            let r = under_lease(&resolved, "redis", force, work).await;
            outcome(
                "redis",
                r.map(|v| serde_json::to_value(v).unwrap_or_default()),
            );
        }
    }
    if let (Some(z), Some(zc)) = (&resolved.zookeeper, &resolved.config.zookeeper) {
        if z.follower.is_some() {
            any = true;
            let work = statemirror::zookeeper::generation::recover_from_follower(z, zc, force);
            let r = under_lease(&resolved, "zookeeper", force, work).await;
            outcome(
                "zookeeper",
                r.map(|v| serde_json::to_value(v).unwrap_or_default()),
            );
        }
    }
    if !any {
        eprintln!(
            "statemirror: no sidecar in {} has a follower",
            path.display()
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    #[allow(clippy::print_stdout)]
    {
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    }
    code
}

/// With `[cluster]`, `recover` holds the follower's resync lease while it copies (as
/// `<node>.recover`): it does not run while a sidecar resyncs that follower, and no sidecar
/// starts a resync meanwhile. Refused, naming the holder, when it is held (unless `force`).
async fn under_lease<T>(
    resolved: &statemirror::config::Resolved,
    protocol: &str,
    force: bool,
    work: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    let (Some(store), Some(cc)) = (
        statemirror::cluster_store(resolved),
        resolved.config.cluster.as_ref(),
    ) else {
        return work.await;
    };
    let holder = format!("{}.recover", resolved.node_name);
    let lease = statemirror::replication::cluster::Lease::new(
        store,
        protocol,
        &holder,
        Duration::from_millis(cc.member_ttl_ms),
    );
    match lease.acquire().await {
        Ok(None) => {}
        Ok(Some(h)) if force => {
            eprintln!(
                "statemirror: recover ({protocol}): {h} holds the resync lease of this follower; \
                 going ahead anyway (--force)"
            );
            return work.await;
        }
        Ok(Some(h)) => {
            return Err(format!(
                "{h} holds the resync lease of this follower (a resync or recovery is running): \
                 wait until it ends, or use --force"
            ))
        }
        Err(e) => return Err(format!("leader: cannot take the resync lease: {e}")),
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let r = tokio::select! {
        r = work => r,
        lost = lease.hold(&stop) => Err(format!(
            "stopped before the end: {}",
            lost.unwrap_or_default()
        )),
    };
    lease.release().await;
    r
}

async fn resync(path: PathBuf, force: bool, wait: bool, timeout_seconds: u64) -> ExitCode {
    let resolved = match Config::load(&path) {
        Ok(r) => r,
        Err(errs) => return config_errors(&path, &errs),
    };
    let scheme = if resolved.admin_tls.is_some() {
        "https"
    } else {
        "http"
    };
    let admin = format!("{scheme}://{}", resolved.admin_listen);
    let token = resolved
        .admin_token
        .as_ref()
        .map(|t| t.expose().to_string())
        .or_else(|| client::discover_token(&admin));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout_seconds);
    let call = |method, p: String| {
        let (admin, token) = (admin.clone(), token.clone());
        async move {
            client::request(
                &admin,
                method,
                &p,
                token.as_deref(),
                Duration::from_secs(30),
            )
            .await
        }
    };
    let (status, body) = match call(hyper::Method::POST, format!("/resync?force={force}")).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("statemirror: {e}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    if !(200..300).contains(&status) {
        eprintln!(
            "statemirror: admin API answered HTTP {status}: {}",
            body.trim()
        );
        return ExitCode::FAILURE;
    }
    if !wait {
        #[allow(clippy::print_stdout)]
        {
            print!("{body}");
        }
        return ExitCode::SUCCESS;
    }
    // Give the controller a moment to pick the request up, then poll /status.
    tokio::time::sleep(Duration::from_millis(500)).await;
    loop {
        if let Ok((200, body)) = call(hyper::Method::GET, "/status".into()).await {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) {
                let done = ["redis", "zookeeper"].iter().all(|p| {
                    let s = &v[*p];
                    s.is_null()
                        || s["mirror"].is_null()
                        || (s["mirror"]["in_sync"] == true && s["resync"]["running"] == false)
                });
                if done {
                    let mut summary = serde_json::Map::new();
                    for p in ["redis", "zookeeper"] {
                        if !v[p]["resync"].is_null() {
                            summary.insert(p.into(), v[p]["resync"]["last"].clone());
                        }
                    }
                    #[allow(clippy::print_stdout)]
                    {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&summary).unwrap_or_default()
                        );
                    }
                    return ExitCode::SUCCESS;
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            eprintln!("statemirror: the follower is not in sync after {timeout_seconds} s");
            return ExitCode::FAILURE;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
