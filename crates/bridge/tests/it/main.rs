//! The bridge crate's integration tests, in one binary (one link against libtorch): the raw HF
//! models and the bridge against transformers' and TransformerLens's goldens, the hook names,
//! behaviour, text and devices, and the examples.

mod common;

mod behaviour;
mod examples;
mod hf_goldens;
mod hook_names;
mod hooked_goldens;
mod text_and_devices;
