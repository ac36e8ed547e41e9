//! `gauss-fit`: training through a module, with the runtime alone. The Gaussian kernel sum of
//! examples/kf/gauss.kf, built with its gradients (`keopsc build --grad`), is fitted to values
//! made with a bandwidth the program then forgets: gradient descent on
//! `loss(s) = 1/2 sum_i (a_i(s) - t_i)^2`, whose gradient `d loss / ds` (a sum over every pair
//! (i, j)) comes from the module's backward kernels (`Kernel::vjp` with the cotangent
//! `a - t`). Links keops-runtime only.

use clap::Parser;
use keops_examples::{array_of, load_module, SplitMix};
use keops_runtime::{DType, HostArray, Kernel};
use std::path::PathBuf;

/// Recovers the bandwidth of a Gaussian kernel sum from its values by gradient descent, the
/// gradients computed by a module built with them:
///
///     keopsc build examples/kf/gauss.kf --grad -o gauss.kmod
///     gauss-fit gauss.kmod [N M] [--true-bandwidth S] [--start S]
///
/// Random points x (N, 3), y (M, 3) and weights b (M, 1) in float64; the target values
/// t_i = sum_j exp(-|x_i - y_j|^2 / (2 S^2)) b_j with S the true bandwidth.
#[derive(Parser)]
#[command(name = "gauss-fit", verbatim_doc_comment)]
struct Args {
    /// The module directory written by `keopsc build --grad`.
    module: PathBuf,
    /// Rows of x.
    #[arg(default_value_t = 2000)]
    n: usize,
    /// Rows of y.
    #[arg(default_value_t = 2000)]
    m: usize,
    /// The bandwidth that makes the target values.
    #[arg(long, default_value_t = 0.2)]
    true_bandwidth: f64,
    /// The bandwidth the descent starts from.
    #[arg(long, default_value_t = 0.5)]
    start: f64,
    /// Gradient steps at most.
    #[arg(long, default_value_t = 200)]
    steps: usize,
    /// The kernel of the module.
    #[arg(long, default_value = "gauss_conv")]
    kernel: String,
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    if args.true_bandwidth <= 0.0 || args.start <= 0.0 {
        return Err("the bandwidths must be positive".into());
    }
    let kernel = load_module(&args.module)?
        .kernel(&args.kernel)
        .map_err(|e| e.to_string())?;
    let mut rng = SplitMix(11);
    let mut random = |rows: usize, cols: usize| {
        let values = (0..rows * cols).map(|_| rng.next_f64()).collect();
        array_of(DType::F64, vec![rows, cols], values)
    };
    let (x, y, b) = (random(args.n, 3), random(args.m, 3), random(args.m, 1));
    let target = evaluate(&kernel, &x, &y, &b, args.true_bandwidth)?;

    // The loss and its gradient at s: the residual a - t is the cotangent of the output.
    let loss_and_gradient = |s: f64| -> Result<(f64, f64), String> {
        let a = evaluate(&kernel, &x, &y, &b, s)?;
        let residual: Vec<f64> = a.iter().zip(&target).map(|(a, t)| a - t).collect();
        let loss = 0.5 * residual.iter().map(|r| r * r).sum::<f64>();
        let cotangent = HostArray::from_f64(vec![args.n, 1], residual);
        let s_array = array_of(DType::F64, vec![1], vec![s]);
        let grads = kernel
            .vjp(&["s"], &[&x, &y, &b, &s_array], &cotangent, None)
            .map_err(|e| e.to_string())?;
        Ok((loss, grads[0].to_f64()[0]))
    };

    // Descent on u = log s (s stays positive), the step adapted: longer after a step that
    // lowered the loss, shorter (and retried) after one that did not.
    let mut s = args.start;
    let (mut loss, mut grad) = loss_and_gradient(s)?;
    println!("start: s = {s:.6}, loss = {loss:.6e}");
    let mut rate = 0.1 / (s * grad).abs().max(f64::MIN_POSITIVE);
    for step in 1..=args.steps {
        let candidate = (s.ln() - rate * s * grad).exp();
        let (new_loss, new_grad) = loss_and_gradient(candidate)?;
        if new_loss < loss {
            let moved = (candidate - s).abs();
            (s, loss, grad) = (candidate, new_loss, new_grad);
            rate *= 1.5;
            println!("step {step}: s = {s:.6}, loss = {loss:.6e}");
            if moved <= 1e-9 * s {
                break;
            }
        } else {
            rate *= 0.5;
            if rate * (s * grad).abs() < 1e-12 {
                break;
            }
        }
    }
    println!(
        "fitted bandwidth {s:.9} (true {}), loss {loss:.3e}",
        args.true_bandwidth
    );
    Ok(())
}

/// The kernel's output at bandwidth `s`, as f64 rows.
fn evaluate(
    kernel: &Kernel,
    x: &HostArray,
    y: &HostArray,
    b: &HostArray,
    s: f64,
) -> Result<Vec<f64>, String> {
    let s_array = array_of(DType::F64, vec![1], vec![s]);
    kernel
        .call(&[x.view(), y.view(), b.view(), s_array.view()])
        .map(|a| a.to_f64())
        .map_err(|e| e.to_string())
}
