//! Shared leader connections for multiplexed sessions (`[redis] multiplex`).
//!
//! Each [`Upstream`] is one leader connection that many client sessions write to. A
//! session appends its requests' bytes to the upstream's out buffer and one FIFO entry
//! (its [`Inbox`], how many replies it waits for) *under one lock*, so the FIFO is in the
//! order of the bytes; the upstream's task writes whatever accumulated in one write (many
//! clients' requests per syscall), cuts the replies into frames, and hands each client its
//! frames in order (its inbox, then a wake). The session's reply side then handles them as
//! if they came from a connection of its own: `Pending`, freeze tickets, in-flight
//! registrations and mirroring stay per client and per request.
//!
//! Why this and not per-core `current_thread` runtimes: it keeps the server's runtime and
//! the pinned session exactly as they are, and the gain sought (many requests per syscall
//! on both sides of Redis) comes from the coalescing, not from where tasks run. The cost
//! is a lock and a cross-thread wake per batch, measured in `benches/redis_proxy.rs`.
//!
//! Failure: a connection that ends (an error, `CLIENT KILL`, a protocol error, a Sentinel
//! master switch) fails only what is in its FIFO: each client there finds a "lost `n`"
//! mark in its inbox, after the frames it already got, and answers those `n` requests
//! with `LEADER_LOST` (their writes mirrored as may-have-run). The upstream is then dead:
//! a send to it is refused and the session takes a new one from the [`Pool`]. Since the
//! marks are queued under the upstream's lock before it refuses sends, a client's
//! replies from the new connection always come after them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::sync::Notify;

use super::client_io::{write_some, Watch};
use super::spare::Spares;
use crate::redis::resp;
use crate::redis::server::Shared;
use crate::replication::queue::lock;

/// Where an upstream leaves one client's replies.
#[derive(Default)]
pub(super) struct Inbox {
    q: Mutex<InboxQ>,
    pub(super) ready: Notify,
}

#[derive(Default)]
struct InboxQ {
    /// Whole reply frames, in order.
    data: BytesMut,
    /// `(offset in data, n)`: the connection ended there, `n` replies will not come.
    lost: Vec<(usize, usize)>,
}

impl Inbox {
    fn deliver(&self, frames: &[u8]) {
        let mut q = lock(&self.q);
        let wake = q.data.is_empty() && q.lost.is_empty();
        q.data.extend_from_slice(frames);
        drop(q);
        if wake {
            self.ready.notify_one();
        }
    }

    pub(super) fn lose(&self, n: usize) {
        let mut q = lock(&self.q);
        let at = q.data.len();
        q.lost.push((at, n));
        drop(q);
        self.ready.notify_one();
    }

    /// Moves what arrived to the end of `into`; returns the lost marks (offsets relative
    /// to where the moved bytes start).
    pub(super) fn take(&self, into: &mut BytesMut) -> Vec<(usize, usize)> {
        let mut q = lock(&self.q);
        into.extend_from_slice(&q.data);
        q.data.clear();
        crate::session_io::shrink_if_empty(&mut q.data);
        std::mem::take(&mut q.lost)
    }
}

/// One shared leader connection (see the module notes).
pub(super) struct Upstream {
    state: Mutex<UpState>,
    /// Bytes queued and not yet taken by the task (`UpState::out`), readable without the
    /// lock: clients stop reading requests while it is past `BACKEND_OUT_HIGH`, so a
    /// leader that stops reading holds bounded memory here too (see `Mux::backlogged`).
    pending_out: AtomicUsize,
    wake: Notify,
    /// Connecting, then up, then down (see [`Upstream::opened`]).
    status: tokio::sync::watch::Sender<Status>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    Connecting,
    Up,
    Down,
}

#[derive(Default)]
struct UpState {
    out: BytesMut,
    /// Who waits for the next replies, and for how many.
    fifo: VecDeque<(Arc<Inbox>, usize)>,
    dead: bool,
}

impl Upstream {
    /// Queues a client's requests (all of `bytes`, expecting `frames` replies). False when
    /// this connection is gone (the caller takes another from the pool; `bytes` is kept).
    pub(super) fn send(&self, inbox: &Arc<Inbox>, bytes: &mut BytesMut, frames: usize) -> bool {
        let mut s = lock(&self.state);
        if s.dead {
            return false;
        }
        let wake = s.out.is_empty();
        s.out.extend_from_slice(bytes);
        bytes.clear();
        self.pending_out.store(s.out.len(), Ordering::Relaxed);
        if frames > 0 {
            match s.fifo.back_mut() {
                Some((i, n)) if Arc::ptr_eq(i, inbox) => *n += frames,
                _ => s.fifo.push_back((inbox.clone(), frames)),
            }
        }
        drop(s);
        if wake {
            self.wake.notify_one();
        }
        true
    }

    /// Waits for the connect's outcome: true once connected (false: it failed or ended).
    pub(super) async fn opened(&self) -> bool {
        let mut rx = self.status.subscribe();
        matches!(
            rx.wait_for(|s| *s != Status::Connecting).await.map(|s| *s),
            Ok(Status::Up)
        )
    }

    /// Bytes clients queued that the task has not taken yet.
    pub(super) fn pending_out(&self) -> usize {
        self.pending_out.load(Ordering::Relaxed)
    }

    fn is_dead(&self) -> bool {
        lock(&self.state).dead
    }

    /// Ends this connection: every reply still owed is lost, later sends are refused.
    fn fail(&self) {
        self.status.send_replace(Status::Down);
        let mut s = lock(&self.state);
        s.dead = true;
        s.out = BytesMut::new();
        self.pending_out.store(0, Ordering::Relaxed);
        for (inbox, n) in std::mem::take(&mut s.fifo) {
            inbox.lose(n);
        }
    }

    /// Hands the frames at the start of `rbuf` to their clients; the bytes handed are
    /// removed. Err: a reply nobody waits for (the connection is out of step: fail it).
    fn dispatch(&self, rbuf: &mut BytesMut) -> Result<(), ()> {
        let mut s = lock(&self.state);
        let mut pos = 0;
        while pos < rbuf.len() {
            let Some((inbox, left)) = s.fifo.front_mut() else {
                return Err(());
            };
            // This client's consecutive frames go in one delivery.
            let start = pos;
            while *left > 0 {
                match resp::frame_len(&rbuf[pos..]) {
                    Ok(Some(n)) => {
                        pos += n;
                        *left -= 1;
                    }
                    Ok(None) => break,
                    Err(_) => return Err(()),
                }
            }
            if pos > start {
                inbox.deliver(&rbuf[start..pos]);
            }
            if *left == 0 {
                s.fifo.pop_front();
            } else {
                break;
            }
        }
        drop(s);
        let _ = rbuf.split_to(pos);
        Ok(())
    }

    /// Nothing owed and nothing to send.
    fn idle(&self) -> bool {
        let s = lock(&self.state);
        s.fifo.is_empty() && s.out.is_empty()
    }
}

/// The shared connections of one sidecar: `multiplex_connections` slots, each holding its
/// current upstream (a new one once the last ended). Clients are spread round-robin.
pub struct Pool {
    slots: Vec<Mutex<Option<Arc<Upstream>>>>,
    next: AtomicUsize,
    /// Warm dedicated connections for the next pin (`multiplex_spare_connections`).
    pub(super) spares: Spares,
}

impl Pool {
    pub fn new(connections: usize, spares: usize) -> Self {
        let n = if connections == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            connections
        };
        Pool {
            slots: (0..n).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            spares: Spares::new(spares),
        }
    }

    /// A slot for a new client.
    pub(super) fn pick(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()
    }

    /// The slot's live upstream, opening one (its task connects) when there is none.
    pub(super) fn get(&self, slot: usize, shared: &Arc<Shared>) -> Arc<Upstream> {
        let mut s = lock(&self.slots[slot % self.slots.len()]);
        if let Some(u) = s.as_ref().filter(|u| !u.is_dead()) {
            return u.clone();
        }
        let u = Arc::new(Upstream {
            state: Mutex::new(UpState::default()),
            pending_out: AtomicUsize::new(0),
            wake: Notify::new(),
            status: tokio::sync::watch::channel(Status::Connecting).0,
        });
        tokio::spawn(run(u.clone(), shared.clone()));
        *s = Some(u.clone());
        u
    }
}

/// Reads at most this much per read (replies of many clients).
const READ_SIZE: usize = 64 * 1024;

/// One upstream's task: connects, then writes what clients queued and dispatches replies
/// until the connection ends.
async fn run(up: Arc<Upstream>, shared: Arc<Shared>) {
    let mut master = Watch::new(shared.leader.watch_master());
    // With a follower to serve its clients, a leader declared down ends the connection:
    // its sharing clients are closed then anyway, and a connection left open to a black
    // hole would take the requests of the next clients once the leader is back.
    let mut health = Watch::new(
        shared
            .follower
            .is_some()
            .then(|| shared.leader_health.subscribe()),
    );
    let stream = match crate::redis::server::connect_leader(&shared).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "shared leader connection could not be opened");
            up.fail();
            return;
        }
    };
    up.status.send_replace(Status::Up);
    let (mut r, mut w) = stream.into_split();
    let mut rbuf = BytesMut::with_capacity(READ_SIZE);
    let mut wbuf = BytesMut::new();
    let mut unflushed = false;
    // A child token: its own node (lock and notify). A clone shares the one node of the
    // whole process, whose lock every session's every poll of the loop would take.
    let closing = shared.closing.child_token().cancelled_owned();
    tokio::pin!(closing);
    let mut shutting = false;
    let why = loop {
        if wbuf.is_empty() {
            // Take what accumulated (swap: both buffers keep their capacity).
            let mut s = lock(&up.state);
            std::mem::swap(&mut s.out, &mut wbuf);
            up.pending_out.store(0, Ordering::Relaxed);
        }
        if shutting && wbuf.is_empty() && up.idle() {
            break "shutdown";
        }
        if rbuf.capacity() - rbuf.len() < READ_SIZE / 4 {
            rbuf.reserve(READ_SIZE);
        }
        tokio::select! {
            biased;
            n = r.read_buf(&mut rbuf) => match n {
                Ok(n) if n > 0 => {
                    if up.dispatch(&mut rbuf).is_err() {
                        break "a reply nobody waits for";
                    }
                }
                _ => break "closed by the leader",
            },
            res = write_some(&mut w, &mut wbuf, &mut unflushed), if !wbuf.is_empty() || unflushed => {
                if res.is_err() {
                    break "write failed";
                }
            },
            _ = up.wake.notified(), if wbuf.is_empty() && !unflushed => {
                // Let the other clients that are ready append theirs first (a yield runs
                // after the runtime's next look at the sockets): one write, and one read
                // on the server, then carry the requests of many clients.
                tokio::task::yield_now().await;
            },
            _ = &mut closing, if !shutting => shutting = true,
            // Tick while shutting down, to see the FIFO drain.
            _ = tokio::time::sleep(Duration::from_millis(50)), if shutting => {},
            up = health.changed(), if health.active() => {
                if up == Some(false) {
                    break "the leader was declared down";
                }
            },
            switched = master.changed(), if master.active() => {
                if switched.is_some() {
                    break "Sentinel switched the master";
                }
            },
        }
    };
    tracing::debug!(why, "shared leader connection ended");
    up.fail();
}
