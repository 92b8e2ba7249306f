//! The admin API, secure by default (README "Security"): each misuse gets its documented
//! refusal, over raw TCP so nothing normalizes the requests:
//!
//! | misuse | answer |
//! |---|---|
//! | a mutation or `GET /verify` without a token, or with a wrong one | 401 (same body) |
//! | a form POST carrying the token in its body | 415 |
//! | a `Cookie` (or `Origin`) header, even with the right token | 403 |
//! | a foreign or missing `Host` (DNS rebinding) | 421 |
//! | a CORS preflight (`OPTIONS`) | 405, no `Access-Control-*` header |
//! | a non-loopback listener without `admin.token_file` | refuses to start (exit 64) |
//!
//! Also: the generated token file is mode 0600, the CLI finds it, and `/status` and
//! `/metrics` never show a key or value the follower refused.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `head` (request line and headers, without the blank line) plus `body`; returns
/// (status, lowercase header block, body).
async fn raw(addr: SocketAddr, head: &str, body: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.expect("admin connect");
    let req = format!(
        "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("admin write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (h, b) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = h
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, h.to_ascii_lowercase(), b.to_string())
}

fn statemirror(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_statemirror"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run statemirror")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_misuse_gets_its_documented_refusal() {
    let leader = RedisServer::start();
    let proxy = Proxy::start(&leader, None).await;
    let addr = proxy.app.admin_addr;
    let port = addr.port();
    let host = format!("Host: 127.0.0.1:{port}");

    // The generated token: a private file where the CLI looks for it.
    let file = proxy
        .app
        .generated_token_file
        .clone()
        .expect("no admin.token_file: a token is generated");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file)
            .expect("token file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{}", file.display());
    }
    assert_eq!(
        statemirror::admin::client::discover(&proxy.admin()).as_deref(),
        Some(file.as_path())
    );
    let token = statemirror::config::read_secret(&file).expect("token");
    assert_eq!(token.len(), 64);
    let auth = format!("Authorization: Bearer {token}");

    // No token, a wrong token (same length, and not): 401, one body for all.
    let mut bodies = Vec::new();
    for (method, path) in [
        ("PUT", "/maintenance"),
        ("DELETE", "/maintenance"),
        ("POST", "/resync"),
        ("GET", "/verify"),
        ("PUT", "/cluster/maintenance"),
        ("PUT", "/maintenance?cluster=true"),
    ] {
        let wrong_same_len = "0".repeat(token.len());
        for a in [
            "",
            "Authorization: Bearer nope",
            &format!("Authorization: Bearer {wrong_same_len}"),
            &format!("Authorization: Basic {token}"),
        ] {
            let head = if a.is_empty() {
                format!("{method} {path} HTTP/1.1\r\n{host}")
            } else {
                format!("{method} {path} HTTP/1.1\r\n{host}\r\n{a}")
            };
            let (code, h, body) = raw(addr, &head, "").await;
            assert_eq!(code, 401, "{method} {path} [{a}]: {body}");
            assert!(h.contains("www-authenticate: bearer"), "{h}");
            bodies.push(body);
        }
    }
    bodies.dedup();
    assert_eq!(bodies.len(), 1, "one 401 body: {bodies:?}");
    assert!(!proxy.app.freeze.is_frozen());

    // A form POST with the token in its body (what a browser form can send): 415.
    for ct in [
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "text/plain;charset=UTF-8",
    ] {
        let (code, _, body) = raw(
            addr,
            &format!("PUT /maintenance HTTP/1.1\r\n{host}\r\nContent-Type: {ct}"),
            &format!("token={token}"),
        )
        .await;
        assert_eq!(code, 415, "{ct}: {body}");
    }

    // Cookies and Origin (browsers): 403, even with the right token.
    for extra in [
        format!("Cookie: token={token}"),
        "Origin: http://evil.example".into(),
    ] {
        let (code, _, body) = raw(
            addr,
            &format!("PUT /maintenance HTTP/1.1\r\n{host}\r\n{auth}\r\n{extra}"),
            "",
        )
        .await;
        assert_eq!(code, 403, "{extra}: {body}");
    }
    assert!(!proxy.app.freeze.is_frozen());

    // A foreign Host (DNS rebinding), a foreign IP for a loopback listener, no Host: 421,
    // on open routes too.
    for h in [
        format!("Host: evil.example:{port}"),
        format!("Host: 10.11.12.13:{port}"),
        "Host: 127.0.0.1.evil.example".into(),
    ] {
        for (method, path, a) in [
            ("PUT", "/maintenance", auth.as_str()),
            ("GET", "/status", "X-A: b"),
        ] {
            let (code, _, body) =
                raw(addr, &format!("{method} {path} HTTP/1.1\r\n{h}\r\n{a}"), "").await;
            assert_eq!(code, 421, "{h} {method} {path}: {body}");
        }
    }
    let (code, _, body) = raw(addr, "GET /status HTTP/1.0", "").await;
    assert_eq!(code, 421, "no Host: {body}");
    assert!(!proxy.app.freeze.is_frozen());

    // A CORS preflight, on any path: 405 and no Access-Control-* header.
    for path in ["/maintenance", "/status", "/nope"] {
        let (code, h, body) = raw(
            addr,
            &format!(
                "OPTIONS {path} HTTP/1.1\r\n{host}\r\nOrigin: http://evil.example\r\n\
                 Access-Control-Request-Method: PUT\r\nAccess-Control-Request-Headers: authorization"
            ),
            "",
        )
        .await;
        assert_eq!(code, 405, "{path}: {body}");
        assert!(!h.contains("access-control-"), "{h}");
    }

    // Probes and scrapers need no token; the right token works under every own name.
    for path in ["/healthz", "/readyz", "/status", "/metrics", "/maintenance"] {
        let (code, h, body) = raw(addr, &format!("GET {path} HTTP/1.1\r\n{host}"), "").await;
        assert!(
            code == 200 || (path == "/readyz" && code == 503),
            "{path}: {code} {body}"
        );
        assert!(!h.contains("access-control-"), "{h}");
    }
    for (i, h) in [
        format!("Host: localhost:{port}"),
        format!("Host: [::1]:{port}"),
        host.clone(),
    ]
    .iter()
    .enumerate()
    {
        let method = if i % 2 == 0 { "PUT" } else { "DELETE" };
        let (code, _, body) = raw(
            addr,
            &format!("{method} /maintenance HTTP/1.1\r\n{h}\r\n{auth}"),
            "",
        )
        .await;
        assert_eq!(code, 200, "{h}: {body}");
        assert_eq!(proxy.app.freeze.is_frozen(), method == "PUT");
    }
    let (code, _, _) = raw(
        addr,
        &format!("DELETE /maintenance HTTP/1.1\r\n{host}\r\n{auth}"),
        "",
    )
    .await;
    assert_eq!(code, 200);
    assert!(!proxy.app.freeze.is_frozen());

    // Stopped: the generated file is gone.
    proxy.app.abort();
    assert!(!file.exists(), "{} left behind", file.display());
}

#[test]
fn a_non_loopback_listener_without_a_token_file_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("open.toml");
    std::fs::write(
        &cfg,
        format!(
            "[admin]\nlisten = \"0.0.0.0:{}\"\n[redis]\nlisten = \"127.0.0.1:{}\"\nleader = \"redis://127.0.0.1:1\"\n",
            free_port(),
            free_port()
        ),
    )
    .expect("config");
    let path = cfg.to_str().expect("utf-8 path");
    for sub in ["check-config", "run"] {
        let out = statemirror(&[sub, "--config", path]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{sub}: {err}");
        assert!(err.contains("admin.token_file"), "{sub}: {err}");
    }
    // With a token file it is accepted.
    let token = dir.path().join("token");
    std::fs::write(&token, "a-long-random-token\n").expect("token");
    let text = std::fs::read_to_string(&cfg).expect("read").replace(
        "[redis]",
        &format!("token_file = \"{}\"\n[redis]", token.display()),
    );
    std::fs::write(&cfg, text).expect("config");
    let out = statemirror(&["check-config", "--config", path]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The real binary without `admin.token_file`: it writes a private token file and the CLI
/// (no `--token-file`) finds it; the file is removed when it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_finds_the_generated_token() {
    let leader = RedisServer::start();
    let (cfg, admin, port) = binary_config(&format!(
        "[redis]\nlisten = \"127.0.0.1:{{port}}\"\nleader = \"{}\"\n",
        leader.url()
    ));
    let mut p = BinProxy::start(cfg.path(), &admin, &format!("redis://127.0.0.1:{port}")).await;
    // Written right after the listener is bound (its port may be 0 in a config).
    let file = eventually(Duration::from_secs(5), || async {
        statemirror::admin::client::discover(&admin)
            .ok_or("no generated token file yet".to_string())
    })
    .await;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file)
            .expect("token file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{}", file.display());
    }
    let cli = |args: &'static [&'static str]| {
        let admin = admin.clone();
        tokio::task::spawn_blocking(move || {
            let mut a: Vec<&str> = args.to_vec();
            a.extend(["--admin", &admin]);
            statemirror(&a)
        })
    };
    let out = cli(&["maintenance", "on"]).await.expect("cli");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["frozen"], true, "{v}");
    let out = cli(&["maintenance", "off"]).await.expect("cli");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A wrong explicit token file wins over discovery and is refused, with a hint.
    let wrong = tempfile::NamedTempFile::new().expect("temp");
    std::fs::write(wrong.path(), "wrong\n").expect("write");
    let w = wrong.path().to_str().expect("utf-8").to_string();
    let admin2 = admin.clone();
    let out = tokio::task::spawn_blocking(move || {
        statemirror(&["maintenance", "on", "--admin", &admin2, "--token-file", &w])
    })
    .await
    .expect("cli");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    assert_eq!(
        p.terminate(Duration::from_secs(20)).map(|s| s.success()),
        Some(true)
    );
    assert!(!file.exists(), "{} left behind", file.display());
}

/// A write the follower refuses, with a distinctive key and value: neither ever appears in
/// `/status` or `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_metrics_never_show_keys_or_values() {
    // The leader has 32 databases, the follower Redis's default 16: db 20 is refused.
    let leader = RedisServer::start_with(&["--databases", "32"]);
    let follower = RedisServer::start();
    let proxy = Proxy::start(&leader, Some(&follower)).await;
    let mut c = proxy.conn().await;
    let _: () = redis::cmd("SELECT")
        .arg(20)
        .query_async(&mut c)
        .await
        .expect("SELECT");
    let _: () = redis::cmd("SET")
        .arg("SECRET-KEY-123")
        .arg("SECRET-VALUE-123")
        .query_async(&mut c)
        .await
        .expect("SET");
    let _: () = redis::cmd("SELECT")
        .arg(0)
        .query_async(&mut c)
        .await
        .expect("SELECT");
    let _: () = redis::cmd("SET")
        .arg("plain")
        .arg("SECRET-VALUE-123")
        .query_async(&mut c)
        .await
        .expect("SET");
    let s = eventually(Duration::from_secs(15), || async {
        let s = proxy.status().await;
        (s["redis"]["mirror"]["refused_writes"].as_u64() >= Some(1))
            .then_some(s.clone())
            .ok_or(format!("{s}"))
    })
    .await;
    let m = &s["redis"]["mirror"];
    let last = m["last_refused"].as_str().unwrap_or_default();
    assert!(last.starts_with("db_out_of_range"), "{m}");
    assert!(s_contains_no_secret(&s.to_string()), "{s}");
    // A resync tries db 20 again and is refused again: still nothing.
    let (code, body) = proxy.http("POST", "/resync", None).await;
    assert!(code == 202 || code == 409, "{code} {body}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (vcode, verify) = proxy.http("GET", "/verify?max=100", None).await;
    let (_, status) = proxy.http("GET", "/status", None).await;
    let (_, metrics) = proxy.http("GET", "/metrics", None).await;
    assert!(s_contains_no_secret(&status), "{status}");
    assert!(s_contains_no_secret(&metrics), "{metrics}");
    // The operator's authenticated tool answers (it may name keys; it is not scraped).
    assert!(vcode == 200 || vcode == 503, "{vcode} {verify}");
}

fn s_contains_no_secret(text: &str) -> bool {
    !text.contains("SECRET-")
}
