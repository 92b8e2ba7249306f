//! A multiplexed session's side of sharing: what pins a client to a connection of its own,
//! when it may share again, and how its requests and replies move through a shared
//! [`Upstream`].
//!
//! A client shares only while it holds no connection state the shared connection lacks:
//! it never authenticated, is in database 0, speaks RESP2, is not in `MULTI`, not watching,
//! not subscribed, not blocked. A request that would change that (or that needs a
//! connection to itself: `MONITOR`, `SYNC`, `CLIENT REPLY`, `CLIENT SETNAME`…) pins it:
//! the request half stops, the replies it owes on the shared connection come back, then it
//! opens its own leader connection and goes on exactly like a non-multiplexed session.
//! A *transient* pin (`WATCH`/`MULTI`, blocking commands, pub/sub, `SELECT`) ends at the
//! first request that needs no pin, sent at a safe point in database 0 (so a client running
//! one transaction after another keeps its connection); a *sticky* one (`AUTH`, `HELLO 3`, `CLIENT SETNAME`,
//! `RESET`, `MONITOR`, …: state the proxy does not track) lasts until the client leaves.
//! The pinned connection is closed when the pin ends, never shared.

use std::sync::Arc;

use bytes::BytesMut;

use super::reply::ReplySide;
use super::request::RequestSide;
use super::upstream::{Inbox, Upstream};
use crate::metrics::Route;
use crate::redis::command::{parse_u32, CommandTable, Special};
use crate::redis::resp::Request;
use crate::redis::server::Shared;

/// What a request needs of the connection it goes on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Need {
    /// Any connection in the shared state will do.
    Share,
    /// A connection of its own until the client is back at a safe point in database 0.
    Transient,
    /// A connection of its own for the rest of the client's life.
    Sticky,
    /// `QUIT`: answered here (on a shared connection Redis would close it for everyone).
    Quit,
}

pub(super) fn need(table: &CommandTable, req: &Request) -> Need {
    let info = table.lookup(req);
    match info.special {
        Special::Quit => return Need::Quit,
        Special::Multi | Special::Subscribe(_) | Special::Unsubscribe(_) => return Need::Transient,
        Special::Select => {
            return match req.arg(1).and_then(parse_u32) {
                Some(0) => Need::Share,
                _ => Need::Transient,
            }
        }
        Special::Reset
        | Special::Monitor
        | Special::Sync
        | Special::ReplConf
        | Special::ClientReply => return Need::Sticky,
        // `HELLO` / `HELLO 2` change nothing; a protocol switch, `AUTH` or `SETNAME` do.
        Special::Hello => {
            let plain = req.argc == 1 || (req.argc == 2 && req.arg(1) == Some(b"2"));
            return if plain { Need::Share } else { Need::Sticky };
        }
        _ => {}
    }
    let Some(name) = req.arg(0) else {
        return Need::Share;
    };
    let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
    // `WAIT` holds its connection until replicas acknowledge: everyone's, if shared.
    if info.blocking || is("watch") || is("wait") || is("waitaof") {
        return Need::Transient;
    }
    if is("auth") || is("readonly") || is("readwrite") || is("asking") {
        return Need::Sticky;
    }
    if is("client") {
        let sub = req
            .arg(1)
            .map(|s| s.to_ascii_lowercase())
            .unwrap_or_default();
        return match sub.as_slice() {
            // Documented differences (README "Multiplexing"): about the shared connection.
            b"id" | b"list" | b"kill" | b"pause" | b"unpause" | b"help" => Need::Share,
            // They reveal the connection's own state: asked on one of its own.
            b"getname" | b"info" | b"getredir" | b"trackinginfo" => Need::Transient,
            // SETNAME, TRACKING, NO-EVICT, NO-TOUCH, SETINFO, CACHING, UNBLOCK…
            _ => Need::Sticky,
        };
    }
    Need::Share
}

/// A multiplexed session's sharing state.
pub struct Mux {
    /// Which pool slot this client uses (one shared connection at a time: its replies
    /// keep their order).
    slot: usize,
    pub(super) inbox: Arc<Inbox>,
    /// The shared connection, while sharing (`None`: pinned).
    up: Option<Arc<Upstream>>,
    /// Pinned for good.
    pub(super) sticky: bool,
    /// The request that asked for a pin, handled once the connection is open.
    pub(super) held: Option<Request>,
}

impl Mux {
    /// A new client's place on a shared connection, once that connection is open (`None`:
    /// not multiplexing, or the leader did not take the connection: the caller picks a
    /// backend as for any client, the follower while the leader is down).
    pub async fn join(shared: &Arc<Shared>) -> Option<Self> {
        let pool = shared.mux.as_ref()?;
        let slot = pool.pick();
        let up = pool.get(slot, shared);
        if !up.opened().await {
            return None;
        }
        Some(Mux {
            slot,
            inbox: Arc::default(),
            up: Some(up),
            sticky: false,
            held: None,
        })
    }

    pub(super) fn sharing(&self) -> bool {
        self.up.is_some()
    }

    /// The shared connection has more unsent bytes than a connection of its own may: the
    /// client is not read until the task takes them (a leader that stops reading must not
    /// make the proxy hold every client's requests).
    pub(super) fn backlogged(&self) -> bool {
        self.up
            .as_ref()
            .is_some_and(|u| u.pending_out() >= crate::session_io::BACKEND_OUT_HIGH)
    }

    /// Leaves sharing (the caller opens the pinned connection).
    pub(super) fn pin(&mut self) {
        self.up = None;
    }

    /// Back to sharing (the caller dropped the pinned connection).
    pub(super) fn unpin(&mut self, shared: &Arc<Shared>) {
        if let Some(pool) = &shared.mux {
            self.up = Some(pool.get(self.slot, shared));
        }
    }

    /// Hands `out` (expecting `frames` replies) to the shared connection; a dead one is
    /// replaced (its lost marks are already in the inbox, ahead of anything new).
    pub(super) fn send(&mut self, shared: &Arc<Shared>, out: &mut BytesMut, frames: usize) {
        let Some(pool) = &shared.mux else {
            return;
        };
        for _ in 0..3 {
            let up = self.up.get_or_insert_with(|| pool.get(self.slot, shared));
            if up.send(&self.inbox, out, frames) {
                return;
            }
            self.up = Some(pool.get(self.slot, shared));
        }
        // A new upstream refuses nothing until its task fails; three refusals in a row
        // mean it fails as fast as it opens: answer these requests as lost.
        out.clear();
        if frames > 0 {
            self.inbox.lose(frames);
        }
    }

    /// Moves what the shared connection delivered into the reply side and handles it, lost
    /// marks in their place among the frames.
    pub(super) fn receive(&self, rep: &mut ReplySide) {
        let start = rep.rbuf.len();
        let marks = self.inbox.take(&mut rep.rbuf);
        if marks.is_empty() {
            rep.on_backend_data();
            return;
        }
        let mut rest = rep.rbuf.split_off(start);
        let mut at = 0;
        for (off, n) in marks {
            let seg = rest.split_to(off.saturating_sub(at).min(rest.len()));
            at = off.max(at);
            rep.rbuf.extend_from_slice(&seg);
            rep.on_backend_data();
            rep.fail_owed(n);
        }
        rep.rbuf.extend_from_slice(&rest);
        rep.on_backend_data();
    }
}

/// May a pinned multiplexed session share again? Only with no state the shared connection
/// lacks (see `mux`): a transient pin, at a safe point, database 0, RESP2, replies on.
pub(super) fn may_unpin(m: &Mux, req: &RequestSide, rep: &ReplySide, open: bool) -> bool {
    !m.sticky
        && m.held.is_none()
        && open
        && rep.route == Route::Leader
        && !rep.close_when_safe
        && rep.at_safe_point()
        && rep.rbuf.is_empty()
        && rep.db == 0
        && !rep.resp3
        && req.db_known
        && req.db == 0
        && !req.in_multi
        && !req.reply_off
        && !req.skip_next
}

pub(super) async fn inbox_ready(m: Option<&Mux>) {
    match m {
        Some(m) => m.inbox.ready.notified().await,
        None => std::future::pending().await,
    }
}
