//! The session's one task: a loop that waits on whichever of the client and the backend can
//! move, in either direction, and on the few signals that end a session. Requests go from
//! the client's read buffer to the backend's out buffer, replies from the backend's read
//! buffer to the client's; no channel or other task sits between them, nothing is awaited
//! to completion except at the very end, and no timer or waiter is registered per request:
//! the idle timer is one `Sleep` re-armed only when it fires, the signals are futures pinned
//! once, and the slow-client deadline is only polled while replies wait for the client.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use super::client_io::{read_opt, write_opt, write_some, Watch};
use super::mux::{inbox_ready, may_unpin, need, Mux, Need};
use super::pending::{local, Action, Expect, Pending};
use super::reply::ReplySide;
use super::request::{End, RequestSide, FENCE, RESTORE_OFF, RESTORE_SKIP};
use super::spare::Epoch;
use super::{LEADER_LOST, MAX_OWED, SYNC_RAW, SYNC_REFUSED, SYNC_UNDECIDED};
use crate::metrics::Route;
use crate::redis::resp::parse_request_from;
use crate::session_io::{
    lazy_capable, lend_scratch, read_from_client, shrink_if_empty, ClientRead, ReadSize,
    BACKEND_OUT_HIGH, CLIENT_OUT_HIGH,
};
use crate::tls::stream::{ReadHalf, WriteHalf};

/// How often a client held back by a backlogged shared connection looks again.
const BACKLOG_TICK: Duration = Duration::from_millis(10);

/// The backend halves are `None` while a multiplexed session shares (see `mux`).
pub(super) struct Io {
    pub(super) client_r: ReadHalf,
    pub(super) client_w: WriteHalf,
    pub(super) backend_r: Option<ReadHalf>,
    pub(super) backend_w: Option<WriteHalf>,
}

/// Where the request half stands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Requests {
    /// Requests are read, cut and forwarded.
    Open,
    /// A `SYNC`/`PSYNC` was sent: nothing more is read until its reply says whether the
    /// connection became a pipe (what is buffered stays there).
    AwaitingSync,
    /// `SYNC` accepted: client bytes go to the backend as they are.
    Pipe,
    /// Multiplexed: a request needs a connection of its own; nothing more is read until
    /// the replies owed on the shared one are in and the pinned one is open.
    AwaitingPin,
    /// Multiplexed, pinned: the client holds nothing the shared connection lacks and its
    /// next request needs no pin: back to sharing once the pinned connection is flushed.
    /// (Lazily, at such a request rather than at the first safe point: a client running
    /// transaction after transaction keeps its connection instead of reopening it for each.)
    AwaitingUnpin,
    /// No more requests: client EOF, `QUIT`, a bad request, idle, shutdown, slow client.
    Closed,
}

pub(super) async fn run(
    mut req: RequestSide,
    mut rep: ReplySide,
    mut io: Io,
    mut mux: Option<Mux>,
) {
    let shared = req.shared.clone();
    let flags = req.flags.clone();
    let idle = Duration::from_millis(shared.cfg.client_idle_timeout_ms);
    let write_timeout = Duration::from_millis(shared.cfg.client_write_timeout_ms);
    let mut buf = BytesMut::new();
    let mut to_backend = BytesMut::new();
    let (mut client_read, mut backend_read) = (ReadSize::default(), ReadSize::default());
    let mut partial = None;
    let mut state = Requests::Open;
    // Set when `buf` may already hold whole requests (after a refused SYNC).
    let mut parse_first = false;
    let mut client_ok = true;
    let mut backend_ok = true;
    // What the pinned connection was opened (or taken) under (`spare`).
    let mut pin_epoch: Epoch = (0, 0);
    // TLS may hold written bytes until flushed.
    let (mut client_unflushed, mut backend_unflushed) = (false, false);
    let mut linger: Option<Instant> = None;
    let mut stall: Option<Instant> = None;
    let mut last_read = Instant::now();
    let idle_timer = tokio::time::sleep(if idle.is_zero() {
        Duration::from_secs(86_400)
    } else {
        idle
    });
    tokio::pin!(idle_timer);
    // A child token: its own node (lock and notify). A clone shares the one node of the
    // whole process, whose lock every session's every poll of the loop would take.
    let closing = shared.closing.child_token().cancelled_owned();
    tokio::pin!(closing);
    let mut leader_up_now = rep.leader_up.as_ref().is_none_or(|w| *w.borrow());
    let mut leader_watch = Watch::new(rep.leader_up.take());
    let mut master_watch = Watch::new(rep.master_switch.take());
    loop {
        if state == Requests::AwaitingSync {
            match flags.sync.swap(SYNC_UNDECIDED, Ordering::AcqRel) {
                SYNC_RAW => {
                    state = Requests::Pipe;
                    to_backend.extend_from_slice(&buf);
                    buf.clear();
                }
                SYNC_REFUSED => {
                    state = Requests::Open;
                    parse_first = true;
                }
                _ => {}
            }
        }
        if state == Requests::AwaitingPin && rep.pending.is_empty() && rep.unconfirmed.is_empty() {
            if let Some(m) = mux.as_mut() {
                pin_epoch = leader_epoch(&shared);
                let spare = shared.mux.as_ref().and_then(|p| p.spares.take(pin_epoch));
                // Boxed: a connect (Sentinel lookup, TLS handshake) is a large future, and every
                // session's task would carry its room while idle.
                shared
                    .metrics
                    .pinned(if spare.is_some() { "spare" } else { "new" });
                let opened = match spare {
                    Some(halves) => Ok(halves),
                    None => Box::pin(crate::redis::server::connect_leader(&shared))
                        .await
                        .map(crate::tls::Stream::into_split),
                };
                match opened {
                    Ok((r, w)) => {
                        (io.backend_r, io.backend_w) = (Some(r), Some(w));
                        (backend_ok, backend_unflushed) = (true, false);
                        backend_read = ReadSize::default();
                        m.pin();
                        state = Requests::Open;
                        parse_first = true;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "could not open a pinned leader connection");
                        m.held = None;
                        rep.pending.push_back(local(Action::LocalThenClose(
                            bytes::Bytes::from_static(PIN_FAILED),
                        )));
                        flags.owed.fetch_add(1, Ordering::AcqRel);
                        state = Requests::Closed;
                    }
                }
            }
        }
        if std::mem::take(&mut parse_first) {
            if let Some(end) = requests(
                &mut req,
                &mut rep,
                &mut buf,
                &mut partial,
                &mut to_backend,
                Instant::now(),
                mux.as_mut(),
            ) {
                state = end;
            }
        }
        if let Some(m) = mux.as_mut().filter(|m| m.sharing()) {
            if !to_backend.is_empty() {
                let frames = std::mem::take(&mut req.frames);
                m.send(&shared, &mut to_backend, frames);
                shrink_if_empty(&mut to_backend);
            }
        } else if let Some(m) = mux.as_mut() {
            if state == Requests::AwaitingUnpin && to_backend.is_empty() && !backend_unflushed {
                // Back to sharing: the pinned connection holds nothing the client needs,
                // and is in the state a new one starts in: kept for the next pin
                // (`spare`), unless the leader is down or switched since.
                let (r, w) = (io.backend_r.take(), io.backend_w.take());
                if let (Some(r), Some(w), Some(pool)) = (r, w, shared.mux.as_ref()) {
                    if shared.leader_health.is_up() && leader_epoch(&shared) == pin_epoch {
                        pool.spares.put(r, w, pin_epoch);
                    }
                }
                rep.rbuf = BytesMut::new();
                m.unpin(&shared);
                state = Requests::Open;
                parse_first = true;
                continue;
            }
        }
        rep.drain_ready();
        // Counted before the replies that answer them go out (see `counts`).
        if req.counts.due(rep.pending.is_empty()) {
            req.counts.flush(&shared.metrics);
        }
        if !client_ok {
            rep.out.clear();
        }
        // What ends the session is decided once the replies so far are written.
        if (rep.out.is_empty() && !client_unflushed) || !client_ok {
            stall = None;
            if rep.close_after_flush {
                rep.teardown(None);
                return;
            }
            if state == Requests::Closed || !client_ok {
                if rep.pending.is_empty() && (to_backend.is_empty() || !backend_ok) {
                    rep.teardown(None);
                    return;
                }
                linger.get_or_insert_with(|| Instant::now() + write_timeout);
            }
            if rep.close_when_safe && rep.at_safe_point() {
                tracing::debug!(route = ?rep.route, "closing the connection at a safe point (leader back, or master switched)");
                return;
            }
        } else if stall.is_none() {
            stall = Some(Instant::now() + write_timeout);
        }
        if rep.route == Route::Leader && !leader_up_now {
            tracing::debug!("leader declared down; closing leader-served connection");
            rep.drain_ready();
            rep.teardown(Some(LEADER_LOST));
            Box::pin(finish_writes(
                &mut io.client_w,
                &rep.out,
                client_ok,
                write_timeout,
            ))
            .await;
            return;
        }
        let read_client = match state {
            Requests::Open => flags.owed.load(Ordering::Acquire) < MAX_OWED,
            Requests::Pipe => true,
            Requests::AwaitingSync
            | Requests::AwaitingPin
            | Requests::AwaitingUnpin
            | Requests::Closed => false,
        } && to_backend.len() < BACKEND_OUT_HIGH;
        // Sharing, the bound is the shared connection's: no waiter is registered for its
        // drain (one per client per iteration), a short tick looks again instead.
        let backlogged = read_client && mux.as_ref().is_some_and(|m| m.backlogged());
        let read_client = read_client && !backlogged;
        let read_backend = rep.out.len() < CLIENT_OUT_HIGH || !client_ok;
        // Nothing buffered: read into the thread's buffer, taken only once bytes are there,
        // so a waiting connection holds none (`session_io::read_from_client`).
        let lazy = state == Requests::Open && buf.is_empty() && lazy_capable(&io.client_r);
        if read_client && !lazy {
            client_read.reserve(&mut buf, 0);
        }
        let own = io.backend_r.is_some();
        if read_backend && own {
            backend_read.reserve(&mut rep.rbuf, 0);
        }
        let idle_armed = state == Requests::Open && read_client && !idle.is_zero();
        let soonest = [
            linger,
            stall.filter(|_| client_ok),
            backlogged.then(|| Instant::now() + BACKLOG_TICK),
        ]
        .into_iter()
        .flatten()
        .min();
        tokio::select! {
            biased;
            r = read_opt(io.backend_r.as_mut(), &mut rep.rbuf), if read_backend && own => match r {
                Ok(n) if n > 0 => {
                    backend_read.read(n);
                    rep.on_backend_data();
                    shrink_if_empty(&mut rep.rbuf);
                }
                _ => {
                    rep.drain_ready();
                    let clean = rep.pending.is_empty();
                    rep.teardown(Some(LEADER_LOST));
                    Box::pin(finish_writes(&mut io.client_w, &rep.out, client_ok, write_timeout)).await;
                    if !clean {
                        tracing::debug!(route = ?rep.route, "backend connection lost with requests in flight");
                    }
                    return;
                }
            },
            r = write_some(&mut io.client_w, &mut rep.out, &mut client_unflushed),
                if client_ok && (!rep.out.is_empty() || client_unflushed) => match r {
                // Progress: the client reads, however slowly.
                Ok(()) => {
                    stall = None;
                    shrink_if_empty(&mut rep.out);
                }
                Err(_) => {
                    client_ok = false;
                    state = Requests::Closed;
                }
            },
            _ = inbox_ready(mux.as_ref()), if read_backend && mux.is_some() => {
                if let Some(m) = &mux {
                    m.receive(&mut rep);
                    shrink_if_empty(&mut rep.rbuf);
                }
            },
            r = write_opt(io.backend_w.as_mut(), &mut to_backend, &mut backend_unflushed),
                if backend_ok && own && (!to_backend.is_empty() || backend_unflushed) => {
                shrink_if_empty(&mut to_backend);
                if r.is_err() {
                    // The backend read sees it go and answers what is owed.
                    backend_ok = false;
                    to_backend.clear();
                    state = Requests::Closed;
                }
            },
            r = read_from_client(&mut io.client_r, &mut buf, lazy), if read_client => match r {
                Ok(ClientRead::Read(n)) if n > 0 => {
                    client_read.read(n);
                    last_read = Instant::now();
                    match state {
                        Requests::Pipe => {
                            to_backend.extend_from_slice(&buf);
                            buf.clear();
                        }
                        _ => if let Some(end) = requests(&mut req, &mut rep, &mut buf, &mut partial, &mut to_backend, last_read, mux.as_mut()) {
                            state = end;
                        }
                    }
                    if state == Requests::Open && buf.is_empty() && lazy_capable(&io.client_r) {
                        // The next read borrows the thread's buffer (see `read_from_client`;
                        // a pipe keeps its own: it reads on, not lazily).
                        buf = BytesMut::new();
                    }
                }
                Ok(ClientRead::Scratch(scratch)) => {
                    last_read = Instant::now();
                    let end = lend_scratch(scratch, &mut buf, |buf| {
                        requests(&mut req, &mut rep, buf, &mut partial, &mut to_backend, last_read, mux.as_mut())
                    });
                    if let Some(end) = end {
                        state = end;
                    }
                }
                _ => state = Requests::Closed,
            },
            _ = &mut idle_timer, if idle_armed => {
                let quiet = last_read + idle;
                let now = Instant::now();
                if quiet > now {
                    idle_timer.as_mut().reset(quiet);
                } else if flags.owed.load(Ordering::Acquire) == 0
                    && !flags.subscribed.load(Ordering::Acquire)
                {
                    shared.metrics.client_error("idle_timeout");
                    tracing::debug!("closing idle client connection");
                    state = Requests::Closed;
                } else {
                    idle_timer.as_mut().reset(now + idle);
                }
            },
            // Shutdown: like a client EOF (what is owed is still answered).
            _ = &mut closing, if state != Requests::Closed => state = Requests::Closed,
            up = leader_watch.changed(), if leader_watch.active() => {
                if let Some(up) = up {
                    leader_up_now = up;
                    // (Leader-served: a flip to down is acted on at the top of the loop.)
                    if rep.route == Route::Follower && up {
                        rep.close_when_safe = true;
                    }
                }
            },
            switched = master_watch.changed(), if master_watch.active() => {
                // (Sharing: the shared connection follows the switch itself.)
                if switched.is_some() && !mux.as_ref().is_some_and(Mux::sharing) {
                    rep.close_when_safe = true;
                }
            },
            // The rarer deadlines share one timer, built lazily (a disabled branch's future
            // is still built, and each `Sleep` would be room in every idle session's task).
            _ = async { if let Some(d) = soonest { tokio::time::sleep_until(d).await } }, if soonest.is_some() => {
                let now = Instant::now();
                if linger.is_some_and(|d| d <= now) {
                    rep.teardown(None);
                    return;
                }
                if client_ok && stall.is_some_and(|d| d <= now) {
                    shared.metrics.client_error("slow_client");
                    tracing::debug!("client stopped reading its replies; closing");
                    client_ok = false;
                    state = Requests::Closed;
                }
                // (Backlogged: the loop looks again.)
            },
        }
    }
}

/// Cuts `buf` into requests and handles each (its bytes to `to_backend`, its entry to the
/// reply side's queue before anything is written). Returns the request half's new state
/// when it changes.
#[allow(clippy::too_many_arguments)]
fn requests(
    req: &mut RequestSide,
    rep: &mut ReplySide,
    buf: &mut BytesMut,
    partial: &mut Option<crate::redis::resp::Progress>,
    out: &mut BytesMut,
    read_at: Instant,
    mut mux: Option<&mut Mux>,
) -> Option<Requests> {
    // A session that started before the leader answered `COMMAND` moves to its table.
    if req.table.source == crate::redis::command::Source::Fallback {
        req.table = req.shared.table();
    }
    let lim = req.shared.limits;
    let now = read_at.into_std();
    let before = rep.pending.len();
    let mut fatal = false;
    let mut end = None;
    let (mut pin, mut unpin) = (false, false);
    // The request that asked for the pin goes first on the pinned connection.
    if let Some(r) = mux.as_deref_mut().and_then(|m| m.held.take()) {
        end = req.handle(r, now, &mut rep.pending, out);
    }
    while end.is_none() {
        match parse_request_from(buf, &lim, partial) {
            Ok(Some(r)) => {
                if let Some(m) = mux.as_deref_mut().filter(|m| !m.sticky || m.sharing()) {
                    match need(&req.table, &r) {
                        Need::Share
                            if !m.sharing() && out.is_empty() && {
                                if !req.db_known {
                                    req.sync_db();
                                }
                                may_unpin(m, req, rep, true)
                            } =>
                        {
                            m.held = Some(r.into_owned());
                            unpin = true;
                            break;
                        }
                        Need::Share => {}
                        Need::Quit if m.sharing() => {
                            rep.pending.push_back(local(Action::LocalThenClose(
                                Bytes::from_static(b"+OK\r\n"),
                            )));
                            end = Some(End::Quit);
                            break;
                        }
                        Need::Quit => {}
                        n => {
                            m.sticky |= n == Need::Sticky;
                            if m.sharing() {
                                m.held = Some(r.into_owned());
                                pin = true;
                                break;
                            }
                        }
                    }
                }
                end = req.handle(r, now, &mut rep.pending, out);
            }
            Ok(None) => break,
            Err(e) => {
                req.shared.metrics.client_error(e.metric_reason());
                tracing::debug!(error = ?e, "bad request from client; closing");
                rep.pending
                    .push_back(local(Action::LocalThenClose(e.reply())));
                fatal = true;
                break;
            }
        }
    }
    if std::mem::take(&mut req.need_fence) && end.is_none() {
        out.extend_from_slice(FENCE);
        if req.reply_off {
            out.extend_from_slice(RESTORE_OFF);
        } else if req.skip_next {
            out.extend_from_slice(RESTORE_SKIP);
        }
        rep.pending.push_back(Pending {
            expect: Expect::One,
            action: Action::Replace(b""),
            effect: super::pending::Effect::None,
            sent: None,
        });
    }
    // The writes of this read count as in flight from here, before their bytes are sent:
    // one taking of the registry's lock for all of them.
    if let Some(tracker) = &req.shared.in_flight {
        let mut regs = rep
            .pending
            .iter_mut()
            .skip(before)
            .filter_map(|p| p.effect.registration_mut())
            .peekable();
        if regs.peek().is_some() {
            let mut registering = tracker.hold();
            regs.for_each(|r| registering.activate(r));
        }
    }
    let added = rep.pending.len() - before;
    req.flags.owed.fetch_add(added, Ordering::AcqRel);
    if mux.is_some_and(|m| m.sharing()) {
        // Every request forwarded while sharing has exactly one reply (what has more, or
        // none, pins): the shared connection hands back this many frames.
        req.frames += rep
            .pending
            .iter()
            .skip(before)
            .filter(|p| matches!(p.expect, Expect::One))
            .count();
    }
    match end {
        _ if fatal => Some(Requests::Closed),
        _ if pin => Some(Requests::AwaitingPin),
        _ if unpin => Some(Requests::AwaitingUnpin),
        Some(End::Quit) => Some(Requests::Closed),
        // Only once the backend accepted it: a refused SYNC must not turn the connection
        // into an unmirrored, unfrozen pipe.
        Some(End::Raw) => Some(Requests::AwaitingSync),
        None => None,
    }
}

/// A pinned connection could not be opened: the client is closed (what it sent after the
/// request that needed it must not run on a shared connection instead).
const PIN_FAILED: &[u8] =
    b"-ERR statemirror: could not open a leader connection for this client\r\n";

/// The last replies (error lines for what was owed), bounded by the write timeout.
async fn finish_writes(client: &mut WriteHalf, out: &[u8], client_ok: bool, limit: Duration) {
    if client_ok && !out.is_empty() {
        let _ = tokio::time::timeout(limit, crate::tls::stream::write_flush(client, out)).await;
    }
}

/// The leader's [`Epoch`] now: its master generation and how often it went down.
fn leader_epoch(shared: &crate::redis::server::Shared) -> Epoch {
    (
        shared.leader.master_generation(),
        shared.leader_health.downs(),
    )
}
