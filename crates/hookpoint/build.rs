//! Compiles the C++ shim that exposes libtorch's `Tensor::register_hook` (which tch does not
//! wrap) against the very libtorch headers and C++ ABI that torch-sys compiled tch against.

use std::env;
use std::path::Path;

fn main() {
    let lib_dir = torch_link::libtorch_lib_dir()
        .expect("DEP_TCH_LIBTORCH_LIB is unset: hookpoint must depend on torch-sys directly");
    let libtorch = lib_dir.parent().unwrap_or(Path::new("/"));
    // Same default and override as torch-sys, so both sides of the FFI share one std::string ABI.
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let cxx11_abi = env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    println!("cargo:rerun-if-changed=csrc/hook_shim.cpp");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(libtorch.join("include"))
        .include(libtorch.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={cxx11_abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("csrc/hook_shim.cpp")
        .compile("hookpoint_shim");
    torch_link::bake_rpath();
}
