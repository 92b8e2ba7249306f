//! The identity map from two regions' flow definitions: NiFi's `flow.json.gz` (`rootGroup`,
//! plus flow-level `controllerServices`, `reportingTasks`, `flowAnalysisRules`,
//! `parameterProviders`) or an exported process group (`{"flowContents": {…}}`), gzip or
//! plain (told by the gzip magic bytes).
//!
//! Every component carries `identifier` (its versioned component id, the same in every
//! region that deployed the flow from NiFi Registry) and `instanceIdentifier` (its UUID in
//! this NiFi, the id its state is stored under). Components are joined on (versioned id,
//! process-group path of names below the top group). A versioned id present more than once
//! on either side (several instances of one versioned flow) gets no entry: a warning, and
//! the component keeps its UUID, as NiFi's DR proposal asks. A component without a
//! counterpart is reported and keeps its UUID.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use super::identity::{Entry, IdentityMap};

/// One stateful component of a flow definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Component {
    /// `processor`, `controller-service`, `reporting-task`, …
    pub kind: &'static str,
    pub name: String,
    /// Names of the process groups from the top group down (the top group itself excluded).
    pub group: Vec<String>,
    /// The versioned component id (`identifier`).
    pub versioned_id: String,
    /// The instance UUID (`instanceIdentifier`); `None` in a registry snapshot.
    pub instance_id: Option<String>,
}

impl Component {
    pub fn group_path(&self) -> String {
        self.group.join(" / ")
    }

    fn describe(&self) -> String {
        format!(
            "{} {:?} in {:?} (versioned id {}, instance {})",
            self.kind,
            self.name,
            if self.group.is_empty() {
                "(top group)".to_string()
            } else {
                self.group_path()
            },
            self.versioned_id,
            self.instance_id.as_deref().unwrap_or("none"),
        )
    }
}

/// Reads a flow definition file (gzip or not) and lists its stateful components.
pub fn read_flow(path: &Path) -> Result<Vec<Component>, String> {
    let raw = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let text = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| format!("{}: not valid gzip: {e}", path.display()))?;
        out
    } else {
        raw
    };
    let v: Value =
        serde_json::from_slice(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
    components(&v).map_err(|e| format!("{}: {e}", path.display()))
}

/// The stateful components of a parsed flow definition.
pub fn components(v: &Value) -> Result<Vec<Component>, String> {
    let mut out = Vec::new();
    let top = if let Some(g) = v.get("rootGroup") {
        for (key, kind) in FLOW_LEVEL {
            list(v, key, kind, &[], &mut out);
        }
        g
    } else if let Some(g) = v.get("flowContents") {
        g
    } else {
        return Err(
            "neither a flow.json(.gz) (no \"rootGroup\") nor an exported process group (no \"flowContents\")"
                .into(),
        );
    };
    walk(top, &mut Vec::new(), &mut out, 0)?;
    Ok(out)
}

const FLOW_LEVEL: [(&str, &str); 4] = [
    ("controllerServices", "controller-service"),
    ("reportingTasks", "reporting-task"),
    ("flowAnalysisRules", "flow-analysis-rule"),
    ("parameterProviders", "parameter-provider"),
];

fn list(v: &Value, key: &str, kind: &'static str, group: &[String], out: &mut Vec<Component>) {
    for c in v.get(key).and_then(Value::as_array).into_iter().flatten() {
        let Some(id) = c.get("identifier").and_then(Value::as_str) else {
            continue;
        };
        out.push(Component {
            kind,
            name: c.get("name").and_then(Value::as_str).unwrap_or("").into(),
            group: group.to_vec(),
            versioned_id: id.into(),
            instance_id: c
                .get("instanceIdentifier")
                .and_then(Value::as_str)
                .map(Into::into),
        });
    }
}

fn walk(
    g: &Value,
    path: &mut Vec<String>,
    out: &mut Vec<Component>,
    depth: usize,
) -> Result<(), String> {
    if depth > 256 {
        return Err("process groups nested deeper than 256".into());
    }
    list(g, "processors", "processor", path, out);
    list(g, "controllerServices", "controller-service", path, out);
    for child in g
        .get("processGroups")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        path.push(
            child
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .into(),
        );
        walk(child, path, out, depth + 1)?;
        path.pop();
    }
    Ok(())
}

/// What a build found.
#[derive(Debug, Default, Serialize)]
pub struct BuildReport {
    /// Entries made (leader UUID ≠ follower UUID).
    pub entries: Vec<Entry>,
    /// Components matched whose UUID is the same in both regions (no entry needed).
    pub same_id: usize,
    /// Versioned ids found more than once on a side: no entry, the UUIDs are kept.
    pub multi_instance: Vec<String>,
    /// Components without a counterpart (leader side, then follower side).
    pub unmatched_leader: Vec<String>,
    pub unmatched_follower: Vec<String>,
    pub warnings: Vec<String>,
}

impl BuildReport {
    pub fn matched(&self) -> usize {
        self.entries.len() + self.same_id
    }
}

/// Joins the two regions' components (module doc).
pub fn join(leader: &[Component], follower: &[Component]) -> BuildReport {
    let mut r = BuildReport::default();
    fn count(side: &[Component]) -> BTreeMap<&str, usize> {
        let mut m: BTreeMap<&str, usize> = BTreeMap::new();
        for c in side {
            *m.entry(c.versioned_id.as_str()).or_default() += 1;
        }
        m
    }
    let (lc, fc) = (count(leader), count(follower));
    let multi =
        |id: &str| lc.get(id).copied().unwrap_or(0) > 1 || fc.get(id).copied().unwrap_or(0) > 1;
    for (id, _) in lc.iter().chain(fc.iter()) {
        if multi(id) && !r.multi_instance.iter().any(|m| m == id) {
            r.multi_instance.push((*id).to_string());
            r.warnings.push(format!(
                "versioned component {id} has {} instance(s) in the leader's flow and {} in the \
                 follower's (several instances of one versioned flow): no entry, each keeps its UUID",
                lc.get(id).copied().unwrap_or(0),
                fc.get(id).copied().unwrap_or(0)
            ));
        }
    }
    let by_key: BTreeMap<(&str, &[String]), &Component> = follower
        .iter()
        .filter(|c| !multi(&c.versioned_id))
        .map(|c| ((c.versioned_id.as_str(), c.group.as_slice()), c))
        .collect();
    let mut used = std::collections::BTreeSet::new();
    for l in leader.iter().filter(|c| !multi(&c.versioned_id)) {
        let Some(f) = by_key.get(&(l.versioned_id.as_str(), l.group.as_slice())) else {
            r.unmatched_leader.push(l.describe());
            continue;
        };
        used.insert((f.versioned_id.as_str(), f.group.as_slice()));
        match (&l.instance_id, &f.instance_id) {
            (Some(li), Some(fi)) if li == fi => r.same_id += 1,
            (Some(li), Some(fi)) => r.entries.push(Entry {
                leader: li.clone(),
                follower: fi.clone(),
                name: (!l.name.is_empty()).then(|| l.name.clone()),
                group: (!l.group.is_empty()).then(|| l.group_path()),
            }),
            _ => r.warnings.push(format!(
                "{} has no instance id on one side (a registry snapshot?): no entry",
                l.describe()
            )),
        }
    }
    for f in follower.iter().filter(|c| !multi(&c.versioned_id)) {
        if !used.contains(&(f.versioned_id.as_str(), f.group.as_slice())) {
            r.unmatched_follower.push(f.describe());
        }
    }
    r
}

/// Builds the map: the join's entries over `existing` (hand-set entries the flows do not
/// cover are kept), checked against every leader UUID of the flow.
pub fn build_map(
    leader: &[Component],
    report: &BuildReport,
    existing: &IdentityMap,
) -> Result<IdentityMap, super::identity::IdentityError> {
    let mut all: BTreeMap<String, Entry> = existing
        .entries()
        .map(|e| (e.leader.clone(), e.clone()))
        .collect();
    for e in &report.entries {
        all.insert(e.leader.clone(), e.clone());
    }
    let map = IdentityMap::new(all.into_values())?;
    map.check_against(leader.iter().filter_map(|c| c.instance_id.as_deref()))?;
    Ok(map)
}

#[cfg(test)]
#[path = "flow_tests.rs"]
mod tests;
