//! The suite's integration tests, in one binary (one link against libtorch): the whole suite on
//! every fixture, a broken model for every benchmark, the CLI, and the analysis API.

mod common;

mod analysis;
mod broken_models;
mod cli;
mod suite;
