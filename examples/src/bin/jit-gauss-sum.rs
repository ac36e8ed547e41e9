//! `jit-gauss-sum [N]`: compiles the Gaussian kernel sum from its `.kf` text at run time,
//! through the on-disk compile cache (`$KEOPS_RS_CACHE_DIR`, else ~/.cache/keops-rs), and runs
//! it. The first run compiles (tens of milliseconds); later runs load the cached module.
//! Needs the `jit` feature: `cargo run -p keops-examples --features jit --bin jit-gauss-sum`.

use clap::Parser;
use keops_examples::SplitMix;
use keops_runtime::ArrayRef;
use keopsc::artifact::cache::CompileCache;
use std::time::Instant;

const SOURCE: &str = include_str!("../../kf/gauss.kf");

/// Compiles the Gaussian kernel sum of examples/kf/gauss.kf at run time, through the on-disk
/// compile cache ($KEOPS_RS_CACHE_DIR, else ~/.cache/keops-rs), and runs it on N random points.
#[derive(Parser)]
#[command(name = "jit-gauss-sum")]
struct Args {
    /// N = M, the number of points.
    #[arg(default_value_t = 20_000)]
    n: usize,
}

fn main() -> Result<(), String> {
    let n = Args::parse().n;
    let cache = CompileCache::open_default();
    let start = Instant::now();
    let (kernel, outcome) = cache.kernel(SOURCE, None).map_err(|e| e.to_string())?;
    println!(
        "compiled `{}` in {:.1} ms ({outcome:?}, cache at {})",
        kernel.name(),
        start.elapsed().as_secs_f64() * 1e3,
        cache.dir().display()
    );
    let mut rng = SplitMix(7);
    let (x, y, b) = (rng.uniform(n * 3), rng.uniform(n * 3), rng.uniform(n));
    let (ps, bs, ss) = ([n, 3], [n, 1], [1]);
    let start = Instant::now();
    let out = kernel
        .call(&[
            ArrayRef::f32(&ps, &x),
            ArrayRef::f32(&ps, &y),
            ArrayRef::f32(&bs, &b),
            ArrayRef::f32(&ss, &[0.25]),
        ])
        .map_err(|e| e.to_string())?;
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "N = M = {n}: {seconds:.3} s, {:.3e} pairs/s, a[0] = {}",
        (n * n) as f64 / seconds,
        out.to_f64()[0]
    );
    Ok(())
}
