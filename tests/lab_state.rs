//! Lab tests of the replicated state: real `mesh` agents in network namespaces
//! (`simulations/lab/lab.sh`), linked over real QUIC, replicating the Automerge document. They
//! cover what the in-process state tests (`tests/state.rs`) cannot: the CLI and API of the
//! binary, a `kill -9` right after a write (also while the writer is partitioned, so the tag
//! lives only in its own file until the heal), and a real partition (a hub that silently drops
//! every frame of one host) healing.
//!
//! Requirements: root, `ip` (iproute2) and `nft` (nftables); the partition test also needs
//! python3 (its observers). Without them each test prints `skipping: <reason>` and passes.
//!
//! Each test builds its own lab (`LAB_ID` `s<N>p<pid>`), so the tests run in parallel threads;
//! the [`Lab`] guard (`tests/support/lab.rs`, shared with `tests/lab.rs`) runs `lab.sh down`
//! when dropped, also when the test panics. Every wait is on a condition with a generous
//! ceiling. The partition test times convergence with one observer process per host
//! (`tests/support/state_observer.py`) inside the host's namespace, polling the agent's API
//! every 10 ms, so the measured time does not include the ~100 ms of `ip netns exec` per poll.

#[macro_use]
#[path = "support/lab.rs"]
mod lab;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use lab::{Lab, MESH_BIN, POLL, check, python_prerequisites, start_converged};

/// The per-host observer of the document (heads and tags), run inside a lab host.
const OBSERVER_PY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/support/state_observer.py"
);
/// How long the partition lasts, while both sides keep writing.
const PARTITION: Duration = Duration::from_secs(30);
/// Pause between two rounds of writes during the partition (one tag change per side a round).
const WRITE_EVERY: Duration = Duration::from_secs(2);
/// Ceiling for heal → identical documents on all three hosts. Expected: about a second
/// (redial every 0.5 s, then one or two sync round trips).
const HEAL_CEILING: Duration = Duration::from_secs(30);
/// The observers' poll interval, in ms: bounds the timing error of the partition test.
const OBSERVER_POLL_MS: &str = "10";
/// The observers stop on their own after this long (s), should the test not stop them.
const OBSERVER_MAX_S: &str = "180";

// ------------------------------------------------------------------------------ helpers

/// Runs `mesh tag ARGS` in host `k`, panicking unless it succeeds; returns how long it took
/// (including ~10-100 ms of `ip netns exec`).
fn tag(lab: &Lab, k: usize, args: &[&str]) -> Duration {
    let started = Instant::now();
    let mut all = vec![MESH_BIN, "tag"];
    all.extend_from_slice(args);
    let out = lab.exec(k, &all);
    check(
        &out,
        &format!("[{}] h{k}: mesh tag {}", lab.id, args.join(" ")),
    );
    started.elapsed()
}

/// Tag `key` of node `id` in one host's `mesh peers --json` rows.
fn tag_in<'a>(rows: &'a [Value], id: &str, key: &str) -> Option<&'a str> {
    rows.iter()
        .find(|r| r["id"] == id)
        .and_then(|r| r["tags"][key].as_str())
}

/// Tag `key` of node `id` as host `k` sees it, `None` if absent or the API does not answer.
fn tag_seen(lab: &Lab, k: usize, id: &str, key: &str) -> Option<String> {
    let rows = lab.peers(k).ok()?;
    tag_in(&rows, id, key).map(str::to_owned)
}

/// Host `k`'s document heads, sorted; `None` while its API does not answer.
fn heads(lab: &Lab, k: usize) -> Option<Vec<String>> {
    let state = lab.state(k).ok()?;
    let mut heads: Vec<String> = state["heads"]
        .as_array()?
        .iter()
        .filter_map(|h| h.as_str().map(str::to_owned))
        .collect();
    heads.sort();
    Some(heads)
}

/// True if hosts `1..=n` all answer with the same heads.
fn same_heads(lab: &Lab, n: usize) -> bool {
    let all: Vec<Option<Vec<String>>> = (1..=n).map(|k| heads(lab, k)).collect();
    all[0].is_some() && all.iter().all(|h| *h == all[0])
}

/// Fails the test if an agent panicked; prints (does not fail on) its ERROR and WARN lines.
fn check_agent_logs(lab: &Lab) {
    for k in 1..=lab.hosts {
        let log = lab.agent_log(k);
        let panics: Vec<&str> = log.lines().filter(|l| l.contains("panicked")).collect();
        assert!(
            panics.is_empty(),
            "[{}] h{k}'s agent panicked:\n{}",
            lab.id,
            panics.join("\n")
        );
        let noisy: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("ERROR") || l.contains("WARN"))
            .collect();
        if !noisy.is_empty() {
            eprintln!(
                "[{}] h{k}: {} WARN/ERROR log lines, e.g.:\n  {}",
                lab.id,
                noisy.len(),
                noisy[..noisy.len().min(5)].join("\n  ")
            );
        }
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

// ------------------------------------------------------------------------------ observers

/// One observer process per host (`state_observer.py`), stopped (stop file, then kill) on drop.
struct Observers {
    children: Vec<Child>,
    files: Vec<PathBuf>,
    stop_file: PathBuf,
}

impl Observers {
    fn start(lab: &Lab, hosts: usize) -> Observers {
        let dir = lab.scratch();
        let stop_file = dir.join("observers.stop");
        let mut children = Vec::new();
        let mut files = Vec::new();
        for k in 1..=hosts {
            let file = dir.join(format!("observer.h{k}.jsonl"));
            let err = std::fs::File::create(dir.join(format!("observer.h{k}.err")))
                .expect("create observer stderr file");
            let child = lab
                .command(&[
                    "exec",
                    &k.to_string(),
                    "python3",
                    OBSERVER_PY,
                    "--out",
                    file.to_str().expect("UTF-8 temp path"),
                    "--poll-ms",
                    OBSERVER_POLL_MS,
                    "--duration",
                    OBSERVER_MAX_S,
                    "--stop-file",
                    stop_file.to_str().expect("UTF-8 temp path"),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(err)
                .spawn()
                .expect("spawn the observer");
            children.push(child);
            files.push(file);
        }
        let obs = Observers {
            children,
            files,
            stop_file,
        };
        lab.wait("every observer has written its first view", || {
            (0..hosts).all(|i| obs.last(i).is_some_and(|l| l.get("heads").is_some()))
        });
        obs
    }

    /// Every line host `i + 1`'s observer has written so far.
    fn lines(&self, i: usize) -> Vec<Value> {
        std::fs::read_to_string(&self.files[i])
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn last(&self, i: usize) -> Option<Value> {
        self.lines(i).pop()
    }
}

impl Drop for Observers {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.stop_file, "stop\n");
        let deadline = Instant::now() + Duration::from_secs(5);
        for child in &mut self.children {
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(POLL);
            }
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

// ------------------------------------------------------------------------------ tests

#[test]
fn tag_added_on_one_host_is_seen_on_the_others() {
    require_lab!();
    let lab = Lab::up("s1", 3);
    let key = lab.new_key("mesh.key");
    let ids = start_converged(&lab, 3, &key);

    let took = tag(&lab, 1, &["add", "role=nas"]);
    let added = Instant::now();
    // Read-your-writes: the command returns after the change is applied locally.
    let rows = lab.peers(1).expect("h1's API answers");
    assert_eq!(
        tag_in(&rows, &ids[0], "role"),
        Some("nas"),
        "h1's own row right after `mesh tag add`: {rows:?}"
    );
    let seen = lab.wait("h2 and h3 list h1 with tags.role = nas", || {
        [2, 3]
            .iter()
            .all(|&k| tag_seen(&lab, k, &ids[0], "role").as_deref() == Some("nas"))
    });
    eprintln!(
        "[{}] `mesh tag add` took {took:?}; seen on h2 and h3 within {seen:?} (incl. polling cost)",
        lab.id
    );
    for k in 1..=3 {
        let rows = lab.peers(k).expect("API answers");
        for (j, id) in ids.iter().enumerate().filter(|(j, _)| *j != 0) {
            let row = rows
                .iter()
                .find(|r| r["id"] == *id)
                .expect("every node listed");
            assert_eq!(
                row["tags"],
                json!({}),
                "h{k}'s row of h{} must have no tags",
                j + 1
            );
        }
    }

    // And the removal travels the same way.
    tag(&lab, 1, &["rm", "role"]);
    let rows = lab.peers(1).expect("h1's API answers");
    assert_eq!(
        tag_in(&rows, &ids[0], "role"),
        None,
        "h1's own row right after `mesh tag rm`"
    );
    lab.wait("h2 and h3 list h1 without tags.role", || {
        [2, 3].iter().all(|&k| {
            lab.peers(k)
                .is_ok_and(|rows| tag_in(&rows, &ids[0], "role").is_none())
        })
    });
    lab.wait("all three hosts have the same heads", || {
        same_heads(&lab, 3)
    });
    eprintln!(
        "[{}] add + rm converged {:?} after the add returned",
        lab.id,
        added.elapsed()
    );
    check_agent_logs(&lab);
}

#[test]
fn tag_survives_kill_9_right_after_add() {
    require_lab!();
    let lab = Lab::up("s2", 3);
    let key = lab.new_key("mesh.key");
    let ids = start_converged(&lab, 3, &key);

    tag(&lab, 1, &["add", "role=nas"]);
    lab.lab_ok(&["kill", "1"]);
    let pushed: Vec<bool> = [2, 3]
        .iter()
        .map(|&k| tag_seen(&lab, k, &ids[0], "role").as_deref() == Some("nas"))
        .collect();
    eprintln!(
        "[{}] right after kill -9: h2 has the tag: {}, h3 has it: {}",
        lab.id, pushed[0], pushed[1]
    );

    lab.start(1, &key);
    // "At once": the first answer of the restarted agent's API already has the tag, read from
    // its own file (not from peers, which it may not have reached yet).
    let mut first = None;
    lab.wait("the restarted h1's API answers", || {
        first = lab.peers(1).ok();
        first.is_some()
    });
    let rows = first.expect("set when the wait succeeded");
    let me = rows.iter().find(|r| r["self"] == true).expect("a self row");
    assert_eq!(me["id"], ids[0], "the restarted agent keeps its identity");
    assert_eq!(
        me["tags"]["role"], "nas",
        "h1's first answer after restart must have its tag: {me}"
    );
    let state = lab.state(1).expect("h1's API answers");
    assert_eq!(
        state["recovered_from_corruption"], false,
        "h1 after kill -9: {state}"
    );
    assert_eq!(state["skipped_entries"], 0, "h1 after kill -9: {state}");

    lab.wait("h2 and h3 list h1 with tags.role = nas", || {
        [2, 3]
            .iter()
            .all(|&k| tag_seen(&lab, k, &ids[0], "role").as_deref() == Some("nas"))
    });
    lab.wait("all three hosts have the same heads", || {
        same_heads(&lab, 3)
    });

    // The push above reached h2 and h3 before the kill, so they could have given the tag back.
    // Now with h1 cut off from the start: the write, the kill and the restart all happen while
    // only h1's own file can hold the tag; after the heal the others get it from h1.
    lab.lab_ok(&["partition", "1"]);
    tag(&lab, 1, &["add", "zone=attic"]);
    lab.lab_ok(&["kill", "1"]);
    lab.start(1, &key);
    let mut first = None;
    lab.wait("the restarted, partitioned h1's API answers", || {
        first = lab.peers(1).ok();
        first.is_some()
    });
    let rows = first.expect("set when the wait succeeded");
    let me = rows.iter().find(|r| r["self"] == true).expect("a self row");
    assert_eq!(
        me["tags"],
        json!({"role": "nas", "zone": "attic"}),
        "partitioned h1's first answer after restart: {me}"
    );
    for k in [2, 3] {
        assert_eq!(
            tag_seen(&lab, k, &ids[0], "zone"),
            None,
            "h{k} got zone=attic through the partition"
        );
    }
    lab.lab_ok(&["heal", "1"]);
    lab.wait(
        "h2 and h3 list h1 with tags.zone = attic after the heal",
        || {
            [2, 3]
                .iter()
                .all(|&k| tag_seen(&lab, k, &ids[0], "zone").as_deref() == Some("attic"))
        },
    );
    lab.wait("all three hosts have the same heads", || {
        same_heads(&lab, 3)
    });
    check_agent_logs(&lab);
}

#[test]
fn partition_heals_and_converges() {
    require_lab!();
    if let Err(reason) = python_prerequisites(&[]) {
        return eprintln!("skipping: {reason}");
    }
    let lab = Lab::up("s3", 3);
    let key = lab.new_key("mesh.key");
    let ids = start_converged(&lab, 3, &key);
    let observers = Observers::start(&lab, 3);

    // Side A = {h1, h2}, side B = {h3}. Each round: a new value of `a` on h1 and of `b` on h3;
    // plus a tag `gone` set on both sides and removed again, so deletions merge too.
    lab.lab_ok(&["partition", "3"]);
    let partitioned = Instant::now();
    let (mut last_a, mut last_b) = (String::new(), String::new());
    let mut slowest = Duration::ZERO;
    let mut round = 0u32;
    while partitioned.elapsed() < PARTITION {
        let round_start = Instant::now();
        last_a = format!("a{round}");
        last_b = format!("b{round}");
        slowest = slowest.max(tag(&lab, 1, &["add", &format!("a={last_a}")]));
        slowest = slowest.max(tag(&lab, 3, &["add", &format!("b={last_b}")]));
        match round {
            1 => {
                tag(&lab, 1, &["add", "gone=1"]);
                tag(&lab, 3, &["add", "gone=3"]);
            }
            4 => {
                tag(&lab, 1, &["rm", "gone"]);
                tag(&lab, 3, &["rm", "gone"]);
            }
            _ => {}
        }
        round += 1;
        // Pace the writes (this is the scenario's schedule, not a wait for a condition).
        std::thread::sleep(WRITE_EVERY.saturating_sub(round_start.elapsed()));
    }
    eprintln!(
        "[{}] {round} rounds of writes on each side during the partition; slowest `mesh tag` {slowest:?}",
        lab.id
    );

    // Not vacuous: side A replicated within itself, and side B really was cut off.
    lab.wait("h2 has h1's last write (side A still syncs)", || {
        tag_seen(&lab, 2, &ids[0], "a").as_deref() == Some(last_a.as_str())
    });
    let h3_view = lab.peers(3).expect("h3's API answers");
    assert_ne!(
        tag_in(&h3_view, &ids[0], "a"),
        Some(last_a.as_str()),
        "h3 got h1's writes through the partition"
    );
    assert_ne!(
        tag_in(&lab.peers(1).expect("h1's API answers"), &ids[2], "b"),
        Some(last_b.as_str()),
        "h1 got h3's writes through the partition"
    );

    let mut expected = serde_json::Map::new();
    expected.insert(ids[0].clone(), json!({"a": last_a}));
    expected.insert(ids[1].clone(), json!({}));
    expected.insert(ids[2].clone(), json!({"b": last_b}));
    let expected = Value::Object(expected);
    let heal_started = unix_now();
    lab.lab_ok(&["heal", "3"]);
    let healed = unix_now();

    // Converged: every observer's latest view has the expected tags and the same heads. The
    // convergence time is the latest of the moments each host reached that view.
    let mut views: Vec<Value> = Vec::new();
    let converged = lab::wait_until(HEAL_CEILING, || {
        views = (0..3).filter_map(|i| observers.last(i)).collect();
        views.len() == 3
            && views
                .iter()
                .all(|v| v["tags"] == expected && v.get("heads").is_some())
            && views.iter().all(|v| v["heads"] == views[0]["heads"])
    });
    if converged.is_none() {
        let history: Vec<String> = (0..3)
            .map(|i| {
                let lines = observers.lines(i);
                let tail = &lines[lines.len().saturating_sub(3)..];
                format!(
                    "  h{} (last {} of {} views): {}",
                    i + 1,
                    tail.len(),
                    lines.len(),
                    json!(tail)
                )
            })
            .collect();
        panic!(
            "[{}] no convergence within {HEAL_CEILING:?} of the heal; expected tags {expected}\n{}\n{}",
            lab.id,
            history.join("\n"),
            lab.views()
        );
    }
    let reached: Vec<f64> = views
        .iter()
        .map(|v| v["t"].as_f64().expect("observer time") - healed)
        .collect();
    let took = reached.iter().cloned().fold(f64::MIN, f64::max);
    eprintln!(
        "[{}] heal -> identical documents on h1, h2, h3 in {:.0} ms (per host: {}; `lab.sh heal` itself took {:.0} ms)",
        lab.id,
        took * 1000.0,
        reached
            .iter()
            .enumerate()
            .map(|(i, r)| format!("h{} {:.0} ms", i + 1, r * 1000.0))
            .collect::<Vec<_>>()
            .join(", "),
        (healed - heal_started) * 1000.0
    );
    assert!(
        took < HEAL_CEILING.as_secs_f64(),
        "converged only {took:.1} s after the heal"
    );

    // The sync bookkeeping agrees: everyone connected and in sync, nothing malformed.
    lab.wait(
        "every host reports both peers connected and in-sync",
        || {
            (1..=3).all(|k| {
                lab.state(k).is_ok_and(|s| {
                    s["peers"].as_array().is_some_and(|p| {
                        p.len() == 2
                            && p.iter()
                                .all(|p| p["connected"] == true && p["status"] == "in-sync")
                    })
                })
            })
        },
    );
    let mut by_host = BTreeMap::new();
    for k in 1..=3 {
        let s = lab.state(k).expect("API answers");
        assert_eq!(s["sync"]["malformed"], 0, "h{k}: {s}");
        assert_eq!(s["skipped_entries"], 0, "h{k}: {s}");
        by_host.insert(k, (s["changes"].clone(), s["nodes"].clone()));
    }
    assert!(
        by_host.values().all(|v| *v == by_host[&1]),
        "changes/nodes differ between hosts: {by_host:?}"
    );
    drop(observers);
    check_agent_logs(&lab);
}
