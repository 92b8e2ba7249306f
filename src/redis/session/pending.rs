//! What the reply side must do for each request, in request order.

use std::time::Instant;

use bytes::Bytes;

use crate::redis::command::{KnownEffect, SubKind, WriteTarget};
use crate::redis::inflight::Registration;
use crate::replication::freeze::WriteTicket;

/// What the reply side must do for one request. Kept small (the large effects are boxed):
/// every request in flight holds one, and an idle connection keeps the queue's capacity.
pub(super) struct Pending {
    pub(super) expect: Expect,
    pub(super) action: Action,
    pub(super) effect: Effect,
    pub(super) sent: Option<Instant>,
}

pub(super) enum Expect {
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

pub(super) enum Action {
    Forward,
    /// Consume the backend's reply and send this instead.
    Replace(&'static [u8]),
    /// Send this (no backend reply involved).
    Local(Bytes),
    /// Local answer, then close the connection.
    LocalThenClose(Bytes),
}

pub(super) enum Effect {
    None,
    Write(Box<WriteEffect>),
    /// `None`: an argument Redis will refuse.
    Select(Option<u32>),
    Queued(TxItem),
    Multi,
    Exec(Box<ExecEffect>),
    Discard,
    Reset,
    Hello,
    Monitor,
    /// Redis closes the connection after this reply.
    Quit,
    /// `SYNC`/`PSYNC`: from this reply on the connection is a byte pipe.
    RawPipe,
}

impl Effect {
    /// The write's in-flight registration, if it has one.
    pub(super) fn registration_mut(&mut self) -> Option<&mut Registration> {
        match self {
            Effect::Write(w) => w.reg.as_mut().map(|(r, _)| r),
            Effect::Exec(e) => e.reg.as_mut().map(|(r, _)| r),
            _ => None,
        }
    }

    /// Does the request side wait for this one's reply to know its database again?
    pub(super) fn changes_db(&self) -> bool {
        matches!(self, Effect::Select(_) | Effect::Reset)
            || matches!(self, Effect::Exec(e) if e.select)
    }
}

pub(super) struct WriteEffect {
    pub(super) target: WriteTarget,
    pub(super) raw: Bytes,
    /// The whole effect, when the request carries it (`SET k v`).
    pub(super) known: Option<KnownEffect>,
    /// Keys registered as in flight, with the database the request side expected
    /// (`None`: unknown, a `SELECT` was still unanswered; never mirrored exactly).
    pub(super) reg: Option<(Registration, Option<u32>)>,
    pub(super) _ticket: Option<WriteTicket>,
}

pub(super) struct ExecEffect {
    pub(super) _ticket: Option<WriteTicket>,
    pub(super) reg: Option<(Registration, Option<u32>)>,
    /// The transaction has a `SELECT`: mirror by key copy, and the db may change.
    pub(super) select: bool,
}

pub(super) enum TxItem {
    Write(Box<TxWrite>),
    Select(u32),
    Other,
}

pub(super) struct TxWrite {
    pub(super) target: WriteTarget,
    pub(super) raw: Bytes,
    pub(super) known: Option<KnownEffect>,
}

pub(super) fn local(action: Action) -> Pending {
    Pending {
        expect: Expect::Nothing,
        action,
        effect: Effect::None,
        sent: None,
    }
}
