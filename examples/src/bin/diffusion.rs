//! `diffusion`: applies the row-normalised Gaussian diffusion operator P = D^-1 K
//! (K_ij = exp(-g |x_i - x_j|^2), D = diag(K 1)) `STEPS` times to a heat vector, with the
//! module built from examples/kf/diffusion.kf, on the user's points and heat (`--points`,
//! `--heat`, `-o`) or on random points (`N STEPS`). The N x N operator (80 GB in f64 at
//! N = 10^5) is never stored. Links keops-runtime only.

use clap::Parser;
use keops_examples::{
    array_of, check_output, load_module, number_or_npy, read_points, write_npy, SplitMix,
};
use keops_runtime::{HostArray, Kernel};
use std::path::PathBuf;
use std::time::Instant;

/// Diffusion on a point cloud: t <- P t, STEPS times, with P = D^-1 K the row-normalised
/// Gaussian kernel (K_ij = exp(-g |x_i - x_j|^2), D = diag(K 1)), computed by a module built
/// from examples/kf/diffusion.kf:
///
///     keopsc build examples/kf/diffusion.kf -o diffusion.kmod
///
/// On your data: diffusion diffusion.kmod --points X.npy [--heat T.npy] --bandwidth H
///                   --steps S -o T_OUT.npy
/// (float32 or float64; 3-D points in diffusion.kf: for another dimension, build a copy with
/// Vi(D) and Vj(D)). Without --heat, all heat starts on the first point. Without --points:
/// N random points in the unit cube, heat on the corner x, y, z < 0.2.
#[derive(Parser)]
#[command(name = "diffusion", verbatim_doc_comment)]
struct Args {
    /// The module directory written by `keopsc build`.
    module: PathBuf,
    /// Random points: N, without --points.
    #[arg(conflicts_with = "points")]
    n: Option<usize>,
    /// Number of diffusion steps (same as --steps).
    #[arg(value_name = "STEPS", conflicts_with = "steps")]
    positional_steps: Option<usize>,
    /// The points x_i, an (N, 3) .npy array.
    #[arg(long, value_name = "X.npy")]
    points: Option<PathBuf>,
    /// The initial heat t, an (N,) or (N, 1) .npy array.
    #[arg(long, value_name = "T.npy", requires = "points")]
    heat: Option<PathBuf>,
    /// The bandwidth h, with g = 1 / (2 h^2): a number, or a .npy file holding one.
    #[arg(long, value_name = "H", conflicts_with = "gamma")]
    bandwidth: Option<String>,
    /// The coefficient g of exp(-g |x - y|^2) itself (default 50, a bandwidth of 0.1).
    #[arg(long, value_name = "G")]
    gamma: Option<String>,
    /// Number of diffusion steps (default 4).
    #[arg(long)]
    steps: Option<usize>,
    /// Where to write the final heat, an (N, 1) array in the points' dtype.
    #[arg(short, long, value_name = "T_OUT.npy")]
    output: Option<PathBuf>,
    /// The kernel of the module to run.
    #[arg(long, default_value = "diffusion_step")]
    kernel: String,
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    if let Some(out) = &args.output {
        check_output(out, "-o")?;
    }
    let g = match (&args.bandwidth, &args.gamma) {
        (Some(h), _) => {
            let h = number_or_npy(h, "--bandwidth")?;
            1.0 / (2.0 * h * h)
        }
        (None, Some(g)) => number_or_npy(g, "--gamma")?,
        (None, None) => 50.0,
    };
    let steps = args.steps.or(args.positional_steps).unwrap_or(4);
    let (points, heat) = match &args.points {
        Some(path) => {
            let points = read_points(path, "--points")?;
            let n = points.shape[0];
            let heat = match &args.heat {
                Some(p) => {
                    let heat = read_points(p, "--heat")?;
                    if heat.shape != [n, 1] {
                        return Err(format!(
                            "--heat `{}`: shape {:?}; expected ({n},) or ({n}, 1), one value per point",
                            p.display(),
                            heat.shape
                        ));
                    }
                    heat.to_f64()
                }
                None => (0..n).map(|i| if i == 0 { 1.0 } else { 0.0 }).collect(),
            };
            (points, heat)
        }
        None => {
            let n = args.n.unwrap_or(100_000);
            let points = SplitMix(3).array(n, 3);
            let xs = points.to_f64();
            // Heat starts on the points of the first octant corner.
            let heat = (0..n)
                .map(|i| {
                    if xs[i * 3..][..3].iter().all(|&c| c < 0.2) {
                        1.0
                    } else {
                        0.0
                    }
                })
                .collect();
            (points, heat)
        }
    };
    let kernel = load_module(&args.module)?
        .kernel(&args.kernel)
        .map_err(|e| e.to_string())?;
    let heat = diffuse(&kernel, &points, heat, g, steps)?;
    if let Some(path) = &args.output {
        let n = heat.len();
        write_npy(&array_of(points.dtype(), vec![n, 1], heat), path, "-o")?;
        println!(
            "wrote the heat after {steps} steps ({n}, 1) to {}",
            path.display()
        );
    }
    Ok(())
}

/// `steps` applications of P to `heat`; prints the heat's total and maximum after each.
fn diffuse(
    kernel: &Kernel,
    points: &HostArray,
    mut heat: Vec<f64>,
    g: f64,
    steps: usize,
) -> Result<Vec<f64>, String> {
    let n = points.shape[0];
    let g = array_of(points.dtype(), vec![1], vec![g]);
    let total = |t: &[f64]| t.iter().sum::<f64>();
    println!("N = {n}: initial heat {:.4}", total(&heat));
    for step in 1..=steps {
        let t = array_of(points.dtype(), vec![n, 1], heat.clone());
        let start = Instant::now();
        let out = kernel
            .call(&[points.view(), points.view(), t.view(), g.view()])
            .map_err(|e| e.to_string())?;
        let seconds = start.elapsed().as_secs_f64();
        let out = out.to_f64();
        // (P t)_i = (K t)_i / (K 1)_i
        heat = (0..n).map(|i| out[2 * i] / out[2 * i + 1]).collect();
        println!(
            "step {step}: {seconds:.2} s ({:.3e} pairs/s), heat {:.4}, max {:.4}",
            (n * n) as f64 / seconds,
            total(&heat),
            heat.iter().cloned().fold(f64::MIN, f64::max)
        );
    }
    Ok(heat)
}
