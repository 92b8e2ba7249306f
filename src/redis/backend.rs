//! Connections statemirror opens for itself (health checks, the command table, the mirror's
//! reads from the leader and writes to the follower), authenticated with the configured
//! credentials. Client sessions never use these: they get their own pinned connection and
//! authenticate themselves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use redis_protocol::resp2::decode::decode_bytes_mut;
use redis_protocol::resp2::types::BytesFrame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::RedisBackend;
use crate::tls::Stream;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("connect to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("connect to {0}: {1}")]
    Tls(String, String),
    /// A TLS failure after the handshake (TLS 1.3 servers reject a client certificate then).
    #[error("{0}")]
    TlsLater(String),
    #[error("connect to {0}: timed out")]
    ConnectTimeout(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed by the server")]
    Closed,
    #[error("bad reply: {0}")]
    Protocol(String),
    #[error("server refused: {0}")]
    Refused(String),
}

pub struct Conn {
    stream: Stream,
    rbuf: BytesMut,
    /// The database currently selected on this connection.
    pub db: u32,
    /// Bumped whenever bytes move either way: the mirror writer judges a slow batch by
    /// whether it moves, not by its total time (see `replication::worker`).
    progress: Option<Arc<AtomicU64>>,
    /// A sentinel-managed master's set and its generation when connected (see `is_stale`).
    pub(crate) master: Option<(Arc<super::sentinel::Sentinel>, u64)>,
}

/// Appends a command as a RESP array of bulk strings.
pub fn encode_cmd(out: &mut BytesMut, args: &[&[u8]]) {
    out.put_u8(b'*');
    put_int(out, args.len());
    for a in args {
        out.put_u8(b'$');
        put_int(out, a.len());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

fn put_int(out: &mut BytesMut, n: usize) {
    let mut buf = itoa_buf(n);
    out.extend_from_slice(buf.as_bytes_mut());
    out.extend_from_slice(b"\r\n");
}

struct Digits([u8; 20], usize);
impl Digits {
    fn as_bytes_mut(&mut self) -> &[u8] {
        &self.0[self.1..]
    }
}
fn itoa_buf(mut n: usize) -> Digits {
    let mut d = [0u8; 20];
    let mut i = 20;
    loop {
        i -= 1;
        d[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    Digits(d, i)
}

/// Opens a connection to a Redis backend (no timeout: callers bound it): TCP, tuned (see
/// [`crate::listener::connect_backend`]), then the TLS handshake for a `rediss://` backend.
pub async fn open(b: &RedisBackend) -> Result<Stream, BackendError> {
    let tcp = crate::listener::connect_backend(b.address.as_str())
        .await
        .map_err(|e| BackendError::Connect(b.address.clone(), e))?;
    match (&b.tls, b.wants_tls) {
        (Some(t), _) => {
            let mut s = t
                .connect(tcp, &b.address)
                .await
                .map_err(|m| BackendError::Tls(b.address.clone(), m))?;
            confirm_tls(&mut s)
                .await
                .map_err(|m| BackendError::Tls(b.address.clone(), m))?;
            Ok(s)
        }
        (None, false) => Ok(Stream::Plain(tcp)),
        (None, true) => Err(BackendError::Tls(
            b.address.clone(),
            "rediss:// backend without a TLS config".into(),
        )),
    }
}

/// One `PING` on a new TLS connection, its reply read and dropped. With TLS 1.3 a server
/// checks the client certificate after the client's side of the handshake is done: without
/// this, a rejected certificate would only show as a client's connection closing on its first
/// command. Any reply (`+PONG`, `-NOAUTH …`) proves the session was accepted.
async fn confirm_tls(s: &mut Stream) -> Result<(), String> {
    use tokio::io::AsyncBufReadExt;
    crate::tls::stream::write_flush(s, b"*1\r\n$4\r\nPING\r\n")
        .await
        .map_err(|e| explained(&e))?;
    let mut line = Vec::new();
    let mut r = tokio::io::BufReader::with_capacity(1, s);
    match r.read_until(b'\n', &mut line).await {
        Ok(0) => Err("the server closed the connection after the TLS handshake".into()),
        Ok(_) => Ok(()),
        Err(e) => Err(explained(&e)),
    }
}

fn explained(e: &std::io::Error) -> String {
    crate::tls::explain(e)
        .map(|(_, m)| m)
        .unwrap_or_else(|| e.to_string())
}

/// An i/o error, or the TLS failure it carries, explained.
fn io_error(e: std::io::Error) -> BackendError {
    match crate::tls::explain(&e) {
        Some((_, m)) => BackendError::TlsLater(m),
        None => BackendError::Io(e),
    }
}

impl Conn {
    /// Connects to the backend's current address (a sentinel-managed backend: its master,
    /// checked with `ROLE`), authenticates and selects its database.
    pub async fn connect(b: &RedisBackend, timeout: Duration) -> Result<Self, BackendError> {
        match &b.sentinel {
            None => Self::connect_direct(b, timeout).await,
            Some(s) => super::sentinel::connect_master(b, s, timeout).await,
        }
    }

    /// True once Sentinel switched the master this connection went to: reopen it.
    pub fn is_stale(&self) -> bool {
        self.master
            .as_ref()
            .is_some_and(|(s, g)| s.generation() != *g)
    }

    /// Connects to `b.address`, authenticates (when the backend has credentials) and selects
    /// its database.
    pub async fn connect_direct(b: &RedisBackend, timeout: Duration) -> Result<Self, BackendError> {
        let stream = match tokio::time::timeout(timeout, open(b)).await {
            Err(_) => return Err(BackendError::ConnectTimeout(b.address.clone())),
            Ok(r) => r?,
        };
        let mut c = Conn {
            stream,
            rbuf: BytesMut::with_capacity(16 * 1024),
            db: 0,
            progress: None,
            master: None,
        };
        let mut out = BytesMut::new();
        let mut expect = 0;
        if let Some(pw) = &b.password {
            match &b.username {
                Some(u) => encode_cmd(&mut out, &[b"AUTH", u.as_bytes(), pw.as_bytes()]),
                None => encode_cmd(&mut out, &[b"AUTH", pw.as_bytes()]),
            }
            expect += 1;
        }
        if b.db != 0 {
            encode_cmd(&mut out, &[b"SELECT", b.db.to_string().as_bytes()]);
            expect += 1;
        }
        if expect > 0 {
            let replies = tokio::time::timeout(timeout, c.roundtrip(&out, expect))
                .await
                .map_err(|_| BackendError::ConnectTimeout(b.address.clone()))??;
            for r in replies {
                if let BytesFrame::Error(e) = r {
                    // The server's text ("WRONGPASS …") never contains the password itself.
                    return Err(BackendError::Refused(e.to_string()));
                }
            }
            c.db = b.db;
        }
        Ok(c)
    }

    /// Counts this connection's traffic in `p` from now on.
    pub fn track_progress(&mut self, p: Arc<AtomicU64>) {
        self.progress = Some(p);
    }

    fn moved(&self) {
        if let Some(p) = &self.progress {
            p.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub async fn send(&mut self, buf: &[u8]) -> Result<(), BackendError> {
        if self.progress.is_none() {
            self.stream.write_all(buf).await.map_err(io_error)?;
            self.stream.flush().await.map_err(io_error)?;
            return Ok(());
        }
        // In pieces, so a large pipeline to a far server shows progress while it goes out.
        let mut rest = buf;
        while !rest.is_empty() {
            let n = self.stream.write(rest).await.map_err(io_error)?;
            if n == 0 {
                return Err(BackendError::Closed);
            }
            rest = &rest[n..];
            self.moved();
        }
        self.stream.flush().await.map_err(io_error)?;
        Ok(())
    }

    pub async fn read_frame(&mut self) -> Result<BytesFrame, BackendError> {
        loop {
            match decode_bytes_mut(&mut self.rbuf) {
                Ok(Some((frame, _, _))) => return Ok(frame),
                Ok(None) => {}
                Err(e) => return Err(BackendError::Protocol(e.to_string())),
            }
            self.rbuf.reserve(16 * 1024);
            if self
                .stream
                .read_buf(&mut self.rbuf)
                .await
                .map_err(io_error)?
                == 0
            {
                return Err(BackendError::Closed);
            }
            self.moved();
        }
    }

    /// Sends a pipeline and reads `n` replies.
    pub async fn roundtrip(
        &mut self,
        buf: &[u8],
        n: usize,
    ) -> Result<Vec<BytesFrame>, BackendError> {
        self.send(buf).await?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.read_frame().await?);
        }
        Ok(out)
    }
}

/// Error text of a reply, if it is an error.
pub fn error_text(f: &BytesFrame) -> Option<String> {
    match f {
        BytesFrame::Error(e) => Some(e.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_commands() {
        let mut b = BytesMut::new();
        encode_cmd(&mut b, &[b"SET", b"k", b"0123456789"]);
        assert_eq!(
            &b[..],
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$10\r\n0123456789\r\n"
        );
    }
}
