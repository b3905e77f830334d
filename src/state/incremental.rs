//! Bringing a hydrated value of the document up to date change by change: only the entries
//! the changes since the last read touched are read again, so a write costs what it changed,
//! not what the document holds. Used by the state actor and by `mesh sim`'s nodes.

use std::collections::BTreeMap;

use automerge::{AutoCommit, ChangeHash};

use crate::state::{HydrateStats, MeshState, get_entry};

/// Most patches read one by one when bringing the hydrated value up to date; past it, the whole
/// document is read again (a big merge or an adopted epoch touch most entries anyway).
pub const MAX_INCREMENTAL_PATCHES: usize = 4096;

/// Reads entry `key` of root map `map` again into `into`; returns its old and new sizes (as
/// [`crate::state::entry_bytes`] counts them). An entry that no longer fits the schema is dropped and
/// counted, as full hydration would.
pub fn reread<T: autosurgeon::Hydrate + serde::Serialize>(
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

/// Marks `heads` as read: when they are the document's current heads, Automerge indexes every
/// change from now on (its diff cursor), so that the next [`touched_entries`] from these heads
/// to the then current ones costs what changed. Without the index, each diff computed the
/// clocks of both ends and walked the document: in `mesh sim`'s full stack at 100 nodes, a
/// fifth of the wall time during a partition's heal.
pub fn mark_read(doc: &mut AutoCommit, heads: &[ChangeHash]) {
    if doc.get_heads() == heads {
        doc.update_diff_cursor();
    }
}

/// The `(root map, key)` entries the changes between `before` and `after` touched, from
/// Automerge's diff (indexed when `before` was marked read, see [`mark_read`]); `None` when a change reaches past the entries (the root itself) or
/// touches so many that reading everything is as cheap.
pub fn touched_entries(
    doc: &mut AutoCommit,
    before: &[ChangeHash],
    after: &[ChangeHash],
) -> Option<std::collections::BTreeSet<(String, String)>> {
    use automerge::PatchAction;
    use automerge::Prop;
    let patches = doc.diff(before, after);
    if patches.len() > MAX_INCREMENTAL_PATCHES {
        return None;
    }
    let mut touched = std::collections::BTreeSet::new();
    for p in patches {
        let entry = match (p.path.as_slice(), &p.action) {
            ([(_, Prop::Map(map))], PatchAction::PutMap { key, .. })
            | ([(_, Prop::Map(map))], PatchAction::DeleteMap { key }) => (map.clone(), key.clone()),
            ([(_, Prop::Map(map)), (_, Prop::Map(key)), ..], _) => (map.clone(), key.clone()),
            _ => return None,
        };
        touched.insert(entry);
    }
    Some(touched)
}

/// Re-reads into `state` the entries the changes from `before` to `after` touched; returns the
/// bytes (as [`crate::state::entry_bytes`] counts them) of the entries as they were and as they
/// are, or `None` when everything must be read again (an epoch switch, a rollback, a change to
/// the root, or more than [`MAX_INCREMENTAL_PATCHES`] patches).
pub fn update(
    doc: &mut AutoCommit,
    state: &mut MeshState,
    stats: &mut HydrateStats,
    before: &[ChangeHash],
    after: &[ChangeHash],
) -> Option<(u64, u64)> {
    let touched = touched_entries(doc, before, after)?;
    let (mut old, mut new) = (0, 0);
    for (map, key) in touched {
        let (o, n) = match map.as_str() {
            "nodes" => reread(doc, &mut state.nodes, &map, &key, stats),
            "services" => reread(doc, &mut state.services, &map, &key, stats),
            "instances" => reread(doc, &mut state.instances, &map, &key, stats),
            "leases" => reread(doc, &mut state.leases, &map, &key, stats),
            _ => (0, 0),
        };
        old += o;
        new += n;
    }
    mark_read(doc, after);
    Some((old, new))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{NodeRecord, genesis, hydrate_lenient, put_entry};
    use automerge::ActorId;

    fn node(name: &str) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            ..Default::default()
        }
    }

    /// Through the diff cursor (local writes, a delete, changes merged from a peer, and a
    /// round with nothing new), the value read change by change equals a full read.
    #[test]
    fn reads_through_the_cursor_equal_a_full_read() {
        let mut doc = genesis(ActorId::random());
        let mut peer = doc.fork().with_actor(ActorId::random());
        let mut state = hydrate_lenient(&doc).0;
        let mut stats = HydrateStats::default();
        let mut read = doc.get_heads();
        mark_read(&mut doc, &read);
        for round in 0..6 {
            put_entry(&mut doc, "nodes", &format!("n{round}"), &node("local")).unwrap();
            doc.commit();
            if round == 3 {
                use automerge::ReadDoc;
                use automerge::transaction::Transactable;
                let (_, nodes) = doc.get(automerge::ROOT, "nodes").unwrap().unwrap();
                doc.delete(&nodes, "n1").unwrap();
                doc.commit();
            }
            put_entry(&mut peer, "nodes", &format!("p{round}"), &node("peer")).unwrap();
            peer.commit();
            if round % 2 == 0 {
                doc.merge(&mut peer).unwrap();
            }
            let heads = doc.get_heads();
            assert!(update(&mut doc, &mut state, &mut stats, &read, &heads).is_some());
            read = heads;
            assert_eq!(state, hydrate_lenient(&doc).0, "round {round}");
        }
        // Nothing new: nothing touched.
        let heads = doc.get_heads();
        assert_eq!(
            touched_entries(&mut doc, &read, &heads),
            Some(Default::default())
        );
    }
}
