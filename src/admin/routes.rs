//! The admin routes: a plain `match` on method and path.

use std::time::{Instant, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{header, Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use super::AdminState;
use crate::replication::queue::wait_drained;

pub(super) type Resp = Response<Full<Bytes>>;

pub async fn handle(state: &AdminState, req: Request<Incoming>) -> Resp {
    if let Some(r) = super::guard::refuse(state.listen, &state.allowed_hosts, &req) {
        return r;
    }
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::GET, "/healthz") => json_resp(StatusCode::OK, json!({"status": "ok"})),
        (&Method::GET, "/readyz") => {
            let ready = state.sidecars.iter().all(|s| s.ready());
            let code = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json_resp(code, json!({"ready": ready}))
        }
        (&Method::GET, "/status") => json_resp(StatusCode::OK, status(state)),
        (&Method::GET, "/metrics") => Response::builder()
            .header(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )
            .body(Full::new(Bytes::from(state.prom.render())))
            .unwrap_or_default(),
        (&Method::GET, "/maintenance") => json_resp(StatusCode::OK, maintenance(state)),
        (m @ (&Method::PUT | &Method::DELETE), "/maintenance")
            if query_param(&req, "cluster").as_deref() == Some("true") =>
        {
            super::cluster_routes::set(state, &req, m == Method::PUT).await
        }
        (&Method::PUT, "/maintenance") => {
            if let Some(r) = unauthorized(state, &req) {
                return r;
            }
            let started = Instant::now();
            let writes_drained = state.freeze.freeze(state.drain_timeout).await;
            let mut mirrors_drained = true;
            for (_, m) in &state.mirrors {
                let left = state.drain_timeout.saturating_sub(started.elapsed());
                mirrors_drained &= wait_drained(m.as_ref(), left).await;
            }
            let mut body = maintenance(state);
            body["writes_drained"] = json!(writes_drained);
            body["mirror_drained"] = json!(mirrors_drained);
            body["waited_ms"] = json!(started.elapsed().as_millis() as u64);
            json_resp(StatusCode::OK, body)
        }
        (&Method::DELETE, "/maintenance") => {
            if let Some(r) = unauthorized(state, &req) {
                return r;
            }
            state.freeze.unfreeze();
            json_resp(StatusCode::OK, maintenance(state))
        }
        (_, "/cluster" | "/cluster/maintenance") => {
            super::cluster_routes::handle(state, &req).await
        }
        (&Method::GET, "/verify") => {
            // A read, but it loads both backends and returns NiFi state values.
            if let Some(r) = unauthorized(state, &req) {
                return r;
            }
            let max = match query_param(&req, "max").map(|v| v.parse::<usize>()) {
                None => state.max_differences,
                Some(Ok(n)) if n > 0 => n,
                Some(_) => return error(StatusCode::BAD_REQUEST, "max must be a positive integer"),
            };
            verify(state, max).await
        }
        (&Method::POST, "/resync") => {
            if let Some(r) = unauthorized(state, &req) {
                return r;
            }
            let force = match query_param(&req, "force").as_deref() {
                None | Some("false") => false,
                Some("true") => true,
                Some(_) => return error(StatusCode::BAD_REQUEST, "force must be true or false"),
            };
            let mut started = serde_json::Map::new();
            for s in &state.sidecars {
                if let Some(r) = s.resync() {
                    r.request(force);
                    started.insert(s.protocol().into(), r.status());
                }
            }
            if started.is_empty() {
                return error(StatusCode::CONFLICT, "no sidecar has a follower to resync");
            }
            json_resp(
                StatusCode::ACCEPTED,
                json!({"requested": true, "force": force, "resync": started}),
            )
        }
        (_, "/healthz" | "/readyz" | "/status" | "/metrics" | "/verify") => {
            method_not_allowed("GET")
        }
        (_, "/resync") => method_not_allowed("POST"),
        (_, "/maintenance") => method_not_allowed("GET, PUT, DELETE"),
        _ => error(StatusCode::NOT_FOUND, &format!("no route {path}")),
    }
}

fn status(state: &AdminState) -> Value {
    let mut v = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "maintenance": maintenance(state),
    });
    for s in &state.sidecars {
        let mut st = s.status();
        if let Some(r) = s.resync() {
            st["resync"] = r.status();
        }
        if let Some(vs) = s.verify() {
            st["verify"] = vs.status();
        }
        v[s.protocol()] = st;
    }
    if let Some(id) = state.identity.status() {
        v["identity"] = id;
    }
    v
}

/// Runs every sidecar's verification now. 200 when all ran (whatever they found), 503 when
/// a backend could not be read, 409 while another verification runs.
async fn verify(state: &AdminState, max: usize) -> Resp {
    let mut body = serde_json::Map::new();
    let mut failed = false;
    let mut any = false;
    for s in &state.sidecars {
        let Some(vs) = s.verify() else { continue };
        any = true;
        let v = match vs.run(max).await {
            Ok(rep) => json!({
                "equal": rep.equal,
                "different": rep.different,
                "missing_on_follower": rep.missing_on_follower,
                "extra_on_follower": rep.extra_on_follower,
                "unreadable": rep.unreadable,
                "total_differences": rep.total_differences(),
                "duration_seconds": rep.duration_seconds,
                "truncated": rep.truncated,
                "differences": rep.differences,
            }),
            Err(e) if e == crate::replication::verify::BUSY => {
                return error(StatusCode::CONFLICT, &format!("{}: {e}", s.protocol()));
            }
            Err(e) => {
                failed = true;
                json!({"error": e})
            }
        };
        body.insert(s.protocol().into(), v);
    }
    if !any {
        return error(StatusCode::CONFLICT, "no sidecar has a follower to verify");
    }
    let code = if failed {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    json_resp(code, Value::Object(body))
}

/// The value of `name` in the query string (no percent-decoding: values are plain words).
pub(super) fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| v.to_string())
    })
}

fn maintenance(state: &AdminState) -> Value {
    let f = &state.freeze;
    let since = f
        .since()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64());
    let mirrors: serde_json::Map<String, Value> = state
        .mirrors
        .iter()
        .map(|(name, m)| {
            let s = m.status();
            (
                name.to_string(),
                json!({
                    "queue_depth": s.queue_depth,
                    "lag_seconds": s.lag_seconds,
                    "follower_in_sync": s.in_sync,
                }),
            )
        })
        .collect();
    json!({
        "frozen": f.is_frozen(),
        "local_maintenance": f.is_frozen_locally(),
        "cluster_frozen": f.is_cluster_frozen(),
        "cluster": state.cluster.as_ref().map(|c| c.local_view()),
        "frozen_since_unix": since,
        "writes_in_flight": f.in_flight(),
        "follower_in_sync": state.mirrors.iter().all(|(_, m)| m.status().in_sync),
        "mirrors": mirrors,
    })
}

pub(super) fn unauthorized(state: &AdminState, req: &Request<Incoming>) -> Option<Resp> {
    let token = &state.token;
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), token.expose().as_bytes()) {
        return None;
    }
    let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    Some(r)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(super) fn method_not_allowed(allow: &'static str) -> Resp {
    let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    r.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    r
}

pub(super) fn error(code: StatusCode, msg: &str) -> Resp {
    json_resp(code, json!({"error": msg}))
}

pub(super) fn json_resp(code: StatusCode, v: Value) -> Resp {
    let mut body = serde_json::to_vec_pretty(&v).unwrap_or_default();
    body.push(b'\n');
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}
