//! What a run of `mesh sim` reports: [`Report`] (deterministic: every figure derives from the
//! simulated run, so the same scenario and seed give the same JSON), its markdown summary, the
//! CDF plot of detection times (SVG), and `--compare` of two reports. [`Perf`] holds what is
//! not deterministic (wall time, memory) and is written apart.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::scenario::Scenario;

/// Detection times kept for the CDF (the summary statistics use all of them).
const MAX_SAMPLES: usize = 10_000;

/// Summary statistics of a set of times, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Stats {
    pub fn of(values: &[f64]) -> Stats {
        if values.is_empty() {
            return Stats::default();
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Stats {
            count: v.len(),
            p50: round(at(0.5)),
            p90: round(at(0.9)),
            p99: round(at(0.99)),
            max: round(v[v.len() - 1]),
        }
    }
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MembershipFigures {
    /// Crash → `dead`, per observer.
    pub detection: Stats,
    /// Crash → `dead` on the last observer.
    pub detection_all: Stats,
    /// Graceful stop → `left`, per observer.
    pub leave: Stats,
    pub leave_all: Stats,
    /// Heal → every up node sees every other `alive` (sampled every 100 ms).
    #[serde(default)]
    pub heal: Stats,
    pub suspicions: u64,
    pub false_dead: u64,
    pub undetected: usize,
    /// The per-observer detection times, sorted (for the CDF; at most 10,000).
    pub detection_cdf_ms: Vec<f64>,
    #[serde(skip)]
    pub detection_ms: Vec<f64>,
    #[serde(skip)]
    pub detection_all_ms: Vec<f64>,
    #[serde(skip)]
    pub leave_ms: Vec<f64>,
    #[serde(skip)]
    pub leave_all_ms: Vec<f64>,
    #[serde(skip)]
    pub heal_ms: Vec<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Traffic {
    pub messages: u64,
    pub bytes: u64,
    pub messages_per_node_per_s: f64,
    pub bytes_per_node_per_s: f64,
    /// Links held per up node at the end.
    pub links_per_node: f64,
    /// Datagrams the membership cores counted as dropped (no link, or a full outbox).
    pub dropped_counted: u64,
    /// Dials the nodes' dial planners started.
    #[serde(default)]
    pub dials: u64,
    /// Per interval (every 5 s, or 240 samples over long runs), per up node per second.
    #[serde(default)]
    pub over_time: Vec<TrafficSample>,
    /// With a bandwidth: messages that waited for their sender's uplink, their mean and
    /// longest wait.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub queued: u64,
    #[serde(default, skip_serializing_if = "is_zero_f64")]
    pub queued_wait_mean_ms: f64,
    #[serde(default, skip_serializing_if = "is_zero_f64")]
    pub queued_wait_max_ms: f64,
    #[serde(skip)]
    pub queued_wait_total_ms: f64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn is_zero_f64(v: &f64) -> bool {
    *v == 0.0
}

/// Traffic in the interval that ends at `t_s`, per up node per second (the busiest node's
/// bytes per second on its own).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrafficSample {
    pub t_s: f64,
    pub up_nodes: u64,
    pub membership_messages: f64,
    pub membership_bytes: f64,
    pub membership_bytes_busiest: f64,
    pub sync_messages: f64,
    pub sync_bytes: f64,
}

/// The full stack's figures (document, sync, placement, services), when the scenario has
/// services.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceFigures {
    pub services: usize,
    pub copies_wanted: u64,
    /// A copy lost with its node → a new copy ready (healthy) on another node.
    pub failover: Stats,
    /// A change committed on one node → in the document of every node up at the time (that
    /// stayed up); a partition's writes wait for its heal.
    pub change_to_all: Stats,
    /// Changes given up on (past the bookkeeping bound) before every node had them.
    pub spread_unfinished: u64,
    pub sync_messages: u64,
    pub sync_bytes: u64,
    pub sync_messages_per_node_per_s: f64,
    pub sync_bytes_per_node_per_s: f64,
    /// Changes of instance records written by the supervisors.
    pub instance_writes: u64,
    pub audit_events: u64,
    /// Exclusive starts the members did not confirm (asked again later).
    pub fenced_retries: u64,
    /// Saved document size at the end (mean of the sampled nodes), bytes.
    pub doc_bytes_end: u64,
    /// (simulated s, ready copies, wanted copies), every 5 s.
    pub copies: Vec<(f64, u64, u64)>,
    /// (simulated s, saved document bytes), every 30 s.
    pub doc_bytes: Vec<(f64, u64)>,
    /// Ready copies at the end per hardware group (by the group's device class and profile);
    /// only with `[[hardware]]` groups.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub copies_by_group: BTreeMap<String, u64>,
    #[serde(skip)]
    pub failover_ms: Vec<f64>,
    #[serde(skip)]
    pub spread_ms: Vec<f64>,
}

/// One `[[hardware]]` group: its nodes and what its records advertise.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HardwareGroup {
    /// `first-last device_class/profile`, the key of `copies_by_group`.
    pub group: String,
    /// Node indices, first and last.
    pub nodes: (usize, usize),
    pub arch: String,
    pub cores: u64,
    pub memory_mib: u64,
    pub device_class: String,
    pub profile: String,
    pub score: u64,
    pub tags: BTreeMap<String, String>,
    /// Its uplink in bits per second, when the group sets one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_bps: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Violation {
    pub at_ms: u64,
    pub invariant: String,
    pub detail: String,
    pub replay: String,
}

/// The deterministic report of one run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    pub simulated_s: f64,
    pub nodes_total: usize,
    pub nodes_up_at_end: usize,
    pub outages: usize,
    pub churn_restarts: u64,
    pub membership: MembershipFigures,
    pub traffic: Traffic,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<ServiceFigures>,
    /// The scenario's hardware groups as the agent's classifier sees them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hardware: Vec<HardwareGroup>,
    pub violations_total: usize,
    pub violations: Vec<Violation>,
    /// The scenario's events as they happened.
    pub timeline: Vec<String>,
}

/// What a run cost on this machine (not deterministic).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Perf {
    pub wall_s: f64,
    pub simulated_s: f64,
    pub events: u64,
    pub wall_per_simulated_s: f64,
    pub peak_rss_mib: f64,
}

/// This process's peak resident set (`VmHWM`), MiB.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

impl Report {
    pub fn new(scenario: &Scenario, seed: u64) -> Report {
        Report {
            scenario: scenario.name.clone(),
            seed,
            simulated_s: scenario.duration.as_secs_f64(),
            hardware: scenario
                .hardware
                .ranges()
                .into_iter()
                .map(|(first, last, kind)| {
                    let h = &kind.hardware;
                    HardwareGroup {
                        group: format!("{first}-{last} {}/{}", h.device_class, h.profile),
                        nodes: (first, last),
                        arch: h.arch.clone(),
                        cores: h.cores,
                        memory_mib: h.memory_bytes >> 20,
                        device_class: h.device_class.clone(),
                        profile: h.profile.clone(),
                        score: h.score,
                        tags: kind.tags.clone(),
                        bandwidth_bps: kind.bandwidth,
                    }
                })
                .collect(),
            ..Report::default()
        }
    }

    /// Computes the statistics from the samples.
    pub fn finish(&mut self) {
        let t = &mut self.traffic;
        if t.queued > 0 {
            t.queued_wait_mean_ms = round(t.queued_wait_total_ms / t.queued as f64);
            t.queued_wait_max_ms = round(t.queued_wait_max_ms);
        }
        let m = &mut self.membership;
        m.detection = Stats::of(&m.detection_ms);
        m.detection_all = Stats::of(&m.detection_all_ms);
        m.leave = Stats::of(&m.leave_ms);
        m.leave_all = Stats::of(&m.leave_all_ms);
        m.heal = Stats::of(&m.heal_ms);
        let mut cdf: Vec<f64> = m.detection_ms.iter().map(|v| round(*v)).collect();
        cdf.sort_by(f64::total_cmp);
        if cdf.len() > MAX_SAMPLES {
            let step = cdf.len() as f64 / MAX_SAMPLES as f64;
            cdf = (0..MAX_SAMPLES)
                .map(|i| cdf[(i as f64 * step) as usize])
                .collect();
        }
        m.detection_cdf_ms = cdf;
        if let Some(f) = self.services.as_mut() {
            f.failover = Stats::of(&f.failover_ms);
            f.change_to_all = Stats::of(&f.spread_ms);
            f.doc_bytes_end = f.doc_bytes.last().map_or(0, |(_, b)| *b);
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("reports serialize") + "\n"
    }

    /// The markdown summary.
    pub fn summary(&self, perf: Option<&Perf>) -> String {
        let m = &self.membership;
        let t = &self.traffic;
        let stat = |s: &Stats| {
            if s.count == 0 {
                "-".to_string()
            } else {
                format!(
                    "{:.0} / {:.0} / {:.0} ms (n = {})",
                    s.p50, s.p90, s.max, s.count
                )
            }
        };
        let mut out = format!(
            "# mesh sim: {} (seed {})\n\n{} nodes ({} up at the end), {:.0} s simulated, {} outages, {} churn restarts.\n\n\
             | figure | value |\n|---|---|\n\
             | crash → dead, per observer (p50 / p90 / max) | {} |\n\
             | crash → dead on every observer | {} |\n\
             | stop → left, per observer | {} |\n\
             | heal → every up node sees every other alive | {} |\n\
             | suspicions | {} |\n\
             | false dead verdicts | {} |\n\
             | observers that never detected an outage | {} |\n\
             | membership messages per node per second | {:.2} |\n\
             | membership bytes per node per second | {:.0} |\n\
             | links per node | {:.1} |\n\
             | datagrams dropped (counted) | {} |\n",
            self.scenario,
            self.seed,
            self.nodes_total,
            self.nodes_up_at_end,
            self.simulated_s,
            self.outages,
            self.churn_restarts,
            stat(&m.detection),
            stat(&m.detection_all),
            stat(&m.leave),
            stat(&m.heal),
            m.suspicions,
            m.false_dead,
            m.undetected,
            t.messages_per_node_per_s,
            t.bytes_per_node_per_s,
            t.links_per_node,
            t.dropped_counted,
        );
        if t.queued > 0 {
            out.push_str(&format!(
                "\nUplinks: {} messages waited for their sender's uplink, {:.1} ms on average, {:.1} ms at most.\n",
                t.queued, t.queued_wait_mean_ms, t.queued_wait_max_ms
            ));
        }
        if !self.hardware.is_empty() {
            out.push_str(
                "\nHardware (classified by the agent's own probe rules):\n\n\
                 | nodes | arch | cores | memory | class / profile | score | tags | uplink | copies at the end |\n\
                 |---|---|---|---|---|---|---|---|---|\n",
            );
            for g in &self.hardware {
                let tags: Vec<String> = g.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let copies = self
                    .services
                    .as_ref()
                    .and_then(|f| f.copies_by_group.get(&g.group))
                    .copied()
                    .unwrap_or(0);
                let uplink = g.bandwidth_bps.map_or("network's".to_string(), |b| {
                    format!("{} Mbit/s", b as f64 / 1e6)
                });
                out.push_str(&format!(
                    "| {}-{} | {} | {} | {} MiB | {}/{} | {} | {} | {uplink} | {} |\n",
                    g.nodes.0,
                    g.nodes.1,
                    g.arch,
                    g.cores,
                    g.memory_mib,
                    g.device_class,
                    g.profile,
                    g.score,
                    tags.join(", "),
                    copies
                ));
            }
        }
        if let Some(f) = &self.services {
            out.push_str(&format!(
                "\nServices: {} services, {} copies wanted.\n\n| figure | value |\n|---|---|\n\
                 | copy lost with its node → new copy ready elsewhere (p50 / p90 / max) | {} |\n\
                 | a change → on every node (p50 / p90 / max) | {} |\n\
                 | sync messages per node per second | {:.2} |\n\
                 | sync bytes per node per second | {:.0} |\n\
                 | instance record changes | {} |\n\
                 | exclusive starts not confirmed at first ask | {} |\n\
                 | document size at the end | {} B |\n",
                f.services,
                f.copies_wanted,
                stat(&f.failover),
                stat(&f.change_to_all),
                f.sync_messages_per_node_per_s,
                f.sync_bytes_per_node_per_s,
                f.instance_writes,
                f.fenced_retries,
                f.doc_bytes_end,
            ));
        }
        if let Some(p) = perf {
            out.push_str(&format!(
                "\nRun: {:.2} s of wall time ({:.4} s per simulated second), {} events, peak memory {:.0} MiB.\n",
                p.wall_s, p.wall_per_simulated_s, p.events, p.peak_rss_mib
            ));
        }
        if self.violations_total == 0 {
            out.push_str("\nInvariants: all held.\n");
        } else {
            out.push_str(&format!(
                "\nInvariants: **{} violations**\n\n",
                self.violations_total
            ));
            for v in &self.violations {
                out.push_str(&format!(
                    "- {:.3} s, {}: {} (replay: `{}`)\n",
                    v.at_ms as f64 / 1000.0,
                    v.invariant,
                    v.detail,
                    v.replay
                ));
            }
        }
        out
    }

    /// The CDF of per-observer detection times as an SVG.
    pub fn detection_svg(&self) -> String {
        let values = &self.membership.detection_cdf_ms;
        let (w, h, l, b, top, r) = (520.0, 300.0, 56.0, 40.0, 20.0, 16.0);
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"11\">\
             <rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\
             <text x=\"{l}\" y=\"14\">crash → dead, per observer: CDF ({} samples, seed {})</text>",
            values.len(),
            self.seed
        );
        let max = values.last().copied().unwrap_or(1.0).max(1.0) * 1.05;
        let x = |v: f64| l + (w - l - r) * v / max;
        let y = |q: f64| h - b - (h - b - top) * q;
        for q in [0.0, 0.5, 0.9, 1.0] {
            svg.push_str(&format!(
                "<line x1=\"{l}\" y1=\"{0:.1}\" x2=\"{1}\" y2=\"{0:.1}\" stroke=\"#ddd\"/><text x=\"{2}\" y=\"{3:.1}\" text-anchor=\"end\">{q}</text>",
                y(q),
                w - r,
                l - 4.0,
                y(q) + 4.0
            ));
        }
        for k in 0..=4 {
            let v = max * f64::from(k) / 4.0;
            svg.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{v:.0} ms</text>",
                x(v),
                h - b + 16.0
            ));
        }
        if !values.is_empty() {
            let n = values.len() as f64;
            let points: Vec<String> = values
                .iter()
                .enumerate()
                .map(|(i, v)| format!("{:.1},{:.1}", x(*v), y((i + 1) as f64 / n)))
                .collect();
            svg.push_str(&format!(
                "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.8\" points=\"{}\"/>",
                points.join(" ")
            ));
        }
        svg.push_str("</svg>\n");
        svg
    }
}

/// One line of a chart: label, colour, points.
pub type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// A line chart as an SVG: `series` of (label, colour, points), axes from zero.
pub fn line_svg(title: &str, x_unit: &str, y_unit: &str, series: &[Series<'_>]) -> String {
    let (w, h, l, b, top, r) = (560.0, 300.0, 64.0, 40.0, 34.0, 16.0);
    let xmax = series
        .iter()
        .flat_map(|(_, _, p)| p.iter().map(|(x, _)| *x))
        .fold(1e-9, f64::max);
    let ymax = series
        .iter()
        .flat_map(|(_, _, p)| p.iter().map(|(_, y)| *y))
        .fold(1e-9, f64::max)
        * 1.1;
    let x = |v: f64| l + (w - l - r) * v / xmax;
    let y = |v: f64| h - b - (h - b - top) * v / ymax;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"11\">\
         <rect width=\"{w}\" height=\"{h}\" fill=\"white\"/><text x=\"{l}\" y=\"14\">{title}</text>"
    );
    // Small values (a few KiB, a few messages) get a decimal.
    let decimals = if ymax < 10.0 { 1 } else { 0 };
    for k in 0..=4 {
        let v = ymax * f64::from(k) / 4.0;
        svg.push_str(&format!(
            "<line x1=\"{l}\" y1=\"{0:.1}\" x2=\"{1}\" y2=\"{0:.1}\" stroke=\"#ddd\"/><text x=\"{2}\" y=\"{3:.1}\" text-anchor=\"end\">{v:.decimals$}{y_unit}</text>",
            y(v),
            w - r,
            l - 4.0,
            y(v) + 4.0
        ));
        let t = xmax * f64::from(k) / 4.0;
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{t:.0}{x_unit}</text>",
            x(t),
            h - b + 16.0
        ));
    }
    for (k, (label, colour, points)) in series.iter().enumerate() {
        let line: Vec<String> = points
            .iter()
            .map(|(a, v)| format!("{:.1},{:.1}", x(*a), y(*v)))
            .collect();
        svg.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.6\" points=\"{}\"/>\
             <text x=\"{:.1}\" y=\"28\" fill=\"{colour}\">{label}</text>",
            line.join(" "),
            l + 160.0 * k as f64
        ));
    }
    svg.push_str("</svg>\n");
    svg
}

impl Report {
    /// Traffic over time: (file name, SVG) for bytes and for messages.
    pub fn traffic_svgs(&self) -> Vec<(&'static str, String)> {
        let series = |f: fn(&TrafficSample) -> f64| -> Vec<(f64, f64)> {
            self.traffic
                .over_time
                .iter()
                .map(|s| (s.t_s, f(s)))
                .collect()
        };
        let mut bytes = vec![
            (
                "membership, mean",
                "#1f77b4",
                series(|s| s.membership_bytes / 1024.0),
            ),
            (
                "membership, busiest node",
                "#aec7e8",
                series(|s| s.membership_bytes_busiest / 1024.0),
            ),
        ];
        let mut messages = vec![("membership", "#1f77b4", series(|s| s.membership_messages))];
        if self.services.is_some() {
            bytes.push(("sync, mean", "#ff7f0e", series(|s| s.sync_bytes / 1024.0)));
            messages.push(("sync", "#ff7f0e", series(|s| s.sync_messages)));
        }
        vec![
            (
                "traffic-bytes.svg",
                line_svg(
                    "bytes sent per node per second over time",
                    " s",
                    " KiB",
                    &bytes,
                ),
            ),
            (
                "traffic-messages.svg",
                line_svg(
                    "messages sent per node per second over time",
                    " s",
                    "",
                    &messages,
                ),
            ),
        ]
    }

    /// The plots of the full stack: (file name, SVG).
    pub fn service_svgs(&self) -> Vec<(&'static str, String)> {
        let Some(f) = &self.services else {
            return Vec::new();
        };
        let ready = f.copies.iter().map(|(t, r, _)| (*t, *r as f64)).collect();
        let wanted = f.copies.iter().map(|(t, _, w)| (*t, *w as f64)).collect();
        let doc = f
            .doc_bytes
            .iter()
            .map(|(t, b)| (*t, *b as f64 / 1024.0))
            .collect();
        let cdf = |values: &[f64]| -> Vec<(f64, f64)> {
            let mut v = values.to_vec();
            v.sort_by(f64::total_cmp);
            let n = v.len().max(1) as f64;
            v.iter()
                .enumerate()
                .map(|(i, x)| (*x, (i + 1) as f64 / n * 100.0))
                .collect()
        };
        vec![
            (
                "copies.svg",
                line_svg(
                    &format!(
                        "ready copies of all services over time (seed {})",
                        self.seed
                    ),
                    " s",
                    "",
                    &[("ready", "#1f77b4", ready), ("wanted", "#d62728", wanted)],
                ),
            ),
            (
                "document-size.svg",
                line_svg(
                    "saved document size over time",
                    " s",
                    " KiB",
                    &[("document", "#2ca02c", doc)],
                ),
            ),
            (
                "failover-cdf.svg",
                line_svg(
                    "copy lost → new copy ready elsewhere: CDF",
                    " ms",
                    " %",
                    &[("failover", "#9467bd", cdf(&f.failover_ms))],
                ),
            ),
            (
                "change-cdf.svg",
                line_svg(
                    "a change → on every node: CDF",
                    " ms",
                    " %",
                    &[("change to all nodes", "#ff7f0e", cdf(&f.spread_ms))],
                ),
            ),
        ]
    }
}

/// `mesh sim --compare A B`: the figures of two reports side by side, with the change.
pub fn compare(a: &Report, b: &Report) -> String {
    let rows: Vec<(&str, f64, f64)> = vec![
        (
            "crash → dead p50 (ms)",
            a.membership.detection.p50,
            b.membership.detection.p50,
        ),
        (
            "crash → dead p90 (ms)",
            a.membership.detection.p90,
            b.membership.detection.p90,
        ),
        (
            "crash → dead max (ms)",
            a.membership.detection.max,
            b.membership.detection.max,
        ),
        (
            "crash → dead, every observer, p50 (ms)",
            a.membership.detection_all.p50,
            b.membership.detection_all.p50,
        ),
        (
            "stop → left p50 (ms)",
            a.membership.leave.p50,
            b.membership.leave.p50,
        ),
        (
            "heal → all alive p50 (ms)",
            a.membership.heal.p50,
            b.membership.heal.p50,
        ),
        (
            "suspicions",
            a.membership.suspicions as f64,
            b.membership.suspicions as f64,
        ),
        (
            "false dead",
            a.membership.false_dead as f64,
            b.membership.false_dead as f64,
        ),
        (
            "undetected",
            a.membership.undetected as f64,
            b.membership.undetected as f64,
        ),
        (
            "messages / node / s",
            a.traffic.messages_per_node_per_s,
            b.traffic.messages_per_node_per_s,
        ),
        (
            "bytes / node / s",
            a.traffic.bytes_per_node_per_s,
            b.traffic.bytes_per_node_per_s,
        ),
        (
            "links / node",
            a.traffic.links_per_node,
            b.traffic.links_per_node,
        ),
        (
            "failover p50 (ms)",
            a.services.as_ref().map_or(0.0, |f| f.failover.p50),
            b.services.as_ref().map_or(0.0, |f| f.failover.p50),
        ),
        (
            "change → every node p50 (ms)",
            a.services.as_ref().map_or(0.0, |f| f.change_to_all.p50),
            b.services.as_ref().map_or(0.0, |f| f.change_to_all.p50),
        ),
        (
            "sync bytes / node / s",
            a.services
                .as_ref()
                .map_or(0.0, |f| f.sync_bytes_per_node_per_s),
            b.services
                .as_ref()
                .map_or(0.0, |f| f.sync_bytes_per_node_per_s),
        ),
        (
            "document bytes at the end",
            a.services.as_ref().map_or(0.0, |f| f.doc_bytes_end as f64),
            b.services.as_ref().map_or(0.0, |f| f.doc_bytes_end as f64),
        ),
        (
            "violations",
            a.violations_total as f64,
            b.violations_total as f64,
        ),
    ];
    let mut out = format!(
        "{:<40} {:>14} {:>14} {:>10}\n",
        "figure",
        format!("A ({})", a.scenario),
        format!("B ({})", b.scenario),
        "change"
    );
    for (name, x, y) in rows {
        let change = if x == y {
            "=".to_string()
        } else if x == 0.0 {
            "new".to_string()
        } else {
            format!("{:+.1} %", (y - x) / x * 100.0)
        };
        out.push_str(&format!("{name:<40} {x:>14.2} {y:>14.2} {change:>10}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_take_nearest_rank_percentiles() {
        let s = Stats::of(&[5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!((s.count, s.p50, s.max), (5, 3.0, 5.0));
        assert_eq!(Stats::of(&[]), Stats::default());
    }

    #[test]
    fn compare_shows_the_change() {
        let mut a = Report::default();
        a.membership.detection.p50 = 1000.0;
        let mut b = a.clone();
        b.membership.detection.p50 = 1500.0;
        let table = compare(&a, &b);
        assert!(table.contains("+50.0 %"), "{table}");
    }
}
