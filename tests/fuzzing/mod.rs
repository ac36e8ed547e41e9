//! The fuzzers' properties, as plain functions of bytes. `fuzz/` drives them with libFuzzer;
//! `tests/all/fuzz.rs` runs them on the seed files and on every input a fuzzer has found
//! (`fuzz/regressions/`), so that each finding stays a test that runs without the fuzzer.
//!
//! - [`front_end::run`]: any bytes through lexing, parsing, checking, derivative expansion and
//!   simplification (bounded), and, where the kernel is small, the interpreter: never a panic.
//! - [`differential::run`]: a well-typed kernel built from the bytes ([`generate`]) on the f64
//!   interpreter and the CPU backend (f64 and f32, the default schedule and a forced split):
//!   the results agree within the tolerances of `compiler/tests/all/cpu.rs`.
//! - [`loader::run`]: a module built once, its manifest and library damaged as the bytes say:
//!   `Module::load` refuses it, or loads exactly the module that was built.

pub mod differential;
pub mod front_end;
pub mod generate;
pub mod loader;

/// Reads choices from the fuzzer's bytes; an exhausted input reads 0, and choice 0 is always
/// the simplest, so a shorter input gives a smaller case.
pub struct Tape<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Tape<'a> {
    pub fn new(bytes: &'a [u8]) -> Tape<'a> {
        Tape { bytes, pos: 0 }
    }

    pub fn byte(&mut self) -> u8 {
        let b = self.bytes.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    /// A choice among `n` (n >= 1).
    pub fn pick(&mut self, n: usize) -> usize {
        if n <= 256 {
            self.byte() as usize % n
        } else {
            (self.byte() as usize | (self.byte() as usize) << 8) % n
        }
    }

    pub fn choose<'t, T>(&mut self, items: &'t [T]) -> &'t T {
        &items[self.pick(items.len())]
    }

    /// What is left of the input.
    pub fn rest(&self) -> &'a [u8] {
        &self.bytes[self.pos.min(self.bytes.len())..]
    }
}
