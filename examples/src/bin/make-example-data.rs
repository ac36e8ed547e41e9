//! Writes the arrays of examples/kf/gauss.kf: `make-example-data DIR N M` creates DIR/x.npy
//! (N, 3), y.npy (M, 3), b.npy (M, 1) and s.npy (1,), uniform points from a fixed seed.

use clap::Parser;
use keops_examples::SplitMix;
use keops_runtime::HostArray;
use std::path::PathBuf;

/// Writes the arrays of examples/kf/gauss.kf into DIR: x.npy (N, 3), y.npy (M, 3), b.npy (M, 1)
/// and s.npy (1,) holding 0.25; uniform float32 numbers in [0, 1) from a fixed seed.
#[derive(Parser)]
#[command(name = "make-example-data")]
struct Args {
    /// The folder to write (created if missing).
    dir: PathBuf,
    /// Rows of x.
    n: usize,
    /// Rows of y and b.
    m: usize,
}

fn main() -> Result<(), String> {
    let Args { dir, n, m } = Args::parse();
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut rng = SplitMix(42);
    let arrays = [
        ("x", rng.array(n, 3)),
        ("y", rng.array(m, 3)),
        ("b", rng.array(m, 1)),
        ("s", HostArray::from_f32(vec![1], vec![0.25])),
    ];
    for (name, array) in arrays {
        let path = dir.join(format!("{name}.npy"));
        array
            .write_npy(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    println!(
        "wrote x ({n}, 3), y ({m}, 3), b ({m}, 1), s (1,) to {}",
        dir.display()
    );
    Ok(())
}
