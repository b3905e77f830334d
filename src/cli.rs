//! The command line: clap types, dispatch, rendering of tables and JSON, exit codes.
//!
//! Clap types live only here. `mesh agent` hands a plain [`AgentOptions`] to the daemon; every
//! other command is a thin client of the agent's API ([`crate::api::client`]).
//!
//! Exit codes: 0 success, 1 error, 2 no agent answering at the API address.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::api::client::{ApiClient, ClientError};
use crate::api::{
    DEFAULT_API_ADDR, PeerEntry, StateResponse, StatusResponse, TagRequest, TagResponse,
};
use crate::daemon::{AgentOptions, LogFormat};

/// Exit code when no agent answers.
pub const EXIT_NO_AGENT: i32 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "mesh",
    version,
    about = "One agent per machine: finds its peers, links them over QUIC, keeps them in view",
    after_help = "Start an agent with `mesh agent`, then look at the swarm with `mesh peers`."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the agent (long-running).
    Agent(AgentArgs),
    /// List the peers of the mesh, this node first.
    Peers(PeersArgs),
    /// Show this node's id, mesh, addresses, profile and peer counts.
    Status(StatusArgs),
    /// The replicated state document: size, history, heads, per-peer sync status.
    State(StatusArgs),
    /// Set or remove this node's tags (replicated to every node; placement uses them).
    Tag(TagArgs),
    /// Mesh key tools.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Raw API request, e.g. `mesh api GET /v1/status`.
    Api(ApiArgs),
}

#[derive(Args, Debug)]
pub struct ClientArgs {
    /// API address of the agent to ask (HOST:PORT or http://HOST:PORT).
    #[arg(long, env = "MESH_API", default_value = DEFAULT_API_ADDR, global = true)]
    pub api: String,
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Data directory [default: $XDG_DATA_HOME/mesh or ~/.local/share/mesh; /var/lib/mesh as root].
    #[arg(long, env = "MESH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Node name [default: the hostname].
    #[arg(long)]
    pub name: Option<String>,
    /// File holding the mesh key (64 hex characters, from `mesh key generate`) [default: the
    /// data dir's mesh.key, created on first start].
    #[arg(long, env = "MESH_KEY_FILE")]
    pub mesh_key: Option<PathBuf>,
    /// QUIC listen address (repeatable): IP:PORT, IP, or a multiaddr
    /// [default: 0.0.0.0:7400 and [::]:7400].
    #[arg(long)]
    pub listen: Vec<String>,
    /// Peer to dial directly, beyond what mDNS finds (repeatable): IP:PORT or a multiaddr.
    #[arg(long)]
    pub peer: Vec<String>,
    /// Address of the local control API (keep it on loopback).
    #[arg(long, default_value = DEFAULT_API_ADDR)]
    pub api: String,
    /// Log format; RUST_LOG sets the level (default: info).
    #[arg(long, value_enum, default_value_t = LogFormatArg::Human)]
    pub log_format: LogFormatArg,
    /// Do not use mDNS/DNS-SD (only --peer addresses are dialed).
    #[arg(long)]
    pub no_mdns: bool,
    /// Override the profile chosen from the hardware: full, standard, edge or lite.
    #[arg(long)]
    pub profile: Option<crate::hardware::Profile>,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum LogFormatArg {
    Human,
    Json,
}

#[derive(Args, Debug)]
pub struct PeersArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Redraw as the mesh changes (Ctrl-C to stop).
    #[arg(long, short)]
    pub watch: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct TagArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: TagCommand,
}

#[derive(Subcommand, Debug)]
pub enum TagCommand {
    /// Set a tag: `mesh tag add role=nas`.
    Add {
        /// KEY=VALUE
        tag: String,
    },
    /// Remove a tag: `mesh tag rm role`.
    Rm { key: String },
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Print a new random mesh key (64 hex characters).
    Generate,
}

#[derive(Args, Debug)]
pub struct ApiArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// HTTP method: GET, POST, PUT or DELETE.
    pub method: String,
    /// Path, e.g. /v1/peers.
    pub path: String,
    /// JSON body for POST and PUT.
    pub body: Option<String>,
}

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    let result = match cli.command {
        Command::Agent(args) => return run_agent(args),
        Command::Peers(args) => peers(args),
        Command::Status(args) => status(args),
        Command::State(args) => state(args),
        Command::Tag(args) => tag(args),
        Command::Key(KeyCommand::Generate) => {
            println!("{}", crate::admission::MeshKey::generate().to_hex());
            eprintln!(
                "Save it to a file (chmod 600) on every machine and start each agent with \
                 `mesh agent --mesh-key FILE`."
            );
            Ok(())
        }
        Command::Api(args) => api(args),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("mesh: {e}");
            match e {
                ClientError::NoAgent { .. } => EXIT_NO_AGENT,
                ClientError::Usage(_) => 1,
                _ => 1,
            }
        }
    }
}

fn run_agent(args: AgentArgs) -> i32 {
    let options = AgentOptions {
        data_dir: args.data_dir,
        name: args.name,
        mesh_key_file: args.mesh_key,
        listen: args.listen,
        peers: args.peer,
        api: args.api,
        log_format: match args.log_format {
            LogFormatArg::Human => LogFormat::Human,
            LogFormatArg::Json => LogFormat::Json,
        },
        mdns: !args.no_mdns,
        profile: args.profile,
    };
    match crate::daemon::run(options) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("mesh: {e:#}");
            1
        }
    }
}

fn peers(args: PeersArgs) -> Result<(), ClientError> {
    let client = ApiClient::new(&args.client.api);
    if !args.watch {
        let rows = client.get::<Vec<PeerEntry>>("/v1/peers")?.body;
        print_peers(&rows, args.json);
        return Ok(());
    }
    let mut version: Option<u64> = None;
    loop {
        let path = match version {
            Some(v) => format!("/v1/peers?wait={v}&timeout_ms=1000"),
            None => "/v1/peers".to_string(),
        };
        let resp = client.get::<Vec<PeerEntry>>(&path)?;
        version = resp.version;
        // Clear the screen and home the cursor, then redraw.
        print!("\x1b[H\x1b[2J");
        print_peers(&resp.body, args.json);
        let _ = std::io::stdout().flush();
    }
}

fn print_peers(rows: &[PeerEntry], json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(rows).expect("peer entries always serialize")
        );
    } else {
        print!("{}", render_peers(rows));
    }
}

fn status(args: StatusArgs) -> Result<(), ClientError> {
    let client = ApiClient::new(&args.client.api);
    let s = client.get::<StatusResponse>("/v1/status")?.body;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&s).expect("status always serializes")
        );
    } else {
        print!("{}", render_status(&s));
    }
    Ok(())
}

fn state(args: StatusArgs) -> Result<(), ClientError> {
    let client = ApiClient::new(&args.client.api);
    let s = client.get::<StateResponse>("/v1/state")?.body;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&s).expect("state always serializes")
        );
    } else {
        print!("{}", render_state(&s));
    }
    Ok(())
}

fn tag(args: TagArgs) -> Result<(), ClientError> {
    let client = ApiClient::new(&args.client.api);
    let (method, path, body) = match &args.command {
        TagCommand::Add { tag } => {
            let Some((key, value)) = tag.split_once('=') else {
                return Err(ClientError::Usage(format!(
                    "expected KEY=VALUE, e.g. `mesh tag add role=nas`, got {tag:?}"
                )));
            };
            let body = serde_json::to_string(&TagRequest {
                key: key.trim().to_string(),
                value: value.to_string(),
            })
            .expect("a tag request always serializes");
            ("POST", "/v1/tags".to_string(), Some(body))
        }
        TagCommand::Rm { key } => ("DELETE", format!("/v1/tags/{}", urlencode(key)), None),
    };
    let resp: TagResponse = client.send_json(method, &path, body.as_deref())?;
    if !resp.changed {
        eprintln!("(no change)");
    }
    Ok(())
}

/// Percent-encodes a path segment.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Renders `mesh state`.
pub fn render_state(s: &StateResponse) -> String {
    let mut out = format!(
        "epoch    {}\nchanges  {}\nfile     {} bytes\nheads    {}\nentries  {} nodes, {} services, {} instances, {} leases\nsync     {} messages in ({} B), {} out ({} B), {} malformed\n",
        s.epoch,
        s.changes,
        s.file_bytes,
        s.heads
            .iter()
            .map(|h| &h[..h.len().min(12)])
            .collect::<Vec<_>>()
            .join(" "),
        s.nodes,
        s.services,
        s.instances,
        s.leases,
        s.sync.messages_in,
        s.sync.bytes_in,
        s.sync.messages_out,
        s.sync.bytes_out,
        s.sync.malformed,
    );
    if s.recovered_from_corruption {
        out.push_str(
            "note     the state file was unreadable at start and was recovered from peers\n",
        );
    }
    if s.skipped_entries > 0 {
        out.push_str(&format!(
            "note     {} entries written by peers do not fit the schema and are ignored\n",
            s.skipped_entries
        ));
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = s
        .peers
        .iter()
        .map(|p| {
            vec![
                p.name.clone().unwrap_or_else(|| "?".into()),
                crate::identity::short_id(&p.id.parse().unwrap_or(libp2p::PeerId::random())),
                if p.connected { "yes" } else { "no" }.into(),
                match p.status {
                    crate::sync::SyncStatus::InSync => "in sync",
                    crate::sync::SyncStatus::Behind => "behind",
                    crate::sync::SyncStatus::NeverSynced => "never synced",
                }
                .into(),
            ]
        })
        .collect();
    out.push_str(&format_table(&["PEER", "NODE", "CONNECTED", "SYNC"], &rows));
    out
}

fn api(args: ApiArgs) -> Result<(), ClientError> {
    let client = ApiClient::new(&args.client.api);
    let (status, _, body) = client.request(
        &args.method.to_ascii_uppercase(),
        &args.path,
        args.body.as_deref(),
    )?;
    // Pretty-print JSON bodies; pass anything else through.
    match serde_json::from_str::<serde_json::Value>(&body) {
        Ok(v) => println!(
            "{}",
            serde_json::to_string_pretty(&v).expect("a parsed value serializes")
        ),
        Err(_) => println!("{body}"),
    }
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(ClientError::Api {
            status,
            message: "see the body above".into(),
        })
    }
}

/// `HOST:PORT` of a multiaddr like `/ip4/10.0.0.2/udp/7400/quic-v1`; the multiaddr otherwise.
pub fn short_addr(addr: &str) -> String {
    let parts: Vec<&str> = addr.split('/').collect();
    match parts.as_slice() {
        ["", "ip4", ip, "udp", port, ..] => format!("{ip}:{port}"),
        ["", "ip6", ip, "udp", port, ..] => format!("[{ip}]:{port}"),
        _ => addr.to_string(),
    }
}

/// The address shown for a row: the first non-loopback one, else the first.
fn display_addr(addrs: &[String]) -> String {
    addrs
        .iter()
        .find(|a| !a.contains("/127.") && !a.contains("/::1/"))
        .or(addrs.first())
        .map(|a| short_addr(a))
        .unwrap_or_else(|| "-".into())
}

/// A human duration: `850ms`, `12s`, `5m`, `3h`, `2d`.
pub fn human_ago(ms: u64) -> String {
    match ms {
        0..1000 => format!("{ms}ms"),
        1000..60_000 => format!("{}s", ms / 1000),
        60_000..3_600_000 => format!("{}m", ms / 60_000),
        3_600_000..86_400_000 => format!("{}h", ms / 3_600_000),
        _ => format!("{}d", ms / 86_400_000),
    }
}

/// Renders rows as an aligned table, in the manner of `tailscale status`.
pub fn render_peers(rows: &[PeerEntry]) -> String {
    let header = [
        "NAME",
        "NODE",
        "ADDRESS",
        "STATE",
        "RTT",
        "LAST SEEN",
        "OS/ARCH",
        "PROFILE",
        "VERSION",
    ];
    let dash = || "-".to_string();
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let name = r.name.clone().unwrap_or_else(|| "?".into());
            vec![
                if r.is_self {
                    format!("{name} (self)")
                } else {
                    name
                },
                r.short_id.clone(),
                display_addr(&r.addrs),
                r.state.clone(),
                r.rtt_ms.map(|v| format!("{v:.1}ms")).unwrap_or_else(dash),
                if r.is_self {
                    "-".into()
                } else {
                    r.last_seen_ms_ago
                        .map(|v| format!("{} ago", human_ago(v)))
                        .unwrap_or_else(dash)
                },
                match (&r.os, &r.arch) {
                    (Some(os), Some(arch)) => format!("{os}/{arch}"),
                    _ => dash(),
                },
                match (&r.profile, r.score) {
                    (Some(p), Some(s)) => format!("{p} ({s})"),
                    _ => dash(),
                },
                r.version.clone().unwrap_or_else(dash),
            ]
        })
        .collect();
    format_table(&header, &table)
}

fn format_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                l.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// Renders `mesh status`.
pub fn render_status(s: &StatusResponse) -> String {
    let addrs: Vec<String> = s.listen_addrs.iter().map(|a| short_addr(a)).collect();
    let c = &s.counters;
    format!(
        "node     {name} ({id})\n\
         mesh     {mesh}\n\
         version  {version}\n\
         listen   {addrs}\n\
         machine  {class}, {cores} cores, {mem:.1} GiB, {os}/{arch}\n\
         profile  {profile} (score {score})\n\
         uptime   {uptime}\n\
         peers    {alive} alive, {suspect} suspect, {dead} dead, {left} left\n\
         refused  {bad} bad proof, {denied} denied, {timeout} timed out, {backoff} in backoff\n",
        name = s.name,
        id = s.id,
        mesh = s.mesh_id,
        version = s.version,
        addrs = if addrs.is_empty() {
            "-".into()
        } else {
            addrs.join(", ")
        },
        class = s.device_class,
        cores = s.hardware.cores,
        mem = s.hardware.memory_bytes as f64 / (1u64 << 30) as f64,
        os = s.hardware.os,
        arch = s.hardware.arch,
        profile = s.profile,
        score = s.score,
        uptime = human_ago(s.uptime_s.saturating_mul(1000)),
        alive = s.peers.alive,
        suspect = s.peers.suspect,
        dead = s.peers.dead,
        left = s.peers.left,
        bad = c.admission_bad_proof,
        denied = c.admission_denied,
        timeout = c.admission_timeout,
        backoff = c.refused_in_backoff,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_durations_render_short() {
        assert_eq!(
            short_addr("/ip4/10.0.0.2/udp/7400/quic-v1"),
            "10.0.0.2:7400"
        );
        assert_eq!(
            short_addr("/ip6/fd00::2/udp/7400/quic-v1"),
            "[fd00::2]:7400"
        );
        assert_eq!(human_ago(850), "850ms");
        assert_eq!(human_ago(12_500), "12s");
        assert_eq!(human_ago(7_200_000), "2h");
    }

    #[test]
    fn table_aligns_columns() {
        let out = format_table(
            &["A", "BB"],
            &[
                vec!["long".into(), "x".into()],
                vec!["s".into(), "y".into()],
            ],
        );
        assert_eq!(out, "A     BB\nlong  x\ns     y\n");
    }

    #[test]
    fn cli_parses_documented_forms() {
        Cli::try_parse_from(["mesh", "peers", "--json"]).unwrap();
        Cli::try_parse_from(["mesh", "peers", "--api", "127.0.0.1:9", "--watch"]).unwrap();
        Cli::try_parse_from([
            "mesh",
            "agent",
            "--listen",
            "0.0.0.0:7400",
            "--listen",
            "[::]:7400",
            "--name",
            "pi",
        ])
        .unwrap();
        Cli::try_parse_from(["mesh", "key", "generate"]).unwrap();
        Cli::try_parse_from(["mesh", "api", "GET", "/v1/status"]).unwrap();
        assert!(Cli::try_parse_from(["mesh", "agent", "--profile", "turbo"]).is_err());
    }
}
