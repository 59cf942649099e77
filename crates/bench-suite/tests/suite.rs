//! The whole suite, phases 1-3, on the embedded model and on both fixture configurations (local
//! HF directories without a tokenizer): every result must pass, none may be skipped.

use std::path::Path;

use bench_suite::{run_benchmark_suite, SuiteOptions};
use rstest::rstest;

fn fixture_model(config: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(config)
        .join("model")
        .display()
        .to_string()
}

#[rstest]
#[case::embedded(lens_core::DEFAULT_MODEL.to_owned())]
#[case::small(fixture_model("small"))]
#[case::knobs(fixture_model("knobs"))]
fn every_benchmark_passes(#[case] model: String) {
    let options = SuiteOptions {
        model: model.clone(),
        ..SuiteOptions::default()
    };
    let results = run_benchmark_suite(&options, &mut |_| {}).unwrap();
    let failed: Vec<String> = results
        .iter()
        .filter(|r| !r.passed || !r.ran())
        .map(|r| r.to_string())
        .collect();
    assert!(failed.is_empty(), "{model}:\n{}", failed.join("\n"));
    // Phase 1: 2 results; Phase 2: 16; Phase 3: 10 weight checks + 13 comparisons.
    assert_eq!(
        results.len(),
        2 + 16 + 23,
        "{model}: {:?}",
        results.iter().map(|r| &r.name).collect::<Vec<_>>()
    );
}

#[test]
fn without_references_the_checks_needing_them_are_skipped_not_passed() {
    let options = SuiteOptions {
        use_hf_reference: false,
        use_ht_reference: false,
        ..SuiteOptions::default()
    };
    let results = run_benchmark_suite(&options, &mut |_| {}).unwrap();
    let skipped: Vec<&str> = results
        .iter()
        .filter(|r| !r.ran())
        .map(|r| r.name.as_str())
        .collect();
    assert!(
        skipped.contains(&"forward_pass_logits")
            && skipped.contains(&"backward_hooks")
            && skipped.contains(&"weight_processing")
    );
    let ran_and_failed: Vec<String> = results
        .iter()
        .filter(|r| r.ran() && !r.passed)
        .map(|r| r.to_string())
        .collect();
    assert!(ran_and_failed.is_empty(), "{}", ran_and_failed.join("\n"));
}
