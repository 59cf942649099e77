//! The downstream-crate check of `cargo xtask test`: a crate outside the workspace that depends
//! on `bridge` by path, with the README's one-line `build.rs`, builds against the workspace's
//! target directory (so torch-sys's C++ is not compiled a second time) and its binary runs a
//! forward pass from a directory outside the repository with no environment variables.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The downstream crate's `src/main.rs`: the README's basic flow.
const MAIN_RS: &str = r#"use bridge::prelude::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let model = TransformerBridge::boot("tiny-gpt2", Device::Cpu, Kind::Float)?;
    let tokens = model.to_tokens(&["The cat sat on the mat"], None, None)?.ids;
    let options = ForwardOptions { return_type: ReturnType::Loss, ..Default::default() };
    let loss = model.forward(&tokens, &options)?.loss()?.double_value(&[]);
    println!("loss {loss}");
    Ok(())
}
"#;

/// Builds and runs the downstream crate; `Ok` when its binary printed a finite loss. The crate
/// lives in `<target dir>/downstream-check/` (kept, so that the next run only relinks it); its
/// binary runs from the system's temporary directory.
pub fn check(root: &Path) -> Result<(), String> {
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let dir = target_dir.join("downstream-check");
    let libtorch = std::env::var("LIBTORCH")
        .map_err(|_| "LIBTORCH is not set (run through cargo xtask)".to_string())?;
    write_crate(root, &dir, &target_dir, &libtorch)?;
    println!("downstream check: building {}", dir.display());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    // Only cargo's own configuration reaches the build: the crate's .cargo/config.toml names
    // libtorch and the target directory, as a user's would.
    crate::run(
        Command::new(cargo)
            .current_dir(&dir)
            .env_remove("LIBTORCH")
            .env_remove("CARGO_TARGET_DIR")
            .args(["build", "--quiet"]),
    )?;
    let exe = target_dir.join("debug/downstream-check");
    let output = Command::new(&exe)
        .current_dir(std::env::temp_dir())
        .env_clear()
        .output()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let loss = stdout
        .trim()
        .strip_prefix("loss ")
        .and_then(|v| v.parse::<f64>().ok());
    match loss {
        Some(loss) if output.status.success() && loss.is_finite() && loss > 0.0 => {
            println!("downstream check: passed (a crate outside the workspace ran a forward pass, loss {loss:.4})");
            Ok(())
        }
        _ => Err(format!(
            "the downstream crate's binary failed ({}): {stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )),
    }
}

fn write_crate(root: &Path, dir: &Path, target_dir: &Path, libtorch: &str) -> Result<(), String> {
    // Unchanged files are left alone, so cargo sees nothing new to build.
    let write = |path: PathBuf, text: String| {
        if std::fs::read_to_string(&path).is_ok_and(|old| old == text) {
            return Ok(());
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    let crates = root.join("crates");
    // The workspace's dev profile, so the shared dependencies' artifacts (torch-sys's C++ above
    // all) are reused rather than rebuilt with other settings.
    write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"downstream-check\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\
             publish = false\n\n[dependencies]\nbridge = {{ path = {bridge:?} }}\n\n\
             [build-dependencies]\ntorch-link = {{ path = {link:?} }}\n\n[workspace]\n\n\
             [profile.dev]\nopt-level = 1\ndebug = \"line-tables-only\"\n\n\
             [profile.dev.package.\"*\"]\nopt-level = 2\ndebug = false\n",
            bridge = crates.join("bridge"),
            link = crates.join("torch-link"),
        ),
    )?;
    write(
        dir.join("build.rs"),
        "fn main() { torch_link::bake_rpath(); }\n".to_owned(),
    )?;
    write(dir.join("src/main.rs"), MAIN_RS.to_owned())?;
    write(
        dir.join(".cargo/config.toml"),
        format!("[env]\nLIBTORCH = {libtorch:?}\n\n[build]\ntarget-dir = {target_dir:?}\n"),
    )?;
    // The workspace's lock file: the same versions of every shared dependency.
    let lock = std::fs::read_to_string(root.join("Cargo.lock"))
        .map_err(|e| format!("cannot read Cargo.lock: {e}"))?;
    write(dir.join("Cargo.lock"), lock)
}
