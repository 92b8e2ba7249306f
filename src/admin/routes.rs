//! The admin routes: a plain `match` on method and path.

use std::time::{Instant, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{header, Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use super::AdminState;
use crate::replication::queue::wait_drained;

type Resp = Response<Full<Bytes>>;

pub async fn handle(state: &AdminState, req: Request<Incoming>) -> Resp {
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
        (_, "/healthz" | "/readyz" | "/status" | "/metrics") => method_not_allowed("GET"),
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
        v[s.protocol()] = s.status();
    }
    v
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
        "frozen_since_unix": since,
        "writes_in_flight": f.in_flight(),
        "follower_in_sync": state.mirrors.iter().all(|(_, m)| m.status().in_sync),
        "mirrors": mirrors,
    })
}

fn unauthorized(state: &AdminState, req: &Request<Incoming>) -> Option<Resp> {
    let token = state.token.as_ref()?;
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

fn method_not_allowed(allow: &'static str) -> Resp {
    let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    r.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    r
}

fn error(code: StatusCode, msg: &str) -> Resp {
    json_resp(code, json!({"error": msg}))
}

fn json_resp(code: StatusCode, v: Value) -> Resp {
    let mut body = serde_json::to_vec_pretty(&v).unwrap_or_default();
    body.push(b'\n');
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}
