//! Writes the arrays of examples/kf/gauss.kf: `make-example-data DIR N M` creates DIR/x.npy
//! (N, 3), y.npy (M, 3), b.npy (M, 1) and s.npy (1,), uniform points from a fixed seed.

use keops_runtime::HostArray;
use std::path::PathBuf;

/// A small deterministic generator (SplitMix64), so that the example needs no dependency.
struct SplitMix(u64);

impl SplitMix {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    fn array(&mut self, rows: usize, cols: usize) -> HostArray {
        let data = (0..rows * cols).map(|_| self.next_f64() as f32).collect();
        HostArray::from_f32(vec![rows, cols], data)
    }
}

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
