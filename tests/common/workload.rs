//! A mixed Redis workload for fault tests: several connections writing strings, hashes,
//! lists, sets, sorted sets, counters, expiring keys, deletes, `SELECT 1` writes and NiFi's
//! `WATCH`/`MULTI`/`GETSET`/`EXEC` state replace, through whatever address it is given.
//! Errors (a proxy restarting, a leader gone) are counted, never fatal: each task reconnects.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;

pub struct Workload {
    stop: Arc<AtomicBool>,
    pub ok: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Workload {
    /// `tasks` connections to `url`, keys prefixed with `prefix` (so phases can be told apart).
    pub fn start(url: &str, prefix: &str, tasks: usize) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let handles = (0..tasks)
            .map(|t| {
                let (url, prefix) = (url.to_string(), prefix.to_string());
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                tokio::spawn(async move {
                    let mut conn: Option<redis::aio::MultiplexedConnection> = None;
                    let mut i: u64 = 0;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        if conn.is_none() {
                            let c = tokio::time::timeout(Duration::from_secs(2), async {
                                redis::Client::open(url.as_str())
                                    .ok()?
                                    .get_multiplexed_async_connection()
                                    .await
                                    .ok()
                            })
                            .await;
                            match c {
                                Ok(Some(c)) => conn = Some(c),
                                _ => {
                                    failed.fetch_add(1, Ordering::Relaxed);
                                    tokio::time::sleep(Duration::from_millis(50)).await;
                                    continue;
                                }
                            }
                        }
                        let Some(c) = conn.as_mut() else { continue };
                        let r =
                            tokio::time::timeout(Duration::from_secs(3), one_op(c, &prefix, t, i))
                                .await;
                        match r {
                            Ok(Ok(())) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                conn = None;
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                    }
                })
            })
            .collect();
        Workload {
            stop,
            ok,
            failed,
            tasks: handles,
        }
    }

    /// Stops every task and waits for them (each op is bounded by a timeout).
    pub async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// One write chosen by `i`; keys come from a small space so keys are overwritten and deleted.
async fn one_op(
    c: &mut redis::aio::MultiplexedConnection,
    p: &str,
    t: usize,
    i: u64,
) -> redis::RedisResult<()> {
    let k = i % 40;
    match i % 11 {
        0 => c.set(format!("{p}str:{k}"), format!("v{t}-{i}")).await,
        1 => {
            c.hset(format!("{p}hash:{}", k % 8), format!("f{t}"), i)
                .await
        }
        2 => {
            let key = format!("{p}list:{}", k % 5);
            let _: () = c.rpush(&key, i).await?;
            c.ltrim(&key, -20, -1).await
        }
        3 => c.sadd(format!("{p}set:{}", k % 6), i % 50).await,
        4 => {
            c.zadd(
                format!("{p}zset:{}", k % 4),
                format!("m{}", i % 30),
                i as f64,
            )
            .await
        }
        5 => c.incr(format!("{p}counter:{}", k % 3), 1).await,
        6 => c.set_ex(format!("{p}ttl:{k}"), i, 300).await,
        7 => c.del(format!("{p}str:{}", (k + 7) % 40)).await,
        8 => {
            // The same key in database 1.
            let mut pipe = redis::pipe();
            pipe.cmd("SELECT").arg(1).ignore();
            pipe.cmd("SET").arg(format!("{p}db1:{k}")).arg(i).ignore();
            pipe.cmd("SELECT").arg(0).ignore();
            pipe.query_async(c).await
        }
        9 => nifi_replace(c, &format!("nifi/components/{p}c{}", k % 6), t, i).await,
        _ => c.append(format!("{p}app:{}", k % 4), "x").await,
    }
}

/// NiFi's RedisStateProvider replace: WATCH, GET, MULTI, GETSET, EXEC. On a multiplexed
/// connection shared by one task only, so the WATCH belongs to this sequence.
pub async fn nifi_replace(
    c: &mut redis::aio::MultiplexedConnection,
    key: &str,
    t: usize,
    i: u64,
) -> redis::RedisResult<()> {
    let _: () = redis::cmd("WATCH").arg(key).query_async(c).await?;
    let old: Option<String> = c.get(key).await?;
    let version = old
        .as_deref()
        .and_then(|o| serde_json::from_str::<serde_json::Value>(o).ok())
        .and_then(|v| v["version"].as_i64())
        .unwrap_or(-1);
    let new = serde_json::json!({
        "version": version + 1,
        "encodingVersion": 1,
        "stateValues": { "listing.timestamp": i.to_string(), "writer": t.to_string() },
    })
    .to_string();
    let mut pipe = redis::pipe();
    pipe.atomic().cmd("GETSET").arg(key).arg(new).ignore();
    let _: Option<()> = pipe.query_async(c).await?;
    Ok(())
}
