//! The mesh keys a node holds: the current one, and after `mesh key rotate` the one before it
//! (accepted only from node ids the document lists as members, so that a member that was
//! offline during the rotation gets back in and is handed the new key, while a removed device
//! that kept the old key, even under a fresh identity, does not).
//!
//! Persisted as `mesh.keyring` in the data dir (0600, written atomically), next to `mesh.key`,
//! which always holds the current key. Spec: `protocol/auth.md` ("Key rotation").

use std::path::Path;

use super::key::{MeshId, MeshKey, MeshKeyError};

/// File name of the keyring in the data dir.
pub const KEYRING_FILE: &str = "mesh.keyring";

/// The keys of one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keyring {
    pub current: MeshKey,
    /// The key before the last rotation.
    pub previous: Option<MeshKey>,
    /// How many rotations led to `current` (0: never rotated).
    pub generation: u64,
}

impl Keyring {
    /// A key never rotated.
    pub fn single(key: MeshKey) -> Self {
        Self {
            current: key,
            previous: None,
            generation: 0,
        }
    }

    /// The keyring to run with, given the key file in use (`key`): the data dir's keyring when
    /// `key` is its current or previous key (a rotation happened since that file was written,
    /// or the agent stopped between writing the keyring and the key file); otherwise `key`
    /// alone (an operator put another key in place: it wins).
    pub fn load(data_dir: Option<&Path>, key: MeshKey) -> Self {
        let Some(stored) = data_dir.and_then(|dir| Self::read(&dir.join(KEYRING_FILE))) else {
            return Self::single(key);
        };
        if stored.current == key || stored.previous.as_ref() == Some(&key) {
            stored
        } else {
            Self::single(key)
        }
    }

    fn read(path: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(path).ok()?;
        let mut generation = None;
        let mut current = None;
        let mut previous = None;
        for line in text.lines() {
            match line.split_once(' ') {
                Some(("generation", n)) => generation = n.trim().parse().ok(),
                Some(("current", hex)) => current = hex.trim().parse().ok(),
                Some(("previous", hex)) => previous = hex.trim().parse().ok(),
                _ => {}
            }
        }
        Some(Self {
            current: current?,
            previous,
            generation: generation?,
        })
    }

    /// Writes `mesh.keyring`, then `mesh.key` (each atomically and durably): a crash between
    /// the two leaves the old key in `mesh.key`, which [`Keyring::load`] recognises as the
    /// keyring's previous key.
    pub fn save(&self, data_dir: &Path) -> Result<(), MeshKeyError> {
        let mut text = format!(
            "generation {}\ncurrent {}\n",
            self.generation,
            self.current.to_hex()
        );
        if let Some(previous) = &self.previous {
            text.push_str(&format!("previous {}\n", previous.to_hex()));
        }
        crate::identity::write_secret_file(&data_dir.join(KEYRING_FILE), text.as_bytes())?;
        crate::identity::write_secret_file(
            &data_dir.join(super::key::MESH_KEY_FILE),
            format!("{}\n", self.current.to_hex()).as_bytes(),
        )?;
        Ok(())
    }

    /// A new random key, one generation on; the current key becomes the previous one.
    pub fn rotated(&self) -> Self {
        Self {
            current: MeshKey::generate(),
            previous: Some(self.current.clone()),
            generation: self.generation + 1,
        }
    }

    /// The keyring after a member handed us `key` of `generation`, if it is newer than ours:
    /// a higher generation, or the same one with a greater mesh id (two members rotated at
    /// once: every node settles on the same key).
    pub fn adopt(&self, key: MeshKey, generation: u64) -> Option<Self> {
        let newer = (generation, key.mesh_id().0) > (self.generation, self.current.mesh_id().0);
        newer.then(|| Self {
            previous: Some(self.current.clone()),
            current: key,
            generation,
        })
    }

    /// The key whose mesh id is `id`: the current one, or the previous one.
    pub fn by_id(&self, id: MeshId) -> Option<(&MeshKey, bool)> {
        if self.current.mesh_id() == id {
            return Some((&self.current, false));
        }
        self.previous
            .as_ref()
            .filter(|k| k.mesh_id() == id)
            .map(|k| (k, true))
    }

    /// Whether `id` is the mesh id of one of these keys (discovery accepts both).
    pub fn knows(&self, id: MeshId) -> bool {
        self.by_id(id).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_survives_a_restart_and_a_crash_between_the_two_files() {
        let dir = tempfile::tempdir().unwrap();
        let first = MeshKey::generate();
        let ring = Keyring::single(first.clone()).rotated();
        ring.save(dir.path()).unwrap();
        let on_disk =
            MeshKey::read_file(&dir.path().join(crate::admission::MESH_KEY_FILE)).unwrap();
        assert_eq!(on_disk, ring.current);
        // Started with the new key file, or still with the old one (a crash before mesh.key
        // was written, or --mesh-key naming the old file): the same keyring.
        assert_eq!(Keyring::load(Some(dir.path()), on_disk), ring);
        assert_eq!(Keyring::load(Some(dir.path()), first), ring);
        // An operator put an unrelated key in place: it wins, alone.
        let other = MeshKey::generate();
        assert_eq!(
            Keyring::load(Some(dir.path()), other.clone()),
            Keyring::single(other)
        );
    }

    #[test]
    fn a_newer_key_is_adopted_and_concurrent_rotations_settle_on_one() {
        let base = Keyring::single(MeshKey::generate());
        let (a, b) = (base.rotated(), base.rotated());
        assert!(base.adopt(a.current.clone(), a.generation).is_some());
        assert!(
            a.adopt(base.current.clone(), 0).is_none(),
            "never an older key"
        );
        // Same generation, two keys: exactly one side adopts the other's.
        let a_takes_b = a.adopt(b.current.clone(), b.generation).is_some();
        let b_takes_a = b.adopt(a.current.clone(), a.generation).is_some();
        assert!(a_takes_b != b_takes_a);
        let adopted = base.adopt(a.current.clone(), 1).unwrap();
        assert_eq!(
            adopted.by_id(base.current.mesh_id()).map(|(_, old)| old),
            Some(true)
        );
        assert!(adopted.knows(a.current.mesh_id()));
    }
}
