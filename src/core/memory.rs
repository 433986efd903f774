//! Handing freed memory back to the system.

/// Returns the allocator's free memory to the system. glibc keeps what a large piece of work
/// freed (a version's sessions, a decoded 40-megapixel photo) in its arenas, so the process's
/// resident size would stay at its peak without it.
pub fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
