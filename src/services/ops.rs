//! The operator's operations on services, as pure functions: each takes the current state
//! ([`View`]), who writes and when ([`Writer`], the writer's own clock, used only for the
//! display fields `updated_at_ms` and `request_at_ms`), and its inputs; it returns the entries
//! to write, or a [`ServiceError`]. The caller writes them (the API, through the state actor).
//!
//! Operator requests (`start`, `restart`) bump the service's `request_generation`: the node
//! running it acts on a request once, when the generation differs from the last it handled.

use std::collections::BTreeSet;

use super::view::{
    View, document_nodes, placement, placement_label, published_state, resolve_target,
};
use crate::identity::{NodeId, NodeName};
use crate::state::EntryWrite;
use crate::state::{Desired, InstanceState, OperatorRequest, ServiceRecord};
use crate::supervisor::spec::{ServiceSpec, SpecError, validate_set};

/// Errors of the services operations: what the operator asked cannot be done.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ServiceError {
    #[error("no services to add")]
    NothingToAdd,
    #[error("a service is listed twice in the request")]
    ListedTwice,
    #[error("service `{service}`: no node named `{node}` in the mesh (see `mesh peers`)")]
    UnknownNode { service: String, node: String },
    #[error(transparent)]
    InvalidSet(#[from] SpecError),
    #[error("service `{service}` cannot run on this node: {reason}")]
    RefusedHere { service: String, reason: String },
    #[error(
        "this node would run {count} services; it runs at most {max} (its profile's max_services)"
    )]
    TooManyHere { count: usize, max: usize },
    #[error("no service `{service}` (see `mesh services`)")]
    NotFound { service: String },
    #[error("service `{service}` is needed by {}; remove those first", dependents.join(", "))]
    NeededBy {
        service: String,
        dependents: Vec<String>,
    },
    #[error("unknown action `{action}` (use start, stop, restart or rebalance)")]
    UnknownAction { action: String },
}

/// The node writing, as it signs its writes: its id and name, and its own wall clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Writer {
    pub id: NodeId,
    pub name: NodeName,
    /// Wall-clock ms on the writing node (display only: nothing compares it across nodes).
    pub now_ms: i64,
}

/// The rules a node applies at add time to services placed on itself (the same the
/// supervisor enforces when it reads them from the document).
pub struct LocalCheck<'a> {
    /// Why this node would refuse the spec, if it would.
    pub refusal: &'a (dyn Fn(&ServiceSpec) -> Option<String> + Sync),
    /// The most services it runs.
    pub max_services: usize,
}

/// What an add did to one service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddOutcome {
    Added,
    Updated,
    Unchanged,
}

impl AddOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AddOutcome::Added => "added",
            AddOutcome::Updated => "updated",
            AddOutcome::Unchanged => "unchanged",
        }
    }
}

/// One service of an add, in request order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Added {
    pub name: String,
    /// Its target as written in the spec (the adding node's name when the spec had none).
    pub node: String,
    pub outcome: AddOutcome,
}

/// The result of [`add`].
#[derive(Clone, Debug, PartialEq)]
pub struct AddPlan {
    pub writes: Vec<EntryWrite>,
    pub added: Vec<Added>,
}

/// The result of [`remove`] and [`act`].
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// Empty when nothing changes.
    pub writes: Vec<EntryWrite>,
    /// Where the service is placed, for the answer.
    pub node: String,
    /// Whether the desired state changes (false: it already was so).
    pub changed: bool,
}

/// An operator action on one service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceAction {
    Start,
    Stop,
    Restart,
    /// Move the copies to where the ranking puts them now ([`rebalance`]).
    Rebalance,
}

impl ServiceAction {
    pub fn parse(action: &str) -> Result<Self, ServiceError> {
        match action {
            "start" => Ok(Self::Start),
            "stop" => Ok(Self::Stop),
            "restart" => Ok(Self::Restart),
            "rebalance" => Ok(Self::Rebalance),
            other => Err(ServiceError::UnknownAction {
                action: other.to_string(),
            }),
        }
    }

    /// The path segment of the route (`start`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Restart => "restart",
            Self::Rebalance => "rebalance",
        }
    }
}

/// Adds or replaces services. Each target (`node`, the writer when absent) is resolved to a
/// node id here, once; the whole mesh's services with these replacing theirs must form a
/// valid set (names, dependencies, cycles, fixed ports per node); services placed on the
/// writer must pass its `local` rules.
///
/// `members` are the live members membership lists with the names they gave when admitted:
/// a node that just joined is listed by `mesh peers` a moment before its own record reaches
/// this node's document, and a target naming it resolves through them (the document's names
/// come first).
pub fn add(
    view: View<'_>,
    writer: &Writer,
    incoming: Vec<ServiceSpec>,
    local: Option<LocalCheck<'_>>,
    members: &[(NodeId, NodeName)],
) -> Result<AddPlan, ServiceError> {
    if incoming.is_empty() {
        return Err(ServiceError::NothingToAdd);
    }
    // The writer first: its own name means itself even if another node shares it.
    let nodes = || {
        std::iter::once((writer.id.as_str(), writer.name.as_str()))
            .chain(document_nodes(view.state).filter(|(id, _)| *id != writer.id.as_str()))
            .chain(
                members
                    .iter()
                    .filter(|(id, _)| {
                        *id != writer.id && !view.state.nodes.contains_key(id.as_str())
                    })
                    .map(|(id, name)| (id.as_str(), name.as_str())),
            )
    };
    let mut placed = Vec::with_capacity(incoming.len());
    for mut spec in incoming {
        let target = spec
            .target
            .get_or_insert_with(|| writer.name.to_string())
            .clone();
        let node = resolve_target(nodes(), &target)
            .first()
            .copied()
            .ok_or_else(|| ServiceError::UnknownNode {
                service: spec.name.clone(),
                node: target.clone(),
            })?;
        let mut eligible = Vec::with_capacity(spec.placement.nodes.len());
        for wanted in &spec.placement.nodes {
            let id = resolve_target(nodes(), wanted)
                .first()
                .copied()
                .ok_or_else(|| ServiceError::UnknownNode {
                    service: spec.name.clone(),
                    node: wanted.clone(),
                })?;
            eligible.push(NodeId::from(id));
        }
        let eligible = (!spec.placement.nodes.is_empty()).then_some(eligible);
        placed.push((spec, NodeId::from(node), eligible));
    }
    let names: BTreeSet<&str> = placed.iter().map(|(s, _, _)| s.name.as_str()).collect();
    if names.len() != placed.len() {
        return Err(ServiceError::ListedTwice);
    }
    // The whole set, each spec with its node as an id, so a fixed-port clash between a
    // service placed by name and one placed by id is seen.
    let mut set: std::collections::BTreeMap<String, ServiceSpec> = view
        .active_specs()
        .map(|(name, _, spec)| {
            let mut spec = spec.clone();
            spec.target = placement(view, name).map(NodeId::into_string);
            (name.to_string(), spec)
        })
        .collect();
    for (spec, node, _) in &placed {
        let mut spec = spec.clone();
        spec.target = Some(node.to_string());
        set.insert(spec.name.clone(), spec);
    }
    let set: Vec<ServiceSpec> = set.into_values().collect();
    validate_set(&set)?;
    if let Some(local) = local {
        for (spec, _, _) in placed.iter().filter(|(_, node, _)| *node == writer.id) {
            if let Some(reason) = (local.refusal)(spec) {
                return Err(ServiceError::RefusedHere {
                    service: spec.name.clone(),
                    reason,
                });
            }
        }
        let count = set
            .iter()
            .filter(|s| s.target.as_deref() == Some(writer.id.as_str()))
            .count();
        if count > local.max_services {
            return Err(ServiceError::TooManyHere {
                count,
                max: local.max_services,
            });
        }
    }
    let mut writes = Vec::new();
    let mut added = Vec::new();
    for (spec, node, eligible) in placed {
        let spec_json = serde_json::to_string(&spec).expect("a spec always serializes");
        let existing = view.active(&spec.name);
        let outcome = match existing {
            None => AddOutcome::Added,
            Some(r) if r.spec_json == spec_json && r.eligible == eligible => AddOutcome::Unchanged,
            Some(_) => AddOutcome::Updated,
        };
        if outcome != AddOutcome::Unchanged {
            writes.push(EntryWrite::Service {
                name: spec.name.clone(),
                record: ServiceRecord {
                    spec_json,
                    desired: existing.map_or(Desired::Running, |r| r.desired),
                    updated_by: writer.id.clone(),
                    updated_at_ms: writer.now_ms,
                    request: None,
                    request_at_ms: None,
                    // Kept across updates and removals: the count only grows.
                    request_generation: view
                        .state
                        .services
                        .get(&spec.name)
                        .and_then(|r| r.request_generation),
                    added_by: Some(writer.id.clone()),
                    // Kept across updates (an update is not a rebalance), except a move to
                    // another home: the old holder's claim must stop being sticky, or the move
                    // happens only if the new home sees the old copy unclaimed (a race).
                    placement_generation: match existing {
                        Some(r) if placement(view, &spec.name).is_some_and(|old| old != node) => {
                            Some(r.placement_generation.unwrap_or(0) + 1)
                        }
                        existing => existing.and_then(|r| r.placement_generation),
                    },
                    node_id: Some(node),
                    eligible,
                },
            });
        }
        added.push(Added {
            node: spec.target.clone().unwrap_or_default(),
            name: spec.name,
            outcome,
        });
    }
    Ok(AddPlan { writes, added })
}

/// The record of an active service, or [`ServiceError::NotFound`].
fn active(view: View<'_>, name: &str) -> Result<ServiceRecord, ServiceError> {
    view.active(name)
        .cloned()
        .ok_or_else(|| ServiceError::NotFound {
            service: name.to_string(),
        })
}

/// Removes a service: a tombstone (`desired = removed`, no spec, no request), refused while
/// another service depends on it.
pub fn remove(view: View<'_>, writer: &Writer, name: &str) -> Result<Change, ServiceError> {
    let mut record = active(view, name)?;
    let dependents: Vec<String> = view
        .active_specs()
        .filter(|(_, _, spec)| spec.after.iter().any(|d| d == name))
        .map(|(dependent, _, _)| dependent.to_string())
        .collect();
    if !dependents.is_empty() {
        return Err(ServiceError::NeededBy {
            service: name.to_string(),
            dependents,
        });
    }
    let node = placement_label(view, name);
    record.desired = Desired::Removed;
    record.updated_by = writer.id.clone();
    record.updated_at_ms = writer.now_ms;
    record.strip_if_removed();
    Ok(Change {
        writes: vec![EntryWrite::Service {
            name: name.to_string(),
            record,
        }],
        node,
        changed: true,
    })
}

/// Starts, stops or restarts a service. `start` and `restart` are operator requests: they
/// bump the service's request generation, which the node running it acts on once.
pub fn act(
    view: View<'_>,
    writer: &Writer,
    name: &str,
    action: ServiceAction,
) -> Result<Change, ServiceError> {
    let mut record = active(view, name)?;
    let node = placement_label(view, name);
    let was_running = record.desired == Desired::Running;
    let changed = match action {
        ServiceAction::Stop => {
            record.desired = Desired::Stopped;
            was_running
        }
        ServiceAction::Start => {
            record.desired = Desired::Running;
            request(&mut record, OperatorRequest::Start, writer);
            // Starting a `failed` service is a change too: it clears the failure.
            !was_running || published_state(view, name) == Some(InstanceState::Failed)
        }
        ServiceAction::Restart => {
            record.desired = Desired::Running;
            request(&mut record, OperatorRequest::Restart, writer);
            true
        }
        ServiceAction::Rebalance => return rebalance(view, writer, name),
    };
    if !changed {
        return Ok(Change {
            writes: Vec::new(),
            node,
            changed,
        });
    }
    Ok(stamped(writer, name, record, node))
}

/// The change writing `record` for service `name`, signed by `writer` now.
fn stamped(writer: &Writer, name: &str, mut record: ServiceRecord, node: String) -> Change {
    record.updated_by = writer.id.clone();
    record.updated_at_ms = writer.now_ms;
    Change {
        writes: vec![EntryWrite::Service {
            name: name.to_string(),
            record,
        }],
        node,
        changed: true,
    }
}

/// Sets the record's request and bumps its generation.
fn request(record: &mut ServiceRecord, request: OperatorRequest, writer: &Writer) {
    record.request = Some(request);
    record.request_at_ms = Some(writer.now_ms);
    record.request_generation = Some(record.request_generation.unwrap_or(0) + 1);
}

/// The node that has a service's process, or had it last: its live instance, else any
/// instance of it, else where it is placed.
pub fn runs_on(view: View<'_>, name: &str) -> Result<NodeId, ServiceError> {
    let instances = || view.state.instances.values().filter(|i| i.service == name);
    instances()
        .find(|i| i.state != InstanceState::Stopped)
        .or_else(|| instances().next())
        .map(|i| i.node.clone())
        .or_else(|| placement(view, name))
        .ok_or_else(|| ServiceError::NotFound {
            service: name.to_string(),
        })
}

/// Moves a service's copies to where the ranking puts them now (`mesh service rebalance`):
/// bumps its `placement_generation`, so copies claimed before are no longer sticky. Each new
/// copy starts before the one it replaces stops (non-exclusive services).
pub fn rebalance(view: View<'_>, writer: &Writer, name: &str) -> Result<Change, ServiceError> {
    let mut record = active(view, name)?;
    let node = placement_label(view, name);
    record.placement_generation = Some(record.placement_generation.unwrap_or(0) + 1);
    Ok(stamped(writer, name, record, node))
}
