//! Latency and throughput of ZooKeeper requests (`zookeeper-client`) against a ZooKeeper
//! server directly and through statemirror (mirroring off and on).
//!
//! ```text
//! cargo bench --bench zookeeper_proxy
//! BENCH_QUICK=1 cargo bench --bench zookeeper_proxy   # fewer ops per run
//! ```
//!
//! Each run writes `benches/results/zookeeper-proxy-<date>[-<BENCH_LABEL>].md` (date, machine,
//! versions, the tables), and also reports CPU per op per process (utime + stime from
//! `/proc/<pid>/stat` over each phase: the proxy, the leader ZooKeeper, and with mirroring on
//! the follower ZooKeeper, read after the mirror drained) and, at the end, `GET /verify` of
//! the mirrored target.
//!
//! Every server runs in its own process: standalone ZooKeeper 3.8 servers
//! (`java ... ZooKeeperServerMain zoo.cfg`, Debian package `zookeeper`, installed by
//! `scripts/install-deps.sh`) on free loopback ports, a leader and, for mirroring on, a
//! follower; the release `statemirror` binary with a config derived from
//! `config/zookeeper.toml`. All of them are killed when the benchmark ends, also on panic (drop
//! guards) and when the benchmark itself is killed (`setpriv --pdeathsig KILL`).
//!
//! One run = 1 or 16 sessions, each issuing its requests one at a time (awaiting each reply),
//! in three phases: `create` (persistent nodes with distinct paths under a fresh root),
//! `setData` on those nodes (version -1), `getData` on them. Per phase: throughput (all
//! sessions' ops / wall time) and latency percentiles (over every op). Runs are interleaved
//! across targets (repeat, sessions, target; the target order rotates per repeat) so drift on a shared machine hits every target
//! alike; each cell reports the median over `BENCH_REPEAT` runs. After a run with mirroring on
//! the benchmark waits for the mirror queue to drain and compares the number of children of
//! the run's root on the leader and the follower. Each run's root is deleted afterwards
//! (directly on the servers).
//!
//! Environment:
//! - `BENCH_ZK_OPS`: ops per session and phase with 1 session (default 2000);
//! - `BENCH_ZK_OPS_16`: ops per session and phase with 16 sessions (default 500, or
//!   `BENCH_ZK_OPS / 4` when only that is set);
//! - `BENCH_ZK_SESSIONS`: comma-separated session counts (default `1,16`);
//! - `BENCH_ZK_DATA_BYTES`: znode data size (default 128);
//! - `BENCH_ZK_WARMUP`: ops per session (4 sessions) of an unrecorded warm-up run per target
//!   (default 500; 0 = none): JIT-compiles the JVM before anything is measured;
//! - `BENCH_ZK_FORCE_SYNC`: `1` = `forceSync=yes` (fsync the transaction log before each
//!   reply; default `no`, so disk speed does not drown the proxy's share);
//! - `BENCH_REPEAT`: runs per cell, the median is reported (default 5);
//! - `BENCH_QUICK`: `1` = 500 ops with 1 session, 150 with 16 (unless set explicitly);
//! - `BENCH_TARGETS`: comma-separated subset of `direct,mirror-off,mirror-on`;
//! - `BENCH_TIMEOUT_SECS`: give up on one phase after this long (default 300);
//! - `STATEMIRROR_BIN`: use this binary instead of the one cargo built.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it does nothing.

mod common;

use std::collections::BTreeMap;
use std::env;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use zookeeper_client as zkc;

use common::{
    env_list, env_num, free_port, http_get, median, mirror_status, percentile,
    record::{clock_ticks, cpu_ticks, Record},
    require_zookeeper_jars, start_statemirror, statemirror_bin, zk_children, zk_connect,
    zk_persistent, zookeeper_config, Guard, Mirror, ZkServer,
};

/// Deletes per `multi` when cleaning a run's root.
const DELETE_BATCH: usize = 1000;

fn main() {
    if !env::args().any(|a| a == "--bench") {
        println!(
            "zookeeper_proxy: benchmark skipped in test mode; run `cargo bench --bench zookeeper_proxy`"
        );
        return;
    }
    let settings = Settings::from_env();
    require_zookeeper_jars();
    let dir = tempfile::Builder::new()
        .prefix("statemirror-zkbench-")
        .tempdir()
        .expect("temp dir");
    let root = dir.path();

    let mut rec = Record::new("statemirror ZooKeeper proxy benchmark");
    rec.line(&format!(
        "- zookeeper-client 0.11: create (persistent), setData (version -1), getData on {} B \
         nodes; each session awaits every reply before its next request; {} session(s); {} ops \
         per session and phase with 1 session, {} with more; median of {} run(s); warm-up {} ops \
         x 4 sessions per target; forceSync={}; client on one thread; {} CPU(s) shared by every \
         process.",
        settings.data_bytes,
        settings
            .sessions
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(" and "),
        settings.ops_1,
        settings.ops_16,
        settings.repeat,
        settings.warmup,
        if settings.force_sync { "yes" } else { "no" },
        thread::available_parallelism().map_or(0, |n| n.get()),
    ));

    let leader = ZkServer::start(root, "zk-leader", settings.force_sync);
    rec.line(&format!("- {}", leader.version()));
    let follower = settings
        .wants("mirror-on")
        .then(|| ZkServer::start(root, "zk-follower", settings.force_sync));
    println!(
        "ZooKeeper leader 127.0.0.1:{}{}",
        leader.port,
        follower.as_ref().map_or(String::new(), |f| format!(
            ", follower 127.0.0.1:{}",
            f.port
        ))
    );

    let mut targets: Vec<Target> = Vec::new();
    if settings.wants("direct") {
        targets.push(Target {
            key: "direct",
            label: "ZooKeeper direct",
            port: leader.port,
            admin: None,
            pid: None,
            _process: None,
        });
    }
    if settings.wants("mirror-off") || settings.wants("mirror-on") {
        let bin = statemirror_bin();
        println!("statemirror binary: {}", bin.display());
        if settings.wants("mirror-off") {
            let p = Statemirror::start(root, "mirror-off", &bin, leader.port, None);
            targets.push(Target {
                key: "mirror-off",
                label: "statemirror, mirroring off",
                port: p.port,
                admin: None,
                pid: Some(p.guard.child.id()),
                _process: Some(p.guard),
            });
        }
        if let Some(f) = &follower {
            let p = Statemirror::start(root, "mirror-on", &bin, leader.port, Some(f.port));
            targets.push(Target {
                key: "mirror-on",
                label: "statemirror, mirroring on",
                port: p.port,
                admin: Some(p.admin_port),
                pid: Some(p.guard.child.id()),
                _process: Some(p.guard),
            });
        }
    }
    assert!(!targets.is_empty(), "BENCH_TARGETS selects no target");
    println!();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let pids = [leader.pid(), follower.as_ref().map_or(0, |f| f.pid())];
    let outcome = rt.block_on(bench(
        &settings,
        &targets,
        leader.port,
        follower.as_ref().map(|f| f.port),
        pids,
    ));
    drop(rt);
    report(&mut rec, &settings, &targets, &outcome);
    if let Some(a) = targets.iter().find_map(|t| t.admin) {
        let body = http_get(a, "/verify?max=10").map_or_else(|e| e, |(c, b)| format!("{c} {b}"));
        rec.line(&format!(
            "\n## Mirroring on: `GET /verify` at the end\n\n```\n{body}\n```"
        ));
    }
    rec.save("zookeeper-proxy");
    // Drop order: proxies (in `targets`), then the ZooKeeper servers, then the temp dir.
    drop(targets);
    drop(follower);
    drop(leader);
    if !outcome.problems.is_empty() {
        eprintln!();
        for p in &outcome.problems {
            eprintln!("FAILED: {p}");
        }
        std::process::exit(1);
    }
}

struct Settings {
    ops_1: usize,
    ops_16: usize,
    sessions: Vec<usize>,
    data_bytes: usize,
    warmup: usize,
    force_sync: bool,
    repeat: usize,
    targets: Option<Vec<String>>,
    timeout: Duration,
}

impl Settings {
    fn from_env() -> Self {
        let quick = env_num("BENCH_QUICK", 0u8) != 0;
        let ops_1 = env_num("BENCH_ZK_OPS", if quick { 500 } else { 2000usize }).max(1);
        let ops_16_default = if env::var_os("BENCH_ZK_OPS").is_some() {
            (ops_1 / 4).max(1)
        } else if quick {
            150
        } else {
            500
        };
        let sessions = env_list("BENCH_ZK_SESSIONS")
            .map(|v| {
                v.iter()
                    .map(|s| {
                        s.parse::<usize>()
                            .unwrap_or_else(|_| panic!("BENCH_ZK_SESSIONS: {s:?} is not a number"))
                            .max(1)
                    })
                    .collect()
            })
            .unwrap_or_else(|| vec![1, 16]);
        Settings {
            ops_1,
            ops_16: env_num("BENCH_ZK_OPS_16", ops_16_default).max(1),
            sessions,
            data_bytes: env_num("BENCH_ZK_DATA_BYTES", 128usize),
            warmup: env_num("BENCH_ZK_WARMUP", 500usize),
            force_sync: env_num("BENCH_ZK_FORCE_SYNC", 0u8) != 0,
            repeat: env_num("BENCH_REPEAT", 5usize).max(1),
            targets: env_list("BENCH_TARGETS"),
            timeout: Duration::from_secs(env_num("BENCH_TIMEOUT_SECS", 300u64)),
        }
    }

    fn wants(&self, target: &str) -> bool {
        match &self.targets {
            None => true,
            Some(t) => t.iter().any(|x| x == target),
        }
    }

    /// Ops per session and phase: `BENCH_ZK_OPS` for a single session, `BENCH_ZK_OPS_16`
    /// for more.
    fn ops(&self, sessions: usize) -> usize {
        if sessions > 1 {
            self.ops_16
        } else {
            self.ops_1
        }
    }
}

struct Target {
    key: &'static str,
    label: &'static str,
    /// Where the benchmark's sessions connect.
    port: u16,
    /// Admin port of a statemirror with mirroring on.
    admin: Option<u16>,
    /// The proxy's process.
    pid: Option<u32>,
    _process: Option<Guard>,
}

// ---------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------

struct Statemirror {
    port: u16,
    admin_port: u16,
    guard: Guard,
}

impl Statemirror {
    /// Starts the binary with `config/zookeeper.toml`, re-pointed at these servers; everything
    /// else as shipped.
    fn start(root: &Path, name: &str, bin: &Path, leader: u16, follower: Option<u16>) -> Self {
        let port = free_port();
        let admin_port = free_port();
        let cfg = zookeeper_config(port, admin_port, leader, follower);
        let dir: PathBuf = root.join(name);
        let guard = start_statemirror(&dir, name, bin, &cfg, admin_port);
        Statemirror {
            port,
            admin_port,
            guard,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Measurement
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Create,
    SetData,
    GetData,
}

impl Op {
    const ALL: [Op; 3] = [Op::Create, Op::SetData, Op::GetData];
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Create => "create",
            Op::SetData => "setData",
            Op::GetData => "getData",
        })
    }
}

/// One phase of one run.
#[derive(Clone, Copy, Debug)]
struct Sample {
    ops_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    /// CPU µs per op: proxy, leader ZooKeeper, follower ZooKeeper (mirroring on).
    cpu: [Option<f64>; 3],
}

/// After a run with mirroring on.
struct MirrorRow {
    sessions: usize,
    rep: usize,
    writes: u64,
    queue_after_writes: u64,
    mirrored: u64,
    dropped: u64,
    failures: u64,
    drain: Duration,
    queue_depth: u64,
    in_sync: bool,
    leader_children: usize,
    follower_children: usize,
}

impl MirrorRow {
    fn matches(&self) -> bool {
        self.queue_depth == 0 && self.leader_children == self.follower_children
    }

    fn describe(&self) -> String {
        format!(
            "mirror: {} writes, queue {} after the writes; +{} mirrored, queue depth {} after {:.2} s, \
             in sync {}, +{} dropped, +{} failures; children leader {} follower {}",
            self.writes,
            self.queue_after_writes,
            self.mirrored,
            self.queue_depth,
            self.drain.as_secs_f64(),
            self.in_sync,
            self.dropped,
            self.failures,
            self.leader_children,
            self.follower_children
        )
    }
}

#[derive(Default)]
struct Outcome {
    /// (op, sessions, target index) → one sample per repeat.
    results: BTreeMap<(Op, usize, usize), Vec<Sample>>,
    mirror_rows: Vec<MirrorRow>,
    problems: Vec<String>,
}

async fn bench(
    settings: &Settings,
    targets: &[Target],
    leader: u16,
    follower: Option<u16>,
    [leader_pid, follower_pid]: [u32; 2],
) -> Outcome {
    let mut out = Outcome::default();
    // Direct sessions for checks and cleanup, never through a proxy.
    let leader_admin = zk_connect(leader).await;
    let follower_admin = match follower {
        Some(p) => Some(zk_connect(p).await),
        None => None,
    };
    let payload = Arc::new(vec![b'v'; settings.data_bytes]);
    let payload2 = Arc::new(vec![b'w'; settings.data_bytes]);
    let tag = std::process::id();

    // The start-up resync of a mirrored target copies whatever the leader holds: let it end
    // before anything runs, so it cannot copy another target's (unmirrored) nodes.
    for a in targets.iter().filter_map(|t| t.admin) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !mirror_status(a, "zookeeper").in_sync && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    if settings.warmup > 0 {
        for t in targets {
            let started = Instant::now();
            let root = format!("/statemirror-bench-{tag}-{}-warmup", t.key);
            let _ = run(
                settings,
                t,
                &root,
                4,
                settings.warmup,
                &payload,
                &payload2,
                [0, 0],
            )
            .await;
            if let Some(admin) = t.admin {
                drain(admin, Duration::from_secs(60)).await;
            }
            delete_tree(&leader_admin, &root).await;
            if let Some(f) = &follower_admin {
                delete_tree(f, &root).await;
            }
            println!(
                "{:<28} warm-up 4 sessions x {} ops ({:.1} s)",
                t.label,
                settings.warmup,
                started.elapsed().as_secs_f64()
            );
        }
    }

    for rep in 1..=settings.repeat {
        for &sessions in &settings.sessions {
            let ops = settings.ops(sessions);
            for k in 0..targets.len() {
                let ti = (k + rep) % targets.len();
                let t = &targets[ti];
                let root = format!("/statemirror-bench-{tag}-{}-s{sessions}-r{rep}", t.key);
                let before = t.admin.map(|a| mirror_status(a, "zookeeper"));
                let started = Instant::now();
                let (samples, queue_after_writes) = run(
                    settings,
                    t,
                    &root,
                    sessions,
                    ops,
                    &payload,
                    &payload2,
                    [leader_pid, follower_pid],
                )
                .await;
                let mut line = format!(
                    "{:<28} {sessions:>2} session(s) x {ops} ops, run {rep}/{}:",
                    t.label, settings.repeat
                );
                for (op, s) in &samples {
                    line.push_str(&format!(
                        " {op} {:.0}/s p50 {:.0} p99 {:.0} µs;",
                        s.ops_per_sec, s.p50_us, s.p99_us
                    ));
                    out.results.entry((*op, sessions, ti)).or_default().push(*s);
                }
                println!("{line} ({:.1} s)", started.elapsed().as_secs_f64());

                let expected = sessions * ops;
                let leader_children = zk_children(&leader_admin, &root).await;
                if leader_children != expected {
                    out.problems.push(format!(
                        "{} {sessions} session(s) run {rep}: leader has {leader_children} \
                         children under {root}, expected {expected}",
                        t.label
                    ));
                }
                if let (Some(admin), Some(before), Some(f)) = (t.admin, before, &follower_admin) {
                    let (now, drain_time) = drain(admin, Duration::from_secs(60)).await;
                    let row = MirrorRow {
                        sessions,
                        rep,
                        // The root, then a create and a setData per node.
                        writes: 1 + 2 * expected as u64,
                        queue_after_writes,
                        mirrored: now.mirrored.saturating_sub(before.mirrored),
                        dropped: now.dropped.saturating_sub(before.dropped),
                        failures: now.failures.saturating_sub(before.failures),
                        drain: drain_time,
                        queue_depth: now.queue_depth,
                        in_sync: now.in_sync,
                        leader_children,
                        follower_children: zk_children(f, &root).await,
                    };
                    println!("    {}", row.describe());
                    if !row.matches() {
                        out.problems.push(format!(
                            "mirroring on, {sessions} session(s) run {rep}: {}",
                            row.describe()
                        ));
                    }
                    out.mirror_rows.push(row);
                    delete_tree(f, &root).await;
                }
                delete_tree(&leader_admin, &root).await;
            }
        }
    }
    out
}

/// One run against `target`: creates `root` (through the target), then the three phases
/// with `sessions` sessions of `ops` requests each. Returns the samples and, with mirroring
/// on, the mirror queue depth right after the write phases.
#[allow(clippy::too_many_arguments)]
async fn run(
    settings: &Settings,
    target: &Target,
    root: &str,
    sessions: usize,
    ops: usize,
    payload: &Arc<Vec<u8>>,
    payload2: &Arc<Vec<u8>>,
    [leader_pid, follower_pid]: [u32; 2],
) -> (Vec<(Op, Sample)>, u64) {
    let pids = [
        target.pid,
        (leader_pid != 0).then_some(leader_pid),
        target
            .admin
            .and((follower_pid != 0).then_some(follower_pid)),
    ];
    let ticks = clock_ticks();
    let mut clients = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        clients.push(zk_connect(target.port).await);
    }
    clients[0]
        .create(root, b"", &persistent())
        .await
        .unwrap_or_else(|e| panic!("{}: create {root}: {e}", target.label));
    let mut samples = Vec::new();
    let mut queue_after_writes = 0;
    for op in Op::ALL {
        let data = if op == Op::SetData { payload2 } else { payload };
        let before = pids.map(|p| p.map(cpu_ticks));
        let mut s = phase(settings, target, op, &clients, root, ops, data).await;
        if op != Op::GetData {
            // The follower's work (and the mirror's) for this phase's writes.
            if let Some(admin) = target.admin {
                if op == Op::SetData {
                    queue_after_writes = mirror_status(admin, "zookeeper").queue_depth;
                }
                drain(admin, Duration::from_secs(60)).await;
            }
        }
        let after = pids.map(|p| p.map(cpu_ticks));
        let n = (ops * sessions) as f64;
        for i in 0..3 {
            if let (Some(b), Some(a)) = (before[i], after[i]) {
                s.cpu[i] = Some(a.saturating_sub(b) as f64 / ticks * 1e6 / n);
            }
        }
        samples.push((op, s));
    }
    (samples, queue_after_writes)
}

/// `root/sSS-NNNNNN`
fn node_path(root: &str, session: usize, n: usize) -> String {
    format!("{root}/s{session:02}-{n:06}")
}

fn persistent() -> zkc::CreateOptions<'static> {
    zk_persistent()
}

/// Every session issues `ops` requests of kind `op`, one at a time; all sessions at once.
async fn phase(
    settings: &Settings,
    target: &Target,
    op: Op,
    clients: &[zkc::Client],
    root: &str,
    ops: usize,
    data: &Arc<Vec<u8>>,
) -> Sample {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, c) in clients.iter().enumerate() {
        let c = c.clone();
        let root = root.to_string();
        let data = Arc::clone(data);
        tasks.spawn(async move {
            let create = persistent();
            let mut latencies = Vec::with_capacity(ops);
            for n in 0..ops {
                let path = node_path(&root, i, n);
                let t = Instant::now();
                let r = match op {
                    Op::Create => c.create(&path, &data, &create).await.map(|_| 0),
                    Op::SetData => c.set_data(&path, &data, None).await.map(|_| 0),
                    Op::GetData => c.get_data(&path).await.map(|(d, _)| d.len()),
                };
                latencies.push(t.elapsed().as_secs_f64() * 1e6);
                match r {
                    Err(e) => return Err(format!("{op} {path}: {e}")),
                    Ok(len) if op == Op::GetData && len != data.len() => {
                        return Err(format!("{op} {path}: {len} bytes, expected {}", data.len()))
                    }
                    Ok(_) => {}
                }
            }
            Ok(latencies)
        });
    }
    let joined = tokio::time::timeout(settings.timeout, async {
        let mut all = Vec::with_capacity(ops * clients.len());
        while let Some(r) = tasks.join_next().await {
            match r {
                Ok(Ok(l)) => all.extend(l),
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(format!("session task: {e}")),
            }
        }
        Ok(all)
    })
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let mut lat = match joined {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => panic!("{}: {e}", target.label),
        Err(_) => panic!(
            "{}: {op} phase did not finish within {:?}",
            target.label, settings.timeout
        ),
    };
    lat.sort_by(|a, b| a.total_cmp(b));
    Sample {
        ops_per_sec: lat.len() as f64 / elapsed,
        p50_us: percentile(&lat, 0.50),
        p99_us: percentile(&lat, 0.99),
        cpu: [None; 3],
    }
}

/// Deletes `root` and its children (one level, as the benchmark creates them), in `multi`
/// batches.
async fn delete_tree(c: &zkc::Client, root: &str) {
    let names = match c.list_children(root).await {
        Ok(ch) => ch,
        Err(zkc::Error::NoNode) => return,
        Err(e) => panic!("list_children {root}: {e}"),
    };
    for chunk in names.chunks(DELETE_BATCH) {
        let mut w = c.new_multi_writer();
        for n in chunk {
            w.add_delete(&format!("{root}/{n}"), None)
                .expect("multi delete");
        }
        if let Err(e) = w.commit().await {
            panic!("delete children of {root}: {e}");
        }
    }
    match c.delete(root, None).await {
        Ok(()) | Err(zkc::Error::NoNode) => {}
        Err(e) => panic!("delete {root}: {e}"),
    }
}

/// Waits (at most `limit`) until `/status` `zookeeper.mirror.queue_depth` is 0; returns the
/// last status and how long it took.
async fn drain(admin: u16, limit: Duration) -> (Mirror, Duration) {
    let started = Instant::now();
    let mut now = mirror_status(admin, "zookeeper");
    while now.queue_depth > 0 && started.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(10)).await;
        now = mirror_status(admin, "zookeeper");
    }
    (now, started.elapsed())
}

// ---------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------

fn report(rec: &mut Record, settings: &Settings, targets: &[Target], out: &Outcome) {
    let direct = targets.iter().position(|t| t.key == "direct");
    let med =
        |v: &[Sample], f: &dyn Fn(&Sample) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
    let med_opt = |v: &[Sample], i: usize| {
        let xs: Vec<f64> = v.iter().filter_map(|s| s.cpu[i]).collect();
        (!xs.is_empty()).then(|| median(&xs))
    };
    let fmt = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.1}"));
    rec.line(&format!(
        "\n## Results (median of {}; latency per request in µs; CPU µs per op from /proc)\n",
        settings.repeat
    ));
    let mut rows = Vec::new();
    for ((op, sessions, ti), v) in &out.results {
        let ops = med(v, &|s| s.ops_per_sec);
        let p50 = med(v, &|s| s.p50_us);
        let p99 = med(v, &|s| s.p99_us);
        let base = direct
            .filter(|d| d != ti)
            .and_then(|d| out.results.get(&(*op, *sessions, d)));
        let (ratio, added) = match base {
            Some(b) => {
                let bops = med(b, &|s| s.ops_per_sec);
                let ratio = if bops > 0.0 {
                    format!("{:.2}", ops / bops)
                } else {
                    "n/a".into()
                };
                (ratio, format!("{:+.0}", p50 - med(b, &|s| s.p50_us)))
            }
            None if Some(*ti) == direct => ("1.00".into(), "0".into()),
            None => ("n/a".into(), "n/a".into()),
        };
        rows.push(vec![
            op.to_string(),
            sessions.to_string(),
            targets[*ti].label.to_string(),
            format!("{ops:.0}"),
            ratio,
            format!("{p50:.0}"),
            format!("{p99:.0}"),
            added,
            fmt(med_opt(v, 0)),
            fmt(med_opt(v, 1)),
            fmt(med_opt(v, 2)),
        ]);
    }
    rec.table(
        &[
            "op",
            "sessions",
            "target",
            "ops/s",
            "ratio to direct",
            "p50 µs",
            "p99 µs",
            "added p50 vs direct µs",
            "proxy CPU µs/op",
            "leader ZooKeeper CPU µs/op",
            "follower ZooKeeper CPU µs/op",
        ],
        &rows,
    );

    if !out.mirror_rows.is_empty() {
        rec.line("\n## Mirror (statemirror, mirroring on), after each run\n");
        let rows: Vec<Vec<String>> = out
            .mirror_rows
            .iter()
            .map(|r| {
                vec![
                    r.sessions.to_string(),
                    r.rep.to_string(),
                    r.writes.to_string(),
                    r.queue_after_writes.to_string(),
                    r.mirrored.to_string(),
                    format!("{:.2} s", r.drain.as_secs_f64()),
                    r.queue_depth.to_string(),
                    r.in_sync.to_string(),
                    r.dropped.to_string(),
                    r.failures.to_string(),
                    r.leader_children.to_string(),
                    r.follower_children.to_string(),
                    if r.matches() { "yes" } else { "NO" }.to_string(),
                ]
            })
            .collect();
        rec.table(
            &[
                "sessions",
                "run",
                "writes",
                "queue after writes",
                "mirrored writes",
                "drained in",
                "queue depth",
                "in sync",
                "dropped",
                "failures",
                "leader children",
                "follower children",
                "same",
            ],
            &rows,
        );
        rec.line(
            "\n`writes` = the run's root plus one create and one setData per node; `queue after \
             writes` is the mirror backlog when the setData phase ended (each write phase's \
             backlog is drained before the next phase, so each phase's CPU includes its \
             mirroring); `drained in` is the wait after the getData phase.",
        );
    }
}
