//! One client connection, pinned to one backend connection (the leader, or the follower
//! while the leader is down) for its whole life, so `AUTH`, `SELECT`, `WATCH`/`MULTI`,
//! pub/sub and blocking commands behave exactly as against Redis.
//!
//! With `[redis] multiplex` a leader-served client instead starts on a shared leader
//! connection (`upstream`: many clients' requests per write) and is pinned to one of its
//! own only for what needs it (`mux`); the halves below are the same either way, only
//! where the backend's bytes go and come from differs.
//!
//! One task per connection (`conn`: a loop over whichever socket can move), in two halves:
//! - the **request side** cuts client bytes into requests, classifies each one, and either
//!   forwards its exact bytes or answers it locally (a frozen write, a write while the
//!   follower serves). For every request it queues a [`Pending`] entry *before* the bytes
//!   go out, so the reply side always knows what comes next;
//! - the **reply side** matches backend replies to the entries in order.
//!   Local answers wait in the same queue, so replies keep request order even when some are
//!   made up here. Pub/sub messages and RESP3 pushes are out of band and go straight
//!   through. When a write's reply is not an error, its mirror op is queued — a `MULTI`
//!   block's ops are held until `EXEC` succeeds and then queued as one op.
//!
//! What the session tracks, and from where:
//! - the **database** a request runs in: the reply side knows it (from `SELECT`, `RESET`
//!   and `EXEC` replies); the request side knows it only while no db-changing request is
//!   unanswered (a `SELECT 99` may fail, a `NOAUTH` may refuse it, the `SET` pipelined
//!   after it runs in the old db). Meanwhile its writes register as wildcards and are
//!   mirrored by key copy, never as an exact effect (see `Flags::db`);
//! - **`CLIENT REPLY OFF|SKIP`**: with no reply the proxy cannot see when a write ran, so
//!   the request side ends such a batch with a fence (`CLIENT REPLY ON`, whose reply the
//!   client never sees, then its mode restored); the reply side holds those writes' effects,
//!   in-flight registrations and freeze tickets until a later reply proves they ran. An
//!   `EXEC` under it is mirrored by key copy (its results are unknown);
//! - **`QUIT`**: nothing after it is forwarded (Redis closes after `+OK`);
//! - **`SYNC`/`PSYNC`**: from its reply on, the connection is a byte pipe both ways (an RDB
//!   payload and the replication stream are not RESP replies); nothing on it is mirrored.
//!   `SCRIPT DEBUG` (the Lua debugger's own protocol) is refused.
//!
//! Every write holds a freeze ticket until its reply is handled, blocking ones too: a
//! `BLPOP` on a non-empty list runs at once, and a parked one may run at any time, so a
//! freeze waits for it (up to the drain timeout, then reports `writes_drained: false`).
//!
//! Shutdown flows: client EOF → stop reading, finish the replies still owed (their writes
//! must still be mirrored), close. A client that stops reading its replies is dropped after
//! `client_write_timeout_ms`, but what it already sent is still matched and mirrored.
//! Backend EOF/error → every request still owed gets an error reply, its writes are queued
//! for mirroring anyway (a key copy of an unapplied write is harmless; a keyless write is
//! not replayed on a guess, the follower is marked out of sync instead), close so the
//! client reconnects. Leader healthy again while the follower
//! serves → close at the next safe point (nothing in flight, not in `MULTI`, not between
//! `WATCH` and `EXEC`, not subscribed). Sentinel switched the master this session went to →
//! the same (see `redis::sentinel`).
//! Leader declared down while it serves (and there is a follower) → close at once, owed
//! requests answered like a lost backend: a silent leader would hold the client forever,
//! and its reconnect lands on the follower.

mod client_io;
mod conn;
mod counts;
mod effects;
mod finished;
mod mux;
mod pending;
mod reply;
mod request;
mod spare;
mod upstream;

pub use mux::Mux;
pub use upstream::Pool;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::tls::Stream;
use bytes::BytesMut;
use smallvec::SmallVec;

use super::server::Shared;
use crate::metrics::Route;
use reply::ReplySide;
use request::RequestSide;

pub(super) const FROZEN: &[u8] = b"-READONLY statemirror: writes are frozen for maintenance\r\n";
pub(super) const LEADER_DOWN: &[u8] =
    b"-READONLY statemirror: leader unavailable, this connection is served by the follower (reads only)\r\n";
pub(super) const EXECABORT_FROZEN: &[u8] =
    b"-EXECABORT Transaction discarded because of previous errors (statemirror: writes are frozen for maintenance)\r\n";
pub(super) const EXECABORT_LEADER_DOWN: &[u8] =
    b"-EXECABORT Transaction discarded because of previous errors (statemirror: leader unavailable)\r\n";
pub(super) const UNSUPPORTED: &[u8] =
    b"-ERR statemirror: SCRIPT DEBUG (the Lua debugger) is not supported through the proxy\r\n";
pub(super) const LEADER_LOST: &[u8] = b"-ERR statemirror: leader connection lost before the reply; the command may or may not have run\r\n";

/// What the two halves tell each other (one task: plain loads and stores, never contended).
#[derive(Default)]
pub(super) struct Flags {
    pub(super) owed: AtomicUsize,
    pub(super) subscribed: AtomicBool,
    /// The database the replies say the connection is on, and how many db-changing
    /// requests (`SELECT`, `RESET`, an `EXEC` with `SELECT`) the reply side has resolved:
    /// the request side knows its database again once all it sent are resolved.
    pub(super) db: AtomicU32,
    pub(super) db_resolved: AtomicU64,
    /// How the backend answered a `SYNC`/`PSYNC` (`SYNC_*`), for the request side waiting
    /// to know whether the connection became a pipe.
    pub(super) sync: AtomicU8,
    /// Between `WATCH` and `EXEC`/`DISCARD`/`UNWATCH`/`RESET` (as sent): not a safe point.
    pub(super) watching: AtomicBool,
}

pub(super) const SYNC_UNDECIDED: u8 = 0;
pub(super) const SYNC_RAW: u8 = 1;
pub(super) const SYNC_REFUSED: u8 = 2;

impl Flags {
    pub(super) fn sync_verdict(&self, v: u8) {
        self.sync.store(v, Ordering::Release);
    }
}

/// Most requests one client may have in flight (sent to the backend, reply not yet
/// relayed). Past it the client is not read until replies drain: a client pipelining into
/// a slow or silent backend holds bounded memory (each owed request keeps an entry), and
/// TCP pushes back on it.
pub(super) const MAX_OWED: usize = 1024;

impl Flags {
    /// One owed reply was answered (or given up).
    pub(super) fn pay(&self) {
        self.owed.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `master`: fires when Sentinel switches the master this session's backend went to.
pub async fn serve(
    shared: Arc<Shared>,
    client: Stream,
    backend: Stream,
    route: Route,
    master: Option<tokio::sync::watch::Receiver<u64>>,
) {
    let (client_r, client_w) = client.into_split();
    let (backend_r, backend_w) = backend.into_split();
    let (requests, replies) = sides(shared, route, master);
    let io = conn::Io {
        client_r,
        client_w,
        backend_r: Some(backend_r),
        backend_w: Some(backend_w),
    };
    conn::run(requests, replies, io, None).await;
}

/// A multiplexed session (`[redis] multiplex`): served by the leader on a shared
/// connection, pinned to one of its own when it needs one (see `mux`).
pub async fn serve_shared(
    shared: Arc<Shared>,
    client: Stream,
    mux: Mux,
    master: Option<tokio::sync::watch::Receiver<u64>>,
) {
    let (client_r, client_w) = client.into_split();
    let (requests, replies) = sides(shared, Route::Leader, master);
    let io = conn::Io {
        client_r,
        client_w,
        backend_r: None,
        backend_w: None,
    };
    conn::run(requests, replies, io, Some(mux)).await;
}

fn sides(
    shared: Arc<Shared>,
    route: Route,
    master: Option<tokio::sync::watch::Receiver<u64>>,
) -> (RequestSide, ReplySide) {
    let flags = Arc::new(Flags::default());
    let table = shared.table();
    let requests = RequestSide {
        shared: shared.clone(),
        table,
        route,
        flags: flags.clone(),
        in_multi: false,
        tx_writes: false,
        tx_poisoned: None,
        reply_off: false,
        skip_next: false,
        db: 0,
        db_known: true,
        db_changes: 0,
        need_fence: false,
        tx_keys: SmallVec::new(),
        tx_wild: false,
        tx_select: false,
        sampled: 0,
        frames: 0,
        counts: Default::default(),
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
        flags,
        pending: VecDeque::new(),
        // Grown as needed (see `conn::ReadSize`): an idle connection holds little.
        rbuf: BytesMut::new(),
        out: BytesMut::new(),
        db: 0,
        in_multi: false,
        tx: Vec::new(),
        unconfirmed: VecDeque::new(),
        resp3: false,
        subs: Default::default(),
        raw_mode: false,
        close_after_flush: false,
        leader_up,
        close_when_safe,
        master_switch: master,
        finished: Default::default(),
    };
    (requests, replies)
}
