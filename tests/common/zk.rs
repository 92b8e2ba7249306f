//! ZooKeeper test harness: real Apache ZooKeeper 3.8 servers (Debian package `zookeeper`,
//! installed by `scripts/install-deps.sh`) as plain `java` processes on free loopback ports,
//! each with a private `zoo.cfg`, data directory and log file in a tempdir; SIGKILLed on drop,
//! even when a test panics. Also: four-letter words, `zkCli.sh`, and a bounded
//! `zookeeper_client::Client` connect.
//!
//! Servers are started from async code (`ZkServer::standalone().await`) so that a
//! `zookeeper_client` session on the same runtime keeps running while a test waits for a
//! server to start or restart.
//!
//! Each server runs under `setpriv --pdeathsig KILL` when available, so its JVM also dies when
//! the thread that started it exits (e.g. the test binary is killed by a timeout). Start and
//! restart servers from the test's own task, not from `spawn_blocking` (whose threads exit
//! when idle).

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use zookeeper_client as zkc;

pub const ZK_JAR: &str = "/usr/share/java/zookeeper.jar";
/// slf4j binding for the server logs (Debian `libslf4j-java`, a dependency of
/// `libzookeeper-java`). Without a binding the server logs nothing.
pub const SLF4J_SIMPLE_JAR: &str = "/usr/share/java/slf4j-simple.jar";
pub const ZKCLI: &str = "/usr/share/zookeeper/bin/zkCli.sh";

const STANDALONE_MAIN: &str = "org.apache.zookeeper.server.ZooKeeperServerMain";
const QUORUM_MAIN: &str = "org.apache.zookeeper.server.quorum.QuorumPeerMain";
/// Written to `server.log` before each start.
const START_MARKER: &str = "===== harness: start #";

/// Server options for [`ZkServer::standalone_with`] and [`ZkEnsemble::start_with`].
#[derive(Clone, Debug)]
pub struct ZkOptions {
    /// `tickTime`: session timeouts are clamped to 2 ticks ..= 60 s (`maxSessionTimeout`).
    pub tick_time_ms: u32,
    /// `-Dzookeeper.extendedTypesEnabled=true`: TTL nodes (`CreateMode` + `with_ttl`).
    pub extended_types: bool,
    /// `-Dreadonlymode.enabled=true`: an ensemble member without quorum serves reads.
    pub read_only_mode: bool,
    /// Extra `zoo.cfg` lines, e.g. `"maxClientCnxns=10"`.
    pub extra_cfg: Vec<String>,
    /// Extra JVM arguments, e.g. `"-Dzookeeper.maxCnxns=5"`.
    pub jvm_args: Vec<String>,
    /// Bound on waiting for a server (or the whole ensemble) to serve.
    pub ready_timeout: Duration,
    /// Extra classpath entries, e.g. the Netty jars that `NettyServerCnxnFactory` (TLS) needs.
    pub extra_classpath: Vec<String>,
}

impl Default for ZkOptions {
    fn default() -> Self {
        ZkOptions {
            tick_time_ms: 500,
            extended_types: true,
            read_only_mode: true,
            extra_cfg: Vec::new(),
            extra_classpath: Vec::new(),
            jvm_args: Vec::new(),
            ready_timeout: Duration::from_secs(20),
        }
    }
}

/// Panics with install instructions when the Debian package is missing.
fn require_installed() {
    for p in [ZK_JAR, ZKCLI] {
        if !Path::new(p).exists() {
            panic!("{p} missing: run scripts/install-deps.sh (installs the `zookeeper` package)");
        }
    }
}

/// Distinct free loopback ports.
fn free_ports(n: usize) -> Vec<u16> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    while out.len() < n {
        let p = super::free_port();
        if seen.insert(p) {
            out.push(p);
        }
    }
    out
}

/// One ZooKeeper JVM: its directory holds `zoo.cfg`, `data/` (with `myid` in an ensemble)
/// and `server.log` (stdout + stderr, appended across restarts).
struct Node {
    /// `myid` (0 for a standalone server).
    id: u32,
    client_port: u16,
    dir: PathBuf,
    main_class: &'static str,
    opts: ZkOptions,
    child: Option<Child>,
    starts: u32,
}

impl Node {
    fn new(
        id: u32,
        client_port: u16,
        dir: PathBuf,
        main_class: &'static str,
        opts: &ZkOptions,
    ) -> Self {
        fs::create_dir_all(dir.join("data")).expect("create data dir");
        if id > 0 {
            fs::write(dir.join("data").join("myid"), format!("{id}\n")).expect("write myid");
        }
        Node {
            id,
            client_port,
            dir,
            main_class,
            opts: opts.clone(),
            child: None,
            starts: 0,
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// `zoo.cfg` for this node; `servers` are the `server.N=` lines of an ensemble.
    fn write_cfg(&self, servers: &[String]) {
        let o = &self.opts;
        let mut cfg = vec![
            format!("tickTime={}", o.tick_time_ms),
            "initLimit=10".into(),
            "syncLimit=5".into(),
            format!("dataDir={}", self.data_dir().display()),
            format!("clientPort={}", self.client_port),
            "clientPortAddress=127.0.0.1".into(),
            "admin.enableServer=false".into(),
            "4lw.commands.whitelist=*".into(),
            "maxSessionTimeout=60000".into(),
            // Acknowledged writes are flushed to the kernel before the reply, so they survive
            // SIGKILL; only a machine crash could lose them.
            "forceSync=no".into(),
            "autopurge.purgeInterval=0".into(),
        ];
        cfg.extend(servers.iter().cloned());
        cfg.extend(o.extra_cfg.iter().cloned());
        let mut text = cfg.join("\n");
        text.push('\n');
        fs::write(self.dir.join("zoo.cfg"), text).expect("write zoo.cfg");
    }

    fn java_command(&self) -> Command {
        let setpriv = Path::new("/usr/bin/setpriv");
        let mut cmd = if setpriv.exists() {
            let mut c = Command::new(setpriv);
            c.args(["--pdeathsig", "KILL", "java"]);
            c
        } else {
            Command::new("java")
        };
        cmd.args([
            "-Xmx256m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Djava.net.preferIPv4Stack=true",
            "-Dzookeeper.jmx.log4j.disable=true",
            "-Dorg.slf4j.simpleLogger.showDateTime=true",
            "-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS",
        ]);
        if self.opts.extended_types {
            cmd.arg("-Dzookeeper.extendedTypesEnabled=true");
        }
        if self.opts.read_only_mode {
            cmd.arg("-Dreadonlymode.enabled=true");
        }
        cmd.args(&self.opts.jvm_args)
            .arg("-cp")
            .arg(
                std::iter::once(format!("{ZK_JAR}:{SLF4J_SIMPLE_JAR}"))
                    .chain(self.opts.extra_classpath.iter().cloned())
                    .collect::<Vec<_>>()
                    .join(":"),
            )
            .arg(self.main_class)
            .arg(self.dir.join("zoo.cfg"));
        cmd
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "server {} already running", self.id);
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open server.log");
        self.starts += 1;
        use std::io::Write;
        let _ = writeln!(log, "{START_MARKER}{} =====", self.starts);
        let err = log.try_clone().expect("clone log fd");
        let child = self
            .java_command()
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run java: {e}; run scripts/install-deps.sh"));
        self.child = Some(child);
    }

    /// SIGKILL and reap.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn running(&self) -> bool {
        self.child.is_some()
    }

    /// `Some(status)` if the process was started and has exited by itself.
    fn exited(&mut self) -> Option<String> {
        match self.child.as_mut()?.try_wait() {
            Ok(Some(st)) => Some(st.to_string()),
            _ => None,
        }
    }

    /// The log of the latest start.
    fn current_log(&self) -> String {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        match text.rfind(START_MARKER) {
            Some(i) => text[i..].to_string(),
            None => text,
        }
    }

    /// The latest start could not bind one of its ports (another process has it).
    fn bind_failed(&self) -> bool {
        self.current_log().contains("Address already in use")
    }

    /// (Re)starts the process and waits for a mode accepted by `want`; while a start fails
    /// because a port is briefly taken by another process, tries again until `deadline`.
    async fn start_and_wait(
        &mut self,
        deadline: Instant,
        want: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        loop {
            self.kill();
            self.spawn();
            match self.wait_mode(deadline, &want).await {
                Err(_) if self.bind_failed() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                r => return r,
            }
        }
    }

    /// The last `n` lines of the log.
    fn log_tail(&self, n: usize) -> String {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The server's mode (`standalone`, `leader`, `follower`, `read-only`, ...) if this
    /// process is serving on its port: `ruok` → `imok`, `conf` names this node's data dir (so
    /// the answer is not from some other server that grabbed the port) and `srvr` reports a
    /// mode.
    async fn probe(&self) -> Result<String, String> {
        let addr = self.addr();
        let ruok = try_four_letter(&addr, "ruok").await?;
        if ruok != "imok" {
            return Err(format!("ruok: {ruok:?}"));
        }
        let conf = try_four_letter(&addr, "conf").await?;
        let want = format!("dataDir={}", self.data_dir().display());
        if !conf.contains(&want) {
            return Err(format!("conf lacks {want:?}: {conf:?}"));
        }
        let srvr = try_four_letter(&addr, "srvr").await?;
        srvr.lines()
            .find_map(|l| l.strip_prefix("Mode: "))
            .map(|m| m.trim().to_string())
            .ok_or_else(|| format!("srvr: {srvr:?}"))
    }

    /// Waits until `probe` reports a mode accepted by `want`.
    async fn wait_mode(
        &mut self,
        deadline: Instant,
        want: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        loop {
            if let Some(st) = self.exited() {
                return Err(format!("server {} exited ({st})", self.id));
            }
            let last = match self.probe().await {
                Ok(mode) if want(&mode) => return Ok(mode),
                Ok(mode) => format!("mode {mode}"),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(format!("server {} not ready: {last}", self.id));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------
// Standalone server
// ---------------------------------------------------------------------------------------

/// A standalone ZooKeeper (`ZooKeeperServerMain`) on 127.0.0.1; SIGKILLed on drop.
pub struct ZkServer {
    node: Node,
    // Declared after `node`: the process dies before its directory is removed.
    _dir: tempfile::TempDir,
}

impl ZkServer {
    pub async fn standalone() -> Self {
        Self::standalone_with(ZkOptions::default()).await
    }

    pub async fn standalone_with(opts: ZkOptions) -> Self {
        require_installed();
        let mut last = String::new();
        // A port taken between `free_port()` and the JVM's bind makes the server exit:
        // try again with another port.
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("zk-standalone-")
                .tempdir()
                .expect("tempdir");
            let node = Node::new(
                0,
                super::free_port(),
                dir.path().to_path_buf(),
                STANDALONE_MAIN,
                &opts,
            );
            node.write_cfg(&[]);
            let mut s = ZkServer { node, _dir: dir };
            s.node.spawn();
            let deadline = Instant::now() + opts.ready_timeout;
            match s.node.wait_mode(deadline, |m| m == "standalone").await {
                Ok(_) => return s,
                Err(e) => {
                    last = format!("{e}\n--- server.log (tail) ---\n{}", s.node.log_tail(80));
                    if !s.node.bind_failed() {
                        break; // slow or broken rather than a port clash: do not retry
                    }
                }
            }
        }
        panic!("ZooKeeper standalone server did not start: {last}");
    }

    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> String {
        self.node.addr()
    }

    pub fn port(&self) -> u16 {
        self.node.client_port
    }

    pub fn data_dir(&self) -> PathBuf {
        self.node.data_dir()
    }

    /// The server log (all starts), for diagnostics.
    pub fn log(&self) -> String {
        fs::read_to_string(self.node.log_path()).unwrap_or_default()
    }

    pub fn is_running(&self) -> bool {
        self.node.running()
    }

    /// SIGKILL; the data directory is kept.
    pub fn kill(&mut self) {
        self.node.kill();
    }

    /// The JVM's process id (to `SIGSTOP` it: a frozen region).
    pub fn pid(&self) -> u32 {
        self.node.child.as_ref().map(Child::id).expect("running")
    }

    /// Kills (if running) and starts again on the same port with the same data directory:
    /// persistent nodes survive; sessions survive too if a client reconnects within its
    /// session timeout.
    pub async fn restart(&mut self) {
        let deadline = Instant::now() + self.node.opts.ready_timeout;
        let started = self.node.start_and_wait(deadline, |m| m == "standalone");
        if let Err(e) = started.await {
            panic!(
                "ZooKeeper did not restart on {}: {e}\n--- server.log (tail) ---\n{}",
                self.addr(),
                self.node.log_tail(80)
            );
        }
    }

    /// SIGKILL, wipe the data directory, start again on the same port: an empty server
    /// (its zxid starts over, lower than before).
    pub async fn restart_empty(&mut self) {
        self.node.kill();
        let data = self.node.data_dir();
        fs::remove_dir_all(&data).expect("remove data dir");
        fs::create_dir_all(&data).expect("create data dir");
        self.restart().await;
    }

    /// A consistent copy of the data directory as it is now: the server is SIGKILLed
    /// (acknowledged writes are already in the kernel, see `forceSync` in `zoo.cfg`), the
    /// directory copied, and the server started again if it was running. Restore it later
    /// with [`Self::restore`].
    pub async fn backup(&mut self) -> ZkBackup {
        let was_running = self.node.running();
        self.node.kill();
        let dir = tempfile::Builder::new()
            .prefix("zk-backup-")
            .tempdir()
            .expect("tempdir");
        copy_dir(&self.node.data_dir(), dir.path()).expect("copy data dir");
        if was_running {
            self.restart().await;
        }
        ZkBackup { dir }
    }

    /// SIGKILL (if running), replace the data directory with `backup`'s copy and start
    /// again on the same port: the server as it was when the backup was taken.
    pub async fn restore(&mut self, backup: &ZkBackup) {
        self.node.kill();
        let data = self.node.data_dir();
        fs::remove_dir_all(&data).expect("remove data dir");
        fs::create_dir_all(&data).expect("create data dir");
        copy_dir(backup.dir.path(), &data).expect("restore data dir");
        self.restart().await;
    }
}

/// A copy of a [`ZkServer`]'s data directory ([`ZkServer::backup`]); removed on drop.
pub struct ZkBackup {
    dir: tempfile::TempDir,
}

/// Copies the contents of `from` into `to` (which exists), recursively.
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    for e in fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            fs::create_dir_all(&target)?;
            copy_dir(&e.path(), &target)?;
        } else {
            fs::copy(e.path(), &target)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Ensemble
// ---------------------------------------------------------------------------------------

/// An ensemble of `QuorumPeerMain` processes on 127.0.0.1 (free client, peer and election
/// ports); all SIGKILLed on drop. Servers are indexed from 0; server `i` has `myid` `i + 1`.
pub struct ZkEnsemble {
    nodes: Vec<Node>,
    opts: ZkOptions,
    _dir: tempfile::TempDir,
}

impl ZkEnsemble {
    pub async fn start(n: usize) -> Self {
        Self::start_with(n, ZkOptions::default()).await
    }

    pub async fn start_with(n: usize, opts: ZkOptions) -> Self {
        assert!(n >= 1);
        require_installed();
        let mut last = String::new();
        // A port clash makes a server exit (or never form a quorum): retry with new ports.
        for attempt in 1..=3 {
            let mut e = Self::configure(n, &opts);
            for node in &mut e.nodes {
                node.spawn();
            }
            let deadline = Instant::now() + opts.ready_timeout.max(Duration::from_secs(30));
            match e.wait_quorum(deadline).await {
                Ok(()) => return e,
                Err(err) => {
                    last = format!("attempt {attempt}: {err}\n{}", e.logs(60));
                    if !e.nodes.iter().any(Node::bind_failed) {
                        break; // slow or broken rather than a port clash: do not retry
                    }
                }
            }
        }
        panic!("ZooKeeper ensemble of {n} did not form: {last}");
    }

    fn configure(n: usize, opts: &ZkOptions) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("zk-ensemble-")
            .tempdir()
            .expect("tempdir");
        let ports = free_ports(3 * n);
        let servers: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    "server.{}=127.0.0.1:{}:{}",
                    i + 1,
                    ports[3 * i + 1],
                    ports[3 * i + 2]
                )
            })
            .collect();
        let nodes = (0..n)
            .map(|i| {
                let node = Node::new(
                    i as u32 + 1,
                    ports[3 * i],
                    dir.path().join(format!("zk{}", i + 1)),
                    QUORUM_MAIN,
                    opts,
                );
                node.write_cfg(&servers);
                node
            })
            .collect();
        ZkEnsemble {
            nodes,
            opts: opts.clone(),
            _dir: dir,
        }
    }

    /// Waits until every running server serves, one as `leader` and the others as
    /// `follower`.
    async fn wait_quorum(&mut self, deadline: Instant) -> Result<(), String> {
        loop {
            let mut modes = Vec::new();
            for node in &mut self.nodes {
                if !node.running() {
                    continue;
                }
                if let Some(st) = node.exited() {
                    return Err(format!("server {} exited ({st})", node.id));
                }
                if node.bind_failed() {
                    return Err(format!("server {}: a port is in use", node.id));
                }
                modes.push((node.id, node.probe().await));
            }
            let leaders = modes
                .iter()
                .filter(|(_, m)| matches!(m, Ok(m) if m == "leader"))
                .count();
            let followers = modes
                .iter()
                .filter(|(_, m)| matches!(m, Ok(m) if m == "follower"))
                .count();
            if leaders == 1 && leaders + followers == modes.len() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("no stable leader/followers: {modes:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits (bounded) until the running servers have one leader and the rest followers.
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + self.opts.ready_timeout;
        if let Err(e) = self.wait_quorum(deadline).await {
            panic!("ensemble not ready: {e}\n{}", self.logs(60));
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// `127.0.0.1:a,127.0.0.1:b,127.0.0.1:c`
    pub fn connect_string(&self) -> String {
        self.nodes
            .iter()
            .map(Node::addr)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Client address of server `i` (0-based).
    pub fn server_addr(&self, i: usize) -> String {
        self.nodes[i].addr()
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].running()
    }

    /// `srvr` mode of server `i` (`leader`, `follower`, `read-only`, ...), or why not.
    pub async fn mode(&self, i: usize) -> Result<String, String> {
        self.nodes[i].probe().await
    }

    /// Index of the current leader among the running servers.
    pub async fn leader(&self) -> Option<usize> {
        for (i, n) in self.nodes.iter().enumerate() {
            if n.running() && matches!(n.probe().await, Ok(m) if m == "leader") {
                return Some(i);
            }
        }
        None
    }

    /// Index of the server holding a connection of session `session_id` (4LW `cons`).
    pub async fn server_of_session(&self, session_id: i64) -> Option<usize> {
        let needle = format!("sid={session_id:#x}");
        for (i, n) in self.nodes.iter().enumerate() {
            if !n.running() {
                continue;
            }
            if let Ok(cons) = try_four_letter(&n.addr(), "cons").await {
                if cons.contains(&needle) {
                    return Some(i);
                }
            }
        }
        None
    }

    /// SIGKILL server `i`; its data directory is kept.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Kills server `i` (if running) and starts it again with the same ports and data;
    /// waits until it serves as leader or follower.
    pub async fn restart(&mut self, i: usize) {
        let deadline = Instant::now() + self.opts.ready_timeout;
        let started = self.nodes[i].start_and_wait(deadline, |m| m == "leader" || m == "follower");
        if let Err(e) = started.await {
            panic!("server {i} did not rejoin: {e}\n{}", self.logs(60));
        }
    }

    /// The log of server `i` (all starts).
    pub fn log(&self, i: usize) -> String {
        fs::read_to_string(self.nodes[i].log_path()).unwrap_or_default()
    }

    /// The last `lines` lines of every server's log.
    pub fn logs(&self, lines: usize) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                format!(
                    "--- server {i} (myid {}) log tail ---\n{}\n",
                    n.id,
                    n.log_tail(lines)
                )
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// Four-letter words, zkCli.sh, zookeeper-client
// ---------------------------------------------------------------------------------------

/// Sends a four-letter word (`ruok`, `srvr`, `stat`, `cons`, `mntr`, ...) and returns the
/// whole reply; panics on a connection error or after ~5 s.
pub async fn four_letter(addr: &str, word: &str) -> String {
    try_four_letter(addr, word)
        .await
        .unwrap_or_else(|e| panic!("4LW {word} to {addr}: {e}"))
}

/// [`four_letter`] without the panic.
pub async fn try_four_letter(addr: &str, word: &str) -> Result<String, String> {
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(word.as_bytes()).await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    match tokio::time::timeout(Duration::from_secs(5), io).await {
        Ok(Ok(out)) => Ok(String::from_utf8_lossy(&out).into_owned()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// Runs `zkCli.sh -server ADDR args...` (one command, non-interactive):
/// (exit code, stdout, stderr). Exit code 0 on success, 1 on a ZooKeeper error such as
/// `Node does not exist` (or a connection failure), 127 for an unknown command; -1 if killed.
/// Panics after 30 s (killing the script and its JVM). See [`zkcli_lines`] for the output.
pub async fn zkcli(addr: &str, args: &[&str]) -> (i32, String, String) {
    zkcli_flags(addr, &[], args).await
}

/// [`zkcli`] with options before `-server`, e.g. `["-r"]` (read-only) or
/// `["-waitforconnection", "-timeout", "10000"]`.
pub async fn zkcli_flags(addr: &str, flags: &[&str], args: &[&str]) -> (i32, String, String) {
    zkcli_env(addr, &[], flags, args).await
}

/// The Netty jars a TLS ZooKeeper needs (Debian's `libnetty-java`): the server's
/// `NettyServerCnxnFactory` and the client's `ClientCnxnSocketNetty`.
pub fn netty_classpath() -> Vec<String> {
    [
        "buffer",
        "codec",
        "common",
        "handler",
        "resolver",
        "transport",
        "transport-native-unix-common",
        "transport-native-epoll",
    ]
    .iter()
    .map(|j| format!("/usr/share/java/netty-{j}.jar"))
    .filter(|p| std::path::Path::new(p).exists())
    .collect()
}

/// `CLIENT_JVMFLAGS` for `zkCli.sh` over TLS (Netty client socket): `truststore` (PEM CA
/// file) verifies the server; `keystore` (PEM key + certificate in one file) is the client
/// certificate for mutual TLS. Debian's `zkEnv.sh` fixes `CLASSPATH`, so the Netty jars
/// come with a second `-cp` (the JVM takes the last).
pub fn zkcli_tls_flags(truststore: &std::path::Path, keystore: Option<&std::path::Path>) -> String {
    let cp = std::iter::once(format!("/etc/zookeeper/conf:{ZK_JAR}"))
        .chain(netty_classpath())
        .collect::<Vec<_>>()
        .join(":");
    let mut f = format!(
        "-cp {cp} -Dzookeeper.clientCnxnSocket=org.apache.zookeeper.ClientCnxnSocketNetty \
         -Dzookeeper.client.secure=true -Dzookeeper.ssl.trustStore.location={} \
         -Dzookeeper.ssl.trustStore.type=PEM",
        truststore.display()
    );
    if let Some(k) = keystore {
        f.push_str(&format!(
            " -Dzookeeper.ssl.keyStore.location={} -Dzookeeper.ssl.keyStore.type=PEM",
            k.display()
        ));
    }
    f
}

/// [`zkcli_flags`] with environment variables (e.g. `CLIENT_JVMFLAGS`, see
/// [`zkcli_tls_flags`]).
pub async fn zkcli_env(
    addr: &str,
    env: &[(&str, String)],
    flags: &[&str],
    args: &[&str],
) -> (i32, String, String) {
    use std::os::unix::process::CommandExt;
    require_installed();
    let mut cmd = Command::new(ZKCLI);
    cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    cmd.args(flags)
        .arg("-server")
        .arg(addr)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // zkCli.sh runs java as a child (no exec): own process group, so a timeout kills both.
        .process_group(0);
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let child = cmd.spawn().expect("run zkCli.sh");
    let pid = child.id().expect("zkCli.sh pid");
    match tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await {
        Ok(Ok(out)) => (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ),
        Ok(Err(e)) => panic!("zkCli.sh {args:?}: {e}"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
            panic!("zkCli.sh -server {addr} {args:?} did not finish within 30 s");
        }
    }
}

/// The meaningful lines of a `zkCli.sh` run: stdout without the connection banner
/// (`Connecting to ...`, `WATCHER::`, `WatchedEvent state:SyncConnected|Closed type:None
/// path:null` and the blank lines after them), then stderr without `SLF4J:` lines. Command
/// results land on either stream: `get` data and `ls` on stdout; `Created /a` and errors
/// such as `Node does not exist: /a` on stderr.
pub fn zkcli_lines(stdout: &str, stderr: &str) -> Vec<String> {
    let banner = |l: &str| {
        l.starts_with("Connecting to ")
            || l == "WATCHER::"
            || (l.starts_with("WatchedEvent state:") && l.ends_with(" type:None path:null"))
    };
    let lines: Vec<&str> = stdout.lines().collect();
    let mut out = Vec::new();
    let mut after_banner = false;
    for (i, l) in lines.iter().enumerate() {
        // The watcher thread prints its banner (`\nWATCHER::\n\nWatchedEvent …`) whenever the
        // session connects: on a loaded machine after the command's own output, so the
        // blank line before a banner is the banner's too.
        let before_banner = l.is_empty() && lines.get(i + 1).is_some_and(|n| banner(n));
        if banner(l) || before_banner || (after_banner && l.is_empty()) {
            after_banner = true;
            continue;
        }
        after_banner = false;
        out.push(l.to_string());
    }
    out.extend(
        stderr
            .lines()
            .filter(|l| !l.starts_with("SLF4J:"))
            .map(str::to_string),
    );
    out
}

/// A `zookeeper_client::Client` for `connect_string` (one address or a comma-separated
/// list) with a 10 s session timeout; panics if no session within ~15 s.
pub async fn zk_client(connect_string: &str) -> zkc::Client {
    zk_client_with(
        zkc::Client::connector().with_session_timeout(Duration::from_secs(10)),
        connect_string,
    )
    .await
}

/// [`zk_client`] with a custom connector (session timeout, read-only, auth, ...).
pub async fn zk_client_with(connector: zkc::Connector, connect_string: &str) -> zkc::Client {
    match tokio::time::timeout(Duration::from_secs(15), connector.connect(connect_string)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => panic!("zookeeper-client connect to {connect_string}: {e}"),
        Err(_) => panic!("zookeeper-client connect to {connect_string}: no session within 15 s"),
    }
}

/// `Acls::anyone_all()` persistent-node options.
pub fn persistent() -> zkc::CreateOptions<'static> {
    zkc::CreateMode::Persistent.with_acls(zkc::Acls::anyone_all())
}

/// `Acls::anyone_all()` ephemeral-node options.
pub fn ephemeral() -> zkc::CreateOptions<'static> {
    zkc::CreateMode::Ephemeral.with_acls(zkc::Acls::anyone_all())
}

// ---------------------------------------------------------------------------------------
// statemirror as a ZooKeeper sidecar, and tree comparison
// ---------------------------------------------------------------------------------------

/// statemirror's ZooKeeper sidecar running in this process (stopped on drop): the
/// ZooKeeper counterpart of [`super::Proxy`].
pub struct ZkProxy {
    pub app: statemirror::App,
}

impl ZkProxy {
    /// Loads `config/zookeeper.toml` and points it at these connect strings (e.g.
    /// [`ZkServer::addr`] or [`ZkEnsemble::connect_string`]); `follower: None` runs without
    /// mirroring.
    pub async fn start(leader: &str, follower: Option<&str>) -> Self {
        Self::start_with(leader, follower, |_| {}).await
    }

    /// [`ZkProxy::start`], letting `tweak` change anything else before validation.
    pub async fn start_with(
        leader: &str,
        follower: Option<&str>,
        tweak: impl FnOnce(&mut statemirror::config::Config),
    ) -> Self {
        Self::start_inner(leader, follower, tweak, true).await
    }

    /// [`ZkProxy::start_with`] without waiting for the resync at start: for a follower that
    /// is down behind something that still accepts connections (a `FaultRelay`).
    pub async fn start_without_waiting(
        leader: &str,
        follower: Option<&str>,
        tweak: impl FnOnce(&mut statemirror::config::Config),
    ) -> Self {
        Self::start_inner(leader, follower, tweak, false).await
    }

    async fn start_inner(
        leader: &str,
        follower: Option<&str>,
        tweak: impl FnOnce(&mut statemirror::config::Config),
        may_wait: bool,
    ) -> Self {
        let mut cfg = super::example_config("zookeeper.toml");
        cfg.admin.listen = "127.0.0.1:0".into();
        cfg.admin.token_file = None;
        cfg.log.level = "warn".into();
        let z = cfg
            .zookeeper
            .as_mut()
            .expect("[zookeeper] in config/zookeeper.toml");
        z.listen = "127.0.0.1:0".into();
        z.leader = leader.to_string();
        z.follower = follower.map(str::to_string);
        z.follower_auth_file = None;
        z.health_interval_ms = 200;
        z.health_timeout_ms = 1000;
        z.connect_timeout_ms = 1000;
        cfg.replication.retry_max_backoff_ms = 500;
        cfg.replication.apply_timeout_ms = 3000;
        tweak(&mut cfg);
        let resolved = cfg.validate().unwrap_or_else(|e| panic!("config: {e:?}"));
        statemirror::telemetry::init(&resolved.config.log);
        let wait = may_wait
            && resolved.config.resync.on_start
            && resolved
                .zookeeper
                .as_ref()
                .and_then(|z| z.follower.as_ref())
                .and_then(|f| f.first())
                .is_some_and(|a| std::net::TcpStream::connect(a).is_ok());
        let app = statemirror::start(resolved)
            .await
            .expect("statemirror starts");
        // The follower starts out of sync; let the resync at start finish first.
        if wait {
            assert!(
                app.wait_in_sync(std::time::Duration::from_secs(30)).await,
                "the resync at start did not finish"
            );
        }
        ZkProxy { app }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.app.zookeeper_addr().expect("zookeeper listener")
    }

    /// The proxy as a one-server connect string, `127.0.0.1:PORT`.
    pub fn connect_string(&self) -> String {
        self.addr().to_string()
    }

    pub fn admin(&self) -> String {
        format!("http://{}", self.app.admin_addr)
    }

    /// A `zookeeper_client` session through the proxy (see [`zk_client`]).
    pub async fn client(&self) -> zkc::Client {
        zk_client(&self.connect_string()).await
    }

    /// `GET|PUT|DELETE path` on the admin API: (status, body). Without `token`, the one the
    /// sidecar generated when the config has no `admin.token_file` (found like the CLI does).
    pub async fn http(&self, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
        let m = hyper::Method::from_bytes(method.as_bytes()).expect("method");
        let generated = statemirror::admin::client::discover_token(&self.admin());
        let token = token.or(generated.as_deref());
        statemirror::admin::client::request(&self.admin(), m, path, token, Duration::from_secs(30))
            .await
            .expect("admin API reachable")
    }

    pub async fn status(&self) -> serde_json::Value {
        let (code, body) = self.http("GET", "/status", None).await;
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status is JSON")
    }

    /// `GET /metrics` (Prometheus text).
    pub async fn metrics(&self) -> String {
        let (code, body) = self.http("GET", "/metrics", None).await;
        assert_eq!(code, 200, "{body}");
        body
    }

    /// `/status`'s `zookeeper.mirror` object.
    pub async fn mirror_status(&self) -> serde_json::Value {
        self.status().await["zookeeper"]["mirror"].clone()
    }

    /// Waits (up to 20 s) until `zookeeper.mirror.queue_depth` is 0. Every write a client
    /// saw acknowledged was queued before its reply was relayed, so afterwards the follower
    /// has all of them.
    pub async fn drained(&self) {
        super::eventually(Duration::from_secs(20), || async {
            let m = self.mirror_status().await;
            if m["queue_depth"] == 0 {
                Ok(())
            } else {
                Err(format!("zookeeper mirror not drained: {m}"))
            }
        })
        .await
    }
}

impl Drop for ZkProxy {
    fn drop(&mut self) {
        self.app.abort();
    }
}

/// One node as [`tree_full`] sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Znode {
    pub data: Vec<u8>,
    /// Owned by a client session (`ephemeralOwner != 0`). Servers report
    /// `ephemeralOwner == 0` for container and TTL nodes too, so those count as persistent
    /// (a client cannot tell them apart from plain persistent nodes).
    pub ephemeral: bool,
    /// `scheme:id:PERMS`, sorted. ZooKeeper masks the hash of a `digest` id as `x` for a
    /// session without ADMIN on the node, as the walker's is.
    pub acl: Vec<String>,
}

/// Every node of the server at `addr` (a direct session, not through the proxy) except `/`
/// and the `/zookeeper` subtree, by path. Nodes deleted while walking are skipped.
pub async fn tree_full(addr: &str) -> std::collections::BTreeMap<String, Znode> {
    let c = zk_client(addr).await;
    c.sync("/").await.expect("sync");
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec!["/".to_string()];
    while let Some(p) = stack.pop() {
        let children = match c.list_children(&p).await {
            Ok(ch) => ch,
            Err(zkc::Error::NoNode) => continue,
            Err(e) => panic!("list_children {p} on {addr}: {e}"),
        };
        for ch in children {
            let path = if p == "/" {
                format!("/{ch}")
            } else {
                format!("{p}/{ch}")
            };
            // ZooKeeper's own tree, and statemirror's generation marker (advanced on both
            // sides at its own pace), are not the data under test.
            if path == "/zookeeper" || path == "/statemirror" {
                continue;
            }
            let (data, stat) = match c.get_data(&path).await {
                Ok(v) => v,
                Err(zkc::Error::NoNode) => continue,
                Err(e) => panic!("get_data {path} on {addr}: {e}"),
            };
            let mut acl: Vec<String> = match c.get_acl(&path).await {
                Ok((acl, _)) => acl
                    .iter()
                    .map(|a| format!("{}:{}:{}", a.scheme(), a.id(), a.permission()))
                    .collect(),
                Err(zkc::Error::NoNode) => continue,
                Err(e) => panic!("get_acl {path} on {addr}: {e}"),
            };
            acl.sort();
            let ephemeral = stat.ephemeral_owner != 0;
            out.insert(
                path.clone(),
                Znode {
                    data,
                    ephemeral,
                    acl,
                },
            );
            if stat.num_children > 0 {
                stack.push(path);
            }
        }
    }
    out
}

/// Every node of the server at `addr` except `/` and `/zookeeper`: path → (data, whether it
/// is an ephemeral node, i.e. `ephemeralOwner != 0`; containers and TTL nodes report 0 and
/// count as persistent).
pub async fn tree(addr: &str) -> std::collections::BTreeMap<String, (Vec<u8>, bool)> {
    tree_full(addr)
        .await
        .into_iter()
        .map(|(p, n)| (p, (n.data, n.ephemeral)))
        .collect()
}

/// The persistent nodes (everything but session-owned ephemerals) of `leader` and
/// `follower`, as path → node.
async fn persistent_trees(
    leader: &str,
    follower: &str,
) -> (
    std::collections::BTreeMap<String, Znode>,
    std::collections::BTreeMap<String, Znode>,
) {
    let keep = |t: std::collections::BTreeMap<String, Znode>| {
        t.into_iter()
            .filter(|(_, n)| !n.ephemeral)
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    (
        keep(tree_full(leader).await),
        keep(tree_full(follower).await),
    )
}

/// The differences between two persistent trees, or `None` when equal.
fn tree_diff(
    a: &std::collections::BTreeMap<String, Znode>,
    b: &std::collections::BTreeMap<String, Znode>,
) -> Option<String> {
    let mut diffs = Vec::new();
    for (p, n) in a {
        match b.get(p) {
            None => diffs.push(format!("only on leader: {p} {n:?}")),
            Some(m) if m != n => diffs.push(format!("{p}: leader {n:?} follower {m:?}")),
            _ => {}
        }
    }
    for (p, m) in b {
        if !a.contains_key(p) {
            diffs.push(format!("only on follower: {p} {m:?}"));
        }
    }
    if diffs.is_empty() {
        None
    } else {
        let n = diffs.len();
        diffs.truncate(20);
        Some(format!("{n} difference(s):\n  {}", diffs.join("\n  ")))
    }
}

/// The follower holds exactly the leader's persistent nodes (persistent, container and TTL
/// nodes; not session-owned ephemerals, which are never mirrored), except `/` and
/// `/zookeeper`: same paths, data and ACL (as `scheme:id:perms`, sorted). Not compared:
/// stats (ctime/mtime, versions, zxids, child counts) and whether a node is a container or
/// has a TTL (servers do not show clients either). Returns the number of nodes compared.
pub async fn assert_same_tree(leader_addr: &str, follower_addr: &str) -> usize {
    let (a, b) = persistent_trees(leader_addr, follower_addr).await;
    if let Some(d) = tree_diff(&a, &b) {
        panic!("leader {leader_addr} and follower {follower_addr} differ: {d}");
    }
    a.len()
}

/// [`assert_same_tree`] without the panic: `Err(differences)`.
pub async fn compare_trees(leader_addr: &str, follower_addr: &str) -> Result<usize, String> {
    let (a, b) = persistent_trees(leader_addr, follower_addr).await;
    match tree_diff(&a, &b) {
        Some(d) => Err(d),
        None => Ok(a.len()),
    }
}

// ---------------------------------------------------------------------------------------
// Raw ZooKeeper session: exact frames on the wire
// ---------------------------------------------------------------------------------------

/// A hand-driven ZooKeeper session (statemirror's own codec), for tests that need exact
/// frames: ordering, zxids, session resumption.
pub struct RawZk {
    pub stream: tokio::net::TcpStream,
    pub buf: bytes::BytesMut,
    pub session_id: i64,
    /// The session password the server gave (to resume the session elsewhere).
    pub passwd: bytes::Bytes,
}

impl RawZk {
    pub async fn tcp(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
        let s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        let _ = s.set_nodelay(true);
        s
    }

    /// Connects and completes a new-session handshake (Java client layout: 45 bytes with
    /// the `readOnly` byte).
    pub async fn connect(addr: std::net::SocketAddr) -> RawZk {
        let (raw, resp) = Self::handshake(
            addr,
            0,
            bytes::Bytes::from_static(&[0; 16]),
            0,
            false,
            10_000,
        )
        .await
        .expect("ConnectResponse");
        assert_ne!(resp.session_id, 0, "session refused: {resp:?}");
        assert_eq!(resp.read_only, Some(false));
        raw
    }

    /// Sends a `ConnectRequest` (resuming `session_id` when non-zero) and returns the
    /// session with the server's answer, or `None` when the connection closes first.
    pub async fn handshake(
        addr: std::net::SocketAddr,
        session_id: i64,
        passwd: bytes::Bytes,
        last_zxid_seen: i64,
        read_only: bool,
        time_out: i32,
    ) -> Option<(
        RawZk,
        statemirror::zookeeper::proto::connect::ConnectResponse,
    )> {
        use statemirror::zookeeper::jute::Record;
        use statemirror::zookeeper::proto::connect::{ConnectRequest, ConnectResponse};
        let req = ConnectRequest {
            protocol_version: 0,
            last_zxid_seen,
            time_out,
            session_id,
            passwd,
            read_only: Some(read_only),
        };
        let mut out = bytes::BytesMut::new();
        statemirror::zookeeper::frame::write_frame(&mut out, &req.to_bytes());
        let mut raw = RawZk {
            stream: Self::tcp(addr).await,
            buf: bytes::BytesMut::new(),
            session_id: 0,
            passwd: bytes::Bytes::new(),
        };
        raw.write(&out).await;
        let f = raw.frame().await.ok()?;
        let resp = ConnectResponse::from_bytes(&f).expect("decodes as ConnectResponse");
        raw.session_id = resp.session_id;
        raw.passwd = resp.passwd.clone();
        Some((raw, resp))
    }

    /// One request frame: `RequestHeader{xid, op}` + `body`.
    pub fn request(
        out: &mut bytes::BytesMut,
        xid: i32,
        opcode: i32,
        body: &impl statemirror::zookeeper::jute::Record,
    ) {
        use statemirror::zookeeper::jute::Record;
        use statemirror::zookeeper::proto::RequestHeader;
        let mut f = RequestHeader { xid, op: opcode }.to_bytes().to_vec();
        f.extend_from_slice(&body.to_bytes());
        statemirror::zookeeper::frame::write_frame(out, &f);
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        tokio::time::timeout(Duration::from_secs(10), self.stream.write_all(bytes))
            .await
            .expect("write timed out")
            .expect("write");
    }

    /// The next frame body (10 s bound).
    pub async fn frame(&mut self) -> Result<bytes::Bytes, super::ReadEnd> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(f) = statemirror::zookeeper::frame::next_frame(&mut self.buf, 1 << 21)
                .expect("a sane frame")
            {
                return Ok(f);
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Err(super::ReadEnd::TimedOut),
                Ok(Ok(0)) | Ok(Err(_)) => return Err(super::ReadEnd::Closed),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The next reply that is not a watch notification: header and body.
    pub async fn reply(
        &mut self,
    ) -> Result<(statemirror::zookeeper::proto::ReplyHeader, bytes::Bytes), super::ReadEnd> {
        use statemirror::zookeeper::jute::Record;
        loop {
            let f = self.frame().await?;
            let h =
                statemirror::zookeeper::proto::ReplyHeader::from_bytes(&f).expect("ReplyHeader");
            if h.xid != -1 {
                return Ok((h, f.slice(16..)));
            }
        }
    }

    /// True if the peer closes within `t` (anything sent before is dropped).
    pub async fn closed_within(&mut self, t: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            self.buf.clear();
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// `world:anyone` with every permission.
pub fn open_acl() -> Vec<statemirror::zookeeper::proto::Acl> {
    vec![statemirror::zookeeper::proto::Acl {
        perms: 31,
        id: statemirror::zookeeper::proto::Id {
            scheme: "world".into(),
            id: "anyone".into(),
        },
    }]
}
