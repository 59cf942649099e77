//! The C allocator's settings for programs that run models.
//!
//! libtorch takes CPU tensor memory from `malloc`. With glibc's defaults, a block over 128 KiB
//! (the threshold adapts upwards later) is mapped fresh from the kernel and unmapped when freed,
//! and freed heap memory beyond 128 KiB is returned at once; the next forward pass then faults
//! every page back in and the kernel zeroes each one. For a pass whose activations are all kept
//! (`run_with_cache`), and freed together afterwards, that page traffic costs as much as a large
//! part of the pass itself (GPT-2 small, 1 x 128 tokens, 2 cores: about 30 ms of 180).
//!
//! [`keep_freed_memory`] tells glibc to serve every block from its heap, never from a fresh
//! mapping, and to keep up to 2 GiB of freed memory for reuse (the 8 x 128 cache of GPT-2 small
//! frees about 1.3 GB at once). Blocks over 32 MiB matter as much as the small ones: a
//! 152k-token vocabulary's logits for a 100-token text (61 MB), an embedding's gradient (545 MB
//! for Qwen2.5-0.5B), each made and freed once per pass. On a virtual machine where a fresh page
//! costs about 1 s per GB in the kernel, mapping them fresh was a third of the suite's wall time
//! on the Qwen2.5-0.5B-shaped checkpoint (docs/performance.md); from the heap, it is 4-8 s less
//! there and about 2 s less on GPT-2 small, for 100-200 MB more peak RSS (freed blocks the heap
//! cannot hand back while a later one sits above them). It is a process-wide choice, so the
//! library never makes it on its own: the project's binaries (`tl-bench`, `tl-perf`) call it
//! first thing, and a program linking the crates can do the same.

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
    /// glibc's largest allowed mmap threshold on 64-bit systems (what the per-thread arenas,
    /// which cannot take larger blocks, still go by).
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
                // No block from a fresh mapping: a larger one than a heap holds comes from the
                // main heap, which grows as far as it needs.
                && libc::mallopt(libc::M_MMAP_MAX, 0) == 1
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
