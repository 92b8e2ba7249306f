//! NiFi state in Redis, as `RedisStateProvider` keeps it: one string per component at
//! `<prefix><componentId>` holding Jackson JSON with the state version inside. Reads and
//! writes are pipelined per batch on one connection (reopened after an error).

use std::time::Duration;

use bytes::BytesMut;
use redis_protocol::resp2::types::BytesFrame;

use super::provider::{PerComponent, Read};
use crate::config::RedisBackend;
use crate::nifi::{self, NifiState};
use crate::redis::backend::{encode_cmd, error_text, BackendError, Conn};

pub struct RedisProvider {
    backend: RedisBackend,
    prefix: String,
    timeout: Duration,
    conn: Option<Conn>,
}

/// A glob pattern matching `s` literally (SCAN MATCH).
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl RedisProvider {
    pub fn new(backend: RedisBackend, prefix: String, timeout: Duration) -> Self {
        Self {
            backend,
            prefix,
            timeout,
            conn: None,
        }
    }

    /// Sends a pipeline and reads its replies, bounded by the timeout per batch; the
    /// connection is dropped after any error (a reply may still be in flight).
    async fn roundtrip(&mut self, out: &[u8], n: usize) -> Result<Vec<BytesFrame>, String> {
        if self.conn.as_ref().is_none_or(Conn::is_stale) {
            self.conn = Some(
                Conn::connect(&self.backend, self.timeout)
                    .await
                    .map_err(|e| format!("redis {}: {e}", self.backend.address))?,
            );
        }
        let Some(c) = self.conn.as_mut() else {
            return Err("no connection".into());
        };
        let r = tokio::time::timeout(
            self.timeout.max(Duration::from_secs(30)),
            c.roundtrip(out, n),
        )
        .await
        .unwrap_or(Err(BackendError::Protocol("timed out".into())));
        match r {
            Ok(v) => Ok(v),
            Err(e) => {
                self.conn = None;
                Err(format!("redis {}: {e}", self.backend.address))
            }
        }
    }

    /// Every component id under the prefix (`SCAN MATCH prefix*`, never `KEYS`).
    pub async fn list(&mut self) -> Result<Vec<String>, String> {
        let pattern = format!("{}*", glob_escape(&self.prefix));
        let mut cursor = b"0".to_vec();
        let mut ids = Vec::new();
        loop {
            let mut out = BytesMut::new();
            encode_cmd(
                &mut out,
                &[
                    b"SCAN",
                    &cursor,
                    b"MATCH",
                    pattern.as_bytes(),
                    b"COUNT",
                    b"1000",
                ],
            );
            let reply = self.roundtrip(&out, 1).await?.pop();
            let Some(BytesFrame::Array(mut parts)) = reply else {
                return Err(format!("SCAN: unexpected reply {reply:?}"));
            };
            let keys = parts.pop();
            cursor = match parts.pop() {
                Some(BytesFrame::BulkString(c)) => c.to_vec(),
                other => return Err(format!("SCAN: bad cursor {other:?}")),
            };
            if let Some(BytesFrame::Array(keys)) = keys {
                for k in keys {
                    if let BytesFrame::BulkString(k) = k {
                        if let Some(id) = nifi::layout::component_of_key(&self.prefix, &k) {
                            match std::str::from_utf8(id) {
                                Ok(id) => ids.push(id.to_string()),
                                Err(_) => {
                                    tracing::warn!(key = %String::from_utf8_lossy(&k), "a key under the NiFi prefix is not UTF-8: skipped")
                                }
                            }
                        }
                    }
                }
            }
            if cursor == b"0" {
                break;
            }
        }
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// Each component's state (`None`: no key), with the JSON `version`.
    pub async fn get_many(&mut self, ids: &[String]) -> Result<Vec<Read>, String> {
        let mut out = BytesMut::new();
        for id in ids {
            encode_cmd(
                &mut out,
                &[b"GET", format!("{}{id}", self.prefix).as_bytes()],
            );
        }
        let replies = self.roundtrip(&out, ids.len()).await?;
        Ok(replies
            .into_iter()
            .map(|r| match r {
                BytesFrame::Null => Ok(None),
                // NiFi reads an empty value as empty state.
                BytesFrame::BulkString(b) if b.is_empty() => Ok(Some(NifiState::default())),
                BytesFrame::BulkString(b) => match nifi::decode_json(&b) {
                    Some(s) => Ok(Some(s)),
                    None => Err("the value is not NiFi state JSON".into()),
                },
                other => Err(error_text(&other).unwrap_or_else(|| format!("GET: {other:?}"))),
            })
            .collect())
    }

    /// Writes each state as NiFi's JSON with `version` = the state's version (0 without
    /// one): NiFi's next `replace` reads that version back and compares it with itself.
    pub async fn put_many(
        &mut self,
        states: &[(String, NifiState)],
    ) -> Result<PerComponent, String> {
        let mut out = BytesMut::new();
        let mut sizes = Vec::with_capacity(states.len());
        for (id, st) in states {
            let json = nifi::encode_json(st, st.version.unwrap_or(0));
            sizes.push(json.len() as u64);
            encode_cmd(
                &mut out,
                &[b"SET", format!("{}{id}", self.prefix).as_bytes(), &json],
            );
        }
        let replies = self.roundtrip(&out, states.len()).await?;
        Ok(replies
            .iter()
            .zip(sizes)
            .map(|(r, n)| match error_text(r) {
                Some(e) => Err(e),
                None => Ok(n),
            })
            .collect())
    }

    pub async fn delete_many(&mut self, ids: &[String]) -> Result<PerComponent, String> {
        let mut out = BytesMut::new();
        for id in ids {
            encode_cmd(
                &mut out,
                &[b"DEL", format!("{}{id}", self.prefix).as_bytes()],
            );
        }
        let replies = self.roundtrip(&out, ids.len()).await?;
        Ok(replies
            .iter()
            .map(|r| error_text(r).map_or(Ok(0), Err))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_glob_characters() {
        assert_eq!(super::glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        assert_eq!(super::glob_escape("nifi/components/"), "nifi/components/");
    }
}
