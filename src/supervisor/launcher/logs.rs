//! Service logs: the pumps that read a process's stdout and stderr line by line, the writer
//! that appends them to `LOG_DIR/<service>.log` with size-based rotation, and reading them
//! back (tail, follow).
//!
//! It does not own the process ([`super::process`]) or who may read the logs (the API).

use std::io;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::error::LaunchError;

/// Default size at which a service's log file is rotated, in bytes. 4 MiB holds hours of
/// ordinary service chatter, and with [`DEFAULT_LOG_KEEP`] bounds one service's logs to
/// 16 MiB: small enough for a Raspberry Pi's SD card with a dozen services.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 4 * 1024 * 1024;
/// Default number of rotated files kept besides the current one (`.log.1` ... `.log.3`).
pub const DEFAULT_LOG_KEEP: usize = 3;
/// Longest line written as one piece, in bytes. A longer line (or output with no newline)
/// is cut into pieces of this size, each ending in `\n`, so one pump's memory stays bounded
/// whatever the service prints.
pub const MAX_LOG_LINE_BYTES: usize = 64 * 1024;
/// Lines buffered between the pumps and the log writer. 256 lines absorb a burst while the
/// writer rotates; beyond that the pumps wait, and so does the service on its full pipe.
pub const LOG_CHANNEL_CAPACITY: usize = 256;
/// Most bytes one [`read_log_since`] call reads: a follow request stays small however far
/// behind it is.
pub const LOG_READ_CHUNK: u64 = 256 * 1024;

/// Size-based rotation of a service's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogLimits {
    /// A line that would take the current file past this many bytes goes into a fresh file
    /// (the current one is rotated first). Files stay within it unless one line alone is
    /// longer (at most [`MAX_LOG_LINE_BYTES`]).
    pub max_bytes: u64,
    /// Rotated files kept (`.log.1` newest ... `.log.<keep>` oldest); older ones are deleted.
    /// 0 keeps only the current file.
    pub keep: usize,
}

impl Default for LogLimits {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_LOG_MAX_BYTES,
            keep: DEFAULT_LOG_KEEP,
        }
    }
}

/// The path of a service's current log file: `LOG_DIR/<service>.log`.
pub fn log_path(log_dir: &Path, service: &str) -> PathBuf {
    log_dir.join(format!("{service}.log"))
}

/// The path of rotated file `index` (1 is the newest): `LOG_DIR/<service>.log.<index>`.
pub fn rotated_log_path(log_dir: &Path, service: &str, index: usize) -> PathBuf {
    log_dir.join(format!("{service}.log.{index}"))
}

/// Reads one pipe line by line (pieces of at most [`MAX_LOG_LINE_BYTES`], each ending in
/// `\n`) into the log channel, until the pipe closes or the writer is gone.
pub(super) async fn pump_lines(pipe: impl AsyncRead + Unpin, lines: mpsc::Sender<Vec<u8>>) {
    let mut reader = BufReader::new(pipe);
    loop {
        let mut line = Vec::new();
        match read_line_bounded(&mut reader, &mut line, MAX_LOG_LINE_BYTES).await {
            Ok(0) => return,
            Ok(_) => {
                if line.last() != Some(&b'\n') {
                    line.push(b'\n');
                }
                if lines.send(line).await.is_err() {
                    return;
                }
            }
            Err(err) => {
                tracing::debug!(%err, "service output pipe read failed");
                return;
            }
        }
    }
}

/// Appends bytes up to and including the next `\n`, or `max` bytes, or what is left before
/// end of file, whichever comes first. Returns how many bytes were appended (0: end of file).
pub(super) async fn read_line_bounded<R: AsyncBufReadExt + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
    max: usize,
) -> io::Result<usize> {
    let mut read = 0;
    while read < max {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            break;
        }
        let room = max - read;
        let window = &available[..available.len().min(room)];
        let (taken, done) = match window.iter().position(|byte| *byte == b'\n') {
            Some(newline) => (newline + 1, true),
            None => (window.len(), false),
        };
        line.extend_from_slice(&window[..taken]);
        reader.consume(taken);
        read += taken;
        if done {
            break;
        }
    }
    Ok(read)
}

/// The current log file of a service and its rotation.
pub(super) struct LogFile {
    dir: PathBuf,
    service: String,
    limits: LogLimits,
    file: tokio::fs::File,
    /// Bytes in the current file.
    size: u64,
}

impl LogFile {
    pub(super) async fn open(
        dir: &Path,
        service: &str,
        limits: LogLimits,
    ) -> Result<Self, LaunchError> {
        let path = log_path(dir, service);
        let file = Self::open_append(&path).await?;
        let size = file
            .metadata()
            .await
            .map_err(|source| LaunchError::LogFile {
                path: path.clone(),
                source,
            })?
            .len();
        Ok(Self {
            dir: dir.to_path_buf(),
            service: service.to_string(),
            limits,
            file,
            size,
        })
    }

    async fn open_append(path: &Path) -> Result<tokio::fs::File, LaunchError> {
        tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            // Never through a symlink: the agent writes logs as root, and a planted link
            // would let whoever planted it aim those writes at any file.
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(path)
            .await
            .map_err(|source| LaunchError::LogFile {
                path: path.to_path_buf(),
                source,
            })
    }

    /// Writes every line received until both pumps have ended. Flushes whenever the channel
    /// is momentarily empty, so readers see output promptly.
    pub(super) async fn run(
        mut self,
        inbox: &mut mpsc::Receiver<Vec<u8>>,
    ) -> Result<(), LaunchError> {
        while let Some(line) = inbox.recv().await {
            self.write_line(&line).await?;
            while let Ok(line) = inbox.try_recv() {
                self.write_line(&line).await?;
            }
            self.flush().await?;
        }
        self.flush().await
    }

    async fn write_line(&mut self, line: &[u8]) -> Result<(), LaunchError> {
        let length = line.len() as u64;
        if self.size > 0 && self.size + length > self.limits.max_bytes {
            self.rotate().await?;
        }
        self.file
            .write_all(line)
            .await
            .map_err(|source| self.file_error(source))?;
        self.size += length;
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), LaunchError> {
        self.file
            .flush()
            .await
            .map_err(|source| self.file_error(source))
    }

    /// `.log.<keep-1>` → `.log.<keep>` ... `.log` → `.log.1`, then a fresh `.log`. Everything
    /// written so far is flushed first, so no line is lost or split by a rotation.
    async fn rotate(&mut self) -> Result<(), LaunchError> {
        self.flush().await?;
        let current = log_path(&self.dir, &self.service);
        let rename_error = |path: &Path, source| LaunchError::LogFile {
            path: path.to_path_buf(),
            source,
        };
        if self.limits.keep == 0 {
            remove_if_exists(&current)
                .await
                .map_err(|source| rename_error(&current, source))?;
        } else {
            let oldest = rotated_log_path(&self.dir, &self.service, self.limits.keep);
            remove_if_exists(&oldest)
                .await
                .map_err(|source| rename_error(&oldest, source))?;
            for index in (1..self.limits.keep).rev() {
                let from = rotated_log_path(&self.dir, &self.service, index);
                let to = rotated_log_path(&self.dir, &self.service, index + 1);
                rename_if_exists(&from, &to)
                    .await
                    .map_err(|source| rename_error(&from, source))?;
            }
            let newest = rotated_log_path(&self.dir, &self.service, 1);
            tokio::fs::rename(&current, &newest)
                .await
                .map_err(|source| rename_error(&current, source))?;
        }
        self.file = Self::open_append(&current).await?;
        self.size = 0;
        Ok(())
    }

    fn file_error(&self, source: io::Error) -> LaunchError {
        LaunchError::LogFile {
            path: log_path(&self.dir, &self.service),
            source,
        }
    }
}

async fn remove_if_exists(path: &Path) -> io::Result<()> {
    match tokio::fs::remove_file(path).await {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

async fn rename_if_exists(from: &Path, to: &Path) -> io::Result<()> {
    match tokio::fs::rename(from, to).await {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// The last `n` lines of a service's log, oldest first, across the current and rotated
/// files. No log yet gives no lines. Bytes that are not UTF-8 are replaced (U+FFFD).
/// Reads whole files, so the cost is bounded by [`LogLimits::max_bytes`] × (keep + 1).
pub fn tail_log(log_dir: &Path, service: &str, n: usize) -> io::Result<Vec<String>> {
    let mut newest_first: Vec<String> = Vec::new();
    let mut files = vec![log_path(log_dir, service)];
    // Rotated files are contiguous from `.log.1`; stop at the first gap.
    let mut index = 1;
    loop {
        let path = rotated_log_path(log_dir, service, index);
        if !path.exists() {
            break;
        }
        files.push(path);
        index += 1;
    }
    for path in files {
        if newest_first.len() >= n {
            break;
        }
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        let text = String::from_utf8_lossy(&bytes);
        for line in text.lines().rev() {
            if newest_first.len() >= n {
                break;
            }
            newest_first.push(line.to_string());
        }
    }
    newest_first.reverse();
    Ok(newest_first)
}

/// Lines of a service's current log file written since byte `offset` (a value this function
/// returned before), at most `max_lines` of them, and the offset to pass next time. Only whole
/// lines are returned: a line still being written is left for the next call. If the file is
/// now shorter than `offset` it was rotated, and reading starts over at its beginning (lines
/// written to the old file after the last call are in `.log.1`, not returned here).
pub fn read_log_since(
    log_dir: &Path,
    service: &str,
    offset: u64,
    max_lines: usize,
) -> io::Result<(Vec<String>, u64)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = match std::fs::File::open(log_path(log_dir, service)) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(err) => return Err(err),
    };
    let len = file.metadata()?.len();
    let start = if len < offset { 0 } else { offset };
    file.seek(SeekFrom::Start(start))?;
    // Bounded read: a follower that fell far behind gets the log in slices.
    let mut bytes = Vec::new();
    file.take(LOG_READ_CHUNK).read_to_end(&mut bytes)?;
    let mut lines = Vec::new();
    let mut consumed = 0usize;
    for piece in bytes.split_inclusive(|byte| *byte == b'\n') {
        if lines.len() >= max_lines || !piece.ends_with(b"\n") {
            break;
        }
        consumed += piece.len();
        lines.push(String::from_utf8_lossy(&piece[..piece.len() - 1]).into_owned());
    }
    Ok((lines, start + consumed as u64))
}

/// The current length of a service's log file (0 without one): the offset of "now" for
/// [`read_log_since`].
pub fn log_len(log_dir: &Path, service: &str) -> u64 {
    std::fs::metadata(log_path(log_dir, service)).map_or(0, |meta| meta.len())
}
