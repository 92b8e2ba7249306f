//! Warm dedicated leader connections for pins (multiplexing).
//!
//! NiFi's state provider reads state with a plain `GET` and replaces it with
//! `WATCH`/`GET`/`MULTI`/`GETSET`/`EXEC`, on the same pooled connections: a multiplexed
//! client shares for the `GET`, pins at the `WATCH`, and shares again after the `EXEC`. If
//! every pin opened (and every unpin closed) a leader connection, each state update would
//! pay a TCP connect, the backend handshake (`AUTH`, `SELECT`, TLS) and a close, on both
//! the proxy and the leader. Measured before this pool: that pattern ran at 0.27× direct
//! multiplexed against 0.37× pinned (`benches/redis_proxy`, "NiFi getState + mix").
//!
//! A pin's connection that ends in the state a new one starts in (a transient pin, back at
//! a safe point: database 0, RESP2, no `MULTI`, no `WATCH`, no subscription, nothing owed)
//! is kept here for the next pin instead. It is only ever taken whole by one client.
//! Taken back out, a connection is checked first: the leader's [`Epoch`] must be the one it
//! was opened under (a Sentinel switch makes it a connection to a replica; a leader that
//! went down may have lost it silently), it must not have waited longer than
//! [`SPARE_IDLE`], and it must be open with nothing to read (a server that closed it,
//! timed it out or restarted has sent its EOF by then).

use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, ReadBuf};

use crate::replication::queue::lock;
use crate::tls::stream::{ReadHalf, WriteHalf};

/// A spare older than this is closed rather than used: a leader's `timeout` may have
/// closed it, and an old one is no faster than a new one worth the doubt.
pub const SPARE_IDLE: Duration = Duration::from_secs(60);

/// What a connection was opened under: the leader's master generation (a Sentinel switch
/// bumps it) and how many times the leader had gone down (a leader that vanished and came
/// back may have lost the connection without a word: a crashed host sends no FIN).
pub type Epoch = (u64, u64);

struct Spare {
    r: ReadHalf,
    w: WriteHalf,
    since: Instant,
    epoch: Epoch,
}

/// At most `max` idle dedicated connections, most recently returned first.
pub struct Spares {
    max: usize,
    idle: Mutex<Vec<Spare>>,
}

impl Spares {
    pub fn new(max: usize) -> Self {
        Spares {
            max,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// A warm connection opened under `epoch`, if one is still good; the ones found stale
    /// on the way are closed.
    pub fn take(&self, epoch: Epoch) -> Option<(ReadHalf, WriteHalf)> {
        loop {
            let mut s = lock(&self.idle).pop()?;
            // Checked outside the lock: closing a stale one is a system call.
            if s.epoch == epoch && s.since.elapsed() < SPARE_IDLE && quiet(&mut s.r) {
                return Some((s.r, s.w));
            }
        }
    }

    /// Keeps a connection in the state a new one starts in for the next pin; closes it
    /// when the pool is full.
    /// Also closes the spares that waited past [`SPARE_IDLE`]: with fewer pins at a time
    /// than spares, the oldest are never taken (the newest go first) and would hold leader
    /// connections for good.
    pub fn put(&self, r: ReadHalf, w: WriteHalf, epoch: Epoch) {
        let stale: Vec<Spare> = {
            let mut idle = lock(&self.idle);
            let mut stale = Vec::new();
            let mut i = 0;
            while i < idle.len() {
                if idle[i].since.elapsed() >= SPARE_IDLE {
                    stale.push(idle.remove(i));
                } else {
                    i += 1;
                }
            }
            if idle.len() < self.max {
                idle.push(Spare {
                    r,
                    w,
                    since: Instant::now(),
                    epoch,
                });
            }
            stale
        };
        drop(stale); // closed outside the lock
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.idle).len()
    }
}

/// Open, with nothing to read: one read attempt that must find nothing there yet. An EOF,
/// an error, or bytes nobody asked for (a server's error before it closes) all disqualify.
fn quiet(r: &mut ReadHalf) -> bool {
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    let mut cx = Context::from_waker(Waker::noop());
    matches!(Pin::new(r).poll_read(&mut cx, &mut buf), Poll::Pending)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::tls::Stream;

    /// A connected pair on loopback: our halves, and the server's end.
    async fn pair(l: &TcpListener) -> ((ReadHalf, WriteHalf), TcpStream) {
        let addr = l.local_addr().expect("addr");
        let (ours, theirs) = tokio::join!(TcpStream::connect(addr), l.accept());
        let ours = Stream::from(ours.expect("connect")).into_split();
        (ours, theirs.expect("accept").0)
    }

    #[tokio::test]
    async fn a_spare_is_taken_only_under_its_epoch_open_and_quiet() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let spares = Spares::new(2);
        assert!(spares.take((0, 0)).is_none());

        // Same epoch, open and quiet: taken.
        let ((r, w), _server) = pair(&l).await;
        spares.put(r, w, (0, 0));
        assert!(spares.take((0, 0)).is_some());

        // Another epoch (a Sentinel switch, or the leader went down since): closed.
        let ((r, w), _server2) = pair(&l).await;
        spares.put(r, w, (0, 0));
        assert!(spares.take((1, 0)).is_none());
        assert!(
            spares.take((0, 0)).is_none(),
            "the stale one was closed, not kept"
        );

        // The server closed it (its EOF is waiting): closed, not handed out.
        let ((r, w), server) = pair(&l).await;
        spares.put(r, w, (0, 0));
        drop(server);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(spares.take((0, 0)).is_none());

        // Bytes nobody asked for (an error before a close): not handed out either.
        let ((r, w), mut server) = pair(&l).await;
        spares.put(r, w, (0, 0));
        server.write_all(b"-ERR bye\r\n").await.expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(spares.take((0, 0)).is_none());

        // At most `max` are kept.
        let mut servers = Vec::new();
        for _ in 0..3 {
            let ((r, w), s) = pair(&l).await;
            servers.push(s);
            spares.put(r, w, (0, 0));
        }
        assert!(spares.take((0, 0)).is_some());
        assert!(spares.take((0, 0)).is_some());
        assert!(spares.take((0, 0)).is_none());
    }

    /// One that waited past `SPARE_IDLE` is closed at the next return of another, even
    /// though nobody takes it (the newest are taken first).
    #[tokio::test]
    async fn an_old_spare_is_closed_when_another_is_returned() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let spares = Spares::new(4);
        let ((r, w), mut old_server) = pair(&l).await;
        let since = Instant::now()
            .checked_sub(SPARE_IDLE)
            .expect("the clock is past SPARE_IDLE");
        lock(&spares.idle).push(Spare {
            r,
            w,
            since,
            epoch: (0, 0),
        });
        let ((r, w), _server) = pair(&l).await;
        spares.put(r, w, (0, 0));
        assert_eq!(spares.len(), 1);
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), old_server.read(&mut byte))
            .await
            .expect("closed in time")
            .expect("read");
        assert_eq!(n, 0, "the old spare's connection was closed");
    }
}
