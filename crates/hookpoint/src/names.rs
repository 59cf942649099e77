//! TransformerLens activation-name shorthands (`get_act_name`): `("resid_pre", 3)` ->
//! `blocks.3.hook_resid_pre`, `"k6"` -> `blocks.6.attn.hook_k`, `"scale"` -> `ln_final.hook_scale`.

/// A key into an activation cache: a full name, or a TransformerLens shorthand with a layer
/// (negative layers count from the end) and an optional sub-layer type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ActKey {
    /// A full hook name, or a compact shorthand such as `k6` or `scale4ln1`.
    Name(String),
    /// `(name, layer)`, e.g. `("resid_pre", -1)`.
    Layer(String, i64),
    /// `(name, layer, layer_type)`, e.g. `("scale", 4, "ln1")`.
    Typed(String, i64, String),
}

impl From<&str> for ActKey {
    fn from(name: &str) -> Self {
        ActKey::Name(name.to_owned())
    }
}

impl From<String> for ActKey {
    fn from(name: String) -> Self {
        ActKey::Name(name)
    }
}

impl From<(&str, i64)> for ActKey {
    fn from((name, layer): (&str, i64)) -> Self {
        ActKey::Layer(name.to_owned(), layer)
    }
}

impl From<(&str, usize)> for ActKey {
    fn from((name, layer): (&str, usize)) -> Self {
        ActKey::Layer(name.to_owned(), layer as i64)
    }
}

impl From<(&str, i64, &str)> for ActKey {
    fn from((name, layer, layer_type): (&str, i64, &str)) -> Self {
        ActKey::Typed(name.to_owned(), layer, layer_type.to_owned())
    }
}

impl From<(&str, usize, &str)> for ActKey {
    fn from((name, layer, layer_type): (&str, usize, &str)) -> Self {
        ActKey::Typed(name.to_owned(), layer as i64, layer_type.to_owned())
    }
}

impl std::fmt::Display for ActKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ActKey::Name(name) => write!(f, "{name:?}"),
            ActKey::Layer(name, layer) => write!(f, "({name:?}, {layer})"),
            ActKey::Typed(name, layer, kind) => write!(f, "({name:?}, {layer}, {kind:?})"),
        }
    }
}

impl ActKey {
    /// The full hook name this key stands for. Negative layers are counted back from `n_layers`
    /// (required for them); `None` when a negative layer cannot be resolved.
    pub fn resolve(&self, n_layers: Option<usize>) -> Option<String> {
        let normalize = |layer: i64| -> Option<usize> {
            if layer >= 0 {
                Some(layer as usize)
            } else {
                let n = n_layers? as i64;
                usize::try_from(n + layer).ok()
            }
        };
        match self {
            ActKey::Name(name) => Some(act_name(name, None, None)),
            ActKey::Layer(name, layer) => Some(act_name(name, Some(normalize(*layer)?), None)),
            ActKey::Typed(name, layer, kind) => {
                Some(act_name(name, Some(normalize(*layer)?), Some(kind)))
            }
        }
    }
}

/// TransformerLens's `get_act_name`.
pub fn act_name(name: &str, layer: Option<usize>, layer_type: Option<&str>) -> String {
    if (name.contains('.') || name.starts_with("hook_")) && layer.is_none() && layer_type.is_none()
    {
        return name.to_owned();
    }
    let (mut name, mut layer, mut layer_type) =
        (name.to_owned(), layer, layer_type.map(str::to_owned));
    if let Some((stem, compact_layer, rest)) = split_compact(&name) {
        (name, layer, layer_type) = (stem, Some(compact_layer), Some(rest));
    }
    name = match name.as_str() {
        "attn" => "pattern",
        "attn_logits" => "attn_scores",
        "key" => "k",
        "query" => "q",
        "value" => "v",
        "mlp_pre" => "pre",
        "mlp_mid" => "mid",
        "mlp_post" => "post",
        other => other,
    }
    .to_owned();
    let layer_type = match name.as_str() {
        "k" | "v" | "q" | "z" | "rot_k" | "rot_q" | "result" | "pattern" | "attn_scores" => {
            Some("attn".to_owned())
        }
        "pre" | "post" | "mid" | "pre_linear" => Some("mlp".to_owned()),
        _ => layer_type.map(|kind| match kind.as_str() {
            "a" | "attention" => "attn".to_owned(),
            "m" => "mlp".to_owned(),
            "b" | "block" | "blocks" => String::new(),
            _ => kind,
        }),
    };
    let mut full = String::new();
    if let Some(layer) = layer {
        full.push_str(&format!("blocks.{layer}."));
    }
    if let Some(kind) = layer_type.filter(|k| !k.is_empty()) {
        full.push_str(&kind);
        full.push('.');
    }
    full.push_str("hook_");
    full.push_str(&name);
    if (name == "scale" || name == "normalized") && layer.is_none() {
        full.insert_str(0, "ln_final.");
    }
    full
}

/// Splits the compact form `letters digits rest` (e.g. `scale4ln1`), as the regex
/// `([a-z]+)(\d+)([a-z]?.*)` does at the start of the name.
fn split_compact(name: &str) -> Option<(String, usize, String)> {
    let letters = name.bytes().take_while(u8::is_ascii_lowercase).count();
    let digits = name[letters..]
        .bytes()
        .take_while(u8::is_ascii_digit)
        .count();
    if letters == 0 || digits == 0 {
        return None;
    }
    let layer = name[letters..letters + digits].parse().ok()?;
    Some((
        name[..letters].to_owned(),
        layer,
        name[letters + digits..].to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(ActKey::from(("resid_pre", 0i64)), "blocks.0.hook_resid_pre")]
    #[case(ActKey::from(("q", 3i64, "attn")), "blocks.3.attn.hook_q")]
    #[case(ActKey::from(("scale", 4i64, "ln1")), "blocks.4.ln1.hook_scale")]
    #[case(ActKey::from("embed"), "hook_embed")]
    #[case(ActKey::from(("attn", 2i64)), "blocks.2.attn.hook_pattern")]
    #[case(ActKey::from("k6"), "blocks.6.attn.hook_k")]
    #[case(ActKey::from("scale4ln1"), "blocks.4.ln1.hook_scale")]
    #[case(ActKey::from("pre5"), "blocks.5.mlp.hook_pre")]
    #[case(ActKey::from("scale"), "ln_final.hook_scale")]
    #[case(ActKey::from(("resid_post", -1i64)), "blocks.11.hook_resid_post")]
    #[case(ActKey::from(("mlp_out", 1i64, "b")), "blocks.1.hook_mlp_out")]
    #[case(ActKey::from("blocks.0.attn.hook_z"), "blocks.0.attn.hook_z")]
    fn resolves_like_transformer_lens(#[case] key: ActKey, #[case] expected: &str) {
        assert_eq!(key.resolve(Some(12)).as_deref(), Some(expected));
    }

    #[test]
    fn negative_layer_needs_layer_count() {
        assert_eq!(ActKey::from(("resid_pre", -1i64)).resolve(None), None);
        assert_eq!(ActKey::from(("resid_pre", -13i64)).resolve(Some(12)), None);
    }
}
