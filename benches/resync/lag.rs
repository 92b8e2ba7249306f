//! Mirror lag under a sustained write load: background writers, a probe, the lag gauge.

use super::*;

/// What the background writers did.
#[derive(Default)]
pub(crate) struct LoadStats {
    pub(crate) acked: u64,
    pub(crate) errors: u64,
    /// Writes dropped from a backlog over `MAX_BACKLOG`.
    pub(crate) skipped: u64,
    pub(crate) elapsed: Duration,
    pub(crate) first_error: Option<String>,
}

impl LoadStats {
    pub(crate) fn add(&mut self, o: LoadStats) {
        self.acked += o.acked;
        self.errors += o.errors;
        self.skipped += o.skipped;
        self.elapsed = self.elapsed.max(o.elapsed);
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }

    pub(crate) fn rate(&self) -> f64 {
        self.acked as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// What the probe saw.
#[derive(Default)]
pub(crate) struct ProbeStats {
    /// Lag per probe that became visible, ms.
    pub(crate) lags_ms: Vec<f64>,
    /// Write latency (through the proxy) per probe, ms.
    pub(crate) write_ms: Vec<f64>,
    pub(crate) timeouts: u64,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
    /// Follower polls, all probes together.
    pub(crate) polls: u64,
    /// Markers written (acknowledged).
    pub(crate) written: u64,
    /// Per visible probe: (lag ms, write ms, polls, slowest poll ms), for the slowest list.
    pub(crate) detail: Vec<(f64, f64, u64, f64)>,
    /// Round trip of every follower poll, ms.
    pub(crate) poll_ms: Vec<f64>,
    /// How long the probe ran.
    pub(crate) elapsed: Duration,
}

impl ProbeStats {
    /// The `n` probes with the largest lag: `lag (write, polls x slowest poll)`.
    pub(crate) fn slowest(&self, n: usize) -> String {
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

    pub(crate) fn error(&mut self, e: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e);
        }
    }
}

pub(crate) struct LagRow {
    pub(crate) protocol: &'static str,
    pub(crate) asked_rate: f64,
    pub(crate) load: LoadStats,
    pub(crate) probe: ProbeStats,
    /// `statemirror_mirror_lag_seconds` samples.
    pub(crate) gauge: Vec<f64>,
    pub(crate) drained: bool,
    pub(crate) in_sync: bool,
    pub(crate) dropped: u64,
    pub(crate) markers_leader: u64,
    pub(crate) markers_follower: u64,
    /// Set when the probe ran while a full resync copied the leader's data.
    pub(crate) during: Option<DuringResync>,
}

/// The full resync a lag run measured during.
pub(crate) struct DuringResync {
    /// Keys / znodes of the resync's data set on the leader.
    pub(crate) items: u64,
    /// The same, on the follower at the end.
    pub(crate) follower_items: u64,
    /// `/status`' last run, and the wall time from `POST /resync` until in sync.
    pub(crate) result: ResyncOutcome,
    /// `GET /verify` after the writes stopped and the mirror drained: differences, seconds.
    pub(crate) verify: Result<(u64, f64), String>,
}

impl DuringResync {
    fn describe(&self) -> String {
        let resync = match &self.result {
            Ok((l, took)) => format!(
                "; resync: outcome {}, copied {}, deleted {}, {:.3} s in /status, {:.3} s from \
                 POST /resync to in sync; data set leader {} follower {}",
                l.outcome,
                l.copied,
                l.deleted,
                l.duration_seconds,
                took.as_secs_f64(),
                self.items,
                self.follower_items
            ),
            Err(e) => format!("; resync: {e}"),
        };
        let verify = match &self.verify {
            Ok((n, d)) => format!("; verify: {n} differences ({d:.2} s)"),
            Err(e) => format!("; verify: {e}"),
        };
        resync + &verify
    }
}

/// How long a probe runs: `max`, or until `done` is set (the resync under test ended).
pub(crate) struct Window {
    pub(crate) max: Duration,
    pub(crate) done: Arc<AtomicBool>,
}

impl Window {
    fn open(&self, started: Instant) -> bool {
        started.elapsed() < self.max && !self.done.load(Ordering::Relaxed)
    }
}

impl LagRow {
    /// "Redis" / "ZooKeeper", and "during a resync" when it was.
    pub(crate) fn label(&self) -> String {
        let p = if self.protocol == "redis" {
            "Redis"
        } else {
            "ZooKeeper"
        };
        match &self.during {
            Some(d) => format!("{p} during a resync of {} items", d.items),
            None => p.to_string(),
        }
    }

    pub(crate) fn sorted_lags(&self) -> Vec<f64> {
        let mut v = self.probe.lags_ms.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    }

    pub(crate) fn p(&self, q: f64) -> f64 {
        percentile(&self.sorted_lags(), q)
    }

    pub(crate) fn max(&self) -> f64 {
        self.probe.lags_ms.iter().copied().fold(0.0, f64::max)
    }

    pub(crate) fn gauge_max_ms(&self) -> f64 {
        self.gauge.iter().copied().fold(0.0, f64::max) * 1000.0
    }

    pub(crate) fn describe(&self) -> String {
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
        ) + &self
            .during
            .as_ref()
            .map_or(String::new(), DuringResync::describe)
    }

    pub(crate) fn problems(&self) -> Vec<String> {
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
        match &self.during {
            Some(d) if d.result.is_err() => p.push("the resync did not end in sync".into()),
            Some(d) if d.items != d.follower_items => {
                p.push("the resync's data set differs between leader and follower".into())
            }
            Some(d) if !matches!(d.verify, Ok((0, _))) => {
                p.push("verify does not report zero differences".into())
            }
            _ => {}
        }
        p
    }
}

/// Samples the lag gauge from `/metrics` every 100 ms until `stop`.
pub(crate) fn sample_lag_gauge(
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
pub(crate) fn next_rand(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// How many writes are due now for a writer at `rate`/s started at `started` that has issued
/// `issued`; drops a backlog over `MAX_BACKLOG` (counted in `skipped`).
pub(crate) fn due(started: Instant, rate: f64, issued: &mut u64, skipped: &mut u64) -> u64 {
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
pub(crate) fn redis_load_worker(
    port: u16,
    worker: usize,
    rate: f64,
    stop: Arc<AtomicBool>,
) -> LoadStats {
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
pub(crate) fn redis_probe(proxy: u16, follower: u16, s: &Settings, window: &Window) -> ProbeStats {
    let mut p = Resp::connect(proxy).expect("probe connection to the proxy");
    let mut f = Resp::connect(follower).expect("probe connection to the follower");
    let mut st = ProbeStats::default();
    let started = Instant::now();
    let mut next = started;
    let mut i = 0u64;
    while window.open(started) {
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
    st.elapsed = started.elapsed();
    st
}

/// Keys matching `pattern` (`SCAN`), for counting markers.
pub(crate) fn count_keys(port: u16, pattern: &str) -> u64 {
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

/// Steady-state lag (`during_resync` false), or lag while a rate-limited full resync of
/// `BENCH_RESYNC_KEYS` keys runs onto a follower emptied behind statemirror's back.
pub(crate) fn redis_lag(
    s: &Settings,
    root: &Path,
    bin: &Path,
    leader: &RedisServer,
    follower: &RedisServer,
    out: &mut Outcome,
    during_resync: bool,
) {
    let name = if during_resync {
        "Redis lag during a resync"
    } else {
        "Redis lag"
    };
    for r in [leader, follower] {
        command(r.port, &["FLUSHALL"]).expect("FLUSHALL");
    }
    if during_resync {
        populate_redis(leader.port, s.keys, s.value_bytes);
    }
    let ports = (free_port(), free_port());
    let mut cfg = redis_config(ports.0, ports.1, leader.port, Some(follower.port));
    let rt = current_thread();
    let dir = if during_resync {
        "redis-lag-resync"
    } else {
        "redis-lag"
    };
    let p = match lag_proxy(s, root, bin, &mut cfg, ports, dir, during_resync, "redis") {
        Ok(p) => p,
        Err(e) => return out.problems.push(format!("{name}: {e}")),
    };
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
    // During a resync the probe runs until the resync ends (bounded by `BENCH_TIMEOUT_SECS`).
    let (window, watcher) = probe_window(s, p.admin, "redis", during_resync, || {
        // Emptied behind statemirror's back, so the resync has everything to copy.
        command(follower.port, &["FLUSHALL"]).expect("FLUSHALL follower");
    });
    println!(
        "{name}: {} background SET/s over {} connection(s), probing {} ...",
        s.lag_redis_rate,
        s.lag_conns,
        probe_span(s, during_resync)
    );
    let probe = redis_probe(p.port, follower.port, s, &window);
    let resync = watcher.map(|w| w.join().expect("resync watcher"));
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
        during: resync.map(|result| DuringResync {
            items: count_keys(leader.port, "resync:*"),
            follower_items: count_keys(follower.port, "resync:*"),
            result,
            verify: verify_differences(p.admin, "redis"),
        }),
    };
    println!("{name}: {}\n", row.describe());
    for e in row.problems() {
        out.problems
            .push(format!("{name}: {e}: {}", row.describe()));
    }
    out.lag.push(row);
}

/// Starts statemirror for a lag run (`cfg` from `redis_config` / `zookeeper_config`) and
/// waits until the resync at start is done.
#[allow(clippy::too_many_arguments)]
fn lag_proxy(
    s: &Settings,
    root: &Path,
    bin: &Path,
    cfg: &mut toml::Table,
    ports: (u16, u16),
    dir: &str,
    during_resync: bool,
    protocol: &str,
) -> Result<Proxy, String> {
    resync_settings(cfg, s);
    if during_resync {
        lag_resync_settings(cfg, s);
    }
    let mut p = start_proxy(root, dir, bin, cfg, ports);
    current_thread().block_on(wait_in_sync(&mut p, protocol, s.timeout))?;
    Ok(p)
}

/// How long the probe runs: `BENCH_LAG_SECS`, or during a resync until it ends. For the
/// latter, `wipe` empties the follower's copy behind statemirror's back (so the resync has
/// everything to copy), then `POST /resync`; the watcher returns the resync's outcome.
fn probe_window(
    s: &Settings,
    admin: u16,
    protocol: &'static str,
    during_resync: bool,
    wipe: impl FnOnce(),
) -> (Window, Option<thread::JoinHandle<ResyncOutcome>>) {
    let window = Window {
        max: if during_resync {
            s.timeout
        } else {
            s.lag_duration
        },
        done: Arc::new(AtomicBool::new(false)),
    };
    let watcher = during_resync.then(|| {
        wipe();
        let before = request_resync(admin, protocol).expect("POST /resync");
        watch_resync(admin, protocol, before, Arc::clone(&window.done), s.timeout)
    });
    (window, watcher)
}

fn probe_span(s: &Settings, during_resync: bool) -> String {
    if during_resync {
        "until the resync ends".into()
    } else {
        format!("for {:.0} s", s.lag_duration.as_secs_f64())
    }
}

/// `[resync]` for a lag run during a resync: the configured rate limit, so the resync lasts
/// as long as it would in production.
fn lag_resync_settings(cfg: &mut toml::Table, s: &Settings) {
    section(cfg, "resync").insert(
        "max_keys_per_second".into(),
        toml::Value::Integer(s.lag_resync_rate as i64),
    );
}

/// The ZooKeeper background load: `sessions` sessions through the proxy, `setData` on
/// `/lag/load/<random>` at `rate`/s in all, until `stop`.
pub(crate) async fn zk_load(
    port: u16,
    sessions: usize,
    rate: f64,
    stop: Arc<AtomicBool>,
) -> LoadStats {
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
pub(crate) async fn zk_probe(
    proxy: u16,
    follower: u16,
    s: &Settings,
    window: &Window,
) -> ProbeStats {
    let p = zk_connect(proxy).await;
    let f = zk_connect(follower).await;
    let opts = zk_persistent();
    let mut st = ProbeStats::default();
    let started = Instant::now();
    let mut next = started;
    let mut i = 0u64;
    while window.open(started) {
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
    st.elapsed = started.elapsed();
    st
}

/// Steady-state lag (`during_resync` false), or lag while a rate-limited full resync of
/// `BENCH_RESYNC_ZNODES` znodes runs onto a follower whose copy was deleted behind
/// statemirror's back.
pub(crate) fn zk_lag(
    s: &Settings,
    root: &Path,
    bin: &Path,
    leader: &ZkServer,
    follower: &ZkServer,
    out: &mut Outcome,
    during_resync: bool,
) {
    let name = if during_resync {
        "ZooKeeper lag during a resync"
    } else {
        "ZooKeeper lag"
    };
    let rt = current_thread();
    rt.block_on(async {
        for port in [leader.port, follower.port] {
            let c = zk_connect(port).await;
            delete_tree(&c, LAG_ROOT).await;
            if during_resync {
                delete_tree(&c, BENCH_ROOT).await;
            }
        }
        if during_resync {
            populate_zk(&zk_connect(leader.port).await, s.znodes, s.znode_bytes).await;
        }
    });
    let ports = (free_port(), free_port());
    let mut cfg = zookeeper_config(ports.0, ports.1, leader.port, Some(follower.port));
    let dir = if during_resync {
        "zk-lag-resync"
    } else {
        "zk-lag"
    };
    let p = match lag_proxy(
        s,
        root,
        bin,
        &mut cfg,
        ports,
        dir,
        during_resync,
        "zookeeper",
    ) {
        Ok(p) => p,
        Err(e) => return out.problems.push(format!("{name}: {e}")),
    };
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
    let (window, watcher) = probe_window(s, p.admin, "zookeeper", during_resync, || {
        // Deleted behind statemirror's back, so the resync has everything to copy.
        rt.block_on(async { delete_tree(&zk_connect(follower.port).await, BENCH_ROOT).await });
    });
    println!(
        "{name}: {} background setData/s over {} session(s), probing {} ...",
        s.lag_zk_rate,
        s.lag_conns,
        probe_span(s, during_resync)
    );
    let probe = rt.block_on(zk_probe(p.port, follower.port, s, &window));
    let resync = watcher.map(|w| w.join().expect("resync watcher"));
    stop.store(true, Ordering::Relaxed);
    let load = load.join().expect("load thread");
    let gauge = sampler.join().expect("gauge sampler");
    let drained = rt.block_on(drained(p.admin, "zookeeper"));
    let m = mirror_status(p.admin, "zookeeper");
    let (markers_leader, markers_follower, items, follower_items) = rt.block_on(async {
        let l = zk_connect(leader.port).await;
        let f = zk_connect(follower.port).await;
        (
            zk_children(&l, LAG_PROBE).await as u64,
            zk_children(&f, LAG_PROBE).await as u64,
            zk_children(&l, BENCH_PARENT).await as u64,
            zk_children(&f, BENCH_PARENT).await as u64,
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
        during: resync.map(|result| DuringResync {
            items,
            follower_items,
            result,
            verify: verify_differences(p.admin, "zookeeper"),
        }),
    };
    println!("{name}: {}\n", row.describe());
    for e in row.problems() {
        out.problems
            .push(format!("{name}: {e}: {}", row.describe()));
    }
    out.lag.push(row);
}
