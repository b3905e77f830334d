//! Gives back the agent's start-up code pages once the agent runs: what `ps`/`top` show as its
//! resident memory (VmRSS) then counts the code it keeps using, not all the code it ran once.
//!
//! Measured in the namespace lab (`simulations/lab/measure.sh`, release build, 10 hosts): of an
//! idle agent's ~14.5 MiB VmRSS, ~10.5 MiB is *file-backed*: pages of the `mesh` executable
//! (and libc) mapped while starting (argument parsing, identity, hardware probe, the first
//! handshakes). Start-up touches code all over the 10 MiB binary and every fault maps a 64 KiB
//! window around it, so ~9 MiB of the binary stays mapped for the life of the process. After
//! [`release_startup_pages`] the idle agent maps back ~4 MiB of it (measured over 30 s alone,
//! with peers a little more). Anonymous memory (heap, stacks) is untouched: ~1.3 MiB alone plus
//! ~0.4 MiB per connected peer.
//!
//! How: `madvise(MADV_DONTNEED)` on the executable's own read-only, never-written mappings
//! (its code and its read-only data before relocation). For such a private file mapping the
//! kernel drops only our page-table entries; the pages stay in the page cache and the next
//! access maps the same bytes again (a minor fault, microseconds). This is what the kernel does
//! by itself to clean file pages under memory pressure. Mappings holding copied-on-write pages
//! (RELRO, patched by the dynamic loader, `Anonymous:` above 0 in `/proc/self/smaps`) are left
//! alone: dropping them would bring back the unrelocated file bytes.
//!
//! Owns nothing; does no I/O beyond reading `/proc/self/smaps` and `/proc/self/exe` once.

use std::os::unix::fs::MetadataExt;

/// How long after the agent is up its start-up code pages are released. The first handshakes
/// with the peers found at start are over by then (measured: all 9 peers of a 10-host lab
/// linked within ~1 s); code needed later is simply mapped again when it runs.
pub const RELEASE_STARTUP_PAGES_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// One mapping of the executable that may be released.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mapping {
    start: usize,
    end: usize,
}

/// Releases the executable's clean read-only mappings (see the module doc). Returns the bytes
/// released, or why nothing was.
pub fn release_startup_pages() -> std::io::Result<usize> {
    let exe = std::fs::metadata("/proc/self/exe")?;
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut released = 0;
    for mapping in clean_mappings_of(&smaps, exe.dev(), exe.ino()) {
        let len = mapping.end - mapping.start;
        // SAFETY: the range is one whole mapping of our own executable, private, read-only
        // (no `w` permission, so nothing can write to it without an mprotect the agent never
        // does) and with no anonymous (copied-on-write) page. MADV_DONTNEED on such a range
        // only drops page-table entries: every later access faults the unchanged file bytes
        // back in from the page cache. No Rust reference can observe a difference.
        let rc = unsafe { libc::madvise(mapping.start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        released += len;
    }
    Ok(released)
}

/// The mappings of the file `(dev, ino)` in `smaps` that are private, not writable, and hold no
/// anonymous page.
fn clean_mappings_of(smaps: &str, dev: u64, ino: u64) -> Vec<Mapping> {
    let mut found = Vec::new();
    let mut current: Option<Mapping> = None;
    let mut flush = |current: &mut Option<Mapping>, clean: bool| {
        if let Some(mapping) = current.take()
            && clean
        {
            found.push(mapping);
        }
    };
    let mut anonymous_seen = false;
    for line in smaps.lines() {
        if let Some(mapping) = parse_header(line, dev, ino) {
            flush(&mut current, !anonymous_seen);
            anonymous_seen = false;
            current = mapping;
            continue;
        }
        if is_header(line) {
            flush(&mut current, !anonymous_seen);
            anonymous_seen = false;
            continue;
        }
        if let Some(kib) = line.strip_prefix("Anonymous:") {
            let kib = kib.trim().trim_end_matches("kB").trim();
            anonymous_seen = kib != "0";
        }
    }
    flush(&mut current, !anonymous_seen);
    found
}

/// A header line (`START-END PERMS OFFSET MAJ:MIN INODE [PATH]`) starts with a hex range; the
/// field lines (`Rss:`, `Anonymous:`…) start with a name.
fn is_header(line: &str) -> bool {
    line.split_once(' ')
        .and_then(|(range, _)| range.split_once('-'))
        .is_some_and(|(a, b)| {
            !a.is_empty()
                && a.bytes().all(|c| c.is_ascii_hexdigit())
                && b.bytes().all(|c| c.is_ascii_hexdigit())
        })
}

/// `Some(Some(mapping))` for a header of a private read-only mapping of `(dev, ino)`,
/// `Some(None)` for any other header, `None` for a field line.
fn parse_header(line: &str, dev: u64, ino: u64) -> Option<Option<Mapping>> {
    if !is_header(line) {
        return None;
    }
    let mut fields = line.split_ascii_whitespace();
    let (range, perms, _offset, device, inode) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    let (start, end) = range.split_once('-')?;
    let (Ok(start), Ok(end)) = (
        usize::from_str_radix(start, 16),
        usize::from_str_radix(end, 16),
    ) else {
        return Some(None);
    };
    let read_only_private = perms.starts_with('r') && perms.as_bytes().get(1) == Some(&b'-')
        && perms.ends_with('p');
    let same_file = inode.parse::<u64>().ok() == Some(ino) && device_matches(device, dev);
    Some((read_only_private && same_file && end > start).then_some(Mapping { start, end }))
}

/// `/proc/*/maps` writes the device as `MAJ:MIN` in hex; `st_dev` encodes it the glibc way.
fn device_matches(field: &str, dev: u64) -> bool {
    let Some((major, minor)) = field.split_once(':') else {
        return false;
    };
    let (Ok(major), Ok(minor)) = (u64::from_str_radix(major, 16), u64::from_str_radix(minor, 16))
    else {
        return false;
    };
    let dev_major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff);
    let dev_minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff);
    major == dev_major && minor == dev_minor
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0a0000000-55d0a0300000 r--p 00000000 fd:01 4242 /usr/bin/mesh
Rss:                1664 kB
Anonymous:             0 kB
55d0a0300000-55d0a0a00000 r-xp 00300000 fd:01 4242 /usr/bin/mesh
Rss:                6996 kB
Anonymous:             0 kB
55d0a0a00000-55d0a0a51000 r--p 00a00000 fd:01 4242 /usr/bin/mesh
Rss:                 324 kB
Anonymous:           324 kB
55d0a0a51000-55d0a0a60000 rw-p 00a51000 fd:01 4242 /usr/bin/mesh
Rss:                  60 kB
Anonymous:            60 kB
7f0000000000-7f0000100000 r-xp 00000000 fd:01 77 /usr/lib/libc.so.6
Rss:                1128 kB
Anonymous:             0 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
Rss:                 248 kB
Anonymous:           248 kB
";

    fn fd01() -> u64 {
        // glibc's makedev(0xfd, 0x01)
        (0xfd << 8) | 0x01
    }

    #[test]
    fn only_the_executables_clean_read_only_mappings_are_chosen() {
        let found = clean_mappings_of(SMAPS, fd01(), 4242);
        assert_eq!(
            found,
            vec![
                Mapping { start: 0x55d0a0000000, end: 0x55d0a0300000 },
                Mapping { start: 0x55d0a0300000, end: 0x55d0a0a00000 },
            ],
            "the RELRO mapping (copied-on-write pages), the writable one and libc stay"
        );
        assert!(clean_mappings_of(SMAPS, fd01(), 4243).is_empty(), "another inode");
        assert!(clean_mappings_of(SMAPS, fd01() + 1, 4242).is_empty(), "another device");
    }

    #[test]
    fn releasing_keeps_the_process_running_and_its_code_usable() {
        let released = release_startup_pages().expect("madvise on our own code");
        assert!(released > 0, "the test binary has read-only mappings");
        // Code and read-only data are faulted back in on use.
        let text = format!("{:?}", clean_mappings_of(SMAPS, fd01(), 4242));
        assert!(text.contains("Mapping"), "{text}");
    }
}
