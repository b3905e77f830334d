//! A socket as the messages carry it: its transport protocol ([`Proto`], also the name space
//! of port leases) and a listening socket with one process holding it ([`ListeningProcess`],
//! a row of `mesh ports --listening`). Owns the types only; reading them from `/proc` is
//! `ports::scan`'s.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Transport protocol of a port. TCP and UDP port numbers are separate name spaces: a lease of
/// 20000/tcp does not block 20000/udp.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    #[default]
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

impl FromStr for Proto {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            other => Err(format!("unknown protocol `{other}` (expected tcp or udp)")),
        }
    }
}

/// A listening socket and one process holding it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ListeningProcess {
    pub port: u16,
    pub proto: Proto,
    /// Local address: `0.0.0.0` / `::` for every interface.
    pub addr: IpAddr,
    /// `None`: the holder's fds could not be read (another user's process, or the scan's
    /// limits), or it exited during the scan.
    pub pid: Option<u32>,
    /// The holder's `comm` (executable name, at most 15 bytes); `None` if unreadable.
    pub process: Option<String>,
}
