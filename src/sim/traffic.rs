//! Traffic: each node's uplink (a message waits for the ones before it, then takes its
//! size over the bandwidth, then the network's latency), and membership and sync messages and
//! bytes per up node per second, sampled at a fixed simulated interval, for the report's
//! `traffic.over_time` and its plots.

use std::time::Duration;

use super::report::TrafficSample;
use super::{Ev, Simulation};

/// Most traffic samples in a run: long runs sample less often.
const MAX_TRAFFIC_SAMPLES: u32 = 240;

/// Shortest interval between traffic samples.
const TRAFFIC_EVERY_MIN: Duration = Duration::from_secs(5);

impl Simulation {
    /// How long a message of `bytes` from `from` takes to reach `to`: the wait for the
    /// sender's uplink, the time to put it on the wire, and the network's latency. Without a
    /// bandwidth, only the latency (as every run before the model had).
    pub(super) fn transmit(&mut self, from: usize, to: usize, bytes: usize) -> Duration {
        let latency = self.latency(from, to);
        let Some(bps) = self.nodes[from].uplink_bps else {
            return latency;
        };
        let n = &mut self.nodes[from];
        let start = n.uplink_free.max(self.now);
        let wire = Duration::from_nanos((bytes as u64 * 8).saturating_mul(1_000_000_000) / bps);
        n.uplink_free = start + wire;
        let waited = start - self.now;
        let t = &mut self.report.traffic;
        if !waited.is_zero() {
            t.queued += 1;
            t.queued_wait_total_ms += waited.as_secs_f64() * 1000.0;
            t.queued_wait_max_ms = t.queued_wait_max_ms.max(waited.as_secs_f64() * 1000.0);
        }
        waited + wire + latency
    }

    /// How often traffic is sampled.
    pub(super) fn traffic_every(&self) -> Duration {
        (self.scenario.duration / MAX_TRAFFIC_SAMPLES).max(TRAFFIC_EVERY_MIN)
    }

    /// Takes a traffic sample of the interval that ends now and schedules the next.
    pub(super) fn sample_traffic(&mut self) {
        let every = self.traffic_every();
        let secs = every.as_secs_f64();
        let (mut up, mut messages, mut bytes, mut busiest) = (0u64, 0u64, 0u64, 0u64);
        for n in &mut self.nodes {
            let (m, b) = (n.msgs_out - n.msgs_mark, n.bytes_out - n.bytes_mark);
            (n.msgs_mark, n.bytes_mark) = (n.msgs_out, n.bytes_out);
            messages += m;
            bytes += b;
            busiest = busiest.max(b);
            if n.membership.is_some() {
                up += 1;
            }
        }
        let (sync_messages, sync_bytes) = self
            .fleet
            .as_ref()
            .map_or((0, 0), |f| (f.figures.sync_messages, f.figures.sync_bytes));
        let (sm, sb) = (
            sync_messages - self.sync_mark.0,
            sync_bytes - self.sync_mark.1,
        );
        self.sync_mark = (sync_messages, sync_bytes);
        let per_node = |v: u64| rounded(v as f64 / up.max(1) as f64 / secs);
        self.report.traffic.over_time.push(TrafficSample {
            t_s: self.now.as_secs_f64(),
            up_nodes: up,
            membership_messages: per_node(messages),
            membership_bytes: per_node(bytes),
            membership_bytes_busiest: rounded(busiest as f64 / secs),
            sync_messages: per_node(sm),
            sync_bytes: per_node(sb),
        });
        self.schedule(self.now + every, Ev::Traffic);
    }
}

fn rounded(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}
