//! A generated kernel on the interpreter and the CPU backend: the results agree
//! (`keops_tests::fuzzing::differential`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(message) = keops_tests::fuzzing::differential::run(data) {
        panic!("the CPU backend and the interpreter disagree: {message}");
    }
});
