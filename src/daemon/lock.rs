//! The data dir lock: at most one agent per data dir.
//!
//! Two agents on one data dir would share a node id, stop each other's services as
//! "leftovers" (the run file), overwrite `api.addr` and write the same document file. So the
//! agent takes an exclusive advisory lock (`flock`) on the data dir itself before it reads or
//! writes anything else there, and holds it, with the directory open, for the life of the
//! process. Locking the directory rather than a file in it means that deleting or replacing a
//! file ("a stale lock") cannot let a second agent in. `DATA_DIR/agent.lock` holds the
//! holder's pid, written once the lock is taken, so a second agent can say which one runs.
//!
//! The lock is released by the kernel when the process ends, however it ends (`kill -9`
//! included), so a crash never leaves a stale lock. The descriptor is close-on-exec (Rust
//! opens every file so), so service processes never inherit the lock and cannot keep it after
//! the agent is gone.
//!
//! Owns the lock file and its message. Does not own the data dir's creation (the daemon).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Name of the lock file in the data dir.
pub const LOCK_FILE: &str = "agent.lock";

/// Most bytes of the lock file read for the holder's pid: a pid and a newline are at most a
/// dozen bytes; anything longer is not ours and is not shown in full.
const MAX_PID_BYTES: u64 = 32;

/// Errors taking the data dir lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another mesh agent ({holder}) is running on the data dir {dir}; stop it first, or give \
         this agent its own --data-dir"
    )]
    Held { dir: PathBuf, holder: String },
    #[error("cannot lock the data dir with {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// An exclusive lock on a data dir, held until dropped (for the agent: until it exits).
#[derive(Debug)]
pub struct DataDirLock {
    /// The data dir, open and locked: closing it releases the lock.
    _dir: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Takes the lock on `dir` (which must exist) and records this process's pid in it. Fails
    /// at once, without waiting, when another process holds it.
    pub fn acquire(dir: &Path) -> Result<Self, LockError> {
        let path = dir.join(LOCK_FILE);
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LockError::Io { path, source }
        };
        // The lock is on the directory itself, not on a file in it: deleting or replacing
        // `agent.lock` (a "stale lock" clean-up) must not let a second agent in.
        let dir_file = File::open(dir).map_err(io_err(dir))?;
        match dir_file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = OpenOptions::new()
                    .read(true)
                    .open(&path)
                    .map(|mut f| holder_of(&mut f))
                    .unwrap_or_else(|_| "pid not recorded".to_string());
                return Err(LockError::Held {
                    dir: dir.to_path_buf(),
                    holder,
                });
            }
            Err(TryLockError::Error(source)) => return Err(io_err(dir)(source)),
        }
        // The holder's pid, for the second agent's message; written only once the lock is ours.
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&path)
            .map_err(io_err(&path))?;
        file.write_all(format!("{}\n", std::process::id()).as_bytes())
            .map_err(io_err(&path))?;
        // Durable enough for a message; the lock itself lives in the kernel, not the file.
        file.sync_data().map_err(io_err(&path))?;
        Ok(Self {
            _dir: dir_file,
            path,
        })
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// "pid N" from the lock file, or why it cannot say (the holder may not have written it yet).
fn holder_of(file: &mut File) -> String {
    let mut text = String::new();
    let read = file
        .seek(SeekFrom::Start(0))
        .and_then(|_| file.take(MAX_PID_BYTES).read_to_string(&mut text));
    match read.ok().and_then(|_| text.trim().parse::<u32>().ok()) {
        Some(pid) => format!("pid {pid}"),
        None => "pid not recorded yet".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_fails_naming_the_holder_and_first_release_frees_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        let pid = std::fs::read_to_string(first.path()).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
        // flock locks belong to the open file description: a second open conflicts even in
        // the same process, as a second agent's would.
        let err = DataDirLock::acquire(dir.path()).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, LockError::Held { .. }), "{message}");
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        assert_eq!(
            std::fs::read_to_string(first.path()).unwrap(),
            pid,
            "a refused agent leaves the holder's pid in place"
        );
        drop(first);
        let again = DataDirLock::acquire(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(again.path()).unwrap().trim(),
            std::process::id().to_string()
        );
    }

    #[test]
    fn deleting_the_pid_file_does_not_free_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let holder = DataDirLock::acquire(dir.path()).unwrap();
        std::fs::remove_file(holder.path()).unwrap();
        let err = DataDirLock::acquire(dir.path()).unwrap_err();
        assert!(matches!(err, LockError::Held { .. }), "{err}");
        assert!(err.to_string().contains("pid not recorded"), "{err}");
    }

    #[test]
    fn garbage_in_the_lock_file_of_a_holder_is_not_shown() {
        let dir = tempfile::tempdir().unwrap();
        let holder = DataDirLock::acquire(dir.path()).unwrap();
        std::fs::write(holder.path(), "x".repeat(10_000)).unwrap();
        let message = DataDirLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(message.contains("pid not recorded yet"), "{message}");
        assert!(message.len() < 300, "{message}");
    }
}
