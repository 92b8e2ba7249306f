//! statemirror's own ZooKeeper session to the follower ensemble (the mirror writes through
//! it). Written on the crate's codec rather than a client crate so a whole batch of writes
//! goes out as one pipelined round trip and ACLs, modes and multis are sent exactly as the
//! leader saw them. The session holds no ephemeral nodes or watches, so on any error it is
//! simply dropped and a new one is opened for the next batch.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
    #[error("connection closed by the server")]
    Closed,
    #[error("bad reply: {0}")]
    Protocol(String),
    #[error("authentication refused (error {0})")]
    AuthFailed(i32),
    #[error("timed out")]
    Timeout,
}

pub struct ZkConn {
    stream: TcpStream,
    rbuf: BytesMut,
    next_xid: i32,
    last_used: Instant,
    ping_after: Duration,
    max_frame: usize,
    pub server: String,
}

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
        servers: &[String],
        start: usize,
        timeout: Duration,
        session_timeout_ms: i32,
        auth: Option<&Secret>,
        max_frame: usize,
    ) -> Result<Self, ClientError> {
        let mut last_err = String::from("no servers");
        for i in 0..servers.len() {
            let server = &servers[(start + i) % servers.len()];
            let attempt = tokio::time::timeout(timeout, async {
                let stream = crate::listener::connect_backend(server.as_str()).await?;
                let mut c = ZkConn {
                    stream,
                    rbuf: BytesMut::with_capacity(16 * 1024),
                    next_xid: 1,
                    last_used: Instant::now(),
                    ping_after: Duration::from_millis((session_timeout_ms / 3).max(100) as u64),
                    max_frame,
                    server: server.clone(),
                };
                let req = ConnectRequest {
                    protocol_version: 0,
                    last_zxid_seen: 0,
                    time_out: session_timeout_ms,
                    session_id: 0,
                    passwd: Bytes::from_static(&[0; 16]),
                    read_only: Some(false),
                };
                let mut out = BytesMut::new();
                encode_frame(&mut out, |w| w.write(&req));
                c.stream.write_all(&out).await?;
                let body = c.read_frame().await?;
                let resp = ConnectResponse::from_bytes(&body)
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                if resp.session_id == 0 {
                    return Err(ClientError::Protocol("session refused".into()));
                }
                // The server may grant a shorter timeout than asked for: ping on its clock.
                c.ping_after = Duration::from_millis((resp.time_out / 3).max(100) as u64);
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

    async fn send(&mut self, xid: i32, op: i32, body: &[u8]) -> Result<(), ClientError> {
        let mut out = BytesMut::with_capacity(body.len() + 12);
        encode_frame(&mut out, |w| {
            w.write(&RequestHeader { xid, op });
            w.write_raw(body);
        });
        self.stream.write_all(&out).await?;
        Ok(())
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
        self.send(xid::PING, op::PING, &[]).await?;
        let (h, _) = self.read_reply().await?;
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
        self.stream.write_all(&out).await?;
        let mut replies = Vec::with_capacity(calls.len());
        for i in 0..calls.len() {
            let (h, body) = self.read_reply().await?;
            if h.xid != xid_at(first, i) {
                return Err(ClientError::Protocol(format!(
                    "reply xid {} where {} was expected",
                    h.xid,
                    xid_at(first, i)
                )));
            }
            replies.push(Reply {
                err: h.err,
                zxid: h.zxid,
                body,
            });
        }
        self.last_used = Instant::now();
        Ok(replies)
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
