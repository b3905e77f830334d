//! The view the services domain reads ([`View`]) and the rules every layer shares: where a
//! service runs ([`placement`]), which node a name means ([`resolve_node`]), instance keys.

use crate::identity::NodeId;
use crate::state::{Desired, InstanceState, MeshState, ParsedSpecs, ServiceRecord};
use crate::supervisor::spec::ServiceSpec;

/// The part of a state snapshot the services domain reads: the document's value and its
/// specs, parsed once per change (see [`ParsedSpecs`]).
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    pub state: &'a MeshState,
    pub specs: &'a ParsedSpecs,
}

impl<'a> View<'a> {
    pub fn new(state: &'a MeshState, specs: &'a ParsedSpecs) -> Self {
        Self { state, specs }
    }

    /// The record of a service that is not removed.
    pub fn active(&self, name: &str) -> Option<&'a ServiceRecord> {
        self.state
            .services
            .get(name)
            .filter(|r| r.desired != Desired::Removed)
    }

    /// The parsed spec of a service that is not removed (`None` also when it does not parse).
    pub fn spec(&self, name: &str) -> Option<&'a ServiceSpec> {
        self.active(name).and(self.specs.get(name))
    }

    /// Every service that is not removed and whose spec parses, by name.
    pub fn active_specs(
        &self,
    ) -> impl Iterator<Item = (&'a str, &'a ServiceRecord, &'a ServiceSpec)> {
        let specs = self.specs;
        self.state
            .services
            .iter()
            .filter(|(_, r)| r.desired != Desired::Removed)
            .filter_map(move |(name, r)| Some((name.as_str(), r, specs.get(name)?)))
    }
}

/// The key of `service`'s instance on `node` in the document's `instances` map.
pub fn instance_key(service: &str, node: &str) -> String {
    format!("{service}@{node}")
}

/// How a wanted name matched a node, strongest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum NodeMatch {
    /// The whole node id.
    Id,
    /// The node's name.
    Name,
    /// The tail of its id (at least [`crate::identity::MIN_ID_SUFFIX`] characters).
    IdTail,
}

/// How `wanted` names the node `(id, name)`, if it does.
pub fn node_match(id: &str, name: &str, wanted: &str) -> Option<NodeMatch> {
    if id == wanted {
        Some(NodeMatch::Id)
    } else if !name.is_empty() && name == wanted {
        Some(NodeMatch::Name)
    } else if NodeId::from(id).matches(wanted) {
        Some(NodeMatch::IdTail)
    } else {
        None
    }
}

/// Which nodes `wanted` means among `nodes` (`(id, name)` pairs): those of the strongest match
/// (a whole id beats a name, which beats an id tail), in the order given. Empty: none. For
/// what an operator types (`--node`, `mesh logs`).
pub fn resolve_node<'a>(
    nodes: impl IntoIterator<Item = (&'a str, &'a str)>,
    wanted: &str,
) -> Vec<&'a str> {
    resolve(nodes, wanted, NodeMatch::IdTail)
}

/// [`resolve_node`] for a spec's target, which names a node or its whole id (never a tail).
pub fn resolve_target<'a>(
    nodes: impl IntoIterator<Item = (&'a str, &'a str)>,
    wanted: &str,
) -> Vec<&'a str> {
    resolve(nodes, wanted, NodeMatch::Name)
}

fn resolve<'a>(
    nodes: impl IntoIterator<Item = (&'a str, &'a str)>,
    wanted: &str,
    weakest: NodeMatch,
) -> Vec<&'a str> {
    let mut best: Option<NodeMatch> = None;
    let mut found = Vec::new();
    for (id, name) in nodes {
        let Some(how) = node_match(id, name, wanted).filter(|how| *how <= weakest) else {
            continue;
        };
        if best.is_none_or(|b| how < b) {
            best = Some(how);
            found.clear();
        }
        if best == Some(how) && !found.contains(&id) {
            found.push(id);
        }
    }
    found
}

/// The nodes of the document as `(id, name)` pairs, for [`resolve_node`].
pub fn document_nodes(state: &MeshState) -> impl Iterator<Item = (&str, &str)> {
    state
        .nodes
        .iter()
        .map(|(id, record)| (id.as_str(), record.name.as_str()))
}

/// Where a service runs: the node its record was placed on when it was added; for records
/// written before placement was stored, its spec's target resolved in the document (by id,
/// else by name), else the node that last wrote it. `None` for removed or unknown services,
/// and for a legacy target no node of the document answers to.
pub fn placement(view: View<'_>, name: &str) -> Option<NodeId> {
    let record = view.active(name)?;
    if let Some(node) = &record.node_id {
        return Some(node.clone());
    }
    match view.specs.get(name).and_then(|spec| spec.target.as_deref()) {
        Some(target) => resolve_target(document_nodes(view.state), target)
            .first()
            .map(|id| NodeId::from(*id)),
        None => Some(record.updated_by.clone()),
    }
}

/// How to show where a service is placed: its target as the operator wrote it, else the
/// name of the node it runs on.
pub fn placement_label(view: View<'_>, name: &str) -> String {
    view.spec(name)
        .and_then(|spec| spec.target.clone())
        .or_else(|| placement(view, name).map(|id| view.state.node_name(&id)))
        .unwrap_or_default()
}

/// The state published by the node a service is placed on, if it published one.
pub fn published_state(view: View<'_>, name: &str) -> Option<InstanceState> {
    let node = placement(view, name)?;
    view.state
        .instances
        .get(&instance_key(name, &node))
        .map(|instance| instance.state)
}
