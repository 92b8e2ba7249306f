//! Copying NiFi state from one provider to another, per batch: read the source's states,
//! translate the component ids (identity map), write them at the destination, and delete
//! there what the source does not hold. Used by the offline `migrate` and the online
//! migration alike.

use std::sync::Arc;

use serde::Serialize;

use super::provider::{Provider, Read};
use crate::nifi::NifiState;

/// Source component id → destination component id (the identity map; `identity()` when none).
pub type IdMap = Arc<dyn Fn(&str) -> String + Send + Sync>;

pub fn identity() -> IdMap {
    Arc::new(|s: &str| s.to_string())
}

/// Components per pipelined round trip.
pub const BATCH: usize = 500;

/// Most per-component errors kept for a report (all are counted).
pub const MAX_LISTED: usize = 100;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    /// Components written (state present on the source).
    pub components: u64,
    pub entries: u64,
    /// Bytes of encoded state written at the destination.
    pub bytes: u64,
    /// Components deleted at the destination (no state on the source).
    pub deleted: u64,
    pub failed: u64,
    /// The first [`MAX_LISTED`] failures: `component: why`.
    pub errors: Vec<String>,
    /// Every failed component (the online migration keeps them as failing).
    #[serde(skip)]
    pub failed_ids: Vec<String>,
}

impl Totals {
    pub fn fail(&mut self, component: &str, why: &str) {
        self.failed += 1;
        self.failed_ids.push(component.to_string());
        if self.errors.len() < MAX_LISTED {
            self.errors.push(format!("{component}: {why}"));
        }
    }
}

/// Writes what was read for `ids` (source ids) at the destination.
pub async fn write_read(
    to: &mut Provider,
    ids: &[String],
    read: Vec<Read>,
    map: &IdMap,
    totals: &mut Totals,
) -> Result<(), String> {
    let mut puts: Vec<(String, NifiState)> = Vec::new();
    let mut put_src = Vec::new();
    let mut dels: Vec<String> = Vec::new();
    let mut del_src = Vec::new();
    for (id, r) in ids.iter().zip(read) {
        match r {
            Ok(Some(st)) => {
                puts.push((map(id), st));
                put_src.push(id);
            }
            Ok(None) => {
                dels.push(map(id));
                del_src.push(id);
            }
            Err(e) => totals.fail(id, &format!("cannot read at the source: {e}")),
        }
    }
    let written = to.put_many(&puts).await?;
    for ((id, (_, st)), r) in put_src.iter().zip(&puts).zip(written) {
        match r {
            Ok(n) => {
                totals.components += 1;
                totals.entries += st.entries.len() as u64;
                totals.bytes += n;
            }
            Err(e) => totals.fail(id, &e),
        }
    }
    for (id, r) in del_src.iter().zip(to.delete_many(&dels).await?) {
        match r {
            Ok(_) => totals.deleted += 1,
            Err(e) => totals.fail(id, &e),
        }
    }
    Ok(())
}

/// Copies `ids` in batches, reading the next batch while the current one is written.
pub async fn copy_ids(
    from: &mut Provider,
    to: &mut Provider,
    ids: &[String],
    map: &IdMap,
    totals: &mut Totals,
) -> Result<(), String> {
    let mut chunks = ids.chunks(BATCH);
    let Some(first) = chunks.next() else {
        return Ok(());
    };
    let mut current = (first, from.get_many(first).await?);
    loop {
        let next = chunks.next();
        let (cur_ids, read) = current;
        let (w, r) = tokio::join!(write_read(to, cur_ids, read, map, totals), async {
            match next {
                Some(n) => Some(from.get_many(n).await.map(|r| (n, r))),
                None => None,
            }
        });
        w?;
        match r {
            Some(r) => current = r?,
            None => return Ok(()),
        }
    }
}
