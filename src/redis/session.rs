//! One client connection, pinned to one backend connection (the leader, or the follower
//! while the leader is down) for its whole life, so `AUTH`, `SELECT`, `WATCH`/`MULTI`,
//! pub/sub and blocking commands behave exactly as against Redis.
//!
//! Two tasks per connection:
//! - the **request side** reads client bytes, cuts them into requests, classifies each one,
//!   and either forwards its exact bytes or answers it locally (a frozen write, a write
//!   while the follower serves). For every request it hands the reply side a [`Pending`]
//!   entry *before* the bytes go out, so the reply side always knows what comes next;
//! - the **reply side** reads backend replies and matches them to the entries in order.
//!   Local answers wait in the same queue, so replies keep request order even when some are
//!   made up here. Pub/sub messages and RESP3 pushes are out of band and go straight
//!   through. When a write's reply is not an error, its mirror op is queued — a `MULTI`
//!   block's ops are held until `EXEC` succeeds and then queued as one op.
//!
//! Shutdown flows: client EOF → stop reading, finish the replies still owed (their writes
//! must still be mirrored), close. Backend EOF/error → every request still owed gets an
//! error reply, its writes are queued for mirroring anyway (a key copy of an unapplied write
//! is harmless), close so the client reconnects. Leader healthy again while the follower
//! serves → close at the next safe point (nothing in flight, not in `MULTI`, not subscribed).
//! Leader declared down while it serves (and there is a follower) → close at once, owed
//! requests answered like a lost backend: a silent leader would hold the client forever,
//! and its reconnect lands on the follower.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use smallvec::SmallVec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::command::{
    known_effect, parse_u32, write_target, CommandTable, Expiry, Kind, KnownEffect, Special,
    SubKind, WriteTarget,
};
use super::inflight::Registration;
use super::mirror::{Item, RedisOp};
use super::resp::{self, parse_request_from, Request};
use super::server::Shared;
use crate::metrics::Route;
use crate::replication::freeze::WriteTicket;

const FROZEN: &[u8] = b"-READONLY statemirror: writes are frozen for maintenance\r\n";
const LEADER_DOWN: &[u8] =
    b"-READONLY statemirror: leader unavailable, this connection is served by the follower (reads only)\r\n";
const EXECABORT_FROZEN: &[u8] =
    b"-EXECABORT Transaction discarded because of previous errors (statemirror: writes are frozen for maintenance)\r\n";
const EXECABORT_LEADER_DOWN: &[u8] =
    b"-EXECABORT Transaction discarded because of previous errors (statemirror: leader unavailable)\r\n";
const LEADER_LOST: &[u8] = b"-ERR statemirror: leader connection lost before the reply; the command may or may not have run\r\n";

/// What the reply side must do for one request.
struct Pending {
    expect: Expect,
    action: Action,
    effect: Effect,
    sent: Option<Instant>,
}

enum Expect {
    /// No reply from the backend (a local answer, or `CLIENT REPLY OFF|SKIP`).
    Nothing,
    One,
    /// Subscribe-family confirmations: `name` is the confirmation kind.
    Confirm {
        name: &'static [u8],
        kind: SubKind,
        left: usize,
    },
    /// `UNSUBSCRIBE` with no channels: one confirmation per current subscription (min 1).
    ConfirmAll {
        name: &'static [u8],
        kind: SubKind,
    },
}

enum Action {
    Forward,
    /// Consume the backend's reply and send this instead.
    Replace(&'static [u8]),
    /// Send this (no backend reply involved).
    Local(Bytes),
    /// Local answer, then close the connection.
    LocalThenClose(Bytes),
}

enum Effect {
    None,
    Write {
        target: WriteTarget,
        raw: Bytes,
        /// The whole effect, when the request carries it (`SET k v`).
        known: Option<KnownEffect>,
        /// Keys registered as in flight (with the database the request side expects).
        reg: Option<(Registration, u32)>,
        _ticket: Option<WriteTicket>,
    },
    Select(u32),
    Queued(TxItem),
    Multi,
    Exec {
        _ticket: Option<WriteTicket>,
        reg: Option<(Registration, u32)>,
    },
    Discard,
    Reset,
    Hello,
    Monitor,
}

// Short-lived (one per command of an open MULTI); boxing would cost an allocation each.
#[allow(clippy::large_enum_variant)]
enum TxItem {
    Write {
        target: WriteTarget,
        raw: Bytes,
        known: Option<KnownEffect>,
    },
    Select(u32),
    Other,
}

/// State both sides read (idle detection).
#[derive(Default)]
struct Flags {
    owed: AtomicUsize,
    subscribed: AtomicBool,
    /// Woken when `owed` falls below [`MAX_OWED`] (the request side may read again).
    room: tokio::sync::Notify,
}

/// Most requests one client may have in flight (sent to the backend, reply not yet
/// relayed). Past it the client is not read until replies drain: a client pipelining into
/// a slow or silent backend holds bounded memory (each owed request keeps an entry), and
/// TCP pushes back on it.
const MAX_OWED: usize = 1024;

impl Flags {
    /// One owed reply was answered (or given up).
    fn pay(&self) {
        if self.owed.fetch_sub(1, Ordering::AcqRel) == MAX_OWED {
            self.room.notify_one();
        }
    }
}

pub async fn serve(shared: Arc<Shared>, client: TcpStream, backend: TcpStream, route: Route) {
    let (client_r, client_w) = client.into_split();
    let (backend_r, backend_w) = backend.into_split();
    let (tx, rx) = mpsc::channel::<Vec<Pending>>(64);
    let stop = CancellationToken::new();
    let flags = Arc::new(Flags::default());
    let table = shared.table();
    let requests = RequestSide {
        shared: shared.clone(),
        table,
        route,
        tx,
        stop: stop.clone(),
        flags: flags.clone(),
        in_multi: false,
        tx_writes: false,
        tx_poisoned: None,
        reply_off: false,
        skip_next: false,
        db: 0,
        tx_keys: SmallVec::new(),
        tx_wild: false,
        tx_select: false,
    };
    // Follower-served: close once the leader is back. Leader-served: close once it is
    // declared down, if the client has somewhere else to go.
    let leader_up = (route == Route::Follower || shared.follower.is_some())
        .then(|| shared.leader_health.subscribe());
    // The leader may have come back between choosing the follower and subscribing.
    let close_when_safe =
        route == Route::Follower && leader_up.as_ref().is_some_and(|w| *w.borrow());
    let replies = ReplySide {
        shared,
        route,
        rx,
        stop: stop.clone(),
        flags,
        pending: VecDeque::new(),
        rbuf: BytesMut::with_capacity(16 * 1024),
        out: BytesMut::with_capacity(16 * 1024),
        db: 0,
        in_multi: false,
        tx: Vec::new(),
        resp3: false,
        subs: Default::default(),
        raw_mode: false,
        close_after_flush: false,
        leader_up,
        close_when_safe,
        read_at: Instant::now(),
    };
    let req_task = tokio::spawn(requests.run(client_r, backend_w));
    let leader_down = replies.run(client_w, backend_r).await;
    stop.cancel();
    if leader_down {
        // Its write to a silent leader may never finish; nothing it holds matters now.
        req_task.abort();
    }
    let _ = req_task.await;
}

struct RequestSide {
    shared: Arc<Shared>,
    table: Arc<CommandTable>,
    route: Route,
    tx: mpsc::Sender<Vec<Pending>>,
    stop: CancellationToken,
    flags: Arc<Flags>,
    in_multi: bool,
    tx_writes: bool,
    /// Why the open `MULTI` must abort at `EXEC` (a write in it was refused here).
    tx_poisoned: Option<&'static [u8]>,
    reply_off: bool,
    skip_next: bool,
    /// The database this connection is on, as far as the requests sent so far say.
    db: u32,
    /// Keys of the writes queued in the open `MULTI` (registered at `EXEC`).
    tx_keys: SmallVec<[(u32, Bytes); 2]>,
    /// The open `MULTI` writes keys the proxy cannot see, or changes database.
    tx_wild: bool,
    tx_select: bool,
}

impl RequestSide {
    /// Returns the backend's write half instead of dropping it: closing it would make the
    /// server drop the replies still owed, and their writes must still be mirrored. The
    /// reply side decides when the connection ends.
    async fn run(
        mut self,
        mut client: OwnedReadHalf,
        mut backend: OwnedWriteHalf,
    ) -> OwnedWriteHalf {
        let lim = self.shared.limits;
        let idle = Duration::from_millis(self.shared.cfg.client_idle_timeout_ms);
        let mut buf = BytesMut::with_capacity(16 * 1024);
        let mut out = BytesMut::with_capacity(16 * 1024);
        let mut partial = None;
        loop {
            while self.flags.owed.load(Ordering::Acquire) >= MAX_OWED {
                let room = self.flags.room.notified();
                if self.flags.owed.load(Ordering::Acquire) < MAX_OWED {
                    break;
                }
                tokio::select! {
                    _ = self.stop.cancelled() => return backend,
                    _ = self.shared.closing.cancelled() => return backend,
                    _ = room => {}
                }
            }
            buf.reserve(16 * 1024);
            let read = tokio::select! {
                _ = self.stop.cancelled() => return backend,
                // Shutdown: like a client EOF (the reply side answers what is owed).
                _ = self.shared.closing.cancelled() => return backend,
                r = read_with_idle(&mut client, &mut buf, idle, &self.flags) => r,
            };
            match read {
                ReadOutcome::Data => {}
                ReadOutcome::Eof => return backend,
                ReadOutcome::Idle => {
                    self.shared.metrics.client_error("idle_timeout");
                    tracing::debug!("closing idle client connection");
                    self.stop.cancel();
                    return backend;
                }
            }
            let mut batch = Vec::new();
            let now = Instant::now();
            let mut fatal = false;
            loop {
                match parse_request_from(&mut buf, &lim, &mut partial) {
                    Ok(Some(req)) => self.handle(req, now, &mut batch, &mut out),
                    Ok(None) => break,
                    Err(e) => {
                        self.shared.metrics.client_error(e.metric_reason());
                        tracing::debug!(error = ?e, "bad request from client; closing");
                        batch.push(local(Action::LocalThenClose(e.reply())));
                        fatal = true;
                        break;
                    }
                }
            }
            self.flags.owed.fetch_add(batch.len(), Ordering::AcqRel);
            if !batch.is_empty() && self.tx.send(batch).await.is_err() {
                return backend;
            }
            if !out.is_empty() {
                if backend.write_all(&out).await.is_err() {
                    return backend; // the reply side sees the backend go and answers what is owed
                }
                out.clear();
            }
            if fatal {
                return backend;
            }
        }
    }

    /// `now`: when the read that carried this request completed (one clock read per batch).
    fn handle(&mut self, req: Request, now: Instant, batch: &mut Vec<Pending>, out: &mut BytesMut) {
        // Copy out what is needed so the table is not borrowed while `self` changes.
        let tracking = self.shared.in_flight.is_some();
        let (kind, blocking, special, target, known) = {
            let info = self.table.lookup(&req);
            let target = (info.kind == Kind::Write).then(|| write_target(info, &req));
            let known = match info.known {
                Some(k) if tracking => known_effect(k, &req),
                _ => None,
            };
            (info.kind, info.blocking, info.special, target, known)
        };
        let kind_idx = match kind {
            Kind::Read | Kind::PubSub => 0,
            Kind::Write => 1,
            Kind::Admin => 2,
        };
        let mut expect = if std::mem::take(&mut self.skip_next) || self.reply_off {
            Expect::Nothing
        } else {
            Expect::One
        };
        let mut effect = Effect::None;
        match special {
            Special::Multi => {
                if !self.in_multi {
                    self.in_multi = true;
                    self.reset_tx();
                }
                effect = Effect::Multi;
            }
            Special::Exec if self.in_multi => {
                self.in_multi = false;
                let mut ticket = None;
                let abort = match self.tx_poisoned.take() {
                    Some(why) => Some(why),
                    None if std::mem::take(&mut self.tx_writes) => match self
                        .write_permission(false)
                    {
                        Ok(t) => {
                            ticket = t;
                            None
                        }
                        Err(reject) => {
                            self.shared.metrics.requests[1][Route::Rejected as usize].increment(1);
                            Some(execabort_for(reject))
                        }
                    },
                    None => None,
                };
                if let Some(why) = abort {
                    // Make the server drop the queued commands; answer as Redis would.
                    return self.forward_replaced(
                        b"*1\r\n$7\r\nDISCARD\r\n",
                        why,
                        expect,
                        batch,
                        out,
                    );
                }
                let force_copies = self.tx_select;
                let keys = std::mem::take(&mut self.tx_keys);
                let reg = self.register(keys, self.tx_wild || self.tx_select);
                self.reset_tx();
                effect = Effect::Exec {
                    _ticket: ticket,
                    reg: reg.filter(|_| !force_copies),
                };
            }
            Special::Discard => {
                self.in_multi = false;
                self.reset_tx();
                effect = Effect::Discard;
            }
            Special::Select => {
                if let Some(db) = req.arg(1).and_then(parse_u32) {
                    effect = if self.in_multi {
                        self.tx_select = true;
                        Effect::Queued(TxItem::Select(db))
                    } else {
                        self.db = db;
                        Effect::Select(db)
                    };
                }
            }
            Special::Subscribe(kind) | Special::Unsubscribe(kind) => {
                let sub = matches!(special, Special::Subscribe(_));
                let name: &'static [u8] = match (sub, kind) {
                    (true, SubKind::Channel) => b"subscribe",
                    (true, SubKind::Pattern) => b"psubscribe",
                    (true, SubKind::Shard) => b"ssubscribe",
                    (false, SubKind::Channel) => b"unsubscribe",
                    (false, SubKind::Pattern) => b"punsubscribe",
                    (false, SubKind::Shard) => b"sunsubscribe",
                };
                let n = req.argc - 1;
                if !self.in_multi {
                    expect = if n == 0 && !sub {
                        Expect::ConfirmAll { name, kind }
                    } else {
                        Expect::Confirm {
                            name,
                            kind,
                            left: n.max(1),
                        }
                    };
                }
            }
            Special::Reset => {
                self.in_multi = false;
                self.reset_tx();
                self.db = 0;
                self.reply_off = false;
                effect = Effect::Reset;
            }
            Special::Hello => effect = Effect::Hello,
            Special::Monitor => effect = Effect::Monitor,
            Special::ClientReply => match req.arg(2).map(|a| a.to_ascii_lowercase()) {
                Some(a) if a == b"off" => {
                    self.reply_off = true;
                    expect = Expect::Nothing;
                }
                Some(a) if a == b"skip" => {
                    expect = Expect::Nothing;
                    self.skip_next = !self.reply_off;
                }
                Some(a) if a == b"on" => {
                    self.reply_off = false;
                    expect = Expect::One;
                }
                _ => {}
            },
            _ => {}
        }
        if let Some(target) = target {
            if self.in_multi {
                // Queued, not run: the freeze is checked now and again at EXEC.
                match self.write_permission(true) {
                    Ok(_) => {
                        self.tx_writes = true;
                        match &target {
                            WriteTarget::Keys(keys) => self.tx_keys.extend(
                                keys.iter()
                                    .map(|k| (k.db.unwrap_or(self.db), k.key.clone())),
                            ),
                            _ => self.tx_wild = true,
                        }
                        effect = Effect::Queued(TxItem::Write {
                            raw: frame_if_needed(&target, &req),
                            target,
                            known,
                        });
                    }
                    Err(reject) => {
                        self.shared.metrics.requests[1][Route::Rejected as usize].increment(1);
                        self.tx_poisoned = Some(execabort_for(reject));
                        if !matches!(expect, Expect::Nothing) {
                            batch.push(local(Action::Local(Bytes::from_static(reject))));
                        }
                        return;
                    }
                }
            } else {
                match self.write_permission(blocking) {
                    Ok(ticket) => {
                        let reg = match &target {
                            WriteTarget::Keys(keys) => self.register(
                                keys.iter()
                                    .map(|k| (k.db.unwrap_or(self.db), k.key.clone()))
                                    .collect(),
                                false,
                            ),
                            _ => self.register(SmallVec::new(), true),
                        };
                        effect = Effect::Write {
                            raw: frame_if_needed(&target, &req),
                            target,
                            known,
                            reg,
                            _ticket: ticket,
                        };
                    }
                    Err(reject) => {
                        self.shared.metrics.requests[1][Route::Rejected as usize].increment(1);
                        if !matches!(expect, Expect::Nothing) {
                            batch.push(local(Action::Local(Bytes::from_static(reject))));
                        }
                        return;
                    }
                }
            }
        } else if self.in_multi && !matches!(special, Special::Multi | Special::Select) {
            effect = Effect::Queued(TxItem::Other);
        }
        self.shared.metrics.requests[kind_idx][self.route as usize].increment(1);
        out.extend_from_slice(&req.raw);
        batch.push(Pending {
            expect,
            action: Action::Forward,
            effect,
            sent: Some(now),
        });
    }

    fn reset_tx(&mut self) {
        self.tx_writes = false;
        self.tx_poisoned = None;
        self.tx_keys.clear();
        self.tx_wild = false;
        self.tx_select = false;
    }

    /// Registers a write's keys as in flight (when mirroring), with the expected database.
    fn register(
        &self,
        keys: SmallVec<[(u32, Bytes); 2]>,
        wild: bool,
    ) -> Option<(Registration, u32)> {
        let tracker = self.shared.in_flight.as_ref()?;
        Some((tracker.register(keys, wild), self.db))
    }

    /// Sends `cmd` to the backend but answers the client with `reply` in its place.
    fn forward_replaced(
        &mut self,
        cmd: &'static [u8],
        reply: &'static [u8],
        expect: Expect,
        batch: &mut Vec<Pending>,
        out: &mut BytesMut,
    ) {
        out.extend_from_slice(cmd);
        let action = if matches!(expect, Expect::Nothing) {
            Action::Replace(b"")
        } else {
            Action::Replace(reply)
        };
        batch.push(Pending {
            expect: Expect::One,
            action,
            effect: Effect::Discard,
            sent: None,
        });
    }

    /// May this write go to the leader? `Ok(ticket)` (none for queued or blocking writes,
    /// which must not hold up a freeze), or the error line to answer with.
    fn write_permission(&self, untracked: bool) -> Result<Option<WriteTicket>, &'static [u8]> {
        if self.route == Route::Follower {
            self.shared.metrics.rejected_leader_unavailable.increment(1);
            return Err(LEADER_DOWN);
        }
        match self.shared.freeze.begin_write() {
            None => {
                self.shared.metrics.rejected_maintenance.increment(1);
                Err(FROZEN)
            }
            Some(t) if untracked => {
                drop(t);
                Ok(None)
            }
            Some(t) => Ok(Some(t)),
        }
    }
}

/// The `EXECABORT` that ends a transaction one of whose writes got `reject`.
fn execabort_for(reject: &[u8]) -> &'static [u8] {
    if reject == FROZEN {
        EXECABORT_FROZEN
    } else {
        EXECABORT_LEADER_DOWN
    }
}

fn local(action: Action) -> Pending {
    Pending {
        expect: Expect::Nothing,
        action,
        effect: Effect::None,
        sent: None,
    }
}

enum ReadOutcome {
    Data,
    Eof,
    Idle,
}

async fn read_with_idle(
    client: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    idle: Duration,
    flags: &Flags,
) -> ReadOutcome {
    loop {
        let r = if idle.is_zero() {
            client.read_buf(buf).await
        } else {
            match tokio::time::timeout(idle, client.read_buf(buf)).await {
                Ok(r) => r,
                Err(_) => {
                    if flags.owed.load(Ordering::Acquire) == 0
                        && !flags.subscribed.load(Ordering::Acquire)
                    {
                        return ReadOutcome::Idle;
                    }
                    continue;
                }
            }
        };
        return match r {
            Ok(0) | Err(_) => ReadOutcome::Eof,
            Ok(_) => ReadOutcome::Data,
        };
    }
}

struct ReplySide {
    /// When the backend read being processed completed (one clock read per read).
    read_at: Instant,
    shared: Arc<Shared>,
    route: Route,
    rx: mpsc::Receiver<Vec<Pending>>,
    stop: CancellationToken,
    flags: Arc<Flags>,
    pending: VecDeque<Pending>,
    rbuf: BytesMut,
    out: BytesMut,
    db: u32,
    in_multi: bool,
    tx: Vec<TxItem>,
    resp3: bool,
    subs: [HashSet<Bytes>; 3],
    /// After `MONITOR`: everything from the backend goes straight to the client.
    raw_mode: bool,
    close_after_flush: bool,
    leader_up: Option<watch::Receiver<bool>>,
    close_when_safe: bool,
}

enum Wake {
    Requests(Option<Vec<Pending>>),
    Backend(std::io::Result<usize>),
    LeaderChanged,
    Stop,
    LingerOver,
}

impl ReplySide {
    /// True when it ended because the leader serving it was declared down.
    async fn run(mut self, mut client: OwnedWriteHalf, mut backend: OwnedReadHalf) -> bool {
        let write_timeout = Duration::from_millis(self.shared.cfg.client_write_timeout_ms);
        let mut requests_open = true;
        let mut client_ok = true;
        // Once the client is gone, wait this long for replies still owed (their writes must
        // be mirrored), then give up on them (a blocking pop may never answer).
        let mut linger: Option<tokio::time::Instant> = None;
        loop {
            self.drain_ready();
            if !self.out.is_empty() {
                if client_ok {
                    match tokio::time::timeout(write_timeout, client.write_all(&self.out)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => client_ok = false,
                        Err(_) => {
                            self.shared.metrics.client_error("slow_client");
                            tracing::debug!("client stopped reading its replies; closing");
                            client_ok = false;
                        }
                    }
                    if !client_ok {
                        self.stop.cancel();
                    }
                }
                self.out.clear();
            }
            if self.close_after_flush {
                self.teardown(None);
                return false;
            }
            if !requests_open || !client_ok {
                if self.pending.is_empty() {
                    return false;
                }
                linger.get_or_insert_with(|| tokio::time::Instant::now() + write_timeout);
            }
            if self.close_when_safe && self.at_safe_point() {
                tracing::debug!(
                    "leader is back; closing follower-served connection at a safe point"
                );
                return false;
            }
            if self.route == Route::Leader && self.leader_up.as_ref().is_some_and(|w| !*w.borrow())
            {
                tracing::debug!("leader declared down; closing leader-served connection");
                self.drain_ready();
                self.teardown(Some(LEADER_LOST));
                if client_ok && !self.out.is_empty() {
                    let _ = tokio::time::timeout(write_timeout, client.write_all(&self.out)).await;
                }
                return true;
            }
            let wake = {
                let leader_up = &mut self.leader_up;
                let stop = &self.stop;
                let rx = &mut self.rx;
                let rbuf = &mut self.rbuf;
                rbuf.reserve(16 * 1024);
                tokio::select! {
                    biased;
                    r = rx.recv(), if requests_open => Wake::Requests(r),
                    r = backend.read_buf(rbuf) => Wake::Backend(r),
                    _ = async { match leader_up { Some(w) => w.changed().await.ok(), None => std::future::pending().await } } => Wake::LeaderChanged,
                    _ = stop.cancelled(), if client_ok && requests_open => Wake::Stop,
                    _ = async { match linger { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => Wake::LingerOver,
                }
            };
            match wake {
                Wake::Requests(Some(b)) => self.pending.extend(b),
                Wake::Requests(None) => requests_open = false,
                Wake::Stop => requests_open = false,
                Wake::LingerOver => {
                    self.teardown(None);
                    return false;
                }
                Wake::Backend(Ok(0)) | Wake::Backend(Err(_)) => {
                    self.drain_ready();
                    let clean = self.pending.is_empty();
                    self.teardown(Some(LEADER_LOST));
                    if client_ok && !self.out.is_empty() {
                        let _ =
                            tokio::time::timeout(write_timeout, client.write_all(&self.out)).await;
                    }
                    if !clean {
                        tracing::debug!(route = ?self.route, "backend connection lost with requests in flight");
                    }
                    return false;
                }
                Wake::Backend(Ok(_)) => self.on_backend_data(),
                Wake::LeaderChanged => {
                    // (Leader-served: a flip to down is acted on at the top of the loop.)
                    if self.route == Route::Follower
                        && self.leader_up.as_ref().is_some_and(|w| *w.borrow())
                    {
                        self.close_when_safe = true;
                    }
                }
            }
        }
    }

    fn at_safe_point(&self) -> bool {
        self.pending.is_empty()
            && !self.in_multi
            && self.subs.iter().all(|s| s.is_empty())
            && !self.raw_mode
    }

    /// Answers entries at the head that need nothing from the backend.
    fn drain_ready(&mut self) {
        while let Some(head) = self.pending.front() {
            if !matches!(head.expect, Expect::Nothing) {
                break;
            }
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            self.flags.pay();
            match p.action {
                Action::Local(b) => self.out.extend_from_slice(&b),
                Action::LocalThenClose(b) => {
                    self.out.extend_from_slice(&b);
                    self.close_after_flush = true;
                    return;
                }
                _ => {}
            }
            // No reply will come (CLIENT REPLY OFF): assume the command ran.
            self.apply_effect(p.effect, None);
        }
    }

    fn on_backend_data(&mut self) {
        // Every reply in `rbuf` answers a request whose entry was sent before the request
        // was written, but this task may have polled the channel just before that entry
        // arrived (preempted between the two polls). Take what is there now, so no reply is
        // ever matched against a missing entry (which would shift every later one).
        while let Ok(b) = self.rx.try_recv() {
            self.pending.extend(b);
        }
        self.read_at = Instant::now();
        loop {
            if self.raw_mode {
                let all = self.rbuf.split();
                self.out.extend_from_slice(&all);
                return;
            }
            self.drain_ready();
            let len = match resp::frame_len(&self.rbuf) {
                Ok(Some(n)) => n,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = ?e, "unparseable reply from backend; closing client");
                    self.rbuf.clear();
                    self.teardown(Some(LEADER_LOST));
                    self.close_after_flush = true;
                    return;
                }
            };
            // Work on the bytes in place; only the copy into `out` touches them.
            let rbuf = std::mem::take(&mut self.rbuf);
            self.on_frame(&rbuf[..len]);
            self.rbuf = rbuf;
            self.rbuf.advance(len);
        }
    }

    fn on_frame(&mut self, frame: &[u8]) {
        let first_name = || {
            resp::elements(frame)
                .next()
                .and_then(resp::string_payload)
                .map(|s| s.to_ascii_lowercase())
        };
        let is_push = frame.first() == Some(&b'>');
        let is_array = frame.first() == Some(&b'*');
        // Is it the confirmation the head entry waits for?
        let head_confirm = match self.pending.front().map(|p| &p.expect) {
            Some(Expect::Confirm { name, .. }) | Some(Expect::ConfirmAll { name, .. }) => {
                Some(*name)
            }
            _ => None,
        };
        if is_push
            || (is_array && !self.resp3 && self.subs.iter().any(|s| !s.is_empty()))
            || (is_array && head_confirm.is_some())
        {
            let name = first_name();
            let confirms = matches!((&name, head_confirm), (Some(n), Some(h)) if n.as_slice() == h);
            if !confirms
                && (is_push
                    || matches!(
                        name.as_deref(),
                        Some(b"message" | b"pmessage" | b"smessage")
                    ))
            {
                // Out of band: a message, an invalidation, a confirmation nobody waits for.
                self.out.extend_from_slice(frame);
                return;
            }
            if confirms {
                self.on_confirmation(frame);
                return;
            }
        }
        let Some(p) = self.pending.pop_front() else {
            // A reply to no request we know of (a server that ignores CLIENT REPLY OFF, a
            // MONITOR line before its +OK was seen): pass it on rather than drop it.
            self.out.extend_from_slice(frame);
            return;
        };
        self.flags.pay();
        if let Some(t) = p.sent {
            if self.route == Route::Leader {
                self.shared
                    .metrics
                    .leader_latency
                    .record(self.read_at.saturating_duration_since(t).as_secs_f64());
            }
        }
        match p.action {
            Action::Forward => self.out.extend_from_slice(frame),
            Action::Replace(b) => self.out.extend_from_slice(b),
            Action::Local(_) | Action::LocalThenClose(_) => {}
        }
        self.apply_effect(p.effect, Some(frame));
    }

    fn on_confirmation(&mut self, frame: &[u8]) {
        self.out.extend_from_slice(frame);
        let mut els = resp::elements(frame);
        let channel = els
            .nth(1)
            .and_then(resp::string_payload)
            .map(Bytes::copy_from_slice);
        let Some(head) = self.pending.front_mut() else {
            return;
        };
        let (name, kind) = match head.expect {
            Expect::Confirm { name, kind, .. } | Expect::ConfirmAll { name, kind } => (name, kind),
            _ => return,
        };
        if let Expect::ConfirmAll { .. } = head.expect {
            let n = self.subs[kind as usize].len().max(1);
            head.expect = Expect::Confirm {
                name,
                kind,
                left: n,
            };
        }
        let set = &mut self.subs[kind as usize];
        if let Some(ch) = channel {
            if name.ends_with(b"unsubscribe") {
                set.remove(&ch);
            } else {
                set.insert(ch);
            }
        }
        let subscribed = self.subs.iter().any(|s| !s.is_empty());
        self.flags.subscribed.store(subscribed, Ordering::Release);
        if let Expect::Confirm { left, .. } = &mut head.expect {
            *left -= 1;
            if *left == 0 {
                self.pending.pop_front();
                self.flags.pay();
            }
        }
    }

    /// Applies what a request did, given its reply (`None`: no reply will come).
    fn apply_effect(&mut self, effect: Effect, reply: Option<&[u8]>) {
        let ok = reply.is_none_or(|r| !resp::is_error(r));
        match effect {
            Effect::None => {}
            Effect::Write {
                target,
                raw,
                known,
                reg,
                ..
            } => {
                if !ok {
                    return;
                }
                let db = self.db;
                match reg {
                    // Queue under the tracker's lock (see `Registration::finish_with`).
                    Some((r, expected_db)) => r.finish_with(|contended| {
                        let exact = !contended && expected_db == db;
                        let mut items = SmallVec::new();
                        push_write(&mut items, db, target, raw, known, exact, reply);
                        self.mirror(items);
                    }),
                    None => {
                        let mut items = SmallVec::new();
                        push_write(&mut items, db, target, raw, known, false, reply);
                        self.mirror(items);
                    }
                }
            }
            Effect::Select(db) => {
                if ok {
                    self.db = db;
                }
            }
            Effect::Multi => {
                if ok {
                    self.in_multi = true;
                    self.tx.clear();
                }
            }
            Effect::Queued(item) => {
                if ok && self.in_multi {
                    self.tx.push(item);
                }
            }
            Effect::Exec { reg, .. } => {
                self.in_multi = false;
                let tx = std::mem::take(&mut self.tx);
                let Some(reply) = reply else { return };
                if resp::is_error(reply) || resp::is_null(reply) {
                    return; // WATCH fired or EXECABORT: nothing ran
                }
                match reg {
                    // Queue under the tracker's lock (see `Registration::finish_with`).
                    Some((r, expected_db)) => {
                        let db = self.db;
                        r.finish_with(|contended| {
                            self.mirror_exec(tx, reply, !contended && expected_db == db)
                        })
                    }
                    None => self.mirror_exec(tx, reply, false),
                }
            }
            Effect::Discard => {
                self.in_multi = false;
                self.tx.clear();
            }
            Effect::Reset => {
                self.db = 0;
                self.in_multi = false;
                self.tx.clear();
                self.resp3 = false;
                self.subs = Default::default();
                self.flags.subscribed.store(false, Ordering::Release);
            }
            Effect::Hello => {
                if let Some(r) = reply {
                    match r.first() {
                        Some(b'%') => self.resp3 = true,
                        Some(b'*') => self.resp3 = false,
                        _ => {}
                    }
                }
            }
            Effect::Monitor => {
                if ok {
                    self.raw_mode = true;
                }
            }
        }
    }

    /// Queues what a successful `EXEC` did, as one op.
    fn mirror_exec(&mut self, tx: Vec<TxItem>, reply: &[u8], exact: bool) {
        let mut items = SmallVec::new();
        let mut results = resp::elements(reply);
        for item in tx {
            let result = results.next();
            let ran = result.is_some_and(|r| !resp::is_error(r));
            match item {
                TxItem::Select(db) if ran => self.db = db,
                TxItem::Write { target, raw, known } if ran => {
                    push_write(&mut items, self.db, target, raw, known, exact, result)
                }
                _ => {}
            }
        }
        self.mirror(items);
    }

    fn mirror(&self, items: SmallVec<[Item; 1]>) {
        if items.is_empty() || self.route != Route::Leader {
            return;
        }
        if let Some(q) = &self.shared.mirror {
            q.push(RedisOp { items });
        }
    }

    /// Ends the session: answers every request still owed with `err` (or nothing), and
    /// queues their writes for mirroring since they may have run.
    fn teardown(&mut self, err: Option<&'static [u8]>) {
        while let Some(p) = self.pending.pop_front() {
            self.flags.pay();
            match (&p.action, &p.expect, err) {
                (Action::Local(b) | Action::LocalThenClose(b), _, _) => {
                    self.out.extend_from_slice(b)
                }
                (_, Expect::Nothing, _) => {}
                (_, _, Some(e)) => self.out.extend_from_slice(e),
                _ => {}
            }
            if let Effect::Write { target, raw, .. } = p.effect {
                let mut items = SmallVec::new();
                push_items(&mut items, self.db, target, raw);
                self.mirror(items);
            }
        }
        if !self.tx.is_empty() {
            // An EXEC may have run with its reply lost: copying its keys is harmless.
            let mut items = SmallVec::new();
            for item in std::mem::take(&mut self.tx) {
                if let TxItem::Write { target, raw, .. } = item {
                    push_items(&mut items, self.db, target, raw);
                }
            }
            self.mirror(items);
        }
    }
}

/// The mirror items for one acknowledged write: its own effect when the request carries it
/// and it ran uncontended (`exact`), else copies of its keys. A known write whose reply
/// says it changed nothing (`SET … NX` that lost) needs nothing.
fn push_write(
    items: &mut SmallVec<[Item; 1]>,
    db: u32,
    target: WriteTarget,
    raw: Bytes,
    known: Option<KnownEffect>,
    exact: bool,
    reply: Option<&[u8]>,
) {
    match (known, reply) {
        (Some(KnownEffect::Put { applied, .. }), Some(r)) if !applied.check(r) => {}
        (Some(KnownEffect::Put { pairs, expiry, .. }), Some(_)) if exact => {
            let expire_at_ms = match expiry {
                Expiry::None => None,
                Expiry::AtMs(t) => Some(t),
                Expiry::InMs(ms) => Some(now_ms().saturating_add(ms)),
            };
            for (key, value) in pairs {
                items.push(Item::Put {
                    db,
                    key,
                    value,
                    expire_at_ms,
                });
            }
        }
        (Some(KnownEffect::Delete(keys)), Some(_)) if exact => {
            for key in keys {
                items.push(Item::Delete { db, key });
            }
        }
        _ => push_items(items, db, target, raw),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The request frame a mirror item will need (to ask the leader for its keys, or to replay
/// it), owned; nothing when the keys are known.
fn frame_if_needed(target: &WriteTarget, req: &Request) -> Bytes {
    match target {
        WriteTarget::Keys(_) => Bytes::new(),
        WriteTarget::AskLeader | WriteTarget::Keyless => req.raw_owned(),
    }
}

fn push_items(items: &mut SmallVec<[Item; 1]>, db: u32, target: WriteTarget, raw: Bytes) {
    match target {
        WriteTarget::Keys(keys) => {
            for k in keys {
                items.push(Item::Copy {
                    db: k.db.unwrap_or(db),
                    key: k.key,
                });
            }
        }
        WriteTarget::AskLeader => items.push(Item::KeysOf { db, cmd: raw }),
        WriteTarget::Keyless => items.push(Item::Replay { db, cmd: raw }),
    }
}
