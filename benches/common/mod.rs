//! Helpers shared by the benchmarks (`mod common;` in each bench): child processes killed on
//! drop, free loopback ports, `redis-server` and standalone ZooKeeper servers, the release
//! `statemirror` binary and its config, the admin API, and small statistics.
//!
//! Each bench compiles its own copy and uses only part of it.
#![allow(dead_code)]

pub mod record;

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// `NAME` parsed as a number, `default` when unset; panics on garbage.
pub fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    match env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// `NAME` as a comma-separated list (empty items dropped); `None` when unset.
pub fn env_list(name: &str) -> Option<Vec<String>> {
    env::var(name).ok().map(|s| {
        s.split(',')
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect()
    })
}

/// `PATH` plus the sbin directories (Debian installs nutcracker in /usr/sbin).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The release binary. Cargo builds it for the benchmark (`CARGO_BIN_EXE_statemirror`, the
/// bench profile inherits release); if it is missing, `cargo build --release` makes it.
pub fn statemirror_bin() -> PathBuf {
    if let Some(p) = env::var_os("STATEMIRROR_BIN") {
        return PathBuf::from(p);
    }
    if let Some(p) = option_env!("CARGO_BIN_EXE_statemirror").map(PathBuf::from) {
        if p.is_file() {
            return p;
        }
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("target"));
    let bin = target.join("release").join("statemirror");
    if !bin.is_file() {
        println!("building {} with cargo build --release", bin.display());
        let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "--bin", "statemirror"])
            .current_dir(manifest)
            .status()
            .expect("run cargo build --release");
        assert!(status.success(), "cargo build --release failed");
    }
    bin
}

/// `program` run through `setpriv --pdeathsig KILL` when available, so the process also dies
/// (SIGKILL) when the benchmark is killed outright and no drop guard runs. `setpriv` execs the
/// program: the child's pid is the program's.
pub fn command_dies_with_parent(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let setpriv = Path::new("/usr/bin/setpriv");
    if setpriv.exists() {
        let mut c = Command::new(setpriv);
        c.args(["--pdeathsig", "KILL"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// A child process killed (SIGKILL) and reaped on drop, also during a panic.
pub struct Guard {
    pub name: String,
    pub child: Child,
}

impl Guard {
    pub fn spawn(name: &str, cmd: &mut Command) -> Self {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({:?}): {e}", cmd.get_program()));
        Guard {
            name: name.to_string(),
            child,
        }
    }

    /// `Some(status)` once the process has exited by itself.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }

    /// Waits until `port` accepts connections; panics (with `log` if given) if the process
    /// exits or `timeout` passes.
    pub fn wait_listening(&mut self, port: u16, timeout: Duration, log: Option<&Path>) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                panic!(
                    "{} exited ({status}) before listening{}",
                    self.name,
                    log_tail(log)
                );
            }
            if TcpStream::connect_timeout(
                &([127, 0, 0, 1], port).into(),
                Duration::from_millis(200),
            )
            .is_ok()
            {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} not listening on port {port} after {timeout:?}{}",
                    self.name,
                    log_tail(log)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `; LOG:\n<last 20 lines>` for panic messages, or nothing without a log.
pub fn log_tail(log: Option<&Path>) -> String {
    let Some(log) = log else {
        return String::new();
    };
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    format!("; {}:\n{tail}", log.display())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// Median; 0 for an empty slice.
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Nearest-rank percentile of sorted values; 0 for an empty slice.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `config/<file>` (an example config of this repository) as a TOML table, with the admin
/// API on `127.0.0.1:<admin_port>` without a token and the log level at `warn`.
pub fn example_config(file: &str, admin_port: u16) -> toml::Table {
    let example = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(file);
    let text =
        fs::read_to_string(&example).unwrap_or_else(|e| panic!("read {}: {e}", example.display()));
    let mut cfg: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("{} is not TOML: {e}", example.display()));
    let admin = section(&mut cfg, "admin");
    admin.insert("listen".into(), format!("127.0.0.1:{admin_port}").into());
    admin.remove("token_file");
    section(&mut cfg, "log").insert("level".into(), "warn".into());
    cfg
}

/// The `[name]` table of `cfg`, created when missing.
pub fn section<'a>(cfg: &'a mut toml::Table, name: &str) -> &'a mut toml::Table {
    let v = cfg
        .entry(name)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if !v.is_table() {
        *v = toml::Value::Table(toml::Table::new());
    }
    v.as_table_mut().expect("table")
}

/// `config/redis.toml` for a statemirror listening on `127.0.0.1:<port>` in front of the
/// redis-servers on `leader` and `follower` (none: no mirroring), admin API on `admin_port`;
/// everything else as shipped.
pub fn redis_config(port: u16, admin_port: u16, leader: u16, follower: Option<u16>) -> toml::Table {
    let mut cfg = example_config("redis.toml", admin_port);
    let redis = section(&mut cfg, "redis");
    redis.insert("listen".into(), format!("127.0.0.1:{port}").into());
    redis.insert(
        "leader".into(),
        format!("redis://127.0.0.1:{leader}").into(),
    );
    redis.remove("leader_password_file");
    redis.remove("follower_password_file");
    match follower {
        Some(f) => redis.insert("follower".into(), format!("redis://127.0.0.1:{f}").into()),
        None => redis.remove("follower"),
    };
    cfg
}

/// `config/zookeeper.toml` (without a `[redis]` section) for a statemirror listening on
/// `127.0.0.1:<port>` in front of the ZooKeeper servers on `leader` and `follower` (none: no
/// mirroring), admin API on `admin_port`; everything else as shipped.
pub fn zookeeper_config(
    port: u16,
    admin_port: u16,
    leader: u16,
    follower: Option<u16>,
) -> toml::Table {
    let mut cfg = example_config("zookeeper.toml", admin_port);
    cfg.remove("redis");
    let zk = section(&mut cfg, "zookeeper");
    zk.insert("listen".into(), format!("127.0.0.1:{port}").into());
    zk.insert("leader".into(), format!("127.0.0.1:{leader}").into());
    zk.remove("follower_auth_file");
    match follower {
        Some(f) => zk.insert("follower".into(), format!("127.0.0.1:{f}").into()),
        None => zk.remove("follower"),
    };
    cfg
}

/// Writes `cfg` to `dir/statemirror.toml`, checks it with `statemirror check-config`, starts
/// `statemirror run` (log in `dir/statemirror.log`) and waits until `/readyz` on `admin_port`
/// answers 200 (the leader passed a health check). The process is killed when the guard drops.
pub fn start_statemirror(
    dir: &Path,
    name: &str,
    bin: &Path,
    cfg: &toml::Table,
    admin_port: u16,
) -> Guard {
    start_statemirror_timed(dir, name, bin, cfg, admin_port).0
}

/// [`start_statemirror`], also returning when the process was spawned (after the config
/// check, before its start-up).
pub fn start_statemirror_timed(
    dir: &Path,
    name: &str,
    bin: &Path,
    cfg: &toml::Table,
    admin_port: u16,
) -> (Guard, Instant) {
    fs::create_dir_all(dir).expect("statemirror dir");
    let config = dir.join("statemirror.toml");
    fs::write(&config, toml::to_string(cfg).expect("serialize config")).expect("write config");
    let check = Command::new(bin)
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .expect("run statemirror check-config");
    assert!(
        check.status.success(),
        "statemirror check-config {}: {}",
        config.display(),
        String::from_utf8_lossy(&check.stderr)
    );
    let log_path = dir.join("statemirror.log");
    let log_file = fs::File::create(&log_path).expect("log file");
    let spawned = Instant::now();
    let mut guard = Guard::spawn(
        &format!("statemirror ({name})"),
        command_dies_with_parent(bin)
            .args(["run", "--config"])
            .arg(&config)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file),
    );
    guard.wait_listening(admin_port, Duration::from_secs(10), Some(&log_path));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !matches!(http_get(admin_port, "/readyz"), Ok((200, _))) {
        if let Some(status) = guard.exited() {
            panic!(
                "statemirror ({name}) exited ({status}){}",
                log_tail(Some(&log_path))
            );
        }
        assert!(
            Instant::now() < deadline,
            "statemirror ({name}) not ready after 10 s{}",
            log_tail(Some(&log_path))
        );
        thread::sleep(Duration::from_millis(50));
    }
    (guard, spawned)
}

/// GET on the admin API; returns (status, body).
pub fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    http_request(port, "GET", path)
}

/// A request without a body on the admin API; returns (status, body). Sends the token the
/// sidecar generated (the benchmarks' configs have no `admin.token_file`), found like the
/// CLI finds it.
pub fn http_request(port: u16, method: &str, path: &str) -> Result<(u16, String), String> {
    let auth = statemirror::admin::token::discover_token(&format!("http://127.0.0.1:{port}"))
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}Content-Length: 0\r\n\
         Connection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    let (head, body) = resp.split_once("\r\n\r\n").ok_or("no HTTP header end")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("no HTTP status")?;
    Ok((code, body.to_string()))
}

/// `.<protocol>.mirror` of `/status`.
#[derive(Debug, Clone, Default)]
pub struct Mirror {
    pub queue_depth: u64,
    pub mirrored: u64,
    pub dropped: u64,
    pub failures: u64,
    pub in_sync: bool,
}

/// `/status` → `.<protocol>.mirror` (`protocol` is `redis` or `zookeeper`).
pub fn mirror_status(admin: u16, protocol: &str) -> Mirror {
    let (code, body) = http_get(admin, "/status").expect("GET /status");
    assert_eq!(code, 200, "GET /status: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("/status is JSON");
    let m = &v[protocol]["mirror"];
    assert!(
        m.is_object(),
        "/status has no {protocol}.mirror object: {body}"
    );
    Mirror {
        queue_depth: m["queue_depth"].as_u64().unwrap_or(0),
        mirrored: m["mirrored_writes"].as_u64().unwrap_or(0),
        dropped: m["dropped_writes"].as_u64().unwrap_or(0),
        failures: m["failures"].as_u64().unwrap_or(0),
        in_sync: m["in_sync"].as_bool().unwrap_or(false),
    }
}

/// The first line of the process's `--version` output (stdout or stderr), or nothing.
pub fn program_version(program: &Path, arg: &str) -> String {
    Command::new(program)
        .arg(arg)
        .output()
        .ok()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_default()
}

/// One value of a Prometheus text exposition: the first sample of `name` whose labels contain
/// `label` (e.g. `protocol="redis"`), or of `name` without labels when `label` is empty.
pub fn metric_value(text: &str, name: &str, label: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let labels = match series.strip_prefix(name)? {
            "" => "",
            rest => rest.strip_prefix('{')?.strip_suffix('}')?,
        };
        if !label.is_empty() && !labels.split(',').any(|kv| kv == label) {
            return None;
        }
        value.trim().parse().ok()
    })
}

// ---------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------

/// A `redis-server` on 127.0.0.1 (`--save '' --appendonly no`), SIGKILLed on drop (and with
/// the benchmark, through `setpriv --pdeathsig`), its log and files in `root/<name>`.
pub struct RedisServer {
    pub port: u16,
    _guard: Guard,
}

impl RedisServer {
    pub fn start(root: &Path, name: &str, bin: &Path) -> Self {
        Self::start_with(root, name, bin, &[])
    }

    /// [`Self::start`] with extra `redis-server` arguments (e.g. a `--tls-port`).
    pub fn start_with(root: &Path, name: &str, bin: &Path, extra: &[String]) -> Self {
        let dir = root.join(name);
        fs::create_dir_all(&dir).expect("redis dir");
        let log = dir.join("redis.log");
        let port = free_port();
        let mut guard = Guard::spawn(
            &format!("redis-server ({name})"),
            command_dies_with_parent(bin)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
                .arg("--dir")
                .arg(&dir)
                .arg("--logfile")
                .arg(&log)
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        guard.wait_listening(port, Duration::from_secs(10), Some(&log));
        RedisServer {
            port,
            _guard: guard,
        }
    }

    pub fn pid(&self) -> u32 {
        self._guard.child.id()
    }
}

/// Resident memory of a process (`VmRSS` in `/proc/<pid>/status`), in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

/// Sends one command on a new connection; returns the first line of the reply (`+OK`, `:42`,
/// ...).
pub fn command(port: u16, args: &[&str]) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        let _ = write!(req, "${}\r\n{a}\r\n", a.len());
    }
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let line = line.trim_end().to_string();
    if line.starts_with('-') || line.is_empty() {
        return Err(format!("{args:?}: {line}"));
    }
    Ok(line)
}

/// `DBSIZE` of the redis-server on `port` (0 when it does not answer).
pub fn dbsize(port: u16) -> u64 {
    command(port, &["DBSIZE"])
        .ok()
        .and_then(|l| l.trim_start_matches(':').parse().ok())
        .unwrap_or(0)
}

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// A blocking RESP2 connection (TCP_NODELAY) that pipelines: [`Resp::queue`] commands, then
/// [`Resp::flush`] them and read as many replies.
pub struct Resp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    out: Vec<u8>,
    queued: usize,
}

impl Resp {
    pub fn connect(port: u16) -> Result<Self, String> {
        let s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("{port}: {e}"))?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        Ok(Resp {
            reader: BufReader::with_capacity(64 * 1024, s.try_clone().map_err(|e| e.to_string())?),
            writer: s,
            out: Vec::with_capacity(64 * 1024),
            queued: 0,
        })
    }

    /// Appends one command to the pipeline (sent by [`Resp::flush`]).
    pub fn queue(&mut self, args: &[&[u8]]) {
        let _ = write!(self.out, "*{}\r\n", args.len());
        for a in args {
            let _ = write!(self.out, "${}\r\n", a.len());
            self.out.extend_from_slice(a);
            self.out.extend_from_slice(b"\r\n");
        }
        self.queued += 1;
    }

    /// Sends every queued command and returns their replies, in order.
    pub fn flush(&mut self) -> Result<Vec<Reply>, String> {
        self.writer
            .write_all(&self.out)
            .map_err(|e| format!("write: {e}"))?;
        self.out.clear();
        let n = std::mem::take(&mut self.queued);
        (0..n).map(|_| self.read_reply()).collect()
    }

    /// One command, one reply.
    pub fn call(&mut self, args: &[&[u8]]) -> Result<Reply, String> {
        self.queue(args);
        Ok(self.flush()?.pop().expect("one reply"))
    }

    fn read_line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err("connection closed".into()),
            Ok(_) => Ok(line.trim_end_matches(['\r', '\n']).to_string()),
            Err(e) => Err(format!("read: {e}")),
        }
    }

    fn read_reply(&mut self) -> Result<Reply, String> {
        let line = self.read_line()?;
        let (kind, rest) = line.split_at(line.len().min(1));
        let num = || -> Result<i64, String> {
            rest.parse().map_err(|_| format!("bad RESP line {line:?}"))
        };
        Ok(match kind {
            "+" => Reply::Simple(rest.to_string()),
            "-" => Reply::Error(rest.to_string()),
            ":" => Reply::Int(num()?),
            "$" => match num()? {
                n if n < 0 => Reply::Bulk(None),
                n => {
                    let mut data = vec![0; n as usize + 2];
                    self.reader
                        .read_exact(&mut data)
                        .map_err(|e| format!("read: {e}"))?;
                    data.truncate(n as usize);
                    Reply::Bulk(Some(data))
                }
            },
            "*" => match num()? {
                n if n < 0 => Reply::Array(None),
                n => Reply::Array(Some(
                    (0..n)
                        .map(|_| self.read_reply())
                        .collect::<Result<_, _>>()?,
                )),
            },
            _ => return Err(format!("bad RESP line {line:?}")),
        })
    }
}

// ---------------------------------------------------------------------------------------
// ZooKeeper
// ---------------------------------------------------------------------------------------

pub const ZK_JAR: &str = "/usr/share/java/zookeeper.jar";
/// slf4j binding for the server log; without one the server logs nothing.
pub const SLF4J_SIMPLE_JAR: &str = "/usr/share/java/slf4j-simple.jar";
const STANDALONE_MAIN: &str = "org.apache.zookeeper.server.ZooKeeperServerMain";
/// Session timeout of every benchmark session.
pub const ZK_SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Panics unless the ZooKeeper jars are installed.
pub fn require_zookeeper_jars() {
    for p in [ZK_JAR, SLF4J_SIMPLE_JAR] {
        assert!(
            Path::new(p).exists(),
            "{p} missing: run scripts/install-deps.sh (installs the `zookeeper` package)"
        );
    }
}

/// A standalone ZooKeeper on 127.0.0.1 (SIGKILLed on drop and with the benchmark) with its
/// `zoo.cfg`, `data/` and `server.log` in `root/<name>-<attempt>`.
pub struct ZkServer {
    pub port: u16,
    _guard: Guard,
}

impl ZkServer {
    /// `force_sync`: `forceSync=yes` (fsync the transaction log before each reply).
    pub fn start(root: &Path, name: &str, force_sync: bool) -> Self {
        let mut last = String::new();
        // A port taken between `free_port()` and the JVM's bind makes the server exit: try
        // again with another port.
        for attempt in 1..=3 {
            let dir = root.join(format!("{name}-{attempt}"));
            let data = dir.join("data");
            fs::create_dir_all(&data).expect("zookeeper data dir");
            let port = free_port();
            let cfg = [
                "tickTime=2000".to_string(),
                "initLimit=10".into(),
                "syncLimit=5".into(),
                format!("dataDir={}", data.display()),
                format!("clientPort={port}"),
                "clientPortAddress=127.0.0.1".into(),
                "admin.enableServer=false".into(),
                "4lw.commands.whitelist=*".into(),
                "maxSessionTimeout=60000".into(),
                "maxClientCnxns=0".into(),
                format!("forceSync={}", if force_sync { "yes" } else { "no" }),
                "autopurge.purgeInterval=0".into(),
            ]
            .join("\n")
                + "\n";
            let zoo_cfg = dir.join("zoo.cfg");
            fs::write(&zoo_cfg, cfg).expect("write zoo.cfg");
            let log = dir.join("server.log");
            let out = fs::File::create(&log).expect("server.log");
            let mut guard = Guard::spawn(
                &format!("ZooKeeper ({name})"),
                command_dies_with_parent("java")
                    .args([
                        "-Xms256m",
                        "-Xmx512m",
                        "-XX:+UseSerialGC",
                        "-Djava.net.preferIPv4Stack=true",
                        "-Dzookeeper.jmx.log4j.disable=true",
                        "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
                        "-Dreadonlymode.enabled=true",
                        "-cp",
                    ])
                    .arg(format!("{ZK_JAR}:{SLF4J_SIMPLE_JAR}"))
                    .arg(STANDALONE_MAIN)
                    .arg(&zoo_cfg)
                    .current_dir(&dir)
                    .stdin(Stdio::null())
                    .stdout(out.try_clone().expect("server.log"))
                    .stderr(out),
            );
            match wait_standalone(&mut guard, port, &data, Duration::from_secs(30)) {
                Ok(()) => {
                    return ZkServer {
                        port,
                        _guard: guard,
                    }
                }
                Err(e) => {
                    drop(guard);
                    last = format!("{e}{}", log_tail(Some(&log)));
                    let text = fs::read_to_string(&log).unwrap_or_default();
                    if !text.contains("Address already in use") {
                        break; // slow or broken rather than a port clash: do not retry
                    }
                }
            }
        }
        panic!("ZooKeeper ({name}) did not start: {last}");
    }

    pub fn pid(&self) -> u32 {
        self._guard.child.id()
    }

    /// The `Zookeeper version:` line of `srvr`.
    pub fn version(&self) -> String {
        four_letter(self.port, "srvr")
            .ok()
            .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
            .unwrap_or_default()
    }
}

/// Waits until the server on `port` is ours (`conf` names `data`), answers `ruok` and serves
/// in standalone mode (`srvr`).
fn wait_standalone(
    guard: &mut Guard,
    port: u16,
    data: &Path,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let want = format!("dataDir={}", data.display());
    loop {
        if let Some(status) = guard.exited() {
            return Err(format!("{} exited ({status})", guard.name));
        }
        let probe = (|| {
            let ruok = four_letter(port, "ruok")?;
            if ruok != "imok" {
                return Err(format!("ruok: {ruok:?}"));
            }
            let conf = four_letter(port, "conf")?;
            if !conf.contains(&want) {
                return Err(format!("conf lacks {want:?}"));
            }
            let srvr = four_letter(port, "srvr")?;
            match srvr.lines().find_map(|l| l.strip_prefix("Mode: ")) {
                Some("standalone") => Ok(()),
                _ => Err(format!("srvr: {srvr:?}")),
            }
        })();
        match probe {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(format!(
                    "{} not serving on port {port} after {timeout:?}: {e}",
                    guard.name
                ))
            }
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Sends a four-letter word and returns the whole reply (bounded: 1 s to connect, 5 s to read).
pub fn four_letter(port: u16, word: &str) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(word.as_bytes()).map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// A `zookeeper-client` session on 127.0.0.1:`port`; panics if none within 15 s.
pub async fn zk_connect(port: u16) -> zookeeper_client::Client {
    let addr = format!("127.0.0.1:{port}");
    let connector = zookeeper_client::Client::connector().with_session_timeout(ZK_SESSION_TIMEOUT);
    match tokio::time::timeout(Duration::from_secs(15), connector.connect(&addr)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => panic!("zookeeper-client connect to {addr}: {e}"),
        Err(_) => panic!("zookeeper-client connect to {addr}: no session within 15 s"),
    }
}

/// Persistent, open ACL.
pub fn zk_persistent() -> zookeeper_client::CreateOptions<'static> {
    zookeeper_client::CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all())
}

/// Children of `path` (0 when it does not exist), after a `sync`.
pub async fn zk_children(c: &zookeeper_client::Client, path: &str) -> usize {
    let _ = c.sync(path).await;
    match c.list_children(path).await {
        Ok(ch) => ch.len(),
        Err(zookeeper_client::Error::NoNode) => 0,
        Err(e) => panic!("list_children {path}: {e}"),
    }
}
