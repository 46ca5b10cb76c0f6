//! The proxy's only calls into the C library: glibc's allocator settings and statistics, and the
//! open-file limit. Everything here is a plain call with plain arguments; nothing is shared
//! with the callee beyond them.

/// Sets the size from which an allocation gets its own mapping, and how much free memory an
/// arena keeps at its end. Fixing either stops glibc from raising both after large frees.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn set_malloc_thresholds(mmap_above: usize, keep_free_top: usize) {
    // SAFETY: mallopt only changes allocator parameters (under the allocator's lock).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, mmap_above as libc::c_int);
        libc::mallopt(libc::M_TRIM_THRESHOLD, keep_free_top as libc::c_int);
    }
}

/// Bytes the allocator holds free, in every arena.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn malloc_free_bytes() -> usize {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    unsafe { libc::mallinfo2() }.fordblks
}

/// Returns the free pages of every arena to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn malloc_trim() {
    // SAFETY: malloc_trim may be called at any time from any thread.
    unsafe { libc::malloc_trim(0) };
}

// Other allocators (musl's among them) give memory back by themselves.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn set_malloc_thresholds(_: usize, _: usize) {}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn malloc_free_bytes() -> usize {
    0
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn malloc_trim() {}

/// Raises the soft limit on open files to the hard limit; returns the limit now in force.
pub fn raise_open_file_limit() -> std::io::Result<libc::rlim_t> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit, which `lim` is.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: setrlimit reads one rlimit, which `raised` is.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        lim = raised;
    }
    Ok(lim.rlim_cur)
}
