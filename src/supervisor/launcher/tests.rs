//! Tests of the real launcher: spawning, logs and rotation, signals, probes.

use super::logs::read_line_bounded;
use super::probe::parse_status_line;
use std::path::Path;

use super::*;
use crate::supervisor::spec::{HealthCheck, HealthSpec};
use std::net::TcpListener;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;
use tokio::io::BufReader;
use tokio::process::Command;

/// Ceiling for conditions in these tests: real processes on a loaded CI machine.
const CEILING: Duration = Duration::from_secs(20);
/// Poll period while waiting on a condition.
const POLL: Duration = Duration::from_millis(20);

async fn wait_until(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + CEILING;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// Spawns `spec` with no ports on node `n1`, logging to `dir` with the default limits.
async fn spawn_plain(spec: &ServiceSpec, dir: &Path) -> Result<RunningProcess, LaunchError> {
    spawn_service(spec, &BTreeMap::new(), "n1", dir, LogLimits::default()).await
}

fn sh(name: &str, script: &str) -> ServiceSpec {
    let mut spec = ServiceSpec::new(name, "sh");
    spec.args = vec!["-c".to_string(), script.to_string()];
    spec
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .expect("local address")
        .port()
}

async fn run_to_end(process: &mut RunningProcess) -> ExitStatus {
    let status = tokio::time::timeout(CEILING, process.wait())
        .await
        .expect("process exits")
        .expect("wait");
    tokio::time::timeout(CEILING, process.wait_logs())
        .await
        .expect("log pumps end");
    status
}

#[tokio::test]
async fn captures_exit_code_and_both_streams() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = sh("hello", "echo hi; echo err >&2; exit 3");
    let mut process = spawn_plain(&spec, dir.path()).await.expect("spawn");
    assert!(process.pid() > 1);
    assert_eq!(run_to_end(&mut process).await, ExitStatus::Code(3));
    let log = std::fs::read_to_string(log_path(dir.path(), "hello")).expect("log");
    let mut lines: Vec<&str> = log.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["err", "hi"]);
    assert_eq!(
        tail_log(dir.path(), "hello", 10).expect("tail").len(),
        2,
        "tail sees both lines"
    );
}

#[tokio::test]
async fn killed_process_reports_its_signal() {
    let dir = tempfile::tempdir().expect("tempdir");
    // `$$$$`: arguments are `$PORT`-expanded, where `$$` stands for `$`.
    let spec = sh("selfkill", "kill -9 $$$$");
    let mut process = spawn_plain(&spec, dir.path()).await.expect("spawn");
    assert_eq!(run_to_end(&mut process).await, ExitStatus::Signal(9));
}

#[tokio::test]
async fn a_service_gets_a_clean_environment_not_the_agents() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("env.txt");
    let mut spec = sh("envy", &format!("env > {}", out.display()));
    spec.env.insert("MINE".into(), "1".into());
    let mut process = spawn_plain(&spec, dir.path()).await.expect("spawn");
    assert_eq!(run_to_end(&mut process).await, ExitStatus::Code(0));
    let env = std::fs::read_to_string(&out).expect("the service wrote its environment");
    let names: Vec<&str> = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, _)| k)
        .collect();
    for wanted in ["PATH", "MINE", "MESH_NODE", "MESH_SERVICE"] {
        assert!(names.contains(&wanted), "{wanted} missing: {names:?}");
    }
    // cargo sets these for the test process (the agent here): not the service's business.
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
    assert!(!names.contains(&"CARGO_MANIFEST_DIR"), "{names:?}");
}

#[tokio::test]
async fn a_log_file_planted_as_a_symlink_is_not_followed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "ORIGINAL").unwrap();
    std::os::unix::fs::symlink(&victim, dir.path().join("planted.log")).unwrap();
    let spec = sh("planted", "echo WRITTEN");
    let err = spawn_plain(&spec, dir.path())
        .await
        .expect_err("a symlinked log file is refused");
    assert!(matches!(err, LaunchError::LogFile { .. }), "{err}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "ORIGINAL");
}

#[tokio::test]
async fn a_missing_working_dir_is_named_as_such() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = sh("lost", "true");
    spec.working_dir = Some(dir.path().join("gone"));
    let err = spawn_plain(&spec, dir.path())
        .await
        .expect_err("no such directory");
    assert!(matches!(err, LaunchError::WorkingDir { .. }), "{err}");
    assert!(err.to_string().contains("working_dir"), "{err}");
    assert!(!err.to_string().contains("cannot start"), "{err}");
}

#[tokio::test]
async fn spawn_failure_names_the_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = ServiceSpec::new("ghost", "/nonexistent/mesh-test-program");
    let err = spawn_plain(&spec, dir.path())
        .await
        .expect_err("no such program");
    assert!(matches!(err, LaunchError::Spawn { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/mesh-test-program"));
}

#[tokio::test]
async fn expands_ports_and_sets_the_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = sh(
        "env-check",
        "echo $PORT $PORT_ADMIN $MESH_SERVICE $MESH_NODE $GREETING \"$1\" \"$2\"",
    );
    spec.args.extend([
        "argv0".to_string(),
        "--port=$PORT".to_string(),
        "${PORT_ADMIN}$$".to_string(),
    ]);
    spec.env.insert("GREETING".to_string(), "hello".to_string());
    spec.working_dir = Some(dir.path().to_path_buf());
    let ports = BTreeMap::from([
        ("PORT".to_string(), 20001),
        ("PORT_ADMIN".to_string(), 20002),
    ]);
    let mut process = spawn_service(&spec, &ports, "node-a", dir.path(), LogLimits::default())
        .await
        .expect("spawn");
    assert_eq!(run_to_end(&mut process).await, ExitStatus::Code(0));
    assert_eq!(
        tail_log(dir.path(), "env-check", 10).expect("tail"),
        ["20001 20002 env-check node-a hello --port=20001 20002$"]
    );
}

/// Pids in process group `pgid` other than `pgid` itself, from `/proc/*/stat`.
fn group_members(pgid: u32) -> Vec<u32> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid pgrp ...`; comm may hold spaces, so split after `)`.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(2).and_then(|f| f.parse::<u32>().ok()) == Some(pgid) && pid != pgid {
            members.push(pid);
        }
    }
    members
}

/// Gone, or a zombie waiting for a reaper that may not exist in a container.
fn is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test]
async fn signal_group_reaches_descendants() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = sh("group", "sleep 1000 & sleep 1000");
    let mut process = spawn_plain(&spec, dir.path()).await.expect("spawn");
    let pid = process.pid();
    wait_until("both sleeps run in the service's group", async || {
        group_members(pid).len() >= 2
    })
    .await;
    let children = group_members(pid);
    signal_group(pid, StopSignal::Term).expect("signal the group");
    assert_eq!(run_to_end(&mut process).await, ExitStatus::Signal(15));
    for child in children {
        wait_until(&format!("child {child} is gone"), async || is_gone(child)).await;
    }
    assert!(signal_group(0, StopSignal::Term).is_err());
}

#[tokio::test]
async fn rotation_keeps_every_line_and_bounds_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 250 lines of 10 bytes: 2500 bytes, two rotations at 1 KiB, nothing beyond keep = 2.
    let spec = sh(
        "chatty",
        "i=0; while [ $i -lt 250 ]; do printf 'line-%04d\\n' $i; i=$((i+1)); done",
    );
    let limits = LogLimits {
        max_bytes: 1024,
        keep: 2,
    };
    let mut process = spawn_service(&spec, &BTreeMap::new(), "n1", dir.path(), limits)
        .await
        .expect("spawn");
    assert_eq!(run_to_end(&mut process).await, ExitStatus::Code(0));

    let files = [
        rotated_log_path(dir.path(), "chatty", 2),
        rotated_log_path(dir.path(), "chatty", 1),
        log_path(dir.path(), "chatty"),
    ];
    let mut all = String::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("log file exists");
        assert!(
            text.len() <= 1024,
            "{} holds {} bytes",
            file.display(),
            text.len()
        );
        assert!(text.ends_with('\n'), "no line split across files");
        all.push_str(&text);
    }
    assert!(!rotated_log_path(dir.path(), "chatty", 3).exists());
    let expected: String = (0..250).map(|i| format!("line-{i:04}\n")).collect();
    assert_eq!(all, expected);

    let tail = tail_log(dir.path(), "chatty", 120).expect("tail");
    let expected_tail: Vec<String> = (130..250).map(|i| format!("line-{i:04}")).collect();
    assert_eq!(tail, expected_tail, "tail spans rotated files");
    assert_eq!(
        tail_log(dir.path(), "chatty", 1000).expect("tail").len(),
        250
    );
    assert!(tail_log(dir.path(), "nobody", 5).expect("tail").is_empty());
}

#[tokio::test]
async fn rotation_drops_oldest_beyond_keep() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = sh(
        "flood",
        "i=0; while [ $i -lt 500 ]; do printf 'line-%04d\\n' $i; i=$((i+1)); done",
    );
    let limits = LogLimits {
        max_bytes: 1024,
        keep: 1,
    };
    let mut process = spawn_service(&spec, &BTreeMap::new(), "n1", dir.path(), limits)
        .await
        .expect("spawn");
    assert_eq!(run_to_end(&mut process).await, ExitStatus::Code(0));
    assert!(!rotated_log_path(dir.path(), "flood", 2).exists());
    let tail = tail_log(dir.path(), "flood", 1000).expect("tail");
    assert_eq!(tail.last().map(String::as_str), Some("line-0499"));
    assert!(
        tail.len() < 500 && tail.len() > 100,
        "{} lines kept",
        tail.len()
    );
}

#[tokio::test]
async fn long_lines_are_cut_into_bounded_pieces() {
    let mut reader = BufReader::new(&b"abcdefghij\nxy"[..]);
    let mut pieces = Vec::new();
    loop {
        let mut line = Vec::new();
        if read_line_bounded(&mut reader, &mut line, 4)
            .await
            .expect("read")
            == 0
        {
            break;
        }
        pieces.push(String::from_utf8(line).expect("utf-8"));
    }
    assert_eq!(pieces, ["abcd", "efgh", "ij\n", "xy"]);
}

/// `python3 -m http.server` on a free loopback port, killed on drop.
async fn http_server(dir: &Path) -> (tokio::process::Child, u16) {
    let port = free_port();
    let child = Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let tcp = HealthSpec::new(HealthCheck::Tcp);
    wait_until("the http server listens", async || {
        probe(&tcp, Some(port), Duration::from_secs(1)).await == HealthOutcome::Passed
    })
    .await;
    (child, port)
}

#[tokio::test]
async fn tcp_and_http_probes() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("healthz"), "ok").expect("write healthz");
    let (_server, port) = http_server(dir.path()).await;
    let timeout = Duration::from_secs(5);

    let tcp = HealthSpec::new(HealthCheck::Tcp);
    assert_eq!(
        probe(&tcp, Some(port), timeout).await,
        HealthOutcome::Passed
    );
    let closed = free_port();
    assert!(matches!(
        probe(&tcp, Some(closed), timeout).await,
        HealthOutcome::Failed { .. }
    ));
    assert!(matches!(
        probe(&tcp, None, timeout).await,
        HealthOutcome::Failed { .. }
    ));

    let healthz = HealthSpec::new(HealthCheck::Http {
        path: "/healthz".to_string(),
    });
    assert_eq!(
        probe(&healthz, Some(port), timeout).await,
        HealthOutcome::Passed
    );
    let missing = HealthSpec::new(HealthCheck::Http {
        path: "/missing".to_string(),
    });
    match probe(&missing, Some(port), timeout).await {
        HealthOutcome::Failed { detail } => assert!(detail.contains("404"), "{detail}"),
        HealthOutcome::Passed => panic!("a 404 must fail"),
    }
    assert!(matches!(
        probe(&healthz, Some(closed), timeout).await,
        HealthOutcome::Failed { .. }
    ));
}

#[tokio::test]
async fn http_probe_times_out_on_a_silent_server() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    // Accepts and never answers.
    let _silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let health = HealthSpec::new(HealthCheck::Http {
        path: "/".to_string(),
    });
    match probe(&health, Some(port), Duration::from_millis(200)).await {
        HealthOutcome::Failed { detail } => assert!(detail.contains("timed out"), "{detail}"),
        HealthOutcome::Passed => panic!("no answer must fail"),
    }
}

#[test]
fn parses_status_lines() {
    assert_eq!(parse_status_line(b"HTTP/1.1 204 No Content\r\n"), Some(204));
    assert_eq!(parse_status_line(b"HTTP/1.0 404\r\n"), Some(404));
    assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH\r\n"), None);
    assert_eq!(parse_status_line(b"HTTP/1.1 200 OK"), None);
}

#[tokio::test]
async fn exec_probes() {
    let timeout = Duration::from_secs(10);
    let exec = |command: &[&str]| {
        HealthSpec::new(HealthCheck::Exec {
            command: command.iter().map(|s| s.to_string()).collect(),
        })
    };
    assert_eq!(
        probe(&exec(&["true"]), None, timeout).await,
        HealthOutcome::Passed
    );
    assert!(matches!(
        probe(&exec(&["false"]), None, timeout).await,
        HealthOutcome::Failed { .. }
    ));
    assert!(matches!(
        probe(&exec(&["/nonexistent/check"]), None, timeout).await,
        HealthOutcome::Failed { .. }
    ));
    let started = Instant::now();
    match probe(&exec(&["sleep", "30"]), None, Duration::from_millis(200)).await {
        HealthOutcome::Failed { detail } => {
            assert!(detail.contains("did not finish"), "{detail}")
        }
        HealthOutcome::Passed => panic!("an overrun must fail"),
    }
    assert!(
        started.elapsed() < CEILING,
        "the overrunning check was cut short"
    );
}

#[tokio::test]
async fn probe_service_uses_the_service_port_and_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let working_dir = dir.path().canonicalize().expect("canonical dir");
    let mut spec = sh("checked", "true");
    spec.working_dir = Some(working_dir.clone());
    spec.health = Some(HealthSpec::new(HealthCheck::Exec {
        command: vec![
            "sh".to_string(),
            "-c".to_string(),
            "test \"$PORT:$MESH_SERVICE:$1:$(pwd)\" = \"20005:checked:20005:$2\"".to_string(),
            "argv0".to_string(),
            "$PORT".to_string(),
            working_dir.display().to_string(),
        ],
    }));
    let ports = BTreeMap::from([("PORT".to_string(), 20005)]);
    assert_eq!(
        probe_service(&spec, &ports, "n1").await,
        HealthOutcome::Passed
    );
    assert_eq!(
        probe_service(&sh("unchecked", "true"), &ports, "n1").await,
        HealthOutcome::Passed
    );
}
