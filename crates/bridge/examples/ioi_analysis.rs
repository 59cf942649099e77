//! An IOI-style analysis end to end: which attention heads carry the name (activation patching
//! of every head's output, batched), the same from two passes (attribution patching), and the
//! OV circuit of the head that matters most.
//!
//! ```text
//! cargo run -p bridge --example ioi_analysis [-- MODEL]
//! ```
//!
//! MODEL defaults to the embedded `tiny-gpt2` (random weights: the numbers show the mechanics,
//! not a circuit); any model `TransformerBridge::boot` accepts works.

use bridge::prelude::*;
use lens_core::model::ModelResult;
use lens_core::patching::{
    activation_patch, attribution_patch, Activation, Metric, PatchAxes, PatchOptions,
};

const CLEAN: &str = "When Mary and John went to the store, John gave a drink to";
const CORRUPTED: &str = "When Mary and John went to the store, Mary gave a drink to";

/// What the analysis finds.
pub struct Findings {
    /// `[layers, heads]`: the logit difference with each head's output patched in from the
    /// clean run.
    pub patched: Tensor,
    /// `[layers, heads]`: attribution patching's estimate of the change each patch makes.
    pub attributed: Tensor,
    /// The corrupted run's logit difference.
    pub corrupted_diff: f64,
    /// (layer, head) whose patch moves the logit difference most.
    pub top_head: (i64, i64),
    /// The singular values of that head's OV circuit.
    pub ov_singular_values: Tensor,
}

fn main() -> ModelResult<()> {
    let model_name = std::env::args()
        .nth(1)
        .unwrap_or_else(|| lens_core::DEFAULT_MODEL.to_string());
    run(&model_name)?;
    Ok(())
}

/// Runs the analysis and prints it.
pub fn run(model_name: &str) -> ModelResult<Findings> {
    let model = TransformerBridge::boot(model_name, Device::Cpu, Kind::Float)?;
    let clean = model.to_tokens(&[CLEAN], None, None)?.ids;
    let corrupted = model.to_tokens(&[CORRUPTED], None, None)?.ids;
    let (mary, john) = (
        model.to_single_token(" Mary")?,
        model.to_single_token(" John")?,
    );
    let logit_diff = move |logits: &Tensor| {
        let last = logits.get(0).get(-1);
        last.get(mary) - last.get(john)
    };

    // 1. Activation patching of every head's z (all positions), in batches chosen from memory.
    let (_, clean_cache) = tch::no_grad(|| {
        model.run_with_cache(&clean, &ForwardOptions::default(), &CacheOptions::default())
    })?;
    let metric = |logits: &Tensor| Ok(logit_diff(logits).double_value(&[]));
    let patched = activation_patch(
        &model,
        &corrupted,
        &clean_cache,
        Activation::Z,
        PatchAxes::LayerHead,
        &Metric::Logits(&metric),
        &PatchOptions::default(),
    )?;
    let corrupted_diff = tch::no_grad(|| model.forward(&corrupted, &ForwardOptions::default()))?
        .logits()
        .map(|l| logit_diff(l).double_value(&[]))?;

    // 2. Attribution patching: every head at once from one clean pass and one corrupted
    //    forward and backward pass; summed over positions and d_head, one number per head.
    let differentiable = |logits: &Tensor| Ok(logit_diff(logits));
    let attributions = attribution_patch(
        &model,
        &clean,
        &corrupted,
        &differentiable,
        NamesFilter::predicate(|name| name.ends_with("attn.hook_z")),
    )?;
    let per_head: Vec<Tensor> = attributions
        .iter()
        .map(|(_, a)| a.sum_dim_intlist([0i64, 1, 3].as_slice(), false, Kind::Float))
        .collect();
    let attributed = Tensor::stack(&per_head, 0);

    // 3. The OV circuit of the head whose patch moves the logit difference most.
    let effect = (&patched - corrupted_diff).abs();
    let flat = effect.argmax(None, false).int64_value(&[]);
    let n_heads = model.dims().n_heads;
    let top_head = (flat / n_heads, flat % n_heads);
    let ov = model.ov()?.get(top_head.0)?.get(top_head.1)?;
    let ov_singular_values = ov.svd()?.s;

    println!("model {model_name}: logit diff ' Mary' - ' John' on the corrupted prompt {corrupted_diff:+.4}");
    println!(
        "\nchange from patching each head's z (rows: layers), and attribution patching's estimate:"
    );
    for layer in 0..patched.size()[0] {
        let row = |t: &Tensor| {
            (0..n_heads)
                .map(|h| format!("{:+8.4}", t.double_value(&[layer, h])))
                .collect::<Vec<_>>()
                .join("")
        };
        println!(
            "{layer:>3} patched {}   attributed {}",
            row(&(&patched - corrupted_diff)),
            row(&attributed)
        );
    }
    println!(
        "\nhead L{}H{}: OV circuit norm {:.4}, top singular values {:?}",
        top_head.0,
        top_head.1,
        ov.norm()?.double_value(&[]),
        Vec::<f64>::try_from(
            ov_singular_values
                .narrow(0, 0, 4.min(ov_singular_values.size()[0]))
                .to_kind(Kind::Double)
        )
        .unwrap_or_default()
    );
    Ok(Findings {
        patched,
        attributed,
        corrupted_diff,
        top_head,
        ov_singular_values,
    })
}
