//! Messages of `/mesh/auth/1`, the admission handshake (spec: `protocol/auth.md`), and what
//! they carry: the proof, the nonces and the [`NodeInfo`] a node tells an admitted peer about
//! itself (it replaces libp2p's identify).
//!
//! Owns the types and the bounds a received [`NodeInfo`] is cut to. Does not own the handshake
//! (the sans-IO state machine is [`crate::admission`]) or the codec (`crate::transport`).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::hardware::HardwareInfo;

/// Length of a handshake nonce. 32 random bytes never repeat in practice, so a recorded proof
/// can never be replayed against a fresh challenge.
pub const NONCE_LEN: usize = 32;

/// A handshake MAC (HMAC-SHA256 output).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof(#[serde(with = "serde_bytes_32")] pub [u8; 32]);

impl fmt::Debug for Proof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Proof({}..)", hex::encode(&self.0[..4]))
    }
}

/// A handshake nonce.
pub type Nonce = [u8; NONCE_LEN];

/// Serde for fixed 32-byte arrays as CBOR byte strings (compact, and length-checked on decode).
mod serde_bytes_32 {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let bytes: serde_bytes_buf::Buf = Deserialize::deserialize(d)?;
        bytes
            .0
            .try_into()
            .map_err(|_| serde::de::Error::custom("expected exactly 32 bytes"))
    }
    /// Accepts a byte string or a sequence of bytes.
    pub mod serde_bytes_buf {
        use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};
        pub struct Buf(pub Vec<u8>);
        impl<'de> Deserialize<'de> for Buf {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = Buf;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("a byte string")
                    }
                    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Buf, E> {
                        if v.len() > 64 {
                            return Err(E::custom("byte string too long"));
                        }
                        Ok(Buf(v.to_vec()))
                    }
                    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Buf, A::Error> {
                        let mut out = Vec::new();
                        while let Some(b) = seq.next_element::<u8>()? {
                            if out.len() >= 64 {
                                return Err(serde::de::Error::custom("byte string too long"));
                            }
                            out.push(b);
                        }
                        Ok(Buf(out))
                    }
                }
                d.deserialize_bytes(V)
            }
        }
    }
}

/// Nonces serialize as byte strings too.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireNonce(#[serde(with = "serde_bytes_32")] pub Nonce);

impl fmt::Debug for WireNonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Nonce({}..)", hex::encode(&self.0[..4]))
    }
}

/// Requests of `/mesh/auth/1`, sent by the dialer. `I` is the node info payload.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum AuthRequest<I> {
    /// `key`: the mesh id of the key the dialer proposes (its current one). Absent from older
    /// agents: the listener's current key.
    Hello {
        nonce: WireNonce,
        #[serde(default)]
        key: Option<[u8; 8]>,
    },
    Proof {
        proof: Proof,
        info: I,
    },
}

/// Responses of `/mesh/auth/1`, sent by the listener.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum AuthResponse<I> {
    /// `key`: the mesh id of the key `proof` is made with, and both sides use from here on:
    /// the dialer's proposal when the listener may use it, else the listener's current key.
    Challenge {
        nonce: WireNonce,
        proof: Proof,
        #[serde(default)]
        key: Option<[u8; 8]>,
    },
    Welcome {
        info: I,
    },
    /// The listener refuses; it closes the connection right after.
    Denied,
}

impl<I: PartialEq> PartialEq for AuthRequest<I> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Hello { nonce: a, key: x }, Self::Hello { nonce: b, key: y }) => {
                a == b && x == y
            }
            (Self::Proof { proof: a, info: x }, Self::Proof { proof: b, info: y }) => {
                a == b && x == y
            }
            _ => false,
        }
    }
}

/// What a node tells an admitted peer about itself, inside the handshake (replaces identify).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub agent_version: String,
    pub protocol_version: u32,
    /// Membership incarnation (see `membership::MemberId`).
    pub bump: u64,
    /// Addresses the node listens on, as multiaddr strings.
    pub listen_addrs: Vec<String>,
    pub hardware: HardwareInfo,
    /// Where the sender sees the receiver: the source address of the connection the receiver
    /// dialed (absent when the sender dialed, or the link is relayed). A member behind NAT
    /// learns from it that it is, and hole punching dials it. Absent from older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<String>,
    /// The sender serves a circuit relay for members (`--relay-server`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub relay: bool,
}

/// Bounds applied to a received [`NodeInfo`] before it is stored or shown.
pub const MAX_NAME_LEN: usize = 64;
pub const MAX_LISTEN_ADDRS: usize = 16;

impl NodeInfo {
    /// Truncates fields a hostile or buggy peer could make unreasonably large.
    pub fn sanitized(mut self) -> Self {
        truncate_chars(&mut self.name, MAX_NAME_LEN);
        truncate_chars(&mut self.agent_version, 32);
        self.listen_addrs.truncate(MAX_LISTEN_ADDRS);
        truncate_chars(&mut self.hardware.cpu_model, 128);
        truncate_chars(&mut self.hardware.os, 32);
        truncate_chars(&mut self.hardware.os_version, 64);
        truncate_chars(&mut self.hardware.arch, 32);
        if let Some(observed) = &mut self.observed {
            truncate_chars(observed, 256);
        }
        self
    }
}

fn truncate_chars(s: &mut String, max: usize) {
    if let Some((idx, _)) = s.char_indices().nth(max) {
        s.truncate(idx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_info_is_bounded() {
        let mut hw = crate::hardware::probe();
        hw.cpu_model = "x".repeat(10_000);
        let info = NodeInfo {
            name: "é".repeat(1000),
            agent_version: "1".into(),
            protocol_version: 1,
            bump: 1,
            listen_addrs: vec!["/ip4/1.2.3.4/udp/1/quic-v1".into(); 100],
            hardware: hw,
            observed: Some("/ip4/1.2.3.4/".repeat(100)),
            relay: false,
        }
        .sanitized();
        assert_eq!(info.name.chars().count(), MAX_NAME_LEN);
        assert_eq!(info.listen_addrs.len(), MAX_LISTEN_ADDRS);
        assert_eq!(info.hardware.cpu_model.len(), 128);
    }
}
