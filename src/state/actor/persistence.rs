//! The state actor's files ([`super`]): appending and fsyncing changes, undoing a change the
//! disk refused, rewriting the file, and saving per-peer sync states.

use super::*;

impl StateActor {
    /// Appends what the file lacks and fsyncs; compacts the file when due. On error the file
    /// is left without a torn chunk and the next call retries the same changes.
    pub(super) fn persist(&mut self) -> Result<(), StateError> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        if let Err(e) = file.append(&mut self.doc) {
            let path = file.path().display().to_string();
            tracing::error!(error = %e, %path, "cannot append to the state file");
            return Err(StateError::NotDurable(format!("{path}: {e}")));
        }
        if file.needs_compaction() {
            self.rewrite_file();
        }
        Ok(())
    }

    /// Commits the open transaction as one local change and makes it durable before anyone
    /// sees it. `Ok(false)`: nothing changed. When the change cannot be written to disk it is
    /// undone in memory as well — never published, never sent — and the error says so.
    /// Counts the change this node just committed.
    pub(super) fn note_local_change(&mut self) {
        self.change_count += 1;
        if let Some(c) = self.doc.get_last_local_change() {
            self.history_bytes += c.raw_bytes().len() as u64;
        }
    }

    pub(super) fn commit_durably(&mut self, before: &[ChangeHash]) -> Result<bool, StateError> {
        if self.doc.commit().is_none() {
            return Ok(false);
        }
        self.note_local_change();
        if let Err(e) = self.persist() {
            self.roll_back_to(before);
            return Err(e);
        }
        Ok(true)
    }

    /// Undoes this node's last local change (not yet sent anywhere): the document as of
    /// `heads`, with a fresh actor id so the undone change's sequence number is never reused
    /// for different content.
    pub(super) fn roll_back_to(&mut self, heads: &[ChangeHash]) {
        match self.doc.fork_at(heads) {
            Ok(doc) => {
                self.actor_id = ActorId::random();
                self.doc = doc.with_actor(self.actor_id.clone());
                self.change_count = self.change_count.saturating_sub(1);
                self.hydrated.0.clear();
            }
            Err(e) => tracing::error!(error = %e, "cannot undo a change that was not saved"),
        }
    }

    /// Logs a failed write of a change that is kept anyway (a peer's change, or this node's
    /// record at start, both of which come back from peers or the next start).
    pub(super) fn persist_or_log(&mut self) {
        if let Err(e) = self.persist() {
            tracing::warn!(error = %e, "a change is held in memory only until the disk accepts it");
        }
    }

    pub(super) fn rewrite_file(&mut self) {
        if let Some(file) = self.file.as_mut()
            && let Err(e) = file.rewrite(&mut self.doc)
        {
            tracing::error!(error = %e, "cannot rewrite the state file; retried on the next write");
        }
    }

    pub(super) fn save_sync_states(&mut self) {
        let (Some(path), true) = (&self.sync_file, self.sync_states_dirty) else {
            return;
        };
        let map: BTreeMap<String, String> = self
            .sessions
            .encode_states()
            .into_iter()
            .map(|(k, v)| (k, hex::encode(v)))
            .collect();
        let text = serde_json::to_vec(&map).expect("a string map always serializes");
        if let Err(e) = crate::identity::write_secret_file(path, &text) {
            tracing::warn!(error = %e, "cannot save sync states");
        }
        self.sync_states_dirty = false;
    }
}
