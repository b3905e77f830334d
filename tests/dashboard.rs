//! The web dashboard in a real browser: headless Chromium (through chromedriver) against three
//! real agents on loopback. The page lists the nodes, shows a service crash without a reload,
//! refuses a restart without the credential and performs it after a login, and keeps working
//! (same page, no reload) across a restart of the agent it reads.
//!
//! Skips, saying why, without chromium and chromium-driver (CI installs them). With
//! `MESH_SCREENSHOTS=DIR`, saves the overview, a service's page and a phone-sized overview
//! there (the README's screenshots come from this).

#[path = "support/agent.rs"]
mod agent;
#[path = "support/webdriver.rs"]
mod webdriver;

use std::time::Instant;

use agent::{Agent, key_file, wait_until};
use serde_json::{Value, json};
use webdriver::{Browser, free_port};

#[test]
fn the_dashboard_shows_the_mesh_live_and_changes_it_only_after_login() {
    let browser = match Browser::start(1280, 1400) {
        Ok(b) => b,
        Err(reason) => {
            eprintln!(
                "SKIP the_dashboard_shows_the_mesh_live_and_changes_it_only_after_login: {reason}"
            );
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path());
    let sampling = ["--sample-interval-ms", "500"];
    let n1 = Agent::start_with(dir.path(), "n1", &key, &[], &sampling);
    let peer = vec![n1.quic_addr()];
    let n2 = Agent::start_with(dir.path(), "n2", &key, &peer, &sampling);
    // The page reads n3, whose API address stays the same across its restart.
    let api = format!("127.0.0.1:{}", free_port());
    let n3_args = ["--sample-interval-ms", "500", "--api", api.as_str()];
    let mut n3 = Agent::start_with(dir.path(), "n3", &key, &peer, &n3_args);
    n1.wait_members(3);
    n1.add_service(&["crashy", "--node", "n2", "--", "sleep", "100000"]);
    n1.add_service(&[
        "web",
        "--node",
        "n3",
        "--port",
        "auto",
        "--health",
        "http",
        "--",
        "python3",
        "-m",
        "http.server",
        "--bind",
        "127.0.0.1",
        "$PORT",
    ]);
    n1.wait_service_state("crashy", "healthy");
    n1.wait_service_state("web", "healthy");

    browser.goto(&format!("http://{api}/"));
    browser.wait_for(
        "three nodes on the page",
        "return document.querySelectorAll('#nodes tbody tr').length",
        |v| v == 3,
    );
    let names = browser.eval(
        "return [...document.querySelectorAll('#nodes tbody tr')].map(r => r.dataset.node).sort()",
        json!([]),
    );
    assert_eq!(names, json!(["n1", "n2", "n3"]));
    browser.wait_for(
        "both services healthy on the page",
        "return [...document.querySelectorAll('#services tbody td.state')].map(td => td.textContent).join(',')",
        |v| v == "healthy,healthy",
    );
    // A mark that a reload would wipe.
    browser.eval("window.meshMark = 'no reload'", json!([]));

    // A crash shows up without a reload.
    let pid = n1.service("crashy").unwrap()["pid"].as_u64().unwrap();
    let killed = Instant::now();
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let shown = browser.wait_for(
        "crashy's restart count on the page",
        "const row = document.querySelector('#services tr[data-service=\"crashy\"]');
         return row ? row.querySelector('td.restarts').textContent : null;",
        |v| v == "1",
    );
    eprintln!(
        "crash on the page {} ms after kill -9 (restarts {shown})",
        killed.elapsed().as_millis()
    );
    assert_eq!(
        browser.eval("return window.meshMark", json!([])),
        "no reload"
    );

    // Without the credential: the buttons are disabled and the API refuses the page's request.
    let disabled = browser.eval(
        "return document.querySelector('button[data-action=restart][data-service=crashy]').disabled",
        json!([]),
    );
    assert_eq!(disabled, true);
    let refused = browser.eval_async(
        "const done = arguments[arguments.length - 1];
         fetch('/v1/services/crashy/restart', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: '{}'})
           .then(r => r.json().then(j => done([r.status, j.code])));",
        json!([]),
    );
    assert_eq!(refused, json!([401, "unauthorized"]));
    let restarts_before = n1.service("crashy").unwrap()["restarts"].as_u64().unwrap();

    // A wrong token is refused; the right one logs in.
    browser.type_into("#login-token", "not-the-token");
    browser.click("#login-button");
    browser.wait_for(
        "the refusal",
        "return document.getElementById('message').textContent",
        |v| v.as_str().is_some_and(|s| s.contains("login refused")),
    );
    let token = std::fs::read_to_string(n3.dir.join("api.token")).unwrap();
    browser.type_into("#login-token", token.trim());
    browser.click("#login-button");
    browser.wait_for(
        "the session",
        "return !document.getElementById('session').hidden",
        |v| v == true,
    );
    // The cookie is out of the page's reach.
    assert_eq!(browser.eval("return document.cookie", json!([])), "");
    browser.wait_for(
        "the restart button enabled",
        "return document.querySelector('button[data-action=restart][data-service=crashy]').disabled",
        |v| v == false,
    );
    browser.click("button[data-action=restart][data-service=crashy]");
    wait_until("crashy restarted by the button", || {
        let s = n1.service("crashy")?;
        (s["restarts"].as_u64()? > restarts_before && s["state"] == "healthy").then_some(())
    });
    browser.wait_for(
        "the restart in the page's events",
        "return [...document.querySelectorAll('#events tbody tr')].some(r => r.dataset.service === 'crashy' && r.dataset.kind === 'restart' && /requested/.test(r.textContent))",
        |v| v == true,
    );

    if let Ok(out) = std::env::var("MESH_SCREENSHOTS") {
        let out = std::path::PathBuf::from(out);
        std::fs::create_dir_all(&out).unwrap();
        // Let the charts gather a few points.
        browser.wait_for(
            "a few samples",
            "return document.querySelectorAll('#chart-rtt polyline').length",
            |v| v.as_u64().unwrap_or(0) >= 2,
        );
        browser.screenshot(&out.join("dashboard-overview.png"));
        browser.goto(&format!("http://{api}/#service/web"));
        browser.wait_for(
            "web's page",
            "return document.getElementById('service-log').textContent.length",
            |v| v.as_u64().unwrap_or(0) > 0,
        );
        browser.screenshot(&out.join("dashboard-service.png"));
        browser.set_window(390, 844);
        browser.goto(&format!("http://{api}/"));
        browser.wait_for(
            "three nodes on the phone",
            "return document.querySelectorAll('#nodes tbody tr').length",
            |v| v == 3,
        );
        browser.screenshot(&out.join("dashboard-phone.png"));
        browser.set_window(1280, 1400);
        browser.goto(&format!("http://{api}/"));
        browser.wait_for(
            "three nodes again",
            "return document.querySelectorAll('#nodes tbody tr').length",
            |v| v == 3,
        );
        browser.eval("window.meshMark = 'no reload'", json!([]));
    }

    // The agent the page reads restarts: the page reconnects by itself, and the login holds.
    n3.signal("-TERM");
    browser.wait_for(
        "the page to notice",
        "return document.getElementById('conn').textContent",
        |v| v == "reconnecting",
    );
    let n3 = Agent::start_with(dir.path(), "n3", &key, &peer, &n3_args);
    browser.wait_for(
        "the page live again",
        "return document.getElementById('conn').textContent",
        |v| v == "live",
    );
    browser.wait_for(
        "three alive nodes after the restart",
        "return [...document.querySelectorAll('#nodes tbody td.state')].map(td => td.textContent).join(',')",
        |v| v == "alive,alive,alive",
    );
    assert_eq!(
        browser.eval("return window.meshMark", json!([])),
        "no reload"
    );
    let pid_before = n1.service("crashy").unwrap()["pid"].as_u64();
    browser.click("button[data-action=restart][data-service=crashy]");
    wait_until("crashy restarted after the agent restart", || {
        let s = n1.service("crashy")?;
        (s["pid"].as_u64() != pid_before && s["state"] == "healthy").then_some(())
    });
    drop(browser);
    let _: Vec<Value> = n3.events(None);
    drop((n1, n2, n3));
}
