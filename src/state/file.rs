//! The document file: how the replicated document is kept on disk, written, and read back.
//!
//! Owns the file format (spec: `protocol/state-schema.md`, "File"): a full `save()` followed by
//! appended incremental chunks, which Automerge loads as one document. Owns durability (an
//! append is on disk — written and `fdatasync`ed — before it counts), the repair of a failed
//! append (the file is cut back to the last good chunk, so a torn chunk never has later chunks
//! after it), atomic rewrites, and recovery on load (every valid chunk before damage is kept;
//! only the damaged rest is moved aside, to a named file).
//!
//! It does not decide when to write: the state actor calls [`DocFile::append`] after each
//! change and [`DocFile::rewrite`] when [`DocFile::needs_compaction`] says so or after an epoch
//! switch. Plain blocking I/O: the actor owns the file and waits for the disk on purpose (a
//! local write is not acknowledged before it is durable).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use automerge::{ActorId, AutoCommit, ChangeHash, LoadOptions, OnPartialLoad};

use super::genesis;

/// Rewrite the document file once its appended tail exceeds the full part and this floor
/// (bytes). Below it, rewriting costs more than the few extra kilobytes it saves.
pub const MIN_COMPACT_TAIL: u64 = 64 * 1024;

/// Magic bytes that open every Automerge chunk.
const CHUNK_MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];

/// The open document file: a full save plus appended incremental chunks.
pub struct DocFile {
    path: PathBuf,
    file: std::fs::File,
    /// Bytes of the file that hold whole, durable chunks.
    bytes: u64,
    /// Bytes of the full save at its start.
    full_bytes: u64,
    /// Heads of the document as far as the file holds it: the next append writes every change
    /// not among their ancestors, so a failed append is retried whole by the next one.
    saved_heads: Vec<ChangeHash>,
    /// The file does not hold the document's history as `saved_heads` says (a rewrite or a
    /// truncation failed): the next write rewrites it whole.
    stale: bool,
}

impl DocFile {
    /// Opens `path` for appending; `saved_heads` are the heads of what the file holds (as
    /// loaded, or just rewritten).
    pub fn open(
        path: &Path,
        saved_heads: Vec<ChangeHash>,
        full_bytes: u64,
    ) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        let bytes = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            bytes,
            full_bytes,
            saved_heads,
            stale: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of the file.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Makes every change of `doc` durable: appends those the file lacks and fsyncs. On error
    /// the file is cut back to its last good chunk (or, if even that fails, marked for a whole
    /// rewrite), so nothing torn stays in it and the next append retries the same changes.
    pub fn append(&mut self, doc: &mut AutoCommit) -> std::io::Result<()> {
        if self.stale {
            return self.rewrite(doc);
        }
        let chunk = doc.save_after(&self.saved_heads);
        if chunk.is_empty() {
            self.saved_heads = doc.get_heads();
            return Ok(());
        }
        let written = self
            .file
            .write_all(&chunk)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            let cut = self
                .file
                .set_len(self.bytes)
                .and_then(|()| self.file.sync_data());
            if let Err(cut) = cut {
                tracing::error!(
                    path = %self.path.display(),
                    error = %cut,
                    "cannot cut a failed append off the state file; it will be rewritten whole"
                );
                self.stale = true;
            }
            return Err(e);
        }
        self.bytes += chunk.len() as u64;
        self.saved_heads = doc.get_heads();
        Ok(())
    }

    /// Replaces the file with a full save of `doc`, atomically: a temporary file beside it,
    /// fsynced, renamed over it, the directory fsynced. On error the old file stays as it was
    /// (the temporary file is removed) and the next write tries again.
    pub fn rewrite(&mut self, doc: &mut AutoCommit) -> std::io::Result<()> {
        let full = doc.save();
        match write_atomically(&self.path, &full) {
            Ok(()) => {
                *self = Self::open(&self.path, doc.get_heads(), full.len() as u64)?;
                Ok(())
            }
            Err(e) => {
                self.stale = true;
                Err(e)
            }
        }
    }

    /// Whether the appended tail has outgrown the full part (and [`MIN_COMPACT_TAIL`]).
    pub fn needs_compaction(&self) -> bool {
        let tail = self.bytes.saturating_sub(self.full_bytes);
        tail > MIN_COMPACT_TAIL && tail > self.full_bytes
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename (mode 0600).
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        // A full disk must not also keep a half-written copy around.
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    if let Ok(d) = std::fs::File::open(dir) {
        // Makes the rename durable; failing here loses nothing already written.
        let _ = d.sync_all();
    }
    Ok(())
}

/// What loading the document file found.
pub struct Loaded {
    pub doc: AutoCommit,
    /// Bytes at the start of the file that loaded (every valid chunk before any damage).
    pub kept_bytes: usize,
    /// Bytes of its first chunk (the full save the rest was appended to).
    pub full_bytes: usize,
    /// Bytes after them that did not load, and where they were moved.
    pub moved_aside: Option<(PathBuf, usize)>,
    /// Some whole chunk did not load (not merely a cut-off last chunk): data was lost here and
    /// must come back from peers.
    pub damaged: bool,
    /// The file must be rewritten (it was missing, or damaged bytes were cut off).
    pub rewrite: bool,
}

/// Loads the document file at `path`. A missing or empty file gives the genesis document.
/// Otherwise the longest prefix of whole chunks that loads strictly (checksums verified) is
/// kept; the rest of the file, if any, is written to `<path>.damaged-<unix seconds>` (or, when
/// nothing at all loads, the file is renamed `<path>.corrupt-<unix seconds>`), and what was
/// kept and dropped is logged.
pub fn load(path: &Path, actor: &ActorId) -> Loaded {
    let fresh = |rewrite| Loaded {
        doc: genesis(actor.clone()),
        kept_bytes: 0,
        full_bytes: 0,
        moved_aside: None,
        damaged: false,
        rewrite,
    };
    let bytes = match std::fs::read(path) {
        Ok(b) if !b.is_empty() => b,
        Ok(_) => return fresh(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return fresh(true),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the state file");
            return fresh(true);
        }
    };
    let ends = chunk_ends(&bytes);
    let (kept, doc) = longest_loadable_prefix(&bytes, &ends);
    let whole = ends.last().copied().unwrap_or(0);
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let Some(doc) = doc else {
        let aside = suffixed(path, &format!(".corrupt-{stamp}"));
        match std::fs::rename(path, &aside) {
            Ok(()) => tracing::warn!(
                moved_to = %aside.display(),
                bytes = bytes.len(),
                "the state file is unreadable from its first chunk; moved it aside and starting \
                 empty: the state will be recovered from peers"
            ),
            Err(e) => tracing::warn!(
                error = %e,
                "the state file is unreadable and could not be moved aside"
            ),
        }
        let mut loaded = fresh(true);
        loaded.damaged = true;
        loaded.moved_aside = Some((aside, bytes.len()));
        return loaded;
    };
    let doc = doc.with_actor(actor.clone());
    if kept == bytes.len() {
        return Loaded {
            doc,
            kept_bytes: kept,
            full_bytes: ends[0],
            moved_aside: None,
            damaged: false,
            rewrite: false,
        };
    }
    let damaged = kept < whole;
    let aside = suffixed(path, &format!(".damaged-{stamp}"));
    let moved = match write_atomically(&aside, &bytes[kept..]) {
        Ok(()) => Some((aside.clone(), bytes.len() - kept)),
        Err(e) => {
            tracing::warn!(error = %e, path = %aside.display(), "cannot keep the damaged rest of the state file");
            None
        }
    };
    tracing::warn!(
        path = %path.display(),
        kept_bytes = kept,
        kept_chunks = ends.iter().take_while(|e| **e <= kept).count(),
        dropped_bytes = bytes.len() - kept,
        moved_to = %aside.display(),
        "the state file is damaged past its first {kept} bytes (a torn or corrupt chunk); kept \
         every valid chunk before it and moved the rest aside"
    );
    Loaded {
        doc,
        kept_bytes: kept,
        full_bytes: ends[0],
        moved_aside: moved,
        damaged,
        rewrite: true,
    }
}

fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// The longest prefix `bytes[..ends[i]]` that loads strictly, with the document it loads to.
/// Validity is monotonic in the prefix (a bad chunk spoils every prefix holding it), so after
/// the common case (everything loads) a binary search finds it in log2(chunks) loads.
fn longest_loadable_prefix(bytes: &[u8], ends: &[usize]) -> (usize, Option<AutoCommit>) {
    // Strict: checksums verified, nothing left over, and no change waiting for a dependency
    // the prefix lacks (a change appended after a torn one would be queued silently).
    let load = |end: usize| {
        AutoCommit::load_with_options(
            &bytes[..end],
            LoadOptions::new().on_partial_load(OnPartialLoad::Error),
        )
        .ok()
        .and_then(|mut doc| doc.get_missing_deps(&[]).is_empty().then_some(doc))
    };
    let Some(&last) = ends.last() else {
        return (0, None);
    };
    if let Some(doc) = load(last) {
        return (last, Some(doc));
    }
    // Invariant: prefixes ending at ends[..lo] load (lo = 0: none known), ends[hi..] do not.
    let (mut lo, mut hi) = (0, ends.len() - 1);
    let mut best = None;
    while lo < hi {
        let mid = (lo + hi) / 2;
        match load(ends[mid]) {
            Some(doc) => {
                best = Some((ends[mid], doc));
                lo = mid + 1;
            }
            None => hi = mid,
        }
    }
    match best {
        Some((end, doc)) => (end, Some(doc)),
        None => (0, None),
    }
}

/// Ends of the whole Automerge chunks (magic, 4-byte checksum, 1-byte type, LEB128 length,
/// data) at the start of `bytes`, in order. Contents are verified by the loader, not here.
pub fn chunk_ends(bytes: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        if rest.len() < 9 || rest[..4] != CHUNK_MAGIC {
            break;
        }
        let mut len: u64 = 0;
        let mut shift = 0;
        let mut header = 9;
        loop {
            let Some(b) = rest.get(header) else {
                return ends;
            };
            header += 1;
            len |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 63 {
                return ends;
            }
        }
        let Some(total) = usize::try_from(len)
            .ok()
            .and_then(|l| l.checked_add(header))
        else {
            break;
        };
        if total > rest.len() {
            break;
        }
        pos += total;
        ends.push(pos);
    }
    ends
}

/// Length of the longest prefix of `bytes` made of whole Automerge chunks.
pub fn whole_chunks_len(bytes: &[u8]) -> usize {
    chunk_ends(bytes).last().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{NodeRecord, hydrate_lenient, put_entry};

    fn tagged(doc: &mut AutoCommit, i: usize) {
        let mut rec = NodeRecord::default();
        rec.tags.insert(format!("k{i}"), "v".repeat(100));
        put_entry(doc, "nodes", &format!("n{i}"), &rec).unwrap();
        doc.commit();
    }

    /// A file of a full save and `n` appended one-change chunks, through [`DocFile`].
    fn file_with(dir: &Path, n: usize) -> (PathBuf, AutoCommit) {
        let path = dir.join("doc.automerge");
        let mut doc = genesis(ActorId::random());
        let mut file = DocFile::open(&path, Vec::new(), 0).unwrap();
        file.rewrite(&mut doc).unwrap();
        for i in 0..n {
            tagged(&mut doc, i);
            file.append(&mut doc).unwrap();
        }
        (path, doc)
    }

    #[test]
    fn whole_chunks_stop_at_a_torn_tail() {
        let mut doc = genesis(ActorId::random());
        let mut bytes = doc.save();
        let first = bytes.len();
        put_entry(&mut doc, "nodes", "x", &NodeRecord::default()).unwrap();
        doc.commit();
        bytes.extend(doc.save_incremental());
        let two = bytes.len();
        assert_eq!(whole_chunks_len(&bytes), two);
        for cut in [two - 1, first + 5, first + 1] {
            assert_eq!(whole_chunks_len(&bytes[..cut]), first, "cut at {cut}");
        }
        let mut torn = bytes.clone();
        torn.extend_from_slice(&[0x85, 0x6f, 0x4a, 0x83, 0x00, 0x17, 0xff]);
        assert_eq!(whole_chunks_len(&torn), two);
        assert_eq!(whole_chunks_len(b"garbage"), 0);
    }

    #[test]
    fn a_bad_chunk_in_the_middle_keeps_every_chunk_before_it_and_moves_the_rest_aside() {
        let dir = tempfile::TempDir::new().unwrap();
        let (path, _) = file_with(dir.path(), 10);
        let bytes = std::fs::read(&path).unwrap();
        let ends = chunk_ends(&bytes);
        assert_eq!(ends.len(), 11, "a full save and ten appends");
        // Flip a byte inside the sixth appended chunk: its checksum no longer matches.
        let mut bad = bytes.clone();
        bad[ends[5] + 20] ^= 0xff;
        std::fs::write(&path, &bad).unwrap();

        let loaded = load(&path, &ActorId::random());
        assert_eq!(
            loaded.kept_bytes, ends[5],
            "the full save and five appends are kept"
        );
        assert!(loaded.damaged && loaded.rewrite);
        let state = hydrate_lenient(&loaded.doc).0;
        assert_eq!(
            state.nodes.len(),
            5,
            "n0..n4 survive: {:?}",
            state.nodes.keys()
        );
        let (aside, moved) = loaded.moved_aside.expect("the rest is kept aside");
        assert_eq!(moved, bad.len() - ends[5]);
        assert_eq!(std::fs::read(&aside).unwrap(), &bad[ends[5]..]);
        assert!(
            aside
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("doc.automerge.damaged-")
        );
    }

    #[test]
    fn a_torn_chunk_followed_by_later_writes_keeps_what_came_before() {
        // What a full disk did before appends were cut back: a torn chunk, then later chunks.
        let dir = tempfile::TempDir::new().unwrap();
        let (path, mut doc) = file_with(dir.path(), 3);
        let good = std::fs::read(&path).unwrap();
        let heads = doc.get_heads();
        tagged(&mut doc, 3);
        let torn = doc.save_after(&heads);
        let heads = doc.get_heads();
        tagged(&mut doc, 4);
        let later = doc.save_after(&heads);
        let mut bytes = good.clone();
        bytes.extend_from_slice(&torn[..torn.len() / 2]);
        bytes.extend_from_slice(&later);
        std::fs::write(&path, &bytes).unwrap();

        let loaded = load(&path, &ActorId::random());
        assert_eq!(loaded.kept_bytes, good.len());
        assert_eq!(hydrate_lenient(&loaded.doc).0.nodes.len(), 3);
        assert!(loaded.moved_aside.is_some());
    }

    #[test]
    fn a_file_bad_from_its_first_chunk_is_moved_aside_whole() {
        let dir = tempfile::TempDir::new().unwrap();
        let (path, _) = file_with(dir.path(), 2);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[12] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let loaded = load(&path, &ActorId::random());
        assert_eq!(loaded.kept_bytes, 0);
        assert!(loaded.damaged);
        let (aside, _) = loaded.moved_aside.unwrap();
        assert!(aside.to_string_lossy().contains(".corrupt-"));
        assert!(!path.exists());
    }

    #[test]
    fn a_failed_append_is_retried_whole_by_the_next_one() {
        // Even if one append never reached the file, the next carries its changes too: the file
        // never holds a change whose dependency it lacks.
        let dir = tempfile::TempDir::new().unwrap();
        let (path, mut doc) = file_with(dir.path(), 1);
        let mut file = DocFile::open(&path, doc.get_heads(), 0).unwrap();
        tagged(&mut doc, 1); // not appended: as if the append had failed
        tagged(&mut doc, 2);
        file.append(&mut doc).unwrap();
        let loaded = load(&path, &ActorId::random());
        assert!(loaded.moved_aside.is_none());
        assert_eq!(hydrate_lenient(&loaded.doc).0.nodes.len(), 3);
    }
}
