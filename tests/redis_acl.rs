//! Redis ACL users through the proxy: clients' `AUTH user pass` and `HELLO 3 AUTH user pass`
//! go to the leader as they are, a `NOPERM` refusal is the client's and nothing of it is
//! mirrored; statemirror's own connections use its own users (`leader_username`,
//! `follower_username` with their password files); and read failover forwards the client's
//! credentials to the follower unchanged — statemirror never lends its own follower user to
//! a client (see README "Redis credentials and ACL users").
mod common;

use std::time::Duration;

use common::*;

const STATEMIRROR_PW: &str = "sm-leader-pw";
const MIRROR_PW: &str = "sm-follower-pw";

async fn admin(s: &RedisServer, pw: &str) -> redis::aio::MultiplexedConnection {
    let url = format!("redis://:{pw}@127.0.0.1:{}", s.port);
    redis::Client::open(url)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("admin connection")
}

async fn acl(c: &mut redis::aio::MultiplexedConnection, args: &[&str]) {
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(args)
        .query_async(c)
        .await
        .expect("ACL SETUSER");
}

async fn get(c: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(key)
        .query_async(c)
        .await
        .expect("GET")
}

fn text(r: &Resp) -> String {
    match r {
        Resp::Error(e) => e.clone(),
        other => other.text().unwrap_or_else(|| format!("{other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_users_pass_through_and_statemirror_uses_its_own() {
    let mut leader = RedisServer::start_with(&["--requirepass", "leader-admin"]);
    let follower = RedisServer::start_with(&["--requirepass", "follower-admin"]);
    let mut la = admin(&leader, "leader-admin").await;
    let mut fa = admin(&follower, "follower-admin").await;
    // Leader: statemirror's own user, NiFi's, and one without access to nifi/secret*.
    acl(
        &mut la,
        &[
            "statemirror",
            "on",
            &format!(">{STATEMIRROR_PW}"),
            "~*",
            "+@all",
        ],
    )
    .await;
    acl(&mut la, &["nifi", "on", ">nifi-pw", "~nifi/*", "+@all"]).await;
    acl(
        &mut la,
        &["limited", "on", ">limited-pw", "~nifi/public/*", "+@all"],
    )
    .await;
    // Follower: the mirror's user, and NiFi's user read-only (for read failover). The
    // client's credentials cannot write there: whatever reaches it came through the mirror.
    acl(
        &mut fa,
        &["mirror", "on", &format!(">{MIRROR_PW}"), "~*", "+@all"],
    )
    .await;
    acl(
        &mut fa,
        &[
            "nifi",
            "on",
            ">nifi-pw",
            "~nifi/*",
            "+@read",
            "+@connection",
        ],
    )
    .await;

    let dir = tempfile::tempdir().expect("tempdir");
    let (lpw, fpw) = (dir.path().join("leader.pw"), dir.path().join("follower.pw"));
    std::fs::write(&lpw, format!("{STATEMIRROR_PW}\n")).expect("write");
    std::fs::write(&fpw, format!("{MIRROR_PW}\n")).expect("write");
    let proxy = Proxy::start_with(&leader, Some(&follower), |c| {
        let r = c.redis.as_mut().expect("[redis]");
        r.leader_username = Some("statemirror".into());
        r.leader_password_file = Some(lpw.clone());
        r.follower_username = Some("mirror".into());
        r.follower_password_file = Some(fpw.clone());
    })
    .await;
    let s = proxy.status().await;
    assert!(
        !s.to_string().contains(STATEMIRROR_PW) && !s.to_string().contains(MIRROR_PW),
        "no password in /status"
    );

    // No AUTH: the leader's NOAUTH is the client's.
    let mut c = Raw::connect(proxy.addr()).await;
    let r = c.cmd(&["SET", "nifi/x", "1"]).await;
    assert!(text(&r).starts_with("NOAUTH"), "{r:?}");
    // AUTH user pass: NiFi's user writes, and the write is mirrored (by statemirror's
    // follower user: NiFi's is read-only there).
    assert_eq!(text(&c.cmd(&["AUTH", "nifi", "nifi-pw"]).await), "OK");
    assert_eq!(text(&c.cmd(&["SET", "nifi/a", "1"]).await), "OK");
    let r = c.cmd(&["AUTH", "nifi", "wrong"]).await;
    assert!(text(&r).starts_with("WRONGPASS"), "{r:?}");

    // HELLO 3 AUTH user pass: a user without access to some keys.
    let mut l = Raw::connect(proxy.addr()).await;
    let r = l
        .cmd(&["HELLO", "3", "AUTH", "limited", "limited-pw"])
        .await;
    assert!(!r.is_error(), "{r:?}");
    assert_eq!(text(&l.cmd(&["SET", "nifi/public/p", "1"]).await), "OK");
    let r = l.cmd(&["SET", "nifi/secret", "x"]).await;
    assert!(text(&r).starts_with("NOPERM"), "{r:?}");
    let r = l.cmd(&["MULTI"]).await;
    assert!(!r.is_error(), "{r:?}");
    let r = l.cmd(&["SET", "nifi/secret2", "x"]).await;
    assert!(text(&r).starts_with("NOPERM"), "{r:?}");
    let r = l.cmd(&["EXEC"]).await;
    assert!(text(&r).starts_with("EXECABORT"), "{r:?}");

    proxy.drained().await;
    eventually(Duration::from_secs(10), || async {
        let mut fa = admin(&follower, "follower-admin").await;
        match (
            get(&mut fa, "nifi/a").await,
            get(&mut fa, "nifi/public/p").await,
        ) {
            (Some(a), Some(p)) if a == "1" && p == "1" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    for k in ["nifi/secret", "nifi/secret2", "nifi/x"] {
        assert_eq!(get(&mut fa, k).await, None, "{k} must not be mirrored");
        assert_eq!(get(&mut la, k).await, None, "{k} was refused on the leader");
    }
    // statemirror's mirror connection is the `mirror` user.
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut fa)
        .await
        .expect("CLIENT LIST");
    assert!(clients.contains("user=mirror"), "{clients}");

    // Read failover: the leader dies; the client's own credentials go to the follower.
    leader.kill();
    eventually(Duration::from_secs(10), || async {
        match proxy.status().await["redis"]["serving"].as_str() {
            Some("follower") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let mut r = Raw::connect(proxy.addr()).await;
    // Not authenticated: the follower's own NOAUTH, not statemirror's credentials.
    let reply = r.cmd(&["GET", "nifi/a"]).await;
    assert!(text(&reply).starts_with("NOAUTH"), "{reply:?}");
    // A user the follower does not know is refused there (statemirror does not lend its own).
    let reply = r.cmd(&["AUTH", "limited", "limited-pw"]).await;
    assert!(text(&reply).starts_with("WRONGPASS"), "{reply:?}");
    // NiFi's user, read-only on the follower: reads work, writes are refused by statemirror.
    let reply = r.cmd(&["HELLO", "3", "AUTH", "nifi", "nifi-pw"]).await;
    assert!(!reply.is_error(), "{reply:?}");
    assert_eq!(text(&r.cmd(&["GET", "nifi/a"]).await), "1");
    let reply = r.cmd(&["SET", "nifi/a", "2"]).await;
    assert!(
        text(&reply).starts_with("READONLY statemirror"),
        "{reply:?}"
    );
}
