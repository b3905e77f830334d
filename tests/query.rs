//! `/mesh/query/1` between two in-process nodes on real QUIC sockets (loopback, in-memory
//! discovery): what a peer may ask, and how large an answer gets. Waits are on conditions with
//! generous ceilings.

#[path = "support/cluster.rs"]
mod cluster;

use std::path::Path;
use std::time::Duration;

use mesh::node::NodeHandle;
use mesh::wire::query::{MAX_LOG_ANSWER_BYTES, QueryRequest, QueryResponse};

use cluster::{CEILING, Cluster, ProcessLauncher, supervisor_config, wait_connected};

/// An asker without services, and a node running a supervisor whose logs are in `dir/logs`.
async fn two_nodes(dir: &Path) -> (NodeHandle, NodeHandle) {
    let cluster = Cluster::new();
    let asker = cluster.start(cluster.config("asker")).await;
    let mut config = cluster.config("answerer");
    config.supervisor = Some(supervisor_config(dir, ProcessLauncher::shared()));
    let answerer = cluster.start(config).await;
    wait_connected(&asker, answerer.peer_id()).await;
    (asker, answerer)
}

/// Asks until the answer is not `NotAdmitted` (admission is per direction and may lag).
async fn ask(asker: &NodeHandle, answerer: &NodeHandle, request: QueryRequest) -> QueryResponse {
    let start = std::time::Instant::now();
    loop {
        let answer = asker
            .query(answerer.peer_id(), request.clone())
            .await
            .expect("the query is answered");
        if answer != QueryResponse::NotAdmitted || start.elapsed() > CEILING {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cannot_read_files_outside_the_log_dir() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("logs")).unwrap();
    // What `../secret` would reach: `logs/../secret.log`.
    std::fs::write(dir.path().join("secret.log"), "the secret\n").unwrap();
    let (asker, answerer) = two_nodes(dir.path()).await;
    for service in [
        "../secret",
        "/etc/passwd",
        "",
        "Web",
        "a/b",
        &"x".repeat(64),
    ] {
        let answer = ask(
            &asker,
            &answerer,
            QueryRequest::Logs {
                service: service.to_string(),
                lines: 10,
                offset: None,
            },
        )
        .await;
        match answer {
            QueryResponse::Error(message) => {
                assert!(message.contains("invalid service name"), "{message}")
            }
            other => panic!("{service:?} was answered: {other:?}"),
        }
    }
    // A well-formed name of a service without a log is an empty answer, not an error.
    let answer = ask(
        &asker,
        &answerer,
        QueryRequest::Logs {
            service: "web".into(),
            lines: 10,
            offset: None,
        },
    )
    .await;
    assert!(
        matches!(&answer, QueryResponse::Logs { lines, .. } if lines.is_empty()),
        "{answer:?}"
    );
    asker.shutdown().await;
    answerer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_tail_larger_than_a_query_answer_arrives_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    // 5,000 lines of ~1 KiB: 5 MB, more than the 4 MiB a query answer may hold.
    let mut text = String::new();
    for i in 0..5_000 {
        text.push_str(&format!("{i:05} {}\n", "x".repeat(1_000)));
    }
    std::fs::write(logs.join("chatty.log"), &text).unwrap();
    let (asker, answerer) = two_nodes(dir.path()).await;
    let answer = ask(
        &asker,
        &answerer,
        QueryRequest::Logs {
            service: "chatty".into(),
            lines: 5_000,
            offset: None,
        },
    )
    .await;
    let QueryResponse::Logs {
        lines,
        offset,
        truncated,
    } = answer
    else {
        panic!("not a log answer: {answer:?}");
    };
    assert!(truncated, "the answer says it was cut");
    let bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
    assert!(bytes <= MAX_LOG_ANSWER_BYTES, "{bytes} bytes");
    assert!(
        bytes > MAX_LOG_ANSWER_BYTES - 2_000,
        "as much as fits: {bytes}"
    );
    assert!(
        lines.last().unwrap().starts_with("04999 "),
        "the newest lines"
    );
    assert_eq!(offset, text.len() as u64, "following starts at the end");

    // A short tail is whole and says so.
    let answer = ask(
        &asker,
        &answerer,
        QueryRequest::Logs {
            service: "chatty".into(),
            lines: 10,
            offset: None,
        },
    )
    .await;
    assert!(
        matches!(&answer, QueryResponse::Logs { lines, truncated: false, .. } if lines.len() == 10),
        "{answer:?}"
    );
    asker.shutdown().await;
    answerer.shutdown().await;
}
