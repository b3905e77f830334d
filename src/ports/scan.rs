//! The machine edge of the port subsystem: which sockets listen here, held by which processes,
//! and whether a port can be bound right now.
//!
//! Owns the file reads and socket calls that the sans-IO parts of [`super`] leave to the caller:
//! - [`scan_listening`] reads `/proc/net/{tcp,tcp6,udp,udp6}` (parsed by [`super::procnet`]),
//!   walks `/proc/PID/fd` (each link `socket:[INODE]`) to join socket inodes to pids, and reads
//!   `/proc/PID/comm` for the name of each process found holding a listening socket. The walk
//!   is bounded by [`ScanLimits`]; what it could not look at is counted in [`ScanCoverage`].
//!   Other users' processes whose fds cannot be read (no privileges) are skipped, never fatal:
//!   their sockets are still reported, without a pid.
//! - [`bind_test`] tries to bind `0.0.0.0:PORT` and `[::]:PORT` and says whether the port is free.
//!
//! Both block (file reads, socket calls): async callers run them in `spawn_blocking`. Linux
//! only: other systems have no `/proc/net`, and the scan then fails with
//! [`ScanError::ReadTable`].
//!
//! It does not own: the decision of which port a service gets ([`super::PortAllocator`], which
//! takes [`ListeningScan::ports`] and [`bind_test`] as inputs), when to scan (the supervisor),
//! or how `mesh ports --listening` renders the rows ([`ListeningProcess`] is the row).
//!
//! Sockets in other network namespaces do not appear: `/proc/net` is the reading process's
//! namespace, so a process in a container holding a port of its own namespace is not seen.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::wire::socket::ListeningProcess;

use super::{
    ListeningPorts, ListeningSocket, PortsError, ProcNetFile, ProcNetSocket, Proto,
    listening_sockets, map_inodes_to_pids, parse_socket_link,
};

/// Where procfs is mounted. Tests point [`scan_listening_in`] at a fake tree instead.
pub const PROC_ROOT: &str = "/proc";

/// Default for [`ScanLimits::max_processes`]: most processes whose fds one scan looks at.
/// A desktop runs a few hundred processes, a busy server a few thousand; 16384 covers both
/// with room while bounding a pathological machine (pid_max can be 4 million). Lower it and
/// holders of listening sockets on crowded machines show without a pid.
pub const DEFAULT_MAX_PROCESSES: usize = 16_384;

/// Default for [`ScanLimits::max_fds`]: most `/proc/PID/fd/N` links one scan reads, over all
/// processes. A readlink there costs a few microseconds, so this caps a scan at roughly one
/// second of CPU even on a machine with a huge fd count (this development machine has about
/// 550 fds in all). Processes past the budget are counted in
/// [`ScanCoverage::processes_over_limit`].
pub const DEFAULT_MAX_FDS: usize = 262_144;

/// `EAFNOSUPPORT` on Linux: the kernel has no IPv6 (booted with `ipv6.disable=1`), so a bind
/// to `[::]` says nothing about the port. `std` maps it to no specific `io::ErrorKind`.
const EAFNOSUPPORT: i32 = 97;

/// Errors of the scan. Only the socket tables and the process list are fatal; a process whose
/// fds cannot be read is skipped and counted instead.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot read the socket table {}", path.display())]
    ReadTable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot parse a socket table")]
    ParseTable(#[from] PortsError),
    #[error("cannot list the processes in {}", path.display())]
    ListProcesses {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Bounds on the `/proc/PID/fd` walk of one scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanLimits {
    /// Most processes whose fd directory is opened (see [`DEFAULT_MAX_PROCESSES`]).
    pub max_processes: usize,
    /// Most fd links read, over all processes (see [`DEFAULT_MAX_FDS`]).
    pub max_fds: usize,
}

impl Default for ScanLimits {
    fn default() -> Self {
        Self {
            max_processes: DEFAULT_MAX_PROCESSES,
            max_fds: DEFAULT_MAX_FDS,
        }
    }
}

/// How much of the machine one scan saw. When any process was skipped, some sockets may show
/// without their pids; the sockets themselves are always complete (they come from
/// `/proc/net`, which needs no privilege).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanCoverage {
    /// Processes whose fd directory was read to the end.
    pub processes_scanned: usize,
    /// fd links read (every kind, not only sockets).
    pub fds_scanned: usize,
    /// Processes whose fd directory could not be opened: other users' processes without
    /// privileges (`EACCES`), or any other error than the process having exited.
    pub processes_unreadable: usize,
    /// Processes not looked at, or looked at only in part, because the scan reached
    /// [`ScanLimits`].
    pub processes_over_limit: usize,
}

impl ScanCoverage {
    /// Every process's fds were read: every socket without a pid really has no holder in this
    /// pid namespace (or its holder exited during the scan).
    pub fn is_complete(&self) -> bool {
        self.processes_unreadable == 0 && self.processes_over_limit == 0
    }
}

/// The result of one scan: every serving socket (TCP `LISTEN`, UDP bound and unconnected) of
/// this network namespace, with the pids seen holding it and their names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListeningScan {
    /// In table order (tcp, tcp6, udp, udp6); `pids` empty where no holder was seen.
    pub sockets: Vec<ListeningSocket>,
    /// `/proc/PID/comm` of each pid in `sockets` whose name could be read, as read during the
    /// walk (the kernel truncates it to 15 bytes).
    pub process_names: BTreeMap<u32, String>,
    pub coverage: ScanCoverage,
}

impl ListeningScan {
    /// The ports taken on this machine, for [`super::PortAllocator::allocate`] and
    /// [`super::PortAllocator::reconcile`].
    pub fn ports(&self) -> ListeningPorts {
        ListeningPorts::from_sockets(&self.sockets)
    }

    /// One row per socket and holding process (one row with no pid for a socket whose holder
    /// is unknown), sorted by protocol, port, address, pid: what `mesh ports --listening`
    /// shows.
    pub fn processes(&self) -> Vec<ListeningProcess> {
        let mut rows = Vec::new();
        for socket in &self.sockets {
            let row = |pid: Option<u32>| ListeningProcess {
                port: socket.local.port(),
                proto: socket.proto,
                addr: socket.local.ip(),
                pid,
                process: pid.and_then(|pid| self.process_names.get(&pid).cloned()),
            };
            if socket.pids.is_empty() {
                rows.push(row(None));
            } else {
                rows.extend(socket.pids.iter().map(|pid| row(Some(*pid))));
            }
        }
        rows.sort_by(|a, b| {
            (a.proto, a.port, a.addr, a.pid).cmp(&(b.proto, b.port, b.addr, b.pid))
        });
        rows.dedup();
        rows
    }
}

/// Scans `/proc` with the default limits. Blocking.
pub fn scan_listening() -> Result<ListeningScan, ScanError> {
    scan_listening_in(Path::new(PROC_ROOT), ScanLimits::default())
}

/// Scans a procfs tree at `proc_root` (`/proc` in production, a fake tree in tests). Blocking.
///
/// A missing `net/tcp6` or `net/udp6` (kernel without IPv6) counts as an empty table; a
/// missing `net/tcp` or `net/udp`, an unreadable table, a malformed line or an unlistable
/// `proc_root` is an error.
pub fn scan_listening_in(proc_root: &Path, limits: ScanLimits) -> Result<ListeningScan, ScanError> {
    let sockets = read_tables(proc_root)?;
    let wanted: HashSet<u64> = sockets
        .iter()
        .map(|socket| socket.inode)
        .filter(|inode| *inode != 0)
        .collect();
    let walk = if wanted.is_empty() {
        ProcessWalk::default()
    } else {
        walk_processes(proc_root, &wanted, limits)?
    };
    Ok(ListeningScan {
        sockets: map_inodes_to_pids(sockets, walk.holders),
        process_names: walk.names,
        coverage: walk.coverage,
    })
}

/// The ports listening in this network namespace, from the four `/proc/net` tables only:
/// no walk of every process's fds, so it costs a few hundred microseconds rather than
/// milliseconds per thousand processes. For the periodic lease check and `auto` allocation,
/// which need to know *that* a port is taken, not by whom. Blocking.
pub fn listening_ports() -> Result<ListeningPorts, ScanError> {
    let sockets = read_tables(Path::new(PROC_ROOT))?;
    Ok(ListeningPorts::from_sockets(&map_inodes_to_pids(
        sockets,
        Vec::new(),
    )))
}

/// The serving sockets of the four tables under `proc_root/net`.
fn read_tables(proc_root: &Path) -> Result<Vec<ProcNetSocket>, ScanError> {
    let mut sockets = Vec::new();
    for file in ProcNetFile::ALL {
        let path = proc_root.join("net").join(file.file_name());
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error)
                if error.kind() == io::ErrorKind::NotFound
                    && matches!(file, ProcNetFile::Tcp6 | ProcNetFile::Udp6) =>
            {
                continue;
            }
            Err(source) => return Err(ScanError::ReadTable { path, source }),
        };
        sockets.extend(listening_sockets(file, &text)?);
    }
    Ok(sockets)
}

/// What the fd walk found: `(pid, inode)` for listening inodes only, and holders' names.
#[derive(Default)]
struct ProcessWalk {
    holders: Vec<(u32, u64)>,
    names: BTreeMap<u32, String>,
    coverage: ScanCoverage,
}

/// How the walk of one process's fds ended.
enum ProcessOutcome {
    Scanned,
    /// The process exited between listing `/proc` and opening its fds.
    Vanished,
    Unreadable,
    /// The fd budget ran out inside this process.
    OverLimit,
}

fn walk_processes(
    proc_root: &Path,
    wanted: &HashSet<u64>,
    limits: ScanLimits,
) -> Result<ProcessWalk, ScanError> {
    let entries = fs::read_dir(proc_root).map_err(|source| ScanError::ListProcesses {
        path: proc_root.to_path_buf(),
        source,
    })?;
    let mut walk = ProcessWalk::default();
    let mut processes_opened = 0usize;
    let mut fd_budget = limits.max_fds;
    // An entry that fails to read ends the stream (std stops after a readdir error).
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue; // `self`, `net`, `sys`, ...
        };
        if processes_opened >= limits.max_processes || fd_budget == 0 {
            walk.coverage.processes_over_limit += 1;
            continue;
        }
        processes_opened += 1;
        match walk_process(&entry.path(), pid, wanted, &mut fd_budget, &mut walk) {
            ProcessOutcome::Scanned => walk.coverage.processes_scanned += 1,
            ProcessOutcome::Vanished => {}
            ProcessOutcome::Unreadable => walk.coverage.processes_unreadable += 1,
            ProcessOutcome::OverLimit => walk.coverage.processes_over_limit += 1,
        }
    }
    Ok(walk)
}

fn walk_process(
    process_dir: &Path,
    pid: u32,
    wanted: &HashSet<u64>,
    fd_budget: &mut usize,
    walk: &mut ProcessWalk,
) -> ProcessOutcome {
    let fds = match fs::read_dir(process_dir.join("fd")) {
        Ok(fds) => fds,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return ProcessOutcome::Vanished,
        Err(_) => return ProcessOutcome::Unreadable,
    };
    let mut outcome = ProcessOutcome::Scanned;
    let mut holds_listening = false;
    for fd in fds.flatten() {
        if *fd_budget == 0 {
            outcome = ProcessOutcome::OverLimit;
            break;
        }
        *fd_budget -= 1;
        walk.coverage.fds_scanned += 1;
        // A link that fails to read is an fd closed since the listing: nothing to join.
        let Ok(target) = fs::read_link(fd.path()) else {
            continue;
        };
        let Some(inode) = target.to_str().and_then(parse_socket_link) else {
            continue;
        };
        if wanted.contains(&inode) {
            walk.holders.push((pid, inode));
            holds_listening = true;
        }
    }
    // Read now rather than after the walk, so a reused pid cannot lend its name.
    if holds_listening && let Ok(comm) = fs::read_to_string(process_dir.join("comm")) {
        walk.names
            .insert(pid, comm.trim_end_matches('\n').to_string());
    }
    outcome
}

/// Whether `port` can be bound for `proto` right now: binds `0.0.0.0:port`, drops it, then
/// binds `[::]:port` (skipped when the kernel has no IPv6). TCP uses [`TcpListener`] (which
/// sets `SO_REUSEADDR`, so a port with only `TIME_WAIT` connections counts as free, as it will
/// for the service), UDP [`UdpSocket`]. Blocking but fast (two socket calls).
///
/// `true` means free at the time of the call, not reserved: another process may take it
/// before the service binds. Ports below 1024 are `false` without privileges. The signature
/// fits the `bind_test` of [`super::PortAllocator::allocate`].
pub fn bind_test(port: u16, proto: Proto) -> bool {
    // One family at a time: a dual-stack `[::]` bind would collide with our own IPv4 socket.
    let ipv4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
    if bind_once(ipv4, proto).is_err() {
        return false;
    }
    let ipv6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
    match bind_once(ipv6, proto) {
        Ok(()) => true,
        Err(error) => ipv6_unavailable(&error),
    }
}

/// Binds and at once drops the socket.
fn bind_once(address: SocketAddr, proto: Proto) -> io::Result<()> {
    match proto {
        Proto::Tcp => TcpListener::bind(address).map(drop),
        Proto::Udp => UdpSocket::bind(address).map(drop),
    }
}

/// The `[::]` bind failed because there is no IPv6 here, not because the port is taken.
fn ipv6_unavailable(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::AddrNotAvailable || error.raw_os_error() == Some(EAFNOSUPPORT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{
        LeaseConfig, PoolSet, PortAllocator, PortRange, PortRequest, PortSource, PortsError,
    };
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::symlink;
    use std::process::{Child, Command, Stdio};
    use std::time::SystemTime;

    fn own_comm() -> String {
        fs::read_to_string("/proc/self/comm")
            .expect("procfs mounted")
            .trim_end()
            .to_string()
    }

    fn rows_for(scan: &ListeningScan, port: u16, proto: Proto) -> Vec<ListeningProcess> {
        scan.processes()
            .into_iter()
            .filter(|row| row.port == port && row.proto == proto)
            .collect()
    }

    #[test]
    fn own_tcp_listener_is_found_with_our_pid_and_name() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        let port = listener.local_addr().expect("bound").port();

        let scan = scan_listening().expect("scan /proc");
        let rows = rows_for(&scan, port, Proto::Tcp);
        assert_eq!(
            rows,
            [ListeningProcess {
                port,
                proto: Proto::Tcp,
                addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                pid: Some(std::process::id()),
                process: Some(own_comm()),
            }],
            "coverage {:?}",
            scan.coverage
        );
        assert!(scan.ports().contains(port, Proto::Tcp));
        assert!(!scan.ports().contains(port, Proto::Udp));
        assert!(scan.coverage.processes_scanned >= 1);

        assert!(!bind_test(port, Proto::Tcp), "held by our listener");
        drop(listener);
        assert!(bind_test(port, Proto::Tcp), "free after drop");
    }

    #[test]
    fn own_udp_socket_is_found_with_our_pid_and_name() {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind port 0");
        let port = socket.local_addr().expect("bound").port();

        let scan = scan_listening().expect("scan /proc");
        let rows = rows_for(&scan, port, Proto::Udp);
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].pid, Some(std::process::id()));
        assert_eq!(rows[0].process.as_deref(), Some(own_comm().as_str()));
        assert_eq!(rows[0].addr, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert!(scan.ports().contains(port, Proto::Udp));

        assert!(!bind_test(port, Proto::Udp), "held by our socket");
        drop(socket);
        assert!(bind_test(port, Proto::Udp), "free after drop");
    }

    #[test]
    fn ipv6_listener_blocks_the_bind_test() {
        let Ok(listener) = TcpListener::bind("[::1]:0") else {
            return; // no IPv6 on this machine
        };
        let port = listener.local_addr().expect("bound").port();
        let scan = scan_listening().expect("scan /proc");
        let rows = rows_for(&scan, port, Proto::Tcp);
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].addr, IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(rows[0].pid, Some(std::process::id()));
        assert!(!bind_test(port, Proto::Tcp), "held on [::1] only");
        drop(listener);
        assert!(bind_test(port, Proto::Tcp));
    }

    /// A python listener, killed and reaped when dropped (also when the test panics).
    struct ForeignListener {
        child: Child,
        port: u16,
    }

    impl ForeignListener {
        fn spawn() -> Self {
            let mut child = Command::new("python3")
                .args([
                    "-c",
                    "import socket,time; s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(); print(s.getsockname()[1], flush=True); time.sleep(60)",
                ])
                .stdout(Stdio::piped())
                .spawn()
                .expect("python3 on PATH");
            let stdout = child.stdout.take().expect("stdout piped");
            // Blocks until python prints the port, which it does after listen().
            let mut line = String::new();
            BufReader::new(stdout)
                .read_line(&mut line)
                .expect("read python's stdout");
            let port = line
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("python printed {line:?}, not a port"));
            Self { child, port }
        }
    }

    impl Drop for ForeignListener {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    #[test]
    fn a_port_held_by_a_foreign_process_is_reported_and_never_allocated() {
        let foreign = ForeignListener::spawn();
        let (port, python_pid) = (foreign.port, foreign.child.id());

        let scan = scan_listening().expect("scan /proc");
        let rows = rows_for(&scan, port, Proto::Tcp);
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].pid, Some(python_pid));
        let name = rows[0].process.as_deref().expect("python's comm readable");
        assert!(name.starts_with("python"), "comm {name:?}");
        let listening = scan.ports();
        assert_eq!(listening.holders(port, Proto::Tcp), [python_pid]);
        assert!(!bind_test(port, Proto::Tcp));

        // A default pool that ends at the foreign port: the lowest free one below it is fine,
        // the foreign port never.
        let first = port.saturating_sub(2).max(1);
        let pools = PoolSet::new(BTreeMap::from([(
            crate::ports::DEFAULT_POOL.to_string(),
            vec![PortRange::new(first, port).expect("valid range")],
        )]))
        .expect("valid pools");
        let allocator = PortAllocator::new(pools, LeaseConfig::default());
        let request = PortRequest {
            service: "web".to_string(),
            port_name: None,
            proto: Proto::Tcp,
            source: PortSource::auto_default(),
        };
        match allocator.allocate(SystemTime::now(), &request, &[], &listening, bind_test) {
            Ok(grant) => assert_ne!(grant.lease.port, port),
            Err(PortsError::PoolExhausted { listening, .. }) => assert!(listening >= 1),
            Err(other) => panic!("unexpected {other}"),
        }

        // Each defence alone is enough: the scan without a bind test, the bind test without
        // the scan.
        let only_port = PoolSet::new(BTreeMap::from([(
            crate::ports::DEFAULT_POOL.to_string(),
            vec![PortRange::new(port, port).expect("valid range")],
        )]))
        .expect("valid pools");
        let allocator = PortAllocator::new(only_port, LeaseConfig::default());
        let err = allocator
            .allocate(SystemTime::now(), &request, &[], &listening, |_, _| true)
            .expect_err("the scan sees the foreign port");
        assert!(
            matches!(err, PortsError::PoolExhausted { listening: 1, .. }),
            "{err}"
        );
        let err = allocator
            .allocate(
                SystemTime::now(),
                &request,
                &[],
                &ListeningPorts::new(),
                bind_test,
            )
            .expect_err("the bind test sees the foreign port");
        assert!(
            matches!(err, PortsError::PoolExhausted { bind_failed: 1, .. }),
            "{err}"
        );
        drop(foreign);
    }

    // Fake procfs trees: the limits and the skips, which a real /proc cannot stage (the tests
    // run as root, which reads every process's fds).

    const FAKE_TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1151 1 0 100 0 0 10 0
   1: 0100007F:B0BD 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 181522 1 0 100 0 0 10 0
   2: 0100007F:C46C 0100007F:B0BD 01 00000000:00000000 00:00000000 00000000     0        0 181526 2 0 20 0 0 10 -1
";
    const FAKE_UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
 6126: 00000000:E546 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 181524 2 0 0
";

    /// `/proc` with the tcp and udp tables (no IPv6 tables), and processes:
    /// 100 `web` holds 45245/tcp (fd 3) and 58694/udp (fd 5) plus a pipe and a connection;
    /// 200 `worker`, a fork of 100, holds 45245/tcp; 300 has an unreadable fd directory;
    /// 400 has exited (no fd directory).
    fn fake_proc() -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("temp dir");
        let path = root.path();
        fs::create_dir(path.join("net")).expect("mkdir net");
        fs::write(path.join("net/tcp"), FAKE_TCP).expect("write tcp");
        fs::write(path.join("net/udp"), FAKE_UDP).expect("write udp");
        fs::create_dir(path.join("self")).expect("mkdir self");
        let process = |pid: u32, comm: &str, fds: &[(u32, &str)]| {
            let dir = path.join(pid.to_string());
            fs::create_dir_all(dir.join("fd")).expect("mkdir fd");
            fs::write(dir.join("comm"), format!("{comm}\n")).expect("write comm");
            for (fd, target) in fds {
                symlink(target, dir.join("fd").join(fd.to_string())).expect("fd link");
            }
        };
        process(
            100,
            "web",
            &[
                (0, "/dev/null"),
                (3, "socket:[181522]"),
                (4, "pipe:[9]"),
                (5, "socket:[181524]"),
                (6, "socket:[181526]"),
            ],
        );
        process(200, "worker", &[(3, "socket:[181522]")]);
        // A regular file where the fd directory should be: opening it fails with ENOTDIR,
        // standing in for EACCES on another user's process.
        fs::create_dir(path.join("300")).expect("mkdir 300");
        fs::write(path.join("300/fd"), "").expect("fd as a file");
        fs::create_dir(path.join("400")).expect("mkdir 400");
        root
    }

    #[test]
    fn fake_proc_joins_pids_and_names_and_counts_the_skips() {
        let root = fake_proc();
        let scan = scan_listening_in(root.path(), ScanLimits::default()).expect("scan");
        let rows = scan.processes();
        let summary: Vec<(Proto, u16, Option<u32>, Option<&str>)> = rows
            .iter()
            .map(|row| (row.proto, row.port, row.pid, row.process.as_deref()))
            .collect();
        assert_eq!(
            summary,
            [
                (Proto::Tcp, 2024, None, None),
                (Proto::Tcp, 45245, Some(100), Some("web")),
                (Proto::Tcp, 45245, Some(200), Some("worker")),
                (Proto::Udp, 58694, Some(100), Some("web")),
            ]
        );
        assert_eq!(
            scan.coverage,
            ScanCoverage {
                processes_scanned: 2,
                fds_scanned: 6,
                processes_unreadable: 1,
                processes_over_limit: 0,
            }
        );
        assert!(!scan.coverage.is_complete());
        assert_eq!(scan.ports().holders(45245, Proto::Tcp), [100, 200]);
    }

    #[test]
    fn fake_proc_walk_stops_at_the_limits() {
        let root = fake_proc();
        // Budget of 2 fds, fewer than the 6 in the tree. Directory order is not sorted, so
        // which process is cut off varies; the count of links read does not.
        let scan = scan_listening_in(
            root.path(),
            ScanLimits {
                max_processes: DEFAULT_MAX_PROCESSES,
                max_fds: 2,
            },
        )
        .expect("scan");
        assert_eq!(scan.coverage.fds_scanned, 2);
        assert!(scan.coverage.processes_over_limit >= 1);
        assert_eq!(
            scan.sockets.len(),
            3,
            "sockets come from /proc/net, not the walk"
        );

        let scan = scan_listening_in(
            root.path(),
            ScanLimits {
                max_processes: 1,
                max_fds: DEFAULT_MAX_FDS,
            },
        )
        .expect("scan");
        let opened = scan.coverage.processes_scanned + scan.coverage.processes_unreadable;
        assert!(opened <= 1, "{:?}", scan.coverage);
        assert_eq!(scan.coverage.processes_over_limit, 3);
        assert_eq!(scan.sockets.len(), 3);
    }

    #[test]
    fn fake_proc_missing_tables() {
        let root = fake_proc();
        fs::remove_file(root.path().join("net/udp")).expect("remove udp");
        let err = scan_listening_in(root.path(), ScanLimits::default()).expect_err("no udp");
        assert!(matches!(err, ScanError::ReadTable { .. }), "{err}");
        assert!(err.to_string().ends_with("net/udp"), "{err}");

        fs::write(root.path().join("net/udp"), "garbage\n").expect("write udp");
        let err = scan_listening_in(root.path(), ScanLimits::default()).expect_err("bad udp");
        assert!(matches!(err, ScanError::ParseTable(_)), "{err}");
    }

    #[test]
    fn no_listening_sockets_means_no_walk() {
        let root = fake_proc();
        fs::write(root.path().join("net/tcp"), "").expect("empty tcp");
        fs::write(root.path().join("net/udp"), "").expect("empty udp");
        let scan = scan_listening_in(root.path(), ScanLimits::default()).expect("scan");
        assert!(scan.sockets.is_empty());
        assert_eq!(scan.coverage, ScanCoverage::default());
    }
}
