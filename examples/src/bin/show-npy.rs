//! Prints a summary of a `.npy` file: dtype, shape, the first rows, and min / mean / max.

use keops_runtime::HostArray;
use std::path::Path;

fn main() -> Result<(), String> {
    let path = std::env::args().nth(1).ok_or("usage: show-npy FILE.npy")?;
    let array = HostArray::read_npy(Path::new(&path)).map_err(|e| format!("{path}: {e}"))?;
    let values = array.to_f64();
    let cols = array.shape.get(1).copied().unwrap_or(1).max(1);
    println!("{path}: {} {:?}", array.dtype(), array.shape);
    for row in values.chunks(cols).take(5) {
        let row: Vec<String> = row.iter().map(|v| format!("{v:.6}")).collect();
        println!("  [{}]", row.join(", "));
    }
    if !values.is_empty() {
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        println!("  min {min:.6}  mean {mean:.6}  max {max:.6}");
    }
    Ok(())
}
