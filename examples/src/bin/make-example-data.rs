//! Writes the arrays of examples/kf/gauss.kf: `make-example-data DIR N M` creates DIR/x.npy
//! (N, 3), y.npy (M, 3), b.npy (M, 1) and s.npy (1,), uniform points from a fixed seed.

use keops_examples::SplitMix;
use keops_runtime::HostArray;
use std::path::PathBuf;

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: make-example-data DIR N M";
    let dir = PathBuf::from(args.get(1).ok_or(usage)?);
    let parse = |k: usize| -> Result<usize, String> {
        args.get(k)
            .ok_or(usage)?
            .parse()
            .map_err(|e| format!("{usage}: {e}"))
    };
    let (n, m) = (parse(2)?, parse(3)?);
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
