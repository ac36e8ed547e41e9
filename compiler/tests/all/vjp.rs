//! Gradients of whole reductions (`keopsc::vjp`): every differentiable reduction, with respect
//! to an i-variable, a j-variable and a parameter, for both axes, against central finite
//! differences of the reference interpreter (f64), on the interpreter and on the CPU backend in
//! f64 and f32; closed forms where they are short; second order (the vjp of a backward kernel)
//! against finite differences of the backward kernel; the errors.

use keops_runtime::{DType, HostArray};
use keopsc::check::CheckedKernel;
use keopsc::driver::{self, Backend};
use keopsc::source::SourceFile;
use keopsc::vjp::{self, VjpError, VjpRunError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// N and M: odd, and unequal, so that a mixed-up axis cannot pass.
const N: usize = 5;
const M: usize = 7;

fn kernel(source: &str) -> CheckedKernel {
    let compiled = match driver::compile(SourceFile::new("<test>", source)) {
        Ok(c) => c,
        Err((_, d)) => panic!("{source}\n{d:?}"),
    };
    compiled.kernels.into_iter().next().expect("one kernel")
}

/// Random f64 inputs for every argument of `kernel` (rows N for Vi, M for Vj).
fn inputs(kernel: &CheckedKernel, rng: &mut StdRng) -> Vec<(String, HostArray)> {
    kernel
        .signature
        .args
        .iter()
        .map(|a| {
            let rows = match a.category {
                keops_runtime::Category::I => N,
                keops_runtime::Category::J => M,
                keops_runtime::Category::Param => 1,
            };
            let data: Vec<f64> = (0..rows * a.dim)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let shape = match a.category {
                keops_runtime::Category::Param => vec![a.dim],
                _ => vec![rows, a.dim],
            };
            (a.name.clone(), HostArray::from_f64(shape, data))
        })
        .collect()
}

fn output(kernel: &CheckedKernel, inputs: &[(String, HostArray)]) -> HostArray {
    driver::evaluate(kernel, inputs, Backend::Interp)
        .expect("the forward runs")
        .output
}

/// `sum(G * out)` in f64.
fn loss(kernel: &CheckedKernel, inputs: &[(String, HostArray)], g: &[f64]) -> f64 {
    let out = output(kernel, inputs).to_f64();
    out.iter().zip(g).map(|(a, b)| a * b).sum()
}

/// The central finite-difference gradient of `sum(G * out)` with respect to `wrt`.
fn finite_difference(
    kernel: &CheckedKernel,
    inputs: &[(String, HostArray)],
    wrt: &str,
    g: &[f64],
) -> Vec<f64> {
    let h = 1e-6;
    let at = inputs.iter().position(|(n, _)| n == wrt).expect("wrt");
    let base = inputs[at].1.to_f64();
    (0..base.len())
        .map(|t| {
            let moved = |delta: f64| {
                let mut data = base.clone();
                data[t] += delta;
                let mut changed = inputs.to_vec();
                changed[at].1 = HostArray::from_f64(inputs[at].1.shape.clone(), data);
                loss(kernel, &changed, g)
            };
            (moved(h) - moved(-h)) / (2.0 * h)
        })
        .collect()
}

fn to_f32(inputs: &[(String, HostArray)]) -> Vec<(String, HostArray)> {
    inputs
        .iter()
        .map(|(n, a)| {
            let data = a.to_f64().into_iter().map(|x| x as f32).collect();
            (n.clone(), HostArray::from_f32(a.shape.clone(), data))
        })
        .collect()
}

fn assert_close(what: &str, got: &[f64], expected: &[f64], tol: f64) {
    assert_eq!(got.len(), expected.len(), "{what}: length");
    let scale = expected.iter().fold(1.0f64, |s, x| s.max(x.abs()));
    for (k, (a, b)) in got.iter().zip(expected).enumerate() {
        assert!(
            (a - b).abs() <= tol * scale,
            "{what}: component {k}: {a} against {b} (scale {scale})\n got {got:?}\n expected {expected:?}"
        );
    }
}

/// Every input of `kernel`: the vjp on the interpreter, and on the CPU in f64 and f32, against
/// finite differences. Returns the interpreter's gradients.
fn check_all_inputs(kernel: &CheckedKernel, seed: u64) -> Vec<(String, Vec<f64>)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let inputs = inputs(kernel, &mut rng);
    let out = output(kernel, &inputs);
    let g: Vec<f64> = (0..out.len())
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let cotangent = HostArray::from_f64(out.shape.clone(), g.clone());
    let mut grads = Vec::new();
    for spec in &kernel.signature.args {
        let what = format!("{} d/d{}", kernel.name, spec.name);
        let expected = finite_difference(kernel, &inputs, &spec.name, &g);
        let interp = vjp::vjp(kernel, &spec.name, &inputs, &cotangent, Backend::Interp)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let passed = &inputs.iter().find(|(n, _)| *n == spec.name).unwrap().1;
        assert_eq!(interp.shape, passed.shape, "{what}: shape");
        assert_close(
            &format!("{what} (interp)"),
            &interp.to_f64(),
            &expected,
            1e-6,
        );
        let cpu = vjp::vjp(kernel, &spec.name, &inputs, &cotangent, Backend::Cpu)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_close(&format!("{what} (cpu f64)"), &cpu.to_f64(), &expected, 1e-6);
        let g32 = to_f32(&[("G".into(), cotangent.clone())]).remove(0).1;
        let cpu32 = vjp::vjp(kernel, &spec.name, &to_f32(&inputs), &g32, Backend::Cpu)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(cpu32.dtype(), DType::F32, "{what}");
        assert_close(
            &format!("{what} (cpu f32)"),
            &cpu32.to_f64(),
            &expected,
            2e-3,
        );
        grads.push((spec.name.clone(), interp.to_f64()));
    }
    grads
}

/// A kernel over x = Vi(3), y = Vj(3), b = Vj(2), s = Pm(1) ending with `reduction`, where
/// `{F}` and `{axis}` are filled in.
fn kernel_with(reduction: &str, axis: usize) -> CheckedKernel {
    let text = format!(
        "kernel k {{\n x = Vi(3)\n y = Vj(3)\n b = Vj(2)\n s = Pm(1)\n {}\n}}\n",
        reduction.replace("{axis}", &axis.to_string())
    );
    kernel(&text)
}

/// Every differentiable reduction, with i-, j- and parameter inputs that all reach `F` (and
/// `V` for weighted ones), values spread enough that no two entries tie.
const REDUCTIONS: &[&str] = &[
    "Sum_Reduction(Exp(-SqDist(x, y) * s) * b, {axis})",
    "LogSumExp_Reduction(-SqDist(x, y) * s + Elem(b, 0) * 2, {axis})",
    "SumSoftMaxWeight_Reduction(-SqDist(x, y) * s + Elem(b, 1), b * Sum(x) + Extract(y, 0, 2), {axis})",
    "Max_SumShiftExp_Reduction(-SqDist(x, y) * s + Elem(b, 0) * 3, {axis})",
    "LogSumExpWeight_Reduction(-SqDist(x, y) * s, Exp(b + Elem(x, 0)), {axis})",
    "Max_SumShiftExpWeight_Reduction(-SqDist(x, y) * s + Elem(b, 0) * 3, b * Sum(x), {axis})",
    "Min_Reduction(SqDist(x, y) * s + b * 3, {axis})",
    "Max_Reduction(Sin(x) * s + Elem(y, 0) * 2 + Elem(b, 1), {axis})",
    "Min_ArgMin_Reduction(SqDist(x, y) * s + b * 3, {axis})",
    "Max_ArgMax_Reduction(Sin(x) * s + Elem(y, 0) * 2 + Elem(b, 1), {axis})",
    "KMin_Reduction(SqDist(x, y) * s + Elem(b, 0) * 3, 3, {axis})",
    "KMin_ArgKMin_Reduction(SqDist(x, y) * s + b * 3, 2, {axis})",
];

#[test]
fn every_reduction_every_input_both_axes_against_finite_differences() {
    for (k, reduction) in REDUCTIONS.iter().enumerate() {
        for axis in [0, 1] {
            let kernel = kernel_with(reduction, axis);
            check_all_inputs(&kernel, 100 + 2 * k as u64 + axis as u64);
        }
    }
}

#[test]
fn gaussian_sum_matches_its_closed_form() {
    // a_i = sum_j exp(-|x_i - y_j|^2 s) b_j: da/db_j = sum_i K_ij G_i,
    // da/dx_i = sum_j -2 s K_ij (x_i - y_j) <G_i, b_j>.
    let kernel = kernel_with("Sum_Reduction(Exp(-SqDist(x, y) * s) * b, {axis})", 0);
    let mut rng = StdRng::seed_from_u64(7);
    let inputs = inputs(&kernel, &mut rng);
    let data: Vec<Vec<f64>> = inputs.iter().map(|(_, a)| a.to_f64()).collect();
    let (x, y, b, s) = (&data[0], &data[1], &data[2], data[3][0]);
    let g: Vec<f64> = (0..N * 2).map(|_| rng.random_range(-1.0..1.0)).collect();
    let kij = |i: usize, j: usize| {
        let d: f64 = (0..3).map(|c| (x[i * 3 + c] - y[j * 3 + c]).powi(2)).sum();
        (-d * s).exp()
    };
    let mut db = vec![0.0; M * 2];
    let mut dx = vec![0.0; N * 3];
    for i in 0..N {
        for j in 0..M {
            let gb: f64 = (0..2).map(|c| g[i * 2 + c] * b[j * 2 + c]).sum();
            for c in 0..2 {
                db[j * 2 + c] += kij(i, j) * g[i * 2 + c];
            }
            for c in 0..3 {
                dx[i * 3 + c] += -2.0 * s * kij(i, j) * (x[i * 3 + c] - y[j * 3 + c]) * gb;
            }
        }
    }
    let cotangent = HostArray::from_f64(vec![N, 2], g);
    for backend in [Backend::Interp, Backend::Cpu] {
        let got = vjp::vjp(&kernel, "b", &inputs, &cotangent, backend).unwrap();
        assert_close("db", &got.to_f64(), &db, 1e-12);
        let got = vjp::vjp(&kernel, "x", &inputs, &cotangent, backend).unwrap();
        assert_close("dx", &got.to_f64(), &dx, 1e-12);
    }
}

#[test]
fn logsumexp_gradient_is_the_softmax() {
    // L_i = log sum_j exp(F_ij) with F_ij = <x_i, y_j>: dL/dy_j = sum_i G_i softmax_j(F)_ij x_i.
    let kernel = kernel("kernel k {\n x = Vi(2)\n y = Vj(2)\n LogSumExp_Reduction((x|y), 0)\n}\n");
    let mut rng = StdRng::seed_from_u64(9);
    let inputs = inputs(&kernel, &mut rng);
    let (x, y) = (inputs[0].1.to_f64(), inputs[1].1.to_f64());
    let g: Vec<f64> = (0..N).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut dy = vec![0.0; M * 2];
    for i in 0..N {
        let f: Vec<f64> = (0..M)
            .map(|j| x[i * 2] * y[j * 2] + x[i * 2 + 1] * y[j * 2 + 1])
            .collect();
        let total: f64 = f.iter().map(|v| v.exp()).sum();
        for j in 0..M {
            for c in 0..2 {
                dy[j * 2 + c] += g[i] * f[j].exp() / total * x[i * 2 + c];
            }
        }
    }
    let cotangent = HostArray::from_f64(vec![N], g);
    for backend in [Backend::Interp, Backend::Cpu] {
        let got = vjp::vjp(&kernel, "y", &inputs, &cotangent, backend).unwrap();
        assert_close("dy", &got.to_f64(), &dy, 1e-12);
    }
}

#[test]
fn min_gradient_goes_to_the_first_of_tied_entries() {
    // F_ij = (y_j - x_i)^2 with y = (1, 3, 1, 5): every row has its minimum at j = 0 and j = 2
    // when x = 1; Min_ArgMin returns 0, and the gradient goes to y_0 only.
    let kernel =
        kernel("kernel k {\n x = Vi(1)\n y = Vj(1)\n Min_Reduction(Square(y - x) + y, 0)\n}\n");
    let inputs = vec![
        (
            "x".to_string(),
            HostArray::from_f64(vec![3, 1], vec![0.5, 0.5, 0.5]),
        ),
        (
            "y".to_string(),
            HostArray::from_f64(vec![4, 1], vec![1.0, 3.0, 1.0, 5.0]),
        ),
    ];
    let g = HostArray::from_f64(vec![3, 1], vec![1.0, 2.0, 4.0]);
    for backend in [Backend::Interp, Backend::Cpu] {
        let dy = vjp::vjp(&kernel, "y", &inputs, &g, backend).unwrap();
        // d/dy (y - x)^2 + y = 2 (y - x) + 1 = 2 at y = 1, x = 0.5; summed over the rows' G.
        assert_eq!(dy.to_f64(), vec![14.0, 0.0, 0.0, 0.0], "{backend}");
    }
}

#[test]
fn kmin_with_fewer_entries_than_k_passes_no_gradient_through_empty_slots() {
    let kernel =
        kernel("kernel k {\n x = Vi(1)\n y = Vj(1)\n KMin_Reduction(Square(y - x), 3, 0)\n}\n");
    let inputs = vec![
        ("x".to_string(), HostArray::from_f64(vec![1, 1], vec![0.0])),
        (
            "y".to_string(),
            HostArray::from_f64(vec![2, 1], vec![1.0, -2.0]),
        ),
    ];
    let g = HostArray::from_f64(vec![1, 3], vec![1.0, 10.0, 100.0]);
    let dy = vjp::vjp(&kernel, "y", &inputs, &g, Backend::Interp).unwrap();
    // Ranks: y = 1 (F = 1) first, y = -2 (F = 4) second; the third slot is empty.
    assert_eq!(dy.to_f64(), vec![2.0, -40.0]);
}

/// The vjp of a backward kernel against finite differences of that backward kernel: second
/// derivatives (Hessian-vector products), the saved forward held as an input.
#[test]
fn vjp_of_a_backward_kernel_against_finite_differences() {
    for (k, reduction) in [
        "Sum_Reduction(Exp(-SqDist(x, y) * s) * b, {axis})",
        "LogSumExp_Reduction(-SqDist(x, y) * s + Elem(b, 0) * 2, {axis})",
        "SumSoftMaxWeight_Reduction(-SqDist(x, y) * s + Elem(b, 1), b * Sum(x) + Extract(y, 0, 2), {axis})",
    ]
    .iter()
    .enumerate()
    {
        for axis in [0, 1] {
            let forward = kernel_with(reduction, axis);
            for wrt in ["x", "y", "s"] {
                let plan = vjp::plan(&forward, wrt).unwrap();
                let backward = plan.dense.expect("a dense backward");
                check_all_inputs(&backward, 300 + 10 * k as u64 + axis as u64);
            }
        }
    }
    // A formula that holds a Grad of its own.
    let forward = kernel_with(
        "Sum_Reduction(Grad(Exp(-SqDist(x, y) * s), x, Elem(b, 0)), {axis})",
        0,
    );
    check_all_inputs(&forward, 400);
    let backward = vjp::plan(&forward, "y").unwrap().dense.unwrap();
    check_all_inputs(&backward, 401);
}

#[test]
fn errors_name_what_is_wrong() {
    let forward = kernel_with("Sum_Reduction(Exp(-SqDist(x, y) * s) * b, {axis})", 0);
    let err = vjp::plan(&forward, "z").unwrap_err();
    assert!(matches!(err, VjpError::UnknownInput { .. }));
    assert!(err.to_string().contains("`x`, `y`, `b`, `s`"), "{err}");
    for reduction in [
        "ArgMin_Reduction(SqDist(x, y), {axis})",
        "ArgMax_Reduction(SqDist(x, y), {axis})",
        "ArgKMin_Reduction(SqDist(x, y), 2, {axis})",
    ] {
        let err = vjp::plan(&kernel_with(reduction, 1), "x").unwrap_err();
        assert!(matches!(err, VjpError::NotDifferentiable { .. }), "{err}");
        assert!(err.to_string().contains("indices only"), "{err}");
    }
    let mut rng = StdRng::seed_from_u64(1);
    let inputs = inputs(&forward, &mut rng);
    for (shape, data) in [
        (vec![N, 3], vec![0.0; N * 3]),
        (vec![M, 2], vec![0.0; M * 2]),
    ] {
        let g = HostArray::from_f64(shape, data);
        let err = vjp::vjp(&forward, "x", &inputs, &g, Backend::Interp).unwrap_err();
        assert!(matches!(err, VjpRunError::Cotangent(_)), "{err}");
        assert!(err.to_string().contains("(5, 2)"), "{err}");
    }
    let g = HostArray::from_f32(vec![N, 2], vec![0.0; N * 2]);
    let err = vjp::vjp(&forward, "x", &inputs, &g, Backend::Interp).unwrap_err();
    assert!(err.to_string().contains("float32"), "{err}");
}

/// Every input at once (`plan_many`), in an order unlike the arguments', against finite
/// differences: the same gradients as one input at a time, from two dense passes at most
/// (one per axis, a parameter with the forward's own axis) and one selected-entries pass.
#[test]
fn several_inputs_at_once_against_finite_differences() {
    for (k, reduction) in REDUCTIONS.iter().enumerate() {
        for axis in [0, 1] {
            let kernel = kernel_with(reduction, axis);
            let mut rng = StdRng::seed_from_u64(500 + 2 * k as u64 + axis as u64);
            let inputs = inputs(&kernel, &mut rng);
            let out = output(&kernel, &inputs);
            let g: Vec<f64> = (0..out.len())
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let cotangent = HostArray::from_f64(out.shape.clone(), g.clone());
            let wrt = ["s", "y", "x", "b"];
            let plan = vjp::plan_many(&kernel, &wrt).unwrap();
            assert!(
                plan.dense.len() <= 2,
                "{}: {} passes",
                kernel.name,
                plan.dense.len()
            );
            for pass in &plan.dense {
                // A pass holds the inputs of one axis; the parameter rides with the forward's.
                let axis_of = |w: usize| match kernel.signature.args[w].category {
                    keops_runtime::Category::I => keops_runtime::Axis::I,
                    keops_runtime::Category::J => keops_runtime::Axis::J,
                    keops_runtime::Category::Param => kernel.signature.axis,
                };
                assert!(pass
                    .outputs
                    .iter()
                    .all(|&w| axis_of(w) == pass.kernel.signature.axis));
            }
            let g32 = to_f32(&[("G".into(), cotangent.clone())]).remove(0).1;
            for (backend, inputs, g, tol) in [
                (Backend::Interp, inputs.clone(), cotangent.clone(), 1e-6),
                (Backend::Cpu, inputs.clone(), cotangent.clone(), 1e-6),
                (Backend::Cpu, to_f32(&inputs), g32, 2e-3),
            ] {
                let grads = vjp::vjp_many(&kernel, &wrt, &inputs, &g, backend).unwrap();
                assert_eq!(grads.len(), wrt.len());
                for (name, got) in wrt.iter().zip(&grads) {
                    let what = format!("{} d/d{name} among all ({backend})", kernel.name);
                    let passed = &inputs.iter().find(|(n, _)| n == name).unwrap().1;
                    assert_eq!(got.shape, passed.shape, "{what}: shape");
                    assert_eq!(got.dtype(), passed.dtype(), "{what}: dtype");
                    let expected =
                        finite_difference(&kernel, &inputs_f64(&inputs), name, &g_f64(&g));
                    assert_close(&what, &got.to_f64(), &expected, tol);
                }
            }
        }
    }
}

fn inputs_f64(inputs: &[(String, HostArray)]) -> Vec<(String, HostArray)> {
    inputs
        .iter()
        .map(|(n, a)| (n.clone(), HostArray::from_f64(a.shape.clone(), a.to_f64())))
        .collect()
}

fn g_f64(g: &HostArray) -> Vec<f64> {
    g.to_f64()
}

#[test]
fn plan_many_refuses_nothing_twice_and_unknown_inputs() {
    let forward = kernel_with("Sum_Reduction(Exp(-SqDist(x, y) * s) * b, {axis})", 0);
    let err = vjp::plan_many(&forward, &[]).unwrap_err();
    assert!(matches!(err, VjpError::NoInput { .. }), "{err}");
    let err = vjp::plan_many(&forward, &["x", "b", "x"]).unwrap_err();
    assert!(matches!(err, VjpError::DuplicateInput { .. }), "{err}");
    assert!(err.to_string().contains("`x`"), "{err}");
    let err = vjp::plan_many(&forward, &["x", "q"]).unwrap_err();
    assert!(matches!(err, VjpError::UnknownInput { .. }), "{err}");
    let err = vjp::plan_many(
        &kernel_with("ArgMin_Reduction(SqDist(x, y), {axis})", 0),
        &["x"],
    )
    .unwrap_err();
    assert!(matches!(err, VjpError::NotDifferentiable { .. }), "{err}");
}

/// The saved forward passed in (as the bindings hold it): the same gradients as when the
/// plan computes it, for the LogSumExp family; a saved array of the wrong shape or dtype is
/// refused by name.
#[test]
fn saved_forward_passed_in_gives_the_same_gradients() {
    for (k, reduction) in REDUCTIONS[1..6].iter().enumerate() {
        for axis in [0, 1] {
            let kernel = kernel_with(reduction, axis);
            let mut rng = StdRng::seed_from_u64(700 + 2 * k as u64 + axis as u64);
            let inputs = inputs(&kernel, &mut rng);
            let out = output(&kernel, &inputs);
            let g: Vec<f64> = (0..out.len())
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let cotangent = HostArray::from_f64(out.shape.clone(), g.clone());
            let arrays: Vec<&HostArray> = inputs.iter().map(|(_, a)| a).collect();
            let plan = vjp::plan_many(&kernel, &["x", "y", "b", "s"]).unwrap();
            let saved = vjp::saved_rows(&plan.saved, &plan.forward, &arrays, Backend::Interp)
                .unwrap()
                .expect("the LogSumExp family saves rows");
            if kernel.signature.reduction.kind != keops_runtime::ReductionKind::SumSoftMaxWeight {
                // The saved rows are the forward output itself.
                assert_close("saved", &saved.to_f64(), &out.to_f64(), 1e-12);
            } else {
                // (out, L): the output first.
                let wdim = out.to_f64().len() / out.shape[0];
                let firsts: Vec<f64> = saved
                    .to_f64()
                    .chunks(wdim + 1)
                    .flat_map(|r| r[..wdim].to_vec())
                    .collect();
                assert_close("saved out", &firsts, &out.to_f64(), 1e-12);
            }
            for backend in [Backend::Interp, Backend::Cpu] {
                let fresh = vjp::run_many(&plan, &arrays, &cotangent, None, backend).unwrap();
                let given =
                    vjp::run_many(&plan, &arrays, &cotangent, Some(&saved), backend).unwrap();
                for ((a, b), name) in fresh.iter().zip(&given).zip(["x", "y", "b", "s"]) {
                    let expected = finite_difference(&kernel, &inputs, name, &g);
                    assert_close(
                        &format!("{} d/d{name} saved given", kernel.name),
                        &b.to_f64(),
                        &expected,
                        1e-6,
                    );
                    assert_close("fresh", &a.to_f64(), &b.to_f64(), 1e-12);
                }
            }
            let single = vjp::plan(&kernel, "y").unwrap();
            let got =
                vjp::run_plan_with_saved(&single, &arrays, &cotangent, Some(&saved), Backend::Cpu)
                    .unwrap();
            let expected = finite_difference(&kernel, &inputs, "y", &g);
            assert_close("single with saved", &got.to_f64(), &expected, 1e-6);
            let wrong = HostArray::from_f64(vec![3, 1], vec![0.0; 3]);
            let err = vjp::run_many(&plan, &arrays, &cotangent, Some(&wrong), Backend::Interp)
                .unwrap_err();
            assert!(matches!(err, VjpRunError::Saved(_)), "{err}");
            assert!(
                err.to_string()
                    .starts_with("the saved forward has shape (3, 1)"),
                "{err}"
            );
            let f32_saved = to_f32(&[("s".into(), saved.clone())]).remove(0).1;
            let err = vjp::run_many(
                &plan,
                &arrays,
                &cotangent,
                Some(&f32_saved),
                Backend::Interp,
            )
            .unwrap_err();
            assert!(err.to_string().contains("float32"), "{err}");
        }
    }
}

/// Second order through selected entries: the gradient of `phi = <u, dx>`, with `dx` the vjp
/// of a KMin kernel with respect to x, is the vjp of the gathered per-entry kernel (with
/// respect to the table's copy of y, b, s, cotangent `u_i` on each entry of row i), scattered
/// back to the selected rows, as a framework that holds the per-entry kernel as a primitive
/// computes it; against finite differences of `phi` (the selection is locally constant).
#[test]
fn second_order_through_selected_entries_against_finite_differences() {
    let forward = kernel_with(
        "KMin_Reduction(SqDist(x, y) * s + Elem(b, 0) * 3, 2, {axis})",
        0,
    );
    let mut rng = StdRng::seed_from_u64(900);
    let inputs = inputs(&forward, &mut rng);
    let g: Vec<f64> = (0..N * 2).map(|_| rng.random_range(-1.0..1.0)).collect();
    let u: Vec<f64> = (0..N * 3).map(|_| rng.random_range(-1.0..1.0)).collect();
    let cotangent = HostArray::from_f64(vec![N, 2], g.clone());
    let phi = |inputs: &[(String, HostArray)]| -> f64 {
        let dx = vjp::vjp(&forward, "x", inputs, &cotangent, Backend::Interp).unwrap();
        dx.to_f64().iter().zip(&u).map(|(a, b)| a * b).sum()
    };
    let plan = vjp::plan(&forward, "x").unwrap();
    let selected = plan.selected.as_ref().expect("KMin selects entries");
    assert_eq!((selected.k, selected.n), (2, 1));
    let arrays: Vec<&HostArray> = inputs.iter().map(|(_, a)| a).collect();
    let found = driver::evaluate(&selected.indices, &arrays, Backend::Interp)
        .unwrap()
        .output
        .to_f64();
    // The table: entry (i, l) holds x_i, y_j, b_j (j its l-th index), s; G = g[i, l].
    let mut entries = Vec::new();
    for i in 0..N {
        for l in 0..2 {
            entries.push((i, found[i * 4 + 2 + l] as usize, g[i * 2 + l]));
        }
    }
    let data: Vec<Vec<f64>> = arrays.iter().map(|a| a.to_f64()).collect();
    let gather = |values: &[f64], d: usize, row: &dyn Fn(&(usize, usize, f64)) -> usize| {
        let rows: Vec<f64> = entries
            .iter()
            .flat_map(|e| values[row(e) * d..(row(e) + 1) * d].to_vec())
            .collect();
        HostArray::from_f64(vec![entries.len(), d], rows)
    };
    let table = vec![
        ("x".to_string(), gather(&data[0], 3, &|e| e.0)),
        ("y".to_string(), gather(&data[1], 3, &|e| e.1)),
        ("b".to_string(), gather(&data[2], 2, &|e| e.1)),
        ("s".to_string(), inputs[3].1.clone()),
        (
            "G".to_string(),
            HostArray::from_f64(
                vec![entries.len(), 1],
                entries.iter().map(|e| e.2).collect(),
            ),
        ),
    ];
    let u_rows = gather(&u, 3, &|e| e.0);
    for (wrt, at, d) in [("y", 1, 3), ("b", 2, 2), ("s", 3, 1)] {
        let per_entry = vjp::vjp(&selected.kernel, wrt, &table, &u_rows, Backend::Interp)
            .unwrap()
            .to_f64();
        // A parameter's vjp already sums over the entries; a j-variable's is scattered.
        let mut second = vec![0.0; data[at].len()];
        if wrt == "s" {
            second = per_entry;
        } else {
            for (e, &(_, j, _)) in entries.iter().enumerate() {
                for c in 0..d {
                    second[j * d + c] += per_entry[e * d + c];
                }
            }
        }
        let h = 1e-6;
        let expected: Vec<f64> = (0..data[at].len())
            .map(|t| {
                let moved = |delta: f64| {
                    let mut changed = inputs.clone();
                    let mut values = data[at].clone();
                    values[t] += delta;
                    changed[at].1 = HostArray::from_f64(inputs[at].1.shape.clone(), values);
                    phi(&changed)
                };
                (moved(h) - moved(-h)) / (2.0 * h)
            })
            .collect();
        assert_close(&format!("d/d{wrt} <u, dx>"), &second, &expected, 1e-6);
    }
}

#[test]
fn a_second_vjp_call_reuses_the_compiled_backward_kernels() {
    use keopsc::jit_cache::JitCache;
    // A formula no other test uses, so that no other test's calls count here.
    let forward = kernel(
        "kernel reused {\n x = Vi(2)\n y = Vj(2)\n Sum_Reduction(Exp(-SqNorm2(x - y) * 0.123456789), 0)\n}\n",
    );
    let mut rng = StdRng::seed_from_u64(31);
    let inputs = inputs(&forward, &mut rng);
    let g: Vec<f64> = (0..N).map(|_| rng.random_range(-1.0..1.0)).collect();
    let cotangent = HostArray::from_f64(vec![N, 1], g);
    let backward = vjp::plan(&forward, "y").unwrap().dense.unwrap();
    let first = vjp::vjp(&forward, "y", &inputs, &cotangent, Backend::Cpu).unwrap();
    assert_eq!(
        JitCache::global().hits_of(&backward, DType::F64),
        Some(0),
        "the first call compiles the backward kernel and stores it"
    );
    let second = vjp::vjp(&forward, "y", &inputs, &cotangent, Backend::Cpu).unwrap();
    assert_eq!(
        JitCache::global().hits_of(&backward, DType::F64),
        Some(1),
        "the second call finds it compiled"
    );
    assert_eq!(first.to_f64(), second.to_f64());
    assert_eq!(JitCache::global().hits_of(&backward, DType::F32), None);
}

#[test]
fn the_jit_cache_drops_the_least_recently_used_kernel() {
    use keopsc::jit_cache::{JitCache, JitOutcome};
    let a = kernel("kernel a {\n x = Vi(1)\n y = Vj(1)\n Sum_Reduction(x * y, 0)\n}\n");
    let b = kernel("kernel b {\n x = Vi(1)\n y = Vj(1)\n Sum_Reduction(x + y, 0)\n}\n");
    let c = kernel("kernel c {\n x = Vi(1)\n y = Vj(1)\n Sum_Reduction(x - y, 0)\n}\n");
    let cache = JitCache::new(2);
    let outcome = |k: &CheckedKernel| cache.get(k, DType::F32).unwrap().1;
    assert_eq!(outcome(&a), JitOutcome::Compiled);
    assert_eq!(outcome(&b), JitOutcome::Compiled);
    assert_eq!(outcome(&a), JitOutcome::Hit);
    // Full: `b`, used least recently, goes.
    assert_eq!(outcome(&c), JitOutcome::Compiled);
    assert_eq!(cache.hits_of(&b, DType::F32), None);
    assert_eq!(cache.hits_of(&a, DType::F32), Some(1));
    // Another dtype is another entry.
    assert_eq!(cache.get(&a, DType::F64).unwrap().1, JitOutcome::Compiled);
    let stats = cache.stats();
    assert_eq!(
        (stats.hits, stats.compiled, stats.evicted, stats.entries),
        (1, 4, 2, 2)
    );
}

/// `Jit::gradients`: the runtime's `Kernel::vjp` on kernels compiled in process gives
/// `vjp_many`'s gradients (a dense plan with the saved forward, and selected entries);
/// `jit_kernel` alone stores none, and says how to get them.
#[test]
fn jit_kernels_with_gradients_give_the_vjp() {
    for source in [
        "kernel k {\n x = Vi(2)\n y = Vj(2)\n p = Pm(1)\n LogSumExp_Reduction(-SqNorm2(x - y) * p, 1)\n}\n",
        "kernel k {\n x = Vi(2)\n y = Vj(2)\n KMin_Reduction(SqNorm2(x - y), 2, 0)\n}\n",
    ] {
        let forward = kernel(source);
        let compiled = keopsc::jit::Jit::new()
            .gradients(true)
            .compile_checked(&forward)
            .unwrap();
        let mut rng = StdRng::seed_from_u64(77);
        let inputs = inputs(&forward, &mut rng);
        let rows = match forward.signature.axis {
            keops_runtime::Axis::I => N,
            keops_runtime::Axis::J => M,
        };
        let dim = forward.signature.output_dim();
        let g: Vec<f64> = (0..rows * dim).map(|_| rng.random_range(-1.0..1.0)).collect();
        let cotangent = HostArray::from_f64(vec![rows, dim], g);
        let names: Vec<&str> = forward.signature.args.iter().map(|a| a.name.as_str()).collect();
        let arrays: Vec<&HostArray> = inputs.iter().map(|(_, a)| a).collect();
        for set in [vec![names[1]], names.clone()] {
            let want = vjp::vjp_many(&forward, &set, &inputs, &cotangent, Backend::Cpu).unwrap();
            let got = compiled.vjp(&set, &arrays, &cotangent, None).unwrap();
            for (a, b) in got.iter().zip(&want) {
                assert_close("jit Kernel::vjp", &a.to_f64(), &b.to_f64(), 1e-12);
            }
        }
        let plain = driver::jit_kernel(&forward, &[DType::F64]).unwrap();
        let err = plain.vjp(&["x"], &arrays, &cotangent, None).unwrap_err();
        assert!(err.to_string().contains("Jit::gradients"), "{err}");
    }
}

/// The CPU runs a plan's two dense passes as one cross pass (rows and columns in one walk):
/// at sizes with several inner tiles, row blocks and a remainder, its gradients are those of
/// the two passes run apart, up to summation order.
#[test]
fn the_cross_pass_gives_the_two_dense_passes_results() {
    let sizes = [(1003, 5003), (37, 4097)];
    for reduction in [
        "Sum_Reduction(Exp(-SqDist(x, y) * s) * b, {axis})",
        "LogSumExp_Reduction(-SqDist(x, y) * s + Elem(b, 0) * 2, {axis})",
        // Most exponentials underflow: flushed in the cross pass as in the two passes.
        "Sum_Reduction(Exp(-SqDist(x, y) * s * 200) * b, {axis})",
    ] {
        for axis in [0, 1] {
            let kernel = kernel_with(reduction, axis);
            let wrt = ["x", "y", "b", "s"];
            let plan = vjp::plan_many(&kernel, &wrt).unwrap();
            let cross = plan
                .cross
                .as_ref()
                .expect("inputs on both axes: a cross pass");
            assert_eq!(
                cross.columns,
                plan.dense[cross.columns_pass]
                    .outputs
                    .iter()
                    .map(|&w| kernel.signature.args[w].dim)
                    .sum::<usize>()
            );
            for (n, m) in sizes {
                let (n, m) = if axis == 0 { (n, m) } else { (m, n) };
                let mut rng = StdRng::seed_from_u64((n * 31 + m) as u64);
                let mut array = |rows: usize, dim: usize| {
                    HostArray::from_f64(
                        vec![rows, dim],
                        (0..rows * dim)
                            .map(|_| rng.random_range(-1.0..1.0))
                            .collect(),
                    )
                };
                let inputs = vec![
                    ("x".to_string(), array(n, 3)),
                    ("y".to_string(), array(m, 3)),
                    ("b".to_string(), array(m, 2)),
                    ("s".to_string(), HostArray::from_f64(vec![1], vec![0.7])),
                ];
                let rows = if axis == 0 { n } else { m };
                let g = array(rows, kernel.signature.output_dim());
                for dtype in [DType::F64, DType::F32] {
                    let (inputs, g) = match dtype {
                        DType::F64 => (inputs.clone(), g.clone()),
                        DType::F32 => (
                            to_f32(&inputs),
                            to_f32(&[("g".into(), g.clone())]).remove(0).1,
                        ),
                    };
                    let arrays: Vec<&HostArray> = inputs.iter().map(|(_, a)| a).collect();
                    let crossed = vjp::run_many(&plan, &arrays, &g, None, Backend::Cpu).unwrap();
                    let mut apart = |k: &CheckedKernel, args: &[&HostArray]| {
                        Ok(driver::evaluate(k, args, Backend::Cpu)?.output)
                    };
                    let separate =
                        vjp::run_many_with(&plan, &arrays, &g, None, &mut apart).unwrap();
                    let tol = match dtype {
                        DType::F64 => 1e-9,
                        DType::F32 => 1e-3,
                    };
                    for ((name, a), b) in wrt.iter().zip(&crossed).zip(&separate) {
                        let what = format!("{} d/d{name}, {dtype}, N={n} M={m}", kernel.name);
                        assert_eq!(a.shape, b.shape, "{what}");
                        assert_close(&what, &a.to_f64(), &b.to_f64(), tol);
                    }
                }
            }
        }
    }
    // One axis only: no cross pass.
    let kernel = kernel_with(REDUCTIONS[0], 0);
    assert!(vjp::plan_many(&kernel, &["x", "s"])
        .unwrap()
        .cross
        .is_none());
    assert!(vjp::plan_many(&kernel, &["y", "b"])
        .unwrap()
        .cross
        .is_none());
}
