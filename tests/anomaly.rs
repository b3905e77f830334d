//! Anomaly flags on a real agent: a service whose memory jumps far above its baseline raises
//! one `anomaly` event with the figures, flagged in `mesh services`; a steady service raises
//! none; the baselines survive a restart of the agent (the flag comes back before a new
//! baseline could have been learnt).
//!
//! The sampler runs every 100 ms here instead of 15 s, so the 20 samples of warm-up take 2 s.
//! The statistics themselves (10 minutes of a noisy steady service without a flag) are tested
//! in `src/insight.rs`.

#[path = "support/agent.rs"]
mod agent;

use agent::{Agent, key_file, ok, wait_until};
use serde_json::Value;

/// Samples of `service` in the agent's history.
fn samples_of(a: &Agent, service: &str) -> usize {
    let out = ok(a.cli(&["api", "GET", "/v1/history"]));
    let history: Value = serde_json::from_str(&out).unwrap();
    history["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["memory"].get(service).is_some())
        .count()
}

/// The `anomaly` events of `service` about its memory (a burst of CPU while the memory is
/// written may raise one of its own at this sampling rate).
fn anomalies(a: &Agent, service: &str) -> Vec<Value> {
    a.events(None)
        .into_iter()
        .filter(|e| e["service"] == service && e["kind"] == "anomaly")
        .inspect(|e| eprintln!("event: {}", e["reason"]))
        .filter(|e| {
            e["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("memory"))
        })
        .collect()
}

#[test]
fn a_memory_jump_raises_one_anomaly_with_its_figures_and_the_baseline_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path());
    let fast = ["--sample-interval-ms", "100"];
    let mut a = Agent::start_with(dir.path(), "n1", &key, &[], &fast);
    let trigger = dir.path().join("grow");
    // Small until the trigger file exists, then 200 MiB written (so resident).
    let script = format!(
        "import os, time\nwhile not os.path.exists({:?}): time.sleep(0.05)\nb = b'x' * (200 << 20)\ntime.sleep(100000)\n",
        trigger.display().to_string()
    );
    ok(a.cli(&["service", "add", "hog", "--", "python3", "-c", &script]));
    ok(a.cli(&["service", "add", "calm", "--", "sleep", "100000"]));
    a.wait_service_state("hog", "healthy");
    a.wait_service_state("calm", "healthy");
    wait_until("a baseline of 30 samples", || {
        (samples_of(&a, "hog") >= 30).then_some(())
    });
    assert!(anomalies(&a, "hog").is_empty(), "nothing before the jump");

    std::fs::write(&trigger, "").unwrap();
    let event = wait_until("the anomaly event", || anomalies(&a, "hog").pop());
    let reason = event["reason"].as_str().unwrap();
    eprintln!("anomaly: {reason}");
    assert!(
        reason.starts_with("memory is ") && reason.contains("far above its baseline of"),
        "{reason}"
    );
    let row = a.service("hog").unwrap();
    assert!(
        row["anomaly"]
            .as_str()
            .is_some_and(|f| f.contains("memory")),
        "{row}"
    );
    let table = ok(a.cli(&["services"]));
    assert!(
        table.contains("FLAG") && table.contains("anomaly"),
        "{table}"
    );
    // It stays one event while the memory stays high.
    let seen = samples_of(&a, "hog");
    wait_until("20 more samples", || {
        (samples_of(&a, "hog") >= seen + 20).then_some(())
    });
    assert_eq!(anomalies(&a, "hog").len(), 1);
    let calm: Vec<Value> = a
        .events(None)
        .into_iter()
        .filter(|e| {
            e["service"] == "calm" && e["kind"].as_str().is_some_and(|k| k.starts_with("anomaly"))
        })
        .collect();
    assert!(
        calm.is_empty(),
        "a steady service is never flagged: {calm:?}"
    );

    // The baselines are on disk at stop and read at start: the flag comes back before the 20
    // samples a new baseline would need.
    a.signal("-TERM");
    let file = std::fs::read_to_string(a.dir.join("baselines.json")).unwrap();
    assert!(
        file.contains("\"hog\"") && file.contains("\"calm\""),
        "{file}"
    );
    let a = Agent::start_with(dir.path(), "n1", &key, &[], &fast);
    let again = wait_until("the anomaly after the restart", || {
        anomalies(&a, "hog").pop()
    });
    let samples = samples_of(&a, "hog");
    eprintln!(
        "after the restart, flagged again within {samples} samples: {}",
        again["reason"]
    );
    assert!(
        samples < mesh::insight::WARM_UP_SAMPLES as usize,
        "flagged after {samples} samples: the baseline was learnt again, not kept"
    );
}
