//! The API's HTTP server (axum). Takes its listener and a shutdown token from the caller, so
//! tests bind port 0 and stop it at will; reads the node only through its snapshot.
//!
//! Every request passes `guard` first (Host, Origin, Content-Type, the API token for state
//! changes, long-poll slots) and every error leaves as an [`ApiError`] (handlers answer one;
//! `guard::json_errors` turns the framework's rejections into one); connections are accepted
//! by `listener` (connection limit with eviction, request-head timeout). `convert` builds the
//! contract's answers from the node's snapshots.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub mod convert;
pub mod dashboard;
mod door;
mod guard;
mod invites;
mod listener;
pub mod metrics;
mod services;

pub use door::{JoinDoor, JoinDoorExt, JoinJob};
pub use guard::{host_allowed, is_json, origin_allowed};
pub use listener::{MAX_CONNECTIONS, MAX_LONG_POLLS, REQUEST_HEAD_TIMEOUT, ServeLimits};

use super::contract::{
    ApiError, ErrorCode, KeyRotateResponse, MAX_WAIT, PeersQuery, TagRequest, TagResponse,
    VERSION_HEADER, routes,
};
use crate::api::auth::TokenVerifier;
use crate::node::NodeHandle;
use crate::state::StateError;
use convert::{peer_entries, state_summary, status};

/// Builds the router of the route table in [`crate::api`].
pub fn router(node: NodeHandle) -> Router {
    Router::new()
        .route(routes::STATUS, get(get_status))
        .route(routes::METRICS, get(get_metrics))
        .route(routes::PEERS, get(get_peers))
        .route(routes::STATE, get(get_state))
        .route(routes::TAGS, post(post_tag))
        .route(routes::TAG, delete(delete_tag))
        .route(
            routes::SERVICES,
            get(services::list_services).post(services::add_services),
        )
        .route(routes::SERVICE, delete(services::remove_service))
        .route(routes::SERVICE_LOGS, get(services::service_logs))
        .route(routes::SERVICE_ACTION, post(services::service_action))
        .route(routes::SERVICE_ENDPOINTS, get(services::service_endpoints))
        .route(routes::NODE_ACTION, post(services::node_action))
        .route(routes::PORTS, get(services::list_ports))
        .route(routes::PORTS_LISTENING, get(services::listening_ports))
        .route(routes::EVENTS, get(services::list_events))
        .route(
            routes::INVITES,
            get(invites::list_invites).post(invites::create_invite),
        )
        .route(routes::INVITE, delete(invites::revoke_invite))
        .route(routes::JOIN, post(invites::join))
        .route(routes::KEY_ROTATE, post(rotate_key))
        .route(routes::DASHBOARD, get(dashboard::index))
        .route(routes::DASHBOARD_ASSET, get(dashboard::asset))
        .route(routes::STREAM, get(dashboard::stream))
        .route(routes::HISTORY, get(dashboard::history))
        .route(
            routes::SESSION,
            get(dashboard::session)
                .post(dashboard::login)
                .delete(dashboard::logout),
        )
        .fallback(not_found)
        .with_state(node)
}

/// Who may change the agent, and the server's limits.
#[derive(Debug)]
pub struct ApiConfig {
    /// Checks the `Authorization: Bearer` token of state changes.
    pub verifier: TokenVerifier,
    /// Where the token is, named in refusals (`DATA_DIR/api.token` when `None`).
    pub token_file: Option<PathBuf>,
    pub limits: ServeLimits,
    /// Where `POST /v1/join` hands a ticket (the daemon); `None`: joins are refused.
    pub join: Option<JoinDoor>,
    /// The sampler's readers (the dashboard's charts); `None`: no history.
    pub insight: Option<crate::insight::sampler::InsightHandle>,
}

impl ApiConfig {
    /// State changes need `token`, kept in `token_file`.
    pub fn with_token(token: &str, token_file: PathBuf) -> Self {
        Self {
            verifier: TokenVerifier::new(token),
            token_file: Some(token_file),
            limits: ServeLimits::default(),
            join: None,
            insight: None,
        }
    }
}

impl Default for ApiConfig {
    /// Read-only: the token is one nobody knows, so every state change is refused.
    fn default() -> Self {
        Self {
            verifier: TokenVerifier::unknowable(),
            token_file: None,
            limits: ServeLimits::default(),
            join: None,
            insight: None,
        }
    }
}

/// Serves the API read-only (see [`ApiConfig::default`]) on `listener` until `shutdown` is
/// cancelled.
pub async fn serve(
    listener: TcpListener,
    node: NodeHandle,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, node, ApiConfig::default(), shutdown).await
}

/// Serves the API on `listener` with `config` until `shutdown` is cancelled.
pub async fn serve_with(
    listener: TcpListener,
    node: NodeHandle,
    config: ApiConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let own = listener.local_addr()?;
    let guard = Arc::new(guard::Guard::new(
        own,
        config.verifier,
        config.token_file,
        config.limits.max_long_polls,
    ));
    let dashboard = dashboard::DashboardExt {
        guard: guard.clone(),
        insight: config.insight,
        streams: Arc::new(tokio::sync::Semaphore::new(dashboard::MAX_STREAMS)),
    };
    let app = router(node)
        .layer(axum::Extension(JoinDoorExt(config.join)))
        .layer(axum::Extension(dashboard))
        .layer(axum::middleware::from_fn_with_state(guard, guard::check))
        .layer(axum::middleware::from_fn(guard::json_errors));
    listener::run(listener, app, config.limits, shutdown).await
}

/// Serves `GET /metrics` alone on `listener` (`--metrics-listen`: a LAN scraper's address),
/// read-only, under the API's connection limits, until `shutdown` is cancelled. No `Host`
/// check: nothing here changes anything, and a scraper names the host as it reaches it.
pub async fn serve_metrics(
    listener: TcpListener,
    node: NodeHandle,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(routes::METRICS, get(get_metrics))
        .fallback(not_found)
        .with_state(node)
        .layer(axum::middleware::from_fn(guard::json_errors));
    listener::run(listener, app, ServeLimits::default(), shutdown).await
}

/// `Retry-After` of a long poll refused for want of a slot, in seconds: slots free up as
/// other polls answer (within 30 s at most), and a follower retrying every second costs little.
const LONG_POLL_RETRY_AFTER_S: u32 = 1;

impl IntoResponse for ApiError {
    /// The error's status and JSON body, with the headers its code calls for: the scheme to
    /// authenticate with on a 401, when to retry a refused long poll.
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let code = self.code;
        let mut response = (status, Json(self)).into_response();
        let headers = response.headers_mut();
        match code {
            ErrorCode::Unauthorized => {
                headers.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"mesh\""),
                );
            }
            ErrorCode::TooManyLongPolls => {
                headers.insert(RETRY_AFTER, HeaderValue::from(LONG_POLL_RETRY_AFTER_S));
            }
            _ => {}
        }
        response
    }
}

async fn not_found() -> Response {
    ApiError::new(
        ErrorCode::NotFound,
        "no such route; see `mesh api GET /v1/status` and protocol/control-api.md",
    )
    .into_response()
}

async fn get_status(State(node): State<NodeHandle>) -> Response {
    let snap = node.snapshot();
    Json(status(&snap, Instant::now())).into_response()
}

/// This node's metrics: OpenMetrics for a scraper that asks for it, else the classic text
/// format.
async fn get_metrics(State(node): State<NodeHandle>, headers: HeaderMap) -> Response {
    let checks = node
        .supervisor()
        .map(|s| s.check_times())
        .unwrap_or_default();
    let text = metrics::render(
        &node.snapshot(),
        &node.state().snapshot(),
        checks,
        Some(node.swarm_registry()),
        Instant::now(),
    );
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    if metrics::wants_openmetrics(accept) {
        (
            [(axum::http::header::CONTENT_TYPE, metrics::OPENMETRICS)],
            text,
        )
            .into_response()
    } else {
        let text = metrics::to_text_format(&text);
        ([(axum::http::header::CONTENT_TYPE, metrics::TEXT)], text).into_response()
    }
}

async fn get_peers(State(node): State<NodeHandle>, Query(q): Query<PeersQuery>) -> Response {
    let mut nodes = node.subscribe();
    let mut states = node.state().subscribe();
    // The version clients long-poll on covers both membership and the replicated document
    // (tags): the sum only grows, and changes whenever either does.
    let version = |n: &watch::Receiver<_>, s: &watch::Receiver<_>| -> u64 {
        let n: &std::sync::Arc<crate::node::NodeSnapshot> = &n.borrow();
        let s: &std::sync::Arc<crate::state::actor::StateSnapshot> = &s.borrow();
        n.version + s.version
    };
    if let Some(seen) = q.wait
        && seen == version(&nodes, &states)
    {
        let timeout = Duration::from_millis(q.timeout_ms.unwrap_or(1000)).min(MAX_WAIT);
        let _ = tokio::time::timeout(timeout, async {
            loop {
                tokio::select! {
                    r = nodes.changed() => if r.is_err() { return },
                    r = states.changed() => if r.is_err() { return },
                }
                if version(&nodes, &states) != seen {
                    return;
                }
            }
        })
        .await;
    }
    let snap = nodes.borrow().clone();
    let state = states.borrow().clone();
    let mut headers = HeaderMap::new();
    headers.insert(
        VERSION_HEADER,
        HeaderValue::from(snap.version + state.version),
    );
    (headers, Json(peer_entries(&snap, &state, Instant::now()))).into_response()
}

async fn get_state(State(node): State<NodeHandle>) -> Response {
    Json(state_summary(&node.state().snapshot())).into_response()
}

/// An error answer with the usual code of `status` ([`ErrorCode::for_status`]).
fn error(status: StatusCode, message: String) -> Response {
    ApiError::new(ErrorCode::for_status(status.as_u16()), message).into_response()
}

/// The error of a write the state actor refused.
fn state_error_of(e: StateError) -> ApiError {
    let code = match e {
        StateError::InvalidTag(_) | StateError::TooManyTags | StateError::NotOwned(_) => {
            ErrorCode::BadRequest
        }
        StateError::NotDurable(_) => ErrorCode::NotDurable,
        StateError::DocumentTooLarge { .. } => ErrorCode::DocumentTooLarge,
        // The document or its actor failed: nothing the request could change.
        _ => ErrorCode::Unavailable,
    };
    ApiError::new(code, e.to_string())
}

fn state_error(e: StateError) -> Response {
    state_error_of(e).into_response()
}

/// The error of a JSON body that could not be read: 413 past the body limit, else 400 with
/// the shape that was `expected`.
fn body_error(e: JsonRejection, expected: &str) -> Response {
    let code = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ErrorCode::PayloadTooLarge
    } else {
        ErrorCode::BadRequest
    };
    ApiError::new(code, format!("expected {expected}: {e}")).into_response()
}

async fn post_tag(
    State(node): State<NodeHandle>,
    body: Result<Json<TagRequest>, JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return body_error(e, r#"{"key": "...", "value": "..."}"#),
    };
    match node.state().set_tag(&req.key, Some(&req.value)).await {
        Ok(changed) => Json(TagResponse { changed }).into_response(),
        Err(e) => state_error(e),
    }
}

/// `POST /v1/key/rotate` (`mesh key rotate`).
async fn rotate_key(State(node): State<NodeHandle>) -> Response {
    match node.rotate_key().await {
        Ok(rotation) => {
            let snap = node.snapshot();
            let name = |peer: &libp2p::PeerId| {
                snap.peers
                    .iter()
                    .find(|p| p.peer_id == *peer)
                    .and_then(|p| p.info.as_ref().map(|i| i.name.clone()))
                    .unwrap_or_else(|| peer.to_base58())
            };
            Json(KeyRotateResponse {
                mesh_id: rotation.mesh_id,
                generation: rotation.generation,
                told: rotation.told.iter().map(name).collect(),
            })
            .into_response()
        }
        Err(e) => ApiError::new(ErrorCode::NotDurable, e.to_string()).into_response(),
    }
}

async fn delete_tag(State(node): State<NodeHandle>, Path(key): Path<String>) -> Response {
    match node.state().set_tag(&key, None).await {
        Ok(changed) => Json(TagResponse { changed }).into_response(),
        Err(e) => state_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_writes_have_their_own_codes() {
        let code = |e: StateError| state_error_of(e).code;
        assert_eq!(
            code(StateError::NotDurable("disk full".into())),
            ErrorCode::NotDurable
        );
        assert_eq!(ErrorCode::NotDurable.status(), 507);
        assert_eq!(
            code(StateError::DocumentTooLarge { size: 2, limit: 1 }),
            ErrorCode::DocumentTooLarge
        );
        assert_eq!(ErrorCode::DocumentTooLarge.status(), 413);
        assert_eq!(code(StateError::TooManyTags), ErrorCode::BadRequest);
        assert_eq!(code(StateError::Stopped), ErrorCode::Unavailable);
    }

    #[test]
    fn error_answers_carry_the_headers_of_their_code() {
        let unauthorized = ApiError::new(ErrorCode::Unauthorized, "token").into_response();
        assert_eq!(unauthorized.status(), StatusCode::UNAUTHORIZED);
        assert!(unauthorized.headers().contains_key(WWW_AUTHENTICATE));
        let busy = ApiError::new(ErrorCode::TooManyLongPolls, "busy").into_response();
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(busy.headers()[RETRY_AFTER], "1");
        let not_durable = error(StatusCode::INSUFFICIENT_STORAGE, "disk".into());
        assert_eq!(not_durable.status(), StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(
            not_durable.headers()[axum::http::header::CONTENT_TYPE],
            "application/json"
        );
    }
}
