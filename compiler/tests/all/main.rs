//! keopsc's integration tests, in one binary (each test binary links the whole compiler).

mod cli;
mod cpu;
mod derivatives;
mod frontend;
mod interp;
mod math;
mod nvptx;
mod recipes;
mod repl;
mod simplify;
