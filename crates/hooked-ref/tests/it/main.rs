//! The HookedTransformer's integration tests, in one binary (one link against libtorch): its
//! API and TransformerLens 3.9.0's goldens.

mod api;
mod goldens;
