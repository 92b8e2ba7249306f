use super::*;
use serde_json::json;

fn proc(vid: &str, iid: &str, name: &str) -> Value {
    json!({"identifier": vid, "instanceIdentifier": iid, "name": name, "type": "org.apache.nifi.processors.aws.s3.ListS3"})
}

/// Region `r`'s flow.json: the same versioned flow, instance ids prefixed by the region.
fn flow(r: &str) -> Value {
    json!({
        "encodingVersion": {"majorVersion": 2, "minorVersion": 0},
        "controllerServices": [{"identifier": "v-cs-top", "instanceIdentifier": format!("{r}-cs-top"), "name": "Top"}],
        "reportingTasks": [],
        "rootGroup": {
            "identifier": "v-root", "instanceIdentifier": format!("{r}-root"), "name": "NiFi Flow",
            "processors": [proc("v-p0", &format!("{r}-p0"), "GenerateFlowFile")],
            "processGroups": [{
                "identifier": "v-g1", "instanceIdentifier": format!("{r}-g1"), "name": "Ingest",
                "processors": [proc("v-p1", &format!("{r}-p1"), "ListS3")],
                "controllerServices": [{"identifier": "v-cs1", "instanceIdentifier": format!("{r}-cs1"), "name": "Cache"}],
                "processGroups": [{
                    "identifier": "v-g2", "instanceIdentifier": format!("{r}-g2"), "name": "Deep",
                    "processors": [proc("v-p2", &format!("{r}-p2"), "ListSFTP")],
                    "processGroups": []
                }]
            }]
        }
    })
}

#[test]
fn joins_on_versioned_id_and_group_path() {
    let l = components(&flow("a")).unwrap();
    let f = components(&flow("b")).unwrap();
    assert_eq!(l.len(), 5);
    let r = join(&l, &f);
    assert_eq!(r.entries.len(), 5, "{r:?}");
    assert!(r.unmatched_leader.is_empty() && r.unmatched_follower.is_empty());
    let m = build_map(&l, &r, &IdentityMap::empty()).unwrap();
    assert_eq!(m.to_follower("a-p2"), "b-p2");
    assert_eq!(m.to_follower("a-cs1"), "b-cs1");
    assert_eq!(m.to_follower("a-cs-top"), "b-cs-top");
    assert_eq!(
        m.get("a-p2").unwrap().group.as_deref(),
        Some("Ingest / Deep")
    );
}

#[test]
fn a_moved_or_missing_component_is_reported_not_mapped() {
    let l = components(&flow("a")).unwrap();
    let mut fv = flow("b");
    // p2 moved to another group in region 2; p0 is gone.
    fv["rootGroup"]["processGroups"][0]["processGroups"][0]["name"] = json!("Elsewhere");
    fv["rootGroup"]["processors"] = json!([]);
    let f = components(&fv).unwrap();
    let r = join(&l, &f);
    assert_eq!(r.entries.len(), 3);
    assert_eq!(r.unmatched_leader.len(), 2, "{:?}", r.unmatched_leader);
    assert_eq!(r.unmatched_follower.len(), 1);
}

#[test]
fn several_instances_of_a_versioned_flow_keep_their_uuids() {
    let l = components(&flow("a")).unwrap();
    let mut fv = flow("b");
    // Region 2 has the Ingest group twice (one versioned flow imported twice).
    let mut second = fv["rootGroup"]["processGroups"][0].clone();
    second["name"] = json!("Ingest 2");
    second["processors"][0]["instanceIdentifier"] = json!("b-p1-second");
    fv["rootGroup"]["processGroups"]
        .as_array_mut()
        .unwrap()
        .push(second);
    let f = components(&fv).unwrap();
    let r = join(&l, &f);
    assert_eq!(r.multi_instance.len(), 3, "{:?}", r.multi_instance);
    assert_eq!(r.warnings.len(), 3);
    assert_eq!(r.entries.len(), 2, "only p0 and the top controller service");
    assert!(r.entries.iter().all(|e| e.leader != "a-p1"));
}

#[test]
fn an_exported_group_reads_like_a_flow() {
    let v =
        json!({"flowContents": flow("a")["rootGroup"].clone(), "externalControllerServices": {}});
    let c = components(&v).unwrap();
    assert_eq!(c.len(), 4);
    assert!(components(&json!({"x": 1})).is_err());
}

#[test]
fn gzip_is_told_by_its_magic_bytes() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let gz = dir.path().join("flow.json.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(flow("a").to_string().as_bytes()).unwrap();
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    let plain = dir.path().join("flow.gz");
    std::fs::write(&plain, flow("a").to_string()).unwrap();
    assert_eq!(read_flow(&gz).unwrap(), read_flow(&plain).unwrap());
    std::fs::write(&plain, b"\x1f\x8bnot gzip").unwrap();
    assert!(read_flow(&plain).unwrap_err().contains("gzip"));
}

#[test]
fn a_built_entry_may_not_land_on_a_leader_component_that_keeps_its_uuid() {
    let l = components(&flow("a")).unwrap();
    let mut fv = flow("b");
    // Region 2's ListS3 happens to have the UUID of region 1's GenerateFlowFile, which has
    // no counterpart there and so keeps its UUID.
    fv["rootGroup"]["processGroups"][0]["processors"][0]["instanceIdentifier"] = json!("a-p0");
    fv["rootGroup"]["processors"] = json!([]);
    let f = components(&fv).unwrap();
    let r = join(&l, &f);
    let err = build_map(&l, &r, &IdentityMap::empty()).unwrap_err();
    assert!(err.to_string().contains("a-p0"), "{err}");
}
