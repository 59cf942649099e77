//! The examples build as part of this test crate and run on the embedded model; their results
//! are checked, not just their exit.

#[path = "../../examples/activation_patching.rs"]
#[allow(dead_code)]
mod activation_patching;
#[path = "../../examples/ioi_analysis.rs"]
#[allow(dead_code)]
mod ioi_analysis;
#[path = "../../examples/logit_lens.rs"]
#[allow(dead_code)]
mod logit_lens;

#[test]
fn activation_patching_runs() {
    let recovery = activation_patching::run(lens_core::DEFAULT_MODEL).expect("example runs");
    let n_pos = recovery[0].len();
    // Patching layer 0 at the one position where the prompts differ restores the clean run
    // exactly; patching any other position of layer 0 changes nothing.
    let differing = 10; // after BOS + "When Mary and John went to the store," (10 tokens)
    for (pos, value) in recovery[0].iter().enumerate() {
        let expected = if pos == differing { 1.0 } else { 0.0 };
        assert!(
            (value - expected).abs() < 1e-4,
            "layer 0, position {pos}: {value}"
        );
    }
    // Before the last block, everything the answer depends on has been moved to the positions
    // at or after the differing one.
    let last = recovery.last().unwrap();
    assert!(last[..differing].iter().all(|v| v.abs() < 1e-4), "{last:?}");
    assert_eq!(n_pos, 15);
}

#[test]
fn logit_lens_runs() {
    let (stages, model_top) =
        logit_lens::run(lens_core::DEFAULT_MODEL, "The Eiffel Tower is in").expect("example runs");
    assert_eq!(stages.len(), 5, "4 blocks' inputs and the final output");
    assert_eq!(
        stages.last().unwrap().1[0],
        model_top,
        "the last stage is the model's prediction"
    );
}

#[test]
fn ioi_analysis_runs() {
    let found = ioi_analysis::run(lens_core::DEFAULT_MODEL).expect("example runs");
    let dims = (4, 4); // tiny-gpt2: 4 layers of 4 heads
    assert_eq!(found.patched.size(), vec![dims.0, dims.1]);
    assert_eq!(found.attributed.size(), vec![dims.0, dims.1]);
    // The head picked is the one whose patch moves the metric most.
    let effect = (&found.patched - found.corrupted_diff).abs();
    let (l, h) = found.top_head;
    assert_eq!(effect.max().double_value(&[]), effect.double_value(&[l, h]));
    assert_eq!(found.ov_singular_values.size(), vec![16], "d_head = 16");
    // Attribution patching estimates the patches: same sign on the head that matters most.
    let (patch, attribution) = (
        found.patched.double_value(&[l, h]) - found.corrupted_diff,
        found.attributed.double_value(&[l, h]),
    );
    assert!(
        patch * attribution > 0.0,
        "patch {patch} vs attribution {attribution}"
    );
}
