//! Issue 12's acceptance in the network-namespace lab, routed topology (`lab.sh up 6
//! --subnets 2`: subnet 0 holds h1, h3, h5, subnet 1 holds h2, h4, h6; the hub routes unicast
//! between them and no multicast): agents given only a rendezvous point's address find each
//! other across the router; a host whose UDP is blocked links over TCP; a tag change crosses
//! the router; with the point down the members stay linked, and after its restart they
//! register again and a newcomer finds the mesh. Times are printed, not asserted (the figures
//! go to BENCHMARKS.md).

#[macro_use]
#[path = "support/lab.rs"]
mod lab;

use std::time::Instant;

use lab::Lab;
use serde_json::Value;

fn registered(lab: &Lab, k: usize) -> bool {
    lab.status(k).is_ok_and(|s| {
        s["rendezvous"][0]["registered_for_s"]
            .as_u64()
            .is_some_and(|left| left > 0)
    })
}

#[test]
fn members_across_a_router_find_each_other_through_a_point_and_a_udp_blocked_host_links_over_tcp() {
    require_lab!();
    let lab = Lab::up_with("prz", 6, &["--subnets", "2"]);
    let key = lab.new_key("mesh.key");
    let point_args = ["--rendezvous-server"];
    lab.start_no_mdns(1, &key, &point_args);
    let point = lab.point_addr(1, "/ip4/10.77.0.1/tcp/");
    lab.lab_ok(&["block-udp", "4"]);
    let member = |k: usize| lab.start_no_mdns(k, &key, &["--rendezvous", &point]);
    for k in 2..=4 {
        member(k);
    }
    let last_start = Instant::now();
    member(5);
    let ids: Vec<String> = (1..=5).map(|k| lab.node_id(k)).collect();
    lab.wait("hosts 1-5 see each other alive across the router", || {
        lab.all_alive(&ids)
    });
    // From the agents' own logs: h5's first listener up to the last admission anywhere.
    let started = lab.log_times(5, "listening")[0];
    let linked = (1..=5)
        .filter_map(|k| {
            lab.log_times(k, "peer admitted")
                .into_iter()
                .reduce(f64::max)
        })
        .fold(0.0, f64::max);
    eprintln!(
        "[{}] 5 agents (2 subnets, rendezvous only, h4 without UDP): the last linked {:.0} ms \
         after the last agent started listening (polling saw it {} ms after lab.sh start began)",
        lab.id,
        (linked - started) * 1000.0,
        last_start.elapsed().as_millis()
    );
    // h4 is linked over TCP to everyone.
    let rows = lab.peers(4).unwrap();
    for row in rows
        .iter()
        .filter(|r| r["self"] != true && r["connected"] == true)
    {
        let addrs = row["addrs"].to_string();
        assert!(
            addrs.contains("/tcp/"),
            "h4 links to {} over {addrs}",
            row["name"]
        );
    }
    // A tag set in subnet 1 reaches subnet 0.
    let out = lab.exec(2, &[lab::MESH_BIN, "tag", "add", "site=attic"]);
    lab::check(&out, "h2: mesh tag add");
    let h2 = ids[1].clone();
    lab.wait("h3 and h4 see h2's tag", || {
        [3, 4].iter().all(|&k| {
            lab.peers(k).is_ok_and(|rows| {
                rows.iter()
                    .any(|r| r["id"] == h2.as_str() && r["tags"]["site"] == "attic")
            })
        })
    });
    lab.wait("documents converge", || {
        let heads: Vec<Value> = (1..=5)
            .filter_map(|k| lab.state(k).ok().map(|s| s["heads"].clone()))
            .collect();
        heads.len() == 5 && heads.windows(2).all(|w| w[0] == w[1])
    });

    // The point stops: the members stay linked (peer exchange and their own links).
    lab.lab_ok(&["stop", "1"]);
    lab.wait("h2 sees the point left and the others alive", || {
        lab.state_of(2, &ids[0]).as_deref() == Some("left") && lab.sees_alive(2, &ids[1..])
    });
    // It comes back: members register again, and a newcomer given only the point finds all.
    lab.start_no_mdns(1, &key, &point_args);
    let back = Instant::now();
    lab.wait("h2 and h5 registered again", || {
        registered(&lab, 2) && registered(&lab, 5)
    });
    eprintln!(
        "[{}] point restarted: members registered again after {} ms",
        lab.id,
        back.elapsed().as_millis()
    );
    let newcomer = Instant::now();
    member(6);
    let mut all = ids.clone();
    all.push(lab.node_id(6));
    lab.wait(
        "the newcomer h6 sees everyone alive, and they see it",
        || lab.all_alive(&all),
    );
    eprintln!(
        "[{}] newcomer found the mesh {} ms after its start began",
        lab.id,
        newcomer.elapsed().as_millis()
    );
}
