//! The invite ticket: what `mesh invite` prints and `mesh join` reads (spec: `protocol/join.md`,
//! "Ticket").
//!
//! `MESH1` followed by the RFC 4648 base32 (upper case, no padding) of a compact binary record
//! and a 4-byte checksum. Upper-case letters and digits only, so a QR code holds it in its
//! alphanumeric mode and a person can read it aloud. It carries the mesh id, the inviter's node
//! id and addresses, the one-time secret and the expiry; never the mesh key.
//!
//! Owns the codec and its bounds. Does not own what a ticket is good for (the inviter's store
//! decides) or the dial (`crate::join`).

use libp2p::{Multiaddr, PeerId};

use crate::admission::{MESH_ID_LEN, MeshId};
use crate::wire::join::JOIN_SECRET_LEN;

/// The text every ticket starts with: the format and its version. A later format changes the
/// digit, so an old agent says "not a ticket of this version" instead of misreading it.
pub const TICKET_PREFIX: &str = "MESH1";
/// Most inviter addresses a ticket carries: a host's IPv4 and IPv6 addresses on a couple of
/// interfaces. More would only lengthen the QR code.
pub const MAX_TICKET_ADDRS: usize = 8;
/// Longest encoded address (bytes): `/ip6/…/udp/…/quic-v1` is 22; 64 leaves room for DNS names.
pub const MAX_ADDR_BYTES: usize = 64;
/// Longest invite name (characters): a label for `mesh invite --list`.
pub const MAX_INVITE_NAME: usize = 63;
/// Longest ticket text accepted (characters), before decoding: bounds work on garbage input.
/// The largest valid ticket (8 long addresses and a long name) is under 1,100 characters.
pub const MAX_TICKET_CHARS: usize = 2048;
/// Bytes of the truncated SHA-256 checksum at the end: catches typos and truncated copies
/// (a wrong ticket passes it once in 4 billion), before any network traffic.
const CHECKSUM_LEN: usize = 4;

/// Errors reading a ticket.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TicketError {
    #[error("not a mesh ticket: it must start with {TICKET_PREFIX}")]
    Prefix,
    #[error("the ticket is longer than {MAX_TICKET_CHARS} characters")]
    TooLong,
    #[error("the ticket has a character outside A-Z and 2-7 (position {0})")]
    Character(usize),
    #[error("the ticket is damaged (its checksum does not match): copy it again")]
    Checksum,
    #[error("the ticket is malformed: {0}")]
    Malformed(&'static str),
}

/// A decoded invite ticket.
#[derive(Clone, PartialEq, Eq)]
pub struct Ticket {
    pub mesh_id: MeshId,
    /// The inviter's node id: the joiner only talks to a peer that proves it.
    pub inviter: PeerId,
    /// Where the inviter listens (QUIC multiaddrs).
    pub addrs: Vec<Multiaddr>,
    /// The one-time secret; the inviter keeps only its SHA-256.
    pub secret: [u8; JOIN_SECRET_LEN],
    /// Unix seconds, by the inviter's clock (which alone checks it).
    pub expires: u64,
    /// The invite's label, if it was given one.
    pub name: Option<String>,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("Ticket")
            .field("mesh_id", &self.mesh_id)
            .field("inviter", &self.inviter)
            .field("addrs", &self.addrs)
            .field("expires", &self.expires)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Ticket {
    /// The ticket as text: `MESH1` + base32(record ‖ checksum).
    pub fn encode(&self) -> String {
        let mut b = Vec::with_capacity(160);
        b.extend_from_slice(&self.mesh_id.0);
        b.extend_from_slice(&self.expires.to_be_bytes());
        b.extend_from_slice(&self.secret);
        put_field(&mut b, &self.inviter.to_bytes());
        let addrs: Vec<&Multiaddr> = self
            .addrs
            .iter()
            .filter(|a| a.to_vec().len() <= MAX_ADDR_BYTES)
            .take(MAX_TICKET_ADDRS)
            .collect();
        b.push(addrs.len() as u8);
        for addr in addrs {
            put_field(&mut b, &addr.to_vec());
        }
        let name: String = self
            .name
            .as_deref()
            .unwrap_or("")
            .chars()
            .take(MAX_INVITE_NAME)
            .collect();
        put_field(&mut b, name.as_bytes());
        let sum = checksum(&b);
        b.extend_from_slice(&sum);
        format!("{TICKET_PREFIX}{}", base32_encode(&b))
    }

    /// Reads a ticket. White space (line breaks of a pasted or scanned ticket) is ignored, and
    /// lower case accepted.
    pub fn decode(text: &str) -> Result<Self, TicketError> {
        if text.len() > MAX_TICKET_CHARS {
            return Err(TicketError::TooLong);
        }
        let clean: String = text
            .chars()
            .filter(|c| !c.is_whitespace())
            .map(|c| c.to_ascii_uppercase())
            .collect();
        let body = clean
            .strip_prefix(TICKET_PREFIX)
            .ok_or(TicketError::Prefix)?;
        let bytes =
            base32_decode(body).map_err(|i| TicketError::Character(i + TICKET_PREFIX.len()))?;
        if bytes.len() < CHECKSUM_LEN {
            return Err(TicketError::Malformed("too short"));
        }
        let (record, sum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        if checksum(record) != sum {
            return Err(TicketError::Checksum);
        }
        let mut r = Reader(record);
        let mesh_id = MeshId(r.array::<MESH_ID_LEN>()?);
        let expires = u64::from_be_bytes(r.array::<8>()?);
        let secret = r.array::<JOIN_SECRET_LEN>()?;
        let inviter = PeerId::from_bytes(r.field()?)
            .map_err(|_| TicketError::Malformed("inviter node id"))?;
        let count = r.byte()? as usize;
        if count == 0 || count > MAX_TICKET_ADDRS {
            return Err(TicketError::Malformed("address count"));
        }
        let mut addrs = Vec::with_capacity(count);
        for _ in 0..count {
            let raw = r.field()?;
            if raw.len() > MAX_ADDR_BYTES {
                return Err(TicketError::Malformed("address too long"));
            }
            addrs.push(
                Multiaddr::try_from(raw.to_vec()).map_err(|_| TicketError::Malformed("address"))?,
            );
        }
        let name = std::str::from_utf8(r.field()?)
            .map_err(|_| TicketError::Malformed("name is not UTF-8"))?;
        if name.chars().count() > MAX_INVITE_NAME || name.chars().any(char::is_control) {
            return Err(TicketError::Malformed("name"));
        }
        if !r.0.is_empty() {
            return Err(TicketError::Malformed("trailing bytes"));
        }
        Ok(Ticket {
            mesh_id,
            inviter,
            addrs,
            secret,
            expires,
            name: (!name.is_empty()).then(|| name.to_string()),
        })
    }
}

/// A length-prefixed field (one length byte).
fn put_field(b: &mut Vec<u8>, field: &[u8]) {
    let len = field.len().min(u8::MAX as usize);
    b.push(len as u8);
    b.extend_from_slice(&field[..len]);
}

fn checksum(record: &[u8]) -> [u8; CHECKSUM_LEN] {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(record);
    let mut sum = [0u8; CHECKSUM_LEN];
    sum.copy_from_slice(&digest[..CHECKSUM_LEN]);
    sum
}

/// A cursor over the record.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TicketError> {
        if self.0.len() < n {
            return Err(TicketError::Malformed("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn byte(&mut self) -> Result<u8, TicketError> {
        Ok(self.take(1)?[0])
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], TicketError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn field(&mut self) -> Result<&'a [u8], TicketError> {
        let len = self.byte()? as usize;
        self.take(len)
    }
}

/// The RFC 4648 base32 alphabet.
const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// RFC 4648 base32, without padding.
pub fn base32_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// Decodes unpadded RFC 4648 base32 (upper case); the error is the index of a bad character.
pub fn base32_decode(text: &str) -> Result<Vec<u8>, usize> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for (i, c) in text.bytes().enumerate() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'2'..=b'7' => c - b'2' + 26,
            _ => return Err(i),
        };
        buffer = (buffer << 5) | u32::from(value);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket() -> Ticket {
        Ticket {
            mesh_id: MeshId([1, 2, 3, 4, 5, 6, 7, 8]),
            inviter: libp2p::identity::Keypair::generate_ed25519()
                .public()
                .to_peer_id(),
            addrs: vec![
                "/ip4/192.168.1.20/udp/7400/quic-v1".parse().unwrap(),
                "/ip6/fe80::1/udp/7400/quic-v1".parse().unwrap(),
            ],
            secret: [7u8; JOIN_SECRET_LEN],
            expires: 1_800_000_000,
            name: Some("kitchen pi".into()),
        }
    }

    #[test]
    fn base32_matches_the_rfc_4648_test_vectors() {
        for (raw, enc) in [
            ("", ""),
            ("f", "MY"),
            ("fo", "MZXQ"),
            ("foo", "MZXW6"),
            ("foob", "MZXW6YQ"),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI"),
        ] {
            assert_eq!(base32_encode(raw.as_bytes()), enc);
            assert_eq!(base32_decode(enc).unwrap(), raw.as_bytes());
        }
        assert_eq!(base32_decode("MZ1"), Err(2));
    }

    #[test]
    fn a_ticket_round_trips_and_is_qr_alphanumeric() {
        let t = ticket();
        let text = t.encode();
        assert!(text.starts_with("MESH1"));
        assert!(
            text.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()),
            "{text}"
        );
        assert!(text.len() < 250, "{} characters", text.len());
        assert_eq!(Ticket::decode(&text).unwrap(), t);
        // Pasted with line breaks, in lower case.
        let wrapped = format!("{}\n  {}\n", &text[..40], &text[40..]).to_lowercase();
        assert_eq!(Ticket::decode(&wrapped).unwrap(), t);
        let unnamed = Ticket { name: None, ..t };
        assert_eq!(Ticket::decode(&unnamed.encode()).unwrap(), unnamed);
    }

    #[test]
    fn damaged_tickets_are_refused_before_any_use() {
        let text = ticket().encode();
        // One character changed: the checksum catches it.
        let mut chars: Vec<char> = text.chars().collect();
        chars[20] = if chars[20] == 'A' { 'B' } else { 'A' };
        let typo: String = chars.into_iter().collect();
        assert_eq!(Ticket::decode(&typo), Err(TicketError::Checksum));
        // Truncated.
        assert!(Ticket::decode(&text[..text.len() - 8]).is_err());
        assert_eq!(Ticket::decode("MESH2AAAA"), Err(TicketError::Prefix));
        assert_eq!(Ticket::decode("MESH1AA0A"), Err(TicketError::Character(7)));
        assert_eq!(
            Ticket::decode(&"A".repeat(MAX_TICKET_CHARS + 1)),
            Err(TicketError::TooLong)
        );
    }

    #[test]
    fn the_ticket_never_holds_more_than_its_bounds() {
        let mut t = ticket();
        t.addrs = (0..20)
            .map(|i| format!("/ip4/10.0.0.{i}/udp/7400/quic-v1").parse().unwrap())
            .collect();
        t.name = Some("n".repeat(200));
        let back = Ticket::decode(&t.encode()).unwrap();
        assert_eq!(back.addrs.len(), MAX_TICKET_ADDRS);
        assert_eq!(back.name.unwrap().chars().count(), MAX_INVITE_NAME);
    }
}
