//! What statemirror's memory costs, measured on the release binary with real servers:
//! - **per idle client**: RSS growth of the sidecar for N connected, idle Redis clients;
//! - **per queued op**: with the follower frozen (`SIGSTOP`), RSS growth of the sidecar per
//!   write waiting in the mirror queue, next to what the queue counts against
//!   `max_queue_bytes` for it (`queue_bytes / queue_depth`). The first must not exceed the
//!   second by much: that is what makes `max_queue_bytes` a real memory bound.
//!
//! ```text
//! cargo bench --bench memory
//! ```
//!
//! Environment: `BENCH_IDLE_CLIENTS` (default 400: the sidecar holds two descriptors per
//! client, under the usual 1024 limit), `BENCH_QUEUED_OPS` (default 50000), `BENCH_VALUE`
//! (bytes per `SET` value, default 100).
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it does nothing.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    env_num, find_program, free_port, mirror_status, redis_config, rss_bytes, start_statemirror,
    statemirror_bin, RedisServer as Redis,
};

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("memory: benchmark skipped in test mode; run `cargo bench --bench memory`");
        return;
    }
    let clients: usize = env_num("BENCH_IDLE_CLIENTS", 400);
    let ops: u64 = env_num("BENCH_QUEUED_OPS", 50_000);
    let value: usize = env_num("BENCH_VALUE", 100);
    let redis_bin = find_program("redis-server").expect("redis-server (scripts/install-deps.sh)");
    let bench_bin =
        find_program("redis-benchmark").expect("redis-benchmark (scripts/install-deps.sh)");
    let dir = tempfile::Builder::new()
        .prefix("statemirror-mem-")
        .tempdir()
        .expect("temp dir");
    let root = dir.path();
    let bin = statemirror_bin();
    let leader = Redis::start(root, "leader", &redis_bin);
    let follower = Redis::start(root, "follower", &redis_bin);
    let (port, admin) = (free_port(), free_port());
    let mut cfg = redis_config(port, admin, leader.port, Some(follower.port));
    if let Some(r) = cfg.get_mut("replication").and_then(|v| v.as_table_mut()) {
        // Large enough that the measured ops all fit: this measures, not overflows.
        r.insert("max_queue_bytes".into(), toml::Value::Integer(1 << 30));
        r.insert("max_queue_ops".into(), toml::Value::Integer(10_000_000));
    }
    let proxy = start_statemirror(root, "statemirror", &bin, &cfg, admin);
    let pid = proxy.child.id();
    wait_until(Duration::from_secs(20), || {
        mirror_status(admin, "redis").in_sync
    });

    // Idle clients: connect, one PING each (the session and its leader connection exist),
    // then nothing.
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_bytes(pid);
    let mut idle = Vec::with_capacity(clients);
    for _ in 0..clients {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        s.write_all(b"PING\r\n").expect("PING");
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).expect("PONG");
        idle.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    let per_client = rss_bytes(pid).saturating_sub(before) as f64 / clients as f64;
    drop(idle);
    std::thread::sleep(Duration::from_millis(500));

    // Queued ops: freeze the follower, write `ops` distinct keys, read what is queued.
    signal(follower.pid(), "STOP");
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_bytes(pid);
    let t0 = Instant::now();
    let st = Command::new(&bench_bin)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", "set", "-n", &ops.to_string(), "-r", "100000000"])
        .args(["-d", &value.to_string(), "-c", "50", "-q"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("redis-benchmark");
    assert!(st.success(), "redis-benchmark failed");
    let rate = ops as f64 / t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    let grown = rss_bytes(pid).saturating_sub(before);
    let status = common::http_get(admin, "/status").expect("status").1;
    let v: serde_json::Value = serde_json::from_str(&status).expect("JSON");
    let m = &v["redis"]["mirror"];
    let depth = m["queue_depth"].as_u64().unwrap_or(0).max(1);
    let counted = m["queue_bytes"].as_u64().unwrap_or(0);
    signal(follower.pid(), "CONT");
    wait_until(Duration::from_secs(60), || {
        mirror_status(admin, "redis").queue_depth == 0
    });
    let version = common::program_version(&bin, "--version");
    println!(
        "## memory ({version}, release build, redis-server {})",
        common::program_version(&redis_bin, "--version")
    );
    println!();
    println!("| what | value |");
    println!("|---|---|");
    println!("| idle clients | {clients} |");
    println!(
        "| RSS per idle client (sidecar only; each also has a leader connection) | {:.1} KiB |",
        per_client / 1024.0
    );
    println!("| writes queued (follower SIGSTOPped, {value}-byte SETs, {rate:.0}/s) | {depth} |");
    println!(
        "| RSS growth per queued write | {:.0} bytes |",
        grown as f64 / depth as f64
    );
    println!(
        "| counted against max_queue_bytes per queued write | {:.0} bytes |",
        counted as f64 / depth as f64
    );
    println!(
        "| RSS growth / counted | {:.2} |",
        grown as f64 / counted.max(1) as f64
    );
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{sig} {pid}");
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
