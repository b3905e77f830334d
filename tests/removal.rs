//! Removing a member and rotating the mesh key, with real agents on loopback (`--no-mdns`):
//! `mesh remove` cuts a node off for good; after `mesh key rotate` a fresh identity made with
//! the old key is refused, while a member that was offline during the rotation comes back
//! with the old key, is let in by its node id, and is handed the new one.

#[path = "support/agent.rs"]
mod agent;

use agent::{Agent, key_file, key_in, wait_until};

fn counter(agent: &Agent, name: &str) -> u64 {
    agent.status().expect("status")["counters"][name]
        .as_u64()
        .unwrap_or(0)
}

/// `id`'s state in `mesh peers --all` (removed nodes included).
fn state_all(agent: &Agent, id: &str) -> Option<String> {
    agent
        .json(&["peers", "--all"])
        .as_array()?
        .iter()
        .find(|p| p["id"] == id)
        .map(|p| p["state"].as_str().unwrap_or_default().to_string())
}

#[test]
fn a_removed_node_stays_out_and_a_rotation_keeps_out_its_old_key_but_not_an_offline_member() {
    let tmp = tempfile::tempdir().unwrap();
    let key = key_file(tmp.path());
    let a = Agent::start(tmp.path(), "a", &key, &[]);
    let seed = [a.quic_addr()];
    let mut b = Agent::start(tmp.path(), "b", &key, &seed);
    let c = Agent::start(tmp.path(), "c", &key, &seed);
    let (b_id, c_id) = (b.id(), c.id());
    wait_until("a and b see everyone alive", || {
        [&a, &b]
            .iter()
            .all(|x| {
                x.state_of(&b_id).as_deref() == Some("alive")
                    && x.state_of(&c_id).as_deref() == Some("alive")
            })
            .then_some(())
    });

    // b goes offline; a removes c and at once rotates the key (while c's links still stand,
    // for the moment that lets the removal reach it): c must not get the new key.
    b.signal("-TERM");
    let old_mesh = a.status().unwrap()["mesh_id"].as_str().unwrap().to_string();
    let out = a.cli(&["remove", "c"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed"));
    let out = a.cli(&["key", "rotate", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rotated: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // c: listed only with --all, as removed; its attempts to come back closed on arrival.
    wait_until("a shows c removed", || {
        (state_all(&a, &c_id).as_deref() == Some("removed")).then_some(())
    });
    assert!(
        a.state_of(&c_id).is_none(),
        "`mesh peers` lists it only with --all"
    );
    let listed = a.cli(&["peers"]);
    assert!(
        !String::from_utf8_lossy(&listed.stdout).contains(" c "),
        "peers hides c"
    );
    wait_until("a refuses c's connections", || {
        (counter(&a, "removed_refused") > 0).then_some(())
    });
    assert_eq!(
        c.status().unwrap()["mesh_id"],
        old_mesh.as_str(),
        "the removed node never got the new key: {}",
        c.log()
    );
    let new_mesh = rotated["mesh_id"].as_str().unwrap().to_string();
    assert_ne!(new_mesh, old_mesh);
    assert_eq!(rotated["generation"], 1);
    assert_eq!(key_in(&a.dir), new_mesh, "the new key is stored");
    assert_eq!(a.status().unwrap()["mesh_id"], new_mesh.as_str());

    // A fresh identity with the old key (what the removed device could make): refused.
    let failed = |x: &Agent| counter(x, "admission_abandoned") + counter(x, "admission_bad_proof");
    let before = failed(&a);
    let d = Agent::start(tmp.path(), "d", &key, &seed);
    wait_until("a refuses d's old key", || {
        (failed(&a) > before).then_some(())
    });
    assert!(a.state_of(&d.id()).is_none(), "d never listed");
    assert_eq!(
        d.status().unwrap()["mesh_id"],
        old_mesh.as_str(),
        "d never got the key"
    );

    // b comes back with the old key file: let in by its node id, handed the new key, which
    // it stores.
    let b = Agent::start(tmp.path(), "b", &key, &seed);
    assert_eq!(b.id(), b_id);
    wait_until("b holds the new key and a sees it alive", || {
        (b.status().ok()?["mesh_id"] == new_mesh.as_str()
            && a.state_of(&b_id).as_deref() == Some("alive"))
        .then_some(())
    });
    assert_eq!(key_in(&b.dir), new_mesh);
    let events = b.events(None);
    assert!(
        events.iter().any(|e| e["kind"] == "key-rotated"),
        "{events:#?}"
    );
    assert!(a.state_of(&d.id()).is_none());
}
