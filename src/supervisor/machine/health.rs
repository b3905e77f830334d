//! A service machine's health checks: start grace, the failure threshold into `unhealthy`,
//! and what an unhealthy service does under its restart policy. Part of
//! [`super::ServiceMachine`]; sans-IO like it.

use super::*;

impl ServiceMachine {
    pub(super) fn on_health_checked(
        &mut self,
        now: Instant,
        pid: u32,
        outcome: HealthOutcome,
        out: &mut Vec<SupervisorAction>,
    ) {
        let Some(spec) = self.health.clone() else {
            return;
        };
        let Phase::Running {
            pid: running,
            health,
        } = &mut self.phase
        else {
            return;
        };
        if *running != pid || !health.in_flight {
            return;
        }
        health.in_flight = false;
        let before = health.status;
        let mut became_unhealthy = None;
        let mut audits = Vec::new();
        match outcome {
            HealthOutcome::Passed => {
                health.failures = 0;
                health.status = HealthStatus::Healthy;
            }
            HealthOutcome::Failed { detail } => {
                let in_grace = before == HealthStatus::Starting && now < health.grace_until;
                if !in_grace && before != HealthStatus::Unhealthy {
                    health.failures += 1;
                    if health.failures == 1 {
                        audits.push((
                            AuditKind::HealthCheckFailing,
                            format!(
                                "health check failed (1 of {}): {detail}",
                                spec.failures_before_unhealthy
                            ),
                        ));
                    }
                    if health.failures >= spec.failures_before_unhealthy {
                        health.status = HealthStatus::Unhealthy;
                        became_unhealthy = Some(format!(
                            "{} consecutive health checks failed; last: {detail}",
                            health.failures
                        ));
                    }
                }
            }
        }
        // Checks come every start_interval until the first pass, then every interval.
        let next = now
            + if health.status == HealthStatus::Starting {
                spec.start_interval
            } else {
                spec.interval
            };
        health.next_check = Some(next);
        let recovered = before != HealthStatus::Healthy && health.status == HealthStatus::Healthy;
        self.schedule(next, out);
        for (kind, reason) in audits {
            self.audit(now, kind, reason, out);
        }
        if recovered {
            self.backoff.on_healthy(now);
            let reason = if before == HealthStatus::Unhealthy {
                "health check passed again".to_string()
            } else {
                "health check passed".to_string()
            };
            self.audit(now, AuditKind::Healthy, reason.clone(), out);
            self.transition_reason = reason;
        }
        if let Some(reason) = became_unhealthy {
            if let Some(healthy_for) = self.backoff.on_not_healthy(now) {
                self.audit_reset(now, healthy_for, out);
            }
            self.audit(now, AuditKind::Unhealthy, reason.clone(), out);
            self.transition_reason = reason.clone();
            self.publish_if_changed(now, out);
            if self.policy != RestartPolicy::Never {
                let stop_reason = format!("{reason}; restarting (policy {})", self.policy);
                self.begin_stop(
                    now,
                    pid,
                    AfterStop::RestartByPolicy { cause: reason },
                    &stop_reason,
                    AuditKind::Stop,
                    out,
                );
            }
        }
    }
}
