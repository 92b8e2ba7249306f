//! Backend reads and writes of a session that may have no backend connection of its own
//! (a multiplexed session while it shares); the rest is `crate::session_io`.

use bytes::BytesMut;
use tokio::io::AsyncReadExt;

pub(super) use crate::session_io::{write_some, Watch};

use crate::tls::stream::{ReadHalf, WriteHalf};

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
