//! `gauss-sum MODULE.kmod [N] [M]`: loads the Gaussian kernel sum built from
//! examples/kf/gauss.kf (`keopsc build examples/kf/gauss.kf -o gauss.kmod`), runs it on random
//! points, and checks a few rows against a direct f64 sum. Links keops-runtime only.

use keops_examples::{arg_or, load_module, SplitMix};
use keops_runtime::ArrayRef;
use std::path::PathBuf;
use std::time::Instant;

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let module = PathBuf::from(args.get(1).ok_or("usage: gauss-sum MODULE.kmod [N] [M]")?);
    let n: usize = arg_or(&args, 2, 20_000)?;
    let m: usize = arg_or(&args, 3, 20_000)?;
    let module = load_module(&module)?;
    let kernel = module.kernel("gauss_conv").map_err(|e| e.to_string())?;
    println!("{}", kernel.signature());

    let mut rng = SplitMix(7);
    let (x, y, b) = (rng.uniform(n * 3), rng.uniform(m * 3), rng.uniform(m));
    let s = [0.25f32];
    let (xs, ys, bs, ss) = ([n, 3], [m, 3], [m, 1], [1]);
    let start = Instant::now();
    let out = kernel
        .call_named(&[
            ("x", ArrayRef::f32(&xs, &x)),
            ("y", ArrayRef::f32(&ys, &y)),
            ("b", ArrayRef::f32(&bs, &b)),
            ("s", ArrayRef::f32(&ss, &s)),
        ])
        .map_err(|e| e.to_string())?;
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "N = {n}, M = {m}: {:.3} s, {:.3e} pairs/s",
        seconds,
        (n * m) as f64 / seconds
    );

    let out = out.to_f64();
    let mut worst: f64 = 0.0;
    for i in [0, n / 2, n - 1] {
        let direct: f64 = (0..m)
            .map(|j| {
                let d2: f64 = (0..3)
                    .map(|c| (x[i * 3 + c] as f64 - y[j * 3 + c] as f64).powi(2))
                    .sum();
                (-d2 / (2.0 * 0.25 * 0.25)).exp() * b[j] as f64
            })
            .sum();
        worst = worst.max((out[i] - direct).abs() / direct.abs());
        println!("a[{i}] = {:.6} (direct f64 sum {direct:.6})", out[i]);
    }
    println!("largest relative difference: {worst:.1e}");
    if worst > 1e-4 {
        return Err("the kernel disagrees with the direct sum".into());
    }
    Ok(())
}
