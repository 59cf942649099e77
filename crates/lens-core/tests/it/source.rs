//! Model resolution: local directories, embedded models, the hub cache.

use std::path::{Path, PathBuf};

use lens_core::{
    load, LensError, LoadOptions, ModelFiles, ModelSource, Origin, ResolveOptions, DEFAULT_MODEL,
};
use tch::Device;

use crate::common::{
    assert_message, assert_tensor_eq, tiny_gpt2_dir, toy_tokenizer, write_model_dir,
};

/// Options that depend on nothing in the environment: an empty models cache and hub cache,
/// offline.
fn isolated(root: &Path) -> ResolveOptions {
    ResolveOptions {
        models_cache: Some(root.join("models-cache")),
        hub_cache: Some(root.join("hub")),
        endpoint: Some("http://127.0.0.1:9".to_string()),
        offline: Some(true),
        ..Default::default()
    }
}

#[test]
fn local_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("my model");
    let tok = toy_tokenizer();
    write_model_dir(&dir, false, Some(&tok));
    let files = ModelSource::resolve(dir.to_str().unwrap(), &isolated(tmp.path())).unwrap();
    assert_eq!(
        files,
        ModelFiles {
            dir: dir.clone(),
            config: dir.join("config.json"),
            weights: vec![dir.join("model.safetensors")],
            weights_index: None,
            tokenizer: Some(dir.join("tokenizer.json")),
            tokenizer_config: None,
            origin: Origin::LocalDir,
        }
    );
    assert_eq!(files.weight_sources(), vec![dir.join("model.safetensors")]);
}

#[test]
fn local_sharded_directory_without_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sharded");
    write_model_dir(&dir, true, None);
    let files = ModelSource::resolve(dir.to_str().unwrap(), &isolated(tmp.path())).unwrap();
    assert_eq!(
        files.weights,
        vec![
            dir.join("model-00001-of-00002.safetensors"),
            dir.join("model-00002-of-00002.safetensors")
        ]
    );
    let index = dir.join("model.safetensors.index.json");
    assert_eq!(files.weights_index.as_ref(), Some(&index));
    assert_eq!(files.weight_sources(), vec![index]);
    assert_eq!(files.tokenizer, None);
}

#[test]
fn local_directory_that_is_not_a_model() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("empty");
    std::fs::create_dir_all(&dir).unwrap();
    let err = ModelSource::resolve(dir.to_str().unwrap(), &isolated(tmp.path())).unwrap_err();
    assert!(matches!(err, LensError::NotAModelDir { .. }), "{err:?}");
    assert_message(&err, &[&dir.display().to_string(), "no config.json"]);

    std::fs::write(dir.join("config.json"), "{}").unwrap();
    std::fs::write(dir.join("pytorch_model.bin"), "x").unwrap();
    let err = ModelSource::resolve(dir.to_str().unwrap(), &isolated(tmp.path())).unwrap_err();
    assert_message(
        &err,
        &[
            "no model.safetensors or model.safetensors.index.json",
            "pickle",
            "config.json, pytorch_model.bin",
        ],
    );

    // An index whose shard is missing.
    let sharded = tmp.path().join("sharded");
    write_model_dir(&sharded, true, None);
    std::fs::remove_file(sharded.join("model-00002-of-00002.safetensors")).unwrap();
    let err = ModelSource::resolve(sharded.to_str().unwrap(), &isolated(tmp.path())).unwrap_err();
    assert_message(
        &err,
        &["shards that are missing: model-00002-of-00002.safetensors"],
    );
}

#[test]
fn embedded_model_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = isolated(tmp.path());
    let dir = opts.models_cache.clone().unwrap().join("toy");
    write_model_dir(&dir, false, None);
    let files = ModelSource::resolve("toy", &opts).unwrap();
    assert_eq!(
        files.origin,
        Origin::Embedded {
            name: "toy".to_string()
        }
    );
    assert_eq!(files.config, dir.join("config.json"));
    assert_eq!(files.weights, vec![dir.join("model.safetensors")]);
}

#[test]
fn default_embedded_model_in_the_workspace() {
    let tmp = tempfile::tempdir().unwrap();
    // With no option, the models cache is $TLRS_MODELS_CACHE or the workspace's models-cache/;
    // only the latter is known to hold the default model.
    let models_cache = std::env::var_os("TLRS_MODELS_CACHE")
        .map(|_| tiny_gpt2_dir().parent().unwrap().to_path_buf());
    let opts = ResolveOptions {
        models_cache,
        ..isolated(tmp.path())
    };
    let files = ModelSource::resolve(DEFAULT_MODEL, &opts).unwrap();
    assert_eq!(
        files.origin,
        Origin::Embedded {
            name: DEFAULT_MODEL.to_string()
        }
    );
    let canonical = |p: &Path| p.canonicalize().unwrap();
    assert_eq!(canonical(&files.dir), canonical(&tiny_gpt2_dir()));
    assert!(files.tokenizer.is_some());
}

#[test]
fn unknown_name_lists_every_place_looked() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = isolated(tmp.path());
    let toy = opts.models_cache.clone().unwrap().join("toy");
    write_model_dir(&toy, false, None);
    let err = ModelSource::resolve("no-such-model", &opts).unwrap_err();
    assert!(matches!(err, LensError::ModelNotFound { .. }), "{err:?}");
    let models_cache = opts.models_cache.as_ref().unwrap().display().to_string();
    let repo = opts
        .hub_cache
        .as_ref()
        .unwrap()
        .join("models--no-such-model");
    assert_message(
        &err,
        &[
            "model 'no-such-model' not found",
            "local directory no-such-model: does not exist",
            &format!("embedded models in {models_cache}: no 'no-such-model' (available: toy)"),
            &format!("HuggingFace hub cache {}", repo.display()),
            "not contacted, offline",
        ],
    );
    match &err {
        LensError::ModelNotFound { looked, .. } => assert_eq!(looked.len(), 4, "{looked:?}"),
        _ => unreachable!(),
    }
}

#[test]
fn offline_hub_id_with_nothing_cached() {
    let tmp = tempfile::tempdir().unwrap();
    let err = ModelSource::resolve("openai-community/gpt2", &isolated(tmp.path())).unwrap_err();
    assert_message(
        &err,
        &[
            "'openai-community/gpt2' is not a plain name",
            "models--openai-community--gpt2: no snapshot for revision 'main'",
            "HuggingFace hub http://127.0.0.1:9: not contacted, offline",
        ],
    );
}

#[test]
fn invalid_names() {
    let tmp = tempfile::tempdir().unwrap();
    let err = ModelSource::resolve("a b/c/d", &isolated(tmp.path())).unwrap_err();
    assert_message(&err, &["'a b/c/d' is not a valid repo id"]);
    let err = ModelSource::resolve("", &isolated(tmp.path())).unwrap_err();
    assert_message(&err, &["the model name is empty"]);
}

/// Lays out a hub cache the way Python's huggingface_hub does: blobs named by hash, snapshot
/// files as relative symlinks to them, refs/main holding the commit without a newline.
fn python_style_cache(hub: &Path, repo_id: &str, commit: &str, source: &Path) -> PathBuf {
    let repo = hub.join(format!("models--{}", repo_id.replace('/', "--")));
    let blobs = repo.join("blobs");
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    for (i, entry) in std::fs::read_dir(source).unwrap().enumerate() {
        let entry = entry.unwrap();
        let blob = format!("{:064x}", i + 1);
        std::fs::copy(entry.path(), blobs.join(&blob)).unwrap();
        std::os::unix::fs::symlink(
            Path::new("../../blobs").join(&blob),
            snapshot.join(entry.file_name()),
        )
        .unwrap();
    }
    snapshot
}

#[test]
fn python_huggingface_hub_cache_is_used_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("source");
    let tok = toy_tokenizer();
    let tensors = write_model_dir(&source, false, Some(&tok));
    let opts = isolated(tmp.path());
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snapshot = python_style_cache(
        opts.hub_cache.as_ref().unwrap(),
        "some-org/toy-gpt2",
        commit,
        &source,
    );

    let files = ModelSource::resolve("some-org/toy-gpt2", &opts).unwrap();
    assert_eq!(
        files.origin,
        Origin::HubCache {
            repo_id: "some-org/toy-gpt2".to_string(),
            revision: "main".to_string(),
            commit: commit.to_string(),
        }
    );
    assert_eq!(files.config, snapshot.join("config.json"));
    assert_eq!(files.tokenizer, Some(snapshot.join("tokenizer.json")));

    // The revision may also be the commit itself.
    let by_commit = ResolveOptions {
        revision: Some(commit.to_string()),
        ..opts.clone()
    };
    assert_eq!(
        ModelSource::resolve("some-org/toy-gpt2", &by_commit)
            .unwrap()
            .dir,
        snapshot
    );

    // Loading through the symlinks gives the tensors written.
    let model = load(
        "some-org/toy-gpt2",
        &LoadOptions {
            resolve: opts,
            ..Default::default()
        },
    )
    .unwrap();
    for (name, t) in &tensors {
        assert_tensor_eq(&model.weights.get(name).unwrap(), t);
    }
    assert_eq!(model.config.n_ctx(), 16);
    let tokenizer = model.tokenizer.expect("tokenizer.json in the snapshot");
    assert_eq!(tokenizer.n_ctx(), Some(16));
    assert_eq!(tokenizer.bos_token_id(), Some(11));
    let tokens = tokenizer
        .to_tokens(&["hello world", "fox"], None, None, true)
        .unwrap();
    assert_eq!(
        Vec::<i64>::try_from(tokens.ids.reshape([-1])).unwrap(),
        vec![11, 1, 2, 11, 6, 11]
    );
}

#[test]
fn incomplete_cached_snapshot_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("source");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(
        source.join("config.json"),
        crate::common::tiny_config_json(),
    )
    .unwrap();
    let opts = isolated(tmp.path());
    python_style_cache(
        opts.hub_cache.as_ref().unwrap(),
        "org/partial",
        "abc123",
        &source,
    );
    let err = ModelSource::resolve("org/partial", &opts).unwrap_err();
    assert_message(&err, &["incomplete snapshot", "no model.safetensors"]);
}

#[test]
fn load_the_default_model() {
    let opts = LoadOptions {
        resolve: ResolveOptions {
            models_cache: Some(tiny_gpt2_dir().parent().unwrap().to_path_buf()),
            offline: Some(true),
            ..Default::default()
        },
        kind: Some(tch::Kind::Half),
        device: Device::Cpu,
        ..Default::default()
    };
    let model = load(DEFAULT_MODEL, &opts).unwrap();
    let gpt2 = model.config.as_gpt2().unwrap();
    let wte = model
        .weights
        .get_shaped("transformer.wte.weight", &[gpt2.vocab_size, gpt2.n_embd])
        .unwrap();
    assert_eq!(wte.kind(), tch::Kind::Half);
    let tokenizer = model.tokenizer.unwrap();
    assert_eq!(tokenizer.bos_token_id(), Some(50256));
    assert_eq!(
        tokenizer.pad_token_id(),
        Some(50256),
        "pad falls back to eos"
    );
    assert_eq!(tokenizer.n_ctx(), Some(256));
    let tokens = tokenizer
        .to_tokens(&["Hello world"], None, None, true)
        .unwrap();
    assert_eq!(
        Vec::<i64>::try_from(tokens.ids.reshape([-1])).unwrap(),
        vec![50256, 15496, 995]
    );
}
