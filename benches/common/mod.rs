//! Helpers shared by the benchmarks (`mod common;` in each bench): child processes killed on
//! drop, free loopback ports, the release `statemirror` binary and its config, the admin API,
//! and small statistics.
//!
//! Each bench compiles its own copy and uses only part of it.
#![allow(dead_code)]

use std::env;
use std::fs;
use std::io::{Read, Write};
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
    guard
}

/// GET on the admin API; returns (status, body).
pub fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
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
