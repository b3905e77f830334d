//! The run file: which service processes this agent has running, on disk, so that an agent
//! that crashed (`kill -9`, power loss of the agent alone, OOM kill) does not leave them
//! running unsupervised next to the copies it starts again.
//!
//! `DATA_DIR/supervisor/processes.json` holds `{"left_running": bool, "processes":
//! [{"service", "pid", "start_ticks"}], "handled_requests": {SERVICE: {"generation", "at_ms"}}}`
//! (the last operator request handled per service, so a restart of the agent does not replay
//! it): every spawned process until its exit is reaped. A
//! process is recognised by its pid *and* its start time (`/proc/PID/stat` field 22, clock
//! ticks since boot), so a pid reused by an unrelated process is never signalled. At start:
//! - a file with processes and `left_running = false` means the previous agent died without
//!   stopping its services: those still alive are stopped (SIGTERM to the group, SIGKILL after
//!   [`LEFTOVER_GRACE`]) before anything starts;
//! - `left_running = true` (the previous agent stopped with `--leave-services-running`):
//!   they are left alone and reported; this agent does not adopt them.
//!
//! Owns the file format and the leftover stop. Does not own when processes spawn or exit
//! (the actor tells it).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::RequestStamp;
use super::StopSignal;
use super::launcher::process::signal_group;

/// How long leftover processes get between SIGTERM and SIGKILL. Shorter than a service's
/// usual stop grace: they run unsupervised, and the agent's own start waits for them.
pub const LEFTOVER_GRACE: Duration = Duration::from_secs(5);

/// One running service process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub service: String,
    pub pid: u32,
    /// Start time of the process in clock ticks since boot (`/proc/PID/stat` field 22).
    pub start_ticks: u64,
}

/// The file's content.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    pub left_running: bool,
    pub processes: Vec<RunRecord>,
    /// The last operator request handled per service, so that a restart of the agent does
    /// not carry out a request again (absent in files written before it existed).
    #[serde(default)]
    pub handled_requests: BTreeMap<String, RequestStamp>,
}

/// The start time of `pid` in clock ticks since boot, if it is alive (not a zombie).
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)`, which may hold spaces: state is field 3, starttime 22.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Whether `record`'s process is still the one that was spawned.
pub fn is_alive(record: &RunRecord) -> bool {
    start_ticks(record.pid) == Some(record.start_ticks)
}

/// Reads the run file; a missing or unreadable one is empty (logged).
pub fn load(path: &Path) -> RunState {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable run file");
            RunState::default()
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => RunState::default(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the run file");
            RunState::default()
        }
    }
}

/// Writes the run file atomically.
pub fn save(path: &Path, state: &RunState) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let bytes = serde_json::to_vec(state).expect("the run state always serializes");
    crate::identity::write_secret_file(path, &bytes).map_err(io::Error::other)
}

/// The run file's path in a data dir.
pub fn path_in(data_dir: &Path) -> PathBuf {
    data_dir.join("supervisor").join("processes.json")
}

/// Whether any process is in process group `pgid` (`kill(-pgid, 0)`). The kernel does not
/// hand out a pid that is still some group's id, so a group found here is the one the
/// recorded leader created, even after the leader itself died.
pub fn group_alive(pgid: u32) -> bool {
    let Ok(pgid) = i32::try_from(pgid) else {
        return false;
    };
    pgid > 1 && nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), None).is_ok()
}

/// Whether anything of `record` is left: its leader (same pid and start time) or any
/// member of its process group.
fn leftover(record: &RunRecord) -> bool {
    is_alive(record) || group_alive(record.pid)
}

/// Stops leftover processes: SIGTERM to each recorded process group that still has a
/// member (its leader may be dead), then SIGKILL to those with members after `grace`.
/// Returns, per group stopped, whether it needed SIGKILL. Blocking (polls every 20 ms); run
/// it off the async threads.
pub fn stop_leftovers(records: &[RunRecord], grace: Duration) -> Vec<(RunRecord, bool)> {
    let alive: Vec<&RunRecord> = records.iter().filter(|r| leftover(r)).collect();
    for record in &alive {
        let _ = signal_group(record.pid, StopSignal::Term);
    }
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline && alive.iter().any(|r| leftover(r)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    alive
        .into_iter()
        .map(|record| {
            let killed = leftover(record);
            if killed {
                let _ = signal_group(record.pid, StopSignal::Kill);
            }
            (record.clone(), killed)
        })
        .collect()
}

/// After a service's main process (leader of group `pgid`) exited: stops the rest of its
/// process group, SIGTERM then SIGKILL after `grace`. The fallback of
/// [`super::cgroup::ServiceCgroups::drain_blocking`] without cgroups: a process that left
/// the group (`setsid`) is not reached. Returns (whether members were found, SIGKILL needed)
/// in the same shape. Blocking.
pub fn drain_group_blocking(pgid: u32, grace: Duration) -> (usize, bool) {
    if !group_alive(pgid) {
        return (0, false);
    }
    let _ = signal_group(pgid, StopSignal::Term);
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline && group_alive(pgid) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed = group_alive(pgid);
    if killed {
        let _ = signal_group(pgid, StopSignal::Kill);
    }
    (1, killed)
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;

    use super::*;

    #[test]
    fn this_process_has_a_start_time_and_a_reused_pid_does_not_match() {
        let me = std::process::id();
        let ticks = start_ticks(me).expect("this process is alive");
        assert!(is_alive(&RunRecord {
            service: "x".into(),
            pid: me,
            start_ticks: ticks,
        }));
        // Same pid, another start time: another process, never signalled.
        assert!(!is_alive(&RunRecord {
            service: "x".into(),
            pid: me,
            start_ticks: ticks + 1,
        }));
    }

    #[test]
    fn the_file_round_trips_and_garbage_reads_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        assert_eq!(load(&path), RunState::default());
        let state = RunState {
            handled_requests: [(
                "db".to_string(),
                RequestStamp {
                    generation: 3,
                    at_ms: 1_700_000_000_000,
                },
            )]
            .into(),
            left_running: true,
            processes: vec![RunRecord {
                service: "db".into(),
                pid: 42,
                start_ticks: 7,
            }],
        };
        save(&path, &state).unwrap();
        assert_eq!(load(&path), state);
        std::fs::write(&path, b"{not json").unwrap();
        assert_eq!(load(&path), RunState::default());
    }

    #[test]
    fn a_leftover_process_group_is_stopped() {
        let mut child = std::process::Command::new("sleep")
            .arg("1000")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id();
        let record = RunRecord {
            service: "sleepy".into(),
            pid,
            start_ticks: start_ticks(pid).unwrap(),
        };
        // Reaped as soon as it dies: a zombie still counts as a member of its group.
        let waiter = std::thread::spawn(move || child.wait().unwrap());
        let stopped = stop_leftovers(std::slice::from_ref(&record), Duration::from_secs(5));
        assert_eq!(stopped, vec![(record, false)]);
        assert!(!waiter.join().unwrap().success());
    }

    #[test]
    fn a_group_whose_leader_died_is_still_stopped() {
        // The leader starts a background sleep in its group, prints its pid and exits.
        let out = std::process::Command::new("sh")
            .args(["-c", "sleep 1000 >/dev/null 2>&1 & echo $!"])
            .process_group(0)
            .output()
            .unwrap();
        let member: u32 = String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let leader = std::fs::read_to_string(format!("/proc/{member}/stat"))
            .unwrap()
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .nth(2)
            .unwrap()
            .parse::<u32>()
            .unwrap();
        let record = RunRecord {
            service: "orphaned".into(),
            pid: leader,
            start_ticks: 1,
        };
        assert!(!is_alive(&record), "the leader is gone");
        assert!(group_alive(leader), "its group is not");
        let stopped = stop_leftovers(std::slice::from_ref(&record), Duration::from_secs(5));
        assert_eq!(stopped.len(), 1);
        assert!(start_ticks(member).is_none(), "the member was stopped");
    }
}
