//! Queries one node answers about itself for another, through the mesh (`/mesh/query/1`):
//! a service's log lines, the machine's listening sockets, and the audit trail. None of it is
//! replicated (it is volatile or large); `mesh logs`, `mesh ports --listening --node` and
//! `mesh events --node` ask the node concerned. Spec: `protocol/query.md`.
//!
//! Owns the wire types and [`answer`], which both the remote path (the node actor, for an
//! admitted peer) and the local API call, so a query reads the same whether it is answered
//! here or there. Does not own the transport (the node actor sends and receives).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ports::scan::ListeningProcess;
use crate::supervisor::actor::{AuditRecord, SupervisorHandle};

/// Most log lines one query returns.
pub const MAX_LOG_LINES: u32 = 5_000;
/// Most events one query returns.
pub const MAX_EVENTS: u32 = 5_000;
/// Longest wait a remote events query may ask for: under the request timeout of the
/// transport (5 s), so the answer arrives before the stream is given up.
pub const MAX_REMOTE_WAIT: Duration = Duration::from_secs(3);

/// A question for one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryRequest {
    /// The last `lines` lines of a service's log, or with `offset` those written since.
    Logs {
        service: String,
        lines: u32,
        offset: Option<u64>,
    },
    /// Every listening socket of the node, with its process and leasing service.
    Listening,
    /// The audit trail: after `after` (oldest first), else the newest `limit`; waiting up to
    /// `wait_ms` for news past `after`.
    Events {
        after: Option<u64>,
        limit: u32,
        wait_ms: u64,
    },
}

/// One listening socket, with the service holding a lease on its port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListeningRow {
    pub socket: ListeningProcess,
    pub service: Option<String>,
}

/// The answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryResponse {
    Logs {
        lines: Vec<String>,
        offset: u64,
    },
    Listening {
        rows: Vec<ListeningRow>,
        /// False when some processes could not be read: their sockets have no pid.
        complete: bool,
    },
    Events {
        events: Vec<AuditRecord>,
        last_seq: u64,
        dropped: u64,
    },
    /// The node could not answer (no supervisor, unreadable log, ...).
    Error(String),
    /// The asker is not an admitted member.
    NotAdmitted,
}

/// Answers a query from this node's supervisor. `max_wait` caps an events wait.
pub async fn answer(
    supervisor: Option<&SupervisorHandle>,
    request: QueryRequest,
    max_wait: Duration,
) -> QueryResponse {
    let Some(supervisor) = supervisor else {
        return QueryResponse::Error("this node runs no supervisor".to_string());
    };
    match request {
        QueryRequest::Logs {
            service,
            lines,
            offset,
        } => match supervisor
            .logs(&service, lines.min(MAX_LOG_LINES) as usize, offset)
            .await
        {
            Ok((lines, offset)) => QueryResponse::Logs { lines, offset },
            Err(e) => QueryResponse::Error(e.to_string()),
        },
        QueryRequest::Listening => match supervisor.listening().await {
            Ok(report) => QueryResponse::Listening {
                complete: report.scan.coverage.is_complete(),
                rows: report
                    .scan
                    .processes()
                    .into_iter()
                    .map(|socket| ListeningRow {
                        service: report.leased_to.get(&(socket.port, socket.proto)).cloned(),
                        socket,
                    })
                    .collect(),
            },
            Err(e) => QueryResponse::Error(e.to_string()),
        },
        QueryRequest::Events {
            after,
            limit,
            wait_ms,
        } => {
            let wait = Duration::from_millis(wait_ms).min(max_wait);
            let page = supervisor
                .events(after, limit.min(MAX_EVENTS) as usize, wait)
                .await;
            QueryResponse::Events {
                events: page.events,
                last_seq: page.last_seq,
                dropped: page.dropped,
            }
        }
    }
}
