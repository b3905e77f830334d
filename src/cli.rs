//! The command line of `mesh`: the grammar (`args`, the only place with clap types), what
//! each command does (`commands`, through the typed API client), and how answers are shown
//! (`render`). This file holds the dispatch, the exit codes and the output macros.
//!
//! `mesh agent` hands a plain [`crate::daemon::AgentOptions`] to the daemon; every other
//! command is a thin client of the agent's API ([`crate::api::client`]).
//!
//! Exit codes: 0 success, 1 error, 2 no agent answering at the API address.

use std::io::Write;
use std::time::Duration;

use crate::api::client::ClientError;

/// `print!` to stdout that ends the command quietly once stdout is closed (`mesh ... | head`)
/// instead of panicking: returns [`ClientError::OutputClosed`] from the enclosing function.
macro_rules! out {
    ($($arg:tt)*) => {
        if !$crate::cli::emit(&format!($($arg)*)) {
            return Err($crate::api::client::ClientError::OutputClosed);
        }
    };
}

/// `eprintln!` that never panics (stderr may be a closed pipe too).
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub mod args;
mod commands;
mod invite;
pub mod render;
mod top;

pub use args::*;

/// Exit code when no agent answers.
pub const EXIT_NO_AGENT: i32 = 2;

/// Lines asked for per poll by `mesh logs -f`: more than a busy service writes in one poll
/// interval, so a follower does not fall behind; the agent sends only what is new anyway.
pub const FOLLOW_LOG_LINES: u64 = 1000;
/// Time between polls of `mesh logs -f`: new lines show within half a second, and an idle
/// follower costs the agent two cheap requests a second.
pub const FOLLOW_LOG_INTERVAL: Duration = Duration::from_millis(500);
/// Long-poll wait of `mesh events -f`, in milliseconds: under the server's 30 s cap
/// ([`crate::api::MAX_WAIT`]) and the client's 40 s request timeout, so an idle poll ends in
/// an empty answer, not an error.
pub const FOLLOW_EVENTS_WAIT_MS: u64 = 25_000;

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    let result = match cli.command {
        Command::Agent(args) => return commands::run_agent(args),
        Command::Peers(args) => commands::peers(args),
        Command::Status(args) => commands::status(args),
        Command::State(args) => commands::state(args),
        Command::Tag(args) => commands::tag(args),
        Command::Service(args) => commands::service(args),
        Command::Services(args) => commands::services(args),
        Command::Ports(args) => commands::ports(args),
        Command::Logs(args) => commands::logs(args),
        Command::Resolve(args) => commands::resolve(args),
        Command::Drain(args) => commands::drain(args, true),
        Command::Undrain(args) => commands::drain(args, false),
        Command::Remove(args) => commands::remove(args),
        Command::Events(args) => commands::events(args),
        Command::Invite(args) => invite::invite(args),
        Command::Join(args) => invite::join(args),
        Command::Key(KeyCommand::Generate) => commands::key_generate(),
        Command::Key(KeyCommand::Rotate(args)) => commands::key_rotate(args),
        Command::Api(args) => commands::api(args),
        Command::Dashboard(args) => commands::dashboard(args),
        Command::Top(args) => top::run(args.client.connect()),
        Command::Sim(args) => commands::sim(args),
    };
    match result {
        Ok(()) | Err(ClientError::OutputClosed) => 0,
        Err(e) => {
            note!("mesh: {e}");
            match e {
                ClientError::NoAgent { .. } => EXIT_NO_AGENT,
                ClientError::Usage(_) => 1,
                _ => 1,
            }
        }
    }
}

/// Writes to stdout and flushes; false once stdout is gone (piped into `head`, say), so
/// followers stop quietly instead of panicking.
pub(crate) fn emit(text: &str) -> bool {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .is_ok()
}
