//! A headless Chromium driven through chromedriver, over the W3C WebDriver protocol (JSON over
//! HTTP): the handful of commands the dashboard tests use (open a page, run a script, click,
//! type, screenshot). Written on the HTTP client the crate already has rather than pulling in
//! an async WebDriver crate and its tree for six calls.
//!
//! [`Browser::start`] returns `Err(reason)` when chromium or chromedriver is missing, so tests
//! skip with that reason; CI installs both (`.ci/run`).

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Where Debian's packages put them.
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    agent: ureq::Agent,
}

/// A free TCP port on loopback (bound, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Browser {
    /// Starts chromedriver and a headless Chromium window of `width`×`height`.
    pub fn start(width: u32, height: u32) -> Result<Browser, String> {
        for tool in [CHROMEDRIVER, CHROMIUM] {
            if !Path::new(tool).exists() {
                return Err(format!(
                    "{tool} is missing (Debian packages chromium and chromium-driver)"
                ));
            }
        }
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start chromedriver: {e}"))?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let base = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            if agent.get(&format!("{base}/status")).call().is_ok() {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err("chromedriver did not answer within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut browser = Browser {
            driver,
            base,
            session: String::new(),
            agent,
        };
        let answer = browser.call(
            "POST",
            "/session",
            json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", format!("--window-size={width},{height}")]
                }
            }}}),
        )?;
        browser.session = answer["sessionId"]
            .as_str()
            .ok_or_else(|| format!("no session in {answer}"))?
            .to_string();
        Ok(browser)
    }

    fn call(&self, method: &str, path: &str, body: Value) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let response = match method {
            "GET" => self.agent.get(&url).call(),
            "DELETE" => self.agent.delete(&url).call(),
            _ => self.agent.post(&url).send_json(&body),
        };
        let mut response = response.map_err(|e| format!("{method} {path}: {e}"))?;
        let status = response.status().as_u16();
        let value: Value = response
            .body_mut()
            .read_json()
            .map_err(|e| format!("{method} {path}: {e}"))?;
        if status >= 400 {
            return Err(format!("{method} {path}: {status} {}", value["value"]));
        }
        Ok(value["value"].clone())
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    pub fn goto(&self, url: &str) {
        self.call("POST", &self.session_path("/url"), json!({ "url": url }))
            .expect("navigate");
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page and returns its
    /// value.
    pub fn eval(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            &self.session_path("/execute/sync"),
            json!({ "script": script, "args": args }),
        )
        .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Runs an async `script` whose last argument is the callback to call with the result.
    pub fn eval_async(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            &self.session_path("/execute/async"),
            json!({ "script": script, "args": args }),
        )
        .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    fn element(&self, css: &str) -> String {
        let found = self
            .call(
                "POST",
                &self.session_path("/element"),
                json!({"using": "css selector", "value": css}),
            )
            .unwrap_or_else(|e| panic!("no element {css}: {e}"));
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .expect("an element reference")
            .to_string()
    }

    /// Clicks the element `css` selects, as a user would (WebDriver's pointer click). The
    /// dashboard redraws its tables on every update, so an element found a moment ago may be
    /// gone ("stale"): it is then found again, as a user's pointer would hit the new one.
    pub fn click(&self, css: &str) {
        let mut tries = 0;
        loop {
            let id = self.element(css);
            match self.call(
                "POST",
                &self.session_path(&format!("/element/{id}/click")),
                json!({}),
            ) {
                Ok(_) => return,
                Err(e) if e.contains("stale element") && tries < 50 => tries += 1,
                Err(e) => panic!("click {css}: {e}"),
            }
        }
    }

    /// Types `text` into the element `css` selects, replacing what it held.
    pub fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.call(
            "POST",
            &self.session_path(&format!("/element/{id}/clear")),
            json!({}),
        )
        .unwrap_or_else(|e| panic!("clear {css}: {e}"));
        self.call(
            "POST",
            &self.session_path(&format!("/element/{id}/value")),
            json!({ "text": text }),
        )
        .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    pub fn set_window(&self, width: u32, height: u32) {
        self.call(
            "POST",
            &self.session_path("/window/rect"),
            json!({"width": width, "height": height}),
        )
        .expect("resize the window");
    }

    /// A PNG of the window.
    pub fn screenshot(&self, path: &Path) {
        use base64_decode as decode;
        let data = self
            .call("GET", &self.session_path("/screenshot"), Value::Null)
            .expect("screenshot");
        let bytes = decode(data.as_str().expect("base64 text"));
        std::fs::write(path, bytes).expect("write the screenshot");
    }

    /// Polls `script` (returning a value) until `done` accepts it, up to the ceiling.
    pub fn wait_for(&self, what: &str, script: &str, done: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let v = self.eval(script, json!([]));
            if done(&v) {
                return v;
            }
            assert!(
                started.elapsed() < super::agent::CEILING,
                "timed out waiting for {what}; last value {v}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &self.session_path(""), Value::Null);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Standard base64 (the screenshot's encoding), decoded.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter_map(value) {
        acc = (acc << 6) | c;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}
