//! The connection's one task: a loop that waits on whichever of the client and the server
//! can move, in either direction, and on the few signals that end a session. Requests go
//! from the client's read buffer to the server's out buffer, replies from the server's read
//! buffer to the client's; no channel or other task sits between them, and no timer or
//! waiter is registered per request: the signals are futures pinned once, the slow-client
//! deadline is only armed while replies wait for the client, the linger only once the
//! client is gone.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use super::reply::Replies;
use super::state::Session;
use super::Mode;
use crate::session_io::{
    write_some, ReadSize, Watch, BACKEND_OUT_HIGH, CLIENT_OUT_HIGH, READ_MOST,
};
use crate::tls::stream::WriteHalf;
use crate::tls::Stream;

/// How long replies still owed are awaited after the client left.
const LINGER: Duration = Duration::from_secs(10);
/// Requests in flight past which the client is not read until replies come.
const MAX_OWED: usize = 64 * 1024;

/// Bytes still missing of the frame `buf` begins (its 4-byte length is read), at most a
/// megabyte ahead: room reserved for it at once saves regrowing the buffer.
fn frame_rest(buf: &BytesMut) -> usize {
    buf.first_chunk::<4>()
        .and_then(|p| usize::try_from(i32::from_be_bytes(*p)).ok())
        .map_or(0, |len| (4 + len).saturating_sub(buf.len()))
        .min(16 * READ_MOST)
}

/// Why the loop ended.
#[derive(PartialEq, Eq)]
enum End {
    Done,
    /// The leader ensemble serving it was declared down.
    LeaderDown,
}

pub(super) async fn run(mut s: Session, client: Stream, backend: Stream, write_timeout: Duration) {
    let shared = s.shared.clone();
    let (mut client_r, mut client_w) = client.into_split();
    let (mut backend_r, mut backend_w) = backend.into_split();
    let mut buf = BytesMut::new();
    let mut to_backend = BytesMut::new();
    let mut rbuf = BytesMut::new();
    let mut out = BytesMut::new();
    let (mut client_read, mut backend_read) = (ReadSize::default(), ReadSize::default());
    let mut requests_open = true;
    // False once a write to the client failed or timed out: the client is dropped, but the
    // replies it is owed are still read, so the writes they acknowledge are mirrored.
    let mut client_ok = true;
    let mut backend_ok = true;
    let (mut client_unflushed, mut backend_unflushed) = (false, false);
    let mut linger: Option<Instant> = None;
    let mut stall: Option<Instant> = None;
    // A child token: its own node (lock and notify). A clone shares the one node of the
    // whole process, whose lock every session's every poll of the loop would take.
    let closing = shared.closing.child_token().cancelled_owned();
    tokio::pin!(closing);
    // Follower-served: closed once the leader ensemble is back, at the next moment nothing
    // is in flight. Leader-served with a follower to go to: closed at once when the leader
    // ensemble is declared down (a silent server would hold the client until its session
    // expired), so the client reconnects and is served by the follower.
    let follower = matches!(s.mode, Mode::Follower { .. });
    let health = (follower || shared.follower.is_some()).then(|| shared.leader_health.subscribe());
    let mut leader_up = health.as_ref().is_none_or(|w| *w.borrow());
    let mut health = Watch::new(health);
    let end = loop {
        s.flush_local(&mut out);
        if !client_ok {
            out.clear();
        }
        let out_idle = (out.is_empty() && !client_unflushed) || !client_ok;
        if s.tally.due(s.pending.is_empty()) {
            s.flush_counters();
        }
        if out_idle {
            stall = None;
            let nothing_owed = s.pending.is_empty() && (to_backend.is_empty() || !backend_ok);
            if !requests_open {
                if nothing_owed {
                    break End::Done;
                }
                // The client is gone but the server still owes replies (their writes must
                // be mirrored): the connection stays open for them, for a while.
                linger.get_or_insert_with(|| Instant::now() + LINGER);
            }
            if follower && leader_up && nothing_owed {
                tracing::debug!("leader ensemble is back; closing follower-served connection");
                break End::Done;
            }
        } else if stall.is_none() {
            stall = Some(Instant::now() + write_timeout);
        }
        if !follower && !leader_up {
            tracing::debug!("leader ensemble declared down; closing leader-served connection");
            break End::LeaderDown;
        }
        let read_client =
            requests_open && s.pending.len() < MAX_OWED && to_backend.len() < BACKEND_OUT_HIGH;
        let read_backend = out.len() < CLIENT_OUT_HIGH || !client_ok;
        if read_client {
            let more = frame_rest(&buf);
            client_read.reserve(&mut buf, more);
        }
        if read_backend {
            let more = frame_rest(&rbuf);
            backend_read.reserve(&mut rbuf, more);
        }
        tokio::select! {
            biased;
            r = backend_r.read_buf(&mut rbuf), if read_backend => match r {
                Ok(n) if n > 0 => {
                    backend_read.read(n);
                    if !replies(&mut s, &mut rbuf, &mut out).await {
                        break End::Done;
                    }
                }
                _ => break End::Done,
            },
            r = write_some(&mut client_w, &mut out, &mut client_unflushed),
                if client_ok && (!out.is_empty() || client_unflushed) => match r {
                // Progress: the client reads, however slowly.
                Ok(()) => stall = None,
                Err(_) => {
                    client_ok = false;
                    requests_open = false;
                }
            },
            r = write_some(&mut backend_w, &mut to_backend, &mut backend_unflushed),
                if backend_ok && (!to_backend.is_empty() || backend_unflushed) => {
                if r.is_err() {
                    // The server read sees it go; replies already owed are still awaited.
                    backend_ok = false;
                    to_backend.clear();
                    requests_open = false;
                }
            },
            r = client_r.read_buf(&mut buf), if read_client => match r {
                Ok(n) if n > 0 => {
                    client_read.read(n);
                    if !s.requests(&mut buf, &mut to_backend) {
                        requests_open = false;
                    }
                }
                _ => requests_open = false,
            },
            // Shutdown: like a client EOF (what is owed is still answered).
            _ = &mut closing, if requests_open => requests_open = false,
            up = health.changed(), if health.active() => {
                if let Some(up) = up {
                    leader_up = up;
                }
            },
            // (Lazy: a disabled branch's future is still built, and a `Sleep` is not free.)
            _ = async { if let Some(d) = linger { tokio::time::sleep_until(d).await } }, if linger.is_some() => {
                break End::Done;
            },
            _ = async { if let Some(d) = stall { tokio::time::sleep_until(d).await } }, if stall.is_some() && client_ok => {
                shared.metrics.client_error("slow_client");
                tracing::debug!("client stopped reading its replies; dropping it");
                client_ok = false;
                requests_open = false;
            },
        }
    };
    if let Some(z) = s.conn_zxid {
        shared.leader_zxid(s.server, z, false).await;
    }
    s.lost_in_flight();
    s.flush_counters();
    // The last replies read (not after a lost leader: the client reconnects elsewhere).
    if client_ok && end == End::Done {
        finish_writes(&mut client_w, &out, write_timeout).await;
    }
}

/// Handles a read of replies; false when the connection must end.
async fn replies(s: &mut Session, rbuf: &mut BytesMut, out: &mut BytesMut) -> bool {
    loop {
        match s.replies(rbuf, out) {
            Replies::Done => return true,
            Replies::Bad => return false,
            Replies::FirstZxid(z) => {
                // Before anything this connection acknowledged is queued: the writer must
                // know if history restarted.
                s.shared.leader_zxid(s.server, z, true).await;
                s.first_checked = true;
            }
        }
    }
}

async fn finish_writes(client: &mut WriteHalf, out: &[u8], limit: Duration) {
    if !out.is_empty() {
        let _ = tokio::time::timeout(limit, crate::tls::stream::write_flush(client, out)).await;
    }
}
