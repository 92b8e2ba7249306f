//! The load a Redis benchmark run puts on a target: `redis-benchmark`, a NiFi-shaped
//! transaction mix, and idle connections (memory per client).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::{Guard, Reply, Resp};
use crate::targets::Target;

/// One `redis-benchmark` test (`SET`, `GET`) on `target`; returns req/s.
#[allow(clippy::too_many_arguments)]
pub fn redis_benchmark(
    bin: &Path,
    target: &Target,
    tls_ca: Option<&Path>,
    test: &str,
    random: Option<u32>,
    clients: u32,
    requests: u64,
    pipeline: u32,
    timeout: Duration,
) -> f64 {
    let mut cmd = Command::new(bin);
    cmd.args(["-h", "127.0.0.1", "-p", &target.port.to_string()])
        .args(["-c", &clients.to_string()])
        .args(["-n", &requests.to_string()])
        .args(["-t", test])
        .args(["-P", &pipeline.to_string()]);
    if target.select && target.db != 0 {
        cmd.args(["--dbnum", &target.db.to_string()]);
    }
    if let Some(r) = random {
        cmd.args(["-r", &r.to_string()]);
    }
    if let (true, Some(ca)) = (target.tls, tls_ca) {
        cmd.arg("--tls").arg("--cacert").arg(ca);
    }
    cmd.args(["-q", "--csv"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let port = target.port;
    let mut guard = Guard::spawn("redis-benchmark", &mut cmd);
    let out = reader(guard.child.stdout.take());
    let err = reader(guard.child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = guard.child.try_wait().expect("wait for redis-benchmark") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "redis-benchmark on port {port} did not finish within {timeout:?}"
        );
        thread::sleep(Duration::from_millis(10));
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    assert!(
        status.success(),
        "redis-benchmark on port {port} failed ({status}):\n{out}\n{err}"
    );
    parse_csv(&out)
        .into_iter()
        .next()
        .map(|(_, rps)| rps)
        .unwrap_or_else(|| panic!("no results from redis-benchmark on port {port}:\n{out}\n{err}"))
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

/// Requests per op of the NiFi mix (one more with `get_state`).
pub const NIFI_REQUESTS_PER_OP: u64 = 5;

/// What NiFi's Redis state provider does to replace a component's state, as round trips:
/// `WATCH k`, `GET k`, `MULTI`, `GETSET k v` (queued), `EXEC`; with `get_state`, a plain
/// `GET k` first (NiFi's `getState`, which runs on the same pooled connections: a
/// multiplexed client then goes back to sharing between transactions, and pins again at the
/// next `WATCH`). `clients` connections, each `ops` times on its own 64 keys (so no `WATCH`
/// fires). Returns req/s; panics on any unexpected reply.
pub fn nifi_mix(target: &Target, clients: usize, ops: usize, round: usize, get_state: bool) -> f64 {
    let start = Arc::new(Barrier::new(clients + 1));
    let workers: Vec<_> = (0..clients)
        .map(|c| {
            let (port, db, start) = (target.port, target.db, start.clone());
            let label = target.key;
            thread::spawn(move || {
                let mut r = Resp::connect(port).expect("connect");
                if db != 0 {
                    assert_eq!(
                        r.call(&[b"SELECT", db.to_string().as_bytes()]),
                        Ok(Reply::Simple("OK".into()))
                    );
                }
                start.wait();
                for n in 0..ops {
                    let key = format!("nifi/components/{label}-{c}-{}", n % 64);
                    let value = format!("{{\"round\":{round},\"n\":{n},\"state\":\"x\"}}");
                    let k = key.as_bytes();
                    let expect = |got: Result<Reply, String>, what: &str| {
                        let got = got.unwrap_or_else(|e| panic!("{label} {what}: {e}"));
                        if let Reply::Error(e) = &got {
                            panic!("{label} {what}: -{e}");
                        }
                        got
                    };
                    if get_state {
                        expect(r.call(&[b"GET", k]), "getState GET");
                    }
                    expect(r.call(&[b"WATCH", k]), "WATCH");
                    expect(r.call(&[b"GET", k]), "GET");
                    expect(r.call(&[b"MULTI"]), "MULTI");
                    expect(r.call(&[b"GETSET", k, value.as_bytes()]), "GETSET");
                    match expect(r.call(&[b"EXEC"]), "EXEC") {
                        Reply::Array(Some(v)) if v.len() == 1 => {}
                        other => panic!("{label} EXEC: {other:?}"),
                    }
                }
            })
        })
        .collect();
    start.wait();
    let t0 = Instant::now();
    for w in workers {
        w.join().expect("NiFi mix client panicked");
    }
    let secs = t0.elapsed().as_secs_f64();
    let per_op = NIFI_REQUESTS_PER_OP + u64::from(get_state);
    (clients * ops) as f64 * per_op as f64 / secs
}

/// Opens `n` connections to `port`, each answering one `PING` (so the proxy has set up
/// everything a client costs it), and keeps them open until the returned value drops.
pub fn idle_clients(port: u16, n: usize) -> Vec<TcpStream> {
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("idle client {i}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(b"*1\r\n$4\r\nPING\r\n").expect("PING");
        let mut pong = [0u8; 7];
        s.read_exact(&mut pong)
            .unwrap_or_else(|e| panic!("idle client {i}: no PONG: {e}"));
        assert_eq!(&pong, b"+PONG\r\n");
        v.push(s);
    }
    v
}
