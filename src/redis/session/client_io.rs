//! The session loop's building blocks that touch tokio directly: writes that return on any
//! progress (so one `select!` can move both directions), and a watch whose waiter stays
//! registered across loop iterations.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::Poll;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::sync::watch;

use crate::tls::stream::{ReadHalf, WriteHalf};

/// Writes what `out` holds (consuming it) until the socket would block or `out` is empty
/// and flushed. Completes once some bytes went out (or the flush finished), so the loop can
/// take note of progress; pending while none can. `unflushed`: written but not yet flushed
/// (TLS keeps the tail of a record until then).
pub(super) async fn write_some<W: AsyncWrite + Unpin>(
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
pub(super) struct Watch<T> {
    rx: Option<watch::Receiver<T>>,
    waiting: Option<Changed<T>>,
}

impl<T: Clone + Send + Sync + 'static> Watch<T> {
    pub(super) fn new(rx: Option<watch::Receiver<T>>) -> Self {
        Watch { rx, waiting: None }
    }

    /// False once there is nothing to watch (none, or its sender is gone).
    pub(super) fn active(&self) -> bool {
        self.rx.is_some() || self.waiting.is_some()
    }

    /// The new value after a change; `None` when the sender is gone (then inactive).
    pub(super) async fn changed(&mut self) -> Option<T> {
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

/// A read on the backend, when the session has a connection of its own (pending forever
/// while a multiplexed session shares).
pub(super) async fn read_opt(
    r: Option<&mut ReadHalf>,
    buf: &mut BytesMut,
) -> std::io::Result<usize> {
    match r {
        Some(r) => r.read_buf(buf).await,
        None => std::future::pending().await,
    }
}

/// A write to the backend, as [`read_opt`].
pub(super) async fn write_opt(
    w: Option<&mut WriteHalf>,
    out: &mut BytesMut,
    unflushed: &mut bool,
) -> std::io::Result<()> {
    match w {
        Some(w) => write_some(w, out, unflushed).await,
        None => std::future::pending().await,
    }
}
