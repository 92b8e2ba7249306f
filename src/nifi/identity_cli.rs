//! `statemirror identity build | set | unset | list`: the commands behind README "State
//! identity". The identity file is `--file`, or the config's `[identity] file`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use super::flow;
use super::identity::{valid_id, Entry, IdentityError, IdentityMap};
use crate::config::{Config, Resolved};

/// What a command prints and its exit code.
pub struct Output {
    pub stdout: String,
    pub code: u8,
}

/// Why a command failed; `exit_code` follows the rest of the CLI (64 usage, 1 refused, 69
/// a backend unreachable).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Unavailable(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 64,
            CliError::Refused(_) => 1,
            CliError::Unavailable(_) => 69,
        }
    }
}

impl From<IdentityError> for CliError {
    fn from(e: IdentityError) -> Self {
        match e {
            IdentityError::Io { .. } | IdentityError::Parse { .. } => {
                CliError::Usage(e.to_string())
            }
            _ => CliError::Refused(e.to_string()),
        }
    }
}

/// `statemirror identity` (parsed by the binary).
#[derive(clap::Subcommand)]
pub enum IdentityAction {
    /// Build the map from both regions' flow definitions (flow.json.gz or an exported
    /// process group, gzip or not), joining components on versioned id and group path.
    Build {
        #[arg(long)]
        leader_flow: PathBuf,
        #[arg(long)]
        follower_flow: PathBuf,
        #[arg(long)]
        file: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print what would be written; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Map one component (e.g. one that is not versioned) to a state id by hand. Refused
    /// (exit 1) for a state id not matching [A-Za-z0-9][A-Za-z0-9._-]{0,63} or already used.
    Set {
        component_id: String,
        state_id: String,
        #[arg(long)]
        file: Option<PathBuf>,
        /// Also refuse a state id that is an unmapped component's id on the leader.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// ZooKeeper: NiFi's Root Node.
        #[arg(long, default_value = "/nifi")]
        zk_root: String,
    },
    /// Remove a component's entry (it keeps its UUID again).
    Unset {
        component_id: String,
        #[arg(long)]
        file: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Show the map and, with --config, whether state exists for each entry on the leader
    /// (under the component id) and on the follower (under the state id).
    List {
        #[arg(long)]
        file: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// ZooKeeper: NiFi's Root Node.
        #[arg(long, default_value = "/nifi")]
        zk_root: String,
        #[arg(long)]
        json: bool,
    },
}

/// Runs one `identity` subcommand.
pub async fn run(action: IdentityAction) -> Result<Output, CliError> {
    let file = |f: &Option<PathBuf>, c: &Option<PathBuf>| identity_file(f.as_deref(), c.as_deref());
    let r = match &action {
        IdentityAction::Build {
            leader_flow,
            follower_flow,
            file: f,
            config,
            dry_run,
        } => {
            let target = match (f, config) {
                (None, None) => Ok(None),
                _ => file(f, config).map(Some),
            };
            match target {
                Ok(t) => build(leader_flow, follower_flow, t.as_deref(), *dry_run),
                Err(e) => Err(e),
            }
        }
        IdentityAction::Set {
            component_id,
            state_id,
            file: f,
            config,
            zk_root,
        } => match file(f, config) {
            Ok(p) => set(component_id, state_id, &p, config.as_deref(), zk_root).await,
            Err(e) => Err(e),
        },
        IdentityAction::Unset {
            component_id,
            file: f,
            config,
        } => file(f, config).and_then(|p| unset(component_id, &p)),
        IdentityAction::List {
            file: f,
            config,
            zk_root,
            json,
        } => match file(f, config) {
            Ok(p) => list(&p, config.as_deref(), zk_root, *json).await,
            Err(e) => Err(e),
        },
    };
    r
}

/// The config, parsed and validated without loading its identity file (which the command
/// may be about to create).
fn config_without_identity(path: &Path) -> Result<(Config, Option<Resolved>), CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
    let config = Config::from_toml(&text).map_err(|errs| {
        let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        CliError::Usage(format!("{}: {}", path.display(), msgs.join("; ")))
    })?;
    let mut bare = config.clone();
    bare.identity.file = None;
    Ok((config, bare.validate().ok()))
}

/// `--file`, else the config's `[identity] file`.
pub fn identity_file(file: Option<&Path>, config: Option<&Path>) -> Result<PathBuf, CliError> {
    if let Some(f) = file {
        return Ok(f.to_path_buf());
    }
    let Some(c) = config else {
        return Err(CliError::Usage(
            "no identity file: pass --file FILE, or --config CONFIG with an [identity] file".into(),
        ));
    };
    let (cfg, _) = config_without_identity(c)?;
    cfg.identity
        .file
        .ok_or_else(|| CliError::Usage(format!("{} has no [identity] file", c.display())))
}

/// The map in the file, or an empty one when the file does not exist yet.
fn load_or_empty(path: &Path) -> Result<IdentityMap, CliError> {
    if path.exists() {
        Ok(IdentityMap::load(path)?)
    } else {
        Ok(IdentityMap::empty())
    }
}

/// `identity build`: joins the two flows, merges the entries over the file's (hand-set ones
/// are kept) and writes it unless `dry_run`.
pub fn build(
    leader_flow: &Path,
    follower_flow: &Path,
    file: Option<&Path>,
    dry_run: bool,
) -> Result<Output, CliError> {
    let l = flow::read_flow(leader_flow).map_err(CliError::Usage)?;
    let f = flow::read_flow(follower_flow).map_err(CliError::Usage)?;
    let report = flow::join(&l, &f);
    let existing = match file {
        Some(p) => load_or_empty(p)?,
        None => IdentityMap::empty(),
    };
    let map = flow::build_map(&l, &report, &existing)?;
    let mut out = String::new();
    out.push_str(&format!(
        "components: leader flow {}, follower flow {}\n\
         matched: {} ({} with another UUID in region 2: mapped, {} with the same UUID)\n\
         multi-instance (kept their UUIDs): {}\n\
         unmatched: {} in the leader's flow, {} in the follower's (kept their UUIDs)\n",
        l.len(),
        f.len(),
        report.matched(),
        report.entries.len(),
        report.same_id,
        report.multi_instance.len(),
        report.unmatched_leader.len(),
        report.unmatched_follower.len(),
    ));
    for w in &report.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    for u in &report.unmatched_leader {
        out.push_str(&format!("unmatched (leader): {u}\n"));
    }
    for u in &report.unmatched_follower {
        out.push_str(&format!("unmatched (follower): {u}\n"));
    }
    let kept = map.len() - report.entries.len().min(map.len());
    match (file, dry_run) {
        (Some(p), false) => {
            map.save(p)?;
            out.push_str(&format!(
                "wrote {} entries to {} ({kept} kept from the file)\n",
                map.len(),
                p.display()
            ));
        }
        _ => {
            out.push_str("dry run: nothing written; the map would be:\n");
            out.push_str(&map.to_toml());
        }
    }
    Ok(Output {
        stdout: out,
        code: 0,
    })
}

/// `identity set`: one hand-set entry (a component that is not versioned).
pub async fn set(
    component: &str,
    state_id: &str,
    file: &Path,
    config: Option<&Path>,
    zk_root: &str,
) -> Result<Output, CliError> {
    for (which, id) in [("component", component), ("state", state_id)] {
        if !valid_id(id) {
            return Err(IdentityError::Pattern {
                which,
                id: id.into(),
            }
            .into());
        }
    }
    let map = load_or_empty(file)?;
    let mut entries: Vec<Entry> = map
        .entries()
        .filter(|e| e.leader != component)
        .cloned()
        .collect();
    entries.push(Entry {
        leader: component.into(),
        follower: state_id.into(),
        name: None,
        group: None,
    });
    let new = IdentityMap::new(entries)?;
    let mut note = String::new();
    // A state id that is an unmapped component's id on the leader: both states would land
    // there. Checked when the config names the leader.
    if state_id != component && new.get(state_id).is_none() {
        match config.map(config_without_identity).transpose()? {
            Some((_, Some(r))) => {
                let l = exists(&r, Side::Leader, state_id, zk_root).await?;
                if l.iter().any(|(_, yes)| *yes) {
                    return Err(IdentityError::Collides {
                        follower: state_id.into(),
                        leader: component.into(),
                    }
                    .into());
                }
            }
            _ => note = "note: no --config: not checked against the leader's components\n".into(),
        }
    }
    new.save(file)?;
    Ok(Output {
        stdout: format!(
            "{note}{component} -> {state_id} ({} entries in {})\n",
            new.len(),
            file.display()
        ),
        code: 0,
    })
}

/// `identity unset`: removes a component's entry (it keeps its UUID again).
pub fn unset(component: &str, file: &Path) -> Result<Output, CliError> {
    let map = load_or_empty(file)?;
    if map.get(component).is_none() {
        return Err(CliError::Refused(format!(
            "{component} has no entry in {}",
            file.display()
        )));
    }
    let new = IdentityMap::new(map.entries().filter(|e| e.leader != component).cloned())?;
    new.save(file)?;
    Ok(Output {
        stdout: format!(
            "{component} removed ({} entries left in {})\n",
            new.len(),
            file.display()
        ),
        code: 0,
    })
}

#[derive(Clone, Copy)]
enum Side {
    Leader,
    Follower,
}

/// Whether state exists under `id` on a side, per protocol of the config.
async fn exists(
    r: &Resolved,
    side: Side,
    id: &str,
    zk_root: &str,
) -> Result<Vec<(&'static str, bool)>, CliError> {
    let mut out = Vec::new();
    if let (Some(rr), Some(rc)) = (&r.redis, &r.config.redis) {
        let b = match side {
            Side::Leader => Some(&rr.leader),
            Side::Follower => rr.follower.as_ref(),
        };
        if let Some(b) = b {
            let t = Duration::from_millis(rc.connect_timeout_ms.max(1000));
            let mut c = crate::redis::backend::Conn::connect(b, t)
                .await
                .map_err(|e| CliError::Unavailable(format!("redis {}: {e}", b.address)))?;
            let key = format!("{}{id}", rc.nifi_key_prefix);
            let mut cmd = bytes::BytesMut::new();
            crate::redis::backend::encode_cmd(&mut cmd, &[b"EXISTS", key.as_bytes()]);
            let reply = c
                .roundtrip(&cmd, 1)
                .await
                .map_err(|e| CliError::Unavailable(format!("redis {}: {e}", b.address)))?;
            let yes = matches!(
                reply.first(),
                Some(redis_protocol::resp2::types::BytesFrame::Integer(n)) if *n > 0
            );
            out.push(("redis", yes));
        }
    }
    if let (Some(z), Some(zc)) = (&r.zookeeper, &r.config.zookeeper) {
        let (role, servers) = match side {
            Side::Leader => ("leader", Some(z.leader.clone())),
            Side::Follower => ("follower", z.follower.clone()),
        };
        if let Some(servers) = servers {
            let mut s =
                crate::zookeeper::tree::Session::new(role, servers, z.follower_auth.clone(), zc);
            let path = format!("{}/components/{id}", zk_root.trim_end_matches('/'));
            let r = s.read(&[path]).await.map_err(CliError::Unavailable)?;
            let yes = r
                .first()
                .is_some_and(|r| matches!(r.state, crate::zookeeper::tree::State::Node(_)));
            out.push(("zookeeper", yes));
        }
    }
    Ok(out)
}

/// `identity list`: the map (ZooKeeper state under `<zk_root>/components/`), and for each entry whether state exists on the leader (under
/// the leader id) and on the follower (under the state id), per protocol of the config.
pub async fn list(
    file: &Path,
    config: Option<&Path>,
    zk_root: &str,
    as_json: bool,
) -> Result<Output, CliError> {
    let map = IdentityMap::load(file)?;
    let resolved = match config.map(config_without_identity).transpose()? {
        Some((_, Some(r))) => Some(r),
        Some((_, None)) => {
            return Err(CliError::Usage(
                "the config does not validate: run `statemirror check-config`".into(),
            ))
        }
        None => None,
    };
    let mut rows = Vec::new();
    for e in map.entries() {
        let (mut on_leader, mut on_follower) = (Vec::new(), Vec::new());
        if let Some(r) = &resolved {
            on_leader = exists(r, Side::Leader, &e.leader, zk_root).await?;
            on_follower = exists(r, Side::Follower, &e.follower, zk_root).await?;
        }
        rows.push((e.clone(), on_leader, on_follower));
    }
    if as_json {
        let v: Vec<_> = rows
            .iter()
            .map(|(e, l, f)| {
                let side = |s: &Vec<(&str, bool)>| {
                    s.iter()
                        .map(|(p, y)| (p.to_string(), json!(y)))
                        .collect::<serde_json::Map<_, _>>()
                };
                json!({
                    "component": e.leader, "state_id": e.follower,
                    "name": e.name, "group": e.group,
                    "state_on_leader": side(l), "state_on_follower": side(f),
                })
            })
            .collect();
        return Ok(Output {
            stdout: format!("{}\n", serde_json::to_string_pretty(&v).unwrap_or_default()),
            code: 0,
        });
    }
    let mut out = format!("{} entries in {}\n", map.len(), file.display());
    for (e, l, f) in &rows {
        let show = |s: &Vec<(&str, bool)>| {
            if s.is_empty() {
                "-".to_string()
            } else {
                s.iter()
                    .map(|(p, y)| format!("{p}:{}", if *y { "yes" } else { "no" }))
                    .collect::<Vec<_>>()
                    .join(",")
            }
        };
        out.push_str(&format!(
            "{} -> {}  {:?} in {:?}  leader state: {}  follower state: {}\n",
            e.leader,
            e.follower,
            e.name.as_deref().unwrap_or(""),
            e.group.as_deref().unwrap_or(""),
            show(l),
            show(f),
        ));
    }
    Ok(Output {
        stdout: out,
        code: 0,
    })
}
