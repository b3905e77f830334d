//! How `mesh` shows the agent's answers: tables in the manner of `tailscale status`, short
//! durations and times, one-line summaries of changes. Pure functions of the contract's types
//! (and `now_ms`), so they are tested without an agent. Does not fetch nor print.

use crate::api::{
    EventEntry, ListeningResponse, LogsResponse, PeerEntry, PeerSyncStatus, PortEntry,
    ServiceActionResponse, ServiceEntry, StateResponse, StatusResponse,
};

/// Pretty JSON of an API answer (`--json`).
pub fn to_json_pretty<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string_pretty(value).expect("API types always serialize")
}

pub fn render_service_action(resp: &ServiceActionResponse) -> String {
    let (done, already) = match resp.action.as_str() {
        "removed" => ("removed", "removed"),
        "start" => ("started", "started"),
        "stop" => ("stopped", "stopped"),
        "restart" => ("restarted", "restarted"),
        other => (other, other),
    };
    if resp.action == "rebalance" {
        return format!(
            "rebalancing {}: copies move to their best-ranked nodes (see `mesh services`)",
            resp.name
        );
    }
    if resp.changed {
        format!("{done} {} on node {}", resp.name, resp.node)
    } else {
        format!("{} on node {} was already {already}", resp.name, resp.node)
    }
}

pub fn truncated_logs_note(resp: &LogsResponse) -> String {
    format!(
        "mesh: showing the newest {} lines of {} only: an answer holds at most {} KiB of log \
         text (the whole log is in the data dir of node {})",
        resp.lines.len(),
        resp.service,
        crate::wire::query::MAX_LOG_ANSWER_BYTES / 1024,
        resp.node
    )
}

pub fn render_log_lines(lines: &[String]) -> String {
    let mut out = String::new();
    for line in lines {
        out.push_str(line);
        out.push('\n');
    }
    out
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
                    PeerSyncStatus::InSync => "in sync",
                    PeerSyncStatus::Behind => "behind",
                    PeerSyncStatus::NeverSynced => "never synced",
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

/// `HOST:PORT` of a multiaddr like `/ip4/10.0.0.2/udp/7400/quic-v1`; the multiaddr otherwise.
pub fn short_addr(addr: &str) -> String {
    let parts: Vec<&str> = addr.split('/').collect();
    match parts.as_slice() {
        ["", "ip4", ip, "udp", port, ..] => format!("{ip}:{port}"),
        ["", "ip6", ip, "udp", port, ..] => format!("[{ip}]:{port}"),
        ["", "ip4", ip, "tcp", port, ..] => format!("{ip}:{port}/tcp"),
        ["", "ip6", ip, "tcp", port, ..] => format!("[{ip}]:{port}/tcp"),
        _ => addr.to_string(),
    }
}

/// The address shown for a row: the first non-loopback one, else the first; QUIC before TCP.
fn display_addr(addrs: &[String]) -> String {
    let routable = |a: &&String| !a.contains("/127.") && !a.contains("/::1/");
    let quic = |a: &&String| a.contains("/quic");
    addrs
        .iter()
        .find(|a| routable(a) && quic(a))
        .or_else(|| addrs.iter().find(routable))
        .or_else(|| addrs.iter().find(quic))
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
        "LINK",
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
                if r.is_self || r.link.is_empty() {
                    dash()
                } else {
                    r.link.clone()
                },
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
                if r.copies.is_empty() {
                    dash()
                } else if r.placement == "moving" {
                    format!("{} moving", r.copies)
                } else {
                    r.copies.clone()
                },
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
                if r.anomaly.is_some() {
                    "anomaly".to_string()
                } else {
                    dash()
                },
            ]
        })
        .collect();
    let mut out = format_table(
        &[
            "NAME", "COPIES", "NODE", "STATE", "PID", "PORTS", "RESTARTS", "UPTIME", "HEALTH",
            "FLAG",
        ],
        &table,
    );
    for r in rows {
        if let Some(why) = &r.anomaly {
            out.push_str(&format!(
                "\n{} on {}: anomaly: {why} (figures: mesh events --service {})\n",
                r.name, r.node, r.name
            ));
        }
    }
    let mut told = std::collections::BTreeSet::new();
    for r in rows.iter().filter(|r| r.state == "unplaced") {
        if told.insert(&r.name) {
            out.push_str(&format!(
                "\n{} unplaced: {}\n",
                r.name,
                r.reason.as_deref().unwrap_or("no eligible node")
            ));
        }
    }
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

pub const EVENT_HEADER: [&str; 5] = ["TIME", "NODE", "SERVICE", "KIND", "REASON"];

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
pub const EVENT_MIN_WIDTHS: [usize; 4] = [13, 8, 12, 20];

/// Widths of the TIME, NODE, SERVICE and KIND columns for `mesh events -f`: those of
/// `events`, and at least [`EVENT_MIN_WIDTHS`].
pub fn event_widths(events: &[EventEntry], now_ms: i64) -> [usize; 4] {
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
pub fn event_row(cells: [&str; 5], widths: &[usize; 4]) -> String {
    let mut line = String::new();
    for (cell, w) in cells.iter().zip(widths) {
        line.push_str(&format!("{cell:<w$}  "));
    }
    line.push_str(cells[4]);
    format!("{}\n", line.trim_end())
}

pub fn event_line(e: &EventEntry, widths: &[usize; 4], now_ms: i64) -> String {
    let cells = event_cells(e, now_ms);
    event_row(cells.each_ref().map(String::as_str), widths)
}

pub fn format_table(header: &[&str], rows: &[Vec<String>]) -> String {
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
         dropped  {sync_dropped} sync messages (state queue full)\n{rendezvous}",
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
        rendezvous = render_rendezvous(s),
    )
}

/// The rendezvous lines of `mesh status`: the points used, and the point served with the
/// addresses to give other agents.
fn render_rendezvous(s: &StatusResponse) -> String {
    let mut out = String::new();
    for p in &s.rendezvous {
        let state = match (p.connected, p.registered_for_s) {
            (false, _) => "not connected".to_string(),
            (true, Some(left)) => format!("registered ({} left)", human_ago(left * 1000)),
            (true, None) => "connected, not registered".to_string(),
        };
        out.push_str(&format!(
            "rendezvous {peer}: {state}, {found} found{error}\n",
            peer = p.peer,
            found = p.discovered,
            error = p
                .last_error
                .as_deref()
                .map(|e| format!(", last error: {e}"))
                .unwrap_or_default(),
        ));
    }
    let r = &s.reachability;
    if let Some(seen) = &r.behind_nat {
        let via = match (&r.relayed_via, r.relay_reserved) {
            (Some(relay), true) => format!("reachable through the relay of {relay}"),
            (Some(relay), false) => format!("reserving a slot on the relay of {relay}"),
            (None, _) => "no member relay to listen through (start one with --relay-server)".into(),
        };
        out.push_str(&format!(
            "nat      behind NAT (a member sees it at {seen}); {via}\n"
        ));
    }
    if r.hole_punches + r.hole_punch_failures > 0 {
        out.push_str(&format!(
            "punch    {} relayed links made direct, {} attempts failed\n",
            r.hole_punches, r.hole_punch_failures
        ));
    }
    if let Some(relay) = &r.relay_server {
        out.push_str(&format!(
            "relay    serving members: {} reservations, {} circuits, {} denied\n",
            relay.reservations, relay.circuits, relay.denied
        ));
    }
    if let Some(point) = &s.rendezvous_point {
        out.push_str(&format!(
            "serving  rendezvous point ({who}): {held} registrations held, {served} discoveries \
             served, {refused} refused, {unadmitted} not admitted\n",
            who = if point.open {
                "open to anyone"
            } else {
                "members only"
            },
            held = point.registrations,
            served = point.discoveries,
            refused = point.refused,
            unadmitted = point.not_admitted,
        ));
        for addr in &point.addrs {
            out.push_str(&format!("         --rendezvous {addr}\n"));
        }
    }
    out
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
            copies: "1/1".into(),
            replicas: 1,
            owners: Vec::new(),
            exclusive: false,
            epoch: 1,
            placement: "placed".into(),
            anomaly: None,
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
            "NAME  COPIES  NODE  STATE    PID   PORTS      RESTARTS  UPTIME  HEALTH   FLAG\n\
             db    1/1     pi    failed   -     -          5         -       -        -\n\
             web   1/1     pi    healthy  4242  8000,8001  2         5m12s   healthy  -\n\
             \n\
             db failed: exited with status 1 (last exit: exit status 1)\n  \
             starting\n  \
             cannot open data dir\n"
        );
        let healthy_only = render_services(&[service_entry("web", "healthy")]);
        assert!(!healthy_only.contains("failed"));
        let cam = ServiceEntry {
            reason: Some("no node can take it (2 of 2 nodes: 2 tags differ)".into()),
            copies: "0/1".into(),
            placement: "unplaced".into(),
            ..service_entry("cam", "unplaced")
        };
        assert!(
            render_services(&[cam])
                .ends_with("\ncam unplaced: no node can take it (2 of 2 nodes: 2 tags differ)\n")
        );
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
