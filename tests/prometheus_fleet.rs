//! A fleet you can watch: a real Prometheus (1 s scrapes, `deploy/prometheus/statemirror-rules.yml`
//! loaded) scraping three real sidecar processes in front of one leader and one follower
//! redis-server. Checks the replication metrics through Prometheus's HTTP API, that every
//! metric the Grafana dashboard (`deploy/grafana/statemirror.json`) queries exists in a real
//! sidecar's `/metrics`, and that the alert rules evaluate without errors against real series
//! (and the out-of-sync alert goes pending for the one sidecar whose follower refused a write).
//!
//! Needs the `prometheus` binary (Debian package `prometheus`, installed by
//! `scripts/install-deps.sh`): the test fails, it does not skip, when it is missing.
mod common;

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use redis::AsyncCommands;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The `prometheus` binary on `PATH`, or a failure saying how to get it.
fn prometheus_bin() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the `prometheus` binary is not on PATH: this test runs a real Prometheus. \
                 Run scripts/install-deps.sh (installs the Debian package `prometheus`)"
            )
        })
}

/// A child process SIGKILLed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill(); // SIGKILL
        let _ = self.0.wait();
    }
}

/// A real Prometheus server on 127.0.0.1 with its TSDB in a temporary directory; killed on
/// drop.
struct Prometheus {
    _proc: Proc,
    base: String,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (host:port of admin APIs) as job `statemirror`
    /// every second, with `rules` loaded, and waits (bounded) until it is ready.
    async fn start(targets: &[String], rules: &Path) -> Prometheus {
        let bin = prometheus_bin();
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        let log = dir.path().join("prometheus.log");
        let list = targets
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
                 rule_files:\n  - \"{}\"\n\
                 scrape_configs:\n  - job_name: statemirror\n    static_configs:\n      - targets: [{list}]\n",
                rules.display()
            ),
        )
        .expect("write prometheus.yml");
        for _ in 0..3 {
            let port = free_port();
            let child = Command::new(&bin)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--log.level=warn")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log file"))
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
            let mut proc = Proc(child);
            let base = format!("http://127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut exited = false;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = proc.0.try_wait() {
                    exited = true; // port taken between free_port and bind? try another
                    break;
                }
                if let Ok((200, _)) = statemirror::admin::client::request(
                    &base,
                    hyper::Method::GET,
                    "/-/ready",
                    None,
                    Duration::from_secs(2),
                )
                .await
                {
                    return Prometheus {
                        _proc: proc,
                        base,
                        dir,
                    };
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if !exited {
                panic!(
                    "prometheus did not become ready within 20 s; its log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        }
        panic!(
            "prometheus exited three times; its last log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET path` on the HTTP API; the `data` of a `"status": "success"` answer.
    async fn api(&self, path: &str) -> Result<Value, String> {
        let (code, body) = statemirror::admin::client::request(
            &self.base,
            hyper::Method::GET,
            path,
            None,
            Duration::from_secs(5),
        )
        .await
        .map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if code != 200 || v["status"] != "success" {
            return Err(format!("{path}: HTTP {code}: {body}"));
        }
        Ok(v["data"].clone())
    }

    /// An instant query's result vector.
    async fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let d = self
            .api(&format!("/api/v1/query?query={}", encode(promql)))
            .await?;
        Ok(d["result"].as_array().cloned().unwrap_or_default())
    }
}

/// Percent-encodes a query-string value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A sample's value.
fn value(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Metric names in Prometheus text exposition.
fn names_in(text: &str) -> HashSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// Metric names a PromQL expression selects: every `statemirror_*` identifier, and any other
/// identifier followed by a `{…}` selector (`up{…}`). Label matchers, quoted strings and
/// `by (…)` lists are skipped (the dashboard writes every selector with a matcher).
fn metric_names(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut depth) = (0, 0);
    while i < chars.len() {
        let c = chars[i];
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            '"' => {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
            }
            c if depth == 0 && (c.is_ascii_alphabetic() || c == '_' || c == ':') => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let ident: String = chars[start..i].iter().collect();
                let next = chars[i..].iter().find(|c| !c.is_whitespace());
                if ident.starts_with("statemirror_") || next == Some(&'{') {
                    out.push(ident);
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Every PromQL expression in the dashboard: panel targets (rows included) and query
/// variables.
fn dashboard_exprs(d: &Value) -> Vec<String> {
    fn panels(list: &Value, out: &mut Vec<String>) {
        for p in list.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push(e.to_string());
                }
            }
            panels(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&d["panels"], &mut out);
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            let q = v["query"]["query"].as_str().or(v["query"].as_str());
            out.push(q.expect("query variable has a query").to_string());
        }
    }
    out
}

/// Rule names (`alert:` / `record:`) in the rules file.
fn rule_names(rules: &str) -> BTreeSet<String> {
    rules
        .lines()
        .filter_map(|l| {
            let l = l.trim().strip_prefix("- ")?;
            l.strip_prefix("alert:")
                .or_else(|| l.strip_prefix("record:"))
                .map(|n| n.trim().to_string())
        })
        .collect()
}

/// `GET path` on a sidecar's admin API, with the token it generated (`/verify` needs it).
async fn get(base: &str, path: &str) -> (u16, String) {
    statemirror::admin::client::request(
        base,
        hyper::Method::GET,
        path,
        statemirror::admin::client::discover_token(base).as_deref(),
        Duration::from_secs(10),
    )
    .await
    .unwrap_or_else(|e| panic!("GET {base}{path}: {e}"))
}

async fn sidecar_metrics(p: &BinProxy) -> String {
    let (code, body) = get(&p.admin, "/metrics").await;
    assert_eq!(code, 200, "{body}");
    body
}

/// Waits (at most 15 s) until `name` has a series in `p`'s `/metrics`.
async fn wait_metric(p: &BinProxy, name: &str) {
    eventually(Duration::from_secs(15), || async {
        let (_, body) = get(&p.admin, "/metrics").await;
        if names_in(&body).contains(name) {
            Ok(())
        } else {
            Err(format!("{name} not in {}'s /metrics", p.admin))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_scrapes_three_sidecars_dashboard_and_rules_match_real_metrics() {
    prometheus_bin(); // fail first, clearly, when Prometheus is missing
    let leader = RedisServer::start();
    // One database only: a write to database 3 is refused by the follower for good, which
    // flags that sidecar's follower out of sync (a real reason for an alert to go pending).
    let follower = RedisServer::start_with(&["--databases", "1"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sidecars = Vec::new();
    for i in 0..3 {
        let (port, admin_port) = (free_port(), free_port());
        let cfg = dir.path().join(format!("sidecar{i}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n[log]\nlevel = \"warn\"\n\
                 [redis]\nlisten = \"127.0.0.1:{port}\"\nleader = \"{}\"\nfollower = \"{}\"\n\
                 health_interval_ms = 200\nconnect_timeout_ms = 500\n\
                 [replication]\nretry_max_backoff_ms = 300\napply_timeout_ms = 1000\n",
                leader.url(),
                follower.url()
            ),
        )
        .expect("write config");
        let admin = format!("http://127.0.0.1:{admin_port}");
        let url = format!("redis://127.0.0.1:{port}");
        sidecars.push(BinProxy::start(&cfg, &admin, &url).await);
    }
    let instances: Vec<String> = sidecars
        .iter()
        .map(|p| p.admin.trim_start_matches("http://").to_string())
        .collect();
    let prom = Prometheus::start(
        &instances,
        &repo_file("deploy/prometheus/statemirror-rules.yml"),
    )
    .await;

    // Every sidecar is a healthy scrape target.
    eventually(Duration::from_secs(20), || async {
        let up = prom.query("up{job=\"statemirror\"} == 1").await?;
        if up.len() == 3 {
            Ok(())
        } else {
            Err(format!(
                "up == 1 for {} of 3 targets: {up:?}; prometheus log: {}",
                up.len(),
                prom.log()
            ))
        }
    })
    .await;

    // One queue-depth series per sidecar, told apart by `instance`.
    let depth = eventually(Duration::from_secs(10), || async {
        let r = prom
            .query("statemirror_mirror_queue_depth{protocol=\"redis\"}")
            .await?;
        if r.len() == 3 {
            Ok(r)
        } else {
            Err(format!("{} queue depth series: {r:?}", r.len()))
        }
    })
    .await;
    let seen: BTreeSet<String> = depth
        .iter()
        .map(|s| s["metric"]["instance"].as_str().unwrap_or("").to_string())
        .collect();
    let expected: BTreeSet<String> = instances.iter().cloned().collect();
    assert_eq!(seen, expected, "one series per sidecar: {depth:?}");

    // Writes through sidecar 0 raise its mirrored-writes counter as Prometheus sees it.
    let s0 = &instances[0];
    let mirrored =
        format!("statemirror_mirrored_writes_total{{instance=\"{s0}\",protocol=\"redis\"}}");
    let before = eventually(Duration::from_secs(10), || async {
        let r = prom.query(&mirrored).await?;
        r.first().map(value).ok_or(format!("no {mirrored} yet"))
    })
    .await;
    let mut c = client(&sidecars[0].url).await;
    for i in 0..20 {
        let _: () = c.set(format!("fleet:{i}"), i).await.expect("SET");
    }
    eventually(Duration::from_secs(15), || async {
        let v = prom
            .query(&mirrored)
            .await?
            .first()
            .map(value)
            .unwrap_or(f64::NAN);
        if v >= before + 20.0 {
            Ok(())
        } else {
            Err(format!("{mirrored} = {v}, was {before}"))
        }
    })
    .await;

    // Make the event-driven series exist, each on one sidecar, so the dashboard check below
    // sees every metric a real fleet can show.
    // A verification (sidecar 1): verify_differences, verify_runs_total, verify_last_run….
    let (code, body) = get(&sidecars[1].admin, "/verify").await;
    assert_eq!(code, 200, "GET /verify: {body}");
    wait_metric(&sidecars[1], "statemirror_verify_differences").await;
    // A client sending garbage (sidecar 1): client_errors_total.
    let mut raw = tokio::net::TcpStream::connect(sidecars[1].url.trim_start_matches("redis://"))
        .await
        .expect("connect");
    raw.write_all(b"*x\r\n").await.expect("write");
    let mut buf = [0u8; 256];
    let _ = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf)).await;
    wait_metric(&sidecars[1], "statemirror_client_errors_total").await;
    // A hung follower (sidecar 0): mirror_failures_total{reason="timeout"}, then it drains.
    {
        let _frozen = Frozen::new(follower.pid());
        let _: () = c.set("fleet:frozen", 1).await.expect("SET");
        wait_metric(&sidecars[0], "statemirror_mirror_failures_total").await;
    }
    // A write the follower refuses for good (sidecar 2): mirror_refused_total, out of sync.
    let mut c2 = client(&format!("{}/3", sidecars[2].url)).await;
    let _: () = c2.set("fleet:db3", 1).await.expect("SET in db 3");
    wait_metric(&sidecars[2], "statemirror_mirror_refused_total").await;

    // The dashboard: importable JSON with the variables, and only real metric names.
    let text =
        std::fs::read_to_string(repo_file("deploy/grafana/statemirror.json")).expect("dashboard");
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(
        vars.contains(&"datasource") && vars.contains(&"instance"),
        "variables: {vars:?}"
    );
    let exprs = dashboard_exprs(&dash);
    assert!(exprs.len() > 20, "{} expressions", exprs.len());
    let mut exposed = HashSet::new();
    for p in &sidecars {
        exposed.extend(names_in(&sidecar_metrics(p).await));
    }
    let prom_names: HashSet<String> = prom
        .api("/api/v1/label/__name__/values")
        .await
        .expect("names")
        .as_array()
        .expect("name list")
        .iter()
        .filter_map(|n| n.as_str().map(str::to_string))
        .collect();
    let mut used = BTreeSet::new();
    let mut missing = Vec::new();
    for e in &exprs {
        let names = metric_names(e);
        assert!(!names.is_empty(), "no metric in dashboard expression {e:?}");
        for n in names {
            let real = if n.starts_with("statemirror_") {
                exposed.contains(&n)
            } else {
                prom_names.contains(&n)
            };
            if !real {
                missing.push(format!("{n} (in {e:?})"));
            }
            used.insert(n);
        }
    }
    assert!(
        missing.is_empty(),
        "dashboard metrics no sidecar exposes: {missing:#?}"
    );
    for must in [
        "statemirror_mirror_lag_seconds",
        "statemirror_mirror_queue_depth",
        "statemirror_mirror_queue_bytes",
        "statemirror_mirror_refused_total",
        "statemirror_mirror_dropped_writes_total",
        "statemirror_follower_in_sync",
        "statemirror_maintenance",
        "statemirror_backend_up",
        "statemirror_resync_copied_keys_total",
        "statemirror_verify_differences",
        "statemirror_requests_total",
        "statemirror_leader_request_duration_seconds_bucket",
    ] {
        assert!(used.contains(must), "the dashboard does not show {must}");
    }

    // The rules: every group and rule loaded, evaluated, healthy.
    let rules_text = std::fs::read_to_string(repo_file("deploy/prometheus/statemirror-rules.yml"))
        .expect("rules");
    let want = rule_names(&rules_text);
    assert!(want.len() >= 10, "rules: {want:?}");
    eventually(Duration::from_secs(15), || async {
        let d = prom.api("/api/v1/rules").await?;
        let mut ok = BTreeSet::new();
        let mut pending = Vec::new();
        for g in d["groups"].as_array().into_iter().flatten() {
            for r in g["rules"].as_array().into_iter().flatten() {
                let name = r["name"].as_str().unwrap_or("").to_string();
                match r["health"].as_str() {
                    Some("ok") => {
                        ok.insert(name);
                    }
                    Some("err") => panic!("rule {name} fails: {}", r["lastError"]),
                    h => pending.push(format!("{name}: {h:?}")),
                }
            }
        }
        if ok == want {
            Ok(())
        } else {
            Err(format!(
                "healthy {ok:?}, want {want:?}, not yet: {pending:?}"
            ))
        }
    })
    .await;

    // The alerts, on real series: sidecar 2's follower is out of sync (pending: `for: 10m`),
    // no other sidecar's is, and no sidecar is missing.
    let s2 = instances[2].clone();
    eventually(Duration::from_secs(15), || async {
        let d = prom.api("/api/v1/alerts").await?;
        let alerts = d["alerts"].as_array().cloned().unwrap_or_default();
        let named = |n: &str| -> Vec<&Value> {
            alerts
                .iter()
                .filter(|a| a["labels"]["alertname"] == n)
                .collect()
        };
        let oos = named("StatemirrorFollowerOutOfSync");
        let oos_instances: Vec<&str> = oos
            .iter()
            .filter_map(|a| a["labels"]["instance"].as_str())
            .collect();
        let missing =
            named("StatemirrorSidecarsMissing").len() + named("StatemirrorSidecarDown").len();
        if oos_instances == [s2.as_str()] && oos[0]["state"] == "pending" && missing == 0 {
            Ok(())
        } else {
            Err(format!("alerts: {alerts:?}"))
        }
    })
    .await;
}
