//! statemirror's own ZooKeeper session to the follower ensemble (the mirror writes through
//! it). Written on the crate's codec rather than a client crate so a whole batch of writes
//! goes out as one pipelined round trip and ACLs, modes and multis are sent exactly as the
//! leader saw them. After an error the connection is dropped; the mirror resumes the same
//! session on the next one ([`ZkConn::connect_session`]) so that requests the old connection
//! already handed to the server run before anything sent on the new one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::endpoint::ZkServers;
use super::frame::{encode_frame, next_frame};
use super::jute::{Reader, Record};
use super::proto::connect::{ConnectRequest, ConnectResponse};
use super::proto::records::{AuthPacket, ReplyHeader, RequestHeader};
use super::proto::{err, op, xid};
use crate::config::Secret;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no follower server accepted a session ({0})")]
    NoServer(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Already reads `TLS: <reason>` (see `crate::tls::explain`).
    #[error("{0}")]
    Tls(String),
    #[error("connection closed by the server")]
    Closed,
    #[error("bad reply: {0}")]
    Protocol(String),
    #[error("authentication refused (error {0})")]
    AuthFailed(i32),
    #[error("timed out")]
    Timeout,
    #[error("the session expired")]
    Expired,
}

pub struct ZkConn {
    stream: crate::tls::Stream,
    rbuf: BytesMut,
    next_xid: i32,
    last_used: Instant,
    ping_after: Duration,
    max_frame: usize,
    pub server: String,
    /// The session this connection carries (to resume it on another connection).
    pub session: SessionId,
    /// A call was cancelled half-way (its future dropped): replies may still be in flight,
    /// so the connection must not be used again.
    in_call: bool,
    /// Bumped whenever bytes go out or come in: lets a caller judge progress instead of
    /// timing a whole pipeline (see `replication::worker::Applier::progress`).
    progress: Option<Arc<AtomicU64>>,
}

/// What resuming a session takes: its id and password.
#[derive(Clone)]
pub struct SessionId {
    pub id: i64,
    pub passwd: Bytes,
}

impl std::fmt::Debug for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionId({:#x})", self.id) // never the password
    }
}

/// Bytes written per `write_all`, so a large pipeline reports progress as it goes out.
const WRITE_PIECE: usize = 64 * 1024;

/// One reply: error code, header zxid, body (empty unless `err == 0`).
#[derive(Debug, Clone)]
pub struct Reply {
    pub err: i32,
    pub zxid: i64,
    pub body: Bytes,
}

/// One request: opcode and encoded body.
pub struct Call {
    pub op: i32,
    pub body: Bytes,
}

impl Call {
    pub fn new<R: Record>(op: i32, rec: &R) -> Self {
        Self {
            op,
            body: rec.to_bytes(),
        }
    }
}

impl ZkConn {
    /// Opens a new session on the first server (of `servers`, starting at `start`) that
    /// accepts one, and authenticates it with `digest` when `auth` is set.
    pub async fn connect(
        servers: &ZkServers,
        start: usize,
        timeout: Duration,
        session_timeout_ms: i32,
        auth: Option<&Secret>,
        max_frame: usize,
    ) -> Result<Self, ClientError> {
        let (c, _) = Self::connect_session(
            servers,
            start,
            timeout,
            session_timeout_ms,
            auth,
            max_frame,
            None,
        )
        .await?;
        Ok(c)
    }

    /// Like [`connect`](Self::connect), resuming `resume` when given: `(conn, true)` when
    /// the server took it back, `(conn, false)` with a new session when it had expired
    /// (the server then discards whatever the old session still had queued).
    ///
    /// Why resume: ZooKeeper runs one session's requests in order and closes the session's
    /// previous connection when it is resumed, so everything an abandoned connection had
    /// already handed to the server runs before anything sent on the new one, and what it
    /// had not is dropped with it. A new session would give no such order: a late write of
    /// the old connection could land after its own retry and undo a newer one.
    /// `lastZxidSeen` stays 0: a follower restored from an older backup must still accept
    /// the session, so the writer can notice it went back in time (`check_history`).
    pub async fn connect_session(
        servers: &ZkServers,
        start: usize,
        timeout: Duration,
        session_timeout_ms: i32,
        auth: Option<&Secret>,
        max_frame: usize,
        resume: Option<&SessionId>,
    ) -> Result<(Self, bool), ClientError> {
        let mut last_err = String::from("no servers");
        for i in 0..servers.len() {
            let n = (start + i) % servers.len();
            let (server, tls) = (&servers[n], servers.tls_for(n));
            let attempt = tokio::time::timeout(timeout, async {
                if let Some(old) = resume {
                    match Self::open(server, tls, session_timeout_ms, auth, max_frame, Some(old))
                        .await
                    {
                        Ok(c) => return Ok((c, true)),
                        Err(ClientError::Expired) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok((
                    Self::open(server, tls, session_timeout_ms, auth, max_frame, None).await?,
                    false,
                ))
            })
            .await;
            match attempt {
                Ok(Ok(c)) => return Ok(c),
                Ok(Err(e @ ClientError::AuthFailed(_))) => return Err(e),
                Ok(Err(e)) => last_err = format!("{server}: {e}"),
                Err(_) => last_err = format!("{server}: timed out"),
            }
        }
        Err(ClientError::NoServer(last_err))
    }

    /// One connection to `server`: a new session, or `resume`'s (`Expired` if it is gone).
    async fn open(
        server: &str,
        tls: Option<&crate::tls::ClientTls>,
        session_timeout_ms: i32,
        auth: Option<&Secret>,
        max_frame: usize,
        resume: Option<&SessionId>,
    ) -> Result<Self, ClientError> {
        let stream = super::endpoint::open(server, tls)
            .await
            .map_err(|e| match e {
                super::endpoint::OpenError::Io(e) => ClientError::Io(e),
                super::endpoint::OpenError::Tls(m) => ClientError::Tls(m),
            })?;
        let mut c = ZkConn {
            stream,
            rbuf: BytesMut::with_capacity(16 * 1024),
            next_xid: 1,
            last_used: Instant::now(),
            ping_after: Duration::from_millis((session_timeout_ms / 3).max(100) as u64),
            max_frame,
            server: server.to_string(),
            session: SessionId {
                id: 0,
                passwd: Bytes::new(),
            },
            in_call: false,
            progress: None,
        };
        let req = ConnectRequest {
            protocol_version: 0,
            last_zxid_seen: 0,
            time_out: session_timeout_ms,
            session_id: resume.map_or(0, |r| r.id),
            passwd: resume.map_or(Bytes::from_static(&[0; 16]), |r| r.passwd.clone()),
            read_only: Some(false),
        };
        let mut out = BytesMut::new();
        encode_frame(&mut out, |w| w.write(&req));
        crate::tls::stream::write_flush(&mut c.stream, &out).await?;
        let body = c.read_frame().await?;
        let resp =
            ConnectResponse::from_bytes(&body).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if resp.session_id == 0 || resp.time_out <= 0 {
            return Err(if resume.is_some() {
                ClientError::Expired
            } else {
                ClientError::Protocol("session refused".into())
            });
        }
        c.session = SessionId {
            id: resp.session_id,
            passwd: resp.passwd.clone(),
        };
        // The server may grant a shorter timeout than asked for: ping on its clock.
        c.ping_after = Duration::from_millis((resp.time_out / 3).max(100) as u64);
        // Authentication belongs to the connection, not the session: sent on every one.
        if let Some(a) = auth {
            let packet = AuthPacket {
                auth_type: 0,
                scheme: "digest".into(),
                auth: Bytes::copy_from_slice(a.expose().as_bytes()),
            };
            c.send(xid::AUTH, op::AUTH, &packet.to_bytes()).await?;
            let (h, _) = c.read_reply().await?;
            if h.err != err::OK {
                return Err(ClientError::AuthFailed(h.err));
            }
        }
        Ok(c)
    }

    /// Counts this connection's I/O into `counter` (see the `progress` field).
    pub fn set_progress(&mut self, counter: Arc<AtomicU64>) {
        self.progress = Some(counter);
    }

    /// Whether a call on this connection was abandoned half-way (replies may be pending).
    pub fn broken(&self) -> bool {
        self.in_call
    }

    fn tick(&self) {
        if let Some(p) = &self.progress {
            p.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn write_out(&mut self, out: &[u8]) -> Result<(), ClientError> {
        for piece in out.chunks(WRITE_PIECE) {
            self.stream.write_all(piece).await?;
            self.tick();
        }
        self.stream.flush().await?; // TLS may hold the last record until flushed
        Ok(())
    }

    async fn send(&mut self, xid: i32, op: i32, body: &[u8]) -> Result<(), ClientError> {
        let mut out = BytesMut::with_capacity(body.len() + 12);
        encode_frame(&mut out, |w| {
            w.write(&RequestHeader { xid, op });
            w.write_raw(body);
        });
        self.write_out(&out).await
    }

    async fn read_frame(&mut self) -> Result<Bytes, ClientError> {
        loop {
            match next_frame(&mut self.rbuf, self.max_frame) {
                Ok(Some(f)) => return Ok(f),
                Ok(None) => {}
                Err(e) => return Err(ClientError::Protocol(e.to_string())),
            }
            self.rbuf.reserve(16 * 1024);
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(ClientError::Closed);
            }
            self.tick();
        }
    }

    /// The next reply that is not a watch notification: header and body.
    async fn read_reply(&mut self) -> Result<(ReplyHeader, Bytes), ClientError> {
        loop {
            let frame = self.read_frame().await?;
            let mut r = Reader::from_bytes(&frame);
            let h: ReplyHeader = r.read().map_err(|e| ClientError::Protocol(e.to_string()))?;
            if h.xid == xid::NOTIFICATION {
                continue;
            }
            let body = frame.slice(frame.len() - r.remaining()..);
            return Ok((h, body));
        }
    }

    /// Keeps an idle session alive (the mirror may be quiet for longer than its timeout).
    pub async fn ping_if_idle(&mut self) -> Result<(), ClientError> {
        if self.last_used.elapsed() < self.ping_after {
            return Ok(());
        }
        self.in_call = true;
        self.send(xid::PING, op::PING, &[]).await?;
        let (h, _) = self.read_reply().await?;
        self.in_call = false;
        if h.xid != xid::PING {
            return Err(ClientError::Protocol(format!(
                "ping answered with xid {}",
                h.xid
            )));
        }
        self.last_used = Instant::now();
        Ok(())
    }

    /// Sends `calls` pipelined and returns each reply's error code and body, in order.
    pub async fn call_many(&mut self, calls: &[Call]) -> Result<Vec<(i32, Bytes)>, ClientError> {
        let replies = self.call_many_z(calls).await?;
        Ok(replies.into_iter().map(|r| (r.err, r.body)).collect())
    }

    /// [`call_many`](Self::call_many) with each reply's header zxid: the server's last
    /// processed zxid when it answered, i.e. the point in the ensemble's history a read saw
    /// (resync tags its copies with it).
    pub async fn call_many_z(&mut self, calls: &[Call]) -> Result<Vec<Reply>, ClientError> {
        match self.call_many_partial(calls).await {
            (replies, None) => Ok(replies),
            (_, Some(e)) => Err(e),
        }
    }

    /// Sends `calls` pipelined: the replies that arrived, in order, and the error that
    /// stopped the rest (if any). The mirror uses the replies received before a lost
    /// connection to narrow down which request the server refused to read.
    pub async fn call_many_partial(&mut self, calls: &[Call]) -> (Vec<Reply>, Option<ClientError>) {
        let first = self.next_xid;
        let mut out = BytesMut::new();
        for (i, c) in calls.iter().enumerate() {
            encode_frame(&mut out, |w| {
                w.write(&RequestHeader {
                    xid: xid_at(first, i),
                    op: c.op,
                });
                w.write_raw(&c.body);
            });
        }
        self.next_xid = xid_at(first, calls.len());
        // Cleared only when every reply is in: an error or a dropped future leaves it set.
        self.in_call = true;
        let mut replies = Vec::with_capacity(calls.len());
        if let Err(e) = self.write_out(&out).await {
            return (replies, Some(e));
        }
        for i in 0..calls.len() {
            let (h, body) = match self.read_reply().await {
                Ok(r) => r,
                Err(e) => return (replies, Some(e)),
            };
            if h.xid != xid_at(first, i) {
                let e = ClientError::Protocol(format!(
                    "reply xid {} where {} was expected",
                    h.xid,
                    xid_at(first, i)
                ));
                return (replies, Some(e));
            }
            replies.push(Reply {
                err: h.err,
                zxid: h.zxid,
                body,
            });
        }
        self.last_used = Instant::now();
        self.in_call = false;
        (replies, None)
    }

    pub async fn call(&mut self, c: Call) -> Result<(i32, Bytes), ClientError> {
        let mut r = self.call_many(std::slice::from_ref(&c)).await?;
        r.pop().ok_or(ClientError::Closed)
    }
}

/// Client xids are positive and wrap from `i32::MAX` back to 1.
fn xid_at(first: i32, i: usize) -> i32 {
    (((first as i64 - 1 + i as i64) % i32::MAX as i64) + 1) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xids_wrap_to_one() {
        assert_eq!(xid_at(1, 0), 1);
        assert_eq!(xid_at(1, 5), 6);
        assert_eq!(xid_at(i32::MAX, 0), i32::MAX);
        assert_eq!(xid_at(i32::MAX, 1), 1);
    }
}
