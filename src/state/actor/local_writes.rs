//! Local writes of the state actor ([`super`]): entries, tags and this node's own record
//! (held back at first start, repaired after concurrent creation). Durability is in
//! [`super::persistence`].

use super::*;

impl StateActor {
    pub(super) async fn write_entries(
        &mut self,
        mut writes: Vec<EntryWrite>,
    ) -> Result<bool, StateError> {
        let local = self.local.to_base58();
        if let Some(w) = writes.iter().find(|w| !w.owned_by(&local)) {
            return Err(StateError::NotOwned(format!("{w:?}")));
        }
        let heads = self.doc.get_heads();
        self.ensure_hydrated(&heads);
        let mut growth: i64 = 0;
        for w in &mut writes {
            if let EntryWrite::Service { name, record } = w {
                // Every writer path (API, supervisor, tests) gets lean tombstones.
                record.strip_if_removed();
                let old = self.hydrated.1.services.get(name.as_str());
                growth += crate::state::entry_bytes(name, record) as i64
                    - old.map_or(0, |o| crate::state::entry_bytes(name, o) as i64);
            }
        }
        // Services are what an operator adds without limit; instances and leases follow from
        // them (bounded per service), so refusing those would only hide what runs.
        self.check_bound(growth)?;
        self.change_durably(|doc| crate::state::apply_writes(doc, &writes))
            .await
    }

    /// Makes one change with `edit` (rolled back if it fails), commits it durably, and
    /// publishes and pushes it; answers whether the document changed.
    async fn change_durably(
        &mut self,
        edit: impl FnOnce(&mut AutoCommit) -> Result<(), StateError>,
    ) -> Result<bool, StateError> {
        let before = self.doc.get_heads();
        if let Err(e) = edit(&mut self.doc) {
            self.doc.rollback();
            return Err(e);
        }
        if !self.commit_durably(&before)? {
            return Ok(false);
        }
        self.publish_and_push().await;
        Ok(true)
    }

    pub(super) fn has_own_record(&self) -> bool {
        get_entry::<NodeRecord>(&self.doc, "nodes", &self.local.to_base58()).is_some()
    }

    /// Writes the held-back record (see [`SELF_RECORD_GRACE`]), merged with whatever the mesh
    /// already holds for us.
    pub(super) async fn flush_pending_self(&mut self) {
        let Some((record, _)) = self.pending_self.take() else {
            return;
        };
        if let Err(e) = self.write_self_record(record) {
            tracing::warn!(error = %e, "cannot write this node's record");
            return;
        }
        self.publish_and_push().await;
    }

    pub(super) async fn set_tag(
        &mut self,
        key: &str,
        value: Option<&str>,
    ) -> Result<bool, StateError> {
        let mut rec = self.own_record();
        let changed = match value {
            Some(v) => {
                validate_tag(key, v)?;
                if !rec.tags.contains_key(key) && rec.tags.len() >= crate::state::MAX_TAGS {
                    return Err(StateError::TooManyTags);
                }
                rec.tags.insert(key.to_string(), v.to_string()) != Some(v.to_string())
            }
            None => rec.tags.remove(key).is_some(),
        };
        if changed {
            let id = self.local.to_base58();
            let heads = self.doc.get_heads();
            self.ensure_hydrated(&heads);
            let old = self.hydrated.1.nodes.get(&id);
            let growth = crate::state::entry_bytes(&id, &rec) as i64
                - old.map_or(0, |o| crate::state::entry_bytes(&id, o) as i64);
            self.check_bound(growth)?;
            self.write_own(rec).await?;
        }
        Ok(changed)
    }

    /// Sets or clears this node's `drained` mark (`mesh drain` / `mesh undrain`); answers
    /// whether it changed.
    pub(super) async fn set_drained(&mut self, drained: bool) -> Result<bool, StateError> {
        let mut rec = self.own_record();
        let wanted = drained.then_some(true);
        if rec.drained == wanted {
            return Ok(false);
        }
        rec.drained = wanted;
        self.write_own(rec).await?;
        Ok(true)
    }

    /// Marks node `id` removed (`mesh remove`); answers whether it changed. Not this node
    /// (`mesh leave` is how a node goes), not a node the document does not know.
    pub(super) async fn remove_node(&mut self, id: &str) -> Result<bool, StateError> {
        let local = self.local.to_base58();
        if id == local {
            return Err(StateError::NotOwned(
                "a node cannot remove itself: stop its agent, or remove it from another member"
                    .to_string(),
            ));
        }
        let Some(mut rec) = get_entry::<NodeRecord>(&self.doc, "nodes", id) else {
            return Err(StateError::NotOwned(format!("no node {id} in the mesh")));
        };
        if rec.is_removed() {
            return Ok(false);
        }
        rec.removed_at_ms = Some(now_ms());
        rec.removed_by = Some(local);
        self.change_durably(|doc| put_entry(doc, "nodes", id, &rec))
            .await
    }

    /// Repairs concurrent creations of our own record (a node that lost its state and wrote its
    /// record before a peer sent the old one): Automerge keeps one copy whole, so the winning
    /// copy is rewritten with the tags of every copy (ours win on a clash), the earliest join
    /// time, and every other field as this run has them. Idempotent: once merged, nothing is
    /// written. Returns whether it wrote.
    pub(super) fn repair_own_record(&mut self, mine_before: NodeRecord) -> bool {
        use automerge::{ObjType, ROOT, ReadDoc, Value};
        use autosurgeon::Hydrate;
        let id = self.local.to_base58();
        let Ok(Some((Value::Object(ObjType::Map), nodes))) = self.doc.get(ROOT, "nodes") else {
            return false;
        };
        let Ok(all) = self.doc.get_all(&nodes, id.as_str()) else {
            return false;
        };
        if all.len() < 2 {
            return false;
        }
        let mine: Option<NodeRecord> = Some(mine_before);
        let mut tags = BTreeMap::new();
        let mut joined = i64::MAX;
        for (v, obj) in &all {
            if !matches!(v, Value::Object(ObjType::Map)) {
                continue;
            }
            let Ok(rec) = NodeRecord::hydrate_map(&self.doc, obj) else {
                continue;
            };
            if rec.joined_at_ms > 0 {
                joined = joined.min(rec.joined_at_ms);
            }
            tags.extend(rec.tags);
        }
        let Some(mut rec) = mine else { return false };
        tags.extend(std::mem::take(&mut rec.tags));
        rec.tags = tags;
        if joined != i64::MAX {
            rec.joined_at_ms = joined;
        }
        let ok =
            put_entry(&mut self.doc, "nodes", &id, &rec).is_ok() && self.doc.commit().is_some();
        if ok {
            self.note_local_change();
        }
        ok
    }

    pub(super) fn own_record(&self) -> NodeRecord {
        if let Some((pending, _)) = &self.pending_self {
            return pending.clone();
        }
        self.snapshot_tx
            .borrow()
            .state
            .nodes
            .get(&self.local.to_base58())
            .cloned()
            .unwrap_or_default()
    }

    /// Writes this node's record, commits, pushes to peers, and fsyncs before returning.
    pub(super) async fn write_own(&mut self, record: NodeRecord) -> Result<(), StateError> {
        if let Some((pending, deadline)) = self.pending_self.take() {
            // A local write before any peer answered: the record is written now after all.
            let mut merged = record;
            merged.joined_at_ms = pending.joined_at_ms;
            if let Err(e) = self.write_self_record_keep_tags(merged) {
                self.pending_self = Some((pending, deadline));
                return Err(e);
            }
            self.publish();
            let msgs = self
                .sessions
                .generate_all(&mut self.doc, Instant::now().into_std());
            self.send_all(msgs).await;
            return Ok(());
        }
        let before = self.doc.get_heads();
        if let Err(e) = put_entry(&mut self.doc, "nodes", &self.local.to_base58(), &record) {
            self.doc.rollback();
            return Err(e);
        }
        if self.commit_durably(&before)? {
            self.publish_and_push().await;
        }
        Ok(())
    }

    /// Like [`StateActor::write_self_record`], but with the tags of `record` itself.
    pub(super) fn write_self_record_keep_tags(
        &mut self,
        mut record: NodeRecord,
    ) -> Result<(), StateError> {
        if record.joined_at_ms <= 0 {
            record.joined_at_ms = now_ms();
        }
        let before = self.doc.get_heads();
        if let Err(e) = put_entry(&mut self.doc, "nodes", &self.local.to_base58(), &record) {
            self.doc.rollback();
            return Err(e);
        }
        self.commit_durably(&before)?;
        Ok(())
    }

    /// At start: this node's record, keeping tags and first-join time from the document.
    pub(super) fn write_self_record(&mut self, mut record: NodeRecord) -> Result<(), StateError> {
        let existing = get_entry::<NodeRecord>(&self.doc, "nodes", &self.local.to_base58());
        record.tags = existing
            .as_ref()
            .map(|r| r.tags.clone())
            .unwrap_or_default();
        record.joined_at_ms = existing
            .as_ref()
            .map(|r| r.joined_at_ms)
            .filter(|t| *t > 0)
            .unwrap_or_else(now_ms);
        record.left_at_ms = None;
        // A drained node stays drained across restarts, until `mesh undrain`.
        record.drained = existing.as_ref().and_then(|r| r.drained);
        put_entry(&mut self.doc, "nodes", &self.local.to_base58(), &record)?;
        if self.doc.commit().is_some() {
            self.note_local_change();
            self.persist_or_log();
        }
        Ok(())
    }

    /// Republishes the snapshot and sends every connected peer what it is missing.
    pub(super) async fn publish_and_push(&mut self) {
        self.publish();
        let msgs = self
            .sessions
            .generate_all(&mut self.doc, Instant::now().into_std());
        self.send_all(msgs).await;
    }
}
