//! `diffusion MODULE.kmod [N] [STEPS]`: applies the row-normalised Gaussian diffusion operator
//! P = D^-1 K (K_ij = exp(-g |x_i - x_j|^2), D = diag(K 1)) `STEPS` times to a vector, on N
//! points in 3-D (default 10^5 points, 4 steps), with the module built from
//! examples/kf/diffusion.kf. The N x N operator (80 GB in f64 at N = 10^5) is never stored.
//! Inputs are passed as ndarray views. Links keops-runtime only.

use keops_examples::{arg_or, load_module, SplitMix};
use keops_runtime::ndarray::{Array1, Array2};
use keops_runtime::ArrayRef;
use std::path::PathBuf;
use std::time::Instant;

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let module = PathBuf::from(
        args.get(1)
            .ok_or("usage: diffusion MODULE.kmod [N] [STEPS]")?,
    );
    let n: usize = arg_or(&args, 2, 100_000)?;
    let steps: usize = arg_or(&args, 3, 4)?;
    let kernel = load_module(&module)?
        .kernel("diffusion_step")
        .map_err(|e| e.to_string())?;
    let mut rng = SplitMix(3);
    let points = Array2::from_shape_vec((n, 3), rng.uniform(n * 3)).map_err(|e| e.to_string())?;
    // A bandwidth of about 0.1: each point diffuses to its neighbourhood.
    let g = Array1::from_vec(vec![50.0f32]);
    // Heat starts on the points of the first octant corner.
    let mut t = Array2::from_shape_fn((n, 1), |(i, _)| {
        if points.row(i).iter().all(|&c| c < 0.2) {
            1.0f32
        } else {
            0.0
        }
    });
    let total = |t: &Array2<f32>| t.iter().map(|&v| v as f64).sum::<f64>();
    println!("N = {n}: initial heat {:.1}", total(&t));
    for step in 1..=steps {
        let start = Instant::now();
        let out = kernel
            .call(&[view(&points)?, view(&points)?, view(&t)?, view(&g)?])
            .map_err(|e| e.to_string())?;
        let seconds = start.elapsed().as_secs_f64();
        let out = out.to_f64();
        // (P t)_i = (K t)_i / (K 1)_i
        t = Array2::from_shape_fn((n, 1), |(i, _)| (out[2 * i] / out[2 * i + 1]) as f32);
        println!(
            "step {step}: {seconds:.2} s ({:.3e} pairs/s), heat {:.1}, max {:.4}",
            (n * n) as f64 / seconds,
            total(&t),
            t.iter().cloned().fold(f32::MIN, f32::max)
        );
    }
    Ok(())
}

/// An ndarray array as a kernel input.
fn view<'a, S, D>(a: &'a keops_runtime::ndarray::ArrayBase<S, D>) -> Result<ArrayRef<'a>, String>
where
    S: keops_runtime::ndarray::Data<Elem = f32>,
    D: keops_runtime::ndarray::Dimension,
{
    ArrayRef::try_from(a).map_err(|e| e.to_string())
}
