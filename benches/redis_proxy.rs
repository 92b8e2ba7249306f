//! Throughput of `redis-benchmark` against Redis directly, through statemirror (mirroring off
//! and on) and through twemproxy (nutcracker) when it is installed.
//!
//! ```text
//! cargo bench --bench redis_proxy
//! BENCH_REQUESTS=20000 BENCH_REPEAT=1 cargo bench --bench redis_proxy   # quick
//! ```
//!
//! Every server runs in its own process, like in production: `redis-server` on free loopback
//! ports (`--save '' --appendonly no`), the release `statemirror` binary with a config derived
//! from `config/redis.toml`, and `nutcracker` with a generated pool. All of them are killed when
//! the benchmark ends, also on panic (drop guards).
//!
//! Environment:
//! - `BENCH_REQUESTS`: requests per `redis-benchmark` run at pipeline 1 (default 200000);
//! - `BENCH_REQUESTS_P16`: requests per run at pipeline 16 (default 5 x `BENCH_REQUESTS`);
//! - `BENCH_REPEAT`: runs per cell, the median is reported (default 3);
//! - `BENCH_CLIENTS`: `redis-benchmark -c` (default 50);
//! - `BENCH_TARGETS`: comma-separated subset of `direct,mirror-off,mirror-on,mirror-cluster,twemproxy`
//!   and the TLS ones `direct-tls,tls-follower,tls-client`
//!   (`mirror-cluster`: mirroring on with `[cluster]`, so every mirrored key is also checked
//!   against the leader: the cost of convergence across sidecars; `direct-tls`: Redis's own
//!   TLS port; `tls-follower`: mirroring on, the follower over `rediss://`; `tls-client`:
//!   mirroring on, clients over TLS to statemirror's listener — certificates are made at
//!   start with rcgen, redis-benchmark runs with `--tls`);
//! - `BENCH_TIMEOUT_SECS`: give up on one `redis-benchmark` run after this long (default 300);
//! - `STATEMIRROR_BIN`: use this binary instead of the one cargo built.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it does nothing.

mod common;

use std::collections::BTreeMap;
use std::env;
use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    command, dbsize, env_list, env_num, find_program, free_port, median, mirror_status,
    program_version, redis_config, start_statemirror, statemirror_bin, Guard, Mirror,
    RedisServer as Redis,
};

/// `-r` keyspace for the random-key SET run: with a single hot key the mirror coalesces
/// writes, so this is the run that shows what mirroring every write costs.
const RANDOM_KEYSPACE: u32 = 100_000;

fn main() {
    if !env::args().any(|a| a == "--bench") {
        println!(
            "redis_proxy: benchmark skipped in test mode; run `cargo bench --bench redis_proxy`"
        );
        return;
    }
    let settings = Settings::from_env();
    let tools = Tools::find();
    let dir = tempfile::Builder::new()
        .prefix("statemirror-bench-")
        .tempdir()
        .expect("temp dir");
    let root = dir.path();

    println!("# statemirror Redis proxy benchmark\n");
    println!(
        "redis-benchmark -c {} -t set,get -q --csv, then -t set -r {RANDOM_KEYSPACE}; \
         {} requests at -P 1, {} at -P 16; median of {} run(s); {} CPU(s) shared by every process.",
        settings.clients,
        settings.requests_p1,
        settings.requests_p16,
        settings.repeat,
        thread::available_parallelism().map_or(0, |n| n.get()),
    );
    println!("{}\n", tools.versions());

    let certs = Certs::make(root);
    let leader_tls_port = free_port();
    let follower_tls_port = free_port();
    let leader = Redis::start_with(
        root,
        "leader",
        &tools.redis_server,
        &certs.redis_args(leader_tls_port),
    );
    let follower = Redis::start_with(
        root,
        "follower",
        &tools.redis_server,
        &certs.redis_args(follower_tls_port),
    );

    let mut targets: Vec<Target> = Vec::new();
    let mut skipped: Vec<String> = Vec::new();
    if settings.wants("direct") {
        targets.push(Target::new(
            "direct",
            "Redis direct",
            leader.port,
            None,
            None,
        ));
    }
    if settings.wants("direct-tls") {
        targets.push(
            Target::new(
                "direct-tls",
                "Redis direct, TLS",
                leader_tls_port,
                None,
                None,
            )
            .tls(),
        );
    }
    if settings.wants("mirror-off")
        || settings.wants("mirror-on")
        || settings.wants("mirror-cluster")
        || settings.wants("tls-follower")
        || settings.wants("tls-client")
    {
        let bin = statemirror_bin();
        println!("statemirror binary: {}", bin.display());
        if settings.wants("mirror-off") {
            let p = Statemirror::start(root, "mirror-off", &bin, leader.port, None, false);
            targets.push(Target::new(
                "mirror-off",
                "statemirror, mirroring off",
                p.port,
                None,
                Some(Box::new(p)),
            ));
        }
        if settings.wants("mirror-on") {
            let p = Statemirror::start(
                root,
                "mirror-on",
                &bin,
                leader.port,
                Some(follower.port),
                false,
            );
            targets.push(Target::new(
                "mirror-on",
                "statemirror, mirroring on",
                p.port,
                Some(p.admin_port),
                Some(Box::new(p)),
            ));
        }
        for (key, label, follower_tls, client_tls) in [
            ("tls-follower", "statemirror, follower TLS", true, false),
            ("tls-client", "statemirror, client TLS", false, true),
        ] {
            if !settings.wants(key) {
                continue;
            }
            let p = Statemirror::start_tls(
                root,
                key,
                &bin,
                leader.port,
                if follower_tls {
                    (follower_tls_port, true)
                } else {
                    (follower.port, false)
                },
                &certs,
                client_tls,
            );
            let t = Target::new(key, label, p.port, Some(p.admin_port), Some(Box::new(p)));
            targets.push(if client_tls { t.tls() } else { t });
        }
        if settings.wants("mirror-cluster") {
            let p = Statemirror::start(
                root,
                "mirror-cluster",
                &bin,
                leader.port,
                Some(follower.port),
                true,
            );
            targets.push(Target::new(
                "mirror-cluster",
                "statemirror, [cluster] check",
                p.port,
                Some(p.admin_port),
                Some(Box::new(p)),
            ));
        }
    }
    if settings.wants("twemproxy") {
        match &tools.nutcracker {
            Some(bin) => {
                let t = Twemproxy::start(root, bin, leader.port);
                targets.push(Target::new(
                    "twemproxy",
                    "twemproxy (nutcracker)",
                    t.port,
                    None,
                    Some(Box::new(t)),
                ));
            }
            None => skipped.push("twemproxy: nutcracker is not installed".into()),
        }
    }
    println!();

    let runs = [
        Run {
            tests: "set,get",
            random: false,
        },
        Run {
            tests: "set",
            random: true,
        },
    ];
    // (target, test label, pipeline) -> req/s of every repeat.
    let mut results: BTreeMap<(usize, String, u32), Vec<f64>> = BTreeMap::new();
    let mut mirror_rows: Vec<MirrorRow> = Vec::new();
    for (ti, target) in targets.iter().enumerate() {
        for pipeline in [1u32, 16] {
            let requests = settings.requests(pipeline);
            for run in &runs {
                for rep in 1..=settings.repeat {
                    flushall(&leader, &follower);
                    let before = target.admin.map(|a| mirror_status(a, "redis"));
                    let started = Instant::now();
                    let tls = target.tls.then_some(&certs.ca_file);
                    let rows = redis_benchmark(
                        &tools,
                        &settings,
                        target.port,
                        tls,
                        requests,
                        pipeline,
                        run,
                    );
                    let elapsed = started.elapsed();
                    let mut line = format!(
                        "{:<28} {:<24} -P {:<2} run {rep}/{}:",
                        target.label,
                        run.label(),
                        pipeline,
                        settings.repeat
                    );
                    for (test, rps) in &rows {
                        let _ = write!(line, " {test} {rps:.0} req/s");
                        let label = if run.random {
                            format!("{test} -r {RANDOM_KEYSPACE}")
                        } else {
                            test.clone()
                        };
                        results.entry((ti, label, pipeline)).or_default().push(*rps);
                    }
                    println!("{line} ({:.1} s)", elapsed.as_secs_f64());
                    if let (Some(admin), Some(before)) = (target.admin, before) {
                        let row = mirror_drain(
                            admin, &before, &leader, &follower, run, pipeline, requests,
                        );
                        println!("    {}", row.describe());
                        if target.key == "mirror-cluster" {
                            println!("    converge: {}", converge_status(admin));
                        }
                        mirror_rows.push(row);
                    }
                }
            }
        }
    }

    println!("\n## Results (req/s, median of {})\n", settings.repeat);
    println!("| target | test | pipeline | req/s | ratio to direct |");
    println!("|---|---|---:|---:|---:|");
    let direct = targets.iter().position(|t| t.key == "direct");
    let mut keys: Vec<_> = results.keys().cloned().collect();
    // Group by test and pipeline, then target order, so each comparison sits together.
    keys.sort_by(|a, b| (&a.1, a.2, a.0).cmp(&(&b.1, b.2, b.0)));
    for key in keys {
        let (ti, test, pipeline) = &key;
        let m = median(&results[&key]);
        let ratio = direct
            .and_then(|d| results.get(&(d, test.clone(), *pipeline)))
            .map(|v| median(v))
            .filter(|d| *d > 0.0)
            .map_or("n/a".to_string(), |d| format!("{:.2}", m / d));
        println!(
            "| {} | {} | {} | {:.0} | {} |",
            targets[*ti].label, test, pipeline, m, ratio
        );
    }

    if !mirror_rows.is_empty() {
        println!("\n## Mirror (statemirror, mirroring on), after each run\n");
        println!(
            "| run | pipeline | requests | mirrored writes | drained in | queue depth | in sync | dropped | leader keys | follower keys |"
        );
        println!("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|");
        for r in &mirror_rows {
            println!(
                "| {} | {} | {} | {} | {:.2} s | {} | {} | {} | {} | {} |",
                r.run,
                r.pipeline,
                r.requests,
                r.mirrored,
                r.drain.as_secs_f64(),
                r.queue_depth,
                r.in_sync,
                r.dropped,
                r.leader_keys,
                r.follower_keys
            );
        }
        println!(
            "\n`mirrored writes` counts follower applies; writes to one hot key coalesce, \
             so it can be far below the number of SETs."
        );
    }
    for s in &skipped {
        println!("\nskipped {s}");
    }
    // Drop order: proxies (in `targets`), then the Redis servers, then the temp dir.
    drop(targets);
}

struct Settings {
    requests_p1: u64,
    requests_p16: u64,
    repeat: usize,
    clients: u32,
    targets: Option<Vec<String>>,
    timeout: Duration,
}

impl Settings {
    fn from_env() -> Self {
        let requests_p1 = env_num("BENCH_REQUESTS", 200_000u64).max(1);
        Settings {
            requests_p1,
            requests_p16: env_num("BENCH_REQUESTS_P16", requests_p1 * 5).max(1),
            repeat: env_num("BENCH_REPEAT", 3usize).max(1),
            clients: env_num("BENCH_CLIENTS", 50u32).max(1),
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

    fn requests(&self, pipeline: u32) -> u64 {
        if pipeline > 1 {
            self.requests_p16
        } else {
            self.requests_p1
        }
    }
}

struct Run {
    tests: &'static str,
    random: bool,
}

impl Run {
    fn label(&self) -> String {
        if self.random {
            format!("{} -r {RANDOM_KEYSPACE}", self.tests)
        } else {
            self.tests.to_string()
        }
    }
}

struct Target {
    key: &'static str,
    label: &'static str,
    port: u16,
    /// Admin port of a statemirror with mirroring on.
    admin: Option<u16>,
    /// Clients connect with TLS (`redis-benchmark --tls`).
    tls: bool,
    _process: Option<Box<dyn Send>>,
}

impl Target {
    fn new(
        key: &'static str,
        label: &'static str,
        port: u16,
        admin: Option<u16>,
        process: Option<Box<dyn Send>>,
    ) -> Self {
        Target {
            key,
            label,
            port,
            admin,
            tls: false,
            _process: process,
        }
    }

    fn tls(mut self) -> Self {
        self.tls = true;
        self
    }
}

/// A CA and one certificate for `127.0.0.1`/`localhost` that every TLS server here presents
/// (and that statemirror trusts through `ca_file`), made with rcgen at start.
struct Certs {
    ca_file: PathBuf,
    cert_file: PathBuf,
    key_file: PathBuf,
}

impl Certs {
    fn make(root: &Path) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().expect("CA key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct subjects: OpenSSL takes a leaf whose subject is its issuer's for a
        // self-signed certificate (rcgen's default subject is the same for both).
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "statemirror bench CA");
        let ca = p.self_signed(&ca_key).expect("CA");
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("params");
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let cert = p.signed_by(&key, &ca, &ca_key).expect("cert");
        let dir = root.join("tls");
        fs::create_dir_all(&dir).expect("tls dir");
        let w = |name: &str, text: String| {
            let p = dir.join(name);
            fs::write(&p, text).expect("write cert");
            p
        };
        Certs {
            ca_file: w("ca.pem", ca.pem()),
            cert_file: w("cert.pem", cert.pem()),
            key_file: w("key.pem", key.serialize_pem()),
        }
    }

    /// `redis-server` arguments for a TLS port beside the plain one (no client certificates).
    fn redis_args(&self, tls_port: u16) -> Vec<String> {
        vec![
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            self.cert_file.display().to_string(),
            "--tls-key-file".into(),
            self.key_file.display().to_string(),
            "--tls-ca-cert-file".into(),
            self.ca_file.display().to_string(),
            "--tls-auth-clients".into(),
            "no".into(),
        ]
    }
}

/// External programs.
struct Tools {
    redis_server: PathBuf,
    redis_benchmark: PathBuf,
    nutcracker: Option<PathBuf>,
}

impl Tools {
    fn find() -> Self {
        let need = |name: &str| {
            find_program(name).unwrap_or_else(|| {
                panic!("{name} not found: run scripts/install-deps.sh (installs redis-server redis-tools nutcracker)")
            })
        };
        Tools {
            redis_server: need("redis-server"),
            redis_benchmark: need("redis-benchmark"),
            nutcracker: find_program("nutcracker"),
        }
    }

    fn versions(&self) -> String {
        let version = program_version;
        let mut s = format!(
            "{}; {}",
            version(&self.redis_server, "--version"),
            version(&self.redis_benchmark, "--version")
        );
        if let Some(n) = &self.nutcracker {
            let _ = write!(s, "; {}", version(n, "--version"));
        }
        s
    }
}

struct Statemirror {
    port: u16,
    admin_port: u16,
    _guard: Guard,
}

impl Statemirror {
    /// Starts the binary with `config/redis.toml`, re-pointed at these ports.
    fn start(
        root: &Path,
        name: &str,
        bin: &Path,
        leader: u16,
        follower: Option<u16>,
        cluster: bool,
    ) -> Self {
        let port = free_port();
        let admin_port = free_port();
        let mut cfg = redis_config(port, admin_port, leader, follower);
        if cluster {
            let mut c = toml::Table::new();
            c.insert("node_name".into(), "bench".into());
            cfg.insert("cluster".into(), c.into());
        }
        let guard = start_statemirror(&root.join(name), name, bin, &cfg, admin_port);
        Statemirror {
            port,
            admin_port,
            _guard: guard,
        }
    }
}

impl Statemirror {
    /// Mirroring on; the follower (`port`, TLS or not) and the client listener over TLS or not.
    #[allow(clippy::too_many_arguments)]
    fn start_tls(
        root: &Path,
        name: &str,
        bin: &Path,
        leader: u16,
        (follower, follower_tls): (u16, bool),
        certs: &Certs,
        client_tls: bool,
    ) -> Self {
        let port = free_port();
        let admin_port = free_port();
        let mut cfg = redis_config(port, admin_port, leader, Some(follower));
        let path = |p: &Path| toml::Value::from(p.display().to_string());
        if let Some(toml::Value::Table(r)) = cfg.get_mut("redis") {
            if follower_tls {
                r.insert(
                    "follower".into(),
                    format!("rediss://127.0.0.1:{follower}").into(),
                );
                let mut t = toml::Table::new();
                t.insert("ca_file".into(), path(&certs.ca_file));
                r.insert("follower_tls".into(), t.into());
            }
            if client_tls {
                let mut t = toml::Table::new();
                t.insert("cert_file".into(), path(&certs.cert_file));
                t.insert("key_file".into(), path(&certs.key_file));
                r.insert("listen_tls".into(), t.into());
            }
        }
        let guard = start_statemirror(&root.join(name), name, bin, &cfg, admin_port);
        Statemirror {
            port,
            admin_port,
            _guard: guard,
        }
    }
}

struct Twemproxy {
    port: u16,
    _guard: Guard,
}

impl Twemproxy {
    fn start(root: &Path, bin: &Path, leader: u16) -> Self {
        let dir = root.join("twemproxy");
        fs::create_dir_all(&dir).expect("twemproxy dir");
        let port = free_port();
        let stats_port = free_port();
        let config = dir.join("nutcracker.yml");
        let yaml = format!(
            "bench:\n  listen: 127.0.0.1:{port}\n  hash: fnv1a_64\n  distribution: ketama\n  \
             redis: true\n  preconnect: true\n  auto_eject_hosts: false\n  timeout: 5000\n  \
             server_connections: 1\n  servers:\n    - 127.0.0.1:{leader}:1\n"
        );
        fs::write(&config, yaml).expect("write nutcracker.yml");
        let log = dir.join("nutcracker.log");
        let mut guard = Guard::spawn(
            "nutcracker",
            Command::new(bin)
                .arg("-c")
                .arg(&config)
                .args(["-s", &stats_port.to_string(), "-a", "127.0.0.1"])
                .arg("-o")
                .arg(&log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        guard.wait_listening(port, Duration::from_secs(10), Some(&log));
        Twemproxy {
            port,
            _guard: guard,
        }
    }
}

/// One `redis-benchmark` run; returns (test, req/s) per test in its CSV output.
fn redis_benchmark(
    tools: &Tools,
    settings: &Settings,
    port: u16,
    tls_ca: Option<&PathBuf>,
    requests: u64,
    pipeline: u32,
    run: &Run,
) -> Vec<(String, f64)> {
    let mut cmd = Command::new(&tools.redis_benchmark);
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-c", &settings.clients.to_string()])
        .args(["-n", &requests.to_string()])
        .args(["-t", run.tests])
        .args(["-P", &pipeline.to_string()]);
    if run.random {
        cmd.args(["-r", &RANDOM_KEYSPACE.to_string()]);
    }
    if let Some(ca) = tls_ca {
        cmd.arg("--tls").arg("--cacert").arg(ca);
    }
    cmd.args(["-q", "--csv"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut guard = Guard::spawn("redis-benchmark", &mut cmd);
    let out = reader(guard.child.stdout.take());
    let err = reader(guard.child.stderr.take());
    let deadline = Instant::now() + settings.timeout;
    let status = loop {
        if let Some(s) = guard.child.try_wait().expect("wait for redis-benchmark") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "redis-benchmark on port {port} did not finish within {:?}",
            settings.timeout
        );
        thread::sleep(Duration::from_millis(50));
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    assert!(
        status.success(),
        "redis-benchmark on port {port} failed ({status}):\n{out}\n{err}"
    );
    let rows = parse_csv(&out);
    assert!(
        !rows.is_empty(),
        "no results from redis-benchmark on port {port}:\n{out}\n{err}"
    );
    rows
}

fn reader<R: Read + Send + 'static>(r: Option<R>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut r) = r {
            let _ = r.read_to_string(&mut s);
        }
        s
    })
}

/// `"SET","123456.79",...` lines; the header and progress lines do not parse and are skipped.
fn parse_csv(out: &str) -> Vec<(String, f64)> {
    out.lines()
        .filter_map(|l| {
            let l = l.rsplit('\r').next().unwrap_or(l);
            let mut f = l.split(',').map(|f| f.trim().trim_matches('"'));
            let test = f.next()?.to_string();
            let rps: f64 = f.next()?.parse().ok()?;
            Some((test, rps))
        })
        .collect()
}

fn flushall(leader: &Redis, follower: &Redis) {
    for r in [leader, follower] {
        command(r.port, &["FLUSHALL"]).expect("FLUSHALL");
    }
}

struct MirrorRow {
    run: String,
    pipeline: u32,
    requests: u64,
    mirrored: u64,
    dropped: u64,
    drain: Duration,
    queue_depth: u64,
    in_sync: bool,
    leader_keys: u64,
    follower_keys: u64,
}

impl MirrorRow {
    fn describe(&self) -> String {
        format!(
            "mirror: +{} mirrored writes, queue depth {} after {:.2} s, in sync {}, +{} dropped; keys leader {} follower {}",
            self.mirrored,
            self.queue_depth,
            self.drain.as_secs_f64(),
            self.in_sync,
            self.dropped,
            self.leader_keys,
            self.follower_keys
        )
    }
}

/// Waits (at most 30 s) for the mirror queue to empty and reports what it did during the run.
fn mirror_drain(
    admin: u16,
    before: &Mirror,
    leader: &Redis,
    follower: &Redis,
    run: &Run,
    pipeline: u32,
    requests: u64,
) -> MirrorRow {
    let started = Instant::now();
    let mut now = mirror_status(admin, "redis");
    while now.queue_depth > 0 && started.elapsed() < Duration::from_secs(30) {
        thread::sleep(Duration::from_millis(20));
        now = mirror_status(admin, "redis");
    }
    MirrorRow {
        run: run.label(),
        pipeline,
        requests,
        mirrored: now.mirrored.saturating_sub(before.mirrored),
        dropped: now.dropped.saturating_sub(before.dropped),
        drain: started.elapsed(),
        queue_depth: now.queue_depth,
        in_sync: now.in_sync,
        leader_keys: dbsize(leader.port),
        follower_keys: dbsize(follower.port),
    }
}

/// The cross-sidecar check's counters (`/status` `redis.converge`), once it is idle.
fn converge_status(admin: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let body = common::http_get(admin, "/status").map_or_else(|e| e.to_string(), |(_, b)| b);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let c = &v["redis"]["converge"];
        if (c["pending"] == 0 && c["running"] == false) || Instant::now() > deadline {
            return c.to_string();
        }
        thread::sleep(Duration::from_millis(50));
    }
}
