use super::*;

fn e(l: &str, f: &str) -> Entry {
    Entry {
        leader: l.into(),
        follower: f.into(),
        name: None,
        group: None,
    }
}

const L1: &str = "0b8c1a52-0190-1000-ffff-ffffd2a4b3c1";
const F1: &str = "7f3e2d10-0190-1000-aaaa-aaaa12345678";

#[test]
fn pattern_accepts_uuids_and_strict_names_only() {
    assert!(valid_id(L1));
    assert!(valid_id("ListS3.bookmark_2-a"));
    assert!(valid_id(&"a".repeat(64)));
    for bad in [
        "",
        "-lead",
        ".x",
        "a/b",
        "a b",
        "a*",
        "é",
        "a\n",
        &"a".repeat(65),
    ] {
        assert!(!valid_id(bad), "{bad:?}");
    }
    let err = IdentityMap::new([e("a/b", "c")]).unwrap_err();
    assert!(matches!(err, IdentityError::Pattern { .. }), "{err}");
}

#[test]
fn duplicates_and_collisions_are_refused() {
    let err = IdentityMap::new([e("a", "x"), e("b", "x")]).unwrap_err();
    assert!(matches!(err, IdentityError::Duplicate { .. }), "{err}");
    let err = IdentityMap::new([e("a", "x"), e("a", "y")]).unwrap_err();
    assert!(matches!(err, IdentityError::TwiceMapped { .. }), "{err}");
    // b keeps its id explicitly, so a's state may not land on b.
    let err = IdentityMap::new([e("a", "b"), e("b", "b")]).unwrap_err();
    assert!(matches!(err, IdentityError::Duplicate { .. }), "{err}");
    // b moves away: a may take its id (a swap is fine too).
    assert!(IdentityMap::new([e("a", "b"), e("b", "c")]).is_ok());
    assert!(IdentityMap::new([e("a", "b"), e("b", "a")]).is_ok());
    // Known leader components without an entry.
    let m = IdentityMap::new([e("a", "b")]).unwrap();
    assert!(matches!(
        m.check_against(["b", "z"]),
        Err(IdentityError::Collides { .. })
    ));
    assert!(m.check_against(["a", "z"]).is_ok());
}

#[test]
fn keys_and_paths_in_the_layout_are_mapped_both_ways() {
    let m = IdentityMap::new([e(L1, F1)]).unwrap();
    let p = "nifi/components/";
    let lk = format!("{p}{L1}");
    let fk = format!("{p}{F1}");
    assert_eq!(&*m.map_key(p, lk.as_bytes()), fk.as_bytes());
    assert_eq!(&*m.unmap_key(p, fk.as_bytes()), lk.as_bytes());
    assert!(matches!(
        m.map_key(p, b"nifi/components/other"),
        Cow::Borrowed(_)
    ));
    assert!(matches!(m.map_key(p, L1.as_bytes()), Cow::Borrowed(_)));
    assert!(matches!(m.map_key("", lk.as_bytes()), Cow::Borrowed(_)));
    assert!(matches!(
        m.map_key(p, format!("other/{L1}").as_bytes()),
        Cow::Borrowed(_)
    ));

    assert_eq!(
        m.map_path(&format!("/nifi/components/{L1}")),
        format!("/nifi/components/{F1}")
    );
    assert_eq!(
        m.map_path(&format!("/nifi/components/{L1}/child/x")),
        format!("/nifi/components/{F1}/child/x")
    );
    assert_eq!(
        m.unmap_path(&format!("/r/components/{F1}")),
        format!("/r/components/{L1}")
    );
    for same in [
        "/nifi/components".to_string(),
        "/nifi/components/".to_string(),
        format!("/nifi/leaders/{L1}"),
        format!("/nifi/{L1}"),
        "/".to_string(),
    ] {
        assert!(matches!(m.map_path(&same), Cow::Borrowed(_)), "{same}");
    }
    assert_eq!(m.to_follower(L1), F1);
    assert_eq!(m.to_follower("x"), "x");
    assert_eq!(m.to_leader(F1), L1);
    assert_eq!(m.to_leader(L1), L1);

    let mut kids = vec![F1.to_string(), "other".into()];
    m.children_to_leader("/nifi/components", &mut kids);
    assert_eq!(kids, [L1.to_string(), "other".into()]);
    let mut kids = vec![F1.to_string()];
    m.children_to_leader("/nifi/leaders", &mut kids);
    assert_eq!(kids, [F1.to_string()]);
}

#[test]
fn the_file_round_trips_and_is_written_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.toml");
    let mut x = e(L1, F1);
    x.name = Some("ListS3".into());
    x.group = Some("Ingest / S3".into());
    let m = IdentityMap::new([x, e("b", "c")]).unwrap();
    m.save(&path).unwrap();
    assert_eq!(IdentityMap::load(&path).unwrap(), m);
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "no temporary file left behind");
    std::fs::write(&path, "[[component]]\nleader = \"a\"\n").unwrap();
    assert!(matches!(
        IdentityMap::load(&path),
        Err(IdentityError::Parse { .. })
    ));
    assert!(matches!(
        IdentityMap::load(dir.path().join("missing")),
        Err(IdentityError::Io { .. })
    ));
    assert!(IdentityMap::parse("").unwrap().is_empty());
}
