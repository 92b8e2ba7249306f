//! `/cluster` and `/cluster/maintenance`: the cluster-wide freeze and member list (see
//! `replication::cluster`).

use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};

use super::routes::{error, json_resp, method_not_allowed, query_param, unauthorized, Resp};
use super::AdminState;

pub async fn handle(state: &AdminState, req: &Request<Incoming>) -> Resp {
    // Mutations: the token first, whatever the config (`set` checks it).
    if let (m @ (&Method::PUT | &Method::DELETE), "/cluster/maintenance") =
        (req.method(), req.uri().path())
    {
        return set(state, req, m == Method::PUT).await;
    }
    let Some(cluster) = &state.cluster else {
        return error(
            StatusCode::CONFLICT,
            "cluster mode is off: add a [cluster] section to the config",
        );
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/cluster") => match cluster.status().await {
            Ok(v) => json_resp(StatusCode::OK, v),
            Err(e) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("cannot read the cluster state from the leader: {e}"),
            ),
        },
        (&Method::GET, "/cluster/maintenance") => json_resp(StatusCode::OK, cluster.local_view()),
        (_, "/cluster") => method_not_allowed("GET"),
        _ => method_not_allowed("GET, PUT, DELETE"),
    }
}

/// `PUT|DELETE /cluster/maintenance` (also `/maintenance?cluster=true`): freeze or resume
/// every sidecar and wait for their confirmations.
pub async fn set(state: &AdminState, req: &Request<Incoming>, freeze: bool) -> Resp {
    if let Some(r) = unauthorized(state, req) {
        return r;
    }
    let Some(cluster) = &state.cluster else {
        return error(
            StatusCode::CONFLICT,
            "cluster mode is off: add a [cluster] section to the config",
        );
    };
    // Long enough for every member to drain like `PUT /maintenance` does, plus one poll and
    // one entry refresh.
    let default = state.drain_timeout + Duration::from_secs(2);
    let timeout = match query_param(req, "timeout_ms").map(|v| v.parse::<u64>()) {
        None => default,
        Some(Ok(ms)) if ms > 0 => Duration::from_millis(ms),
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "timeout_ms must be a positive integer",
            )
        }
    };
    let (proven, body) = cluster.set_cluster(freeze, timeout).await;
    // Not proven: a member did not confirm in time (504), or the state could not be written
    // at all (503).
    let code = if proven {
        StatusCode::OK
    } else if body["epoch"].is_null() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::GATEWAY_TIMEOUT
    };
    json_resp(code, body)
}
