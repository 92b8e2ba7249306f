//! Whether the cluster is frozen, as a backup needs it to be for a consistent snapshot.
//!
//! With a `[cluster]` section: the cluster-wide freeze state in the leader backend (the same
//! store, chosen the same way, as the sidecars use: the Redis leader when there is a
//! `[redis]` section, else the ZooKeeper leader). Without one: the sidecar of this config,
//! asked through its admin API (`GET /maintenance`, what `statemirror maintenance status`
//! shows) — a single sidecar frozen locally is the whole "cluster".

use std::sync::Arc;
use std::time::Duration;

use crate::config::Resolved;
use crate::replication::cluster::ClusterStore;

/// Whether writes are frozen, and how that was found out (for the header and messages).
#[derive(Debug, Clone)]
pub struct FreezeCheck {
    pub frozen: bool,
    pub how: String,
}

/// Reads the freeze state; `Err` when the cluster state cannot be read at all.
pub async fn check(resolved: &Resolved) -> Result<FreezeCheck, String> {
    match store(resolved) {
        Some(store) => {
            let st = store.read().await.map_err(|e| {
                format!(
                    "cannot read the cluster freeze state from the {} leader: {e}",
                    store.backend()
                )
            })?;
            let how = if st.frozen {
                format!(
                    "cluster frozen (epoch {}, by {:?}, {} leader)",
                    st.epoch,
                    st.by,
                    store.backend()
                )
            } else {
                format!(
                    "the cluster-wide maintenance state in the {} leader says not frozen \
                     (epoch {})",
                    store.backend(),
                    st.epoch
                )
            };
            Ok(FreezeCheck {
                frozen: st.frozen,
                how,
            })
        }
        None => Ok(admin(resolved).await),
    }
}

/// The cluster store for this config, as `crate::start` builds it (`None` without
/// `[cluster]`).
fn store(resolved: &Resolved) -> Option<Arc<dyn ClusterStore>> {
    let cc = resolved.config.cluster.as_ref()?;
    let timeout = |ms: u64| Duration::from_millis(ms.max(1000));
    match (&resolved.redis, &resolved.config.redis) {
        (Some(r), Some(rc)) => Some(Arc::new(crate::redis::cluster::RedisClusterStore::new(
            r.leader.clone(),
            timeout(rc.connect_timeout_ms),
            cc.member_ttl_ms,
        ))),
        _ => {
            let (z, zc) = (
                resolved.zookeeper.as_ref()?,
                resolved.config.zookeeper.as_ref()?,
            );
            Some(Arc::new(crate::zookeeper::cluster::ZkClusterStore::new(
                z,
                zc,
                timeout(zc.connect_timeout_ms),
                cc.member_ttl_ms,
            )))
        }
    }
}

/// Without `[cluster]`: the config's own sidecar, through its admin API.
async fn admin(resolved: &Resolved) -> FreezeCheck {
    let base = format!("http://{}", resolved.admin_listen);
    let token = resolved
        .admin_token
        .as_ref()
        .map(|t| t.expose().to_string());
    let r = crate::admin::client::request(
        &base,
        hyper::Method::GET,
        "/maintenance",
        token.as_deref(),
        Duration::from_secs(5),
    )
    .await;
    match r {
        Ok((200, body)) => {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let frozen = v["frozen"] == true;
            FreezeCheck {
                frozen,
                how: if frozen {
                    format!("the sidecar at {base} reports maintenance on (no [cluster] section)")
                } else {
                    format!("the sidecar at {base} reports maintenance off (no [cluster] section)")
                },
            }
        }
        Ok((status, _)) => FreezeCheck {
            frozen: false,
            how: format!(
                "no [cluster] section, and the sidecar at {base} answered HTTP {status} to \
                 GET /maintenance"
            ),
        },
        Err(e) => FreezeCheck {
            frozen: false,
            how: format!("no [cluster] section, and no sidecar answered: {e}"),
        },
    }
}
