//! The web dashboard: its page and assets (embedded in the binary, no build step, no CDN),
//! the live stream it listens to (`GET /v1/stream`, server-sent events), the charts' history
//! (`GET /v1/history`) and the browser's login (`/v1/session`).
//!
//! The page reads like any API client (reads are open); buttons that change things send the
//! same requests the CLI sends, authenticated by a session cookie instead of the token: a
//! login posts the token once and gets back `HttpOnly; SameSite=Strict` cookie that stands for
//! it (`crate::api::auth::TokenVerifier::session`). The guard's `Host` and `Origin` checks hold
//! for every route here, and the page's answers forbid framing and foreign scripts (CSP).
//!
//! Nothing runs for the dashboard when no one watches: a stream computes an overview only when
//! a snapshot changes, and only while a browser is connected; the samples behind the charts
//! are taken by the sampler whether or not anyone looks (`crate::insight::sampler`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

use super::convert::{peer_entries, placements, port_entries, service_entries, status};
use super::guard::Guard;
use crate::api::auth::SESSION_TTL_S;
use crate::api::contract::{
    ApiError, ErrorCode, HistoryResponse, Overview, SessionRequest, SessionResponse,
};
use crate::insight::Sample;
use crate::insight::sampler::InsightHandle;
use crate::node::{NodeHandle, NodeSnapshot};
use crate::services::View;
use crate::state::actor::StateSnapshot;
use crate::state::now_ms;

/// Browsers streaming at once: a family's phones and laptops, with room to spare. Each holds
/// one connection and a task; beyond this, a page is told to retry.
pub const MAX_STREAMS: usize = 16;
/// Least time between two overviews on one stream: a crash shows within this, and a busy mesh
/// (RTT changes every probe) costs at most two overviews a second per browser.
pub const MIN_OVERVIEW_GAP: Duration = Duration::from_millis(500);
/// Comment lines keep idle streams open through proxies and show a dead browser.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How long a browser waits before reconnecting a dropped stream (sent as `retry:`).
const RETRY: Duration = Duration::from_secs(1);

const INDEX_HTML: &str = include_str!("../../../assets/dashboard/index.html");
const APP_JS: &str = include_str!("../../../assets/dashboard/app.js");
const APP_CSS: &str = include_str!("../../../assets/dashboard/app.css");
const ICON_SVG: &str = include_str!("../../../assets/dashboard/icon.svg");

/// What the dashboard's handlers share (an axum extension).
#[derive(Clone)]
pub struct DashboardExt {
    pub guard: Arc<Guard>,
    pub insight: Option<InsightHandle>,
    pub streams: Arc<Semaphore>,
}

/// The page may load only its own scripts, styles and images, talk only to this API, and not
/// be framed (its buttons cannot be clickjacked).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn page(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    // Assets change with the binary: a browser revalidates rather than run stale code.
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

pub async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX_HTML)
}

pub async fn asset(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "app.js" => page("text/javascript; charset=utf-8", APP_JS),
        "app.css" => page("text/css; charset=utf-8", APP_CSS),
        "icon.svg" => page("image/svg+xml", ICON_SVG),
        _ => ApiError::new(ErrorCode::NotFound, format!("no dashboard asset {file:?}"))
            .into_response(),
    }
}

/// The overview of `node` and `state`.
pub fn overview(node: &NodeSnapshot, state: &StateSnapshot) -> Overview {
    let now = Instant::now();
    let view = View::new(&state.state, &state.specs);
    Overview {
        status: status(node, now),
        peers: peer_entries(node, state, now),
        services: service_entries(view, &placements(node, view), now_ms()),
        ports: port_entries(&state.state, None),
    }
}

pub async fn history(
    State(node): State<NodeHandle>,
    axum::Extension(ext): axum::Extension<DashboardExt>,
) -> Response {
    let name = node.snapshot().local.name.clone();
    let (interval_ms, samples) = match &ext.insight {
        Some(i) => (i.interval().as_millis() as u64, i.history()),
        None => (0, Vec::new()),
    };
    Json(HistoryResponse {
        node: name,
        interval_ms,
        samples,
    })
    .into_response()
}

pub async fn session(
    headers: HeaderMap,
    axum::Extension(ext): axum::Extension<DashboardExt>,
) -> Response {
    Json(SessionResponse {
        logged_in: ext.guard.logged_in(&headers),
        expires_in_s: None,
    })
    .into_response()
}

pub async fn login(
    axum::Extension(ext): axum::Extension<DashboardExt>,
    body: Result<Json<SessionRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(request) = match body {
        Ok(b) => b,
        Err(e) => return super::body_error(e, r#"{"token": "..."}"#),
    };
    match ext.guard.login(&request.token) {
        Some(cookie) => {
            let mut response = Json(SessionResponse {
                logged_in: true,
                expires_in_s: Some(SESSION_TTL_S),
            })
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(SET_COOKIE, v);
            }
            response
        }
        None => ApiError::new(
            ErrorCode::Forbidden,
            "that is not this agent's API token; it is in the agent's token file (`sudo cat \
             /var/lib/mesh/api.token` on a default install)",
        )
        .into_response(),
    }
}

pub async fn logout(axum::Extension(ext): axum::Extension<DashboardExt>) -> Response {
    let mut response = Json(SessionResponse {
        logged_in: false,
        expires_in_s: None,
    })
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&ext.guard.logout()) {
        response.headers_mut().insert(SET_COOKIE, v);
    }
    response
}

/// `GET /v1/stream`: `overview` events (at connect, then on changes) and `sample` events (one
/// per sampler interval), until the browser goes or the agent stops.
pub async fn stream(
    State(node): State<NodeHandle>,
    axum::Extension(ext): axum::Extension<DashboardExt>,
) -> Response {
    let Ok(permit) = ext.streams.clone().try_acquire_owned() else {
        let mut response = ApiError::new(
            ErrorCode::TooManyLongPolls,
            format!("{MAX_STREAMS} dashboards are already streaming from this agent; retry later"),
        )
        .into_response();
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        return response;
    };
    let samples = ext.insight.as_ref().map(InsightHandle::subscribe);
    let stream = overview_stream(node, samples, permit);
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response();
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// What one stream remembers between events.
struct StreamState {
    node: NodeHandle,
    nodes: watch::Receiver<Arc<NodeSnapshot>>,
    states: watch::Receiver<Arc<StateSnapshot>>,
    samples: Option<watch::Receiver<Option<Arc<Sample>>>>,
    /// When the last overview went, and whether a change is waiting for the gap to pass.
    last: Option<Instant>,
    pending: bool,
    /// Holds the stream's slot until the stream is dropped.
    _permit: OwnedSemaphorePermit,
}

fn overview_stream(
    node: NodeHandle,
    mut samples: Option<watch::Receiver<Option<Arc<Sample>>>>,
    permit: OwnedSemaphorePermit,
) -> impl Stream<Item = Result<Event, Infallible>> {
    if let Some(s) = samples.as_mut() {
        s.borrow_and_update();
    }
    let state = StreamState {
        nodes: node.subscribe(),
        states: node.state().subscribe(),
        node,
        samples,
        last: None,
        pending: true,
        _permit: permit,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if st.pending {
                let ready_at = st.last.map(|t| t + MIN_OVERVIEW_GAP);
                let now = Instant::now();
                if ready_at.is_none_or(|at| at <= now) {
                    st.pending = false;
                    st.last = Some(now);
                    st.nodes.borrow_and_update();
                    st.states.borrow_and_update();
                    let view = overview(&st.node.snapshot(), &st.node.state().snapshot());
                    let event = Event::default()
                        .event("overview")
                        .retry(RETRY)
                        .json_data(&view)
                        .unwrap_or_else(|_| Event::default().comment("unencodable"));
                    return Some((Ok(event), st));
                }
            }
            let wait_gap = async {
                match (st.pending, st.last) {
                    (true, Some(at)) => tokio::time::sleep_until(at + MIN_OVERVIEW_GAP).await,
                    _ => std::future::pending().await,
                }
            };
            let next_sample = async {
                match st.samples.as_mut() {
                    Some(rx) => {
                        if rx.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = st.nodes.changed() => { if r.is_err() { return None; } st.pending = true; }
                r = st.states.changed() => { if r.is_err() { return None; } st.pending = true; }
                _ = wait_gap => {}
                _ = next_sample => {
                    let sample = st.samples.as_mut().and_then(|rx| rx.borrow_and_update().clone());
                    if let Some(sample) = sample {
                        let event = Event::default()
                            .event("sample")
                            .json_data(&*sample)
                            .unwrap_or_else(|_| Event::default().comment("unencodable"));
                        return Some((Ok(event), st));
                    }
                }
            }
        }
    })
}
