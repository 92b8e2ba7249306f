//! `statemirror backup --list FILE`: what a (checked) backup holds, for people — the header,
//! then the NiFi components with their state maps, then every other key / znode.

use std::fmt::Write;

use super::{Backup, Record};

/// The listing text.
pub fn render(b: &Backup) -> String {
    let h = &b.header;
    let mut o = String::new();
    let _ = writeln!(o, "statemirror backup, format version {}", super::VERSION);
    let _ = writeln!(o, "checksum:  sha256 {} (verified)", b.sha256);
    let _ = writeln!(o, "protocol:  {}", h.protocol.name());
    let _ = writeln!(o, "source:    {} ({})", h.source.name(), h.address);
    let _ = writeln!(
        o,
        "created:   {} (unix ms {})",
        utc(h.created_unix_ms),
        h.created_unix_ms
    );
    let _ = writeln!(
        o,
        "frozen:    {} — {}",
        if h.frozen { "yes" } else { "NO (--allow-live)" },
        h.freeze
    );
    let _ = writeln!(o, "filters:   {}", h.filters);
    let nifi = b.records.iter().filter(|r| nifi_of(r).is_some()).count();
    let what = match h.protocol {
        super::Protocol::Redis => "keys",
        super::Protocol::Zookeeper => "znodes",
    };
    let _ = writeln!(
        o,
        "records:   {} {what} ({nifi} NiFi components, {} other)",
        b.records.len(),
        b.records.len() - nifi
    );
    for (why, n) in &h.skipped {
        let _ = writeln!(o, "skipped:   {n} {why} (not in the backup)");
    }
    let _ = writeln!(o, "written by statemirror {}", h.written_by);
    let _ = writeln!(o);
    let _ = writeln!(o, "NiFi components ({nifi}):");
    for r in &b.records {
        let Some(n) = nifi_of(r) else { continue };
        let version = n
            .version
            .map(|v| format!(", version {v}"))
            .unwrap_or_default();
        let _ = writeln!(o, "  {}  [{}{version}]", n.component, location(r));
        if n.state.is_empty() {
            let _ = writeln!(o, "    (empty state)");
        }
        for (k, v) in &n.state {
            match v {
                Some(v) => {
                    let _ = writeln!(o, "    {k} = {v}");
                }
                None => {
                    let _ = writeln!(o, "    {k} (no value)");
                }
            }
        }
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "Other {what} ({}):", b.records.len() - nifi);
    for r in &b.records {
        if nifi_of(r).is_some() {
            continue;
        }
        match r {
            Record::RedisKey(k) => {
                let ttl = k
                    .expires_at_ms
                    .map(|t| format!(", expires {}", utc(t.max(0) as u64)))
                    .unwrap_or_default();
                let size = k.dump_b64.len() / 4 * 3;
                let _ = writeln!(o, "  {}  (~{size} bytes dumped{ttl})", location(r));
            }
            Record::Znode(z) => {
                let size = z.data_b64.as_ref().map_or(0, |d| d.len() / 4 * 3);
                let acl: Vec<String> = z
                    .acl
                    .iter()
                    .map(|a| format!("{}:{}:{}", a.scheme, a.id, a.perms))
                    .collect();
                let _ = writeln!(
                    o,
                    "  {}  (~{size} bytes, {}, acl {})",
                    z.path,
                    z.mode,
                    acl.join(",")
                );
            }
        }
    }
    o
}

fn nifi_of(r: &Record) -> Option<&super::NifiRecord> {
    match r {
        Record::RedisKey(k) => k.nifi.as_ref(),
        Record::Znode(z) => z.nifi.as_ref(),
    }
}

fn location(r: &Record) -> String {
    match r {
        Record::RedisKey(k) => format!("db {} key {}", k.db, k.key),
        Record::Znode(z) => z.path.clone(),
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` of a Unix time in ms.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_utc() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::utc(1_700_000_000_000), "2023-11-14 22:13:20 UTC");
    }
}
