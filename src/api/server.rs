//! The API's HTTP server (axum). Takes its listener and a shutdown token from the caller, so
//! tests bind port 0 and stop it at will; reads the node only through its snapshot.
//!
//! Every request passes `guard` first (Host, Origin, Content-Type, the API token for state
//! changes, long-poll slots) and every error leaves as JSON; connections are accepted by
//! `listener` (connection limit with eviction, request-head timeout).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod guard;
mod listener;
mod services;

pub use guard::{host_allowed, is_json, origin_allowed};
pub use listener::{MAX_CONNECTIONS, MAX_LONG_POLLS, REQUEST_HEAD_TIMEOUT, ServeLimits};

use super::{
    ErrorBody, MAX_WAIT, TagRequest, TagResponse, VERSION_HEADER, peer_entries, state_summary,
    status,
};
use crate::api::auth::TokenVerifier;
use crate::node::NodeHandle;
use crate::state::StateError;

/// Builds the router of the route table in [`crate::api`].
pub fn router(node: NodeHandle) -> Router {
    Router::new()
        .route("/v1/status", get(get_status))
        .route("/v1/peers", get(get_peers))
        .route("/v1/state", get(get_state))
        .route("/v1/tags", axum::routing::post(post_tag))
        .route("/v1/tags/{key}", delete(delete_tag))
        .route(
            "/v1/services",
            get(services::list_services).post(services::add_services),
        )
        .route("/v1/services/{name}", delete(services::remove_service))
        .route("/v1/services/{name}/logs", get(services::service_logs))
        .route(
            "/v1/services/{name}/{action}",
            axum::routing::post(services::service_action),
        )
        .route("/v1/ports", get(services::list_ports))
        .route("/v1/ports/listening", get(services::listening_ports))
        .route("/v1/events", get(services::list_events))
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
}

impl ApiConfig {
    /// State changes need `token`, kept in `token_file`.
    pub fn with_token(token: &str, token_file: PathBuf) -> Self {
        Self {
            verifier: TokenVerifier::new(token),
            token_file: Some(token_file),
            limits: ServeLimits::default(),
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
    let app = router(node)
        .layer(axum::middleware::from_fn_with_state(guard, guard::check))
        .layer(axum::middleware::from_fn(guard::json_errors));
    listener::run(listener, app, config.limits, shutdown).await
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(ErrorBody {
            error: "no such route; see `mesh api GET /v1/status` and protocol/control-api.md"
                .into(),
        }),
    )
        .into_response()
}

async fn get_status(State(node): State<NodeHandle>) -> Response {
    let snap = node.snapshot();
    Json(status(&snap, Instant::now())).into_response()
}

#[derive(Deserialize)]
struct PeersQuery {
    /// Long poll: return once the snapshot version differs from this one.
    wait: Option<u64>,
    timeout_ms: Option<u64>,
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

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(ErrorBody { error: message })).into_response()
}

fn state_error(e: StateError) -> Response {
    match e {
        StateError::InvalidTag(_) | StateError::TooManyTags | StateError::NotOwned(_) => {
            error(StatusCode::BAD_REQUEST, e.to_string())
        }
        StateError::NotDurable(_) => error(StatusCode::INSUFFICIENT_STORAGE, e.to_string()),
        StateError::DocumentTooLarge { .. } => error(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
        other => error(StatusCode::SERVICE_UNAVAILABLE, other.to_string()),
    }
}

async fn post_tag(
    State(node): State<NodeHandle>,
    body: Result<Json<TagRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"key\": \"...\", \"value\": \"...\"}}: {e}"),
            );
        }
    };
    match node.state().set_tag(&req.key, Some(&req.value)).await {
        Ok(changed) => Json(TagResponse { changed }).into_response(),
        Err(e) => state_error(e),
    }
}

async fn delete_tag(State(node): State<NodeHandle>, Path(key): Path<String>) -> Response {
    match node.state().set_tag(&key, None).await {
        Ok(changed) => Json(TagResponse { changed }).into_response(),
        Err(e) => state_error(e),
    }
}
