//! Handlers of the service, port, log and event routes (see the route table in
//! [`crate::api`]). Desired state goes into the replicated document; logs, listening sockets
//! and events are asked of the node concerned, here or through the mesh ([`crate::wire::query`]).
//!
//! Helpers return `Result<_, Response>`: the error is the finished HTTP answer, an
//! [`crate::api::ApiError`] (through `error`, `state_error`, `body_error`).
#![allow(clippy::result_large_err)]

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use libp2p::PeerId;

use super::convert::{placements, port_entries, service_entries};
use super::{body_error, error, state_error};
use crate::api::contract::{
    DrainResponse, EndpointEntry, EventEntry, EventsQuery, EventsResponse, ListeningEntry,
    ListeningResponse, LogsQuery, LogsResponse, MAX_WAIT, NodeQuery, RemoveResponse,
    ServiceActionResponse, ServiceAddRequest, ServiceAddResponse, ServiceAdded, decode_cursors,
};
use crate::identity::{NodeId, NodeName};
use crate::membership::PeerState;
use crate::node::NodeHandle;
use crate::services::{self, Change, LocalCheck, ServiceAction, ServiceError, View, Writer};
use crate::state::now_ms;
use crate::supervisor::ServiceSpec;
use crate::supervisor::query;
use crate::wire::query::{MAX_REMOTE_WAIT, QueryRequest, QueryResponse};

/// Default number of events.
const DEFAULT_EVENTS: u32 = 100;

pub async fn list_services(State(node): State<NodeHandle>) -> Response {
    let snap = node.state().snapshot();
    let view = View::new(&snap.state, &snap.specs);
    let placements = placements(&node.snapshot(), view);
    Json(service_entries(view, &placements, now_ms())).into_response()
}

/// The answer to a refused services operation.
fn service_error(e: ServiceError) -> Response {
    let status = match &e {
        ServiceError::NotFound { .. } | ServiceError::UnknownAction { .. } => StatusCode::NOT_FOUND,
        ServiceError::NeededBy { .. } => StatusCode::CONFLICT,
        ServiceError::NothingToAdd
        | ServiceError::ListedTwice
        | ServiceError::UnknownNode { .. }
        | ServiceError::InvalidSet(_)
        | ServiceError::RefusedHere { .. }
        | ServiceError::TooManyHere { .. } => StatusCode::BAD_REQUEST,
    };
    error(status, e.to_string())
}

/// This node as the writer of a change, now.
fn writer(node: &NodeHandle) -> Writer {
    let local = &node.snapshot().local;
    Writer {
        id: NodeId::from(local.peer_id),
        name: NodeName::from(local.name.as_str()),
        now_ms: now_ms(),
    }
}

pub async fn add_services(
    State(node): State<NodeHandle>,
    body: Result<Json<ServiceAddRequest>, JsonRejection>,
) -> Response {
    let Json(request) = match body {
        Ok(body) => body,
        Err(e) => return body_error(e, r#"{"services": [SPEC, ...]}"#),
    };
    let snap = node.state().snapshot();
    let supervisor = node.supervisor();
    let refusal = |spec: &ServiceSpec| supervisor.and_then(|s| s.rules().refusal(spec));
    let local = supervisor.map(|s| LocalCheck {
        refusal: &refusal,
        max_services: s.rules().max_services,
    });
    // Live members by the names they gave when admitted (see `services::add`).
    let members: Vec<(NodeId, NodeName)> = node
        .snapshot()
        .peers
        .iter()
        .filter(|p| p.state == PeerState::Alive)
        .filter_map(|p| {
            let info = p.info.as_ref()?;
            Some((NodeId::from(p.peer_id), NodeName::from(info.name.as_str())))
        })
        .collect();
    let plan = match services::add(
        View::new(&snap.state, &snap.specs),
        &writer(&node),
        request.services,
        local,
        &members,
    ) {
        Ok(plan) => plan,
        Err(e) => return service_error(e),
    };
    if !plan.writes.is_empty()
        && let Err(e) = node.state().write(plan.writes).await
    {
        return state_error(e);
    }
    Json(ServiceAddResponse {
        services: plan
            .added
            .into_iter()
            .map(|added| ServiceAdded {
                name: added.name,
                node: added.node,
                outcome: added.outcome.as_str().to_string(),
            })
            .collect(),
    })
    .into_response()
}

/// Writes a change's entries; answers whether the document changed.
async fn write_change(node: &NodeHandle, change: Change) -> Result<bool, Response> {
    if change.writes.is_empty() {
        return Ok(false);
    }
    node.state().write(change.writes).await.map_err(state_error)
}

pub async fn remove_service(State(node): State<NodeHandle>, Path(name): Path<String>) -> Response {
    let snap = node.state().snapshot();
    let view = View::new(&snap.state, &snap.specs);
    let change = match services::remove(view, &writer(&node), &name) {
        Ok(change) => change,
        Err(e) => return service_error(e),
    };
    let placed = change.node.clone();
    match write_change(&node, change).await {
        Ok(changed) => Json(ServiceActionResponse {
            name,
            node: placed,
            action: "removed".to_string(),
            changed,
        })
        .into_response(),
        Err(response) => response,
    }
}

pub async fn service_action(
    State(node): State<NodeHandle>,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    let snap = node.state().snapshot();
    let view = View::new(&snap.state, &snap.specs);
    let change = match ServiceAction::parse(&action)
        .and_then(|parsed| services::act(view, &writer(&node), &name, parsed))
    {
        Ok(change) => change,
        Err(e) => return service_error(e),
    };
    let (placed, changed) = (change.node.clone(), change.changed);
    match write_change(&node, change).await {
        Ok(_) => Json(ServiceActionResponse {
            name,
            node: placed,
            action,
            changed,
        })
        .into_response(),
        Err(response) => response,
    }
}

/// Where a query goes.
enum Target {
    Local,
    Remote(PeerId),
}

/// Resolves a node name (or id, or id tail) to this node or a connected peer.
fn resolve(node: &NodeHandle, wanted: Option<&str>) -> Result<(Target, String), Response> {
    let snap = node.snapshot();
    let local = &snap.local;
    let Some(wanted) = wanted.filter(|w| !w.is_empty()) else {
        return Ok((Target::Local, local.name.clone()));
    };
    let local_id = local.peer_id.to_base58();
    let peer_ids: Vec<String> = snap.peers.iter().map(|p| p.peer_id.to_base58()).collect();
    let nodes = std::iter::once((local_id.as_str(), local.name.as_str())).chain(
        snap.peers
            .iter()
            .zip(&peer_ids)
            .map(|(p, id)| (id.as_str(), p.info.as_ref().map_or("", |i| i.name.as_str()))),
    );
    let found = services::resolve_node(nodes, wanted);
    if found.contains(&local_id.as_str()) {
        return Ok((Target::Local, local.name.clone()));
    }
    let matches: Vec<_> = snap
        .peers
        .iter()
        .zip(&peer_ids)
        .filter(|(_, id)| found.contains(&id.as_str()))
        .map(|(p, _)| p)
        .collect();
    if let Some(peer) = matches
        .iter()
        .find(|p| p.connected && p.state == PeerState::Alive)
    {
        let name = peer
            .info
            .as_ref()
            .map_or_else(|| peer.peer_id.to_base58(), |i| i.name.clone());
        return Ok((Target::Remote(peer.peer_id), name));
    }
    Err(match matches.first() {
        Some(peer) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "node `{wanted}` is not reachable now (it is {})",
                peer.state
            ),
        ),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no node `{wanted}` in the mesh (see `mesh peers`)"),
        ),
    })
}

/// Asks `target` and maps transport and remote errors to answers.
async fn ask(
    node: &NodeHandle,
    target: Target,
    request: QueryRequest,
    max_wait: Duration,
) -> Result<QueryResponse, Response> {
    let answer = match target {
        Target::Local => query::answer(node.supervisor(), request, max_wait).await,
        Target::Remote(peer) => node
            .query(peer, request)
            .await
            .map_err(|e| error(StatusCode::BAD_GATEWAY, e.to_string()))?,
    };
    match answer {
        QueryResponse::Error(message) => Err(error(StatusCode::BAD_GATEWAY, message)),
        QueryResponse::NotAdmitted => Err(error(
            StatusCode::BAD_GATEWAY,
            "the node has not admitted this one yet; retry in a moment".to_string(),
        )),
        other => Ok(other),
    }
}

fn unexpected() -> Response {
    error(
        StatusCode::BAD_GATEWAY,
        "the node answered another question".to_string(),
    )
}

pub async fn service_logs(
    State(node): State<NodeHandle>,
    Path(name): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Response {
    let snap = node.state().snapshot();
    let view = View::new(&snap.state, &snap.specs);
    let runs_on = match services::runs_on(view, &name) {
        Ok(node_id) => node_id,
        Err(e) => return service_error(e),
    };
    let (target, node_label) = match resolve(&node, Some(runs_on.as_str())) {
        Ok(found) => found,
        Err(response) => return response,
    };
    let request = QueryRequest::Logs {
        service: name.clone(),
        lines: q.n.unwrap_or(crate::api::contract::DEFAULT_LOG_LINES),
        offset: q.offset,
    };
    match ask(&node, target, request, Duration::ZERO).await {
        Ok(QueryResponse::Logs {
            lines,
            offset,
            truncated,
        }) => Json(LogsResponse {
            service: name,
            node: node_label,
            lines,
            offset,
            truncated,
        })
        .into_response(),
        Ok(_) => unexpected(),
        Err(response) => response,
    }
}

/// `GET /v1/services/{name}/endpoints`: the copies that are ready (healthy), where to reach
/// each: its node's address and its first port.
pub async fn service_endpoints(
    State(node): State<NodeHandle>,
    Path(name): Path<String>,
) -> Response {
    let snap = node.state().snapshot();
    let view = View::new(&snap.state, &snap.specs);
    if view.active(&name).is_none() {
        return service_error(ServiceError::NotFound { service: name });
    }
    let state = &snap.state;
    let mut rows: Vec<EndpointEntry> = state
        .instances
        .values()
        .filter(|i| i.service == name && crate::placement::is_ready(i))
        .filter_map(|i| {
            let host = crate::placement::node_host(state.nodes.get(i.node.as_str())?)?;
            let port = u16::try_from(*i.ports.first()?).ok()?;
            Some(EndpointEntry {
                node: state.node_name(&i.node),
                node_id: i.node.to_string(),
                endpoint: format!("{host}:{port}"),
                host,
                port,
                state: i.state.to_string(),
            })
        })
        .collect();
    rows.sort_by(|a, b| a.node.cmp(&b.node));
    Json(rows).into_response()
}

/// `POST /v1/nodes/{node}/{drain|undrain}`: asks that node (here or through the mesh) to
/// set or clear its `drained` mark.
pub async fn node_action(
    State(node): State<NodeHandle>,
    Path((wanted, action)): Path<(String, String)>,
) -> Response {
    let drained = match action.as_str() {
        "drain" => true,
        "undrain" => false,
        "remove" => return remove_node(&node, &wanted).await,
        other => {
            return error(
                StatusCode::NOT_FOUND,
                format!("unknown node action `{other}` (use drain, undrain or remove)"),
            );
        }
    };
    let (target, label) = match resolve(&node, Some(&wanted)) {
        Ok(found) => found,
        Err(response) => return response,
    };
    match ask(
        &node,
        target,
        QueryRequest::Drain { drained },
        Duration::ZERO,
    )
    .await
    {
        Ok(QueryResponse::Drained { changed }) => Json(DrainResponse {
            node: label,
            drained,
            changed,
        })
        .into_response(),
        Ok(_) => unexpected(),
        Err(response) => response,
    }
}

/// `POST /v1/nodes/{node}/remove`: revokes a member (`mesh remove`). The node is found in the
/// document, so a dead or unreachable one can be removed too.
async fn remove_node(node: &NodeHandle, wanted: &str) -> Response {
    let snap = node.state().snapshot();
    let nodes = snap
        .state
        .nodes
        .iter()
        .map(|(id, record)| (id.as_str(), record.name.as_str()));
    let found = services::resolve_node(nodes, wanted);
    let id = match found.as_slice() {
        [id] => id.to_string(),
        [] => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no node `{wanted}` in the mesh (see `mesh peers --all`)"),
            );
        }
        several => {
            return error(
                StatusCode::CONFLICT,
                format!(
                    "`{wanted}` names {} nodes ({}): give the node id (see `mesh peers --all`)",
                    several.len(),
                    several.join(", ")
                ),
            );
        }
    };
    if id == node.peer_id().to_base58() {
        return error(
            StatusCode::CONFLICT,
            "a node cannot remove itself: run `mesh remove` on another member".to_string(),
        );
    }
    let name = snap.state.node_name(&id);
    match node.state().remove_node(&id).await {
        Ok(changed) => Json(RemoveResponse {
            node: name,
            id,
            changed,
        })
        .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

pub async fn list_ports(State(node): State<NodeHandle>, Query(q): Query<NodeQuery>) -> Response {
    let snap = node.state().snapshot();
    Json(port_entries(&snap.state, q.node.as_deref())).into_response()
}

pub async fn listening_ports(
    State(node): State<NodeHandle>,
    Query(q): Query<NodeQuery>,
) -> Response {
    let (target, node_label) = match resolve(&node, q.node.as_deref()) {
        Ok(found) => found,
        Err(response) => return response,
    };
    match ask(&node, target, QueryRequest::Listening, Duration::ZERO).await {
        Ok(QueryResponse::Listening { rows, complete }) => Json(ListeningResponse {
            node: node_label,
            complete,
            sockets: rows
                .into_iter()
                .map(|row| ListeningEntry {
                    port: row.socket.port,
                    proto: row.socket.proto.to_string(),
                    addr: row.socket.addr.to_string(),
                    pid: row.socket.pid,
                    process: row.socket.process,
                    service: row.service,
                })
                .collect(),
        })
        .into_response(),
        Ok(_) => unexpected(),
        Err(response) => response,
    }
}

/// How long a merged long poll waits for the other nodes once one has answered with events:
/// what they have at that moment comes along, the rest comes on the next poll.
const MERGE_GRACE: Duration = Duration::from_millis(100);

/// Every reachable node's trail (this node and each connected, alive peer), merged by time:
/// `mesh events` without `--node`. Each node is asked past its cursor; a long poll answers as
/// soon as one node has something (plus [`MERGE_GRACE`] for the others). A node that does not
/// answer keeps its cursor and is asked again next time.
async fn merged_events(node: &NodeHandle, q: &EventsQuery) -> Response {
    use futures::StreamExt;
    let snap = node.snapshot();
    let mut targets = vec![(
        Target::Local,
        snap.local.peer_id.to_base58(),
        snap.local.name.clone(),
    )];
    for p in snap
        .peers
        .iter()
        .filter(|p| p.connected && p.state == PeerState::Alive)
    {
        let name = p
            .info
            .as_ref()
            .map_or_else(|| p.peer_id.to_base58(), |i| i.name.clone());
        targets.push((Target::Remote(p.peer_id), p.peer_id.to_base58(), name));
    }
    let given = q.cursors.as_deref().map(decode_cursors);
    let mut cursors = given.clone().unwrap_or_default();
    let limit = q.limit.unwrap_or(DEFAULT_EVENTS);
    let wait_ms = q
        .wait_ms
        .unwrap_or(0)
        .min(MAX_REMOTE_WAIT.as_millis() as u64);
    let mut asks: futures::stream::FuturesUnordered<_> = targets
        .into_iter()
        .map(|(target, id, name)| {
            let after = cursors.get(&id).copied();
            let request = QueryRequest::Events {
                after,
                limit,
                wait_ms,
            };
            async move {
                let answer = ask(node, target, request, MAX_REMOTE_WAIT).await;
                (id, name, after, answer)
            }
        })
        .collect();
    let mut events = Vec::new();
    let mut dropped = 0;
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let next = match deadline {
            Some(at) => match tokio::time::timeout_at(at, asks.next()).await {
                Ok(next) => next,
                Err(_) => break,
            },
            None => asks.next().await,
        };
        let Some((id, name, after, answer)) = next else {
            break;
        };
        let Ok(QueryResponse::Events {
            events: found,
            last_seq,
            dropped: lost,
        }) = answer
        else {
            continue;
        };
        dropped += lost;
        // A trail that starts over (the agent restarted) is read again from its start.
        let restarted = after.is_some_and(|a| last_seq < a);
        cursors.insert(
            id,
            if restarted {
                0
            } else {
                last_seq.max(after.unwrap_or(0))
            },
        );
        if !found.is_empty() && deadline.is_none() && wait_ms > 0 {
            deadline = Some(tokio::time::Instant::now() + MERGE_GRACE);
        }
        events.extend(found.into_iter().map(|e| EventEntry {
            seq: e.seq,
            at_ms: e.at_ms,
            node: name.clone(),
            service: e.service,
            kind: e.kind,
            reason: e.reason,
        }));
    }
    if let Some(service) = q.service.as_deref().filter(|s| !s.is_empty()) {
        events.retain(|e| e.service == service);
    }
    events.sort_by(|a, b| (a.at_ms, &a.node, a.seq).cmp(&(b.at_ms, &b.node, b.seq)));
    // A first listing shows the newest `limit` of all; a follow-up shows all it got.
    if given.is_none() {
        let excess = events.len().saturating_sub(limit as usize);
        events.drain(..excess);
    }
    Json(EventsResponse {
        node: "mesh".into(),
        events,
        last_seq: 0,
        dropped,
        cursors,
    })
    .into_response()
}

pub async fn list_events(State(node): State<NodeHandle>, Query(q): Query<EventsQuery>) -> Response {
    if q.node.as_deref().is_none_or(str::is_empty) {
        return merged_events(&node, &q).await;
    }
    let (target, node_label) = match resolve(&node, q.node.as_deref()) {
        Ok(found) => found,
        Err(response) => return response,
    };
    let max_wait = match target {
        Target::Local => MAX_WAIT,
        Target::Remote(_) => MAX_REMOTE_WAIT,
    };
    let request = QueryRequest::Events {
        after: q.after,
        limit: q.limit.unwrap_or(DEFAULT_EVENTS),
        wait_ms: q.wait_ms.unwrap_or(0),
    };
    match ask(&node, target, request, max_wait).await {
        Ok(QueryResponse::Events {
            events,
            last_seq,
            dropped,
        }) => Json(EventsResponse {
            events: events
                .into_iter()
                .filter(|e| {
                    q.service
                        .as_deref()
                        .is_none_or(|s| s.is_empty() || e.service == s)
                })
                .map(|e| EventEntry {
                    seq: e.seq,
                    at_ms: e.at_ms,
                    node: node_label.clone(),
                    service: e.service,
                    kind: e.kind,
                    reason: e.reason,
                })
                .collect(),
            node: node_label,
            last_seq,
            dropped,
            cursors: Default::default(),
        })
        .into_response(),
        Ok(_) => unexpected(),
        Err(response) => response,
    }
}
