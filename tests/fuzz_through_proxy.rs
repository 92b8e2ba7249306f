//! Generated well-formed and malformed frames sent through the running proxy to real
//! servers, both protocols. The proxy must keep serving, a client connected meanwhile must
//! keep getting correct answers, and nothing the proxy refused may reach the server: every
//! input ends with a canary write that must never show up behind a refusal (Redis: checked
//! in `MONITOR` on the leader; ZooKeeper: the canary znode must not exist).
mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::zk::{persistent, RawZk, ZkProxy, ZkServer};
use common::*;
use statemirror::redis::resp::{parse_request, Limits};
use statemirror::zookeeper::frame::next_frame;
use statemirror::zookeeper::jute::{Reader, Record};
use statemirror::zookeeper::proto::{
    op, CreateRequest, DeleteRequest, GetDataRequest, RequestHeader, SetDataRequest,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(10);

/// Deterministic generator: the same inputs on every run.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Byte-level damage: overwrite, insert, delete, cut.
fn mutate(rng: &mut XorShift, v: &mut Vec<u8>, from: usize) {
    const NASTY: &[u8] = b"\r\n$*-0+:\x00\xff\"'9 ";
    for _ in 0..=rng.below(3) {
        if v.len() <= from {
            return;
        }
        let i = from + rng.below(v.len() - from);
        let b = if rng.below(2) == 0 {
            NASTY[rng.below(NASTY.len())]
        } else {
            rng.next() as u8
        };
        match rng.below(4) {
            0 => v[i] = b,
            1 => v.insert(i, b),
            2 => {
                v.remove(i);
            }
            _ => v.truncate(i),
        }
    }
}

/// Writes `input`, half-closes, and reads everything until the proxy closes (bounded).
async fn send_and_drain(addr: std::net::SocketAddr, input: &[u8]) -> (Vec<u8>, bool) {
    let mut s = RawZk::tcp(addr).await;
    let _ = tokio::time::timeout(WAIT, s.write_all(input)).await;
    let _ = s.shutdown().await;
    read_to_close(&mut s).await
}

async fn read_to_close(s: &mut tokio::net::TcpStream) -> (Vec<u8>, bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => return (got, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Redis

fn redis_input(rng: &mut XorShift, i: usize) -> Vec<u8> {
    let mut v = Vec::new();
    for j in 0..rng.below(4) {
        let key = format!("fz:{i}:{j}");
        let n = rng.below(12);
        let val = rng.bytes(n);
        let cmd: Vec<&[u8]> = match rng.below(6) {
            0 => vec![b"SET", key.as_bytes(), &val],
            1 => vec![b"GET", key.as_bytes()],
            2 => vec![b"INCR", key.as_bytes()],
            3 => vec![b"APPEND", key.as_bytes(), &val],
            4 => vec![b"DEL", key.as_bytes()],
            _ => vec![b"ECHO", &val],
        };
        if rng.below(4) == 0 {
            // The inline form, quoted.
            v.extend_from_slice(format!("SET \"{key}\" 'v {j}'\r\n").as_bytes());
        } else {
            v.extend_from_slice(&encode(&cmd));
        }
    }
    match rng.below(3) {
        0 => {} // well-formed
        1 => mutate(rng, &mut v, 0),
        _ => {
            const BAD: &[&[u8]] = &[
                b"*1\r\nfoo\r\n",
                b"*2\r\n:1\r\n",
                b"*zz\r\n",
                b"*1\r\n$-3\r\n",
                b"*1\r\n$01\r\n",
                b"*1\r\n$1\r\nab\r\n",
                b"echo \"abc\r\n",
                b"echo 'a'b\r\n",
                b"*3000000000\r\n",
                b"*1\r\r",
            ];
            v.extend_from_slice(BAD[rng.below(BAD.len())]);
        }
    }
    let canary = format!("canary:{i}");
    v.extend_from_slice(&encode(&[b"SET", canary.as_bytes(), b"x"]));
    v
}

/// What the proxy's own parser makes of `input`: whether it refuses it (and with what
/// reply), and whether the canary is parsed as a request of its own.
fn redis_verdict(input: &[u8], lim: &Limits, i: usize) -> (Option<Vec<u8>>, bool) {
    let canary = format!("canary:{i}");
    let mut buf = BytesMut::from(input);
    let mut canary_parsed = false;
    loop {
        match parse_request(&mut buf, lim) {
            Ok(Some(r)) => {
                let args: Vec<&[u8]> = r.args().collect();
                canary_parsed |= args == [&b"SET"[..], canary.as_bytes(), b"x"];
            }
            Ok(None) => return (None, canary_parsed),
            Err(e) => return (Some(e.reply().to_vec()), false),
        }
    }
}

/// Everything `MONITOR` on `addr` prints, up to the first command that mentions `last`
/// (bounded). Returns once MONITOR is on.
async fn monitor(addr: std::net::SocketAddr, last: &str) -> tokio::task::JoinHandle<String> {
    let mut m = Raw::connect(addr).await;
    assert_eq!(m.cmd(&["MONITOR"]).await, Resp::Simple("OK".into()));
    let last = format!("\"{last}\"");
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        let mut out = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let text = String::from_utf8_lossy(&out).into_owned();
            if text.contains(&last) {
                return text;
            }
            match tokio::time::timeout_at(deadline, m.stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => out.extend_from_slice(&chunk[..n]),
                _ => panic!("MONITOR ended before {last} showed: {text}"),
            }
        }
    })
}

#[tokio::test]
async fn redis_fuzzed_frames_through_the_proxy() {
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let proxy = Proxy::start(&leader, Some(&follower)).await;
    let cfg = example_config("redis.toml");
    let rc = cfg.redis.as_ref().expect("[redis]");
    let lim = Limits {
        max_request_bytes: rc.max_request_bytes,
        max_args: rc.max_request_args,
    };
    let mon = monitor(leader.addr().parse().expect("addr"), "fuzz-end").await;
    let stop = Arc::new(AtomicBool::new(false));

    // A client doing SET/GET the whole time.
    let bystander_ok = Arc::new(AtomicUsize::new(0));
    let by = {
        let (stop, ok, addr) = (stop.clone(), bystander_ok.clone(), proxy.addr());
        tokio::spawn(async move {
            let mut c = Raw::connect(addr).await;
            let deadline = Instant::now() + Duration::from_secs(300);
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) && Instant::now() < deadline {
                let (k, v) = (format!("bystander:{n}"), format!("value-{n}"));
                assert_eq!(c.cmd(&["SET", &k, &v]).await, Resp::Simple("OK".into()));
                assert_eq!(c.cmd(&["GET", &k]).await, Resp::bulk(&v));
                ok.fetch_add(1, Ordering::AcqRel);
                n += 1;
            }
        })
    };

    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let (mut refused, mut canaries) = (Vec::new(), Vec::new());
    for i in 0..300 {
        let input = redis_input(&mut rng, i);
        let (error, canary) = redis_verdict(&input, &lim, i);
        let (reply, closed) = send_and_drain(proxy.addr(), &input).await;
        assert!(closed, "input {i}: proxy did not close after EOF");
        if let Some(e) = error {
            assert!(
                reply.ends_with(&e),
                "input {i} {:?}: expected the reply to end with {:?}, got {:?}",
                String::from_utf8_lossy(&input),
                String::from_utf8_lossy(&e),
                String::from_utf8_lossy(&reply)
            );
            refused.push(i);
        } else if canary {
            canaries.push(i);
        }
    }
    // A last write through the proxy marks the end of the MONITOR capture.
    let mut c = Raw::connect(proxy.addr()).await;
    assert_eq!(
        c.cmd(&["SET", "fuzz-end", "1"]).await,
        Resp::Simple("OK".into())
    );
    let seen = mon.await.expect("monitor task");
    stop.store(true, Ordering::Release);
    by.await.expect("bystander task");
    eprintln!(
        "{} inputs refused, {} accepted with their canary",
        refused.len(),
        canaries.len()
    );

    assert!(
        refused.len() >= 50 && canaries.len() >= 50,
        "{} refused, {} accepted with a canary: the generator is off",
        refused.len(),
        canaries.len()
    );
    for i in &refused {
        assert!(
            !seen.contains(&format!("\"canary:{i}\"")),
            "input {i} was refused, yet what followed reached the leader"
        );
    }
    for i in &canaries {
        assert!(
            seen.contains(&format!("\"canary:{i}\"")),
            "input {i} was accepted but its canary never reached the leader"
        );
    }
    assert!(bystander_ok.load(Ordering::Acquire) > 0);

    // Still serving, and the follower has exactly what the leader has.
    let mut fresh = Raw::connect(proxy.addr()).await;
    assert_eq!(fresh.cmd(&["PING"]).await, Resp::Simple("PONG".into()));
    let (code, _) = proxy.http("GET", "/healthz", None).await;
    assert_eq!(code, 200);
    proxy.drained().await;
    assert_same_data(&leader, &follower).await;
}

// ---------------------------------------------------------------------------------------
// ZooKeeper

fn zk_request(out: &mut Vec<u8>, xid: i32, opcode: i32, body: &impl Record) {
    let mut b = BytesMut::new();
    RawZk::request(&mut b, xid, opcode, body);
    out.extend_from_slice(&b);
}

/// Requests after the handshake: valid ones, damaged ones, and a canary create.
fn zk_input(rng: &mut XorShift, i: usize) -> Vec<u8> {
    let mut v = Vec::new();
    let mut xid = 1;
    for j in 0..rng.below(3) {
        let path = format!("/fz-{i}-{j}");
        let n = rng.below(10);
        let data = rng.bytes(n);
        let start = v.len();
        match rng.below(4) {
            0 => zk_request(
                &mut v,
                xid,
                op::CREATE,
                &CreateRequest {
                    path,
                    data: Some(data.into()),
                    acl: common::zk::open_acl(),
                    flags: 0,
                },
            ),
            1 => zk_request(
                &mut v,
                xid,
                op::SET_DATA,
                &SetDataRequest {
                    path,
                    data: Some(data.into()),
                    version: -1,
                },
            ),
            2 => zk_request(
                &mut v,
                xid,
                op::GET_DATA,
                &GetDataRequest { path, watch: false },
            ),
            _ => zk_request(
                &mut v,
                xid,
                op::DELETE,
                &DeleteRequest { path, version: -1 },
            ),
        }
        xid += 1;
        // Damage the body of a request other than a create (a create's damaged ACL could
        // leave a znode nobody may read, which says nothing about the proxy).
        if rng.below(3) == 0 && v.get(start + 8..start + 12) != Some(&op::CREATE.to_be_bytes()) {
            mutate(rng, &mut v, start + 12);
            break; // the length prefix no longer matches: what follows is noise
        }
    }
    match rng.below(4) {
        0 => {} // well-formed
        1 => v.extend_from_slice(&(-(rng.below(1000) as i32) - 1).to_be_bytes()),
        2 => v.extend_from_slice(&0x7fff_0000i32.to_be_bytes()),
        _ => {
            // A frame too short for its RequestHeader.
            let n = rng.below(8);
            v.extend_from_slice(&(n as i32).to_be_bytes());
            v.extend_from_slice(&rng.bytes(n));
        }
    }
    zk_request(
        &mut v,
        xid,
        op::CREATE,
        &CreateRequest {
            path: format!("/canary-{i}"),
            data: Some(b"x".to_vec().into()),
            acl: common::zk::open_acl(),
            flags: 0,
        },
    );
    v
}

/// Whether the proxy's framing refuses `input` before its last frame (the canary).
fn zk_refused(input: &[u8], max: usize) -> bool {
    let mut buf = BytesMut::from(input);
    loop {
        match next_frame(&mut buf, max) {
            Ok(Some(f)) => {
                if RequestHeader::decode(&mut Reader::from_bytes(&f)).is_err() {
                    return true;
                }
            }
            Ok(None) => return false,
            Err(_) => return true,
        }
    }
}

#[tokio::test]
async fn zookeeper_fuzzed_frames_through_the_proxy() {
    let (leader, follower) = tokio::join!(ZkServer::standalone(), ZkServer::standalone());
    let proxy = ZkProxy::start(&leader.addr(), Some(&follower.addr())).await;
    let cfg = example_config("zookeeper.toml");
    let max = cfg.zookeeper.as_ref().expect("[zookeeper]").max_frame_bytes;

    let stop = Arc::new(AtomicBool::new(false));
    let bystander_ok = Arc::new(AtomicUsize::new(0));
    let by = {
        let (stop, ok) = (stop.clone(), bystander_ok.clone());
        let c = proxy.client().await;
        tokio::spawn(async move {
            c.create("/bystander", b"", &persistent())
                .await
                .expect("create /bystander");
            let deadline = Instant::now() + Duration::from_secs(300);
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) && Instant::now() < deadline {
                let (p, v) = (format!("/bystander/{n}"), format!("value-{n}"));
                c.create(&p, v.as_bytes(), &persistent())
                    .await
                    .unwrap_or_else(|e| panic!("bystander create {p}: {e}"));
                let (got, _) = c.get_data(&p).await.expect("bystander getData");
                assert_eq!(got, v.as_bytes());
                ok.fetch_add(1, Ordering::AcqRel);
                n += 1;
            }
        })
    };

    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let refused = Mutex::new(Vec::new());
    for i in 0..150 {
        let input = zk_input(&mut rng, i);
        let mut raw = RawZk::connect(proxy.addr()).await;
        let _ = tokio::time::timeout(WAIT, raw.stream.write_all(&input)).await;
        let _ = raw.stream.shutdown().await;
        let (_, closed) = read_to_close(&mut raw.stream).await;
        assert!(closed, "input {i}: proxy did not close after EOF");
        if zk_refused(&input, max) {
            refused.lock().expect("lock").push(i);
        }
    }
    stop.store(true, Ordering::Release);
    by.await.expect("bystander task");
    assert!(bystander_ok.load(Ordering::Acquire) > 0);

    let refused = refused.into_inner().expect("lock");
    eprintln!("{} of 150 inputs refused by the framing", refused.len());
    assert!(refused.len() >= 50, "only {} refused", refused.len());
    let direct = common::zk::zk_client(&leader.addr()).await;
    for i in &refused {
        let p = format!("/canary-{i}");
        let exists = direct.check_stat(&p).await.expect("exists on the leader");
        assert!(
            exists.is_none(),
            "input {i} was refused, yet the canary after it reached the leader"
        );
    }

    // Still serving, and the follower has exactly what the leader has.
    let c = proxy.client().await;
    c.create("/after-fuzz", b"ok", &persistent())
        .await
        .expect("create after fuzzing");
    assert_eq!(c.get_data("/after-fuzz").await.expect("getData").0, b"ok");
    let (code, _) = proxy.http("GET", "/healthz", None).await;
    assert_eq!(code, 200);
    proxy.drained().await;
    common::zk::assert_same_tree(&leader.addr(), &follower.addr()).await;
}
