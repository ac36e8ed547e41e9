//! Prints a summary of a `.npy` file: dtype, shape, the first rows, and min / mean / max.

use clap::Parser;
use keops_runtime::{HostArray, IndexArray};
use std::io::Write;
use std::path::PathBuf;

/// Prints a summary of a .npy file (float32, float64 or int64): dtype, shape, the first rows,
/// and min / mean / max.
#[derive(Parser)]
#[command(name = "show-npy")]
struct Args {
    /// The file to show.
    file: PathBuf,
}

fn main() -> Result<(), String> {
    let path = Args::parse().file;
    let shown = path.display();
    let (dtype, shape, values) = match HostArray::read_npy(&path) {
        Ok(array) => (
            array.dtype().to_string(),
            array.shape.clone(),
            array.to_f64(),
        ),
        Err(float_error) => match IndexArray::read_npy(&path) {
            Ok(indices) => {
                let values = indices.data.iter().map(|&i| i as f64).collect();
                ("int64".to_string(), indices.shape, values)
            }
            Err(_) => return Err(format!("{shown}: {float_error}")),
        },
    };
    let cols = shape.get(1).copied().unwrap_or(1).max(1);
    let integers = dtype == "int64";
    let number = |v: f64| {
        if integers {
            format!("{v}")
        } else {
            format!("{v:.6}")
        }
    };
    // Written with `writeln!`, so that a closed pipe (`show-npy f.npy | head`) ends quietly.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{shown}: {dtype} {shape:?}");
    for row in values.chunks(cols).take(5) {
        let row: Vec<String> = row.iter().map(|&v| number(v)).collect();
        let _ = writeln!(out, "  [{}]", row.join(", "));
    }
    if !values.is_empty() {
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        let _ = writeln!(
            out,
            "  min {}  mean {mean:.6}  max {}",
            number(min),
            number(max)
        );
    }
    Ok(())
}
