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
//! After the handshake, as for Redis, two tasks: the request side reads frames, answers
//! some itself (a standalone `check`, which corrupts 3.8.0 servers, gets UNIMPLEMENTED; a
//! write while frozen gets NOTREADONLY) and forwards the rest as received; the reply side
//! matches every reply to the head of the pending queue by xid — the Java client treats an
//! out-of-order xid as a lost connection — so made-up replies wait their turn behind
//! replies still in flight. Watch notifications (xid −1) are out of band, and servers
//! answer `auth` and SASL packets as soon as they read them, so those replies may overtake
//! the queue. A write the leader acknowledged is handed to the mirror with its zxid. When the
//! client leaves, the leader connection stays open (up to 10 s) for replies still owed, so
//! the writes they acknowledge are mirrored rather than lost to a half-closed socket.
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
//! as changed: spurious notifications, never missed ones). When the leader ensemble is
//! healthy again the connection is closed at the next moment nothing is in flight; the
//! client reconnects through the proxy to the leader and resumes its session if it has not
//! expired meanwhile.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use smallvec::SmallVec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::frame::{encode_frame, next_frame};
use super::jute::{Reader, Record};
use super::mirror::{Item, ZkOp};
use super::proto::connect::ConnectRequest;
use super::proto::connect::ConnectResponse;
use super::proto::multi::{MultiOp, MultiRequest, MultiResponse, MultiResult};
use super::proto::records::{
    Create2Response, CreateRequest, CreateResponse, CreateTtlRequest, DeleteRequest, ReplyHeader,
    RequestHeader, SetAclRequest, SetDataRequest, SetWatches, SetWatches2,
};
use super::proto::{create_mode, err, is_write, op};
use super::server::{LeaderConnect, ZkShared};
use crate::metrics::Route;
use crate::replication::freeze::WriteTicket;

/// How long a new connection may take to send its first frame.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long replies still owed are awaited after the client left.
const LINGER: Duration = Duration::from_secs(10);

struct Pending {
    xid: i32,
    op: i32,
    /// A reply made here (already framed), or `None` to wait for the server's.
    local: Option<Bytes>,
    /// The request of a forwarded write (to build its mirror op from the reply).
    write: Option<(i32, Bytes)>,
    _ticket: Option<WriteTicket>,
    sent: Instant,
}

pub async fn serve(shared: Arc<ZkShared>, mut client: TcpStream) {
    let mut first4 = [0u8; 4];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, client.read_exact(&mut first4)).await {
        Ok(Ok(_)) => {}
        _ => return,
    }
    if let Some(word) = super::frame::four_letter_word(&first4) {
        return super::server::four_letter(&shared, client, word).await;
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
    if client.write_all(&response).await.is_err() {
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
    relay(shared.clone(), client, backend, mode).await;
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

async fn relay(shared: Arc<ZkShared>, client: TcpStream, backend: TcpStream, mode: Mode) {
    let (client_r, client_w) = client.into_split();
    let (backend_r, backend_w) = backend.into_split();
    let (tx, rx) = mpsc::channel::<Vec<Pending>>(64);
    let stop = CancellationToken::new();
    let pinned = match mode {
        Mode::Leader { .. } => 0,
        Mode::Follower { zxid } => zxid,
    };
    let last_zxid = Arc::new(AtomicI64::new(pinned));
    let req = tokio::spawn(requests(
        shared.clone(),
        client_r,
        backend_w,
        tx,
        stop.clone(),
        last_zxid.clone(),
        mode,
    ));
    let leader_down = replies(
        shared,
        client_w,
        backend_r,
        rx,
        stop.clone(),
        last_zxid,
        mode,
    )
    .await;
    stop.cancel();
    if leader_down {
        // Its write to a silent leader may never finish; nothing it holds matters now.
        req.abort();
    }
    let _ = req.await;
}

async fn requests(
    shared: Arc<ZkShared>,
    mut client: OwnedReadHalf,
    mut backend: OwnedWriteHalf,
    tx: mpsc::Sender<Vec<Pending>>,
    stop: CancellationToken,
    last_zxid: Arc<AtomicI64>,
    mode: Mode,
) -> OwnedWriteHalf {
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
        let mut batch = Vec::new();
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
            let now = Instant::now();
            let local = |e: i32| {
                let mut f = BytesMut::with_capacity(20);
                encode_frame(&mut f, |w| {
                    w.write(&ReplyHeader {
                        xid: h.xid,
                        zxid: last_zxid.load(Ordering::Acquire),
                        err: e,
                    })
                });
                Some(f.freeze())
            };
            let answer = |e: i32| Pending {
                xid: h.xid,
                op: h.op,
                local: local(e),
                write: None,
                _ticket: None,
                sent: now,
            };
            if h.op == op::CHECK {
                // Never forwarded: a standalone check corrupts ZooKeeper 3.8.0's log.
                m.requests[1][Route::Rejected as usize].increment(1);
                batch.push(answer(err::UNIMPLEMENTED));
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
                    continue;
                }
                if mirroring {
                    write = Some((h.op, frame.slice(8..)));
                }
                m.requests[1][route as usize].increment(1);
            } else {
                m.requests[0][route as usize].increment(1);
            }
            let rewritten = if follower && matches!(h.op, op::SET_WATCHES | op::SET_WATCHES2) {
                zero_relative_zxid(&frame, h.op)
            } else {
                None
            };
            let frame = rewritten.unwrap_or(frame);
            out.put_u32(frame.len() as u32);
            out.put_slice(&frame);
            batch.push(Pending {
                xid: h.xid,
                op: h.op,
                local: None,
                write,
                _ticket: ticket,
                sent: now,
            });
        }
        if !batch.is_empty() && tx.send(batch).await.is_err() {
            return backend;
        }
        if !out.is_empty() {
            if backend.write_all(&out).await.is_err() {
                return backend;
            }
            out.clear();
        }
        if fatal {
            stop.cancel();
            return backend;
        }
    }
}

/// True when it ended because the leader ensemble serving it was declared down.
async fn replies(
    shared: Arc<ZkShared>,
    mut client: OwnedWriteHalf,
    mut backend: OwnedReadHalf,
    mut rx: mpsc::Receiver<Vec<Pending>>,
    stop: CancellationToken,
    last_zxid: Arc<AtomicI64>,
    mode: Mode,
) -> bool {
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
        Mode::Leader { .. } if shared.follower.is_some() => Some(shared.leader_health.subscribe()),
        _ => None,
    };
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut linger: Option<tokio::time::Instant> = None;
    let mut rbuf = BytesMut::with_capacity(16 * 1024);
    let mut out = BytesMut::with_capacity(16 * 1024);
    let mut requests_open = true;
    loop {
        // Made-up replies go out as soon as everything before them has.
        while pending.front().is_some_and(|p| p.local.is_some()) {
            if let Some(p) = pending.pop_front() {
                out.put_slice(&p.local.unwrap_or_default());
            }
        }
        if !out.is_empty() {
            if client.write_all(&out).await.is_err() {
                break;
            }
            out.clear();
        }
        if !requests_open && pending.is_empty() {
            break;
        }
        if !requests_open {
            // The client is gone but the leader still owes replies (their writes must be
            // mirrored): the leader connection stays open for them, for a while.
            linger.get_or_insert_with(|| tokio::time::Instant::now() + LINGER);
        }
        if close_when_idle && pending.is_empty() {
            tracing::debug!("leader ensemble is back; closing follower-served connection");
            break;
        }
        if leader_down.as_ref().is_some_and(|w| !*w.borrow()) {
            tracing::debug!("leader ensemble declared down; closing leader-served connection");
            end(&shared, pending);
            return true;
        }
        rbuf.reserve(16 * 1024);
        tokio::select! {
            biased;
            b = rx.recv(), if requests_open => match b {
                Some(b) => pending.extend(b),
                None => requests_open = false,
            },
            _ = stop.cancelled(), if requests_open => requests_open = false,
            _ = async { match linger { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break,
            _ = async { match leader_up.as_mut() { Some(w) => w.changed().await.ok(), None => std::future::pending().await } } => {
                close_when_idle = leader_up.as_ref().is_some_and(|w| *w.borrow());
            }
            // Acted on at the top of the loop.
            _ = async { match leader_down.as_mut() { Some(w) => w.changed().await.ok(), None => std::future::pending().await } } => {}
            r = backend.read_buf(&mut rbuf) => {
                if !matches!(r, Ok(n) if n > 0) {
                    break;
                }
                // Entries for these replies were sent before their requests (see Redis's
                // session for the race this closes).
                while let Ok(b) = rx.try_recv() {
                    pending.extend(b);
                }
                loop {
                    let frame = match next_frame(&mut rbuf, max) {
                        Ok(Some(f)) => f,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "bad frame from the leader; closing client");
                            end(&shared, pending);
                            return false;
                        }
                    };
                    let Ok(h) = ReplyHeader::decode(&mut Reader::from_bytes(&frame)) else {
                        end(&shared, pending);
                        return false;
                    };
                    let frame = match mode {
                        // Follower zxids never reach the client (see the module comment).
                        Mode::Follower { zxid } => pin_zxid(&frame, zxid),
                        Mode::Leader { .. } => {
                            if h.zxid > 0 {
                                last_zxid.fetch_max(h.zxid, Ordering::AcqRel);
                                shared.max_zxid.fetch_max(h.zxid, Ordering::AcqRel);
                            }
                            frame
                        }
                    };
                    if h.xid != super::proto::xid::NOTIFICATION {
                        while pending.front().is_some_and(|p| p.local.is_some()) {
                            if let Some(p) = pending.pop_front() {
                                out.put_slice(&p.local.unwrap_or_default());
                            }
                        }
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
                            end(&shared, pending);
                            return false;
                        };
                        shared.metrics.leader_latency.record(p.sent.elapsed().as_secs_f64());
                        if p.op == op::CLOSE_SESSION && h.err == 0 {
                            if let (Some(eph), Some(s)) = (&shared.ephemerals, session) {
                                eph.end(s, h.zxid.max(shared.max_zxid.load(Ordering::Acquire)));
                            }
                        }
                        if let (Some((op, req)), 0) = (p.write, h.err) {
                            let body = frame.slice(16..);
                            if let Some(o) = mirror_op(&shared, session, op, &req, &body, h.zxid) {
                                if let Some(q) = &shared.mirror {
                                    q.push(o);
                                }
                            }
                        }
                    }
                    out.put_u32(frame.len() as u32);
                    out.put_slice(&frame);
                }
            }
        }
    }
    end(&shared, pending);
    false
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

/// The mirror op for an acknowledged write, or `None` when nothing is to be mirrored
/// (ephemeral nodes, filtered paths, a failed multi).
fn mirror_op(
    shared: &ZkShared,
    session: Option<i64>,
    op: i32,
    req: &Bytes,
    resp: &Bytes,
    zxid: i64,
) -> Option<ZkOp> {
    let mut items: SmallVec<[Item; 1]> = SmallVec::new();
    match op {
        op::CREATE | op::CREATE2 | op::CREATE_CONTAINER => {
            let r = CreateRequest::from_bytes(req).ok()?;
            let path = if op == op::CREATE {
                CreateResponse::from_bytes(resp).ok()?.path
            } else {
                Create2Response::from_bytes(resp).ok()?.path
            };
            items.extend(create_item(path, r.data, r.acl, r.flags, 0));
        }
        op::CREATE_TTL => {
            let r = CreateTtlRequest::from_bytes(req).ok()?;
            let path = Create2Response::from_bytes(resp).ok()?.path;
            items.extend(create_item(path, r.data, r.acl, r.flags, r.ttl));
        }
        op::DELETE => items.push(Item::Delete {
            path: DeleteRequest::from_bytes(req).ok()?.path,
        }),
        op::SET_DATA => {
            let r = SetDataRequest::from_bytes(req).ok()?;
            items.push(Item::SetData {
                path: r.path,
                data: r.data,
            });
        }
        op::SET_ACL => {
            let r = SetAclRequest::from_bytes(req).ok()?;
            items.push(Item::SetAcl {
                path: r.path,
                acl: r.acl,
            });
        }
        op::MULTI => {
            let r = MultiRequest::from_bytes(req).ok()?;
            let res = MultiResponse::from_bytes(resp).ok()?;
            if res.results.iter().any(|x| x.err() != 0) || res.results.len() != r.ops.len() {
                return None; // the whole multi failed: nothing changed
            }
            for (o, result) in r.ops.into_iter().zip(res.results) {
                let created = match &result {
                    MultiResult::Create { path } | MultiResult::Create2 { path, .. } => {
                        Some(path.clone())
                    }
                    _ => None,
                };
                match o {
                    MultiOp::Create(c) | MultiOp::Create2(c) | MultiOp::CreateContainer(c) => {
                        items.extend(create_item(created?, c.data, c.acl, c.flags, 0))
                    }
                    MultiOp::CreateTtl(c) => {
                        items.extend(create_item(created?, c.data, c.acl, c.flags, c.ttl))
                    }
                    MultiOp::Delete(d) => items.push(Item::Delete { path: d.path }),
                    MultiOp::SetData(s) => items.push(Item::SetData {
                        path: s.path,
                        data: s.data,
                    }),
                    MultiOp::Check(_) | MultiOp::GetData(_) | MultiOp::GetChildren(_) => {}
                }
            }
        }
        _ => return None, // reconfig, deleteContainer: not client state
    }
    items.retain(|it| shared.filter.allows(it.path()));
    let mut items: SmallVec<[Item; 1]> = items.into_iter().map(Item::into_owned).collect();
    let tracking = shared.ephemerals.as_ref().zip(session);
    items.retain(|it| match it {
        Item::Create { mode, .. } if *mode == create_mode::EPHEMERAL => tracking.is_some(),
        _ => true,
    });
    if let Some((eph, session)) = tracking {
        for it in &items {
            match it {
                Item::Create {
                    path,
                    data,
                    acl,
                    mode,
                    ..
                } if *mode == create_mode::EPHEMERAL => {
                    eph.created(session, path, data.clone(), acl.clone())
                }
                Item::Delete { path } => eph.deleted(path),
                _ => {}
            }
        }
    }
    (!items.is_empty()).then_some(ZkOp { zxid, items })
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
