//! `mesh top` in a real terminal: tmux runs it against two real agents; the test reads the
//! screen (`capture-pane`) and presses keys (`send-keys`). The views show the nodes, services
//! and events; a restart without the API token is refused on screen, and with it the service
//! restarts.
//!
//! Skips, saying why, without tmux (CI installs it).

#[path = "support/agent.rs"]
mod agent;

use std::process::Command;

use agent::{Agent, key_file, wait_until};

/// A tmux session on its own server socket (no clash with a user's tmux).
struct Tmux {
    socket: String,
    session: &'static str,
}

impl Tmux {
    fn start(socket: String, env: &[(&str, String)], command: &str) -> Tmux {
        let mut c = Command::new("tmux");
        c.args([
            "-L",
            &socket,
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            "150",
            "-y",
            "32",
        ]);
        for (k, v) in env {
            c.args(["-e", &format!("{k}={v}")]);
        }
        c.arg(command);
        assert!(c.status().unwrap().success(), "tmux new-session");
        Tmux {
            socket,
            session: "top",
        }
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p", "-t", self.session])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["-L", &self.socket, "send-keys", "-t", self.session];
        args.extend(keys);
        assert!(Command::new("tmux").args(args).status().unwrap().success());
    }

    /// Waits until the screen shows `what`; returns it.
    fn wait_for(&self, what: &str) -> String {
        wait_until(&format!("{what:?} on the screen"), || {
            let s = self.screen();
            s.contains(what).then_some(s)
        })
    }

    fn alive(&self) -> bool {
        Command::new("tmux")
            .args(["-L", &self.socket, "has-session", "-t", self.session])
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

#[test]
fn mesh_top_shows_the_mesh_and_restarts_a_service_only_with_the_token() {
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!(
            "SKIP mesh_top_shows_the_mesh_and_restarts_a_service_only_with_the_token: tmux is missing (Debian package tmux)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path());
    let n1 = Agent::start(dir.path(), "n1", &key, &[]);
    let n2 = Agent::start(dir.path(), "n2", &key, &[n1.quic_addr()]);
    n1.wait_members(2);
    n1.add_service(&["worker", "--node", "n2", "--", "sleep", "100000"]);
    n1.wait_service_state("worker", "healthy");
    let socket = format!("mesh-top-{}", std::process::id());

    // Without the token: the views work, the restart is refused on screen.
    let api = n1.api();
    {
        let tmux = Tmux::start(
            format!("{socket}-a"),
            &[
                ("MESH_API", api.clone()),
                (
                    "MESH_API_TOKEN_FILE",
                    dir.path().join("none").display().to_string(),
                ),
                ("HOME", dir.path().display().to_string()),
                (
                    "MESH_DATA_DIR",
                    dir.path().join("nowhere").display().to_string(),
                ),
            ],
            MESH_TOP,
        );
        let nodes = tmux.wait_for("n2 ");
        assert!(
            nodes.contains("[1 nodes]") && nodes.contains("n1 (self)"),
            "{nodes}"
        );
        tmux.keys(&["2"]);
        tmux.wait_for("> worker");
        tmux.keys(&["r"]);
        tmux.wait_for("restart worker on n2? y/n");
        tmux.keys(&["y"]);
        let refused = tmux.wait_for("restart worker refused");
        assert!(refused.contains("token"), "{refused}");
        tmux.keys(&["3"]);
        tmux.wait_for("[3 events]");
        tmux.wait_for("spawned");
        tmux.keys(&["q"]);
        wait_until("mesh top to quit", || (!tmux.alive()).then_some(()));
    }
    let before = n1.service("worker").unwrap()["pid"].as_u64();

    // With the token (found through the agent's data dir, as the CLI does): it restarts.
    let tmux = Tmux::start(
        format!("{socket}-b"),
        &[
            ("MESH_API", api),
            ("MESH_DATA_DIR", n1.dir.display().to_string()),
        ],
        MESH_TOP,
    );
    tmux.wait_for("n2 ");
    tmux.keys(&["Down", "r"]);
    tmux.wait_for("restart worker on n2? y/n");
    tmux.keys(&["y"]);
    tmux.wait_for("restart: worker on n2");
    wait_until("worker restarted", || {
        let s = n1.service("worker")?;
        (s["pid"].as_u64() != before && s["state"] == "healthy").then_some(())
    });
    tmux.keys(&["C-c"]);
    wait_until("mesh top to quit on Ctrl-C", || {
        (!tmux.alive()).then_some(())
    });
    drop(n2);
}

/// The command tmux runs (the binary under test).
const MESH_TOP: &str = concat!(env!("CARGO_BIN_EXE_mesh"), " top");
