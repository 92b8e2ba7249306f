//! The commands as the binary runs them: each returns what to print on stdout and the exit
//! code, or a [`Failure`] (whose message goes to stderr). Warnings go to stderr here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use bytes::Bytes;
use serde_json::json;

use super::{freeze_check, Failure, Header, Protocol, Record, Side};
use crate::config::Resolved;
use crate::replication::cluster::now_ms;

/// What to print on stdout, and the exit code.
pub struct Output {
    pub stdout: String,
    pub code: u8,
}

pub struct BackupArgs {
    pub out: PathBuf,
    pub from: Side,
    pub allow_live: bool,
    pub protocol: Option<Protocol>,
}

pub struct RestoreArgs {
    pub input: PathBuf,
    pub to: Side,
    pub force: bool,
    /// A state identity map: NiFi's keys / znodes are restored under the mapped ids.
    pub identity: Option<PathBuf>,
}

/// Differences and errors listed in a restore report (all are counted).
const MAX_LISTED: usize = 50;

/// The protocol to back up: the one configured, or `--protocol` when both are.
fn pick(resolved: &Resolved, asked: Option<Protocol>) -> Result<Protocol, Failure> {
    let has = |p| match p {
        Protocol::Redis => resolved.redis.is_some() && resolved.config.redis.is_some(),
        Protocol::Zookeeper => resolved.zookeeper.is_some() && resolved.config.zookeeper.is_some(),
    };
    match asked {
        Some(p) if has(p) => Ok(p),
        Some(p) => Err(Failure::Config(format!(
            "--protocol {}: the config has no [{}] section",
            p.name(),
            p.name()
        ))),
        None => match (has(Protocol::Redis), has(Protocol::Zookeeper)) {
            (true, false) => Ok(Protocol::Redis),
            (false, true) => Ok(Protocol::Zookeeper),
            (true, true) => Err(Failure::Config(
                "the config has both [redis] and [zookeeper]: a backup file holds one protocol; \
                 choose it with --protocol redis|zookeeper"
                    .into(),
            )),
            (false, false) => Err(Failure::Config(
                "the config has neither [redis] nor [zookeeper]".into(),
            )),
        },
    }
}

/// `statemirror backup`.
pub async fn backup(resolved: &Resolved, a: &BackupArgs) -> Result<Output, Failure> {
    let protocol = pick(resolved, a.protocol)?;
    let check = match freeze_check::check(resolved).await {
        Ok(c) => c,
        Err(e) if a.allow_live => freeze_check::FreezeCheck {
            frozen: false,
            how: e,
        },
        Err(e) => {
            return Err(Failure::Unavailable(format!(
                "{e}; cannot tell whether the cluster is frozen (pass --allow-live to back up \
                 anyway)"
            )))
        }
    };
    if !check.frozen {
        if !a.allow_live {
            return Err(Failure::Refused(format!(
                "refusing to back up: the cluster is not frozen ({}). Freeze it first \
                 (`statemirror maintenance on --cluster`, or `statemirror maintenance on` for a \
                 sidecar without [cluster]) so the backup is one consistent state, or pass \
                 --allow-live to back up while writes go on",
                check.how
            )));
        }
        eprintln!(
            "statemirror: warning: backing up a live cluster ({}): writes made during the \
             backup may be partly in it, so it may not be one consistent state",
            check.how
        );
    }
    let created = now_ms();
    let (address, filters, records, skipped) = match protocol {
        Protocol::Redis => {
            let (r, rc) = match (&resolved.redis, &resolved.config.redis) {
                (Some(r), Some(rc)) => (r, rc),
                _ => return Err(Failure::Config("no [redis] section".into())),
            };
            let b = match a.from {
                Side::Leader => &r.leader,
                Side::Follower => r.follower.as_ref().ok_or_else(|| {
                    Failure::Config("--from follower: the config has no redis.follower".into())
                })?,
            };
            let mut c = super::redis::connect(b, rc, a.from.name()).await?;
            let keys = super::redis::read_all(&mut c, rc)
                .await
                .map_err(|e| Failure::Unavailable(format!("redis {}: {e}", a.from.name())))?;
            (
                b.address.clone(),
                json!({"key_patterns": rc.key_patterns, "nifi_key_prefix": rc.nifi_key_prefix}),
                keys.into_iter().map(Record::RedisKey).collect::<Vec<_>>(),
                BTreeMap::new(),
            )
        }
        Protocol::Zookeeper => {
            let (z, zc) = match (&resolved.zookeeper, &resolved.config.zookeeper) {
                (Some(z), Some(zc)) => (z, zc),
                _ => return Err(Failure::Config("no [zookeeper] section".into())),
            };
            let servers = super::zookeeper::servers(z, a.from)?;
            let tree = super::zookeeper::walk(z, zc, a.from).await?;
            (
                servers.join(","),
                json!({"include_paths": zc.include_paths, "exclude_paths": zc.exclude_paths}),
                super::zookeeper::records(&tree)
                    .into_iter()
                    .map(Record::Znode)
                    .collect(),
                tree.skipped,
            )
        }
    };
    let header = Header {
        protocol,
        source: a.from,
        address,
        created_unix_ms: created,
        frozen: check.frozen,
        freeze: check.how,
        filters,
        records: records.len() as u64,
        skipped,
        written_by: env!("CARGO_PKG_VERSION").to_string(),
    };
    let sum = super::write_file(&a.out, &header, &records)?;
    for (why, n) in &header.skipped {
        eprintln!("statemirror: {n} {why} znode(s) not backed up (they cannot be restored)");
    }
    let nifi = records
        .iter()
        .filter(|r| match r {
            Record::RedisKey(k) => k.nifi.is_some(),
            Record::Znode(z) => z.nifi.is_some(),
        })
        .count();
    let report = json!({
        "file": a.out.display().to_string(),
        "protocol": protocol.name(),
        "source": a.from.name(),
        "address": header.address,
        "frozen": header.frozen,
        "records": header.records,
        "nifi_components": nifi,
        "skipped": header.skipped,
        "sha256": sum,
    });
    Ok(Output {
        stdout: format!(
            "{}\n",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        ),
        code: 0,
    })
}

/// `statemirror backup --list`.
pub fn list(path: &std::path::Path) -> Result<Output, Failure> {
    let b = super::read_file(path)?;
    Ok(Output {
        stdout: super::list::render(&b),
        code: 0,
    })
}

/// `statemirror restore`.
pub async fn restore(resolved: &Resolved, a: &RestoreArgs) -> Result<Output, Failure> {
    let mut backup = super::read_file(&a.input)?;
    let mut renamed = None;
    if let Some(path) = &a.identity {
        let map = crate::nifi::identity::IdentityMap::load(path)
            .map_err(|e| Failure::Config(format!("--identity: {e}")))?;
        let prefix = resolved
            .config
            .redis
            .as_ref()
            .map(|r| r.nifi_key_prefix.clone())
            .unwrap_or_default();
        let n =
            super::identity::apply(&mut backup.records, &map, &prefix).map_err(Failure::Corrupt)?;
        renamed = Some(n);
    }
    let protocol = backup.header.protocol;
    let mismatch = || {
        Failure::Refused(format!(
            "protocol mismatch: {} holds a {} backup but the config has no [{}] section",
            a.input.display(),
            protocol.name(),
            protocol.name()
        ))
    };
    let role = a.to.name();
    let mut report = match protocol {
        Protocol::Redis => {
            let (r, rc) = match (&resolved.redis, &resolved.config.redis) {
                (Some(r), Some(rc)) => (r, rc),
                _ => return Err(mismatch()),
            };
            let b = match a.to {
                Side::Leader => &r.leader,
                Side::Follower => r.follower.as_ref().ok_or_else(|| {
                    Failure::Config("--to follower: the config has no redis.follower".into())
                })?,
            };
            let records: Vec<super::RedisKey> = backup
                .records
                .iter()
                .filter_map(|r| match r {
                    Record::RedisKey(k) => Some(k.clone()),
                    Record::Znode(_) => None,
                })
                .collect();
            // Every record's bytes must decode before anything is written.
            for r in &records {
                r.key_bytes()
                    .and_then(|_| r.payload())
                    .map_err(Failure::Corrupt)?;
            }
            let unavailable = |e: String| Failure::Unavailable(format!("redis {role}: {e}"));
            let mut c = super::redis::connect(b, rc, role).await?;
            let existing = super::redis::keys(&mut c, &rc.key_patterns)
                .await
                .map_err(unavailable)?;
            if !existing.is_empty() && !a.force {
                let (db, k) = existing.iter().next().cloned().unwrap_or_default();
                return Err(not_empty(
                    &format!("redis {role} {}", b.address),
                    existing.len(),
                    "keys within redis.key_patterns",
                    &format!("db {db} key {:?}", String::from_utf8_lossy(&k)),
                ));
            }
            let wanted: BTreeSet<(u32, Bytes)> = records
                .iter()
                .map(|r| r.key_bytes().map(|k| (r.db, Bytes::from(k))))
                .collect::<Result<_, _>>()
                .map_err(Failure::Corrupt)?;
            let extra: Vec<(u32, Bytes)> = existing.difference(&wanted).cloned().collect();
            let counts = super::redis::write_all(&mut c, &records, &extra)
                .await
                .map_err(unavailable)?;
            let (equal, diffs) = super::redis::compare(&mut c, rc, &records)
                .await
                .map_err(unavailable)?;
            json!({
                "protocol": "redis",
                "destination": role,
                "address": b.address,
                "restored": counts.restored,
                "deleted": counts.deleted,
                "skipped_expired": counts.skipped_expired,
                "equal": equal,
                "differences": diffs.len(),
                "difference_list": diffs.iter().take(MAX_LISTED).collect::<Vec<_>>(),
                "errors": counts.errors.iter().take(MAX_LISTED).collect::<Vec<_>>(),
            })
        }
        Protocol::Zookeeper => {
            let (z, zc) = match (&resolved.zookeeper, &resolved.config.zookeeper) {
                (Some(z), Some(zc)) => (z, zc),
                _ => return Err(mismatch()),
            };
            let servers = super::zookeeper::servers(z, a.to)?;
            let records: Vec<super::Znode> = backup
                .records
                .iter()
                .filter_map(|r| match r {
                    Record::Znode(n) => Some(n.clone()),
                    Record::RedisKey(_) => None,
                })
                .collect();
            // Every record's data must decode before anything is written.
            for r in &records {
                r.data().map_err(Failure::Corrupt)?;
            }
            let dest = super::zookeeper::walk(z, zc, a.to).await?;
            if !dest.nodes.is_empty() && !a.force {
                let first = dest.nodes.keys().next().cloned().unwrap_or_default();
                return Err(not_empty(
                    &format!("zookeeper {role} {}", servers.join(",")),
                    dest.nodes.len(),
                    "persistent znodes within the include/exclude paths",
                    &first,
                ));
            }
            let extra = super::zookeeper::extra(&dest, &records);
            let mut c = super::zookeeper::connect(&servers, z, zc).await?;
            let counts = super::zookeeper::write_all(&mut c, &records, &extra)
                .await
                .map_err(|e| Failure::Unavailable(format!("zookeeper {role}: {e}")))?;
            drop(c);
            let after = super::zookeeper::walk(z, zc, a.to).await?;
            let (equal, diffs) =
                super::zookeeper::compare(&after, &records).map_err(Failure::Corrupt)?;
            json!({
                "protocol": "zookeeper",
                "destination": role,
                "address": servers.join(","),
                "restored": counts.restored,
                "deleted": counts.deleted,
                "not_restored": {
                    "ephemeral": backup.header.skipped.get("ephemeral").copied().unwrap_or(0),
                    "unreadable": backup.header.skipped.get("unreadable").copied().unwrap_or(0),
                },
                "equal": equal,
                "differences": diffs.len(),
                "difference_list": diffs.iter().take(MAX_LISTED).collect::<Vec<_>>(),
                "errors": counts.errors.iter().take(MAX_LISTED).collect::<Vec<_>>(),
            })
        }
    };
    report["file"] = a.input.display().to_string().into();
    if let Some(n) = renamed {
        report["renamed_by_identity_map"] = n.into();
    }
    report["backup_created_unix_ms"] = backup.header.created_unix_ms.into();
    let differences = report["differences"].as_u64().unwrap_or(0);
    if differences > 0 {
        eprintln!(
            "statemirror: restore: {differences} difference(s) remain between the destination \
             and the backup"
        );
    }
    Ok(Output {
        stdout: format!(
            "{}\n",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        ),
        code: if differences > 0 { 1 } else { 0 },
    })
}

fn not_empty(dest: &str, n: usize, what: &str, example: &str) -> Failure {
    Failure::Refused(format!(
        "refusing to restore: the destination {dest} is not empty: it holds {n} {what} \
         (e.g. {example}). Restore into an empty destination, or pass --force to replace its \
         contents exactly with the backup's (what the backup lacks is deleted)"
    ))
}
