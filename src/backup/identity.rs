//! `restore --identity FILE`: a backup of region 1's leader restored into region 2's backend
//! under region 2's component ids (README "State identity"). Only keys / znodes in NiFi's
//! layout are renamed (`redis.nifi_key_prefix`, `…/components/<id>`), with the NiFi
//! summary's component id.

use super::{Record, RedisKey};
use crate::nifi::identity::IdentityMap;

/// Renames every record in NiFi's layout; returns how many were renamed.
pub fn apply(
    records: &mut [Record],
    map: &IdentityMap,
    nifi_prefix: &str,
) -> Result<usize, String> {
    let mut n = 0;
    for r in records.iter_mut() {
        match r {
            Record::RedisKey(k) => {
                let bytes = k.key_bytes()?;
                if let std::borrow::Cow::Owned(m) = map.map_key(nifi_prefix, &bytes) {
                    rename_key(k, &m);
                    if let Some(nr) = k.nifi.as_mut() {
                        nr.component = map.to_follower(&nr.component).into_owned();
                    }
                    n += 1;
                }
            }
            Record::Znode(z) => {
                if let std::borrow::Cow::Owned(p) = map.map_path(&z.path) {
                    z.path = p;
                    if let Some(nr) = z.nifi.as_mut() {
                        nr.component = map.to_follower(&nr.component).into_owned();
                    }
                    n += 1;
                }
            }
        }
    }
    Ok(n)
}

fn rename_key(k: &mut RedisKey, to: &[u8]) {
    match std::str::from_utf8(to) {
        Ok(s) => {
            k.key = s.to_string();
            k.key_b64 = None;
        }
        Err(_) => {
            k.key = String::from_utf8_lossy(to).into_owned();
            k.key_b64 = Some(super::b64(to));
        }
    }
}
