//! Issue 10 part 1, resyncs in a cluster: three real `statemirror` processes over one leader
//! and one follower (node `a` reaching the follower through a relay adding 300 ms each way),
//! for Redis and for ZooKeeper, with NiFi-style writes through all three the whole time:
//! - the three start (each resyncs at start: nothing recorded a clean stop yet);
//! - rolling restart: each in turn gets SIGTERM, exits 0, starts again with the same config
//!   and does **not** resync at start (its clean stop was recorded in the leader);
//! - `POST /resync` on `a` and `b` at once: the two runs take turns (the cluster's resync
//!   lease), and the one waiting says so in `/status` (`resync.waiting_for_lease`);
//! - `c` SIGKILLed and started again: it **does** resync at start;
//! - at no point do two sidecars resync at once (`/status` of all three read every 50 ms:
//!   never two `running` in two polls in a row, and no two runs' time spans overlap);
//! - writes stopped, every sidecar drained: the follower equals the leader (statemirror's
//!   own keys/znodes left out) and `GET /verify` reports no difference.
//!
//! Each writer owns its NiFi entries, as a NiFi primary-node-only component owns its
//! cluster state (Redis: `WATCH` → `GET` → `MULTI` → `GETSET` → `EXEC`, retried when `EXEC`
//! answers nil; ZooKeeper: `getData`, `setData` at the version read, `create` on `NONODE`).
//! Shared hot entries would defeat the clean stops under test: the far sidecar's
//! cross-sidecar checks (Redis `[cluster] converge`) keep conflicting with the other two
//! sidecars' writes landing in between, so its SIGTERM drain never ends before
//! `drain_timeout_ms`, no clean stop is recorded, and it resyncs at start (safe, and what
//! `tests/cluster_converge.rs` covers with writes stopped). ZooKeeper has no cross-sidecar
//! check on this branch: a resync copy made through one sidecar can land after a write
//! mirrored by another, so every entry is written once more after the last resync before
//! comparing.
//! Every wait is bounded; nothing asserts on durations. One scenario at a time (`SERIAL`).
mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::fault::{Fault, FaultRelay};
use common::zk::{compare_trees, persistent, zkc, ZkServer};
use common::*;
use serde_json::Value;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Entries each writer cycles through (its own).
const KEYS: usize = 41;
const NAMES: [&str; 3] = ["a", "b", "c"];

#[derive(Clone, Copy, PartialEq)]
enum Proto {
    Redis,
    Zk,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Redis => "redis",
            Proto::Zk => "zookeeper",
        }
    }
}

/// One sidecar: its config file stays, its process comes and goes.
struct Node {
    name: &'static str,
    proc: Option<BinProxy>,
    cfg: tempfile::NamedTempFile,
    admin: String,
    url: String,
}

impl Node {
    fn new(proto: Proto, name: &'static str, leader: &str, follower: &str) -> Node {
        let (port, admin_port) = (free_port(), free_port());
        let section = match proto {
            Proto::Redis => format!(
                "[redis]\nlisten = \"127.0.0.1:{port}\"\nleader = \"{leader}\"\n\
                 follower = \"{follower}\"\nconnect_timeout_ms = 1000\nhealth_interval_ms = 200\n"
            ),
            Proto::Zk => format!(
                "[zookeeper]\nlisten = \"127.0.0.1:{port}\"\nleader = \"{leader}\"\n\
                 follower = \"{follower}\"\n"
            ),
        };
        let cfg = tempfile::NamedTempFile::new().expect("temp");
        // Resyncs are paced so that two asked for at once visibly take turns.
        std::fs::write(
            cfg.path(),
            format!(
                "[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n[log]\nlevel = \"warn\"\n{section}\
                 [replication]\nretry_initial_backoff_ms = 20\nretry_max_backoff_ms = 300\n\
                 [maintenance]\ndrain_timeout_ms = 10000\n\
                 [resync]\nretry_interval_ms = 300\nmax_keys_per_second = 150\n\
                 [cluster]\nnode_name = \"{name}\"\nmember_ttl_ms = 3000\n"
            ),
        )
        .expect("write config");
        let url = match proto {
            Proto::Redis => format!("redis://127.0.0.1:{port}"),
            Proto::Zk => format!("127.0.0.1:{port}"),
        };
        Node {
            name,
            proc: None,
            cfg,
            admin: format!("http://127.0.0.1:{admin_port}"),
            url,
        }
    }

    async fn start(&mut self) {
        self.proc = Some(BinProxy::start(self.cfg.path(), &self.admin, &self.url).await);
    }

    /// SIGTERM; asserts a clean exit (exit 0) within 30 s.
    async fn terminate(&mut self) {
        let mut p = self.proc.take().expect("running");
        let exit = tokio::task::spawn_blocking(move || p.terminate(Duration::from_secs(30)))
            .await
            .expect("join");
        let exit =
            exit.unwrap_or_else(|| panic!("{} did not exit within 30 s of SIGTERM", self.name));
        assert!(exit.success(), "{}: exit status {exit:?}", self.name);
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    async fn status(&self) -> Value {
        status(&self.admin).await.unwrap_or_default()
    }
}

async fn status(admin: &str) -> Option<Value> {
    let (code, body) = statemirror::admin::client::request(
        admin,
        hyper::Method::GET,
        "/status",
        None,
        Duration::from_secs(2),
    )
    .await
    .ok()?;
    (code == 200).then(|| serde_json::from_str(&body).ok())?
}

// ---------------------------------------------------------------------------------------
// The writers
// ---------------------------------------------------------------------------------------

/// One writer per sidecar, through it only; counts full passes over its entries.
struct Writers {
    stop: Arc<AtomicBool>,
    cycles: Vec<Arc<AtomicU64>>,
    ok: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    fn start(proto: Proto, urls: &[String]) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let cycles: Vec<_> = urls.iter().map(|_| Arc::new(AtomicU64::new(0))).collect();
        let tasks = urls
            .iter()
            .enumerate()
            .map(|(w, url)| {
                let (url, stop, ok, cycles) =
                    (url.clone(), stop.clone(), ok.clone(), cycles[w].clone());
                tokio::spawn(async move {
                    match proto {
                        Proto::Redis => redis_writer(w, &url, &stop, &ok, &cycles).await,
                        Proto::Zk => zk_writer(w, &url, &stop, &ok, &cycles).await,
                    }
                })
            })
            .collect();
        Writers {
            stop,
            cycles,
            ok,
            tasks,
        }
    }

    /// Waits until every writer completed two more passes (so one whole pass began after
    /// now).
    async fn two_more_passes(&self) {
        let base: Vec<u64> = self
            .cycles
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        eventually(Duration::from_secs(30), || async {
            let now: Vec<u64> = self
                .cycles
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect();
            if now.iter().zip(&base).all(|(n, b)| *n >= b + 2) {
                Ok(())
            } else {
                Err(format!("passes {now:?} (from {base:?})"))
            }
        })
        .await
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        self.ok.load(Ordering::Relaxed)
    }
}

/// Writer `w`'s order over the entries (each writer its own).
fn entry(w: usize, j: usize) -> usize {
    (j * (w + 1) * 7 + w) % KEYS
}

fn redis_key(w: usize, i: usize) -> String {
    format!("nifi/components/{w:04x}{i:04x}-0000-4000-8000-000000000000")
}

/// NiFi's `replace(old, new)`: true when `EXEC` ran it, false when it answered nil.
async fn nifi_replace(
    c: &mut redis::aio::MultiplexedConnection,
    key: &str,
    value: &str,
) -> redis::RedisResult<bool> {
    redis::cmd("WATCH").arg(key).query_async::<()>(c).await?;
    redis::cmd("GET")
        .arg(key)
        .query_async::<Option<String>>(c)
        .await?;
    let mut p = redis::pipe();
    p.atomic().cmd("GETSET").arg(key).arg(value);
    let r: Option<(Option<String>,)> = p.query_async(c).await?;
    Ok(r.is_some())
}

async fn redis_writer(w: usize, url: &str, stop: &AtomicBool, ok: &AtomicU64, cycles: &AtomicU64) {
    let mut conn: Option<redis::aio::MultiplexedConnection> = None;
    let mut pass = 0u64;
    'passes: while !stop.load(Ordering::Relaxed) {
        for j in 0..KEYS {
            let i = entry(w, j);
            let value = format!("{{\"by\":{w},\"pass\":{pass},\"i\":{i}}}");
            loop {
                if stop.load(Ordering::Relaxed) {
                    break 'passes;
                }
                if conn.is_none() {
                    let c = tokio::time::timeout(Duration::from_secs(2), async {
                        redis::Client::open(url)
                            .ok()?
                            .get_multiplexed_async_connection()
                            .await
                            .ok()
                    })
                    .await;
                    match c {
                        Ok(Some(c)) => conn = Some(c),
                        _ => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    }
                }
                let Some(c) = conn.as_mut() else { continue };
                match tokio::time::timeout(
                    Duration::from_secs(3),
                    nifi_replace(c, &redis_key(w, i), &value),
                )
                .await
                {
                    Ok(Ok(true)) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Ok(Ok(false)) => {} // EXEC answered nil (the key changed since WATCH): NiFi retries
                    _ => {
                        // The sidecar is restarting (or refused): a new connection.
                        conn = None;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        pass += 1;
        cycles.fetch_add(1, Ordering::Relaxed);
    }
}

async fn zk_open(url: &str) -> Option<zkc::Client> {
    let connector = zkc::Client::connector()
        .with_session_timeout(Duration::from_secs(10))
        .with_connection_timeout(Duration::from_secs(2));
    let c = tokio::time::timeout(Duration::from_secs(3), connector.connect(url))
        .await
        .ok()?
        .ok()?;
    match tokio::time::timeout(
        Duration::from_secs(3),
        c.mkdir("/nifi/components", &persistent()),
    )
    .await
    {
        Ok(Ok(())) | Ok(Err(zkc::Error::NodeExists)) => Some(c),
        _ => None,
    }
}

/// `ZooKeeperStateProvider.replace`: `setData` at the version read; `create` on `NONODE`.
/// `Ok(false)`: a lost race (the server decided), retried.
async fn zk_replace(c: &zkc::Client, path: &str, value: &[u8]) -> Result<bool, zkc::Error> {
    match c.get_data(path).await {
        Ok((_, stat)) => match c.set_data(path, value, Some(stat.version)).await {
            Ok(_) => Ok(true),
            Err(zkc::Error::BadVersion) | Err(zkc::Error::NoNode) => Ok(false),
            Err(e) => Err(e),
        },
        Err(zkc::Error::NoNode) => match c.create(path, value, &persistent()).await {
            Ok(_) => Ok(true),
            Err(zkc::Error::NodeExists) => Ok(false),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    }
}

async fn zk_writer(w: usize, url: &str, stop: &AtomicBool, ok: &AtomicU64, cycles: &AtomicU64) {
    let mut client: Option<zkc::Client> = None;
    let mut pass = 0u64;
    'passes: while !stop.load(Ordering::Relaxed) {
        for j in 0..KEYS {
            let path = format!("/nifi/components/w{w}-{:04}", entry(w, j));
            let value = format!("{{\"by\":{w},\"pass\":{pass}}}");
            loop {
                if stop.load(Ordering::Relaxed) {
                    break 'passes;
                }
                if client.is_none() {
                    client = zk_open(url).await;
                    if client.is_none() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                }
                let Some(c) = client.as_ref() else { continue };
                match tokio::time::timeout(
                    Duration::from_secs(3),
                    zk_replace(c, &path, value.as_bytes()),
                )
                .await
                {
                    Ok(Ok(true)) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Ok(Ok(false)) => {}
                    _ => {
                        client = None;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        pass += 1;
        cycles.fetch_add(1, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------
// Watching the three statuses
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Watched {
    polls: u64,
    /// Two polls in a row with two or more sidecars resyncing.
    overlaps: Vec<String>,
    /// (node, holder) for every status that showed `resync.waiting_for_lease`.
    waiting: BTreeSet<(String, String)>,
    /// Every run seen: (start ms, end ms, node).
    runs: BTreeSet<(u64, u64, String)>,
}

struct Watcher {
    seen: Arc<Mutex<Watched>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

fn watch(proto: Proto, admins: Vec<String>) -> Watcher {
    let seen = Arc::new(Mutex::new(Watched::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let (s, st) = (seen.clone(), stop.clone());
    let task = tokio::spawn(async move {
        let p = proto.name();
        let mut previous: Vec<&str> = Vec::new();
        while !st.load(Ordering::Relaxed) {
            let (x, y, z) =
                tokio::join!(status(&admins[0]), status(&admins[1]), status(&admins[2]));
            let all = [x, y, z];
            let mut running = Vec::new();
            {
                let mut w = s.lock().expect("lock");
                w.polls += 1;
                for (n, st) in all.iter().enumerate() {
                    let Some(st) = st else { continue };
                    let r = &st[p]["resync"];
                    if r["running"] == true {
                        running.push(NAMES[n]);
                    }
                    if let Some(h) = r["waiting_for_lease"].as_str() {
                        w.waiting.insert((NAMES[n].to_string(), h.to_string()));
                    }
                    let last = &r["last"];
                    if let (Some(end), Some(d)) = (
                        last["finished_unix"].as_f64(),
                        last["duration_seconds"].as_f64(),
                    ) {
                        let ms = |t: f64| (t * 1000.0) as u64;
                        w.runs.insert((ms(end - d), ms(end), NAMES[n].to_string()));
                    }
                }
                if running.len() > 1 && previous.len() > 1 {
                    let at = format!("{running:?} resyncing at once (poll {})", w.polls);
                    w.overlaps.push(at);
                }
            }
            previous = running;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    Watcher { seen, stop, task }
}

impl Watcher {
    /// Stops watching; asserts that no two sidecars resynced at once, and returns what was
    /// seen.
    async fn finish(self) -> Watched {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let w = std::mem::take(&mut *self.seen.lock().expect("lock"));
        assert!(
            w.overlaps.is_empty(),
            "two sidecars resynced at once: {:?}",
            w.overlaps
        );
        let runs: Vec<_> = w.runs.iter().collect();
        for (i, a) in runs.iter().enumerate() {
            for b in &runs[i + 1..] {
                let overlap = a.2 != b.2 && b.0 < a.1 && a.0 < b.1;
                assert!(
                    !overlap,
                    "resyncs overlapped in time: {a:?} and {b:?} (all: {runs:?})"
                );
            }
        }
        w
    }
}

// ---------------------------------------------------------------------------------------
// The scenario
// ---------------------------------------------------------------------------------------

/// Waits until the sidecar's start decision is made and returns `resync.start.clean_stop`.
async fn start_decision(n: &Node, proto: Proto) -> bool {
    eventually(Duration::from_secs(15), || async {
        let s = n.status().await;
        let start = &s[proto.name()]["resync"]["start"];
        if start["decided"] == true {
            start["clean_stop"].as_bool().ok_or(format!("{start}"))
        } else {
            Err(format!("{}: start not decided: {start}", n.name))
        }
    })
    .await
}

fn completed(s: &Value, proto: Proto) -> u64 {
    s[proto.name()]["resync"]["resyncs_by_outcome"]["completed"]
        .as_u64()
        .unwrap_or(0)
}

/// In sync, nothing queued, no resync running.
async fn settled(n: &Node, proto: Proto) {
    settle_with(proto.name(), || n.status()).await
}

async fn post_resync(n: &Node) {
    let (code, body) = statemirror::admin::client::request(
        &n.admin,
        hyper::Method::POST,
        "/resync",
        statemirror::admin::client::discover_token(&n.admin).as_deref(),
        Duration::from_secs(10),
    )
    .await
    .expect("POST /resync");
    assert_eq!(code, 202, "{}: {body}", n.name);
}

async fn all_drained(nodes: &[Node], proto: Proto) {
    for n in nodes {
        eventually(Duration::from_secs(30), || async {
            let s = n.status().await;
            let m = &s[proto.name()]["mirror"];
            let c = &s[proto.name()]["converge"];
            if m["queue_depth"] == 0
                && (c.is_null() || (c["pending"] == 0 && c["running"] == false))
            {
                Ok(())
            } else {
                Err(format!("{}: {m} {c}", n.name))
            }
        })
        .await;
    }
}

async fn scenario(proto: Proto, leader: &str, follower: &str, far_follower: &str) {
    let t0 = Instant::now();
    let p = proto.name();
    let mut nodes = vec![
        Node::new(proto, "a", leader, far_follower),
        Node::new(proto, "b", leader, follower),
        Node::new(proto, "c", leader, follower),
    ];
    let watcher = watch(proto, nodes.iter().map(|n| n.admin.clone()).collect());
    for n in &mut nodes {
        n.start().await;
    }
    for n in &nodes {
        assert!(
            !start_decision(n, proto).await,
            "{}: nothing recorded a clean stop yet",
            n.name
        );
        settled(n, proto).await;
    }
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let writers = Writers::start(proto, &urls);
    writers.two_more_passes().await;
    eprintln!(
        "{p}: three started and settled, writers running ({:?})",
        t0.elapsed()
    );

    // Rolling restart: a clean stop each, no resync at the next start.
    for n in nodes.iter_mut() {
        n.terminate().await;
        n.start().await;
        let n = &*n;
        assert!(
            start_decision(n, proto).await,
            "{}: restarted after SIGTERM, its clean stop must spare the resync at start: {}",
            n.name,
            n.status().await[p]["resync"]
        );
        // A resync would start within a poll (200 ms) of the decision: watch for a while.
        for _ in 0..10 {
            let s = n.status().await;
            let r = &s[p]["resync"];
            assert_eq!(
                r["resyncs_total"], 0,
                "{}: resynced at start after a clean stop: {r}",
                n.name
            );
            assert_eq!(r["running"], false, "{}: {r}", n.name);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(n.status().await[p]["mirror"]["in_sync"], true, "{}", n.name);
    }
    writers.two_more_passes().await;
    eprintln!(
        "{p}: rolling restart done without resyncs ({:?})",
        t0.elapsed()
    );

    // Two resyncs asked for at once take turns.
    tokio::join!(post_resync(&nodes[0]), post_resync(&nodes[1]));
    for n in &nodes[..2] {
        eventually(Duration::from_secs(30), || async {
            let s = n.status().await;
            let r = &s[p]["resync"];
            if completed(&s, proto) >= 1
                && r["running"] == false
                && s[p]["mirror"]["in_sync"] == true
            {
                Ok(())
            } else {
                Err(format!("{}: {r}", n.name))
            }
        })
        .await;
    }
    eprintln!("{p}: two requested resyncs done ({:?})", t0.elapsed());

    // SIGKILL: nothing recorded, so the next start resyncs.
    nodes[2].kill();
    nodes[2].start().await;
    assert!(
        !start_decision(&nodes[2], proto).await,
        "c was SIGKILLed: no clean stop"
    );
    eventually(Duration::from_secs(30), || async {
        let s = nodes[2].status().await;
        if completed(&s, proto) >= 1 {
            Ok(())
        } else {
            Err(format!(
                "c has not resynced after SIGKILL: {}",
                s[p]["resync"]
            ))
        }
    })
    .await;
    settled(&nodes[2], proto).await;
    // Every entry written again after the last resync (see the module doc for ZooKeeper).
    writers.two_more_passes().await;
    let written = writers.stop().await;
    eprintln!(
        "{p}: c resynced after SIGKILL; {written} writes in all ({:?})",
        t0.elapsed()
    );

    let seen = watcher.finish().await;
    assert!(
        seen.waiting.iter().any(|(n, _)| n == "a" || n == "b"),
        "neither a nor b was seen waiting for the other's resync lease: {:?}",
        seen.waiting
    );
    eprintln!(
        "{p}: {} status polls, {} resync runs seen, waiting seen: {:?}",
        seen.polls,
        seen.runs.len(),
        seen.waiting
    );

    all_drained(&nodes, proto).await;
    match proto {
        Proto::Redis => {
            let (l, f) = (RedisAddr(leader), RedisAddr(follower));
            let n = eventually(Duration::from_secs(30), || async {
                compare_urls(&l, &f).await
            })
            .await;
            assert!(n >= 3 * KEYS, "{n} keys compared");
        }
        Proto::Zk => {
            let n = eventually(Duration::from_secs(30), || async {
                compare_trees(leader, follower).await
            })
            .await;
            assert!(n >= 3 * KEYS, "{n} nodes compared");
        }
    }
    assert_verify_zero(&nodes[1].admin, p).await;
    recover_waits_for_the_lease(proto, leader, &nodes[1]).await;
    for n in &mut nodes {
        n.kill();
    }
    eprintln!("{p}: done in {:?}", t0.elapsed());
}

/// `statemirror recover --from-follower` with `[cluster]` takes the same lease: while
/// another holds it, it refuses (exit 1) and names the holder.
async fn recover_waits_for_the_lease(proto: Proto, leader: &str, n: &Node) {
    let p = proto.name();
    // Someone else's lease, held for the length of the call.
    let mut zk_holder = None;
    match proto {
        Proto::Redis => {
            let mut c = client(leader).await;
            let key = format!("statemirror:cluster:resync-lease:{p}");
            let _: () = redis::cmd("SET")
                .arg(&key)
                .arg("someone-else")
                .arg("PX")
                .arg(30_000)
                .query_async(&mut c)
                .await
                .expect("SET lease");
        }
        Proto::Zk => {
            let c = common::zk::zk_client(leader).await;
            let path = format!("/statemirror/cluster/resync-lease-{p}");
            c.create(&path, b"someone-else", &common::zk::ephemeral())
                .await
                .expect("create lease");
            zk_holder = Some(c);
        }
    }
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_statemirror"))
            .args(["recover", "--from-follower", "--config"])
            .arg(n.cfg.path())
            .output(),
    )
    .await
    .expect("recover answers within 30 s")
    .expect("run recover");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "recover while leased: {stderr}");
    assert!(
        stderr.contains("someone-else holds the resync lease"),
        "{stderr}"
    );
    match proto {
        Proto::Redis => {
            let mut c = client(leader).await;
            let _: () = redis::cmd("DEL")
                .arg(format!("statemirror:cluster:resync-lease:{p}"))
                .query_async(&mut c)
                .await
                .expect("DEL lease");
        }
        Proto::Zk => drop(zk_holder),
    }
}

/// A Redis URL (the servers are owned by the test).
struct RedisAddr<'a>(&'a str);

/// The user data of two Redis servers (statemirror's own keys left out) is equal: the
/// number of keys.
async fn compare_urls(a: &RedisAddr<'_>, b: &RedisAddr<'_>) -> Result<usize, String> {
    let mut ca = client(a.0).await;
    let mut cb = client(b.0).await;
    let keys = |c: &mut redis::aio::MultiplexedConnection| {
        let mut c = c.clone();
        async move {
            let mut k: Vec<Vec<u8>> = redis::cmd("KEYS")
                .arg("*")
                .query_async(&mut c)
                .await
                .map_err(|e| e.to_string())?;
            k.retain(|k| !statemirror::redis::cluster::is_own_key(k));
            k.sort();
            Ok::<_, String>(k)
        }
    };
    let (ka, kb) = (keys(&mut ca).await?, keys(&mut cb).await?);
    if ka != kb {
        return Err(format!("key sets differ: {} vs {}", ka.len(), kb.len()));
    }
    for k in &ka {
        let va: Option<Vec<u8>> = redis::cmd("GET")
            .arg(k)
            .query_async(&mut ca)
            .await
            .map_err(|e| e.to_string())?;
        let vb: Option<Vec<u8>> = redis::cmd("GET")
            .arg(k)
            .query_async(&mut cb)
            .await
            .map_err(|e| e.to_string())?;
        if va != vb {
            return Err(format!(
                "{}: leader {:?}, follower {:?}",
                String::from_utf8_lossy(k),
                va.map(|v| String::from_utf8_lossy(&v).into_owned()),
                vb.map(|v| String::from_utf8_lossy(&v).into_owned())
            ));
        }
    }
    Ok(ka.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_rolling_restart_of_three_sidecars_under_load() {
    let _g = SERIAL.lock().await;
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let far = FaultRelay::start(&follower.addr());
    far.set(Fault::Latency(Duration::from_millis(300)));
    scenario(
        Proto::Redis,
        &leader.url(),
        &follower.url(),
        &format!("redis://{}", far.addr()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zookeeper_rolling_restart_of_three_sidecars_under_load() {
    let _g = SERIAL.lock().await;
    let (leader, follower) = tokio::join!(ZkServer::standalone(), ZkServer::standalone());
    let far = FaultRelay::start(&follower.addr());
    far.set(Fault::Latency(Duration::from_millis(300)));
    scenario(Proto::Zk, &leader.addr(), &follower.addr(), &far.addr()).await;
}
