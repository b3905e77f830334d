//! The command line: clap types, dispatch, rendering of tables and JSON, exit codes.
//!
//! Clap types live only here. `mesh agent` hands a plain [`AgentOptions`] to the daemon; every
//! other command is a thin client of the agent's API ([`crate::api::client`]).
//!
//! Exit codes: 0 success, 1 error, 2 no agent answering at the API address.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::PossibleValuesParser;
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

use crate::api::auth::{TOKEN_ENV, TOKEN_FILE_ENV};
use crate::api::client::{ApiClient, ClientError};
use crate::api::{
    DEFAULT_API_ADDR, EventEntry, EventsResponse, ListeningResponse, LogsResponse, PeerEntry,
    PortEntry, ServiceActionResponse, ServiceAddRequest, ServiceAddResponse, ServiceEntry,
    StateResponse, StatusResponse, TagRequest, TagResponse,
};
use crate::daemon::{AgentOptions, LogFormat};
use crate::state::now_ms;
use crate::supervisor::{CliServiceParts, ServiceSpec, parse_service_file};

/// `print!` to stdout that ends the command quietly once stdout is closed (`mesh ... | head`)
/// instead of panicking: returns [`ClientError::OutputClosed`] from the enclosing function.
macro_rules! out {
    ($($arg:tt)*) => {
        if !emit(&format!($($arg)*)) {
            return Err(ClientError::OutputClosed);
        }
    };
}

/// `eprintln!` that never panics (stderr may be a closed pipe too).
macro_rules! note {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Exit code when no agent answers.
pub const EXIT_NO_AGENT: i32 = 2;

/// Default number of log lines `mesh logs` shows (like `tail`, a screenful and a bit).
pub const DEFAULT_LOG_LINES: u64 = 50;
/// Lines asked for per poll by `mesh logs -f`: more than a busy service writes in one poll
/// interval, so a follower does not fall behind; the agent sends only what is new anyway.
pub const FOLLOW_LOG_LINES: u64 = 1000;
/// Time between polls of `mesh logs -f`: new lines show within half a second, and an idle
/// follower costs the agent two cheap requests a second.
pub const FOLLOW_LOG_INTERVAL: Duration = Duration::from_millis(500);
/// Default number of events `mesh events` shows.
pub const DEFAULT_EVENT_LIMIT: u64 = 100;
/// Long-poll wait of `mesh events -f`, in milliseconds: under the server's 30 s cap
/// ([`crate::api::MAX_WAIT`]) and the client's 40 s request timeout, so an idle poll ends in
/// an empty answer, not an error.
pub const FOLLOW_EVENTS_WAIT_MS: u64 = 25_000;

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
    /// Add, remove, start, stop or restart services.
    Service(ServiceArgs),
    /// List the services of the mesh: where each runs, its state, ports and health.
    Services(ServicesArgs),
    /// List port leases (mesh-wide or one node), or a node's listening sockets.
    Ports(PortsArgs),
    /// Print a service's log, from the node that runs it.
    Logs(LogsArgs),
    /// Print a node's audit trail: starts, exits, restarts, port changes.
    Events(EventsArgs),
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
    /// File holding the agent's API token, needed to change anything [default: the first of
    /// $MESH_API_TOKEN, then api.token in $MESH_DATA_DIR, this user's data dir and
    /// /var/lib/mesh].
    #[arg(long, env = TOKEN_FILE_ENV, value_name = "FILE", global = true)]
    pub token_file: Option<PathBuf>,
}

impl ClientArgs {
    /// A client of the agent at `--api`, with the API token found for state changes.
    pub fn connect(&self) -> ApiClient {
        let token = crate::api::auth::find_token(
            self.token_file.as_deref(),
            std::env::var(TOKEN_ENV).ok().as_deref(),
            &token_dirs(),
        );
        ApiClient::new(&self.api).with_token(token)
    }
}

/// Data dirs whose `api.token` the CLI tries, in order: `$MESH_DATA_DIR` (as `mesh agent`
/// uses it), this user's default data dir, and the system agent's (for `mesh` group members).
fn token_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("MESH_DATA_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .into_iter()
        .collect();
    for dir in [
        crate::daemon::default_data_dir(),
        PathBuf::from(crate::daemon::SYSTEM_DATA_DIR),
    ] {
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs
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
    /// Port pool for `auto` ports (repeatable): NAME=FIRST-LAST[,FIRST-LAST...]
    /// [default: default=20000-29999].
    #[arg(long, value_name = "NAME=RANGES")]
    pub port_pool: Vec<String>,
    /// On stop, leave services running instead of stopping them in reverse dependency order.
    /// The next agent start stops them before starting its own copies (never two copies).
    #[arg(long)]
    pub leave_services_running: bool,
    /// Whose services this node runs: all (placed from any node), own (added through this
    /// node's API only), none.
    #[arg(long, value_name = "WHOSE", default_value = "all",
          value_parser = PossibleValuesParser::new(["all", "own", "none"]))]
    pub accept_services: String,
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

#[derive(Args, Debug)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: ServiceCommand,
}

#[derive(Subcommand, Debug)]
// Parsed once per run: the size of `Add` costs nothing worth a `Box`.
#[allow(clippy::large_enum_variant)]
pub enum ServiceCommand {
    /// Add or replace services, from a file (`-f services.toml`) or the command line
    /// (`mesh service add web --port auto -- python3 -m http.server '$PORT'`).
    Add(ServiceAddArgs),
    /// Remove a service (it is stopped first): `mesh service rm web`.
    Rm { name: String },
    /// Start a stopped service: `mesh service start web`.
    Start { name: String },
    /// Stop a service; it stays stopped until started again: `mesh service stop web`.
    Stop { name: String },
    /// Restart a service: `mesh service restart web`.
    Restart { name: String },
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("source").required(true).args(["file", "name"])))]
pub struct ServiceAddArgs {
    /// TOML file of `[[service]]` tables (`-` reads standard input); see
    /// protocol/service-spec.md.
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        conflicts_with_all = ["after", "port", "health", "restart", "node", "command"]
    )]
    pub file: Option<PathBuf>,
    /// Name of the service (lowercase letters, digits, '-'); the command follows `--`.
    #[arg(requires = "command")]
    pub name: Option<String>,
    /// Start only once this service is healthy (repeatable).
    #[arg(long, value_name = "DEP")]
    pub after: Vec<String>,
    /// A port for the service (repeatable): `[NAME=](auto|auto:POOL|N)[/tcp|/udp]`, e.g.
    /// `auto`, `8080`, `metrics=auto`, `dns=5353/udp`. The first is `$PORT`; a named one is
    /// also `$PORT_<NAME>`.
    #[arg(long, value_name = "PORT")]
    pub port: Vec<String>,
    /// Health check: `tcp`, `http`, `http:PATH` or `exec:CMD ARGS...`.
    #[arg(long, value_name = "CHECK")]
    pub health: Option<String>,
    /// When to restart the process after it ends [default: always].
    #[arg(
        long,
        value_name = "POLICY",
        value_parser = PossibleValuesParser::new(["always", "on-failure", "never"])
    )]
    pub restart: Option<String>,
    /// While a dependency restarts: keep running, or stop and start again once it is healthy
    /// [default: ride-through].
    #[arg(
        long,
        value_name = "MODE",
        value_parser = PossibleValuesParser::new(["ride-through", "restart"])
    )]
    pub on_dependency_restart: Option<String>,
    /// Node to run it on [default: the node of the agent asked].
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
    /// User to run it as, on the node that runs it [default: the agent's user, root when
    /// packaged].
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Group to run it as [default: the user's primary group].
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// The command and its arguments, after `--`. The agent replaces `$PORT` and
    /// `$PORT_<NAME>` with the assigned ports when it starts the service: single-quote them
    /// (`'$PORT'`) so your shell passes them on literally.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ServicesArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Print the JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct PortsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Print the JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Only this node (by name) [default: every node; with --listening, the node asked].
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
    /// Every listening socket of the node, with its process and service, not just leases.
    #[arg(long)]
    pub listening: bool,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Service name.
    pub name: String,
    /// Keep printing new lines as they are written (Ctrl-C to stop).
    #[arg(long, short)]
    pub follow: bool,
    /// Number of last lines to print first.
    #[arg(short = 'n', long = "lines", value_name = "N", default_value_t = DEFAULT_LOG_LINES)]
    pub lines: u64,
    /// Print the answer as JSON (service, node, lines, offset); with -f, one object per poll.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Keep printing new events as they happen (Ctrl-C to stop).
    #[arg(long, short)]
    pub follow: bool,
    /// Node whose trail to read (by name) [default: the node asked].
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
    /// Print JSON: the whole answer, or with --follow one event object per line.
    #[arg(long)]
    pub json: bool,
    /// Number of last events to print first.
    #[arg(short = 'n', long = "limit", value_name = "N", default_value_t = DEFAULT_EVENT_LIMIT)]
    pub limit: u64,
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
        Command::Service(args) => service(args),
        Command::Services(args) => services(args),
        Command::Ports(args) => ports(args),
        Command::Logs(args) => logs(args),
        Command::Events(args) => events(args),
        Command::Key(KeyCommand::Generate) => key_generate(),
        Command::Api(args) => api(args),
    };
    match result {
        Ok(()) | Err(ClientError::OutputClosed) => 0,
        Err(e) => {
            note!("mesh: {e}");
            match e {
                ClientError::NoAgent { .. } => EXIT_NO_AGENT,
                ClientError::Usage(_) => 1,
                _ => 1,
            }
        }
    }
}

fn key_generate() -> Result<(), ClientError> {
    out!("{}\n", crate::admission::MeshKey::generate().to_hex());
    note!(
        "Save it to a file (chmod 600) on every machine and start each agent with \
         `mesh agent --mesh-key FILE`."
    );
    Ok(())
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
        port_pools: args.port_pool,
        leave_services_running: args.leave_services_running,
        accept_services: args.accept_services.parse().unwrap_or_default(),
    };
    match crate::daemon::run(options) {
        Ok(()) => 0,
        Err(e) => {
            note!("mesh: {e:#}");
            1
        }
    }
}

fn peers(args: PeersArgs) -> Result<(), ClientError> {
    let client = args.client.connect();
    if !args.watch {
        let rows = client.get::<Vec<PeerEntry>>("/v1/peers")?.body;
        return print_peers(&rows, args.json);
    }
    let mut version: Option<u64> = None;
    loop {
        let path = match version {
            Some(v) => format!("/v1/peers?wait={v}&timeout_ms=1000"),
            None => "/v1/peers".to_string(),
        };
        let resp = client.get_waiting::<Vec<PeerEntry>>(&path)?;
        version = resp.version;
        // Clear the screen and home the cursor, then redraw.
        out!("\x1b[H\x1b[2J");
        print_peers(&resp.body, args.json)?;
    }
}

fn print_peers(rows: &[PeerEntry], json: bool) -> Result<(), ClientError> {
    if json {
        out!(
            "{}\n",
            serde_json::to_string_pretty(rows).expect("peer entries always serialize")
        );
    } else {
        out!("{}", render_peers(rows));
    }
    Ok(())
}

fn status(args: StatusArgs) -> Result<(), ClientError> {
    let client = args.client.connect();
    let s = client.get::<StatusResponse>("/v1/status")?.body;
    if args.json {
        out!(
            "{}\n",
            serde_json::to_string_pretty(&s).expect("status always serializes")
        );
    } else {
        out!("{}", render_status(&s));
    }
    Ok(())
}

fn state(args: StatusArgs) -> Result<(), ClientError> {
    let client = args.client.connect();
    let s = client.get::<StateResponse>("/v1/state")?.body;
    if args.json {
        out!(
            "{}\n",
            serde_json::to_string_pretty(&s).expect("state always serializes")
        );
    } else {
        out!("{}", render_state(&s));
    }
    Ok(())
}

fn tag(args: TagArgs) -> Result<(), ClientError> {
    let client = args.client.connect();
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
        note!("(no change)");
    }
    Ok(())
}

fn service(args: ServiceArgs) -> Result<(), ClientError> {
    let client = args.client.connect();
    let (method, path) = match args.command {
        ServiceCommand::Add(add) => return service_add(&client, add),
        ServiceCommand::Rm { name } => ("DELETE", format!("/v1/services/{}", urlencode(&name))),
        ServiceCommand::Start { name } => ("POST", service_action_path(&name, "start")),
        ServiceCommand::Stop { name } => ("POST", service_action_path(&name, "stop")),
        ServiceCommand::Restart { name } => ("POST", service_action_path(&name, "restart")),
    };
    let resp: ServiceActionResponse = client.send_json(method, &path, None)?;
    out!("{}\n", render_service_action(&resp));
    Ok(())
}

fn service_action_path(name: &str, action: &str) -> String {
    format!("/v1/services/{}/{action}", urlencode(name))
}

/// `mesh service add`: specs are built and validated here, so a mistake is named before
/// anything is sent; the agent validates them again together with the mesh's other services.
fn service_add(client: &ApiClient, args: ServiceAddArgs) -> Result<(), ClientError> {
    let services = match (args.file, args.name) {
        (Some(file), _) => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())
            } else {
                std::fs::read_to_string(&file)
            }
            .map_err(|e| ClientError::Usage(format!("reading {}: {e}", file.display())))?;
            parse_service_file(&text).map_err(|e| ClientError::Usage(e.to_string()))?
        }
        (None, Some(name)) => {
            let spec = ServiceSpec::from_cli_parts(CliServiceParts {
                name,
                after: args.after,
                ports: args.port,
                health: args.health,
                restart: args.restart,
                on_dependency_restart: args.on_dependency_restart,
                node: args.node,
                user: args.user,
                group: args.group,
                command: args.command,
            })
            .map_err(|e| ClientError::Usage(e.to_string()))?;
            vec![spec]
        }
        (None, None) => {
            // clap's `source` group requires one of them.
            return Err(ClientError::Usage(
                "name a service (`mesh service add NAME -- CMD ARGS...`) or a file (`-f FILE`)"
                    .into(),
            ));
        }
    };
    if services.is_empty() {
        return Err(ClientError::Usage(
            "the file defines no services (expected `[[service]]` tables)".into(),
        ));
    }
    let resp: ServiceAddResponse =
        client.post_json("/v1/services", &ServiceAddRequest { services })?;
    for added in &resp.services {
        out!("{} {} on node {}\n", added.outcome, added.name, added.node);
    }
    Ok(())
}

/// One line for the answer of `mesh service rm|start|stop|restart`.
fn render_service_action(resp: &ServiceActionResponse) -> String {
    let (done, already) = match resp.action.as_str() {
        "removed" => ("removed", "removed"),
        "start" => ("started", "started"),
        "stop" => ("stopped", "stopped"),
        "restart" => ("restarted", "restarted"),
        other => (other, other),
    };
    if resp.changed {
        format!("{done} {} on node {}", resp.name, resp.node)
    } else {
        format!("{} on node {} was already {already}", resp.name, resp.node)
    }
}

fn services(args: ServicesArgs) -> Result<(), ClientError> {
    let client = args.client.connect();
    let rows = client.get::<Vec<ServiceEntry>>("/v1/services")?.body;
    if args.json {
        out!("{}\n", to_json_pretty(&rows));
    } else {
        out!("{}", render_services(&rows));
    }
    Ok(())
}

fn ports(args: PortsArgs) -> Result<(), ClientError> {
    let client = args.client.connect();
    let node = args.node.as_deref();
    if args.listening {
        let resp = client
            .get::<ListeningResponse>(&query_path("/v1/ports/listening", &[("node", node)]))?
            .body;
        if args.json {
            out!("{}\n", to_json_pretty(&resp));
        } else {
            out!("{}", render_listening(&resp));
        }
        if !resp.complete {
            note!(
                "note: some processes could not be read (run the agent as root to see every owner)"
            );
        }
    } else {
        let rows = client
            .get::<Vec<PortEntry>>(&query_path("/v1/ports", &[("node", node)]))?
            .body;
        if args.json {
            out!("{}\n", to_json_pretty(&rows));
        } else {
            out!("{}", render_ports(&rows, now_ms()));
        }
    }
    Ok(())
}

fn logs(args: LogsArgs) -> Result<(), ClientError> {
    let client = args.client.connect();
    let base = format!("/v1/services/{}/logs", urlencode(&args.name));
    let n = args.lines.to_string();
    let mut resp = client
        .get::<LogsResponse>(&query_path(&base, &[("n", Some(&n))]))?
        .body;
    let follow_n = FOLLOW_LOG_LINES.to_string();
    loop {
        let text = if args.json {
            if args.follow {
                format!("{}\n", serde_json::to_string(&resp).expect("serializable"))
            } else {
                format!("{}\n", to_json_pretty(&resp))
            }
        } else {
            if resp.truncated {
                eprintln!("{}", truncated_logs_note(&resp));
            }
            render_log_lines(&resp.lines)
        };
        if !emit(&text) || !args.follow {
            return Ok(());
        }
        std::thread::sleep(FOLLOW_LOG_INTERVAL);
        let offset = resp.offset.to_string();
        resp = client
            .get::<LogsResponse>(&query_path(
                &base,
                &[("n", Some(&follow_n)), ("offset", Some(&offset))],
            ))?
            .body;
    }
}

/// Said on stderr (stdout stays the log itself) when the agent cut a log answer short.
fn truncated_logs_note(resp: &LogsResponse) -> String {
    format!(
        "mesh: showing the newest {} lines of {} only: an answer holds at most {} KiB of log \
         text (the whole log is in the data dir of node {})",
        resp.lines.len(),
        resp.service,
        crate::query::MAX_LOG_ANSWER_BYTES / 1024,
        resp.node
    )
}

fn render_log_lines(lines: &[String]) -> String {
    let mut out = String::new();
    for line in lines {
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn events(args: EventsArgs) -> Result<(), ClientError> {
    let client = args.client.connect();
    let node = args.node.as_deref();
    let limit = args.limit.to_string();
    let resp = client
        .get::<EventsResponse>(&query_path(
            "/v1/events",
            &[("limit", Some(&limit)), ("node", node)],
        ))?
        .body;
    note_dropped(&resp, 0);
    if !args.follow {
        let text = if args.json {
            format!("{}\n", to_json_pretty(&resp))
        } else {
            render_events(&resp.events, now_ms())
        };
        emit(&text);
        return Ok(());
    }
    // Following: columns cannot be sized for events not seen yet, so lines use the widths of
    // the first answer (at least those of a typical event) and overflow past them.
    let widths = event_widths(&resp.events, now_ms());
    let render = |events: &[EventEntry]| -> String {
        let now = now_ms();
        events
            .iter()
            .map(|e| {
                if args.json {
                    serde_json::to_string(e).expect("events always serialize") + "\n"
                } else {
                    event_line(e, &widths, now)
                }
            })
            .collect()
    };
    let mut first = render(&resp.events);
    if !args.json {
        first.insert_str(0, &event_row(EVENT_HEADER, &widths));
    }
    if !emit(&first) {
        return Ok(());
    }
    let mut last_seq = resp.last_seq;
    let mut dropped = resp.dropped;
    let wait = FOLLOW_EVENTS_WAIT_MS.to_string();
    loop {
        let after = last_seq.to_string();
        let resp = client
            .get_waiting::<EventsResponse>(&query_path(
                "/v1/events",
                &[
                    ("after", Some(&after)),
                    ("wait_ms", Some(&wait)),
                    ("node", node),
                ],
            ))?
            .body;
        // A lower sequence than printed means the node's trail started over (agent restart):
        // take everything it sends from there.
        let restarted = resp.last_seq < last_seq;
        if restarted {
            last_seq = 0;
            dropped = 0;
        }
        note_dropped(&resp, dropped);
        dropped = dropped.max(resp.dropped);
        // Skip anything at or below what was printed, should a node resend it.
        let fresh: Vec<EventEntry> = resp
            .events
            .into_iter()
            .filter(|e| e.seq > last_seq)
            .collect();
        last_seq = last_seq.max(resp.last_seq);
        if !fresh.is_empty() && !emit(&render(&fresh)) {
            return Ok(());
        }
    }
}

/// Tells stderr about events lost from the node's ring, once per increase.
fn note_dropped(resp: &EventsResponse, already_noted: u64) {
    if resp.dropped > already_noted {
        note!(
            "note: {} event{} of node {} fell out of its ring before {} could be read",
            resp.dropped,
            if resp.dropped == 1 { "" } else { "s" },
            resp.node,
            if resp.dropped == 1 { "it" } else { "they" },
        );
    }
}

/// `path?k=v&...` with the present parameters, values percent-encoded.
fn query_path(path: &str, params: &[(&str, Option<&str>)]) -> String {
    let query: Vec<String> = params
        .iter()
        .filter_map(|(key, value)| value.map(|v| format!("{key}={}", urlencode(v))))
        .collect();
    if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", query.join("&"))
    }
}

/// Writes to stdout and flushes; false once stdout is gone (piped into `head`, say), so
/// followers stop quietly instead of panicking.
fn emit(text: &str) -> bool {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .is_ok()
}

fn to_json_pretty<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string_pretty(value).expect("API types always serialize")
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
        "epoch    {}\nchanges  {}\nsize     {} of {} bytes\nfile     {} bytes\nheads    {}\nentries  {} nodes, {} services, {} instances, {} leases\nsync     {} messages in ({} B), {} out ({} B), {} malformed\n",
        s.epoch,
        s.changes,
        s.value_bytes,
        s.max_value_bytes,
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
            "note     the state file was damaged at start: what loaded was kept, the rest was \
             moved aside (see the agent's log) and comes back from peers\n",
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
                p.health.clone(),
            ]
        })
        .collect();
    out.push_str(&format_table(
        &["PEER", "NODE", "CONNECTED", "SYNC", "HEALTH"],
        &rows,
    ));
    out
}

fn api(args: ApiArgs) -> Result<(), ClientError> {
    let client = args.client.connect();
    let (status, _, body) = client.request(
        &args.method.to_ascii_uppercase(),
        &args.path,
        args.body.as_deref(),
    )?;
    // Pretty-print JSON bodies; pass anything else through.
    match serde_json::from_str::<serde_json::Value>(&body) {
        Ok(v) => out!(
            "{}\n",
            serde_json::to_string_pretty(&v).expect("a parsed value serializes")
        ),
        Err(_) => out!("{body}\n"),
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
        "SYNC",
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
                r.sync.clone().unwrap_or_else(dash),
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

/// A human uptime: `3s`, `5m12s`, `2h3m`, `4d7h`.
pub fn human_uptime(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{}s", secs / 60, secs % 60),
        3600..86_400 => format!("{}h{}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

/// How long ago a wall-clock time was: `12s ago` (`0ms ago` for a time ahead of `now_ms`, as
/// another node's clock may be).
pub fn human_age(since_ms: i64, now_ms: i64) -> String {
    let age = now_ms.saturating_sub(since_ms).max(0) as u64;
    format!("{} ago", human_ago(age))
}

/// A wall-clock time in UTC (no time-zone database without a new dependency):
/// `HH:MM:SS.mmmZ` on the UTC day of `now_ms`, `YYYY-MM-DD HH:MM:SS.mmmZ` otherwise.
pub fn format_time(at_ms: i64, now_ms: i64) -> String {
    const DAY_MS: i64 = 86_400_000;
    let (day, ms) = (at_ms.div_euclid(DAY_MS), at_ms.rem_euclid(DAY_MS));
    let clock = format!(
        "{:02}:{:02}:{:02}.{:03}Z",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    );
    if day == now_ms.div_euclid(DAY_MS) {
        clock
    } else {
        let (y, m, d) = civil_from_days(day);
        format!("{y:04}-{m:02}-{d:02} {clock}")
    }
}

/// Year, month, day of a count of days since 1970-01-01 (proleptic Gregorian; Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Renders `mesh services`: the table, then for each `failed` service why, and its last lines.
pub fn render_services(rows: &[ServiceEntry]) -> String {
    let dash = || "-".to_string();
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.node.clone(),
                r.state.clone(),
                r.pid.map(|p| p.to_string()).unwrap_or_else(dash),
                if r.ports.is_empty() {
                    dash()
                } else {
                    r.ports
                        .iter()
                        .map(u16::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                },
                r.restarts.to_string(),
                r.uptime_s.map(human_uptime).unwrap_or_else(dash),
                r.health.clone(),
            ]
        })
        .collect();
    let mut out = format_table(
        &[
            "NAME", "NODE", "STATE", "PID", "PORTS", "RESTARTS", "UPTIME", "HEALTH",
        ],
        &table,
    );
    for r in rows.iter().filter(|r| r.state == "failed") {
        out.push('\n');
        out.push_str(&format!(
            "{} failed: {}",
            r.name,
            r.reason.as_deref().unwrap_or("no reason given")
        ));
        if let Some(exit) = &r.last_exit {
            out.push_str(&format!(" (last exit: {exit})"));
        }
        out.push('\n');
        for line in &r.log_tail {
            out.push_str(&format!("  {line}\n"));
        }
    }
    out
}

/// Renders `mesh ports`: port leases, their age against `now_ms`.
pub fn render_ports(rows: &[PortEntry], now_ms: i64) -> String {
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.node.clone(),
                r.port.to_string(),
                r.proto.clone(),
                r.service.clone(),
                r.state.clone(),
                human_age(r.since_ms, now_ms),
            ]
        })
        .collect();
    format_table(
        &["NODE", "PORT", "PROTO", "SERVICE", "STATE", "SINCE"],
        &table,
    )
}

/// Renders `mesh ports --listening`.
pub fn render_listening(resp: &ListeningResponse) -> String {
    let dash = || "-".to_string();
    let table: Vec<Vec<String>> = resp
        .sockets
        .iter()
        .map(|s| {
            vec![
                s.port.to_string(),
                s.proto.clone(),
                s.addr.clone(),
                s.pid.map(|p| p.to_string()).unwrap_or_else(dash),
                s.process.clone().unwrap_or_else(dash),
                s.service.clone().unwrap_or_else(dash),
            ]
        })
        .collect();
    format_table(
        &["PORT", "PROTO", "ADDR", "PID", "PROCESS", "SERVICE"],
        &table,
    )
}

const EVENT_HEADER: [&str; 5] = ["TIME", "NODE", "SERVICE", "KIND", "REASON"];

/// Renders `mesh events` as a table.
pub fn render_events(events: &[EventEntry], now_ms: i64) -> String {
    let table: Vec<Vec<String>> = events
        .iter()
        .map(|e| event_cells(e, now_ms).into())
        .collect();
    format_table(&EVENT_HEADER, &table)
}

/// Smallest widths of the TIME, NODE, SERVICE and KIND columns of `mesh events -f`: a
/// same-day time (`HH:MM:SS.mmmZ`), a short node name, a service name, the longest audit kind
/// (`health-check-failing`).
const EVENT_MIN_WIDTHS: [usize; 4] = [13, 8, 12, 20];

/// Widths of the TIME, NODE, SERVICE and KIND columns for `mesh events -f`: those of
/// `events`, and at least [`EVENT_MIN_WIDTHS`].
fn event_widths(events: &[EventEntry], now_ms: i64) -> [usize; 4] {
    let mut widths = EVENT_MIN_WIDTHS;
    for e in events {
        for (w, cell) in widths.iter_mut().zip(event_cells(e, now_ms)) {
            *w = (*w).max(cell.chars().count());
        }
    }
    widths
}

fn event_cells(e: &EventEntry, now_ms: i64) -> [String; 5] {
    [
        format_time(e.at_ms, now_ms),
        e.node.clone(),
        e.service.clone(),
        e.kind.clone(),
        e.reason.clone(),
    ]
}

/// One line of `mesh events -f`: cells padded to `widths` (a longer cell pushes the rest
/// right), the REASON last.
fn event_row(cells: [&str; 5], widths: &[usize; 4]) -> String {
    let mut line = String::new();
    for (cell, w) in cells.iter().zip(widths) {
        line.push_str(&format!("{cell:<w$}  "));
    }
    line.push_str(cells[4]);
    format!("{}\n", line.trim_end())
}

fn event_line(e: &EventEntry, widths: &[usize; 4], now_ms: i64) -> String {
    let cells = event_cells(e, now_ms);
    event_row(cells.each_ref().map(String::as_str), widths)
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
         services accepts {accept}\n\
         uptime   {uptime}\n\
         peers    {alive} alive, {suspect} suspect, {dead} dead, {left} left\n\
         refused  {bad} bad proof, {denied} denied, {timeout} timed out, {backoff} in backoff\n\
         dials    {dials} started, {wrong} reached another node, {targets} targets\n\
         dropped  {sync_dropped} sync messages (state queue full)\n",
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
        accept = s.accept_services.as_deref().unwrap_or("-"),
        uptime = human_ago(s.uptime_s.saturating_mul(1000)),
        alive = s.peers.alive,
        suspect = s.peers.suspect,
        dead = s.peers.dead,
        left = s.peers.left,
        bad = c.admission_bad_proof,
        denied = c.admission_denied,
        timeout = c.admission_timeout,
        backoff = c.refused_in_backoff,
        dials = c.dials,
        wrong = c.dial_wrong_peer_id,
        targets = c.dial_targets,
        sync_dropped = c.sync_messages_dropped,
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
        Cli::try_parse_from(["mesh", "services", "--json"]).unwrap();
        Cli::try_parse_from(["mesh", "ports", "--listening", "--node", "pi"]).unwrap();
        Cli::try_parse_from(["mesh", "logs", "web", "-f", "-n", "10"]).unwrap();
        Cli::try_parse_from(["mesh", "events", "-f", "--json", "--node", "pi", "-n", "5"]).unwrap();
        Cli::try_parse_from(["mesh", "service", "rm", "web"]).unwrap();
        Cli::try_parse_from(["mesh", "service", "restart", "web", "--api", "127.0.0.1:9"]).unwrap();
        Cli::try_parse_from(["mesh", "service", "add", "-f", "services.toml"]).unwrap();
    }

    fn parse_service_add(argv: &[&str]) -> Result<ServiceAddArgs, clap::Error> {
        let cli = Cli::try_parse_from(argv)?;
        match cli.command {
            Command::Service(ServiceArgs {
                command: ServiceCommand::Add(add),
                ..
            }) => Ok(add),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn service_add_keeps_the_trailing_command_literal() {
        let add = parse_service_add(&[
            "mesh",
            "service",
            "add",
            "web",
            "--after",
            "api",
            "--port",
            "auto",
            "--health",
            "http:/",
            "--restart",
            "always",
            "--",
            "python3",
            "-m",
            "http.server",
            "$PORT",
        ])
        .unwrap();
        assert_eq!(add.file, None);
        assert_eq!(add.name.as_deref(), Some("web"));
        assert_eq!(add.after, ["api"]);
        assert_eq!(add.port, ["auto"]);
        assert_eq!(add.health.as_deref(), Some("http:/"));
        assert_eq!(add.restart.as_deref(), Some("always"));
        assert_eq!(add.node, None);
        assert_eq!(add.command, ["python3", "-m", "http.server", "$PORT"]);

        // The parts make a valid spec whose argument still holds `$PORT` for the agent.
        let spec = ServiceSpec::from_cli_parts(CliServiceParts {
            name: add.name.unwrap(),
            after: add.after,
            ports: add.port,
            health: add.health,
            restart: add.restart,
            on_dependency_restart: add.on_dependency_restart,
            node: add.node,
            user: add.user,
            group: add.group,
            command: add.command,
        })
        .unwrap();
        assert_eq!(spec.command, "python3");
        assert_eq!(spec.args, ["-m", "http.server", "$PORT"]);
    }

    #[test]
    fn service_add_takes_a_file_or_a_name_not_both() {
        let both = parse_service_add(&[
            "mesh", "service", "add", "-f", "s.toml", "web", "--", "true",
        ]);
        assert_eq!(
            both.unwrap_err().kind(),
            clap::error::ErrorKind::ArgumentConflict
        );
        let flags_with_file =
            parse_service_add(&["mesh", "service", "add", "-f", "s.toml", "--port", "auto"]);
        assert_eq!(
            flags_with_file.unwrap_err().kind(),
            clap::error::ErrorKind::ArgumentConflict
        );
        let neither = parse_service_add(&["mesh", "service", "add"]);
        assert_eq!(
            neither.unwrap_err().kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
        let no_command = parse_service_add(&["mesh", "service", "add", "web"]);
        assert_eq!(
            no_command.unwrap_err().kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
        assert!(
            parse_service_add(&[
                "mesh",
                "service",
                "add",
                "web",
                "--restart",
                "sometimes",
                "--",
                "true"
            ])
            .is_err()
        );
    }

    #[test]
    fn uptimes_ages_and_times_render_short() {
        assert_eq!(human_uptime(0), "0s");
        assert_eq!(human_uptime(3), "3s");
        assert_eq!(human_uptime(5 * 60 + 12), "5m12s");
        assert_eq!(human_uptime(2 * 3600 + 3 * 60 + 59), "2h3m");
        assert_eq!(human_uptime(4 * 86_400 + 7 * 3600), "4d7h");
        assert_eq!(human_age(1_000, 13_500), "12s ago");
        assert_eq!(
            human_age(20_000, 10_000),
            "0ms ago",
            "a clock ahead is not negative"
        );
        // 2025-11-22T03:04:05.006Z
        let at = 1_763_780_645_006;
        assert_eq!(format_time(at, at + 1000), "03:04:05.006Z");
        assert_eq!(format_time(at, at + 86_400_000), "2025-11-22 03:04:05.006Z");
        assert_eq!(format_time(0, 86_400_000), "1970-01-01 00:00:00.000Z");
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn requests_use_the_route_table_paths() {
        assert_eq!(query_path("/v1/ports", &[("node", None)]), "/v1/ports");
        assert_eq!(
            query_path("/v1/ports/listening", &[("node", Some("pi 4"))]),
            "/v1/ports/listening?node=pi%204"
        );
        assert_eq!(
            query_path(
                "/v1/events",
                &[
                    ("after", Some("7")),
                    ("wait_ms", Some("25000")),
                    ("node", Some("pi"))
                ]
            ),
            "/v1/events?after=7&wait_ms=25000&node=pi"
        );
        assert_eq!(service_action_path("web", "stop"), "/v1/services/web/stop");
    }

    fn service_entry(name: &str, state: &str) -> ServiceEntry {
        ServiceEntry {
            name: name.into(),
            node: "pi".into(),
            node_id: None,
            desired: "running".into(),
            state: state.into(),
            pid: None,
            ports: Vec::new(),
            restarts: 0,
            uptime_s: None,
            health: "-".into(),
            last_exit: None,
            reason: None,
            log_tail: Vec::new(),
            after: Vec::new(),
            command: vec!["true".into()],
        }
    }

    #[test]
    fn services_table_explains_failed_services() {
        let web = ServiceEntry {
            pid: Some(4242),
            ports: vec![8000, 8001],
            restarts: 2,
            uptime_s: Some(312),
            health: "healthy".into(),
            ..service_entry("web", "healthy")
        };
        let db = ServiceEntry {
            restarts: 5,
            last_exit: Some("exit status 1".into()),
            reason: Some("exited with status 1".into()),
            log_tail: vec!["starting".into(), "cannot open data dir".into()],
            ..service_entry("db", "failed")
        };
        let out = render_services(&[db, web]);
        assert_eq!(
            out,
            "NAME  NODE  STATE    PID   PORTS      RESTARTS  UPTIME  HEALTH\n\
             db    pi    failed   -     -          5         -       -\n\
             web   pi    healthy  4242  8000,8001  2         5m12s   healthy\n\
             \n\
             db failed: exited with status 1 (last exit: exit status 1)\n  \
             starting\n  \
             cannot open data dir\n"
        );
        let healthy_only = render_services(&[service_entry("web", "healthy")]);
        assert!(!healthy_only.contains("failed"));
    }

    #[test]
    fn service_actions_say_what_changed() {
        let resp = |action: &str, changed| ServiceActionResponse {
            name: "web".into(),
            node: "pi".into(),
            action: action.into(),
            changed,
        };
        assert_eq!(
            render_service_action(&resp("stop", true)),
            "stopped web on node pi"
        );
        assert_eq!(
            render_service_action(&resp("stop", false)),
            "web on node pi was already stopped"
        );
        assert_eq!(
            render_service_action(&resp("removed", true)),
            "removed web on node pi"
        );
    }

    #[test]
    fn event_lines_align_under_their_header() {
        let e = EventEntry {
            seq: 1,
            at_ms: 1_763_780_645_006,
            node: "pi".into(),
            service: "web".into(),
            kind: "exited".into(),
            reason: "exited with exit status 1".into(),
        };
        let widths = event_widths(std::slice::from_ref(&e), e.at_ms);
        let header = event_row(EVENT_HEADER, &widths);
        let line = event_line(&e, &widths, e.at_ms);
        assert_eq!(header.find("SERVICE"), line.find("web"));
        assert_eq!(header.find("REASON"), line.find("exited with"));
        let table = render_events(std::slice::from_ref(&e), e.at_ms);
        assert!(table.starts_with("TIME "));
        assert!(table.contains("03:04:05.006Z  pi    web      exited"));
    }
}
