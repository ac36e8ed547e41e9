//! keopsc's integration tests, in one binary (each test binary links the whole compiler).

mod cli;
mod cpu;
mod derivatives;
mod entry_points;
mod evaluate;
mod frontend;
mod interp;
mod jit;
mod large_dims;
mod linalg;
mod nvptx;
mod ranges_vjp;
mod recipes;
mod repl;
mod simplify;
mod vjp;
