//! statemirror's Redis path against Redis directly and twemproxy, as a record: one run
//! measures every target interleaved and writes `benches/results/redis-proxy-<date>.md`.
//!
//! ```text
//! cargo bench --bench redis_proxy                      # ~4 min on 2 cores
//! BENCH_QUICK=1 cargo bench --bench redis_proxy        # ~1 min, fewer requests per run
//! BENCH_LABEL=after cargo bench --bench redis_proxy    # redis-proxy-<date>-after.md
//! ```
//!
//! Targets (default: the first five): `direct` (redis-server), `mirror-off` and `mirror-on`
//! (statemirror without and with a follower), `mux-on` (as `mirror-on` with `[redis]
//! multiplex`), `twemproxy` (nutcracker, one server connection, when installed); on request (`BENCH_TARGETS`) also `mirror-cluster`
//! (`[cluster]` convergence check on), `direct-tls`, `tls-follower` and `tls-client`.
//!
//! Tests, each run on every target one after the other, in an order that rotates every
//! round, so drift on a shared machine hits every target alike and each ratio is measured
//! within one run: `redis-benchmark -c 50` SET and GET at pipeline 1 and 16, SET with
//! `-r 100000` random keys (every write mirrored, none coalesced), and the NiFi mix (16
//! connections, each `WATCH`/`GET`/`MULTI`/`GETSET`/`EXEC` as separate round trips: the pinned,
//! transactional path; twemproxy cannot run it), and the same with NiFi's `getState` `GET`
//! before each replace (a multiplexed client then shares between transactions and pins again
//! at each `WATCH`). One warm-up round first (a tenth of the
//! requests, not recorded), then `BENCH_ROUNDS` rounds; tables show medians.
//!
//! Per run it also reads utime + stime of each process (`/proc/<pid>/stat`: the proxy, the
//! leader redis-server, and for mirroring on the follower redis-server, read after the mirror
//! queue drained) and divides by the requests: CPU per request per process. After the
//! rounds: RSS per idle client (`BENCH_IDLE_CLIENTS` connections that answered a `PING`),
//! then the follower's drained state and a key-by-key `GET /verify` (the mirrored target
//! uses db 0, every other target db 1, which is flushed on the leader before the check).
//!
//! Environment: `BENCH_ROUNDS` (default 5), `BENCH_REQUESTS` (per run at pipeline 1, default
//! 100000; quick 20000), `BENCH_REQUESTS_P16` (default 5 x that), `BENCH_CLIENTS` (default
//! 50), `BENCH_NIFI_CLIENTS` (default 16), `BENCH_NIFI_OPS` (per client, default 300; quick
//! 100), `BENCH_IDLE_CLIENTS` (default 1000), `BENCH_TARGETS`, `BENCH_TESTS` (only the
//! tests whose name contains one of these comma-separated words, for an experiment; a
//! recorded run has them all), `BENCH_LABEL` (suffix of the
//! results file), `BENCH_TIMEOUT_SECS` (one run, default 120), `STATEMIRROR_BIN`.
//!
//! Every process is killed when the benchmark ends, also on panic (drop guards). Under
//! `cargo test --all-targets` (no `--bench` argument) it does nothing.

mod common;
#[path = "redis_proxy/drive.rs"]
mod drive;
#[path = "redis_proxy/targets.rs"]
mod targets;

use std::collections::BTreeMap;
use std::env;
use std::thread;
use std::time::{Duration, Instant};

use common::record::{clock_ticks, cpu_ticks, Record};
use common::{
    dbsize, env_list, env_num, free_port, http_get, median, mirror_status, rss_bytes,
    statemirror_bin, RedisServer as Redis, Resp,
};
use targets::{Certs, Statemirror, Target, Tools, Twemproxy};

const RANDOM_KEYSPACE: u32 = 100_000;
const DEFAULT_TARGETS: &[&str] = &["direct", "mirror-off", "mirror-on", "mux-on", "twemproxy"];

#[derive(Clone, Copy)]
enum Load {
    Bench(&'static str, Option<u32>),
    /// `true`: with NiFi's `getState` `GET` before each replace.
    Nifi(bool),
}

#[derive(Clone, Copy)]
struct Test {
    name: &'static str,
    load: Load,
    pipeline: u32,
}

const TESTS: &[Test] = &[
    Test {
        name: "SET",
        load: Load::Bench("set", None),
        pipeline: 1,
    },
    Test {
        name: "GET",
        load: Load::Bench("get", None),
        pipeline: 1,
    },
    Test {
        name: "SET -r 100000",
        load: Load::Bench("set", Some(RANDOM_KEYSPACE)),
        pipeline: 1,
    },
    Test {
        name: "SET",
        load: Load::Bench("set", None),
        pipeline: 16,
    },
    Test {
        name: "GET",
        load: Load::Bench("get", None),
        pipeline: 16,
    },
    Test {
        name: "NiFi mix",
        load: Load::Nifi(false),
        pipeline: 1,
    },
    Test {
        name: "NiFi getState + mix",
        load: Load::Nifi(true),
        pipeline: 1,
    },
];

struct Settings {
    rounds: usize,
    requests_p1: u64,
    requests_p16: u64,
    clients: u32,
    nifi_clients: usize,
    nifi_ops: usize,
    idle_clients: usize,
    targets: Vec<String>,
    /// Only the tests whose name contains one of these (all when empty).
    tests: Vec<String>,
    timeout: Duration,
}

impl Settings {
    fn from_env() -> Self {
        let quick = env_num("BENCH_QUICK", 0u8) != 0 || env::args().any(|a| a == "--quick");
        let requests_p1 = env_num("BENCH_REQUESTS", if quick { 20_000u64 } else { 100_000 });
        Settings {
            rounds: env_num("BENCH_ROUNDS", 5usize).max(1),
            requests_p1: requests_p1.max(100),
            requests_p16: env_num("BENCH_REQUESTS_P16", requests_p1 * 5).max(100),
            clients: env_num("BENCH_CLIENTS", 50u32).max(1),
            nifi_clients: env_num("BENCH_NIFI_CLIENTS", 16usize).max(1),
            nifi_ops: env_num("BENCH_NIFI_OPS", if quick { 100usize } else { 300 }).max(1),
            idle_clients: env_num("BENCH_IDLE_CLIENTS", 1000usize),
            targets: env_list("BENCH_TARGETS")
                .unwrap_or_else(|| DEFAULT_TARGETS.iter().map(|s| s.to_string()).collect()),
            tests: env_list("BENCH_TESTS").unwrap_or_default(),
            timeout: Duration::from_secs(env_num("BENCH_TIMEOUT_SECS", 120u64)),
        }
    }

    fn wants(&self, t: &str) -> bool {
        self.targets.iter().any(|x| x == t)
    }

    /// Requests of one run of `test` (`scale`: the warm-up's fraction).
    fn requests(&self, test: &Test, scale: f64) -> u64 {
        let n = match (test.load, test.pipeline) {
            (Load::Nifi(get), _) => return self.nifi_requests(scale, get),
            (_, 1) => self.requests_p1,
            _ => self.requests_p16,
        };
        ((n as f64 * scale) as u64).max(100)
    }

    fn nifi_ops(&self, scale: f64) -> usize {
        ((self.nifi_ops as f64 * scale) as usize).max(5)
    }

    fn nifi_requests(&self, scale: f64, get_state: bool) -> u64 {
        let per_op = drive::NIFI_REQUESTS_PER_OP + u64::from(get_state);
        (self.nifi_clients * self.nifi_ops(scale)) as u64 * per_op
    }
}

/// One run of one test on one target.
#[derive(Clone, Copy, Default)]
struct Sample {
    rps: f64,
    /// CPU µs per request: proxy, leader redis-server, follower redis-server.
    cpu: [Option<f64>; 3],
    /// Mirroring on: how long the queue took to empty after the run.
    drain: Option<f64>,
}

fn main() {
    if !env::args().any(|a| a == "--bench") {
        println!(
            "redis_proxy: benchmark skipped in test mode; run `cargo bench --bench redis_proxy`"
        );
        return;
    }
    let s = Settings::from_env();
    let tools = Tools::find();
    let dir = tempfile::Builder::new()
        .prefix("statemirror-bench-")
        .tempdir()
        .expect("temp dir");
    let root = dir.path();
    let mut rec = Record::new("statemirror Redis proxy benchmark");
    rec.line(&format!("- {}", tools.versions()));
    rec.line(&format!(
        "- redis-benchmark -c {} -t set|get, {} requests per run at -P 1, {} at -P 16; NiFi \
         mix {} connections x {} ops x {} requests; 1 warm-up round (not recorded) + {} rounds, \
         targets interleaved (order rotates per round); medians; every process shares the CPUs \
         with the others (and with whatever else runs on the machine)",
        s.clients,
        s.requests_p1,
        s.requests_p16,
        s.nifi_clients,
        s.nifi_ops,
        drive::NIFI_REQUESTS_PER_OP,
        s.rounds
    ));

    let tls_wanted = ["direct-tls", "tls-follower", "tls-client"]
        .iter()
        .any(|t| s.wants(t));
    let certs = tls_wanted.then(|| Certs::make(root));
    let (leader_tls, follower_tls) = (free_port(), free_port());
    let tls_args = |p| certs.as_ref().map_or(vec![], |c| c.redis_args(p));
    let leader = Redis::start_with(root, "leader", &tools.redis_server, &tls_args(leader_tls));
    let follower = Redis::start_with(
        root,
        "follower",
        &tools.redis_server,
        &tls_args(follower_tls),
    );
    let targets = start_targets(
        &s,
        &tools,
        root,
        &leader,
        &follower,
        certs.as_ref(),
        (leader_tls, follower_tls),
    );
    assert!(!targets.is_empty(), "BENCH_TARGETS selects no target");
    for t in &targets {
        if let Some(a) = t.admin {
            wait_in_sync(a);
        }
    }

    let ticks = clock_ticks();
    let pids = |t: &Target| [t.pid, Some(leader.pid()), t.admin.map(|_| follower.pid())];
    let mut results: BTreeMap<(usize, usize), Vec<Sample>> = BTreeMap::new();
    for round in 0..=s.rounds {
        let warmup = round == 0;
        let scale = if warmup { 0.1 } else { 1.0 };
        println!(
            "\n{}",
            if warmup {
                "warm-up round".to_string()
            } else {
                format!("round {round}/{}", s.rounds)
            }
        );
        let n = targets.len();
        for (ti_test, test) in TESTS.iter().enumerate() {
            for k in 0..n {
                let ti = (k + round) % n;
                let t = &targets[ti];
                if matches!(test.load, Load::Nifi(_)) && !t.transactions {
                    continue;
                }
                if !s.tests.is_empty() && !s.tests.iter().any(|n| test.name.contains(n.as_str())) {
                    continue;
                }
                let requests = s.requests(test, scale);
                let before = pids(t).map(|p| p.map(cpu_ticks));
                let started = Instant::now();
                let rps = match test.load {
                    Load::Bench(name, random) => drive::redis_benchmark(
                        &tools.redis_benchmark,
                        t,
                        certs.as_ref().map(|c| c.ca_file.as_path()),
                        name,
                        random,
                        s.clients,
                        requests,
                        test.pipeline,
                        s.timeout,
                    ),
                    Load::Nifi(get) => {
                        drive::nifi_mix(t, s.nifi_clients, s.nifi_ops(scale), round, get)
                    }
                };
                let drain = t.admin.map(|a| wait_drained(a).as_secs_f64());
                let after = pids(t).map(|p| p.map(cpu_ticks));
                let mut cpu = [None; 3];
                for i in 0..3 {
                    if let (Some(b), Some(a)) = (before[i], after[i]) {
                        cpu[i] = Some(a.saturating_sub(b) as f64 / ticks * 1e6 / requests as f64);
                    }
                }
                println!(
                    "  {:<14} -P {:<2} {:<28} {:>9.0} req/s  cpu µs/req {}{} ({:.1} s)",
                    test.name,
                    test.pipeline,
                    t.label,
                    rps,
                    cpu.iter()
                        .map(|c| c.map_or("-".into(), |v| format!("{v:.1}")))
                        .collect::<Vec<_>>()
                        .join("/"),
                    drain.map_or(String::new(), |d| format!(", drained in {d:.2} s")),
                    started.elapsed().as_secs_f64()
                );
                if !warmup {
                    results
                        .entry((ti_test, ti))
                        .or_default()
                        .push(Sample { rps, cpu, drain });
                }
            }
        }
    }

    let memory: Vec<Vec<String>> = targets
        .iter()
        .filter(|t| !t.tls)
        .map(|t| idle_memory(t, &leader, s.idle_clients))
        .collect();
    let verify = targets
        .iter()
        .find(|t| t.key == "mirror-on")
        .map(|t| final_check(t, &leader, &follower));

    report(&mut rec, &s, &targets, &results);
    rec.line(&format!(
        "\n## Memory per idle client ({} connections, each answered one PING; RSS growth)\n",
        s.idle_clients
    ));
    rec.table(
        &[
            "target",
            "proxy KiB/client",
            "redis-server KiB/client",
            "server connections per client",
        ],
        &memory,
    );
    if let Some(v) = verify {
        rec.line("\n## Mirroring on: the follower after the run\n");
        rec.line(&v);
    }
    rec.save("redis-proxy");
    // Drop order: proxies (in `targets`), then the Redis servers, then the temp dir.
    drop(targets);
}

#[allow(clippy::too_many_arguments)]
fn start_targets(
    s: &Settings,
    tools: &Tools,
    root: &std::path::Path,
    leader: &Redis,
    follower: &Redis,
    certs: Option<&Certs>,
    (leader_tls, follower_tls): (u16, u16),
) -> Vec<Target> {
    let mut v = Vec::new();
    let bin = statemirror_bin();
    for key in &s.targets {
        let sm = |name, f, tls, cluster| {
            Statemirror::start(root, name, &bin, leader.port, f, tls, cluster, false)
        };
        let t = match key.as_str() {
            "direct" => Target::new("direct", "Redis direct", leader.port),
            "direct-tls" => Target::new("direct-tls", "Redis direct, TLS", leader_tls).tls(),
            "mirror-off" => {
                let p = sm("mirror-off", None, None, false);
                Target::new("mirror-off", "statemirror, mirroring off", p.port)
                    .statemirror(p, false)
            }
            "mirror-on" => {
                let p = sm("mirror-on", Some((follower.port, false)), None, false);
                Target::new("mirror-on", "statemirror, mirroring on", p.port).statemirror(p, true)
            }
            // Multiplexed, mirroring on (db 0, like `mirror-on`). There is no multiplexed
            // mirroring-off target: it would have to use db 1 (see `Target::db`), and a
            // `SELECT 1` pins the client to a connection of its own.
            "mux-on" => {
                let f = Some((follower.port, false));
                let p = Statemirror::start(root, "mux-on", &bin, leader.port, f, None, false, true);
                Target::new("mux-on", "statemirror multiplexed, mirroring on", p.port)
                    .statemirror(p, true)
            }
            "mirror-cluster" => {
                let p = sm("mirror-cluster", Some((follower.port, false)), None, true);
                Target::new("mirror-cluster", "statemirror, [cluster] check", p.port)
                    .statemirror(p, false)
            }
            "tls-follower" | "tls-client" => {
                let certs = certs.expect("certificates");
                let client = key == "tls-client";
                let f = if client {
                    (follower.port, false)
                } else {
                    (follower_tls, true)
                };
                let name = if client { "tls-client" } else { "tls-follower" };
                let p = sm(name, Some(f), Some((certs, client)), false);
                let label = if client {
                    "statemirror, client TLS"
                } else {
                    "statemirror, follower TLS"
                };
                let t = Target::new(name, label, p.port).statemirror(p, false);
                if client {
                    t.tls()
                } else {
                    t
                }
            }
            "twemproxy" => match &tools.nutcracker {
                Some(bin) => {
                    let p = Twemproxy::start(root, bin, leader.port, 1);
                    let mut t = Target::new("twemproxy", "twemproxy (nutcracker)", p.port);
                    t.pid = Some(p.guard.child.id());
                    t.select = false;
                    t.transactions = false;
                    t._process = Some(Box::new(p));
                    t
                }
                None => {
                    println!("skipped twemproxy: nutcracker is not installed");
                    continue;
                }
            },
            other => panic!("BENCH_TARGETS: unknown target {other:?}"),
        };
        v.push(t);
    }
    v
}

fn wait_in_sync(admin: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !mirror_status(admin, "redis").in_sync && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (at most 60 s) for the mirror queue to empty; returns how long it took.
fn wait_drained(admin: u16) -> Duration {
    let started = Instant::now();
    while mirror_status(admin, "redis").queue_depth > 0
        && started.elapsed() < Duration::from_secs(60)
    {
        thread::sleep(Duration::from_millis(5));
    }
    started.elapsed()
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |v| format!("{v:.digits$}"))
}

fn report(
    rec: &mut Record,
    s: &Settings,
    targets: &[Target],
    results: &BTreeMap<(usize, usize), Vec<Sample>>,
) {
    let find = |k: &str| targets.iter().position(|t| t.key == k);
    let (direct, twem) = (find("direct"), find("twemproxy"));
    let med = |v: &[Sample], f: &dyn Fn(&Sample) -> Option<f64>| {
        let xs: Vec<f64> = v.iter().filter_map(f).collect();
        (!xs.is_empty()).then(|| median(&xs))
    };
    let rps = |test, ti| {
        results
            .get(&(test, ti))
            .and_then(|v| med(v, &|x| Some(x.rps)))
    };
    let total = |x: &Sample| x.cpu.iter().flatten().copied().reduce(|a, b| a + b);
    let mut thr = Vec::new();
    let mut cpu = Vec::new();
    let mut raw = Vec::new();
    for (tt, test) in TESTS.iter().enumerate() {
        for (ti, t) in targets.iter().enumerate() {
            let Some(v) = results.get(&(tt, ti)) else {
                continue;
            };
            let r = rps(tt, ti);
            let ratio = |base: Option<usize>| match (r, base.and_then(|b| rps(tt, b))) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                _ => "–".into(),
            };
            let name = format!("{} -P {}", test.name, test.pipeline);
            thr.push(vec![
                name.clone(),
                t.label.into(),
                fmt_opt(r, 0),
                ratio(direct),
                ratio(twem),
            ]);
            let tot = med(v, &total);
            let direct_tot = direct
                .and_then(|d| results.get(&(tt, d)))
                .and_then(|v| med(v, &total));
            let proxy_vs_twem = match (
                med(v, &|x| x.cpu[0]),
                twem.and_then(|w| results.get(&(tt, w)))
                    .and_then(|v| med(v, &|x| x.cpu[0])),
            ) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                _ => "–".into(),
            };
            cpu.push(vec![
                name.clone(),
                t.label.into(),
                fmt_opt(med(v, &|x| x.cpu[0]), 1),
                fmt_opt(med(v, &|x| x.cpu[1]), 1),
                fmt_opt(med(v, &|x| x.cpu[2]), 1),
                fmt_opt(tot, 1),
                match (tot, direct_tot) {
                    (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                    _ => "–".into(),
                },
                proxy_vs_twem,
            ]);
            raw.push(vec![
                name,
                t.label.into(),
                v.iter()
                    .map(|x| format!("{:.0}", x.rps))
                    .collect::<Vec<_>>()
                    .join(", "),
                fmt_opt(med(v, &|x| x.drain), 2),
                fmt_opt(v.iter().filter_map(|x| x.drain).reduce(f64::max), 2),
            ]);
        }
    }
    rec.line(&format!(
        "\n## Throughput (median of {} rounds)\n",
        s.rounds
    ));
    rec.table(
        &[
            "test",
            "target",
            "req/s",
            "ratio to direct",
            "ratio to twemproxy",
        ],
        &thr,
    );
    rec.line(&format!(
        "\n## CPU per request (utime + stime from /proc/<pid>/stat over the run, median of {} rounds)\n",
        s.rounds
    ));
    rec.table(
        &[
            "test",
            "target",
            "proxy µs/req",
            "leader redis-server µs/req",
            "follower redis-server µs/req",
            "total µs/req",
            "total ratio to direct",
            "proxy ratio to twemproxy",
        ],
        &cpu,
    );
    rec.line(
        "\nThe follower's CPU and the mirror's share of the proxy's are read after the mirror \
         queue drained. `/proc` times tick at 10 ms: short runs are coarse.",
    );
    rec.line("\n## Every round (req/s), and the mirror's drain time after each run\n");
    rec.table(
        &[
            "test",
            "target",
            "req/s per round",
            "drain median s",
            "drain max s",
        ],
        &raw,
    );
}

/// RSS growth per idle client of the target's proxy and of the leader redis-server.
fn idle_memory(t: &Target, leader: &Redis, n: usize) -> Vec<String> {
    if n == 0 {
        return vec![t.label.into(), "–".into(), "–".into(), "–".into()];
    }
    let rss = || (t.pid.map(rss_bytes), rss_bytes(leader.pid()));
    let clients_before = leader_clients(leader.port);
    let before = rss();
    let conns = drive::idle_clients(t.port, n);
    thread::sleep(Duration::from_millis(500));
    let after = rss();
    let server_conns = leader_clients(leader.port).saturating_sub(clients_before);
    drop(conns);
    thread::sleep(Duration::from_millis(500));
    let per = |b: u64, a: u64| format!("{:.1}", a.saturating_sub(b) as f64 / n as f64 / 1024.0);
    let proxy = match (before.0, after.0) {
        (Some(b), Some(a)) => per(b, a),
        _ => "–".into(),
    };
    println!("idle clients on {}: proxy {proxy} KiB, redis-server {} KiB per client, {server_conns} server connections", t.label, per(before.1, after.1));
    vec![
        t.label.into(),
        proxy,
        per(before.1, after.1),
        format!("{:.2}", server_conns as f64 / n as f64),
    ]
}

/// `connected_clients` of `INFO clients`.
fn leader_clients(port: u16) -> u64 {
    let mut r = Resp::connect(port).expect("connect leader");
    match r.call(&[b"INFO", b"clients"]) {
        Ok(common::Reply::Bulk(Some(b))) => String::from_utf8_lossy(&b)
            .lines()
            .find_map(|l| l.strip_prefix("connected_clients:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

/// Drains the mirror, drops the unmirrored targets' db 1 on the leader, and compares leader
/// and follower key by key (`GET /verify`). Panics when they differ, after printing.
fn final_check(t: &Target, leader: &Redis, follower: &Redis) -> String {
    let admin = t.admin.expect("mirrored target");
    let drained = wait_drained(admin);
    let mut r = Resp::connect(leader.port).expect("connect leader");
    r.call(&[b"SELECT", b"1"]).expect("SELECT 1");
    r.call(&[b"FLUSHDB"]).expect("FLUSHDB");
    let m = mirror_status(admin, "redis");
    let (code, body) = http_get(admin, "/verify?max=10").expect("GET /verify");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let rv = &v["redis"];
    let n = |k: &str| rv[k].as_u64().unwrap_or(u64::MAX);
    let equal = code == 200 && n("total_differences") == 0 && n("unreadable") == 0;
    let text = format!(
        "queue drained in {:.2} s: depth {}, in sync {}, mirrored writes {}, dropped {}, \
         failures {}; keys leader {} / follower {}; `GET /verify`: {} equal, {} different, {} \
         missing on follower, {} extra on follower, {} unreadable → **{}**",
        drained.as_secs_f64(),
        m.queue_depth,
        m.in_sync,
        m.mirrored,
        m.dropped,
        m.failures,
        dbsize(leader.port),
        dbsize(follower.port),
        n("equal"),
        n("different"),
        n("missing_on_follower"),
        n("extra_on_follower"),
        n("unreadable"),
        if equal {
            "equal key by key"
        } else {
            "DIFFERENT"
        },
    );
    if !equal {
        eprintln!("GET /verify ({code}): {body}");
    }
    text
}
