//! What each `mesh` command does: reads its arguments, calls the agent through the typed
//! client (one method per route; `mesh api` alone sends a raw request), and prints through
//! `render`. `mesh agent` hands a plain [`AgentOptions`] to the daemon instead.
//!
//! Every command returns `Result<(), ClientError>`; [`super::run`] turns that into the exit
//! code. Output goes through `out!` (ends quietly on a closed stdout) and `note!` (stderr).

use super::args::{
    AgentArgs, ApiArgs, DashboardArgs, DrainArgs, EventsArgs, KeyRotateArgs, LogFormatArg,
    LogsArgs, PeersArgs, PortsArgs, RemoveArgs, ResolveArgs, ServiceAddArgs, ServiceArgs,
    ServiceCommand, ServicesArgs, SimArgs, StatusArgs, TagArgs, TagCommand,
};
use super::render::{
    EVENT_HEADER, event_line, event_row, event_widths, render_events, render_listening,
    render_log_lines, render_peers, render_ports, render_service_action, render_services,
    render_state, render_status, to_json_pretty, truncated_logs_note,
};
use super::{FOLLOW_EVENTS_WAIT_MS, FOLLOW_LOG_INTERVAL, FOLLOW_LOG_LINES, emit};
use crate::api::client::{ApiClient, ClientError};
use crate::api::{
    EventEntry, EventsQuery, EventsResponse, LogsQuery, NodeQuery, PeerEntry, PeersQuery,
    ServiceAction, ServiceAddRequest, TagRequest,
};
use crate::daemon::{AgentOptions, LogFormat};
use crate::state::now_ms;
use crate::supervisor::{CliServiceParts, ServiceSpec, parse_service_file};

/// Wait of one `mesh peers --watch` long poll, in ms: the table redraws at once on a change
/// and at least every second otherwise (RTTs and last-seen times move).
const WATCH_PEERS_TIMEOUT_MS: u64 = 1000;

pub fn key_generate() -> Result<(), ClientError> {
    out!("{}\n", crate::admission::MeshKey::generate().to_hex());
    note!(
        "Save it to a file (chmod 600) on every machine and start each agent with \
         `mesh agent --mesh-key FILE`."
    );
    Ok(())
}

pub fn key_rotate(args: KeyRotateArgs) -> Result<(), ClientError> {
    let resp = args.client.connect().rotate_key()?;
    if args.json {
        out!("{}\n", to_json_pretty(&resp));
        return Ok(());
    }
    out!(
        "new mesh key (mesh {}, generation {}) stored and handed to {}; members offline now get \
         it when they next connect (they are let in with the old key once, by node id). A \
         member offline across two rotations needs a new ticket (`mesh invite`)\n",
        resp.mesh_id,
        resp.generation,
        if resp.told.is_empty() {
            "no member (none is connected)".to_string()
        } else {
            resp.told.join(", ")
        }
    );
    Ok(())
}

/// `mesh agent`: runs the daemon until it stops; the process exit code.
pub fn run_agent(args: AgentArgs) -> i32 {
    let options = match agent_options(args) {
        Ok(options) => options,
        Err(e) => {
            note!("mesh: {e:#}");
            return 1;
        }
    };
    match crate::daemon::run(options) {
        Ok(()) => 0,
        Err(e) => {
            note!("mesh: {e:#}");
            1
        }
    }
}

/// The agent's options: each flag, else the configuration file's key, else the default.
pub fn agent_options(args: AgentArgs) -> anyhow::Result<AgentOptions> {
    use crate::daemon::config;
    let is_root = nix::unistd::geteuid().is_root();
    let file = match config::default_path(args.config.as_deref(), is_root) {
        Some(path) => config::load(&path)?,
        None => config::ConfigFile::default(),
    };
    let or_file =
        |flags: Vec<String>, file: Vec<String>| if flags.is_empty() { file } else { flags };
    let log_format = match (args.log_format, file.log_format.as_deref()) {
        (Some(LogFormatArg::Json), _) | (None, Some("json")) => LogFormat::Json,
        _ => LogFormat::Human,
    };
    let profile = match (args.profile, &file.profile) {
        (Some(profile), _) => Some(profile),
        (None, Some(text)) => Some(text.parse().map_err(|e| anyhow::anyhow!("profile: {e}"))?),
        (None, None) => None,
    };
    let rendezvous_point = point_config(&args, &file)?;
    Ok(AgentOptions {
        data_dir: args.data_dir.or(file.data_dir),
        name: args.name.or(file.name),
        mesh_key_file: args.mesh_key.or(file.mesh_key),
        listen: or_file(args.listen, file.listen),
        peers: or_file(args.peer, file.peers),
        rendezvous: or_file(args.rendezvous, file.rendezvous),
        rendezvous_point,
        external_addrs: or_file(args.external_addr, file.external_addrs),
        relay_server: args.relay_server || file.relay_server == Some(true),
        metrics_listen: args.metrics_listen.or(file.metrics_listen),
        sample_interval: match args.sample_interval_ms.or(file.sample_interval_ms) {
            Some(ms) if !(100..=3_600_000).contains(&ms) => anyhow::bail!(
                "--sample-interval-ms {ms}: give 100 to 3600000 milliseconds (the default is 15000)"
            ),
            Some(ms) => std::time::Duration::from_millis(ms),
            None => crate::insight::sampler::DEFAULT_SAMPLE_INTERVAL,
        },
        api: args
            .api
            .or(file.api)
            .unwrap_or_else(|| crate::api::DEFAULT_API_ADDR.to_string()),
        log_format,
        mdns: !args.no_mdns && file.mdns != Some(false),
        profile,
        port_pools: or_file(args.port_pool, file.port_pools),
        leave_services_running: args.leave_services_running
            || file.leave_services_running == Some(true),
        accept_services: args
            .accept_services
            .or(file.accept_services)
            .as_deref()
            .unwrap_or("all")
            .parse()
            .unwrap_or_default(),
        join: args.join,
        join_file: args.join_file.or(file.join_file),
    })
}

/// `--rendezvous-server` and its limits (flags over the file), checked.
fn point_config(
    args: &AgentArgs,
    file: &crate::daemon::config::ConfigFile,
) -> anyhow::Result<Option<crate::transport::PointConfig>> {
    let serve = args.rendezvous_server || file.rendezvous_server == Some(true);
    let open = args.rendezvous_open || file.rendezvous_open == Some(true);
    if !serve {
        if open {
            anyhow::bail!("rendezvous_open needs rendezvous_server = true");
        }
        return Ok(None);
    }
    let mut point = crate::transport::PointConfig {
        open,
        ..Default::default()
    };
    if let Some(n) = args
        .rendezvous_max_registrations
        .or(file.rendezvous_max_registrations)
    {
        point.max_registrations = n;
    }
    if let Some(n) = args
        .rendezvous_max_per_peer
        .or(file.rendezvous_max_per_peer)
    {
        point.max_registrations_per_peer = n;
    }
    let ttl =
        |flag: &Option<String>, key: &Option<String>, name: &str| -> anyhow::Result<Option<u64>> {
            flag.as_ref()
                .or(key.as_ref())
                .map(|t| super::invite::parse_ttl(t).map_err(|e| anyhow::anyhow!("{name}: {e}")))
                .transpose()
        };
    if let Some(s) = ttl(
        &args.rendezvous_min_ttl,
        &file.rendezvous_min_ttl,
        "--rendezvous-min-ttl",
    )? {
        point.min_ttl_s = s;
    }
    if let Some(s) = ttl(
        &args.rendezvous_max_ttl,
        &file.rendezvous_max_ttl,
        "--rendezvous-max-ttl",
    )? {
        point.max_ttl_s = s;
    }
    point.check().map_err(anyhow::Error::msg)?;
    Ok(Some(point))
}

pub fn peers(args: PeersArgs) -> Result<(), ClientError> {
    let client = args.client.connect();
    if !args.watch {
        let rows = client.peers()?.body;
        return print_peers(&shown(rows, args.all), args.json);
    }
    let mut version: Option<u64> = None;
    loop {
        let resp = client.peers_poll(&PeersQuery {
            wait: version,
            timeout_ms: version.map(|_| WATCH_PEERS_TIMEOUT_MS),
        })?;
        version = resp.version;
        // Clear the screen and home the cursor, then redraw.
        out!("\x1b[H\x1b[2J");
        print_peers(&shown(resp.body, args.all), args.json)?;
    }
}

/// The rows `mesh peers` shows: removed nodes only with `--all`.
fn shown(rows: Vec<PeerEntry>, all: bool) -> Vec<PeerEntry> {
    rows.into_iter()
        .filter(|row| all || row.state != "removed")
        .collect()
}

pub fn remove(args: RemoveArgs) -> Result<(), ClientError> {
    let resp = args.client.connect().remove_node(&args.node)?;
    if args.json {
        out!("{}\n", to_json_pretty(&resp));
    } else if resp.changed {
        out!(
            "{} ({}) removed: every member refuses it from now on, and its services move to \
             other nodes. It still holds the mesh key: run `mesh key rotate` to keep a new \
             identity made with it out too\n",
            resp.node,
            resp.id
        );
    } else {
        out!("{} was removed already\n", resp.node);
    }
    Ok(())
}

fn print_peers(rows: &[PeerEntry], json: bool) -> Result<(), ClientError> {
    if json {
        out!("{}\n", to_json_pretty(rows));
    } else {
        out!("{}", render_peers(rows));
    }
    Ok(())
}

pub fn status(args: StatusArgs) -> Result<(), ClientError> {
    let s = args.client.connect().status()?;
    if args.json {
        out!("{}\n", to_json_pretty(&s));
    } else {
        out!("{}", render_status(&s));
    }
    Ok(())
}

pub fn state(args: StatusArgs) -> Result<(), ClientError> {
    let s = args.client.connect().state()?;
    if args.json {
        out!("{}\n", to_json_pretty(&s));
    } else {
        out!("{}", render_state(&s));
    }
    Ok(())
}

pub fn tag(args: TagArgs) -> Result<(), ClientError> {
    let client = args.client.connect();
    let resp = match &args.command {
        TagCommand::Add { tag } => {
            let Some((key, value)) = tag.split_once('=') else {
                return Err(ClientError::Usage(format!(
                    "expected KEY=VALUE, e.g. `mesh tag add role=nas`, got {tag:?}"
                )));
            };
            client.set_tag(&TagRequest {
                key: key.trim().to_string(),
                value: value.to_string(),
            })?
        }
        TagCommand::Rm { key } => client.remove_tag(key)?,
    };
    if !resp.changed {
        note!("(no change)");
    }
    Ok(())
}

pub fn service(args: ServiceArgs) -> Result<(), ClientError> {
    let client = args.client.connect();
    let resp = match args.command {
        ServiceCommand::Add(add) => return service_add(&client, add),
        ServiceCommand::Rm { name } => client.remove_service(&name)?,
        ServiceCommand::Start { name } => client.service_action(&name, ServiceAction::Start)?,
        ServiceCommand::Stop { name } => client.service_action(&name, ServiceAction::Stop)?,
        ServiceCommand::Restart { name } => client.service_action(&name, ServiceAction::Restart)?,
        ServiceCommand::Rebalance { name } => {
            client.service_action(&name, ServiceAction::Rebalance)?
        }
    };
    out!("{}\n", render_service_action(&resp));
    Ok(())
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
                replicas: args.replicas,
                exclusive: args.exclusive,
                pinned: args.pinned,
                not_sticky: args.not_sticky,
                nodes: args.nodes,
                require: args.require,
                user: args.user,
                group: args.group,
                advertise: args.advertise,
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
    let resp = client.add_services(&ServiceAddRequest { services })?;
    for added in &resp.services {
        out!("{} {} on node {}\n", added.outcome, added.name, added.node);
    }
    Ok(())
}

pub fn services(args: ServicesArgs) -> Result<(), ClientError> {
    let rows = args.client.connect().services()?;
    if args.json {
        out!("{}\n", to_json_pretty(&rows));
    } else {
        out!("{}", render_services(&rows));
    }
    Ok(())
}

pub fn resolve(args: ResolveArgs) -> Result<(), ClientError> {
    let rows = args.client.connect().endpoints(&args.name)?;
    if args.json {
        out!("{}\n", to_json_pretty(&rows));
        return Ok(());
    }
    if rows.is_empty() {
        return Err(ClientError::Usage(format!(
            "no ready copy of {} (see `mesh services`)",
            args.name
        )));
    }
    for row in &rows {
        out!("{}\n", row.endpoint);
    }
    Ok(())
}

pub fn drain(args: DrainArgs, drained: bool) -> Result<(), ClientError> {
    let client = args.client.connect();
    let node = match args.node {
        Some(node) => node,
        None => client.status()?.name,
    };
    let resp = client.drain(&node, drained)?;
    if args.json {
        out!("{}\n", to_json_pretty(&resp));
        return Ok(());
    }
    let what = if drained { "drained" } else { "undrained" };
    if resp.changed {
        out!("{} {what}", resp.node);
        if drained {
            out!(": its services move to other nodes (see `mesh services`, `mesh events`)");
        }
        out!("\n");
    } else {
        out!("{} was already {what}\n", resp.node);
    }
    Ok(())
}

pub fn ports(args: PortsArgs) -> Result<(), ClientError> {
    let client = args.client.connect();
    let query = NodeQuery {
        node: args.node.clone(),
    };
    if args.listening {
        let resp = client.listening(&query)?;
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
        let rows = client.ports(&query)?;
        if args.json {
            out!("{}\n", to_json_pretty(&rows));
        } else {
            out!("{}", render_ports(&rows, now_ms()));
        }
    }
    Ok(())
}

/// A count for a query field of the API (`u32`), saturating.
fn count(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

pub fn logs(args: LogsArgs) -> Result<(), ClientError> {
    let client = args.client.connect();
    let mut resp = client.logs(
        &args.name,
        &LogsQuery {
            n: Some(count(args.lines)),
            offset: None,
        },
    )?;
    loop {
        let text = if args.json {
            if args.follow {
                format!("{}\n", serde_json::to_string(&resp).expect("serializable"))
            } else {
                format!("{}\n", to_json_pretty(&resp))
            }
        } else {
            if resp.truncated {
                note!("{}", truncated_logs_note(&resp));
            }
            render_log_lines(&resp.lines)
        };
        if !emit(&text) || !args.follow {
            return Ok(());
        }
        std::thread::sleep(FOLLOW_LOG_INTERVAL);
        resp = client.logs(
            &args.name,
            &LogsQuery {
                n: Some(count(FOLLOW_LOG_LINES)),
                offset: Some(resp.offset),
            },
        )?;
    }
}

pub fn events(args: EventsArgs) -> Result<(), ClientError> {
    let client = args.client.connect();
    let resp = client.events(&EventsQuery {
        node: args.node.clone(),
        limit: Some(count(args.limit)),
        service: args.service.clone(),
        ..EventsQuery::default()
    })?;
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
    if args.node.is_none() {
        // The merged trail of every reachable node: followed with per-node cursors.
        let mut cursors = resp.cursors;
        loop {
            let resp = client.events(&EventsQuery {
                cursors: Some(crate::api::contract::encode_cursors(&cursors)),
                wait_ms: Some(FOLLOW_EVENTS_WAIT_MS),
                service: args.service.clone(),
                ..EventsQuery::default()
            })?;
            cursors.extend(resp.cursors);
            if !resp.events.is_empty() && !emit(&render(&resp.events)) {
                return Ok(());
            }
        }
    }
    loop {
        let resp = client.events(&EventsQuery {
            node: args.node.clone(),
            after: Some(last_seq),
            limit: None,
            wait_ms: Some(FOLLOW_EVENTS_WAIT_MS),
            cursors: None,
            service: args.service.clone(),
        })?;
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

/// `mesh api METHOD PATH [BODY]`: the raw escape hatch, any path, the body printed as is
/// (pretty when JSON).
pub fn api(args: ApiArgs) -> Result<(), ClientError> {
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
            code: crate::api::client::decode_error(status, &body).code,
            message: "see the body above".into(),
        })
    }
}

/// `mesh dashboard`: the dashboard's address, checked against the running agent; opened with
/// `xdg-open` when a desktop session is there to show it.
pub fn dashboard(args: DashboardArgs) -> Result<(), ClientError> {
    let client = args.client.connect();
    let status = client.status()?;
    let url = format!("{}/", client.base().trim_end_matches('/'));
    out!("{url}");
    let loopback =
        url.contains("://127.") || url.contains("://localhost") || url.contains("://[::1]");
    if loopback {
        note!(
            "the dashboard of {} listens on this machine only; from another device: \
             ssh -L 7401:{} {}  then open http://127.0.0.1:7401/",
            status.name,
            url.trim_start_matches("http://").trim_end_matches('/'),
            status.name
        );
    }
    note!(
        "reading needs nothing; the buttons ask for the API token (`sudo cat DATA_DIR/api.token`)"
    );
    let desktop =
        std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
    if desktop && !args.no_open {
        match std::process::Command::new("xdg-open")
            .arg(&url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        {
            Ok(_) => note!("opening it in your browser"),
            Err(e) => note!("cannot open a browser (xdg-open: {e}); open the address above"),
        }
    }
    Ok(())
}

/// Largest scenario or report file `mesh sim` reads.
const MAX_SIM_FILE: u64 = 16 * 1024 * 1024;

fn read_bounded(path: &std::path::Path) -> Result<String, ClientError> {
    use std::io::Read;
    let fail = |message: String| ClientError::Usage(format!("mesh sim: {message}"));
    let file = std::fs::File::open(path)
        .map_err(|e| fail(format!("cannot open {}: {e}", path.display())))?;
    let mut text = String::new();
    file.take(MAX_SIM_FILE)
        .read_to_string(&mut text)
        .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
    Ok(text)
}

/// `mesh sim SCENARIO [--seed N] [--out DIR]`, or `mesh sim --compare A B`.
pub fn sim(args: SimArgs) -> Result<(), ClientError> {
    use crate::sim::{Report, Scenario, Simulation};
    let fail = |message: String| ClientError::Usage(format!("mesh sim: {message}"));
    if let Some(pair) = &args.compare {
        let load = |p: &std::path::PathBuf| -> Result<Report, ClientError> {
            serde_json::from_str(&read_bounded(p)?)
                .map_err(|e| fail(format!("{} is not a mesh sim report: {e}", p.display())))
        };
        let (a, b) = (load(&pair[0])?, load(&pair[1])?);
        out!("{}", crate::sim::report::compare(&a, &b));
        return Ok(());
    }
    let path = args.scenario.as_ref().expect("clap requires a scenario");
    let scenario = Scenario::parse(&read_bounded(path)?)
        .map_err(|e| fail(format!("{}: {e}", path.display())))?;
    note!(
        "simulating {} ({} nodes, {:.0} s)...",
        scenario.name,
        scenario.nodes,
        scenario.duration.as_secs_f64()
    );
    let total = scenario.duration.as_secs_f64();
    let (report, perf) = Simulation::new(scenario, args.seed).run_with_progress(|at, events| {
        note!(
            "  {:.0} of {total:.0} simulated s ({events} events)",
            at.as_secs_f64()
        );
    });
    note!(
        "done in {:.1} s of wall time ({} events)",
        perf.wall_s,
        perf.events
    );
    if let Some(dir) = &args.out {
        let write = |name: &str, text: String| -> Result<(), ClientError> {
            std::fs::create_dir_all(dir)
                .and_then(|()| std::fs::write(dir.join(name), text))
                .map_err(|e| fail(format!("cannot write {}: {e}", dir.join(name).display())))
        };
        write("report.json", report.to_json())?;
        write(
            "perf.json",
            serde_json::to_string_pretty(&perf).expect("perf serializes") + "\n",
        )?;
        write("summary.md", report.summary(Some(&perf)))?;
        write("detection-cdf.svg", report.detection_svg())?;
        let mut files = vec![
            "report.json",
            "perf.json",
            "summary.md",
            "detection-cdf.svg",
        ];
        for (name, svg) in report
            .traffic_svgs()
            .into_iter()
            .chain(report.service_svgs())
        {
            write(name, svg)?;
            files.push(name);
        }
        note!("wrote {}/{{{}}}", dir.display(), files.join(","));
    }
    if args.json {
        out!("{}", report.to_json().trim_end());
    } else {
        out!("{}", report.summary(Some(&perf)).trim_end());
    }
    if report.violations_total > 0 {
        return Err(fail(format!(
            "{} invariant violations (see above; replay with --seed {})",
            report.violations_total, report.seed
        )));
    }
    Ok(())
}

#[cfg(test)]
mod config_tests {
    use clap::Parser;

    use super::*;
    use crate::cli::args::{Cli, Command};

    fn agent_args(argv: &[&str]) -> AgentArgs {
        let mut full = vec!["mesh", "agent"];
        full.extend_from_slice(argv);
        match Cli::try_parse_from(full).expect("parses").command {
            Command::Agent(args) => args,
            _ => panic!("an agent command"),
        }
    }

    #[test]
    fn the_config_file_sets_every_flag_and_flags_override_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            r#"
name = "pi-kitchen"
data_dir = "/srv/mesh"
mesh_key = "/etc/mesh/mesh.key"
listen = ["0.0.0.0:7500"]
peers = ["10.0.0.2:7400", "10.0.0.3:7400"]
api = "127.0.0.1:7501"
log_format = "json"
mdns = false
profile = "edge"
port_pools = ["default=21000-21999"]
leave_services_running = true
accept_services = "own"
join_file = "/boot/firmware/mesh-ticket.txt"
"#,
        )
        .expect("write");
        let config = path.to_str().expect("utf-8");
        let from_file = agent_options(agent_args(&["--config", config])).expect("loads");
        // The same settings as flags give the same options: the file holds every flag.
        let from_flags = agent_options(agent_args(&[
            "--name",
            "pi-kitchen",
            "--data-dir",
            "/srv/mesh",
            "--mesh-key",
            "/etc/mesh/mesh.key",
            "--listen",
            "0.0.0.0:7500",
            "--peer",
            "10.0.0.2:7400",
            "--peer",
            "10.0.0.3:7400",
            "--api",
            "127.0.0.1:7501",
            "--log-format",
            "json",
            "--no-mdns",
            "--profile",
            "edge",
            "--port-pool",
            "default=21000-21999",
            "--leave-services-running",
            "--accept-services",
            "own",
            "--join-file",
            "/boot/firmware/mesh-ticket.txt",
            // An empty config, so that /etc/mesh/config.toml (if any) is not read.
            "--config",
            "/dev/null",
        ]))
        .expect("flags");
        assert_eq!(from_file, from_flags);
        // Flags win over the file.
        let both = agent_options(agent_args(&[
            "--config",
            config,
            "--name",
            "other",
            "--api",
            "127.0.0.1:9",
            "--peer",
            "10.9.9.9:1",
        ]))
        .expect("both");
        assert_eq!(both.name.as_deref(), Some("other"));
        assert_eq!(both.api, "127.0.0.1:9");
        assert_eq!(both.peers, ["10.9.9.9:1"]);
        assert_eq!(both.data_dir, from_file.data_dir);
        // A typo is refused with its name.
        std::fs::write(&path, "mdsn = false\n").expect("write");
        let err = agent_options(agent_args(&["--config", config])).expect_err("typo");
        let err = format!("{err:#}");
        assert!(err.contains("unknown field `mdsn`"), "{err}");
    }
}
