//! Full-resync throughput and steady-state mirror lag, for Redis and ZooKeeper.
//!
//! ```text
//! cargo bench --bench resync
//! BENCH_REPEAT=1 BENCH_RESYNC_KEYS=20000 BENCH_RESYNC_ZNODES=5000 BENCH_LAG_SECS=3 \
//!     cargo bench --bench resync                                   # quick
//! BENCH_PARTS=zk-resync cargo bench --bench resync                 # one part
//! ```
//!
//! Every server runs in its own process: `redis-server` (`--save '' --appendonly no`) and
//! standalone ZooKeeper 3.8 servers (`java ... ZooKeeperServerMain`, Debian package
//! `zookeeper`) on free loopback ports, a leader and a follower per protocol, and the release
//! `statemirror` binary with a config derived from `config/redis.toml` /
//! `config/zookeeper.toml` (`[resync] on_start = true`, `auto = true`,
//! `max_keys_per_second = BENCH_RESYNC_RATE`, default 0 = unlimited). All of them are killed
//! when the benchmark ends, also on panic (drop guards) and when the benchmark itself is
//! killed (`setpriv --pdeathsig KILL`).
//!
//! Parts (`BENCH_PARTS`, comma-separated, default all):
//! - `redis-resync`: the leader holds `BENCH_RESYNC_KEYS` string keys (pipelined `SET`s), the
//!   follower is empty (`FLUSHALL`); a fresh statemirror starts and marks the follower out of
//!   sync, so a full resync runs as soon as the follower is reachable. Measured: `/status`
//!   `redis.resync.last` (`copied / duration_seconds` is the reported rate) and the wall time
//!   from spawning the process until `/status` says `redis.mirror.in_sync == true` and
//!   `redis.resync.running == false` (includes process start-up, the first health check and
//!   the controller's poll interval). Checked: the follower's `DBSIZE` equals the key count.
//!   `BENCH_REPEAT` runs (a new statemirror and an emptied follower each), median reported.
//! - `zk-resync`: the same with `BENCH_RESYNC_ZNODES` persistent znodes
//!   `/bench/n/<i>` (`multi` creates) on the leader ZooKeeper and an empty follower (`/bench`
//!   deleted between runs). Checked: the follower's child count of `/bench/n`. A walker that
//!   copies nothing (still a stub) is reported as such, not as a rate.
//! - `redis-lag` / `zk-lag`: steady-state mirror lag under a write load through the proxy
//!   (resync done first). Background: `BENCH_LAG_CONNS` connections / sessions writing at a
//!   fixed total rate (Redis `SET` over a 10,000-key space, ZooKeeper `setData` on 100 nodes;
//!   a backlog over 100 ms is dropped, so the achieved rate is reported), starting
//!   `BENCH_LAG_WARMUP_SECS` before the probe and running until it ends. Probe: every
//!   `BENCH_LAG_PROBE_MS` it writes a unique marker (Redis `SET lagprobe:<i>`, ZooKeeper
//!   `create /lag/probe/p<i>`) through the proxy, notes when the write was acknowledged, then
//!   polls the follower directly (`EXISTS` / `exists`, back to back, at most
//!   `BENCH_LAG_PROBE_TIMEOUT_MS`) until the marker is visible; lag = the reply time of the
//!   first poll that sees it − the acknowledgement time (so it overstates by up to one
//!   follower round trip). Reported: p50/p99/max lag over all probes, the achieved background
//!   rate, and the largest `statemirror_mirror_lag_seconds` sampled from `/metrics` every
//!   100 ms (the gauge itself is refreshed every 100 ms). After the run the mirror queue must
//!   drain and the probe markers must all be on the follower.
//!
//! Targets (reported, not enforced): Redis resync ≥ 50,000 keys/s, ZooKeeper resync ≥ 5,000
//! znodes/s, lag p99 ≤ 10 ms. The process exits 1 when a check fails (follower count, resync
//! outcome, markers missing), not when a target is missed.
//!
//! Environment:
//! - `BENCH_PARTS`: subset of `redis-resync,zk-resync,redis-lag,zk-lag`;
//! - `BENCH_REPEAT`: resync runs per protocol, the median is reported (default 3);
//! - `BENCH_RESYNC_KEYS` (default 100000), `BENCH_RESYNC_VALUE_BYTES` (default 20);
//! - `BENCH_RESYNC_ZNODES` (default 20000), `BENCH_RESYNC_ZNODE_BYTES` (default 64);
//! - `BENCH_RESYNC_RATE`: `[resync] max_keys_per_second` (default 0 = unlimited);
//! - `BENCH_RESYNC_BATCH`: `[resync] batch_size` (default: the example config's);
//! - `BENCH_LAG_SECS`: probe duration per protocol (default 10);
//! - `BENCH_LAG_WARMUP_SECS`: background load before the probe starts, not measured (default
//!   2; the JVMs JIT-compile the setData path meanwhile);
//! - `BENCH_LAG_REDIS_RATE` (default 20000) / `BENCH_LAG_ZK_RATE` (default 2000): background
//!   writes per second, all connections together;
//! - `BENCH_LAG_CONNS`: background connections / sessions (default 4);
//! - `BENCH_LAG_PROBE_MS` (default 10), `BENCH_LAG_PROBE_TIMEOUT_MS` (default 2000);
//! - `BENCH_ZK_FORCE_SYNC`: `1` = ZooKeeper `forceSync=yes` (default `no`);
//! - `BENCH_TIMEOUT_SECS`: give up waiting for one resync after this long (default 300);
//! - `STATEMIRROR_BIN`: use this binary instead of the one cargo built.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it does nothing.

mod common;

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use zookeeper_client as zkc;

use common::{
    command, dbsize, env_list, env_num, find_program, free_port, http_get, log_tail, median,
    metric_value, mirror_status, percentile, program_version, redis_config, require_zookeeper_jars,
    section, start_statemirror_timed, statemirror_bin, zk_children, zk_connect, zk_persistent,
    zookeeper_config, Guard, RedisServer, Reply, Resp, ZkServer,
};

const PARTS: [&str; 4] = ["redis-resync", "zk-resync", "redis-lag", "zk-lag"];
const REDIS_RESYNC_TARGET: f64 = 50_000.0;
const ZK_RESYNC_TARGET: f64 = 5_000.0;
const LAG_P99_TARGET_MS: f64 = 10.0;
/// `SET`s per pipeline when populating the Redis leader.
const POPULATE_CHUNK: u64 = 10_000;
/// Creates per `multi` when populating the ZooKeeper leader, and deletes when cleaning.
const ZK_MULTI: usize = 1000;
/// `multi`s in flight when populating.
const ZK_POPULATE_IN_FLIGHT: usize = 4;
const BENCH_ROOT: &str = "/bench";
const BENCH_PARENT: &str = "/bench/n";
const LAG_ROOT: &str = "/lag";
const LAG_LOAD: &str = "/lag/load";
const LAG_PROBE: &str = "/lag/probe";
/// Nodes the ZooKeeper background load writes (`setData`).
const LAG_LOAD_NODES: u64 = 100;
/// Keys the Redis background load writes (`SET`).
const REDIS_LOAD_KEYSPACE: u64 = 10_000;
/// Background value / data size in the lag runs.
const LOAD_VALUE_BYTES: usize = 64;
/// A load connection further behind its schedule than this drops the backlog.
const MAX_BACKLOG: Duration = Duration::from_millis(100);
/// Requests one ZooKeeper load session keeps in flight at most.
const ZK_LOAD_IN_FLIGHT: usize = 32;
const LAG_GAUGE: &str = "statemirror_mirror_lag_seconds";

fn main() {
    if !env::args().any(|a| a == "--bench") {
        println!("resync: benchmark skipped in test mode; run `cargo bench --bench resync`");
        return;
    }
    let s = Settings::from_env();
    let dir = tempfile::Builder::new()
        .prefix("statemirror-resync-bench-")
        .tempdir()
        .expect("temp dir");
    let root = dir.path();

    println!("# statemirror resync and mirror lag benchmark\n");
    println!(
        "parts: {}; resync: {} Redis keys ({} B values), {} znodes ({} B data), \
         max_keys_per_second = {}, batch_size = {}, median of {} run(s); lag: {} s per \
         protocol after {} s of warm-up load, Redis {} SET/s, ZooKeeper {} setData/s over {} connection(s), a probe every \
         {} ms; {} CPU(s) shared by every process; load average at start: {}.",
        s.parts.join(","),
        s.keys,
        s.value_bytes,
        s.znodes,
        s.znode_bytes,
        s.resync_rate,
        s.resync_batch
            .map_or("as in config/*.toml".to_string(), |b| b.to_string()),
        s.repeat,
        s.lag_duration.as_secs_f64(),
        s.lag_warmup.as_secs_f64(),
        s.lag_redis_rate,
        s.lag_zk_rate,
        s.lag_conns,
        s.probe_interval.as_millis(),
        thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg(),
    );
    let bin = statemirror_bin();
    println!("statemirror binary: {}", bin.display());
    let mut out = Outcome::default();

    if s.wants("redis-resync") || s.wants("redis-lag") {
        let redis_bin = find_program("redis-server")
            .unwrap_or_else(|| panic!("redis-server not found: run scripts/install-deps.sh"));
        println!("{}", program_version(&redis_bin, "--version"));
        let leader = RedisServer::start(root, "redis-leader", &redis_bin);
        let follower = RedisServer::start(root, "redis-follower", &redis_bin);
        println!(
            "Redis leader 127.0.0.1:{}, follower 127.0.0.1:{}\n",
            leader.port, follower.port
        );
        if s.wants("redis-resync") {
            redis_resync(&s, root, &bin, &leader, &follower, &mut out);
        }
        if s.wants("redis-lag") {
            redis_lag(&s, root, &bin, &leader, &follower, &mut out);
        }
    }

    if s.wants("zk-resync") || s.wants("zk-lag") {
        require_zookeeper_jars();
        let leader = ZkServer::start(root, "zk-leader", s.force_sync);
        let follower = ZkServer::start(root, "zk-follower", s.force_sync);
        println!(
            "\n{}\nZooKeeper leader 127.0.0.1:{}, follower 127.0.0.1:{}\n",
            leader.version(),
            leader.port,
            follower.port
        );
        if s.wants("zk-resync") {
            current_thread().block_on(zk_resync(&s, root, &bin, &leader, &follower, &mut out));
        }
        if s.wants("zk-lag") {
            zk_lag(&s, root, &bin, &leader, &follower, &mut out);
        }
    }

    report(&s, &out);
    println!("\nload average at the end: {}", loadavg());
    drop(dir);
    if !out.problems.is_empty() {
        eprintln!();
        for p in &out.problems {
            eprintln!("FAILED: {p}");
        }
        std::process::exit(1);
    }
}

struct Settings {
    parts: Vec<String>,
    repeat: usize,
    keys: u64,
    value_bytes: usize,
    znodes: usize,
    znode_bytes: usize,
    resync_rate: u64,
    resync_batch: Option<u64>,
    lag_duration: Duration,
    lag_warmup: Duration,
    lag_redis_rate: f64,
    lag_zk_rate: f64,
    lag_conns: usize,
    probe_interval: Duration,
    probe_timeout: Duration,
    force_sync: bool,
    timeout: Duration,
}

impl Settings {
    fn from_env() -> Self {
        let parts = env_list("BENCH_PARTS")
            .unwrap_or_else(|| PARTS.iter().map(|p| p.to_string()).collect());
        for p in &parts {
            assert!(
                PARTS.contains(&p.as_str()),
                "BENCH_PARTS: unknown part {p:?} (known: {})",
                PARTS.join(",")
            );
        }
        Settings {
            parts,
            repeat: env_num("BENCH_REPEAT", 3usize).max(1),
            keys: env_num("BENCH_RESYNC_KEYS", 100_000u64).max(1),
            value_bytes: env_num("BENCH_RESYNC_VALUE_BYTES", 20usize).max(1),
            znodes: env_num("BENCH_RESYNC_ZNODES", 20_000usize).max(1),
            znode_bytes: env_num("BENCH_RESYNC_ZNODE_BYTES", 64usize),
            resync_rate: env_num("BENCH_RESYNC_RATE", 0u64),
            resync_batch: env::var_os("BENCH_RESYNC_BATCH")
                .map(|_| env_num("BENCH_RESYNC_BATCH", 500u64).max(1)),
            lag_duration: Duration::from_secs_f64(env_num("BENCH_LAG_SECS", 10f64).max(0.1)),
            lag_warmup: Duration::from_secs_f64(env_num("BENCH_LAG_WARMUP_SECS", 2f64).max(0.0)),
            lag_redis_rate: env_num("BENCH_LAG_REDIS_RATE", 20_000f64).max(0.0),
            lag_zk_rate: env_num("BENCH_LAG_ZK_RATE", 2_000f64).max(0.0),
            lag_conns: env_num("BENCH_LAG_CONNS", 4usize).max(1),
            probe_interval: Duration::from_millis(env_num("BENCH_LAG_PROBE_MS", 10u64).max(1)),
            probe_timeout: Duration::from_millis(
                env_num("BENCH_LAG_PROBE_TIMEOUT_MS", 2000u64).max(1),
            ),
            force_sync: env_num("BENCH_ZK_FORCE_SYNC", 0u8) != 0,
            timeout: Duration::from_secs(env_num("BENCH_TIMEOUT_SECS", 300u64)),
        }
    }

    fn wants(&self, part: &str) -> bool {
        self.parts.iter().any(|p| p == part)
    }
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// `/proc/loadavg`'s first three fields (other work on the machine skews every number).
fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "n/a".into())
}

#[derive(Default)]
struct Outcome {
    resync: Vec<ResyncRow>,
    lag: Vec<LagRow>,
    notes: Vec<String>,
    problems: Vec<String>,
}

// ---------------------------------------------------------------------------------------
// statemirror and its /status
// ---------------------------------------------------------------------------------------

/// `[resync]` as this benchmark wants it.
fn resync_settings(cfg: &mut toml::Table, s: &Settings) {
    let r = section(cfg, "resync");
    r.insert("auto".into(), true.into());
    r.insert("on_start".into(), true.into());
    r.insert(
        "max_keys_per_second".into(),
        toml::Value::Integer(s.resync_rate as i64),
    );
    if let Some(b) = s.resync_batch {
        r.insert("batch_size".into(), toml::Value::Integer(b as i64));
    }
}

/// A running statemirror: its ports, log and when it was spawned.
struct Proxy {
    port: u16,
    admin: u16,
    log: PathBuf,
    spawned: Instant,
    guard: Guard,
}

/// Starts statemirror with `cfg` (from [`redis_config`] / [`zookeeper_config`] called with
/// `port` and `admin`) in `root/name`.
fn start_proxy(root: &Path, name: &str, bin: &Path, cfg: &toml::Table, ports: (u16, u16)) -> Proxy {
    let dir = root.join(name);
    let (guard, spawned) = start_statemirror_timed(&dir, name, bin, cfg, ports.1);
    Proxy {
        port: ports.0,
        admin: ports.1,
        log: dir.join("statemirror.log"),
        spawned,
        guard,
    }
}

/// `.<protocol>.resync.last` of `/status`.
#[derive(Debug, Clone, Default)]
struct LastRun {
    outcome: String,
    duration_seconds: f64,
    scanned: u64,
    copied: u64,
    deleted: u64,
    error: Option<String>,
}

/// What `/status` says about a protocol's mirror and resync.
#[derive(Debug, Clone, Default)]
struct SyncState {
    in_sync: bool,
    running: bool,
    resyncs_total: u64,
    last: Option<LastRun>,
}

fn sync_state(admin: u16, protocol: &str) -> Result<SyncState, String> {
    let (code, body) = http_get(admin, "/status")?;
    if code != 200 {
        return Err(format!("GET /status: {code} {body}"));
    }
    let v: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("/status: {e}: {body}"))?;
    let p = &v[protocol];
    let (m, r) = (&p["mirror"], &p["resync"]);
    if !m.is_object() || !r.is_object() {
        return Err(format!(
            "/status lacks {protocol}.mirror or .resync: {body}"
        ));
    }
    let l = &r["last"];
    Ok(SyncState {
        in_sync: m["in_sync"].as_bool().unwrap_or(false),
        running: r["running"].as_bool().unwrap_or(false),
        resyncs_total: r["resyncs_total"].as_u64().unwrap_or(0),
        last: l.is_object().then(|| LastRun {
            outcome: l["outcome"].as_str().unwrap_or("").to_string(),
            duration_seconds: l["duration_seconds"].as_f64().unwrap_or(0.0),
            scanned: l["scanned"].as_u64().unwrap_or(0),
            copied: l["copied"].as_u64().unwrap_or(0),
            deleted: l["deleted"].as_u64().unwrap_or(0),
            error: l["error"].as_str().map(String::from),
        }),
    })
}

/// Polls `/status` every 10 ms until the follower is in sync and no resync runs; returns that
/// state and the time since the process was spawned.
async fn wait_in_sync(
    p: &mut Proxy,
    protocol: &str,
    timeout: Duration,
) -> Result<(SyncState, Duration), String> {
    loop {
        if let Some(status) = p.guard.exited() {
            return Err(format!(
                "statemirror exited ({status}){}",
                log_tail(Some(&p.log))
            ));
        }
        let seen = match sync_state(p.admin, protocol) {
            Ok(st) if st.in_sync && !st.running && st.last.is_some() => {
                return Ok((st, p.spawned.elapsed()))
            }
            Ok(st) => format!("{st:?}"),
            Err(e) => e,
        };
        if p.spawned.elapsed() > timeout {
            return Err(format!(
                "{protocol}: follower not in sync {timeout:?} after start: {seen}{}",
                log_tail(Some(&p.log))
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (at most 30 s) until the mirror queue is empty; returns whether it is.
async fn drained(admin: u16, protocol: &str) -> bool {
    let started = Instant::now();
    loop {
        if mirror_status(admin, protocol).queue_depth == 0 {
            return true;
        }
        if started.elapsed() > Duration::from_secs(30) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Resync runs
// ---------------------------------------------------------------------------------------

struct ResyncRow {
    protocol: &'static str,
    run: usize,
    /// Keys / znodes on the leader (what the follower must end up with).
    expected: u64,
    last: LastRun,
    resyncs_total: u64,
    wall: Duration,
    follower_count: u64,
}

impl ResyncRow {
    /// `copied / duration_seconds` of the last run.
    fn rate(&self) -> f64 {
        if self.last.duration_seconds > 0.0 {
            self.last.copied as f64 / self.last.duration_seconds
        } else {
            0.0
        }
    }

    /// Leader keys / wall time from the process start until in sync.
    fn wall_rate(&self) -> f64 {
        self.expected as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    fn ok(&self) -> bool {
        self.last.outcome == "completed" && self.follower_count == self.expected
    }

    fn describe(&self) -> String {
        format!(
            "outcome {} (resyncs {}), copied {}, scanned {}, deleted {}, duration {:.3} s = {:.0}/s; \
             wall {:.3} s from process start = {:.0}/s; follower has {} of {}{}",
            self.last.outcome,
            self.resyncs_total,
            self.last.copied,
            self.last.scanned,
            self.last.deleted,
            self.last.duration_seconds,
            self.rate(),
            self.wall.as_secs_f64(),
            self.wall_rate(),
            self.follower_count,
            self.expected,
            self.last
                .error
                .as_ref()
                .map_or(String::new(), |e| format!("; error: {e}"))
        )
    }
}

fn redis_key(i: u64) -> String {
    format!("resync:{i:08}")
}

/// Writes `keys` string keys to the redis-server on `port`, `POPULATE_CHUNK` pipelined `SET`s
/// at a time.
fn populate_redis(port: u16, keys: u64, value_bytes: usize) {
    let mut c = Resp::connect(port).expect("connect to the Redis leader");
    let mut i = 0;
    while i < keys {
        let end = (i + POPULATE_CHUNK).min(keys);
        for k in i..end {
            let value = format!("{k:0>value_bytes$}");
            c.queue(&[b"SET", redis_key(k).as_bytes(), value.as_bytes()]);
        }
        let replies = c.flush().expect("pipelined SET");
        if let Some(bad) = replies.iter().find(|r| !matches!(r, Reply::Simple(_))) {
            panic!("populating the Redis leader: {bad:?}");
        }
        i = end;
    }
}

fn redis_resync(
    s: &Settings,
    root: &Path,
    bin: &Path,
    leader: &RedisServer,
    follower: &RedisServer,
    out: &mut Outcome,
) {
    command(leader.port, &["FLUSHALL"]).expect("FLUSHALL leader");
    let started = Instant::now();
    populate_redis(leader.port, s.keys, s.value_bytes);
    let leader_keys = dbsize(leader.port);
    println!(
        "Redis leader: {leader_keys} keys written in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(leader_keys, s.keys, "Redis leader DBSIZE after populating");
    let rt = current_thread();
    for run in 1..=s.repeat {
        command(follower.port, &["FLUSHALL"]).expect("FLUSHALL follower");
        assert_eq!(dbsize(follower.port), 0, "follower not empty");
        let ports = (free_port(), free_port());
        let mut cfg = redis_config(ports.0, ports.1, leader.port, Some(follower.port));
        resync_settings(&mut cfg, s);
        let mut p = start_proxy(root, &format!("redis-resync-{run}"), bin, &cfg, ports);
        match rt.block_on(wait_in_sync(&mut p, "redis", s.timeout)) {
            Ok((st, wall)) => {
                let row = ResyncRow {
                    protocol: "redis",
                    run,
                    expected: leader_keys,
                    last: st.last.unwrap_or_default(),
                    resyncs_total: st.resyncs_total,
                    wall,
                    follower_count: dbsize(follower.port),
                };
                println!("Redis resync run {run}/{}: {}", s.repeat, row.describe());
                if !row.ok() {
                    out.problems
                        .push(format!("Redis resync run {run}: {}", row.describe()));
                }
                out.resync.push(row);
            }
            Err(e) => out.problems.push(format!("Redis resync run {run}: {e}")),
        }
    }
}

fn znode(i: usize) -> String {
    format!("{BENCH_PARENT}/{i:08}")
}

async fn create_if_missing(c: &zkc::Client, path: &str) {
    match c.create(path, b"", &zk_persistent()).await {
        Ok(_) | Err(zkc::Error::NodeExists) => {}
        Err(e) => panic!("create {path}: {e}"),
    }
}

/// Creates `/bench/n/<i>` for `i < n` with `bytes` bytes of data: `multi`s of `ZK_MULTI`
/// creates, `ZK_POPULATE_IN_FLIGHT` at a time.
async fn populate_zk(c: &zkc::Client, n: usize, bytes: usize) {
    create_if_missing(c, BENCH_ROOT).await;
    create_if_missing(c, BENCH_PARENT).await;
    let data = Arc::new(vec![b'z'; bytes]);
    let mut tasks = tokio::task::JoinSet::new();
    let check = |r: Result<Result<(), String>, tokio::task::JoinError>| match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("populating the ZooKeeper leader: {e}"),
        Err(e) => panic!("populating the ZooKeeper leader: {e}"),
    };
    for start in (0..n).step_by(ZK_MULTI) {
        while tasks.len() >= ZK_POPULATE_IN_FLIGHT {
            check(tasks.join_next().await.expect("a task"));
        }
        let c = c.clone();
        let data = Arc::clone(&data);
        tasks.spawn(async move {
            let opts = zk_persistent();
            let mut w = c.new_multi_writer();
            for i in start..(start + ZK_MULTI).min(n) {
                w.add_create(&znode(i), &data, &opts)
                    .map_err(|e| e.to_string())?;
            }
            w.commit()
                .await
                .map(|_| ())
                .map_err(|e| format!("multi create from {start}: {e}"))
        });
    }
    while let Some(r) = tasks.join_next().await {
        check(r);
    }
}

/// Deletes `root`, its children and their children (`multi`s of `ZK_MULTI` deletes): the
/// shape of the trees this benchmark makes.
async fn delete_tree(c: &zkc::Client, root: &str) {
    let list = |path: String| async move {
        match c.list_children(&path).await {
            Ok(ch) => ch,
            Err(zkc::Error::NoNode) => Vec::new(),
            Err(e) => panic!("list_children {path}: {e}"),
        }
    };
    for child in list(root.to_string()).await {
        let child = format!("{root}/{child}");
        let names = list(child.clone()).await;
        for chunk in names.chunks(ZK_MULTI) {
            let mut w = c.new_multi_writer();
            for n in chunk {
                w.add_delete(&format!("{child}/{n}"), None)
                    .expect("multi delete");
            }
            if let Err(e) = w.commit().await {
                panic!("delete children of {child}: {e}");
            }
        }
        match c.delete(&child, None).await {
            Ok(()) | Err(zkc::Error::NoNode) => {}
            Err(e) => panic!("delete {child}: {e}"),
        }
    }
    match c.delete(root, None).await {
        Ok(()) | Err(zkc::Error::NoNode) => {}
        Err(e) => panic!("delete {root}: {e}"),
    }
}

async fn zk_resync(
    s: &Settings,
    root: &Path,
    bin: &Path,
    leader: &ZkServer,
    follower: &ZkServer,
    out: &mut Outcome,
) {
    let lc = zk_connect(leader.port).await;
    let fc = zk_connect(follower.port).await;
    delete_tree(&lc, BENCH_ROOT).await;
    let started = Instant::now();
    populate_zk(&lc, s.znodes, s.znode_bytes).await;
    let leader_nodes = zk_children(&lc, BENCH_PARENT).await as u64;
    println!(
        "ZooKeeper leader: {leader_nodes} znodes under {BENCH_PARENT} written in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        leader_nodes, s.znodes as u64,
        "ZooKeeper leader children after populating"
    );
    for run in 1..=s.repeat {
        delete_tree(&fc, BENCH_ROOT).await;
        assert!(
            matches!(fc.check_stat(BENCH_ROOT).await, Ok(None)),
            "{BENCH_ROOT} still on the follower"
        );
        let ports = (free_port(), free_port());
        let mut cfg = zookeeper_config(ports.0, ports.1, leader.port, Some(follower.port));
        resync_settings(&mut cfg, s);
        // Starting blocks (check-config, /readyz): off the runtime, so the sessions keep pinging.
        let (root2, bin2, name) = (
            root.to_path_buf(),
            bin.to_path_buf(),
            format!("zk-resync-{run}"),
        );
        let mut p =
            tokio::task::spawn_blocking(move || start_proxy(&root2, &name, &bin2, &cfg, ports))
                .await
                .expect("start statemirror");
        match wait_in_sync(&mut p, "zookeeper", s.timeout).await {
            Ok((st, wall)) => {
                let row = ResyncRow {
                    protocol: "zookeeper",
                    run,
                    expected: leader_nodes,
                    last: st.last.unwrap_or_default(),
                    resyncs_total: st.resyncs_total,
                    wall,
                    follower_count: zk_children(&fc, BENCH_PARENT).await as u64,
                };
                println!(
                    "ZooKeeper resync run {run}/{}: {}",
                    s.repeat,
                    row.describe()
                );
                if row.last.copied == 0 && row.follower_count == 0 {
                    let note = format!(
                        "ZooKeeper resync run {run}: the walker copied nothing (copied = 0, the \
                         follower has no {BENCH_PARENT}) — src/zookeeper/resync.rs looks like a \
                         stub; no rate reported"
                    );
                    println!("    {note}");
                    out.notes.push(note);
                }
                if !row.ok() {
                    out.problems
                        .push(format!("ZooKeeper resync run {run}: {}", row.describe()));
                }
                out.resync.push(row);
            }
            Err(e) => out
                .problems
                .push(format!("ZooKeeper resync run {run}: {e}")),
        }
        drop(p);
    }
}

// ---------------------------------------------------------------------------------------
// Lag runs
// ---------------------------------------------------------------------------------------

/// What the background writers did.
#[derive(Default)]
struct LoadStats {
    acked: u64,
    errors: u64,
    /// Writes dropped from a backlog over `MAX_BACKLOG`.
    skipped: u64,
    elapsed: Duration,
    first_error: Option<String>,
}

impl LoadStats {
    fn add(&mut self, o: LoadStats) {
        self.acked += o.acked;
        self.errors += o.errors;
        self.skipped += o.skipped;
        self.elapsed = self.elapsed.max(o.elapsed);
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }

    fn rate(&self) -> f64 {
        self.acked as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// What the probe saw.
#[derive(Default)]
struct ProbeStats {
    /// Lag per probe that became visible, ms.
    lags_ms: Vec<f64>,
    /// Write latency (through the proxy) per probe, ms.
    write_ms: Vec<f64>,
    timeouts: u64,
    errors: u64,
    first_error: Option<String>,
    /// Follower polls, all probes together.
    polls: u64,
    /// Markers written (acknowledged).
    written: u64,
    /// Per visible probe: (lag ms, write ms, polls, slowest poll ms), for the slowest list.
    detail: Vec<(f64, f64, u64, f64)>,
    /// Round trip of every follower poll, ms.
    poll_ms: Vec<f64>,
}

impl ProbeStats {
    /// The `n` probes with the largest lag: `lag (write, polls x slowest poll)`.
    fn slowest(&self, n: usize) -> String {
        let mut d = self.detail.clone();
        d.sort_by(|a, b| b.0.total_cmp(&a.0));
        d.iter()
            .take(n)
            .map(|(lag, write, polls, poll)| {
                format!("{lag:.1} ms (write {write:.1} ms, {polls} polls, slowest {poll:.1} ms)")
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn error(&mut self, e: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e);
        }
    }
}

struct LagRow {
    protocol: &'static str,
    asked_rate: f64,
    load: LoadStats,
    probe: ProbeStats,
    /// `statemirror_mirror_lag_seconds` samples.
    gauge: Vec<f64>,
    drained: bool,
    in_sync: bool,
    dropped: u64,
    markers_leader: u64,
    markers_follower: u64,
}

impl LagRow {
    fn sorted_lags(&self) -> Vec<f64> {
        let mut v = self.probe.lags_ms.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    }

    fn p(&self, q: f64) -> f64 {
        percentile(&self.sorted_lags(), q)
    }

    fn max(&self) -> f64 {
        self.probe.lags_ms.iter().copied().fold(0.0, f64::max)
    }

    fn gauge_max_ms(&self) -> f64 {
        self.gauge.iter().copied().fold(0.0, f64::max) * 1000.0
    }

    fn describe(&self) -> String {
        let mut w = self.probe.write_ms.clone();
        w.sort_by(|a, b| a.total_cmp(b));
        let mut polls = self.probe.poll_ms.clone();
        polls.sort_by(|a, b| a.total_cmp(b));
        format!(
            "{} probes: lag p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} timed out, {} errors{}; \
             {:.1} follower polls per probe, poll round trip p50 {:.2} p99 {:.2} max {:.2} ms; \
             probe write p50 {:.2} p99 {:.2} max {:.2} ms); background {:.0}/s of \
             {:.0}/s asked ({} acked, {} errors{}, {} dropped from backlog); {} max {:.1} ms over \
             {} samples; queue drained {}, in sync {}, +{} dropped; markers leader {} follower {}; \
             slowest probes: {}",
            self.probe.lags_ms.len(),
            self.p(0.50),
            self.p(0.99),
            self.max(),
            self.probe.timeouts,
            self.probe.errors,
            self.probe
                .first_error
                .as_ref()
                .map_or(String::new(), |e| format!(", first: {e}")),
            self.probe.polls as f64 / self.probe.written.max(1) as f64,
            percentile(&polls, 0.5),
            percentile(&polls, 0.99),
            polls.last().copied().unwrap_or(0.0),
            percentile(&w, 0.5),
            percentile(&w, 0.99),
            w.last().copied().unwrap_or(0.0),
            self.load.rate(),
            self.asked_rate,
            self.load.acked,
            self.load.errors,
            self.load
                .first_error
                .as_ref()
                .map_or(String::new(), |e| format!(", first: {e}")),
            self.load.skipped,
            LAG_GAUGE,
            self.gauge_max_ms(),
            self.gauge.len(),
            self.drained,
            self.in_sync,
            self.dropped,
            self.markers_leader,
            self.markers_follower,
            self.probe.slowest(5),
        )
    }

    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.probe.lags_ms.is_empty() {
            p.push("no probe became visible on the follower".into());
        }
        if self.probe.timeouts > 0 || self.probe.errors > 0 || self.load.errors > 0 {
            p.push("probe timeouts or write errors".into());
        }
        if !self.drained || !self.in_sync || self.dropped > 0 {
            p.push("mirror not drained / out of sync / writes dropped".into());
        }
        if self.markers_leader != self.markers_follower || self.markers_leader != self.probe.written
        {
            p.push("probe markers differ between leader and follower".into());
        }
        p
    }
}

/// Samples the lag gauge from `/metrics` every 100 ms until `stop`.
fn sample_lag_gauge(
    admin: u16,
    protocol: &'static str,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<Vec<f64>> {
    thread::spawn(move || {
        let label = format!("protocol=\"{protocol}\"");
        let mut v = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            if let Ok((200, body)) = http_get(admin, "/metrics") {
                if let Some(x) = metric_value(&body, LAG_GAUGE, &label) {
                    v.push(x);
                }
            }
            thread::sleep(Duration::from_millis(100));
        }
        v
    })
}

/// xorshift64: cheap pseudo-random keys, no dependency.
fn next_rand(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// How many writes are due now for a writer at `rate`/s started at `started` that has issued
/// `issued`; drops a backlog over `MAX_BACKLOG` (counted in `skipped`).
fn due(started: Instant, rate: f64, issued: &mut u64, skipped: &mut u64) -> u64 {
    let due = (started.elapsed().as_secs_f64() * rate) as u64;
    let max_backlog = ((MAX_BACKLOG.as_secs_f64() * rate) as u64).max(1);
    if due > *issued + max_backlog {
        *skipped += due - *issued - max_backlog;
        *issued = due - max_backlog;
    }
    due.saturating_sub(*issued)
}

/// One Redis background connection: `SET load:<random>` at `rate`/s, small pipelines when
/// behind, until `stop`.
fn redis_load_worker(port: u16, worker: usize, rate: f64, stop: Arc<AtomicBool>) -> LoadStats {
    let mut c = Resp::connect(port).expect("load connection");
    let value = vec![b'x'; LOAD_VALUE_BYTES];
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (worker as u64 + 1);
    let mut st = LoadStats::default();
    let mut issued = 0u64;
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) && rate > 0.0 {
        let n = due(started, rate, &mut issued, &mut st.skipped).min(64);
        if n == 0 {
            let next = Duration::from_secs_f64((issued + 1) as f64 / rate);
            if let Some(wait) = next.checked_sub(started.elapsed()) {
                thread::sleep(wait);
            }
            continue;
        }
        for _ in 0..n {
            let key = format!("load:{}", next_rand(&mut rng) % REDIS_LOAD_KEYSPACE);
            c.queue(&[b"SET", key.as_bytes(), &value]);
        }
        issued += n;
        match c.flush() {
            Ok(replies) => {
                for r in replies {
                    match r {
                        Reply::Simple(_) => st.acked += 1,
                        other => {
                            st.errors += 1;
                            st.first_error.get_or_insert(format!("{other:?}"));
                        }
                    }
                }
            }
            Err(e) => {
                st.errors += n;
                st.first_error.get_or_insert(e);
                break;
            }
        }
    }
    st.elapsed = started.elapsed();
    st
}

/// Every `probe_interval`: `SET lagprobe:<i>` through the proxy, then `EXISTS` on the follower
/// until it is there.
fn redis_probe(proxy: u16, follower: u16, s: &Settings) -> ProbeStats {
    let mut p = Resp::connect(proxy).expect("probe connection to the proxy");
    let mut f = Resp::connect(follower).expect("probe connection to the follower");
    let mut st = ProbeStats::default();
    let started = Instant::now();
    let mut next = started;
    let mut i = 0u64;
    while started.elapsed() < s.lag_duration {
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        next = (next + s.probe_interval).max(Instant::now());
        let key = format!("lagprobe:{i:06}");
        i += 1;
        let sent = Instant::now();
        match p.call(&[b"SET", key.as_bytes(), b"1"]) {
            Ok(Reply::Simple(_)) => {}
            other => {
                st.error(format!("SET {key}: {other:?}"));
                continue;
            }
        }
        let ack = Instant::now();
        st.written += 1;
        st.write_ms.push((ack - sent).as_secs_f64() * 1e3);
        let (mut polls, mut slowest) = (0u64, 0f64);
        loop {
            let before = Instant::now();
            let r = f.call(&[b"EXISTS", key.as_bytes()]);
            let now = Instant::now();
            let rtt = (now - before).as_secs_f64() * 1e3;
            st.poll_ms.push(rtt);
            (polls, slowest) = (polls + 1, slowest.max(rtt));
            st.polls += 1;
            match r {
                Ok(Reply::Int(1)) => {
                    let lag = (now - ack).as_secs_f64() * 1e3;
                    st.lags_ms.push(lag);
                    st.detail
                        .push((lag, (ack - sent).as_secs_f64() * 1e3, polls, slowest));
                    break;
                }
                Ok(Reply::Int(0)) if now - ack <= s.probe_timeout => {}
                Ok(Reply::Int(0)) => {
                    st.timeouts += 1;
                    break;
                }
                other => {
                    st.error(format!("EXISTS {key} on the follower: {other:?}"));
                    break;
                }
            }
        }
    }
    st
}

/// Keys matching `pattern` (`SCAN`), for counting markers.
fn count_keys(port: u16, pattern: &str) -> u64 {
    let mut c = Resp::connect(port).expect("connect");
    let mut cursor = b"0".to_vec();
    let mut n = 0;
    loop {
        match c.call(&[
            b"SCAN",
            &cursor,
            b"MATCH",
            pattern.as_bytes(),
            b"COUNT",
            b"1000",
        ]) {
            Ok(Reply::Array(Some(v))) if v.len() == 2 => {
                if let Reply::Array(Some(keys)) = &v[1] {
                    n += keys.len() as u64;
                }
                match &v[0] {
                    Reply::Bulk(Some(c)) if c.as_slice() == b"0" => return n,
                    Reply::Bulk(Some(c)) => cursor = c.clone(),
                    other => panic!("SCAN cursor: {other:?}"),
                }
            }
            other => panic!("SCAN: {other:?}"),
        }
    }
}

fn redis_lag(
    s: &Settings,
    root: &Path,
    bin: &Path,
    leader: &RedisServer,
    follower: &RedisServer,
    out: &mut Outcome,
) {
    for r in [leader, follower] {
        command(r.port, &["FLUSHALL"]).expect("FLUSHALL");
    }
    let ports = (free_port(), free_port());
    let mut cfg = redis_config(ports.0, ports.1, leader.port, Some(follower.port));
    resync_settings(&mut cfg, s);
    let mut p = start_proxy(root, "redis-lag", bin, &cfg, ports);
    let rt = current_thread();
    if let Err(e) = rt.block_on(wait_in_sync(&mut p, "redis", s.timeout)) {
        out.problems.push(format!("Redis lag: {e}"));
        return;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..s.lag_conns)
        .map(|w| {
            let stop = Arc::clone(&stop);
            let (port, rate) = (p.port, s.lag_redis_rate / s.lag_conns as f64);
            thread::spawn(move || redis_load_worker(port, w, rate, stop))
        })
        .collect();
    thread::sleep(s.lag_warmup);
    let sampler = sample_lag_gauge(p.admin, "redis", Arc::clone(&stop));
    println!(
        "Redis lag: {} background SET/s over {} connection(s), probing for {:.0} s ...",
        s.lag_redis_rate,
        s.lag_conns,
        s.lag_duration.as_secs_f64()
    );
    let probe = redis_probe(p.port, follower.port, s);
    stop.store(true, Ordering::Relaxed);
    let mut load = LoadStats::default();
    for w in workers {
        load.add(w.join().expect("load worker"));
    }
    let gauge = sampler.join().expect("gauge sampler");
    let drained = rt.block_on(drained(p.admin, "redis"));
    let m = mirror_status(p.admin, "redis");
    let row = LagRow {
        protocol: "redis",
        asked_rate: s.lag_redis_rate,
        load,
        probe,
        gauge,
        drained,
        in_sync: m.in_sync,
        dropped: m.dropped,
        markers_leader: count_keys(leader.port, "lagprobe:*"),
        markers_follower: count_keys(follower.port, "lagprobe:*"),
    };
    println!("Redis lag: {}\n", row.describe());
    for e in row.problems() {
        out.problems
            .push(format!("Redis lag: {e}: {}", row.describe()));
    }
    out.lag.push(row);
}

/// The ZooKeeper background load: `sessions` sessions through the proxy, `setData` on
/// `/lag/load/<random>` at `rate`/s in all, until `stop`.
async fn zk_load(port: u16, sessions: usize, rate: f64, stop: Arc<AtomicBool>) -> LoadStats {
    let mut clients = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        clients.push(zk_connect(port).await);
    }
    let per = rate / sessions as f64;
    let data = Arc::new(vec![b'l'; LOAD_VALUE_BYTES]);
    let mut workers = tokio::task::JoinSet::new();
    for (w, c) in clients.into_iter().enumerate() {
        let (stop, data) = (Arc::clone(&stop), Arc::clone(&data));
        workers.spawn(async move {
            let mut st = LoadStats::default();
            let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (w as u64 + 1);
            let mut in_flight = tokio::task::JoinSet::new();
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut issued = 0u64;
            let started = Instant::now();
            let reap =
                |st: &mut LoadStats, r: Result<Result<(), String>, tokio::task::JoinError>| match r
                {
                    Ok(Ok(())) => st.acked += 1,
                    Ok(Err(e)) => {
                        st.errors += 1;
                        st.first_error.get_or_insert(e);
                    }
                    Err(e) => {
                        st.errors += 1;
                        st.first_error.get_or_insert(e.to_string());
                    }
                };
            while !stop.load(Ordering::Relaxed) && per > 0.0 {
                tick.tick().await;
                while let Some(r) = in_flight.try_join_next() {
                    reap(&mut st, r);
                }
                let mut n = due(started, per, &mut issued, &mut st.skipped);
                while n > 0 && in_flight.len() < ZK_LOAD_IN_FLIGHT {
                    let path = format!("{LAG_LOAD}/{}", next_rand(&mut rng) % LAG_LOAD_NODES);
                    let (c, data) = (c.clone(), Arc::clone(&data));
                    in_flight.spawn(async move {
                        c.set_data(&path, &data, None)
                            .await
                            .map(|_| ())
                            .map_err(|e| format!("setData {path}: {e}"))
                    });
                    issued += 1;
                    n -= 1;
                }
            }
            while let Some(r) = in_flight.join_next().await {
                reap(&mut st, r);
            }
            st.elapsed = started.elapsed();
            st
        });
    }
    let mut load = LoadStats::default();
    while let Some(r) = workers.join_next().await {
        load.add(r.expect("load session"));
    }
    load
}

/// Every `probe_interval`: `create /lag/probe/p<i>` through the proxy, then `exists` on the
/// follower until it is there.
async fn zk_probe(proxy: u16, follower: u16, s: &Settings) -> ProbeStats {
    let p = zk_connect(proxy).await;
    let f = zk_connect(follower).await;
    let opts = zk_persistent();
    let mut st = ProbeStats::default();
    let started = Instant::now();
    let mut next = started;
    let mut i = 0u64;
    while started.elapsed() < s.lag_duration {
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        next = (next + s.probe_interval).max(Instant::now());
        let path = format!("{LAG_PROBE}/p{i:06}");
        i += 1;
        let sent = Instant::now();
        if let Err(e) = p.create(&path, b"1", &opts).await {
            st.error(format!("create {path}: {e}"));
            continue;
        }
        let ack = Instant::now();
        st.written += 1;
        st.write_ms.push((ack - sent).as_secs_f64() * 1e3);
        let (mut polls, mut slowest) = (0u64, 0f64);
        loop {
            let before = Instant::now();
            let r = f.check_stat(&path).await;
            let now = Instant::now();
            let rtt = (now - before).as_secs_f64() * 1e3;
            st.poll_ms.push(rtt);
            (polls, slowest) = (polls + 1, slowest.max(rtt));
            st.polls += 1;
            match r {
                Ok(Some(_)) => {
                    let lag = (now - ack).as_secs_f64() * 1e3;
                    st.lags_ms.push(lag);
                    st.detail
                        .push((lag, (ack - sent).as_secs_f64() * 1e3, polls, slowest));
                    break;
                }
                Ok(None) if now - ack <= s.probe_timeout => {}
                Ok(None) => {
                    st.timeouts += 1;
                    break;
                }
                Err(e) => {
                    st.error(format!("exists {path} on the follower: {e}"));
                    break;
                }
            }
        }
    }
    st
}

fn zk_lag(
    s: &Settings,
    root: &Path,
    bin: &Path,
    leader: &ZkServer,
    follower: &ZkServer,
    out: &mut Outcome,
) {
    let rt = current_thread();
    rt.block_on(async {
        for port in [leader.port, follower.port] {
            delete_tree(&zk_connect(port).await, LAG_ROOT).await;
        }
    });
    let ports = (free_port(), free_port());
    let mut cfg = zookeeper_config(ports.0, ports.1, leader.port, Some(follower.port));
    resync_settings(&mut cfg, s);
    let mut p = start_proxy(root, "zk-lag", bin, &cfg, ports);
    if let Err(e) = rt.block_on(wait_in_sync(&mut p, "zookeeper", s.timeout)) {
        out.problems.push(format!("ZooKeeper lag: {e}"));
        return;
    }
    // The load's nodes, through the proxy (so mirrored), then wait until the follower has them.
    rt.block_on(async {
        let c = zk_connect(p.port).await;
        for path in [LAG_ROOT, LAG_LOAD, LAG_PROBE] {
            create_if_missing(&c, path).await;
        }
        let mut w = c.new_multi_writer();
        for i in 0..LAG_LOAD_NODES {
            w.add_create(&format!("{LAG_LOAD}/{i}"), b"", &zk_persistent())
                .expect("multi create");
        }
        w.commit().await.expect("create the load nodes");
        let f = zk_connect(follower.port).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while zk_children(&f, LAG_LOAD).await as u64 != LAG_LOAD_NODES
            || !matches!(f.check_stat(LAG_PROBE).await, Ok(Some(_)))
        {
            assert!(
                Instant::now() < deadline,
                "the load nodes did not reach the follower within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = Arc::clone(&stop);
        let (port, sessions, rate) = (p.port, s.lag_conns, s.lag_zk_rate);
        thread::spawn(move || current_thread().block_on(zk_load(port, sessions, rate, stop)))
    };
    thread::sleep(s.lag_warmup);
    let sampler = sample_lag_gauge(p.admin, "zookeeper", Arc::clone(&stop));
    println!(
        "ZooKeeper lag: {} background setData/s over {} session(s), probing for {:.0} s ...",
        s.lag_zk_rate,
        s.lag_conns,
        s.lag_duration.as_secs_f64()
    );
    let probe = rt.block_on(zk_probe(p.port, follower.port, s));
    stop.store(true, Ordering::Relaxed);
    let load = load.join().expect("load thread");
    let gauge = sampler.join().expect("gauge sampler");
    let drained = rt.block_on(drained(p.admin, "zookeeper"));
    let m = mirror_status(p.admin, "zookeeper");
    let (markers_leader, markers_follower) = rt.block_on(async {
        let l = zk_connect(leader.port).await;
        let f = zk_connect(follower.port).await;
        (
            zk_children(&l, LAG_PROBE).await as u64,
            zk_children(&f, LAG_PROBE).await as u64,
        )
    });
    let row = LagRow {
        protocol: "zookeeper",
        asked_rate: s.lag_zk_rate,
        load,
        probe,
        gauge,
        drained,
        in_sync: m.in_sync,
        dropped: m.dropped,
        markers_leader,
        markers_follower,
    };
    println!("ZooKeeper lag: {}\n", row.describe());
    for e in row.problems() {
        out.problems
            .push(format!("ZooKeeper lag: {e}: {}", row.describe()));
    }
    out.lag.push(row);
}

// ---------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------

fn met(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "**NO**"
    }
}

fn report(s: &Settings, out: &Outcome) {
    println!("\n## Results\n");
    println!("| measurement | result | target | met |");
    println!("|---|---|---|---|");
    for (protocol, label, unit, target) in [
        ("redis", "Redis", "keys", REDIS_RESYNC_TARGET),
        ("zookeeper", "ZooKeeper", "znodes", ZK_RESYNC_TARGET),
    ] {
        let rows: Vec<&ResyncRow> = out
            .resync
            .iter()
            .filter(|r| r.protocol == protocol)
            .collect();
        if rows.is_empty() {
            continue;
        }
        let expected = rows[0].expected;
        let good: Vec<&&ResyncRow> = rows
            .iter()
            .filter(|r| r.last.outcome == "completed" && r.last.copied > 0)
            .collect();
        if good.is_empty() {
            println!(
                "| {label} resync, {expected} {unit} | n/a: no run copied anything (copied = 0; \
                 follower has {} {unit}) | ≥ {target:.0} {unit}/s | **NO** |",
                rows.iter().map(|r| r.follower_count).max().unwrap_or(0)
            );
            continue;
        }
        let rate = median(&good.iter().map(|r| r.rate()).collect::<Vec<_>>());
        let duration = median(
            &good
                .iter()
                .map(|r| r.last.duration_seconds)
                .collect::<Vec<_>>(),
        );
        let wall = median(
            &good
                .iter()
                .map(|r| r.wall.as_secs_f64())
                .collect::<Vec<_>>(),
        );
        let wall_rate = median(&good.iter().map(|r| r.wall_rate()).collect::<Vec<_>>());
        println!(
            "| {label} resync, {expected} {unit}: copied / duration_seconds (median of {}) | \
             {rate:.0} {unit}/s ({duration:.3} s) | ≥ {target:.0} {unit}/s | {} |",
            good.len(),
            met(rate >= target)
        );
        println!(
            "| {label} resync: wall time, process start → in sync (median) | {wall:.3} s \
             ({wall_rate:.0} {unit}/s) | | |"
        );
    }
    for r in &out.lag {
        let label = if r.protocol == "redis" {
            "Redis"
        } else {
            "ZooKeeper"
        };
        let p99 = r.p(0.99);
        println!(
            "| {label} mirror lag p50 / p99 / max ({} probes, {:.0} s) | {:.2} / {:.2} / {:.2} ms \
             | p99 ≤ {LAG_P99_TARGET_MS:.0} ms | {} |",
            r.probe.lags_ms.len(),
            s.lag_duration.as_secs_f64(),
            r.p(0.50),
            p99,
            r.max(),
            met(!r.probe.lags_ms.is_empty() && r.probe.timeouts == 0 && p99 <= LAG_P99_TARGET_MS)
        );
        println!(
            "| {label} background writes achieved / asked | {:.0} / {:.0} per s | | |",
            r.load.rate(),
            r.asked_rate
        );
        println!(
            "| {label} `{LAG_GAUGE}` max ({} samples) | {:.1} ms | | |",
            r.gauge.len(),
            r.gauge_max_ms()
        );
    }

    if !out.resync.is_empty() {
        println!("\n## Resync runs\n");
        println!(
            "| protocol | run | outcome | resyncs | copied | scanned | deleted | duration_seconds | copied/s | wall s | wall /s | follower has |"
        );
        println!("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &out.resync {
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {:.3} | {:.0} | {:.3} | {:.0} | {} of {} |",
                r.protocol,
                r.run,
                r.last.outcome,
                r.resyncs_total,
                r.last.copied,
                r.last.scanned,
                r.last.deleted,
                r.last.duration_seconds,
                r.rate(),
                r.wall.as_secs_f64(),
                r.wall_rate(),
                r.follower_count,
                r.expected
            );
        }
    }
    if !out.lag.is_empty() {
        println!("\n## Lag runs\n");
        println!(
            "| protocol | probes | p50 ms | p90 ms | p99 ms | max ms | timeouts | polls/probe | poll p99 ms | probe write p50 / p99 ms | background /s (asked) | gauge max ms | drained | in sync | markers leader / follower |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|---|---|");
        for r in &out.lag {
            let mut w = r.probe.write_ms.clone();
            w.sort_by(|a, b| a.total_cmp(b));
            let mut polls = r.probe.poll_ms.clone();
            polls.sort_by(|a, b| a.total_cmp(b));
            println!(
                "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.1} | {:.2} | {:.2} / {:.2} | {:.0} ({:.0}) | {:.1} | {} | {} | {} / {} |",
                r.protocol,
                r.probe.lags_ms.len(),
                r.p(0.50),
                r.p(0.90),
                r.p(0.99),
                r.max(),
                r.probe.timeouts,
                r.probe.polls as f64 / r.probe.written.max(1) as f64,
                percentile(&polls, 0.99),
                percentile(&w, 0.5),
                percentile(&w, 0.99),
                r.load.rate(),
                r.asked_rate,
                r.gauge_max_ms(),
                r.drained,
                r.in_sync,
                r.markers_leader,
                r.markers_follower
            );
        }
        println!(
            "\nlag = reply time of the first follower poll that sees the marker − the marker's \
             acknowledgement through the proxy (overstates by up to one follower round trip)."
        );
    }
    for n in &out.notes {
        println!("\nNOTE: {n}");
    }
}
