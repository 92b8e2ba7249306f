//! Comparing the NiFi state of two providers component by component and entry by entry
//! (decoded maps; versions are not compared: they cannot be carried into ZooKeeper).

use std::collections::BTreeSet;

use serde::Serialize;

use super::copy::{IdMap, BATCH, MAX_LISTED};
use super::provider::{Provider, Read};
use crate::nifi::{self, NifiState};

#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// Components holding state on either side.
    pub compared: u64,
    pub equal: u64,
    pub different: u64,
    pub missing_on_destination: u64,
    pub extra_on_destination: u64,
    pub unreadable: u64,
    /// The first [`MAX_LISTED`] differences, each naming the component and the entries.
    pub differences: Vec<Difference>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    /// The source's component id (the destination's for an extra component).
    pub component: String,
    /// `different`, `missing_on_destination`, `extra_on_destination` or `unreadable`.
    pub kind: &'static str,
    /// Entries that differ (for `different`), or the read error.
    pub detail: Vec<String>,
}

impl VerifyReport {
    pub fn total_differences(&self) -> u64 {
        self.different + self.missing_on_destination + self.extra_on_destination + self.unreadable
    }

    fn note(&mut self, component: &str, kind: &'static str, detail: Vec<String>) {
        match kind {
            "different" => self.different += 1,
            "missing_on_destination" => self.missing_on_destination += 1,
            "extra_on_destination" => self.extra_on_destination += 1,
            _ => self.unreadable += 1,
        }
        if self.differences.len() < MAX_LISTED {
            self.differences.push(Difference {
                component: component.to_string(),
                kind,
                detail,
            });
        }
    }

    /// Compares one component's two reads.
    pub fn compare(&mut self, component: &str, src: Read, dst: Read) {
        match (src, dst) {
            (Err(e), _) => self.note(component, "unreadable", vec![format!("source: {e}")]),
            (_, Err(e)) => self.note(component, "unreadable", vec![format!("destination: {e}")]),
            (Ok(None), Ok(None)) => return,
            (Ok(Some(_)), Ok(None)) => self.note(component, "missing_on_destination", vec![]),
            (Ok(None), Ok(Some(_))) => self.note(component, "extra_on_destination", vec![]),
            (Ok(Some(a)), Ok(Some(b))) => {
                self.compared += 1;
                if a.entries == b.entries {
                    self.equal += 1;
                } else {
                    let d = nifi::diff(component, Some(&a), Some(&b));
                    let names = d.entries.into_iter().map(|e| e.entry).collect();
                    self.note(component, "different", names);
                }
                return;
            }
        }
        self.compared += 1;
    }
}

/// Compares every component either side holds.
pub async fn verify(
    from: &mut Provider,
    to: &mut Provider,
    map: &IdMap,
) -> Result<VerifyReport, String> {
    let src_ids = from.list().await?;
    let dst_ids = to.list().await?;
    let mapped: BTreeSet<String> = src_ids.iter().map(|i| map(i)).collect();
    let mut rep = VerifyReport::default();
    for chunk in src_ids.chunks(BATCH) {
        let dst: Vec<String> = chunk.iter().map(|i| map(i)).collect();
        let (a, b) = tokio::join!(from.get_many(chunk), to.get_many(&dst));
        for ((id, x), y) in chunk.iter().zip(a?).zip(b?) {
            rep.compare(id, x, y);
        }
    }
    let extra: Vec<String> = dst_ids
        .into_iter()
        .filter(|d| !mapped.contains(d))
        .collect();
    for chunk in extra.chunks(BATCH) {
        for (id, y) in chunk.iter().zip(to.get_many(chunk).await?) {
            rep.compare(id, Ok(None), y);
        }
    }
    Ok(rep)
}

/// How many entries each component holds, for `--dry-run`.
pub fn entry_count(st: &NifiState) -> usize {
    st.entries.len()
}
