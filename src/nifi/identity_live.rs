//! The identity map a running sidecar uses: loaded from `[identity] file`, shared by every
//! path into the follower, and reloaded when the file changes (checked at most once a
//! second, on use, like the TLS files). A file that no longer loads keeps the previous map;
//! the error is logged once and shown in `/status`.
//!
//! A changed map means state already on the follower sits under the old ids: the mirror
//! writers notice the change ([`SharedIdentity::generation`]) and mark the follower out of
//! sync, so a resync (automatic with `resync.auto`) rewrites it under the new ids and
//! deletes what is left under the old ones.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use super::identity::{IdentityError, IdentityMap};

/// How often a file is looked at (its modification time and size, then its content).
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Cheap to clone; `none()` when no identity file is configured (every id maps to itself).
#[derive(Clone, Default)]
pub struct SharedIdentity(Option<Arc<Inner>>);

struct Inner {
    path: PathBuf,
    state: Mutex<State>,
}

struct State {
    current: Arc<IdentityMap>,
    stamp: Option<(SystemTime, u64)>,
    checked: Instant,
    generation: u64,
    last_error: Option<String>,
    changed_at: Option<SystemTime>,
}

impl std::fmt::Debug for SharedIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(i) => write!(f, "SharedIdentity({})", i.path.display()),
            None => f.write_str("SharedIdentity(none)"),
        }
    }
}

fn empty() -> Arc<IdentityMap> {
    static EMPTY: OnceLock<Arc<IdentityMap>> = OnceLock::new();
    EMPTY.get_or_init(|| Arc::new(IdentityMap::empty())).clone()
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl SharedIdentity {
    pub fn none() -> Self {
        Self(None)
    }

    /// Loads the file now (an error is a config error: the sidecar does not start).
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let map = IdentityMap::load(path)?;
        Ok(Self(Some(Arc::new(Inner {
            path: path.to_path_buf(),
            state: Mutex::new(State {
                current: Arc::new(map),
                stamp: stamp(path),
                checked: Instant::now(),
                generation: 0,
                last_error: None,
                changed_at: None,
            }),
        }))))
    }

    /// A fixed map (tests, one-shot commands).
    pub fn fixed(map: IdentityMap) -> Self {
        Self(Some(Arc::new(Inner {
            path: PathBuf::new(),
            state: Mutex::new(State {
                current: Arc::new(map),
                stamp: None,
                checked: Instant::now(),
                generation: 0,
                last_error: None,
                changed_at: None,
            }),
        })))
    }

    pub fn is_configured(&self) -> bool {
        self.0.is_some()
    }

    /// The map now (reloading it first when the file changed and a second passed).
    pub fn current(&self) -> Arc<IdentityMap> {
        let Some(inner) = &self.0 else {
            return empty();
        };
        let mut s = inner.state.lock().unwrap_or_else(|e| e.into_inner());
        if !inner.path.as_os_str().is_empty() && s.checked.elapsed() >= CHECK_EVERY {
            s.checked = Instant::now();
            let now = stamp(&inner.path);
            if now != s.stamp || (now.is_none() && s.last_error.is_none()) {
                s.stamp = now;
                match IdentityMap::load(&inner.path) {
                    Ok(m) if m == *s.current => s.last_error = None,
                    Ok(m) => {
                        tracing::warn!(file = %inner.path.display(), entries = m.len(),
                            "the identity map changed: the follower is resynced so state under the old ids moves to the new ones");
                        s.current = Arc::new(m);
                        s.generation += 1;
                        s.last_error = None;
                        s.changed_at = Some(SystemTime::now());
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        if s.last_error.as_deref() != Some(msg.as_str()) {
                            tracing::error!(error = %msg, "the identity file changed but does not load: keeping the previous map");
                            s.last_error = Some(msg);
                        }
                    }
                }
            }
        }
        s.current.clone()
    }

    /// Counts the changes loaded since start (a writer that saw another one resyncs).
    pub fn generation(&self) -> u64 {
        match &self.0 {
            Some(i) => {
                self.current();
                i.state.lock().unwrap_or_else(|e| e.into_inner()).generation
            }
            None => 0,
        }
    }

    /// For `/status`: the file, entries, reloads and the last load error.
    pub fn status(&self) -> Option<serde_json::Value> {
        let inner = self.0.as_ref()?;
        let map = self.current();
        let s = inner.state.lock().unwrap_or_else(|e| e.into_inner());
        let changed = s
            .changed_at
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| d.as_secs());
        Some(serde_json::json!({
            "file": inner.path.display().to_string(),
            "entries": map.len(),
            "reloads": s.generation,
            "last_change_unix": changed,
            "error": s.last_error,
        }))
    }
}

/// Watches the map for a mirror: each change calls `changed` (which marks the follower out
/// of sync: a resync moves the state to the new ids). Ends when `changed` returns false
/// (its mirror is gone).
pub fn spawn_watch(identity: SharedIdentity, changed: Arc<dyn Fn(&str) -> bool + Send + Sync>) {
    if !identity.is_configured() {
        return;
    }
    tokio::spawn(async move {
        let mut seen = identity.generation();
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            let g = identity.generation();
            if g != seen {
                seen = g;
                if !changed("the identity map changed: state on the follower is under the old ids until a resync") {
                    return;
                }
            }
        }
    });
}

/// [`spawn_watch`] for a mirror queue: a change marks its follower out of sync.
pub fn watch_for<Op: crate::replication::queue::MirrorOp + 'static>(
    identity: &SharedIdentity,
    queue: &Arc<crate::replication::queue::MirrorQueue<Op>>,
) {
    use crate::replication::queue::MirrorView;
    let q = Arc::downgrade(queue);
    spawn_watch(
        identity.clone(),
        Arc::new(move |why: &str| match q.upgrade() {
            Some(q) => {
                q.sync().mark_out_of_sync_expected(why);
                true
            }
            None => false,
        }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nifi::identity::Entry;

    #[test]
    fn reloads_a_changed_file_and_keeps_the_map_on_a_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.toml");
        let one = |f: &str| {
            IdentityMap::new([Entry {
                leader: "a".into(),
                follower: f.into(),
                name: None,
                group: None,
            }])
            .unwrap()
        };
        one("b").save(&path).unwrap();
        let s = SharedIdentity::load(&path).unwrap();
        assert_eq!(s.current().to_follower("a"), "b");
        one("cc").save(&path).unwrap();
        std::thread::sleep(CHECK_EVERY + Duration::from_millis(50));
        assert_eq!(s.current().to_follower("a"), "cc");
        assert_eq!(s.generation(), 1);
        std::fs::write(&path, "[[component]]\nleader = \"a/\"\nfollower = \"x\"\n").unwrap();
        std::thread::sleep(CHECK_EVERY + Duration::from_millis(50));
        assert_eq!(s.current().to_follower("a"), "cc");
        assert!(s.status().unwrap()["error"].is_string());
        assert_eq!(SharedIdentity::none().current().to_follower("a"), "a");
    }
}
