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

/// The `(root map, key)` entries the changes between `before` and `after` touched, from
/// Automerge's diff; `None` when a change reaches past the entries (the root itself) or
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
    Some((old, new))
}
