//! A tiny source never makes the front end allocate more than a few MB, whatever sizes it
//! writes: positions, dimensions, K, `SumT`/`OneHot`/`Zero` lengths, `Elem`/`Extract` indices
//! and `TensorDot` shapes are bounded (`formula::op::MAX_DIM`) before anything is sized by them.
//! Its own test binary: the counting allocator below sees every allocation of the process.

use keopsc::driver;
use keopsc::source::SourceFile;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, counting the bytes in use and their peak.
struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged; the counters only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, forwarded.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = IN_USE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// At most this many bytes above what was in use before a compile.
const BUDGET: usize = 4 << 20;

/// Kernels that each write one huge size; every one must be refused with a diagnostic.
const HUGE: &[(&str, &str)] = &[
    ("inline position", "Sum_Reduction(Exp(-SqDist(Vi(100000000, 3), Vj(1, 3))) * Vj(2, 1), 0)"),
    ("inline position past u64", "Sum_Reduction(Vi(99999999999999999999999999, 3), 0)"),
    ("fuzzer's position", "Sum_Reduction(Exp(-SqDist(Vi(0666666666666666666, 3), Vj(1, 3))), 0)"),
    ("Var position", "Sum_Reduction(Var(4000000000, 3, 0), 0)"),
    ("variable dimension", "Sum_Reduction(Vi(0, 100000000000), 0)"),
    ("Zero", "Sum_Reduction(Vi(0, 1) + Zero(100000000000), 0)"),
    ("OneHot", "Sum_Reduction(OneHot(Vi(0, 1), 100000000000), 0)"),
    ("SumT", "Sum_Reduction(SumT(Vi(0, 1), 100000000000), 0)"),
    ("ElemT", "Sum_Reduction(ElemT(Vi(0, 1), 100000000000, 3), 0)"),
    ("ExtractT", "Sum_Reduction(ExtractT(Vi(0, 3), 1, 100000000000), 0)"),
    ("Extract", "Sum_Reduction(Extract(Vi(0, 3), 18446744073709551615, 2), 0)"),
    ("Elem", "Sum_Reduction(Elem(Vi(0, 3), 100000000000), 0)"),
    ("K", "KMin_Reduction(Vi(0, 3) - Vj(1, 3), 100000000000, 0)"),
    ("K times dimension", "ArgKMin_Reduction(Vi(0, 4096) - Vj(1, 4096), 8192, 0)"),
    ("tensor product", "Sum_Reduction(TensorProd(Vi(0, 16777216), Vj(1, 16777216)), 0)"),
    (
        "TensorDot shape past usize",
        "Sum_Reduction(TensorDot(Vi(0, 4), Vj(1, 4), [4294967296, 4294967296, 4], [4], [2], [0]), 0)",
    ),
    ("concatenations", "Sum_Reduction(Concat(SumT(Vi(0, 1), 16777216), Vi(0, 1)), 0)"),
];

/// Kernels with huge constants that are fine: a value, not a size.
const FINE: &[(&str, &str)] = &[
    (
        "IntCst",
        "Sum_Reduction(Vi(0, 3) * IntCst(999999999999999999), 0)",
    ),
    ("Pow", "Sum_Reduction(Pow(Vi(0, 3), 2000000000), 0)"),
    (
        "ClampInt",
        "Sum_Reduction(ClampInt(Vi(0, 3), -9000000000000000000, 9000000000000000000), 0)",
    ),
    (
        "largest dimension",
        "Sum_Reduction(SumT(Vi(0, 1), 16777216), 0)",
    ),
];

fn compile(body: &str) -> (bool, usize) {
    let text = format!("kernel k {{\n    {body}\n}}\n");
    let before = IN_USE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let accepted = driver::compile(SourceFile::new("<tiny>", text)).is_ok();
    (accepted, PEAK.load(Ordering::Relaxed) - before)
}

#[test]
fn a_tiny_source_never_allocates_more_than_a_few_mb_in_the_front_end() {
    // Warm up whatever the front end initialises once (tables, the error renderer).
    compile("Sum_Reduction(Vi(0, 3), 0)");
    let mut failures = Vec::new();
    for &(what, body) in HUGE {
        let (accepted, peak) = compile(body);
        if accepted {
            failures.push(format!("{what}: accepted `{body}`"));
        }
        if peak > BUDGET {
            failures.push(format!("{what}: {peak} bytes for `{body}`"));
        }
    }
    for &(what, body) in FINE {
        let (accepted, peak) = compile(body);
        if !accepted {
            failures.push(format!("{what}: refused `{body}`"));
        }
        if peak > BUDGET {
            failures.push(format!("{what}: {peak} bytes for `{body}`"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
