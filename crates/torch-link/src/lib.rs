//! Build-script helper shared by every crate that produces binaries, tests or examples linked
//! against libtorch.
//!
//! `torch-sys` tells the linker where libtorch is (`-L`) but not the loader, so a plain
//! `cargo test` would need `LD_LIBRARY_PATH`. Cargo only applies `rustc-link-arg` to the package
//! whose build script prints it, so each such package calls [`bake_rpath`] from its own
//! `build.rs` (and depends on `torch-sys` directly, which is what makes
//! `DEP_TCH_LIBTORCH_LIB` visible to that build script).
//!
//! On a CUDA-enabled libtorch it also links `libtorch_cuda` with `--no-as-needed`: nothing in a
//! Rust binary references its symbols directly, so with the default `--as-needed` the linker drops
//! it and `tch::Cuda::is_available()` reports false even on a GPU machine.

use std::env;
use std::path::PathBuf;

/// The environment variable `torch-sys` (links = "tch") sets for its direct dependents.
const LIBTORCH_LIB_VAR: &str = "DEP_TCH_LIBTORCH_LIB";

/// The libtorch `lib/` directory `torch-sys` linked against, if this build script can see it.
pub fn libtorch_lib_dir() -> Option<PathBuf> {
    env::var_os(LIBTORCH_LIB_VAR).map(PathBuf::from)
}

/// Prints the `cargo:` lines that give this package's binaries, tests and examples an rpath to
/// libtorch and, where libtorch has CUDA, a real dependency on `libtorch_cuda`.
///
/// # Panics
/// When the calling package does not depend on `torch-sys` directly: that is a build
/// configuration error in this workspace, reported at build time.
pub fn bake_rpath() {
    println!("cargo:rerun-if-env-changed={LIBTORCH_LIB_VAR}");
    let Some(lib_dir) = libtorch_lib_dir() else {
        panic!(
            "{LIBTORCH_LIB_VAR} is not set: the package calling torch_link::bake_rpath() must \
             list torch-sys among its [dependencies]"
        );
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    if lib_dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
