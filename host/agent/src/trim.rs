//! Giving back the start-up's pages of the executable once the agent is running (`skiff
//! agent` only).
//!
//! The agent is one binary with the API server, the scheduler and the plugin host, and its
//! start-up (the dynamic linker's relocations, flag parsing, joining, TLS set-up,
//! registration, the first list) reads code and data it will not touch again. Each page it
//! touched stays mapped, and the kernel maps the pages around each fault too
//! (fault-around, 64 KiB), so an idle agent kept some 20 MB of the executable mapped. Once
//! start-up is over, the agent unmaps the executable's pages that are clean file pages
//! (`MADV_DONTNEED`): what the idle agent runs is faulted back in from the page cache, the
//! rest stays out of its resident set.
//!
//! A mapping with private (anonymous) pages is left alone: that is the relocated
//! `.data.rel.ro`, whose pages would revert to the file's unrelocated contents.

use tracing::debug;

/// The executable's read-only mappings (code, constants, relocation tables) that hold no
/// private pages, as (start, length).
fn clean_mappings() -> Vec<(usize, usize)> {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return Vec::new();
    };
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    // The mapping being read: (start, length) if it is a candidate so far.
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            )
        {
            if let Some(done) = current.take() {
                out.push(done);
            }
            let perms = fields.next().unwrap_or_default();
            let path = fields.nth(3).unwrap_or_default();
            let ours = std::path::Path::new(path) == exe;
            if ours && matches!(perms, "r--p" | "r-xp") {
                current = Some((start, end - start));
            }
        } else if first == "Anonymous:" && fields.next() != Some("0") {
            current = None;
        }
    }
    out.extend(current);
    out
}

/// Unmaps the executable's clean pages; they fault back in as they are used.
pub fn trim_startup_pages() {
    for (start, len) in clean_mappings() {
        // SAFETY: the range is a private, read-only file mapping of our own binary with no
        // private pages: nothing in it was written, so dropping its pages loses nothing
        // and the next access reads the same bytes from the file (the page cache).
        #[expect(unsafe_code, reason = "madvise on our own never-written file mapping")]
        let result = unsafe {
            rustix::mm::madvise(
                start as *mut std::ffi::c_void,
                len,
                rustix::mm::Advice::LinuxDontNeed,
            )
        };
        debug!(
            start,
            len,
            ok = result.is_ok(),
            "unmapped the start-up's pages"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trimming_the_clean_mappings_keeps_the_process_running() {
        let mappings = clean_mappings();
        assert!(!mappings.is_empty(), "the test binary has clean mappings");
        trim_startup_pages();
        // Code and constants are read on after their pages were dropped: they come back
        // from the file. The relocated data was not touched (its pages are private).
        assert_eq!(clean_mappings(), mappings);
        assert_eq!(format!("{:?}", Some(6 * 7)), "Some(42)");
    }
}
