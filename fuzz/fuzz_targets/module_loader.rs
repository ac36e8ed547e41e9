//! A damaged module: refused, or loaded exactly as built (`keops_tests::fuzzing::loader`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(message) = keops_tests::fuzzing::loader::run(data) {
        panic!("{message}");
    }
});
