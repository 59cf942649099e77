//! Finding a model's files: a local directory, an embedded model, or the HuggingFace hub.
//!
//! [`ModelSource::resolve`] tries, in order:
//!
//! 1. **a local directory** in HuggingFace layout: `config.json`, and `model.safetensors` or a
//!    sharded `model.safetensors.index.json` with its shards; `tokenizer.json` and
//!    `tokenizer_config.json` are optional;
//! 2. **an embedded model**: a directory `<models cache>/<name>/` in the same layout. The models
//!    cache is [`ResolveOptions::models_cache`], else `$TLRS_MODELS_CACHE`, else the workspace's
//!    `models-cache/` (which holds [`DEFAULT_MODEL`]);
//! 3. **a HuggingFace hub id** (`gpt2`, `org/name`), through the hub's standard cache layout
//!    (`models--org--name/refs/<revision>`, `snapshots/<commit>/...`), so a cache filled by
//!    Python's `huggingface_hub` is reused as is. A complete cached snapshot is used without
//!    contacting the hub; otherwise the files are downloaded with `hf-hub`, unless offline.
//!
//! Hub settings follow `huggingface_hub`: `HF_HUB_CACHE` (or `HUGGINGFACE_HUB_CACHE`, else
//! `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`),
//! `HF_ENDPOINT`, `HF_HUB_OFFLINE`, `HF_TOKEN`. Each has a [`ResolveOptions`] field that wins
//! over the environment.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use crate::error::{LensError, Result};
use crate::weights::ShardIndex;

/// The embedded model used when none is named.
pub const DEFAULT_MODEL: &str = "tiny-gpt2";

/// The public HuggingFace hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

const WORKSPACE_MODELS_CACHE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models-cache");

/// Where [`ModelSource::resolve`] looks. Every `None` falls back to the environment, then to
/// the default; see the [module docs](self).
#[derive(Clone, Debug, Default)]
pub struct ResolveOptions {
    /// The directory of embedded models (default: `$TLRS_MODELS_CACHE`, else the workspace's
    /// `models-cache/`).
    pub models_cache: Option<PathBuf>,
    /// The HuggingFace hub cache directory, the one holding `models--*` folders.
    pub hub_cache: Option<PathBuf>,
    /// The hub endpoint (default: `$HF_ENDPOINT`, else [`DEFAULT_ENDPOINT`]).
    pub endpoint: Option<String>,
    /// Use only the cache, never the network (default: `$HF_HUB_OFFLINE` is 1/on/yes/true).
    pub offline: Option<bool>,
    /// The hub revision: a branch, tag or commit (default `main`).
    pub revision: Option<String>,
    /// The hub access token (default: `$HF_TOKEN`, else the token file next to the cache).
    pub token: Option<String>,
    /// Show download progress bars on stderr.
    pub progress: bool,
}

impl ResolveOptions {
    /// The embedded models directory in effect: the option, else `$TLRS_MODELS_CACHE`, else the
    /// first existing one of [`default_models_caches`] (the last of them when none exists).
    pub fn models_cache_dir(&self) -> PathBuf {
        self.models_cache
            .clone()
            .or_else(|| env_path("TLRS_MODELS_CACHE"))
            .unwrap_or_else(|| {
                let candidates = default_models_caches();
                candidates
                    .iter()
                    .find(|dir| dir.is_dir())
                    .or(candidates.last())
                    .cloned()
                    .unwrap_or_else(|| normalize(Path::new(WORKSPACE_MODELS_CACHE)))
            })
    }

    /// The embedded models of the models cache in effect (directories with a `config.json`),
    /// sorted.
    pub fn embedded_models(&self) -> Vec<String> {
        embedded_models(&self.models_cache_dir())
    }

    /// The hub cache directory in effect, or `None` when neither an option, an environment
    /// variable nor a home directory gives one.
    pub fn hub_cache_dir(&self) -> Option<PathBuf> {
        if let Some(dir) = &self.hub_cache {
            return Some(dir.clone());
        }
        if let Some(dir) = env_path("HF_HUB_CACHE").or_else(|| env_path("HUGGINGFACE_HUB_CACHE")) {
            return Some(dir);
        }
        let hf_home = env_path("HF_HOME").or_else(|| {
            env_path("XDG_CACHE_HOME")
                .or_else(|| env_path("HOME").map(|h| h.join(".cache")))
                .map(|c| c.join("huggingface"))
        })?;
        Some(hf_home.join("hub"))
    }

    /// The hub endpoint in effect, without a trailing `/`.
    pub fn hub_endpoint(&self) -> String {
        let endpoint = self
            .endpoint
            .clone()
            .or_else(|| env_string("HF_ENDPOINT"))
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        endpoint.trim_end_matches('/').to_string()
    }

    /// Whether the hub must not be contacted.
    pub fn is_offline(&self) -> bool {
        self.offline.unwrap_or_else(|| {
            env_string("HF_HUB_OFFLINE").is_some_and(|v| {
                matches!(v.to_ascii_uppercase().as_str(), "1" | "ON" | "YES" | "TRUE")
            })
        })
    }

    /// The hub revision in effect.
    pub fn hub_revision(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }
}

/// Where embedded models are looked for when neither [`ResolveOptions::models_cache`] nor
/// `$TLRS_MODELS_CACHE` names a directory, in order: beside the running executable
/// (`<exe dir>/models-cache`, then `<exe dir>/../share/transformer-lens-rs/models-cache`, for a
/// binary installed or copied together with the models), then the `models-cache/` of the source
/// tree this library was built from (what `cargo run` and `cargo install --path` use).
pub fn default_models_caches() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        dirs.push(exe_dir.join("models-cache"));
        dirs.push(exe_dir.join("../share/transformer-lens-rs/models-cache"));
    }
    dirs.push(normalize(Path::new(WORKSPACE_MODELS_CACHE)));
    dirs.into_iter().map(|d| normalize(&d)).collect()
}

/// Where a model's files came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A local directory given by path.
    LocalDir,
    /// An embedded model of the models cache.
    Embedded {
        /// Its name (the directory name).
        name: String,
    },
    /// The HuggingFace hub cache, without network access.
    HubCache {
        /// The repo id, e.g. `gpt2` or `org/name`.
        repo_id: String,
        /// The revision asked for.
        revision: String,
        /// The commit of the snapshot.
        commit: String,
    },
    /// Downloaded from the hub into its cache just now.
    HubDownload {
        /// The repo id.
        repo_id: String,
        /// The revision asked for.
        revision: String,
        /// The commit of the snapshot.
        commit: String,
        /// The endpoint downloaded from.
        endpoint: String,
    },
}

/// The files of one model, all existing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelFiles {
    /// The directory holding `config.json` (for the hub: the snapshot directory).
    pub dir: PathBuf,
    /// `config.json`.
    pub config: PathBuf,
    /// The safetensors files: `model.safetensors`, or every shard of a sharded checkpoint.
    pub weights: Vec<PathBuf>,
    /// `model.safetensors.index.json`, for a sharded checkpoint.
    pub weights_index: Option<PathBuf>,
    /// `tokenizer.json`, when the model has one.
    pub tokenizer: Option<PathBuf>,
    /// `tokenizer_config.json`, when the model has one (its special tokens name BOS, EOS and
    /// padding the way transformers' tokenizers read them).
    pub tokenizer_config: Option<PathBuf>,
    /// Where the files came from.
    pub origin: Origin,
}

impl ModelFiles {
    /// The files of a model directory in HuggingFace layout.
    ///
    /// Errors with [`LensError::NotAModelDir`] naming what is missing.
    pub fn from_dir(dir: impl AsRef<Path>, origin: Origin) -> Result<Self> {
        let dir = dir.as_ref();
        let not_model = |message: String| LensError::NotAModelDir {
            dir: dir.to_path_buf(),
            message,
        };
        let config = dir.join("config.json");
        if !config.is_file() {
            return Err(not_model("no config.json".to_string()));
        }
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let (weights, weights_index) = if single.is_file() {
            (vec![single], None)
        } else if index.is_file() {
            let shards = ShardIndex::read(&index)?.shard_paths();
            let missing: Vec<String> = shards
                .iter()
                .filter(|s| !s.is_file())
                .map(|s| file_name(s))
                .collect();
            if !missing.is_empty() {
                return Err(not_model(format!(
                    "model.safetensors.index.json names shards that are missing: {}",
                    missing.join(", ")
                )));
            }
            (shards, Some(index))
        } else {
            let present = list_dir(dir);
            let hint = if present.iter().any(|f| f.ends_with(".bin")) {
                " (only PyTorch pickle weights; convert them to safetensors)"
            } else {
                ""
            };
            return Err(not_model(format!(
                "no model.safetensors or model.safetensors.index.json{hint}; it holds: {}",
                if present.is_empty() {
                    "nothing".to_string()
                } else {
                    present.join(", ")
                }
            )));
        };
        let tokenizer = Some(dir.join("tokenizer.json")).filter(|p| p.is_file());
        let tokenizer_config = Some(dir.join("tokenizer_config.json")).filter(|p| p.is_file());
        Ok(ModelFiles {
            dir: dir.to_path_buf(),
            config,
            weights,
            weights_index,
            tokenizer,
            tokenizer_config,
            origin,
        })
    }

    /// What to hand to [`Weights::load`](crate::Weights::load): the shard index when there is
    /// one (so its consistency is checked), else the safetensors files.
    pub fn weight_sources(&self) -> Vec<PathBuf> {
        match &self.weights_index {
            Some(index) => vec![index.clone()],
            None => self.weights.clone(),
        }
    }
}

/// Turns a model name into its files; see the [module docs](self).
#[derive(Clone, Copy, Debug)]
pub struct ModelSource;

impl ModelSource {
    /// Resolves `model`: a local directory, an embedded model name, or a hub id, in that order.
    ///
    /// A name found nowhere is a [`LensError::ModelNotFound`] listing every place tried and why
    /// it did not match. A local directory that is not a model directory is a
    /// [`LensError::NotAModelDir`].
    pub fn resolve(model: &str, opts: &ResolveOptions) -> Result<ModelFiles> {
        let mut looked = Vec::new();

        if model.is_empty() {
            return Err(LensError::ModelNotFound {
                model: String::new(),
                looked: vec!["nowhere: the model name is empty".to_string()],
            });
        }

        let local = Path::new(model);
        if local.is_dir() {
            return ModelFiles::from_dir(local, Origin::LocalDir);
        }
        looked.push(if local.exists() {
            format!(
                "local path {}: a file, not a model directory",
                local.display()
            )
        } else {
            format!("local directory {}: does not exist", local.display())
        });

        let models_cache = opts.models_cache_dir();
        if is_plain_name(model) {
            let dir = models_cache.join(model);
            if dir.join("config.json").is_file() {
                return ModelFiles::from_dir(
                    &dir,
                    Origin::Embedded {
                        name: model.to_string(),
                    },
                );
            }
            let available = embedded_models(&models_cache);
            let also = if opts.models_cache.is_some() || env_path("TLRS_MODELS_CACHE").is_some() {
                String::new()
            } else {
                let others: Vec<String> = default_models_caches()
                    .iter()
                    .filter(|dir| **dir != models_cache)
                    .map(|dir| dir.display().to_string())
                    .collect();
                format!("; also looked for a models cache in {}", others.join(", "))
            };
            let searched = format!(
                "{also}; set TLRS_MODELS_CACHE to the directory holding {model}/ (the \
                 repository's models-cache/), or pass the model's own directory"
            );
            looked.push(format!(
                "embedded models in {}: no '{model}' (available: {}){searched}",
                models_cache.display(),
                if available.is_empty() {
                    "none".to_string()
                } else {
                    available.join(", ")
                }
            ));
        } else {
            looked.push(format!(
                "embedded models in {}: '{model}' is not a plain name",
                models_cache.display()
            ));
        }

        if !is_repo_id(model) {
            looked.push(format!("HuggingFace hub: '{model}' is not a valid repo id"));
            return Err(LensError::ModelNotFound {
                model: model.to_string(),
                looked,
            });
        }
        let revision = opts.hub_revision().to_string();
        let Some(hub_cache) = opts.hub_cache_dir() else {
            looked.push(
                "HuggingFace hub cache: no location (no HF_HUB_CACHE, HF_HOME or home directory)"
                    .to_string(),
            );
            return Err(LensError::ModelNotFound {
                model: model.to_string(),
                looked,
            });
        };
        let repo_dir = hub_cache.join(repo_folder(model));
        match cached_snapshot(&repo_dir, &revision) {
            Some((commit, snapshot)) => {
                let origin = Origin::HubCache {
                    repo_id: model.to_string(),
                    revision: revision.clone(),
                    commit,
                };
                match ModelFiles::from_dir(&snapshot, origin) {
                    Ok(files) => return Ok(files),
                    Err(e) => {
                        looked.push(format!("HuggingFace hub cache: incomplete snapshot: {e}"))
                    }
                }
            }
            None => looked.push(format!(
                "HuggingFace hub cache {}: no snapshot for revision '{revision}'",
                repo_dir.display()
            )),
        }

        let endpoint = opts.hub_endpoint();
        if opts.is_offline() {
            looked.push(format!(
                "HuggingFace hub {endpoint}: not contacted, offline (HF_HUB_OFFLINE or ResolveOptions::offline)"
            ));
        } else {
            match download(model, &revision, &hub_cache, &endpoint, opts) {
                Ok(files) => return Ok(files),
                Err(message) => looked.push(format!("HuggingFace hub {endpoint}: {message}")),
            }
        }
        Err(LensError::ModelNotFound {
            model: model.to_string(),
            looked,
        })
    }
}

/// Downloads what a model needs into the hub cache; the error is a sentence for
/// [`LensError::ModelNotFound`].
fn download(
    repo_id: &str,
    revision: &str,
    hub_cache: &Path,
    endpoint: &str,
    opts: &ResolveOptions,
) -> std::result::Result<ModelFiles, String> {
    let mut builder = ApiBuilder::from_cache(Cache::new(hub_cache.to_path_buf()))
        .with_endpoint(endpoint.to_string())
        .with_progress(opts.progress);
    if let Some(token) = opts.token.clone().or_else(|| env_string("HF_TOKEN")) {
        builder = builder.with_token(Some(token));
    }
    let api = builder
        .build()
        .map_err(|e| format!("cannot create the hub client: {e}"))?;
    let repo = api.repo(Repo::with_revision(
        repo_id.to_string(),
        RepoType::Model,
        revision.to_string(),
    ));
    let info = repo
        .info()
        .map_err(|e| format!("cannot list repo '{repo_id}' at revision '{revision}': {e}"))?;
    let listed: BTreeSet<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    let fetch = |name: &str| {
        repo.download(name)
            .map_err(|e| format!("downloading {name} of '{repo_id}' failed: {e}"))
    };
    if !listed.contains("config.json") {
        return Err(format!("repo '{repo_id}' has no config.json"));
    }
    let config = fetch("config.json")?;
    let (weights, weights_index) = if listed.contains("model.safetensors") {
        (vec![fetch("model.safetensors")?], None)
    } else if listed.contains("model.safetensors.index.json") {
        let index_path = fetch("model.safetensors.index.json")?;
        let index = ShardIndex::read(&index_path).map_err(|e| e.to_string())?;
        let mut shards = Vec::new();
        for shard in index.shard_names() {
            shards.push(fetch(&shard)?);
        }
        (shards, Some(index_path))
    } else {
        let files: Vec<&str> = listed.iter().copied().collect();
        return Err(format!(
            "repo '{repo_id}' has no model.safetensors or model.safetensors.index.json (files: {})",
            files.join(", ")
        ));
    };
    let optional = |name: &str| {
        if listed.contains(name) {
            fetch(name).map(Some)
        } else {
            Ok(None)
        }
    };
    let tokenizer = optional("tokenizer.json")?;
    let tokenizer_config = optional("tokenizer_config.json")?;
    let dir = config
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| hub_cache.to_path_buf());
    let commit = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| info.sha.clone());
    Ok(ModelFiles {
        dir,
        config,
        weights,
        weights_index,
        tokenizer,
        tokenizer_config,
        origin: Origin::HubDownload {
            repo_id: repo_id.to_string(),
            revision: revision.to_string(),
            commit,
            endpoint: endpoint.to_string(),
        },
    })
}

/// The cache folder of a model repo: `models--org--name`.
fn repo_folder(repo_id: &str) -> String {
    format!("models--{}", repo_id.replace('/', "--"))
}

/// The snapshot of `revision` in a repo's cache folder: `refs/<revision>` names the commit, or
/// the revision is itself a commit with a snapshot.
fn cached_snapshot(repo_dir: &Path, revision: &str) -> Option<(String, PathBuf)> {
    let snapshots = repo_dir.join("snapshots");
    if let Ok(commit) = std::fs::read_to_string(repo_dir.join("refs").join(revision)) {
        let commit = commit.trim().to_string();
        let dir = snapshots.join(&commit);
        if !commit.is_empty() && is_plain_name(&commit) && dir.is_dir() {
            return Some((commit, dir));
        }
    }
    let dir = snapshots.join(revision);
    if is_plain_name(revision) && dir.is_dir() {
        return Some((revision.to_string(), dir));
    }
    None
}

/// The embedded models (directories with a `config.json`) of a models cache, sorted.
fn embedded_models(models_cache: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(models_cache)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("config.json").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn list_dir(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// One path component that is not `.` or `..`.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\'])
}

/// A HuggingFace repo id: `name` or `namespace/name`, each of letters, digits, `-`, `_`, `.`,
/// not starting or ending with `-` or `.`, without `--` or `..`, at most 96 characters.
fn is_repo_id(id: &str) -> bool {
    let parts: Vec<&str> = id.split('/').collect();
    id.len() <= 96
        && !id.contains("--")
        && !id.contains("..")
        && (1..=2).contains(&parts.len())
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && !p.starts_with(['-', '.'])
                && !p.ends_with(['-', '.'])
        })
}

fn env_string(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// An environment variable as a path, with a leading `~` expanded like Python's `expanduser`.
fn env_path(name: &str) -> Option<PathBuf> {
    let value = env_string(name)?;
    if value == "~" || value.starts_with("~/") {
        if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            return Some(
                PathBuf::from(home).join(value.trim_start_matches('~').trim_start_matches('/')),
            );
        }
    }
    Some(PathBuf::from(value))
}

/// Removes `..` components lexically (the workspace path is built from `CARGO_MANIFEST_DIR`).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            std::path::Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids() {
        for ok in [
            "gpt2",
            "openai-community/gpt2",
            "EleutherAI/pythia-70m",
            "a.b_c/d-1",
        ] {
            assert!(is_repo_id(ok), "{ok}");
        }
        for bad in [
            "", "/gpt2", "a/b/c", "a--b", "../x", "a b", "-a", "a.", "x/",
        ] {
            assert!(!is_repo_id(bad), "{bad}");
        }
        assert_eq!(repo_folder("org/name"), "models--org--name");
        assert_eq!(repo_folder("gpt2"), "models--gpt2");
    }

    #[test]
    fn workspace_models_cache_is_normalized() {
        let dir = ResolveOptions::default();
        let explicit = ResolveOptions {
            models_cache: Some(PathBuf::from("/somewhere")),
            ..Default::default()
        };
        assert_eq!(explicit.models_cache_dir(), PathBuf::from("/somewhere"));
        if std::env::var_os("TLRS_MODELS_CACHE").is_none() {
            let got = dir.models_cache_dir();
            assert!(got.ends_with("models-cache"), "{}", got.display());
            assert!(!got
                .components()
                .any(|c| c == std::path::Component::ParentDir));
        }
    }

    #[test]
    fn explicit_options_win_over_the_environment() {
        let opts = ResolveOptions {
            hub_cache: Some(PathBuf::from("/hub")),
            endpoint: Some("http://127.0.0.1:9/".to_string()),
            offline: Some(false),
            revision: Some("v1".to_string()),
            ..Default::default()
        };
        assert_eq!(opts.hub_cache_dir(), Some(PathBuf::from("/hub")));
        assert_eq!(opts.hub_endpoint(), "http://127.0.0.1:9");
        assert!(!opts.is_offline());
        assert_eq!(opts.hub_revision(), "v1");
        let offline = ResolveOptions {
            offline: Some(true),
            ..Default::default()
        };
        assert!(offline.is_offline());
    }
}
