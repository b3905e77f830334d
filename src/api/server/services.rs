//! Handlers of the service, port, log and event routes (see the route table in
//! [`crate::api`]). Desired state goes into the replicated document; logs, listening sockets
//! and events are asked of the node concerned, here or through the mesh ([`crate::wire::query`]).
//!
//! Helpers return `Result<_, Response>`: the error is the finished HTTP answer, an
//! [`crate::api::ApiError`] (through `error`, `state_error`, `body_error`).
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use libp2p::PeerId;

use super::convert::{port_entries, service_entries};
use super::{body_error, error, state_error};
use crate::api::contract::{
    EventEntry, EventsQuery, EventsResponse, ListeningEntry, ListeningResponse, LogsQuery,
    LogsResponse, MAX_WAIT, NodeQuery, ServiceActionResponse, ServiceAddRequest,
    ServiceAddResponse, ServiceAdded,
};
use crate::membership::PeerState;
use crate::node::NodeHandle;
use crate::state::actor::EntryWrite;
use crate::state::{MeshState, ServiceRecord, now_ms};
use crate::supervisor::query;
use crate::supervisor::{ServiceSpec, validate_set};
use crate::wire::query::{MAX_REMOTE_WAIT, QueryRequest, QueryResponse};

/// Default number of log lines.
const DEFAULT_LOG_LINES: u32 = 50;
/// Default number of events.
const DEFAULT_EVENTS: u32 = 100;

pub async fn list_services(State(node): State<NodeHandle>) -> Response {
    let snap = node.state().snapshot();
    Json(service_entries(&snap.state, now_ms())).into_response()
}

/// The services of the desired state (not removed), parsed.
fn active_specs(state: &MeshState) -> BTreeMap<String, ServiceSpec> {
    state
        .services
        .iter()
        .filter(|(_, r)| r.desired != "removed")
        .filter_map(|(name, r)| {
            serde_json::from_str::<ServiceSpec>(&r.spec_json)
                .ok()
                .map(|spec| (name.clone(), spec))
        })
        .collect()
}

pub async fn add_services(
    State(node): State<NodeHandle>,
    body: Result<Json<ServiceAddRequest>, JsonRejection>,
) -> Response {
    let Json(request) = match body {
        Ok(body) => body,
        Err(e) => return body_error(e, r#"{"services": [SPEC, ...]}"#),
    };
    if request.services.is_empty() {
        return error(StatusCode::BAD_REQUEST, "no services to add".to_string());
    }
    let snap = node.state().snapshot();
    let state = &snap.state;
    let local = node.snapshot().local.clone();
    let local_id = local.peer_id.to_base58();
    let mut incoming = request.services;
    for spec in &mut incoming {
        if spec.node.is_none() {
            spec.node = Some(local.name.clone());
        }
        let placed = spec.node.as_deref().unwrap_or_default();
        if placed != local.name && placed != local_id && state.nodes_named(placed).is_empty() {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "service `{}`: no node named `{placed}` in the mesh (see `mesh peers`)",
                    spec.name
                ),
            );
        }
    }
    // The whole mesh's services with these replacing theirs: names, dependencies, cycles and
    // fixed ports are checked as one set.
    let mut all = active_specs(state);
    for spec in &incoming {
        all.insert(spec.name.clone(), spec.clone());
    }
    let names: std::collections::BTreeSet<&str> =
        incoming.iter().map(|s| s.name.as_str()).collect();
    if names.len() != incoming.len() {
        return error(
            StatusCode::BAD_REQUEST,
            "a service is listed twice in the request".to_string(),
        );
    }
    // One spelling per node (its id), so a fixed-port clash between a service placed by
    // name and one placed by id is seen.
    let canonical = |spec: &ServiceSpec| {
        let placed = spec.node.as_deref().unwrap_or_default();
        if placed == local.name || placed == local_id {
            local_id.clone()
        } else {
            state
                .nodes_named(placed)
                .first()
                .map_or_else(|| placed.to_string(), |id| id.to_string())
        }
    };
    let set: Vec<ServiceSpec> = all
        .values()
        .map(|spec| {
            let mut spec = spec.clone();
            spec.node = Some(canonical(&spec));
            spec
        })
        .collect();
    if let Err(e) = validate_set(&set) {
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    // Services placed on this node: refused now if this node would refuse them later.
    if let Some(supervisor) = node.supervisor() {
        let rules = supervisor.rules();
        for spec in incoming.iter().filter(|s| canonical(s) == local_id) {
            if let Some(reason) = rules.refusal(spec) {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("service `{}` cannot run on this node: {reason}", spec.name),
                );
            }
        }
        let here = set
            .iter()
            .filter(|s| s.node.as_deref() == Some(&local_id))
            .count();
        if here > rules.max_services {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "this node would run {here} services; it runs at most {} (its profile's \
                     max_services)",
                    rules.max_services
                ),
            );
        }
    }
    let now = now_ms();
    let mut writes = Vec::new();
    let mut added = Vec::new();
    for spec in incoming {
        let spec_json = serde_json::to_string(&spec).expect("a spec always serializes");
        let existing = state
            .services
            .get(&spec.name)
            .filter(|r| r.desired != "removed");
        let outcome = match existing {
            None => "added",
            Some(r) if r.spec_json == spec_json => "unchanged",
            Some(_) => "updated",
        };
        if outcome != "unchanged" {
            writes.push(EntryWrite::Service {
                name: spec.name.clone(),
                record: ServiceRecord {
                    spec_json,
                    desired: existing.map_or("running".to_string(), |r| r.desired.clone()),
                    updated_by: local_id.clone(),
                    updated_at_ms: now,
                    request: None,
                    request_at_ms: None,
                    added_by: Some(local_id.clone()),
                },
            });
        }
        added.push(ServiceAdded {
            node: spec.node.clone().unwrap_or_default(),
            name: spec.name,
            outcome: outcome.to_string(),
        });
    }
    if !writes.is_empty()
        && let Err(e) = node.state().write(writes).await
    {
        return state_error(e);
    }
    Json(ServiceAddResponse { services: added }).into_response()
}

/// The record of an active service, or a 404 answer.
fn active_record(state: &MeshState, name: &str) -> Result<(ServiceRecord, String), Response> {
    let record = state
        .services
        .get(name)
        .filter(|r| r.desired != "removed")
        .cloned()
        .ok_or_else(|| {
            error(
                StatusCode::NOT_FOUND,
                format!("no service `{name}` (see `mesh services`)"),
            )
        })?;
    let node = serde_json::from_str::<ServiceSpec>(&record.spec_json)
        .ok()
        .and_then(|s| s.node)
        .unwrap_or_else(|| state.node_name(&record.updated_by));
    Ok((record, node))
}

pub async fn remove_service(State(node): State<NodeHandle>, Path(name): Path<String>) -> Response {
    let snap = node.state().snapshot();
    let (mut record, placed) = match active_record(&snap.state, &name) {
        Ok(found) => found,
        Err(response) => return response,
    };
    let dependents: Vec<String> = active_specs(&snap.state)
        .into_values()
        .filter(|s| s.after.contains(&name))
        .map(|s| s.name)
        .collect();
    if !dependents.is_empty() {
        return error(
            StatusCode::CONFLICT,
            format!(
                "service `{name}` is needed by {}; remove those first",
                dependents.join(", ")
            ),
        );
    }
    record.desired = "removed".to_string();
    record.updated_by = node.peer_id().to_base58();
    record.updated_at_ms = now_ms();
    record.request = None;
    record.request_at_ms = None;
    match node
        .state()
        .write(vec![EntryWrite::Service {
            name: name.clone(),
            record,
        }])
        .await
    {
        Ok(changed) => Json(ServiceActionResponse {
            name,
            node: placed,
            action: "removed".to_string(),
            changed,
        })
        .into_response(),
        Err(e) => state_error(e),
    }
}

pub async fn service_action(
    State(node): State<NodeHandle>,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    let snap = node.state().snapshot();
    let (mut record, placed) = match active_record(&snap.state, &name) {
        Ok(found) => found,
        Err(response) => return response,
    };
    let now = now_ms();
    let was_running = record.desired == "running";
    let changed = match action.as_str() {
        "stop" => {
            record.desired = "stopped".to_string();
            was_running
        }
        "start" => {
            record.desired = "running".to_string();
            record.request = Some("start".to_string());
            record.request_at_ms = Some(now);
            // Starting a `failed` service is a change too: it clears the failure.
            !was_running || instance_state(&snap.state, &name) == Some("failed")
        }
        "restart" => {
            record.desired = "running".to_string();
            record.request = Some("restart".to_string());
            record.request_at_ms = Some(now);
            true
        }
        other => {
            return error(
                StatusCode::NOT_FOUND,
                format!("unknown action `{other}` (use start, stop or restart)"),
            );
        }
    };
    if changed {
        record.updated_by = node.peer_id().to_base58();
        record.updated_at_ms = now;
        if let Err(e) = node
            .state()
            .write(vec![EntryWrite::Service {
                name: name.clone(),
                record,
            }])
            .await
        {
            return state_error(e);
        }
    }
    Json(ServiceActionResponse {
        name,
        node: placed,
        action,
        changed,
    })
    .into_response()
}

/// The published state of a service on any node.
fn instance_state<'a>(state: &'a MeshState, service: &str) -> Option<&'a str> {
    state
        .instances
        .values()
        .find(|i| i.service == service)
        .map(|i| i.state.as_str())
}

/// Where a query goes.
enum Target {
    Local,
    Remote(PeerId),
}

/// Resolves a node name (or id, or short id) to this node or a connected peer.
fn resolve(node: &NodeHandle, wanted: Option<&str>) -> Result<(Target, String), Response> {
    let snap = node.snapshot();
    let local = &snap.local;
    let Some(wanted) = wanted.filter(|w| !w.is_empty()) else {
        return Ok((Target::Local, local.name.clone()));
    };
    let local_id = local.peer_id.to_base58();
    if wanted == local.name || wanted == local_id || local_id.ends_with(wanted) && wanted.len() >= 6
    {
        return Ok((Target::Local, local.name.clone()));
    }
    let matches: Vec<_> = snap
        .peers
        .iter()
        .filter(|p| {
            let id = p.peer_id.to_base58();
            p.info.as_ref().is_some_and(|i| i.name == wanted)
                || id == wanted
                || (wanted.len() >= 6 && id.ends_with(wanted))
        })
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
    let state = &snap.state;
    // The node that runs it: its live instance, else where it is placed.
    let running_on = state
        .instances
        .values()
        .find(|i| i.service == name && i.state != "stopped")
        .or_else(|| state.instances.values().find(|i| i.service == name))
        .map(|i| state.node_name(&i.node));
    let placed = match running_on {
        Some(node) => node,
        None => match active_record(state, &name) {
            Ok((_, placed)) => placed,
            Err(response) => return response,
        },
    };
    let (target, node_label) = match resolve(&node, Some(&placed)) {
        Ok(found) => found,
        Err(response) => return response,
    };
    let request = QueryRequest::Logs {
        service: name.clone(),
        lines: q.n.unwrap_or(DEFAULT_LOG_LINES),
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

pub async fn list_events(State(node): State<NodeHandle>, Query(q): Query<EventsQuery>) -> Response {
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
        })
        .into_response(),
        Ok(_) => unexpected(),
        Err(response) => response,
    }
}
