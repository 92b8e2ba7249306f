//! Issue 10 part 1, convergence across sidecars: three real `statemirror` processes over one
//! leader and one follower, node `a` reaching the follower through a relay adding 300 ms
//! each way. They race on the same NiFi entries with NiFi's own write sequences, and the
//! follower must end equal to the leader with `/verify` at zero:
//! - Redis: `WATCH` → `GET` → `MULTI` → `GETSET` → `EXEC` (NiFi's `replace`), each entry
//!   written through `a` first and then through `b` (so `a`'s older mirror op lands last),
//!   then all three writing every entry concurrently;
//! - ZooKeeper: `setData` with the version read, `create` on `NONODE`, the same two rounds;
//!
//! Without the cross-sidecar check (`[cluster] converge = false`) the first round leaves
//! every entry with `a`'s older value on the follower while all three report in sync.
//! Every wait is bounded; nothing asserts on durations.
mod common;

use std::time::{Duration, Instant};

use common::fault::{Fault, FaultRelay};
use common::*;
use serde_json::Value;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const ENTRIES: usize = 150;

struct Node {
    proc: BinProxy,
    _cfg: tempfile::NamedTempFile,
    admin: String,
    url: String,
}

impl Node {
    async fn start(section: &str, name: &str, url: String) -> Node {
        let admin_port = free_port();
        let cfg = tempfile::NamedTempFile::new().expect("temp");
        std::fs::write(
            cfg.path(),
            format!(
                "[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n[log]\nlevel = \"warn\"\n{section}\
                 [replication]\nretry_initial_backoff_ms = 20\nretry_max_backoff_ms = 300\n\
                 [maintenance]\ndrain_timeout_ms = 10000\n\
                 [resync]\nretry_interval_ms = 300\n\
                 [cluster]\nnode_name = \"{name}\"\nmember_ttl_ms = 3000\n"
            ),
        )
        .expect("write config");
        let admin = format!("http://127.0.0.1:{admin_port}");
        let proc = BinProxy::start(cfg.path(), &admin, &url).await;
        Node {
            proc,
            _cfg: cfg,
            admin,
            url,
        }
    }

    async fn status(&self) -> Value {
        self.proc.status().await.expect("status")
    }
}

/// A `[redis]` section and the URL clients use.
fn redis_section(leader: &str, follower: &str) -> (String, String) {
    let port = free_port();
    let s = format!(
        "[redis]\nlisten = \"127.0.0.1:{port}\"\nleader = \"{leader}\"\nfollower = \"{follower}\"\n\
         connect_timeout_ms = 1000\nhealth_interval_ms = 200\n"
    );
    (s, format!("redis://127.0.0.1:{port}"))
}

/// A `[zookeeper]` section and the connect string clients use.
fn zk_section(leader: &str, follower: &str) -> (String, String) {
    let port = free_port();
    let s = format!(
        "[zookeeper]\nlisten = \"127.0.0.1:{port}\"\nleader = \"{leader}\"\nfollower = \"{follower}\"\n"
    );
    (s, format!("127.0.0.1:{port}"))
}

/// Waits until a node's resync at start ended: it copies the leader's latest state, which
/// would hide what the race leaves behind.
async fn started(n: &Node, proto: &str) {
    eventually(Duration::from_secs(30), || async {
        let s = n.status().await;
        if s[proto]["mirror"]["in_sync"] == true && s[proto]["resync"]["running"] == false {
            Ok(())
        } else {
            Err(s[proto]["resync"].to_string())
        }
    })
    .await;
}

/// NiFi's `replace(old, new)` on one connection; true when `EXEC` ran it.
async fn nifi_replace(c: &mut redis::aio::MultiplexedConnection, key: &str, value: &str) -> bool {
    let _: () = redis::cmd("WATCH")
        .arg(key)
        .query_async(c)
        .await
        .expect("WATCH");
    let _: Option<String> = redis::cmd("GET")
        .arg(key)
        .query_async(c)
        .await
        .expect("GET");
    let mut p = redis::pipe();
    p.atomic().cmd("GETSET").arg(key).arg(value);
    let r: Option<(Option<String>,)> = p.query_async(c).await.expect("EXEC");
    r.is_some()
}

/// Writes `key = value` the NiFi way, retrying while a concurrent writer wins the WATCH.
async fn nifi_write(c: &mut redis::aio::MultiplexedConnection, key: &str, value: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !nifi_replace(c, key, value).await {
        assert!(Instant::now() < deadline, "WATCH never won for {key}");
    }
}

fn key(i: usize) -> String {
    format!("nifi/components/{i:08x}-0000-4000-8000-000000000000")
}

/// The leader's and the follower's data, statemirror's own keys left out, become equal.
async fn converged(leader: &RedisServer, follower: &RedisServer, within: Duration) -> usize {
    let t0 = Instant::now();
    let n = eventually(within, || async {
        compare_user_data(leader, follower).await
    })
    .await;
    eprintln!(
        "follower equal to the leader after {:?} ({n} keys)",
        t0.elapsed()
    );
    n
}

async fn compare_user_data(a: &RedisServer, b: &RedisServer) -> Result<usize, String> {
    let mut ca = client(&a.url()).await;
    let mut cb = client(&b.url()).await;
    let own = |k: &String| k.starts_with("statemirror:");
    let mut ka: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut ca)
        .await
        .map_err(|e| e.to_string())?;
    let mut kb: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut cb)
        .await
        .map_err(|e| e.to_string())?;
    ka.retain(|k| !own(k));
    kb.retain(|k| !own(k));
    ka.sort();
    kb.sort();
    if ka != kb {
        return Err(format!("key sets differ: {} vs {}", ka.len(), kb.len()));
    }
    let mut differ = 0;
    let mut example = String::new();
    for k in &ka {
        let va: Option<String> = redis::cmd("GET")
            .arg(k)
            .query_async(&mut ca)
            .await
            .map_err(|e| e.to_string())?;
        let vb: Option<String> = redis::cmd("GET")
            .arg(k)
            .query_async(&mut cb)
            .await
            .map_err(|e| e.to_string())?;
        if va != vb {
            differ += 1;
            example = format!("{k}: leader {va:?}, follower {vb:?}");
        }
    }
    if differ > 0 {
        return Err(format!(
            "{differ} of {} entries differ, e.g. {example}",
            ka.len()
        ));
    }
    Ok(ka.len())
}

async fn verify_zero(n: &Node, proto: &str) {
    assert_verify_zero(&n.admin, proto).await;
}

async fn all_drained(nodes: &[Node], proto: &str) {
    for n in nodes {
        eventually(Duration::from_secs(30), || async {
            let s = n.status().await;
            let m = &s[proto]["mirror"];
            let c = &s[proto]["converge"];
            if m["queue_depth"] == 0
                && (c.is_null() || (c["pending"] == 0 && c["running"] == false))
            {
                Ok(())
            } else {
                Err(format!("{m} {c}"))
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_three_sidecars_racing_on_nifi_entries_converge() {
    let _g = SERIAL.lock().await;
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let far = FaultRelay::start(&follower.addr());
    far.set(Fault::Latency(Duration::from_millis(300)));
    let mut nodes = Vec::new();
    for (name, f) in [
        ("a", far.addr()),
        ("b", follower.addr()),
        ("c", follower.addr()),
    ] {
        let (section, url) = redis_section(&leader.url(), &format!("redis://{f}"));
        nodes.push(Node::start(&section, name, url).await);
    }
    let mut conns = Vec::new();
    for n in &nodes {
        conns.push(client(&n.url).await);
        started(n, "redis").await;
    }

    // Round 1: each entry through a (slow to the follower), then through b.
    for i in 0..ENTRIES {
        nifi_write(
            &mut conns[0],
            &key(i),
            &format!("{{\"v\":1,\"by\":\"a\",\"i\":{i}}}"),
        )
        .await;
        nifi_write(
            &mut conns[1],
            &key(i),
            &format!("{{\"v\":2,\"by\":\"b\",\"i\":{i}}}"),
        )
        .await;
    }
    all_drained(&nodes, "redis").await;
    converged(&leader, &follower, Duration::from_secs(30)).await;
    report(&nodes, "redis", "round 1").await;

    // Round 2: all three at once on the same entries, each in its own order.
    let mut tasks = Vec::new();
    for (w, mut c) in conns.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for r in 0..3 {
                for j in 0..ENTRIES {
                    let i = (j * (w + 1) * 7 + r) % ENTRIES;
                    nifi_write(
                        &mut c,
                        &key(i),
                        &format!("{{\"v\":{r},\"by\":{w},\"i\":{i}}}"),
                    )
                    .await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    all_drained(&nodes, "redis").await;
    converged(&leader, &follower, Duration::from_secs(30)).await;
    for n in &nodes {
        let s = n.status().await;
        assert_eq!(s["redis"]["mirror"]["in_sync"], true, "{}", s["redis"]);
    }
    report(&nodes, "redis", "round 2").await;
    verify_zero(&nodes[0], "redis").await;
    drop(far);
}

/// A check must never repair the follower from a leader that may have lost data: the
/// leader restarts empty while a check waits on a far follower (0.7 s each way). The
/// follower keeps the entry (without the `run_id` guard the check deleted it, as the
/// restarted leader lacks it) and is flagged instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_no_repair_from_a_leader_that_restarted_empty() {
    no_repair_after_leader_restart(RestartWhen::CheckRunning).await;
}

/// The same with the restart before the check's first contact with the leader (the write
/// is still on its way to the far follower): the check knows the leader's `run_id` from
/// its start (`Repairer::prime`), not from its first round, which would take the
/// restarted leader for the original.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_no_repair_when_the_leader_restarted_before_the_check() {
    no_repair_after_leader_restart(RestartWhen::MirrorInFlight).await;
}

#[derive(PartialEq)]
enum RestartWhen {
    CheckRunning,
    MirrorInFlight,
}

async fn no_repair_after_leader_restart(when: RestartWhen) {
    let _g = SERIAL.lock().await;
    let mut leader = RedisServer::start();
    let follower = RedisServer::start();
    let far = FaultRelay::start(&follower.addr());
    let (section, url) = redis_section(&leader.url(), &format!("redis://{}", far.addr()));
    let node = Node::start(&section, "a", url).await;
    started(&node, "redis").await;
    far.set(Fault::Latency(Duration::from_millis(700)));
    let mut c = client(&node.url).await;
    nifi_write(&mut c, &key(1), "precious").await;
    if when == RestartWhen::CheckRunning {
        // The writer's round trip (1.4 s), then the check's follower read (1.4 s more).
        eventually(Duration::from_secs(20), || async {
            let s = node.status().await;
            if s["redis"]["converge"]["running"] == true {
                Ok(())
            } else {
                Err(s["redis"]["converge"].to_string())
            }
        })
        .await;
    }
    leader.restart();
    if when == RestartWhen::MirrorInFlight {
        // The write reaches the follower only now, and the check runs after it.
        eventually(Duration::from_secs(20), || async {
            let s = node.status().await;
            if s["redis"]["mirror"]["queue_depth"] == 0 {
                Ok(())
            } else {
                Err(s["redis"]["mirror"].to_string())
            }
        })
        .await;
    }
    far.set(Fault::Pass);
    // Long enough for several check rounds and the generation check.
    tokio::time::sleep(Duration::from_secs(6)).await;
    eprintln!("{}", node.status().await["redis"]);
    let mut f = client(&follower.url()).await;
    let v: Option<String> = redis::cmd("GET")
        .arg(key(1))
        .query_async(&mut f)
        .await
        .expect("GET");
    assert_eq!(
        v.as_deref(),
        Some("precious"),
        "the follower kept the entry"
    );
    let s = node.status().await;
    eprintln!("{}", s["redis"]["mirror"]);
    assert_eq!(s["redis"]["mirror"]["in_sync"], false, "{}", s["redis"]);
}

/// Prints what each node's check did (for the README's numbers).
async fn report(nodes: &[Node], proto: &str, what: &str) {
    for (i, n) in nodes.iter().enumerate() {
        let s = n.status().await;
        eprintln!(
            "{what}: node {i}: mirrored {} converge {}",
            s[proto]["mirror"]["mirrored_writes"], s[proto]["converge"]
        );
    }
}

mod zk {
    use super::*;
    use common::zk::{compare_trees, persistent, zk_client, ZkServer};
    use zookeeper_client as zkc;

    fn path(i: usize) -> String {
        format!("/nifi/components/{i:08x}-0000-4000-8000-000000000000")
    }

    /// NiFi's `replace`: `setData` at the version read, `create` on `NoNode`; retried
    /// while another writer wins (`BadVersion`, `NodeExists`).
    async fn nifi_write(c: &zkc::Client, p: &str, value: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = match c.get_data(p).await {
                Ok((_, stat)) => c
                    .set_data(p, value.as_bytes(), Some(stat.version))
                    .await
                    .map(|_| ()),
                Err(zkc::Error::NoNode) => c
                    .create(p, value.as_bytes(), &persistent())
                    .await
                    .map(|_| ()),
                Err(e) => Err(e),
            };
            match r {
                Ok(()) => return,
                Err(zkc::Error::BadVersion | zkc::Error::NodeExists | zkc::Error::NoNode) => {}
                Err(e) => panic!("{p}: {e}"),
            }
            assert!(Instant::now() < deadline, "never won the race for {p}");
        }
    }

    /// Every node drained, then the trees become equal (printed: how long it took).
    async fn converged(nodes: &[Node], leader: &ZkServer, follower: &ZkServer, what: &str) {
        all_drained(nodes, "zookeeper").await;
        let t0 = Instant::now();
        let n = eventually(Duration::from_secs(30), || async {
            compare_trees(&leader.addr(), &follower.addr()).await
        })
        .await;
        eprintln!(
            "{what}: follower equal after {:?} ({n} nodes)",
            t0.elapsed()
        );
        report(nodes, "zookeeper", what).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn zookeeper_three_sidecars_racing_on_nifi_entries_converge() {
        let _g = SERIAL.lock().await;
        let (leader, follower) = tokio::join!(ZkServer::standalone(), ZkServer::standalone());
        let far = FaultRelay::start(&follower.addr());
        far.set(Fault::Latency(Duration::from_millis(300)));
        let mut nodes = Vec::new();
        for (name, f) in [
            ("a", far.addr()),
            ("b", follower.addr()),
            ("c", follower.addr()),
        ] {
            let (section, url) = zk_section(&leader.addr(), &f);
            nodes.push(Node::start(&section, name, url).await);
        }
        let mut clients = Vec::new();
        for n in &nodes {
            started(n, "zookeeper").await;
            clients.push(zk_client(&n.url).await);
        }
        clients[1]
            .mkdir("/nifi/components", &persistent())
            .await
            .expect("mkdir");

        // Round 1: each entry through a (slow to the follower), then through b.
        for i in 0..ENTRIES {
            nifi_write(&clients[0], &path(i), &format!("v1 a {i}")).await;
            nifi_write(&clients[1], &path(i), &format!("v2 b {i}")).await;
        }
        converged(&nodes, &leader, &follower, "round 1").await;

        // Round 2: all three at once.
        let mut tasks = Vec::new();
        for (w, c) in clients.into_iter().enumerate() {
            tasks.push(tokio::spawn(async move {
                for r in 0..3 {
                    for j in 0..ENTRIES {
                        let i = (j * (w + 1) * 7 + r) % ENTRIES;
                        nifi_write(&c, &path(i), &format!("v{r} {w} {i}")).await;
                    }
                }
            }));
        }
        for t in tasks {
            t.await.expect("writer");
        }
        converged(&nodes, &leader, &follower, "round 2").await;
        for n in &nodes {
            let s = n.status().await;
            assert_eq!(
                s["zookeeper"]["mirror"]["in_sync"], true,
                "{}",
                s["zookeeper"]
            );
        }
        verify_zero(&nodes[0], "zookeeper").await;
        drop(far);
    }
}
