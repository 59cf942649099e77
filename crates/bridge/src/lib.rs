//! The TransformerBridge over faithful HuggingFace-structured models.
//!
//! Not written yet: see the project's issue on `bridge`. This crate exists so the workspace has
//! its final shape and dependency direction (`hookpoint` <- `bridge` <- `bench-suite`).
