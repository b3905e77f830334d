//! A third-party DNS-SD browser in a lab host: `tests/support/browse_dns_sd.py`
//! (python-zeroconf) watching one service type, its events read line by line as JSON.
//!
//! Included by a lab test file after `support/lab.rs`:
//! `#[path = "support/dns_sd.rs"] mod dns_sd;`. Start it in a host that runs no agent (a
//! phone or laptop that is not a member), before the record should appear, so that it sees
//! every announcement and goodbye; wait on its events with [`DnsSdBrowser::wait_for`] and the
//! shorthands. Every event ever received is kept, for "never saw" assertions and failure
//! messages. Dropping it kills the script.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::lab::{CEILING, Lab};

/// The browser script.
pub const BROWSE_DNS_SD_PY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/support/browse_dns_sd.py"
);

/// Events buffered between the reader thread and the test: a test sees a handful; a full
/// buffer only holds the reader (and then the script) back.
const EVENT_BUFFER: usize = 256;

/// A running browser and the events it printed.
pub struct DnsSdBrowser {
    child: Child,
    lines: mpsc::Receiver<Value>,
    /// Every event received so far, in order.
    pub seen: Vec<Value>,
    /// When the script said it browses (`ready`): the origin of the events' `t`.
    pub started: Instant,
}

impl DnsSdBrowser {
    /// Starts browsing `service_type` (with its domain: `_http._tcp.local.`) in host `k` and
    /// waits until the script runs.
    pub fn start(lab: &Lab, k: usize, service_type: &str) -> DnsSdBrowser {
        let k = k.to_string();
        let mut child = lab
            .command(&[
                "exec",
                &k,
                "python3",
                BROWSE_DNS_SD_PY,
                "--type",
                service_type,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start browse_dns_sd.py");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::sync_channel(EVENT_BUFFER);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Value>(&line) {
                    Ok(event) => {
                        if tx.send(event).is_err() {
                            break;
                        }
                    }
                    Err(e) => eprintln!("browse_dns_sd.py printed {line:?}: {e}"),
                }
            }
        });
        let mut browser = DnsSdBrowser {
            child,
            lines,
            seen: Vec::new(),
            started: Instant::now(),
        };
        browser.wait_for("the browser runs", |e| e["event"] == "ready");
        browser.started = Instant::now();
        browser
    }

    /// Waits for the next event (after those already seen) that `pred` accepts, for at most
    /// [`CEILING`]; panics with every event seen otherwise. Returns it.
    pub fn wait_for(&mut self, what: &str, mut pred: impl FnMut(&Value) -> bool) -> Value {
        let deadline = Instant::now() + CEILING;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(event) => {
                    self.seen.push(event.clone());
                    if pred(&event) {
                        return event;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "timed out after {CEILING:?} waiting until {what}; the browser saw {:#?}",
                    self.seen
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => panic!(
                    "browse_dns_sd.py ended while waiting until {what}; it saw {:#?}",
                    self.seen
                ),
            }
        }
    }

    /// Waits until `instance` (a full name, `web._http._tcp.local.`) is added or updated and
    /// resolved with TXT `node` = `node`; returns the event (port, addresses, properties).
    pub fn wait_advertised_by(&mut self, instance: &str, node: &str) -> Value {
        self.wait_for(&format!("{instance} is advertised by {node}"), |e| {
            (e["event"] == "added" || e["event"] == "updated")
                && e["name"] == instance
                && e["properties"]["node"] == node
        })
    }

    /// Waits until `instance` is removed (goodbye, or expiry).
    pub fn wait_removed(&mut self, instance: &str) -> Value {
        self.wait_for(&format!("{instance} is removed"), |e| {
            e["event"] == "removed" && e["name"] == instance
        })
    }

    /// Takes what arrived without waiting, for "never saw" checks.
    pub fn drain(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        while let Ok(event) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(event);
        }
    }
}

impl Drop for DnsSdBrowser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
