//! Where NiFi keeps a component's state: the Redis key `<prefix><componentId>` (prefix
//! `nifi/components/` by default, `redis.nifi_key_prefix`) and the znode
//! `<root>/components/<componentId>` (root `/nifi` by default).

/// The component id of a Redis key under `prefix`; `None` for keys outside NiFi's layout
/// (and for everything when the prefix is empty: no layout configured).
pub fn component_of_key<'a>(prefix: &str, key: &'a [u8]) -> Option<&'a [u8]> {
    if prefix.is_empty() {
        return None;
    }
    let id = key.strip_prefix(prefix.as_bytes())?;
    (!id.is_empty()).then_some(id)
}

/// The component id of a znode `<anything>/components/<id>` (NiFi's root node is
/// configurable, so any parent named `components` counts).
pub fn component_of_path(path: &str) -> Option<&str> {
    let (parent, id) = path.rsplit_once('/')?;
    let parent_name = parent.rsplit('/').next()?;
    (parent_name == "components" && !id.is_empty()).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_component_ids() {
        let p = "nifi/components/";
        assert_eq!(
            component_of_key(p, b"nifi/components/abc"),
            Some(&b"abc"[..])
        );
        assert_eq!(component_of_key(p, b"nifi/components/"), None);
        assert_eq!(component_of_key(p, b"other"), None);
        assert_eq!(component_of_key("", b"nifi/components/abc"), None);
        assert_eq!(component_of_path("/nifi/components/abc"), Some("abc"));
        assert_eq!(component_of_path("/components/abc"), Some("abc"));
        assert_eq!(component_of_path("/nifi/components"), None);
        assert_eq!(component_of_path("/nifi/other/abc"), None);
    }
}
