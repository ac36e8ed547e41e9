//! `knn`: the K nearest neighbours of each point x_i among the points y_j, with the module built
//! from examples/kf/knn.kf, on the user's points (`--x`, `--y`, `-o`) or on random ones
//! (`N M`). The first and last rows are checked by brute force. Links keops-runtime only.

use clap::Parser;
use keops_examples::{check_output, load_module, read_points, sq_dist, SplitMix};
use keops_runtime::{index_columns, DType, HostArray, IndexArray};
use std::path::PathBuf;
use std::time::Instant;

/// The K nearest neighbours of each point x_i among the points y_j (squared Euclidean
/// distance; nearest first, ties to the smaller index), computed by a module built from
/// examples/kf/knn.kf:
///
///     keopsc build examples/kf/knn.kf -o knn.kmod
///
/// On your data: knn knn.kmod --x X.npy [--y Y.npy] -o IDX.npy
/// writes the indices as an (N, K) int64 array. Without --y, the neighbours are taken among
/// the x themselves (each point is its own nearest). K and the dimension of the points are
/// those of the module (K = 10, 3-D points in knn.kf): for others, build a copy of knn.kf with
/// your K and Vi(D), Vj(D). Without --x: random points, N and M.
#[derive(Parser)]
#[command(name = "knn", verbatim_doc_comment)]
struct Args {
    /// The module directory written by `keopsc build`.
    module: PathBuf,
    /// Random points: N (rows of x), without --x.
    #[arg(conflicts_with = "x")]
    n: Option<usize>,
    /// Random points: M (rows of y), without --x.
    #[arg(conflicts_with = "x")]
    m: Option<usize>,
    /// The query points x_i, an (N, D) .npy array.
    #[arg(long, value_name = "X.npy")]
    x: Option<PathBuf>,
    /// The points y_j searched, an (M, D) .npy array; x when left out.
    #[arg(long, value_name = "Y.npy", requires = "x")]
    y: Option<PathBuf>,
    /// Where to write the indices, an (N, K) int64 array.
    #[arg(short, long, value_name = "IDX.npy")]
    output: Option<PathBuf>,
    /// The kernel of the module to run (an ArgKMin or KMin_ArgKMin reduction over j).
    #[arg(long, default_value = "knn")]
    kernel: String,
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    if let Some(out) = &args.output {
        check_output(out, "-o")?;
    }
    let kernel = load_module(&args.module)?
        .kernel(&args.kernel)
        .map_err(|e| e.to_string())?;
    let sig = kernel.signature();
    let k = sig.reduction.k;
    let columns = index_columns(&sig.reduction)
        .filter(|c| c.len() == k)
        .ok_or_else(|| {
            format!(
                "kernel `{}` does not return K nearest indices: {sig}",
                sig.name
            )
        })?;
    let (x, y) = match &args.x {
        Some(path) => {
            let x = read_points(path, "--x")?;
            let y = match &args.y {
                Some(p) => read_points(p, "--y")?,
                None => x.clone(),
            };
            (x, y)
        }
        None => {
            let (n, m) = (args.n.unwrap_or(20_000), args.m.unwrap_or(20_000));
            let dim = sig.args.first().map_or(3, |a| a.dim);
            let mut rng = SplitMix(11);
            (rng.array(n, dim), rng.array(m, dim))
        }
    };
    let (n, m) = (x.shape[0], y.shape[0]);
    if m < k {
        return Err(format!(
            "K = {k} neighbours asked among only M = {m} points"
        ));
    }
    let start = Instant::now();
    let out = kernel
        .call(&[x.view(), y.view()])
        .map_err(|e| e.to_string())?;
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "N = {n}, M = {m}, K = {k}: {seconds:.3} s, {:.3e} pairs/s",
        (n * m) as f64 / seconds
    );
    let indices = out.split_columns(columns).0.to_indices();
    check_rows(&indices, &x, &y, k)?;
    if let Some(path) = &args.output {
        indices
            .write_npy(path)
            .map_err(|e| format!("-o `{}`: {e}", path.display()))?;
        println!(
            "wrote the indices ({n}, {k}) as int64 to {}",
            path.display()
        );
    }
    Ok(())
}

/// Rows 0 and N-1 against a brute-force sort in f64. Distances are compared rather than
/// indices, so that rounding may swap two nearly equidistant points.
fn check_rows(indices: &IndexArray, x: &HostArray, y: &HostArray, k: usize) -> Result<(), String> {
    let (n, m, dim) = (x.shape[0], y.shape[0], x.shape[1]);
    if n == 0 {
        return Ok(());
    }
    let (xs, ys) = (x.to_f64(), y.to_f64());
    let eps = match x.dtype() {
        DType::F32 => f32::EPSILON as f64,
        DType::F64 => f64::EPSILON,
    };
    for i in [0, n - 1] {
        let found = &indices.data[i * k..][..k];
        let d2 = |j: usize| sq_dist(&xs, i, &ys, j, dim);
        let mut brute: Vec<usize> = (0..m).collect();
        brute.sort_by(|&a, &b| d2(a).total_cmp(&d2(b)).then(a.cmp(&b)));
        println!("neighbours of x[{i}]: {found:?}");
        let norm = |v: &[f64], r: usize| -> f64 { v[r * dim..][..dim].iter().map(|c| c * c).sum() };
        for (rank, (&f, &b)) in found.iter().zip(&brute[..k]).enumerate() {
            // The kernel's distances carry rounding errors relative to the points' norms.
            let tolerance = 16.0 * eps * (norm(&xs, i) + norm(&ys, b) + d2(b));
            let valid = usize::try_from(f).ok().filter(|&f| f < m);
            if valid.is_none_or(|f| (d2(f) - d2(b)).abs() > tolerance) {
                return Err(format!(
                    "rank {rank} of row {i}: index {f}, brute force {b}"
                ));
            }
        }
    }
    Ok(())
}
