//! Build-script helper shared by every crate that produces binaries, tests or examples linked
//! against libtorch.
//!
//! `torch-sys` tells the linker where libtorch is (`-L`) but not the loader, so a plain
//! `cargo test` would need `LD_LIBRARY_PATH`. Cargo only applies `rustc-link-arg` to the package
//! whose build script prints it, so each such package calls [`bake_rpath`] from its own
//! `build.rs` (and depends on `torch-sys` directly, which is what makes
//! `DEP_TCH_LIBTORCH_LIB` visible to that build script). A crate outside the workspace does the
//! same with a one-line `build.rs`; it needs no `torch-sys` dependency of its own, because
//! `bridge` and `lens-core` pass libtorch's location on ([`export_libtorch_lib`]).
//!
//! On a CUDA-enabled libtorch it also links `libtorch_cuda` with `--no-as-needed`: nothing in a
//! Rust binary references its symbols directly, so with the default `--as-needed` the linker drops
//! it and `tch::Cuda::is_available()` reports false even on a GPU machine.

use std::env;
use std::path::PathBuf;

/// The environment variable `torch-sys` (links = "tch") sets for its direct dependents.
const LIBTORCH_LIB_VAR: &str = "DEP_TCH_LIBTORCH_LIB";

/// The variables through which this workspace's library crates pass libtorch's location on to
/// the crates that depend on them (each declares a `links` key and prints
/// `cargo:libtorch_lib=...` from its build script, see [`export_libtorch_lib`]), so a crate
/// outside the workspace that depends on `bridge` or `lens-core` needs no direct `torch-sys`
/// dependency to call [`bake_rpath`].
const RE_EXPORTED_VARS: [&str; 2] = [
    "DEP_TLRS_BRIDGE_LIBTORCH_LIB",
    "DEP_TLRS_LENS_CORE_LIBTORCH_LIB",
];

/// The libtorch `lib/` directory `torch-sys` linked against, if this build script can see it:
/// from `torch-sys` itself (a direct dependency) or re-exported by `bridge` / `lens-core`.
pub fn libtorch_lib_dir() -> Option<PathBuf> {
    std::iter::once(LIBTORCH_LIB_VAR)
        .chain(RE_EXPORTED_VARS)
        .find_map(env::var_os)
        .map(PathBuf::from)
}

/// Passes libtorch's `lib/` directory on to the crates depending on the calling package (whose
/// manifest declares a `links` key): they see it as `DEP_<LINKS>_LIBTORCH_LIB`.
pub fn export_libtorch_lib() {
    if let Some(dir) = libtorch_lib_dir() {
        println!("cargo:libtorch_lib={}", dir.display());
    }
}

/// Prints the `cargo:` lines that give this package's binaries, tests and examples an rpath to
/// libtorch and, where libtorch has CUDA, a real dependency on `libtorch_cuda`.
///
/// A crate outside this workspace that depends on `bridge` (or `lens-core`) calls this from a
/// one-line `build.rs` (`fn main() { torch_link::bake_rpath(); }`, with `torch-link` among its
/// `[build-dependencies]`); its binaries then start without `LD_LIBRARY_PATH`.
///
/// # Panics
/// When the calling package depends neither on `torch-sys` nor on `bridge` / `lens-core`
/// directly: a build configuration error, reported at build time.
pub fn bake_rpath() {
    println!("cargo:rerun-if-env-changed={LIBTORCH_LIB_VAR}");
    for var in RE_EXPORTED_VARS {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let Some(lib_dir) = libtorch_lib_dir() else {
        panic!(
            "{LIBTORCH_LIB_VAR} is not set: the package calling torch_link::bake_rpath() must \
             list torch-sys, bridge or lens-core among its [dependencies]"
        );
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    if lib_dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
