//! Handlers of the invite and join routes (see the route table in [`crate::api`]).
//!
//! Invites are this node's: created, listed and revoked through the node's invite store
//! (`NodeHandle::invites`). A join is the agent's business, not the node's (it ends with the
//! agent restarting under the new key): the handler hands the ticket to whoever holds the
//! other end of the [`JoinDoor`] (the daemon) and answers what it replies. Without a door (an
//! API over a node in a test) `POST /v1/join` is unavailable.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use tokio::sync::oneshot;

use super::body_error;
use super::door::{JoinDoorExt, JoinJob};
use crate::api::contract::{
    ApiError, ErrorCode, InviteCreateRequest, InviteCreated, InviteEntry, JoinApiRequest,
};
use crate::invite::{InviteError, InviteRecord, Ticket, unix_now};
use crate::node::{NodeError, NodeHandle};

/// An invite as the API shows it.
pub fn invite_entry(record: &InviteRecord, now: u64) -> InviteEntry {
    InviteEntry {
        id: record.id.clone(),
        name: record.name.clone(),
        created: record.created,
        expires: record.expires,
        uses: record.uses,
        used: record.used,
        status: record.status(now).to_string(),
    }
}

fn invite_error(e: NodeError) -> Response {
    let code = match &e {
        NodeError::Invites(
            InviteError::Uses | InviteError::Ttl | InviteError::Name | InviteError::Full,
        ) => ErrorCode::BadRequest,
        NodeError::Invites(InviteError::NotFound(_)) => ErrorCode::NotFound,
        NodeError::Invites(InviteError::Write(_)) => ErrorCode::NotDurable,
        _ => ErrorCode::Unavailable,
    };
    ApiError::new(code, e.to_string()).into_response()
}

pub async fn create_invite(
    State(node): State<NodeHandle>,
    body: Result<Json<InviteCreateRequest>, JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return body_error(e, r#"{"ttl_secs": 3600, "uses": 1, "name": null}"#),
    };
    match node.create_invite(req.ttl_secs, req.uses, req.name).await {
        Ok((record, ticket)) => Json(InviteCreated {
            invite: invite_entry(&record, unix_now()),
            ticket: ticket.encode(),
            inviter: ticket.inviter.to_base58(),
            mesh_id: ticket.mesh_id.to_string(),
            addrs: ticket.addrs.iter().map(|a| a.to_string()).collect(),
        })
        .into_response(),
        Err(e) => invite_error(e),
    }
}

pub async fn list_invites(State(node): State<NodeHandle>) -> Response {
    let now = unix_now();
    let invites = node.invites().clone();
    match tokio::task::spawn_blocking(move || invites.list(now)).await {
        Ok(list) => Json(
            list.iter()
                .map(|r| invite_entry(r, now))
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(_) => invite_error(NodeError::Stopped),
    }
}

pub async fn revoke_invite(State(node): State<NodeHandle>, Path(id): Path<String>) -> Response {
    let invites = node.invites().clone();
    match tokio::task::spawn_blocking(move || invites.revoke(&id)).await {
        Ok(Ok(record)) => Json(invite_entry(&record, unix_now())).into_response(),
        Ok(Err(e)) => invite_error(e.into()),
        Err(_) => invite_error(NodeError::Stopped),
    }
}

pub async fn join(
    Extension(door): Extension<JoinDoorExt>,
    body: Result<Json<JoinApiRequest>, JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return body_error(e, r#"{"ticket": "MESH1..."}"#),
    };
    let ticket = match Ticket::decode(&req.ticket) {
        Ok(t) => t,
        Err(e) => return ApiError::new(ErrorCode::BadRequest, e.to_string()).into_response(),
    };
    let Some(door) = door.0 else {
        return ApiError::new(
            ErrorCode::Unavailable,
            "this API cannot join its node to a mesh",
        )
        .into_response();
    };
    let (reply, answer) = oneshot::channel();
    if door.try_send(JoinJob { ticket, reply }).is_err() {
        return ApiError::new(
            ErrorCode::Unavailable,
            "a join is already under way on this agent",
        )
        .into_response();
    }
    match answer.await {
        Ok(Ok(joined)) => Json(joined).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(_) => ApiError::new(ErrorCode::Unavailable, "the agent is stopping").into_response(),
    }
}
