//! Passwords and the admin token never appear in statemirror's logs (text or JSON), in
//! `/status` or in `/metrics`: the real binary runs against a password-protected leader and
//! follower, handles traffic and an authentication failure, and its whole output is searched.
//! The leader's password comes from the URL, or from `redis.leader_password_file` (the URL
//! then has none: the sidecar only works if the file is read).
mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const PASSWORD: &str = "Pa55-leader-s3cret";
const TOKEN: &str = "T0ken-admin-s3cret";

/// Where statemirror gets the leader's password.
#[derive(Clone, Copy, PartialEq)]
enum LeaderPassword {
    InUrl,
    InFile,
}

/// SIGKILLs the child when dropped, so a failing assertion never leaves it running.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Everything the (exited or killed) child printed.
fn output(child: &mut KillOnDrop) -> String {
    let mut out = String::new();
    if let Some(mut s) = child.0.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.0.stderr.take() {
        let _ = s.read_to_string(&mut out);
    }
    out
}

async fn run_and_collect(format: &str, leader_password: LeaderPassword) {
    let leader = RedisServer::start_with(&["--requirepass", PASSWORD]);
    let follower = RedisServer::start_with(&["--requirepass", PASSWORD]);
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    let pw_file = dir.path().join("pw");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
    std::fs::write(&pw_file, format!("{PASSWORD}\n")).expect("password file");
    let (listen, admin) = (free_port(), free_port());
    let (leader_url, leader_file) = match leader_password {
        LeaderPassword::InUrl => (
            format!("redis://:{PASSWORD}@{}", leader.addr()),
            String::new(),
        ),
        LeaderPassword::InFile => (
            format!("redis://{}", leader.addr()),
            format!("leader_password_file = \"{}\"\n", pw_file.display()),
        ),
    };
    let config = dir.path().join("statemirror.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken_file = \"{}\"\n\
             [log]\nformat = \"{format}\"\nlevel = \"debug\"\n\
             [redis]\nlisten = \"127.0.0.1:{listen}\"\n\
             leader = \"{leader_url}\"\n{leader_file}\
             follower = \"redis://{}\"\nfollower_password_file = \"{}\"\n",
            token_file.display(),
            follower.addr(),
            pw_file.display()
        ),
    )
    .expect("config");
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_statemirror"))
            .args(["run", "--config"])
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("statemirror runs"),
    );
    let base = format!("http://127.0.0.1:{admin}");
    let get = |path: &'static str| {
        let base = base.clone();
        async move {
            statemirror::admin::client::request(
                &base,
                hyper::Method::GET,
                path,
                None,
                Duration::from_secs(5),
            )
            .await
        }
    };
    // Ready, or exited (then its output says why).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok((200, _)) = get("/readyz").await {
            break;
        }
        if let Ok(Some(code)) = child.0.try_wait() {
            panic!("statemirror exited ({code}): {}", output(&mut child));
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not ready within 20 s: {}",
            {
                let _ = child.0.kill();
                output(&mut child)
            }
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Traffic: a wrong password (logged failure paths), then real writes that get mirrored.
    let bad = redis::Client::open(format!("redis://:wrong@127.0.0.1:{listen}"))
        .expect("url")
        .get_multiplexed_async_connection()
        .await;
    assert!(bad.is_err(), "a wrong password is refused");
    let mut c = client(&format!("redis://:{PASSWORD}@127.0.0.1:{listen}")).await;
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut c)
        .await
        .expect("SET");
    let (_, body) = statemirror::admin::client::request(
        &base,
        hyper::Method::PUT,
        "/maintenance",
        Some("wrong-token"),
        Duration::from_secs(5),
    )
    .await
    .expect("admin");
    assert!(body.contains("error"));
    let status = get("/status").await.expect("status").1;
    let metrics = get("/metrics").await.expect("metrics").1;
    eventually(Duration::from_secs(10), || async {
        let s = get("/status").await.map_err(|e| e.to_string())?.1;
        if s.contains("\"queue_depth\": 0") && s.contains("\"mirrored_writes\": 1") {
            Ok(())
        } else {
            Err(s)
        }
    })
    .await;

    // Stop it and read everything it printed.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.0.id().to_string())
        .status();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while child.0.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.0.kill();
    let out = output(&mut child);
    assert!(out.contains("redis sidecar ready"), "logs captured: {out}");
    for (what, text) in [("logs", &out), ("/status", &status), ("/metrics", &metrics)] {
        assert!(!text.contains(PASSWORD), "password in {what}: {text}");
        assert!(!text.contains(TOKEN), "token in {what}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stay_out_of_text_logs_status_and_metrics() {
    run_and_collect("text", LeaderPassword::InUrl).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stay_out_of_json_logs() {
    run_and_collect("json", LeaderPassword::InUrl).await;
}

/// `redis.leader_password_file` (no password in the URL): the sidecar authenticates with
/// the file's first line, serves and mirrors, and the password shows nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_password_file_is_used_and_never_shown() {
    run_and_collect("text", LeaderPassword::InFile).await;
}
