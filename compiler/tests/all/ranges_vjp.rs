//! Gradients of block-sparse reductions (`vjp::run_many_ranges`, KeOps's 6-tuple) against the
//! same gradients assembled from dense backward passes on each kept block of clusters (exact
//! for sums, and for the LogSumExp family given the block-sparse forward's output as saved
//! rows: their backward is then a sum over pairs), both axes, f32 and f64, every input at
//! once; a pattern that keeps every pair against the dense gradient (Min_ArgMin, through the
//! selected entries); halves that disagree are refused.

use keops_runtime::{DType, HostArray, Ranges, RangesPair};
use keopsc::driver::{self, Backend};
use keopsc::source::SourceFile;
use keopsc::vjp;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Row clusters `[start, end)` of odd sizes covering `0..n` except a first few rows in none.
fn clusters(n: usize, seed: u64) -> Vec<(usize, usize)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    let mut at = 3.min(n);
    while at < n {
        let len = rng.random_range(1..40).min(n - at);
        out.push((at, at + len));
        at += len;
    }
    out
}

/// Both halves of the pattern `keep[ci][cj]` over the clusters (adjacent kept ranges merged).
fn pattern(ci: &[(usize, usize)], cj: &[(usize, usize)], keep: &[Vec<bool>]) -> RangesPair {
    let half =
        |rows: &[(usize, usize)], cols: &[(usize, usize)], kept: &dyn Fn(usize, usize) -> bool| {
            let mut r = Ranges {
                rows: Vec::new(),
                slices: Vec::new(),
                inner: Vec::new(),
            };
            for (a, &range) in rows.iter().enumerate() {
                let first = r.inner.len();
                for (b, &col) in cols.iter().enumerate() {
                    if kept(a, b) {
                        let own = r.inner.len() > first;
                        match r.inner.last_mut() {
                            Some(last) if own && last.1 == col.0 => last.1 = col.1,
                            _ => r.inner.push(col),
                        }
                    }
                }
                r.rows.push(range);
                r.slices.push(r.inner.len());
            }
            r
        };
    RangesPair {
        over_j: half(ci, cj, &|a, b| keep[a][b]),
        over_i: half(cj, ci, &|b, a| keep[a][b]),
    }
}

/// A `(rows, dim)` array of `dtype` drawn uniformly from [-1, 1).
fn random_array(rng: &mut StdRng, rows: usize, dim: usize, dtype: DType) -> HostArray {
    let data: Vec<f64> = (0..rows * dim)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    match dtype {
        DType::F64 => HostArray::from_f64(vec![rows, dim], data),
        DType::F32 => {
            HostArray::from_f32(vec![rows, dim], data.iter().map(|&v| v as f32).collect())
        }
    }
}

fn rows_of(a: &HostArray, range: (usize, usize)) -> HostArray {
    let dim = a.shape.get(1).copied().unwrap_or(1);
    let data: Vec<f64> = a.to_f64()[range.0 * dim..range.1 * dim].to_vec();
    let shape = vec![range.1 - range.0, dim];
    match a.dtype() {
        DType::F64 => HostArray::from_f64(shape, data),
        DType::F32 => HostArray::from_f32(shape, data.iter().map(|&v| v as f32).collect()),
    }
}

#[test]
fn gradients_of_block_sparse_reductions_are_those_of_the_kept_blocks() {
    let cases = [
        "Sum_Reduction(Exp(-SqDist(x, y) * g) * b, {axis})",
        "LogSumExp_Reduction(-SqDist(x, y) * g + Sum(b), {axis})",
    ];
    for (c, case) in cases.iter().enumerate() {
        // Dimension 20: the compiled passes use Gram and wide products.
        for (axis, dim) in [(0usize, 3usize), (1, 3), (0, 20), (1, 20)] {
            let text = format!(
                "kernel t {{ x = Vi({dim}) y = Vj({dim}) b = Vj(2) g = Pm(1) {} }}\n",
                case.replace("{axis}", &axis.to_string())
            );
            let compiled =
                driver::compile(SourceFile::new("<ranges vjp>", &text)).expect("compiles");
            let kernel = &compiled.kernels[0];
            let plan = vjp::plan_many(kernel, &["x", "y", "b", "g"]).expect("differentiable");
            let (n, m) = (131, 97);
            let (ci, cj) = (clusters(n, 1), clusters(m, 2));
            let mut rng = StdRng::seed_from_u64(3 + c as u64);
            let keep: Vec<Vec<bool>> = ci
                .iter()
                .map(|_| cj.iter().map(|_| rng.random_bool(0.4)).collect())
                .collect();
            let ranges = pattern(&ci, &cj, &keep);
            for dtype in [DType::F64, DType::F32] {
                let mut random = |rows: usize, dim: usize| random_array(&mut rng, rows, dim, dtype);
                let (x, y, b) = (random(n, dim), random(m, dim), random(m, 2));
                let g = match dtype {
                    DType::F64 => HostArray::from_f64(vec![1], vec![2.0]),
                    DType::F32 => HostArray::from_f32(vec![1], vec![2.0]),
                };
                let out_rows = if axis == 0 { n } else { m };
                let dout = kernel.signature.output_dim();
                let cot = random(out_rows, dout);
                let arrays = [&x, &y, &b, &g];
                let forward = ranges.for_axis(kernel.signature.axis);
                let cpu = driver::EvalOptions::on(Backend::Cpu);
                let saved_out = driver::evaluate(kernel, &arrays, cpu.ranges(forward))
                    .expect("forward")
                    .output;
                let saved = vjp::saved_rows(&plan.saved, &plan.forward, &arrays, Backend::Cpu)
                    .expect("saved")
                    .map(|_| saved_out.clone());
                let got = vjp::run_many_ranges(&plan, &arrays, &cot, saved.as_ref(), &ranges)
                    .expect("block-sparse backward");

                // The same from each kept block's dense backward.
                let mut want: Vec<Vec<f64>> = [&x, &y, &b, &g]
                    .iter()
                    .map(|a| vec![0.0; a.to_f64().len()])
                    .collect();
                for (a, &rx) in ci.iter().enumerate() {
                    for (bb, &ry) in cj.iter().enumerate() {
                        if !keep[a][bb] {
                            continue;
                        }
                        let (xs, ys, bs) = (rows_of(&x, rx), rows_of(&y, ry), rows_of(&b, ry));
                        let out_range = if axis == 0 { rx } else { ry };
                        let cs = rows_of(&cot, out_range);
                        let ss = saved.as_ref().map(|s| rows_of(s, out_range));
                        let sub = [&xs, &ys, &bs, &g];
                        let grads = vjp::run_many(&plan, &sub, &cs, ss.as_ref(), Backend::Interp)
                            .expect("dense backward of a block");
                        for (k, (grad, offset)) in grads
                            .iter()
                            .zip([rx.0 * dim, ry.0 * dim, ry.0 * 2, 0])
                            .enumerate()
                        {
                            for (t, v) in grad.to_f64().iter().enumerate() {
                                want[k][offset + t] += v;
                            }
                        }
                    }
                }
                let tol = match dtype {
                    DType::F64 => 1e-10,
                    DType::F32 => 2e-4,
                };
                for (k, name) in ["x", "y", "b", "g"].iter().enumerate() {
                    let got = got[k].to_f64();
                    let scale = want[k].iter().map(|v| v.abs()).fold(1.0, f64::max);
                    for (t, (a, w)) in got.iter().zip(&want[k]).enumerate() {
                        assert!(
                            (a - w).abs() <= tol * scale,
                            "{case} axis {axis} {dtype}: d{name}[{t}] {a} against {w}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn a_pattern_keeping_every_pair_gives_the_dense_gradient() {
    for axis in [0, 1] {
        let text = format!(
            "kernel t {{ x = Vi(2) y = Vj(2) Min_ArgMin_Reduction(SqDist(x, y), {axis}) }}\n"
        );
        let compiled = driver::compile(SourceFile::new("<ranges vjp>", &text)).expect("compiles");
        let kernel = &compiled.kernels[0];
        let plan = vjp::plan_many(kernel, &["x", "y"]).expect("differentiable");
        let mut rng = StdRng::seed_from_u64(9);
        let (n, m) = (40, 57);
        let mut random = |rows: usize, dim: usize| {
            HostArray::from_f64(
                vec![rows, dim],
                (0..rows * dim)
                    .map(|_| rng.random_range(-1.0..1.0))
                    .collect(),
            )
        };
        let (x, y) = (random(n, 2), random(m, 2));
        let out_rows = if axis == 0 { n } else { m };
        let cot = random(out_rows, 2);
        let all = pattern(&[(0, n)], &[(0, m)], &[vec![true]]);
        let got = vjp::run_many_ranges(&plan, &[&x, &y], &cot, None, &all).expect("runs");
        let want = vjp::run_many(&plan, &[&x, &y], &cot, None, Backend::Cpu).expect("runs");
        for (a, w) in got.iter().zip(&want) {
            assert_eq!(a.to_f64(), w.to_f64(), "axis {axis}");
        }
    }
}

#[test]
fn halves_that_keep_other_pairs_are_refused() {
    let text = "kernel t { x = Vi(1) y = Vj(1) Sum_Reduction(x * y, 0) }\n";
    let compiled = driver::compile(SourceFile::new("<ranges vjp>", text)).expect("compiles");
    let kernel = &compiled.kernels[0];
    let plan = vjp::plan_many(kernel, &["x"]).expect("differentiable");
    let x = HostArray::from_f64(vec![4, 1], vec![1.0; 4]);
    let y = HostArray::from_f64(vec![4, 1], vec![1.0; 4]);
    let cot = HostArray::from_f64(vec![4, 1], vec![1.0; 4]);
    let mut ranges = pattern(&[(0, 2), (2, 4)], &[(0, 4)], &[vec![true], vec![false]]);
    ranges.over_i.inner = vec![(0, 4)];
    let err = vjp::run_many_ranges(&plan, &[&x, &y], &cot, None, &ranges).unwrap_err();
    assert!(
        err.to_string()
            .contains("the two halves must describe the same pairs"),
        "{err}"
    );
    // The interpreter has no block-sparse evaluation: refused before any pass runs.
    let all = pattern(&[(0, 4)], &[(0, 4)], &[vec![true]]);
    let err =
        vjp::run_many_ranges_on(&plan, &[&x, &y], &cot, None, &all, Backend::Interp).unwrap_err();
    assert!(err.to_string().contains("cpu or cuda backend"), "{err}");
}

/// The gradients with every pass as the block-sparse GPU kernel (`Backend::Cuda`) against the
/// CPU's, for a sum and a LogSumExp on both axes, in f32 and f64 (the Min_ArgMin's selected
/// entries through the GPU's dense kernel).
#[cfg(feature = "cuda")]
#[test]
#[ignore = "runs on a CUDA GPU: cargo test -p keopsc --features cuda -- --ignored, on a machine with one"]
fn block_sparse_gradients_on_the_gpu_match_the_cpu() {
    let cases = [
        "Sum_Reduction(Exp(-SqDist(x, y) * g) * b, {axis})",
        "LogSumExp_Reduction(-SqDist(x, y) * g + Sum(b), {axis})",
        "Min_ArgMin_Reduction(SqDist(x, y) + Sum(b) * g, {axis})",
    ];
    for case in cases {
        for axis in [0usize, 1] {
            let text = format!(
                "kernel t {{ x = Vi(3) y = Vj(3) b = Vj(2) g = Pm(1) {} }}\n",
                case.replace("{axis}", &axis.to_string())
            );
            let compiled =
                driver::compile(SourceFile::new("<ranges vjp>", &text)).expect("compiles");
            let kernel = &compiled.kernels[0];
            let plan = vjp::plan_many(kernel, &["x", "y", "b", "g"]).expect("differentiable");
            let (n, m) = (1000, 777);
            let (ci, cj) = (clusters(n, 4), clusters(m, 5));
            let mut rng = StdRng::seed_from_u64(6);
            let keep: Vec<Vec<bool>> = ci
                .iter()
                .map(|_| cj.iter().map(|_| rng.random_bool(0.3)).collect())
                .collect();
            let ranges = pattern(&ci, &cj, &keep);
            for dtype in [DType::F64, DType::F32] {
                let mut random = |rows: usize, dim: usize| random_array(&mut rng, rows, dim, dtype);
                let (x, y, b, g) = (random(n, 3), random(m, 3), random(m, 2), random(1, 1));
                let cot = random(if axis == 0 { n } else { m }, kernel.signature.output_dim());
                let arrays = [&x, &y, &b, &g];
                let want = vjp::run_many_ranges(&plan, &arrays, &cot, None, &ranges).expect("cpu");
                let got =
                    vjp::run_many_ranges_on(&plan, &arrays, &cot, None, &ranges, Backend::Cuda)
                        .unwrap_or_else(|e| panic!("{case} axis {axis} {dtype}: {e}"));
                let tol = match dtype {
                    DType::F64 => 1e-10,
                    DType::F32 => 2e-4,
                };
                for (k, name) in ["x", "y", "b", "g"].iter().enumerate() {
                    let (got, want) = (got[k].to_f64(), want[k].to_f64());
                    let scale = want.iter().map(|v| v.abs()).fold(1.0, f64::max);
                    for (t, (a, w)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (a - w).abs() <= tol * scale,
                            "{case} axis {axis} {dtype}: d{name}[{t}] {a} against {w}"
                        );
                    }
                }
            }
        }
    }
}
