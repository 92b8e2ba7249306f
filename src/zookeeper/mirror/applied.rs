//! Which zxid was last applied to each path on the follower: the order guard that keeps an
//! older write or copy from landing over a newer one.

use std::collections::HashMap;

/// Per path, the zxid of the last write applied, so a late older write is skipped rather
/// than applied over a newer one.
#[derive(Default)]
pub struct Applied {
    zxids: HashMap<String, i64>,
    /// The newest zxid forgotten by a trim (`None`: nothing forgotten): a path without an
    /// entry may have had one up to here.
    floor: Option<i64>,
}

/// Whether an item at some zxid is still to be applied.
#[derive(Debug, PartialEq, Eq)]
pub enum Fate {
    Apply,
    /// A newer write of the path was applied.
    Superseded,
    /// Older than what a trim forgot: it may be superseded, or not. Skipped (it could undo a
    /// newer write) and flagged.
    Forgotten,
}

impl Applied {
    pub fn fate(&self, path: &str, zxid: i64) -> Fate {
        match self.zxids.get(path) {
            // `<=` applies: an op at the same zxid (a session's end, ordered at the newest
            // zxid seen) must still run; re-applying one is harmless.
            Some(&z) if z <= zxid => Fate::Apply,
            Some(_) => Fate::Superseded,
            None if self.floor.is_some_and(|f| zxid < f) => Fate::Forgotten,
            None => Fate::Apply,
        }
    }

    /// Whether a write newer than `zxid` was applied to `path` (unknown counts as no).
    pub fn newer(&self, path: &str, zxid: i64) -> bool {
        self.zxids.get(path).is_some_and(|&z| z > zxid)
    }

    pub fn record(&mut self, path: &str, zxid: i64) {
        self.zxids.insert(path.to_string(), zxid);
    }

    /// Past `max` paths, forgets the older half, remembering the newest zxid forgotten.
    pub fn trim(&mut self, max: usize) {
        if self.zxids.len() <= max {
            return;
        }
        let mut zxids: Vec<i64> = self.zxids.values().copied().collect();
        zxids.sort_unstable();
        let cut = zxids[zxids.len() / 2];
        let mut forgotten = None;
        self.zxids.retain(|_, z| {
            let keep = *z >= cut;
            if !keep {
                forgotten = forgotten.max(Some(*z));
            }
            keep
        });
        self.floor = self.floor.max(forgotten);
    }

    /// A new zxid history: nothing known applies to it.
    pub fn reset(&mut self) {
        self.zxids.clear();
        self.floor = None;
    }

    pub fn len(&self) -> usize {
        self.zxids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.zxids.is_empty()
    }
}
