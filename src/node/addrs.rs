//! Multiaddr helpers of the node: which addresses are loopback or unspecified, and why a
//! listener could not be bound, in words a user can act on.

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

/// Why a listener could not be bound, in words a user can act on. libp2p's transport error
/// prints nothing of its cause by itself and wraps the socket error in types that cannot be
/// downcast from outside, so the text comes from its source chain, and a port in use is
/// recognised by binding the same UDP address again: the kernel's answer, not a guess from
/// error text. A busy port is named, with who may hold it and how to pick another.
pub(super) fn listen_error_reason(
    addr: &Multiaddr,
    err: &(dyn std::error::Error + 'static),
) -> String {
    let mut causes: Vec<String> = Vec::new();
    // Bounded: error chains are a handful of links deep.
    let mut next = Some(err);
    while let Some(e) = next.take() {
        let text = e.to_string();
        if !text.is_empty() && !causes.iter().any(|c| c.contains(&text)) {
            causes.push(text);
        }
        if causes.len() < 16 {
            next = e.source();
        }
    }
    if let Some(socket) = udp_socket_addr(addr)
        && std::net::UdpSocket::bind(socket)
            .is_err_and(|e| e.kind() == std::io::ErrorKind::AddrInUse)
    {
        let port = socket.port();
        return format!(
            "UDP port {port} is in use by another mesh agent or another program (see `ss -ulpn \
             'sport = :{port}'`); stop it, or choose another port with --listen IP:PORT"
        );
    }
    if causes.is_empty() {
        "the transport gave no reason".to_string()
    } else {
        causes.join(": ")
    }
}

/// The UDP socket address of a QUIC multiaddr (`/ip4|ip6/A/udp/P/...`).
pub(super) fn udp_socket_addr(addr: &Multiaddr) -> Option<std::net::SocketAddr> {
    use libp2p::multiaddr::Protocol;
    let mut parts = addr.iter();
    let ip: std::net::IpAddr = match parts.next()? {
        Protocol::Ip4(ip) => ip.into(),
        Protocol::Ip6(ip) => ip.into(),
        _ => return None,
    };
    match parts.next()? {
        Protocol::Udp(port) => Some(std::net::SocketAddr::new(ip, port)),
        _ => None,
    }
}

pub(super) fn is_loopback(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

pub(super) fn is_unspecified(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    })
}
