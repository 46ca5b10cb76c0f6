//! Giving freed memory back to the system.
//!
//! A sidecar runs beside every pod: after a burst of large values or of connections, an idle
//! proxy should be back to its idle size, not hold tens of MiB it no longer uses. glibc's
//! allocator, left to itself, keeps them: after a large buffer is freed it raises the sizes
//! below which it keeps freed memory (up to 32 MiB for a buffer, 64 MiB for the end of an
//! arena), and the worker threads' arenas are trimmed only by those rules. So:
//! - [`configure`] fixes those sizes at startup: buffers from [`MMAP_ABOVE`] up get their own
//!   mapping, returned when freed; an arena keeps at most [`KEEP_FREE_TOP`] free at its end;
//! - [`give_back_freed_memory`] returns the free pages inside the arenas (`malloc_trim`) once
//!   at least [`TRIM_AFTER`] more is free than at the last trim, looking once per [`PERIOD`]
//!   (a `mallinfo2` call, off the workers' threads).
//!
//! None of this is on the request path: steady traffic reuses its buffers and allocates nothing.

use std::time::Duration;

/// How often the allocator's free memory is looked at.
pub const PERIOD: Duration = Duration::from_secs(1);
/// Free memory that grew by at least this much since the last trim is given back.
pub const TRIM_AFTER: usize = 4 << 20;

/// Buffers at least this large are mapped on their own and unmapped when freed.
pub const MMAP_ABOVE: usize = 256 << 10;
/// Free memory at the end of an arena beyond this is returned when memory is freed.
pub const KEEP_FREE_TOP: usize = 1 << 20;

/// Sets the allocator's thresholds; called once, at startup.
pub fn configure() {
    crate::os::set_malloc_thresholds(MMAP_ABOVE, KEEP_FREE_TOP);
}

/// Runs for the life of the process (spawned on the main runtime).
pub async fn give_back_freed_memory() {
    let mut trimmed_at = crate::os::malloc_free_bytes();
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let free = crate::os::malloc_free_bytes();
        if free >= trimmed_at + TRIM_AFTER {
            crate::os::malloc_trim();
            tracing::debug!(free_mib = free >> 20, "gave freed memory back to the system");
            trimmed_at = free;
        } else {
            // Reused memory lowers the mark: freeing it again counts as new.
            trimmed_at = trimmed_at.min(free);
        }
    }
}
