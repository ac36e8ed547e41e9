//! keops-middle: the middle end of keops-rs, from a checked kernel to what code generation
//! needs, with no LLVM:
//!
//! - `opt`: the e-graph (derivatives expanded, formula simplified, extracted by a
//!   hoisting-aware cost priced per target);
//! - `target`: what differs between the machines code is generated for (vector width and
//!   psABI levels, GPU resources and block policy, operator prices), as plain data;
//! - `schedule`: the formula split by loop level, and the tile schedule;
//! - `vjp` and `symmetric`: the plans of backward kernels and of symmetric evaluation, as new
//!   checked kernels.
//!
//! See `README.md` for what this crate may import.

pub mod opt;
pub mod schedule;
pub mod symmetric;
pub mod target;
pub mod vjp;
