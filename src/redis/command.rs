//! What each command is: read, write, admin or pub/sub, where its keys are, and whether the
//! session must track it (MULTI, SELECT, SUBSCRIBE…).
//!
//! The table comes from the leader's own `COMMAND` reply at start-up (flags `write`,
//! `may_replicate`, `admin`, `pubsub`, `blocking`, key positions, subcommands), because hand
//! lists go stale and get things wrong (a well-known proxy classifies `APPEND` as a read).
//! Scripts (`EVAL`, `EVALSHA`, `FCALL`) carry no write flag in Redis 7 but may write, so
//! they count as writes; their `_RO` variants are reads. When the leader cannot be asked, a
//! built-in fallback knows the reads, admin and pub/sub commands; everything else, and any
//! command neither table knows, is a write whose keys the mirror asks the leader for
//! (`COMMAND GETKEYS`).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use bytes::Bytes;
use redis_protocol::resp2::types::BytesFrame;
use smallvec::SmallVec;

use super::resp::Request;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Read,
    Write,
    Admin,
    PubSub,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubKind {
    Channel,
    Pattern,
    Shard,
}

/// Commands whose effect on the connection the session must follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    None,
    Multi,
    Exec,
    Discard,
    Select,
    Subscribe(SubKind),
    Unsubscribe(SubKind),
    Reset,
    Quit,
    Hello,
    ClientReply,
    Monitor,
    Move,
    Copy,
    /// `EVAL`: a `#!lua flags=no-writes` script is a read.
    Eval,
    /// `SYNC`/`PSYNC`: the reply is an RDB payload and then the replication stream.
    Sync,
    /// `REPLCONF`: `ACK`/`GETACK` get no reply from a non-replica.
    ReplConf,
    /// A mode the session cannot follow (`SCRIPT DEBUG`: the Lua debugger's own protocol):
    /// refused at once rather than left to hang.
    Unsupported,
}

#[derive(Debug, Clone)]
pub struct CommandInfo {
    pub kind: Kind,
    pub blocking: bool,
    /// Keys depend on the arguments (`EVAL … numkeys`): ask the leader.
    pub movable: bool,
    pub first_key: i32,
    pub last_key: i32,
    pub step: i32,
    pub special: Special,
    /// `CLIENT`, `CONFIG`, `XGROUP`…: the subcommand decides.
    pub subcommands: Option<Names>,
    /// Writes whose whole effect is in the request (see [`known_effect`]).
    pub known: Option<KnownCmd>,
}

/// Writes that overwrite whole keys with values the request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KnownCmd {
    Set,
    GetSet,
    SetEx,
    PSetEx,
    SetNx,
    MSet,
    MSetNx,
    Del,
}

/// What a [`KnownCmd`] leaves behind when it applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KnownEffect {
    /// Every key now holds its value, with this expiry.
    Put {
        pairs: SmallVec<[(Bytes, Bytes); 1]>,
        expiry: Expiry,
        /// How to read the reply: did the write happen?
        applied: Applied,
    },
    /// Every key is gone.
    Delete(SmallVec<[Bytes; 2]>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    None,
    /// Relative to when the leader ran it (taken as the acknowledgement time).
    InMs(i64),
    AtMs(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Any non-error reply.
    Always,
    /// `+OK` (a nil reply means NX/XX did not match).
    IfOk,
    /// `:1`.
    IfOne,
}

impl Applied {
    pub fn check(self, reply: &[u8]) -> bool {
        match self {
            Applied::Always => true,
            Applied::IfOk => reply.starts_with(b"+OK"),
            Applied::IfOne => reply.starts_with(b":1\r"),
        }
    }
}

/// Parses a known write. `None` when the effect is not fully in the request (`SET … KEEPTTL`,
/// `SET … NX GET`, unparseable options): those are mirrored by key copy.
pub fn known_effect(cmd: KnownCmd, req: &Request) -> Option<KnownEffect> {
    let args: SmallVec<[&[u8]; 8]> = req.args().collect();
    let num = |a: &&[u8]| std::str::from_utf8(a).ok()?.parse::<i64>().ok();
    let put = |k: &[u8], v: &[u8], expiry, applied| {
        let mut kv = owned_together::<2>([k, v]).into_iter();
        Some(KnownEffect::Put {
            pairs: smallvec::smallvec![(kv.next()?, kv.next()?)],
            expiry,
            applied,
        })
    };
    match cmd {
        KnownCmd::Set => {
            let (k, v) = (args.get(1)?, args.get(2)?);
            let (mut expiry, mut cond, mut get) = (Expiry::None, false, false);
            let mut i = 3;
            while i < args.len() {
                let o = args[i].to_ascii_lowercase();
                match o.as_slice() {
                    b"nx" | b"xx" => cond = true,
                    b"get" => get = true,
                    b"ex" | b"px" | b"exat" | b"pxat" => {
                        let n = num(args.get(i + 1)?)?;
                        expiry = match o.as_slice() {
                            b"ex" => Expiry::InMs(n.checked_mul(1000)?),
                            b"px" => Expiry::InMs(n),
                            b"exat" => Expiry::AtMs(n.checked_mul(1000)?),
                            _ => Expiry::AtMs(n),
                        };
                        i += 1;
                    }
                    _ => return None, // KEEPTTL or unknown
                }
                i += 1;
            }
            let applied = match (cond, get) {
                (true, true) => return None, // a nil reply would be ambiguous
                (false, true) => Applied::Always,
                _ => Applied::IfOk,
            };
            put(k, v, expiry, applied)
        }
        KnownCmd::GetSet => put(args.get(1)?, args.get(2)?, Expiry::None, Applied::Always),
        KnownCmd::SetNx => put(args.get(1)?, args.get(2)?, Expiry::None, Applied::IfOne),
        KnownCmd::SetEx | KnownCmd::PSetEx => {
            let n = num(args.get(2)?)?;
            let ms = if cmd == KnownCmd::SetEx {
                n.checked_mul(1000)?
            } else {
                n
            };
            put(args.get(1)?, args.get(3)?, Expiry::InMs(ms), Applied::IfOk)
        }
        KnownCmd::MSet | KnownCmd::MSetNx => {
            if args.len() < 3 || args.len() % 2 == 0 {
                return None;
            }
            let mut owned = owned_together::<16>(args[1..].iter().copied()).into_iter();
            let mut pairs = SmallVec::new();
            while let (Some(k), Some(v)) = (owned.next(), owned.next()) {
                pairs.push((k, v));
            }
            let applied = if cmd == KnownCmd::MSet {
                Applied::IfOk
            } else {
                Applied::IfOne
            };
            Some(KnownEffect::Put {
                pairs,
                expiry: Expiry::None,
                applied,
            })
        }
        KnownCmd::Del => {
            if args.len() < 2 {
                return None;
            }
            Some(KnownEffect::Delete(
                owned_together::<2>(args[1..].iter().copied())
                    .into_iter()
                    .collect(),
            ))
        }
    }
}

impl KnownEffect {
    /// The keys it writes as a write target, sharing its copies (a clone each, no copy):
    /// for a command whose keys sit where its table entry says ([`CommandInfo::plain_keys`])
    /// the same keys [`write_target`] reads from the request.
    pub fn target(&self) -> WriteTarget {
        let key = |k: &Bytes| KeyRef {
            db: None,
            key: k.clone(),
        };
        WriteTarget::Keys(match self {
            KnownEffect::Put { pairs, .. } => pairs.iter().map(|(k, _)| key(k)).collect(),
            KnownEffect::Delete(keys) => keys.iter().map(key).collect(),
        })
    }
}

/// Copies a known write's keys and values out of the read buffer (what outlives a request
/// never keeps a slice of it) into **one** allocation, each part a slice of it: one
/// allocation and the shared header the first slice makes, instead of one per part, and
/// every later clone of a part (its write target, the mirror op, the queue's fence) is a
/// reference count. Nothing but the write's own effect may keep such a part: a copy of a
/// key alone copies it out again (see the session's `push_items`), or it would keep the
/// values alive while counted as the key.
fn owned_together<'a, const N: usize>(
    parts: impl IntoIterator<Item = &'a [u8]> + Clone,
) -> SmallVec<[Bytes; N]>
where
    [Bytes; N]: smallvec::Array<Item = Bytes>,
{
    let len = parts.clone().into_iter().map(<[u8]>::len).sum();
    let mut buf = Vec::with_capacity(len);
    let mut ends: SmallVec<[usize; N]> = SmallVec::new();
    for p in parts.clone() {
        buf.extend_from_slice(p);
        ends.push(buf.len());
    }
    let buf = Bytes::from(buf);
    let mut start = 0;
    ends.into_iter()
        .map(|end| {
            let part = buf.slice(start..end);
            start = end;
            part
        })
        .collect()
}

impl CommandInfo {
    /// Its keys are where `first_key`/`last_key`/`step` say, and nothing else is touched:
    /// a known write's target can then be taken from its effect.
    pub fn plain_keys(&self) -> bool {
        !self.movable && self.first_key > 0 && matches!(self.special, Special::None)
    }

    fn simple(kind: Kind) -> Self {
        Self {
            kind,
            blocking: false,
            movable: kind == Kind::Write,
            first_key: 0,
            last_key: 0,
            step: 0,
            special: Special::None,
            subcommands: None,
            known: None,
        }
    }
}

/// A key a write touched; `db` is `None` for the connection's current database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRef {
    pub db: Option<u32>,
    pub key: Bytes,
}

/// Where a write's effects are, for the mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteTarget {
    Keys(SmallVec<[KeyRef; 2]>),
    /// Keys depend on arguments the proxy does not interpret: ask the leader.
    AskLeader,
    /// No key (`FLUSHDB`, `FUNCTION LOAD`…): replay the command itself.
    Keyless,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Leader,
    Fallback,
}

/// Command names (lowercase) to what the proxy knows of them. Hashed with FNV-1a rather
/// than SipHash: every request looks its name up, names are a few bytes, and the keys are the
/// leader's own command table (clients only look up, they cannot add colliding entries).
pub type Names = HashMap<Box<[u8]>, CommandInfo, BuildHasherDefault<Fnv>>;

/// FNV-1a, 64 bits.
#[derive(Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

pub struct CommandTable {
    map: Names,
    pub source: Source,
    unknown: CommandInfo,
}

impl CommandTable {
    /// Looks a request up (case-insensitively, subcommand included).
    pub fn lookup(&self, req: &Request) -> &CommandInfo {
        let mut args = req.args();
        let Some(name) = args.next() else {
            return &self.unknown;
        };
        let mut buf = [0u8; 48];
        let Some(info) = lower(name, &mut buf).and_then(|n| self.map.get(n)) else {
            return &self.unknown;
        };
        match (&info.subcommands, args.next()) {
            (Some(subs), Some(sub)) => {
                // Subcommands are keyed "container|sub".
                let mut full = [0u8; 96];
                let (nl, sl) = (name.len(), sub.len());
                if nl + 1 + sl > full.len() {
                    return info;
                }
                full[..nl].copy_from_slice(name);
                full[nl] = b'|';
                full[nl + 1..nl + 1 + sl].copy_from_slice(sub);
                full[..nl + 1 + sl].make_ascii_lowercase();
                subs.get(&full[..nl + 1 + sl]).unwrap_or(info)
            }
            _ => info,
        }
    }

    /// Builds the table from the leader's `COMMAND` reply.
    pub fn from_command_reply(frame: &BytesFrame) -> Option<Self> {
        let BytesFrame::Array(cmds) = frame else {
            return None;
        };
        let mut map = Names::with_capacity_and_hasher(cmds.len(), Default::default());
        for c in cmds {
            if let Some((name, info)) = parse_entry(c) {
                map.insert(name, info);
            }
        }
        if map.len() < 50 {
            return None; // not a real COMMAND reply
        }
        let mut t = Self {
            map,
            source: Source::Leader,
            unknown: CommandInfo::simple(Kind::Write),
        };
        t.apply_specials();
        Some(t)
    }

    /// The built-in table used until the leader answers `COMMAND`.
    pub fn fallback() -> Self {
        let mut map = Names::default();
        for (names, kind) in [
            (FALLBACK_READS, Kind::Read),
            (FALLBACK_ADMIN, Kind::Admin),
            (FALLBACK_PUBSUB, Kind::PubSub),
        ] {
            for n in names.split_ascii_whitespace() {
                map.insert(n.as_bytes().into(), CommandInfo::simple(kind));
            }
        }
        for n in [
            "blpop",
            "brpop",
            "brpoplpush",
            "blmove",
            "blmpop",
            "bzpopmin",
            "bzpopmax",
            "bzmpop",
            "xreadgroup",
        ] {
            let mut i = CommandInfo::simple(Kind::Write);
            i.blocking = true;
            map.insert(n.as_bytes().into(), i);
        }
        // Their destinations are in another database: COMMAND GETKEYS cannot say which.
        for (n, last) in [("move", 1), ("copy", 2)] {
            let mut i = CommandInfo::simple(Kind::Write);
            (i.movable, i.first_key, i.last_key, i.step) = (false, 1, last, 1);
            map.insert(n.as_bytes().into(), i);
        }
        let mut t = Self {
            map,
            source: Source::Fallback,
            unknown: CommandInfo::simple(Kind::Write),
        };
        t.apply_specials();
        t
    }

    fn apply_known(&mut self) {
        for (name, known) in KNOWN {
            if let Some(e) = self.map.get_mut(name.as_bytes()) {
                e.known = Some(*known);
            }
        }
    }

    /// The same for both tables: what the session must follow, whatever the flags say.
    fn apply_specials(&mut self) {
        for (name, special, kind) in SPECIALS {
            let e = self
                .map
                .entry(name.as_bytes().into())
                .or_insert_with(|| CommandInfo::simple(*kind));
            e.special = *special;
        }
        // Scripts that declare they never write, whatever a newer Redis flags them with.
        for n in ["eval_ro", "evalsha_ro", "fcall_ro", "pfcount"] {
            if let Some(e) = self.map.get_mut(n.as_bytes()) {
                e.kind = Kind::Read;
            }
        }
        self.apply_known();
        for (container, sub, special, kind) in [
            ("client", "client|reply", Special::ClientReply, Kind::Read),
            ("script", "script|debug", Special::Unsupported, Kind::Admin),
        ] {
            if let Some(c) = self.map.get_mut(container.as_bytes()) {
                let subs = c.subcommands.get_or_insert_with(Names::default);
                subs.entry(sub.as_bytes().into())
                    .or_insert_with(|| CommandInfo::simple(kind))
                    .special = special;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

const KNOWN: &[(&str, KnownCmd)] = &[
    ("set", KnownCmd::Set),
    ("getset", KnownCmd::GetSet),
    ("setex", KnownCmd::SetEx),
    ("psetex", KnownCmd::PSetEx),
    ("setnx", KnownCmd::SetNx),
    ("mset", KnownCmd::MSet),
    ("msetnx", KnownCmd::MSetNx),
    ("del", KnownCmd::Del),
    ("unlink", KnownCmd::Del),
];

const SPECIALS: &[(&str, Special, Kind)] = &[
    ("multi", Special::Multi, Kind::Read),
    ("exec", Special::Exec, Kind::Read),
    ("discard", Special::Discard, Kind::Read),
    ("select", Special::Select, Kind::Read),
    (
        "subscribe",
        Special::Subscribe(SubKind::Channel),
        Kind::PubSub,
    ),
    (
        "psubscribe",
        Special::Subscribe(SubKind::Pattern),
        Kind::PubSub,
    ),
    (
        "ssubscribe",
        Special::Subscribe(SubKind::Shard),
        Kind::PubSub,
    ),
    (
        "unsubscribe",
        Special::Unsubscribe(SubKind::Channel),
        Kind::PubSub,
    ),
    (
        "punsubscribe",
        Special::Unsubscribe(SubKind::Pattern),
        Kind::PubSub,
    ),
    (
        "sunsubscribe",
        Special::Unsubscribe(SubKind::Shard),
        Kind::PubSub,
    ),
    ("reset", Special::Reset, Kind::Read),
    ("quit", Special::Quit, Kind::Read),
    ("hello", Special::Hello, Kind::Read),
    ("monitor", Special::Monitor, Kind::Admin),
    ("move", Special::Move, Kind::Write),
    ("copy", Special::Copy, Kind::Write),
    ("client", Special::None, Kind::Read),
    ("eval", Special::Eval, Kind::Write),
    ("sync", Special::Sync, Kind::Admin),
    ("psync", Special::Sync, Kind::Admin),
    ("replconf", Special::ReplConf, Kind::Admin),
];

fn lower<'a>(name: &[u8], buf: &'a mut [u8; 48]) -> Option<&'a [u8]> {
    let n = name.len();
    if n > buf.len() {
        return None;
    }
    buf[..n].copy_from_slice(name);
    buf[..n].make_ascii_lowercase();
    Some(&buf[..n])
}

fn parse_entry(f: &BytesFrame) -> Option<(Box<[u8]>, CommandInfo)> {
    let BytesFrame::Array(e) = f else {
        return None;
    };
    let name = match e.first()? {
        BytesFrame::BulkString(b) | BytesFrame::SimpleString(b) => b.to_ascii_lowercase(),
        _ => return None,
    };
    let int = |i: usize| match e.get(i) {
        Some(BytesFrame::Integer(n)) => *n as i32,
        _ => 0,
    };
    let mut flags: Vec<&[u8]> = Vec::new();
    if let Some(BytesFrame::Array(fs)) = e.get(2) {
        for fl in fs {
            if let BytesFrame::SimpleString(s) | BytesFrame::BulkString(s) = fl {
                flags.push(s);
            }
        }
    }
    let has = |f: &str| flags.iter().any(|x| x.eq_ignore_ascii_case(f.as_bytes()));
    let script = matches!(&name[..], b"eval" | b"evalsha" | b"fcall");
    // `may_replicate` on a `readonly` command (PFCOUNT's cache refresh) is not a write.
    let kind = if has("pubsub") {
        Kind::PubSub
    } else if has("write") || (has("may_replicate") && !has("readonly")) || script {
        Kind::Write
    } else if has("admin") {
        Kind::Admin
    } else {
        Kind::Read
    };
    let subcommands = match e.get(9) {
        Some(BytesFrame::Array(subs)) if !subs.is_empty() => {
            Some(subs.iter().filter_map(parse_entry).collect::<Names>())
        }
        _ => None,
    };
    let special = SPECIALS
        .iter()
        .find(|(n, _, _)| n.as_bytes() == &name[..])
        .map(|(_, s, _)| *s)
        .unwrap_or(match &name[..] {
            b"client|reply" => Special::ClientReply,
            b"script|debug" => Special::Unsupported,
            _ => Special::None,
        });
    Some((
        name.into_boxed_slice(),
        CommandInfo {
            kind,
            blocking: has("blocking"),
            movable: has("movablekeys"),
            first_key: int(3),
            last_key: int(4),
            step: int(5),
            special,
            subcommands,
            known: None,
        },
    ))
}

/// The keys a write touches, for the mirror.
pub fn write_target(info: &CommandInfo, req: &Request) -> WriteTarget {
    if info.movable {
        return WriteTarget::AskLeader;
    }
    if info.first_key <= 0 {
        return WriteTarget::Keyless;
    }
    let argc = req.argc as i64;
    let last = if info.last_key < 0 {
        argc + info.last_key as i64
    } else {
        info.last_key as i64
    };
    let step = info.step.max(1) as usize;
    let first = info.first_key as usize;
    let mut keys: SmallVec<[KeyRef; 2]> = SmallVec::new();
    for (i, a) in req.args().enumerate().skip(first) {
        if i as i64 > last {
            break;
        }
        if (i - first) % step == 0 {
            keys.push(KeyRef {
                db: None,
                key: req.arg_owned(a),
            });
        }
    }
    // MOVE key db / COPY src dst DB n: a key in another database changes too.
    match info.special {
        Special::Move => {
            if let (Some(k), Some(db)) = (req.arg(1), req.arg(2).and_then(parse_u32)) {
                keys.push(KeyRef {
                    db: Some(db),
                    key: req.arg_owned(k),
                });
            }
        }
        Special::Copy => {
            let args: SmallVec<[&[u8]; 6]> = req.args().collect();
            if let Some(pos) = args.iter().position(|a| a.eq_ignore_ascii_case(b"db")) {
                if let (Some(dst), Some(db)) =
                    (args.get(2), args.get(pos + 1).and_then(|d| parse_u32(d)))
                {
                    keys.retain(|k| k.key != dst[..]);
                    keys.push(KeyRef {
                        db: Some(db),
                        key: req.arg_owned(dst),
                    });
                }
            }
        }
        _ => {}
    }
    if keys.is_empty() {
        WriteTarget::Keyless
    } else {
        WriteTarget::Keys(keys)
    }
}

/// `EVAL "#!lua flags=no-writes,…\n…"`: Redis itself refuses a write from such a script.
pub fn script_is_read_only(req: &Request) -> bool {
    let Some(body) = req.arg(1) else {
        return false;
    };
    let Some(rest) = body.strip_prefix(b"#!") else {
        return false;
    };
    let line = rest.split(|&b| b == b'\n').next().unwrap_or_default();
    line.split(|&b| b == b' ')
        .filter_map(|w| w.strip_prefix(b"flags="))
        .any(|f| f.split(|&b| b == b',').any(|x| x == b"no-writes"))
}

pub fn parse_u32(s: &[u8]) -> Option<u32> {
    std::str::from_utf8(s).ok()?.parse().ok()
}

// Fallback: commands known not to change data. Anything not listed here or below is a write.
const FALLBACK_READS: &str = "get mget strlen getrange substr exists type ttl pttl expiretime pexpiretime \
    keys scan randomkey dbsize dump object hget hmget hgetall hkeys hvals hlen hexists hstrlen hscan hrandfield \
    lrange lindex llen lpos smembers sismember smismember scard srandmember sscan sinter sunion sdiff sintercard \
    zrange zrangebyscore zrevrange zrevrangebyscore zrangebylex zrevrangebylex zscore zmscore zrank zrevrank \
    zcard zcount zlexcount zscan zrandmember zinter zunion zdiff zintercard xrange xrevrange xlen xread xinfo xpending \
    pfcount getbit bitcount bitpos bitfield_ro geopos geodist geohash georadius_ro georadiusbymember_ro geosearch \
    sort_ro eval_ro evalsha_ro fcall_ro lcs touch ping echo auth hello watch unwatch info time lastsave \
    command client role memory latency slowlog readonly readwrite wait waitaof asking lolwut";
const FALLBACK_ADMIN: &str =
    "config debug shutdown save bgsave bgrewriteaof replicaof slaveof sync psync \
    acl module cluster failover monitor script";
const FALLBACK_PUBSUB: &str = "publish spublish pubsub";

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn req(args: &[&str]) -> Request {
        let mut s = format!("*{}\r\n", args.len());
        for a in args {
            s.push_str(&format!("${}\r\n{}\r\n", a.len(), a));
        }
        let lim = super::super::resp::Limits {
            max_request_bytes: 1 << 20,
            max_args: 100,
        };
        super::super::resp::parse_request(&mut BytesMut::from(s.as_bytes()), &lim)
            .unwrap()
            .unwrap()
    }

    fn keys(t: WriteTarget) -> Vec<(Option<u32>, String)> {
        match t {
            WriteTarget::Keys(k) => k
                .into_iter()
                .map(|k| (k.db, String::from_utf8_lossy(&k.key).into_owned()))
                .collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fallback_classifies_unknown_as_write() {
        let t = CommandTable::fallback();
        assert_eq!(t.lookup(&req(&["GET", "a"])).kind, Kind::Read);
        assert_eq!(t.lookup(&req(&["append", "a", "b"])).kind, Kind::Write);
        assert_eq!(t.lookup(&req(&["NOSUCH"])).kind, Kind::Write);
        assert_eq!(t.lookup(&req(&["publish", "c", "m"])).kind, Kind::PubSub);
        assert_eq!(t.lookup(&req(&["multi"])).special, Special::Multi);
        assert_eq!(
            t.lookup(&req(&["CLIENT", "REPLY", "OFF"])).special,
            Special::ClientReply
        );
        assert!(t.lookup(&req(&["BLPOP", "a", "0"])).blocking);
        assert_eq!(
            t.lookup(&req(&["SCRIPT", "DEBUG", "YES"])).special,
            Special::Unsupported
        );
        assert_eq!(t.lookup(&req(&["PSYNC", "?", "-1"])).special, Special::Sync);
        assert_eq!(t.lookup(&req(&["PFCOUNT", "h"])).kind, Kind::Read);
        // MOVE/COPY name their destination database: never "ask the leader" for them.
        let mv = req(&["MOVE", "k", "3"]);
        assert_eq!(
            keys(write_target(t.lookup(&mv), &mv)),
            vec![(None, "k".into()), (Some(3), "k".into())]
        );
        let cp = req(&["COPY", "s", "d", "DB", "2"]);
        assert_eq!(
            keys(write_target(t.lookup(&cp), &cp)),
            vec![(None, "s".into()), (Some(2), "d".into())]
        );
        assert_eq!(
            write_target(t.lookup(&req(&["SET", "a", "1"])), &req(&["SET", "a", "1"])),
            WriteTarget::AskLeader
        );
    }

    #[test]
    fn no_writes_shebang_makes_a_script_a_read() {
        let ro = |body: &str| script_is_read_only(&req(&["EVAL", body, "0"]));
        assert!(ro("#!lua flags=no-writes\nreturn 1"));
        assert!(ro("#!lua name=x flags=allow-oom,no-writes\nreturn 1"));
        assert!(!ro("#!lua flags=allow-oom\nreturn 1"));
        assert!(!ro("return 1 -- flags=no-writes"));
        assert!(!ro("#!lua\nreturn 'flags=no-writes'"));
    }

    #[test]
    fn known_effects_parse_only_whole_overwrites() {
        let k = |args: &[&str], cmd| known_effect(cmd, &req(args));
        let Some(KnownEffect::Put {
            pairs,
            expiry,
            applied,
        }) = k(&["SET", "a", "1", "EX", "10"], KnownCmd::Set)
        else {
            panic!()
        };
        assert_eq!(pairs[0].0, "a");
        assert_eq!((expiry, applied), (Expiry::InMs(10_000), Applied::IfOk));
        assert!(matches!(
            k(&["set", "a", "1", "get"], KnownCmd::Set),
            Some(KnownEffect::Put {
                applied: Applied::Always,
                ..
            })
        ));
        assert_eq!(k(&["SET", "a", "1", "KEEPTTL"], KnownCmd::Set), None);
        assert_eq!(k(&["SET", "a", "1", "NX", "GET"], KnownCmd::Set), None);
        assert_eq!(k(&["SET", "a", "1", "EX", "x"], KnownCmd::Set), None);
        assert!(matches!(
            k(&["SET", "a", "1", "PXAT", "5"], KnownCmd::Set),
            Some(KnownEffect::Put {
                expiry: Expiry::AtMs(5),
                ..
            })
        ));
        assert!(matches!(
            k(&["PSETEX", "a", "5", "v"], KnownCmd::PSetEx),
            Some(KnownEffect::Put {
                expiry: Expiry::InMs(5),
                ..
            })
        ));
        assert_eq!(k(&["MSET", "a", "1", "b"], KnownCmd::MSet), None);
        assert!(
            matches!(k(&["DEL", "a", "b"], KnownCmd::Del), Some(KnownEffect::Delete(d)) if d.len() == 2)
        );
        assert!(
            Applied::IfOne.check(b":1\r\n")
                && !Applied::IfOne.check(b":0\r\n")
                && !Applied::IfOk.check(b"$-1\r\n")
        );
    }

    /// A known write's target comes from its effect (no second copy of its keys); it must
    /// name exactly the keys the table's key positions give, for every known command.
    #[test]
    fn a_known_writes_target_is_its_tables_keys() {
        let spec = |first, last, step| CommandInfo {
            first_key: first,
            last_key: last,
            step,
            movable: false,
            ..CommandInfo::simple(Kind::Write)
        };
        let cases: &[(&[&str], KnownCmd, CommandInfo)] = &[
            (&["SET", "a", "1", "PX", "5"], KnownCmd::Set, spec(1, 1, 1)),
            (&["GETSET", "a", "1"], KnownCmd::GetSet, spec(1, 1, 1)),
            (&["SETNX", "a", "1"], KnownCmd::SetNx, spec(1, 1, 1)),
            (&["SETEX", "a", "9", "1"], KnownCmd::SetEx, spec(1, 1, 1)),
            (&["PSETEX", "a", "9", "1"], KnownCmd::PSetEx, spec(1, 1, 1)),
            (
                &["MSET", "a", "1", "b", "2", "c", "3"],
                KnownCmd::MSet,
                spec(1, -1, 2),
            ),
            (
                &["MSETNX", "a", "1", "b", "2"],
                KnownCmd::MSetNx,
                spec(1, -1, 2),
            ),
            (&["DEL", "a", "b", "c"], KnownCmd::Del, spec(1, -1, 1)),
        ];
        for (args, cmd, info) in cases {
            let r = req(args);
            let known = known_effect(*cmd, &r).unwrap();
            assert!(info.plain_keys());
            assert_eq!(
                keys(known.target()),
                keys(write_target(info, &r)),
                "{args:?}"
            );
        }
    }

    /// Its keys and values are one allocation of their own: adjacent, and outside the
    /// request's bytes (which share the connection's read buffer).
    #[test]
    fn a_known_writes_parts_are_copied_out_together() {
        let r = req(&["MSET", "key1", "value1", "k2", "v2"]);
        let Some(KnownEffect::Put { pairs, .. }) = known_effect(KnownCmd::MSet, &r) else {
            panic!()
        };
        let raw = r.raw.as_ptr_range();
        let mut end = None;
        for (k, v) in &pairs {
            for part in [k, v] {
                assert!(!raw.contains(&part.as_ptr()));
                if let Some(end) = end {
                    assert_eq!(part.as_ptr(), end, "parts are adjacent in one buffer");
                }
                end = Some(part.as_ptr_range().end);
            }
        }
        assert_eq!((&pairs[1].0[..], &pairs[1].1[..]), (&b"k2"[..], &b"v2"[..]));
        let Some(KnownEffect::Delete(keys)) = known_effect(KnownCmd::Del, &req(&["DEL", "x", ""]))
        else {
            panic!()
        };
        assert_eq!((&keys[0][..], &keys[1][..]), (&b"x"[..], &b""[..]));
    }

    #[test]
    fn key_positions_follow_first_last_step() {
        let mset = CommandInfo {
            first_key: 1,
            last_key: -1,
            step: 2,
            ..CommandInfo::simple(Kind::Write)
        };
        let mset = CommandInfo {
            movable: false,
            ..mset
        };
        assert_eq!(
            keys(write_target(&mset, &req(&["MSET", "a", "1", "b", "2"]))),
            vec![(None, "a".into()), (None, "b".into())]
        );
        let blpop = CommandInfo {
            movable: false,
            first_key: 1,
            last_key: -2,
            step: 1,
            ..CommandInfo::simple(Kind::Write)
        };
        assert_eq!(
            keys(write_target(&blpop, &req(&["BLPOP", "x", "y", "0"]))),
            vec![(None, "x".into()), (None, "y".into())]
        );
        let mv = CommandInfo {
            movable: false,
            first_key: 1,
            last_key: 1,
            step: 1,
            special: Special::Move,
            ..CommandInfo::simple(Kind::Write)
        };
        assert_eq!(
            keys(write_target(&mv, &req(&["MOVE", "k", "3"]))),
            vec![(None, "k".into()), (Some(3), "k".into())]
        );
        let cp = CommandInfo {
            movable: false,
            first_key: 1,
            last_key: 2,
            step: 1,
            special: Special::Copy,
            ..CommandInfo::simple(Kind::Write)
        };
        assert_eq!(
            keys(write_target(&cp, &req(&["COPY", "s", "d", "DB", "2"]))),
            vec![(None, "s".into()), (Some(2), "d".into())]
        );
    }
}
