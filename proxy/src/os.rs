//! The proxy's only calls into the C library: glibc's allocator settings and statistics, the
//! open-file limit, and the socket reads and writes of the hot path. Everything here is a plain
//! call with plain arguments; nothing is shared with the callee beyond them.

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

/// One non-blocking `send` on socket `fd`, without `SIGPIPE`.
///
/// `send` and `recv` are made with `syscall(2)` rather than with the C library's wrappers:
/// glibc makes those cancellation points, which costs two atomic operations per call in a
/// process with more than one thread, and the proxy makes one or two such calls per request.
/// It never cancels a thread.
pub fn send(fd: std::os::fd::RawFd, data: &[u8]) -> std::io::Result<usize> {
    // SAFETY: `data` is valid for reads of `data.len()` bytes for the duration of the call; no
    // address is passed.
    let n = unsafe {
        libc::syscall(
            libc::SYS_sendto,
            fd,
            data.as_ptr(),
            data.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            std::ptr::null::<libc::sockaddr>(),
            0,
        )
    };
    if n < 0 { Err(std::io::Error::last_os_error()) } else { Ok(n as usize) }
}

/// One non-blocking `recv` on socket `fd` into the spare capacity of `buf` (see [`send`]).
pub fn recv(fd: std::os::fd::RawFd, buf: &mut bytes::BytesMut) -> std::io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    // SAFETY: the kernel writes at most `spare.len()` bytes to the spare capacity, which is
    // valid for writes; no address is asked for.
    let n = unsafe {
        libc::syscall(
            libc::SYS_recvfrom,
            fd,
            spare.as_mut_ptr(),
            spare.len(),
            libc::MSG_DONTWAIT,
            std::ptr::null_mut::<libc::sockaddr>(),
            std::ptr::null_mut::<libc::socklen_t>(),
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: the kernel initialised the first `n` bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}
