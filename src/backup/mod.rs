//! Consistent backup and restore of the state statemirror fronts (issue 10 part 3):
//! `statemirror backup`, `statemirror backup --list`, `statemirror restore`.
//!
//! - [`freeze_check`]: whether the cluster is frozen (a backup refuses otherwise);
//! - [`redis`] / [`zookeeper`]: reading a backend into records, writing records back and
//!   comparing the destination with them (on the crate's own backend clients);
//! - [`list`]: what `backup --list` prints;
//! - [`commands`]: the three commands, as the binary calls them;
//! - this file: the file format, its checksum, writing it atomically and reading it back.
//!
//! # File format, version 1
//!
//! A UTF-8 text file of `\n`-terminated lines:
//!
//! ```text
//! statemirror-backup 1                       <- magic and format version
//! {"protocol":"redis","source":"leader",…}   <- header (JSON, [`Header`])
//! {"kind":"redis_key","db":0,"key":"…",…}    <- one record per line (JSON, [`Record`])
//! …
//! sha256 <64 lowercase hex digits>           <- SHA-256 of every byte before this line
//! ```
//!
//! Raw bytes (Redis `DUMP` payloads, keys that are not UTF-8, znode data) are standard
//! base64 with padding. A Redis record holds the database, the key, the `DUMP` payload, the
//! absolute expiry (`PEXPIRETIME`, ms since the Unix epoch; absent = no expiry) and the TTL
//! left when it was read; a znode record holds the path, the data (absent = null data), the
//! ACL and the mode as read. NiFi component state (Redis keys under
//! `redis.nifi_key_prefix`, znodes named `…/components/<id>`) also carries a `nifi` object
//! with the decoded component id, state version and state map: for people reading the file
//! or `--list`; a restore writes the raw bytes only.
//!
//! A reader checks, in order: the trailer line is there (else the file is truncated), the
//! checksum matches, the magic line, the version (a newer one is refused), the header, every
//! record, and that the header's `records` count matches. Any failure refuses the whole file.
//! A file is written under a temporary name in the same directory and renamed once complete
//! and flushed, so a partial file never appears under the final name.

pub mod commands;
pub mod freeze_check;
pub mod identity;
pub mod list;
pub mod redis;
pub mod zookeeper;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// First line of every backup (followed by a space and the format version).
pub const MAGIC: &str = "statemirror-backup";
/// The format version this build writes and the newest it reads.
pub const VERSION: u32 = 1;
const TRAILER: &str = "sha256 ";

/// Why a command failed; each kind has its own exit code (see `exit_code`).
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// A bad config or bad arguments.
    #[error("{0}")]
    Config(String),
    /// The command will not do it as asked (not frozen, non-empty destination, protocol
    /// mismatch).
    #[error("{0}")]
    Refused(String),
    /// The backup file is damaged or not a backup.
    #[error("{0}")]
    Corrupt(String),
    /// A backend or the admin API cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// A local file cannot be read or written.
    #[error("{0}")]
    Io(String),
}

impl Failure {
    /// 64 config/usage, 69 unreachable, 74 local I/O, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Config(_) => 64,
            Failure::Unavailable(_) => 69,
            Failure::Io(_) => 74,
            Failure::Refused(_) | Failure::Corrupt(_) => 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Redis,
    Zookeeper,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Redis => "redis",
            Protocol::Zookeeper => "zookeeper",
        }
    }
}

/// Which backend of the config: the leader (this region) or the follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Leader,
    Follower,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Leader => "leader",
            Side::Follower => "follower",
        }
    }
}

/// The file's second line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub protocol: Protocol,
    /// The backend read: `leader` or `follower`.
    pub source: Side,
    /// Its address(es), never credentials.
    pub address: String,
    pub created_unix_ms: u64,
    /// Whether the cluster was frozen when the backup was taken, and how that was known.
    pub frozen: bool,
    pub freeze: String,
    /// The filters in force (`key_patterns`, or `include_paths` / `exclude_paths`).
    pub filters: serde_json::Value,
    /// Records that follow.
    pub records: u64,
    /// What was left out and why (e.g. `ephemeral`, `unreadable`), with counts.
    #[serde(default)]
    pub skipped: BTreeMap<String, u64>,
    /// The statemirror version that wrote the file.
    pub written_by: String,
}

/// NiFi component state, decoded (for people: a restore uses the raw bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NifiRecord {
    pub component: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    pub state: BTreeMap<String, Option<String>>,
}

impl NifiRecord {
    pub fn from_state(component: &str, s: crate::nifi::NifiState) -> Self {
        Self {
            component: component.to_string(),
            version: s.version,
            state: s.entries,
        }
    }
}

/// One key of one Redis database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RedisKey {
    pub db: u32,
    /// The key as text; when it is not UTF-8, `key_b64` holds the exact bytes and this a
    /// lossy rendering.
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_b64: Option<String>,
    /// The `DUMP` payload (the value and its type, in the source server's RDB encoding).
    pub dump_b64: String,
    /// Absolute expiry in ms since the Unix epoch (`PEXPIRETIME`); absent: no expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
    /// Time to live left when read (ms); -1: no expiry.
    pub pttl_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nifi: Option<NifiRecord>,
}

impl RedisKey {
    pub fn new(db: u32, key: &[u8], payload: &[u8], expires_at_ms: Option<i64>, now: u64) -> Self {
        let (text, key_b64) = match std::str::from_utf8(key) {
            Ok(s) => (s.to_string(), None),
            Err(_) => (String::from_utf8_lossy(key).into_owned(), Some(b64(key))),
        };
        Self {
            db,
            key: text,
            key_b64,
            dump_b64: b64(payload),
            expires_at_ms,
            pttl_ms: expires_at_ms.map_or(-1, |t| (t - now as i64).max(0)),
            nifi: None,
        }
    }

    pub fn key_bytes(&self) -> Result<Vec<u8>, String> {
        match &self.key_b64 {
            Some(b) => unb64(b).map_err(|e| format!("key_b64 of {:?}: {e}", self.key)),
            None => Ok(self.key.as_bytes().to_vec()),
        }
    }

    pub fn payload(&self) -> Result<Vec<u8>, String> {
        unb64(&self.dump_b64).map_err(|e| format!("dump_b64 of {:?}: {e}", self.key))
    }
}

/// One ACL entry of a znode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclRecord {
    pub scheme: String,
    pub id: String,
    pub perms: i32,
}

/// One persistent znode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Znode {
    pub path: String,
    /// The data; absent: null data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_b64: Option<String>,
    pub acl: Vec<AclRecord>,
    /// As read: `persistent` (servers show containers and TTL nodes as persistent too).
    /// Restored as persistent.
    pub mode: String,
    /// The data version when read (informative: a restore starts versions over).
    pub version: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nifi: Option<NifiRecord>,
}

impl Znode {
    pub fn data(&self) -> Result<Option<Vec<u8>>, String> {
        self.data_b64
            .as_deref()
            .map(unb64)
            .transpose()
            .map_err(|e| format!("data_b64 of {}: {e}", self.path))
    }
}

/// One line of the body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    RedisKey(RedisKey),
    Znode(Znode),
}

/// A backup file, checked and parsed.
#[derive(Debug, Clone)]
pub struct Backup {
    pub header: Header,
    pub records: Vec<Record>,
    /// The checksum, hex.
    pub sha256: String,
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn unb64(s: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| format!("bad base64: {e}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The whole file's bytes (magic, header, records, trailer) and its checksum (hex).
pub fn encode(header: &Header, records: &[Record]) -> Result<(Vec<u8>, String), String> {
    let mut out = Vec::new();
    out.extend_from_slice(format!("{MAGIC} {VERSION}\n").as_bytes());
    serde_json::to_writer(&mut out, header).map_err(|e| e.to_string())?;
    out.push(b'\n');
    for r in records {
        serde_json::to_writer(&mut out, r).map_err(|e| e.to_string())?;
        out.push(b'\n');
    }
    let sum = hex(&Sha256::digest(&out));
    out.extend_from_slice(format!("{TRAILER}{sum}\n").as_bytes());
    Ok((out, sum))
}

/// Checks and parses a whole file; the error names what is wrong.
pub fn decode(bytes: &[u8]) -> Result<Backup, String> {
    // The trailer: the last line, which must end the file.
    let body_end = match bytes.strip_suffix(b"\n") {
        Some(rest) => rest.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1),
        None => {
            return Err("truncated: the file does not end with its `sha256 …` checksum line".into())
        }
    };
    let trailer = std::str::from_utf8(&bytes[body_end..bytes.len() - 1]).unwrap_or("");
    let Some(expected) = trailer.strip_prefix(TRAILER) else {
        return Err(
            "truncated: the last line is not the `sha256 …` checksum line (the file was cut \
             short, or is not a statemirror backup)"
                .into(),
        );
    };
    if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "truncated or damaged checksum line: {:?} is not 64 hex digits",
            expected
        ));
    }
    let body = &bytes[..body_end];
    let actual = hex(&Sha256::digest(body));
    if !actual.eq_ignore_ascii_case(expected) {
        return Err(format!(
            "checksum mismatch: the file records sha256 {expected} but its contents hash to \
             {actual}; the file is corrupted (or was edited) and is refused"
        ));
    }
    let text = std::str::from_utf8(body)
        .map_err(|e| format!("not UTF-8 text at byte {}", e.valid_up_to()))?;
    let mut lines = text.lines().enumerate();
    let first = lines.next().map(|(_, l)| l).unwrap_or("");
    let version = first
        .strip_prefix(MAGIC)
        .and_then(|v| v.strip_prefix(' '))
        .ok_or_else(|| format!("not a statemirror backup: first line is {first:?}"))?;
    let version: u32 = version
        .parse()
        .map_err(|_| format!("line 1: bad format version {version:?}"))?;
    if version > VERSION || version == 0 {
        return Err(format!(
            "format version {version} is not supported (this statemirror reads version \
             {VERSION})"
        ));
    }
    let (_, h) = lines
        .next()
        .ok_or("truncated: no header line after the magic line")?;
    let header: Header = serde_json::from_str(h).map_err(|e| format!("line 2 (header): {e}"))?;
    let mut records = Vec::new();
    for (i, line) in lines {
        let r: Record =
            serde_json::from_str(line).map_err(|e| format!("line {} (record): {e}", i + 1))?;
        let kind_ok = matches!(
            (&r, header.protocol),
            (Record::RedisKey(_), Protocol::Redis) | (Record::Znode(_), Protocol::Zookeeper)
        );
        if !kind_ok {
            return Err(format!(
                "line {}: a record of another protocol in a {} backup",
                i + 1,
                header.protocol.name()
            ));
        }
        records.push(r);
    }
    if records.len() as u64 != header.records {
        return Err(format!(
            "the header announces {} records but the file holds {}",
            header.records,
            records.len()
        ));
    }
    Ok(Backup {
        header,
        records,
        sha256: actual,
    })
}

/// Reads and checks a backup file.
pub fn read_file(path: &Path) -> Result<Backup, Failure> {
    let bytes = std::fs::read(path)
        .map_err(|e| Failure::Io(format!("cannot read {}: {e}", path.display())))?;
    decode(&bytes).map_err(|e| Failure::Corrupt(format!("{}: {e}", path.display())))
}

/// Writes the file under a temporary name next to `path`, flushes it, then renames it:
/// `path` either does not change or holds the whole backup. Returns the checksum (hex).
pub fn write_file(path: &Path, header: &Header, records: &[Record]) -> Result<String, Failure> {
    let (bytes, sum) =
        encode(header, records).map_err(|e| Failure::Io(format!("encoding: {e}")))?;
    let tmp = temp_path(path);
    let io = |what: &str, e: std::io::Error| Failure::Io(format!("{what} {}: {e}", tmp.display()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| io("cannot create", e))?;
        f.write_all(&bytes).map_err(|e| io("cannot write", e))?;
        f.sync_all().map_err(|e| io("cannot flush", e))?;
        std::fs::rename(&tmp, path).map_err(|e| {
            Failure::Io(format!(
                "cannot rename {} to {}: {e}",
                tmp.display(),
                path.display()
            ))
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| sum)
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "backup".into());
    path.with_file_name(format!(".{name}.partial-{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Header, Vec<Record>) {
        let h = Header {
            protocol: Protocol::Redis,
            source: Side::Leader,
            address: "127.0.0.1:6379".into(),
            created_unix_ms: 1,
            frozen: true,
            freeze: "test".into(),
            filters: serde_json::json!({"key_patterns": ["*"]}),
            records: 1,
            skipped: BTreeMap::new(),
            written_by: "test".into(),
        };
        let r = Record::RedisKey(RedisKey::new(0, b"k\xff", b"\x00\x01v", None, 0));
        (h, vec![r])
    }

    #[test]
    fn round_trips_and_refuses_damage() {
        let (h, r) = sample();
        let (bytes, _) = encode(&h, &r).unwrap();
        let b = decode(&bytes).unwrap();
        assert_eq!(b.records, r);
        match &b.records[0] {
            Record::RedisKey(k) => assert_eq!(k.key_bytes().unwrap(), b"k\xff"),
            Record::Znode(_) => panic!("kind"),
        }
        // One byte flipped in the body.
        let mut bad = bytes.clone();
        let i = bytes.len() / 2;
        bad[i] ^= 0x01;
        assert!(decode(&bad).unwrap_err().contains("checksum mismatch"));
        // Truncated anywhere.
        for cut in [1, 10, bytes.len() / 2, bytes.len() - 1, bytes.len() - 30] {
            let e = decode(&bytes[..cut]).unwrap_err();
            assert!(e.contains("truncated"), "{cut}: {e}");
        }
        // A newer version is refused even with a valid checksum.
        let text = String::from_utf8(bytes).unwrap();
        let body = text
            .rsplit_once("sha256 ")
            .unwrap()
            .0
            .replace("statemirror-backup 1", "statemirror-backup 2");
        let sum = hex(&Sha256::digest(body.as_bytes()));
        let e = decode(format!("{body}sha256 {sum}\n").as_bytes()).unwrap_err();
        assert!(e.contains("version 2"), "{e}");
    }
}
