//! The request side's reads from the client: with the idle timeout, and as a raw pipe.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::tls::stream::{ReadHalf as OwnedReadHalf, WriteHalf as OwnedWriteHalf};
use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use super::Flags;

pub(super) enum ReadOutcome {
    Data,
    Eof,
    Idle,
}

pub(super) async fn read_with_idle(
    client: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    idle: Duration,
    flags: &Flags,
) -> ReadOutcome {
    loop {
        let r = if idle.is_zero() {
            client.read_buf(buf).await
        } else {
            match tokio::time::timeout(idle, client.read_buf(buf)).await {
                Ok(r) => r,
                Err(_) => {
                    if flags.owed.load(Ordering::Acquire) == 0
                        && !flags.subscribed.load(Ordering::Acquire)
                    {
                        return ReadOutcome::Idle;
                    }
                    continue;
                }
            }
        };
        return match r {
            Ok(0) | Err(_) => ReadOutcome::Eof,
            Ok(_) => ReadOutcome::Data,
        };
    }
}

/// After `SYNC`/`PSYNC`: client bytes (`buf` first) go to the backend as they are — a
/// replica's `REPLCONF ACK`s get no reply, and nothing on this connection is a request the
/// proxy models or mirrors. Returns the backend's write half, like the request side.
pub(super) async fn pipe(
    mut client: OwnedReadHalf,
    mut backend: OwnedWriteHalf,
    mut buf: BytesMut,
    stop: &CancellationToken,
    closing: &CancellationToken,
) -> OwnedWriteHalf {
    loop {
        if !buf.is_empty() {
            if crate::tls::stream::write_flush(&mut backend, &buf)
                .await
                .is_err()
            {
                return backend;
            }
            buf.clear();
        }
        buf.reserve(16 * 1024);
        tokio::select! {
            _ = stop.cancelled() => return backend,
            _ = closing.cancelled() => return backend,
            r = client.read_buf(&mut buf) => match r {
                Ok(0) | Err(_) => return backend,
                Ok(_) => {}
            },
        }
    }
}
