//! glibc malloc tuning for the broker's allocation pattern.
//!
//! Every fetch builds multi-MiB buffers (the storage's read result and the
//! response body) and frees them once the response is written; every produce
//! frame is a buffer of about the request's size. With glibc's defaults these
//! come from fresh mmap'd or trimmed pages, and perf of a consume run showed
//! ~20% of the shard threads' time in page faults (`exc_page_fault`,
//! `clear_page_erms`, `unmap_page_range`). Keeping freed memory in each
//! thread's heap lets the next request reuse it. The load generator does the
//! same (loadgen/src/malloc.rs).

#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn keep_freed_memory() {
    // SAFETY: mallopt only changes allocator parameters; it is called once at
    // start-up before any other thread exists, with valid parameter numbers
    // and in-range values.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1024 * 1024 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn keep_freed_memory() {}
