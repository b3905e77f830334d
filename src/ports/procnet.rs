//! Listening sockets from `/proc/net/{tcp,tcp6,udp,udp6}`, parsed without I/O.
//!
//! Owns the text format of those files and the join of socket inodes to processes. The caller
//! reads the files and walks `/proc/PID/fd` (readlink gives `socket:[INODE]`, see
//! [`parse_socket_link`]); this module turns the text and the `(pid, inode)` pairs into
//! [`ListeningSocket`]s. It does not decide anything about leases (see [`super::lease`]).
//!
//! Format (one socket per line after a header; fields separated by runs of spaces):
//!
//! ```text
//!   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
//!    1: 0100007F:B0BD 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 181522 ...
//! ```
//!
//! `local_address` is `ADDR:PORT` in hex. The port is plain big-endian hex. The address is the
//! raw `in_addr` (or, for IPv6, four 32-bit words) printed as host-order integers, so its bytes
//! are recovered with `to_ne_bytes` on the machine that produced the text. `st` is the socket
//! state: `0A` is TCP `LISTEN`; unconnected UDP sockets show `07` (`TCP_CLOSE`), which is what
//! a bound UDP server looks like.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::error::PortsError;
use crate::wire::socket::Proto;

/// `st` of a listening TCP socket (`TCP_LISTEN`).
pub const TCP_LISTEN: u8 = 0x0A;
/// `st` of a bound, unconnected UDP socket (`TCP_CLOSE`, reused by UDP).
pub const UDP_UNCONNECTED: u8 = 0x07;

/// One of the four socket tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProcNetFile {
    Tcp,
    Tcp6,
    Udp,
    Udp6,
}

impl ProcNetFile {
    pub const ALL: [ProcNetFile; 4] = [
        ProcNetFile::Tcp,
        ProcNetFile::Tcp6,
        ProcNetFile::Udp,
        ProcNetFile::Udp6,
    ];

    /// File name under `/proc/net/`.
    pub fn file_name(self) -> &'static str {
        match self {
            ProcNetFile::Tcp => "tcp",
            ProcNetFile::Tcp6 => "tcp6",
            ProcNetFile::Udp => "udp",
            ProcNetFile::Udp6 => "udp6",
        }
    }

    pub fn proto(self) -> Proto {
        match self {
            ProcNetFile::Tcp | ProcNetFile::Tcp6 => Proto::Tcp,
            ProcNetFile::Udp | ProcNetFile::Udp6 => Proto::Udp,
        }
    }

    fn is_ipv6(self) -> bool {
        matches!(self, ProcNetFile::Tcp6 | ProcNetFile::Udp6)
    }

    /// The `st` value that means "serving" for this protocol.
    fn listening_state(self) -> u8 {
        match self.proto() {
            Proto::Tcp => TCP_LISTEN,
            Proto::Udp => UDP_UNCONNECTED,
        }
    }
}

/// One line of a socket table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcNetSocket {
    pub proto: Proto,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Kernel socket state (`st`), e.g. [`TCP_LISTEN`].
    pub state: u8,
    pub uid: u32,
    /// Socket inode; matches `socket:[INODE]` links in `/proc/PID/fd`. 0 for sockets no
    /// process holds (e.g. TIME_WAIT).
    pub inode: u64,
}

/// A listening socket and the processes holding it (several after a fork; empty if the
/// caller could not read their fds, e.g. other users' processes without privileges).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListeningSocket {
    pub proto: Proto,
    pub local: SocketAddr,
    pub inode: u64,
    /// Sorted, without duplicates.
    pub pids: Vec<u32>,
}

/// Parses a whole socket table (every state). The header line is skipped; blank lines are
/// ignored; any other malformed line is an error naming the file and line, since it means
/// the kernel format is not the one this parser knows.
pub fn parse_proc_net(file: ProcNetFile, text: &str) -> Result<Vec<ProcNetSocket>, PortsError> {
    let mut sockets = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_number = index + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with("sl") {
            continue;
        }
        let error = |reason: &str| PortsError::ProcNet {
            file: file.file_name(),
            line: line_number,
            reason: reason.to_string(),
        };
        let fields: Vec<&str> = trimmed.split_whitespace().collect();
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
        if fields.len() < 10 || !fields[0].ends_with(':') {
            return Err(error(
                "expected `sl: local remote st ... uid timeout inode`",
            ));
        }
        let local = parse_address(fields[1], file.is_ipv6())
            .ok_or_else(|| error(&format!("bad local address `{}`", fields[1])))?;
        let remote = parse_address(fields[2], file.is_ipv6())
            .ok_or_else(|| error(&format!("bad remote address `{}`", fields[2])))?;
        let state = u8::from_str_radix(fields[3], 16)
            .map_err(|_| error(&format!("bad state `{}`", fields[3])))?;
        let uid = fields[7]
            .parse()
            .map_err(|_| error(&format!("bad uid `{}`", fields[7])))?;
        let inode = fields[9]
            .parse()
            .map_err(|_| error(&format!("bad inode `{}`", fields[9])))?;
        sockets.push(ProcNetSocket {
            proto: file.proto(),
            local,
            remote,
            state,
            uid,
            inode,
        });
    }
    Ok(sockets)
}

/// The serving sockets of a table: TCP in `LISTEN`, UDP bound and unconnected.
pub fn listening_sockets(file: ProcNetFile, text: &str) -> Result<Vec<ProcNetSocket>, PortsError> {
    let mut sockets = parse_proc_net(file, text)?;
    sockets.retain(|socket| socket.state == file.listening_state());
    Ok(sockets)
}

/// `HEXADDR:HEXPORT` → socket address. IPv4: 8 hex digits; IPv6: 32.
fn parse_address(text: &str, ipv6: bool) -> Option<SocketAddr> {
    let (address, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = if ipv6 {
        if address.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (word_index, chunk) in bytes.chunks_exact_mut(4).enumerate() {
            let word = &address[word_index * 8..word_index * 8 + 8];
            chunk.copy_from_slice(&u32::from_str_radix(word, 16).ok()?.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(bytes))
    } else {
        if address.len() != 8 {
            return None;
        }
        IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(address, 16).ok()?.to_ne_bytes(),
        ))
    };
    Some(SocketAddr::new(ip, port))
}

/// The inode of a `/proc/PID/fd/N` link target such as `socket:[181522]`; `None` for files,
/// pipes and anything else.
pub fn parse_socket_link(target: &str) -> Option<u64> {
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Joins sockets to the processes holding them. `fds` yields `(pid, inode)` for every socket
/// fd the caller could read; sockets nobody was seen holding keep an empty `pids`.
pub fn map_inodes_to_pids(
    sockets: Vec<ProcNetSocket>,
    fds: impl IntoIterator<Item = (u32, u64)>,
) -> Vec<ListeningSocket> {
    let mut by_inode: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    for (pid, inode) in fds {
        by_inode.entry(inode).or_default().push(pid);
    }
    sockets
        .into_iter()
        .map(|socket| {
            let mut pids = if socket.inode == 0 {
                Vec::new()
            } else {
                by_inode.get(&socket.inode).cloned().unwrap_or_default()
            };
            pids.sort_unstable();
            pids.dedup();
            ListeningSocket {
                proto: socket.proto,
                local: socket.local,
                inode: socket.inode,
                pids,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Copied from this development machine while a test program listened on 127.0.0.1:45245
    // (tcp), [::]:33343 (tcp6), 0.0.0.0:58694 (udp) and [::1]:34018 (udp6), with one
    // established loopback connection to the first.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode                                                     
   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1151 1 00000000485c2f91 100 0 0 10 0                      
   1: 0100007F:B0BD 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 181522 1 0000000063bfe3ad 100 0 0 10 0                    
   2: 0100007F:C46C 0100007F:B0BD 01 00000000:00000000 00:00000000 00000000     0        0 181526 2 00000000ec4f5859 20 0 0 10 -1                    
   3: 0100007F:B0BD 0100007F:C46C 01 00000000:00000000 00:00000000 00000000     0        0 181527 1 00000000829fd3d3 20 0 0 10 -1                    
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:823F 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 181523 1 00000000086aa707 100 0 0 10 0
";
    const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops            
 6126: 00000000:E546 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 181524 2 00000000cb18bf3d 0        
";
    const UDP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
14218: 00000000000000000000000001000000:84E2 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 181525 2 00000000fca6a2f4 0
";

    // A UDP socket that called connect() (state 01, ESTABLISHED) is not serving.
    const UDP_CONNECTED: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  100: 0F02000A:9C40 08080808:0035 01 00000000:00000000 00:00000000 00000000  1000        0 5555 2 0000000000000000 0
";

    #[test]
    fn tcp_listening_sockets_and_their_ports() {
        let all = parse_proc_net(ProcNetFile::Tcp, TCP).expect("valid");
        assert_eq!(all.len(), 4);
        let listening = listening_sockets(ProcNetFile::Tcp, TCP).expect("valid");
        let ports: Vec<(u16, u64)> = listening
            .iter()
            .map(|socket| (socket.local.port(), socket.inode))
            .collect();
        assert_eq!(ports, [(2024, 1151), (45245, 181522)]);
        assert!(listening.iter().all(|socket| socket.proto == Proto::Tcp));
        // The established pair is parsed but not listening.
        assert_eq!(all[2].state, 0x01);
        assert_eq!(all[2].remote.port(), 45245);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn addresses_decode_on_this_machine() {
        let tcp = listening_sockets(ProcNetFile::Tcp, TCP).expect("valid");
        assert_eq!(tcp[1].local, "127.0.0.1:45245".parse().expect("addr"));
        assert_eq!(tcp[0].local, "0.0.0.0:2024".parse().expect("addr"));
        let tcp6 = listening_sockets(ProcNetFile::Tcp6, TCP6).expect("valid");
        assert_eq!(tcp6[0].local, "[::]:33343".parse().expect("addr"));
        let udp6 = listening_sockets(ProcNetFile::Udp6, UDP6).expect("valid");
        assert_eq!(udp6[0].local, "[::1]:34018".parse().expect("addr"));
        let connected = parse_proc_net(ProcNetFile::Udp, UDP_CONNECTED).expect("valid");
        assert_eq!(connected[0].local, "10.0.2.15:40000".parse().expect("addr"));
        assert_eq!(connected[0].remote, "8.8.8.8:53".parse().expect("addr"));
        assert_eq!(connected[0].uid, 1000);
    }

    #[test]
    fn udp_bound_sockets_are_listening_connected_ones_are_not() {
        let udp = listening_sockets(ProcNetFile::Udp, UDP).expect("valid");
        assert_eq!(udp.len(), 1);
        assert_eq!(
            (udp[0].local.port(), udp[0].inode, udp[0].proto),
            (58694, 181524, Proto::Udp)
        );
        let udp6 = listening_sockets(ProcNetFile::Udp6, UDP6).expect("valid");
        assert_eq!((udp6[0].local.port(), udp6[0].inode), (34018, 181525));
        assert!(
            listening_sockets(ProcNetFile::Udp, UDP_CONNECTED)
                .expect("valid")
                .is_empty()
        );
    }

    #[test]
    fn empty_tables_and_malformed_lines() {
        assert!(
            parse_proc_net(ProcNetFile::Tcp, "")
                .expect("valid")
                .is_empty()
        );
        let header_only = TCP.lines().next().expect("header");
        assert!(
            parse_proc_net(ProcNetFile::Tcp, header_only)
                .expect("valid")
                .is_empty()
        );
        let err = parse_proc_net(
            ProcNetFile::Tcp6,
            "  sl local\n   0: 0100007F:0016 00000000:0000 0A 0 0 0 0 0 1\n",
        )
        .expect_err("ipv4 address in tcp6");
        assert_eq!(
            err.to_string(),
            "/proc/net/tcp6 line 2: bad local address `0100007F:0016`"
        );
        let err = parse_proc_net(ProcNetFile::Tcp, "garbage\n").expect_err("short line");
        assert!(
            err.to_string().starts_with("/proc/net/tcp line 1:"),
            "{err}"
        );
    }

    #[test]
    fn socket_links() {
        assert_eq!(parse_socket_link("socket:[181522]"), Some(181522));
        assert_eq!(parse_socket_link("pipe:[181497]"), None);
        assert_eq!(parse_socket_link("/dev/null"), None);
        assert_eq!(parse_socket_link("socket:[x]"), None);
    }

    #[test]
    fn inodes_map_to_pids() {
        let mut sockets = listening_sockets(ProcNetFile::Tcp, TCP).expect("valid");
        sockets.extend(listening_sockets(ProcNetFile::Udp, UDP).expect("valid"));
        // What the caller read from /proc/*/fd on this machine (fd 3 and 5 of pid 900), plus
        // a forked child sharing the listener and a non-socket inode.
        let fds = [
            (900, 181522),
            (901, 181522),
            (900, 181524),
            (900, 181497),
            (900, 181522),
        ];
        let mapped = map_inodes_to_pids(sockets, fds);
        let summary: Vec<(Proto, u16, Vec<u32>)> = mapped
            .iter()
            .map(|socket| (socket.proto, socket.local.port(), socket.pids.clone()))
            .collect();
        assert_eq!(
            summary,
            [
                (Proto::Tcp, 2024, vec![]),
                (Proto::Tcp, 45245, vec![900, 901]),
                (Proto::Udp, 58694, vec![900]),
            ]
        );
        let ports = crate::ports::ListeningPorts::from_sockets(&mapped);
        assert!(ports.contains(45245, Proto::Tcp));
        assert!(!ports.contains(45245, Proto::Udp));
        assert_eq!(ports.holders(58694, Proto::Udp), [900]);
    }
}
