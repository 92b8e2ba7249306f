//! The `statemirror` binary: `check-config` (key paths, secret files, exit codes), `--help`,
//! `recover`'s usage errors and exit codes, and `maintenance` against a proxy running in this
//! process.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_statemirror")
}

fn config_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(name)
}

/// Runs the binary with a hard time limit (it is killed if it overruns).
fn run(args: &[&str]) -> Output {
    let mut child = Command::new(bin())
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn statemirror");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "statemirror {args:?} did not finish within 60 s; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `run` off the async runtime, for tests that also serve a proxy in this process.
async fn run_async(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&refs)
    })
    .await
    .expect("runner thread")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn temp_config(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("tempfile");
    std::io::Write::write_all(&mut f, text.as_bytes()).expect("write config");
    f
}

#[test]
fn check_config_accepts_the_example() {
    let path = config_path("redis.toml");
    let out = run(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("OK"), "{}", stderr(&out));
}

#[test]
fn check_config_reports_an_unknown_key_with_its_path() {
    let f = temp_config(
        "[admin]\nlisten = \"not-an-address\"\n\n[redis]\nlisten = \"127.0.0.1:6390\"\nleadr = \"redis://127.0.0.1:6379\"\n",
    );
    let out = run(&["check-config", "--config", f.path().to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(64), "stderr: {err}");
    assert!(err.contains("redis.leadr"), "{err}");
    assert!(err.contains("unknown key"), "{err}");
    // An unknown key stops parsing, so the bad address is not (yet) reported with it; it
    // is reported once the typo is fixed (next test).
}

#[test]
fn check_config_reports_every_bad_value_with_its_path() {
    let f = temp_config(
        "[admin]\nlisten = \"not-an-address\"\n\n[redis]\nlisten = \"127.0.0.1\"\nleader = \"http://127.0.0.1:6379\"\nfollower = \"redis://127.0.0.1:6380/x\"\n\n[replication]\nmax_queue_ops = 0\n",
    );
    let out = run(&["check-config", "--config", f.path().to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(64), "stderr: {err}");
    for key in [
        "admin.listen",
        "redis.listen",
        "redis.leader",
        "redis.follower",
        "replication.max_queue_ops",
    ] {
        assert!(
            err.lines()
                .any(|l| l.trim_start().starts_with(&format!("{key}:"))),
            "{key} not reported: {err}"
        );
    }
}

#[test]
fn check_config_missing_file_exits_64() {
    let out = run(&["check-config", "--config", "/nonexistent/statemirror.toml"]);
    assert_eq!(out.status.code(), Some(64), "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot read config"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn help_lists_the_subcommands() {
    let out = run(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    for sub in ["run", "check-config", "maintenance"] {
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().next() == Some(sub)),
            "{sub} missing from --help: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_commands_against_a_running_proxy() {
    let leader = RedisServer::start();
    let follower = RedisServer::start();
    let token_file = temp_config("cli-secret-token\n");
    let token_path = token_file.path().to_path_buf();
    let proxy = Proxy::start_with(&leader, Some(&follower), move |cfg| {
        cfg.admin.token_file = Some(token_path);
    })
    .await;
    let admin = proxy.admin();
    let tf = token_file.path().to_str().unwrap().to_string();

    let out = run_async(&["maintenance", "status", "--admin", &admin]).await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("status prints JSON");
    assert_eq!(v["frozen"], false, "{v}");

    // Without the token: refused, nothing frozen.
    let out = run_async(&["maintenance", "on", "--admin", &admin]).await;
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("401"), "{}", stderr(&out));
    assert!(!proxy.app.freeze.is_frozen());

    let out = run_async(&["maintenance", "on", "--admin", &admin, "--token-file", &tf]).await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("on prints JSON");
    assert_eq!(v["frozen"], true, "{v}");
    assert_eq!(v["mirror_drained"], true, "{v}");
    assert!(proxy.app.freeze.is_frozen());
    let mut c = proxy.conn().await;
    let r: redis::RedisResult<()> = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut c)
        .await;
    let e = r.expect_err("frozen");
    assert!(e.to_string().contains("frozen"), "{e}");

    let out = run_async(&["maintenance", "status", "--admin", &admin]).await;
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out).contains("\"frozen\": true"),
        "{}",
        stdout(&out)
    );

    let out = run_async(&["maintenance", "off", "--admin", &admin, "--token-file", &tf]).await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("off prints JSON");
    assert_eq!(v["frozen"], false, "{v}");
    assert!(!proxy.app.freeze.is_frozen());
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut c)
        .await
        .expect("writes resume");

    // A token file that cannot be read is a usage error.
    let out = run_async(&[
        "maintenance",
        "on",
        "--admin",
        &admin,
        "--token-file",
        "/nonexistent/token",
    ])
    .await;
    assert_eq!(out.status.code(), Some(64), "stderr: {}", stderr(&out));
    assert!(!proxy.app.freeze.is_frozen());
}

#[test]
fn maintenance_against_an_unreachable_admin_api_exits_69() {
    let out = run(&[
        "maintenance",
        "status",
        "--admin",
        "http://127.0.0.1:1",
        "--timeout-seconds",
        "10",
    ]);
    assert_eq!(out.status.code(), Some(69), "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("cannot reach"), "{}", stderr(&out));
}

#[test]
fn check_config_reports_unknown_keys_and_bad_values_together() {
    let f = temp_config(
        "[admin]\nlisten = \"not-an-address\"\n\n[redis]\nlisten = \"127.0.0.1:6390\"\nleader = \"redis://127.0.0.1:6379\"\nleadr = \"redis://127.0.0.1:6379\"\nfolower = \"redis://127.0.0.1:6380\"\n",
    );
    let out = run(&["check-config", "--config", f.path().to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(64), "stderr: {err}");
    for key in ["redis.leadr", "redis.folower", "admin.listen"] {
        assert!(err.contains(key), "{key} not reported: {err}");
    }
}

/// The config embedded in the Kubernetes example parses, with no unknown keys (so it does
/// not rot as the schema grows).
#[test]
fn the_kubernetes_example_config_is_valid() {
    let yaml = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/kubernetes/nifi-statemirror-sidecar.yaml"),
    )
    .expect("read the example");
    let start = yaml
        .find("statemirror.toml: |\n")
        .expect("the config block")
        + 20;
    let toml: String = yaml[start..]
        .lines()
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.get(4..).unwrap_or("")))
        .collect();
    assert!(
        toml.contains("[resync]") && toml.contains("[verify]"),
        "{toml}"
    );
    let cfg = statemirror::config::Config::from_toml(&toml)
        .unwrap_or_else(|e| panic!("deploy example: {e:?}\n{toml}"));
    assert_eq!(cfg.verify.interval_ms, 600_000);
    // SIGTERM drains the mirror for up to drain_timeout_ms: the pod's grace period must
    // leave that time after NiFi's own shutdown (taken as at least 60 s).
    let grace: u64 = yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("terminationGracePeriodSeconds");
    assert!(
        grace * 1000 >= 60_000 + cfg.maintenance.drain_timeout_ms,
        "grace period {grace} s does not cover the drain ({} ms)",
        cfg.maintenance.drain_timeout_ms
    );
}

/// `recover` usage errors: without `--from-follower` (it must say which way it copies) the
/// arguments are refused (exit 64, like every usage error, naming the flag); a config with errors exits 64 with
/// the key path; a config whose sidecars have no follower exits 64; backends that cannot be
/// reached exit 69. Nothing is copied in any of these.
#[test]
fn recover_usage_errors_have_their_exit_codes() {
    let example = config_path("redis.toml");
    let example = example.to_str().expect("utf-8 path");
    let out = run(&["recover", "--config", example]);
    assert_eq!(out.status.code(), Some(64), "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("--from-follower"), "{}", stderr(&out));
    let out = run(&["recover", "--from-follower"]);
    assert_eq!(out.status.code(), Some(64), "no --config: {}", stderr(&out));

    let bad = temp_config("[redis]\nlisten = \"127.0.0.1:0\"\nleader = \"redis://127.0.0.1:1\"\nfollower = \"nope\"\n");
    let out = run(&["recover", "--from-follower", "--config", path_str(&bad)]);
    assert_eq!(out.status.code(), Some(64), "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("redis.follower"), "{}", stderr(&out));

    let alone =
        temp_config("[redis]\nlisten = \"127.0.0.1:0\"\nleader = \"redis://127.0.0.1:1\"\n");
    let out = run(&["recover", "--from-follower", "--config", path_str(&alone)]);
    assert_eq!(out.status.code(), Some(64), "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("has a follower"), "{}", stderr(&out));

    let unreachable = temp_config(&format!(
        "[redis]\nlisten = \"127.0.0.1:0\"\nleader = \"redis://127.0.0.1:{}\"\n\
         follower = \"redis://127.0.0.1:{}\"\nconnect_timeout_ms = 500\n",
        free_port(),
        free_port()
    ));
    let out = run(&[
        "recover",
        "--from-follower",
        "--config",
        path_str(&unreachable),
    ]);
    assert_eq!(
        out.status.code(),
        Some(69),
        "stdout: {} stderr: {}",
        stdout(&out),
        stderr(&out)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON report");
    assert!(report["redis"]["error"].is_string(), "{report}");
}

/// `check-config` reads the secret files a config names: a missing password file is an
/// error (exit 64) naming its key and never its content; a readable one passes (exit 0).
#[test]
fn check_config_reads_password_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pw = dir.path().join("pw");
    let text = |p: &Path| {
        format!(
            "[redis]\nlisten = \"127.0.0.1:0\"\nleader = \"redis://127.0.0.1:1\"\n\
             leader_password_file = \"{}\"\n",
            p.display()
        )
    };
    let cfg = temp_config(&text(&pw));
    let out = run(&["check-config", "--config", path_str(&cfg)]);
    assert_eq!(out.status.code(), Some(64), "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("redis.leader_password_file"),
        "{}",
        stderr(&out)
    );
    std::fs::write(&pw, "s3cret-in-file\n").expect("password file");
    let out = run(&["check-config", "--config", path_str(&cfg)]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert!(!stderr(&out).contains("s3cret-in-file"), "{}", stderr(&out));
}

fn path_str(f: &tempfile::NamedTempFile) -> &str {
    f.path().to_str().expect("utf-8 path")
}
