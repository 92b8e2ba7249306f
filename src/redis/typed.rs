//! Type-aware reads and copies of one key, for the two cases `DUMP`/`RESTORE` cannot serve:
//! - a follower that rejects the leader's `DUMP` payload (an older Redis: the RDB format
//!   version is newer than it knows), or `redis.copy_format = "typed"`;
//! - verification, where equal values may have different `DUMP` payloads (a set the leader
//!   grew into a hashtable and shrank again is restored as a listpack on the follower).
//!
//! Strings, lists, sets, sorted sets, hashes and streams (entries and last ID; consumer
//! groups are not copied) are supported. Another type (a module type) is reported, not copied.

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::types::BytesFrame;

use super::backend::{encode_cmd, error_text, BackendError, Conn};

/// A key's value, normalised so that equal values compare equal.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    String(Bytes),
    List(Vec<Bytes>),
    /// Sorted members.
    Set(Vec<Bytes>),
    /// `(member, score)` in score order, scores as Redis prints them.
    ZSet(Vec<(Bytes, Bytes)>),
    /// Sorted `(field, value)`.
    Hash(Vec<(Bytes, Bytes)>),
    Stream {
        entries: Vec<(Bytes, Vec<Bytes>)>,
        last_id: Bytes,
    },
    /// A type this module cannot read (its name).
    Other(String),
}

/// A key's value and absolute expiry (Unix ms; `None` = persistent).
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub value: Value,
    pub expire_at_ms: Option<i64>,
}

/// Reads `key` (in the connection's current database); `None` when it does not exist.
/// The type, expiry and content are read in one `MULTI` so they belong together; a key whose
/// type changes between the two round trips is read again.
pub async fn read(conn: &mut Conn, key: &[u8]) -> Result<Option<Snapshot>, BackendError> {
    for _ in 0..5 {
        let mut out = BytesMut::new();
        encode_cmd(&mut out, &[b"TYPE", key]);
        let ty = match conn.roundtrip(&out, 1).await?.pop() {
            Some(BytesFrame::SimpleString(s)) | Some(BytesFrame::BulkString(s)) => {
                String::from_utf8_lossy(&s).into_owned()
            }
            Some(other) => return Err(protocol("TYPE", &other)),
            None => return Err(BackendError::Closed),
        };
        if ty == "none" {
            return Ok(None);
        }
        let mut out = BytesMut::new();
        encode_cmd(&mut out, &[b"MULTI"]);
        encode_cmd(&mut out, &[b"TYPE", key]);
        encode_cmd(&mut out, &[b"PEXPIRETIME", key]);
        let reads: &[&[&[u8]]] = match ty.as_str() {
            "string" => &[&[b"GET"]],
            "list" => &[&[b"LRANGE", b"0", b"-1"]],
            "set" => &[&[b"SMEMBERS"]],
            "zset" => &[&[b"ZRANGE", b"0", b"-1", b"WITHSCORES"]],
            "hash" => &[&[b"HGETALL"]],
            "stream" => &[&[b"XRANGE", b"-", b"+"], &[b"XINFO", b"STREAM"]],
            _ => &[],
        };
        for r in reads {
            let mut args: Vec<&[u8]> = vec![r[0]];
            // XINFO STREAM key / LRANGE key 0 -1: the key goes after the (sub)command.
            let split = if r[0] == b"XINFO" { 2 } else { 1 };
            args.extend_from_slice(&r[1..split]);
            args.push(key);
            args.extend_from_slice(&r[split..]);
            encode_cmd(&mut out, &args);
        }
        encode_cmd(&mut out, &[b"EXEC"]);
        let n = 4 + reads.len();
        let mut replies = conn.roundtrip(&out, n).await?;
        let exec = match replies.pop() {
            Some(BytesFrame::Array(v)) => v,
            Some(other) => return Err(protocol("EXEC", &other)),
            None => return Err(BackendError::Closed),
        };
        let mut it = exec.into_iter();
        let now_ty = match it.next() {
            Some(BytesFrame::SimpleString(s)) | Some(BytesFrame::BulkString(s)) => {
                String::from_utf8_lossy(&s).into_owned()
            }
            _ => String::new(),
        };
        if now_ty != ty {
            continue; // changed type (or vanished) between the round trips
        }
        let expire_at_ms = match it.next() {
            Some(BytesFrame::Integer(t)) if t >= 0 => Some(t),
            _ => None,
        };
        let value = match ty.as_str() {
            "string" => Value::String(bulk(it.next())?),
            "list" => Value::List(bulks(it.next())?),
            "set" => {
                let mut v = bulks(it.next())?;
                v.sort();
                Value::Set(v)
            }
            "zset" => Value::ZSet(pairs(bulks(it.next())?)),
            "hash" => {
                let mut v = pairs(bulks(it.next())?);
                v.sort();
                Value::Hash(v)
            }
            "stream" => {
                let entries = match it.next() {
                    Some(BytesFrame::Array(es)) => es
                        .into_iter()
                        .map(|e| match e {
                            BytesFrame::Array(mut idf) if idf.len() == 2 => {
                                let fields = bulks(idf.pop())?;
                                Ok((bulk(idf.pop())?, fields))
                            }
                            other => Err(protocol("XRANGE", &other)),
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                    other => return Err(protocol("XRANGE", &other.unwrap_or(BytesFrame::Null))),
                };
                let info = bulks_any(it.next());
                let last_id = info
                    .chunks(2)
                    .find(|c| c.first().is_some_and(|k| &k[..] == b"last-generated-id"))
                    .and_then(|c| c.get(1).cloned())
                    .unwrap_or_default();
                Value::Stream { entries, last_id }
            }
            other => Value::Other(other.to_string()),
        };
        return Ok(Some(Snapshot {
            value,
            expire_at_ms,
        }));
    }
    Err(BackendError::Protocol(
        "key kept changing type while being read".into(),
    ))
}

/// Appends the commands that make `key` equal `snap` (or absent) on the follower, in the
/// connection's current database, *without* `MULTI`/`EXEC` (the caller wraps them so the
/// follower never shows a half-built key). Returns how many commands were appended; 0 with
/// an `Other` type (nothing can be copied).
pub fn write_cmds(out: &mut BytesMut, key: &[u8], snap: Option<&Snapshot>) -> usize {
    const CHUNK: usize = 512;
    let Some(snap) = snap else {
        encode_cmd(out, &[b"DEL", key]);
        return 1;
    };
    if let Value::Other(_) = snap.value {
        return 0;
    }
    encode_cmd(out, &[b"DEL", key]);
    let mut n = 1;
    let mut many = |cmd: &[u8], items: Vec<&[u8]>, per: usize| {
        for chunk in items.chunks(CHUNK * per) {
            let mut args: Vec<&[u8]> = vec![cmd, key];
            args.extend_from_slice(chunk);
            encode_cmd(out, &args);
            n += 1;
        }
    };
    match &snap.value {
        Value::String(v) => many(b"SET", vec![v], 1),
        Value::List(v) => many(b"RPUSH", v.iter().map(|b| &b[..]).collect(), 1),
        Value::Set(v) => many(b"SADD", v.iter().map(|b| &b[..]).collect(), 1),
        Value::ZSet(v) => many(
            b"ZADD",
            v.iter().flat_map(|(m, s)| [&s[..], &m[..]]).collect(),
            2,
        ),
        Value::Hash(v) => many(
            b"HSET",
            v.iter().flat_map(|(f, x)| [&f[..], &x[..]]).collect(),
            2,
        ),
        Value::Stream { entries, last_id } => {
            for (id, fields) in entries {
                let mut args: Vec<&[u8]> = vec![b"XADD", key, id];
                args.extend(fields.iter().map(|b| &b[..]));
                encode_cmd(out, &args);
                n += 1;
            }
            if !last_id.is_empty() {
                if entries.is_empty() {
                    // An empty stream: create it, then drop the placeholder entry.
                    encode_cmd(out, &[b"XADD", key, b"0-1", b"_", b"_"]);
                    encode_cmd(out, &[b"XDEL", key, b"0-1"]);
                    n += 2;
                }
                encode_cmd(out, &[b"XSETID", key, last_id]);
                n += 1;
            }
        }
        Value::Other(_) => {}
    }
    if let Some(t) = snap.expire_at_ms {
        encode_cmd(out, &[b"PEXPIREAT", key, t.max(1).to_string().as_bytes()]);
        n += 1;
    }
    n
}

fn protocol(what: &str, f: &BytesFrame) -> BackendError {
    BackendError::Protocol(format!(
        "{what}: {}",
        error_text(f).unwrap_or_else(|| format!("unexpected {f:?}"))
    ))
}

fn bulk(f: Option<BytesFrame>) -> Result<Bytes, BackendError> {
    match f {
        Some(BytesFrame::BulkString(b)) | Some(BytesFrame::SimpleString(b)) => Ok(b),
        Some(other) => Err(protocol("read", &other)),
        None => Err(BackendError::Closed),
    }
}

fn bulks(f: Option<BytesFrame>) -> Result<Vec<Bytes>, BackendError> {
    match f {
        Some(BytesFrame::Array(v)) => v.into_iter().map(|x| bulk(Some(x))).collect(),
        Some(other) => Err(protocol("read", &other)),
        None => Err(BackendError::Closed),
    }
}

/// Bulk strings of an array, skipping nested values (XINFO's entries).
fn bulks_any(f: Option<BytesFrame>) -> Vec<Bytes> {
    match f {
        Some(BytesFrame::Array(v)) => v
            .into_iter()
            .map(|x| match x {
                BytesFrame::BulkString(b) | BytesFrame::SimpleString(b) => b,
                BytesFrame::Integer(i) => Bytes::from(i.to_string()),
                _ => Bytes::new(),
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn pairs(v: Vec<Bytes>) -> Vec<(Bytes, Bytes)> {
    v.chunks_exact(2)
        .map(|c| (c[0].clone(), c[1].clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_rebuild_the_key_atomically_with_its_expiry() {
        let mut out = BytesMut::new();
        let snap = Snapshot {
            value: Value::ZSet(vec![(Bytes::from("m"), Bytes::from("1.5"))]),
            expire_at_ms: Some(42),
        };
        assert_eq!(write_cmds(&mut out, b"k", Some(&snap)), 3);
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("*2\r\n$3\r\nDEL\r\n$1\r\nk\r\n"));
        assert!(text.contains("$4\r\nZADD\r\n$1\r\nk\r\n$3\r\n1.5\r\n$1\r\nm\r\n"));
        assert!(text.ends_with("$9\r\nPEXPIREAT\r\n$1\r\nk\r\n$2\r\n42\r\n"));
        let mut out = BytesMut::new();
        assert_eq!(write_cmds(&mut out, b"k", None), 1);
        let other = Snapshot {
            value: Value::Other("MBbloom--".into()),
            expire_at_ms: None,
        };
        assert_eq!(write_cmds(&mut BytesMut::new(), b"k", Some(&other)), 0);
    }
}
