//! Why a service process could not be launched (a leaf: the launcher's files all use it).

use std::io;
use std::path::PathBuf;

use crate::supervisor::account::AccountError;

/// Why a service could not be launched.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot create the log directory {}: {source}", path.display())]
    LogDir { path: PathBuf, source: io::Error },
    #[error("cannot open the log file {}: {source}", path.display())]
    LogFile { path: PathBuf, source: io::Error },
    #[error("service `{service}`: cannot start `{command}`: {source}")]
    Spawn {
        service: String,
        command: String,
        source: io::Error,
    },
    #[error("service `{service}`: {source}")]
    Account {
        service: String,
        source: AccountError,
    },
    #[error("service `{service}`: working_dir {} does not exist or is not a directory", path.display())]
    WorkingDir { service: String, path: PathBuf },
    #[error("service `{service}`: cannot prepare its cgroup {}: {source}", path.display())]
    Cgroup {
        service: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("service `{service}`: the process exited before its pid could be read")]
    NoPid { service: String },
}
