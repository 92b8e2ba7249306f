//! Moving NiFi component state between providers (issue 12, part 2): ZooKeeper ↔ Redis in
//! both directions, and Redis → Redis / ZooKeeper → ZooKeeper with another root.
//!
//! - [`endpoint`]: the `redis://…` / `zk://…` URLs;
//! - [`provider`]: "NiFi state in a backend" (enumerate, read, write, delete per batch),
//!   over [`redis`] and [`zookeeper`];
//! - [`copy`] and [`verify`]: the per-batch copy and the per-entry comparison;
//! - [`offline`]: `statemirror migrate` (and `migrate verify`);
//! - [`online`]: a running sidecar also writing every NiFi state change, translated, into
//!   the other provider (`[migration] to = …`).
//!
//! Versions: ZooKeeper's state version is the znode's data version, Redis's the JSON
//! `version`. ZooKeeper → Redis writes the znode version as the JSON version (NiFi's next
//! `replace` on Redis compares the version it read with the stored one, so any value works;
//! this one keeps them recognisable). Redis → ZooKeeper cannot set a znode version: it is
//! whatever ZooKeeper gives (0 for a new node, +1 per copy). Redis → Redis keeps the JSON
//! version. NiFi's own migration (NIFI-10976) resets versions too.

pub mod copy;
pub mod endpoint;
pub mod offline;
pub mod online;
pub mod provider;
pub mod redis;
pub mod verify;
pub mod zookeeper;

pub use copy::{identity, IdMap};
pub use endpoint::Endpoint;

/// Loads a state identity map file (README "State identity") as an [`IdMap`]: source
/// component ids are written under the destination ids it names.
pub fn load_identity(path: &std::path::Path) -> Result<IdMap, String> {
    let map = crate::nifi::identity::IdentityMap::load(path).map_err(|e| e.to_string())?;
    Ok(std::sync::Arc::new(move |id: &str| {
        map.to_follower(id).into_owned()
    }))
}
