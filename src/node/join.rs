//! The inviter's side of `/mesh/join/1` (spec: `protocol/join.md`): a device without the mesh
//! key redeems an invite's secret and receives the key.
//!
//! This is the one protocol served to peers that are not admitted. A request is counted
//! against a rate limit ([`crate::invite::JoinLimiter`]) and a bound on requests in flight
//! ([`MAX_PENDING_JOINS`]); the secret is checked by the invite store (hash, constant-time,
//! expiry, uses; the use recorded on disk) in a blocking task, and the answer comes back on a
//! bounded channel. Every attempt, accepted or refused, is logged and recorded in the audit
//! trail (`mesh events`, subject `invite`).

use super::*;

use crate::wire::join::{JoinRefusal, JoinRequest, MAX_JOINER_NAME_LEN};

/// The subject of join events in the audit trail (where a service name stands otherwise).
pub const JOIN_AUDIT_SUBJECT: &str = "invite";

impl NodeActor {
    pub(super) fn on_join_event(&mut self, ev: request_response::Event<JoinRequest, JoinResponse>) {
        match ev {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => self.on_join_request(peer, request, channel),
            request_response::Event::InboundFailure { error, .. } => {
                if matches!(error, request_response::InboundFailure::Io(_)) {
                    self.stats.malformed_inbound += 1;
                }
            }
            _ => {}
        }
    }

    fn on_join_request(
        &mut self,
        peer: PeerId,
        request: JoinRequest,
        channel: request_response::ResponseChannel<JoinResponse>,
    ) {
        // A joiner never sends Hello: its connection is not a failed admission.
        self.admission.on_join_attempt(&peer);
        let name: String = request
            .name
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_JOINER_NAME_LEN)
            .collect();
        if !self.join_limiter.allow(Instant::now().into_std())
            || self.join_pending.len() >= MAX_PENDING_JOINS
        {
            let refusal = JoinRefusal::Busy;
            audit_join(self.supervisor.as_ref(), &peer, &name, Err(&refusal));
            let _ = self
                .swarm
                .behaviour_mut()
                .join
                .send_response(channel, JoinResponse::Refused(refusal));
            return;
        }
        let token = self.next_join_token;
        self.next_join_token += 1;
        self.join_pending.insert(token, channel);
        let invites = self.invites.clone();
        let key = self.admission.key().secret_bytes().to_vec();
        let supervisor = self.supervisor.clone();
        let answers = self.join_answers_tx.clone();
        tokio::spawn(async move {
            let secret = request.secret;
            let decided = tokio::task::spawn_blocking(move || {
                invites.redeem(&secret, crate::invite::unix_now())
            })
            .await
            .unwrap_or(Err(JoinRefusal::Failed));
            audit_join(supervisor.as_ref(), &peer, &name, decided.as_ref());
            let answer = match decided {
                Ok(record) => JoinResponse::Accepted {
                    mesh_key: key,
                    invite: record.id,
                },
                Err(refusal) => JoinResponse::Refused(refusal),
            };
            let _ = answers.send((token, answer)).await;
        });
    }

    pub(super) fn on_join_answer(&mut self, token: u64, answer: JoinResponse) {
        match &answer {
            JoinResponse::Accepted { .. } => self.stats.joins_accepted += 1,
            JoinResponse::Refused(_) => self.stats.joins_refused += 1,
        }
        self.dirty = true;
        if let Some(channel) = self.join_pending.remove(&token) {
            let _ = self
                .swarm
                .behaviour_mut()
                .join
                .send_response(channel, answer);
        }
    }
}

/// Logs a join attempt and records it in the audit trail (when the node runs a supervisor).
fn audit_join(
    supervisor: Option<&SupervisorHandle>,
    peer: &PeerId,
    name: &str,
    decided: Result<&crate::invite::InviteRecord, &JoinRefusal>,
) {
    let (kind, reason) = match decided {
        Ok(record) => {
            tracing::info!(invite = %record.id, joiner = %name, %peer, "invite redeemed: mesh key handed out");
            (
                "join_accepted",
                format!(
                    "invite {} redeemed by {name:?} ({peer}); {} of {} uses",
                    record.id, record.used, record.uses
                ),
            )
        }
        Err(refusal) => {
            tracing::warn!(reason = refusal.as_str(), joiner = %name, %peer, "join refused");
            (
                "join_refused",
                format!("{} from {name:?} ({peer})", refusal.as_str()),
            )
        }
    };
    if let Some(supervisor) = supervisor {
        supervisor.record_event(JOIN_AUDIT_SUBJECT, kind, reason);
    }
}
