//! config.json parsing.

use lens_core::{
    Activation, Gpt2Config, HfConfig, LensError, LlamaConfig, LlamaFamily, RopeScaling,
};
use rstest::rstest;
use tch::{Kind, Tensor};

use crate::common::{assert_message, tiny_gpt2_dir, workspace};

fn gpt2(json: &str) -> Gpt2Config {
    match HfConfig::from_json(json).expect("valid config") {
        HfConfig::Gpt2(c) => c,
        other => panic!("not gpt2: {other:?}"),
    }
}

#[test]
fn minimal_config_gets_every_hf_default() {
    let c = gpt2(r#"{"model_type": "gpt2"}"#);
    assert_eq!(c.vocab_size, 50257);
    assert_eq!(c.n_positions, 1024);
    assert_eq!(c.n_ctx, 1024, "n_ctx defaults to n_positions");
    assert_eq!(c.n_embd, 768);
    assert_eq!(c.n_layer, 12);
    assert_eq!(c.n_head, 12);
    assert_eq!(c.n_inner, None);
    assert_eq!(c.d_mlp(), 3072);
    assert_eq!(c.d_head(), 64);
    assert_eq!(c.activation_function, Activation::GeluNew);
    assert_eq!(c.layer_norm_epsilon, 1e-5);
    assert_eq!(c.initializer_range, 0.02);
    assert_eq!((c.resid_pdrop, c.embd_pdrop, c.attn_pdrop), (0.1, 0.1, 0.1));
    assert!(c.scale_attn_weights);
    assert!(!c.scale_attn_by_inverse_layer_idx);
    assert!(!c.reorder_and_upcast_attn);
    assert!(c.tie_word_embeddings);
    assert_eq!(c.bos_token_id, Some(50256));
    assert_eq!(c.eos_token_id, Some(50256));
    assert_eq!(c.pad_token_id, None);
    assert_eq!(c.dtype, None);
    assert!(c.architectures.is_empty());
    assert_eq!(c, Gpt2Config::default());
}

#[test]
fn every_knob_set() {
    let c = gpt2(
        r#"{
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
        "vocab_size": 100, "n_positions": 64, "n_ctx": 32, "n_embd": 48, "n_layer": 3,
        "n_head": 6, "n_inner": 200, "activation_function": "relu",
        "resid_pdrop": 0.0, "embd_pdrop": 0.2, "attn_pdrop": 0.3,
        "layer_norm_epsilon": 0.001, "initializer_range": 0.5,
        "scale_attn_weights": false, "scale_attn_by_inverse_layer_idx": true,
        "reorder_and_upcast_attn": true, "tie_word_embeddings": false,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3, "torch_dtype": "bfloat16",
        "some_future_key": {"ignored": true}
    }"#,
    );
    let expected = Gpt2Config {
        vocab_size: 100,
        n_positions: 64,
        n_ctx: 32,
        n_embd: 48,
        n_layer: 3,
        n_head: 6,
        n_inner: Some(200),
        activation_function: Activation::Relu,
        resid_pdrop: 0.0,
        embd_pdrop: 0.2,
        attn_pdrop: 0.3,
        layer_norm_epsilon: 0.001,
        initializer_range: 0.5,
        scale_attn_weights: false,
        scale_attn_by_inverse_layer_idx: true,
        reorder_and_upcast_attn: true,
        tie_word_embeddings: false,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
        pad_token_id: Some(3),
        dtype: Some("bfloat16".to_string()),
        architectures: vec!["GPT2LMHeadModel".to_string()],
    };
    assert_eq!(c, expected);
    assert_eq!(c.d_mlp(), 200);
    assert_eq!(c.d_head(), 8);
}

#[test]
fn null_special_tokens_and_architectures_only() {
    let c = gpt2(
        r#"{"architectures": ["GPT2LMHeadModel"], "bos_token_id": null, "eos_token_id": null,
            "n_inner": null, "dtype": "float16", "torch_dtype": "float32"}"#,
    );
    assert_eq!(c.bos_token_id, None);
    assert_eq!(c.eos_token_id, None);
    assert_eq!(c.d_mlp(), 4 * 768);
    assert_eq!(
        c.dtype.as_deref(),
        Some("float16"),
        "`dtype` wins over `torch_dtype`"
    );
}

#[test]
fn embedded_model_config() {
    let config = HfConfig::from_file(tiny_gpt2_dir().join("config.json")).unwrap();
    assert_eq!(config.architecture(), "GPT2LMHeadModel");
    assert_eq!(config.n_ctx(), 256);
    assert_eq!(config.vocab_size(), 50257);
    assert_eq!(config.bos_token_id(), Some(50256));
    assert_eq!(config.eos_token_id(), Some(50256));
    assert_eq!(config.pad_token_id(), None);
    let c = config.as_gpt2().unwrap();
    assert_eq!((c.n_embd, c.n_head, c.n_layer, c.d_mlp()), (64, 4, 4, 256));
    assert_eq!(c.dtype.as_deref(), Some("float32"));
}

#[test]
fn knobs_fixture_config() {
    let path = workspace().join("tests/fixtures/knobs/model/config.json");
    let c = HfConfig::from_file(&path)
        .unwrap()
        .as_gpt2()
        .unwrap()
        .clone();
    assert_eq!(c.activation_function, Activation::Relu);
    assert_eq!((c.n_embd, c.n_head, c.n_layer, c.n_ctx), (48, 3, 2, 48));
    assert_eq!(c.d_mlp(), 96);
    assert_eq!(c.layer_norm_epsilon, 1e-3);
    assert!(!c.tie_word_embeddings);
    assert!(c.scale_attn_by_inverse_layer_idx);
    assert_eq!(
        (c.bos_token_id, c.eos_token_id, c.vocab_size),
        (Some(996), Some(996), 997)
    );
}

#[rstest]
#[case::falcon(
    r#"{"model_type": "falcon", "architectures": ["FalconForCausalLM"]}"#,
    "model_type 'falcon' (FalconForCausalLM)"
)]
#[case::type_only(r#"{"model_type": "bert"}"#, "model_type 'bert'")]
#[case::arch_only(
    r#"{"architectures": ["BloomForCausalLM"]}"#,
    "architectures [BloomForCausalLM]"
)]
#[case::nothing(r#"{"n_embd": 8}"#, "neither model_type nor architectures")]
fn unsupported_architecture(#[case] json: &str, #[case] found: &str) {
    let err = HfConfig::from_json(json).unwrap_err();
    assert!(
        matches!(err, LensError::UnsupportedArchitecture { .. }),
        "{err:?}"
    );
    assert_message(
        &err,
        &[found, "gpt2 (GPT2LMHeadModel)", "qwen3 (Qwen3ForCausalLM)"],
    );
}

#[rstest]
#[case::heads(r#"{"n_embd": 10, "n_head": 3}"#, &["n_embd (10)", "n_head (3)"])]
#[case::ctx(r#"{"n_positions": 8, "n_ctx": 9}"#, &["n_ctx (9)", "n_positions (8)"])]
#[case::negative(r#"{"n_layer": -1}"#, &["n_layer must be positive, got -1"])]
#[case::zero_inner(r#"{"n_inner": 0}"#, &["n_inner must be positive"])]
#[case::eps(r#"{"layer_norm_epsilon": 0.0}"#, &["layer_norm_epsilon"])]
#[case::bos(r#"{"vocab_size": 10, "bos_token_id": 10}"#, &["bos_token_id (10)", "vocab_size 10"])]
#[case::pad(r#"{"pad_token_id": -2}"#, &["pad_token_id (-2)"])]
#[case::cross(r#"{"add_cross_attention": true}"#, &["add_cross_attention"])]
fn inconsistent_values_are_rejected(#[case] knobs: &str, #[case] parts: &[&str]) {
    let mut value: serde_json::Value = serde_json::from_str(knobs).unwrap();
    value["model_type"] = "gpt2".into();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, value.to_string()).unwrap();
    let err = HfConfig::from_file(&path).unwrap_err();
    assert!(matches!(err, LensError::InvalidConfig { .. }), "{err:?}");
    assert_message(&err, parts);
    if !knobs.contains("cross") {
        assert_message(&err, &[&path.display().to_string()]);
    }
}

#[test]
fn unknown_activation_is_named() {
    let err = HfConfig::from_json(r#"{"model_type": "gpt2", "activation_function": "gelu_fancy"}"#)
        .unwrap_err();
    assert!(
        matches!(err, LensError::UnknownActivation { .. }),
        "{err:?}"
    );
    assert_message(&err, &["'gelu_fancy'", "gelu_new", "quick_gelu"]);
}

#[test]
fn missing_unreadable_and_malformed_files() {
    let dir = tempfile::tempdir().unwrap();

    let missing = dir.path().join("nope/config.json");
    let err = HfConfig::from_file(&missing).unwrap_err();
    assert!(matches!(err, LensError::Io { .. }), "{err:?}");
    assert_message(&err, &[&missing.display().to_string()]);

    // A directory cannot be read as a file.
    let err = HfConfig::from_file(dir.path()).unwrap_err();
    assert!(matches!(err, LensError::Io { .. }), "{err:?}");
    assert_message(&err, &[&dir.path().display().to_string()]);

    let bad = dir.path().join("config.json");
    std::fs::write(&bad, "{\"model_type\": \"gpt2\",\n \"n_embd\": }").unwrap();
    let err = HfConfig::from_file(&bad).unwrap_err();
    assert!(matches!(err, LensError::MalformedJson { .. }), "{err:?}");
    assert_message(
        &err,
        &["malformed config", &bad.display().to_string(), "line 2"],
    );

    std::fs::write(&bad, r#"{"model_type": "gpt2", "n_embd": "wide"}"#).unwrap();
    let err = HfConfig::from_file(&bad).unwrap_err();
    assert_message(
        &err,
        &[&bad.display().to_string(), "invalid type: string \"wide\""],
    );

    std::fs::write(&bad, "[1, 2]").unwrap();
    let err = HfConfig::from_file(&bad).unwrap_err();
    assert_message(&err, &["expected a JSON object"]);
}

#[test]
fn activation_names_round_trip() {
    for name in Activation::NAMES {
        let act: Activation = name.parse().unwrap();
        let canonical = if *name == "swish" { "silu" } else { name };
        assert_eq!(act.name(), canonical);
        assert_eq!(act.to_string(), canonical);
    }
}

#[rstest]
#[case::gelu(Activation::Gelu, 0.8413447460685429)]
#[case::gelu_python(Activation::GeluPython, 0.8413447460685429)]
#[case::gelu_new(Activation::GeluNew, 0.8411919906082768)]
#[case::gelu_accurate(Activation::GeluAccurate, 0.8411919906082768)]
#[case::gelu_fast(Activation::GeluFast, 0.8411919906082768)]
#[case::gelu_tanh(Activation::GeluPytorchTanh, 0.8411919906082768)]
#[case::gelu_10(Activation::Gelu10, 0.8413447460685429)]
#[case::quick_gelu(Activation::QuickGelu, 0.8457957659328212)]
#[case::relu(Activation::Relu, 1.0)]
#[case::relu2(Activation::Relu2, 1.0)]
#[case::relu6(Activation::Relu6, 1.0)]
#[case::leaky(Activation::LeakyRelu, 1.0)]
#[case::silu(Activation::Silu, 0.7310585786300049)]
#[case::mish(Activation::Mish, 0.8650983882673103)]
#[case::tanh(Activation::Tanh, 0.7615941559557649)]
#[case::sigmoid(Activation::Sigmoid, 0.7310585786300049)]
#[case::linear(Activation::Linear, 1.0)]
fn activation_values_at_one(#[case] act: Activation, #[case] at_one: f64) {
    let x = Tensor::from_slice(&[1.0f64]);
    let got = act.apply(&x).double_value(&[0]);
    assert!((got - at_one).abs() < 1e-9, "{act}: {got} vs {at_one}");
}

#[test]
fn activation_shapes_of_negative_and_large_inputs() {
    let x = Tensor::from_slice(&[-2.0f32, 3.0, 8.0, 20.0]);
    let v = |a: Activation| Vec::<f32>::try_from(a.apply(&x)).unwrap();
    assert_eq!(v(Activation::Relu), vec![0.0, 3.0, 8.0, 20.0]);
    assert_eq!(v(Activation::Relu2), vec![0.0, 9.0, 64.0, 400.0]);
    assert_eq!(v(Activation::Relu6), vec![0.0, 3.0, 6.0, 6.0]);
    assert_eq!(v(Activation::Gelu10)[3], 10.0);
    assert_eq!(v(Activation::LeakyRelu)[0], -0.02);
    assert_eq!(v(Activation::Linear), vec![-2.0, 3.0, 8.0, 20.0]);
    assert_eq!(Activation::GeluNew.apply(&x).kind(), Kind::Float);
    // gelu_new is exactly the GPT-2 formula, op for op.
    let c = (2.0f64 / std::f64::consts::PI).sqrt();
    let manual = (&x * 0.5) * (((&x + x.pow_tensor_scalar(3.0) * 0.044715) * c).tanh() + 1.0);
    assert!(Activation::GeluNew.apply(&x).equal(&manual));
}

fn llama(json: &str) -> LlamaConfig {
    match HfConfig::from_json(json).expect("valid config") {
        HfConfig::Llama(c) => c,
        other => panic!("not a Llama-family config: {other:?}"),
    }
}

#[test]
fn llama_family_configs_get_their_family_defaults() {
    let l = llama(r#"{"model_type": "llama"}"#);
    assert_eq!(l.family, LlamaFamily::Llama);
    assert_eq!(
        (
            l.vocab_size,
            l.hidden_size,
            l.intermediate_size,
            l.num_hidden_layers
        ),
        (32000, 4096, 11008, 32)
    );
    assert_eq!(
        (l.num_attention_heads, l.num_key_value_heads, l.head_dim),
        (32, 32, 128)
    );
    assert_eq!(
        (l.bos_token_id, l.eos_token_ids.as_slice()),
        (Some(1), &[2][..])
    );
    assert_eq!(l.hidden_act, Activation::Silu);
    assert_eq!((l.rms_norm_eps, l.max_position_embeddings), (1e-6, 2048));
    assert!(!l.tie_word_embeddings && !l.qkv_bias && !l.o_bias && !l.mlp_bias);
    assert_eq!(l.qk_norm, lens_core::config::QkNorm::None);
    assert_eq!((l.rope.theta, l.rope.scaling), (10000.0, RopeScaling::None));
    assert!(l.layer_windows.iter().all(Option::is_none));

    let m = llama(r#"{"architectures": ["MistralForCausalLM"]}"#);
    assert_eq!(m.family, LlamaFamily::Mistral);
    assert_eq!((m.num_key_value_heads, m.intermediate_size), (8, 14336));
    assert_eq!(m.layer_windows, vec![Some(4096); 32]);
    let m = llama(r#"{"model_type": "mistral", "sliding_window": null}"#);
    assert!(m.layer_windows.iter().all(Option::is_none));
    let l = llama(r#"{"model_type": "llama", "bos_token_id": null, "eos_token_id": [5, 7]}"#);
    assert_eq!(
        (l.bos_token_id, l.eos_token_ids.as_slice()),
        (None, &[5, 7][..])
    );

    let q2 = llama(r#"{"model_type": "qwen2"}"#);
    assert!(
        q2.qkv_bias && !q2.o_bias,
        "Qwen2 biases q, k and v, never o"
    );
    assert_eq!((q2.vocab_size, q2.bos_token_id), (151936, None));
    assert!(q2.eos_token_ids.is_empty());
    assert!(
        q2.layer_windows.iter().all(Option::is_none),
        "use_sliding_window is off"
    );
    let q2 = llama(
        r#"{"model_type": "qwen2", "use_sliding_window": true, "sliding_window": 8,
            "num_hidden_layers": 4, "max_window_layers": 2}"#,
    );
    assert_eq!(q2.layer_windows, vec![None, None, Some(8), Some(8)]);

    let q3 = llama(
        r#"{"model_type": "qwen3", "hidden_size": 64, "num_attention_heads": 4,
            "num_key_value_heads": 4}"#,
    );
    assert!(q3.qk_norm == lens_core::config::QkNorm::PerHead && !q3.qkv_bias);
    assert_eq!(
        q3.head_dim, 128,
        "Qwen3's head_dim is its own key (default 128)"
    );
    let q3 = llama(r#"{"model_type": "qwen3", "attention_bias": true}"#);
    assert!(q3.qkv_bias && q3.o_bias);
}

#[test]
fn rope_settings_are_read_from_either_layout() {
    // transformers 5: rope_parameters.
    let new = llama(
        r#"{"model_type": "llama", "rope_parameters": {"rope_type": "llama3",
            "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}"#,
    );
    assert_eq!(new.rope.theta, 500000.0);
    assert_eq!(
        new.rope.scaling,
        RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0
        }
    );
    // Earlier files: rope_theta and rope_scaling (with "type" or "rope_type").
    let old = llama(
        r#"{"model_type": "llama", "rope_theta": 12345.5,
            "rope_scaling": {"type": "linear", "factor": 2.0}}"#,
    );
    assert_eq!(old.rope.theta, 12345.5);
    assert_eq!(old.rope.scaling, RopeScaling::Linear { factor: 2.0 });
    let err = HfConfig::from_json(
        r#"{"model_type": "llama", "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}"#,
    )
    .unwrap_err();
    assert_message(&err, &["rope type 'yarn'", "default, linear, llama3"]);
    let err = HfConfig::from_json(
        r#"{"model_type": "llama", "rope_scaling": {"rope_type": "llama3", "factor": 4.0}}"#,
    )
    .unwrap_err();
    assert_message(&err, &["llama3 rope scaling", "low_freq_factor"]);
}

#[rstest]
#[case::gqa(r#"{"model_type": "llama", "num_attention_heads": 6, "num_key_value_heads": 4}"#,
    &["num_attention_heads (6)", "num_key_value_heads (4)"])]
#[case::odd_head(r#"{"model_type": "qwen3", "head_dim": 7}"#, &["head_dim (7)", "even"])]
#[case::eos(r#"{"model_type": "llama", "vocab_size": 10, "bos_token_id": 1, "eos_token_id": [2, 12]}"#,
    &["eos_token_id (12)", "vocab_size 10"])]
#[case::window(r#"{"model_type": "mistral", "sliding_window": 0}"#, &["sliding_window"])]
#[case::layer_types(r#"{"model_type": "qwen2", "num_hidden_layers": 2, "layer_types": ["full_attention"]}"#,
    &["layer_types lists 1 layers", "num_hidden_layers is 2"])]
fn inconsistent_llama_configs_are_refused(#[case] json: &str, #[case] words: &[&str]) {
    let err = HfConfig::from_json(json).unwrap_err();
    assert!(matches!(err, LensError::InvalidConfig { .. }), "{err:?}");
    assert_message(&err, words);
}

#[test]
fn the_decoder_fixtures_parse_as_written_by_transformers() {
    let dir = workspace().join("tests/fixtures");
    let config =
        |name: &str| match HfConfig::from_file(dir.join(name).join("model/config.json")).unwrap() {
            HfConfig::Llama(c) => c,
            other => panic!("{name}: {other:?}"),
        };
    let a = config("dec-a");
    assert_eq!(
        (a.family, a.gqa_ratio(), a.head_dim),
        (LlamaFamily::Llama, 2, 16)
    );
    assert!(a.qkv_bias && a.o_bias && a.mlp_bias && !a.tie_word_embeddings);
    assert!(matches!(a.rope.scaling, RopeScaling::Llama3 { .. }));
    let b = config("dec-b");
    assert_eq!((b.gqa_ratio(), b.head_dim, b.hidden_size), (4, 16, 48));
    assert_eq!(b.rope.scaling, RopeScaling::Linear { factor: 2.0 });
    assert!(b.tie_word_embeddings);
    let c = config("dec-c");
    assert_eq!(c.family, LlamaFamily::Mistral);
    assert_eq!(c.layer_windows, vec![Some(4), Some(4)]);
    let d = config("dec-d");
    assert_eq!((d.family, d.rope.theta), (LlamaFamily::Qwen2, 20.5));
    assert!(d.qkv_bias && !d.o_bias);
    let e = config("dec-e");
    assert_eq!((e.family, e.head_dim), (LlamaFamily::Qwen3, 24));
    assert_eq!(e.qk_norm, lens_core::config::QkNorm::PerHead);
    assert_eq!(e.eos_token_ids, vec![383]);
}

fn neox(json: &str) -> lens_core::GptNeoxConfig {
    HfConfig::from_json(json)
        .unwrap()
        .as_gpt_neox()
        .expect("a GPT-NeoX config")
        .clone()
}

/// GPT-NeoX's defaults and its rotary keys as transformers 5.9.0 reads them: `rope_parameters`
/// first, then the legacy top-level `rotary_emb_base` / `rotary_pct`; a non-empty legacy
/// `rope_scaling` replaces `rope_parameters`; a top-level `rope_theta` is not read.
#[test]
fn gpt_neox_rotary_settings_follow_transformers() {
    let defaults = neox(r#"{"model_type": "gpt_neox"}"#);
    assert_eq!(
        (
            defaults.hidden_size,
            defaults.num_hidden_layers,
            defaults.intermediate_size
        ),
        (6144, 44, 24576)
    );
    assert_eq!(defaults.hidden_act, Activation::Gelu);
    assert!(defaults.use_parallel_residual && defaults.attention_bias);
    assert!(!defaults.tie_word_embeddings);
    assert_eq!(
        (defaults.rope.theta, defaults.partial_rotary_factor),
        (10000.0, 0.25)
    );
    assert_eq!(
        (defaults.bos_token_id, defaults.eos_token_id),
        (Some(0), Some(2))
    );
    assert_eq!(defaults.rotary_dim(), 24); // int(96 * 0.25)
    let legacy = neox(
        r#"{"architectures": ["GPTNeoXForCausalLM"], "hidden_size": 64, "num_attention_heads": 4,
            "rotary_pct": 0.3, "rotary_emb_base": 20000, "rope_theta": 5.0}"#,
    );
    assert_eq!(legacy.rope.theta, 20000.0);
    // int(16 * 0.3) = 4 (TransformerLens 3.9.0 rounds to 5, an odd width it then fails on).
    assert_eq!(legacy.rotary_dim(), 4);
    let odd = neox(
        r#"{"model_type": "gpt_neox", "hidden_size": 40, "num_attention_heads": 2, "rotary_pct": 0.25}"#,
    );
    assert_eq!(
        odd.rotary_dim(),
        6,
        "int(20 * 0.25) = 5 dimensions: three frequencies"
    );
    let both = neox(
        r#"{"model_type": "gpt_neox", "rotary_pct": 0.5,
            "rope_parameters": {"rope_theta": 1e6, "partial_rotary_factor": 1.0}}"#,
    );
    assert_eq!((both.rope.theta, both.partial_rotary_factor), (1e6, 1.0));
    let scaled = neox(
        r#"{"model_type": "gpt_neox", "rotary_emb_base": 20000,
            "rope_parameters": {"rope_theta": 1e6},
            "rope_scaling": {"type": "linear", "factor": 2.0}}"#,
    );
    assert_eq!(
        scaled.rope.theta, 20000.0,
        "rope_scaling replaced rope_parameters"
    );
    assert_eq!(scaled.rope.scaling, RopeScaling::Linear { factor: 2.0 });
    for (json, words) in [
        (
            r#"{"model_type": "gpt_neox", "hidden_size": 10, "num_attention_heads": 4}"#,
            &["hidden_size (10)", "num_attention_heads (4)"][..],
        ),
        (
            r#"{"model_type": "gpt_neox", "rotary_pct": 1.5}"#,
            &["partial_rotary_factor", "1.5"][..],
        ),
        (
            r#"{"model_type": "gpt_neox", "rope_scaling": {"type": "yarn", "factor": 2.0}}"#,
            &["rope type 'yarn'"][..],
        ),
    ] {
        let err = HfConfig::from_json(json).unwrap_err();
        assert_message(&err, words);
    }
}

fn parallel(json: &str) -> lens_core::ParallelConfig {
    HfConfig::from_json(json)
        .unwrap()
        .as_parallel()
        .expect("a GPT-J or Phi config")
        .clone()
}

/// GPT-J's keys (GPT-2-style names, `n_inner: null` for four times the width, a base fixed at
/// 10000, `rotary_dim` required) and Phi's rotary resolution (`rope_parameters` first, then the
/// top-level `rope_theta` and `partial_rotary_factor`, defaults 10000 and 0.5; the width
/// truncated), as transformers 5.9.0 reads them.
#[test]
fn gptj_and_phi_configs_follow_transformers() {
    use lens_core::ParallelFamily;
    let gptj = parallel(r#"{"model_type": "gptj"}"#);
    assert_eq!(gptj.family, ParallelFamily::GptJ);
    assert_eq!(
        (
            gptj.hidden_size,
            gptj.intermediate_size,
            gptj.num_hidden_layers,
            gptj.head_dim
        ),
        (4096, 16384, 28, 256)
    );
    assert_eq!((gptj.rotary_dim, gptj.rope.theta), (64, 10000.0));
    assert_eq!(gptj.hidden_act, Activation::GeluNew);
    assert_eq!(
        (gptj.bos_token_id, gptj.eos_token_id),
        (Some(50256), Some(50256))
    );
    let small = parallel(
        r#"{"architectures": ["GPTJForCausalLM"], "n_embd": 64, "n_head": 4, "n_inner": null,
            "rotary_dim": 8, "n_positions": 32, "layer_norm_epsilon": 1e-4}"#,
    );
    assert_eq!(
        (
            small.intermediate_size,
            small.max_position_embeddings,
            small.layer_norm_eps
        ),
        (256, 32, 1e-4)
    );
    let err = HfConfig::from_json(r#"{"model_type": "gptj", "rotary_dim": null}"#).unwrap_err();
    assert_message(&err, &["rotary_dim", "null"]);
    let phi = parallel(r#"{"model_type": "phi"}"#);
    assert_eq!(
        (phi.hidden_size, phi.intermediate_size, phi.head_dim),
        (2048, 8192, 64)
    );
    assert_eq!((phi.rotary_dim, phi.rope.theta), (32, 10000.0));
    let legacy = parallel(
        r#"{"model_type": "phi", "hidden_size": 2560, "num_attention_heads": 32,
            "partial_rotary_factor": 0.4, "rope_theta": 20000}"#,
    );
    assert_eq!((legacy.rotary_dim, legacy.rope.theta), (32, 20000.0));
    let nested = parallel(
        r#"{"model_type": "phi", "hidden_size": 64, "num_attention_heads": 4,
            "partial_rotary_factor": 0.5,
            "rope_parameters": {"rope_theta": 500.0, "partial_rotary_factor": 0.4}}"#,
    );
    assert_eq!(
        (nested.rotary_dim, nested.rope.theta),
        (6, 500.0),
        "int(16 * 0.4)"
    );
    let grouped = parallel(
        r#"{"model_type": "phi", "num_attention_heads": 4, "num_key_value_heads": 2,
            "hidden_size": 64, "qk_layernorm": true}"#,
    );
    assert_eq!((grouped.gqa_ratio(), grouped.qk_layernorm), (2, true));
    let odd = HfConfig::from_json(
        r#"{"model_type": "phi", "hidden_size": 40, "num_attention_heads": 2, "partial_rotary_factor": 0.25}"#,
    )
    .unwrap_err();
    assert_message(&odd, &["rotary width (5)", "even"]);
}

/// GPT-Neo's per-layer attention types (`attention_layers` when written, else `attention_types`
/// expanded) and OPT's defaults and layouts, as transformers 5.9.0 reads them.
#[test]
fn gpt_neo_and_opt_configs_follow_transformers() {
    let neo = |json: &str| {
        HfConfig::from_json(json)
            .unwrap()
            .as_gpt_neo()
            .expect("a GPT-Neo config")
            .clone()
    };
    let defaults = neo(r#"{"model_type": "gpt_neo"}"#);
    assert_eq!(defaults.layer_windows.len(), 24);
    assert_eq!(&defaults.layer_windows[..2], &[None, Some(256)]);
    assert_eq!(defaults.intermediate_size, 4 * 2048);
    assert!(defaults.tie_word_embeddings);
    let explicit = neo(
        r#"{"model_type": "gpt_neo", "num_layers": 2, "window_size": 5,
            "attention_types": [[["global", "local"], 1]], "attention_layers": ["local", "local"]}"#,
    );
    assert_eq!(
        explicit.layer_windows,
        vec![Some(5), Some(5)],
        "attention_layers wins"
    );
    let err = HfConfig::from_json(
        r#"{"model_type": "gpt_neo", "num_layers": 3, "attention_types": [[["global", "local"], 1]]}"#,
    )
    .unwrap_err();
    assert_message(&err, &["2 layers", "num_layers is 3"]);
    let err = HfConfig::from_json(
        r#"{"model_type": "gpt_neo", "num_layers": 1, "attention_layers": ["sparse"]}"#,
    )
    .unwrap_err();
    assert_message(&err, &["'sparse'"]);
    let opt = |json: &str| {
        HfConfig::from_json(json)
            .unwrap()
            .as_opt()
            .expect("an OPT config")
            .clone()
    };
    let defaults = opt(r#"{"model_type": "opt"}"#);
    assert_eq!(
        (
            defaults.hidden_size,
            defaults.ffn_dim,
            defaults.word_embed_proj_dim
        ),
        (768, 3072, 768)
    );
    assert_eq!(defaults.activation_function, Activation::Relu);
    assert_eq!(
        (
            defaults.bos_token_id,
            defaults.eos_token_id,
            defaults.pad_token_id
        ),
        (Some(2), Some(2), Some(1))
    );
    assert!(defaults.has_final_layer_norm() && !defaults.projects());
    let opt_350m = opt(
        r#"{"model_type": "opt", "hidden_size": 1024, "num_attention_heads": 16, "word_embed_proj_dim": 512,
            "do_layer_norm_before": false}"#,
    );
    assert!(opt_350m.projects() && !opt_350m.has_final_layer_norm());
}

fn llama_family(json: &str) -> lens_core::LlamaConfig {
    HfConfig::from_json(json)
        .unwrap()
        .as_llama()
        .expect("a Llama-family config")
        .clone()
}

/// Gemma 1-3, Phi-3 and OLMo-2 from a bare config get transformers 5.9.0's defaults: Gemma's
/// `1 + w` norms, scaled embeddings and tanh-GELU, Gemma 2's alternating layers (layer 0
/// sliding), soft caps 50 / 30 and `query_pre_attn_scalar` 256, Gemma 3's global layer every
/// sixth with bases 1e6 / 1e4, Phi-3's fused projections, OLMo-2's norms after the sublayers.
#[test]
fn todays_small_families_get_their_defaults() {
    use lens_core::config::{NormPlacement, QkNorm, RmsScale};
    let g = llama_family(r#"{"model_type": "gemma", "num_hidden_layers": 2}"#);
    assert_eq!(g.rms_scale, RmsScale::OnePlusWeight);
    assert_eq!(g.embed_scale, Some(3072f64.sqrt()));
    assert_eq!((g.head_dim, g.tie_word_embeddings), (256, true));
    assert_eq!(g.hidden_act.name(), "gelu_pytorch_tanh");
    let g2 = llama_family(r#"{"model_type": "gemma2", "num_hidden_layers": 4}"#);
    assert_eq!(g2.layer_windows, [Some(4096), None, Some(4096), None]);
    assert_eq!(
        (g2.attn_logit_softcapping, g2.final_logit_softcapping),
        (Some(50.0), Some(30.0))
    );
    assert_eq!(g2.query_scale, 256f64.powf(-0.5));
    assert_eq!(g2.norm_placement, NormPlacement::BeforeAndAfter);
    let g3 = llama_family(r#"{"model_type": "gemma3_text", "num_hidden_layers": 7}"#);
    let global: Vec<bool> = g3.layer_windows.iter().map(Option::is_none).collect();
    assert_eq!(global, [false, false, false, false, false, true, false]);
    assert_eq!(g3.rope.theta, 1e6);
    assert_eq!(g3.local_rope.map(|r| r.theta), Some(1e4));
    assert_eq!(g3.layer_rope(0).theta, 1e4);
    assert_eq!(g3.layer_rope(5).theta, 1e6);
    assert_eq!(
        (g3.qk_norm, g3.attn_logit_softcapping),
        (QkNorm::PerHead, None)
    );
    let p3 = llama_family(r#"{"model_type": "phi3", "num_hidden_layers": 2}"#);
    assert!(p3.fused_projections && p3.longrope.is_none());
    assert_eq!((p3.rms_norm_eps, p3.layer_windows[0]), (1e-5, None));
    let o2 = llama_family(r#"{"model_type": "olmo2", "num_hidden_layers": 2}"#);
    assert_eq!(o2.norm_placement, NormPlacement::After);
    assert_eq!(
        (o2.qk_norm, o2.rms_scale),
        (QkNorm::Projection, RmsScale::WeightInF32)
    );
    assert_eq!(o2.bos_token_id, None);
}

/// Phi-3's `longrope`: its factors (one per rotated pair), its switch, and transformers' default
/// attention factor `sqrt(1 + ln(max / original) / ln(original))`; its old name `su` read the
/// same; other rope types refused by name, as transformers refuses them.
#[test]
fn phi3_longrope_is_read_as_transformers_reads_it() {
    let json = |kind: &str, factors: &str| {
        format!(
            r#"{{"model_type": "phi3", "hidden_size": 64, "num_attention_heads": 4,
                "num_hidden_layers": 1, "max_position_embeddings": 64,
                "original_max_position_embeddings": 8,
                "rope_scaling": {{"type": "{kind}", "short_factor": {factors},
                                  "long_factor": {factors}}}}}"#
        )
    };
    for kind in ["longrope", "su"] {
        let c = llama_family(&json(kind, "[1, 2, 3, 4, 5, 6, 7, 8]"));
        let l = c.longrope.expect("longrope");
        assert_eq!(l.original_max_position_embeddings, 8);
        assert!((l.attention_factor - 2f64.sqrt()).abs() < 1e-12);
        assert!(!l.is_long(7) && l.is_long(8));
    }
    let short = HfConfig::from_json(&json("longrope", "[1, 2]")).unwrap_err();
    assert!(
        short
            .to_string()
            .contains("one factor per rotated pair (8)"),
        "{short}"
    );
    let linear = HfConfig::from_json(&json("linear", "[1]")).unwrap_err();
    assert!(linear.to_string().contains("'linear'"), "{linear}");
}

/// Gemma 3 with `use_bidirectional_attention` reads its window as transformers does
/// (`w / 2 + 1`); Gemma 2 keeps the flag for other kernels only (eager attention stays causal);
/// Gemma 2 and 3 refuse a `hidden_size` that is not a multiple of the heads, as transformers does.
#[test]
fn gemma_configs_read_and_refused_as_transformers_does() {
    let c = llama_family(
        r#"{"model_type": "gemma3_text", "use_bidirectional_attention": true,
            "sliding_window": 512, "num_hidden_layers": 2}"#,
    );
    assert!(c.bidirectional);
    assert_eq!(c.layer_windows, [Some(257), Some(257)]);
    let c = llama_family(r#"{"model_type": "gemma2", "use_bidirectional_attention": true}"#);
    assert!(!c.bidirectional);
    let err = HfConfig::from_json(
        r#"{"model_type": "gemma2", "hidden_size": 60, "num_attention_heads": 8, "head_dim": 16}"#,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("multiple of num_attention_heads"),
        "{err}"
    );
}
