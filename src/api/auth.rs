//! Who may change the agent through the control API: the API token.
//!
//! The agent keeps a random token in `DATA_DIR/api.token` (32 random bytes, 64 hex
//! characters), created at first start and kept across restarts. Only the agent's user can
//! read it (mode 0600) or, when a `mesh` group exists in `/etc/group`, also that group
//! (mode 0640, group `mesh`; the data dir then gets group `mesh` and the group search bit, so
//! members can open the token by name but list nothing). Every state-changing request must
//! carry it as `Authorization: Bearer TOKEN`; reads need nothing. Since the agent runs
//! commands as its user (root, usually), reading the token is as good as being that user:
//! the `mesh` group is an admin group.
//!
//! Owns: the token file (create, load, modes), the constant-time check the server makes
//! ([`TokenVerifier`]), and the lookup the CLI makes ([`find_token`]). Does not own the HTTP
//! checks around it (`server::guard`) nor where the CLI looks (`cli`).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::identity::{IdentityError, write_secret_file};

/// File name of the token inside the data dir.
pub const TOKEN_FILE: &str = "api.token";
/// The admin group: when it exists, its members may read the token (and so change the agent).
pub const ADMIN_GROUP: &str = "mesh";
/// Environment variable holding the token itself (for scripts that got it some other way).
pub const TOKEN_ENV: &str = "MESH_API_TOKEN";
/// Environment variable naming a token file (the CLI's `--token-file`).
pub const TOKEN_FILE_ENV: &str = "MESH_API_TOKEN_FILE";
/// How long a dashboard login lasts: a working day; the browser forgets it sooner if the user
/// logs out.
pub const SESSION_TTL_S: u64 = 12 * 3600;
/// Random bytes in a token: 256 bits cannot be guessed, even by a local user trying millions
/// of requests.
const TOKEN_BYTES: usize = 32;
/// Where group names are resolved. Parsed directly: the agent needs one gid, not NSS.
const GROUP_FILE: &str = "/etc/group";
/// Token file mode without the admin group: the agent's user only.
const MODE_OWNER_ONLY: u32 = 0o600;
/// Token file mode with the admin group: the agent's user, and the group read-only.
const MODE_WITH_GROUP: u32 = 0o640;
/// Group search bit added to the data dir with the admin group: members can open the token
/// file by name, but cannot list the directory (its other files stay 0600 anyway).
const DIR_GROUP_SEARCH: u32 = 0o010;

/// Errors of the token file.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read the API token {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] IdentityError),
    #[error("cannot set the mode of {path}: {source}")]
    Mode {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The token file as the agent prepared it.
#[derive(Debug)]
pub struct TokenFile {
    pub path: PathBuf,
    /// The token (64 hex characters).
    pub token: String,
    /// Whether it was created (or replaced, being malformed) at this start.
    pub created: bool,
    /// The admin group's gid when the group may read the token.
    pub group: Option<u32>,
}

/// A fresh token: [`TOKEN_BYTES`] from the OS random source, hex.
pub fn generate_token() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    crate::admission::getrandom_fill(&mut bytes);
    hex::encode(bytes)
}

/// A token as written in a file or variable: surrounding whitespace trimmed, 64 hex digits.
pub fn parse_token(text: &str) -> Option<String> {
    let t = text.trim();
    (t.len() == 2 * TOKEN_BYTES && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| t.to_ascii_lowercase())
}

/// The gid of group `name` in the text of an `/etc/group` file (`name:x:gid:members`).
pub fn group_id(group_file: &str, name: &str) -> Option<u32> {
    group_file.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then_some(())?;
        fields.nth(1)?.trim().parse().ok()
    })
}

/// Loads `data_dir/api.token`, creating it at first start (or replacing a malformed one: a
/// token is no identity, a new one only means clients read the file again), and sets its
/// access: the admin group's when the group exists, else the owner's only. Access is set at
/// every start, so a group created later takes effect at the next restart.
pub fn load_or_create(data_dir: &Path) -> Result<TokenFile, AuthError> {
    let path = data_dir.join(TOKEN_FILE);
    // A token file this user did not write (or a link to one) may be known to whoever did:
    // replace it rather than trust it.
    if let Ok(meta) = fs::symlink_metadata(&path) {
        use std::os::unix::fs::MetadataExt;
        let euid = nix::unistd::geteuid().as_raw();
        if meta.file_type().is_symlink() || meta.uid() != euid {
            tracing::warn!(
                path = %path.display(),
                owner = meta.uid(),
                "the API token file is not a plain file of this agent's user; writing a new token"
            );
            fs::remove_file(&path).map_err(|source| AuthError::Read {
                path: path.clone(),
                source,
            })?;
        }
    }
    let existing = match fs::read_to_string(&path) {
        Ok(text) => {
            let parsed = parse_token(&text);
            if parsed.is_none() {
                tracing::warn!(path = %path.display(), "the API token file is malformed; writing a new token");
            }
            parsed
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => return Err(AuthError::Read { path, source }),
    };
    let created = existing.is_none();
    let token = match existing {
        Some(token) => token,
        None => {
            let token = generate_token();
            write_secret_file(&path, format!("{token}\n").as_bytes())?;
            token
        }
    };
    let gid = fs::read_to_string(GROUP_FILE)
        .ok()
        .and_then(|text| group_id(&text, ADMIN_GROUP));
    let group = match gid {
        Some(gid) => match share_with_group(&path, data_dir, gid) {
            Ok(()) => Some(gid),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "cannot give group `{ADMIN_GROUP}` read access to the API token; only \
                     this user can change the agent"
                );
                None
            }
        },
        None => None,
    };
    if group.is_none() {
        set_mode(&path, MODE_OWNER_ONLY)?;
    }
    Ok(TokenFile {
        path,
        token,
        created,
        group,
    })
}

fn set_mode(path: &Path, mode: u32) -> Result<(), AuthError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|source| AuthError::Mode {
        path: path.to_path_buf(),
        source,
    })
}

/// Token 0640 group `gid`; the data dir group `gid` with the group search bit.
fn share_with_group(token: &Path, data_dir: &Path, gid: u32) -> Result<(), AuthError> {
    let mode_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| AuthError::Mode { path, source }
    };
    // Owner-only first: the file is never readable by the group before its group is `mesh`.
    set_mode(token, MODE_OWNER_ONLY)?;
    std::os::unix::fs::chown(token, None, Some(gid)).map_err(mode_err(token))?;
    set_mode(token, MODE_WITH_GROUP)?;
    let dir_mode = fs::metadata(data_dir)
        .map_err(mode_err(data_dir))?
        .permissions()
        .mode();
    std::os::unix::fs::chown(data_dir, None, Some(gid)).map_err(mode_err(data_dir))?;
    set_mode(data_dir, (dir_mode & 0o7777) | DIR_GROUP_SEARCH)
}

/// The server's side of the token: only its SHA-256, compared in constant time.
#[derive(Clone)]
pub struct TokenVerifier {
    digest: [u8; 32],
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenVerifier(..)")
    }
}

impl TokenVerifier {
    pub fn new(token: &str) -> Self {
        Self {
            digest: Sha256::digest(token.as_bytes()).into(),
        }
    }

    /// A verifier for a token nobody knows: no state change is accepted.
    pub fn unknowable() -> Self {
        Self::new(&generate_token())
    }

    /// A dashboard session valid until `expires_s` (Unix seconds): `EXPIRES.MAC`, the MAC an
    /// HMAC-SHA256 of the expiry keyed by the token's digest. Stateless: it outlives an agent
    /// restart, and dies with the token (a new token makes every session invalid).
    pub fn session(&self, expires_s: u64) -> String {
        format!("{expires_s}.{}", hex::encode(self.session_mac(expires_s)))
    }

    /// Whether `value` is a session of [`Self::session`] still valid at `now_s` (and not
    /// claiming more than [`SESSION_TTL_S`] ahead). The MAC is compared in constant time.
    pub fn verify_session(&self, value: &str, now_s: u64) -> bool {
        let Some((expires, mac)) = value.trim().split_once('.') else {
            return false;
        };
        let (Ok(expires_s), Ok(mac)) = (expires.parse::<u64>(), hex::decode(mac)) else {
            return false;
        };
        if expires_s <= now_s || expires_s > now_s.saturating_add(SESSION_TTL_S + 60) {
            return false;
        }
        self.session_mac(expires_s).ct_eq(&mac[..]).into()
    }

    fn session_mac(&self, expires_s: u64) -> Vec<u8> {
        use hmac::{Hmac, Mac};
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.digest).expect("HMAC takes any key length");
        mac.update(b"mesh-dashboard-session:");
        mac.update(expires_s.to_string().as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// Whether `presented` is the token. Both sides are hashed first, so the comparison takes
    /// the same time whatever the length or the first differing byte of `presented`.
    pub fn verify(&self, presented: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        self.digest.ct_eq(&presented).into()
    }
}

/// What the CLI found: the token, or why there is none (shown with a 401/403 answer).
#[derive(Clone, Debug, Default)]
pub struct ClientToken {
    pub token: Option<String>,
    /// E.g. "cannot read /var/lib/mesh/api.token: Permission denied (os error 13)".
    pub note: Option<String>,
}

/// The CLI's token: from `explicit_file` (`--token-file` / `MESH_API_TOKEN_FILE`), else
/// `env_token` (`MESH_API_TOKEN`), else the first readable `api.token` in `data_dirs`. A file
/// that exists but cannot be read is skipped and noted, never an error: reads work without a
/// token, and a refused change says how to get access.
pub fn find_token(
    explicit_file: Option<&Path>,
    env_token: Option<&str>,
    data_dirs: &[PathBuf],
) -> ClientToken {
    if let Some(path) = explicit_file {
        let read = fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
            .and_then(|text| {
                parse_token(&text).ok_or_else(|| {
                    format!(
                        "{} does not hold a token (64 hex characters)",
                        path.display()
                    )
                })
            });
        return match read {
            Ok(token) => ClientToken {
                token: Some(token),
                note: None,
            },
            Err(note) => ClientToken {
                token: None,
                note: Some(note),
            },
        };
    }
    if let Some(token) = env_token.filter(|t| !t.trim().is_empty()) {
        return match parse_token(token) {
            Some(token) => ClientToken {
                token: Some(token),
                note: None,
            },
            None => ClientToken {
                token: None,
                note: Some(format!("{TOKEN_ENV} is not a token (64 hex characters)")),
            },
        };
    }
    let mut note = None;
    for dir in data_dirs {
        let path = dir.join(TOKEN_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => match parse_token(&text) {
                Some(token) => {
                    return ClientToken {
                        token: Some(token),
                        note: None,
                    };
                }
                None => {
                    note.get_or_insert(format!(
                        "{} does not hold a token (64 hex characters)",
                        path.display()
                    ));
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            // Not readable by this user (or the dir not searchable): the next place is tried,
            // and the first problem is the one worth telling.
            Err(e) => {
                note.get_or_insert(format!("cannot read {}: {e}", path.display()));
            }
        }
    }
    ClientToken { token: None, note }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_ids_come_from_the_group_file() {
        let text = "root:x:0:\nmeshy:x:7:\nmesh:x:998:alice,bob\n";
        assert_eq!(group_id(text, "mesh"), Some(998));
        assert_eq!(group_id(text, "root"), Some(0));
        assert_eq!(group_id(text, "mes"), None);
        assert_eq!(group_id("mesh:x:notanumber:\n", "mesh"), None);
        assert_eq!(group_id("", "mesh"), None);
    }

    #[test]
    fn tokens_are_64_hex_digits() {
        let t = generate_token();
        assert_eq!(parse_token(&format!("{t}\n")), Some(t.clone()));
        assert_ne!(t, generate_token(), "tokens are random");
        assert_eq!(parse_token("abc"), None);
        assert_eq!(parse_token(&"g".repeat(64)), None);
    }

    #[test]
    fn verifier_accepts_only_the_token() {
        let t = generate_token();
        let v = TokenVerifier::new(&t);
        assert!(v.verify(&t));
        assert!(!v.verify(&generate_token()));
        assert!(!v.verify(""));
        assert!(!v.verify(&t[..63]));
        assert!(!TokenVerifier::unknowable().verify(&t));
        assert_eq!(format!("{v:?}"), "TokenVerifier(..)", "never printed");
    }

    #[test]
    fn token_file_is_created_once_kept_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        assert!(first.created);
        let mode = fs::metadata(&first.path).unwrap().permissions().mode() & 0o777;
        match first.group {
            None => assert_eq!(mode, 0o600),
            Some(_) => assert_eq!(mode, 0o640),
        }
        let again = load_or_create(dir.path()).unwrap();
        assert!(!again.created);
        assert_eq!(again.token, first.token, "kept across restarts");
        fs::write(&first.path, "garbage").unwrap();
        let replaced = load_or_create(dir.path()).unwrap();
        assert!(replaced.created);
        assert_ne!(replaced.token, first.token);
    }

    #[test]
    fn a_token_file_planted_by_someone_else_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TOKEN_FILE);
        let planted = "7".repeat(64);
        // A link to a token the planter knows.
        let elsewhere = dir.path().join("known");
        fs::write(&elsewhere, format!("{planted}\n")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        let loaded = load_or_create(dir.path()).unwrap();
        assert!(loaded.created);
        assert_ne!(loaded.token, planted);
        assert!(
            !fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        // A plain file owned by another user (needs root to hand it over).
        if nix::unistd::geteuid().is_root() {
            fs::remove_file(&path).unwrap();
            fs::write(&path, format!("{planted}\n")).unwrap();
            nix::unistd::chown(&path, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
            let loaded = load_or_create(dir.path()).unwrap();
            assert!(loaded.created);
            assert_ne!(loaded.token, planted);
        } else {
            eprintln!("skipping the foreign-owner case: needs root to chown");
        }
    }

    #[test]
    fn cli_token_lookup_order_and_notes() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&b).unwrap();
        let tb = generate_token();
        fs::write(b.join(TOKEN_FILE), format!("{tb}\n")).unwrap();
        // The first data dir with a token file wins; a dir without one is skipped silently.
        let found = find_token(None, None, &[a.clone(), b.clone()]);
        assert_eq!(found.token.as_deref(), Some(tb.as_str()));
        assert!(found.note.is_none());
        // The variable beats the data dirs; an explicit file beats both.
        let te = generate_token();
        assert_eq!(
            find_token(None, Some(&te), std::slice::from_ref(&b))
                .token
                .as_deref(),
            Some(te.as_str())
        );
        let explicit = find_token(Some(&b.join(TOKEN_FILE)), Some(&te), &[]);
        assert_eq!(explicit.token.as_deref(), Some(tb.as_str()));
        // Nothing usable: no token, and a note that names the problem.
        let missing = find_token(Some(&a.join(TOKEN_FILE)), None, &[]);
        assert!(missing.token.is_none());
        assert!(missing.note.unwrap().contains("cannot read"));
        fs::write(a.join(TOKEN_FILE), "nope").unwrap();
        let bad = find_token(None, None, &[a]);
        assert!(bad.token.is_none());
        assert!(bad.note.unwrap().contains("does not hold a token"));
    }
}

#[cfg(test)]
mod session_tests {
    use super::*;

    #[test]
    fn sessions_hold_until_they_expire_and_only_for_their_token() {
        let token = generate_token();
        let v = TokenVerifier::new(&token);
        let now = 1_800_000_000;
        let s = v.session(now + SESSION_TTL_S);
        assert!(v.verify_session(&s, now));
        assert!(v.verify_session(&s, now + SESSION_TTL_S - 1));
        assert!(!v.verify_session(&s, now + SESSION_TTL_S), "expired");
        assert!(
            !TokenVerifier::new(&generate_token()).verify_session(&s, now),
            "another token"
        );
        let (expiry, mac) = s.split_once('.').unwrap();
        let later = format!("{}.{mac}", expiry.parse::<u64>().unwrap() + 1);
        assert!(!v.verify_session(&later, now), "an expiry pushed forward");
        let far = v.session(now + 10 * SESSION_TTL_S);
        assert!(!v.verify_session(&far, now), "more than a session ahead");
        for bad in ["", ".", "x.y", "123", "123.zz", &token] {
            assert!(!v.verify_session(bad, now), "{bad}");
        }
    }
}
