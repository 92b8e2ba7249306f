//! The reply half: whole frames are cut from the server's read buffer and only their
//! header (xid, zxid, err) is read; each reply is matched to the head of the pending queue
//! by xid — the Java client treats an out-of-order xid as a lost connection — so made-up
//! replies wait their turn behind replies still in flight. A write's reply body is decoded
//! only when the write is mirrored and succeeded (`acked`).

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::super::frame::encode_frame;
use super::super::proto::records::ReplyHeader;
use super::super::proto::{op, xid};
use super::request::whole_frame;
use super::state::{Pending, Session};
use super::Mode;

/// How a batch of replies ended.
pub(super) enum Replies {
    /// Every whole frame was handled.
    Done,
    /// The leader connection's first zxid must be checked (`ZkShared::leader_zxid`) before
    /// its frame is handled: call again after.
    FirstZxid(i64),
    /// Garbage, or a reply nothing is owed for: the connection ends.
    Bad,
}

impl Session {
    /// Handles the whole frames in `rbuf`: replies (and the made-up replies whose turn came)
    /// are appended to `out` — `rbuf` itself becomes `out` when everything in it goes as it
    /// is — and the acknowledged writes are mirrored.
    pub(super) fn replies(&mut self, rbuf: &mut BytesMut, out: &mut BytesMut) -> Replies {
        let max = self.shared.cfg.max_frame_bytes;
        // `rbuf[run..pos]`: frames that go as they are, not yet appended to `out`.
        let (mut run, mut pos) = (0, 0);
        let verdict = loop {
            let len = match whole_frame(&rbuf[pos..], max) {
                Ok(Some(len)) => len,
                Ok(None) => break Replies::Done,
                Err(()) => {
                    tracing::warn!("bad frame length from the server; closing client");
                    break Replies::Bad;
                }
            };
            let end = pos + 4 + len;
            let frame = &rbuf[pos + 4..end];
            let Some(h) = header(frame) else {
                break Replies::Bad;
            };
            let follower = match self.mode {
                Mode::Follower { zxid } => Some(zxid),
                Mode::Leader { .. } => {
                    if h.zxid > 0 {
                        if !self.first_checked {
                            break Replies::FirstZxid(h.zxid);
                        }
                        // The shared maximum only when this connection's grew.
                        if self.conn_zxid.is_none_or(|z| h.zxid > z) {
                            self.conn_zxid = Some(h.zxid);
                            self.tally.zxid(h.zxid);
                        }
                        self.last_zxid = self.last_zxid.max(h.zxid);
                    }
                    None
                }
            };
            let owed = h.xid != xid::NOTIFICATION;
            if owed {
                if self.pending.front().is_some_and(|p| p.local.is_some()) {
                    out.extend_from_slice(&rbuf[run..pos]);
                    run = pos;
                    self.flush_local(out);
                }
                // Servers answer auth and SASL packets as soon as they read them, ahead of
                // replies still in flight: those may overtake the queue.
                let at = match self.pending.front() {
                    Some(p) if p.xid == h.xid => Some(0),
                    _ => self
                        .pending
                        .iter()
                        .position(|p| p.xid == h.xid && matches!(p.op, op::AUTH | op::SASL)),
                };
                let Some(p) = at.and_then(|i| self.pending.remove(i)) else {
                    tracing::warn!(
                        expected = self.pending.front().map(|p| p.xid),
                        got = h.xid,
                        "leader replied out of order; closing client"
                    );
                    break Replies::Bad;
                };
                self.replied(p, &h, &frame[16..]);
            }
            if let Some(zxid) = follower {
                // Follower zxids never reach the client (see the module comment).
                out.extend_from_slice(&rbuf[run..pos]);
                out.reserve(4 + len);
                out.put_u32(len as u32);
                out.put_slice(&frame[..4]);
                out.put_i64(zxid);
                out.put_slice(&frame[12..]);
                run = end;
            }
            if owed && self.pending.front().is_some_and(|p| p.local.is_some()) {
                // Made-up replies go out as soon as everything before them has.
                out.extend_from_slice(&rbuf[run..end]);
                run = end;
                self.flush_local(out);
            }
            pos = end;
        };
        if run == 0 && pos == rbuf.len() && out.is_empty() {
            // The common case: the whole read goes to the client, without a copy.
            std::mem::swap(rbuf, out);
        } else {
            out.extend_from_slice(&rbuf[run..pos]);
            rbuf.advance(pos);
        }
        verdict
    }

    /// What a server reply to an owed request does besides going to the client.
    fn replied(&mut self, p: Pending, h: &ReplyHeader, body: &[u8]) {
        if let Some(sent) = p.sent {
            self.tally.latency(sent.elapsed().as_secs_f64());
        }
        if p.op == op::CLOSE_SESSION && h.err == 0 {
            let shared = self.shared.clone();
            if let (Some(eph), Some(s)) = (&shared.ephemerals, self.session) {
                // After every zxid this connection saw is published.
                self.flush_counters();
                let max = shared.max_zxid.load(std::sync::atomic::Ordering::Acquire);
                eph.end(s, h.zxid.max(max));
            }
        }
        if let (Some(req), 0) = (p.write, h.err) {
            let resp = Bytes::copy_from_slice(body);
            super::acked::mirror_reply(&self.shared, self.session, p.op, &req, &resp, h.zxid);
        }
    }

    /// Frames the made-up replies at the head of the queue, stamped with the newest zxid
    /// sent on this connection so far: a client's `lastZxid` is plain assignment and must
    /// not go backwards.
    pub(super) fn flush_local(&mut self, out: &mut BytesMut) {
        while let Some(e) = self.pending.front().and_then(|p| p.local) {
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            let zxid = self.last_zxid;
            encode_frame(out, |w| {
                w.write(&ReplyHeader {
                    xid: p.xid,
                    zxid,
                    err: e,
                })
            });
        }
    }

    /// The connection is over; writes still in flight may or may not have run on the
    /// leader, and the mirror cannot know their effect.
    pub(super) fn lost_in_flight(&mut self) {
        let unknown = self.pending.iter().filter(|p| p.write.is_some()).count();
        self.pending.clear();
        if unknown > 0 {
            if let Some(q) = &self.shared.mirror {
                use crate::replication::queue::MirrorView;
                q.sync().mark_out_of_sync(format!(
                    "a leader connection was lost with {unknown} write(s) in flight; whether they ran is unknown"
                ));
            }
        }
    }
}

/// A reply header (xid, zxid, err), read in place.
fn header(frame: &[u8]) -> Option<ReplyHeader> {
    let h = frame.first_chunk::<16>()?;
    let (xid, rest) = h.split_first_chunk::<4>()?;
    let (zxid, err) = rest.split_first_chunk::<8>()?;
    Some(ReplyHeader {
        xid: i32::from_be_bytes(*xid),
        zxid: i64::from_be_bytes(*zxid),
        err: i32::from_be_bytes(err.first_chunk::<4>().copied()?),
    })
}
