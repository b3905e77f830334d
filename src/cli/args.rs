//! The command line's grammar: every clap type of `mesh`, and how the client arguments become
//! an API client. Nothing here talks to the agent or prints (see `commands`, `render`).

use std::path::PathBuf;

use clap::builder::PossibleValuesParser;
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

use crate::api::DEFAULT_API_ADDR;
use crate::api::auth::{TOKEN_ENV, TOKEN_FILE_ENV};
use crate::api::client::ApiClient;

/// Default number of log lines `mesh logs` shows: the API's default.
pub const DEFAULT_LOG_LINES: u64 = crate::api::contract::DEFAULT_LOG_LINES as u64;
/// Default number of events `mesh events` shows.
pub const DEFAULT_EVENT_LIMIT: u64 = 100;

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
    /// Print where a service's ready copies are reached, one `host:port` per line.
    Resolve(ResolveArgs),
    /// Move every service off a node and place none on it, until `mesh undrain`.
    Drain(DrainArgs),
    /// Let a drained node take services again.
    Undrain(DrainArgs),
    /// Throw a node out of the mesh for good: every member refuses it, its services move.
    Remove(RemoveArgs),
    /// Print a service's log, from the node that runs it.
    Logs(LogsArgs),
    /// Print a node's audit trail: starts, exits, restarts, port changes.
    Events(EventsArgs),
    /// Make a ticket that joins one device to this mesh (`mesh join TICKET` there), or list
    /// and revoke tickets.
    Invite(InviteArgs),
    /// Join this agent to a mesh with a ticket from `mesh invite`; the agent stores the key
    /// and restarts with it.
    Join(JoinArgs),
    /// Mesh key tools.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Raw API request, e.g. `mesh api GET /v1/status`.
    Api(ApiArgs),
    /// Print the web dashboard's address (and open it in a browser when there is one).
    Dashboard(DashboardArgs),
    /// The overview live in this terminal: nodes, services, events; keys to switch views and
    /// to start, stop or restart a service.
    Top(TopArgs),
    /// Simulate a whole mesh (the agent's own cores, a simulated clock and network) and report
    /// what it did: `mesh sim simulations/scenarios/crash-partition-heal.toml --out DIR`.
    Sim(SimArgs),
}

#[derive(Args, Debug)]
pub struct SimArgs {
    /// The scenario (TOML; the format is in simulations/README.md).
    #[arg(required_unless_present = "compare")]
    pub scenario: Option<PathBuf>,
    /// Seed of every random choice [default: the scenario's `seed`, else 1]; the same seed
    /// gives the same report.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Write report.json, perf.json, summary.md and the plots (SVG) here.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Print the report as JSON instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// Compare two reports (report.json of two runs) instead of running.
    #[arg(long, num_args = 2, value_names = ["A", "B"], conflicts_with_all = ["scenario", "seed", "out"])]
    pub compare: Option<Vec<PathBuf>>,
}

#[derive(Args, Debug)]
pub struct DashboardArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only print the address, even with a desktop session.
    #[arg(long)]
    pub no_open: bool,
}

#[derive(Args, Debug)]
pub struct TopArgs {
    #[command(flatten)]
    pub client: ClientArgs,
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
    /// Configuration file (TOML, one key per flag; flags override it) [default:
    /// /etc/mesh/config.toml when it exists and the agent runs as root].
    #[arg(long, env = "MESH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
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
    /// Listen address (repeatable): IP:PORT or IP (QUIC on that UDP port and TCP on that TCP
    /// port), or a multiaddr [default: 0.0.0.0:7400 and [::]:7400].
    #[arg(long)]
    pub listen: Vec<String>,
    /// Peer to dial directly, beyond what mDNS finds (repeatable): IP:PORT (QUIC and TCP) or
    /// a multiaddr.
    #[arg(long)]
    pub peer: Vec<String>,
    /// Rendezvous point to register at and find members through (repeatable): a multiaddr
    /// ending in the point's id, e.g. /ip4/203.0.113.7/tcp/7400/p2p/12D3KooW... (`mesh
    /// status` on an agent started with --rendezvous-server prints its own).
    #[arg(long, value_name = "MULTIADDR")]
    pub rendezvous: Vec<String>,
    /// Serve a rendezvous point (libp2p /rendezvous/1.0.0) on the mesh port, for admitted
    /// members of this mesh only (see --rendezvous-open).
    #[arg(long)]
    pub rendezvous_server: bool,
    /// With --rendezvous-server: serve anyone (a public point), not only members.
    #[arg(long, requires = "rendezvous_server")]
    pub rendezvous_open: bool,
    /// The point's limit on registrations held in all [default: 1000].
    #[arg(long, value_name = "N")]
    pub rendezvous_max_registrations: Option<usize>,
    /// The point's limit on registrations of one peer [default: 8].
    #[arg(long, value_name = "N")]
    pub rendezvous_max_per_peer: Option<usize>,
    /// Shortest registration TTL the point grants, e.g. 2h [default: 2h, the spec's].
    #[arg(long, value_name = "DURATION")]
    pub rendezvous_min_ttl: Option<String>,
    /// Longest registration TTL the point grants [default: 72h, the spec's].
    #[arg(long, value_name = "DURATION")]
    pub rendezvous_max_ttl: Option<String>,
    /// Also serve the Prometheus metrics (`/metrics`, read-only) alone at IP:PORT, for a
    /// scraper on the LAN (the API's `/metrics` is on loopback only).
    #[arg(long, value_name = "IP:PORT")]
    pub metrics_listen: Option<String>,
    /// How often, in milliseconds, the agent samples its peers' RTT and its services' CPU,
    /// memory and health-check latency, for the dashboard's charts and the anomaly baselines
    /// (100 to 3600000) [default: 15000].
    #[arg(long, value_name = "MS")]
    pub sample_interval_ms: Option<u64>,
    /// Serve a circuit relay (libp2p relay v2) for members of this mesh behind NAT; for a
    /// member that others can reach directly (a public address, or a port forward).
    #[arg(long)]
    pub relay_server: bool,
    /// An address peers reach this node at that it cannot see itself (a port forward, a DNS
    /// name), recorded for members and registered at rendezvous points (repeatable): IP:PORT
    /// or a multiaddr.
    #[arg(long, value_name = "ADDR")]
    pub external_addr: Vec<String>,
    /// Address of the local control API (keep it on loopback) [default: 127.0.0.1:7401].
    #[arg(long)]
    pub api: Option<String>,
    /// Log format; RUST_LOG sets the level (default: info) [default: human].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormatArg>,
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
    /// node's API only), none [default: all].
    #[arg(long, value_name = "WHOSE",
          value_parser = PossibleValuesParser::new(["all", "own", "none"]))]
    pub accept_services: Option<String>,
    /// Join a mesh with this ticket (from `mesh invite`) before starting, unless the agent
    /// already holds that mesh's key.
    #[arg(long, value_name = "TICKET", conflicts_with = "mesh_key")]
    pub join: Option<String>,
    /// Like --join, with the ticket read from FILE; the file is deleted once joined. An
    /// absent file is not an error (the agent starts as it is): for first boot of a device
    /// whose boot partition a person can write (/boot/firmware/mesh-ticket.txt).
    #[arg(long, value_name = "FILE", conflicts_with = "join")]
    pub join_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct InviteArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// How long the ticket works: e.g. 90s, 30m, 1h, 2d (at most 7d).
    #[arg(long, default_value = "1h", value_name = "DURATION")]
    pub ttl: String,
    /// How many devices may join with it.
    #[arg(long, default_value_t = 1)]
    pub uses: u32,
    /// A label for `mesh invite --list`.
    #[arg(long)]
    pub name: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Also draw the ticket as a QR code (on standard error, for the terminal; light modules
    /// drawn as blocks, for a dark terminal background).
    #[arg(long)]
    pub qr: bool,
    /// List this node's invites (never their secrets) instead of making one.
    #[arg(long, conflicts_with_all = ["revoke", "name"])]
    pub list: bool,
    /// Revoke the invite with this id (from --list) instead of making one.
    #[arg(long, value_name = "ID", conflicts_with = "name")]
    pub revoke: Option<String>,
}

#[derive(Args, Debug)]
pub struct JoinArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The ticket printed by `mesh invite` (`-` reads it from standard input).
    pub ticket: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
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
    /// Also list nodes removed from the mesh (`mesh remove`).
    #[arg(long)]
    pub all: bool,
}

#[derive(Args, Debug)]
pub struct RemoveArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Node name or id (`mesh peers` shows both).
    pub node: String,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
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
    /// Move a service's copies to where the ranking puts them now (a sticky copy otherwise
    /// stays where it runs): `mesh service rebalance web`.
    Rebalance { name: String },
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
        conflicts_with_all = ["after", "port", "health", "restart", "node", "advertise", "command", "replicas", "exclusive", "pinned", "not_sticky", "nodes", "require"]
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
    /// Node to run it on; it fails over elsewhere unless `--pinned` [default: the node of the
    /// agent asked].
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
    /// Copies to run mesh-wide, each on its own node [default: 1].
    #[arg(long, value_name = "N")]
    pub replicas: Option<u32>,
    /// Never run two copies at once, even across a partition (needs a majority of members).
    #[arg(long)]
    pub exclusive: bool,
    /// Run only on its node (`--node`, else this one); never fail over.
    #[arg(long)]
    pub pinned: bool,
    /// Let copies follow the ranking (move back when a better node returns).
    #[arg(long)]
    pub not_sticky: bool,
    /// The nodes it may run on (repeatable; names or ids) [default: any node].
    #[arg(long = "on", value_name = "NODE")]
    pub nodes: Vec<String>,
    /// A requirement on the node (repeatable): `tag.KEY=VALUE`, `arch=`, `os=`,
    /// `device_class=`, `profile=`, `min_score=N`, `min_memory_mb=N`.
    #[arg(long, value_name = "KEY=VALUE")]
    pub require: Vec<String>,
    /// User to run it as, on the node that runs it [default: the agent's user, root when
    /// packaged].
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Group to run it as [default: the user's primary group].
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// Advertise it on the LAN as this DNS-SD service type (`_http._tcp`), from the node
    /// that runs it: instance name = the service name, port = its first port.
    #[arg(long, value_name = "TYPE")]
    pub advertise: Option<String>,
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
pub struct ResolveArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Service name.
    pub name: String,
    /// Print the copies as JSON (node, node_id, host, port, endpoint, state).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DrainArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Node name or id [default: the node of the agent asked].
    pub node: Option<String>,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
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
    /// Node whose trail to read (by name or id) [default: every reachable node's, merged in
    /// time order].
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
    /// Only the events of this service (among the last N read).
    #[arg(long, value_name = "NAME")]
    pub service: Option<String>,
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
    /// Give the whole mesh a new key: members get it now or when they next connect; a removed
    /// device that kept the old key stays out, even with a new identity.
    Rotate(KeyRotateArgs),
}

#[derive(Args, Debug)]
pub struct KeyRotateArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::{CliServiceParts, ServiceSpec};

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
            advertise: add.advertise,
            command: add.command,
            ..Default::default()
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
}
