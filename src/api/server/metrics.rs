//! `GET /metrics`: this node in the Prometheus exposition format (OpenMetrics text), built from
//! the node's and the document's snapshots at each scrape, plus `/proc` for the agent's own
//! process and the service processes it runs. Nothing is counted twice and nothing runs
//! between scrapes: a scrape costs one pass over the snapshots and a few `/proc` reads.
//!
//! Names follow Prometheus conventions: a `mesh_` prefix, base units (`_seconds`, `_bytes`),
//! `_total` on counters (the encoder adds it), the standard `process_*` names for the agent
//! itself. Labels are bounded: states and directions are fixed sets, `service` and `peer`
//! are bounded by the services this node runs and the members of the mesh. Everything is this
//! node's view (its peers, its instances, its leases), so scraping every agent sums right.
//! Spec: `protocol/control-api.md` (metrics).

use std::collections::BTreeMap;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

use crate::identity::NodeId;
use crate::insight::sampler::process_usage;
use crate::node::NodeSnapshot;
use crate::state::actor::StateSnapshot;
use crate::supervisor::actor::{CHECK_BUCKETS, CheckTimes};

/// The content type of an OpenMetrics answer (what `encode` writes, with its `# EOF`), for
/// scrapers that ask for it (Prometheus does, in its `Accept` header).
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the classic Prometheus text format, for everyone else (curl,
/// `promtool check metrics`).
pub const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether an `Accept` header asks for OpenMetrics.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

/// The classic text format (0.0.4) of an OpenMetrics exposition: a counter's `# HELP` and
/// `# TYPE` name its samples' `_total` name, `# UNIT` lines and `# EOF` go.
pub fn to_text_format(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let shown = if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            if let Some((_, text)) = help.take() {
                out.push_str(&format!("# HELP {shown} {text}\n"));
            }
            out.push_str(&format!("# TYPE {shown} {kind}\n"));
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
        } else {
            if let Some((name, text)) = help.take() {
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

type Labels = Vec<(&'static str, String)>;

fn gauge_family(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let family = Family::<Labels, Gauge>::default();
    registry.register(name, help, family.clone());
    family
}

fn gauge_family_f64(
    registry: &mut Registry,
    name: &str,
    help: &str,
    unit: Unit,
) -> Family<Labels, Gauge<f64, AtomicU64>> {
    let family = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    registry.register_with_unit(name, help, unit, family.clone());
    family
}

fn counter_family(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let family = Family::<Labels, Counter>::default();
    registry.register(name, help, family.clone());
    family
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g = Gauge::<i64>::default();
    g.set(value);
    registry.register(name, help, g);
}

fn gauge_unit(registry: &mut Registry, name: &str, help: &str, unit: Unit, value: f64) {
    let g = Gauge::<f64, AtomicU64>::default();
    g.set(value);
    registry.register_with_unit(name, help, unit, g);
}

fn label(k: &'static str, v: impl Into<String>) -> Labels {
    vec![(k, v.into())]
}

/// Open file descriptors of this process.
fn open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

/// This node's metrics, as the text a scrape gets.
/// Health-check latencies of this node's services, as one histogram family (a collector: the
/// supervisor keeps cumulative buckets, which the stock histogram cannot be set from).
#[derive(Debug)]
struct CheckDurations(BTreeMap<String, CheckTimes>);

impl Collector for CheckDurations {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "service_health_check_duration",
            "How long each service's health checks took on this node",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (service, t) in &self.0 {
            let labels = [("service", service.as_str())];
            let buckets: Vec<(f64, u64)> = CHECK_BUCKETS
                .iter()
                .copied()
                .zip(t.buckets.iter().copied())
                .chain(std::iter::once((f64::INFINITY, t.count)))
                .collect();
            family
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(t.sum_seconds, t.count, &buckets, None)?;
        }
        Ok(())
    }
}

pub fn render(
    node: &NodeSnapshot,
    state: &StateSnapshot,
    checks: BTreeMap<String, CheckTimes>,
    swarm: Option<&Registry>,
    now: tokio::time::Instant,
) -> String {
    let mut r = Registry::with_prefix("mesh");
    let s = &node.stats;
    let local = NodeId::from(node.local.peer_id);

    // Peers and links.
    let peers = gauge_family(&mut r, "peers", "Peers of this node by membership state");
    for st in ["alive", "suspect", "dead", "left"] {
        peers.get_or_create(&label("state", st)).set(0);
    }
    let links = gauge_family(&mut r, "links", "Peers by how this node is linked to them");
    for l in ["direct", "relayed", "none"] {
        links.get_or_create(&label("link", l)).set(0);
    }
    let rtt = gauge_family_f64(
        &mut r,
        "peer_rtt",
        "Smoothed round-trip time of membership probes, per peer",
        Unit::Seconds,
    );
    for p in &node.peers {
        peers
            .get_or_create(&label("state", p.state.to_string()))
            .inc();
        links.get_or_create(&label("link", p.link)).inc();
        if let Some(d) = p.rtt {
            let name = p
                .info
                .as_ref()
                .map_or_else(|| p.peer_id.to_base58(), |i| i.name.clone());
            rtt.get_or_create(&label("peer", name)).set(d.as_secs_f64());
        }
    }
    gauge(
        &mut r,
        "connections",
        "Open connections",
        s.connections as i64,
    );

    // Admission.
    let admission = counter_family(
        &mut r,
        "admission_outcomes",
        "Admission handshakes by outcome (admitted, or why they failed)",
    );
    let a = &s.admission;
    for (outcome, v) in [
        ("admitted", a.admitted),
        ("bad_proof", a.bad_proof),
        ("denied", a.denied),
        ("timeout", a.timeout),
        ("protocol", a.protocol),
        ("transport", a.transport),
        ("abandoned", a.abandoned),
        ("refused_in_backoff", a.refused_in_backoff),
    ] {
        admission
            .get_or_create(&label("outcome", outcome))
            .inc_by(v);
    }

    // Membership and sync traffic.
    let datagrams = counter_family(
        &mut r,
        "membership_datagrams",
        "Membership (SWIM) datagrams by direction; rejected and dropped ones apart",
    );
    let m = &s.membership;
    for (dir, v) in [
        ("in", m.datagrams_in),
        ("out", m.datagrams_out),
        ("rejected", m.datagrams_rejected),
        ("dropped", m.datagrams_dropped),
    ] {
        datagrams.get_or_create(&label("direction", dir)).inc_by(v);
    }
    let sync_messages = counter_family(&mut r, "sync_messages", "State sync messages by direction");
    let sync_bytes = counter_family(
        &mut r,
        "sync_bytes",
        "State sync payload bytes by direction",
    );
    for (dir, msgs, bytes) in [
        ("in", state.sync.messages_in, state.sync.bytes_in),
        ("out", state.sync.messages_out, state.sync.bytes_out),
    ] {
        sync_messages
            .get_or_create(&label("direction", dir))
            .inc_by(msgs);
        sync_bytes
            .get_or_create(&label("direction", dir))
            .inc_by(bytes);
    }
    counter(
        &mut r,
        "sync_malformed",
        "Malformed sync messages received",
        state.sync.malformed,
    );
    counter(
        &mut r,
        "sync_dropped",
        "Sync messages dropped because the state actor's queue was full",
        s.sync_messages_dropped,
    );

    // The document.
    gauge_unit(
        &mut r,
        "document_value",
        "Size of the replicated document's current value",
        Unit::Bytes,
        state.value_bytes as f64,
    );
    gauge_unit(
        &mut r,
        "document_file",
        "Size of the document's file on disk",
        Unit::Bytes,
        state.file_bytes as f64,
    );
    gauge(
        &mut r,
        "document_changes",
        "Changes in the document's history (since its epoch began)",
        state.changes as i64,
    );
    let epoch = gauge_family(
        &mut r,
        "document_epoch",
        "The document's epoch (1, labelled with its id)",
    );
    epoch
        .get_or_create(&label("epoch", state.epoch.to_string()))
        .set(1);

    // Services, leases and processes of this node.
    let services = gauge_family(&mut r, "services", "Service copies on this node by state");
    for st in crate::state::InstanceState::ALL {
        services.get_or_create(&label("state", st.as_str())).set(0);
    }
    let restarts = counter_family(
        &mut r,
        "service_restarts",
        "Restarts of each service copy on this node",
    );
    let health = gauge_family(
        &mut r,
        "service_health_check_passing",
        "1 when the service's last health check passed, 0 when it failed (absent without one)",
    );
    let cpu = Family::<Labels, Counter<f64, AtomicU64>>::default();
    r.register_with_unit(
        "service_cpu",
        "CPU time used by each service's main process on this node",
        Unit::Seconds,
        cpu.clone(),
    );
    r.register_collector(Box::new(CheckDurations(checks)));
    let rss = gauge_family_f64(
        &mut r,
        "service_resident_memory",
        "Resident memory of each service's main process on this node",
        Unit::Bytes,
    );
    for inst in state.state.instances.values().filter(|i| i.node == local) {
        services
            .get_or_create(&label("state", inst.state.as_str()))
            .inc();
        let service = label("service", inst.service.clone());
        restarts.get_or_create(&service).inc_by(inst.restarts);
        if let Some(passed) = inst.health_check {
            health.get_or_create(&service).set(i64::from(passed));
        }
        if let Some((seconds, bytes)) = inst.pid.and_then(process_usage) {
            cpu.get_or_create(&service).inc_by(seconds);
            rss.get_or_create(&service).set(bytes as f64);
        }
    }
    let leases = gauge_family(
        &mut r,
        "port_leases",
        "Port leases held by this node by state",
    );
    for st in ["allocated", "in-use", "released"] {
        leases.get_or_create(&label("state", st)).set(0);
    }
    for lease in state.state.leases.values().filter(|l| l.node == local) {
        leases
            .get_or_create(&label("state", lease.state.to_string()))
            .inc();
    }

    // Reaching members beyond the LAN.
    gauge(
        &mut r,
        "behind_nat",
        "1 when a member sees this node at an address that is not its own",
        i64::from(s.behind_nat.is_some()),
    );
    counter(
        &mut r,
        "hole_punches",
        "Relayed links made direct by hole punching",
        s.hole_punches,
    );
    counter(
        &mut r,
        "hole_punch_failures",
        "Hole punching attempts that failed",
        s.hole_punch_failures,
    );
    counter(
        &mut r,
        "relay_circuits",
        "Circuits this node's relay opened",
        s.relay.circuits,
    );
    counter(&mut r, "dials", "Dials started", s.dials.dials);

    gauge(
        &mut r,
        "uptime_seconds",
        "Seconds since the agent started",
        now.saturating_duration_since(node.local.started_at)
            .as_secs() as i64,
    );

    // The agent's own process, under the standard names (no prefix), in a registry of its own.
    let mut text = String::new();
    if encode(&mut text, &r).is_err() {
        return String::from("# encoding failed\n# EOF\n");
    }
    let mut own = Registry::default();
    if let Some((seconds, bytes)) = process_usage(std::process::id() as i64) {
        let c = Counter::<f64, AtomicU64>::default();
        c.inc_by(seconds);
        own.register_with_unit(
            "process_cpu",
            "CPU time of the agent process",
            Unit::Seconds,
            c,
        );
        let g = Gauge::<f64, AtomicU64>::default();
        g.set(bytes as f64);
        own.register_with_unit(
            "process_resident_memory",
            "Resident memory of the agent process",
            Unit::Bytes,
            g,
        );
    }
    if let Some(fds) = open_fds() {
        let g = Gauge::<i64>::default();
        g.set(fds as i64);
        own.register(
            "process_open_fds",
            "Open file descriptors of the agent process",
            g,
        );
    }
    let mut own_text = String::new();
    // The swarm's own families (`libp2p_*`, libp2p-metrics), before the process's.
    if let Some(swarm) = swarm {
        let mut swarm_text = String::new();
        if encode(&mut swarm_text, swarm).is_ok()
            && let Some(stripped) = swarm_text.strip_suffix("# EOF\n")
        {
            own_text.push_str(stripped);
        }
    }
    if encode(&mut own_text, &own).is_ok() {
        // One exposition: the first `# EOF` goes, the second ends it.
        if let Some(stripped) = text.strip_suffix("# EOF\n") {
            text = format!("{stripped}{own_text}");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_names_counters_by_their_samples_and_drops_units_and_eof() {
        let om = "# HELP mesh_dials Dials started.\n# TYPE mesh_dials counter\nmesh_dials_total 3\n\
                  # HELP mesh_peer_rtt_seconds RTT.\n# TYPE mesh_peer_rtt_seconds gauge\n\
                  # UNIT mesh_peer_rtt_seconds seconds\nmesh_peer_rtt_seconds{peer=\"a\"} 0.001\n# EOF\n";
        assert_eq!(
            to_text_format(om),
            "# HELP mesh_dials_total Dials started.\n# TYPE mesh_dials_total counter\nmesh_dials_total 3\n\
             # HELP mesh_peer_rtt_seconds RTT.\n# TYPE mesh_peer_rtt_seconds gauge\n\
             mesh_peer_rtt_seconds{peer=\"a\"} 0.001\n"
        );
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        )));
        assert!(!wants_openmetrics(Some("*/*")) && !wants_openmetrics(None));
    }
}
