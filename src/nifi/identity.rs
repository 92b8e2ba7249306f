//! The state identity map: region 1's (the leader's) NiFi component ids → the ids region 2's
//! flow has for the same components ("state ids"). statemirror stores region 1's state in the
//! follower under the mapped id so region 2's NiFi, asking for its own UUIDs, finds it.
//!
//! Only keys / znodes in NiFi's layout are rewritten ([`crate::nifi::layout`]): the Redis key
//! `<prefix><componentId>` and the znode `…/components/<componentId>` with its descendants.
//! Everything else, and every component without an entry, keeps its name.
//!
//! The identity file is TOML, one `[[component]]` table per entry:
//!
//! ```toml
//! [[component]]
//! leader = "0b8c1a52-0190-1000-ffff-ffffd2a4b3c1"   # region 1's instance id
//! follower = "7f3e2d10-0190-1000-aaaa-aaaa12345678" # region 2's instance id (state id)
//! name = "ListS3"                                  # optional, for people
//! group = "Ingest / S3"                            # optional, process-group path
//! ```
//!
//! Rules: both ids match [`valid_id`]; no two leader ids share a follower id
//! ([`IdentityMap::new`]; an entry `b = b` counts, so `a → b` next to it is refused); a
//! follower id is never the id of another leader component that has no entry of its own, as
//! that component's state would be mirrored there too ([`IdentityMap::check_against`], given
//! the leader's components: its flow, or the state on the leader).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Longest state id accepted (a UUID is 36).
pub const MAX_ID_LEN: usize = 64;

/// A state id: `[A-Za-z0-9][A-Za-z0-9._-]{0,63}` (covers NiFi's UUIDs). No `/`, `*`, `?`,
/// spaces or control characters, so an id is one znode name and never a glob.
pub fn valid_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_ID_LEN
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// One entry of the identity file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub leader: String,
    pub follower: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileForm {
    #[serde(default)]
    component: Vec<Entry>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{path}: not a valid identity file: {message}")]
    Parse { path: String, message: String },
    #[error(
        "{which} id {id:?} does not match the state id pattern [A-Za-z0-9][A-Za-z0-9._-]{{0,63}}"
    )]
    Pattern { which: &'static str, id: String },
    #[error("component {leader} is mapped twice (to {first} and {second})")]
    TwiceMapped {
        leader: String,
        first: String,
        second: String,
    },
    #[error("state id {follower} is already used by component {other}; refusing to map {leader} to it too")]
    Duplicate {
        follower: String,
        leader: String,
        other: String,
    },
    #[error("state id {follower} (for {leader}) is the id of leader component {follower}, which has no entry of its own: both states would land there")]
    Collides { follower: String, leader: String },
}

/// Leader component id → follower component id, and the inverse. Cheap to share (`Arc`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentityMap {
    entries: BTreeMap<String, Entry>,
    inverse: HashMap<String, String>,
}

impl IdentityMap {
    /// The empty map: every id maps to itself.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Checks the rules (module doc) and builds the map.
    pub fn new(entries: impl IntoIterator<Item = Entry>) -> Result<Self, IdentityError> {
        let mut by_leader: BTreeMap<String, Entry> = BTreeMap::new();
        let mut inverse: HashMap<String, String> = HashMap::new();
        for e in entries {
            for (which, id) in [("component", &e.leader), ("state", &e.follower)] {
                if !valid_id(id) {
                    return Err(IdentityError::Pattern {
                        which,
                        id: id.clone(),
                    });
                }
            }
            if let Some(prev) = by_leader.get(&e.leader) {
                return Err(IdentityError::TwiceMapped {
                    leader: e.leader.clone(),
                    first: prev.follower.clone(),
                    second: e.follower.clone(),
                });
            }
            if let Some(other) = inverse.get(&e.follower) {
                return Err(IdentityError::Duplicate {
                    follower: e.follower.clone(),
                    leader: e.leader.clone(),
                    other: other.clone(),
                });
            }
            inverse.insert(e.follower.clone(), e.leader.clone());
            by_leader.insert(e.leader.clone(), e);
        }
        Ok(Self {
            entries: by_leader,
            inverse,
        })
    }

    /// Refuses an entry whose state id is one of `leader_ids` (components known to exist in
    /// region 1: its flow, or the state on the leader) that has no entry of its own.
    pub fn check_against<'a>(
        &self,
        leader_ids: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), IdentityError> {
        let known: BTreeSet<&str> = leader_ids.into_iter().collect();
        for e in self.entries.values() {
            if e.follower != e.leader
                && known.contains(e.follower.as_str())
                && !self.entries.contains_key(&e.follower)
            {
                return Err(IdentityError::Collides {
                    follower: e.follower.clone(),
                    leader: e.leader.clone(),
                });
            }
        }
        Ok(())
    }

    /// Reads an identity file (a missing file is an error: it was configured).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, IdentityError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| IdentityError::Io {
            path: path.display().to_string(),
            message: format!("cannot read the identity file: {e}"),
        })?;
        Self::parse(&text).map_err(|e| match e {
            IdentityError::Parse { message, .. } => IdentityError::Parse {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    /// Parses the TOML form.
    pub fn parse(text: &str) -> Result<Self, IdentityError> {
        let f: FileForm = toml::from_str(text).map_err(|e| IdentityError::Parse {
            path: "(text)".into(),
            message: e.message().to_string(),
        })?;
        Self::new(f.component)
    }

    /// The TOML form (entries sorted by leader id), with a header saying what it is.
    pub fn to_toml(&self) -> String {
        let form = FileForm {
            component: self.entries.values().cloned().collect(),
        };
        let body = toml::to_string(&form).unwrap_or_default();
        format!(
            "# statemirror state identity map (README \"State identity\").\n\
             # leader = region 1's component id; follower = the id region 2 keeps its state under.\n\
             # Edit by hand or with `statemirror identity set/unset`; a running sidecar reloads it.\n\n{body}"
        )
    }

    /// Writes the TOML form atomically (a temporary file beside it, then a rename).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), IdentityError> {
        let path = path.as_ref();
        let io = |e: std::io::Error| IdentityError::Io {
            path: path.display().to_string(),
            message: format!("cannot write the identity file: {e}"),
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "identity".into());
        let tmp = path.with_file_name(format!(".{name}.tmp.{}", std::process::id()));
        std::fs::write(&tmp, self.to_toml()).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io(e)
        })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The entries, by leader id.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// The entry of a leader component id.
    pub fn get(&self, component_id: &str) -> Option<&Entry> {
        self.entries.get(component_id)
    }

    /// Region 2's id for region 1's component; unmapped ids are unchanged.
    pub fn to_follower<'a>(&self, component_id: &'a str) -> Cow<'a, str> {
        match self.entries.get(component_id) {
            Some(e) => Cow::Owned(e.follower.clone()),
            None => Cow::Borrowed(component_id),
        }
    }

    /// Region 1's id for a follower id (the inverse); ids no entry maps to are unchanged.
    pub fn to_leader<'a>(&self, follower_id: &'a str) -> Cow<'a, str> {
        match self.inverse.get(follower_id) {
            Some(l) => Cow::Owned(l.clone()),
            None => Cow::Borrowed(follower_id),
        }
    }

    /// The follower's key for a leader Redis key: `<prefix><id>` → `<prefix><mapped id>`;
    /// any other key (or an empty prefix: no NiFi layout) is unchanged.
    pub fn map_key<'a>(&self, prefix: &str, key: &'a [u8]) -> Cow<'a, [u8]> {
        self.rekey(prefix, key, |id| {
            self.entries.get(id).map(|e| e.follower.as_str())
        })
    }

    /// The leader's key for a follower Redis key (inverse of [`Self::map_key`]).
    pub fn unmap_key<'a>(&self, prefix: &str, key: &'a [u8]) -> Cow<'a, [u8]> {
        self.rekey(prefix, key, |id| self.inverse.get(id).map(String::as_str))
    }

    fn rekey<'a, 'm>(
        &'m self,
        prefix: &str,
        key: &'a [u8],
        f: impl Fn(&str) -> Option<&'m str>,
    ) -> Cow<'a, [u8]> {
        if self.is_empty() {
            return Cow::Borrowed(key);
        }
        let mapped = super::layout::component_of_key(prefix, key)
            .and_then(|id| std::str::from_utf8(id).ok())
            .and_then(f);
        match mapped {
            Some(to) => {
                let mut k = Vec::with_capacity(prefix.len() + to.len());
                k.extend_from_slice(prefix.as_bytes());
                k.extend_from_slice(to.as_bytes());
                Cow::Owned(k)
            }
            None => Cow::Borrowed(key),
        }
    }

    /// The follower's path for a leader znode: the id segment after `components` in
    /// `…/components/<id>` and its descendants is mapped; other paths are unchanged.
    pub fn map_path<'a>(&self, path: &'a str) -> Cow<'a, str> {
        self.repath(path, |id| self.entries.get(id).map(|e| e.follower.as_str()))
    }

    /// The leader's path for a follower znode (inverse of [`Self::map_path`]).
    pub fn unmap_path<'a>(&self, path: &'a str) -> Cow<'a, str> {
        self.repath(path, |id| self.inverse.get(id).map(String::as_str))
    }

    fn repath<'a, 'm>(
        &'m self,
        path: &'a str,
        f: impl Fn(&str) -> Option<&'m str>,
    ) -> Cow<'a, str> {
        if self.is_empty() {
            return Cow::Borrowed(path);
        }
        let Some((start, end)) = component_segment(path) else {
            return Cow::Borrowed(path);
        };
        match f(&path[start..end]) {
            Some(to) => Cow::Owned(format!("{}{to}{}", &path[..start], &path[end..])),
            None => Cow::Borrowed(path),
        }
    }

    /// Children names of a znode, mapped with `f` when the znode is a `…/components`
    /// node (e.g. a getChildren reply from the follower, mapped back to leader ids).
    pub fn children_to_leader(&self, parent: &str, names: &mut [String]) {
        if self.is_empty() || !is_components_node(parent) {
            return;
        }
        for n in names.iter_mut() {
            if let Some(l) = self.inverse.get(n.as_str()) {
                *n = l.clone();
            }
        }
    }
}

/// `…/components` (the parent of NiFi's component znodes).
pub fn is_components_node(path: &str) -> bool {
    path.rsplit('/').next() == Some("components") && path.starts_with('/')
}

/// Byte range of the component id in `…/components/<id>[/…]`: the segment after the first
/// segment named `components` (NiFi's root node is configurable, so any parent counts).
fn component_segment(path: &str) -> Option<(usize, usize)> {
    let mut pos = 0;
    let mut after_components = false;
    for seg in path.split('/') {
        let start = pos;
        let end = start + seg.len();
        pos = end + 1;
        if after_components {
            return (!seg.is_empty()).then_some((start, end));
        }
        after_components = seg == "components" && start > 0;
    }
    None
}

#[cfg(test)]
#[path = "identity_tests.rs"]
mod tests;
