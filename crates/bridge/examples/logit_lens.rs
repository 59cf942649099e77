//! The logit lens: the residual stream after each block, read through the final LayerNorm and
//! the unembedding, as if the model stopped there; the top tokens per layer at the last position.
//!
//! ```text
//! cargo run -p bridge --example logit_lens [-- MODEL [TEXT]]
//! ```
//!
//! MODEL defaults to the embedded `tiny-gpt2` (random weights: the predictions are noise, the
//! mechanics are real).

use bridge::TransformerBridge;
use hookpoint::{CacheOptions, NamesFilter, ResidualModel};
use lens_core::model::{ForwardOptions, LensModel, ModelResult};
use tch::{Device, Kind, Tensor};

const TEXT: &str = "The Eiffel Tower is located in the city of";
const TOP: i64 = 5;

fn main() -> ModelResult<()> {
    let mut args = std::env::args().skip(1);
    let model_name = args
        .next()
        .unwrap_or_else(|| lens_core::DEFAULT_MODEL.to_string());
    let text = args.next().unwrap_or_else(|| TEXT.to_string());
    run(&model_name, &text)?;
    Ok(())
}

/// Each stage's label and its top token ids.
pub type Stages = Vec<(String, Vec<i64>)>;

/// Prints the top tokens of every stage; returns them, and the model's own top token.
pub fn run(model_name: &str, text: &str) -> ModelResult<(Stages, i64)> {
    let model = TransformerBridge::boot(model_name, Device::Cpu, Kind::Float)?;
    let tokens = model.to_tokens(&[text], None, None)?.ids;
    let n_layers = model.dims().n_layers;

    let _no_grad = tch::no_grad_guard();
    let (out, cache) = model.run_with_cache(
        &tokens,
        &ForwardOptions::default(),
        &CacheOptions {
            names_filter: NamesFilter::predicate(|n| {
                n.ends_with("hook_resid_pre") || n.ends_with("hook_resid_post")
            }),
            ..CacheOptions::default()
        },
    )?;
    // The accumulated residual at the last position: the input of every block, then the output
    // of the last one.
    let mut stages: Vec<(String, Tensor)> = Vec::new();
    for layer in 0..n_layers {
        stages.push((
            format!("{layer}_pre"),
            cache.get(("resid_pre", layer))?.select(1, -1),
        ));
    }
    stages.push((
        "final_post".into(),
        cache.get(("resid_post", n_layers - 1))?.select(1, -1),
    ));

    // From the residual stream to the logits (through `project_out` where a model has one).
    let w_u = model.w_u();
    let b_u = model.tl_weight("unembed.b_U")?;
    println!("model {model_name}, text {text:?}\n");
    println!("{:>12}  top {TOP} next tokens (probability)", "stage");
    let mut tops = Vec::new();
    for (label, resid) in &stages {
        let normed = model.apply_ln_final(resid)?;
        let probs = (normed.matmul(&w_u) + &b_u)
            .softmax(-1, Kind::Float)
            .select(0, 0);
        let (values, indices) = probs.topk(TOP, -1, true, true);
        let mut line = String::new();
        let mut ids = Vec::new();
        for i in 0..TOP {
            let id = indices.int64_value(&[i]);
            ids.push(id);
            let token = model.to_string(&Tensor::from_slice(&[id]))?;
            line.push_str(&format!("{token:?} ({:.3})  ", values.double_value(&[i])));
        }
        println!("{label:>12}  {line}");
        tops.push((label.clone(), ids));
    }
    // The last stage is exactly the model's own prediction.
    let model_top = out
        .logits()?
        .select(1, -1)
        .argmax(-1, false)
        .int64_value(&[0]);
    println!(
        "\nthe model's own top token: {:?}",
        model.to_string(&Tensor::from_slice(&[model_top]))?
    );
    Ok((tops, model_top))
}
