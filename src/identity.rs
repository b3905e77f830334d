//! The node's persistent identity: an Ed25519 keypair in the data dir, and the node id (the
//! libp2p `PeerId`) derived from it.
//!
//! Owns the key file format and its crash-safe creation. Does not own the mesh key (see
//! [`crate::admission`]), although both files live side by side and share [`write_secret_file`].
//!
//! The key file (`identity.key`) holds the keypair in libp2p's protobuf encoding, mode 0600. It
//! is created once; a file that exists but cannot be decoded is an error, never silently replaced:
//! replacing it would give the machine a new node id and orphan everything the mesh knows of it.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use libp2p::PeerId;
use libp2p::identity::Keypair;

/// File name of the node key inside the data dir.
pub const IDENTITY_FILE: &str = "identity.key";

/// How many trailing characters of the base58 node id `mesh peers` shows. Ed25519 peer ids all
/// start with the same `12D3KooW` prefix, so the tail is the part that tells nodes apart; ten
/// base58 characters are ~58 bits, far from colliding in any mesh.
pub const SHORT_ID_LEN: usize = 10;

/// Errors loading or creating identity files.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid node key ({reason}); move it aside to start with a new node id")]
    Corrupt { path: PathBuf, reason: String },
}

/// Loads the node keypair from `data_dir/identity.key`, creating it (and the data dir) on first
/// start. Returns the keypair and whether it was newly created.
pub fn load_or_create_keypair(data_dir: &Path) -> Result<(Keypair, bool), IdentityError> {
    let path = data_dir.join(IDENTITY_FILE);
    match fs::read(&path) {
        Ok(bytes) => {
            let keypair =
                Keypair::from_protobuf_encoding(&bytes).map_err(|e| IdentityError::Corrupt {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            warn_if_readable_by_others(&path);
            Ok((keypair, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let keypair = Keypair::generate_ed25519();
            let bytes = keypair
                .to_protobuf_encoding()
                .expect("an ed25519 keypair always has a protobuf encoding");
            write_secret_file(&path, &bytes)?;
            Ok((keypair, true))
        }
        Err(source) => Err(IdentityError::Read { path, source }),
    }
}

/// The short form of a node id shown in tables: its last [`SHORT_ID_LEN`] characters.
pub fn short_id(peer: &PeerId) -> String {
    let full = peer.to_base58();
    full[full.len().saturating_sub(SHORT_ID_LEN)..].to_string()
}

/// Writes a secret file crash-safely: a temporary file in the same directory created with mode
/// 0600, fsync, rename over the target, fsync of the directory. A crash at any point leaves
/// either no file or the whole file, never a truncated key.
pub fn write_secret_file(path: &Path, contents: &[u8]) -> Result<(), IdentityError> {
    let write_err = |source| IdentityError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(write_err)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("secret")
    ));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(write_err)?;
    file.write_all(contents).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    drop(file);
    fs::rename(&tmp, path).map_err(write_err)?;
    if let Ok(d) = fs::File::open(dir) {
        // Directory fsync makes the rename durable; failure here loses nothing already written.
        let _ = d.sync_all();
    }
    Ok(())
}

fn warn_if_readable_by_others(path: &Path) {
    if let Ok(meta) = fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "secret file is readable by other users; run `chmod 600` on it"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keypair_survives_restart_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let (a, created) = load_or_create_keypair(dir.path()).unwrap();
        assert!(created);
        let (b, created) = load_or_create_keypair(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        let mode = fs::metadata(dir.path().join(IDENTITY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn corrupt_key_is_an_error_not_a_new_identity() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(IDENTITY_FILE), b"garbage").unwrap();
        let err = load_or_create_keypair(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityError::Corrupt { .. }), "{err}");
        assert_eq!(
            fs::read(dir.path().join(IDENTITY_FILE)).unwrap(),
            b"garbage",
            "the corrupt file must be left for the user to inspect"
        );
    }

    #[test]
    fn short_id_is_the_tail() {
        let peer = Keypair::generate_ed25519().public().to_peer_id();
        let s = short_id(&peer);
        assert_eq!(s.len(), SHORT_ID_LEN);
        assert!(peer.to_base58().ends_with(&s));
    }
}
