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
//! After the handshake, two tasks: the request side reads frames (decoding only their
//! header; a mirrored write's body is copied and decoded when its reply comes), answers
//! some itself (a standalone `check`, which corrupts 3.8.0 servers, gets UNIMPLEMENTED; a
//! write while frozen gets NOTREADONLY) and forwards the rest as received, queueing an entry
//! per request that wakes the reply side only when it must act by itself (`owed`); the reply side
//! matches every reply to the head of the pending queue by xid — the Java client treats an
//! out-of-order xid as a lost connection — so made-up replies wait their turn behind
//! replies still in flight; they are stamped when sent, with the newest zxid sent on the
//! connection so far (a client's `lastZxid` is plain assignment and must never go back).
//! Watch notifications (xid −1) are out of band, and servers answer `auth` and SASL packets
//! as soon as they read them, so those replies may overtake the queue. A write the leader
//! acknowledged is handed to the mirror with its zxid; one whose effect cannot be worked out
//! (a `deleteContainer`, a record that does not decode) is counted and marks the follower out
//! of sync, never dropped silently. When the client leaves — or a write to it fails, or it
//! takes no replies for its read timeout (two thirds of the session timeout) and is dropped —
//! the leader connection stays open (up to 10 s) for replies still owed, so the writes they
//! acknowledge are mirrored rather than lost to a half-closed socket.
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

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use smallvec::SmallVec;
use tokio::io::AsyncReadExt;

// Both sides are plain TCP or TLS: the client side on a `[zookeeper.listen_tls]` listener.
use crate::tls::stream::{
    write_flush, ReadHalf as BackendRead, ReadHalf as ClientRead, WriteHalf as BackendWrite,
    WriteHalf as ClientWrite,
};
use crate::tls::Stream;
use tokio_util::sync::CancellationToken;

use super::frame::{encode_frame, next_frame};
use super::jute::{Reader, Record};
use super::mirror::{Item, ZkOp};
use super::proto::connect::ConnectRequest;
use super::proto::connect::ConnectResponse;
use super::proto::multi::{MultiOp, MultiRequest, MultiResponse, MultiResult};
use super::proto::records::{
    Create2Response, CreateRequest, CreateResponse, CreateTtlRequest, DeleteRequest, ReplyHeader,
    RequestHeader, SetAclRequest, SetDataRequest, SetWatches, SetWatches2, StatResponse,
};
use super::proto::{create_mode, err, is_write, op};
use super::server::{LeaderConnect, ZkShared};
use crate::metrics::Route;
use crate::replication::freeze::WriteTicket;

/// How long a new connection may take to send its first frame.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long replies still owed are awaited after the client left.
const LINGER: Duration = Duration::from_secs(10);
/// Bounds on how long one write of replies to a client may take (normally the negotiated
/// session timeout; see `serve`).
const MIN_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

struct Pending {
    xid: i32,
    op: i32,
    /// The error of a reply made here, or `None` to wait for the server's. Framed when it
    /// is sent, so its zxid is the newest one the client has been sent by then.
    local: Option<i32>,
    /// The request of a forwarded write (to build its mirror op from the reply).
    write: Option<(i32, Bytes)>,
    _ticket: Option<WriteTicket>,
    /// When it was forwarded, for one request in [`LATENCY_SAMPLE`] (the latency histogram).
    sent: Option<Instant>,
}

/// One forwarded request in this many is timed for the latency histogram: the distribution
/// needs no more, and each sample costs a shared-memory update.
const LATENCY_SAMPLE: u32 = 16;

mod owed;
use owed::{CloseOnDrop, Owed};

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
    relay(shared.clone(), client, backend, mode, write_timeout).await;
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

async fn relay(
    shared: Arc<ZkShared>,
    client: Stream,
    backend: Stream,
    mode: Mode,
    write_timeout: Duration,
) {
    let server = backend.peer_addr().ok();
    let (client_r, client_w) = client.into_split();
    let (backend_r, backend_w) = backend.into_split();
    let owed = Arc::new(Owed::new());
    let stop = CancellationToken::new();
    let req = tokio::spawn(requests(
        shared.clone(),
        client_r,
        backend_w,
        owed.clone(),
        stop.clone(),
        mode,
    ));
    let side = ReplySide {
        shared,
        owed,
        spare: Vec::new(),
        stop: stop.clone(),
        mode,
        write_timeout,
        server,
    };
    let leader_down = side.run(client_w, backend_r).await;
    stop.cancel();
    if leader_down {
        // Its write to a silent leader may never finish; nothing it holds matters now.
        req.abort();
    }
    let _ = req.await;
}

async fn requests(
    shared: Arc<ZkShared>,
    mut client: ClientRead,
    mut backend: BackendWrite,
    owed: Arc<Owed<Pending>>,
    stop: CancellationToken,
    mode: Mode,
) -> BackendWrite {
    // The reply side learns the requests ended however this task does (aborted included).
    let _close = CloseOnDrop(owed.clone());
    let mut sampled: u32 = 0;
    let mut batch = Vec::new();
    let max = shared.cfg.max_frame_bytes;
    let mirroring = shared.mirror.is_some() && matches!(mode, Mode::Leader { .. });
    let (route, follower) = match mode {
        Mode::Leader { .. } => (Route::Leader, false),
        Mode::Follower { .. } => (Route::Follower, true),
    };
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut out = BytesMut::with_capacity(16 * 1024);
    loop {
        buf.reserve(16 * 1024);
        let n = tokio::select! {
            _ = stop.cancelled() => return backend,
            // Shutdown: like a client EOF (the reply side answers what is owed).
            _ = shared.closing.cancelled() => return backend,
            r = client.read_buf(&mut buf) => r,
        };
        if !matches!(n, Ok(n) if n > 0) {
            return backend;
        }
        // Whether the reply side must look at the batch now (it holds a reply made here).
        let mut wake = false;
        let mut fatal = false;
        loop {
            let frame = match next_frame(&mut buf, max) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    shared.metrics.client_error("too_large");
                    tracing::debug!(error = %e, "bad frame from client; closing");
                    fatal = true;
                    break;
                }
            };
            let Ok(h) = RequestHeader::decode(&mut Reader::from_bytes(&frame)) else {
                shared.metrics.client_error("protocol");
                fatal = true;
                break;
            };
            let m = &shared.metrics;
            let answer = |e: i32| Pending {
                xid: h.xid,
                op: h.op,
                local: Some(e),
                write: None,
                _ticket: None,
                sent: None,
            };
            if h.op == op::CHECK {
                // Never forwarded: a standalone check corrupts ZooKeeper 3.8.0's log.
                m.requests[1][Route::Rejected as usize].increment(1);
                batch.push(answer(err::UNIMPLEMENTED));
                wake = true;
                continue;
            }
            let mut ticket = None;
            let mut write = None;
            if is_write(h.op) {
                let refused = if follower {
                    m.rejected_leader_unavailable.increment(1);
                    true
                } else {
                    ticket = shared.freeze.begin_write();
                    if ticket.is_none() {
                        m.rejected_maintenance.increment(1);
                    }
                    ticket.is_none()
                };
                if refused {
                    m.requests[1][Route::Rejected as usize].increment(1);
                    batch.push(answer(err::NOT_READ_ONLY));
                    wake = true;
                    continue;
                }
                if mirroring {
                    // Queued until the reply: owns its bytes (not a slice of the read buffer,
                    // which it would keep from being reused).
                    write = Some((h.op, Bytes::copy_from_slice(&frame[8..])));
                }
                m.requests[1][route as usize].increment(1);
            } else {
                m.requests[0][route as usize].increment(1);
            }
            let rewritten = if follower && matches!(h.op, op::SET_WATCHES | op::SET_WATCHES2) {
                zero_relative_zxid(&frame, h.op)
            } else if follower {
                // Region 1's paths, asked of the follower: the state identity map's names.
                crate::nifi::identity_wire::zk_request(&shared.identity.current(), &frame, h.op)
            } else {
                None
            };
            let frame = rewritten.unwrap_or(frame);
            out.put_u32(frame.len() as u32);
            out.put_slice(&frame);
            sampled = sampled.wrapping_add(1);
            batch.push(Pending {
                xid: h.xid,
                op: h.op,
                local: None,
                write,
                _ticket: ticket,
                sent: (sampled % LATENCY_SAMPLE == 1).then(Instant::now),
            });
        }
        // Queued before the requests are forwarded: every reply finds its entry.
        let full = !batch.is_empty() && owed.push(&mut batch, wake);
        if !out.is_empty() {
            if write_flush(&mut backend, &out).await.is_err() {
                return backend;
            }
            out.clear();
        }
        if fatal {
            stop.cancel();
            return backend;
        }
        if full {
            tokio::select! {
                _ = stop.cancelled() => return backend,
                _ = shared.closing.cancelled() => return backend,
                _ = owed.room() => {}
            }
        }
    }
}

/// The reply side of one connection.
struct ReplySide {
    shared: Arc<ZkShared>,
    owed: Arc<Owed<Pending>>,
    /// Swapped with the queue's vector on every take (see `Owed::take`).
    spare: Vec<Pending>,
    stop: CancellationToken,
    mode: Mode,
    /// A client that takes longer than this to take a write of replies is dropped.
    write_timeout: Duration,
    /// The leader server (to notice its history going back, see `ZkShared::leader_zxid`).
    server: Option<SocketAddr>,
}

impl ReplySide {
    /// Entries for requests already forwarded: the request side queues them before it
    /// forwards, so after this every reply the server may still send has its entry.
    /// True once no more will come.
    fn drain(&mut self, pending: &mut VecDeque<Pending>) -> bool {
        self.owed.take(&mut self.spare, pending)
    }

    /// True when it ended because the leader ensemble serving it was declared down.
    async fn run(mut self, mut client: ClientWrite, mut backend: BackendRead) -> bool {
        let shared = self.shared.clone();
        let mode = self.mode;
        let max = shared.cfg.max_frame_bytes;
        let session = match mode {
            Mode::Leader { session } => session,
            Mode::Follower { .. } => None,
        };
        let mut leader_up = match mode {
            Mode::Follower { .. } => Some(shared.leader_health.subscribe()),
            Mode::Leader { .. } => None,
        };
        let mut close_when_idle = leader_up.as_ref().is_some_and(|w| *w.borrow());
        // Leader-served, with a follower to go to: closed at once when the leader ensemble is
        // declared down (a silent server would hold the client until its session expired), so
        // the client reconnects and is served by the follower.
        let mut leader_down = match mode {
            Mode::Leader { .. } if shared.follower.is_some() => {
                Some(shared.leader_health.subscribe())
            }
            _ => None,
        };
        // The newest zxid sent to the client (follower-served: pinned, see the module comment).
        let mut last_zxid = match mode {
            Mode::Leader { .. } => 0,
            Mode::Follower { zxid } => zxid,
        };
        // The newest zxid this leader connection has shown (`None` before its first reply).
        let mut conn_zxid: Option<i64> = None;
        let mut pending: VecDeque<Pending> = VecDeque::new();
        let mut linger: Option<tokio::time::Instant> = None;
        let mut rbuf = BytesMut::with_capacity(16 * 1024);
        let mut out = BytesMut::with_capacity(16 * 1024);
        let mut requests_open = true;
        // False once a write to the client failed or timed out: the client is dropped, but the
        // replies it is owed are still read, so the writes they acknowledge are mirrored.
        let mut client_ok = true;
        let owed = self.owed.clone();
        let leader_lost = 'conn: loop {
            // Made-up replies go out as soon as everything before them has.
            flush_local(&mut pending, &mut out, last_zxid);
            if !out.is_empty() {
                if client_ok {
                    match tokio::time::timeout(self.write_timeout, write_flush(&mut client, &out))
                        .await
                    {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => client_ok = false,
                        Err(_) => {
                            shared.metrics.client_error("slow_client");
                            tracing::debug!("client stopped reading its replies; dropping it");
                            client_ok = false;
                        }
                    }
                    if !client_ok {
                        // No more requests from it; what it is owed is still collected.
                        self.stop.cancel();
                    }
                }
                out.clear();
            }
            if !requests_open || !client_ok {
                if self.drain(&mut pending) {
                    requests_open = false;
                }
                if pending.is_empty() {
                    break false;
                }
                // The client is gone but the leader still owes replies (their writes must be
                // mirrored): the leader connection stays open for them, for a while.
                linger.get_or_insert_with(|| tokio::time::Instant::now() + LINGER);
            }
            if close_when_idle {
                // A request forwarded just now must get its reply before the close.
                if self.drain(&mut pending) {
                    requests_open = false;
                }
                if pending.is_empty() {
                    tracing::debug!("leader ensemble is back; closing follower-served connection");
                    break false;
                }
            }
            if leader_down.as_ref().is_some_and(|w| !*w.borrow()) {
                tracing::debug!("leader ensemble declared down; closing leader-served connection");
                break true;
            }
            rbuf.reserve(16 * 1024);
            tokio::select! {
                biased;
                // Only replies made here and the end of the requests wake this: the rest is
                // taken when the server replies.
                _ = owed.wake.notified(), if requests_open => {
                    if self.drain(&mut pending) {
                        requests_open = false;
                    }
                }
                _ = self.stop.cancelled(), if requests_open && client_ok => requests_open = false,
                _ = async { match linger { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break false,
                _ = async { match leader_up.as_mut() { Some(w) => w.changed().await.ok(), None => std::future::pending().await } } => {
                    close_when_idle = leader_up.as_ref().is_some_and(|w| *w.borrow());
                }
                // Acted on at the top of the loop.
                _ = async { match leader_down.as_mut() { Some(w) => w.changed().await.ok(), None => std::future::pending().await } } => {}
                r = backend.read_buf(&mut rbuf) => {
                    if !matches!(r, Ok(n) if n > 0) {
                        break false;
                    }
                    // Entries for these replies were queued before their requests were
                    // forwarded (see Redis's session for the race this closes).
                    if self.drain(&mut pending) {
                        requests_open = false;
                    }
                    loop {
                        let frame = match next_frame(&mut rbuf, max) {
                            Ok(Some(f)) => f,
                            Ok(None) => break,
                            Err(e) => {
                                tracing::warn!(error = %e, "bad frame from the leader; closing client");
                                break 'conn false;
                            }
                        };
                        let Ok(h) = ReplyHeader::decode(&mut Reader::from_bytes(&frame)) else {
                            break 'conn false;
                        };
                        let frame = match mode {
                            // Follower zxids never reach the client (see the module comment).
                            Mode::Follower { zxid } => pin_zxid(&frame, zxid),
                            Mode::Leader { .. } => {
                                if h.zxid > 0 {
                                    if conn_zxid.is_none() {
                                        // Before anything this connection acknowledged is
                                        // queued: the writer must know if history restarted.
                                        shared.leader_zxid(self.server, h.zxid, true).await;
                                    }
                                    // The shared maximum only when this connection's grew (not
                                    // once per reply).
                                    if conn_zxid.is_none_or(|z| h.zxid > z) {
                                        conn_zxid = Some(h.zxid);
                                        shared.max_zxid.fetch_max(h.zxid, Ordering::AcqRel);
                                    }
                                    last_zxid = last_zxid.max(h.zxid);
                                }
                                frame
                            }
                        };
                        if h.xid != super::proto::xid::NOTIFICATION {
                            flush_local(&mut pending, &mut out, last_zxid);
                            // Servers answer auth and SASL packets as soon as they read them,
                            // ahead of replies still in flight: those may overtake the queue.
                            let at = match pending.front() {
                                Some(p) if p.xid == h.xid => Some(0),
                                _ => pending
                                    .iter()
                                    .position(|p| p.xid == h.xid && matches!(p.op, op::AUTH | op::SASL)),
                            };
                            let Some(p) = at.and_then(|i| pending.remove(i)) else {
                                tracing::warn!(
                                    expected = pending.front().map(|p| p.xid),
                                    got = h.xid,
                                    "leader replied out of order; closing client"
                                );
                                break 'conn false;
                            };
                            if let Some(sent) = p.sent {
                                shared.metrics.leader_latency.record(sent.elapsed().as_secs_f64());
                            }
                            if p.op == op::CLOSE_SESSION && h.err == 0 {
                                if let (Some(eph), Some(s)) = (&shared.ephemerals, session) {
                                    eph.end(s, h.zxid.max(shared.max_zxid.load(Ordering::Acquire)));
                                }
                            }
                            if let (Some((op, req)), 0) = (p.write, h.err) {
                                mirror_reply(&shared, session, op, &req, &frame.slice(16..), h.zxid);
                            }
                        }
                        if client_ok {
                            out.put_u32(frame.len() as u32);
                            out.put_slice(&frame);
                        }
                    }
                }
            }
        };
        if let Some(z) = conn_zxid {
            shared.leader_zxid(self.server, z, false).await;
        }
        // Entries not taken yet are requests in flight too.
        self.drain(&mut pending);
        end(&shared, pending);
        leader_lost
    }
}

/// Frames the made-up replies at the head of `pending`, stamped with the newest zxid sent
/// on this connection so far: a client's `lastZxid` is plain assignment and must not go
/// backwards.
fn flush_local(pending: &mut VecDeque<Pending>, out: &mut BytesMut, last_zxid: i64) {
    while let Some(e) = pending.front().and_then(|p| p.local) {
        let Some(p) = pending.pop_front() else { break };
        encode_frame(out, |w| {
            w.write(&ReplyHeader {
                xid: p.xid,
                zxid: last_zxid,
                err: e,
            })
        });
    }
}

/// The frame with its reply header's zxid replaced.
fn pin_zxid(frame: &Bytes, zxid: i64) -> Bytes {
    let mut f = BytesMut::from(&frame[..]);
    f[4..12].copy_from_slice(&zxid.to_be_bytes());
    f.freeze()
}

/// A `setWatches`/`setWatches2` request (header included) with `relativeZxid` 0.
fn zero_relative_zxid(frame: &Bytes, op: i32) -> Option<Bytes> {
    let body = frame.slice(8..);
    let mut out = BytesMut::with_capacity(frame.len());
    out.put_slice(&frame[..8]);
    let mut w = super::jute::Writer::with_buf(out);
    if op == op::SET_WATCHES {
        let mut r = SetWatches::from_bytes(&body).ok()?;
        r.relative_zxid = 0;
        w.write(&r);
    } else {
        let mut r = SetWatches2::from_bytes(&body).ok()?;
        r.relative_zxid = 0;
        w.write(&r);
    }
    Some(w.freeze())
}

/// The connection is over; writes still in flight may or may not have run on the leader,
/// and the mirror cannot know their effect.
fn end(shared: &ZkShared, pending: VecDeque<Pending>) {
    let unknown = pending.iter().filter(|p| p.write.is_some()).count();
    if unknown > 0 {
        if let Some(q) = &shared.mirror {
            use crate::replication::queue::MirrorView;
            q.sync().mark_out_of_sync(format!(
                "a leader connection was lost with {unknown} write(s) in flight; whether they ran is unknown"
            ));
        }
    }
}

/// Queues the mirror op for an acknowledged write. A write whose effect cannot be worked
/// out is not dropped silently: it is counted and the follower marked out of sync (a resync
/// then copies what it changed).
fn mirror_reply(
    shared: &ZkShared,
    session: Option<i64>,
    op: i32,
    req: &Bytes,
    resp: &Bytes,
    zxid: i64,
) {
    let Some(q) = &shared.mirror else { return };
    match mirror_op(shared, session, op, req, resp, zxid) {
        Ok(Some(o)) => q.push(o),
        Ok(None) => {}
        Err(why) => {
            use crate::replication::queue::MirrorView;
            tracing::warn!(
                op = super::proto::op_name(op),
                zxid = format!("{zxid:#x}"),
                "an acknowledged write cannot be mirrored: {why}"
            );
            q.count_dropped(1);
            q.sync().mark_out_of_sync(format!(
                "an acknowledged {} (zxid {zxid:#x}) was not mirrored: {why}",
                super::proto::op_name(op)
            ));
        }
    }
}

/// The mirror op for an acknowledged write: `Ok(None)` when nothing is to be mirrored
/// (ephemeral nodes that are not mirrored, filtered paths, a failed multi), `Err` when its
/// effect cannot be worked out from the request and reply.
fn mirror_op(
    shared: &ZkShared,
    session: Option<i64>,
    op: i32,
    req: &Bytes,
    resp: &Bytes,
    zxid: i64,
) -> Result<Option<ZkOp>, String> {
    let bad =
        |what: &str| format!("its {what} does not decode (a path or ACL id that is not UTF-8?)");
    // Each item with the ephemeral owner of the node it changes (from the reply's stat; 0
    // for a persistent node): a setData or setACL of a client's ephemeral must not create a
    // persistent copy on the follower.
    let mut items: SmallVec<[(Item, i64); 1]> = SmallVec::new();
    match op {
        op::CREATE | op::CREATE2 | op::CREATE_CONTAINER => {
            let r = CreateRequest::from_bytes(req).map_err(|_| bad("request"))?;
            let path = if op == op::CREATE {
                CreateResponse::from_bytes(resp).map(|r| r.path)
            } else {
                Create2Response::from_bytes(resp).map(|r| r.path)
            }
            .map_err(|_| bad("reply"))?;
            items.extend(create_item(path, r.data, r.acl, r.flags, 0).map(|i| (i, 0)));
        }
        op::CREATE_TTL => {
            let r = CreateTtlRequest::from_bytes(req).map_err(|_| bad("request"))?;
            let path = Create2Response::from_bytes(resp)
                .map_err(|_| bad("reply"))?
                .path;
            items.extend(create_item(path, r.data, r.acl, r.flags, r.ttl).map(|i| (i, 0)));
        }
        op::DELETE => items.push((
            Item::Delete {
                path: DeleteRequest::from_bytes(req)
                    .map_err(|_| bad("request"))?
                    .path,
            },
            0,
        )),
        op::SET_DATA => {
            let r = SetDataRequest::from_bytes(req).map_err(|_| bad("request"))?;
            let owner = StatResponse::from_bytes(resp)
                .map_err(|_| bad("reply"))?
                .stat
                .ephemeral_owner;
            let item = Item::SetData {
                path: r.path,
                data: r.data,
            };
            items.push((item, owner));
        }
        op::SET_ACL => {
            let r = SetAclRequest::from_bytes(req).map_err(|_| bad("request"))?;
            let owner = StatResponse::from_bytes(resp)
                .map_err(|_| bad("reply"))?
                .stat
                .ephemeral_owner;
            let item = Item::SetAcl {
                path: r.path,
                acl: r.acl,
            };
            items.push((item, owner));
        }
        op::MULTI => {
            let r = MultiRequest::from_bytes(req).map_err(|_| bad("request"))?;
            let res = MultiResponse::from_bytes(resp).map_err(|_| bad("reply"))?;
            if res.results.iter().any(|x| x.err() != 0) {
                return Ok(None); // the whole multi failed: nothing changed
            }
            if res.results.len() != r.ops.len() {
                return Err("its reply does not match its request".into());
            }
            for (o, result) in r.ops.into_iter().zip(res.results) {
                let created = match &result {
                    MultiResult::Create { path } | MultiResult::Create2 { path, .. } => {
                        Some(path.clone())
                    }
                    _ => None,
                };
                let owner = match &result {
                    MultiResult::SetData { stat } => stat.ephemeral_owner,
                    _ => 0,
                };
                let created = || created.clone().ok_or_else(|| bad("reply"));
                match o {
                    MultiOp::Create(c) | MultiOp::Create2(c) | MultiOp::CreateContainer(c) => items
                        .extend(create_item(created()?, c.data, c.acl, c.flags, 0).map(|i| (i, 0))),
                    MultiOp::CreateTtl(c) => items.extend(
                        create_item(created()?, c.data, c.acl, c.flags, c.ttl).map(|i| (i, 0)),
                    ),
                    MultiOp::Delete(d) => items.push((Item::Delete { path: d.path }, 0)),
                    MultiOp::SetData(s) => items.push((
                        Item::SetData {
                            path: s.path,
                            data: s.data,
                        },
                        owner,
                    )),
                    MultiOp::Check(_) | MultiOp::GetData(_) | MultiOp::GetChildren(_) => {}
                }
            }
        }
        // An internal opcode (the server's container GC): which node a client's one names
        // is not known here.
        op::DELETE_CONTAINER => return Err("deleteContainer from a client is not mirrored".into()),
        _ => return Ok(None), // reconfig: ZooKeeper's own config, not client state
    }
    items.retain(|(it, _)| shared.filter.allows(it.path()));
    let tracking = shared.ephemerals.as_ref().zip(session);
    let mut out: SmallVec<[Item; 1]> = SmallVec::new();
    for (it, owner) in items {
        let it = it.into_owned();
        match (&it, tracking) {
            (Item::Create { mode, .. }, None) if *mode == create_mode::EPHEMERAL => {}
            // Someone's ephemeral changed: not mirrored at all, or (mirrored) the copy the
            // registry keeps is updated and made again ephemeral on the follower.
            (Item::SetData { .. } | Item::SetAcl { .. }, None) if owner != 0 => {}
            (Item::SetData { path, data }, Some((eph, _))) if owner != 0 => {
                out.extend(eph.changed(owner, path, Some(data.clone()), None));
            }
            (Item::SetAcl { path, acl }, Some((eph, _))) if owner != 0 => {
                out.extend(eph.changed(owner, path, None, Some(acl.clone())));
            }
            (
                Item::Create {
                    path,
                    data,
                    acl,
                    mode,
                    ..
                },
                Some((eph, session)),
            ) if *mode == create_mode::EPHEMERAL => {
                eph.created(session, path, data.clone(), acl.clone());
                out.push(it);
            }
            (Item::Delete { path }, Some((eph, _))) => {
                eph.deleted(path);
                out.push(it);
            }
            _ => out.push(it),
        }
    }
    Ok((!out.is_empty()).then_some(ZkOp { zxid, items: out }))
}

/// A create as the follower should see it: sequential nodes under the leader's name,
/// ephemeral nodes not at all (they belong to client sessions).
fn create_item(
    path: String,
    data: Option<Bytes>,
    acl: Vec<super::proto::records::Acl>,
    flags: i32,
    ttl: i64,
) -> Option<Item> {
    let mode = match flags {
        create_mode::PERSISTENT | create_mode::PERSISTENT_SEQUENTIAL => create_mode::PERSISTENT,
        create_mode::CONTAINER => create_mode::CONTAINER,
        create_mode::PERSISTENT_WITH_TTL | create_mode::PERSISTENT_SEQUENTIAL_WITH_TTL => {
            create_mode::PERSISTENT_WITH_TTL
        }
        // Ephemeral: only mirrored with `mirror_ephemeral` (see `ephemeral`).
        create_mode::EPHEMERAL | create_mode::EPHEMERAL_SEQUENTIAL => create_mode::EPHEMERAL,
        _ => return None,
    };
    Some(Item::Create {
        path,
        data,
        acl,
        mode,
        ttl,
    })
}
