//! Property tests of merging concurrent schema edits, on the pure functions of `mesh::state`
//! (no actor, no network): a base document is forked into 2-3 replicas, each replica applies a
//! random sequence of edits the way the state actor does (hydrate the record, change it,
//! `put_entry` or `delete_entry`, commit), and the replicas are merged in every order.
//!
//! Properties:
//! - every merge order gives the same heads and hydrates to the same [`MeshState`], with no
//!   entry skipped, and the result survives the file format (full save plus incremental chunks);
//! - a node record touched by exactly one replica ends up as that replica left it;
//! - a tag touched by exactly one replica, on a record every replica kept, ends up as that
//!   replica left it, whatever the others did to the record's other fields and tags.

use std::collections::{BTreeMap, BTreeSet};

use automerge::{ActorId, AutoCommit};
use mesh::state::{MeshState, NodeRecord, delete_entry, genesis, hydrate_lenient, put_entry};
use proptest::prelude::*;

/// Node records the edits address. Records `0..BASE_NODES` exist in the base document; the
/// others are created by edits (so replicas may create the same record concurrently).
const NODES: usize = 4;
const BASE_NODES: usize = 3;
/// Tag keys and values drawn from small sets, so replicas often touch the same ones.
const KEYS: usize = 4;
const VALUES: usize = 4;

#[derive(Debug, Clone)]
enum Edit {
    SetTag {
        node: usize,
        key: usize,
        value: usize,
    },
    RemoveTag {
        node: usize,
        key: usize,
    },
    SetName {
        node: usize,
        name: usize,
    },
    SetAddrs {
        node: usize,
        addrs: Vec<u16>,
    },
    DeleteRecord {
        node: usize,
    },
}

impl Edit {
    fn node(&self) -> usize {
        match self {
            Edit::SetTag { node, .. }
            | Edit::RemoveTag { node, .. }
            | Edit::SetName { node, .. }
            | Edit::SetAddrs { node, .. }
            | Edit::DeleteRecord { node } => *node,
        }
    }

    fn tag_key(&self) -> Option<usize> {
        match self {
            Edit::SetTag { key, .. } | Edit::RemoveTag { key, .. } => Some(*key),
            _ => None,
        }
    }
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (0..NODES, 0..KEYS, 0..VALUES)
            .prop_map(|(node, key, value)| Edit::SetTag { node, key, value }),
        2 => (0..NODES, 0..KEYS).prop_map(|(node, key)| Edit::RemoveTag { node, key }),
        1 => (0..NODES, 0..3usize).prop_map(|(node, name)| Edit::SetName { node, name }),
        1 => (0..NODES, prop::collection::vec(1u16..5, 0..3))
            .prop_map(|(node, addrs)| Edit::SetAddrs { node, addrs }),
        1 => (0..NODES).prop_map(|node| Edit::DeleteRecord { node }),
    ]
}

fn node_id(n: usize) -> String {
    format!("node-{n}")
}

fn tag_key(k: usize) -> String {
    format!("k{k}")
}

/// Applies one edit as the state actor does: read this replica's record, change it, write it
/// back (only differences become operations), commit.
fn apply(doc: &mut AutoCommit, edit: &Edit) {
    let id = node_id(edit.node());
    let mut record = hydrate_lenient(doc)
        .0
        .nodes
        .get(&id)
        .cloned()
        .unwrap_or_default();
    match edit {
        Edit::SetTag { key, value, .. } => {
            record.tags.insert(tag_key(*key), format!("v{value}"));
        }
        Edit::RemoveTag { key, .. } => {
            record.tags.remove(&tag_key(*key));
        }
        Edit::SetName { name, .. } => record.name = format!("name-{name}").into(),
        Edit::SetAddrs { addrs, .. } => {
            record.addrs = addrs
                .iter()
                .map(|p| format!("/ip4/10.0.0.1/udp/{p}/quic-v1"))
                .collect();
        }
        Edit::DeleteRecord { .. } => {
            delete_entry(doc, "nodes", &id).expect("delete on a valid document");
            doc.commit();
            return;
        }
    }
    put_entry(doc, "nodes", &id, &record).expect("write on a valid document");
    doc.commit();
}

fn base_document() -> AutoCommit {
    let mut doc = genesis(ActorId::random());
    for n in 0..BASE_NODES {
        let record = NodeRecord {
            name: format!("base-{n}").into(),
            addrs: vec![format!("/ip4/10.0.0.{n}/udp/7000/quic-v1")],
            tags: [
                (tag_key(0), "base".to_string()),
                (tag_key(1), "base".to_string()),
            ]
            .into(),
            joined_at_ms: 1_000 + n as i64,
            ..Default::default()
        };
        put_entry(&mut doc, "nodes", &node_id(n), &record).unwrap();
        doc.commit();
    }
    doc
}

fn sorted_heads(doc: &mut AutoCommit) -> Vec<automerge::ChangeHash> {
    let mut h = doc.get_heads();
    h.sort();
    h
}

/// Merges `replicas` into a copy of the first in the order given by `order`.
fn merge_in_order(replicas: &[AutoCommit], order: &[usize]) -> AutoCommit {
    let mut merged = replicas[order[0]].clone();
    for &i in &order[1..] {
        let mut other = replicas[i].clone();
        merged
            .merge(&mut other)
            .expect("replicas of one document merge");
    }
    merged
}

/// All permutations of `0..n` (n <= 3).
fn permutations(n: usize) -> Vec<Vec<usize>> {
    let mut out = vec![vec![]];
    for _ in 0..n {
        out = out
            .into_iter()
            .flat_map(|p: Vec<usize>| {
                (0..n)
                    .filter(|i| !p.contains(i))
                    .map(|i| {
                        let mut q = p.clone();
                        q.push(i);
                        q
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
    }
    out
}

/// The document as the state actor's file holds it: a full save of `base` followed by an
/// incremental chunk per later batch, loaded as one document.
fn through_the_file_format(base: &mut AutoCommit, merged: &mut AutoCommit) -> MeshState {
    let mut file = base.save();
    let mut writer = base.clone();
    let mut other = merged.clone();
    writer.merge(&mut other).unwrap();
    file.extend(writer.save_incremental());
    let loaded = AutoCommit::load(&file).expect("full save plus chunk loads");
    hydrate_lenient(&loaded).0
}

proptest! {
    // 64 cases take ~15 s in a debug build (Automerge is slow unoptimized); set
    // PROPTEST_CASES for a longer run.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64),
        ..ProptestConfig::default()
    })]

    #[test]
    fn concurrent_edits_merge_to_one_state_in_any_order(
        edits in prop::collection::vec(prop::collection::vec(edit(), 0..12), 2..=3),
    ) {
        let mut base = base_document();
        let mut replicas: Vec<AutoCommit> = edits
            .iter()
            .map(|_| base.fork().with_actor(ActorId::random()))
            .collect();
        for (doc, seq) in replicas.iter_mut().zip(&edits) {
            for e in seq {
                apply(doc, e);
            }
        }
        let finals: Vec<MeshState> = replicas.iter().map(|d| hydrate_lenient(d).0).collect();

        // Every order of sequential merges, and a merge of merges, agree.
        let n = replicas.len();
        let mut merged: Vec<AutoCommit> = permutations(n)
            .iter()
            .map(|order| merge_in_order(&replicas, order))
            .collect();
        if n == 3 {
            let mut left = merge_in_order(&replicas, &[1, 2]);
            let mut tree = replicas[0].clone();
            tree.merge(&mut left).unwrap();
            merged.push(tree);
        }
        let heads = sorted_heads(&mut merged[0]);
        let (state, stats) = hydrate_lenient(&merged[0]);
        prop_assert_eq!(stats.skipped_entries, 0);
        for m in merged.iter_mut().skip(1) {
            prop_assert_eq!(&sorted_heads(m), &heads);
            prop_assert_eq!(&hydrate_lenient(m).0, &state);
        }
        prop_assert_eq!(&through_the_file_format(&mut base, &mut merged[0]), &state);

        // Who touched what.
        let mut record_touched: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
        let mut tag_touched: BTreeMap<(usize, usize), BTreeSet<usize>> = BTreeMap::new();
        let mut deleted_or_created: BTreeSet<usize> = BTreeSet::new();
        for (r, seq) in edits.iter().enumerate() {
            for e in seq {
                record_touched.entry(e.node()).or_default().insert(r);
                if let Some(k) = e.tag_key() {
                    tag_touched.entry((e.node(), k)).or_default().insert(r);
                }
                if matches!(e, Edit::DeleteRecord { .. }) || e.node() >= BASE_NODES {
                    deleted_or_created.insert(e.node());
                }
            }
        }
        // A record only one replica touched is exactly as that replica left it.
        for (node, by) in &record_touched {
            if by.len() == 1 {
                let r = *by.iter().next().unwrap();
                let id = node_id(*node);
                prop_assert_eq!(
                    state.nodes.get(&id), finals[r].nodes.get(&id),
                    "record {} written only by replica {}", id, r
                );
            }
        }
        // A tag only one replica touched, on a record nobody deleted or (re)created, is as
        // that replica left it, whatever else happened to the record concurrently.
        for ((node, key), by) in &tag_touched {
            if by.len() == 1 && !deleted_or_created.contains(node) {
                let r = *by.iter().next().unwrap();
                let id = node_id(*node);
                let k = tag_key(*key);
                let want = finals[r].nodes.get(&id).and_then(|rec| rec.tags.get(&k));
                let got = state.nodes.get(&id).and_then(|rec| rec.tags.get(&k));
                prop_assert_eq!(got, want, "tag {}.{} written only by replica {}", id, k, r);
            }
        }
        // Records nobody touched are the base's.
        let base_state = hydrate_lenient(&base).0;
        for n in 0..NODES {
            if !record_touched.contains_key(&n) {
                let id = node_id(n);
                prop_assert_eq!(state.nodes.get(&id), base_state.nodes.get(&id));
            }
        }
    }
}

/// Two replicas that both create a record for the same key concurrently (a node that lost its
/// file and rewrote its record before syncing, see `StateActor::write_self_record`): the two
/// maps conflict, one wins as a whole and the other's fields vanish — whichever actor id is
/// larger. This pins the merge behaviour the state actor must work around.
#[test]
fn concurrent_creation_of_one_record_keeps_one_whole_record() {
    let mut base = genesis(ActorId::random());
    let mut old = base.fork().with_actor(ActorId::from(&[1u8; 16][..]));
    let mut new = base.fork().with_actor(ActorId::from(&[2u8; 16][..]));
    let old_record = NodeRecord {
        name: "b".into(),
        tags: [("role".to_string(), "web".to_string())].into(),
        ..Default::default()
    };
    put_entry(&mut old, "nodes", "b", &old_record).unwrap();
    old.commit();
    let new_record = NodeRecord {
        name: "b".into(),
        addrs: vec!["/new".into()],
        ..Default::default()
    };
    put_entry(&mut new, "nodes", "b", &new_record).unwrap();
    new.commit();
    base.merge(&mut old).unwrap();
    base.merge(&mut new).unwrap();
    let merged = hydrate_lenient(&base).0.nodes["b"].clone();
    // The larger actor wins the `nodes.b` key; nothing of the other record survives.
    assert_eq!(merged, new_record);
    assert!(merged.tags.is_empty(), "the older record's tags are gone");
}
