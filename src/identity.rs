//! The node's persistent identity: an Ed25519 keypair in the data dir, and the node id (the
//! libp2p `PeerId`) derived from it; the two ways a node is named in the mesh, [`NodeId`] and
//! [`NodeName`], as distinct types.
//!
//! A leaf module: it imports nothing from the rest of the crate, so the wire types, the state
//! schema and the services domain can all use [`NodeId`] and [`NodeName`].
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
use serde::{Deserialize, Serialize};

/// File name of the node key inside the data dir.
pub const IDENTITY_FILE: &str = "identity.key";

/// How many trailing characters of the base58 node id `mesh peers` shows. Ed25519 peer ids all
/// start with the same `12D3KooW` prefix, so the tail is the part that tells nodes apart; ten
/// base58 characters are ~58 bits, far from colliding in any mesh.
pub const SHORT_ID_LEN: usize = 10;

/// A node's id: its libp2p `PeerId` in base58, the key of `nodes` in the mesh state and the
/// node part of instance and lease keys. Stable for the life of the data dir's key file.
/// Stored in the document as a plain string (the encoding older agents wrote).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(String);

/// A node's name: what its operator called it (`--name`, else the hostname). Chosen by people,
/// so not unique and not stable; a service's target is resolved from it to a [`NodeId`] once.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeName(String);

macro_rules! string_newtype {
    ($type:ident) => {
        impl $type {
            pub fn new(value: impl Into<String>) -> Self {
                Self(value.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl std::fmt::Display for $type {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::ops::Deref for $type {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $type {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $type {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl From<&str> for $type {
            fn from(value: &str) -> Self {
                Self(value.to_string())
            }
        }

        impl From<String> for $type {
            fn from(value: String) -> Self {
                Self(value)
            }
        }

        impl From<&String> for $type {
            fn from(value: &String) -> Self {
                Self(value.clone())
            }
        }

        impl PartialEq<str> for $type {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $type {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $type {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }

        impl autosurgeon::Hydrate for $type {
            fn hydrate_string(value: &'_ str) -> Result<Self, autosurgeon::HydrateError> {
                Ok(Self(value.to_string()))
            }
        }

        impl autosurgeon::Reconcile for $type {
            type Key<'a> = autosurgeon::reconcile::NoKey;
            fn reconcile<R: autosurgeon::Reconciler>(&self, reconciler: R) -> Result<(), R::Error> {
                self.0.reconcile(reconciler)
            }
        }
    };
}

string_newtype!(NodeId);
string_newtype!(NodeName);

impl From<PeerId> for NodeId {
    fn from(peer: PeerId) -> Self {
        Self(peer.to_base58())
    }
}

impl From<&PeerId> for NodeId {
    fn from(peer: &PeerId) -> Self {
        Self(peer.to_base58())
    }
}

impl NodeId {
    /// Whether `wanted` names this id: in full, or as its tail of at least
    /// [`MIN_ID_SUFFIX`] characters (what `mesh peers` shows).
    pub fn matches(&self, wanted: &str) -> bool {
        self.0 == wanted || (wanted.len() >= MIN_ID_SUFFIX && self.0.ends_with(wanted))
    }
}

/// Shortest tail of a node id that names it on the command line. Six base58 characters are
/// ~35 bits: unique in any mesh, and short enough to type from the `mesh peers` table.
pub const MIN_ID_SUFFIX: usize = 6;

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
    #[error(
        "{path} {reason}: restore it from a backup to keep this node's id, or move it aside to \
         start with a new node id"
    )]
    Corrupt { path: PathBuf, reason: String },
}

/// Loads the node keypair from `data_dir/identity.key`, creating it (and the data dir) on first
/// start. Returns the keypair and whether it was newly created.
pub fn load_or_create_keypair(data_dir: &Path) -> Result<(Keypair, bool), IdentityError> {
    let path = data_dir.join(IDENTITY_FILE);
    match fs::read(&path) {
        Ok(bytes) => {
            // An empty file decodes as a key of protobuf's default type (RSA), and libp2p then
            // blames a cargo feature; its other errors name protobuf internals. Say what is
            // actually wrong instead.
            let reason = if bytes.is_empty() {
                "is empty (written during a crash or on a full disk?)".to_string()
            } else {
                match Keypair::from_protobuf_encoding(&bytes) {
                    Ok(keypair) => {
                        warn_if_readable_by_others(&path);
                        return Ok((keypair, false));
                    }
                    Err(_) => format!(
                        "is corrupt ({} bytes that are not a libp2p Ed25519 key)",
                        bytes.len()
                    ),
                }
            };
            Err(IdentityError::Corrupt { path, reason })
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

/// Warns (once, at load) when a secret file can be read by other users: anyone who reads it
/// can impersonate this node (node key) or join the mesh (mesh key).
pub fn warn_if_readable_by_others(path: &Path) {
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
pub(crate) mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A log sink shared between the subscriber and the test.
    #[derive(Clone, Default)]
    struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for SharedBuffer {
        type Writer = SharedBuffer;
        fn make_writer(&'a self) -> SharedBuffer {
            self.clone()
        }
    }

    /// Runs `f` with a subscriber that records every log line (no colours), and returns them.
    pub(crate) fn capture_logs<T>(f: impl FnOnce() -> T) -> (T, String) {
        let buffer = SharedBuffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(buffer.clone())
            .with_ansi(false)
            .finish();
        let value = tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8_lossy(&buffer.0.lock().unwrap()).into_owned();
        (value, text)
    }

    #[test]
    fn an_empty_key_file_is_named_empty_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(IDENTITY_FILE), b"").unwrap();
        let err = load_or_create_keypair(dir.path()).unwrap_err().to_string();
        assert!(err.contains("is empty"), "{err}");
        assert!(!err.contains("rsa"), "no talk of cargo features: {err}");
        assert!(err.contains("move it aside"), "{err}");
        assert!(err.contains("backup"), "{err}");
        assert_eq!(
            fs::read(dir.path().join(IDENTITY_FILE)).unwrap(),
            b"",
            "the file is left for the user"
        );
    }

    #[test]
    fn a_node_key_readable_by_others_is_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create_keypair(dir.path()).unwrap();
        let path = dir.path().join(IDENTITY_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let (_, logs) = capture_logs(|| load_or_create_keypair(dir.path()).unwrap());
        assert!(logs.contains("readable by other users"), "{logs}");
    }

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
        assert!(err.to_string().contains("is corrupt (7 bytes"), "{err}");
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
