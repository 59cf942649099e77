//! The embedded `tiny-gpt2` through `TransformerBridge::boot` with its tokenizer, against
//! HuggingFace's outputs (tests/fixtures/tiny-gpt2/hf_text.*); half precision; devices.

use crate::common::*;
use bridge::{CompatibilityOptions, Gpt2LMHeadModel, TransformerBridge};
use hookpoint::CacheOptions;
use lens_core::model::{ForwardOptions, GenerateOptions, LensModel, ModelError, ReturnType};
use tch::{Cuda, Device, Kind, Tensor};

/// Each embedded model of the families after GPT-2 (the Llama family, Pythia, GPT-J, Phi,
/// GPT-Neo, OPT), booted by name: its
/// tokenizer gives the ids TransformerLens's HookedTransformer gives the suite's sentence, and
/// the bridge's logits on them are transformers' (tests/fixtures/embedded/<model>.*).
#[rstest::rstest]
fn embedded_model_text_matches_huggingface(
    #[values(
        "tiny-llama",
        "tiny-mistral",
        "tiny-qwen2",
        "tiny-qwen3",
        "tiny-pythia",
        "tiny-gptj",
        "tiny-phi",
        "tiny-neo",
        "tiny-opt",
        "tiny-gemma",
        "tiny-gemma2",
        "tiny-gemma3",
        "tiny-phi3",
        "tiny-olmo2"
    )]
    model: &str,
) {
    let meta = read_json(&fixtures().join(format!("embedded/{model}.json")));
    let golden = read_tensors(&fixtures().join(format!("embedded/{model}.safetensors")));
    let b = TransformerBridge::boot(model, Device::Cpu, Kind::Float).unwrap();
    let text = meta["sentence"].as_str().unwrap();
    let tokens = b.to_tokens(&[text], None, None).unwrap();
    let expected: Vec<i64> = meta["sentence_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(Vec::<i64>::try_from(tokens.ids.get(0)).unwrap(), expected);
    let logits = tch::no_grad(|| b.forward(&tokens.ids, &ForwardOptions::default()))
        .unwrap()
        .logits
        .unwrap();
    let err = relative_error(&logits.get(0), &golden["logits"], None);
    assert!(err <= 1e-5, "{model}: logits err {err:.2e}");
}

#[test]
fn tiny_gpt2_text_matches_huggingface() {
    let meta = read_json(&fixtures().join("tiny-gpt2/hf_text.json"));
    let golden = read_tensors(&fixtures().join("tiny-gpt2/hf_text.safetensors"));
    let text = meta["text"].as_str().unwrap();
    let b = TransformerBridge::boot(lens_core::DEFAULT_MODEL, Device::Cpu, Kind::Float).unwrap();
    let tokens = b.to_tokens(&[text], None, None).unwrap();
    assert_eq!(tokens.ids, golden["tokens"]);
    let out = tch::no_grad(|| {
        b.forward(
            &tokens.ids,
            &ForwardOptions {
                return_type: ReturnType::Both,
                ..Default::default()
            },
        )
    })
    .unwrap();
    let logits = out.logits.unwrap();
    let mut report = Report::default();
    report.check(
        "logits",
        "logits_first16",
        relative_error(&logits.narrow(2, 0, 16), &golden["logits_first16"], None),
    );
    report.check(
        "logits",
        "logits_last",
        relative_error(&logits.select(1, -1), &golden["logits_last"], None),
    );
    report.check(
        "logits",
        "logsumexp",
        relative_error(
            &logits.logsumexp([-1i64].as_slice(), false),
            &golden["logits_logsumexp"],
            None,
        ),
    );
    report.check(
        "loss",
        "loss",
        relative_error(out.loss.as_ref().unwrap(), &golden["loss"], None),
    );
    report.assert_ok("tiny-gpt2 text");
    assert_eq!(logits.argmax(-1, false), golden["logits_argmax"]);
    for (key, use_cache) in [("generate.use_cache", true), ("generate.no_cache", false)] {
        let options = GenerateOptions {
            max_new_tokens: 8,
            use_past_kv_cache: use_cache,
            ..Default::default()
        };
        assert_eq!(
            b.generate(&tokens.ids, None, &options).unwrap(),
            golden[key],
            "{key}"
        );
    }
    // Text helpers.
    assert_eq!(
        b.to_string(&tokens.ids).unwrap(),
        format!("<|endoftext|>{text}")
    );
    let str_tokens = b.to_str_tokens(text, None).unwrap();
    assert_eq!(str_tokens.len(), 33);
    assert_eq!(str_tokens[0], "<|endoftext|>");
    assert_eq!(b.to_single_token(" the").unwrap(), 262);
    let hello = b.to_tokens(&["Hello world"], None, None).unwrap();
    assert_eq!(
        hello.ids,
        Tensor::from_slice(&[50256i64, 15496, 995]).unsqueeze(0)
    );
    // A batch of texts is left-padded and masked: each row's real positions give the logits it
    // gives alone.
    let batch = b
        .forward_text(&["Hello world", text], &ForwardOptions::default())
        .unwrap()
        .logits
        .unwrap();
    let alone = b
        .forward_text(&["Hello world"], &ForwardOptions::default())
        .unwrap()
        .logits
        .unwrap();
    let n = batch.size()[1];
    let err = relative_error(&batch.get(0).narrow(0, n - 3, 3), &alone.get(0), None);
    assert!(err <= TOLERANCE, "left-padded row vs alone: err {err:.3e}");
    let texts = b
        .generate_text(
            &["Hello world"],
            &GenerateOptions {
                max_new_tokens: 2,
                ..Default::default()
            },
        )
        .unwrap();
    assert!(texts[0].starts_with("<|endoftext|>Hello world"));
}

#[test]
fn raw_hf_model_loads_by_name() {
    let hf = Gpt2LMHeadModel::from_pretrained(lens_core::DEFAULT_MODEL, Device::Cpu, Kind::Float)
        .unwrap();
    let golden = read_tensors(&fixtures().join("tiny-gpt2/hf_text.safetensors"));
    let out = tch::no_grad(|| {
        hf.forward(bridge::HfForward {
            input_ids: Some(&golden["tokens"]),
            labels: Some(&golden["tokens"]),
            ..Default::default()
        })
    })
    .unwrap();
    assert!(relative_error(out.loss.as_ref().unwrap(), &golden["loss"], None) <= TOLERANCE);
    assert!(matches!(
        TransformerBridge::boot("no-such-model-anywhere", Device::Cpu, Kind::Float),
        Err(ModelError::Load(_))
    ));
    assert!(matches!(
        TransformerBridge::boot(lens_core::DEFAULT_MODEL, Device::Cpu, Kind::Int64),
        Err(ModelError::InvalidInput(_))
    ));
}

/// f16 and bf16 on the CPU: the same pass (LayerNorm statistics in f32), close to f32.
#[test]
fn half_precision_runs_and_stays_close() {
    let golden = read_tensors(&fixtures().join("small/hf.safetensors"));
    let tokens = &golden["padded_batch/tokens"];
    let mask = padding_mask(&golden, "padded_batch");
    let options = ForwardOptions {
        attention_mask: mask.as_ref(),
        ..Default::default()
    };
    let reference = tch::no_grad(|| bridge("small").forward(tokens, &options))
        .unwrap()
        .logits
        .unwrap();
    let keep = mask.as_ref().map(|m| {
        m.to_kind(Kind::Bool)
            .unsqueeze(-1)
            .expand(reference.size(), false)
    });
    for (kind, bound) in [(Kind::Half, 1e-2), (Kind::BFloat16, 5e-2)] {
        let mut b = bridge_on("small", Device::Cpu, kind);
        assert_eq!(b.kind(), kind);
        let (out, cache) = b
            .run_with_cache_and_backward(
                tokens,
                &options,
                &CacheOptions {
                    incl_bwd: true,
                    ..Default::default()
                },
                &|out| {
                    Ok(out
                        .logits()?
                        .select(1, -1)
                        .to_kind(Kind::Float)
                        .sum(Kind::Float))
                },
            )
            .unwrap();
        b.zero_grad();
        let logits = out.logits.unwrap();
        assert_eq!(logits.kind(), kind);
        let err = relative_error(&logits, &reference, keep.as_ref());
        assert!(err <= bound, "{kind:?}: err {err:.3e} vs f32");
        assert!(cache
            .get("blocks.2.hook_resid_pre_grad")
            .or_else(|_| cache.get("blocks.2.hook_in_grad"))
            .is_ok());
        // Weight processing computes in f32 and casts back.
        b.enable_compatibility_mode(CompatibilityOptions::default())
            .unwrap();
        assert_eq!(b.tl_weight("blocks.0.attn.W_Q").unwrap().kind(), kind);
        let processed = tch::no_grad(|| b.forward(tokens, &options))
            .unwrap()
            .logits
            .unwrap();
        let err = relative_error(
            &processed.to_kind(Kind::Float).log_softmax(-1, Kind::Float),
            &reference.log_softmax(-1, Kind::Float),
            keep.as_ref(),
        );
        assert!(err <= bound * 2.0, "{kind:?} processed: err {err:.3e}");
        let generated = b
            .generate(
                tokens,
                mask.as_ref(),
                &GenerateOptions {
                    max_new_tokens: 3,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(generated.size(), vec![2, 12]);
    }
}

/// A CUDA device this machine does not have is a clear error (`cuda:0` without a GPU, the
/// first index past the last device with one).
#[test]
fn an_absent_cuda_device_is_reported_unavailable() {
    let absent = if Cuda::is_available() {
        Cuda::device_count() as usize
    } else {
        0
    };
    for result in [
        TransformerBridge::boot(lens_core::DEFAULT_MODEL, Device::Cuda(absent), Kind::Float)
            .map(|_| ()),
        Gpt2LMHeadModel::from_pretrained(
            lens_core::DEFAULT_MODEL,
            Device::Cuda(absent),
            Kind::Float,
        )
        .map(|_| ()),
    ] {
        match result {
            Err(ModelError::DeviceUnavailable { requested, reason }) => {
                assert_eq!(requested, format!("cuda:{absent}"));
                assert!(!reason.is_empty());
            }
            other => panic!("expected DeviceUnavailable, got {other:?}"),
        }
    }
}

/// CUDA f32 equals the CPU: activations, gradients, greedy generation.
#[test]
#[ignore = "needs a CUDA device"]
fn cuda_matches_the_cpu() {
    assert!(
        Cuda::is_available(),
        "this CUDA test was asked for, but no CUDA device is available"
    );
    let golden = read_tensors(&fixtures().join("knobs/hf.safetensors"));
    let tokens = &golden["padded_batch/tokens"];
    let mask = padding_mask(&golden, "padded_batch");
    let cpu = bridge("knobs");
    let gpu = bridge_on("knobs", Device::Cuda(0), Kind::Float);
    let run = |b: &TransformerBridge| {
        let options = ForwardOptions {
            attention_mask: mask.as_ref(),
            ..Default::default()
        };
        let (out, cache) = b
            .run_with_cache_and_backward(
                tokens,
                &options,
                &CacheOptions {
                    incl_bwd: true,
                    device: Some(Device::Cpu),
                    ..Default::default()
                },
                &|out| Ok(out.logits()?.select(1, -1).sum(Kind::Float)),
            )
            .unwrap();
        b.zero_grad();
        (out.logits.unwrap().to_device(Device::Cpu), cache)
    };
    let (cpu_logits, cpu_cache) = run(&cpu);
    let (gpu_logits, gpu_cache) = run(&gpu);
    let keep = mask.as_ref().map(|m| {
        m.to_kind(Kind::Bool)
            .unsqueeze(-1)
            .expand(cpu_logits.size(), false)
    });
    assert!(relative_error(&gpu_logits, &cpu_logits, keep.as_ref()) <= TOLERANCE);
    for (name, t) in cpu_cache
        .iter()
        .filter(|(n, _)| n.ends_with("hook_resid_pre_grad") || n.ends_with("hook_in_grad"))
    {
        let g = gpu_cache.get(name).unwrap();
        let m = mask.as_ref().map(|m| {
            let mut shape = vec![m.size()[0], m.size()[1]];
            shape.extend(std::iter::repeat_n(1, t.dim() - 2));
            m.to_kind(Kind::Bool)
                .view(shape.as_slice())
                .expand(t.size(), false)
        });
        assert!(relative_error(g, t, m.as_ref()) <= 1e-4, "{name}");
    }
    let greedy = GenerateOptions {
        max_new_tokens: 8,
        ..Default::default()
    };
    assert_eq!(
        gpu.generate(tokens, mask.as_ref(), &greedy)
            .unwrap()
            .to_device(Device::Cpu),
        golden["padded_batch/generate.use_cache"]
    );
}
