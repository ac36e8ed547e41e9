//! Arbitrary bytes through the front end: never a panic (`keops_tests::fuzzing::front_end`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    keops_tests::fuzzing::front_end::run(data);
});
