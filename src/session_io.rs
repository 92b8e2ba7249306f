//! What both protocols' one-task session loops build on, where they touch tokio directly:
//! writes that return on any progress (so one `select!` can move both directions), and a
//! watch whose waiter stays registered across loop iterations.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::Poll;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::sync::watch;

use crate::tls::stream::ReadHalf;

/// Request bytes not yet written to the backend, past which the client is not read: a
/// backend that stops reading holds bounded memory (and TCP pushes back).
pub(crate) const BACKEND_OUT_HIGH: usize = 1024 * 1024;
/// Reply bytes not yet written to the client, past which the backend is not read.
pub(crate) const CLIENT_OUT_HIGH: usize = 1024 * 1024;
/// Read sizes: small at first, so an idle connection holds little, doubled while reads fill
/// the buffer (a large value or a deep pipeline), up to the largest.
const READ_FIRST: usize = 1024;
pub(crate) const READ_MOST: usize = 64 * 1024;

/// The next read's size for one socket (see [`READ_FIRST`]).
pub(crate) struct ReadSize(usize);

impl Default for ReadSize {
    fn default() -> Self {
        ReadSize(READ_FIRST)
    }
}

impl ReadSize {
    /// Room for the next read, and for `more` bytes a frame already begun still needs.
    pub(crate) fn reserve(&self, buf: &mut BytesMut, more: usize) {
        buf.reserve(self.0.max(more));
    }

    /// A read of `n` bytes happened.
    pub(crate) fn read(&mut self, n: usize) {
        if n >= self.0 && self.0 < READ_MOST {
            self.0 *= 2;
        }
    }
}

/// Writes what `out` holds (consuming it) until the socket would block or `out` is empty
/// and flushed. Completes once some bytes went out (or the flush finished), so the loop can
/// take note of progress; pending while none can. `unflushed`: written but not yet flushed
/// (TLS keeps the tail of a record until then).
pub(crate) async fn write_some<W: AsyncWrite + Unpin>(
    w: &mut W,
    out: &mut BytesMut,
    unflushed: &mut bool,
) -> io::Result<()> {
    std::future::poll_fn(|cx| {
        let mut progressed = false;
        while !out.is_empty() {
            match Pin::new(&mut *w).poll_write(cx, out) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    out.advance(n);
                    progressed = true;
                    *unflushed = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if progressed => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        match Pin::new(&mut *w).poll_flush(cx) {
            Poll::Ready(r) => {
                *unflushed = false;
                Poll::Ready(r)
            }
            Poll::Pending if progressed => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

type Changed<T> = Pin<Box<dyn Future<Output = (watch::Receiver<T>, bool)> + Send>>;

/// A `watch::Receiver` whose `changed()` waiter lives across `select!` iterations (created
/// once per change, not once per poll).
pub(crate) struct Watch<T> {
    rx: Option<watch::Receiver<T>>,
    waiting: Option<Changed<T>>,
}

impl<T: Clone + Send + Sync + 'static> Watch<T> {
    pub(crate) fn new(rx: Option<watch::Receiver<T>>) -> Self {
        Watch { rx, waiting: None }
    }

    /// False once there is nothing to watch (none, or its sender is gone).
    pub(crate) fn active(&self) -> bool {
        self.rx.is_some() || self.waiting.is_some()
    }

    /// The new value after a change; `None` when the sender is gone (then inactive).
    pub(crate) async fn changed(&mut self) -> Option<T> {
        if self.waiting.is_none() {
            let mut rx = self.rx.take()?;
            self.waiting = Some(Box::pin(async move {
                let ok = rx.changed().await.is_ok();
                (rx, ok)
            }));
        }
        let waiting = self.waiting.as_mut()?;
        let (mut rx, ok) = waiting.await;
        self.waiting = None;
        if !ok {
            return None;
        }
        let v = rx.borrow_and_update().clone();
        self.rx = Some(rx);
        Some(v)
    }
}

/// Buffers that grew for a large value are given back once empty, past this: an idle
/// connection keeps no room for the largest request or reply it ever carried.
const KEEP_EMPTY: usize = 16 * 1024;

/// Frees `buf` if it is empty and grew past [`KEEP_EMPTY`] (small ones are kept: no
/// allocation per request).
pub(crate) fn shrink_if_empty(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > KEEP_EMPTY {
        *buf = BytesMut::new();
    }
}

/// What a client read produced: bytes in the connection's own buffer, or (nothing was
/// buffered) the thread's scratch buffer holding them, lent out (see [`read_from_client`]).
pub(crate) enum ClientRead {
    Read(usize),
    Scratch(BytesMut),
}

/// A client read. `lazy` (nothing buffered, plain TCP): reads into the thread's scratch
/// buffer, taken only while the socket has bytes, so a waiting connection holds no read
/// buffer of its own: an idle client costs its task, not a buffer. Give the scratch
/// buffer back with [`lend_scratch`]. (TLS reads through rustls and its own buffers: its
/// clients keep theirs.)
pub(crate) async fn read_from_client(
    r: &mut ReadHalf,
    buf: &mut BytesMut,
    lazy: bool,
) -> io::Result<ClientRead> {
    match r {
        ReadHalf::Plain(p) if lazy => {
            std::future::poll_fn(|cx| {
                let mut scratch = SCRATCH.with(|c| c.take());
                // Reclaims the whole allocation when nothing refers to it any more (the
                // last loan's requests are gone); otherwise allocates anew.
                scratch.reserve(READ_MOST);
                // (`poll_read`, not readiness + `try_read`: a short read clears the
                // readiness, so no extra read ends in `EAGAIN`.)
                match tokio_util::io::poll_read_buf(Pin::new(&mut *p), cx, &mut scratch) {
                    Poll::Ready(Ok(n)) if n > 0 => Poll::Ready(Ok(ClientRead::Scratch(scratch))),
                    other => {
                        SCRATCH.with(|c| c.set(scratch));
                        other.map_ok(|_| ClientRead::Read(0))
                    }
                }
            })
            .await
        }
        _ => r.read_buf(buf).await.map(ClientRead::Read),
    }
}

/// Whether [`read_from_client`] may read lazily on this half.
pub(crate) fn lazy_capable(r: &ReadHalf) -> bool {
    matches!(r, ReadHalf::Plain(_))
}

thread_local! {
    /// One read buffer per worker thread, lent to whichever connection has bytes to read.
    static SCRATCH: std::cell::Cell<BytesMut> = std::cell::Cell::new(BytesMut::new());
}

/// Lends `scratch` (from [`ClientRead::Scratch`]) as `buf`, which must be empty, for the
/// call to `f`, then gives it back to the thread; what `f` left unconsumed (the start of a
/// frame) is copied into a buffer of the connection's own. Whatever `f` keeps must own its
/// bytes (a slice would pin the scratch allocation).
pub(crate) fn lend_scratch<R>(
    scratch: BytesMut,
    buf: &mut BytesMut,
    f: impl FnOnce(&mut BytesMut) -> R,
) -> R {
    // `buf` is empty; an allocation it still has (from a frame that spanned reads) goes.
    drop(std::mem::replace(buf, scratch));
    let out = f(buf);
    let own = match buf.is_empty() {
        true => BytesMut::new(),
        false => BytesMut::from(&buf[..]),
    };
    let mut scratch = std::mem::replace(buf, own);
    scratch.clear();
    SCRATCH.with(|c| c.set(scratch));
    out
}
