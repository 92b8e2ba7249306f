//! One ZooKeeper client connection, relayed to one server of the leader ensemble.
//!
//! The `ConnectRequest` goes through byte for byte (session id, password, timeout, the
//! optional trailing `readOnly` byte), so the client's session — its watches, ephemeral
//! nodes, auth — lives on the leader ensemble exactly as without the proxy. If a server
//! refuses the connect by closing (it is behind the zxid the client has seen) or cannot be
//! reached, the next server of the ensemble is tried; a client reconnecting after its
//! server died therefore resumes its session on another one. Servers are raced under one
//! `connect_timeout_ms` (see `server::race`), so a silent (black-holed) ensemble costs one
//! timeout, and then the follower is tried in the same client connect. While the leader
//! ensemble is declared down, new connections go straight to the follower, and connections
//! relayed to a leader server are closed (a silent server would hold the client until its
//! session expired), so clients reconnect onto the follower.
//!
//! After the handshake, one task (`conn`) moves bytes both ways: the request half
//! (`request`) cuts frames and reads only their header; it answers some itself (a
//! standalone `check`, which corrupts 3.8.0 servers, gets UNIMPLEMENTED; a write while
//! frozen gets NOTREADONLY) and forwards the rest as received (the read buffer itself when
//! all of it goes), queueing an entry per request; a mirrored write's body is copied. The
//! reply half (`reply`) matches every reply to the head of that queue by xid — the Java
//! client treats an out-of-order xid as a lost connection — so made-up replies wait their
//! turn behind replies still in flight; they are stamped when sent, with the newest zxid
//! sent on the connection so far (a client's `lastZxid` is plain assignment and must never
//! go back). Watch notifications (xid −1) are out of band, and servers answer `auth` and
//! SASL packets as soon as they read them, so those replies may overtake the queue. A write
//! the leader acknowledged is handed to the mirror with its zxid (its request and reply
//! decoded only then, `acked`); one whose effect cannot be worked out (a `deleteContainer`,
//! a record that does not decode) is counted and marks the follower out of sync, never
//! dropped silently. Counters, latency samples and the shared newest zxid are added to the
//! shared metrics in batches (`state::Tally`): when nothing is in flight (before the replies
//! go out, so the metrics read after them are exact), every 64 events, and at the end.
//! When the client leaves — or a write to it fails, or it takes no replies for its read
//! timeout (two thirds of the session timeout) and is dropped — the leader connection
//! stays open (up to 10 s) for replies still owed, so the writes they acknowledge are
//! mirrored rather than lost to a half-closed socket.
//!
//! Read failover: when no server of the leader ensemble takes the session, statemirror opens
//! a session of its own on the follower ensemble for this client and answers the client's
//! connect itself — with the client's own session id and password and `readOnly=true`, so a
//! Java client enters its read-only state and polls `isro` (answered `ro` until the leader is
//! back). Reads and watches are served by the follower; writes get NOTREADONLY. The
//! follower's zxids mean nothing on the leader ensemble and a client that had seen a higher
//! zxid than its server would be refused there, so every zxid in a reply header is pinned to
//! the last leader zxid the client reported (`lastZxidSeen`): it never goes backwards and the
//! later reconnect to the leader is accepted. `setWatches` re-registrations carry a leader
//! zxid too; it is replaced by 0 (the follower then reports every watched node that exists
//! as changed: spurious notifications, never missed ones). Reply bodies are the follower's
//! own: a `Stat` carries the follower's zxids, times and versions. `closeSession` closes
//! statemirror's follower session, not the client's session on the leader ensemble (which
//! expires there). When the leader ensemble is healthy again the connection is closed at the
//! next moment nothing is in flight (requests already forwarded included); the client
//! reconnects through the proxy to the leader and resumes its session if it has not expired
//! meanwhile.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::AsyncReadExt;

// Both sides are plain TCP or TLS: the client side on a `[zookeeper.listen_tls]` listener.
use crate::tls::stream::write_flush;
use crate::tls::Stream;

use super::frame::encode_frame;
use super::jute::Record;
use super::proto::connect::{ConnectRequest, ConnectResponse};
use super::server::{LeaderConnect, ZkShared};

mod acked;
mod conn;
mod reply;
mod request;
mod state;

/// How long a new connection may take to send its first frame.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds on how long one write of replies to a client may take (normally the negotiated
/// session timeout; see `serve`).
const MIN_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn serve(shared: Arc<ZkShared>, mut client: Stream) {
    let mut first4 = [0u8; 4];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, client.read_exact(&mut first4)).await {
        Ok(Ok(_)) => {}
        _ => return,
    }
    if let Some(word) = super::frame::four_letter_word(&first4) {
        return super::probe::four_letter(&shared, client, word).await;
    }
    let len = i32::from_be_bytes(first4);
    if len <= 0 || len as usize > shared.cfg.max_frame_bytes {
        shared.metrics.client_error("protocol");
        return;
    }
    let mut body = vec![0u8; len as usize];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, client.read_exact(&mut body)).await {
        Ok(Ok(_)) => {}
        _ => return,
    }
    let body = Bytes::from(body);
    let Ok(request) = ConnectRequest::from_bytes(&body) else {
        shared.metrics.client_error("protocol");
        tracing::debug!("garbage instead of a ConnectRequest; closing");
        return;
    };
    let mut connect = BytesMut::with_capacity(body.len() + 4);
    connect.put_slice(&first4);
    connect.put_slice(&body);
    // While the leader ensemble is down (and there is a follower) it is not tried at all: a
    // silent one would cost every new client a whole connect timeout.
    let leader = if shared.leader_health.is_up() || shared.follower.is_none() {
        shared.connect_leader(&connect).await
    } else {
        LeaderConnect::Nothing
    };
    let (backend, response, mode) = match leader {
        LeaderConnect::ReadWrite(b, r) => (b, r, Mode::Leader { session: None }),
        // No read-write leader server: serve reads from the follower ensemble, if there is
        // one; a read-only leader server is the last resort.
        leader => match shared.connect_follower(&request).await {
            Some((b, theirs)) => {
                let resume = request.session_id != 0;
                let ours = ConnectResponse {
                    protocol_version: 0,
                    time_out: theirs.time_out,
                    session_id: if resume {
                        request.session_id
                    } else {
                        theirs.session_id
                    },
                    passwd: if resume {
                        request.passwd.clone()
                    } else {
                        theirs.passwd
                    },
                    read_only: request.read_only.map(|_| true),
                };
                let mut f = BytesMut::new();
                encode_frame(&mut f, |w| w.write(&ours));
                tracing::info!(
                    session = format!("{:#x}", ours.session_id),
                    "leader ensemble unreachable; serving this session's reads from the follower"
                );
                (
                    b,
                    f.freeze(),
                    Mode::Follower {
                        zxid: request.last_zxid_seen,
                    },
                )
            }
            None => match leader {
                LeaderConnect::ReadOnly(b, r) => (b, r, Mode::Leader { session: None }),
                _ => return, // like a dead server: the client tries again
            },
        },
    };
    if write_flush(&mut client, &response).await.is_err() {
        return;
    }
    // Which client session this is, for its mirrored ephemerals (leader mode only).
    let session = match (&shared.ephemerals, mode) {
        (Some(eph), Mode::Leader { .. }) => match ConnectResponse::from_bytes(&response.slice(4..))
        {
            Ok(r) if r.session_id != 0 => {
                eph.attach(
                    r.session_id,
                    Duration::from_millis(r.time_out.max(0) as u64),
                );
                Some(r.session_id)
            }
            // The leader says the session expired: so are its nodes.
            _ if request.session_id != 0 => {
                eph.end(request.session_id, shared.max_zxid.load(Ordering::Acquire));
                None
            }
            _ => None,
        },
        _ => None,
    };
    shared.metrics.connections.increment(1.0);
    let mode = match mode {
        Mode::Leader { .. } => Mode::Leader { session },
        follower => follower,
    };
    // A client that cannot take its replies for its read timeout (two thirds of the session
    // timeout: past it a ZooKeeper client gives up on the connection itself) is dropped,
    // early enough to collect what the leader still owes before the session expires.
    let negotiated = ConnectResponse::from_bytes(&response.slice(4..))
        .map(|r| r.time_out)
        .unwrap_or(0);
    let write_timeout = if negotiated > 0 {
        Duration::from_millis(negotiated as u64 * 2 / 3).max(MIN_WRITE_TIMEOUT)
    } else {
        DEFAULT_WRITE_TIMEOUT
    };
    let server = backend.peer_addr().ok();
    let s = state::Session::new(shared.clone(), mode, server);
    conn::run(s, client, backend, write_timeout).await;
    shared.metrics.connections.decrement(1.0);
    if let (Some(eph), Some(s)) = (&shared.ephemerals, session) {
        eph.detach(s, shared.max_zxid.load(Ordering::Acquire));
    }
}

/// Who serves the connection.
#[derive(Clone, Copy)]
enum Mode {
    /// `session`: the client's session id, when its ephemerals are mirrored.
    Leader { session: Option<i64> },
    /// The follower ensemble, through statemirror's own session; every reply's zxid is
    /// pinned to `zxid`, the last leader zxid the client had seen.
    Follower { zxid: i64 },
}
