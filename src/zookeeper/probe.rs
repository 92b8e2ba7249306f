//! How statemirror asks ZooKeeper servers things outside a client session: four-letter
//! words (a client's relayed to the leader, `srvr` for health and zxids) and, for a TLS
//! ensemble whose Netty port ignores four-letter words, a session opened and closed at once.
//! Also the health loop built on them.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::endpoint::ZkServers;
use super::frame::next_frame;
use super::server::ZkShared;
use crate::replication::health;
use crate::tls::Stream;

/// Answers a four-letter word: `ruok` and `isro` here, the rest relayed to a leader server.
/// On a TLS listener the word comes after the handshake and is answered over TLS, as
/// ZooKeeper's own secure port does.
pub async fn four_letter(shared: &ZkShared, mut client: Stream, word: [u8; 4]) {
    let answer: Vec<u8> = match &word {
        b"ruok" => b"imok".to_vec(),
        b"isro" => (if shared.writes_refused() { "ro" } else { "rw" })
            .as_bytes()
            .to_vec(),
        _ => relay_four_letter(shared, &word).await.unwrap_or_default(),
    };
    let _ = crate::tls::stream::write_flush(&mut client, &answer).await;
    let _ = client.shutdown().await;
}

async fn relay_four_letter(shared: &ZkShared, word: &[u8; 4]) -> Option<Vec<u8>> {
    let timeout = Duration::from_millis(shared.cfg.health_timeout_ms.max(1000));
    for server in shared.leader.iter() {
        if let Ok(Ok(v)) = tokio::time::timeout(timeout, ask(&shared.leader, server, word)).await {
            return Some(v);
        }
    }
    None
}

/// Sends a four-letter word to `server` of `servers` (over TLS when the ensemble uses it,
/// though ZooKeeper 3.8's Netty secure port closes such a connection unanswered: relayed
/// words get no answer from a TLS leader) and reads the answer to the end. The error names
/// the reason (a TLS failure explained).
pub(super) async fn ask(
    servers: &ZkServers,
    server: &str,
    word: &[u8; 4],
) -> Result<Vec<u8>, String> {
    let mut s = servers.open(server).await.map_err(|e| e.to_string())?;
    crate::tls::stream::write_flush(&mut s, word)
        .await
        .map_err(|e| io_reason(&e))?;
    let mut out = Vec::new();
    (&mut s)
        .take(1 << 20)
        .read_to_end(&mut out)
        .await
        .map_err(|e| io_reason(&e))?;
    Ok(out)
}

/// A TLS ensemble's health check: opens a session on `server` (read-only servers allowed),
/// closes it at once, and answers like `srvr` would (`Mode: read-only` or `Mode: serving`),
/// so [`serves`] judges both kinds of probe alike.
async fn session_probe(servers: &ZkServers, server: &str) -> Result<Vec<u8>, String> {
    use super::jute::Record;
    use super::proto::connect::{ConnectRequest, ConnectResponse};
    let mut s = servers.open(server).await.map_err(|e| e.to_string())?;
    let req = ConnectRequest {
        protocol_version: 0,
        last_zxid_seen: 0,
        time_out: 2_000,
        session_id: 0,
        passwd: Bytes::from_static(&[0; 16]),
        read_only: Some(true),
    };
    let mut out = BytesMut::new();
    super::frame::encode_frame(&mut out, |w| w.write(&req));
    crate::tls::stream::write_flush(&mut s, &out)
        .await
        .map_err(|e| io_reason(&e))?;
    let mut buf = BytesMut::with_capacity(64);
    let resp = loop {
        if let Ok(Some(f)) = next_frame(&mut buf, 1 << 16) {
            break ConnectResponse::from_bytes(&f)
                .map_err(|e| format!("bad connect answer: {e}"))?;
        }
        if s.read_buf(&mut buf).await.map_err(|e| io_reason(&e))? == 0 {
            return Err("the server closed the connection without answering".into());
        }
    };
    if resp.session_id == 0 {
        return Err("the server refused a session".into());
    }
    let mut close = BytesMut::new();
    super::frame::encode_frame(&mut close, |w| {
        w.write(&super::proto::records::RequestHeader {
            xid: 1,
            op: super::proto::op::CLOSE_SESSION,
        })
    });
    let _ = crate::tls::stream::write_flush(&mut s, &close).await;
    Ok(if resp.read_only == Some(true) {
        b"Mode: read-only\n".to_vec()
    } else {
        b"Mode: serving\n".to_vec()
    })
}

fn io_reason(e: &std::io::Error) -> String {
    crate::tls::explain(e)
        .map(|(_, m)| m)
        .unwrap_or_else(|| e.to_string())
}

/// The `Zxid:` line of a `srvr` answer (the server's last processed zxid).
pub(super) fn srvr_zxid(srvr: &str) -> Option<i64> {
    let hex = srvr.lines().find_map(|l| l.strip_prefix("Zxid:"))?.trim();
    let hex = hex.strip_prefix("0x").unwrap_or(hex);
    u64::from_str_radix(hex, 16).ok().map(|z| z as i64)
}

/// Whether a `srvr` answer shows a server that serves: it has a `Mode:`, and for the leader
/// ensemble it is not read-only (a server that lost its quorum takes no writes, so it must
/// not keep clients on the leader).
fn serves(srvr: &str, need_writes: bool) -> bool {
    srvr.lines()
        .filter_map(|l| l.strip_prefix("Mode:"))
        .any(|mode| !(need_writes && mode.trim() == "read-only"))
}

/// Asks every server of one ensemble `srvr` every `health_interval_ms`: up while at least
/// one serves (read-write, for the leader).
pub(super) async fn health_loop(shared: Arc<ZkShared>, leader: bool, shutdown: CancellationToken) {
    let (servers, health) = if leader {
        (&shared.leader, &shared.leader_health)
    } else {
        match (&shared.follower, &shared.follower_health) {
            (Some(s), Some(h)) => (s, h),
            _ => return,
        }
    };
    let probe = SrvrProbe {
        servers: servers.clone(),
        leader,
        timeout: Duration::from_millis(shared.cfg.health_timeout_ms),
    };
    let interval = Duration::from_millis(shared.cfg.health_interval_ms);
    health::check_every(health, interval, shutdown, probe).await;
}

struct SrvrProbe {
    servers: ZkServers,
    leader: bool,
    timeout: Duration,
}

impl health::Probe for SrvrProbe {
    async fn check(&mut self) -> Result<(), String> {
        let mut probes = tokio::task::JoinSet::new();
        for server in self.servers.iter() {
            let (servers, server) = (self.servers.clone(), server.clone());
            let (timeout, leader) = (self.timeout, self.leader);
            probes.spawn(async move {
                // ZooKeeper's secure (Netty) port closes a TLS connection that sends a
                // four-letter word: a TLS ensemble is probed with a session instead.
                let asked = async {
                    if servers.is_tls() {
                        session_probe(&servers, &server).await
                    } else {
                        ask(&servers, &server, b"srvr").await
                    }
                };
                match tokio::time::timeout(timeout, asked).await {
                    Ok(Ok(out)) if serves(&String::from_utf8_lossy(&out), leader) => Ok(()),
                    Ok(Ok(_)) => Err(None),
                    Ok(Err(e)) => Err(Some(format!("{server}: {e}"))),
                    Err(_) => Err(Some(format!("{server}: timed out"))),
                }
            });
        }
        // The first reason a server could not be asked (a TLS failure above all), so that
        // `/status` and the log say why the ensemble is down, not only that it is.
        let mut why: Option<String> = None;
        while let Some(r) = probes.join_next().await {
            match r {
                Ok(Ok(())) => return Ok(()), // the other probes are aborted when `probes` drops
                Ok(Err(Some(e))) if why.is_none() || e.contains("TLS") => why = Some(e),
                _ => {}
            }
        }
        let base = if self.leader {
            "no server of the ensemble is serving read-write"
        } else {
            "no server of the ensemble is serving"
        };
        Err(match why {
            Some(w) if self.servers.is_tls() => format!("{base} ({w})"),
            _ => base.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{serves, srvr_zxid};

    #[test]
    fn srvr_zxid_is_read() {
        let out = "Zookeeper version: 3.8.0\nZxid: 0x10000001f\nMode: standalone\n";
        assert_eq!(srvr_zxid(out), Some(0x1_0000_001f));
        assert_eq!(
            srvr_zxid("This ZooKeeper instance is not currently serving"),
            None
        );
    }

    #[test]
    fn read_only_servers_do_not_serve_the_leader() {
        let ro = "Zookeeper version: 3.8.4\nLatency min/avg/max: 0/0.0/0\nMode: read-only\nNode count: 5\n";
        let rw = "Zookeeper version: 3.8.4\nMode: standalone\nNode count: 5\n";
        assert!(!serves(ro, true));
        assert!(serves(ro, false));
        assert!(serves(rw, true));
        assert!(!serves(
            "This ZooKeeper instance is not currently serving requests\n",
            false
        ));
    }
}
