//! Restart backoff: exponential, capped, jittered, deterministic for a seed.
//!
//! Owns the delay schedule and the consecutive-failure count of one service, including the
//! rule that resets the count once the service has been healthy for `reset_after`. It does
//! not decide whether to restart (the restart policy in [`super::machine`]) and reads no
//! clock: `now` is passed in.
//!
//! Formula, for the n-th consecutive failure (n ≥ 1):
//!
//! ```text
//! nominal(n) = min(cap, first_delay × factor^(n-1))
//! delay(n)   = nominal(n) × (1 − jitter × u),   u uniform in [0, 1)
//! ```
//!
//! Jitter only shortens a delay, never lengthens it, so `cap` is a true upper bound and the
//! first restart of a default service is always within 80 ms (between 72 and 80 ms); it
//! still spreads the restarts of services that crashed together.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Delay before the first restart. The promise is that a crashed service is *running again*
/// within 100 ms of its crash: the delay (72-80 ms with the default 10 % jitter) plus noticing
/// the exit and spawning (1-5 ms measured, more for a cold binary) stay under it, where a
/// 100 ms delay would overshoot by the spawn time.
pub const DEFAULT_FIRST_DELAY: Duration = Duration::from_millis(80);
/// Growth per consecutive failure: doubling reaches the cap from 80 ms in 10 failures.
pub const DEFAULT_BACKOFF_FACTOR: f64 = 2.0;
/// Longest delay, and the retry period of a `failed` service that keeps retrying: a broken
/// service costs one attempt a minute, and is back within a minute of being fixed.
pub const DEFAULT_BACKOFF_CAP: Duration = Duration::from_secs(60);
/// Fraction by which a delay may be shortened at random (10 %): enough to de-synchronise
/// services that crash together, small enough to keep the schedule readable in `mesh events`.
pub const DEFAULT_JITTER: f64 = 0.1;
/// Healthy this long without interruption, a service's failure count starts over: it has
/// proven it works, so its next crash gets a fast restart again.
pub const DEFAULT_RESET_AFTER: Duration = Duration::from_secs(30);

/// Largest exponent used in `factor^(n-1)`; beyond it every delay is the cap anyway, and
/// `powi` stays finite.
const MAX_EXPONENT: u32 = 1024;

/// Parameters of the schedule. Valid values (checked by spec validation): `first_delay > 0`,
/// `factor ≥ 1`, `cap ≥ first_delay`, `0 ≤ jitter < 1`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BackoffConfig {
    pub first_delay: Duration,
    pub factor: f64,
    pub cap: Duration,
    pub jitter: f64,
    pub reset_after: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            first_delay: DEFAULT_FIRST_DELAY,
            factor: DEFAULT_BACKOFF_FACTOR,
            cap: DEFAULT_BACKOFF_CAP,
            jitter: DEFAULT_JITTER,
            reset_after: DEFAULT_RESET_AFTER,
        }
    }
}

impl BackoffConfig {
    /// `min(cap, first_delay × factor^(failure-1))`, without jitter; `failure` counts from 1
    /// (0 is treated as 1).
    pub fn nominal_delay(&self, failure: u32) -> Duration {
        let exponent = failure.saturating_sub(1).min(MAX_EXPONENT);
        let exponent = i32::try_from(exponent).expect("bounded by MAX_EXPONENT");
        let seconds = self.first_delay.as_secs_f64() * self.factor.powi(exponent);
        if !seconds.is_finite() || seconds >= self.cap.as_secs_f64() {
            self.cap
        } else {
            Duration::from_secs_f64(seconds.max(0.0))
        }
    }

    /// Shortens `nominal` by a random fraction in `[0, jitter)`.
    pub fn jittered(&self, nominal: Duration, rng: &mut StdRng) -> Duration {
        let jitter = self.jitter.clamp(0.0, 1.0);
        if jitter == 0.0 {
            return nominal;
        }
        let unit: f64 = rng.random();
        nominal.mul_f64(1.0 - jitter * unit)
    }
}

/// What recording a failure did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailureRecord {
    /// Consecutive failures including this one.
    pub consecutive: u32,
    /// The count was reset first because the service had been healthy for this long
    /// (≥ `reset_after`).
    pub reset_after_healthy: Option<Duration>,
}

/// The backoff state of one service.
#[derive(Debug)]
pub struct Backoff {
    config: BackoffConfig,
    /// Seeded per service, so a run is reproducible from the supervisor's seed.
    rng: StdRng,
    consecutive_failures: u32,
    /// Since when the service has been healthy without interruption.
    healthy_since: Option<Instant>,
}

impl Backoff {
    pub fn new(config: BackoffConfig, seed: u64) -> Self {
        Self {
            config,
            rng: StdRng::seed_from_u64(seed),
            consecutive_failures: 0,
            healthy_since: None,
        }
    }

    pub fn config(&self) -> &BackoffConfig {
        &self.config
    }

    /// Replaces the parameters (the spec changed); keeps the count.
    pub fn set_config(&mut self, config: BackoffConfig) {
        self.config = config;
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// Forgets all failures (an operator start or restart).
    pub fn reset(&mut self) {
        self.consecutive_failures = 0;
        self.healthy_since = None;
    }

    /// The service became healthy at `now`.
    pub fn on_healthy(&mut self, now: Instant) {
        self.healthy_since.get_or_insert(now);
    }

    /// The service stopped being healthy at `now` (unhealthy, exited, stopped). If it had
    /// been healthy for `reset_after`, the failure count starts over; returns for how long
    /// it had been healthy in that case.
    pub fn on_not_healthy(&mut self, now: Instant) -> Option<Duration> {
        let since = self.healthy_since.take()?;
        let healthy_for = now.saturating_duration_since(since);
        if healthy_for >= self.config.reset_after {
            self.consecutive_failures = 0;
            Some(healthy_for)
        } else {
            None
        }
    }

    /// Counts a failure at `now` (applying the reset rule first).
    pub fn record_failure(&mut self, now: Instant) -> FailureRecord {
        let reset_after_healthy = self.on_not_healthy(now);
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        FailureRecord {
            consecutive: self.consecutive_failures,
            reset_after_healthy,
        }
    }

    /// The jittered delay for the current failure count.
    pub fn next_delay(&mut self) -> Duration {
        let nominal = self.config.nominal_delay(self.consecutive_failures);
        self.config.jittered(nominal, &mut self.rng)
    }

    /// The jittered cap: the retry period of a `failed` service.
    pub fn cap_delay(&mut self) -> Duration {
        self.config.jittered(self.config.cap, &mut self.rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_jitter() -> BackoffConfig {
        BackoffConfig {
            jitter: 0.0,
            ..BackoffConfig::default()
        }
    }

    #[test]
    fn delays_double_to_the_cap() {
        let config = no_jitter();
        let delays: Vec<u64> = (1..=12)
            .map(|n| config.nominal_delay(n).as_millis() as u64)
            .collect();
        assert_eq!(
            delays,
            [
                80, 160, 320, 640, 1280, 2560, 5120, 10240, 20480, 40960, 60000, 60000
            ]
        );
        assert_eq!(config.nominal_delay(u32::MAX), DEFAULT_BACKOFF_CAP);
        assert_eq!(config.nominal_delay(0), DEFAULT_FIRST_DELAY);
    }

    #[test]
    fn stateful_backoff_follows_the_schedule() {
        let mut backoff = Backoff::new(no_jitter(), 7);
        let t0 = Instant::now();
        let mut delays = Vec::new();
        for i in 0..11 {
            let record = backoff.record_failure(t0 + Duration::from_secs(i));
            assert_eq!(record.consecutive, i as u32 + 1);
            delays.push(backoff.next_delay().as_millis());
        }
        assert_eq!(delays.last(), Some(&60_000));
        assert_eq!(&delays[..4], [80, 160, 320, 640]);
        assert_eq!(backoff.cap_delay(), DEFAULT_BACKOFF_CAP);
    }

    #[test]
    fn first_restart_is_within_80_ms_by_default() {
        for seed in 0..1000 {
            let mut backoff = Backoff::new(BackoffConfig::default(), seed);
            backoff.record_failure(Instant::now());
            let delay = backoff.next_delay();
            assert!(delay <= Duration::from_millis(80), "seed {seed}: {delay:?}");
            assert!(delay >= Duration::from_millis(72), "seed {seed}: {delay:?}");
        }
    }

    #[test]
    fn jitter_stays_within_bounds_and_varies() {
        let config = BackoffConfig {
            jitter: 0.25,
            ..BackoffConfig::default()
        };
        let mut rng = StdRng::seed_from_u64(1);
        let nominal = Duration::from_secs(8);
        let samples: Vec<Duration> = (0..2000)
            .map(|_| config.jittered(nominal, &mut rng))
            .collect();
        assert!(
            samples
                .iter()
                .all(|d| *d <= nominal && *d >= nominal.mul_f64(0.75))
        );
        let min = samples.iter().min().expect("samples");
        let max = samples.iter().max().expect("samples");
        assert!(
            *max - *min > Duration::from_secs(1),
            "jitter spreads: {min:?}..{max:?}"
        );
        let mut cap = Backoff::new(config, 3);
        for _ in 0..100 {
            let delay = cap.cap_delay();
            assert!(delay <= DEFAULT_BACKOFF_CAP && delay >= DEFAULT_BACKOFF_CAP.mul_f64(0.75));
        }
    }

    #[test]
    fn same_seed_same_delays() {
        let run = |seed| {
            let mut backoff = Backoff::new(BackoffConfig::default(), seed);
            (0..8)
                .map(|_| {
                    backoff.record_failure(Instant::now());
                    backoff.next_delay()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn healthy_for_reset_after_starts_the_count_over() {
        let mut backoff = Backoff::new(no_jitter(), 0);
        let t0 = Instant::now();
        for _ in 0..4 {
            backoff.record_failure(t0);
        }
        assert_eq!(backoff.consecutive_failures(), 4);

        // Healthy, but not long enough: the next failure is the 5th.
        backoff.on_healthy(t0);
        let record = backoff.record_failure(t0 + DEFAULT_RESET_AFTER - Duration::from_millis(1));
        assert_eq!(
            record,
            FailureRecord {
                consecutive: 5,
                reset_after_healthy: None
            }
        );

        // Healthy for 30 s: the next failure is the 1st again, with the first delay.
        let t1 = t0 + Duration::from_secs(100);
        backoff.on_healthy(t1);
        backoff.on_healthy(t1 + Duration::from_secs(5)); // still the same healthy stretch
        let record = backoff.record_failure(t1 + DEFAULT_RESET_AFTER);
        assert_eq!(
            record,
            FailureRecord {
                consecutive: 1,
                reset_after_healthy: Some(DEFAULT_RESET_AFTER)
            }
        );
        assert_eq!(backoff.next_delay(), DEFAULT_FIRST_DELAY);

        // Becoming unhealthy after a long healthy stretch resets too, before the failure.
        let t2 = t1 + Duration::from_secs(200);
        backoff.on_healthy(t2);
        assert_eq!(
            backoff.on_not_healthy(t2 + Duration::from_secs(45)),
            Some(Duration::from_secs(45))
        );
        assert_eq!(backoff.consecutive_failures(), 0);
    }

    #[test]
    fn slower_factors_and_small_caps() {
        let config = BackoffConfig {
            first_delay: Duration::from_millis(50),
            factor: 1.5,
            cap: Duration::from_millis(120),
            jitter: 0.0,
            reset_after: DEFAULT_RESET_AFTER,
        };
        let delays: Vec<u128> = (1..=5)
            .map(|n| config.nominal_delay(n).as_millis())
            .collect();
        assert_eq!(delays, [50, 75, 112, 120, 120]);
        let constant = BackoffConfig {
            factor: 1.0,
            ..config
        };
        assert_eq!(constant.nominal_delay(100), Duration::from_millis(50));
    }
}
