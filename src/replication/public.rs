//! What `/status` (scraped, unauthenticated) may show of a problem: never state values, key
//! names, znode paths, command arguments, nor a backend's error text (Redis's `NOPERM` names
//! the key, a script error quotes the script). A problem shows as its category (a fixed word
//! of statemirror's, e.g. `follower_busy`, `noperm`) and the backend error codes its text
//! names (`NOPERM`, `WRONGTYPE`, `BADVERSION`, …, from a fixed list); the full text is
//! logged, which is the operator's. `GET /verify` (authenticated) still lists keys.

/// Error codes that may be shown: Redis error prefixes and ZooKeeper `KeeperException`
/// code names (see `zookeeper::proto::err_name`).
const CODES: &[&str] = &[
    // Redis
    "ERR",
    "WRONGTYPE",
    "NOPERM",
    "NOAUTH",
    "WRONGPASS",
    "NOSCRIPT",
    "OOM",
    "READONLY",
    "LOADING",
    "BUSY",
    "BUSYKEY",
    "MOVED",
    "ASK",
    "EXECABORT",
    "CROSSSLOT",
    "MISCONF",
    "NOREPLICAS",
    "MASTERDOWN",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "NOPROTO",
    "UNKILLABLE",
    "NOTBUSY",
    // ZooKeeper
    "SYSTEMERROR",
    "RUNTIMEINCONSISTENCY",
    "DATAINCONSISTENCY",
    "CONNECTIONLOSS",
    "MARSHALLINGERROR",
    "UNIMPLEMENTED",
    "OPERATIONTIMEOUT",
    "BADARGUMENTS",
    "UNKNOWNSESSION",
    "NEWCONFIGNOQUORUM",
    "RECONFIGINPROGRESS",
    "APIERROR",
    "NONODE",
    "BADVERSION",
    "NOCHILDRENFOREPHEMERALS",
    "NODEEXISTS",
    "NOTEMPTY",
    "SESSIONEXPIRED",
    "INVALIDCALLBACK",
    "INVALIDACL",
    "AUTHFAILED",
    "SESSIONMOVED",
    "NOTREADONLY",
    "EPHEMERALONLOCALSESSION",
    "NOWATCHER",
    "REQUESTTIMEOUT",
    "RECONFIGDISABLED",
    "SESSIONCLOSEDREQUIRESASLAUTH",
    "QUOTAEXCEEDED",
    "THROTTLEDOP",
];

/// The known error codes `text` names (whole words, in order, each once, at most 3).
pub fn codes(text: &str) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for w in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if let Some(c) = CODES.iter().find(|c| **c == w) {
            if !out.contains(c) && out.len() < 3 {
                out.push(c);
            }
        }
    }
    out
}

/// `category`, followed by the codes `detail` names: `noperm (NOPERM)`. `category` must be
/// one of statemirror's fixed words, never data.
pub fn summary(category: &str, detail: &str) -> String {
    let c = codes(detail);
    if c.is_empty() {
        category.to_string()
    } else {
        format!("{category} ({})", c.join(", "))
    }
}

/// An error text of unknown content (a resync's, a check's): its leading category when the
/// text starts with one (`follower: …` → `follower`; lowercase letters, digits, spaces,
/// `_`, `-`, at most 40 characters before the first `:`), else `error`, plus the codes.
pub fn error(text: &str) -> String {
    let head = text.split(':').next().unwrap_or("").trim();
    let safe = !head.is_empty()
        && head.len() <= 40
        && text.contains(':')
        && head
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b" _-".contains(&b));
    summary(if safe { head } else { "error" }, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_categories_and_codes_only() {
        let e = "SET nifi/components/SECRET-KEY: NOPERM User nifi has no permissions to access the 'nifi/components/SECRET-KEY' key";
        assert_eq!(summary("noperm", e), "noperm (NOPERM)");
        assert_eq!(error(e), "error (NOPERM)");
        assert_eq!(error("follower: connection refused"), "follower");
        assert_eq!(
            error("follower: BADVERSION on /nifi/x"),
            "follower (BADVERSION)"
        );
        assert_eq!(error("mykey secretvalue has no colon"), "error");
        assert_eq!(
            summary("follower_busy", "LOADING Redis is loading"),
            "follower_busy (LOADING)"
        );
        // A key that looks like a code is a code, not a leak of anything else.
        assert_eq!(codes("ERRATIC ERR x ERR"), vec!["ERR"]);
    }
}
