//! Issue 12's NAT acceptance in the network-namespace lab: `lab.sh up 6 --subnets 4 --nat 1
//! --nat 2 --hard-nat 3` puts h1 and h5 on the open subnet 0, h2 and h6 behind one NAT router
//! (subnet 1), h3 behind another (subnet 2), h4 behind a symmetric one (subnet 3, a random
//! port per flow). h1 serves the rendezvous point and a relay; every other agent is given only
//! the point. The members behind NAT learn it from where members see them, listen through h1's
//! relay, and are listed alive everywhere. Between the two ordinary NATs, hole punching
//! (DCUtR) turns the relayed links `direct`; the symmetric NAT's links to other NATs stay
//! `relayed`, and membership, sync and services work over them: a service added behind the
//! symmetric NAT is seen healthy behind another. Times are printed, not asserted.

#[macro_use]
#[path = "support/lab.rs"]
mod lab;

use std::time::Instant;

use lab::{Lab, MESH_BIN};

/// Host `k`'s link to `id` (`direct`, `relayed`, `none`), if listed.
fn link(lab: &Lab, k: usize, id: &str) -> Option<String> {
    lab.peers(k)
        .ok()?
        .iter()
        .find(|r| r["id"] == id)
        .and_then(|r| r["link"].as_str().map(str::to_owned))
}

#[test]
fn members_behind_nats_reach_each_other_through_a_member_relay_and_punch_holes_where_they_can() {
    require_lab!();
    let lab = Lab::up_with(
        "pnt",
        6,
        &[
            "--subnets",
            "4",
            "--nat",
            "1",
            "--nat",
            "2",
            "--hard-nat",
            "3",
        ],
    );
    let key = lab.new_key("mesh.key");
    lab.start_no_mdns(1, &key, &["--rendezvous-server", "--relay-server"]);
    let point = lab.point_addr(1, "/ip4/10.77.0.1/udp/");
    let started = Instant::now();
    for k in 2..=6 {
        lab.start_no_mdns(k, &key, &["--rendezvous", &point]);
    }
    let ids: Vec<String> = (1..=6).map(|k| lab.node_id(k)).collect();
    lab.wait("all six list each other alive", || lab.all_alive(&ids));
    eprintln!(
        "[{}] all alive {} ms after the first member started",
        lab.id,
        started.elapsed().as_millis()
    );
    // Behind NAT, and reachable through h1's relay; h1 and h4 are not behind NAT.
    for k in [2, 3, 4, 6] {
        lab.wait(
            &format!("h{k} knows it is behind NAT and holds a relay slot"),
            || {
                lab.status(k).is_ok_and(|s| {
                    let r = &s["reachability"];
                    r["behind_nat"].is_string()
                        && r["relayed_via"] == ids[0].as_str()
                        && r["relay_reserved"] == true
                })
            },
        );
    }
    for k in [1, 5] {
        assert!(lab.status(k).unwrap()["reachability"]["behind_nat"].is_null());
    }
    // Hole punching turns the links between the ordinary NATs direct (their routers keep the
    // source port and drop what is unsolicited, as home routers do); the symmetric NAT's links
    // to the other NATs stay relayed; links to the open subnet and within a NAT are direct.
    let natted = [2, 3, 4, 6];
    lab.wait(
        "h4's links to the NATs relayed, every other link direct",
        || {
            (1..=6).all(|k| {
                (1..=6).filter(|&j| j != k).all(|j| {
                    let hard = (k == 4 || j == 4) && natted.contains(&k) && natted.contains(&j);
                    let want = if hard { "relayed" } else { "direct" };
                    link(&lab, k, &ids[j - 1]).as_deref() == Some(want)
                })
            })
        },
    );
    let punched: u64 = [2, 3, 4, 6]
        .iter()
        .map(|&k| {
            lab.status(k).unwrap()["reachability"]["hole_punches"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    assert!(punched >= 1, "no hole punch counted behind the NATs");
    // From the agents' logs: h3 (behind the second NAT) started listening, h2 (behind the
    // first) admitted it over the relay, then the punch made it direct.
    let h3_up = lab.log_times(3, "listening")[0];
    let after = |times: Vec<f64>| times.into_iter().find(|t| *t >= h3_up).unwrap_or(f64::NAN);
    let relayed = after(lab.log_times(2, "name=h3"));
    let direct = after(
        [
            lab.log_times(2, "hole punch succeeded"),
            lab.log_times(3, "hole punch succeeded"),
        ]
        .concat(),
    );
    eprintln!(
        "[{}] h3 started listening; h2 admitted it through the relay after {:.0} ms; a hole \
         punch made a NAT-to-NAT link direct after {:.0} ms ({punched} punches)",
        lab.id,
        (relayed - h3_up) * 1000.0,
        (direct - h3_up) * 1000.0
    );
    let served = &lab.status(1).unwrap()["reachability"]["relay_server"];
    assert!(served["circuits"].as_u64().unwrap() >= 1, "{served}");
    eprintln!("[{}] h1's relay: {served}", lab.id);

    // A service added behind the symmetric NAT (h4) is seen from another NAT (h2), whose only
    // link to h4 goes through the relay.
    let out = lab.exec(
        4,
        &[
            MESH_BIN, "service", "add", "natted", "--", "sleep", "100000",
        ],
    );
    lab::check(&out, "h4: mesh service add");
    lab.wait("h2 sees h4's service healthy", || {
        lab.mesh_json(2, &["services", "--json"]).is_ok_and(|v| {
            v.as_array().is_some_and(|rows| {
                rows.iter()
                    .any(|r| r["name"] == "natted" && r.to_string().contains("healthy"))
            })
        })
    });
}
