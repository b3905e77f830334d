//! Keeping the hydrated value of the state document (and its size) up to date, and the
//! document's size bound. Part of the state actor ([`super`]); it owns no state of its own.

use super::*;

/// Most patches read one by one when bringing the hydrated value up to date; past it, the whole
/// document is read again (a big merge or an adopted epoch touch most entries anyway).
pub(super) const MAX_INCREMENTAL_PATCHES: usize = 4096;

/// Reads entry `key` of root map `map` again into `into`; returns its old and new sizes (as
/// [`crate::state::entry_bytes`] counts them). An entry that no longer fits the schema is dropped and
/// counted, as full hydration would.
pub(super) fn reread<T: autosurgeon::Hydrate + serde::Serialize>(
    doc: &AutoCommit,
    into: &mut BTreeMap<String, T>,
    map: &str,
    key: &str,
    stats: &mut HydrateStats,
) -> (u64, u64) {
    use automerge::ReadDoc;
    let old = into
        .remove(key)
        .map_or(0, |v| crate::state::entry_bytes(key, &v));
    let present = match doc.get(automerge::ROOT, map) {
        Ok(Some((automerge::Value::Object(automerge::ObjType::Map), obj))) => {
            matches!(doc.get(&obj, key), Ok(Some(_)))
        }
        _ => false,
    };
    if !present {
        return (old, 0);
    }
    match get_entry::<T>(doc, map, key) {
        Some(v) => {
            let new = crate::state::entry_bytes(key, &v);
            into.insert(key.to_string(), v);
            (old, new)
        }
        None => {
            stats.skipped_entries += 1;
            (old, 0)
        }
    }
}

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
        if !before.is_empty()
            && let Some(touched) = self.touched_entries(&before, heads)
        {
            let mut state = (*self.hydrated.1).clone();
            let mut stats = self.hydrated.2.clone();
            for (map, key) in touched {
                let (old, new) = match map.as_str() {
                    "nodes" => reread(&self.doc, &mut state.nodes, &map, &key, &mut stats),
                    "services" => reread(&self.doc, &mut state.services, &map, &key, &mut stats),
                    "instances" => reread(&self.doc, &mut state.instances, &map, &key, &mut stats),
                    "leases" => reread(&self.doc, &mut state.leases, &map, &key, &mut stats),
                    _ => (0, 0),
                };
                self.value_bytes = (self.value_bytes + new).saturating_sub(old);
            }
            self.hydrated = (heads.to_vec(), Arc::new(state), stats);
            self.note_bound();
            return;
        }
        let (state, stats) = hydrate_lenient(&self.doc);
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

    /// The `(root map, key)` entries the changes between `before` and `after` touched, from
    /// Automerge's diff; `None` when a change reaches past the entries (the root itself) or
    /// touches so many that reading everything is as cheap.
    pub(super) fn touched_entries(
        &mut self,
        before: &[ChangeHash],
        after: &[ChangeHash],
    ) -> Option<std::collections::BTreeSet<(String, String)>> {
        use automerge::PatchAction;
        use automerge::Prop;
        let patches = self.doc.diff(before, after);
        if patches.len() > MAX_INCREMENTAL_PATCHES {
            return None;
        }
        let mut touched = std::collections::BTreeSet::new();
        for p in patches {
            let entry = match (p.path.as_slice(), &p.action) {
                ([(_, Prop::Map(map))], PatchAction::PutMap { key, .. })
                | ([(_, Prop::Map(map))], PatchAction::DeleteMap { key }) => {
                    (map.clone(), key.clone())
                }
                ([(_, Prop::Map(map)), (_, Prop::Map(key)), ..], _) => (map.clone(), key.clone()),
                _ => return None,
            };
            touched.insert(entry);
        }
        Some(touched)
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
