//! Issue 9, Redis path: the session follows what Redis really did on the connection —
//! SELECT that fails or runs inside MULTI, CLIENT REPLY OFF|SKIP, QUIT, a lost leader, a
//! slow client, SYNC/PSYNC — and mirrors, freezes and classifies accordingly. Real leader
//! and follower redis-servers; raw TCP where the exact bytes matter.
//!
//! Several tests need one write to *run* on the leader before another while its reply is
//! *handled* by the proxy after it. Two tools make that deterministic without timing:
//! - a "stalled" connection: the client asks for a reply bigger than every socket buffer
//!   and does not read, so the proxy cannot read what the leader answers next;
//! - a parked `BLPOP`: Redis runs nothing else from that connection until it is served.
mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const WAIT: Duration = Duration::from_secs(10);

async fn setup() -> (RedisServer, RedisServer, Proxy) {
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let proxy = Proxy::start(&leader, Some(&follower)).await;
    (leader, follower, proxy)
}

/// A client connection speaking RESP by hand, optionally with a tiny receive buffer.
struct Client {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(addr: std::net::SocketAddr) -> Client {
        let s = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        Client { s, buf: Vec::new() }
    }

    /// A client whose socket holds little: a big reply it does not read stalls the proxy.
    async fn connect_small(addr: std::net::SocketAddr) -> Client {
        let sock = TcpSocket::new_v4().expect("socket");
        sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let s = tokio::time::timeout(WAIT, sock.connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        Client { s, buf: Vec::new() }
    }

    /// Sends every command in one write.
    async fn send(&mut self, cmds: &[&[&str]]) {
        let mut out = Vec::new();
        for c in cmds {
            let args: Vec<&[u8]> = c.iter().map(|a| a.as_bytes()).collect();
            out.extend_from_slice(&encode(&args));
        }
        tokio::time::timeout(WAIT, self.s.write_all(&out))
            .await
            .expect("write timed out")
            .expect("write");
    }

    async fn read(&mut self) -> Resp {
        match self.read_or_end().await {
            Some(r) => r,
            None => panic!("connection closed before a reply"),
        }
    }

    /// The next reply, or `None` when the connection ends first; panics after `WAIT`.
    async fn read_or_end(&mut self) -> Option<Resp> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some((r, used)) = parse_resp(&self.buf) {
                self.buf.drain(..used);
                return Some(r);
            }
            let mut chunk = vec![0u8; 256 * 1024];
            match tokio::time::timeout_at(deadline, self.s.read(&mut chunk)).await {
                Err(_) => panic!("no reply within {WAIT:?}"),
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    async fn cmd(&mut self, args: &[&str]) -> Resp {
        self.send(&[args]).await;
        self.read().await
    }
}

fn ok() -> Resp {
    Resp::Simple("OK".into())
}

async fn get(server: &RedisServer, db: u32, key: &str) -> Option<String> {
    let mut c = server.conn().await;
    let _: () = redis::cmd("SELECT")
        .arg(db)
        .query_async(&mut c)
        .await
        .expect("SELECT");
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut c)
        .await
        .expect("GET")
}

async fn leader_cmd(server: &RedisServer, args: &[&str]) -> redis::Value {
    let mut c = server.conn().await;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(&mut c)
        .await
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// The `CLIENT LIST` line of the leader's connection that is blocked in `cmd` with more
/// requests waiting behind it (so the proxy forwarded them, and registered their writes).
async fn wait_parked_with_backlog(leader: &RedisServer, cmd: &str) -> String {
    eventually(WAIT, || async {
        let redis::Value::BulkString(list) = leader_cmd(leader, &["CLIENT", "LIST"]).await else {
            return Err("CLIENT LIST not a bulk string".to_string());
        };
        let list = String::from_utf8_lossy(&list).into_owned();
        list.lines()
            .find(|l| {
                l.contains(&format!("cmd={cmd} "))
                    && l.contains("flags=b")
                    && !l.contains(" qbuf=0 ")
            })
            .map(str::to_string)
            .ok_or(format!("no parked {cmd} with a backlog: {list}"))
    })
    .await
}

fn client_id(line: &str) -> String {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("id="))
        .expect("id=")
        .to_string()
}

/// A value bigger than the kernel's socket buffers (client side small, proxy side ≤ 4 MiB),
/// as key `big` in database `db` of the leader.
async fn put_big(leader: &RedisServer, db: u32) {
    let mut c = leader.conn().await;
    let _: () = redis::cmd("SELECT")
        .arg(db)
        .query_async(&mut c)
        .await
        .expect("SELECT");
    let big = vec![b'x'; 8 << 20];
    let _: () = redis::cmd("SET")
        .arg("big")
        .arg(big)
        .query_async(&mut c)
        .await
        .expect("SET big");
}

/// A connection whose `SET key value` ran on the leader but whose reply the proxy has not
/// handled yet (it sits behind an 8 MiB reply the client does not read). Its database is
/// settled before (no SELECT pipelined), so the proxy may mirror that SET exactly unless it
/// sees another write to the key overlap it. `finish_stalled` reads the replies.
async fn stalled_set(
    leader: &RedisServer,
    proxy: &Proxy,
    db: u32,
    key: &str,
    value: &str,
) -> Client {
    put_big(leader, db).await;
    let mut b = Client::connect_small(proxy.addr()).await;
    assert_eq!(b.cmd(&["SELECT", &db.to_string()]).await, ok());
    b.send(&[&["GET", "big"], &["SET", key, value]]).await;
    eventually(WAIT, || async {
        match get(leader, db, key).await {
            Some(v) if v == value => Ok(()),
            other => Err(format!("stalled SET not run yet: {other:?}")),
        }
    })
    .await;
    b
}

async fn finish_stalled(b: &mut Client) {
    assert!(matches!(b.read().await, Resp::Bulk(v) if v.len() == 8 << 20));
    assert_eq!(b.read().await, ok());
}

/// Client A's write to `key` runs after B's stalled `SET`, but is handled first. Unless the
/// proxy saw the two overlap (same database, same key), B's exact `SET` is queued after
/// A's key copy and the follower keeps B's value while the leader has A's.
async fn assert_converges(
    leader: &RedisServer,
    follower: &RedisServer,
    proxy: &Proxy,
    db: u32,
    key: &str,
) {
    proxy.drained().await;
    let (l, f) = (get(leader, db, key).await, get(follower, db, key).await);
    assert_eq!(l, f, "db {db} key {key}: leader {l:?}, follower {f:?}");
}

// --- Item 2 -----------------------------------------------------------------------------

/// Item 2: a MULTI with SELECT keeps its in-flight registration until EXEC is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_with_select_keeps_its_registration_until_exec() {
    let (leader, follower, proxy) = setup().await;
    let mut a = Client::connect(proxy.addr()).await;
    // A parks on BLPOP; its transaction waits behind it on the leader, already forwarded.
    a.send(&[
        &["BLPOP", "q2", "0"],
        &["MULTI"],
        &["SELECT", "0"],
        &["SET", "k2", "from-exec"],
        &["EXEC"],
    ])
    .await;
    let parked = wait_parked_with_backlog(&leader, "blpop").await;
    // B's SET runs first on the leader; its reply is handled last.
    let mut b = stalled_set(&leader, &proxy, 0, "k2", "from-b").await;
    leader_cmd(&leader, &["LPUSH", "q2", "go"]).await;
    assert!(matches!(a.read().await, Resp::Array(_)), "BLPOP ({parked})");
    assert_eq!(a.read().await, ok());
    assert_eq!(a.read().await, Resp::Simple("QUEUED".into()));
    assert_eq!(a.read().await, Resp::Simple("QUEUED".into()));
    assert_eq!(a.read().await, Resp::Array(vec![ok(), ok()]));
    finish_stalled(&mut b).await;
    assert_eq!(get(&leader, 0, "k2").await.as_deref(), Some("from-exec"));
    assert_converges(&leader, &follower, &proxy, 0, "k2").await;
}

// --- Item 3 -----------------------------------------------------------------------------

/// Item 3: A's `SELECT 99` fails, so its pipelined `SET` runs in db 0: the proxy must treat
/// it as overlapping B's SET of the same key there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_select_leaves_the_request_side_db_alone() {
    let (leader, follower, proxy) = setup().await;
    let mut a = Client::connect(proxy.addr()).await;
    let mut b = stalled_set(&leader, &proxy, 0, "k3", "from-b").await;
    // Pipelined: the SET runs in the old database.
    a.send(&[&["SELECT", "99"], &["SET", "k3", "from-a"]]).await;
    assert!(a.read().await.is_error());
    assert_eq!(a.read().await, ok());
    finish_stalled(&mut b).await;
    assert_converges(&leader, &follower, &proxy, 0, "k3").await;
}

/// Item 3: `SELECT 5` inside MULTI moves the connection to db 5 once EXEC ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_inside_multi_moves_the_request_side_db() {
    let (leader, follower, proxy) = setup().await;
    let mut a = Client::connect(proxy.addr()).await;
    assert_eq!(a.cmd(&["MULTI"]).await, ok());
    assert_eq!(a.cmd(&["SELECT", "5"]).await, Resp::Simple("QUEUED".into()));
    assert_eq!(a.cmd(&["EXEC"]).await, Resp::Array(vec![ok()]));
    let mut b = stalled_set(&leader, &proxy, 5, "k3m", "from-b").await;
    assert_eq!(a.cmd(&["SET", "k3m", "from-a"]).await, ok());
    finish_stalled(&mut b).await;
    assert_converges(&leader, &follower, &proxy, 5, "k3m").await;
}

/// Item 3: `SELECT abc` queued in MULTI is one EXEC result; the SET after it is mirrored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparseable_select_in_multi_keeps_exec_results_aligned() {
    let (leader, follower, proxy) = setup().await;
    let mut a = Client::connect(proxy.addr()).await;
    a.send(&[
        &["MULTI"],
        &["SELECT", "abc"],
        &["SET", "k3x", "v"],
        &["EXEC"],
    ])
    .await;
    assert_eq!(a.read().await, ok());
    assert_eq!(a.read().await, Resp::Simple("QUEUED".into()));
    assert_eq!(a.read().await, Resp::Simple("QUEUED".into()));
    match a.read().await {
        Resp::Array(r) => assert!(r.len() == 2 && r[0].is_error() && r[1] == ok(), "{r:?}"),
        other => panic!("{other:?}"),
    }
    proxy.drained().await;
    assert_eq!(get(&follower, 0, "k3x").await.as_deref(), Some("v"));
    assert_converges(&leader, &follower, &proxy, 0, "k3x").await;
}

// --- Item 4 -----------------------------------------------------------------------------

/// Item 4: under `CLIENT REPLY OFF` a write is copied after it ran, not when it was sent,
/// and holds its freeze ticket until then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_off_write_is_copied_after_it_ran() {
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let proxy = Proxy::start_with(&leader, Some(&follower), |c| {
        c.maintenance.drain_timeout_ms = 300;
    })
    .await;
    let mut a = Client::connect(proxy.addr()).await;
    // WAIT for a replica that does not exist parks the connection (a read: no ticket).
    a.send(&[
        &["CLIENT", "REPLY", "OFF"],
        &["WAIT", "1", "0"],
        &["INCR", "c4"],
        &["CLIENT", "REPLY", "SKIP"],
        &["INCR", "c4"],
    ])
    .await;
    let parked = wait_parked_with_backlog(&leader, "wait").await;
    // The INCRs behind the parked WAIT have not run: a freeze must not call them drained.
    let (code, body) = proxy.http("PUT", "/maintenance", None).await;
    assert_eq!(code, 200, "{body}");
    let b: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(b["writes_drained"], false, "{body}");
    proxy.http("DELETE", "/maintenance", None).await;
    // (Had the proxy copied c4 when the INCRs were sent, the follower would hold nothing.)
    leader_cmd(&leader, &["CLIENT", "UNBLOCK", &client_id(&parked)]).await;
    // Every command of A ran once this is answered.
    assert_eq!(a.cmd(&["CLIENT", "REPLY", "ON"]).await, ok());
    assert_eq!(a.cmd(&["PING"]).await, Resp::Simple("PONG".into()));
    assert_eq!(get(&leader, 0, "c4").await.as_deref(), Some("2"));
    proxy.drained().await;
    assert_eq!(get(&follower, 0, "c4").await.as_deref(), Some("2"));
}

/// Item 4: an EXEC under `CLIENT REPLY OFF` is mirrored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_off_exec_is_mirrored() {
    let (_leader, follower, proxy) = setup().await;
    let mut a = Client::connect(proxy.addr()).await;
    a.send(&[
        &["CLIENT", "REPLY", "OFF"],
        &["MULTI"],
        &["SET", "e4", "1"],
        &["INCR", "f4"],
        &["EXEC"],
    ])
    .await;
    assert_eq!(a.cmd(&["CLIENT", "REPLY", "ON"]).await, ok());
    proxy.drained().await;
    assert_eq!(get(&follower, 0, "e4").await.as_deref(), Some("1"));
    assert_eq!(get(&follower, 0, "f4").await.as_deref(), Some("1"));
}

/// Item 4: the DISCARD sent for an EXEC aborted by the freeze under `CLIENT REPLY OFF`
/// expects no reply (it would swallow the next one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_off_aborted_exec_does_not_eat_a_reply() {
    let (_leader, _follower, proxy) = setup().await;
    let (code, body) = proxy.http("PUT", "/maintenance", None).await;
    assert_eq!(code, 200, "{body}");
    let mut a = Client::connect(proxy.addr()).await;
    a.send(&[
        &["CLIENT", "REPLY", "OFF"],
        &["MULTI"],
        &["SET", "x4", "1"],
        &["EXEC"],
        &["CLIENT", "REPLY", "ON"],
        &["PING"],
    ])
    .await;
    assert_eq!(a.read().await, ok());
    assert_eq!(a.read().await, Resp::Simple("PONG".into()));
    assert_eq!(a.cmd(&["ECHO", "e"]).await, Resp::bulk("e"));
    proxy.http("DELETE", "/maintenance", None).await;
}

// --- Item 5 -----------------------------------------------------------------------------

/// Item 5: a FLUSHALL that was in flight when the leader connection died is not replayed
/// (it never ran); the follower is marked out of sync instead and resynced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_connection_does_not_replay_a_flushall_that_may_not_have_run() {
    let (leader, follower, proxy) = setup().await;
    let mut a = Client::connect(proxy.addr()).await;
    assert_eq!(a.cmd(&["SET", "keep5", "v"]).await, ok());
    proxy.drained().await;
    assert_eq!(get(&follower, 0, "keep5").await.as_deref(), Some("v"));
    a.send(&[&["BLPOP", "q5", "0"], &["FLUSHALL"]]).await;
    let parked = wait_parked_with_backlog(&leader, "blpop").await;
    leader_cmd(&leader, &["CLIENT", "KILL", "ID", &client_id(&parked)]).await;
    assert!(a.read().await.is_error());
    settle_with("redis", || async { proxy.status().await }).await;
    assert_eq!(get(&leader, 0, "keep5").await.as_deref(), Some("v"));
    assert_eq!(get(&follower, 0, "keep5").await.as_deref(), Some("v"));
}

// --- Item 6 -----------------------------------------------------------------------------

/// Item 6: a session opened while only the fallback table existed switches to the leader's
/// table once it is loaded; MOVE's destination is copied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_leave_the_fallback_table_once_the_leader_answers() {
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    leader_cmd(&leader, &["ACL", "SETUSER", "default", "-command"]).await;
    let proxy = Proxy::start(&leader, Some(&follower)).await;
    assert_eq!(proxy.status().await["redis"]["command_table"], "fallback");
    let mut a = Client::connect(proxy.addr()).await;
    assert_eq!(a.cmd(&["PING"]).await, Resp::Simple("PONG".into()));
    leader_cmd(&leader, &["ACL", "SETUSER", "default", "+command"]).await;
    eventually(WAIT, || async {
        let s = proxy.status().await;
        (s["redis"]["command_table"] == "leader")
            .then_some(())
            .ok_or(format!("{}", s["redis"]["command_table"]))
    })
    .await;
    assert_eq!(a.cmd(&["SET", "m6", "v"]).await, ok());
    assert_eq!(a.cmd(&["MOVE", "m6", "3"]).await, Resp::Int(1));
    let (code, body) = proxy.http("PUT", "/maintenance", None).await;
    assert_eq!(code, 200, "{body}");
    // A read the fallback table does not know (it would be refused as a write).
    assert!(!a.cmd(&["FUNCTION", "LIST"]).await.is_error());
    proxy.http("DELETE", "/maintenance", None).await;
    proxy.drained().await;
    assert_eq!(get(&follower, 3, "m6").await.as_deref(), Some("v"));
    assert_eq!(get(&follower, 0, "m6").await, None);
}

// --- Item 7 -----------------------------------------------------------------------------

/// Item 7: a blocking write holds a freeze ticket; a parked one keeps the freeze from
/// reporting drained (it may still run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_blocking_write_keeps_the_freeze_from_draining() {
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let proxy = Proxy::start_with(&leader, Some(&follower), |c| {
        c.maintenance.drain_timeout_ms = 300;
    })
    .await;
    let mut a = Client::connect(proxy.addr()).await;
    a.send(&[&["BLPOP", "q7", "0"], &["PING"]]).await;
    wait_parked_with_backlog(&leader, "blpop").await;
    let (code, body) = proxy.http("PUT", "/maintenance", None).await;
    assert_eq!(code, 200, "{body}");
    let b: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(b["writes_drained"], false, "{body}");
    proxy.http("DELETE", "/maintenance", None).await;
    leader_cmd(&leader, &["LPUSH", "q7", "go"]).await;
    assert!(matches!(a.read().await, Resp::Array(_)));
    assert_eq!(a.read().await, Resp::Simple("PONG".into()));
    let (_, body) = proxy.http("PUT", "/maintenance", None).await;
    let b: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(b["writes_drained"], true, "{body}");
    proxy.http("DELETE", "/maintenance", None).await;
}

// --- Item 8 -----------------------------------------------------------------------------

/// Item 8: PFCOUNT, EVAL_RO and a `no-writes` script are reads: allowed while frozen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_scripts_and_pfcount_are_reads() {
    let (_leader, _follower, proxy) = setup().await;
    let mut a = Client::connect(proxy.addr()).await;
    assert_eq!(a.cmd(&["PFADD", "h8", "a", "b"]).await, Resp::Int(1));
    assert_eq!(a.cmd(&["SET", "s8", "v"]).await, ok());
    let (code, body) = proxy.http("PUT", "/maintenance", None).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(a.cmd(&["PFCOUNT", "h8"]).await, Resp::Int(2));
    let get_s8 = "return redis.call('GET', KEYS[1])";
    assert_eq!(
        a.cmd(&["EVAL_RO", get_s8, "1", "s8"]).await,
        Resp::bulk("v")
    );
    let shebang = format!("#!lua flags=no-writes\n{get_s8}");
    assert_eq!(a.cmd(&["EVAL", &shebang, "1", "s8"]).await, Resp::bulk("v"));
    // A script that may write is still refused.
    assert!(a.cmd(&["EVAL", get_s8, "1", "s8"]).await.is_error());
    proxy.http("DELETE", "/maintenance", None).await;
}

// --- Item 9 -----------------------------------------------------------------------------

/// Item 9: a client that stops reading is dropped, but the writes it already sent ran on
/// the leader and are mirrored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_writes_are_still_mirrored() {
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let proxy = Proxy::start_with(&leader, Some(&follower), |c| {
        if let Some(r) = c.redis.as_mut() {
            r.client_write_timeout_ms = 1500;
        }
    })
    .await;
    put_big(&leader, 0).await;
    let mut a = Client::connect_small(proxy.addr()).await;
    a.send(&[&["GET", "big"]]).await;
    // Let the proxy take the whole reply and block writing it to us (not needed for
    // correctness: without it the writes below are simply already known to the reply side).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sets: Vec<[String; 3]> = (0..50)
        .map(|i| ["SET".into(), format!("s9:{i}"), i.to_string()])
        .collect();
    let cmds: Vec<Vec<&str>> = sets
        .iter()
        .map(|s| s.iter().map(String::as_str).collect())
        .collect();
    let refs: Vec<&[&str]> = cmds.iter().map(Vec::as_slice).collect();
    a.send(&refs).await;
    eventually(WAIT, || async {
        match get(&leader, 0, "s9:49").await {
            Some(_) => Ok(()),
            None => Err("writes not run yet".to_string()),
        }
    })
    .await;
    eventually(WAIT, || async {
        for i in 0..50 {
            if get(&follower, 0, &format!("s9:{i}")).await != Some(i.to_string()) {
                return Err(format!("s9:{i} not mirrored"));
            }
        }
        Ok(())
    })
    .await;
    drop(a);
}

// --- Item 10 ----------------------------------------------------------------------------

/// Item 10: after QUIT the pipelined commands get nothing (Redis closes after +OK) and do
/// not run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quit_ends_the_pipeline_quietly() {
    let (leader, _follower, proxy) = setup().await;
    let mut a = Client::connect(proxy.addr()).await;
    a.send(&[&["PING"], &["QUIT"], &["SET", "q10", "x"], &["PING"]])
        .await;
    assert_eq!(a.read().await, Resp::Simple("PONG".into()));
    assert_eq!(a.read().await, ok());
    assert_eq!(a.read_or_end().await, None);
    assert_eq!(get(&leader, 0, "q10").await, None);
}

// --- Item 11 ----------------------------------------------------------------------------

/// Item 11: a SYNC the leader refuses is an ordinary error; the connection stays modelled
/// (its later writes are still mirrored and frozen), it does not become a raw pipe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_sync_keeps_the_session_modelled() {
    let (leader, follower, proxy) = setup().await;
    leader_cmd(&leader, &["ACL", "SETUSER", "default", "-sync", "-psync"]).await;
    let mut a = Client::connect(proxy.addr()).await;
    a.send(&[&["SYNC"], &["SET", "k11", "v"]]).await;
    assert!(a.read().await.is_error());
    assert_eq!(a.read().await, ok());
    let (code, body) = proxy.http("PUT", "/maintenance", None).await;
    assert_eq!(code, 200, "{body}");
    assert!(a.cmd(&["SET", "k11", "frozen"]).await.is_error());
    proxy.http("DELETE", "/maintenance", None).await;
    proxy.drained().await;
    assert_eq!(get(&follower, 0, "k11").await.as_deref(), Some("v"));
}

/// Item 11: a replica (`--replicaof` the proxy) and `redis-cli --rdb` work through the
/// sidecar: after SYNC/PSYNC the connection is a byte pipe. REPLCONF ACK gets no reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_and_psync_are_relayed_raw() {
    let (_leader, _follower, proxy) = setup().await;
    let mut a = Client::connect(proxy.addr()).await;
    assert_eq!(a.cmd(&["SET", "r11", "before"]).await, ok());
    // Not a replica: Redis answers REPLCONF ACK with nothing.
    a.send(&[&["REPLCONF", "ACK", "0"], &["PING"]]).await;
    assert_eq!(a.read().await, Resp::Simple("PONG".into()));
    assert_eq!(a.cmd(&["ECHO", "e"]).await, Resp::bulk("e"));
    // The Lua debugger's protocol is not modelled: refused at once, never left to hang.
    assert!(a.cmd(&["SCRIPT", "DEBUG", "YES"]).await.is_error());
    assert_eq!(a.cmd(&["EVAL", "return 1", "0"]).await, Resp::Int(1));

    let dir = tempfile::tempdir().expect("tempdir");
    let rdb = dir.path().join("dump.rdb");
    let port = proxy.addr().port().to_string();
    let mut cli = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port, "--rdb"])
        .arg(&rdb)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("redis-cli");
    let status = eventually(WAIT, || {
        let r = cli.try_wait();
        async move {
            match r {
                Ok(Some(s)) => Ok(s),
                _ => Err("redis-cli --rdb still running".to_string()),
            }
        }
    })
    .await;
    assert!(status.success());
    let bytes = std::fs::read(&rdb).expect("rdb written");
    assert!(bytes.starts_with(b"REDIS"), "not an RDB file");

    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
    let rc = replica.conn().await;
    replica_holds(&rc, "r11", "before").await;
    assert_eq!(a.cmd(&["SET", "r11", "after"]).await, ok());
    replica_holds(&rc, "r11", "after").await;
}

/// Waits (bounded) until the replica's `key` holds `want`.
async fn replica_holds(rc: &redis::aio::MultiplexedConnection, key: &str, want: &str) {
    eventually(WAIT, || async {
        let v: Option<String> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut rc.clone())
            .await
            .map_err(|e| e.to_string())?;
        (v.as_deref() == Some(want))
            .then_some(())
            .ok_or(format!("{v:?}"))
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Item 1: SWAPDB with key copies queued
// ---------------------------------------------------------------------------------------

/// A proxy whose mirror writer is held by a first batch while the follower is frozen, so
/// what is written next reaches the writer as one batch after `SIGCONT`.
async fn held_writer(
    leader: &RedisServer,
    follower: &RedisServer,
) -> (Proxy, redis::aio::MultiplexedConnection) {
    let proxy = Proxy::start_with(leader, Some(follower), |c| {
        c.replication.apply_timeout_ms = 1000;
        c.replication.retry_initial_backoff_ms = 20;
        c.replication.retry_max_backoff_ms = 200;
    })
    .await;
    let mut c = proxy.conn().await;
    let _: () = redis::cmd("SET")
        .arg("warm")
        .arg("w")
        .query_async(&mut c)
        .await
        .expect("SET");
    proxy.drained().await;
    signal(follower.pid(), "STOP");
    let _: () = redis::cmd("SET")
        .arg("trigger")
        .arg("t")
        .query_async(&mut c)
        .await
        .expect("SET");
    tokio::time::sleep(Duration::from_millis(300)).await;
    (proxy, c)
}

/// Copies of keys in databases 0 and 1 are queued, then `SWAPDB 0 1` runs: when the copies
/// are read, the keys are in the other database on the leader (not yet on the follower).
/// They must be read where they are now and written where the follower still has them, so
/// that the replayed swap leaves the follower equal to the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copies_queued_before_a_swapdb_are_read_from_the_swapped_database() {
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let (proxy, mut c0) = held_writer(&leader, &follower).await;
    let mut c1 = client(&format!("{}/1", proxy.url())).await;
    let _: () = redis::cmd("HSET")
        .arg("h0")
        .arg("f")
        .arg("in-db0")
        .query_async(&mut c0)
        .await
        .expect("HSET");
    let _: () = redis::cmd("HSET")
        .arg("h1")
        .arg("f")
        .arg("in-db1")
        .query_async(&mut c1)
        .await
        .expect("HSET");
    let _: () = redis::cmd("SWAPDB")
        .arg(0)
        .arg(1)
        .query_async(&mut c0)
        .await
        .expect("SWAPDB");
    signal(follower.pid(), "CONT");
    proxy.drained().await;
    let mut f1 = client(&format!("{}/1", follower.url())).await;
    let v: Option<String> = redis::cmd("HGET")
        .arg("h0")
        .arg("f")
        .query_async(&mut f1)
        .await
        .expect("HGET");
    assert_eq!(
        v.as_deref(),
        Some("in-db0"),
        "h0 moved to db 1 with the swap"
    );
    assert_same_data(&leader, &follower).await;
}

/// A batch `[SWAPDB 0 1, copy of a hash]` to a follower that has no `RESTORE` (renamed
/// away, as some managed services do): the copy is refused, the writer switches to
/// type-aware copies and applies the batch again. The swap already ran there and must not
/// run a second time (which would undo it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_batch_does_not_replay_its_swapdb_twice() {
    let leader = RedisServer::start();
    let follower = RedisServer::start_with(&["--rename-command", "RESTORE", "\"\""]);
    let (proxy, mut c) = held_writer(&leader, &follower).await;
    let _: () = redis::cmd("SWAPDB")
        .arg(0)
        .arg(1)
        .query_async(&mut c)
        .await
        .expect("SWAPDB");
    let _: () = redis::cmd("HSET")
        .arg("h")
        .arg("f")
        .arg("v")
        .query_async(&mut c)
        .await
        .expect("HSET");
    signal(follower.pid(), "CONT");
    proxy.drained().await;
    let mut f1 = client(&format!("{}/1", follower.url())).await;
    let warm: Option<String> = redis::cmd("GET")
        .arg("warm")
        .query_async(&mut f1)
        .await
        .expect("GET");
    assert_eq!(
        warm.as_deref(),
        Some("w"),
        "db 0 was swapped into db 1 once on the follower"
    );
    assert_same_data(&leader, &follower).await;
}
