//! Generated kernels on the interpreter and the CPU backend. The tolerance is
//! `compiler/tests/all/cpu.rs`'s (relative 1e-10 in f64; 2e-2 in f32, where a random formula
//! may cancel what f64 keeps), relative to the largest of: the result, its summed magnitudes
//! (the same reduction of `Abs(F)`, for sums) and, as `compiler/tests/all/simplify.rs` bounds
//! the rounding of a rewrite, the magnitudes of the formula's intermediate values over the
//! pairs reduced into that output (summed for sums, the largest otherwise).

use super::generate::{self, Case, DECLS};
use keops_runtime::{run_tiles, Axis, Category, DType, HostArray, ReductionKind, TileSchedule};
use keopsc::check::CheckedKernel;
use keopsc::codegen::CodegenError;
use keopsc::driver::{self, Backend, EvalError};
use keopsc::interp::PointEvaluator;
use keopsc::source::SourceFile;

fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 1e-10,
        DType::F32 => 2e-2,
    }
}

/// Operators whose value jumps: a rounding difference of f32 next to the jump changes the
/// result by O(1), so f32 is compared only on formulas without them (f64 always).
const DISCONTINUOUS: [&str; 12] = [
    "Sign(",
    "Step(",
    "Floor(",
    "Round(",
    "Equal(",
    "LessThan(",
    "LessOrEqual(",
    "IfElse(",
    "Mod(",
    "ArgMax(",
    "ArgMin(",
    "OneHot(",
];
/// Continuous operators whose derivatives jump.
const KINKED: [&str; 5] = ["Abs(", "ReLU(", "Clamp", "Max(", "Min("];

fn continuous(case: &Case) -> bool {
    let text = &case.reduction;
    let derivative = text.contains("Grad(") || text.contains("Diff(");
    let jumps = DISCONTINUOUS.iter().any(|op| text.contains(op));
    let kinks = KINKED.iter().any(|op| text.contains(op));
    !(jumps || derivative && kinks)
}

/// The generated case for `bytes`, checked.
pub fn run(bytes: &[u8]) -> Result<(), String> {
    check_case(&generate::case(bytes))
}

fn compile(text: &str) -> Result<CheckedKernel, String> {
    match driver::compile(SourceFile::new("<generated>", text)) {
        Ok(mut c) => Ok(c.kernels.remove(0)),
        Err((source, diagnostics)) => Err(format!(
            "a generated kernel does not compile:\n{text}\n{}",
            keopsc::diagnostic::render_all(&diagnostics, &source, false)
        )),
    }
}

/// Inputs in [-1, 1] (parameters in [0.5, 1.5]) from a small deterministic generator.
fn inputs(case: &Case, dtype: DType) -> Vec<(String, HostArray)> {
    let mut state = case.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        // splitmix64
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    DECLS
        .iter()
        .map(|(name, decl)| {
            let dim: usize = decl[3..decl.len() - 1].parse().expect("Vi(d)");
            let (rows, lo, hi) = match &decl[..2] {
                "Vi" => (case.n, -1.0, 1.0),
                "Vj" => (case.m, -1.0, 1.0),
                _ => (1, 0.5, 1.5),
            };
            let data: Vec<f64> = (0..rows * dim).map(|_| lo + (hi - lo) * next()).collect();
            let shape = vec![rows, dim];
            let array = match dtype {
                DType::F64 => HostArray::from_f64(shape, data),
                DType::F32 => HostArray::from_f32(shape, data.iter().map(|&x| x as f32).collect()),
            };
            (name.to_string(), array)
        })
        .collect()
}

/// For each output row, the magnitudes of the formula's finite intermediate values over the
/// pairs reduced into it: summed for the Sum family, the largest otherwise.
fn intermediate_magnitudes(k: &CheckedKernel, inputs: &[(String, HostArray)]) -> Vec<f64> {
    let evaluator = PointEvaluator::new(&k.formula).expect("derivatives are expanded");
    let mut scratch = evaluator.scratch();
    let arrays = driver::bind_arguments(k, inputs).expect("generated inputs bind");
    let data: Vec<Vec<f64>> = arrays.iter().map(|a| a.to_f64()).collect();
    let vars = &k.formula.vars;
    let rows_of = |c: Category| match c {
        Category::I => inputs_rows(inputs, "x"),
        Category::J => inputs_rows(inputs, "y"),
        Category::Param => 1,
    };
    let (n, m) = (rows_of(Category::I), rows_of(Category::J));
    let (rows, inner) = match k.signature.axis {
        Axis::I => (n, m),
        Axis::J => (m, n),
    };
    let summed = k.signature.reduction.kind == ReductionKind::Sum;
    (0..rows)
        .map(|r| {
            let mut total = 0f64;
            for t in 0..inner {
                let (i, j) = match k.signature.axis {
                    Axis::I => (r, t),
                    Axis::J => (t, r),
                };
                evaluator.eval(&mut scratch, |v| {
                    let dim = vars[v].dim;
                    let row = match vars[v].category {
                        Category::I => i,
                        Category::J => j,
                        Category::Param => 0,
                    };
                    &data[v][row * dim..(row + 1) * dim]
                });
                let pair = (0..k.formula.len())
                    .flat_map(|id| evaluator.value(&scratch, egg::Id::from(id)).iter())
                    .filter(|v| v.is_finite())
                    .fold(0f64, |acc, v| acc.max(v.abs()));
                total = if summed {
                    total + pair
                } else {
                    total.max(pair)
                };
            }
            total
        })
        .collect()
}

fn inputs_rows(inputs: &[(String, HostArray)], name: &str) -> usize {
    inputs
        .iter()
        .find(|(n, _)| n == name)
        .map_or(1, |(_, a)| a.shape[0])
}

/// Which output components are indices (compared through the values they point at).
pub fn index_slots(k: &CheckedKernel) -> Vec<bool> {
    let red = &k.signature.reduction;
    let out_dim = red.output_dim();
    (0..out_dim)
        .map(|slot| match red.kind {
            ReductionKind::ArgMax | ReductionKind::ArgMin | ReductionKind::ArgKMin => true,
            ReductionKind::MaxArgMax | ReductionKind::MinArgMin => slot >= red.fdim,
            ReductionKind::KMinArgKMin => slot >= out_dim / 2,
            _ => false,
        })
        .collect()
}

/// Data sets each compiled case runs on: the case's own sizes and seed, then this many more
/// derived from them. Compiling dominates an execution, so a few more data sets per compile
/// multiply the checks per second.
const EXTRA_DATA_SETS: u64 = 3;

/// The case's problems: its own, then [`EXTRA_DATA_SETS`] with other sizes and seeds (in the
/// generator's ranges, and across several inner tiles where the case already was).
fn data_sets(case: &Case) -> Vec<Case> {
    let mut out = vec![case.clone()];
    for k in 1..=EXTRA_DATA_SETS {
        let mut c = case.clone();
        c.seed = case.seed.wrapping_mul(31).wrapping_add(1000 * k);
        c.n = 1 + (case.n * 7 + 13 * k as usize) % 40;
        c.m = 1 + (case.m * 5 + 29 * k as usize) % case.m.max(70);
        out.push(c);
    }
    out
}

/// Checks one case on both dtypes (f32 where the formula is continuous), each compiled once
/// and run on every data set of [`data_sets`].
pub fn check_case(case: &Case) -> Result<(), String> {
    let k = compile(&case.kernel_text())?;
    let scale_kernel = match &case.scale_reduction {
        Some(text) => Some(compile(&generate::kernel_text(text))?),
        None => None,
    };
    let dtypes: &[DType] = if continuous(case) {
        &[DType::F64, DType::F32]
    } else {
        &[DType::F64]
    };
    for &dtype in dtypes {
        let jit = match driver::compile_cpu(&k, dtype) {
            Ok(j) => j,
            // Refused with a clear error: the CPU backend's documented limits.
            Err(EvalError::Codegen(CodegenError::Unsupported { .. })) => continue,
            Err(e) => return Err(format!("cpu compile: {e}: {} ({dtype})", case.reduction)),
        };
        for data in data_sets(case) {
            check_data_set(&k, scale_kernel.as_ref(), &jit, &data, dtype)?;
        }
    }
    Ok(())
}

/// One data set of a case on the interpreter and on the compiled kernel `jit` (the default
/// schedule and a forced one).
fn check_data_set(
    k: &CheckedKernel,
    scale_kernel: Option<&CheckedKernel>,
    jit: &keopsc::codegen::JitKernel,
    case: &Case,
    dtype: DType,
) -> Result<(), String> {
    let context = || {
        format!(
            "{} ({dtype}, N = {}, M = {}, seed {})",
            case.reduction, case.n, case.m, case.seed
        )
    };
    let inputs = inputs(case, dtype);
    let want = driver::evaluate(k, &inputs, Backend::Interp)
        .map(|done| done.output)
        .map_err(|e| format!("interpreter: {e}: {}", context()))?
        .to_f64();
    let scale = match scale_kernel {
        Some(s) => driver::evaluate(s, &inputs, Backend::Interp)
            .map(|done| done.output)
            .map_err(|e| format!("interpreter (scale): {e}: {}", context()))?
            .to_f64(),
        None => want.clone(),
    };
    let floors = intermediate_magnitudes(k, &inputs);
    let arrays: Vec<_> = driver::bind_arguments(k, &inputs)
        .map_err(|e| e.to_string())?
        .iter()
        .map(|a| a.view())
        .collect();
    let forced = [(1, 1), (2, 3), (5, 7), (1, 64)][(case.seed % 4) as usize];
    let schedules = [
        None,
        Some(TileSchedule {
            row_block: forced.0.min(case.n.max(case.m)),
            inner_chunks: forced.1.min(case.n.min(case.m)),
        }),
    ];
    for schedule in schedules {
        let got = run_tiles(&jit.tile_kernel(), &arrays, schedule)
            .map_err(|e| format!("cpu run: {e}: {}", context()))?;
        if got.dtype() != dtype {
            return Err(format!("cpu output dtype {}: {}", got.dtype(), context()));
        }
        let got = got.to_f64();
        compare(k, &inputs, dtype, &got, &want, &scale, &floors)
            .map_err(|e| format!("{e}\n{} with schedule {schedule:?}", context()))?;
    }
    Ok(())
}

/// `got` (cpu) against `want` (interpreter), output by output.
fn compare(
    k: &CheckedKernel,
    inputs: &[(String, HostArray)],
    dtype: DType,
    got: &[f64],
    want: &[f64],
    scale: &[f64],
    floors: &[f64],
) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "output length: cpu {}, interpreter {}",
            got.len(),
            want.len()
        ));
    }
    let out_dim = k.signature.reduction.output_dim().max(1);
    let indices = index_slots(k);
    let tol = tolerance(dtype);
    for (e, ((&g, &w), &s)) in got.iter().zip(want).zip(scale).enumerate() {
        let (row, slot) = (e / out_dim, e % out_dim);
        let floor = floors[row];
        let within_f32 = s.abs().max(floor) < 1e30;
        if dtype == DType::F32 && !within_f32 {
            // Beyond f32's range somewhere: f32 overflows where f64 does not.
            continue;
        }
        let ok = if w.is_nan() || g.is_nan() {
            w.is_nan() && g.is_nan()
        } else if w.is_infinite() || g.is_infinite() {
            g == w
        } else if indices[slot] {
            g == w || same_value_at(k, inputs, dtype, row, slot, g, w, tol * floor.max(1e-3))
        } else {
            (g - w).abs() <= tol * s.abs().max(w.abs()).max(floor).max(1e-3)
        };
        if !ok {
            return Err(format!(
                "output {e} (row {row}, slot {slot}): cpu {g:?}, interpreter {w:?} (scale {s:e}, intermediate magnitudes {floor:e}, tolerance {tol:e})",
            ));
        }
    }
    Ok(())
}

/// Whether the formula's values at inner indices `g` and `w` (component `slot` modulo the
/// formula's dimension) are within `tol`, as the interpreter computes them: backends may pick
/// another index among values that differ by no more than the rounding of their math
/// functions (lang-spec/reductions.md, "Which index"), in f64 as in f32.
#[allow(clippy::too_many_arguments)]
fn same_value_at(
    k: &CheckedKernel,
    inputs: &[(String, HostArray)],
    dtype: DType,
    row: usize,
    slot: usize,
    g: f64,
    w: f64,
    tol: f64,
) -> bool {
    // f32 data also rounds the inputs, so an f32 near-tie is wider than the formula's rounding.
    let floor = match dtype {
        DType::F32 => 1e-5,
        DType::F64 => 0.0,
    };
    match values_at(k, inputs, row, slot, g, w) {
        Some((vg, vw)) => (vg - vw).abs() <= tol.max(floor * vw.abs().max(1.0)),
        None => false,
    }
}

/// Whether the formula's values at inner indices `g` and `w` (as [`same_value_at`]) are within
/// `rel` of each other, relative to the larger magnitude.
pub fn values_within(
    k: &CheckedKernel,
    inputs: &[(String, HostArray)],
    row: usize,
    slot: usize,
    g: f64,
    w: f64,
    rel: f64,
) -> bool {
    match values_at(k, inputs, row, slot, g, w) {
        Some((vg, vw)) => (vg - vw).abs() <= rel * vg.abs().max(vw.abs()),
        None => false,
    }
}

/// The interpreter's values of the formula's component `slot` (modulo its dimension) for
/// output row `row` at inner indices `g` and `w`, or `None` where either is not an index.
fn values_at(
    k: &CheckedKernel,
    inputs: &[(String, HostArray)],
    row: usize,
    slot: usize,
    g: f64,
    w: f64,
) -> Option<(f64, f64)> {
    let inner = |t: f64| (t >= 0.0 && t.fract() == 0.0).then_some(t as usize);
    let (gi, wi) = (inner(g)?, inner(w)?);
    let evaluator = PointEvaluator::new(&k.formula).expect("derivatives are expanded");
    let mut scratch = evaluator.scratch();
    let arrays = driver::bind_arguments(k, inputs).expect("generated inputs bind");
    let data: Vec<Vec<f64>> = arrays.iter().map(|a| a.to_f64()).collect();
    let fdim = k.signature.reduction.fdim.max(1);
    let mut value_at = |t: usize| -> Option<f64> {
        let (i, j) = match k.signature.axis {
            Axis::I => (row, t),
            Axis::J => (t, row),
        };
        let vars = &k.formula.vars;
        let rows_ok = vars.iter().zip(&data).all(|(var, d)| {
            let r = match var.category {
                Category::I => i,
                Category::J => j,
                Category::Param => 0,
            };
            (r + 1) * var.dim <= d.len()
        });
        if !rows_ok {
            return None;
        }
        let value = evaluator.eval(&mut scratch, |v| {
            let dim = vars[v].dim;
            let r = match vars[v].category {
                Category::I => i,
                Category::J => j,
                Category::Param => 0,
            };
            &data[v][r * dim..(r + 1) * dim]
        });
        value.get(slot % fdim).copied()
    };
    Some((value_at(gi)?, value_at(wi)?))
}
