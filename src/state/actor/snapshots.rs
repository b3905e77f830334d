//! Whole-document transfers of the state actor ([`super`]): serving and fetching snapshots in
//! parts, merging or adopting them, and compaction into a new epoch. It does not own the sync
//! sessions (see [`super::sync_sessions`]).

use super::*;

impl StateActor {
    /// Starts fetching `peer`'s snapshot in parts, unless a fetch is already under way.
    pub(super) async fn fetch_snapshot(&mut self, peer: PeerId) {
        let now = Instant::now();
        if self
            .fetching
            .as_ref()
            .is_some_and(|f| now.duration_since(f.since) < FETCH_TIMEOUT)
        {
            return;
        }
        self.fetching = Some(SnapshotFetch {
            peer,
            since: now,
            id: None,
            buf: Vec::new(),
        });
        let _ = self
            .out
            .send(SyncOut::Request(
                peer,
                SyncRequest::FetchSnapshotPart {
                    offset: 0,
                    id: None,
                },
            ))
            .await;
    }

    /// Serves one part of our snapshot: a new snapshot for a first part (reused while our
    /// heads stay the same), else the one the requester started on.
    pub(super) fn snapshot_part(&mut self, offset: u64, id: Option<u64>) -> SyncResponse {
        let heads = self.doc.get_heads();
        if id.is_none() && self.served.as_ref().is_none_or(|s| s.heads != heads) {
            let bytes = self.doc.save();
            self.served = Some(ServedSnapshot {
                id: self.next_snapshot_id,
                heads,
                bytes: Arc::new(bytes),
            });
            self.next_snapshot_id += 1;
        }
        let Some(served) = self
            .served
            .as_ref()
            .filter(|s| id.is_none_or(|id| id == s.id))
        else {
            // That snapshot is gone (our document changed): the requester starts over.
            return SyncResponse::Refused;
        };
        let total = served.bytes.len() as u64;
        if total > MAX_SNAPSHOT_BYTES || offset > total {
            return SyncResponse::Refused;
        }
        let start = offset as usize;
        let end = (start + SNAPSHOT_PART_BYTES).min(served.bytes.len());
        SyncResponse::SnapshotPart {
            epoch: self.epoch.clone(),
            id: served.id,
            total,
            offset,
            bytes: served.bytes[start..end].to_vec(),
        }
    }

    /// A part of the snapshot we are fetching: append it, ask for the next, or use the whole.
    pub(super) async fn on_snapshot_part(
        &mut self,
        peer: PeerId,
        epoch: EpochId,
        id: u64,
        total: u64,
        offset: u64,
        bytes: Vec<u8>,
    ) {
        let now = Instant::now();
        let Some(fetch) = self.fetching.as_mut().filter(|f| f.peer == peer) else {
            return;
        };
        let fits = total <= MAX_SNAPSHOT_BYTES
            && offset == fetch.buf.len() as u64
            && fetch.id.is_none_or(|i| i == id)
            && !bytes.is_empty()
            && offset + bytes.len() as u64 <= total;
        if !fits {
            self.fetching = None;
            let why = if total > MAX_SNAPSHOT_BYTES {
                format!("its snapshot ({total} bytes) is larger than {MAX_SNAPSHOT_BYTES}")
            } else {
                "its snapshot changed or came out of order; retrying".to_string()
            };
            self.sessions
                .on_send_failed(peer, now.into_std(), why.clone());
            tracing::debug!(%peer, %why, "snapshot fetch abandoned");
            self.publish();
            return;
        }
        fetch.id = Some(id);
        fetch.since = now;
        fetch.buf.extend_from_slice(&bytes);
        if (fetch.buf.len() as u64) < total {
            let next = SyncRequest::FetchSnapshotPart {
                offset: fetch.buf.len() as u64,
                id: Some(id),
            };
            let _ = self.out.send(SyncOut::Request(peer, next)).await;
            return;
        }
        let Some(fetch) = self.fetching.take() else {
            return;
        };
        self.on_snapshot(peer, epoch, fetch.buf).await;
    }

    /// A whole snapshot from `peer`: adopted if its epoch supersedes ours, merged if it is ours.
    pub(super) async fn on_snapshot(&mut self, peer: PeerId, epoch: EpochId, bytes: Vec<u8>) {
        let result = if epoch.supersedes(&self.epoch) {
            self.adopt(peer, &epoch, &bytes).await
        } else if epoch == self.epoch {
            self.merge_snapshot(peer, &bytes).await
        } else {
            Ok(())
        };
        if let Err(e) = result {
            tracing::warn!(%peer, error = %e, "cannot use the peer's state snapshot");
            self.sessions
                .on_send_failed(peer, Instant::now().into_std(), e.to_string());
            self.publish();
        }
    }

    /// Merges a snapshot of our own epoch (the peer had more for us than fits one message).
    pub(super) async fn merge_snapshot(
        &mut self,
        peer: PeerId,
        bytes: &[u8],
    ) -> Result<(), StateError> {
        let mut other = AutoCommit::load(bytes)
            .map_err(|e| StateError::Load(format!("snapshot from {peer}: {e}")))?;
        let theirs = epoch_of(&mut other);
        if theirs != self.epoch {
            return Err(StateError::Load(format!(
                "snapshot from {peer} is epoch {theirs}, not ours ({})",
                self.epoch
            )));
        }
        let before = self.doc.get_heads();
        self.doc.merge(&mut other)?;
        let added = self.doc.get_changes(&before);
        self.change_count += added.len();
        self.history_bytes += added
            .iter()
            .map(|c| c.raw_bytes().len() as u64)
            .sum::<u64>();
        tracing::info!(%peer, changes = added.len(), bytes = bytes.len(), "merged a peer's state snapshot");
        let now = Instant::now().into_std();
        // Everyone (the sender too) learns our new heads just below.
        let _ = self.sessions.on_delivered(peer, &mut self.doc, now);
        if !added.is_empty() {
            self.publish();
            self.persist_or_log();
        }
        // Everyone (the sender too) learns our new heads; what is left is small.
        let msgs = self.sessions.generate_all(&mut self.doc, now);
        self.send_all(msgs).await;
        self.publish();
        Ok(())
    }

    /// Switches to a newer epoch received from `peer`, carrying over what only we knew.
    pub(super) async fn adopt(
        &mut self,
        peer: PeerId,
        epoch: &EpochId,
        bytes: &[u8],
    ) -> Result<(), StateError> {
        let mut new = AutoCommit::load(bytes)
            .map_err(|e| StateError::Load(format!("snapshot from {peer}: {e}")))?
            .with_actor(self.actor_id.clone());
        let actual = epoch_of(&mut new);
        if actual != *epoch || !actual.supersedes(&self.epoch) {
            return Err(StateError::Load(format!(
                "snapshot from {peer} is epoch {actual}, announced {epoch}"
            )));
        }
        let (old, _) = hydrate_lenient(&self.doc);
        migrate_into(&old, &mut new, &self.local.to_base58())?;
        tracing::info!(from = %self.epoch, to = %actual, via = %peer, "adopted a new state epoch");
        self.switch_epoch(new, actual).await;
        Ok(())
    }

    /// Compacts into a new epoch when due (or when forced): past [`COMPACT_AT_CHANGES`], at most
    /// every [`MIN_COMPACT_INTERVAL`], by the leader (lowest node id among this node and its
    /// connected peers), once every connected peer is in sync — so members rarely compact at
    /// once, and when they do the epoch order picks one winner.
    pub(super) async fn maybe_compact(&mut self, force: bool) -> Result<bool, StateError> {
        let now = Instant::now();
        if !force {
            if (self.change_count < COMPACT_AT_CHANGES
                && self.history_bytes < crate::state::COMPACT_AT_HISTORY_BYTES)
                || self
                    .last_compaction
                    .is_some_and(|t| now.duration_since(t) < MIN_COMPACT_INTERVAL)
            {
                return Ok(false);
            }
            let heads = self.doc.get_heads();
            let connected = self.sessions.connected_peers();
            let leader = connected.iter().all(|p| self.local < *p);
            let in_sync = connected
                .iter()
                .all(|p| self.sessions.status(p, &heads) == SyncStatus::InSync);
            if !leader || !in_sync {
                return Ok(false);
            }
        }
        let mut new = compact(&mut self.doc, self.actor_id.clone())?;
        let epoch = epoch_of(&mut new);
        tracing::info!(from = %self.epoch, to = %epoch, "compacted the state into a new epoch");
        self.last_compaction = Some(now);
        self.switch_epoch(new, epoch).await;
        Ok(true)
    }

    /// Replaces the document: new sync sessions (heads share nothing with the old epoch), the
    /// file rewritten, readers and peers told.
    pub(super) async fn switch_epoch(&mut self, mut doc: AutoCommit, epoch: EpochId) {
        (self.change_count, self.history_bytes) = history_of(&mut doc);
        self.doc = doc;
        // The old heads mean nothing in the new document: read it whole.
        self.hydrated.0.clear();
        self.epoch = epoch;
        let connected = self.sessions.connected_peers();
        let stats = self.sessions.stats().clone();
        self.sessions = SyncSessions::with_stats(stats);
        self.rewrite_file();
        self.sync_states_dirty = true;
        self.publish();
        let now = Instant::now().into_std();
        for peer in connected {
            if let Some(msg) = self.sessions.on_peer_up(peer, &mut self.doc, now) {
                self.send(peer, msg).await;
            }
        }
    }
}
