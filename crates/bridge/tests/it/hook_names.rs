//! The bridge's hook names against the Python TransformerBridge's: the fixture configs'
//! `bridge_hooks.json` (names, aliases, cached keys and shapes) and the 12-layer GPT-2 list in
//! tests/fixtures/bridge-12-layer/hooks.tsv, with exactly the differences documented in
//! docs/bridge-hook-names.md:
//!
//! * `blocks.{i}.hook_resid_mid` is a hook point of its own (Python: an alias of
//!   `blocks.{i}.ln2.hook_in`);
//! * `blocks.{i}.attn.qkv.hook_in` / `hook_out` fire (Python: never).

use std::collections::{BTreeMap, BTreeSet};

use crate::common::*;
use hookpoint::CacheOptions;
use lens_core::model::{ForwardOptions, LensModel};
use tch::Tensor;

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().expect("string").to_owned())
        .collect()
}

fn is_resid_mid(name: &str) -> bool {
    name.ends_with(".hook_resid_mid")
}

fn is_qkv(name: &str) -> bool {
    name.contains(".attn.qkv.")
}

/// Forward-only cache of every hook point.
fn fired(
    bridge: &bridge::TransformerBridge,
    tokens: &Tensor,
    mask: Option<&Tensor>,
) -> BTreeMap<String, Vec<i64>> {
    let (_, cache) = bridge
        .run_with_cache(
            tokens,
            &ForwardOptions {
                attention_mask: mask,
                ..ForwardOptions::default()
            },
            &CacheOptions::default(),
        )
        .expect("run_with_cache");
    cache
        .iter()
        .map(|(k, t)| (k.to_owned(), t.size()))
        .collect()
}

#[rstest::rstest]
fn names_match_the_python_bridge(#[values("small", "knobs")] config: &str) {
    let bridge = bridge(config);
    let meta = read_json(&fixtures().join(config).join("bridge_hooks.json"));
    for mode in ["unprocessed", "compatibility_mode"] {
        let py = &meta[mode];
        // The same names, in the same order (the unprocessed bridge's; compatibility mode
        // reorders Python's registry) apart from hook_resid_mid, which moves from the alias part
        // to the canonical part.
        if mode == "unprocessed" {
            let py_order: Vec<String> = strings(&py["hook_dict_names"])
                .into_iter()
                .filter(|n| !is_resid_mid(n))
                .collect();
            let ours_order: Vec<String> = bridge
                .hook_dict_names()
                .into_iter()
                .filter(|n| !is_resid_mid(n))
                .collect();
            assert_eq!(ours_order, py_order, "{config} {mode}: hook_dict order");
        }
        let py_set: BTreeSet<String> = strings(&py["hook_dict_names"]).into_iter().collect();
        let ours_set: BTreeSet<String> = bridge.hook_dict_names().into_iter().collect();
        assert_eq!(ours_set, py_set, "{config} {mode}: hook_dict names");
        assert_eq!(ours_set.len() as u64, py["n_hook_dict"].as_u64().unwrap());
    }
    let py = &meta["unprocessed"];
    let n_layers = bridge.dims().n_layers as usize;
    let mut expected_canonical = strings(&py["canonical_names"]);
    for l in 0..n_layers {
        let at = expected_canonical
            .iter()
            .position(|n| n == &format!("blocks.{l}.hook_mlp_in"))
            .expect("hook_mlp_in")
            + 1;
        expected_canonical.insert(at, format!("blocks.{l}.hook_resid_mid"));
    }
    let ours_canonical: Vec<String> = bridge.hook_registry().names().map(str::to_owned).collect();
    assert_eq!(
        ours_canonical, expected_canonical,
        "{config}: canonical names"
    );
    let mut expected_aliases: BTreeMap<String, String> = py["aliases"]
        .as_object()
        .expect("aliases")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    for l in 0..n_layers {
        let removed = expected_aliases.remove(&format!("blocks.{l}.hook_resid_mid"));
        assert_eq!(removed, Some(format!("blocks.{l}.ln2.hook_in")));
    }
    let ours_aliases: BTreeMap<String, String> = bridge.hook_aliases().into_iter().collect();
    assert_eq!(ours_aliases, expected_aliases, "{config}: aliases");
    let registry_aliases: BTreeMap<String, String> = bridge
        .hook_registry()
        .aliases()
        .map(|(a, t)| (a.to_owned(), t.to_owned()))
        .collect();
    assert_eq!(registry_aliases, ours_aliases, "{config}: registry aliases");
}

#[rstest::rstest]
fn cached_keys_and_shapes_match_the_python_bridge(#[values("small", "knobs")] config: &str) {
    let bridge = bridge(config);
    let meta = read_json(&fixtures().join(config).join("bridge_hooks.json"));
    let golden = read_tensors(&fixtures().join(config).join("hf.safetensors"));
    let runs = meta["unprocessed"]["run_with_cache"]
        .as_object()
        .expect("runs");
    for (pid, run) in runs {
        let tokens = &golden[&format!("{pid}/tokens")];
        let mask = padding_mask(&golden, pid);
        let ours = fired(&bridge, tokens, mask.as_ref());
        let mut expected: BTreeSet<String> = BTreeSet::new();
        for (name, shape) in run["shapes"].as_object().expect("shapes") {
            let canonical = bridge
                .hook_registry()
                .canonical_name(name)
                .expect("known name")
                .to_owned();
            let shape: Vec<i64> = shape
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect();
            assert_eq!(
                ours.get(&canonical),
                Some(&shape),
                "{config}/{pid}: {name} ({canonical})"
            );
            expected.insert(canonical);
        }
        for never in strings(&run["never_cached"]) {
            let canonical = bridge
                .hook_registry()
                .canonical_name(&never)
                .expect("known")
                .to_owned();
            if is_qkv(&canonical) {
                expected.insert(canonical); // documented: fires here
            } else {
                assert!(
                    !ours.contains_key(&canonical),
                    "{config}/{pid}: {never} fired"
                );
            }
        }
        let ours_keys: BTreeSet<String> = ours.keys().cloned().collect();
        assert_eq!(ours_keys, expected, "{config}/{pid}: fired hook points");
    }
}

/// The list of Python's bridge over a GPT-2 of GPT-2 small's depth and head count (12 layers of
/// 12 heads; d_model 24, heads of 2, d_mlp 36, vocab 50; tests/fixtures/bridge-12-layer): the
/// same 637 names, the same hooks fire (but `attn.qkv.*`), with the same shapes on 11 tokens.
#[test]
fn twelve_layer_list_matches_the_python_bridge() {
    let path = fixtures().join("bridge-12-layer/hooks.tsv");
    let tsv = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (bridge, _dir) = random_bridge(12, 24, 12, 36, 50, 16);
    let tokens = Tensor::arange(11, (tch::Kind::Int64, tch::Device::Cpu)).unsqueeze(0);
    let ours = fired(&bridge, &tokens, None);
    let mut names = BTreeSet::new();
    let mut fired_expected = BTreeSet::new();
    for line in tsv.lines().filter(|l| !l.trim().is_empty()) {
        let (name, shape) = line.split_once('\t').expect("name<TAB>shape");
        names.insert(name.to_owned());
        let canonical = bridge
            .hook_registry()
            .canonical_name(name)
            .expect("known name")
            .to_owned();
        if shape == "not-fired" {
            if is_qkv(&canonical) {
                let width = if canonical.ends_with("hook_in") {
                    24
                } else {
                    72
                };
                assert_eq!(ours.get(&canonical), Some(&vec![1, 11, width]), "{name}");
                fired_expected.insert(canonical);
            } else {
                assert!(!ours.contains_key(&canonical), "{name} fired");
            }
            continue;
        }
        let shape: Vec<i64> = shape
            .trim_matches(|c| c == '(' || c == ')')
            .split(',')
            .map(|v| v.trim().parse().expect("dimension"))
            .collect();
        assert_eq!(ours.get(&canonical), Some(&shape), "{name} ({canonical})");
        fired_expected.insert(canonical);
    }
    assert_eq!(names.len(), 637);
    let ours_names: BTreeSet<String> = bridge.hook_dict_names().into_iter().collect();
    assert_eq!(ours_names, names);
    assert_eq!(
        ours.keys().cloned().collect::<BTreeSet<_>>(),
        fired_expected
    );
    // 454 + 12 hook points (hook_resid_mid), 183 - 12 aliases.
    assert_eq!(bridge.hook_registry().len(), 466);
    assert_eq!(bridge.hook_aliases().len(), 171);
}
