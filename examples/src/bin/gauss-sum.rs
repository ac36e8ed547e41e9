//! `gauss-sum`: the Gaussian kernel sum a_i = sum_j exp(-|x_i - y_j|^2 / (2 s^2)) b_j, with the
//! module built from examples/kf/gauss.kf (`keopsc build examples/kf/gauss.kf -o gauss.kmod`),
//! on the user's points (`--x`, `--y`, `--b`, `-o`) or on random ones (`N M`). A few rows are
//! checked against a direct f64 sum. Links keops-runtime only.

use clap::Parser;
use keops_examples::{
    array_of, check_output, load_module, number_or_npy, read_points, sq_dist, write_npy, SplitMix,
};
use keops_runtime::{DType, HostArray};
use std::path::PathBuf;
use std::time::Instant;

/// Gaussian kernel sum a_i = sum_j exp(-|x_i - y_j|^2 / (2 s^2)) b_j (a kernel density
/// estimate when b = 1), computed by a module built from examples/kf/gauss.kf:
///
///     keopsc build examples/kf/gauss.kf -o gauss.kmod
///
/// On your data: gauss-sum gauss.kmod --x X.npy [--y Y.npy] [--b B.npy] --bandwidth S -o A.npy
/// (float32 or float64 arrays; the module's kernel takes 3-D points: for another dimension,
/// build a copy of gauss.kf with Vi(D) and Vj(D)). Without --x: random points, N and M.
#[derive(Parser)]
#[command(name = "gauss-sum", verbatim_doc_comment)]
struct Args {
    /// The module directory written by `keopsc build`.
    module: PathBuf,
    /// Random points: N (rows of x), without --x.
    #[arg(conflicts_with = "x")]
    n: Option<usize>,
    /// Random points: M (rows of y), without --x.
    #[arg(conflicts_with = "x")]
    m: Option<usize>,
    /// The points x_i, an (N, 3) .npy array.
    #[arg(long, value_name = "X.npy")]
    x: Option<PathBuf>,
    /// The points y_j, an (M, 3) .npy array; x when left out.
    #[arg(long, value_name = "Y.npy", requires = "x")]
    y: Option<PathBuf>,
    /// The weights b_j, an (M,) or (M, 1) .npy array; 1 when left out.
    #[arg(long, value_name = "B.npy", requires = "x")]
    b: Option<PathBuf>,
    /// The bandwidth s: a number, or a .npy file holding one.
    #[arg(long, value_name = "S", default_value = "0.25")]
    bandwidth: String,
    /// Where to write a, an (N, 1) array in the inputs' dtype.
    #[arg(short, long, value_name = "A.npy")]
    output: Option<PathBuf>,
    /// The kernel of the module to run.
    #[arg(long, default_value = "gauss_conv")]
    kernel: String,
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    if let Some(out) = &args.output {
        check_output(out, "-o")?;
    }
    let s = number_or_npy(&args.bandwidth, "--bandwidth")?;
    let (x, y, b) = match &args.x {
        Some(path) => {
            let x = read_points(path, "--x")?;
            let y = match &args.y {
                Some(p) => read_points(p, "--y")?,
                None => x.clone(),
            };
            let b = match &args.b {
                Some(p) => read_points(p, "--b")?,
                None => array_of(x.dtype(), vec![y.shape[0], 1], vec![1.0; y.shape[0]]),
            };
            (x, y, b)
        }
        None => {
            let (n, m) = (args.n.unwrap_or(20_000), args.m.unwrap_or(20_000));
            let mut rng = SplitMix(7);
            (rng.array(n, 3), rng.array(m, 3), rng.array(m, 1))
        }
    };
    let kernel = load_module(&args.module)?
        .kernel(&args.kernel)
        .map_err(|e| e.to_string())?;
    println!("{}", kernel.signature());
    let s_array = array_of(x.dtype(), vec![1], vec![s]);
    let (n, m) = (x.shape[0], y.shape[0]);
    let start = Instant::now();
    let out = kernel
        .call_named(&[
            ("x", x.view()),
            ("y", y.view()),
            ("b", b.view()),
            ("s", s_array.view()),
        ])
        .map_err(|e| e.to_string())?;
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "N = {n}, M = {m}, s = {s}: {seconds:.3} s, {:.3e} pairs/s",
        (n * m) as f64 / seconds
    );
    check_rows(&out, &x, &y, &b, s)?;
    if let Some(path) = &args.output {
        write_npy(&out, path, "-o")?;
        println!("wrote a ({n}, 1) to {}", path.display());
    }
    Ok(())
}

/// Compares rows 0, N/2 and N-1 with a direct f64 sum. The error is measured against the
/// largest value a row could take (sum_j |b_j|) as well as the row's own value, so that rows
/// whose terms mostly underflow in f32 are judged by what f32 can hold.
fn check_rows(
    out: &HostArray,
    x: &HostArray,
    y: &HostArray,
    b: &HostArray,
    s: f64,
) -> Result<(), String> {
    let (xs, ys, bs, out) = (x.to_f64(), y.to_f64(), b.to_f64(), out.to_f64());
    let (n, m, dim) = (x.shape[0], y.shape[0], x.shape[1]);
    if n == 0 {
        return Ok(());
    }
    let scale: f64 = bs.iter().map(|v| v.abs()).sum();
    let tolerance = match x.dtype() {
        DType::F32 => 1e-4,
        DType::F64 => 1e-10,
    };
    let mut worst: f64 = 0.0;
    for i in [0, n / 2, n - 1] {
        let direct: f64 = (0..m)
            .map(|j| (-sq_dist(&xs, i, &ys, j, dim) / (2.0 * s * s)).exp() * bs[j])
            .sum();
        let difference =
            (out[i] - direct).abs() / (direct.abs() + 1e-7 * scale).max(f64::MIN_POSITIVE);
        worst = worst.max(difference);
        println!("a[{i}] = {:.6e} (direct f64 sum {direct:.6e})", out[i]);
    }
    println!("largest relative difference: {worst:.1e}");
    if worst > tolerance {
        return Err("the kernel disagrees with the direct sum".into());
    }
    Ok(())
}
