//! Tokenization with TransformerLens semantics, on the real GPT-2 BPE.

use lens_core::{
    attention_mask_from_ids, LensError, PaddingSide, Tokenizer, TokenizerOptions, Tokens, Weights,
};
use rstest::rstest;
use tch::{Device, Kind, Tensor};

use crate::common::{assert_message, tiny_gpt2_dir, word_level_tokenizer, workspace};

const BOS: i64 = 50256;
const DEFAULT_SENTENCE: &str = "Natural language processing tasks, such as question answering, machine translation, reading comprehension, and summarization, are typically approached with supervised learning on taskspecific datasets.";

fn gpt2_options() -> TokenizerOptions {
    TokenizerOptions {
        bos_token_id: Some(BOS),
        eos_token_id: Some(BOS),
        pad_token_id: None,
        n_ctx: Some(256),
        ..Default::default()
    }
}

fn gpt2() -> Tokenizer {
    Tokenizer::from_file(tiny_gpt2_dir().join("tokenizer.json"), gpt2_options()).unwrap()
}

fn rows(t: &Tensor) -> Vec<Vec<i64>> {
    let b = t.size()[0];
    (0..b)
        .map(|i| Vec::<i64>::try_from(t.get(i)).unwrap())
        .collect()
}

#[test]
fn hello_world() {
    let tok = gpt2();
    assert_eq!(tok.encode("Hello world").unwrap(), vec![15496, 995]);
    let with_bos = tok.to_tokens(&["Hello world"], None, None, true).unwrap();
    assert_eq!(rows(&with_bos.ids), vec![vec![BOS, 15496, 995]]);
    assert_eq!(rows(&with_bos.attention_mask), vec![vec![1, 1, 1]]);
    assert_eq!(with_bos.ids.kind(), Kind::Int64);
    assert_eq!(with_bos.attention_mask.kind(), Kind::Int64);
    let without = tok
        .to_tokens(&["Hello world"], Some(false), None, true)
        .unwrap();
    assert_eq!(rows(&without.ids), vec![vec![15496, 995]]);
    assert_eq!(tok.pad_token_id(), Some(BOS), "pad falls back to EOS");
    assert_eq!(tok.vocab_size(), 50257);
}

#[test]
fn every_golden_case_encodes_and_decodes() {
    let path = workspace().join("tests/fixtures/tokenizer/gpt2_cases.json");
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let tok = gpt2();
    let cases = golden["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let ids: Vec<i64> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(tok.encode(text).unwrap(), ids, "{text:?}");
        assert_eq!(
            tok.to_string(&ids).unwrap(),
            case["decoded"].as_str().unwrap(),
            "{text:?}"
        );
        // to_str_tokens decodes token by token; for ASCII text they concatenate to the text.
        if text.is_ascii() {
            assert_eq!(tok.to_str_tokens(&ids, None).unwrap().concat(), text);
        }
    }
}

#[test]
fn default_sentence_matches_transformer_lens() {
    let path = workspace().join("tests/fixtures/tiny-gpt2/hf_text.json");
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let expected: Vec<i64> =
        serde_json::from_value(golden["bridge_boot_check"]["to_tokens_default_sentence"].clone())
            .unwrap();
    let tokens = gpt2()
        .to_tokens(&[DEFAULT_SENTENCE], None, None, true)
        .unwrap();
    assert_eq!(rows(&tokens.ids), vec![expected]);
}

#[test]
fn right_padding_default() {
    let tok = gpt2();
    let t = tok
        .to_tokens(&["Hello world", "Hi"], None, None, true)
        .unwrap();
    assert_eq!(
        rows(&t.ids),
        vec![vec![BOS, 15496, 995], vec![BOS, 17250, BOS]]
    );
    assert_eq!(rows(&t.attention_mask), vec![vec![1, 1, 1], vec![1, 1, 0]]);
}

#[test]
fn left_padding_keeps_bos_that_equals_pad() {
    let tok = gpt2();
    let t = tok
        .to_tokens(&["Hello world", "Hi"], None, Some(PaddingSide::Left), true)
        .unwrap();
    assert_eq!(
        rows(&t.ids),
        vec![vec![BOS, 15496, 995], vec![BOS, BOS, 17250]]
    );
    // Row 1: one pad, then the real BOS (same id) unmasked.
    assert_eq!(rows(&t.attention_mask), vec![vec![1, 1, 1], vec![0, 1, 1]]);
    // The inferred mask agrees, and the naive `ids != pad` would not.
    let inferred = tok
        .attention_mask(&t.ids, None, Some(PaddingSide::Left))
        .unwrap();
    assert!(inferred.equal(&t.attention_mask));
    let naive = t.ids.ne(BOS).to_kind(Kind::Int64);
    assert!(!naive.equal(&t.attention_mask));

    // The tokenizer's own default side.
    let left = Tokenizer::from_file(
        tiny_gpt2_dir().join("tokenizer.json"),
        TokenizerOptions {
            padding_side: PaddingSide::Left,
            ..gpt2_options()
        },
    )
    .unwrap();
    let t2 = left
        .to_tokens(&["Hello world", "Hi"], None, None, true)
        .unwrap();
    assert!(t2.ids.equal(&t.ids) && t2.attention_mask.equal(&t.attention_mask));
}

#[test]
fn mask_comes_from_the_padding_not_from_ids() {
    let tok = gpt2();
    // The first text ends with a real <|endoftext|>; right padding must not mask it.
    let t = tok
        .to_tokens(
            &["Hello<|endoftext|>", "Hello world foo"],
            Some(false),
            None,
            true,
        )
        .unwrap();
    assert_eq!(rows(&t.ids)[0], vec![15496, BOS, BOS]);
    assert_eq!(rows(&t.attention_mask), vec![vec![1, 1, 0], vec![1, 1, 1]]);
    // A text that is only BOS (empty string) keeps it.
    let t = tok
        .to_tokens(&["", "Hello world"], None, None, true)
        .unwrap();
    assert_eq!(
        rows(&t.ids),
        vec![vec![BOS, BOS, BOS], vec![BOS, 15496, 995]]
    );
    assert_eq!(rows(&t.attention_mask), vec![vec![1, 0, 0], vec![1, 1, 1]]);
    // Left padding with the BOS-only row.
    let t = tok
        .to_tokens(&["", "Hello world"], None, Some(PaddingSide::Left), true)
        .unwrap();
    assert_eq!(rows(&t.attention_mask), vec![vec![0, 0, 1], vec![1, 1, 1]]);
}

#[test]
fn inferred_mask_matches_the_fixture_padded_batch() {
    // tests/fixtures/small: BOS = EOS = pad = 999, row 1 left-padded with 4 pads then a BOS.
    let w = Weights::load(
        &[workspace().join("tests/fixtures/small/hf.safetensors")],
        None,
        Device::Cpu,
    )
    .unwrap();
    let tokens = w.get("padded_batch/tokens").unwrap();
    let expected = w.get("padded_batch/attention_mask").unwrap();
    assert_eq!(
        Vec::<i64>::try_from(expected.get(1)).unwrap(),
        vec![0, 0, 0, 0, 1, 1, 1, 1, 1]
    );
    let mask = attention_mask_from_ids(&tokens, 999, Some(999), true, PaddingSide::Left).unwrap();
    assert!(mask.equal(&expected.to_kind(Kind::Int64)), "{mask}");
    // Without the BOS rule the real BOS would be masked.
    let naive = attention_mask_from_ids(&tokens, 999, Some(999), false, PaddingSide::Left).unwrap();
    assert_eq!(
        Vec::<i64>::try_from(naive.get(1)).unwrap(),
        vec![0, 0, 0, 0, 0, 1, 1, 1, 1]
    );
}

#[rstest]
#[case::right(PaddingSide::Right, vec![vec![5, 6, 0, 0], vec![7, 8, 9, 1]], vec![vec![1, 1, 0, 0], vec![1, 1, 1, 1]])]
#[case::left(PaddingSide::Left, vec![vec![0, 0, 5, 6], vec![7, 8, 9, 1]], vec![vec![0, 0, 1, 1], vec![1, 1, 1, 1]])]
fn pad_sequences(
    #[case] side: PaddingSide,
    #[case] ids: Vec<Vec<i64>>,
    #[case] mask: Vec<Vec<i64>>,
) {
    let t = Tokens::pad(&[vec![5, 6], vec![7, 8, 9, 1]], 0, side).unwrap();
    assert_eq!(rows(&t.ids), ids);
    assert_eq!(rows(&t.attention_mask), mask);
    assert!(matches!(
        Tokens::pad(&[], 0, side),
        Err(LensError::EmptyInput(_))
    ));
    assert!(matches!(
        Tokens::pad(&[vec![], vec![]], 0, side),
        Err(LensError::EmptyInput(_))
    ));
}

#[test]
fn truncation_to_n_ctx() {
    let tok = Tokenizer::from_file(
        tiny_gpt2_dir().join("tokenizer.json"),
        TokenizerOptions {
            n_ctx: Some(4),
            ..gpt2_options()
        },
    )
    .unwrap();
    let t = tok
        .to_tokens(&[DEFAULT_SENTENCE, "Hi"], None, None, true)
        .unwrap();
    assert_eq!(
        rows(&t.ids),
        vec![vec![BOS, 35364, 3303, 7587], vec![BOS, 17250, BOS, BOS]]
    );
    assert_eq!(rows(&t.attention_mask)[1], vec![1, 1, 0, 0]);
    let full = tok
        .to_tokens(&[DEFAULT_SENTENCE], None, None, false)
        .unwrap();
    assert_eq!(full.ids.size(), vec![1, 33]);
    assert_eq!(tok.to_str_tokens(DEFAULT_SENTENCE, None).unwrap().len(), 4);
}

#[test]
fn str_tokens_and_strings() {
    let tok = gpt2();
    assert_eq!(
        tok.to_str_tokens("Hello world", None).unwrap(),
        vec!["<|endoftext|>", "Hello", " world"]
    );
    assert_eq!(
        tok.to_str_tokens("Hello world", Some(false)).unwrap(),
        vec!["Hello", " world"]
    );
    let ids = Tensor::from_slice(&[15496i64, 995]);
    assert_eq!(
        tok.to_str_tokens(&ids, Some(true)).unwrap(),
        vec!["Hello", " world"]
    );
    assert_eq!(
        tok.to_str_tokens(&ids.unsqueeze(0), None).unwrap(),
        vec!["Hello", " world"]
    );
    assert_eq!(
        tok.to_str_tokens(&[BOS], None).unwrap(),
        vec!["<|endoftext|>"]
    );
    // A token that is half of a UTF-8 character decodes to the replacement character.
    let emoji = tok.encode("😀").unwrap();
    assert!(emoji.len() > 1);
    assert!(tok
        .to_str_tokens(&emoji, None)
        .unwrap()
        .iter()
        .any(|s| s.contains('\u{FFFD}')));
    assert_eq!(tok.to_string(&emoji).unwrap(), "😀");

    assert_eq!(tok.to_string(&ids).unwrap(), "Hello world");
    assert_eq!(
        tok.to_string(&Tensor::from_slice(&[995i32])).unwrap(),
        " world"
    );
    let batch = tok
        .to_tokens(&["Hello world", "Hi"], None, None, true)
        .unwrap();
    assert_eq!(
        tok.to_strings(&batch.ids).unwrap(),
        vec!["<|endoftext|>Hello world", "<|endoftext|>Hi<|endoftext|>"]
    );
    assert_eq!(tok.to_single_str_token(995).unwrap(), " world");
}

#[test]
fn single_tokens() {
    let tok = gpt2();
    assert_eq!(tok.to_single_token(" world").unwrap(), 995);
    assert_eq!(tok.to_single_token("<|endoftext|>").unwrap(), BOS);
    let err = tok.to_single_token("Hello world").unwrap_err();
    assert!(matches!(err, LensError::NotSingleToken { .. }), "{err:?}");
    assert_message(
        &err,
        &["'Hello world'", "2 tokens", "[\"Hello\", \" world\"]"],
    );
    let err = tok.to_single_token("").unwrap_err();
    assert_message(&err, &["0 tokens"]);
}

#[test]
fn bad_inputs() {
    let tok = gpt2();
    let err = tok.to_tokens(&[], None, None, true).unwrap_err();
    assert!(matches!(err, LensError::EmptyInput(_)), "{err:?}");
    let err = tok
        .to_tokens(&["", ""], Some(false), None, true)
        .unwrap_err();
    assert!(matches!(err, LensError::EmptyInput(_)), "{err:?}");
    assert_message(&err, &["produce no tokens"]);
    assert_eq!(
        rows(&tok.to_tokens(&[""], None, None, true).unwrap().ids),
        vec![vec![BOS]]
    );

    let err = tok.to_string(&[50257i64]).unwrap_err();
    assert!(
        matches!(err, LensError::UnknownTokenId { id: 50257 }),
        "{err:?}"
    );
    let err = tok.to_string(&[-1i64]).unwrap_err();
    assert!(
        matches!(err, LensError::UnknownTokenId { id: -1 }),
        "{err:?}"
    );
    let err = tok.to_string(&Tensor::from_slice(&[1.0f32])).unwrap_err();
    assert!(matches!(err, LensError::BadTokenTensor { .. }), "{err:?}");
    let err = tok
        .to_string(&Tensor::zeros([2, 2], (Kind::Int64, Device::Cpu)))
        .unwrap_err();
    assert_message(&err, &["[2, 2]"]);
    let err = tok
        .to_strings(&Tensor::zeros([1, 2, 2], (Kind::Int64, Device::Cpu)))
        .unwrap_err();
    assert_message(&err, &["[1, 2, 2]"]);
}

#[test]
fn construction_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("tokenizer.json");
    let err = Tokenizer::from_file(&missing, gpt2_options()).unwrap_err();
    assert!(matches!(err, LensError::Io { .. }), "{err:?}");
    assert_message(&err, &[&missing.display().to_string()]);

    std::fs::write(&missing, "{\"not\": \"a tokenizer\"}").unwrap();
    let err = Tokenizer::from_file(&missing, gpt2_options()).unwrap_err();
    assert!(matches!(err, LensError::Tokenizer { .. }), "{err:?}");
    assert_message(&err, &[&missing.display().to_string()]);

    let err = Tokenizer::from_file(
        tiny_gpt2_dir().join("tokenizer.json"),
        TokenizerOptions {
            bos_token_id: Some(60000),
            ..gpt2_options()
        },
    )
    .unwrap_err();
    assert_message(
        &err,
        &["bos_token_id 60000 is not in the vocabulary (50257 tokens)"],
    );
}

#[test]
fn special_tokens_required_by_an_operation() {
    let json = word_level_tokenizer(&["a", "b", "c", "<unk>"], false);
    let tok = Tokenizer::from_bytes(json.as_bytes(), TokenizerOptions::default()).unwrap();
    let err = tok.to_tokens(&["a b"], None, None, true).unwrap_err();
    assert!(
        matches!(err, LensError::MissingSpecialToken("BOS")),
        "{err:?}"
    );
    // Without BOS, equal lengths need no pad...
    let t = tok
        .to_tokens(&["a b", "c a"], Some(false), None, true)
        .unwrap();
    assert_eq!(rows(&t.ids), vec![vec![0, 1], vec![2, 0]]);
    // ...but a ragged batch does.
    let err = tok
        .to_tokens(&["a b", "c"], Some(false), None, true)
        .unwrap_err();
    assert!(
        matches!(err, LensError::MissingSpecialToken("pad")),
        "{err:?}"
    );
}

#[test]
fn a_tokenizer_that_adds_bos_itself() {
    // Like Llama's: the post-processor prepends <s>. TransformerLens then neither adds a second
    // BOS nor keeps it when prepend_bos is false.
    let json = word_level_tokenizer(&["<s>", "<pad>", "hello", "world", "<unk>"], true);
    let tok = Tokenizer::from_bytes(
        json.as_bytes(),
        TokenizerOptions {
            bos_token_id: Some(0),
            pad_token_id: Some(1),
            ..Default::default()
        },
    )
    .unwrap();
    let t = tok
        .to_tokens(&["hello world", "world"], None, None, true)
        .unwrap();
    assert_eq!(rows(&t.ids), vec![vec![0, 2, 3], vec![0, 3, 1]]);
    assert_eq!(rows(&t.attention_mask), vec![vec![1, 1, 1], vec![1, 1, 0]]);
    let t = tok
        .to_tokens(&["hello world"], Some(false), None, true)
        .unwrap();
    assert_eq!(rows(&t.ids), vec![vec![2, 3]]);
    assert_eq!(tok.encode("hello").unwrap(), vec![2]);
    assert_eq!(tok.to_single_token("world").unwrap(), 3);
}

#[test]
fn tokens_move_between_devices() {
    let t = gpt2().to_tokens(&["Hello"], None, None, true).unwrap();
    let moved = t.to_device(Device::Cpu).unwrap();
    assert!(moved.ids.equal(&t.ids));
}

#[test]
#[ignore = "needs a CUDA device"]
fn tokens_move_to_cuda() {
    crate::common::require_cuda();
    let t = gpt2().to_tokens(&["Hello"], None, None, true).unwrap();
    let cuda = t.to_device(Device::Cuda(0)).unwrap();
    assert_eq!(cuda.ids.device(), Device::Cuda(0));
    let mask =
        attention_mask_from_ids(&cuda.ids, BOS, Some(BOS), true, PaddingSide::Right).unwrap();
    assert_eq!(mask.device(), Device::Cuda(0));
}

/// The embedded models of every family (models-cache/tiny-{llama,mistral,qwen2,qwen3,pythia,gptj,phi,neo,opt}), loaded as a
/// user loads them, tokenize as TransformerLens 3.9.0's HookedTransformer and TransformerBridge
/// do (tests/fixtures/embedded/<model>.json): BOS by default or not (Qwen2, Qwen3, Pythia, Phi not), the
/// BOS a tokenizer adds itself neither doubled nor kept with `prepend_bos = false`, Qwen3's BOS
/// the tokenizer's EOS, and the pad id of a left-padded batch.
#[rstest]
#[case("tiny-llama")]
#[case("tiny-mistral")]
#[case("tiny-qwen2")]
#[case("tiny-qwen3")]
#[case("tiny-pythia")]
#[case("tiny-gptj")]
#[case("tiny-phi")]
#[case("tiny-neo")]
#[case("tiny-opt")]
#[case("tiny-gemma")]
#[case("tiny-gemma2")]
#[case("tiny-gemma3")]
#[case("tiny-phi3")]
#[case("tiny-olmo2")]
fn embedded_models_tokenize_as_transformer_lens(#[case] model: &str) {
    let golden_path = workspace().join(format!("tests/fixtures/embedded/{model}.json"));
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden_path).unwrap()).unwrap();
    let dir = workspace().join("models-cache").join(model);
    let loaded = lens_core::load(dir.to_str().unwrap(), &Default::default()).unwrap();
    let tok = loaded
        .tokenizer
        .expect("the embedded model has a tokenizer");
    let tl = &golden["tl"];
    assert_eq!(tok.default_prepend_bos(), tl["default_prepend_bos"]);
    assert_eq!(tok.bos_token_id(), tl["bos_token_id"].as_i64());
    assert_eq!(tok.eos_token_id(), tl["eos_token_id"].as_i64());
    assert_eq!(tok.pad_token_id(), tl["pad_token_id"].as_i64());
    let ids = |v: &serde_json::Value| -> Vec<i64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect()
    };
    for record in ["hooked_transformer", "transformer_bridge"] {
        let texts = golden[record]["texts"].as_object().unwrap();
        assert_eq!(texts.len(), 5);
        for (text, expected) in texts {
            for (key, prepend) in [
                ("default", None),
                ("prepend_bos", Some(true)),
                ("no_bos", Some(false)),
            ] {
                let ours = tok.to_tokens(&[text], prepend, None, true).unwrap();
                assert_eq!(
                    rows(&ours.ids),
                    vec![ids(&expected[key])],
                    "{model} {record} '{text}' {key}"
                );
            }
        }
        let batch = &golden[record]["left_padded_batch"];
        let batch_texts: Vec<&str> = batch["texts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        let ours = tok
            .to_tokens(&batch_texts, None, Some(PaddingSide::Left), true)
            .unwrap();
        let expected: Vec<Vec<i64>> = batch["ids"].as_array().unwrap().iter().map(ids).collect();
        assert_eq!(
            rows(&ours.ids),
            expected,
            "{model} {record} left-padded batch"
        );
    }
    assert_eq!(
        tok.encode(golden["sentence"].as_str().unwrap())
            .unwrap()
            .len() as i64
            + i64::from(tok.default_prepend_bos()),
        golden["sentence_ids"].as_array().unwrap().len() as i64
    );
}
