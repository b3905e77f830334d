//! The mesh key, its public id, and the handshake proofs made with it (the primitives of
//! admission; the handshake's state machine is [`super`]'s, keys over time
//! [`super::keyring`]'s).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use hmac::{Hmac, Mac};
use libp2p::PeerId;
use sha2::Sha256;

use crate::wire::auth::{Nonce, Proof};

/// Length of the mesh key in bytes (256 bits: brute force is out of reach).
pub const MESH_KEY_LEN: usize = 32;
/// Bytes of the mesh id. 8 bytes (16 hex characters) keeps TXT records short while making an
/// accidental collision between two meshes on one LAN negligible (2^-64).
pub const MESH_ID_LEN: usize = 8;
/// File name of the mesh key inside the data dir when none is given with `--mesh-key`.
pub const MESH_KEY_FILE: &str = "mesh.key";

type HmacSha256 = Hmac<Sha256>;

/// Errors reading or writing a mesh key.
#[derive(Debug, thiserror::Error)]
pub enum MeshKeyError {
    #[error("cannot read mesh key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mesh key file {path} must hold 64 hex characters (as printed by `mesh key generate`)")]
    Malformed { path: PathBuf },
    #[error(transparent)]
    Write(#[from] crate::identity::IdentityError),
}

/// The shared secret of one mesh. All agents holding the same key form one mesh.
#[derive(Clone, PartialEq, Eq)]
pub struct MeshKey([u8; MESH_KEY_LEN]);

impl fmt::Debug for MeshKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret, even in debug logs.
        write!(f, "MeshKey(id={})", self.mesh_id())
    }
}

impl MeshKey {
    /// A fresh random key from the operating system's generator.
    pub fn generate() -> Self {
        let mut key = [0u8; MESH_KEY_LEN];
        getrandom_fill(&mut key);
        Self(key)
    }

    pub fn from_bytes(bytes: [u8; MESH_KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The key as 64 lowercase hex characters, the format of key files.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The public, one-way mesh id: the first [`MESH_ID_LEN`] bytes of
    /// `HMAC-SHA256(K, "mesh-id/v1")`. Advertised on the LAN so that meshes sharing it ignore
    /// each other; knowing it does not help to pass admission.
    pub fn mesh_id(&self) -> MeshId {
        let mut mac = self.mac();
        mac.update(b"mesh-id/v1");
        let digest = mac.finalize().into_bytes();
        let mut id = [0u8; MESH_ID_LEN];
        id.copy_from_slice(&digest[..MESH_ID_LEN]);
        MeshId(id)
    }

    /// Reads a key file (64 hex characters, surrounding white space ignored).
    pub fn read_file(path: &Path) -> Result<Self, MeshKeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| MeshKeyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let key = text.trim().parse().map_err(|()| MeshKeyError::Malformed {
            path: path.to_path_buf(),
        })?;
        // Whoever reads the key can join the mesh: the same warning as for the node key.
        crate::identity::warn_if_readable_by_others(path);
        Ok(key)
    }

    /// Loads `data_dir/mesh.key`, creating a fresh key there on first start.
    pub fn load_or_create(data_dir: &Path) -> Result<(Self, bool), MeshKeyError> {
        let path = data_dir.join(MESH_KEY_FILE);
        if path.exists() {
            return Ok((Self::read_file(&path)?, false));
        }
        let key = Self::generate();
        crate::identity::write_secret_file(&path, format!("{}\n", key.to_hex()).as_bytes())?;
        Ok((key, true))
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.0).expect("HMAC accepts keys of any length")
    }

    /// The raw key, for the one place it leaves this node: the answer to a redeemed invite
    /// (`/mesh/join/1`, over a TLS connection to a peer holding a valid one-time secret).
    pub fn secret_bytes(&self) -> &[u8; MESH_KEY_LEN] {
        &self.0
    }

    /// The handshake proof for `role` over both node ids and both nonces.
    pub(super) fn proof(
        &self,
        role: Role,
        dialer: &PeerId,
        listener: &PeerId,
        nonces: &Nonces,
    ) -> Proof {
        let mut mac = self.mac();
        mac.update(b"mesh-auth/v1");
        mac.update(match role {
            Role::Dialer => b"D",
            Role::Listener => b"L",
        });
        for id in [dialer, listener] {
            let bytes = id.to_bytes();
            // Length-prefixed so that no two (dialer, listener) pairs share an encoding.
            mac.update(&(bytes.len() as u16).to_be_bytes());
            mac.update(&bytes);
        }
        mac.update(&nonces.dialer);
        mac.update(&nonces.listener);
        Proof(mac.finalize().into_bytes().into())
    }

    pub(super) fn verify(
        &self,
        role: Role,
        dialer: &PeerId,
        listener: &PeerId,
        nonces: &Nonces,
        proof: &Proof,
    ) -> bool {
        let expected = self.proof(role, dialer, listener, nonces);
        // Constant-time comparison: a timing side channel must not reveal the proof bytewise.
        expected
            .0
            .iter()
            .zip(proof.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl FromStr for MeshKey {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let bytes = hex::decode(s).map_err(|_| ())?;
        let key: [u8; MESH_KEY_LEN] = bytes.try_into().map_err(|_| ())?;
        Ok(Self(key))
    }
}

/// Fills `buf` from the operating system's random source.
pub fn getrandom_fill(buf: &mut [u8]) {
    use rand::TryRng;
    rand::rngs::SysRng
        .try_fill_bytes(buf)
        .expect("the OS random source is available on every supported platform");
}

/// The public identifier of a mesh (see [`MeshKey::mesh_id`]); shown as 16 hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MeshId(pub [u8; MESH_ID_LEN]);

impl fmt::Display for MeshId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for MeshId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MeshId({self})")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    Dialer,
    Listener,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Nonces {
    pub(super) dialer: Nonce,
    pub(super) listener: Nonce,
}
