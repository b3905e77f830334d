//! Placement as a pure function: the same owners everywhere, distinct eligible nodes, minimal
//! movement, weights, stickiness, hand-over and the exclusive fence.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::identity::NodeName;
use crate::services::View;
use crate::state::{Desired, InstanceRecord, MeshState, NodeHardware, NodeRecord, ParsedSpecs};

fn node(name: &str, score: u64) -> NodeRecord {
    NodeRecord {
        name: NodeName::from(name),
        hardware: NodeHardware {
            score,
            arch: "x86_64".into(),
            memory_bytes: 8 << 30,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A mesh of nodes `n0..n{count}` (ids `id-0`…) with the given scores.
fn mesh(scores: &[u64]) -> MeshState {
    let mut state = MeshState::default();
    for (i, score) in scores.iter().enumerate() {
        state
            .nodes
            .insert(format!("id-{i}"), node(&format!("n{i}"), *score));
    }
    state
}

fn add_service(state: &mut MeshState, spec: ServiceSpec, home: &str) {
    state.services.insert(
        spec.name.clone(),
        ServiceRecord {
            spec_json: serde_json::to_string(&spec).expect("serializes"),
            desired: Desired::Running,
            updated_by: NodeId::from(home),
            node_id: Some(NodeId::from(home)),
            ..Default::default()
        },
    );
}

fn claim(state: &mut MeshState, service: &str, node: &str, st: InstanceState, epoch: u64) {
    state.instances.insert(
        instance_key(service, node),
        InstanceRecord {
            service: service.into(),
            node: NodeId::from(node),
            state: st,
            epoch: Some(epoch),
            generation: Some(0),
            ..Default::default()
        },
    );
}

fn all_alive(state: &MeshState) -> LivenessView {
    LivenessView {
        peers: state
            .nodes
            .keys()
            .map(|id| (NodeId::from(id.as_str()), Liveness::Alive))
            .collect(),
        running_for: Duration::from_secs(60),
        majority_for: Duration::from_secs(60),
        confirmed: BTreeMap::new(),
    }
}

fn owners_from(
    state: &MeshState,
    local: &str,
    liveness: &LivenessView,
) -> BTreeMap<String, Vec<NodeId>> {
    let specs = ParsedSpecs::parse(state);
    let local = NodeId::from(local);
    let input = PlacementInput {
        view: View::new(state, &specs),
        local: &local,
        liveness,
    };
    place_all(input)
        .into_iter()
        .map(|(name, p)| (name, p.owners))
        .collect()
}

fn spec(name: &str, replicas: u32) -> ServiceSpec {
    let mut spec = ServiceSpec::new(name, "x");
    spec.placement.replicas = replicas;
    spec
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_node_computes_the_same_owners_on_distinct_eligible_nodes(
        scores in proptest::collection::vec(1u64..2000, 1..9),
        services in proptest::collection::vec((1u32..4, 0usize..9, any::<bool>()), 1..20),
    ) {
        let mut state = mesh(&scores);
        // Half the nodes carry a tag some services require.
        for (i, record) in state.nodes.values_mut().enumerate() {
            if i % 2 == 0 {
                record.tags.insert("room".into(), "kitchen".into());
            }
        }
        for (k, (replicas, home, tagged)) in services.iter().enumerate() {
            let mut s = spec(&format!("s{k}"), *replicas);
            if *tagged {
                s.placement.require.tags.insert("room".into(), "kitchen".into());
            }
            add_service(&mut state, s, &format!("id-{}", home % scores.len()));
        }
        let liveness = all_alive(&state);
        let first = owners_from(&state, "id-0", &liveness);
        for i in 1..scores.len() {
            prop_assert_eq!(&owners_from(&state, &format!("id-{i}"), &liveness), &first);
        }
        for (k, (replicas, _, tagged)) in services.iter().enumerate() {
            let owners = &first[&format!("s{k}")];
            let eligible = state
                .nodes
                .values()
                .filter(|n| !tagged || n.tags.contains_key("room"))
                .count();
            prop_assert_eq!(owners.len(), (*replicas as usize).min(eligible));
            let distinct: std::collections::BTreeSet<_> = owners.iter().collect();
            prop_assert_eq!(distinct.len(), owners.len());
            for owner in owners {
                let record = &state.nodes[owner.as_str()];
                prop_assert!(!tagged || record.tags.contains_key("room"));
            }
        }
    }

    #[test]
    fn a_node_going_away_moves_only_its_own_copies(
        scores in proptest::collection::vec(1u64..2000, 2..9),
        count in 1usize..40,
        gone in 0usize..9,
    ) {
        let mut state = mesh(&scores);
        let gone = NodeId::from(format!("id-{}", gone % scores.len()));
        for k in 0..count {
            // Homes spread over the nodes; no copy claimed yet (pure ranking).
            add_service(&mut state, spec(&format!("s{k}"), 1), &format!("id-{}", k % scores.len()));
        }
        let mut liveness = all_alive(&state);
        let before = owners_from(&state, "id-0", &liveness);
        liveness.peers.insert(gone.clone(), Liveness::Dead { since: Duration::from_secs(1) });
        let local = if gone.as_str() == "id-0" { "id-1" } else { "id-0" };
        let after = owners_from(&state, local, &liveness);
        for (service, owners) in &before {
            if !owners.contains(&gone) {
                prop_assert_eq!(&after[service], owners, "{} moved", service);
            } else {
                prop_assert!(!after[service].contains(&gone));
            }
        }
    }
}

#[test]
fn heavier_nodes_take_proportionally_more_services() {
    // Homes on a node outside the mesh, so only the weights rank.
    let mut state = mesh(&[100, 300]);
    for k in 0..4000 {
        add_service(&mut state, spec(&format!("svc-{k}"), 1), "elsewhere");
    }
    let owners = owners_from(&state, "id-0", &all_alive(&state));
    let heavy = owners.values().filter(|o| o[0].as_str() == "id-1").count();
    // Weighted rendezvous: P(heavy) = 300 / (100 + 300) = 0.75.
    let share = heavy as f64 / 4000.0;
    assert!((0.72..0.78).contains(&share), "heavy node took {share}");
}

#[test]
fn the_home_node_ranks_first_and_failure_moves_the_copy_to_the_best_other() {
    let mut state = mesh(&[10, 10, 10]);
    add_service(&mut state, spec("web", 1), "id-2");
    let mut liveness = all_alive(&state);
    assert_eq!(
        owners_from(&state, "id-0", &liveness)["web"],
        [NodeId::from("id-2")]
    );
    liveness
        .peers
        .insert(NodeId::from("id-2"), Liveness::Suspect);
    assert_eq!(
        owners_from(&state, "id-0", &liveness)["web"],
        [NodeId::from("id-2")],
        "suspect alone never moves a copy"
    );
    liveness.peers.insert(
        NodeId::from("id-2"),
        Liveness::Dead {
            since: Duration::ZERO,
        },
    );
    let moved = owners_from(&state, "id-0", &liveness)["web"].clone();
    assert_eq!(moved.len(), 1);
    assert_ne!(moved[0].as_str(), "id-2");
}

#[test]
fn a_sticky_copy_stays_when_the_home_returns_and_a_rebalance_moves_it_back() {
    let mut state = mesh(&[10, 10, 10]);
    add_service(&mut state, spec("web", 1), "id-2");
    // It failed over to id-1 while id-2 was dead; id-2 is back.
    claim(&mut state, "web", "id-1", InstanceState::Healthy, 2);
    let liveness = all_alive(&state);
    assert_eq!(
        owners_from(&state, "id-0", &liveness)["web"],
        [NodeId::from("id-1")]
    );
    // Not sticky: back home.
    let mut loose = spec("web", 1);
    loose.placement.sticky = false;
    add_service(&mut state, loose, "id-2");
    assert_eq!(
        owners_from(&state, "id-0", &liveness)["web"],
        [NodeId::from("id-2")]
    );
    // Sticky again, then a rebalance: claims of older generations are not sticky.
    add_service(&mut state, spec("web", 1), "id-2");
    state
        .services
        .get_mut("web")
        .expect("added")
        .placement_generation = Some(1);
    assert_eq!(
        owners_from(&state, "id-0", &liveness)["web"],
        [NodeId::from("id-2")]
    );
}

#[test]
fn a_returning_node_does_not_reclaim_a_copy_with_the_record_it_left_behind() {
    let mut state = mesh(&[10, 10, 10]);
    add_service(&mut state, spec("web", 1), "id-2");
    // id-2 crashed while running web (its record still says healthy, epoch 1); id-1 took it
    // over (epoch 2); id-2 is back, alive, with that old record in the document.
    claim(&mut state, "web", "id-2", InstanceState::Healthy, 1);
    claim(&mut state, "web", "id-1", InstanceState::Healthy, 2);
    let liveness = all_alive(&state);
    for local in ["id-0", "id-1", "id-2"] {
        assert_eq!(
            owners_from(&state, local, &liveness)["web"],
            [NodeId::from("id-1")],
            "as {local} sees it: the newest claim keeps the copy, the home ranking first or not"
        );
    }
    // The copy that replaced it is not handed back, so it is not stopped for a record.
    assert!(plan_of(&state, "id-1", &liveness).roles["web"].0 != LocalRole::HandOver);
}

#[test]
fn a_service_no_node_can_take_is_unplaced_with_the_reason() {
    let mut state = mesh(&[10, 10]);
    let mut s = spec("cam", 1);
    s.placement
        .require
        .tags
        .insert("room".into(), "kitchen".into());
    add_service(&mut state, s, "id-0");
    let specs = ParsedSpecs::parse(&state);
    let liveness = all_alive(&state);
    let local = NodeId::from("id-0");
    let input = PlacementInput {
        view: View::new(&state, &specs),
        local: &local,
        liveness: &liveness,
    };
    let placed = &place_all(input)["cam"];
    assert!(placed.owners.is_empty());
    assert_eq!(
        placed.unplaced.as_deref(),
        Some("no node can take it (2 of 2 nodes: 2 tags differ)")
    );
    // Eligible but dead.
    state
        .nodes
        .get_mut("id-1")
        .expect("node")
        .tags
        .insert("room".into(), "kitchen".into());
    let mut liveness = all_alive(&state);
    liveness.peers.insert(
        NodeId::from("id-1"),
        Liveness::Dead {
            since: Duration::ZERO,
        },
    );
    let specs = ParsedSpecs::parse(&state);
    let input = PlacementInput {
        view: View::new(&state, &specs),
        local: &local,
        liveness: &liveness,
    };
    assert_eq!(
        place_all(input)["cam"].unplaced.as_deref(),
        Some("none of the 1 eligible nodes is alive")
    );
}

fn plan_of(state: &MeshState, local: &str, liveness: &LivenessView) -> LocalPlan {
    let specs = ParsedSpecs::parse(state);
    let local = NodeId::from(local);
    let input = PlacementInput {
        view: View::new(state, &specs),
        local: &local,
        liveness,
    };
    decide_local(input, &place_all(input))
}

#[test]
fn a_replaced_copy_is_kept_until_the_new_owner_is_ready() {
    let mut state = mesh(&[10, 10, 10]);
    let mut s = spec("web", 1);
    s.placement.sticky = false;
    add_service(&mut state, s, "id-2");
    claim(&mut state, "web", "id-1", InstanceState::Healthy, 1);
    let liveness = all_alive(&state);
    let plan = plan_of(&state, "id-1", &liveness);
    assert_eq!(plan.roles["web"].0, LocalRole::HandOver);
    claim(&mut state, "web", "id-2", InstanceState::Starting, 2);
    assert_eq!(
        plan_of(&state, "id-1", &liveness).roles["web"].0,
        LocalRole::HandOver
    );
    claim(&mut state, "web", "id-2", InstanceState::Healthy, 2);
    assert!(!plan_of(&state, "id-1", &liveness).roles.contains_key("web"));
    // The owner keeps the epoch it claimed with.
    assert_eq!(
        plan_of(&state, "id-2", &liveness).roles["web"].0,
        LocalRole::Run {
            epoch: 2,
            generation: 0
        }
    );
}

#[test]
fn an_exclusive_copy_needs_a_majority_and_waits_out_the_fence() {
    let mut state = mesh(&[10, 10, 10]);
    let mut s = spec("lock", 1);
    s.placement.exclusive = true;
    s.stop_grace = Duration::from_secs(1);
    add_service(&mut state, s, "id-0");
    claim(&mut state, "lock", "id-0", InstanceState::Healthy, 4);
    // id-0 is cut off: from its side both others are suspect, so it has no majority and
    // stops its copy.
    let mut cut = all_alive(&state);
    cut.peers.insert(NodeId::from("id-1"), Liveness::Suspect);
    cut.peers.insert(NodeId::from("id-2"), Liveness::Suspect);
    let plan = plan_of(&state, "id-0", &cut);
    assert!(!plan.majority);
    assert_eq!(plan.roles["lock"].0, LocalRole::Fenced);
    assert!(plan.runs().next().is_none());
    // The majority side: id-0 dead for 0.5 s; the fence is stop_grace + 0.5 s.
    let mut majority = all_alive(&state);
    majority.peers.insert(
        NodeId::from("id-0"),
        Liveness::Dead {
            since: Duration::from_millis(500),
        },
    );
    let owner = owners_from(&state, "id-1", &majority)["lock"][0].clone();
    let plan = plan_of(&state, owner.as_str(), &majority);
    assert!(plan.majority);
    assert_eq!(plan.roles["lock"].0, LocalRole::Fenced);
    assert_eq!(plan.recheck_in, Some(Duration::from_secs(1)));
    majority.peers.insert(
        NodeId::from("id-0"),
        Liveness::Dead {
            since: Duration::from_millis(1500),
        },
    );
    // Past the fence it asks the members it sees alive about id-0's copy.
    let plan = plan_of(&state, owner.as_str(), &majority);
    assert_eq!(plan.roles["lock"].0, LocalRole::Fenced);
    let asked = &plan.confirm["lock"];
    let other = if owner.as_str() == "id-1" {
        "id-2"
    } else {
        "id-1"
    };
    assert_eq!(asked.ask, [NodeId::from(other)]);
    assert_eq!(asked.about, [NodeId::from("id-0")]);
    assert_eq!(asked.needed, 1, "with itself, 2 of 3");
    // Confirmed a moment ago: it starts.
    majority
        .confirmed
        .insert("lock".into(), Duration::from_millis(10));
    assert_eq!(
        plan_of(&state, owner.as_str(), &majority).roles["lock"].0,
        LocalRole::Run {
            epoch: 5,
            generation: 0
        },
        "the fencing token grows with the change of owner"
    );
}

#[test]
fn a_node_back_from_a_partition_waits_for_the_fence_before_it_starts_an_exclusive_copy() {
    // id-2 was cut off; the majority (id-0, id-1) moved the lock to id-0. The partition heals:
    // id-2 sees id-1 again (a majority) at once, but not yet id-1's document (no claim of
    // id-0's) nor id-0 alive (dead since it was cut off, long ago).
    let mut state = mesh(&[10, 10, 10]);
    let mut s = spec("lock", 1);
    s.placement.exclusive = true;
    s.stop_grace = Duration::from_secs(1);
    add_service(&mut state, s, "id-2");
    let mut back = all_alive(&state);
    back.peers.insert(
        NodeId::from("id-0"),
        Liveness::Dead {
            since: Duration::from_secs(10),
        },
    );
    back.majority_for = Duration::from_millis(100);
    let plan = plan_of(&state, "id-2", &back);
    assert!(plan.majority);
    assert_eq!(plan.roles["lock"].0, LocalRole::Fenced);
    assert_eq!(plan.recheck_in, Some(Duration::from_millis(1400)));
    // id-1's document arrives: id-0's claim. Still fenced, whatever id-0 looks like.
    claim(&mut state, "lock", "id-0", InstanceState::Healthy, 2);
    assert_eq!(
        plan_of(&state, "id-2", &back).roles["lock"].0,
        LocalRole::Fenced
    );
    // Meanwhile id-0 is seen alive again: it keeps the lock (the newer claim), id-2 has no part.
    back.peers.insert(NodeId::from("id-0"), Liveness::Alive);
    assert!(!plan_of(&state, "id-2", &back).roles.contains_key("lock"));
    // Had id-2 held the majority all along, id-0 gone for 10 s would be fenced long enough.
    back.peers.insert(
        NodeId::from("id-0"),
        Liveness::Dead {
            since: Duration::from_secs(10),
        },
    );
    back.majority_for = Duration::from_secs(10);
    let plan = plan_of(&state, "id-2", &back);
    assert_eq!(plan.roles["lock"].0, LocalRole::Fenced);
    assert!(
        plan.confirm.contains_key("lock"),
        "it asks before it starts"
    );
    // id-1 sees id-0 up with its copy: no confirmation, no start (see
    // `the_members_answer_which_copies_they_see_up`). Confirmed, it starts; a confirmation
    // older than CONFIRMATION_VALID does not count.
    back.confirmed
        .insert("lock".into(), CONFIRMATION_VALID + Duration::from_millis(1));
    assert_eq!(
        plan_of(&state, "id-2", &back).roles["lock"].0,
        LocalRole::Fenced
    );
    back.confirmed.insert("lock".into(), Duration::ZERO);
    assert!(matches!(
        plan_of(&state, "id-2", &back).roles["lock"].0,
        LocalRole::Run { .. }
    ));
}

#[test]
fn the_members_answer_which_copies_they_see_up() {
    let mut state = mesh(&[10, 10, 10]);
    let mut s = spec("lock", 1);
    s.placement.exclusive = true;
    add_service(&mut state, s, "id-0");
    claim(&mut state, "lock", "id-0", InstanceState::Healthy, 2);
    claim(&mut state, "lock", "id-2", InstanceState::Stopped, 1);
    let view = all_alive(&state);
    let answer = |state: &MeshState, local: &str, view: &LivenessView, asked: &[&str]| {
        let local = NodeId::from(local);
        let asked: Vec<NodeId> = asked.iter().map(|n| NodeId::from(*n)).collect();
        let specs = ParsedSpecs::parse(state);
        up_holders(
            PlacementInput {
                view: View::new(state, &specs),
                local: &local,
                liveness: view,
            },
            "lock",
            &asked,
        )
    };
    // id-1 sees id-0 up with its copy (its own document shows it), asked or not. A node
    // asked about counts when it is up, whatever the answerer's document says of its copy
    // (the asker's may be newer; an old record only delays the start until the documents
    // agree).
    assert_eq!(answer(&state, "id-1", &view, &[]), [NodeId::from("id-0")]);
    assert_eq!(
        answer(&state, "id-1", &view, &["id-2"]),
        [NodeId::from("id-0"), NodeId::from("id-2")]
    );
    // The answerer itself, when its own copy runs.
    assert_eq!(
        answer(&state, "id-0", &view, &["id-0"]),
        [NodeId::from("id-0")]
    );
    // Dead in the answerer's view: not up.
    let mut dead = view.clone();
    dead.peers.insert(
        NodeId::from("id-0"),
        Liveness::Dead {
            since: Duration::from_secs(5),
        },
    );
    assert!(answer(&state, "id-1", &dead, &["id-0"]).is_empty());
}

#[test]
fn an_exclusive_owner_keeps_its_copy_while_another_node_s_record_still_shows_one() {
    // After a heal: id-0 runs the lock (epoch 2); id-2's record from before the partition
    // still says healthy (epoch 1) until id-2's newer records arrive. id-0 keeps running; id-2
    // is not an owner and would stop a copy at once.
    let mut state = mesh(&[10, 10, 10]);
    let mut s = spec("lock", 1);
    s.placement.exclusive = true;
    add_service(&mut state, s, "id-2");
    claim(&mut state, "lock", "id-0", InstanceState::Healthy, 2);
    claim(&mut state, "lock", "id-2", InstanceState::Healthy, 1);
    let liveness = all_alive(&state);
    assert_eq!(
        plan_of(&state, "id-0", &liveness).roles["lock"].0,
        LocalRole::Run {
            epoch: 2,
            generation: 0
        }
    );
    assert!(
        !plan_of(&state, "id-2", &liveness)
            .roles
            .contains_key("lock")
    );
}

#[test]
fn a_two_node_mesh_cannot_fail_over_an_exclusive_service() {
    let mut state = mesh(&[10, 10]);
    let mut s = spec("lock", 1);
    s.placement.exclusive = true;
    add_service(&mut state, s, "id-0");
    let mut liveness = all_alive(&state);
    liveness.peers.insert(
        NodeId::from("id-0"),
        Liveness::Dead {
            since: Duration::from_secs(60),
        },
    );
    let plan = plan_of(&state, "id-1", &liveness);
    assert!(!plan.majority, "1 of 2 members is not a majority");
    let (role, why) = &plan.roles["lock"];
    assert_eq!(*role, LocalRole::Fenced, "it owns lock but must not run it");
    assert!(
        why.starts_with("no majority: sees 1 of 2 members alive"),
        "{why}"
    );
}

#[test]
fn unknown_nodes_count_as_alive_only_just_after_start() {
    let state = mesh(&[10, 10]);
    let mut liveness = LivenessView {
        peers: BTreeMap::new(),
        running_for: Duration::from_secs(1),
        majority_for: Duration::ZERO,
        confirmed: BTreeMap::new(),
    };
    let local = NodeId::from("id-0");
    let other = NodeId::from("id-1");
    let record = state.nodes.get("id-1");
    assert_eq!(liveness.of(&local, &other, record), Liveness::Alive);
    liveness.running_for = UNKNOWN_GRACE + Duration::from_secs(2);
    assert_eq!(
        liveness.of(&local, &other, record),
        Liveness::Dead {
            since: Duration::from_secs(2)
        }
    );
}

#[test]
fn ln_matches_the_c_library_closely_and_hash_units_stay_inside_zero_one() {
    for x in [1e-300, 1e-9, 0.001, 0.1, 0.25, 0.5, 0.7, 0.999_999, 1.0] {
        let ours = ln(x);
        let libm = x.ln();
        assert!(
            (ours - libm).abs() <= 1e-12 * libm.abs().max(1.0),
            "{x}: {ours} vs {libm}"
        );
    }
    for i in 0..1000 {
        let u = hash_unit("svc", &format!("node-{i}"));
        assert!(u > 0.0 && u < 1.0);
    }
    // Fixed values: every agent, on every platform and version, must compute these.
    // Pinned: a change here changes every mesh's placement (a wire-level change).
    assert_eq!(hash_unit("web", "id-0").to_bits(), 4601271148787832417);

    assert_eq!(ordinal(1), "1st");
    assert_eq!(ordinal(12), "12th");
    assert_eq!(ordinal(23), "23rd");
}

#[test]
fn tag_bounds_of_requirements_are_those_of_node_tags() {
    use crate::supervisor::spec::placement::{MAX_TAG_KEY_LEN, MAX_TAG_VALUE_LEN};
    assert_eq!(MAX_TAG_KEY_LEN, crate::state::MAX_TAG_KEY);
    assert_eq!(MAX_TAG_VALUE_LEN, crate::state::MAX_TAG_VALUE);
}

#[test]
fn a_dependency_on_another_node_is_reached_at_its_nodes_address_and_first_port() {
    let mut state = mesh(&[10, 10, 10]);
    state.nodes.get_mut("id-1").expect("node").addrs = vec![
        "/ip4/127.0.0.1/udp/7400/quic-v1".into(),
        "/ip4/192.168.1.20/udp/7400/quic-v1".into(),
    ];
    state.nodes.get_mut("id-2").expect("node").addrs = vec!["/ip6/fd00::2/udp/7400/quic-v1".into()];
    let mut app = spec("app", 1);
    app.after = vec!["db-main".into()];
    add_service(&mut state, spec("db-main", 1), "id-1");
    add_service(&mut state, app.clone(), "id-0");
    let mut db = InstanceRecord {
        service: "db-main".into(),
        node: NodeId::from("id-1"),
        state: InstanceState::Healthy,
        ports: vec![5432],
        ..Default::default()
    };
    state
        .instances
        .insert(instance_key("db-main", "id-1"), db.clone());
    let specs = ParsedSpecs::parse(&state);
    let mut liveness = all_alive(&state);
    let local = NodeId::from("id-0");
    let env = |liveness: &LivenessView, state: &MeshState| {
        let input = PlacementInput {
            view: View::new(state, &specs),
            local: &local,
            liveness,
        };
        dependency_endpoints(input, &app)
    };
    assert_eq!(
        env(&liveness, &state)["MESH_ENDPOINT_DB_MAIN"],
        "192.168.1.20:5432"
    );
    // Its node dead: no endpoint from it; a copy on id-2 (IPv6) is used instead.
    liveness.peers.insert(
        NodeId::from("id-1"),
        Liveness::Dead {
            since: Duration::ZERO,
        },
    );
    assert!(env(&liveness, &state).is_empty());
    db.node = NodeId::from("id-2");
    state
        .instances
        .insert(instance_key("db-main", "id-2"), db.clone());
    assert_eq!(
        env(&liveness, &state)["MESH_ENDPOINT_DB_MAIN"],
        "[fd00::2]:5432"
    );
    // A ready copy here is reached on loopback (and preferred).
    db.node = NodeId::from("id-0");
    db.ports = vec![5433];
    state.instances.insert(instance_key("db-main", "id-0"), db);
    assert_eq!(
        env(&liveness, &state)["MESH_ENDPOINT_DB_MAIN"],
        "127.0.0.1:5433"
    );
}

#[test]
fn an_exclusive_start_waits_a_fence_after_any_member_left_and_after_regaining_the_majority() {
    let mut state = mesh(&[10, 10, 10, 10, 10]);
    let mut s = spec("lock", 1);
    s.placement.exclusive = true;
    s.stop_grace = Duration::from_secs(1);
    add_service(&mut state, s, "id-0");
    // No copy anywhere in the document, but id-4 went away 0.2 s ago: its claim may not have
    // reached us before it was cut off.
    let mut liveness = all_alive(&state);
    liveness.peers.insert(
        NodeId::from("id-4"),
        Liveness::Dead {
            since: Duration::from_millis(200),
        },
    );
    let plan = plan_of(&state, "id-0", &liveness);
    assert_eq!(plan.roles["lock"].0, LocalRole::Fenced);
    assert_eq!(plan.recheck_in, Some(Duration::from_millis(1300)));
    // Long gone: no wait, once 2 of the 3 others it sees alive confirm (with itself, a strict
    // majority of 5).
    liveness.peers.insert(
        NodeId::from("id-4"),
        Liveness::Dead {
            since: Duration::from_secs(60),
        },
    );
    let plan = plan_of(&state, "id-0", &liveness);
    assert_eq!(plan.confirm["lock"].needed, 2);
    assert_eq!(plan.confirm["lock"].ask.len(), 3);
    assert!(plan.confirm["lock"].about.is_empty());
    liveness.confirmed.insert("lock".into(), Duration::ZERO);
    assert!(matches!(
        plan_of(&state, "id-0", &liveness).roles["lock"].0,
        LocalRole::Run { .. }
    ));
    // Back from the minority: the majority seen for 0.5 s only.
    liveness.majority_for = Duration::from_millis(500);
    let plan = plan_of(&state, "id-0", &liveness);
    assert_eq!(plan.roles["lock"].0, LocalRole::Fenced);
    assert_eq!(plan.recheck_in, Some(Duration::from_secs(1)));
    // A copy already running here keeps running while the majority holds.
    claim(&mut state, "lock", "id-0", InstanceState::Healthy, 1);
    assert!(matches!(
        plan_of(&state, "id-0", &liveness).roles["lock"].0,
        LocalRole::Run { .. }
    ));
}

#[test]
fn the_majority_clock_counts_from_when_the_majority_was_first_seen_without_a_break() {
    let start = std::time::Instant::now();
    let mut clock = MajorityClock::default();
    assert_eq!(clock.observe(true, start), Duration::ZERO);
    assert_eq!(
        clock.observe(true, start + Duration::from_secs(2)),
        Duration::from_secs(2)
    );
    assert_eq!(
        clock.observe(false, start + Duration::from_secs(3)),
        Duration::ZERO
    );
    assert_eq!(
        clock.observe(true, start + Duration::from_secs(4)),
        Duration::ZERO
    );
    assert_eq!(
        clock.observe(true, start + Duration::from_secs(5)),
        Duration::from_secs(1)
    );
}

#[test]
fn a_removed_node_is_neither_eligible_nor_a_member() {
    let mut state = mesh(&[10, 10, 10]);
    add_service(&mut state, spec("web", 1), "id-2");
    state.nodes.get_mut("id-2").unwrap().removed_at_ms = Some(1);
    let mut liveness = all_alive(&state);
    liveness.peers.remove(&NodeId::from("id-2"));
    let owners = owners_from(&state, "id-0", &liveness);
    assert!(!owners["web"].contains(&NodeId::from("id-2")));
    assert_eq!(owners["web"].len(), 1);
    let specs = ParsedSpecs::parse(&state);
    let local = NodeId::from("id-0");
    let input = PlacementInput {
        view: View::new(&state, &specs),
        local: &local,
        liveness: &liveness,
    };
    // Two members left, both seen: a majority without the removed one.
    assert_eq!(majority(input), (2, 2));
}
