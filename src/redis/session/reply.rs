//! The reply side: matches backend replies to pending requests in order and relays them
//! (the session's loop, `conn`, decides when the connection ends).

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use tokio::sync::watch;

use super::finished::FinishedWrites;
use super::pending::{Action, Effect, Expect, Pending, TxItem};
use super::{Flags, LEADER_LOST};
use crate::metrics::Route;
use crate::redis::resp;
use crate::redis::server::Shared;

pub(super) struct ReplySide {
    pub(super) shared: Arc<Shared>,
    pub(super) route: Route,
    pub(super) flags: Arc<Flags>,
    pub(super) pending: VecDeque<Pending>,
    pub(super) rbuf: BytesMut,
    pub(super) out: BytesMut,
    pub(super) db: u32,
    pub(super) in_multi: bool,
    pub(super) tx: Vec<TxItem>,
    /// Sent with no reply to come (`CLIENT REPLY OFF|SKIP`): they ran once any later reply
    /// arrives (the request side ends such a batch with a fence that has one). Their
    /// effects — mirror ops, registrations, freeze tickets — wait until then.
    pub(super) unconfirmed: VecDeque<Pending>,
    pub(super) resp3: bool,
    pub(super) subs: [HashSet<Bytes>; 3],
    /// After `MONITOR`: everything from the backend goes straight to the client.
    pub(super) raw_mode: bool,
    pub(super) close_after_flush: bool,
    /// Taken by the session's loop, which watches it.
    pub(super) leader_up: Option<watch::Receiver<bool>>,
    pub(super) close_when_safe: bool,
    /// Fires when Sentinel switched the master this session is pinned to.
    pub(super) master_switch: Option<watch::Receiver<u64>>,
    /// Writes answered but not yet released and queued (see `finished`).
    pub(super) finished: FinishedWrites,
}

impl Drop for ReplySide {
    fn drop(&mut self) {
        // Every path flushes before it returns; this is the backstop that keeps an
        // acknowledged write from leaving unmirrored.
        self.flush_finished();
    }
}

impl ReplySide {
    pub(super) fn at_safe_point(&self) -> bool {
        self.pending.is_empty()
            && self.unconfirmed.is_empty()
            && !self.in_multi
            && !self.flags.watching.load(Ordering::Acquire)
            && self.subs.iter().all(|s| s.is_empty())
            && !self.raw_mode
    }

    /// Answers entries at the head that need nothing from the backend.
    pub(super) fn drain_ready(&mut self) {
        while let Some(head) = self.pending.front() {
            if !matches!(head.expect, Expect::Nothing) {
                break;
            }
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            match p.action {
                Action::Local(b) => self.out.extend_from_slice(&b),
                Action::LocalThenClose(b) => {
                    self.flags.pay();
                    self.out.extend_from_slice(&b);
                    self.close_after_flush = true;
                    return;
                }
                // Sent, no reply will come: it has not necessarily run yet.
                _ if !matches!(p.effect, Effect::None) => {
                    self.unconfirmed.push_back(p);
                    continue;
                }
                _ => {}
            }
            self.flags.pay();
        }
    }

    /// A reply came: every request sent before it without a reply has run.
    pub(super) fn confirm(&mut self) {
        while let Some(p) = self.unconfirmed.pop_front() {
            self.flags.pay();
            self.apply_effect(p.effect, None);
        }
    }

    pub(super) fn on_backend_data(&mut self) {
        self.read_replies();
        self.flush_finished();
    }

    fn read_replies(&mut self) {
        // Every reply in `rbuf` answers a request whose entry was queued before the request
        // was written (same task: no entry can be missing).
        loop {
            if self.raw_mode {
                let all = self.rbuf.split();
                self.out.extend_from_slice(&all);
                return;
            }
            self.drain_ready();
            if self
                .pending
                .front()
                .is_some_and(|p| matches!(p.effect, Effect::RawPipe))
            {
                // SYNC/PSYNC: `+FULLRESYNC …`, keep-alive newlines, an RDB payload without a
                // trailing CRLF (or `$EOF:` diskless), then the replication stream. Not RESP
                // replies: relay the bytes. A refusal is an ordinary error reply.
                match self.rbuf.first() {
                    None => return,
                    Some(b'-') => {}
                    Some(_) => {
                        if let Some(p) = self.pending.pop_front() {
                            self.flags.pay();
                            self.confirm();
                            self.apply_effect(p.effect, None);
                        }
                        continue;
                    }
                }
            }
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

    pub(super) fn on_frame(&mut self, frame: &[u8]) {
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
        self.confirm();
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
                    .record(t.elapsed().as_secs_f64());
            }
        }
        match p.action {
            Action::Forward => self.out.extend_from_slice(frame),
            Action::Replace(b) => self.out.extend_from_slice(b),
            Action::Local(_) | Action::LocalThenClose(_) => {}
        }
        self.apply_effect(p.effect, Some(frame));
    }

    pub(super) fn on_confirmation(&mut self, frame: &[u8]) {
        self.confirm();
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
}
