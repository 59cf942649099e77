//! Integration tests of lens-core, in one binary (one link against libtorch).

mod common;
mod config;
mod factored;
mod hub;
mod source;
mod tokenizer;
mod weights;
