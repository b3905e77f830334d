//! Invites: the inviter's side of joining a device to the mesh with a ticket (spec:
//! `protocol/join.md`).
//!
//! Owns the [`InviteStore`] (sans-IO: every call takes `now` in unix seconds) and its file
//! (`DATA_DIR/invites.json`, mode 0600, written crash-safely), and the ticket codec
//! ([`ticket`]). The store keeps only the SHA-256 of each secret, so a copy of the file lets
//! nobody join; it counts uses, expires invites by the inviter's own clock, and remembers
//! used-up, revoked and expired invites for [`KEEP_AFTER_EXPIRY`] so that a late joiner is told
//! why, not "unknown".
//!
//! Does not own the network exchange (`crate::node` answers `/mesh/join/1`, `crate::join`
//! redeems) or the mesh key (the node hands it out once the store accepts a secret).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::wire::join::{JOIN_SECRET_LEN, JoinRefusal};

pub mod ticket;

pub use ticket::{Ticket, TicketError};

/// File of the store in the data dir.
pub const INVITES_FILE: &str = "invites.json";
/// Most invites kept at once (live ones and the remembered dead ones). An invite is a few
/// hundred bytes; a home mesh makes a handful. Past it, `mesh invite` asks to revoke some.
pub const MAX_INVITES: usize = 64;
/// Most uses one invite may allow (`--uses`): a ticket for a rack of Pis, not a public link.
pub const MAX_USES: u32 = 1000;
/// Longest lifetime of an invite (seconds): a week. A ticket is a bearer credential; one that
/// lives longer belongs in a key file, not in a chat message.
pub const MAX_TTL_SECS: u64 = 7 * 24 * 3600;
/// Default lifetime (seconds): an hour is enough to walk to the device.
pub const DEFAULT_TTL_SECS: u64 = 3600;
/// How long (seconds) an expired invite is remembered so its late use is refused as
/// `expired` (or `used_up`, `revoked`) rather than `unknown`; then it is pruned.
pub const KEEP_AFTER_EXPIRY: u64 = 24 * 3600;

/// Errors of the invite store.
#[derive(Debug, thiserror::Error)]
pub enum InviteError {
    #[error("--uses must be 1 to {MAX_USES}")]
    Uses,
    #[error("--ttl must be 1 s to {} days", MAX_TTL_SECS / 86400)]
    Ttl,
    #[error(
        "invite names are 1 to {} printable characters",
        ticket::MAX_INVITE_NAME
    )]
    Name,
    #[error("{MAX_INVITES} invites are kept already; revoke some with `mesh invite --revoke ID`")]
    Full,
    #[error("no invite {0}")]
    NotFound(String),
    #[error("cannot read the invites file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("cannot write the invites file: {0}")]
    Write(#[from] crate::identity::IdentityError),
}

/// One invite as the inviter keeps it: never the secret, only its hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteRecord {
    /// Short public id (8 hex characters of the secret's hash) for `--list` and `--revoke`.
    pub id: String,
    /// SHA-256 of the secret, hex.
    pub secret_sha256: String,
    pub name: Option<String>,
    /// Unix seconds, by this node's clock.
    pub created: u64,
    pub expires: u64,
    /// Uses allowed in all.
    pub uses: u32,
    /// Uses so far.
    pub used: u32,
    pub revoked: bool,
}

impl InviteRecord {
    /// What state the invite is in at `now`.
    pub fn status(&self, now: u64) -> &'static str {
        if self.revoked {
            "revoked"
        } else if self.used >= self.uses {
            "used"
        } else if now >= self.expires {
            "expired"
        } else {
            "open"
        }
    }
}

/// The file's form.
#[derive(Serialize, Deserialize)]
struct InvitesFile {
    version: u32,
    invites: Vec<InviteRecord>,
}

/// The invites of one node (sans-IO).
#[derive(Debug, Default, Clone)]
pub struct InviteStore {
    records: Vec<InviteRecord>,
}

/// Unix seconds now, by this node's clock.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn hash_hex(secret: &[u8]) -> String {
    hex::encode(Sha256::digest(secret))
}

impl InviteStore {
    /// The invites, oldest first.
    pub fn list(&self) -> &[InviteRecord] {
        &self.records
    }

    /// Forgets invites dead for longer than [`KEEP_AFTER_EXPIRY`]; whether any went.
    pub fn prune(&mut self, now: u64) -> bool {
        let before = self.records.len();
        self.records
            .retain(|r| now < r.expires.saturating_add(KEEP_AFTER_EXPIRY));
        self.records.len() != before
    }

    /// A new invite: its record and the secret (to put in the ticket, and nowhere else).
    pub fn create(
        &mut self,
        now: u64,
        ttl_secs: u64,
        uses: u32,
        name: Option<String>,
    ) -> Result<(InviteRecord, [u8; JOIN_SECRET_LEN]), InviteError> {
        if uses == 0 || uses > MAX_USES {
            return Err(InviteError::Uses);
        }
        if ttl_secs == 0 || ttl_secs > MAX_TTL_SECS {
            return Err(InviteError::Ttl);
        }
        if let Some(name) = &name
            && (name.is_empty()
                || name.chars().count() > ticket::MAX_INVITE_NAME
                || name.chars().any(char::is_control))
        {
            return Err(InviteError::Name);
        }
        self.prune(now);
        if self.records.len() >= MAX_INVITES {
            return Err(InviteError::Full);
        }
        let mut secret = [0u8; JOIN_SECRET_LEN];
        crate::admission::getrandom_fill(&mut secret);
        let hash = hash_hex(&secret);
        let record = InviteRecord {
            id: hash[..8].to_string(),
            secret_sha256: hash,
            name,
            created: now,
            expires: now + ttl_secs,
            uses,
            used: 0,
            revoked: false,
        };
        self.records.push(record.clone());
        Ok((record, secret))
    }

    /// Redeems `secret` at `now`: on success one use is spent and the record (after the use)
    /// returned; the caller must persist the store before handing out the key. The hash is
    /// compared in constant time against every record, whichever matches.
    pub fn redeem(&mut self, secret: &[u8], now: u64) -> Result<InviteRecord, JoinRefusal> {
        if secret.len() != JOIN_SECRET_LEN {
            return Err(JoinRefusal::Unknown);
        }
        let hash = hash_hex(secret);
        let mut found = None;
        for (i, r) in self.records.iter().enumerate() {
            if bool::from(r.secret_sha256.as_bytes().ct_eq(hash.as_bytes())) {
                found = Some(i);
            }
        }
        let record = &mut self.records[found.ok_or(JoinRefusal::Unknown)?];
        if record.revoked {
            return Err(JoinRefusal::Revoked);
        }
        if record.used >= record.uses {
            return Err(JoinRefusal::UsedUp);
        }
        if now >= record.expires {
            return Err(JoinRefusal::Expired);
        }
        record.used += 1;
        Ok(record.clone())
    }

    /// Gives back a use spent by [`InviteStore::redeem`] that could not be recorded.
    pub fn unredeem(&mut self, id: &str) {
        if let Some(r) = self.records.iter_mut().find(|r| r.id == id) {
            r.used = r.used.saturating_sub(1);
        }
    }

    /// Revokes the invite `id` (its full id or a unique prefix of it).
    pub fn revoke(&mut self, id: &str) -> Result<InviteRecord, InviteError> {
        let id = id.trim().to_ascii_lowercase();
        let matches: Vec<usize> = (0..self.records.len())
            .filter(|&i| !id.is_empty() && self.records[i].id.starts_with(&id))
            .collect();
        let [i] = matches[..] else {
            return Err(InviteError::NotFound(id));
        };
        self.records[i].revoked = true;
        Ok(self.records[i].clone())
    }

    /// Loads `DATA_DIR/invites.json`; an absent file is an empty store.
    pub fn load(path: &Path) -> Result<Self, InviteError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => {
                return Err(InviteError::Read {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                });
            }
        };
        let file: InvitesFile = serde_json::from_str(&text).map_err(|e| InviteError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let mut records = file.invites;
        records.truncate(MAX_INVITES);
        Ok(Self { records })
    }

    /// Writes the store to `path` (0600, temporary file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<(), InviteError> {
        let file = InvitesFile {
            version: 1,
            invites: self.records.clone(),
        };
        let text = serde_json::to_vec_pretty(&file).expect("invite records always serialize");
        crate::identity::write_secret_file(path, &text)?;
        Ok(())
    }
}

/// Most join requests a node answers per [`JOIN_WINDOW`], all peers together. Each costs a
/// hash and, when accepted, a durable write; 20 per 10 s is far above any real use (a person
/// joins devices one by one) and keeps a flood from keeping the disk busy.
pub const JOIN_ATTEMPTS_PER_WINDOW: u32 = 20;
/// The window of [`JOIN_ATTEMPTS_PER_WINDOW`].
pub const JOIN_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

/// A fixed-window rate limit on join requests (sans-IO: takes `now`).
#[derive(Debug)]
pub struct JoinLimiter {
    window_start: Option<std::time::Instant>,
    count: u32,
}

impl Default for JoinLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl JoinLimiter {
    pub fn new() -> Self {
        Self {
            window_start: None,
            count: 0,
        }
    }

    /// Whether one more request may be answered at `now` (and counts it if so).
    pub fn allow(&mut self, now: std::time::Instant) -> bool {
        match self.window_start {
            Some(start) if now.duration_since(start) < JOIN_WINDOW => {}
            _ => {
                self.window_start = Some(now);
                self.count = 0;
            }
        }
        if self.count >= JOIN_ATTEMPTS_PER_WINDOW {
            return false;
        }
        self.count += 1;
        true
    }
}

/// Which of a node's listen addresses go into its tickets: routable ones first, loopback last
/// (a ticket used on the same machine, as in tests), never unspecified or IPv6 link-local ones
/// (a multiaddr cannot carry the interface a link-local address needs); at most
/// [`ticket::MAX_TICKET_ADDRS`].
pub fn ticket_addrs(listen: &[libp2p::Multiaddr]) -> Vec<libp2p::Multiaddr> {
    use libp2p::multiaddr::Protocol;
    let rank = |a: &libp2p::Multiaddr| match a.iter().next() {
        Some(Protocol::Ip4(ip)) if ip.is_unspecified() => None,
        Some(Protocol::Ip4(ip)) if ip.is_loopback() => Some(2),
        Some(Protocol::Ip4(_)) => Some(0),
        Some(Protocol::Ip6(ip)) if ip.is_unspecified() => None,
        Some(Protocol::Ip6(ip)) if ip.segments()[0] & 0xffc0 == 0xfe80 => None,
        Some(Protocol::Ip6(ip)) if ip.is_loopback() => Some(3),
        Some(Protocol::Ip6(_)) => Some(1),
        _ => None,
    };
    let mut ranked: Vec<(u8, libp2p::Multiaddr)> = listen
        .iter()
        .filter_map(|a| rank(a).map(|r| (r, a.clone())))
        .collect();
    ranked.sort_by_key(|(r, _)| *r);
    ranked.dedup_by(|a, b| a.1 == b.1);
    ranked
        .into_iter()
        .map(|(_, a)| a)
        .take(ticket::MAX_TICKET_ADDRS)
        .collect()
}

/// The store of a running node, shared by the API (create, list, revoke) and the node actor
/// (redeem), with its file (`None`: in memory, for tests). Its calls do blocking file I/O
/// (a small file, fsynced): async callers run them with `spawn_blocking`.
#[derive(Clone, Debug)]
pub struct SharedInvites {
    store: std::sync::Arc<std::sync::Mutex<InviteStore>>,
    path: Option<PathBuf>,
}

impl SharedInvites {
    /// The store of `data_dir` (loaded from its file), or an in-memory one.
    pub fn open(data_dir: Option<&Path>) -> Result<Self, InviteError> {
        let path = data_dir.map(|d| d.join(INVITES_FILE));
        let store = match &path {
            Some(p) => InviteStore::load(p)?,
            None => InviteStore::default(),
        };
        Ok(Self {
            store: std::sync::Arc::new(std::sync::Mutex::new(store)),
            path,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, InviteStore> {
        self.store
            .lock()
            .expect("the invite lock is never poisoned")
    }

    fn save(&self, store: &InviteStore) -> Result<(), InviteError> {
        match &self.path {
            Some(path) => store.save(path),
            None => Ok(()),
        }
    }

    /// A new invite, written to the file before it is returned.
    pub fn create(
        &self,
        now: u64,
        ttl_secs: u64,
        uses: u32,
        name: Option<String>,
    ) -> Result<(InviteRecord, [u8; JOIN_SECRET_LEN]), InviteError> {
        let mut store = self.lock();
        let before = store.clone();
        let created = store.create(now, ttl_secs, uses, name)?;
        if let Err(e) = self.save(&store) {
            *store = before;
            return Err(e);
        }
        Ok(created)
    }

    /// Redeems a secret; the use is on disk before `Ok` returns, so a crash cannot hand out
    /// a single-use ticket's key twice.
    pub fn redeem(&self, secret: &[u8], now: u64) -> Result<InviteRecord, JoinRefusal> {
        let mut store = self.lock();
        let record = store.redeem(secret, now)?;
        if let Err(e) = self.save(&store) {
            tracing::warn!(error = %e, "cannot record an invite's use; refusing it");
            store.unredeem(&record.id);
            return Err(JoinRefusal::Failed);
        }
        Ok(record)
    }

    /// The invites, after pruning long-dead ones (in memory; the file follows on the next
    /// write).
    pub fn list(&self, now: u64) -> Vec<InviteRecord> {
        let mut store = self.lock();
        store.prune(now);
        store.list().to_vec()
    }

    /// Revokes an invite, on disk before it returns.
    pub fn revoke(&self, id: &str) -> Result<InviteRecord, InviteError> {
        let mut store = self.lock();
        let before = store.clone();
        let record = store.revoke(id)?;
        if let Err(e) = self.save(&store) {
            *store = before;
            return Err(e);
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests;
