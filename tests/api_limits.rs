//! The control API's connection and long-poll limits, on one in-process node and its API on a
//! real loopback socket, with limits shrunk so the tests are quick: half-sent requests are
//! closed after the head timeout, a full table evicts them for a real request, and long polls
//! past their pool answer 503 in JSON.

#[path = "support/cluster.rs"]
mod cluster;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use mesh::api::client::{ApiClient, ClientError};
use mesh::api::server::{ApiConfig, ServeLimits, serve_with};
use mesh::api::{ErrorCode, PeerEntry, StatusResponse};
use mesh::node::{DiscoveryMode, NodeHandle};
use tokio_util::sync::CancellationToken;

use cluster::Cluster;

/// Ceiling of every wait.
const CEILING: Duration = Duration::from_secs(30);
/// Connection table of the test server: small, so a few sockets fill it.
const TEST_MAX_CONNECTIONS: usize = 8;
/// Head timeout of the test server (the agent's is 5 s).
const TEST_HEAD_TIMEOUT: Duration = Duration::from_millis(500);
/// Pause between two probes of the long-poll pool.
const PROBE_INTERVAL: Duration = Duration::from_millis(20);
/// Long-poll pool of the test server.
const TEST_MAX_LONG_POLLS: usize = 2;

async fn serve_one(limits: ServeLimits) -> (NodeHandle, SocketAddr, CancellationToken) {
    let cluster = Cluster::new();
    let mut config = cluster.config("limits");
    config.discovery = DiscoveryMode::Off;
    let node = cluster.start(config).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let config = ApiConfig {
        limits,
        ..ApiConfig::default()
    };
    tokio::spawn(serve_with(listener, node.clone(), config, stop.clone()));
    (node, addr, stop)
}

/// A connection that sent part of a request head and nothing more.
fn half_sent(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .expect("send half a head");
    s
}

/// Whether the server has closed `s` (a read sees EOF or a reset), waiting up to `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_closed_and_evicted_for_real_ones() {
    let (node, addr, stop) = serve_one(ServeLimits {
        max_connections: TEST_MAX_CONNECTIONS,
        request_head_timeout: TEST_HEAD_TIMEOUT,
        max_long_polls: TEST_MAX_LONG_POLLS,
    })
    .await;
    let (status, first_closed, took) = tokio::task::spawn_blocking(move || {
        // Three times the table: the oldest are evicted as the later ones arrive.
        let mut held: Vec<TcpStream> = (0..3 * TEST_MAX_CONNECTIONS)
            .map(|_| half_sent(addr))
            .collect();
        let started = Instant::now();
        let status = ApiClient::new(&addr.to_string())
            .get::<StatusResponse>("/v1/status")
            .map(|s| s.body);
        let took = started.elapsed();
        // The first one was evicted long ago, or timed out: either way the server closed it.
        let first_closed = closed_within(&mut held[0], CEILING);
        (status, first_closed, took)
    })
    .await
    .unwrap();
    assert_eq!(status.expect("status answers").name, "limits");
    assert!(first_closed, "the oldest half-sent connection was closed");
    eprintln!("status with a full table of half-sent requests: {took:?}");

    // Alone, a half-sent request is closed by the head timeout.
    let closed_after = tokio::task::spawn_blocking(move || {
        let mut s = half_sent(addr);
        let started = Instant::now();
        let closed = closed_within(&mut s, CEILING);
        (closed, started.elapsed())
    })
    .await
    .unwrap();
    assert!(closed_after.0, "closed by the head timeout");
    assert!(
        closed_after.1 >= TEST_HEAD_TIMEOUT - Duration::from_millis(50),
        "not before the timeout: {:?}",
        closed_after.1
    );
    stop.cancel();
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_past_the_pool_answer_503_in_json() {
    let (node, addr, stop) = serve_one(ServeLimits {
        max_connections: TEST_MAX_CONNECTIONS,
        request_head_timeout: Duration::from_secs(5),
        max_long_polls: TEST_MAX_LONG_POLLS,
    })
    .await;
    let refused = tokio::task::spawn_blocking(move || {
        let client = ApiClient::new(&addr.to_string());
        let version = client
            .get::<Vec<PeerEntry>>("/v1/peers")
            .unwrap()
            .version
            .unwrap();
        // Fill the pool with polls that wait, poll after poll until told to stop (a lone
        // node's version may still move once after its start, which answers a poll early);
        // like the CLI's followers, they ask again if a probe below holds a slot just then.
        let stop_polling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pollers: Vec<_> = (0..TEST_MAX_LONG_POLLS)
            .map(|_| {
                let client = client.clone();
                let stop = stop_polling.clone();
                std::thread::spawn(move || {
                    let mut seen = version;
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        let answer = client.get_waiting::<Vec<PeerEntry>>(&format!(
                            "/v1/peers?wait={seen}&timeout_ms=1000"
                        ))?;
                        seen = answer.version.unwrap_or(seen);
                    }
                    Ok::<(), ClientError>(())
                })
            })
            .collect();
        // A 1 ms poll takes a free slot and answers 200; once the pool is full it is refused.
        let started = Instant::now();
        let refused = loop {
            match client.get::<Vec<PeerEntry>>(&format!("/v1/peers?wait={version}&timeout_ms=1")) {
                Err(e @ ClientError::Api { status: 503, .. }) => break Some(e),
                // Polled like every condition here; the pause leaves the pollers room to get in.
                Ok(_) if started.elapsed() < CEILING => std::thread::sleep(PROBE_INTERVAL),
                _ => break None,
            }
        };
        // Plain reads are not long polls: still answered.
        client.get::<StatusResponse>("/v1/status").unwrap();
        stop_polling.store(true, std::sync::atomic::Ordering::SeqCst);
        for p in pollers {
            p.join().unwrap().unwrap();
        }
        refused
    })
    .await
    .unwrap();
    let refused = refused.expect("a long poll past the pool is refused");
    assert!(
        matches!(
            refused,
            ClientError::Api {
                code: ErrorCode::TooManyLongPolls,
                ..
            }
        ),
        "{refused:?}"
    );
    assert!(
        refused.to_string().contains("too many waiting requests"),
        "{refused}"
    );
    stop.cancel();
    node.shutdown().await;
}
