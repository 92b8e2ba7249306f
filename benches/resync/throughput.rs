//! Resync throughput: a populated leader, an empty follower, a fresh statemirror.

use super::*;

pub(crate) struct ResyncRow {
    pub(crate) protocol: &'static str,
    pub(crate) run: usize,
    /// Keys / znodes on the leader (what the follower must end up with).
    pub(crate) expected: u64,
    pub(crate) last: LastRun,
    pub(crate) resyncs_total: u64,
    pub(crate) wall: Duration,
    pub(crate) follower_count: u64,
}

impl ResyncRow {
    /// `copied / duration_seconds` of the last run.
    pub(crate) fn rate(&self) -> f64 {
        if self.last.duration_seconds > 0.0 {
            self.last.copied as f64 / self.last.duration_seconds
        } else {
            0.0
        }
    }

    /// Leader keys / wall time from the process start until in sync.
    pub(crate) fn wall_rate(&self) -> f64 {
        self.expected as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    pub(crate) fn ok(&self) -> bool {
        self.last.outcome == "completed" && self.follower_count == self.expected
    }

    pub(crate) fn describe(&self) -> String {
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

pub(crate) fn redis_key(i: u64) -> String {
    format!("resync:{i:08}")
}

/// Writes `keys` string keys to the redis-server on `port`, `POPULATE_CHUNK` pipelined `SET`s
/// at a time.
pub(crate) fn populate_redis(port: u16, keys: u64, value_bytes: usize) {
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

pub(crate) fn redis_resync(
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

pub(crate) fn znode(i: usize) -> String {
    format!("{BENCH_PARENT}/{i:08}")
}

pub(crate) async fn create_if_missing(c: &zkc::Client, path: &str) {
    match c.create(path, b"", &zk_persistent()).await {
        Ok(_) | Err(zkc::Error::NodeExists) => {}
        Err(e) => panic!("create {path}: {e}"),
    }
}

/// Creates `/bench/n/<i>` for `i < n` with `bytes` bytes of data: `multi`s of `ZK_MULTI`
/// creates, `ZK_POPULATE_IN_FLIGHT` at a time.
pub(crate) async fn populate_zk(c: &zkc::Client, n: usize, bytes: usize) {
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
pub(crate) async fn delete_tree(c: &zkc::Client, root: &str) {
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

pub(crate) async fn zk_resync(
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
