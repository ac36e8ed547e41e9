//! `knn MODULE.kmod [N] [M]`: the 10 nearest neighbours of each of N points among M, with the
//! module built from examples/kf/knn.kf; checks a few rows by brute force. Links keops-runtime
//! only.

use keops_examples::{arg_or, load_module, SplitMix};
use keops_runtime::ArrayRef;
use std::path::PathBuf;
use std::time::Instant;

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let module = PathBuf::from(args.get(1).ok_or("usage: knn MODULE.kmod [N] [M]")?);
    let n: usize = arg_or(&args, 2, 20_000)?;
    let m: usize = arg_or(&args, 3, 20_000)?;
    let kernel = load_module(&module)?
        .kernel("knn")
        .map_err(|e| e.to_string())?;
    let mut rng = SplitMix(11);
    let (x, y) = (rng.uniform(n * 3), rng.uniform(m * 3));
    let (xs, ys) = ([n, 3], [m, 3]);
    let start = Instant::now();
    let out = kernel
        .call(&[ArrayRef::f32(&xs, &x), ArrayRef::f32(&ys, &y)])
        .map_err(|e| e.to_string())?;
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "N = {n}, M = {m}, K = 10: {seconds:.3} s, {:.3e} pairs/s",
        (n * m) as f64 / seconds
    );
    let out = out.to_f64();
    for i in [0, n - 1] {
        let found: Vec<usize> = out[i * 10..i * 10 + 10]
            .iter()
            .map(|&v| v as usize)
            .collect();
        let d2 = |j: usize| -> f32 { (0..3).map(|c| (x[i * 3 + c] - y[j * 3 + c]).powi(2)).sum() };
        let mut brute: Vec<usize> = (0..m).collect();
        brute.sort_by(|&a, &b| d2(a).total_cmp(&d2(b)).then(a.cmp(&b)));
        println!("neighbours of x[{i}]: {found:?}");
        // Distances agree even where rounding swaps two nearly equidistant points.
        for (k, (&f, &b)) in found.iter().zip(&brute[..10]).enumerate() {
            if (d2(f) - d2(b)).abs() > 1e-6 {
                return Err(format!("rank {k} of row {i}: index {f}, brute force {b}"));
            }
        }
    }
    Ok(())
}
