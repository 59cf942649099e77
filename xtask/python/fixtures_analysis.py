"""The `analysis` stage of fixtures.py: TransformerLens 3.9.0's analysis API on two golden models.

For the GPT-2 fixture `small` and the Llama fixture `dec-a` (grouped key/value heads), with the
unprocessed HookedTransformer of the goldens (fixtures.build_ht / fixtures_decoders.build_ht_decoder),
tests/fixtures/analysis/<config>.{json,safetensors} hold:

- `stacked/<name>`: the stacked weight properties (`W_Q`, `W_K`, `W_V`, `W_O`, `b_Q`, `b_K`, `b_V`,
  `b_O`, `W_in`, `W_out`, `b_in`, `b_out`, `W_U`, `b_U`, `W_E`; `W_gate` for dec-a, `W_pos` for small);
- `circuits/{QK,OV}_S`, `_norm`, `OV_eig_real` / `OV_eig_imag` (eigenvalues sorted by real, then
  imaginary part), `composition/{Q,K,V}`: FactoredMatrix.svd().S, .norm(), .eigenvalues and
  all_composition_scores;
- `patch/<function>`: every get_act_patch_* of transformer_lens.patching on a clean / corrupted
  pair of token sequences, with the metric logits[0, -1, A] - logits[0, -1, B].
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import fixtures
import fixtures_decoders

PATCH_FUNCTIONS = [
    "get_act_patch_resid_pre",
    "get_act_patch_resid_mid",
    "get_act_patch_attn_out",
    "get_act_patch_mlp_out",
    "get_act_patch_attn_head_out_by_pos",
    "get_act_patch_attn_head_q_by_pos",
    "get_act_patch_attn_head_k_by_pos",
    "get_act_patch_attn_head_v_by_pos",
    "get_act_patch_attn_head_out_all_pos",
    "get_act_patch_attn_head_q_all_pos",
    "get_act_patch_attn_head_k_all_pos",
    "get_act_patch_attn_head_v_all_pos",
    "get_act_patch_attn_head_pattern_all_pos",
    "get_act_patch_attn_head_pattern_by_pos",
    "get_act_patch_attn_head_pattern_dest_src_pos",
]
STACKED = ["W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O", "W_in", "W_out", "b_in", "b_out",
           "W_U", "b_U", "W_E"]
SEQ_LEN = 6


def hooked(config: str, root: Path):
    if config == "small":
        spec = next(s for s in fixtures.GOLDEN_CONFIGS if s["name"] == config)
        hf = fixtures.load_hf_model(root / "tests" / "fixtures" / config / "model")
        return fixtures.build_ht(spec, hf, processed=False, flags=False), spec["hf"]["vocab_size"]
    spec = next(s for s in fixtures_decoders.DECODER_CONFIGS if s["name"] == config)
    model_dir = root / "tests" / "fixtures" / config / "model"
    hf = fixtures_decoders.load(spec, model_dir)
    model, _, _ = fixtures_decoders.build_ht_decoder(spec, hf, model_dir, processed=False)
    return model, fixtures_decoders.VOCAB


def goldens(config: str, root: Path, out_dir: Path) -> None:
    import torch
    from transformer_lens import patching

    model, vocab = hooked(config, root)
    g = torch.Generator().manual_seed(77)
    clean = torch.randint(0, vocab - 1, (1, SEQ_LEN), generator=g)
    corrupted = clean.clone()
    corrupted[0, 1] = (clean[0, 1] + 17) % (vocab - 1)
    corrupted[0, 3] = (clean[0, 3] + 5) % (vocab - 1)
    answer, wrong = 11, 23

    def metric(logits):
        return logits[0, -1, answer] - logits[0, -1, wrong]

    tensors = OrderedDict()
    with torch.no_grad():
        names = STACKED + (["W_gate"] if model.cfg.gated_mlp else ["W_pos"])
        for name in names:
            tensors[f"stacked/{name}"] = getattr(model, name).detach().contiguous()
        for circuit in ("QK", "OV"):
            fm = getattr(model, circuit)
            tensors[f"circuits/{circuit}_S"] = fm.S.contiguous()
            tensors[f"circuits/{circuit}_norm"] = fm.norm().contiguous()
        eig = model.OV.eigenvalues
        key = eig.real * 1e3 + eig.imag  # sort by real part, then imaginary
        order = torch.argsort(key, dim=-1)
        eig = torch.gather(eig, -1, order)
        tensors["circuits/OV_eig_real"] = eig.real.contiguous()
        tensors["circuits/OV_eig_imag"] = eig.imag.contiguous()
        for mode in ("Q", "K", "V"):
            tensors[f"composition/{mode}"] = model.all_composition_scores(mode).contiguous()
        _, clean_cache = model.run_with_cache(clean)
        for fn in PATCH_FUNCTIONS:
            result = getattr(patching, fn)(model, corrupted, clean_cache, metric)
            tensors[f"patch/{fn}"] = result.to(torch.float32).contiguous()
        clean_metric = float(metric(model(clean)))
        corrupted_metric = float(metric(model(corrupted)))
    out_dir.mkdir(parents=True, exist_ok=True)
    fixtures.save_tensors(out_dir / f"{config}.safetensors", tensors)
    fixtures.write_json(
        out_dir / f"{config}.json",
        {
            "config": config,
            "clean": clean[0].tolist(),
            "corrupted": corrupted[0].tolist(),
            "metric": {"answer": answer, "wrong": wrong, "clean": clean_metric,
                       "corrupted": corrupted_metric},
            "tensor_keys": list(tensors.keys()),
            "versions": fixtures.versions(),
        },
    )


def stage_analysis(root: Path) -> None:
    fixtures.setup_torch()
    fixtures.quiet_libraries()
    for config in ("small", "dec-a"):
        goldens(config, root, root / "tests" / "fixtures" / "analysis")
        fixtures.log(f"analysis: {config} written")
