//! Who can use the control API, tried on a real `mesh agent` on real loopback sockets: a local
//! unprivileged user reads but cannot change (and gets a clear 401); root through the CLI can;
//! a web page's cross-origin form POST and a foreign `Host` (DNS rebinding) are refused;
//! every error is JSON; the CLI accepts `v1/...` without the slash and exits quietly on a
//! closed pipe; 1,100 half-sent connections from an unprivileged process do not keep
//! `mesh status` from answering.
//!
//! Tests that act as another user need root and `setpriv`; they skip with a printed reason
//! otherwise.

#[path = "support/agent.rs"]
mod agent;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use agent::{Agent, CEILING, MESH, key_file, wait_until};

/// Half-sent connections the attacker holds, as in the report that led to the limits: more
/// than a default soft limit of 1,024 descriptors.
const ATTACK_CONNECTIONS: usize = 1_100;
/// Ceiling for one `mesh status` under attack. Generous (the measured figure is in
/// BENCHMARKS.md); before the limits it timed out after 40 s.
const STATUS_CEILING: Duration = Duration::from_secs(10);
/// `mesh status` calls timed under attack.
const STATUS_SAMPLES: usize = 20;

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn has(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Whether tests may act as `nobody`; prints why not.
fn can_drop_privileges(test: &str) -> bool {
    if !is_root() {
        eprintln!("skipping {test}: needs root to run commands as nobody");
        return false;
    }
    if !has("setpriv") {
        eprintln!("skipping {test}: setpriv (util-linux) is not installed");
        return false;
    }
    true
}

/// A python3 that nobody may run (a per-user install, like pyenv under /root, is not one).
fn nobody_python() -> Option<String> {
    ["/usr/bin/python3", "/usr/local/bin/python3", "python3"]
        .into_iter()
        .find(|python| {
            as_nobody(python)
                .args(["-c", "pass"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(str::to_string)
}

/// `setpriv ... -- PROGRAM`: runs as nobody/nogroup with no supplementary groups.
fn as_nobody(program: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        "--",
        program,
    ]);
    c
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(out: Output, what: &str) -> Output {
    assert!(out.status.success(), "{what}: {}", stderr(&out));
    out
}

/// Sends a raw HTTP/1.1 request and returns the status and body (the request must ask for
/// `Connection: close`).
fn raw(api: &str, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(api).expect("connect to the API");
    stream
        .set_read_timeout(Some(CEILING))
        .expect("set a read timeout");
    stream.write_all(request.as_bytes()).expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the answer");
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The `code` and `message` of an error body (`{"code": "...", "message": "..."}`).
fn error_of(body: &str) -> (String, String) {
    let json: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
    let field = |name: &str| {
        json[name]
            .as_str()
            .unwrap_or_else(|| panic!("no {name} field: {body}"))
            .to_string()
    };
    (field("code"), field("message"))
}

fn start(dir: &std::path::Path, name: &str) -> Agent {
    let key = key_file(dir);
    Agent::start(dir, name, &key, &[])
}

#[test]
fn a_local_user_reads_but_cannot_change_and_is_told_how() {
    if !can_drop_privileges("a_local_user_reads_but_cannot_change_and_is_told_how") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let agent = start(dir.path(), "alpha");
    let api = agent.api();
    let token = agent.dir.join("api.token");
    let meta = std::fs::metadata(&token).expect("the agent wrote its token file");
    assert_eq!(meta.len(), 65, "64 hex characters and a newline");
    let mode = meta.mode() & 0o777;
    assert!(
        mode == 0o600 || mode == 0o640,
        "the token is private: {mode:o}"
    );

    let nobody = |args: &[&str]| {
        as_nobody(MESH)
            .args(args)
            .env("MESH_API", &api)
            .env("MESH_DATA_DIR", &agent.dir)
            .output()
            .expect("run mesh as nobody")
    };
    let status = ok(nobody(&["status", "--json"]), "nobody: mesh status");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["name"], "alpha");
    ok(nobody(&["services"]), "nobody: mesh services");

    let refused = nobody(&["tag", "add", "role=nas"]);
    let message = stderr(&refused);
    assert_eq!(refused.status.code(), Some(1), "{message}");
    assert!(!message.contains("panicked"), "{message}");
    for part in [
        "401",
        "root",
        "`mesh` group",
        "api.token",
        "Permission denied",
    ] {
        assert!(
            message.contains(part),
            "the refusal names {part:?}: {message}"
        );
    }
    let refused = nobody(&["service", "add", "evil", "--", "sh", "-c", "id"]);
    assert!(stderr(&refused).contains("401"), "{}", stderr(&refused));
    // A guessed token is a 403.
    let guessed = as_nobody(MESH)
        .args(["tag", "rm", "role"])
        .env("MESH_API", &api)
        .env("MESH_API_TOKEN", "ab".repeat(32))
        .output()
        .unwrap();
    assert!(stderr(&guessed).contains("403"), "{}", stderr(&guessed));
    let services = agent.json(&["services"]);
    assert_eq!(
        services.as_array().map(Vec::len),
        Some(0),
        "nothing was added"
    );
    assert!(agent.json(&["peers"])[0]["tags"].get("role").is_none());
}

#[test]
fn root_changes_through_the_cli_and_web_pages_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(dir.path(), "beta");
    let api = agent.api();
    let port = api.rsplit(':').next().unwrap().to_string();

    // Root, through the CLI, with the token from the data dir: every kind of change.
    ok(agent.cli(&["tag", "add", "role=nas"]), "mesh tag add");
    ok(agent.cli(&["tag", "rm", "role"]), "mesh tag rm");
    ok(
        agent.cli(&["service", "add", "web", "--", "sleep", "100000"]),
        "mesh service add",
    );
    ok(agent.cli(&["service", "stop", "web"]), "mesh service stop");
    ok(
        agent.cli(&["service", "start", "web"]),
        "mesh service start",
    );
    ok(
        agent.cli(&["service", "restart", "web"]),
        "mesh service restart",
    );
    // The raw escape hatch, with and without the leading slash.
    ok(
        agent.cli(&[
            "api",
            "POST",
            "/v1/tags",
            r#"{"key": "zone", "value": "a"}"#,
        ]),
        "mesh api POST /v1/tags",
    );
    ok(
        agent.cli(&["api", "DELETE", "v1/tags/zone"]),
        "mesh api DELETE v1/tags/zone",
    );
    let status = ok(
        agent.cli(&["api", "GET", "v1/status"]),
        "mesh api GET v1/status",
    );
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["name"], "beta");
    wait_until("web is running", || {
        agent.json(&["services"]).as_array().and_then(|rows| {
            rows.iter()
                .find(|r| r["name"] == "web" && r["pid"].is_number())
                .cloned()
        })
    });

    // A web page's cross-origin form POST: refused, and the service keeps running.
    for action in ["stop", "restart"] {
        let (code, body) = raw(
            &api,
            &format!(
                "POST /v1/services/web/{action} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
                 Origin: http://evil.example\r\n\
                 Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 3\r\n\
                 Connection: close\r\n\r\na=b"
            ),
        );
        assert_eq!(code, 403, "{body}");
        assert_eq!(error_of(&body).0, "forbidden", "{body}");
        assert!(error_of(&body).1.contains("origin"), "{body}");
    }
    // The same without Origin (a `<form>` of a page loaded from file://, a no-cors fetch):
    // not JSON, refused.
    let (code, body) = raw(
        &api,
        &format!(
            "POST /v1/services/web/stop HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
             Content-Type: text/plain\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(code, 415, "{body}");
    assert_eq!(error_of(&body).0, "unsupported_media_type", "{body}");
    // DNS rebinding: the page's own host name resolves to 127.0.0.1; even reads are refused.
    let (code, body) = raw(
        &api,
        &format!(
            "GET /v1/status HTTP/1.1\r\nHost: evil.example:{port}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(code, 403, "{body}");
    assert_eq!(error_of(&body).0, "forbidden", "{body}");
    assert!(error_of(&body).1.contains("Host"), "{body}");
    let rows = agent.json(&["services"]);
    let web = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "web")
        .unwrap();
    assert_eq!(web["desired"], "running", "no refused request acted: {web}");
    // `localhost` with the port is this API too.
    let (code, _) = raw(
        &api,
        &format!("GET /v1/status HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(code, 200);

    // Every rejection is JSON: a wrong method, a bad query string.
    let token = std::fs::read_to_string(agent.dir.join("api.token")).unwrap();
    let (code, body) = raw(
        &api,
        &format!(
            "PUT /v1/status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
             Authorization: Bearer {}\r\nContent-Type: application/json\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n",
            token.trim()
        ),
    );
    assert_eq!(code, 405);
    assert_eq!(error_of(&body).0, "method_not_allowed", "{body}");
    assert!(error_of(&body).1.contains("PUT"), "{body}");
    let (code, body) = raw(
        &api,
        &format!(
            "GET /v1/events?after=abc HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
             Connection: close\r\n\r\n"
        ),
    );
    assert_eq!(code, 400);
    assert_eq!(error_of(&body).0, "bad_request", "{body}");
    assert!(error_of(&body).1.contains("after"), "{body}");
    ok(agent.cli(&["service", "rm", "web"]), "mesh service rm");
}

#[test]
fn the_cli_exits_quietly_when_its_output_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(dir.path(), "gamma");
    for args in [
        &["api", "GET", "/v1/events"][..],
        &["status"],
        &["peers", "--json"],
        &["services"],
    ] {
        // stdout is a pipe whose reading end is already closed: every write fails (EPIPE).
        let mut child = Command::new(MESH)
            .args(args)
            .env("MESH_API", agent.api())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "mesh {args:?}: {err}");
        assert_eq!(out.status.code(), Some(0), "mesh {args:?}: {err}");
    }
}

/// Holds `N` half-sent requests open against HOST:PORT for at most SECONDS, reopening any the
/// server closes; prints `ready` once all are open, then `reopened K` when stdin closes.
const HOLD_CONNECTIONS_PY: &str = r#"
import resource, selectors, socket, sys, threading, time
host, port, n, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
HALF = b"GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
sel = selectors.DefaultSelector()
def open_one():
    s = socket.create_connection((host, port), timeout=5)
    s.sendall(HALF)
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
for _ in range(n):
    open_one()
print("ready", flush=True)
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
reopened, deadline = 0, time.time() + seconds
while not stop.is_set() and time.time() < deadline:
    for key, _ in sel.select(timeout=0.1):
        sel.unregister(key.fileobj)
        key.fileobj.close()
        open_one()
        reopened += 1
print("reopened", reopened, flush=True)
"#;

#[test]
fn status_answers_while_an_unprivileged_user_holds_1100_half_sent_requests() {
    let test = "status_answers_while_an_unprivileged_user_holds_1100_half_sent_requests";
    if !can_drop_privileges(test) {
        return;
    }
    let Some(python) = nobody_python() else {
        eprintln!("skipping {test}: no python3 that nobody may run");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path());
    // The agent gets 1,024 descriptors and may not raise them: only its connection limit
    // stands between the attacker and `Too many open files`.
    let agent = Agent::start_wrapped(
        dir.path(),
        "delta",
        &key,
        &[],
        &[],
        &["sh", "-c", "ulimit -n 1024 && exec \"$0\" \"$@\""],
    );
    let api = agent.api();
    let (host, port) = api.rsplit_once(':').unwrap();
    let time_status = || {
        let started = Instant::now();
        let out = Command::new(MESH)
            .args(["status", "--json", "--api", &api])
            .output()
            .unwrap();
        let took = started.elapsed();
        assert!(out.status.success(), "mesh status: {}", stderr(&out));
        took
    };
    let baseline: Vec<Duration> = (0..STATUS_SAMPLES).map(|_| time_status()).collect();

    let mut attacker = as_nobody(&python)
        .args([
            "-c",
            HOLD_CONNECTIONS_PY,
            host,
            port,
            &ATTACK_CONNECTIONS.to_string(),
            "300",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the attacker");
    // Bounded (clippy.toml): the test reads one line; the reader thread may block after that.
    let (tx, rx) = std::sync::mpsc::sync_channel(64);
    let lines = BufReader::new(attacker.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in lines.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let ready = rx.recv_timeout(CEILING);
    assert_eq!(
        ready.as_deref(),
        Ok("ready"),
        "the attacker opened its connections"
    );
    let attacked: Vec<Duration> = (0..STATUS_SAMPLES).map(|_| time_status()).collect();
    // The agent still opens files: a tag change is written to its state file.
    ok(
        agent.cli(&["tag", "add", "under=attack"]),
        "mesh tag add under attack",
    );
    drop(attacker.stdin.take());
    let reopened = rx.recv_timeout(CEILING).unwrap_or_default();
    let _ = attacker.kill();
    let _ = attacker.wait();

    let ms = |d: &Duration| d.as_secs_f64() * 1e3;
    let summary = |v: &[Duration]| {
        let mut v = v.to_vec();
        v.sort();
        format!(
            "median {:.1} ms, max {:.1} ms",
            ms(&v[v.len() / 2]),
            ms(&v[v.len() - 1])
        )
    };
    eprintln!(
        "mesh status, {STATUS_SAMPLES} calls each: idle {}; with {ATTACK_CONNECTIONS} half-sent \
         connections held by nobody: {} ({reopened} connections closed by the agent and reopened)",
        summary(&baseline),
        summary(&attacked)
    );
    for took in &attacked {
        assert!(
            *took < STATUS_CEILING,
            "mesh status took {took:?} under attack; log:\n{}",
            agent.log()
        );
    }
    assert!(
        !agent.log().contains("Too many open files"),
        "{}",
        agent.log()
    );
}
