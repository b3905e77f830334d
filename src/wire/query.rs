//! Messages of `/mesh/query/1` (spec: `protocol/query.md`): questions one node answers about
//! itself for another (a service's log lines, the listening sockets, the audit trail), the
//! rows the answers carry, and the bounds of both.
//!
//! Owns the types, [`QueryRequest::validate`] (what every receiver checks first) and the
//! answer bounds. Does not own answering: `supervisor::query::answer` reads the supervisor,
//! the node actor and the local API call it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::name::{MAX_NAME_LEN, check_name};
use super::socket::ListeningProcess;

/// Most log lines one query returns.
pub const MAX_LOG_LINES: u32 = 5_000;
/// Most events one query returns.
pub const MAX_EVENTS: u32 = 5_000;
/// Most bytes of log text one answer carries, counting each line's bytes plus one (its
/// newline). A quarter of the 4 MiB query response limit (`transport::MAX_QUERY_RESPONSE`):
/// CBOR adds at most 9 bytes per line on top, so the largest answer still fits with room to
/// spare, and a local `mesh logs -n 5000` of a chatty service is ~1 MiB instead of tens of
/// MB. A tail answer keeps the newest lines that fit and says it was truncated.
pub const MAX_LOG_ANSWER_BYTES: usize = 1024 * 1024;
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
    /// Drain the node (`true`: move every service off it and place none on it) or undrain it.
    /// A change of desired state, sent only by a member whose local API checked the
    /// operator's credential.
    Drain { drained: bool },
    /// Which nodes, among `nodes` and those the answerer's document shows occupying a copy of
    /// `service`, the answerer sees up (itself when its own copy occupies): asked before an
    /// exclusive copy starts (`placement::Confirmation`). Bounded to [`MAX_HOLDERS_ASKED`]
    /// node ids of at most [`MAX_NODE_ID_LEN`] bytes.
    Holders { service: String, nodes: Vec<String> },
    /// The mesh's current key (64 hex characters) and its generation, handed by a member to
    /// one that missed a rotation (see `protocol/auth.md`, "Key rotation"). Answered by the
    /// node, never by the local API.
    Rekey { key: String, generation: u64 },
}

/// Most node ids one `Holders` question names.
pub const MAX_HOLDERS_ASKED: usize = 64;
/// Longest node id a question may name (a base58 peer id is 52 characters).
pub const MAX_NODE_ID_LEN: usize = 128;

/// One listening socket, with the service holding a lease on its port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListeningRow {
    pub socket: ListeningProcess,
    pub service: Option<String>,
}

/// One entry of the audit trail.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    /// Wall clock, milliseconds since the Unix epoch.
    pub at_ms: i64,
    pub service: String,
    /// Kebab-case kind (`start`, `backoff`, `give-up`, `port-allocated`, ...).
    pub kind: String,
    pub reason: String,
}

/// The answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryResponse {
    Logs {
        lines: Vec<String>,
        offset: u64,
        /// Older lines were left out to keep the answer within [`MAX_LOG_ANSWER_BYTES`].
        /// Absent from older nodes' answers (read as false).
        #[serde(default)]
        truncated: bool,
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
    /// The answer to [`QueryRequest::Drain`]: whether the mark changed.
    Drained { changed: bool },
    /// The answer to [`QueryRequest::Holders`]: the nodes seen up that occupy a copy.
    Holders { up: Vec<String> },
    /// The answer to [`QueryRequest::Rekey`]: whether the node took the key (false: it holds
    /// this one or a newer one already).
    Rekeyed { changed: bool },
    /// The node could not answer (no supervisor, unreadable log, ...).
    Error(String),
    /// The asker is not an admitted member.
    NotAdmitted,
}

impl QueryRequest {
    /// Checks what a peer (or the local API) sent before anything acts on it: a service name
    /// follows the service naming rule, as it becomes part of a file path.
    pub fn validate(&self) -> Result<(), String> {
        let service_name = |service: &str| {
            check_name(service).map_err(|why| {
                // The name is the peer's: shown shortened and escaped.
                let shown: String = service.chars().take(MAX_NAME_LEN + 1).collect();
                format!("invalid service name {shown:?}: {why}")
            })
        };
        match self {
            QueryRequest::Logs { service, .. } => service_name(service),
            QueryRequest::Holders { service, nodes } => {
                service_name(service)?;
                if nodes.len() > MAX_HOLDERS_ASKED {
                    return Err(format!(
                        "{} node ids asked about, at most {MAX_HOLDERS_ASKED}",
                        nodes.len()
                    ));
                }
                if nodes.iter().any(|n| n.len() > MAX_NODE_ID_LEN) {
                    return Err(format!("a node id longer than {MAX_NODE_ID_LEN} bytes"));
                }
                Ok(())
            }
            QueryRequest::Rekey { key, .. } => {
                if key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()) {
                    Ok(())
                } else {
                    Err("a key is 64 hex characters".to_string())
                }
            }
            QueryRequest::Listening | QueryRequest::Events { .. } | QueryRequest::Drain { .. } => {
                Ok(())
            }
        }
    }
}

/// The newest of `lines` (oldest first) that fit in `budget` bytes (each line plus its
/// newline), and whether older ones were left out.
pub fn newest_lines_within(mut lines: Vec<String>, budget: usize) -> (Vec<String>, bool) {
    let mut used = 0usize;
    let mut keep = 0usize;
    for line in lines.iter().rev() {
        let cost = line.len().saturating_add(1);
        if used.saturating_add(cost) > budget {
            break;
        }
        used += cost;
        keep += 1;
    }
    let truncated = keep < lines.len();
    lines.drain(..lines.len() - keep);
    (lines, truncated)
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

    #[test]
    fn a_log_query_names_a_service_by_the_naming_rule() {
        assert!(logs("web-1").validate().is_ok());
        assert!(logs("../../etc/shadow").validate().is_err());
        assert!(QueryRequest::Listening.validate().is_ok());
    }

    #[test]
    fn a_holders_question_is_bounded() {
        let ask = |service: &str, nodes: Vec<String>| QueryRequest::Holders {
            service: service.into(),
            nodes,
        };
        assert!(ask("lock", vec!["12D3KooW".into()]).validate().is_ok());
        assert!(ask("../x", Vec::new()).validate().is_err());
        let many = vec!["n".to_string(); MAX_HOLDERS_ASKED + 1];
        assert!(ask("lock", many).validate().is_err());
        let long = vec!["n".repeat(MAX_NODE_ID_LEN + 1)];
        assert!(ask("lock", long).validate().is_err());
    }

    #[test]
    fn newest_lines_within_keeps_the_newest_that_fit() {
        let lines: Vec<String> = ["aaa", "bb", "c"].map(String::from).to_vec();
        assert_eq!(
            newest_lines_within(lines.clone(), 100),
            (lines.clone(), false)
        );
        // "bb\n" + "c\n" = 5 bytes.
        assert_eq!(
            newest_lines_within(lines.clone(), 5),
            (vec!["bb".to_string(), "c".to_string()], true)
        );
        assert_eq!(
            newest_lines_within(lines.clone(), 4),
            (vec!["c".to_string()], true)
        );
        assert_eq!(newest_lines_within(lines, 1), (Vec::<String>::new(), true));
        assert_eq!(newest_lines_within(Vec::new(), 0), (Vec::new(), false));
    }

    #[test]
    fn a_logs_answer_without_truncated_from_an_older_node_reads_as_whole() {
        // What an older node sends: no `truncated` field.
        #[derive(Serialize)]
        enum OldResponse {
            Logs { lines: Vec<String>, offset: u64 },
        }
        let old = OldResponse::Logs {
            lines: vec!["x".into()],
            offset: 2,
        };
        // The wire is CBOR; serde fills a missing field from its default alike in any
        // self-describing format, and JSON keeps this test free of a CBOR dependency.
        let bytes = serde_json::to_vec(&old).unwrap();
        let new: QueryResponse = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            new,
            QueryResponse::Logs {
                lines: vec!["x".into()],
                offset: 2,
                truncated: false
            }
        );
    }
}
