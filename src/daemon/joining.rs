//! Joining a mesh with an invite ticket, as the agent process does it: at start (`mesh agent
//! --join TICKET`, `--join-file FILE`) and while running (`mesh join TICKET` through the API,
//! after which the agent restarts itself with the new key).
//!
//! The exchange is [`crate::join::redeem`]'s. This file owns what surrounds it: when a ticket
//! applies (not when the agent already holds that mesh's key), where the key goes
//! (`DATA_DIR/mesh.key`, 0600, written crash-safely; an agent given `--mesh-key FILE` refuses
//! to join rather than write someone's key file), the inviter's addresses kept for dialing
//! (`DATA_DIR/joined-via`, so a device without mDNS finds the mesh after restarts), the ticket
//! file deleted after use, and the re-exec that restarts the agent with its new key.
//! Imports nothing of the daemon (it takes plain values).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::admission::{MESH_KEY_FILE, MeshId, MeshKey};
use crate::api::contract::{ApiError, ErrorCode, JoinApiResponse};
use crate::api::server::JoinJob;
use crate::invite::Ticket;
use crate::join::{JoinError, Joined};
use crate::wire::join::JoinRefusal;

/// File in the data dir holding the inviter's addresses after a join, one multiaddr a line;
/// the agent dials them as static peers at every start.
pub const JOINED_VIA_FILE: &str = "joined-via";
/// How long a start-up join keeps retrying an inviter it cannot reach: a device booting with
/// a ticket may get its network (Wi-Fi, DHCP) a minute after the agent starts.
pub const BOOT_JOIN_PATIENCE: Duration = Duration::from_secs(120);
/// Pause between start-up join attempts.
const BOOT_JOIN_RETRY: Duration = Duration::from_secs(2);
/// Most bytes of a ticket file read: a ticket is at most `MAX_TICKET_CHARS` characters; the
/// bound keeps a wrong file from being read whole.
const MAX_TICKET_FILE_BYTES: u64 = crate::invite::ticket::MAX_TICKET_CHARS as u64;

/// The mesh id of the key in the data dir, if there is one.
fn current_mesh_id(data_dir: &Path) -> Option<MeshId> {
    let path = data_dir.join(MESH_KEY_FILE);
    path.exists()
        .then(|| MeshKey::read_file(&path).ok())
        .flatten()
        .map(|k| k.mesh_id())
}

/// Stores a redeemed key as `DATA_DIR/mesh.key` and the inviter's addresses as
/// `DATA_DIR/joined-via`; the key file's path.
pub fn store_joined(data_dir: &Path, joined: &Joined) -> anyhow::Result<PathBuf> {
    let key_path = data_dir.join(MESH_KEY_FILE);
    crate::identity::write_secret_file(
        &key_path,
        format!("{}\n", joined.mesh_key.to_hex()).as_bytes(),
    )
    .context("storing the mesh key")?;
    let via: String = joined
        .inviter_addrs
        .iter()
        .map(|a| format!("{a}\n"))
        .collect();
    crate::identity::write_secret_file(&data_dir.join(JOINED_VIA_FILE), via.as_bytes())
        .context("recording the inviter's addresses")?;
    Ok(key_path)
}

/// The addresses recorded by the last join (none without one).
pub fn joined_peers(data_dir: &Path) -> Vec<String> {
    std::fs::read_to_string(data_dir.join(JOINED_VIA_FILE))
        .map(|text| {
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .take(crate::invite::ticket::MAX_TICKET_ADDRS)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// Joins before the node starts, for `--join TICKET` or `--join-file FILE`. Nothing to do
/// without either, with an absent file, or when the data dir already holds the ticket's
/// mesh key. An unreachable inviter is retried for [`BOOT_JOIN_PATIENCE`]. A refused
/// ticket fails the start, unless the agent has a key already (it then runs with it), or the
/// ticket came from a file (renamed `FILE.refused`, and the agent starts as it is).
pub async fn join_at_start(
    data_dir: &Path,
    ticket_text: Option<&str>,
    ticket_file: Option<&Path>,
    mesh_key_file: Option<&Path>,
    name: &str,
) -> anyhow::Result<()> {
    let text = match (ticket_text, ticket_file) {
        (Some(text), _) => text.to_string(),
        (None, Some(file)) => match read_ticket_file(file)? {
            Some(text) => text,
            None => return Ok(()),
        },
        (None, None) => return Ok(()),
    };
    if let Some(key_file) = mesh_key_file {
        anyhow::bail!(
            "--join and --join-file store the mesh key in the data dir, but this agent reads it \
             from {} (--mesh-key); drop one of them",
            key_file.display()
        );
    }
    let ticket = Ticket::decode(&text).context("the join ticket")?;
    if current_mesh_id(data_dir) == Some(ticket.mesh_id) {
        tracing::info!(mesh = %ticket.mesh_id, "already a member of the ticket's mesh; not joining");
        remove_ticket_file(ticket_file);
        return Ok(());
    }
    let started = tokio::time::Instant::now();
    let joined = loop {
        match crate::join::redeem(&ticket, name).await {
            Ok(joined) => break joined,
            Err(e) if retryable(&e) && started.elapsed() < BOOT_JOIN_PATIENCE => {
                tracing::warn!(error = %e, "cannot join yet; retrying");
                tokio::time::sleep(BOOT_JOIN_RETRY).await;
            }
            Err(e) => {
                let has_key = current_mesh_id(data_dir).is_some();
                if let (Some(file), false) = (ticket_file, retryable(&e)) {
                    let refused = file.with_extension("refused");
                    let _ = std::fs::rename(file, &refused);
                    tracing::error!(error = %e, file = %refused.display(), "the ticket file was refused; starting without joining");
                    return Ok(());
                }
                if has_key {
                    tracing::warn!(error = %e, "the join ticket did not work; running with the mesh key already in the data dir");
                    return Ok(());
                }
                return Err(anyhow::Error::new(e).context("joining with the ticket"));
            }
        }
    };
    let key_path = store_joined(data_dir, &joined)?;
    remove_ticket_file(ticket_file);
    tracing::info!(
        mesh = %ticket.mesh_id,
        inviter = %joined.inviter,
        invite = %joined.invite,
        key = %key_path.display(),
        "joined the mesh with the ticket"
    );
    Ok(())
}

/// Whether a failed join may work if tried again (the network, not the ticket).
fn retryable(e: &JoinError) -> bool {
    matches!(
        e,
        JoinError::Unreachable { .. }
            | JoinError::Timeout
            | JoinError::Refused(JoinRefusal::Busy | JoinRefusal::Failed)
    )
}

/// The ticket in `file`, or `None` when there is no such file.
fn read_ticket_file(file: &Path) -> anyhow::Result<Option<String>> {
    let meta = match std::fs::metadata(file) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    if meta.len() > MAX_TICKET_FILE_BYTES {
        anyhow::bail!("{} is too large to hold a ticket", file.display());
    }
    std::fs::read_to_string(file)
        .map(Some)
        .with_context(|| format!("reading {}", file.display()))
}

fn remove_ticket_file(file: Option<&Path>) {
    if let Some(file) = file {
        match std::fs::remove_file(file) {
            Ok(()) => tracing::info!(file = %file.display(), "ticket file deleted"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "cannot delete the ticket file")
            }
        }
    }
}

/// Handles `POST /v1/join` for a running agent: redeems the ticket, stores the key, and
/// answers. Whether the agent must now restart with the key.
pub async fn join_running(
    job: JoinJob,
    data_dir: &Path,
    mesh_key_file: Option<&Path>,
    current: MeshId,
    name: &str,
) -> bool {
    let JoinJob { ticket, reply } = job;
    let refuse = |code: ErrorCode, message: String| Err(ApiError::new(code, message));
    let answer = if let Some(key_file) = mesh_key_file {
        refuse(
            ErrorCode::Conflict,
            format!(
                "this agent reads its mesh key from {} (--mesh-key); `mesh join` stores the key \
                 in the data dir, so restart the agent without --mesh-key first",
                key_file.display()
            ),
        )
    } else if ticket.mesh_id == current {
        refuse(
            ErrorCode::Conflict,
            format!("this agent is already a member of mesh {current}"),
        )
    } else {
        match crate::join::redeem(&ticket, name).await {
            Ok(joined) => match store_joined(data_dir, &joined) {
                Ok(key_path) => {
                    tracing::info!(mesh = %ticket.mesh_id, inviter = %joined.inviter, invite = %joined.invite, "joined a mesh; restarting with its key");
                    Ok(JoinApiResponse {
                        mesh_id: ticket.mesh_id.to_string(),
                        inviter: joined.inviter.to_base58(),
                        invite: joined.invite,
                        key_file: key_path.display().to_string(),
                        restarting: true,
                    })
                }
                Err(e) => refuse(ErrorCode::NotDurable, format!("{e:#}")),
            },
            Err(e) => {
                tracing::warn!(error = %e, "join refused or failed");
                let code = match e {
                    JoinError::Refused(_) | JoinError::MeshMismatch { .. } => ErrorCode::Forbidden,
                    _ => ErrorCode::NodeFailed,
                };
                refuse(code, e.to_string())
            }
        }
    };
    let restart = answer.is_ok();
    let _ = reply.send(answer);
    restart
}

/// Replaces this process with a fresh run of the same program and arguments (the agent
/// restarting under its new key; same pid, so a service manager sees no exit). Returns only
/// on failure.
pub fn reexec() -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return anyhow::anyhow!("cannot find the agent's program to restart it: {e}"),
    };
    let err = std::process::Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .exec();
    anyhow::anyhow!("cannot restart the agent ({}): {err}", exe.display())
}
