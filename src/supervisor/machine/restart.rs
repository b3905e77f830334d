//! A service machine after its process is gone: the exit, the restart policy, backoff, giving
//! up into `failed` (and retrying at the cap), and the failure count's reset. Part of
//! [`super::ServiceMachine`]; sans-IO like it.

use super::*;

impl ServiceMachine {
    pub(super) fn on_exited(
        &mut self,
        now: Instant,
        pid: u32,
        status: ExitStatus,
        out: &mut Vec<SupervisorAction>,
    ) {
        match &self.phase {
            Phase::Running { pid: running, .. } if *running == pid => {
                self.last_exit = Some(status);
                self.audit(
                    now,
                    AuditKind::Exited,
                    format!("pid {pid} exited with {status}"),
                    out,
                );
                self.process_gone(now, FailureCause::Exited(status), out);
            }
            Phase::Stopping {
                pid: stopping,
                then,
                ..
            } if *stopping == pid => {
                let then = then.clone();
                self.last_exit = Some(status);
                if let Some(healthy_for) = self.backoff.on_not_healthy(now) {
                    self.audit_reset(now, healthy_for, out);
                }
                let reason = format!("pid {pid} stopped with {status}");
                self.audit(now, AuditKind::Stopped, reason.clone(), out);
                match then {
                    AfterStop::Idle => {
                        // Published as why it is stopped ("dependency db failed"), not how
                        // the process ended (that is `last_exit`).
                        let why = match &self.directive {
                            Directive::Stop { reason, .. } => reason.clone(),
                            _ => reason,
                        };
                        self.set_phase(Phase::Idle, &why)
                    }
                    AfterStop::RestartNow { reason } => {
                        self.set_phase(Phase::Idle, &reason);
                        self.pending_spawn = Some(PendingSpawn {
                            restart: true,
                            reason,
                        });
                    }
                    AfterStop::RestartByPolicy { cause } => {
                        self.process_gone(now, FailureCause::Unhealthy(cause), out)
                    }
                }
            }
            // An exit of a process we no longer track (already handled, or a stale report).
            _ => {}
        }
    }

    /// The process is gone on its own (exit, failed spawn, or stopped for being unhealthy):
    /// decide by policy.
    pub(super) fn process_gone(
        &mut self,
        now: Instant,
        cause: FailureCause,
        out: &mut Vec<SupervisorAction>,
    ) {
        let clean_exit = matches!(cause, FailureCause::Exited(status) if status.success());
        match self.policy {
            RestartPolicy::Never | RestartPolicy::OnFailure if clean_exit => {
                let reason = format!("{cause}; not restarting (policy {})", self.policy);
                self.backoff.on_not_healthy(now);
                self.audit(now, AuditKind::Finished, reason.clone(), out);
                self.set_phase(Phase::Finished, &reason);
            }
            RestartPolicy::Never => {
                let reason = format!("{cause}; not restarting (policy never)");
                self.backoff.on_not_healthy(now);
                self.audit(now, AuditKind::GiveUp, reason.clone(), out);
                self.set_phase(Phase::Failed { retry: None }, &reason);
            }
            RestartPolicy::Always | RestartPolicy::OnFailure => {
                self.schedule_restart(now, cause, out)
            }
        }
    }

    pub(super) fn schedule_restart(
        &mut self,
        now: Instant,
        cause: FailureCause,
        out: &mut Vec<SupervisorAction>,
    ) {
        let record = self.backoff.record_failure(now);
        if let Some(healthy_for) = record.reset_after_healthy {
            self.audit_reset(now, healthy_for, out);
        }
        let failures = record.consecutive;
        if failures < self.failed_after {
            let delay = self.backoff.next_delay();
            let at = now + delay;
            let reason = format!(
                "{cause}; restarting in {} (failure {failures} of {})",
                human_duration(delay),
                self.failed_after
            );
            self.audit(now, AuditKind::Backoff, reason.clone(), out);
            self.schedule(at, out);
            self.set_phase(Phase::Backoff { wait: Wait::At(at) }, &reason);
        } else if self.keep_retrying_when_failed {
            let delay = self.backoff.cap_delay();
            let at = now + delay;
            let (kind, reason) = if failures == self.failed_after {
                (
                    AuditKind::GiveUp,
                    format!(
                        "{cause}; failed after {failures} consecutive failures; retrying every {}",
                        human_duration(self.backoff.config().cap)
                    ),
                )
            } else {
                (
                    AuditKind::Backoff,
                    format!(
                        "{cause}; still failing ({failures} consecutive failures); retrying in {}",
                        human_duration(delay)
                    ),
                )
            };
            self.audit(now, kind, reason.clone(), out);
            self.schedule(at, out);
            self.set_phase(
                Phase::Failed {
                    retry: Some(Wait::At(at)),
                },
                &reason,
            );
        } else {
            let reason = format!(
                "{cause}; failed after {failures} consecutive failures; not retrying (keep_retrying_when_failed = false)"
            );
            self.audit(now, AuditKind::GiveUp, reason.clone(), out);
            self.set_phase(Phase::Failed { retry: None }, &reason);
        }
    }

    pub(super) fn audit_reset(
        &mut self,
        now: Instant,
        healthy_for: Duration,
        out: &mut Vec<SupervisorAction>,
    ) {
        self.audit(
            now,
            AuditKind::BackoffReset,
            format!(
                "healthy for {}; failure count reset",
                human_duration(healthy_for)
            ),
            out,
        );
    }
}
