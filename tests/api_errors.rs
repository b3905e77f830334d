//! Every kind of error answer of the control API, on one in-process node and its API on a real
//! loopback socket: each has its status and its stable `code` in the one JSON error body
//! (`{"code", "message"}`), whether a handler, an extractor (query string, body), the router
//! (route, method) or the checks in front of it refused the request.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use mesh::admission::MeshKey;
use mesh::api::server::{ApiConfig, serve_with};
use mesh::node::{DiscoveryMode, NodeConfig, NodeHandle, start_node};
use tokio_util::sync::CancellationToken;

/// Ceiling of one request.
const CEILING: Duration = Duration::from_secs(30);
/// The test server's API token.
const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

struct Server {
    node: NodeHandle,
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Server {
    async fn start() -> Self {
        let node = start_node(NodeConfig::for_test(
            "errors",
            MeshKey::generate(),
            DiscoveryMode::Off,
        ))
        .await
        .expect("start a node");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let config = ApiConfig::with_token(TOKEN, "/nonexistent/api.token".into());
        tokio::spawn(serve_with(listener, node.clone(), config, stop.clone()));
        Self { node, addr, stop }
    }

    /// Sends `method path` with `headers` (Host and `Connection: close` added unless given)
    /// and `body`; the answer.
    async fn send(&self, method: &str, path: &str, headers: &[&str], body: &str) -> Answer {
        let addr = self.addr;
        let mut head = format!("{method} {path} HTTP/1.1\r\n");
        if !headers
            .iter()
            .any(|h| h.to_ascii_lowercase().starts_with("host:"))
        {
            head.push_str(&format!("Host: {addr}\r\n"));
        }
        for h in headers {
            head.push_str(h);
            head.push_str("\r\n");
        }
        head.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        ));
        let request = [head.into_bytes(), body.as_bytes().to_vec()].concat();
        tokio::task::spawn_blocking(move || raw(addr, &request))
            .await
            .unwrap()
    }

    /// A state change with the token and JSON content type.
    async fn change(&self, method: &str, path: &str, body: &str) -> Answer {
        let auth = format!("Authorization: Bearer {TOKEN}");
        self.send(
            method,
            path,
            &[&auth, "Content-Type: application/json"],
            body,
        )
        .await
    }

    async fn stop(self) {
        self.stop.cancel();
        self.node.shutdown().await;
    }
}

#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: serde_json::Value,
}

impl Answer {
    /// Asserts the status, that the body is the error shape, and the code; the message.
    fn error(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status, status, "{self:?}");
        assert!(
            self.head
                .to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{self:?}"
        );
        assert_eq!(self.body["code"], code, "{self:?}");
        let message = self.body["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no message: {self:?}"));
        assert!(!message.is_empty(), "{self:?}");
        assert_eq!(
            self.body.as_object().map(|o| o.len()),
            Some(2),
            "only code and message: {self:?}"
        );
        message.to_string()
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

fn raw(addr: SocketAddr, request: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(addr).expect("connect to the API");
    stream.set_read_timeout(Some(CEILING)).unwrap();
    // A refused request may be answered before its whole body is read: a failed write is
    // fine as long as the answer arrives.
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    Answer {
        status,
        head: head.to_string(),
        body: serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_query_string_is_400_bad_request() {
    let server = Server::start().await;
    let answer = server.send("GET", "/v1/events?after=abc", &[], "").await;
    let message = answer.error(400, "bad_request");
    assert!(message.contains("after"), "{message}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_method_is_405_with_allow() {
    let server = Server::start().await;
    let answer = server.change("PUT", "/v1/status", "").await;
    let message = answer.error(405, "method_not_allowed");
    assert!(message.contains("PUT"), "{message}");
    let allow = answer.header("allow").expect("an Allow header");
    assert!(allow.contains("GET"), "{allow}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_route_is_404_not_found() {
    let server = Server::start().await;
    server
        .send("GET", "/v1/nothing", &[], "")
        .await
        .error(404, "not_found");
    server
        .send("GET", "/v2/status", &[], "")
        .await
        .error(404, "not_found");
    server
        .send("GET", "/ui/nothing.js", &[], "")
        .await
        .error(404, "not_found");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_body_is_400_bad_request() {
    let server = Server::start().await;
    for body in ["{not json", r#"{"key": 1}"#, ""] {
        let message = server
            .change("POST", "/v1/tags", body)
            .await
            .error(400, "bad_request");
        assert!(message.contains("expected"), "{message}");
    }
    server
        .change("POST", "/v1/services", r#"{"services": "web"}"#)
        .await
        .error(400, "bad_request");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_past_the_limit_is_413_payload_too_large() {
    let server = Server::start().await;
    // Past axum's default body limit of 2 MiB.
    let big = format!(r#"{{"key": "k", "value": "{}"}}"#, "x".repeat(3 << 20));
    server
        .change("POST", "/v1/tags", &big)
        .await
        .error(413, "payload_too_large");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_without_the_token_is_401_unauthorized() {
    let server = Server::start().await;
    let answer = server
        .send(
            "DELETE",
            "/v1/tags/role",
            &["Content-Type: application/json"],
            "",
        )
        .await;
    let message = answer.error(401, "unauthorized");
    assert!(message.contains("API token"), "{message}");
    assert_eq!(
        answer.header("www-authenticate").as_deref(),
        Some("Bearer realm=\"mesh\"")
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_a_foreign_host_or_origin_is_403_forbidden() {
    let server = Server::start().await;
    server
        .send(
            "DELETE",
            "/v1/tags/role",
            &[
                "Content-Type: application/json",
                "Authorization: Bearer nope",
            ],
            "",
        )
        .await
        .error(403, "forbidden");
    server
        .send("GET", "/v1/status", &["Host: evil.example"], "")
        .await
        .error(403, "forbidden");
    let auth = format!("Authorization: Bearer {TOKEN}");
    server
        .send(
            "DELETE",
            "/v1/tags/role",
            &[
                &auth,
                "Content-Type: application/json",
                "Origin: http://evil.example",
            ],
            "",
        )
        .await
        .error(403, "forbidden");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_is_not_json_is_415_unsupported_media_type() {
    let server = Server::start().await;
    let auth = format!("Authorization: Bearer {TOKEN}");
    server
        .send(
            "POST",
            "/v1/tags",
            &[&auth, "Content-Type: text/plain"],
            "a=b",
        )
        .await
        .error(415, "unsupported_media_type");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_service_or_action_is_404_not_found() {
    let server = Server::start().await;
    server
        .change("DELETE", "/v1/services/nothing", "")
        .await
        .error(404, "not_found");
    server
        .send("GET", "/v1/services/nothing/logs", &[], "")
        .await
        .error(404, "not_found");
    server
        .send("GET", "/v1/events?node=nobody", &[], "")
        .await
        .error(404, "not_found");
    let spec = r#"{"services": [{"name": "web", "command": "true"}]}"#;
    let answer = server.change("POST", "/v1/services", spec).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    server
        .change("POST", "/v1/services/web/explode", "")
        .await
        .error(404, "not_found");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_needed_service_is_409_conflict() {
    let server = Server::start().await;
    let specs = r#"{"services": [{"name": "db", "command": "true"},
                                {"name": "web", "command": "true", "after": ["db"]}]}"#;
    let answer = server.change("POST", "/v1/services", specs).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let message = server
        .change("DELETE", "/v1/services/db", "")
        .await
        .error(409, "conflict");
    assert!(message.contains("web"), "{message}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_spec_or_tag_is_400_bad_request() {
    let server = Server::start().await;
    let spec = r#"{"services": [{"name": "web", "command": "true", "after": ["nothing"]}]}"#;
    server
        .change("POST", "/v1/services", spec)
        .await
        .error(400, "bad_request");
    server
        .change("POST", "/v1/tags", r#"{"key": "", "value": "x"}"#)
        .await
        .error(400, "bad_request");
    server.stop().await;
}
