//! Sync messages of the state actor ([`super`]): applying what a peer sent and sending what
//! it lacks (a snapshot offer when that is too much for one message).

use super::*;

impl StateActor {
    /// Applies a sync message; on news, persists it, republishes, and forwards to other peers.
    pub(super) async fn receive(
        &mut self,
        peer: PeerId,
        bytes: &[u8],
        how: Received,
    ) -> Result<Option<Vec<u8>>, ()> {
        let before = self.doc.get_heads();
        let mine_before = self.own_record();
        let now = Instant::now().into_std();
        let applied = match how {
            Received::Request { .. } => self.sessions.on_message(peer, &mut self.doc, bytes, now),
            Received::Response => self.sessions.on_response(peer, &mut self.doc, bytes, now),
        };
        let reply = match applied {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "dropped a sync message");
                return Err(());
            }
        };
        let added_changes = self.doc.get_changes(&before);
        let added = added_changes.len();
        self.change_count += added;
        self.history_bytes += added_changes
            .iter()
            .map(|c| c.raw_bytes().len() as u64)
            .sum::<u64>();
        let repaired =
            added > 0 && self.pending_self.is_none() && self.repair_own_record(mine_before);
        if self.pending_self.is_some()
            && (self.has_own_record()
                || self.sessions.status(&peer, &self.doc.get_heads()) == SyncStatus::InSync)
        {
            self.flush_pending_self().await;
        }
        if added == 0 {
            // Their heads may have changed what `mesh state` shows.
            self.publish();
        } else {
            // Visible first (propagation latency), durable right after: a remote change lost
            // in a crash is fetched again from peers.
            self.publish();
            // Our own record repaired is a local change: to everyone. A peer's change goes on
            // to a few others (`sync::RELAY_FANOUT`): its writer pushed it to its own links.
            // Not when the peer is pushing it to every member itself.
            let others: Vec<(PeerId, Vec<u8>)> = if repaired {
                self.sessions.generate_all(&mut self.doc, now)
            } else {
                let everyone = how == (Received::Request { everyone: true });
                self.sessions.relay(&mut self.doc, peer, everyone, now)
            };
            self.send_all(others).await;
            self.persist_or_log();
        }
        Ok(reply)
    }

    pub(super) async fn send(&mut self, peer: PeerId, message: Vec<u8>) {
        let req = if message.len() > MAX_SYNC_PAYLOAD {
            // Too much for one message: offer our snapshot, which travels in parts.
            self.sessions.forget_in_flight(peer);
            SyncRequest::SnapshotOffer {
                epoch: self.epoch.clone(),
            }
        } else {
            SyncRequest::Sync {
                epoch: self.epoch.clone(),
                message,
                everyone: self.sessions.to_everyone(&peer),
            }
        };
        let _ = self.out.send(SyncOut::Request(peer, req)).await;
    }

    pub(super) async fn send_all(&mut self, msgs: Vec<(PeerId, Vec<u8>)>) {
        for (peer, msg) in msgs {
            self.send(peer, msg).await;
        }
    }
}
