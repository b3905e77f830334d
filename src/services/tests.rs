//! The services rules: placement, node resolution, the operations and their errors.

use super::*;
use crate::identity::{NodeId, NodeName};
use crate::state::actor::EntryWrite;
use crate::state::{Desired, MeshState, NodeRecord, OperatorRequest, ParsedSpecs, ServiceRecord};
use crate::supervisor::spec::ServiceSpec;

fn mesh(nodes: &[(&str, &str)]) -> MeshState {
    let mut state = MeshState::default();
    for (id, name) in nodes {
        state.nodes.insert(
            id.to_string(),
            NodeRecord {
                name: NodeName::from(*name),
                ..Default::default()
            },
        );
    }
    state
}

fn writer(id: &str, name: &str, now_ms: i64) -> Writer {
    Writer {
        id: NodeId::from(id),
        name: NodeName::from(name),
        now_ms,
    }
}

fn apply(state: &mut MeshState, writes: Vec<EntryWrite>) {
    for entry in writes {
        if let EntryWrite::Service { name, record } = entry {
            state.services.insert(name, record);
        }
    }
}

fn add(
    state: &mut MeshState,
    by: &Writer,
    specs: Vec<ServiceSpec>,
) -> Result<AddPlan, ServiceError> {
    let parsed = ParsedSpecs::parse(state);
    let plan = ops::add(View::new(state, &parsed), by, specs, None, &[])?;
    apply(state, plan.writes.clone());
    Ok(plan)
}

#[test]
fn a_name_means_an_id_first_then_a_name_then_an_id_tail() {
    let nodes = [
        ("12D3KooWabcdef", "pi"),
        ("12D3KooWxyz123", "12D3KooWabcdef"),
        ("id-3", "pi"),
    ];
    let pairs = || nodes.iter().map(|(id, name)| (*id, *name));
    assert_eq!(resolve_node(pairs(), "12D3KooWabcdef"), ["12D3KooWabcdef"]);
    assert_eq!(resolve_node(pairs(), "pi"), ["12D3KooWabcdef", "id-3"]);
    assert_eq!(resolve_node(pairs(), "xyz123"), ["12D3KooWxyz123"]);
    assert!(
        resolve_node(pairs(), "123").is_empty(),
        "tails are 6 characters or more"
    );
    assert!(
        resolve_target(pairs(), "xyz123").is_empty(),
        "a spec names a node or its id"
    );
}

#[test]
fn a_target_is_resolved_to_its_id_once_when_the_service_is_added() {
    let mut state = mesh(&[("id-a", "a"), ("id-b", "b")]);
    let by_a = writer("id-a", "a", 1);
    let mut web = ServiceSpec::new("web", "true");
    web.target = Some("b".into());
    let plan = add(&mut state, &by_a, vec![web, ServiceSpec::new("db", "true")]).unwrap();
    assert_eq!(plan.added[0].node, "b");
    assert_eq!(plan.added[1].node, "a", "no target: the adding node");
    assert_eq!(state.services["web"].node_id, Some(NodeId::from("id-b")));
    assert_eq!(state.services["db"].node_id, Some(NodeId::from("id-a")));
    // b renames itself, another node takes the name: the service stays where it was placed.
    state.nodes.get_mut("id-b").unwrap().name = "b-old".into();
    state.nodes.insert(
        "id-c".into(),
        NodeRecord {
            name: "b".into(),
            ..Default::default()
        },
    );
    let parsed = ParsedSpecs::parse(&state);
    assert_eq!(
        placement(View::new(&state, &parsed), "web"),
        Some(NodeId::from("id-b"))
    );
}

#[test]
fn records_without_a_stored_placement_resolve_their_target_else_run_on_their_writer() {
    // Moved with the rule from the supervisor actor (`placed_on`).
    let mut state = mesh(&[("id-a", "a"), ("id-b", "b")]);
    let mut spec = ServiceSpec::new("web", "true");
    let record = |spec: &ServiceSpec, by: &str| ServiceRecord {
        spec_json: serde_json::to_string(spec).unwrap(),
        updated_by: NodeId::from(by),
        ..Default::default()
    };
    let placed = |state: &MeshState| {
        let parsed = ParsedSpecs::parse(state);
        placement(View::new(state, &parsed), "web")
    };
    state.services.insert("web".into(), record(&spec, "id-a"));
    assert_eq!(placed(&state), Some(NodeId::from("id-a")));
    spec.target = Some("b".into());
    state.services.insert("web".into(), record(&spec, "id-a"));
    assert_eq!(placed(&state), Some(NodeId::from("id-b")));
    spec.target = Some("id-a".into());
    state.services.insert("web".into(), record(&spec, "id-b"));
    assert_eq!(placed(&state), Some(NodeId::from("id-a")));
    spec.target = Some("nowhere".into());
    state.services.insert("web".into(), record(&spec, "id-a"));
    assert_eq!(placed(&state), None);
}

fn placed_on(plan: &AddPlan) -> NodeId {
    plan.writes
        .iter()
        .find_map(|w| match w {
            EntryWrite::Service { record, .. } => record.node_id.clone(),
            _ => None,
        })
        .expect("a service written with its node")
}

/// A member admitted a moment ago is listed by `mesh peers` before its record reaches the
/// document: a target naming it resolves through membership's names, and the document's
/// names come first.
#[test]
fn a_target_naming_a_member_not_yet_in_the_document_resolves_through_membership() {
    let state = mesh(&[("id-a", "a"), ("id-b", "b")]);
    let parsed = ParsedSpecs::parse(&state);
    let by_a = writer("id-a", "a", 1);
    let members = [
        (NodeId::from("id-c"), NodeName::from("c")),
        // Membership's name for a node the document knows as `b` does not override it.
        (NodeId::from("id-x"), NodeName::from("b")),
    ];
    // Where `web` pinned to `target` goes, with these members known.
    let home = |target: &str, members: &[(NodeId, NodeName)]| {
        let mut spec = ServiceSpec::new("web", "true");
        spec.target = Some(target.into());
        ops::add(View::new(&state, &parsed), &by_a, vec![spec], None, members)
            .map(|plan| placed_on(&plan))
    };
    assert_eq!(home("c", &members), Ok(NodeId::from("id-c")));
    assert_eq!(home("b", &members), Ok(NodeId::from("id-b")));
    assert!(matches!(
        home("c", &[]),
        Err(ServiceError::UnknownNode { .. })
    ));
}

#[test]
fn adding_refuses_unknown_nodes_duplicates_and_fixed_port_clashes_across_spellings() {
    let mut state = mesh(&[("id-a", "a"), ("id-b", "b")]);
    let by_a = writer("id-a", "a", 1);
    let mut lost = ServiceSpec::new("web", "true");
    lost.target = Some("c".into());
    assert_eq!(
        add(&mut state, &by_a, vec![lost]).unwrap_err(),
        ServiceError::UnknownNode {
            service: "web".into(),
            node: "c".into()
        }
    );
    assert_eq!(
        add(&mut state, &by_a, vec![]).unwrap_err(),
        ServiceError::NothingToAdd
    );
    assert_eq!(
        add(
            &mut state,
            &by_a,
            vec![ServiceSpec::new("x", "true"), ServiceSpec::new("x", "true")]
        )
        .unwrap_err(),
        ServiceError::ListedTwice
    );
    let fixed = |name: &str, node: &str| {
        let mut spec = ServiceSpec::new(name, "true");
        spec.target = Some(node.into());
        spec.ports = vec![crate::supervisor::PortSpec {
            source: crate::ports::PortSource::Fixed(8080),
            ..crate::supervisor::PortSpec::auto()
        }];
        spec
    };
    add(&mut state, &by_a, vec![fixed("one", "b")]).unwrap();
    assert!(matches!(
        add(&mut state, &by_a, vec![fixed("two", "id-b")]).unwrap_err(),
        ServiceError::InvalidSet(_)
    ));
}

#[test]
fn the_rules_of_the_adding_node_apply_to_what_it_places_on_itself() {
    let mut state = mesh(&[("id-a", "a")]);
    let parsed = ParsedSpecs::parse(&state);
    let refuse = |spec: &ServiceSpec| (spec.name == "bad").then(|| "no".to_string());
    let check = || LocalCheck {
        refusal: &refuse,
        max_services: 1,
    };
    let by_a = writer("id-a", "a", 1);
    let view = View::new(&state, &parsed);
    assert_eq!(
        ops::add(
            view,
            &by_a,
            vec![ServiceSpec::new("bad", "true")],
            Some(check()),
            &[]
        )
        .unwrap_err(),
        ServiceError::RefusedHere {
            service: "bad".into(),
            reason: "no".into()
        }
    );
    assert_eq!(
        ops::add(
            view,
            &by_a,
            vec![ServiceSpec::new("x", "true"), ServiceSpec::new("y", "true")],
            Some(check()),
            &[]
        )
        .unwrap_err(),
        ServiceError::TooManyHere { count: 2, max: 1 }
    );
    add(&mut state, &by_a, vec![ServiceSpec::new("x", "true")]).unwrap();
    let again = add(&mut state, &by_a, vec![ServiceSpec::new("x", "true")]).unwrap();
    assert_eq!(again.added[0].outcome, AddOutcome::Unchanged);
    assert!(again.writes.is_empty());
}

#[test]
fn requests_bump_the_generation_and_keep_the_writers_clock_for_display_only() {
    let mut state = mesh(&[("id-a", "a"), ("id-b", "b")]);
    add(
        &mut state,
        &writer("id-a", "a", 1_000),
        vec![ServiceSpec::new("web", "true")],
    )
    .unwrap();
    let act = |state: &mut MeshState, now_ms: i64, action: ServiceAction| {
        let parsed = ParsedSpecs::parse(state);
        let change = ops::act(
            View::new(state, &parsed),
            &writer("id-b", "b", now_ms),
            "web",
            action,
        )
        .unwrap();
        let changed = change.changed;
        apply(state, change.writes);
        changed
    };
    // The requester's clock is far behind: the generation still grows.
    assert!(act(&mut state, 10, ServiceAction::Restart));
    assert!(act(&mut state, 5, ServiceAction::Restart));
    let record = &state.services["web"];
    assert_eq!(record.request, Some(OperatorRequest::Restart));
    assert_eq!(
        (record.request_generation, record.request_at_ms),
        (Some(2), Some(5))
    );
    assert_eq!(
        record.node_id,
        Some(NodeId::from("id-a")),
        "requests do not move it"
    );
    assert!(
        !act(&mut state, 11, ServiceAction::Start),
        "already running"
    );
    assert!(act(&mut state, 12, ServiceAction::Stop));
    assert!(!act(&mut state, 13, ServiceAction::Stop), "already stopped");
    assert_eq!(
        ServiceAction::parse("reload").unwrap_err(),
        ServiceError::UnknownAction {
            action: "reload".into()
        }
    );
}

#[test]
fn removing_refuses_while_another_service_depends_on_it_and_leaves_a_tombstone() {
    let mut state = mesh(&[("id-a", "a")]);
    let by_a = writer("id-a", "a", 1);
    let mut api = ServiceSpec::new("api", "true");
    api.after = vec!["db".into()];
    add(&mut state, &by_a, vec![ServiceSpec::new("db", "true"), api]).unwrap();
    let parsed = ParsedSpecs::parse(&state);
    assert_eq!(
        ops::remove(View::new(&state, &parsed), &by_a, "db").unwrap_err(),
        ServiceError::NeededBy {
            service: "db".into(),
            dependents: vec!["api".into()]
        }
    );
    let change = ops::remove(View::new(&state, &parsed), &by_a, "api").unwrap();
    apply(&mut state, change.writes);
    let tomb = &state.services["api"];
    assert_eq!(
        (tomb.desired, tomb.spec_json.as_str()),
        (Desired::Removed, "")
    );
    let parsed = ParsedSpecs::parse(&state);
    assert_eq!(
        ops::remove(View::new(&state, &parsed), &by_a, "api").unwrap_err(),
        ServiceError::NotFound {
            service: "api".into()
        }
    );
    assert_eq!(instance_key("db", "id-a"), "db@id-a");
}

#[test]
fn a_move_to_another_home_ends_the_old_claims_stickiness_and_an_update_in_place_does_not() {
    let mut state = mesh(&[("id-a", "a"), ("id-b", "b")]);
    let by_a = writer("id-a", "a", 1);
    let mut web = ServiceSpec::new("web", "true");
    web.target = Some("a".into());
    add(&mut state, &by_a, vec![web.clone()]).unwrap();
    assert_eq!(state.services["web"].placement_generation, None);
    // A new command, same home: the running copy keeps its claim.
    web.command = "true --v2".into();
    add(&mut state, &by_a, vec![web.clone()]).unwrap();
    assert_eq!(state.services["web"].placement_generation, None);
    // Moved to b: a's claim was made under the old generation, so b ranks first at once.
    web.target = Some("b".into());
    add(&mut state, &by_a, vec![web.clone()]).unwrap();
    assert_eq!(state.services["web"].node_id, Some(NodeId::from("id-b")));
    assert_eq!(state.services["web"].placement_generation, Some(1));
    // Added again as it is now: unchanged, no bump.
    let plan = add(&mut state, &by_a, vec![web]).unwrap();
    assert!(plan.writes.is_empty());
    assert_eq!(state.services["web"].placement_generation, Some(1));
}
