//! Accounts services run as: turns a spec's `user` and `group` into the uid, gid and
//! environment of the process, from this node's user database (`/etc/passwd`, `/etc/group`,
//! through the C library's `getpwnam_r` / `getgrnam_r`, so NSS sources count too).
//!
//! Owns the lookup and its error messages. Does not own the switch itself: the launcher hands
//! the ids to std's `CommandExt::uid/gid`, which in the child calls `setgid`, then — when the
//! agent is root and sets a uid — `setgroups(0, NULL)` (no supplementary groups), then
//! `setuid`, before `exec`. A spec without `user` runs as the agent's own user.

use std::path::PathBuf;

use nix::unistd::{Gid, Group, Uid, User};

/// The ids a service process gets, and the environment that names its user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// `None`: the agent's own uid (a spec with `group` only).
    pub uid: Option<u32>,
    pub gid: u32,
    /// Name and home directory of `uid`, for `USER`, `LOGNAME` and `HOME`.
    pub user: Option<(String, PathBuf)>,
}

/// Why a spec's account cannot be used on this node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    #[error("user `{user}` does not exist on this node")]
    UnknownUser { user: String },
    #[error("group `{group}` does not exist on this node")]
    UnknownGroup { group: String },
    #[error(
        "uid {uid} has no entry in this node's user database, so it has no primary group: give a group"
    )]
    NoPrimaryGroup { uid: u32 },
    #[error("cannot look up {what} `{name}`: {error}")]
    Lookup {
        what: &'static str,
        name: String,
        error: String,
    },
}

/// Resolves `user` and `group` (names or numeric ids). `Ok(None)`: neither is set, the
/// process runs as the agent. A numeric id without a database entry is accepted as a uid
/// (with an explicit group) or a gid; a name must exist.
pub fn resolve(
    user: Option<&str>,
    group: Option<&str>,
) -> Result<Option<Credentials>, AccountError> {
    let entry = match user {
        None => None,
        Some(user) => Some(lookup_user(user)?),
    };
    let gid = match (group, &entry) {
        (Some(group), _) => lookup_group(group)?,
        (None, Some((_, Some(found)))) => found.gid.as_raw(),
        (None, Some((uid, None))) => return Err(AccountError::NoPrimaryGroup { uid: *uid }),
        (None, None) => return Ok(None),
    };
    Ok(Some(Credentials {
        uid: entry.as_ref().map(|(uid, _)| *uid),
        gid,
        user: entry.and_then(|(_, found)| found.map(|u| (u.name, u.dir))),
    }))
}

/// A user's uid and database entry (`None` for a numeric uid without one).
fn lookup_user(user: &str) -> Result<(u32, Option<User>), AccountError> {
    let lookup_error = |error: nix::Error| AccountError::Lookup {
        what: "user",
        name: user.to_string(),
        error: error.to_string(),
    };
    if let Ok(uid) = user.parse::<u32>() {
        let found = User::from_uid(Uid::from_raw(uid)).map_err(lookup_error)?;
        return Ok((uid, found));
    }
    match User::from_name(user).map_err(lookup_error)? {
        Some(found) => Ok((found.uid.as_raw(), Some(found))),
        None => Err(AccountError::UnknownUser {
            user: user.to_string(),
        }),
    }
}

fn lookup_group(group: &str) -> Result<u32, AccountError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let found = Group::from_name(group).map_err(|error| AccountError::Lookup {
        what: "group",
        name: group.to_string(),
        error: error.to_string(),
    })?;
    found
        .map(|g| g.gid.as_raw())
        .ok_or_else(|| AccountError::UnknownGroup {
            group: group.to_string(),
        })
}

/// The name of gid `gid` on this node, for messages.
pub fn group_name(gid: u32) -> Option<String> {
    Group::from_gid(Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|g| g.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_resolves_with_its_primary_group_and_home() {
        let root = resolve(Some("root"), None).unwrap().unwrap();
        assert_eq!(root.uid, Some(0));
        assert_eq!(root.gid, 0);
        assert_eq!(
            root.user,
            Some(("root".to_string(), PathBuf::from("/root")))
        );
        assert_eq!(group_name(0).as_deref(), Some("root"));
    }

    #[test]
    fn nothing_set_means_the_agent_itself() {
        assert_eq!(resolve(None, None).unwrap(), None);
    }

    #[test]
    fn unknown_names_are_refused_and_named() {
        let err = resolve(Some("mesh-no-such-user"), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "user `mesh-no-such-user` does not exist on this node"
        );
        let err = resolve(Some("root"), Some("mesh-no-such-group")).unwrap_err();
        assert!(matches!(err, AccountError::UnknownGroup { .. }), "{err}");
    }

    #[test]
    fn numeric_ids_need_a_group_only_without_an_entry() {
        let group_only = resolve(None, Some("4242")).unwrap().unwrap();
        assert_eq!((group_only.uid, group_only.gid), (None, 4242));
        let root = resolve(Some("0"), None).unwrap().unwrap();
        assert_eq!((root.uid, root.gid), (Some(0), 0));
        // 4 billion: no passwd entry anywhere.
        let unnamed = resolve(Some("4000000000"), None).unwrap_err();
        assert_eq!(unnamed, AccountError::NoPrimaryGroup { uid: 4_000_000_000 });
        let with_group = resolve(Some("4000000000"), Some("0")).unwrap().unwrap();
        assert_eq!((with_group.uid, with_group.gid), (Some(4_000_000_000), 0));
    }
}
