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
//! - `redis-lag-resync` / `zk-lag-resync`: the same lag probe and background load while a
//!   full resync runs. The leader holds the resync data set (`BENCH_RESYNC_KEYS` keys /
//!   `BENCH_RESYNC_ZNODES` znodes, as above); after the warm-up the benchmark empties the
//!   follower's copy directly (`FLUSHALL` / deleting `/bench`), sends `POST /resync` and
//!   probes until `/status` shows the resync ended and the follower in sync. The resync runs at
//!   `BENCH_LAG_RESYNC_RATE` (default 20,000 = the shipped `max_keys_per_second`), so it lasts
//!   as long as it would in production. Checked as well: the data set's count on both sides and
//!   `GET /verify` reporting zero differences once writes stop.
//!
//! Targets (reported, not enforced): Redis resync ≥ 50,000 keys/s, ZooKeeper resync ≥ 5,000
//! znodes/s, lag p99 ≤ 10 ms. The process exits 1 when a check fails (follower count, resync
//! outcome, markers missing), not when a target is missed.
//!
//! Environment:
//! - `BENCH_PARTS`: subset of
//!   `redis-resync,zk-resync,redis-lag,zk-lag,redis-lag-resync,zk-lag-resync`;
//! - `BENCH_REPEAT`: resync runs per protocol, the median is reported (default 3);
//! - `BENCH_RESYNC_KEYS` (default 100000), `BENCH_RESYNC_VALUE_BYTES` (default 20);
//! - `BENCH_RESYNC_ZNODES` (default 20000), `BENCH_RESYNC_ZNODE_BYTES` (default 64);
//! - `BENCH_RESYNC_RATE`: `[resync] max_keys_per_second` (default 0 = unlimited);
//! - `BENCH_LAG_RESYNC_RATE`: `max_keys_per_second` in the lag-during-resync parts (default
//!   20000);
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

#[path = "../common/mod.rs"]
mod common;
mod lag;
mod proxy;
mod report;
mod throughput;

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use zookeeper_client as zkc;

use lag::*;
use proxy::*;
use report::*;
use throughput::*;

use common::{
    command, dbsize, env_list, env_num, find_program, free_port, http_get, http_request, log_tail,
    median, metric_value, mirror_status, percentile, program_version, redis_config,
    require_zookeeper_jars, section, start_statemirror_timed, statemirror_bin, zk_children,
    zk_connect, zk_persistent, zookeeper_config, Guard, RedisServer, Reply, Resp, ZkServer,
};

const PARTS: [&str; 6] = [
    "redis-resync",
    "zk-resync",
    "redis-lag",
    "zk-lag",
    "redis-lag-resync",
    "zk-lag-resync",
];
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

    if s.parts.iter().any(|p| p.starts_with("redis-")) {
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
            redis_lag(&s, root, &bin, &leader, &follower, &mut out, false);
        }
        if s.wants("redis-lag-resync") {
            redis_lag(&s, root, &bin, &leader, &follower, &mut out, true);
        }
    }

    if s.parts.iter().any(|p| p.starts_with("zk-")) {
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
            zk_lag(&s, root, &bin, &leader, &follower, &mut out, false);
        }
        if s.wants("zk-lag-resync") {
            zk_lag(&s, root, &bin, &leader, &follower, &mut out, true);
        }
    }

    report(&out);
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
    lag_resync_rate: u64,
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
            lag_resync_rate: env_num("BENCH_LAG_RESYNC_RATE", 20_000u64),
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
