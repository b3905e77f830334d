//! `mesh top`: the dashboard's overview in a terminal, for machines without a browser (a Pi
//! over SSH). Three views (nodes, services, the mesh-wide events), refreshed every second from
//! the API; keys switch views, select a service and start, stop or restart it (with the API
//! token the CLI finds, after a y/n confirmation).
//!
//! The screen is a pure function of what was read and of the view state ([`screen`]); the key
//! handling is another ([`TopState::on_key`]); both are unit-tested. The loop around them owns
//! the terminal (raw mode and the alternate screen through crossterm, restored on every exit).

use std::io::Write;
use std::time::{Duration, Instant};

use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use crossterm::{cursor, execute, queue, terminal};

use super::render::{render_events, render_peers, render_services};
use crate::api::client::{ApiClient, ClientError};
use crate::api::{EventEntry, EventsQuery, PeerEntry, ServiceAction, ServiceEntry, StatusResponse};
use crate::state::now_ms;

/// How often the views are read again.
pub const REFRESH: Duration = Duration::from_secs(1);
/// Events shown at most (the newest).
const EVENTS: u32 = 200;

/// Which table is on screen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    Nodes,
    Services,
    Events,
}

/// What was last read from the agent.
#[derive(Clone, Debug, Default)]
pub struct Data {
    pub status: Option<StatusResponse>,
    pub peers: Vec<PeerEntry>,
    pub services: Vec<ServiceEntry>,
    pub events: Vec<EventEntry>,
    /// Why the last read failed, if it did.
    pub error: Option<String>,
}

/// The view state: what is shown, selected, asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopState {
    pub view: View,
    /// Index of the selected service row.
    pub selected: usize,
    /// An action waiting for y/n.
    pub confirm: Option<(ServiceAction, String)>,
    /// The last line of feedback.
    pub message: String,
}

/// What a key asks of the loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Redraw,
    Quit,
    Act(ServiceAction, String),
}

impl Default for TopState {
    fn default() -> Self {
        Self {
            view: View::Nodes,
            selected: 0,
            confirm: None,
            message: String::new(),
        }
    }
}

impl TopState {
    /// Handles one key; `services` are the rows on screen (for the selection).
    pub fn on_key(&mut self, key: KeyEvent, services: &[ServiceEntry]) -> Outcome {
        let ctrl_c =
            key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl_c {
            return Outcome::Quit;
        }
        if let Some((action, name)) = self.confirm.take() {
            if key.code == KeyCode::Char('y') {
                self.message = format!("{} {name}…", action.as_str());
                return Outcome::Act(action, name);
            }
            self.message = format!("{} {name}: cancelled", action.as_str());
            return Outcome::Redraw;
        }
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => return Outcome::Quit,
            KeyCode::Char('1') => self.view = View::Nodes,
            KeyCode::Char('2') => self.view = View::Services,
            KeyCode::Char('3') => self.view = View::Events,
            KeyCode::Tab => {
                self.view = match self.view {
                    View::Nodes => View::Services,
                    View::Services => View::Events,
                    View::Events => View::Nodes,
                }
            }
            KeyCode::Down | KeyCode::Char('j') if !services.is_empty() => {
                self.view = View::Services;
                self.selected = (self.selected + 1).min(services.len() - 1);
            }
            KeyCode::Up | KeyCode::Char('k') => {
                self.view = View::Services;
                self.selected = self.selected.saturating_sub(1);
            }
            KeyCode::Char(c @ ('r' | 's' | 't')) => {
                let Some(row) = services.get(self.selected) else {
                    self.message = "no service selected (2 shows them, ↑/↓ selects)".into();
                    return Outcome::Redraw;
                };
                let action = match c {
                    'r' => ServiceAction::Restart,
                    's' => ServiceAction::Stop,
                    _ => ServiceAction::Start,
                };
                self.view = View::Services;
                self.message = format!("{} {} on {}? y/n", action.as_str(), row.name, row.node);
                self.confirm = Some((action, row.name.clone()));
            }
            _ => {}
        }
        Outcome::Redraw
    }
}

/// The screen: `height` lines of at most `width` characters.
pub fn screen(
    data: &Data,
    state: &TopState,
    width: usize,
    height: usize,
    now_ms: i64,
) -> Vec<String> {
    let mut lines = Vec::new();
    let tab = |v: View, label: &str| {
        if state.view == v {
            format!("[{label}]")
        } else {
            format!(" {label} ")
        }
    };
    let head = match &data.status {
        Some(s) => format!(
            "mesh top · {} · mesh {} · {} alive, {} suspect, {} dead · {} services",
            s.name,
            &s.mesh_id[..s.mesh_id.len().min(12)],
            s.peers.alive + 1,
            s.peers.suspect,
            s.peers.dead,
            data.services
                .iter()
                .map(|s| &s.name)
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        ),
        None => "mesh top · connecting…".to_string(),
    };
    lines.push(head);
    lines.push(format!(
        "{} {} {}   Tab/1-3 view · ↑↓ select · r restart · s stop · t start · q quit",
        tab(View::Nodes, "1 nodes"),
        tab(View::Services, "2 services"),
        tab(View::Events, "3 events")
    ));
    lines.push(String::new());
    let body: Vec<String> = match state.view {
        View::Nodes => render_peers(&data.peers)
            .lines()
            .map(|l| format!("  {l}"))
            .collect(),
        View::Services => render_services(&data.services)
            .lines()
            .enumerate()
            .map(|(i, l)| {
                // Line 0 is the header; rows follow in order.
                if i >= 1 && i - 1 == state.selected && i <= data.services.len() {
                    format!("> {l}")
                } else {
                    format!("  {l}")
                }
            })
            .collect(),
        View::Events => {
            let text = render_events(&data.events, now_ms);
            let all: Vec<&str> = text.lines().collect();
            // The header and the newest that fit.
            let room = height.saturating_sub(6);
            let mut shown: Vec<String> = all.iter().take(1).map(|l| format!("  {l}")).collect();
            let rest = &all[1.min(all.len())..];
            shown.extend(
                rest[rest.len().saturating_sub(room)..]
                    .iter()
                    .map(|l| format!("  {l}")),
            );
            shown
        }
    };
    let room = height.saturating_sub(lines.len() + 2);
    lines.extend(body.into_iter().take(room));
    while lines.len() + 2 < height {
        lines.push(String::new());
    }
    lines.push(match &data.error {
        Some(e) => format!("! {e}"),
        None => String::new(),
    });
    lines.push(state.message.clone());
    lines
        .into_iter()
        .take(height)
        .map(|l| l.chars().take(width).collect())
        .collect()
}

/// Reads everything the views show.
fn read(client: &ApiClient) -> Data {
    let mut data = Data::default();
    let result = (|| -> Result<(), ClientError> {
        data.status = Some(client.status()?);
        data.peers = client.peers()?.body;
        data.services = client.services()?;
        data.events = client
            .events(&EventsQuery {
                limit: Some(EVENTS),
                ..EventsQuery::default()
            })?
            .events;
        Ok(())
    })();
    if let Err(e) = result {
        data.error = Some(e.to_string());
    }
    data
}

/// Puts the terminal back however the loop ends.
struct Terminal;

impl Terminal {
    fn enter() -> std::io::Result<Terminal> {
        terminal::enable_raw_mode()?;
        execute!(
            std::io::stdout(),
            terminal::EnterAlternateScreen,
            cursor::Hide
        )?;
        Ok(Terminal)
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = execute!(
            std::io::stdout(),
            cursor::Show,
            terminal::LeaveAlternateScreen
        );
        let _ = terminal::disable_raw_mode();
    }
}

fn draw(lines: &[String]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    queue!(out, cursor::MoveTo(0, 0))?;
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            out.write_all(b"\r\n")?;
        }
        out.write_all(line.as_bytes())?;
        queue!(out, terminal::Clear(terminal::ClearType::UntilNewLine))?;
    }
    out.flush()
}

/// Runs `mesh top` against `client` until `q`.
pub fn run(client: ApiClient) -> Result<(), ClientError> {
    let io = |e: std::io::Error| ClientError::Usage(format!("mesh top needs a terminal: {e}"));
    // Fail before touching the terminal when no agent answers.
    client.status()?;
    let _terminal = Terminal::enter().map_err(io)?;
    let mut state = TopState::default();
    let mut data = read(&client);
    let mut next_read = Instant::now() + REFRESH;
    loop {
        if state.selected >= data.services.len() {
            state.selected = data.services.len().saturating_sub(1);
        }
        let (cols, rows) = terminal::size().unwrap_or((80, 24));
        draw(&screen(
            &data,
            &state,
            cols as usize,
            rows as usize,
            now_ms(),
        ))
        .map_err(io)?;
        let wait = next_read.saturating_duration_since(Instant::now());
        if event::poll(wait).map_err(io)? {
            match event::read().map_err(io)? {
                Event::Key(key) if key.kind != KeyEventKind::Release => {
                    match state.on_key(key, &data.services) {
                        Outcome::Quit => return Ok(()),
                        Outcome::Redraw => {}
                        Outcome::Act(action, name) => {
                            state.message = match client.service_action(&name, action) {
                                Ok(r) if r.changed => {
                                    format!("{}: {name} on {}", action.as_str(), r.node)
                                }
                                Ok(r) => {
                                    format!("{name} on {}: nothing to {}", r.node, action.as_str())
                                }
                                Err(e) => format!("{} {name} refused: {e}", action.as_str()),
                            };
                            data = read(&client);
                            next_read = Instant::now() + REFRESH;
                        }
                    }
                }
                _ => {}
            }
        } else {
            data = read(&client);
            next_read = Instant::now() + REFRESH;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: KeyCode) -> KeyEvent {
        KeyEvent::new(c, KeyModifiers::NONE)
    }

    fn service(name: &str) -> ServiceEntry {
        serde_json::from_value(serde_json::json!({
            "name": name, "node": "pi", "node_id": null, "desired": "running", "state": "healthy",
            "pid": 1, "ports": [], "restarts": 0, "uptime_s": 5, "health": "none",
            "last_exit": null, "reason": null, "log_tail": [], "after": [], "command": ["x"]
        }))
        .unwrap()
    }

    #[test]
    fn keys_switch_views_select_and_act_only_after_yes() {
        let rows = vec![service("db"), service("web")];
        let mut s = TopState::default();
        assert_eq!(s.on_key(key(KeyCode::Char('2')), &rows), Outcome::Redraw);
        assert_eq!(s.view, View::Services);
        s.on_key(key(KeyCode::Down), &rows);
        s.on_key(key(KeyCode::Down), &rows);
        assert_eq!(s.selected, 1, "the selection stops at the last row");
        assert_eq!(s.on_key(key(KeyCode::Char('r')), &rows), Outcome::Redraw);
        assert!(
            s.message.contains("restart web on pi? y/n"),
            "{}",
            s.message
        );
        assert_eq!(
            s.on_key(key(KeyCode::Char('y')), &rows),
            Outcome::Act(ServiceAction::Restart, "web".into())
        );
        s.on_key(key(KeyCode::Char('s')), &rows);
        assert_eq!(s.on_key(key(KeyCode::Char('n')), &rows), Outcome::Redraw);
        assert!(s.message.contains("cancelled"));
        s.on_key(key(KeyCode::Tab), &rows);
        assert_eq!(s.view, View::Events);
        assert_eq!(s.on_key(key(KeyCode::Char('q')), &rows), Outcome::Quit);
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(s.on_key(ctrl_c, &rows), Outcome::Quit);
    }

    #[test]
    fn the_screen_fits_the_terminal_and_marks_the_selected_service() {
        let data = Data {
            services: vec![service("db"), service("web")],
            error: Some("no mesh agent is answering".into()),
            ..Data::default()
        };
        let state = TopState {
            view: View::Services,
            selected: 1,
            ..TopState::default()
        };
        let lines = screen(&data, &state, 40, 12, 0);
        assert_eq!(lines.len(), 12);
        assert!(lines.iter().all(|l| l.chars().count() <= 40));
        assert!(lines.iter().any(|l| l.starts_with("> web")), "{lines:#?}");
        assert!(lines.iter().any(|l| l.starts_with("  db")));
        assert!(lines[10].starts_with("! no mesh agent"));
    }
}
