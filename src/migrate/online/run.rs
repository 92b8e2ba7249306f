//! The copier task: serves the dirty set, runs full copies and the settle pass (see the
//! module above for why this order is safe).

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::counter;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::guard::{Leader, LeaderGuard};
use super::{Migration, METRIC_FULL_COPIES};
use crate::migrate::copy::{self, IdMap, Totals, BATCH};
use crate::migrate::provider::Provider;

/// Copies `ids` from the leader to the destination. Between the read and the write the
/// leader is checked ([`guard`]): a read from a leader that restarted (maybe empty) is
/// never written, above all not as "absent on the leader" = deleted at the destination.
async fn copy_now(
    m: &Migration,
    c: &mut Copier,
    ids: &[String],
    map: &IdMap,
) -> Result<Totals, String> {
    let mut t = Totals::default();
    for chunk in ids.chunks(BATCH) {
        let read = c.from.get_many(chunk).await?;
        match c.guard.check().await {
            Ok(()) => {}
            Err(Leader::Unavailable(e)) => return Err(e),
            Err(Leader::Changed(e)) => {
                m.halt(&e);
                return Err(e);
            }
        }
        copy::write_read(&mut c.to, chunk, read, map, &mut t).await?;
    }
    Ok(t)
}

/// What the migration copies with: the leader, the destination, the leader's guard.
pub struct Copier {
    pub from: Provider,
    pub to: Provider,
    pub guard: LeaderGuard,
}

/// Serves the dirty set: one batch. False when there was nothing to do.
async fn serve_dirty(m: &Migration, c: &mut Copier, map: &IdMap) -> bool {
    let ids = m.take(BATCH);
    if ids.is_empty() {
        m.publish();
        return false;
    }
    let r = copy_now(m, c, &ids, map).await;
    let failed = r.is_err();
    m.settle(ids, r, true);
    if failed {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    true
}

/// One full copy: every component either side holds, `pace` per second, the dirty set
/// served between pages so live writes do not wait for it.
async fn full_copy(
    m: &Migration,
    c: &mut Copier,
    map: &IdMap,
    stop: &CancellationToken,
    record: bool,
) -> Result<serde_json::Value, String> {
    let started = Instant::now();
    let mut ids: BTreeSet<String> = c.from.list().await?.into_iter().collect();
    // Destination-only components: copied as "absent on the leader" = deleted (each read
    // is checked by `copy_now`). Without an identity map the ids are the same on both sides.
    ids.extend(c.to.list().await?);
    let ids: Vec<String> = ids.into_iter().collect();
    let mut totals = Totals::default();
    for page in ids.chunks(BATCH) {
        if stop.is_cancelled() {
            return Err("stopped".into());
        }
        let t0 = Instant::now();
        m.lock().set_in_flight(page.len());
        let r = copy_now(m, c, page, map).await;
        let page_ids = page.to_vec();
        match r {
            Ok(t) => {
                totals.components += t.components;
                totals.deleted += t.deleted;
                totals.entries += t.entries;
                totals.failed += t.failed;
                m.settle(page_ids, Ok(t), record);
            }
            Err(e) => {
                m.lock().set_in_flight(0);
                return Err(e);
            }
        }
        while !m.is_halted() && serve_dirty(m, c, map).await {}
        let want = Duration::from_secs_f64(page.len() as f64 / m.pace as f64);
        if let Some(rest) = want.checked_sub(t0.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
    Ok(json!({
        "components": totals.components,
        "deleted": totals.deleted,
        "entries": totals.entries,
        "failed": totals.failed,
        "seconds": started.elapsed().as_secs_f64(),
    }))
}

/// Once frozen and idle: copies again every component copied since the last settle pass
/// (all of them after an overflow). False when there was nothing to settle.
async fn settle_pass(m: &Migration, c: &mut Copier, map: &IdMap, stop: &CancellationToken) -> bool {
    let (ids, all) = {
        let mut st = m.lock();
        let all = std::mem::take(&mut st.settle_all);
        (std::mem::take(&mut st.written), all)
    };
    let n = ids.len();
    if all {
        if let Err(e) = full_copy(m, c, map, stop, false).await {
            m.error(&format!("settle pass: {e}"));
            m.lock().settle_all = true;
        }
    } else if ids.is_empty() {
        return false;
    } else {
        let ids: Vec<String> = ids.into_iter().collect();
        for chunk in ids.chunks(BATCH) {
            m.lock().set_in_flight(chunk.len());
            // A failed batch is dirty again: copied (and remembered) like any other.
            let r = copy_now(m, c, chunk, map).await;
            m.settle(chunk.to_vec(), r, false);
        }
    }
    tracing::info!(
        all,
        components = n,
        "online migration: settle pass done (writes are frozen)"
    );
    m.publish();
    true
}

/// Runs the migration until `stop`.
pub fn spawn(m: Arc<Migration>, mut c: Copier, stop: CancellationToken) {
    tokio::spawn(async move {
        tracing::info!(destination = %m.destination, "online migration started: a full copy runs first");
        // `stop` ends a copy in flight too: a copy to a hung destination lasts until the
        // provider's timeout, and a stopped sidecar's late copy (read before a newer
        // sidecar's full copy) must not land after it. Dropping the copy drops its
        // connections with it (no reply is read into a later request).
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = run(&m, &mut c, &stop) => {}
        }
        m.lock().set_in_flight(0);
    });
}

async fn run(m: &Migration, c: &mut Copier, stop: &CancellationToken) {
    let map = copy::identity();
    loop {
        if stop.is_cancelled() {
            return;
        }
        if m.is_halted() {
            // Nothing is copied any more; `/status` and the gauges keep saying so.
            m.publish();
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let full = std::mem::take(&mut m.lock().full);
        if full {
            counter!(METRIC_FULL_COPIES, "protocol" => m.source).increment(1);
            match full_copy(m, c, &map, stop, true).await {
                Ok(v) => {
                    tracing::info!(result = %v, "online migration: full copy done");
                    *m.last_full.lock().unwrap_or_else(|p| p.into_inner()) = Some(v);
                    m.full_done.store(true, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "online migration: full copy failed; retrying");
                    *m.last_full.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(json!({ "error": e }));
                    m.error(&format!("full copy: {e}"));
                    m.lock().full = true;
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
            m.publish();
            continue;
        }
        if serve_dirty(m, c, &map).await {
            continue;
        }
        if m.frozen() && settle_pass(m, c, &map, stop).await {
            continue;
        }
        if m.retry_failing() {
            continue;
        }
        let woken = m.wake.notified();
        if !m.is_idle() || m.lock().full {
            continue;
        }
        tokio::select! {
            _ = woken => {}
            // Periodic wake: publishes gauges, notices a freeze (the settle pass) and
            // retries failing components.
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}
