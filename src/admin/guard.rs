//! The checks every admin request passes before routing, so that a browser cannot be used
//! against the API (see README "Security"):
//!
//! | request | answer |
//! |---|---|
//! | `Host` missing, or naming neither an IP address of this listener, `localhost`, nor an `admin.allowed_hosts` name (DNS rebinding) | 421 |
//! | `OPTIONS` (CORS preflights): never any `Access-Control-Allow-*` header | 405 |
//! | a `Cookie` or an `Origin` header (only browsers send them) | 403 |
//! | a form body (`application/x-www-form-urlencoded`, `multipart/form-data`, `text/plain`) | 415 |
//!
//! The `Host` port is not compared: port-forwards and Services change it, and an IP
//! address cannot be rebound.

use std::net::{IpAddr, SocketAddr};

use hyper::body::Incoming;
use hyper::{header, Method, Request, StatusCode};

use super::routes::{error, Resp};

/// The first refusal `req` earns, if any.
pub(super) fn refuse(
    listen: SocketAddr,
    allowed: &[String],
    req: &Request<Incoming>,
) -> Option<Resp> {
    if !host_ok(listen, allowed, req) {
        return Some(error(
            StatusCode::MISDIRECTED_REQUEST,
            "the Host header does not name this admin API (add the name to admin.allowed_hosts)",
        ));
    }
    if req.method() == Method::OPTIONS {
        let mut r = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "OPTIONS is refused: the admin API does not answer CORS preflights",
        );
        r.headers_mut().insert(
            header::ALLOW,
            header::HeaderValue::from_static("GET, PUT, DELETE, POST"),
        );
        return Some(r);
    }
    let h = req.headers();
    if h.contains_key(header::COOKIE) || h.contains_key(header::ORIGIN) {
        return Some(error(
            StatusCode::FORBIDDEN,
            "requests with a Cookie or Origin header are refused: the admin API is not for browsers",
        ));
    }
    if h.get_all(header::CONTENT_TYPE).iter().any(|v| {
        let v = v.to_str().unwrap_or("").trim_start().to_ascii_lowercase();
        [
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            "text/plain",
        ]
        .iter()
        .any(|f| v.starts_with(f))
    }) {
        return Some(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "form bodies are refused: send the token in the Authorization header",
        ));
    }
    None
}

/// The name part of a `Host` value (`name:port`, `[v6]:port`), lowercase, without a
/// trailing dot.
fn host_name(v: &str) -> Option<String> {
    let v = v.trim();
    let name = if let Some(rest) = v.strip_prefix('[') {
        rest.split_once(']')?.0
    } else {
        match v.rsplit_once(':') {
            Some((n, p)) if p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => v,
        }
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    (!name.is_empty()).then_some(name)
}

fn host_ok(listen: SocketAddr, allowed: &[String], req: &Request<Incoming>) -> bool {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let (Some(v), None) = (hosts.next(), hosts.next()) else {
        return false; // none, or several
    };
    let Some(name) = v.to_str().ok().and_then(host_name) else {
        return false;
    };
    name_ok(listen, allowed, &name)
}

fn name_ok(listen: SocketAddr, allowed: &[String], name: &str) -> bool {
    if let Ok(ip) = name.parse::<IpAddr>() {
        // An address literal cannot be rebound. A listener on every address answers to
        // all of them (pod IP, Service IP); one on a single address to it and loopback.
        return listen.ip().is_unspecified() || ip == listen.ip() || ip.is_loopback();
    }
    name == "localhost" || allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names() {
        assert_eq!(host_name("127.0.0.1:9480").as_deref(), Some("127.0.0.1"));
        assert_eq!(host_name("[::1]:9480").as_deref(), Some("::1"));
        assert_eq!(host_name("LocalHost.").as_deref(), Some("localhost"));
        assert_eq!(
            host_name("evil.example:80").as_deref(),
            Some("evil.example")
        );
        assert_eq!(host_name(""), None);
        assert_eq!(host_name("[::1"), None);
    }

    #[test]
    fn names_accepted_per_listener() {
        let lo: SocketAddr = "127.0.0.1:9480".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:9480".parse().unwrap();
        let allowed = vec!["statemirror.nifi.svc".to_string()];
        assert!(name_ok(lo, &[], "127.0.0.1"));
        assert!(name_ok(lo, &[], "::1"));
        assert!(name_ok(lo, &[], "localhost"));
        assert!(!name_ok(lo, &[], "10.1.2.3"));
        assert!(!name_ok(lo, &[], "evil.example"));
        assert!(name_ok(any, &[], "10.1.2.3"));
        assert!(!name_ok(any, &[], "statemirror.nifi.svc"));
        assert!(name_ok(any, &allowed, "statemirror.nifi.svc"));
        assert!(!name_ok(any, &allowed, "evil.example"));
    }
}
