//! Gives back the executable's start-up pages once start-up is over.
//!
//! The kernel maps a 64 KiB window of a file around every page fault ("fault-around"; not
//! affected by `MADV_RANDOM`), so each function an agent runs brings up to 64 KiB of the
//! binary into its resident set. Measured with callgrind in the 10-host lab: an agent runs
//! ~5.0 MB of the 11 MB of code in its first minute, ~2.1 MB after that, and ~1.2 MB of it
//! over and over (idle membership, QUIC, the API); scattered through the binary, those
//! functions kept all 10.4 MB of code resident (VmRSS 18.2 MiB, of which 4 MiB the agent's
//! own memory).
//!
//! Two things together bring that down:
//! - the x86_64 Linux release build places the functions an agent runs after start-up
//!   together, ahead of the rest (`link/hot-text.ld`, made by `link/hot-text.sh`; `build.rs`):
//!   first those a settled agent left alone runs (recorded over 45 s of idling), then those
//!   an agent in use runs, then the rest of what ran after start-up, then start-up code;
//! - [`release_startup_pages`], once start-up is over, tells the kernel it may drop this
//!   process's mappings of the executable's read-only segments (`madvise(MADV_DONTNEED)`):
//!   pages in use fault back in from the page cache on their next use; start-up code, the
//!   relocation table and unwinding tables stay out until they are needed again.
//!
//! 10-host lab, side by side (BENCHMARKS.md): VmRSS 18.2 MiB before, 15.0 MiB with the drop
//! alone, 13.8 MiB with both; ~11 MiB since the idle functions come first.
//!
//! Nothing is lost: those segments are never written (the writable ones, including the
//! relocated read-only-after-relocation data, are left alone), so a dropped page reads back
//! exactly as it was, from the page cache the other agents of the machine share.

use std::time::Duration;

/// How long after the agent starts its start-up pages are given back: start-up (the swarm,
/// the API, the state load, the first handshakes and sync) is over within a couple of
/// seconds even on a Raspberry Pi.
pub const RELEASE_AFTER: Duration = Duration::from_secs(10);

/// Drops this process's mappings of the executable's read-only segments (code, constants,
/// relocation and unwinding tables); returns the bytes advised. Linux only; elsewhere, or
/// if the kernel refuses, nothing changes (the pages just stay mapped).
pub fn release_startup_pages() -> std::io::Result<usize> {
    #[cfg(target_os = "linux")]
    {
        linux::release()
    }
    #[cfg(not(target_os = "linux"))]
    {
        Ok(0)
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use nix::libc;

    /// The executable's loaded segments that are never written: `(start, end)` addresses.
    fn read_only_segments() -> Vec<(usize, usize)> {
        unsafe extern "C" fn each(
            info: *mut libc::dl_phdr_info,
            _size: libc::size_t,
            data: *mut libc::c_void,
        ) -> libc::c_int {
            // SAFETY: the loader passes a valid `dl_phdr_info` for the duration of the call,
            // and `data` is the `Vec` passed to `dl_iterate_phdr` below, borrowed for it.
            let (info, out) = unsafe { (&*info, &mut *(data as *mut Vec<(usize, usize)>)) };
            // SAFETY: `dlpi_phdr` points to `dlpi_phnum` program headers of that object.
            let headers =
                unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum.into()) };
            for h in headers {
                if h.p_type == libc::PT_LOAD && h.p_flags & libc::PF_W == 0 {
                    let start = (info.dlpi_addr as usize).wrapping_add(h.p_vaddr as usize);
                    out.push((start, start.saturating_add(h.p_memsz as usize)));
                }
            }
            // The first object is the executable itself: stop there.
            1
        }
        let mut out: Vec<(usize, usize)> = Vec::new();
        // SAFETY: `each` only reads what the loader hands it and writes to `out`, which
        // outlives the call.
        unsafe { libc::dl_iterate_phdr(Some(each), (&raw mut out).cast()) };
        out
    }

    pub(super) fn release() -> std::io::Result<usize> {
        // SAFETY: sysconf has no preconditions.
        let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            p if p > 0 => p as usize,
            _ => return Err(std::io::Error::last_os_error()),
        };
        let mut advised = 0;
        for (start, end) in read_only_segments() {
            // Whole pages inside the segment only: a page shared with a writable segment
            // could hold written data, which MADV_DONTNEED would throw away.
            let (start, end) = (start.next_multiple_of(page), end / page * page);
            if end <= start {
                continue;
            }
            // SAFETY: the range is whole pages of a read-only, file-backed mapping of the
            // executable that no code writes to; dropping it only makes the next access
            // fault the same bytes back in from the file.
            let rc = unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED)
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            advised += end - start;
        }
        Ok(advised)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The code still runs after its pages were dropped, and the call did drop something.
    #[test]
    fn the_process_keeps_running_after_its_read_only_pages_are_dropped() {
        let advised = release_startup_pages().expect("madvise on the executable's own segments");
        if cfg!(target_os = "linux") {
            assert!(advised > 0, "no read-only segment found");
        }
        // Code, constants and formatting (rodata) all fault back in.
        let text = format!("{:?}", vec![1u8, 2, 3]);
        assert_eq!(text, "[1, 2, 3]");
        assert_eq!(release_startup_pages().expect("twice"), advised);
    }
}
