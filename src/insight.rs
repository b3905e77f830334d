//! What this node remembers of its recent past, for people to look at: a bounded ring of
//! samples (RTT per peer, CPU and memory per service) for the dashboard's charts, and per
//! service baselines that flag values far outside them (anomalies). Sans-IO: the sampler
//! (`insight::sampler`) takes the readings and the time and feeds them here; nothing here reads
//! a clock, a file or a socket.
//!
//! None of this goes into the replicated document: samples are volatile and per node. Only an
//! anomaly's flag (raised, cleared) is published, by the supervisor, on the instance record,
//! as a health state is.
//!
//! # Anomalies
//!
//! For each service and each of four measures (restarts in the last 15 minutes, CPU as a
//! fraction of one core, resident memory, mean health-check latency) a baseline keeps an
//! exponentially weighted mean and variance over [`BASELINE_SAMPLES`] samples (half an hour at
//! the default 15 s). After [`WARM_UP_SAMPLES`] samples, a value above
//! `mean + FLAG_SIGMAS × spread` raises a flag, where the spread is the larger of the standard
//! deviation and a floor per measure ([`Measure::floor`]: a relative part of the mean and an
//! absolute minimum, so a service that never varies is not flagged for a one-byte change),
//! for [`FLAG_AFTER`] samples in a row (one odd sample is not an anomaly). The flag clears when the value comes back under `mean + CLEAR_SIGMAS × spread`. Only high values
//! are flagged: a service using less than usual is not a problem. While flagged, values move
//! the mean at a tenth of the weight and leave the spread alone, so a lasting new level becomes
//! the normal one within a few hours instead of staying flagged forever.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

pub mod sampler;

/// Samples a baseline averages over (the EWMA's `α = 2 / (N + 1)`): half an hour at the
/// default 15 s interval; long enough that one odd sample moves the mean little.
pub const BASELINE_SAMPLES: f64 = 120.0;
/// Samples before a baseline judges anything: a mean and spread from fewer are noise.
pub const WARM_UP_SAMPLES: u32 = 20;
/// How far above the mean, in spreads, a value raises a flag.
pub const FLAG_SIGMAS: f64 = 4.0;
/// Consecutive samples that far above before a flag goes up: one odd sample (a CPU burst while
/// a cache fills, a slow check during a backup) is not an anomaly; 45 s of it at the default
/// interval is.
pub const FLAG_AFTER: u32 = 3;
/// Under how many spreads above the mean a flagged value clears (hysteresis: a value hovering
/// at the threshold does not flap).
pub const CLEAR_SIGMAS: f64 = 2.0;
/// Weight of a flagged value in the mean, relative to a normal one: a lasting new level
/// becomes the baseline in a few hours at the default interval (the mean closes 1/e of the gap
/// every 605 samples, 2.5 h).
const FLAGGED_WEIGHT: f64 = 0.1;
/// Services with a baseline kept (the least recently seen go first): bounds memory and the
/// baselines file.
pub const MAX_BASELINE_SERVICES: usize = 256;
/// A service not seen for this long loses its baseline (removed, or moved away for good).
pub const BASELINE_TTL_MS: i64 = 7 * 24 * 3600 * 1000;
/// Window of the restart measure.
pub const RESTART_WINDOW_MS: i64 = 15 * 60 * 1000;

/// Points a history keeps at most, whatever the interval (an hour at the default 15 s is 240).
pub const MAX_HISTORY_POINTS: usize = 720;
/// Series (peers, services) one sample keeps at most: bounds a sample in a big mesh.
pub const MAX_SERIES: usize = 64;

/// What a baseline measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Measure {
    /// Restarts in the last [`RESTART_WINDOW_MS`].
    Restarts,
    /// CPU used, as a fraction of one core.
    Cpu,
    /// Resident memory, bytes.
    Memory,
    /// Mean health-check latency, seconds.
    HealthLatency,
}

impl Measure {
    pub const ALL: [Measure; 4] = [
        Measure::Restarts,
        Measure::Cpu,
        Measure::Memory,
        Measure::HealthLatency,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Measure::Restarts => "restarts",
            Measure::Cpu => "cpu",
            Measure::Memory => "memory",
            Measure::HealthLatency => "health-check latency",
        }
    }

    /// The least spread of a baseline with mean `mean`: (relative part, absolute minimum).
    /// Memory: a quarter of the mean or 16 MiB (allocators and caches breathe); CPU: half the
    /// mean or 5 % of a core; restarts: 2 (one crash is not an anomaly, a loop is); latency:
    /// half the mean or 50 ms (a busy machine's scheduling).
    pub fn floor(self, mean: f64) -> f64 {
        let (relative, absolute) = match self {
            Measure::Restarts => (0.0, 2.0),
            Measure::Cpu => (0.5, 0.05),
            Measure::Memory => (0.25, 16.0 * 1024.0 * 1024.0),
            Measure::HealthLatency => (0.5, 0.05),
        };
        (relative * mean.abs()).max(absolute)
    }

    /// `value` written for people: `412.0 MiB`, `35 % of a core`, `7 restarts`, `120 ms`.
    pub fn show(self, value: f64) -> String {
        match self {
            Measure::Restarts => format!("{value:.0} restarts"),
            Measure::Cpu => format!("{:.0} % of a core", value * 100.0),
            Measure::Memory => format!("{:.1} MiB", value / (1024.0 * 1024.0)),
            Measure::HealthLatency => format!("{:.0} ms", value * 1000.0),
        }
    }
}

/// An exponentially weighted mean and variance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub samples: u32,
    pub mean: f64,
    pub variance: f64,
    /// Whether the last value was judged far outside (a flag is up).
    pub flagged: bool,
    /// Consecutive values far above so far (a flag goes up at [`FLAG_AFTER`]).
    #[serde(default)]
    pub high_run: u32,
}

impl Baseline {
    /// The spread a value is judged against.
    pub fn spread(&self, measure: Measure) -> f64 {
        self.variance.max(0.0).sqrt().max(measure.floor(self.mean))
    }

    /// Folds `value` in; an outlier (`normal` false) moves the mean at a tenth of the weight
    /// and leaves the spread alone, so a flag is not talked away by its own values.
    fn fold(&mut self, value: f64, normal: bool) {
        if self.samples == 0 {
            self.mean = value;
            self.variance = 0.0;
        } else if normal {
            let alpha = 2.0 / (BASELINE_SAMPLES + 1.0);
            let delta = value - self.mean;
            self.mean += alpha * delta;
            self.variance = (1.0 - alpha) * (self.variance + alpha * delta * delta);
        } else {
            let alpha = FLAGGED_WEIGHT * 2.0 / (BASELINE_SAMPLES + 1.0);
            self.mean += alpha * (value - self.mean);
        }
        self.samples = self.samples.saturating_add(1);
    }
}

/// A flag raised or cleared by one value.
#[derive(Clone, Debug, PartialEq)]
pub struct Anomaly {
    pub service: String,
    pub measure: Measure,
    pub value: f64,
    /// The baseline the value was judged against (before the value).
    pub mean: f64,
    pub spread: f64,
    /// Raised (true) or cleared (false).
    pub raised: bool,
}

impl Anomaly {
    /// The event text: the figures and the rule, so a person can judge the claim.
    pub fn reason(&self) -> String {
        let m = self.measure;
        if self.raised {
            format!(
                "{} is {}, far above its baseline of {} ± {} (flagged above {} = mean + {FLAG_SIGMAS} × spread)",
                m.as_str(),
                m.show(self.value),
                m.show(self.mean),
                m.show(self.spread),
                m.show(self.mean + FLAG_SIGMAS * self.spread),
            )
        } else {
            format!(
                "{} is back to {}, near its baseline of {} ± {}",
                m.as_str(),
                m.show(self.value),
                m.show(self.mean),
                m.show(self.spread),
            )
        }
    }
}

/// One service's readings in one sample (`None`: not measured this time, e.g. no process or
/// no health check).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Readings {
    pub restarts: Option<f64>,
    pub cpu: Option<f64>,
    pub memory: Option<f64>,
    pub health_latency: Option<f64>,
}

impl Readings {
    fn get(&self, m: Measure) -> Option<f64> {
        match m {
            Measure::Restarts => self.restarts,
            Measure::Cpu => self.cpu,
            Measure::Memory => self.memory,
            Measure::HealthLatency => self.health_latency,
        }
    }
}

/// One service's baselines.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceBaselines {
    pub last_seen_ms: i64,
    pub measures: BTreeMap<Measure, Baseline>,
}

/// Every service's baselines on this node (what the baselines file holds).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Baselines {
    pub services: BTreeMap<String, ServiceBaselines>,
}

impl Baselines {
    /// Judges and then folds `readings` of `service` at `now_ms`; returns the flags raised or
    /// cleared.
    pub fn observe(&mut self, now_ms: i64, service: &str, readings: Readings) -> Vec<Anomaly> {
        if !self.services.contains_key(service) && self.services.len() >= MAX_BASELINE_SERVICES {
            let oldest = self
                .services
                .iter()
                .min_by_key(|(_, b)| b.last_seen_ms)
                .map(|(name, _)| name.clone());
            if let Some(oldest) = oldest {
                self.services.remove(&oldest);
            }
        }
        let entry = self.services.entry(service.to_string()).or_default();
        entry.last_seen_ms = now_ms;
        let mut out = Vec::new();
        for measure in Measure::ALL {
            let Some(value) = readings.get(measure).filter(|v| v.is_finite()) else {
                continue;
            };
            let b = entry.measures.entry(measure).or_default();
            let spread = b.spread(measure);
            let judged = b.samples >= WARM_UP_SAMPLES;
            let high = judged && value > b.mean + FLAG_SIGMAS * spread;
            let low = value < b.mean + CLEAR_SIGMAS * spread;
            let report = |raised| Anomaly {
                service: service.to_string(),
                measure,
                value,
                mean: b.mean,
                spread,
                raised,
            };
            b.high_run = if high {
                b.high_run.saturating_add(1)
            } else {
                0
            };
            if high && !b.flagged && b.high_run >= FLAG_AFTER {
                out.push(report(true));
                b.flagged = true;
            } else if b.flagged && low {
                out.push(report(false));
                b.flagged = false;
            }
            // Values far above (flagged, or on their way to it) barely move the baseline.
            b.fold(value, !(b.flagged || high));
        }
        out
    }

    /// Drops baselines of services not seen for [`BASELINE_TTL_MS`].
    pub fn expire(&mut self, now_ms: i64) {
        self.services
            .retain(|_, b| now_ms.saturating_sub(b.last_seen_ms) < BASELINE_TTL_MS);
    }

    /// The flags up for `service`, as one line (`memory 412.0 MiB (baseline 38.2 MiB)`), or
    /// `None`.
    pub fn flag(&self, service: &str) -> Option<String> {
        let b = self.services.get(service)?;
        let up: Vec<String> = b
            .measures
            .iter()
            .filter(|(_, m)| m.flagged)
            .map(|(measure, m)| {
                format!(
                    "{} above baseline {}",
                    measure.as_str(),
                    measure.show(m.mean)
                )
            })
            .collect();
        (!up.is_empty()).then(|| up.join("; "))
    }

    /// The file's text.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("baselines serialize")
    }

    /// Reads a baselines file; a malformed one gives `None` (the caller starts afresh and
    /// says so), and entries past the bound are dropped.
    pub fn decode(text: &str) -> Option<Self> {
        let mut b: Baselines = serde_json::from_str(text).ok()?;
        while b.services.len() > MAX_BASELINE_SERVICES {
            let oldest = b
                .services
                .iter()
                .min_by_key(|(_, s)| s.last_seen_ms)
                .map(|(n, _)| n.clone())?;
            b.services.remove(&oldest);
        }
        Some(b)
    }
}

/// Counts restarts over the last [`RESTART_WINDOW_MS`] from a service's restart counter.
#[derive(Clone, Debug, Default)]
pub struct RestartWindow {
    /// (time, counter) readings within the window, oldest first.
    readings: VecDeque<(i64, u64)>,
}

/// Readings a restart window keeps: one per sample over 15 minutes at 1 s would be 900; the
/// window only needs its oldest reading, so older ones beyond this bound are dropped early.
const MAX_RESTART_READINGS: usize = 1024;

impl RestartWindow {
    /// Restarts between the oldest reading within the window and `counter` now. A counter that
    /// went down (the copy was replaced) starts the window over.
    pub fn observe(&mut self, now_ms: i64, counter: u64) -> f64 {
        if self.readings.back().is_some_and(|(_, c)| *c > counter) {
            self.readings.clear();
        }
        while self
            .readings
            .front()
            .is_some_and(|(at, _)| now_ms.saturating_sub(*at) > RESTART_WINDOW_MS)
            || self.readings.len() >= MAX_RESTART_READINGS
        {
            self.readings.pop_front();
        }
        self.readings.push_back((now_ms, counter));
        let first = self.readings.front().map_or(counter, |(_, c)| *c);
        counter.saturating_sub(first) as f64
    }
}

/// One point of the history: RTT per peer, CPU and memory per service on this node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub at_ms: i64,
    /// Peer name → smoothed RTT in milliseconds.
    pub rtt_ms: BTreeMap<String, f64>,
    /// Service → CPU as a fraction of one core since the previous sample.
    pub cpu: BTreeMap<String, f64>,
    /// Service → resident memory, bytes.
    pub memory: BTreeMap<String, u64>,
}

impl Sample {
    /// Keeps at most [`MAX_SERIES`] entries of each map (the first by name: stable across
    /// samples, so charts do not jump between series).
    pub fn bound(mut self) -> Self {
        fn cut<V>(map: &mut BTreeMap<String, V>) {
            while map.len() > MAX_SERIES {
                map.pop_last();
            }
        }
        cut(&mut self.rtt_ms);
        cut(&mut self.cpu);
        cut(&mut self.memory);
        self
    }
}

/// The last hour of samples, bounded.
#[derive(Clone, Debug)]
pub struct History {
    points: VecDeque<Sample>,
    capacity: usize,
}

impl History {
    /// A history of `span_ms` at one sample every `interval_ms` (at most
    /// [`MAX_HISTORY_POINTS`]).
    pub fn new(span_ms: u64, interval_ms: u64) -> Self {
        let capacity = (span_ms / interval_ms.max(1)).clamp(1, MAX_HISTORY_POINTS as u64) as usize;
        Self {
            points: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    pub fn push(&mut self, sample: Sample) {
        if self.points.len() >= self.capacity {
            self.points.pop_front();
        }
        self.points.push_back(sample.bound());
    }

    pub fn points(&self) -> impl Iterator<Item = &Sample> {
        self.points.iter()
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: f64 = 1024.0 * 1024.0;

    /// A deterministic noise source (xorshift), so the tests need no seed handling.
    struct Noise(u64);
    impl Noise {
        /// Uniform in [-1, 1).
        fn next(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        }
    }

    fn memory(bytes: f64) -> Readings {
        Readings {
            memory: Some(bytes),
            ..Readings::default()
        }
    }

    #[test]
    fn a_steady_service_raises_nothing_over_ten_minutes_of_noisy_samples() {
        let mut b = Baselines::default();
        let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
        let mut window = RestartWindow::default();
        // 10 minutes at one sample per second: memory breathing ±3 MiB around 40 MiB, CPU
        // between 1 and 9 % of a core with spikes to 25 %, health checks 2–8 ms, one restart.
        for s in 0..600i64 {
            let now = s * 1000;
            let restarts = u64::from(s >= 300);
            let cpu = 0.05 + 0.04 * noise.next() + if s % 97 == 0 { 0.2 } else { 0.0 };
            let found = b.observe(
                now,
                "web",
                Readings {
                    restarts: Some(window.observe(now, restarts)),
                    cpu: Some(cpu),
                    memory: Some(40.0 * MIB + 3.0 * MIB * noise.next()),
                    health_latency: Some(0.005 + 0.003 * noise.next()),
                },
            );
            assert!(found.is_empty(), "at {s} s: {found:?}");
        }
        assert_eq!(b.flag("web"), None);
    }

    #[test]
    fn a_jump_in_memory_raises_one_flag_with_the_figures_and_clears_when_it_comes_back() {
        let mut b = Baselines::default();
        let mut noise = Noise(7);
        for s in 0..60 {
            assert!(
                b.observe(s * 1000, "db", memory(40.0 * MIB + MIB * noise.next()))
                    .is_empty()
            );
        }
        let mut raised = Vec::new();
        for s in 60..120 {
            raised.extend(b.observe(s * 1000, "db", memory(400.0 * MIB + MIB * noise.next())));
        }
        assert_eq!(raised.len(), 1, "one event, not one per sample: {raised:?}");
        let a = &raised[0];
        assert!(a.raised && a.measure == Measure::Memory);
        assert!((a.mean / MIB - 40.0).abs() < 2.0, "{a:?}");
        let text = a.reason();
        assert!(
            text.starts_with("memory is 39") && text.contains("far above its baseline of 4"),
            "{text}"
        );
        assert!(b.flag("db").unwrap().contains("memory"));
        let mut cleared = Vec::new();
        for s in 120..130 {
            cleared.extend(b.observe(s * 1000, "db", memory(40.0 * MIB)));
        }
        assert_eq!(cleared.len(), 1);
        assert!(!cleared[0].raised);
        assert_eq!(b.flag("db"), None);
    }

    #[test]
    fn nothing_is_judged_before_the_warm_up() {
        let mut b = Baselines::default();
        for s in 0..i64::from(WARM_UP_SAMPLES) - 1 {
            b.observe(s, "x", memory(10.0 * MIB));
        }
        assert!(b.observe(100, "x", memory(900.0 * MIB)).is_empty());
    }

    #[test]
    fn a_single_odd_sample_is_not_an_anomaly_but_a_lasting_one_is() {
        let mut b = Baselines::default();
        let cpu = |v| Readings {
            cpu: Some(v),
            ..Readings::default()
        };
        for s in 0..40 {
            assert!(b.observe(s, "x", cpu(0.02)).is_empty());
        }
        for s in 40..40 + i64::from(FLAG_AFTER) - 1 {
            assert!(b.observe(s, "x", cpu(1.0)).is_empty(), "a burst");
        }
        assert!(b.observe(50, "x", cpu(0.02)).is_empty());
        let mut raised = Vec::new();
        for s in 60..70 {
            raised.extend(b.observe(s, "x", cpu(1.0)));
        }
        assert_eq!(raised.len(), 1);
        assert!((raised[0].mean - 0.02).abs() < 0.01, "{:?}", raised[0]);
    }

    #[test]
    fn a_restart_loop_is_flagged_and_one_crash_is_not() {
        let mut b = Baselines::default();
        let mut w = RestartWindow::default();
        let mut count = 0;
        let mut seen = Vec::new();
        for s in 0..200i64 {
            let now = s * 15_000;
            if s == 50 {
                count += 1; // one crash
            }
            if s >= 150 {
                count += 1; // a loop: a restart every sample
            }
            let restarts = Some(w.observe(now, count));
            seen.extend(b.observe(
                now,
                "loop",
                Readings {
                    restarts,
                    ..Default::default()
                },
            ));
        }
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].measure, Measure::Restarts);
        assert!(seen[0].value >= 3.0);
    }

    #[test]
    fn restart_windows_forget_old_restarts_and_start_over_on_a_new_copy() {
        let mut w = RestartWindow::default();
        assert_eq!(w.observe(0, 5), 0.0);
        assert_eq!(w.observe(60_000, 7), 2.0);
        assert_eq!(w.observe(RESTART_WINDOW_MS + 60_000, 7), 0.0);
        assert_eq!(
            w.observe(RESTART_WINDOW_MS + 61_000, 1),
            0.0,
            "counter went down"
        );
    }

    #[test]
    fn baselines_are_bounded_and_survive_their_file() {
        let mut b = Baselines::default();
        for i in 0..(MAX_BASELINE_SERVICES + 10) {
            b.observe(i as i64, &format!("s{i}"), memory(1.0));
        }
        assert_eq!(b.services.len(), MAX_BASELINE_SERVICES);
        assert!(
            !b.services.contains_key("s0"),
            "the least recently seen went first"
        );
        let back = Baselines::decode(&b.encode()).unwrap();
        assert_eq!(back, b);
        assert_eq!(Baselines::decode("{not json"), None);
        b.expire(BASELINE_TTL_MS + 100);
        assert!(b.services.len() < MAX_BASELINE_SERVICES);
    }

    #[test]
    fn histories_keep_their_span_and_bound_their_series() {
        let mut h = History::new(3_600_000, 15_000);
        assert_eq!(h.capacity(), 240);
        let mut tiny = History::new(3_600_000, 1);
        assert_eq!(tiny.capacity(), MAX_HISTORY_POINTS);
        for i in 0..300 {
            let mut s = Sample {
                at_ms: i,
                ..Sample::default()
            };
            for p in 0..(MAX_SERIES + 5) {
                s.rtt_ms.insert(format!("p{p:03}"), 1.0);
            }
            h.push(s.clone());
            tiny.push(s);
        }
        assert_eq!(h.len(), 240);
        assert_eq!(h.points().next().unwrap().at_ms, 60);
        assert_eq!(h.points().last().unwrap().rtt_ms.len(), MAX_SERIES);
    }
}
