//! The results tables.

use super::*;

pub(crate) fn met(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "**NO**"
    }
}

pub(crate) fn report(out: &Outcome) {
    println!("\n## Results\n");
    println!("| measurement | result | target | met |");
    println!("|---|---|---|---|");
    for (protocol, label, unit, target) in [
        ("redis", "Redis", "keys", REDIS_RESYNC_TARGET),
        ("zookeeper", "ZooKeeper", "znodes", ZK_RESYNC_TARGET),
    ] {
        let rows: Vec<&ResyncRow> = out
            .resync
            .iter()
            .filter(|r| r.protocol == protocol)
            .collect();
        if rows.is_empty() {
            continue;
        }
        let expected = rows[0].expected;
        let good: Vec<&&ResyncRow> = rows
            .iter()
            .filter(|r| r.last.outcome == "completed" && r.last.copied > 0)
            .collect();
        if good.is_empty() {
            println!(
                "| {label} resync, {expected} {unit} | n/a: no run copied anything (copied = 0; \
                 follower has {} {unit}) | ≥ {target:.0} {unit}/s | **NO** |",
                rows.iter().map(|r| r.follower_count).max().unwrap_or(0)
            );
            continue;
        }
        let rate = median(&good.iter().map(|r| r.rate()).collect::<Vec<_>>());
        let duration = median(
            &good
                .iter()
                .map(|r| r.last.duration_seconds)
                .collect::<Vec<_>>(),
        );
        let wall = median(
            &good
                .iter()
                .map(|r| r.wall.as_secs_f64())
                .collect::<Vec<_>>(),
        );
        let wall_rate = median(&good.iter().map(|r| r.wall_rate()).collect::<Vec<_>>());
        println!(
            "| {label} resync, {expected} {unit}: copied / duration_seconds (median of {}) | \
             {rate:.0} {unit}/s ({duration:.3} s) | ≥ {target:.0} {unit}/s | {} |",
            good.len(),
            met(rate >= target)
        );
        println!(
            "| {label} resync: wall time, process start → in sync (median) | {wall:.3} s \
             ({wall_rate:.0} {unit}/s) | | |"
        );
    }
    for r in &out.lag {
        let label = r.label();
        let p99 = r.p(0.99);
        println!(
            "| {label} mirror lag p50 / p99 / max ({} probes, {:.0} s) | {:.2} / {:.2} / {:.2} ms \
             | p99 ≤ {LAG_P99_TARGET_MS:.0} ms | {} |",
            r.probe.lags_ms.len(),
            r.probe.elapsed.as_secs_f64(),
            r.p(0.50),
            p99,
            r.max(),
            met(!r.probe.lags_ms.is_empty() && r.probe.timeouts == 0 && p99 <= LAG_P99_TARGET_MS)
        );
        println!(
            "| {label} background writes achieved / asked | {:.0} / {:.0} per s | | |",
            r.load.rate(),
            r.asked_rate
        );
        println!(
            "| {label} `{LAG_GAUGE}` max ({} samples) | {:.1} ms | | |",
            r.gauge.len(),
            r.gauge_max_ms()
        );
    }

    if !out.resync.is_empty() {
        println!("\n## Resync runs\n");
        println!(
            "| protocol | run | outcome | resyncs | copied | scanned | deleted | duration_seconds | copied/s | wall s | wall /s | follower has |"
        );
        println!("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &out.resync {
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {:.3} | {:.0} | {:.3} | {:.0} | {} of {} |",
                r.protocol,
                r.run,
                r.last.outcome,
                r.resyncs_total,
                r.last.copied,
                r.last.scanned,
                r.last.deleted,
                r.last.duration_seconds,
                r.rate(),
                r.wall.as_secs_f64(),
                r.wall_rate(),
                r.follower_count,
                r.expected
            );
        }
    }
    if !out.lag.is_empty() {
        println!("\n## Lag runs\n");
        println!(
            "| protocol | probes | p50 ms | p90 ms | p99 ms | max ms | timeouts | polls/probe | poll p99 ms | probe write p50 / p99 ms | background /s (asked) | gauge max ms | drained | in sync | markers leader / follower |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|---|---|");
        for r in &out.lag {
            let mut w = r.probe.write_ms.clone();
            w.sort_by(|a, b| a.total_cmp(b));
            let mut polls = r.probe.poll_ms.clone();
            polls.sort_by(|a, b| a.total_cmp(b));
            println!(
                "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.1} | {:.2} | {:.2} / {:.2} | {:.0} ({:.0}) | {:.1} | {} | {} | {} / {} |",
                r.label(),
                r.probe.lags_ms.len(),
                r.p(0.50),
                r.p(0.90),
                r.p(0.99),
                r.max(),
                r.probe.timeouts,
                r.probe.polls as f64 / r.probe.written.max(1) as f64,
                percentile(&polls, 0.99),
                percentile(&w, 0.5),
                percentile(&w, 0.99),
                r.load.rate(),
                r.asked_rate,
                r.gauge_max_ms(),
                r.drained,
                r.in_sync,
                r.markers_leader,
                r.markers_follower
            );
        }
        println!(
            "\nlag = reply time of the first follower poll that sees the marker − the marker's \
             acknowledgement through the proxy (overstates by up to one follower round trip)."
        );
    }
    for n in &out.notes {
        println!("\nNOTE: {n}");
    }
}
