//! The request half: whole frames are cut from the client's read buffer, only their
//! header (xid, opcode) is read, and each one is either forwarded as received or answered
//! here. Every forwarded request gets its [`Pending`] entry as it is cut, before any byte of
//! it can reach the server, so every reply finds its entry.

use std::time::Instant;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::super::jute::Record;
use super::super::proto::records::{SetWatches, SetWatches2};
use super::super::proto::{err, is_write, op};
use super::state::{Pending, Session, LATENCY_SAMPLE};
use super::Mode;

/// What becomes of one request frame.
enum Forward {
    /// Its bytes go to the server as they are.
    AsIs,
    /// Answered here: nothing is forwarded.
    Not,
    /// This frame body (header included) goes instead.
    As(Bytes),
}

/// A frame's length (without its 4-byte prefix) when the buffer holds all of it; `Err`
/// when the prefix is no frame length (negative, or past `max`).
pub(super) fn whole_frame(buf: &[u8], max: usize) -> Result<Option<usize>, ()> {
    let Some(prefix) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let len = usize::try_from(i32::from_be_bytes(*prefix)).map_err(|_| ())?;
    if len > max {
        return Err(());
    }
    Ok((buf.len() >= 4 + len).then_some(len))
}

impl Session {
    /// Cuts the whole frames off `buf` and handles each: forwarded ones are appended to
    /// `out` — the read buffer itself becomes `out` when everything in it goes as it is —
    /// and every frame gets its entry. False on bad input (the requests end there; what
    /// came before is still forwarded).
    pub(super) fn requests(&mut self, buf: &mut BytesMut, out: &mut BytesMut) -> bool {
        let max = self.shared.cfg.max_frame_bytes;
        // `buf[run..pos]`: frames that go as they are, not yet appended to `out`.
        let (mut run, mut pos) = (0, 0);
        let ok = loop {
            let len = match whole_frame(&buf[pos..], max) {
                Ok(Some(len)) => len,
                Ok(None) => break true,
                Err(()) => {
                    self.shared.metrics.client_error("too_large");
                    tracing::debug!("bad frame length from client; closing");
                    break false;
                }
            };
            let frame = &buf[pos + 4..pos + 4 + len];
            let Some(header) = frame.first_chunk::<8>() else {
                self.shared.metrics.client_error("protocol");
                break false;
            };
            let xid = i32::from_be_bytes([header[0], header[1], header[2], header[3]]);
            let opcode = i32::from_be_bytes([header[4], header[5], header[6], header[7]]);
            let end = pos + 4 + len;
            match self.request(xid, opcode, frame) {
                Forward::AsIs => {}
                Forward::Not => {
                    out.extend_from_slice(&buf[run..pos]);
                    run = end;
                }
                Forward::As(body) => {
                    out.extend_from_slice(&buf[run..pos]);
                    out.reserve(4 + body.len());
                    out.put_u32(body.len() as u32);
                    out.put_slice(&body);
                    run = end;
                }
            }
            pos = end;
        };
        if run == 0 && pos == buf.len() && out.is_empty() {
            // The common case: the whole read goes to the server, without a copy.
            std::mem::swap(buf, out);
        } else {
            out.extend_from_slice(&buf[run..pos]);
            buf.advance(pos);
        }
        ok
    }

    /// One request: its entry, and what is forwarded.
    fn request(&mut self, xid: i32, opcode: i32, frame: &[u8]) -> Forward {
        let answer = |e: i32| Pending {
            xid,
            op: opcode,
            local: Some(e),
            write: None,
            _ticket: None,
            sent: None,
        };
        if opcode == op::CHECK {
            // Never forwarded: a standalone check corrupts ZooKeeper 3.8.0's log.
            self.tally.rejected();
            self.pending.push_back(answer(err::UNIMPLEMENTED));
            return Forward::Not;
        }
        let follower = matches!(self.mode, Mode::Follower { .. });
        let mut ticket = None;
        let mut write = None;
        if is_write(opcode) {
            if follower {
                self.tally.rejected_leader_unavailable();
                self.pending.push_back(answer(err::NOT_READ_ONLY));
                return Forward::Not;
            }
            ticket = self.shared.freeze.begin_write();
            if ticket.is_none() {
                self.tally.rejected_maintenance();
                self.pending.push_back(answer(err::NOT_READ_ONLY));
                return Forward::Not;
            }
            if self.mirroring {
                // Queued until the reply: owns its bytes (not a slice of the read buffer,
                // which it would keep from being reused).
                write = Some(Bytes::copy_from_slice(&frame[8..]));
            }
            self.tally.write();
        } else {
            self.tally.read();
        }
        let forward = if !follower {
            Forward::AsIs
        } else if matches!(opcode, op::SET_WATCHES | op::SET_WATCHES2) {
            zero_relative_zxid(frame, opcode).map_or(Forward::AsIs, Forward::As)
        } else {
            // Region 1's paths, asked of the follower: the state identity map's names.
            crate::nifi::identity_wire::zk_request(&self.shared.identity.current(), frame, opcode)
                .map_or(Forward::AsIs, Forward::As)
        };
        self.sampled = self.sampled.wrapping_add(1);
        self.pending.push_back(Pending {
            xid,
            op: opcode,
            local: None,
            write,
            _ticket: ticket,
            sent: (self.sampled % LATENCY_SAMPLE == 1).then(Instant::now),
        });
        forward
    }
}

/// A `setWatches`/`setWatches2` request (header included) with `relativeZxid` 0.
fn zero_relative_zxid(frame: &[u8], opcode: i32) -> Option<Bytes> {
    let body = Bytes::copy_from_slice(frame.get(8..)?);
    let mut out = BytesMut::with_capacity(frame.len());
    out.put_slice(&frame[..8]);
    let mut w = super::super::jute::Writer::with_buf(out);
    if opcode == op::SET_WATCHES {
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
