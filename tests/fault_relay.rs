//! The fault-injecting relay (`common::fault`) itself, between real clients and a real
//! redis-server: each mode does what it says, on open and on new connections.
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::fault::{Fault, FaultRelay};
use common::*;
use redis::AsyncCommands;
use tokio::io::AsyncReadExt;

/// Long enough to be sure nothing is coming back on loopback.
const QUIET: Duration = Duration::from_millis(300);
/// Bound on anything that should happen (generous: 2 slow cores).
const WAIT: Duration = Duration::from_secs(5);

fn pong() -> Resp {
    Resp::Simple("PONG".into())
}

fn sock(relay: &FaultRelay) -> SocketAddr {
    relay.addr().parse().expect("relay address")
}

async fn connected_clients(server: &RedisServer) -> i64 {
    redis_info(server, "clients", "connected_clients")
        .await
        .and_then(|v| v.parse().ok())
        .expect("connected_clients")
}

/// Reads once from a connection that should have been closed: `Ok` with what ended it
/// (`"reset"` or `"eof"`), `Err` if it is still open (or sent data) after `WAIT`.
async fn read_end(stream: &mut tokio::net::TcpStream) -> Result<&'static str, String> {
    let mut buf = [0u8; 1024];
    match tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
        Err(_) => Err(format!("still open after {WAIT:?}")),
        Ok(Ok(0)) => Ok("eof"),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok("reset"),
        Ok(Err(e)) => Err(format!("unexpected error {e:?}")),
        Ok(Ok(n)) => Err(format!("unexpected {n} bytes")),
    }
}

/// A real client (the `redis` crate) works through the relay and it counts the connection.
#[tokio::test]
async fn pass_forwards_both_ways() {
    let server = RedisServer::start();
    let relay = FaultRelay::start(&server.addr());
    assert_eq!(relay.mode(), Fault::Pass);
    let mut c = client(&format!("redis://{}", relay.addr())).await;
    let reply: String = redis::cmd("PING").query_async(&mut c).await.expect("PING");
    assert_eq!(reply, "PONG");
    let _: () = c.set("k", "v").await.expect("SET");
    let mut direct = server.conn().await;
    let v: String = direct.get("k").await.expect("GET");
    assert_eq!(v, "v", "the write went through to the server");
    assert_eq!(relay.connections(), 1);
}

/// Each chunk is held for the delay, in both directions; `Pass` makes it quick again.
#[tokio::test]
async fn delay_holds_each_chunk() {
    let server = RedisServer::start();
    let relay = FaultRelay::start(&server.addr());
    let mut c = Raw::connect(sock(&relay)).await;
    assert_eq!(c.cmd(&["PING"]).await, pong());

    let delay = Duration::from_millis(200);
    relay.set(Fault::Delay(delay));
    let t = Instant::now();
    assert_eq!(c.cmd(&["PING"]).await, pong());
    let took = t.elapsed();
    assert!(took >= delay, "PING took {took:?} under a {delay:?} delay");
    assert!(took < WAIT, "PING took {took:?} under a {delay:?} delay");

    relay.set(Fault::Pass);
    assert_eq!(c.cmd(&["PING"]).await, pong());
}

/// A stalled link forwards nothing but stays open; the held request goes through and is
/// answered once the link passes again.
#[tokio::test]
async fn stall_holds_until_pass() {
    let server = RedisServer::start();
    let relay = FaultRelay::start(&server.addr());
    let mut c = Raw::connect(sock(&relay)).await;
    assert_eq!(c.cmd(&["PING"]).await, pong());

    relay.set(Fault::Stall);
    c.send(&["SET", "stalled", "1"]).await;
    assert_eq!(c.read_within(QUIET).await, Err(ReadEnd::TimedOut));
    assert_eq!(relay.connections(), 1, "stalled connection kept open");
    let mut direct = server.conn().await;
    let n: i64 = direct.exists("stalled").await.expect("EXISTS");
    assert_eq!(n, 0, "the stalled request must not have reached the server");

    relay.set(Fault::Pass);
    assert_eq!(c.read_within(WAIT).await, Ok(Resp::Simple("OK".into())));
    let n: i64 = direct.exists("stalled").await.expect("EXISTS");
    assert_eq!(n, 1);
}

/// A new connection under `Blackhole` is accepted but never reaches the server; on an open
/// connection the data is dropped (not held): after `Pass` only new requests are answered.
#[tokio::test]
async fn blackhole_drops_everything() {
    let server = RedisServer::start();
    let relay = FaultRelay::start(&server.addr());
    let mut open = Raw::connect(sock(&relay)).await;
    assert_eq!(open.cmd(&["PING"]).await, pong());

    relay.set(Fault::Blackhole);
    let mut new = Raw::connect(sock(&relay)).await;
    new.send(&["PING"]).await;
    assert_eq!(new.read_within(QUIET).await, Err(ReadEnd::TimedOut));
    open.send(&["SET", "lost", "1"]).await;
    assert_eq!(open.read_within(QUIET).await, Err(ReadEnd::TimedOut));
    assert_eq!(relay.connections(), 2, "blackholed connections stay open");
    // Only the relay's upstream for `open` and this INFO connection: `new` never connected.
    assert_eq!(connected_clients(&server).await, 2);

    relay.set(Fault::Pass);
    assert_eq!(
        open.read_within(QUIET).await,
        Err(ReadEnd::TimedOut),
        "the dropped SET must not be answered late"
    );
    assert_eq!(open.cmd(&["PING"]).await, pong());
    let mut direct = server.conn().await;
    let n: i64 = direct.exists("lost").await.expect("EXISTS");
    assert_eq!(n, 0, "the blackholed SET must not have reached the server");
    assert_eq!(
        new.read_within(QUIET).await,
        Err(ReadEnd::TimedOut),
        "a connection accepted under Blackhole stays blackholed"
    );
}

/// `Reset` kills open connections and refuses new ones; `Pass` accepts again.
#[tokio::test]
async fn reset_kills_open_and_new_connections() {
    let server = RedisServer::start();
    let relay = FaultRelay::start(&server.addr());
    let mut open = Raw::connect(sock(&relay)).await;
    assert_eq!(open.cmd(&["PING"]).await, pong());
    assert_eq!(relay.connections(), 1);

    relay.set(Fault::Reset);
    // A RST (SO_LINGER 0), not a FIN: the first read fails with ECONNRESET.
    let how = read_end(&mut open.stream).await;
    assert_eq!(how, Ok("reset"), "open connection under Reset");
    let mut new = Raw::connect(sock(&relay)).await;
    let how = read_end(&mut new.stream).await;
    assert_eq!(how, Ok("reset"), "new connection under Reset");
    eventually(WAIT, || async {
        match relay.connections() {
            0 => Ok(()),
            n => Err(format!("{n} connections still open")),
        }
    })
    .await;

    relay.set(Fault::Pass);
    let mut again = Raw::connect(sock(&relay)).await;
    assert_eq!(again.cmd(&["PING"]).await, pong());
}

/// 1 MB through a 512 KiB/s link takes about 2 s (asserted: at least 1 s).
#[tokio::test]
async fn throttle_limits_bandwidth() {
    let server = RedisServer::start();
    let relay = FaultRelay::start(&server.addr());
    let big = "x".repeat(1_000_000);
    let mut direct = server.conn().await;
    let _: () = direct.set("big", &big).await.expect("SET big");
    let mut c = Raw::connect(sock(&relay)).await;
    assert_eq!(c.cmd(&["PING"]).await, pong());

    relay.set(Fault::Throttle(512 * 1024));
    let t = Instant::now();
    c.send(&["GET", "big"]).await;
    let reply = c.read_within(Duration::from_secs(8)).await;
    let took = t.elapsed();
    assert!(
        matches!(&reply, Ok(Resp::Bulk(v)) if v.len() == big.len()),
        "GET big through the throttle: {:?}",
        reply.map(|r| format!("{:.60?}", r))
    );
    assert!(took >= Duration::from_secs(1), "1 MB took only {took:?}");
}

/// Dropping the relay closes its connections and its listener.
#[tokio::test]
async fn drop_closes_everything() {
    let server = RedisServer::start();
    let relay = FaultRelay::start(&server.addr());
    let addr = sock(&relay);
    let mut c = Raw::connect(addr).await;
    assert_eq!(c.cmd(&["PING"]).await, pong());
    drop(relay);
    assert!(
        c.closed_within(WAIT).await,
        "connection closed with the relay"
    );
    eventually(WAIT, || async {
        match tokio::net::TcpStream::connect(addr).await {
            Err(_) => Ok(()),
            Ok(_) => Err("relay still accepting".to_string()),
        }
    })
    .await;
}
