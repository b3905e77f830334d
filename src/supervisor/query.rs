//! Answers `/mesh/query/1` questions from this node's supervisor: log lines, listening sockets
//! and the audit trail ([`answer`]). The remote path (the node actor, for an admitted peer) and
//! the local API both call it, so a query reads the same whether it is answered here or there.
//!
//! Owns answering only: the messages and their bounds are [`crate::wire::query`]'s; the
//! transport is the node actor's.

use std::time::Duration;

use super::actor::SupervisorHandle;
use crate::identity::NodeId;
use crate::wire::query::{
    ListeningRow, MAX_EVENTS, MAX_LOG_ANSWER_BYTES, MAX_LOG_LINES, QueryRequest, QueryResponse,
    newest_lines_within,
};

// A follow answer (with `offset`) is one bounded read of the file: even if every byte were
// invalid UTF-8 (each becomes the 3-byte U+FFFD) it stays within the answer bound, so follow
// answers are never cut (cutting one would need the offset of raw bytes not returned).
const _: () = assert!(
    3 * super::launcher::LOG_READ_CHUNK as usize <= MAX_LOG_ANSWER_BYTES,
    "a follow read must fit in one log answer"
);

/// Answers a query from this node's supervisor. `max_wait` caps an events wait. Every
/// request is validated first ([`QueryRequest::validate`]), whoever sent it.
pub async fn answer(
    supervisor: Option<&SupervisorHandle>,
    request: QueryRequest,
    max_wait: Duration,
) -> QueryResponse {
    if let Err(why) = request.validate() {
        return QueryResponse::Error(why);
    }
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
            Ok((lines, new_offset)) => {
                // Follow answers are bounded by the read itself (see the assertion above).
                let (lines, truncated) = match offset {
                    Some(_) => (lines, false),
                    None => newest_lines_within(lines, MAX_LOG_ANSWER_BYTES),
                };
                QueryResponse::Logs {
                    lines,
                    offset: new_offset,
                    truncated,
                }
            }
            Err(e) => QueryResponse::Error(e.to_string()),
        },
        QueryRequest::Rekey { .. } => {
            QueryResponse::Error("a key is handed over between members only".to_string())
        }
        QueryRequest::Holders { service, nodes } => {
            let nodes: Vec<NodeId> = nodes.into_iter().map(NodeId::from).collect();
            QueryResponse::Holders {
                up: supervisor
                    .up_holders(&service, &nodes)
                    .into_iter()
                    .map(|n| n.to_string())
                    .collect(),
            }
        }
        QueryRequest::Drain { drained } => match supervisor.set_drained(drained).await {
            Ok(changed) => QueryResponse::Drained { changed },
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

#[cfg(test)]
mod tests {
    use super::*;

    fn logs(service: &str) -> QueryRequest {
        QueryRequest::Logs {
            service: service.to_string(),
            lines: 10,
            offset: None,
        }
    }

    #[tokio::test]
    async fn a_log_query_for_a_name_that_is_not_a_service_name_is_refused_first() {
        for bad in ["../../etc/shadow", "", "-x", "UPPER", "a.b", "a\0b"] {
            // Refused before anything else is looked at: here, before the missing supervisor.
            match answer(None, logs(bad), Duration::ZERO).await {
                QueryResponse::Error(message) => {
                    assert!(
                        message.contains("invalid service name"),
                        "{bad:?}: {message}"
                    )
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let long = "a".repeat(4_000);
        let QueryResponse::Error(message) = answer(None, logs(&long), Duration::ZERO).await else {
            panic!("a 4,000-character name is refused");
        };
        assert!(message.len() < 200, "the name is shortened: {message}");
        assert!(logs("web-1").validate().is_ok());
        assert!(QueryRequest::Listening.validate().is_ok());
    }
}
