//! The benchmark suite: every benchmark of the TransformerLens suite, stricter, and its tiered
//! runner. Not written yet: see the project's issue on `bench-suite`.
