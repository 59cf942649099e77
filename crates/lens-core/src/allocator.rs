//! The C allocator's settings for programs that run models.
//!
//! libtorch takes CPU tensor memory from `malloc`. With glibc's defaults, a block over 128 KiB
//! (the threshold adapts upwards later) is mapped fresh from the kernel and unmapped when freed,
//! and freed heap memory beyond 128 KiB is returned at once; the next forward pass then faults
//! every page back in and the kernel zeroes each one. For a pass whose activations are all kept
//! (`run_with_cache`), and freed together afterwards, that page traffic costs as much as a large
//! part of the pass itself (GPT-2 small, 1 x 128 tokens, 2 cores: about 30 ms of 180).
//!
//! [`keep_freed_memory`] tells glibc to serve blocks up to 32 MiB from its heap and to keep up to
//! 2 GiB of freed memory for reuse (the 8 x 128 cache of GPT-2 small frees about 1.3 GB at once). It is a process-wide choice, so the library never makes it
//! on its own: the project's binaries (`tl-bench`, `tl-perf`) call it first thing, and a program
//! linking the crates can do the same.

/// Keeps freed memory in the process for reuse (see the module documentation). Returns whether
/// the settings were applied: `false` off glibc, and when the environment variable
/// `TLRS_KEEP_FREED_MEMORY` is `0` (glibc's defaults stay: a lower resident set between passes,
/// slower passes).
pub fn keep_freed_memory() -> bool {
    if std::env::var_os("TLRS_KEEP_FREED_MEMORY").is_some_and(|v| v == "0") {
        return false;
    }
    imp::keep_freed_memory()
}

/// Hands the freed memory the allocator keeps back to the kernel now (glibc's `malloc_trim`), for
/// a moment after which the process holds much less than before (a model's weights replaced).
/// Returns whether any memory was released; `false` off glibc.
pub fn release_freed_memory() -> bool {
    imp::release_freed_memory()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    /// glibc's largest allowed mmap threshold on 64-bit systems.
    const MMAP_THRESHOLD: libc::c_int = 32 << 20;
    /// As much as glibc takes (2 GiB - 1).
    const TRIM_THRESHOLD: libc::c_int = libc::c_int::MAX;

    pub(super) fn release_freed_memory() -> bool {
        // SAFETY: malloc_trim only returns free heap memory to the kernel.
        unsafe { libc::malloc_trim(0) == 1 }
    }

    pub(super) fn keep_freed_memory() -> bool {
        // SAFETY: mallopt only changes allocator parameters; it is safe to call at any time.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    pub(super) fn keep_freed_memory() -> bool {
        false
    }

    pub(super) fn release_freed_memory() -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_the_settings() {
        assert!(super::keep_freed_memory());
    }
}
