//! `statemirror migrate`: the offline copy between providers (NiFi stopped, or at least not
//! writing), its `--dry-run`, and `migrate verify`.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use super::copy::{self, IdMap, Totals, BATCH};
use super::endpoint::Endpoint;
use super::provider::Provider;
use super::verify::{self, VerifyReport};

pub struct Options {
    pub from: Endpoint,
    pub to: Endpoint,
    pub map: IdMap,
    pub dry_run: bool,
    pub force: bool,
    pub verify_only: bool,
    pub timeout: Duration,
}

/// What the command prints (JSON, or text) and its exit code.
pub struct Outcome {
    pub code: u8,
    pub report: serde_json::Value,
    pub text: String,
}

/// Exit codes: 0 done and equal; 1 refused, failed components or differences; 69 a
/// backend cannot be read.
pub const EXIT_DIFFERENT: u8 = 1;
pub const EXIT_UNAVAILABLE: u8 = 69;

fn unavailable(e: String) -> Outcome {
    Outcome {
        code: EXIT_UNAVAILABLE,
        report: json!({ "error": e }),
        text: format!("error: {e}"),
    }
}

fn refused(msg: String) -> Outcome {
    Outcome {
        code: EXIT_DIFFERENT,
        report: json!({ "refused": msg }),
        text: format!("refused: {msg}"),
    }
}

#[derive(Serialize)]
struct DryRun {
    from: String,
    to: String,
    components: usize,
    entries: u64,
    destination_components: usize,
    would_refuse: bool,
    /// Per component (source id → destination id): entries, or the read error.
    per_component: Vec<serde_json::Value>,
}

pub async fn run(o: Options) -> Outcome {
    if o.from == o.to {
        return refused("--from and --to are the same place".into());
    }
    let mut from = Provider::new(&o.from, o.timeout, None);
    let mut to = Provider::new(&o.to, o.timeout, None);
    if o.verify_only {
        return match verify::verify(&mut from, &mut to, &o.map).await {
            Ok(rep) => verified(&o, rep),
            Err(e) => unavailable(e),
        };
    }
    let ids = match from.list().await {
        Ok(v) => v,
        Err(e) => return unavailable(e),
    };
    let existing = match to.list().await {
        Ok(v) => v,
        Err(e) => return unavailable(e),
    };
    if o.dry_run {
        return dry_run(&o, &mut from, &ids, existing.len()).await;
    }
    if !existing.is_empty() && !o.force {
        return refused(format!(
            "{} already holds NiFi state for {} component(s) (e.g. {}); nothing was written. \
             Use --force to replace the destination's NiFi state with the source's",
            o.to,
            existing.len(),
            existing[0]
        ));
    }
    if existing.is_empty() {
        to.expect_empty();
    }
    let started = Instant::now();
    let mut totals = Totals::default();
    // With --force, components only the destination holds are deleted: afterwards it holds
    // exactly the source's state (what NiFi's own migration assumes of an empty provider).
    let mapped: std::collections::BTreeSet<String> = ids.iter().map(|i| (o.map)(i)).collect();
    let extra: Vec<String> = existing
        .into_iter()
        .filter(|d| !mapped.contains(d))
        .collect();
    if let Err(e) = copy::copy_ids(&mut from, &mut to, &ids, &o.map, &mut totals).await {
        return unavailable(e);
    }
    for chunk in extra.chunks(BATCH) {
        match to.delete_many(chunk).await {
            Ok(r) => {
                for (id, r) in chunk.iter().zip(r) {
                    match r {
                        Ok(_) => totals.deleted += 1,
                        Err(e) => totals.fail(id, &e),
                    }
                }
            }
            Err(e) => return unavailable(e),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let rep = match verify::verify(&mut from, &mut to, &o.map).await {
        Ok(r) => r,
        Err(e) => return unavailable(format!("copied, but cannot verify: {e}")),
    };
    let rate = totals.components as f64 / secs.max(1e-6);
    let ok = totals.failed == 0 && rep.total_differences() == 0;
    let mismatches: Vec<&str> = rep
        .differences
        .iter()
        .map(|d| d.component.as_str())
        .collect();
    let text = format!(
        "migrated {} -> {}\n  components copied: {}\n  entries: {}\n  bytes: {}\n  deleted at the destination: {}\n  failed: {}{}\n  seconds: {:.3}\n  components/s: {:.0}\n  verify: {} equal, {} differences{}",
        o.from,
        o.to,
        totals.components,
        totals.entries,
        totals.bytes,
        totals.deleted,
        totals.failed,
        if totals.errors.is_empty() { String::new() } else { format!("\n    {}", totals.errors.join("\n    ")) },
        secs,
        rate,
        rep.equal,
        rep.total_differences(),
        if mismatches.is_empty() { String::new() } else { format!(" ({})", mismatches.join(", ")) },
    );
    Outcome {
        code: if ok { 0 } else { EXIT_DIFFERENT },
        report: json!({
            "from": o.from.to_string(),
            "to": o.to.to_string(),
            "copy": totals,
            "seconds": secs,
            "components_per_second": rate,
            "verify": rep,
            "total_differences": rep.total_differences(),
        }),
        text,
    }
}

fn verified(o: &Options, rep: VerifyReport) -> Outcome {
    let n = rep.total_differences();
    let mut text = format!(
        "verify {} -> {}: {} components compared, {} equal, {} differences",
        o.from, o.to, rep.compared, rep.equal, n
    );
    for d in &rep.differences {
        text.push_str(&format!(
            "\n  {} {}: {}",
            d.kind,
            d.component,
            d.detail.join(", ")
        ));
    }
    Outcome {
        code: if n == 0 { 0 } else { EXIT_DIFFERENT },
        report: json!({
            "from": o.from.to_string(),
            "to": o.to.to_string(),
            "verify": rep,
            "total_differences": n,
        }),
        text,
    }
}

async fn dry_run(o: &Options, from: &mut Provider, ids: &[String], existing: usize) -> Outcome {
    let mut per = Vec::with_capacity(ids.len());
    let mut entries = 0u64;
    let mut text = String::new();
    for chunk in ids.chunks(BATCH) {
        let read = match from.get_many(chunk).await {
            Ok(r) => r,
            Err(e) => return unavailable(e),
        };
        for (id, r) in chunk.iter().zip(read) {
            let to_id = (o.map)(id);
            let v = match r {
                Ok(Some(st)) => {
                    entries += verify::entry_count(&st) as u64;
                    text.push_str(&format!(
                        "\n  {id} -> {to_id}: {} entries",
                        st.entries.len()
                    ));
                    json!({"component": id, "to": to_id, "entries": st.entries.len()})
                }
                Ok(None) => continue,
                Err(e) => {
                    text.push_str(&format!("\n  {id}: cannot be read: {e}"));
                    json!({"component": id, "error": e})
                }
            };
            per.push(v);
        }
    }
    let would_refuse = existing > 0 && !o.force;
    let head = format!(
        "dry run: would copy {} components ({} entries) from {} to {}{}; nothing written",
        per.len(),
        entries,
        o.from,
        o.to,
        if would_refuse {
            format!(" — but the destination already holds {existing} components, so it would be refused without --force")
        } else {
            String::new()
        }
    );
    let report = DryRun {
        from: o.from.to_string(),
        to: o.to.to_string(),
        components: per.len(),
        entries,
        destination_components: existing,
        would_refuse,
        per_component: per,
    };
    Outcome {
        code: 0,
        report: serde_json::to_value(report).unwrap_or_default(),
        text: head + &text,
    }
}
