//! The door between the API and the daemon for `POST /v1/join`: the job the handler hands over
//! and the channel it goes through. Leaf of `api::server` (imports nothing of it), so the
//! server can re-export it and the handlers use it without a cycle.

use tokio::sync::{mpsc, oneshot};

use crate::api::contract::{ApiError, JoinApiResponse};
use crate::invite::Ticket;

/// A join asked through the API, for the daemon: the decoded ticket and where its answer
/// goes.
pub struct JoinJob {
    pub ticket: Ticket,
    pub reply: oneshot::Sender<Result<JoinApiResponse, ApiError>>,
}

/// Where the API hands joins to the daemon. One join at a time is all that makes sense (the
/// agent restarts after it), so the channel holds one.
pub type JoinDoor = mpsc::Sender<JoinJob>;

/// The router's extension carrying the door (`None`: no join through this API).
#[derive(Clone, Default)]
pub struct JoinDoorExt(pub Option<JoinDoor>);
