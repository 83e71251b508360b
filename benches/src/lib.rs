//! Sluice's benchmarks: criterion micro-benchmarks under `benches/`, the `loadgen` fixed-rate
//! load generator, and the side-by-side scripts under `side-by-side/`. Results and the
//! commands that produced them live in docs/benchmarks.md.
