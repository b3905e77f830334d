//! Process concerns of `mesh agent`: the data dir, tracing, loading identity and mesh key,
//! probing the hardware, starting the node and the API, and stopping both on SIGINT/SIGTERM
//! (a graceful leave: peers show this node `left` at once).
//!
//! Takes a plain [`AgentOptions`] (no clap types); owns nothing that outlives the process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;

use crate::admission::MeshKey;
use crate::hardware::Profile;
use crate::identity;
use crate::membership::MembershipConfig;
use crate::node::{DiscoveryMode, NodeConfig, start_node};
use crate::supervisor::ShutdownMode;
use crate::supervisor::actor::SupervisorConfig;
use crate::supervisor::launcher::LogLimits;
use crate::transport::parse_addrs;

pub mod config;
pub mod joining;
pub mod lock;
pub mod startup_pages;

/// File in the data dir holding the API's bound address (`IP:PORT`) while the agent runs.
pub const API_ADDR_FILE: &str = "api.addr";

/// Data dir of an agent run by root (the system agent).
pub const SYSTEM_DATA_DIR: &str = "/var/lib/mesh";

/// Soft limit on open files the agent raises itself to (bounded by the hard limit): room for
/// the API's connection cap, QUIC, service logs and pipes, far from a default 1,024.
/// Services inherit it; a huge one (some systems allow 1,048,576) slows programs that close
/// every descriptor up to the limit when they start, so not more.
pub const NOFILE_SOFT_TARGET: u64 = 16_384;

/// The port agents listen on by default: QUIC on this UDP port, TCP on this TCP port.
pub const DEFAULT_QUIC_PORT: u16 = 7400;

/// How the agent logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

/// What `mesh agent` was asked to do, free of any CLI library type.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentOptions {
    pub data_dir: Option<PathBuf>,
    pub name: Option<String>,
    pub mesh_key_file: Option<PathBuf>,
    pub listen: Vec<String>,
    pub peers: Vec<String>,
    /// `--rendezvous`: points (multiaddrs with `/p2p/ID`).
    pub rendezvous: Vec<String>,
    /// `--rendezvous-server` and its settings.
    pub rendezvous_point: Option<crate::transport::PointConfig>,
    /// `--external-addr`.
    pub external_addrs: Vec<String>,
    /// `--relay-server`.
    pub relay_server: bool,
    /// `--metrics-listen`: where to serve `/metrics` alone, read-only.
    pub metrics_listen: Option<String>,
    /// `--sample-interval-ms`: how often the sampler (`crate::insight::sampler`) reads.
    pub sample_interval: std::time::Duration,
    pub api: String,
    pub log_format: LogFormat,
    pub mdns: bool,
    pub profile: Option<Profile>,
    /// `NAME=FIRST-LAST[,FIRST-LAST...]` port pools for `auto` ports, on top of the default
    /// pool (20000-29999, which a `default=...` entry replaces).
    pub port_pools: Vec<String>,
    /// On stop, leave services running instead of stopping them in reverse dependency order.
    pub leave_services_running: bool,
    /// `--accept-services`: whose services this node runs.
    pub accept_services: crate::supervisor::accept::AcceptServices,
    /// `--join TICKET`: join that mesh before starting (unless already a member).
    pub join: Option<String>,
    /// `--join-file FILE`: the same with the ticket in FILE, deleted once joined.
    pub join_file: Option<PathBuf>,
}

/// How a run of the agent ended.
enum Exit {
    /// Stopped by a signal.
    Stop,
    /// Joined a mesh through the API: start again, with the new key.
    Restart,
}

/// Parses `--port-pool NAME=FIRST-LAST[,FIRST-LAST...]` values into a pool table.
pub fn parse_port_pools(values: &[String]) -> anyhow::Result<crate::ports::PoolSet> {
    use std::collections::BTreeMap;
    let mut pools: BTreeMap<String, Vec<crate::ports::PortRange>> = BTreeMap::new();
    for value in values {
        let (name, ranges) = value.split_once('=').with_context(|| {
            format!("--port-pool {value:?}: expected NAME=FIRST-LAST[,FIRST-LAST...]")
        })?;
        for range in ranges.split(',') {
            let range = range
                .trim()
                .parse()
                .map_err(|e| anyhow::anyhow!("--port-pool {value:?}: {e}"))?;
            pools
                .entry(name.trim().to_string())
                .or_default()
                .push(range);
        }
    }
    crate::ports::PoolSet::new(pools).map_err(|e| anyhow::anyhow!("--port-pool: {e}"))
}

/// The default data dir: `/var/lib/mesh` for root, else `$XDG_DATA_HOME/mesh`, else
/// `~/.local/share/mesh`.
pub fn default_data_dir() -> PathBuf {
    // SAFETY-free check of the effective uid through the process's own /proc entry would need
    // libc; the owner of /proc/self is the effective uid and needs no unsafe code.
    let is_root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if is_root {
        return PathBuf::from(SYSTEM_DATA_DIR);
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("mesh");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/mesh"),
        None => PathBuf::from(".mesh"),
    }
}

/// Installs the tracing subscriber: human or JSON lines on stderr, level from `RUST_LOG`
/// (default `info` for mesh, `warn` for libraries).
pub fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,libp2p=warn,mdns_sd=warn,quinn=warn"));
    // Colours only on a terminal: log files and journald get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Runs the agent until SIGINT or SIGTERM.
pub fn run(options: AgentOptions) -> anyhow::Result<()> {
    init_tracing(options.log_format);
    crate::transport::warm_up_crypto();
    // One worker thread, whatever the core count: an agent is idle nearly all the time, and
    // with a worker per core (two on the lab machine) an idle agent used ~20 % more CPU (tasks
    // woken across threads) and ~0.5 MiB more memory (BENCHMARKS.md, 2026-12-03 evening).
    // Port scans, cgroup and run-file work run on the blocking pool (`spawn_blocking`); the
    // state file's fsync still runs on the worker, as it always did on single-core boards.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let exit = runtime.block_on(run_async(options))?;
    drop(runtime);
    match exit {
        Exit::Stop => Ok(()),
        Exit::Restart => Err(joining::reexec()),
    }
}

fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| {
                format!(
                    "cannot create the data dir {}; pass --data-dir with a writable directory",
                    dir.display()
                )
            })?;
    }
    check_data_dir_owner(dir, nix::unistd::geteuid().as_raw())
}

/// Refuses a data dir that someone else could have prepared: the agent (often root) trusts what
/// it finds there — the API token, its identity, the run file naming processes to stop, the
/// log files it appends to — so the dir must belong to the agent's user and be writable by
/// nobody else, and a symlink to it must belong to that user or root.
fn check_data_dir_owner(dir: &Path, euid: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let fix = |why: String| {
        anyhow::anyhow!(
            "refusing the data dir {}: {why}; another user could plant files the agent trusts \
             (its API token, its identity, the logs it writes as its user). Fix it with \
             `chown {euid} {dir} && chmod 700 {dir}`, or pass another --data-dir",
            dir.display(),
            dir = dir.display()
        )
    };
    let link = std::fs::symlink_metadata(dir)
        .with_context(|| format!("cannot read the data dir {}", dir.display()))?;
    if link.file_type().is_symlink() && link.uid() != euid && link.uid() != 0 {
        return Err(fix(format!("it is a symlink owned by uid {}", link.uid())));
    }
    let meta = std::fs::metadata(dir)
        .with_context(|| format!("cannot read the data dir {}", dir.display()))?;
    if !meta.is_dir() {
        bail!(
            "the data dir {} is not a directory; pass another --data-dir",
            dir.display()
        );
    }
    if meta.uid() != euid {
        return Err(fix(format!(
            "it is owned by uid {}, not this agent's uid {euid}",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(fix(format!(
            "it is writable by its group or by everyone (mode {:o})",
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

fn node_name(options: &AgentOptions) -> anyhow::Result<String> {
    let name = match &options.name {
        Some(n) => n.trim().to_string(),
        None => hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .map(|h| h.split('.').next().unwrap_or("").to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "mesh-node".into()),
    };
    if name.is_empty()
        || name.chars().count() > crate::wire::auth::MAX_NAME_LEN
        || name.chars().any(char::is_control)
    {
        bail!(
            "invalid --name {name:?}: use 1 to {} printable characters",
            crate::wire::auth::MAX_NAME_LEN
        );
    }
    Ok(name)
}

/// Raises the soft limit on open files to [`NOFILE_SOFT_TARGET`] (or the hard limit), so a
/// flood of local connections cannot starve the agent's other files; logs the outcome.
fn raise_nofile_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let raised = getrlimit(Resource::RLIMIT_NOFILE).and_then(|(soft, hard)| {
        // `rlim_t` is 32 bits on 32-bit ARM; the target fits either way.
        let target = hard.min(NOFILE_SOFT_TARGET as nix::libc::rlim_t);
        if soft >= target {
            return Ok(soft);
        }
        setrlimit(Resource::RLIMIT_NOFILE, target, hard).map(|()| target)
    });
    match raised {
        Ok(soft) => tracing::debug!(soft, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}

async fn run_async(options: AgentOptions) -> anyhow::Result<Exit> {
    raise_nofile_limit();
    let data_dir = options.data_dir.clone().unwrap_or_else(default_data_dir);
    prepare_data_dir(&data_dir)?;
    // Before anything else reads or writes the data dir; held until the process exits.
    let _data_dir_lock = lock::DataDirLock::acquire(&data_dir)?;
    let (keypair, created) = identity::load_or_create_keypair(&data_dir)?;
    let peer_id = keypair.public().to_peer_id();
    if created {
        tracing::info!(%peer_id, dir = %data_dir.display(), "created a new node identity");
    }
    let name = node_name(&options)?;
    joining::join_at_start(
        &data_dir,
        options.join.as_deref(),
        options.join_file.as_deref(),
        options.mesh_key_file.as_deref(),
        &name,
    )
    .await?;
    let mesh_key = match &options.mesh_key_file {
        Some(path) => MeshKey::read_file(path)?,
        None => {
            let (key, created) = MeshKey::load_or_create(&data_dir)?;
            if created {
                tracing::info!(
                    file = %data_dir.join(crate::admission::MESH_KEY_FILE).display(),
                    "created a new mesh key; copy this file to other machines and start them \
                     with --mesh-key FILE to join them to this mesh"
                );
            }
            key
        }
    };
    let mut hardware = tokio::task::spawn_blocking(crate::hardware::probe)
        .await
        .context("hardware probe failed")?;
    if let Some(profile) = options.profile {
        hardware.profile = profile;
    }
    let settings = hardware.profile.settings();

    let (listen, listen_required) = if options.listen.is_empty() {
        let v4 = parse_addrs(&format!("0.0.0.0:{DEFAULT_QUIC_PORT}"), DEFAULT_QUIC_PORT)
            .map_err(anyhow::Error::msg)?;
        let v6 = parse_addrs(&format!("[::]:{DEFAULT_QUIC_PORT}"), DEFAULT_QUIC_PORT)
            .map_err(anyhow::Error::msg)?;
        // A host without IPv6 still runs on IPv4.
        let required = v4
            .iter()
            .map(|_| true)
            .chain(v6.iter().map(|_| false))
            .collect();
        (v4.into_iter().chain(v6).collect(), required)
    } else {
        let addrs: Vec<_> = options
            .listen
            .iter()
            .map(|s| parse_addrs(s, DEFAULT_QUIC_PORT))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("--listen: {e}"))?
            .into_iter()
            .flatten()
            .collect();
        let n = addrs.len();
        (addrs, vec![true; n])
    };
    let pools = parse_port_pools(&options.port_pools)?;
    // The inviter of the last join, when there was one: found again without mDNS.
    let joined_via = joining::joined_peers(&data_dir);
    let static_peers = options
        .peers
        .iter()
        .chain(joined_via.iter())
        .map(|s| parse_addrs(s, DEFAULT_QUIC_PORT))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("--peer: {e}"))?
        .into_iter()
        .flatten()
        .collect();
    let rendezvous = options
        .rendezvous
        .iter()
        .map(|s| crate::transport::parse_rendezvous_addr(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("--rendezvous: {e}"))?;
    let external_addrs: Vec<_> = options
        .external_addrs
        .iter()
        .map(|s| parse_addrs(s, DEFAULT_QUIC_PORT))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("--external-addr: {e}"))?
        .into_iter()
        .flatten()
        .collect();
    let api_addr: SocketAddr = options
        .api
        .trim_start_matches("http://")
        .parse()
        .with_context(|| format!("--api {:?} is not an IP:PORT address", options.api))?;
    if !api_addr.ip().is_loopback() {
        tracing::warn!(
            %api_addr,
            "the control API is not on loopback: anyone who can reach it can control this agent"
        );
    }
    // Bind the API before joining the mesh: a port conflict should fail fast, before peers see
    // us come and go.
    let api_listener = tokio::net::TcpListener::bind(api_addr)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {api_addr} for the control API (is another agent running? \
                 pass --api 127.0.0.1:PORT)"
            )
        })?;

    let api_addr = api_listener.local_addr().unwrap_or(api_addr);
    let metrics_listener = match &options.metrics_listen {
        Some(addr) => {
            let addr: SocketAddr = addr
                .parse()
                .with_context(|| format!("--metrics-listen {addr:?} is not an IP:PORT address"))?;
            let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen on {addr} for metrics (--metrics-listen): port in use?")
            })?;
            tracing::info!(address = %listener.local_addr().unwrap_or(addr), "serving /metrics (read-only)");
            Some(listener)
        }
        None => None,
    };
    let api_token = crate::api::auth::load_or_create(&data_dir)?;
    tracing::info!(
        file = %api_token.path.display(),
        group = if api_token.group.is_some() { crate::api::auth::ADMIN_GROUP } else { "-" },
        created = api_token.created,
        "API token: state changes need it (reads do not)"
    );
    // Tell local tools where the API is (it may be port 0 → a free port): `api.addr` in the
    // data dir, written atomically.
    let api_file = data_dir.join(API_ADDR_FILE);
    if let Err(e) = identity::write_secret_file(&api_file, format!("{api_addr}\n").as_bytes()) {
        tracing::warn!(error = %e, "cannot record the API address");
    }

    let config = NodeConfig {
        keypair,
        mesh_key: mesh_key.clone(),
        name: name.clone(),
        listen,
        transport: crate::transport::TransportKind::Quic,
        listen_required,
        static_peers,
        rendezvous,
        rendezvous_point: options.rendezvous_point.clone(),
        relay_server: options.relay_server,
        external_addrs,
        hardware: hardware.clone(),
        discovery: if options.mdns {
            DiscoveryMode::Mdns {
                ip_check_interval: settings.mdns_ip_check_interval,
            }
        } else {
            DiscoveryMode::Off
        },
        membership: MembershipConfig::lan(),
        redial_max: settings.redial_interval,
        data_dir: Some(data_dir.clone()),
        supervisor: Some(SupervisorConfig {
            node_id: String::new(),
            node_name: String::new(),
            log_dir: data_dir.join("logs"),
            work_dir: data_dir.join("services"),
            log_limits: LogLimits {
                max_bytes: settings.log_rotate_bytes,
                ..LogLimits::default()
            },
            pools,
            leases: crate::ports::LeaseConfig::default(),
            event_capacity: settings.event_ring_capacity,
            shutdown_mode: if options.leave_services_running {
                ShutdownMode::LeaveRunning
            } else {
                ShutdownMode::StopServices
            },
            run_file: Some(crate::supervisor::runfile::path_in(&data_dir)),
            accept_services: options.accept_services,
            max_services: settings.max_services as usize,
            startup_sync_wait: crate::supervisor::actor::DEFAULT_STARTUP_SYNC_WAIT,
            use_cgroups: true,
            launcher: crate::supervisor::launcher::ProcessLauncher::shared(),
        }),
    };
    let node = start_node(config).await?;
    let shutdown = CancellationToken::new();
    // `mesh join` through the API: one at a time (the agent restarts after it).
    let (join_door, mut join_jobs) = tokio::sync::mpsc::channel(1);
    let (insight, _sampler) = crate::insight::sampler::spawn_sampler(
        node.clone(),
        crate::insight::sampler::SamplerConfig {
            interval: options.sample_interval,
            data_dir: Some(data_dir.clone()),
        },
        shutdown.clone(),
    );
    let mut api_config =
        crate::api::server::ApiConfig::with_token(&api_token.token, api_token.path.clone());
    api_config.join = Some(join_door);
    api_config.insight = Some(insight);
    let api_task = tokio::spawn(crate::api::server::serve_with(
        api_listener,
        node.clone(),
        api_config,
        shutdown.clone(),
    ));
    if let Some(listener) = metrics_listener {
        let (node, shutdown) = (node.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::api::server::serve_metrics(listener, node, shutdown).await {
                tracing::error!(error = %e, "the metrics listener stopped");
            }
        });
    }
    tracing::info!(
        name = %name,
        node = %peer_id,
        mesh = %mesh_key.mesh_id(),
        profile = %hardware.profile,
        score = hardware.score,
        api = %format!("http://{api_addr}"),
        "mesh agent running"
    );
    // The API listens (bound above) and the node runs: ready, for a `Type=notify` unit.
    notify_systemd("READY=1");
    // Start-up code never runs again: let its pages of the binary go (see `startup_pages`).
    tokio::spawn(async {
        tokio::time::sleep(startup_pages::RELEASE_AFTER).await;
        match startup_pages::release_startup_pages() {
            Ok(bytes) => tracing::debug!(bytes, "start-up pages of the binary given back"),
            Err(e) => tracing::debug!(error = %e, "could not give back start-up pages"),
        }
    });

    let signals = wait_for_signal();
    tokio::pin!(signals);
    let exit = loop {
        tokio::select! {
            result = &mut signals => {
                result?;
                break Exit::Stop;
            }
            Some(job) = join_jobs.recv() => {
                let restart = joining::join_running(
                    job,
                    &data_dir,
                    options.mesh_key_file.as_deref(),
                    mesh_key.mesh_id(),
                    &name,
                )
                .await;
                if restart {
                    break Exit::Restart;
                }
            }
        }
    };
    match exit {
        Exit::Stop => {
            notify_systemd("STOPPING=1");
            tracing::info!("stopping: services first, then telling peers we leave");
        }
        Exit::Restart => {
            // Same pid after the re-exec: systemd sees a reload, not a stop.
            notify_systemd("RELOADING=1");
            tracing::info!("restarting with the new mesh key: leaving the old mesh first");
        }
    }
    node.shutdown().await;
    shutdown.cancel();
    let _ = std::fs::remove_file(&api_file);
    match tokio::time::timeout(Duration::from_secs(2), api_task).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "API server error"),
        Err(_) => tracing::warn!("API server did not stop within 2 s"),
        _ => {}
    }
    Ok(exit)
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn euid() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    #[test]
    fn a_private_data_dir_of_the_agents_user_is_accepted() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        prepare_data_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // A group search bit (the `mesh` group reading the token) is fine.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o710)).unwrap();
        check_data_dir_owner(&dir, euid()).unwrap();
    }

    #[test]
    fn a_data_dir_others_can_write_is_refused_with_the_fix() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_data_dir_owner(&dir, euid()).unwrap_err().to_string();
        assert!(
            err.contains("writable by its group or by everyone (mode 777)"),
            "{err}"
        );
        assert!(err.contains("chmod 700"), "{err}");
    }

    #[test]
    fn a_data_dir_of_another_user_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        // As if the agent ran as another uid than the dir's owner.
        let other = euid().wrapping_add(4242);
        let err = check_data_dir_owner(&dir, other).unwrap_err().to_string();
        assert!(err.contains("is owned by uid"), "{err}");
        // A symlink owned by someone else than the agent's user or root.
        if euid() == 0 {
            let link = tmp.path().join("link");
            std::os::unix::fs::symlink(&dir, &link).unwrap();
            nix::unistd::fchownat(
                nix::fcntl::AT_FDCWD,
                &link,
                Some(nix::unistd::Uid::from_raw(65534)),
                None,
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .unwrap();
            let err = check_data_dir_owner(&link, 4242).unwrap_err().to_string();
            assert!(err.contains("symlink owned by uid 65534"), "{err}");
        } else {
            eprintln!("skipping the symlink case: needs root to chown a symlink");
        }
    }
}

/// Tells systemd about the agent's state (`READY=1`, `STOPPING=1`) through `$NOTIFY_SOCKET`,
/// as `sd_notify(3)` does, for a `Type=notify` unit; nothing without the variable. A failure is
/// logged, never fatal: systemd then times the start out and says so.
fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let socket = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(socket) => socket,
        Err(e) => {
            tracing::warn!(error = %e, "cannot notify systemd");
            return;
        }
    };
    let bytes = path.as_encoded_bytes();
    let sent = match bytes.strip_prefix(b"@") {
        // An abstract socket: `@name`.
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name)
                .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
        }
        None => socket.send_to(state.as_bytes(), &path),
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, socket = ?path, "cannot notify systemd");
    }
}

#[cfg(test)]
mod notify_tests {
    #[test]
    fn readiness_reaches_the_notify_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let listener = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
        // SAFETY of set_var: this test alone reads NOTIFY_SOCKET, and no other test sets it.
        unsafe { std::env::set_var("NOTIFY_SOCKET", &path) };
        super::notify_systemd("READY=1");
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).expect("a datagram");
        assert_eq!(&buf[..n], b"READY=1");
    }
}
