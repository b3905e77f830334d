//! The sampler: one task that, every interval, reads this node's peers' RTT (its snapshot),
//! its services' processes (`/proc`: CPU, resident memory), restart counters (the document)
//! and health-check latencies (the supervisor), appends a [`Sample`] to the history, and feeds
//! the baselines ([`crate::insight::Baselines`]). A flag raised or cleared becomes an
//! `anomaly` / `anomaly-cleared` event in this node's audit trail and the copy's instance
//! record (through the supervisor, the record's one writer).
//!
//! Inputs: the node handle, a tick. Outputs: the [`InsightHandle`] readers (history, the last
//! sample on a `watch` for live pages), events, flags, and the baselines file
//! (`DATA_DIR/baselines.json`, written atomically every [`PERSIST_EVERY`] samples with a
//! change and at shutdown, read at start). Costs a few `/proc` reads per service per interval
//! (15 s by default), whether or not anyone looks.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Baselines, History, Readings, RestartWindow, Sample};
use crate::identity::NodeId;
use crate::node::NodeHandle;
use crate::supervisor::actor::CheckTimes;

/// Default time between samples: 240 points make the hour of the dashboard's charts, and a
/// baseline's half hour is 120 samples.
pub const DEFAULT_SAMPLE_INTERVAL: Duration = Duration::from_secs(15);
/// The span of the history the charts show.
pub const HISTORY_SPAN: Duration = Duration::from_secs(3600);
/// Samples between writes of the baselines file (when they changed): 5 minutes at the default
/// interval, so a crash loses at most that much learning.
pub const PERSIST_EVERY: u32 = 20;
/// The baselines file in the data dir.
pub const BASELINES_FILE: &str = "baselines.json";
/// Largest baselines file read at start (256 services × 4 measures is ~60 KiB).
const MAX_BASELINES_FILE: u64 = 1024 * 1024;

/// How the sampler runs.
#[derive(Clone, Debug)]
pub struct SamplerConfig {
    pub interval: Duration,
    /// Where the baselines file lives; `None`: kept in memory only.
    pub data_dir: Option<PathBuf>,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            interval: DEFAULT_SAMPLE_INTERVAL,
            data_dir: None,
        }
    }
}

/// Readers of the sampler's results (cloneable).
#[derive(Clone, Debug)]
pub struct InsightHandle {
    history: Arc<Mutex<History>>,
    latest: watch::Receiver<Option<Arc<Sample>>>,
    interval: Duration,
}

impl InsightHandle {
    /// The samples of the last hour, oldest first.
    pub fn history(&self) -> Vec<Sample> {
        self.history
            .lock()
            .expect("the history lock is never poisoned")
            .points()
            .cloned()
            .collect()
    }

    /// The latest sample, changed once per interval.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Sample>>> {
        self.latest.clone()
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }
}

/// CPU seconds (user + system) and resident bytes of process `pid`, from `/proc`.
pub fn process_usage(pid: i64) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces and parentheses): the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the command.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .unwrap_or(100) as f64;
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .filter(|p| *p > 0)
        .unwrap_or(4096) as u64;
    Some((ticks as f64 / per_second, pages * page))
}

/// Starts the sampler; it ends when `shutdown` is cancelled (writing its baselines).
pub fn spawn_sampler(
    node: NodeHandle,
    config: SamplerConfig,
    shutdown: CancellationToken,
) -> (InsightHandle, JoinHandle<()>) {
    let interval = config.interval.max(Duration::from_millis(10));
    let history = Arc::new(Mutex::new(History::new(
        HISTORY_SPAN.as_millis() as u64,
        interval.as_millis() as u64,
    )));
    let (latest_tx, latest) = watch::channel(None);
    let baselines = config
        .data_dir
        .as_ref()
        .map(|dir| load_baselines(&dir.join(BASELINES_FILE)))
        .unwrap_or_default();
    let actor = Sampler {
        node,
        path: config.data_dir.map(|d| d.join(BASELINES_FILE)),
        interval,
        history: history.clone(),
        latest: latest_tx,
        baselines,
        restarts: BTreeMap::new(),
        cpu: BTreeMap::new(),
        checks: BTreeMap::new(),
        dirty: 0,
    };
    let task = tokio::spawn(actor.run(shutdown));
    (
        InsightHandle {
            history,
            latest,
            interval,
        },
        task,
    )
}

/// Reads the baselines file; a missing one starts empty, an unreadable one is said and
/// started afresh (learning again costs a few minutes, refusing to start would cost more).
fn load_baselines(path: &std::path::Path) -> Baselines {
    use std::io::Read;
    let text = match std::fs::File::open(path) {
        Ok(f) => {
            let mut text = String::new();
            match f.take(MAX_BASELINES_FILE).read_to_string(&mut text) {
                Ok(_) => text,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read the anomaly baselines; learning them again");
                    return Baselines::default();
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Baselines::default(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot open the anomaly baselines; learning them again");
            return Baselines::default();
        }
    };
    // Flags are raised again if still warranted: the published ones went with the last run.
    let mut baselines = Baselines::decode(&text).unwrap_or_else(|| {
        tracing::warn!(path = %path.display(), "the anomaly baselines file is malformed; learning them again");
        Baselines::default()
    });
    for service in baselines.services.values_mut() {
        for measure in service.measures.values_mut() {
            measure.flagged = false;
        }
    }
    baselines
}

struct Sampler {
    node: NodeHandle,
    path: Option<PathBuf>,
    interval: Duration,
    history: Arc<Mutex<History>>,
    latest: watch::Sender<Option<Arc<Sample>>>,
    baselines: Baselines,
    /// Restart windows by service.
    restarts: BTreeMap<String, RestartWindow>,
    /// Last CPU reading by service: (pid, CPU seconds, when).
    cpu: BTreeMap<String, (i64, f64, tokio::time::Instant)>,
    /// Last health-check totals by service: (count, sum of seconds).
    checks: BTreeMap<String, (u64, f64)>,
    /// Samples since the baselines were last written, with a change.
    dirty: u32,
}

impl Sampler {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => self.sample().await,
            }
        }
        if self.dirty > 0 {
            self.persist().await;
        }
    }

    async fn sample(&mut self) {
        let now = tokio::time::Instant::now();
        let now_ms = crate::state::now_ms();
        let snap = self.node.snapshot();
        let state = self.node.state().snapshot();
        let local = NodeId::from(snap.local.peer_id);
        let mut sample = Sample {
            at_ms: now_ms,
            ..Sample::default()
        };
        for p in &snap.peers {
            if let Some(rtt) = p.rtt {
                let name = p
                    .info
                    .as_ref()
                    .map_or_else(|| p.peer_id.to_base58(), |i| i.name.clone());
                sample
                    .rtt_ms
                    .insert(name, (rtt.as_secs_f64() * 1e4).round() / 10.0);
            }
        }
        let checks: BTreeMap<String, CheckTimes> = self
            .node
            .supervisor()
            .map(|s| s.check_times())
            .unwrap_or_default();
        let mut readings: Vec<(String, Readings)> = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for inst in state.state.instances.values().filter(|i| i.node == local) {
            let service = inst.service.clone();
            seen.insert(service.clone());
            let mut r = Readings {
                restarts: Some(
                    self.restarts
                        .entry(service.clone())
                        .or_default()
                        .observe(now_ms, inst.restarts),
                ),
                ..Readings::default()
            };
            if let Some(pid) = inst.pid
                && let Some((cpu_s, rss)) = process_usage(pid)
            {
                r.memory = Some(rss as f64);
                sample.memory.insert(service.clone(), rss);
                if let Some((last_pid, last_cpu, at)) = self.cpu.get(&service)
                    && *last_pid == pid
                {
                    let wall = now.saturating_duration_since(*at).as_secs_f64();
                    if wall > 0.0 {
                        let share = ((cpu_s - last_cpu) / wall).max(0.0);
                        r.cpu = Some(share);
                        sample
                            .cpu
                            .insert(service.clone(), (share * 1000.0).round() / 1000.0);
                    }
                }
                self.cpu.insert(service.clone(), (pid, cpu_s, now));
            } else {
                self.cpu.remove(&service);
            }
            if let Some(t) = checks.get(&service) {
                let (count, sum) = self.checks.get(&service).copied().unwrap_or((0, 0.0));
                if t.count > count {
                    r.health_latency = Some((t.sum_seconds - sum) / (t.count - count) as f64);
                }
                self.checks
                    .insert(service.clone(), (t.count, t.sum_seconds));
            }
            readings.push((service, r));
        }
        self.restarts.retain(|s, _| seen.contains(s));
        self.cpu.retain(|s, _| seen.contains(s));
        self.checks.retain(|s, _| seen.contains(s));

        let mut flags: BTreeMap<String, Option<String>> = BTreeMap::new();
        for (service, r) in readings {
            for anomaly in self.baselines.observe(now_ms, &service, r) {
                let kind = if anomaly.raised {
                    "anomaly"
                } else {
                    "anomaly-cleared"
                };
                let reason = anomaly.reason();
                tracing::warn!(%service, %reason, "{kind}");
                if let Some(s) = self.node.supervisor() {
                    s.record_event(&service, kind, reason);
                }
                flags.insert(service.clone(), self.baselines.flag(&service));
            }
        }
        if let Some(s) = self.node.supervisor() {
            for (service, flag) in flags {
                s.set_anomaly(&service, flag).await;
            }
        }
        if !seen.is_empty() {
            self.dirty += 1;
        }
        self.baselines.expire(now_ms);
        let sample = Arc::new(sample);
        self.history
            .lock()
            .expect("the history lock is never poisoned")
            .push((*sample).clone());
        self.latest.send_replace(Some(sample));
        if self.dirty >= PERSIST_EVERY {
            self.persist().await;
        }
    }

    /// Writes the baselines file (atomically: a crash leaves the old one or the new one).
    async fn persist(&mut self) {
        let Some(path) = self.path.clone() else {
            return;
        };
        let text = self.baselines.encode();
        let written = tokio::task::spawn_blocking(move || {
            crate::identity::write_secret_file(&path, text.as_bytes())
        })
        .await;
        match written {
            Ok(Ok(())) => self.dirty = 0,
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot write the anomaly baselines"),
            Err(e) => tracing::warn!(error = %e, "cannot write the anomaly baselines"),
        }
    }
}
