//! The reference HookedTransformer (TransformerLens weight layout and hook names).
//!
//! Not written yet: see the project's issue on `hooked-ref`. This crate exists so the workspace
//! has its final shape and dependency direction (`hookpoint` <- `hooked-ref` <- `bench-suite`).
