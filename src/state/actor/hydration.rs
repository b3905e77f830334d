//! Keeping the hydrated value of the state document (and its size) up to date, and the
//! document's size bound. Part of the state actor ([`super`]); it owns no state of its own.

use super::*;
use crate::state::incremental;

impl StateActor {
    /// Brings the hydrated value (and its size) up to `heads`: only the entries the changes
    /// since the last hydration touched are read again (a write costs what it changed, not
    /// what the document holds); after an epoch switch, a rollback, or a change to the root
    /// itself, everything is.
    pub(super) fn ensure_hydrated(&mut self, heads: &[ChangeHash]) {
        if self.hydrated.0 == heads {
            return;
        }
        let before = self.hydrated.0.clone();
        if !before.is_empty() {
            let mut state = (*self.hydrated.1).clone();
            let mut stats = self.hydrated.2.clone();
            if let Some((old, new)) =
                incremental::update(&mut self.doc, &mut state, &mut stats, &before, heads)
            {
                self.value_bytes = (self.value_bytes + new).saturating_sub(old);
                self.hydrated = (heads.to_vec(), Arc::new(state), stats);
                self.note_bound();
                return;
            }
        }
        let (state, stats) = hydrate_lenient(&self.doc);
        incremental::mark_read(&mut self.doc, heads);
        self.value_bytes = crate::state::value_bytes(&state);
        self.hydrated = (heads.to_vec(), Arc::new(state), stats);
        self.note_bound();
    }

    /// Says so when the document's value crosses its bound (never silently): `mesh state`
    /// shows the size against the limit, and the log says who must act.
    pub(super) fn note_bound(&mut self) {
        let over = self.value_bytes > crate::state::MAX_DOCUMENT_BYTES;
        if over && !self.over_bound {
            tracing::warn!(
                value_bytes = self.value_bytes,
                limit = crate::state::MAX_DOCUMENT_BYTES,
                "the replicated document is past its bound: services and tags that grow it are \
                 refused until it shrinks (what nodes report of their instances and leases, and \
                 changes from peers, are never refused); remove services or tags, and check for \
                 an older or misbehaving agent in the mesh"
            );
        } else if !over && self.over_bound {
            tracing::info!(
                value_bytes = self.value_bytes,
                "the replicated document is back within its bound"
            );
        }
        self.over_bound = over;
    }

    /// Refuses a local write that would grow the document's value past
    /// [`crate::state::MAX_DOCUMENT_BYTES`] (`growth` bytes; shrinking always passes).
    pub(super) fn check_bound(&self, growth: i64) -> Result<(), StateError> {
        let size = self.value_bytes.saturating_add_signed(growth);
        if growth > 0 && size > crate::state::MAX_DOCUMENT_BYTES {
            return Err(StateError::DocumentTooLarge {
                size,
                limit: crate::state::MAX_DOCUMENT_BYTES,
            });
        }
        Ok(())
    }
}
