//! Provisioning libtorch 2.13.0 and pointing cargo at it.
//!
//! The one source reachable everywhere we run is PyPI's `torch==2.13.0` wheel: its `torch/`
//! directory is a complete libtorch (`lib/`, `include/`), CUDA-enabled. We link
//! `<repo>/.libtorch` to such a directory; `.cargo/config.toml` sets `LIBTORCH` to that link for
//! every cargo command, and the crates' build scripts bake its `lib/` into every binary's rpath.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The libtorch version tch 0.26.0 is generated against.
const TORCH_VERSION: &str = "2.13.0";

/// The name of the link in the repository root.
const LINK_NAME: &str = ".libtorch";

/// Makes sure `<root>/.libtorch` points at a usable libtorch 2.13.0 and returns its real path.
pub fn setup(root: &Path) -> Result<PathBuf, String> {
    let link = root.join(LINK_NAME);
    if let Some(explicit) = explicit_libtorch(root) {
        check_libtorch(&explicit)?;
        return point_link(&link, &explicit);
    }
    if check_libtorch(&link).is_ok() {
        return canonical(&link);
    }
    let venv = std::env::var_os("TLRS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".venv"));
    if let Some(dir) = torch_dir_of(&venv_python(&venv)) {
        if check_libtorch(&dir).is_ok() {
            return point_link(&link, &dir);
        }
    }
    if let Some(dir) = torch_dir_of(Path::new("python3")) {
        if check_libtorch(&dir).is_ok() {
            println!(
                "using the torch {TORCH_VERSION} that python3 imports: {}",
                dir.display()
            );
            return point_link(&link, &dir);
        }
    }
    install_into_venv(&venv)?;
    let dir = torch_dir_of(&venv_python(&venv)).ok_or_else(|| {
        format!(
            "torch was installed into {} but cannot be imported",
            venv.display()
        )
    })?;
    check_libtorch(&dir)?;
    point_link(&link, &dir)
}

/// The real directory `.libtorch` points to, once set up.
pub fn resolved(root: &Path) -> Result<PathBuf, String> {
    let link = root.join(LINK_NAME);
    check_libtorch(&link).map_err(|e| format!("{e}\nrun `cargo xtask setup` first"))?;
    canonical(&link)
}

/// LIBTORCH when the user set it to something other than our own link (which is what
/// .cargo/config.toml passes to every cargo-run process, this one included).
fn explicit_libtorch(root: &Path) -> Option<PathBuf> {
    let value = PathBuf::from(std::env::var_os("LIBTORCH")?);
    let ours = root.join(LINK_NAME);
    (value != ours && canonical(&value).ok() != canonical(&ours).ok()).then_some(value)
}

fn canonical(path: &Path) -> Result<PathBuf, String> {
    fs::canonicalize(path).map_err(|e| format!("cannot resolve {}: {e}", path.display()))
}

/// Checks that `dir` is a libtorch of the right version, with libraries and headers.
fn check_libtorch(dir: &Path) -> Result<(), String> {
    let shown = dir.display();
    if !dir.join("lib/libtorch_cpu.so").exists() {
        return Err(format!(
            "{shown} is not a libtorch directory (no lib/libtorch_cpu.so)"
        ));
    }
    if !dir.join("include/torch").is_dir() {
        return Err(format!(
            "{shown} has no C++ headers (include/torch): a libtorch or a torch wheel is needed"
        ));
    }
    match libtorch_version(dir) {
        Some(version) if version == TORCH_VERSION => Ok(()),
        Some(version) => Err(format!(
            "{shown} is torch {version}, but tch 0.26.0 needs exactly torch {TORCH_VERSION}"
        )),
        None => Err(format!(
            "cannot tell the torch version of {shown} (no version.py or build-version)"
        )),
    }
}

/// The version of a torch wheel directory (`version.py`) or a libtorch zip (`build-version`),
/// without a local suffix such as `+cu130`.
fn libtorch_version(dir: &Path) -> Option<String> {
    let raw = if let Ok(text) = fs::read_to_string(dir.join("version.py")) {
        let line = text.lines().find(|l| l.starts_with("__version__"))?;
        line.split(['\'', '"']).nth(1)?.to_owned()
    } else {
        fs::read_to_string(dir.join("build-version"))
            .ok()?
            .trim()
            .to_owned()
    };
    Some(raw.split('+').next()?.to_owned())
}

fn point_link(link: &Path, target: &Path) -> Result<PathBuf, String> {
    let target = canonical(target)?;
    if fs::read_link(link).ok().as_deref() != Some(target.as_path()) {
        if link.symlink_metadata().is_ok() {
            fs::remove_file(link).map_err(|e| format!("cannot replace {}: {e}", link.display()))?;
        }
        std::os::unix::fs::symlink(&target, link).map_err(|e| {
            format!(
                "cannot link {} -> {}: {e}",
                link.display(),
                target.display()
            )
        })?;
        println!("linked {} -> {}", link.display(), target.display());
    }
    Ok(target)
}

fn venv_python(venv: &Path) -> PathBuf {
    venv.join("bin/python")
}

/// The `torch` package directory that `python` imports, if any.
fn torch_dir_of(python: &Path) -> Option<PathBuf> {
    let output = Command::new(python)
        .args([
            "-c",
            "import os, torch; print(os.path.dirname(torch.__file__))",
        ])
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let dir = String::from_utf8(output.stdout).ok()?;
    Some(PathBuf::from(dir.trim()))
}

/// Creates `venv` with python3 if it does not exist yet; returns its interpreter.
pub fn ensure_venv(venv: &Path) -> Result<PathBuf, String> {
    let python = venv_python(venv);
    if python.exists() {
        return Ok(python);
    }
    let version = Command::new("python3").arg("--version").output().map_err(|_| {
        "python3 not found: install Python 3.10 or newer (e.g. `apt-get install python3 python3-venv`), \
         or point LIBTORCH at an existing libtorch 2.13.0"
            .to_owned()
    })?;
    println!(
        "creating a virtual environment at {} ({})",
        venv.display(),
        String::from_utf8_lossy(&version.stdout).trim()
    );
    let output = Command::new("python3")
        .args(["-m", "venv"])
        .arg(venv)
        .output()
        .map_err(|e| format!("cannot run python3 -m venv: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "python3 cannot create a virtual environment (is the venv module installed? e.g. \
             `apt-get install python3-venv`):\n{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let pip = Command::new(&python)
        .args(["-m", "pip", "--version"])
        .output();
    if !pip.is_ok_and(|o| o.status.success()) {
        return Err(format!(
            "the new virtual environment at {} has no pip (install python3-pip)",
            venv.display()
        ));
    }
    Ok(python)
}

/// `python -m pip install --quiet --disable-pip-version-check`, for the caller to name what.
pub fn pip_install(python: &Path) -> Command {
    let mut command = Command::new(python);
    command.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ]);
    command
}

fn install_into_venv(venv: &Path) -> Result<(), String> {
    let python = ensure_venv(venv)?;
    println!(
        "installing torch=={TORCH_VERSION} from PyPI into {} (about 5 GB, a few minutes)",
        venv.display()
    );
    let status = pip_install(&python)
        .arg(format!("torch=={TORCH_VERSION}"))
        .status()
        .map_err(|e| format!("cannot run pip: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "pip could not install torch=={TORCH_VERSION} into {} ({status})",
            venv.display()
        ))
    }
}
