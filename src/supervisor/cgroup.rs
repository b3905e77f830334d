//! Service cgroups: one cgroup v2 per service, so every process a service starts is tracked
//! however it detaches (`setsid`, double fork, `daemon(3)`), and stopped with it.
//!
//! Layout: `<cgroup2 mount><agent's own cgroup>/mesh-services/<node id>/<service>`. The node
//! id keeps agents of different data dirs on one machine apart (tests run many); a service
//! name (`[a-z0-9-]`) never collides with the kernel's `cgroup.*` files. No controller is
//! enabled anywhere, so the "no internal processes" rule does not apply and the agent may stay
//! in its own cgroup (the root one, or a systemd unit's with `Delegate=yes`).
//!
//! A child joins its cgroup before it execs: the launcher opens `cgroup.procs` in the agent
//! and writes `0` ("the writer") to it from the child, after fork (see
//! [`ServiceCgroups::procs_file`]). Nothing the service runs can start outside it.
//!
//! Owns: finding the cgroup2 mount and the agent's own cgroup (`/proc/self/mountinfo`,
//! `/proc/self/cgroup`), creating and removing service cgroups, listing and signalling their
//! processes (`cgroup.kill` for SIGKILL). Does not own when to stop anything (the supervisor
//! core and the actor decide). Without cgroup v2 (or without permission) the actor falls back
//! to process groups: [`ServiceCgroups::detect`] says why.

use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::StopSignal;

/// Directory under the agent's own cgroup that holds every node's service cgroups.
pub const SERVICES_DIR: &str = "mesh-services";
/// How often a drain polls the cgroup for processes that are still there. Exits take
/// microseconds to milliseconds; 20 ms keeps a stop prompt without spinning.
pub const DRAIN_POLL: Duration = Duration::from_millis(20);
/// How long processes get to go after `cgroup.kill` (SIGKILL) before the drain gives up on
/// them: only a process stuck in the kernel (uninterruptible I/O) takes longer.
pub const KILL_WAIT: Duration = Duration::from_secs(2);

/// Why service cgroups are not used on this node.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup2 file system is mounted")]
    NoMount,
    #[error("this process has no cgroup v2 path in /proc/self/cgroup")]
    NoOwnCgroup,
    #[error("cannot create {}: {source}", path.display())]
    Create { path: PathBuf, source: io::Error },
    #[error("a process cannot join a cgroup under {}: {source}", path.display())]
    Join { path: PathBuf, source: io::Error },
}

/// Name of the cgroup [`ServiceCgroups::detect`] tries joining once: it starts with a `.`,
/// which no service name does.
const PROBE: &str = ".probe";

/// Makes the child of `command` join the cgroup whose `cgroup.procs` is `procs` (opened for
/// writing, close-on-exec) after fork and before exec, so nothing it runs starts outside it.
pub fn join_before_exec(command: &mut std::process::Command, procs: File) {
    // SAFETY: the hook runs in the forked child before exec and only calls write(2) on a
    // descriptor opened before the fork (async-signal-safe: no allocation, no lock). Writing
    // "0" moves the writing process; the kernel checks the opener's (the agent's)
    // credentials, so it also works after std's switch to the service's user, which comes
    // before the hook.
    unsafe {
        command.pre_exec(move || {
            nix::unistd::write(&procs, b"0")
                .map(|_| ())
                .map_err(io::Error::from)
        });
    }
}

/// The service cgroups of one node.
#[derive(Clone, Debug)]
pub struct ServiceCgroups {
    /// `<mount><own>/mesh-services/<node id>`.
    base: PathBuf,
}

/// The mount point of the cgroup2 file system, from `/proc/self/mountinfo` text.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        if fs.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        // `ID PARENT MAJ:MIN ROOT MOUNT_POINT ...`: only a mount of the hierarchy's root.
        let fields: Vec<&str> = mount.split_whitespace().collect();
        let mount_point = fields.get(4)?;
        (fields.get(3) == Some(&"/")).then(|| PathBuf::from(mount_point))
    })
}

/// This process's cgroup v2 path (`0::PATH`), from `/proc/self/cgroup` text.
pub fn own_cgroup(proc_cgroup: &str) -> Option<String> {
    proc_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(|path| path.trim().to_string())
}

impl ServiceCgroups {
    /// The service cgroups of `node_id` under this process's own cgroup, created if needed.
    pub fn detect(node_id: &str) -> Result<Self, CgroupError> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mount = cgroup2_mount(&mountinfo).ok_or(CgroupError::NoMount)?;
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|text| own_cgroup(&text))
            .ok_or(CgroupError::NoOwnCgroup)?;
        let base = mount
            .join(own.trim_start_matches('/'))
            .join(SERVICES_DIR)
            .join(node_id);
        std::fs::create_dir_all(&base).map_err(|source| CgroupError::Create {
            path: base.clone(),
            source,
        })?;
        let cgroups = Self { base };
        cgroups.try_joining().map_err(|source| CgroupError::Join {
            path: cgroups.base.clone(),
            source,
        })?;
        Ok(cgroups)
    }

    /// Starts `true` in a probe cgroup once, so a node where joining fails (a delegation
    /// that does not allow it, controllers that forbid it) falls back to process groups at
    /// start instead of failing every spawn. A missing `true` proves nothing either way.
    fn try_joining(&self) -> io::Result<()> {
        let procs = self.procs_file(PROBE)?;
        let mut probe = std::process::Command::new("true");
        probe
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        join_before_exec(&mut probe, procs);
        let outcome = probe.status();
        let _ = self.remove(PROBE);
        match outcome {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The cgroup directory of `service`.
    pub fn path(&self, service: &str) -> PathBuf {
        self.base.join(service)
    }

    /// Creates the cgroup of `service` (if needed) and opens its `cgroup.procs` for writing:
    /// the child writes `0` to it before exec to join. The file is opened close-on-exec.
    pub fn procs_file(&self, service: &str) -> io::Result<File> {
        let dir = self.path(service);
        std::fs::create_dir_all(&dir)?;
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
    }

    /// The processes in the cgroup of `service` (none if it does not exist).
    pub fn pids(&self, service: &str) -> Vec<u32> {
        read_pids(&self.path(service))
    }

    /// Services that have a cgroup here (left by this or an earlier agent run).
    pub fn services(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.base) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().to_str().map(String::from))
            .filter(|name| crate::wire::name::check_name(name).is_ok())
            .collect()
    }

    /// Sends `signal` to every process in the cgroup of `service`. SIGKILL goes through
    /// `cgroup.kill` (atomic: no fork escapes it), else to each listed process. Returns how
    /// many processes were there.
    pub fn signal(&self, service: &str, signal: StopSignal) -> usize {
        self.signal_outside_group(service, signal, None)
    }

    /// [`ServiceCgroups::signal`], skipping SIGTERM for members of process group `pgid`
    /// (already signalled through their group: a second SIGTERM means "hurry" to some
    /// programs).
    pub fn signal_outside_group(
        &self,
        service: &str,
        signal: StopSignal,
        pgid: Option<u32>,
    ) -> usize {
        let dir = self.path(service);
        let mut pids = read_pids(&dir);
        if pids.is_empty() {
            return 0;
        }
        if signal == StopSignal::Kill && std::fs::write(dir.join("cgroup.kill"), b"1").is_ok() {
            return pids.len();
        }
        let found = pids.len();
        if let Some(pgid) = pgid {
            pids.retain(|pid| process_group(*pid) != Some(pgid));
        }
        let signal = match signal {
            StopSignal::Term => Signal::SIGTERM,
            StopSignal::Kill => Signal::SIGKILL,
        };
        for pid in &pids {
            if let Ok(pid) = i32::try_from(*pid) {
                let _ = kill(Pid::from_raw(pid), signal);
            }
        }
        found
    }

    /// Removes the cgroup of `service` if it is empty (`rmdir` fails on a busy one).
    pub fn remove(&self, service: &str) -> io::Result<()> {
        match std::fs::remove_dir(self.path(service)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// After a clean stop: removes this node's (empty) directory, and the shared
    /// `mesh-services` one if no other node uses it. A busy directory stays (`rmdir` fails).
    pub fn remove_node_dir(&self) {
        for service in self.services() {
            let _ = self.remove(&service);
        }
        let _ = self.remove(PROBE);
        if std::fs::remove_dir(&self.base).is_ok()
            && let Some(parent) = self.base.parent()
        {
            let _ = std::fs::remove_dir(parent);
        }
    }

    /// Stops everything in the cgroup of `service`: SIGTERM, up to `grace` for it to empty,
    /// then SIGKILL and up to [`KILL_WAIT`]; then removes the cgroup. Returns how many
    /// processes were there and whether SIGKILL was needed. Blocking (polls every
    /// [`DRAIN_POLL`]); run it off the async threads.
    pub fn drain_blocking(&self, service: &str, grace: Duration) -> (usize, bool) {
        let found = self.signal(service, StopSignal::Term);
        let mut killed = false;
        if found > 0 && !wait_empty(|| self.pids(service).is_empty(), grace) {
            killed = true;
            self.signal(service, StopSignal::Kill);
            wait_empty(|| self.pids(service).is_empty(), KILL_WAIT);
        }
        if let Err(e) = self.remove(service) {
            tracing::debug!(%service, error = %e, "service cgroup not removed");
        }
        (found, killed)
    }
}

/// Polls `empty` every [`DRAIN_POLL`] until it holds or `ceiling` passes.
fn wait_empty(empty: impl Fn() -> bool, ceiling: Duration) -> bool {
    let deadline = std::time::Instant::now() + ceiling;
    loop {
        if empty() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(DRAIN_POLL);
    }
}

/// The process group of `pid` (`/proc/PID/stat` field 5), if it is alive.
fn process_group(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid pgrp ...`; comm may hold spaces, so split after `)`.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

fn read_pids(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::supervisor::ServiceSpec;

    #[test]
    fn finds_the_cgroup2_mount_of_a_hybrid_layout() {
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 31 0:39 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory";
        assert_eq!(
            cgroup2_mount(mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(cgroup2_mount("1 2 0:1 / / rw - ext4 /dev/sda rw"), None);
        // A bind mount of a sub-tree (a container's view) is not the hierarchy's root.
        assert_eq!(
            cgroup2_mount("5 4 0:30 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw"),
            None
        );
    }

    #[test]
    fn reads_the_own_cgroup_v2_path() {
        let text = "9:name=systemd:/\n4:memory:/x\n0::/system.slice/mesh.service\n";
        assert_eq!(
            own_cgroup(text).as_deref(),
            Some("/system.slice/mesh.service")
        );
        assert_eq!(own_cgroup("4:memory:/x\n"), None);
    }

    #[tokio::test]
    async fn a_detached_grandchild_stays_in_the_service_cgroup_and_is_drained() {
        let cgroups = match ServiceCgroups::detect(&format!("unit-test-{}", std::process::id())) {
            Ok(cgroups) => cgroups,
            Err(e) => {
                eprintln!("skipping: no service cgroups here: {e}");
                return;
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let mut spec = ServiceSpec::new("detacher", "/bin/sh");
        spec.args = vec![
            "-c".into(),
            "setsid sleep 1000 & (sleep 1001 &); exit 0".into(),
        ];
        let mut process = crate::supervisor::launcher::spawn_service_in(
            &spec,
            &BTreeMap::new(),
            "n1",
            dir.path(),
            crate::supervisor::launcher::LogLimits::default(),
            Some(&cgroups),
        )
        .await
        .unwrap();
        process.wait().await.unwrap();
        // Both sleeps left the process group and the parent, not the cgroup.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while cgroups.pids("detacher").len() < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "both sleeps in the cgroup"
            );
            std::thread::sleep(DRAIN_POLL);
        }
        let (found, killed) = cgroups.drain_blocking("detacher", Duration::from_secs(5));
        assert_eq!((found, killed), (2, false));
        assert!(
            !cgroups.path("detacher").exists(),
            "the empty cgroup is removed"
        );
        cgroups.remove_node_dir();
        assert!(!cgroups.base.exists());
    }
}
