//! `gpu-check`: the GPU test suite and benchmark, linking keops-runtime alone (no LLVM, no
//! compiler: the GPU machine has neither). It loads modules built with `keopsc build --gpu`
//! (scripts/gpu-check.sh builds them), runs every kernel's GPU code against the same module's
//! CPU code on random data at odd sizes, then times the benchmark module's kernels.

use clap::Parser;
use keops_examples::SplitMix;
use keops_runtime::cuda::{driver_present, CudaDevice, CudaKernel, DeviceArg, DeviceArray};
use keops_runtime::{
    index_columns, ArrayRef, Axis, Category, DType, HostArray, Kernel, Module, Ranges,
};
use std::path::PathBuf;
use std::time::Instant;

/// Runs the GPU code of modules built with `keopsc build --gpu` against their CPU code, then
/// times the benchmark module's kernels on the GPU. Without a GPU it says so and exits 0
/// (with --require-gpu, 1).
///
///     gpu-check --bench gpu-bench.kmod --sizes 100000 1000000 tests/*.kmod
#[derive(Parser)]
#[command(name = "gpu-check", verbatim_doc_comment)]
struct Args {
    /// Modules whose every kernel's GPU code is checked against its CPU code.
    modules: Vec<PathBuf>,
    /// A module whose kernels are timed on the GPU (examples/kf/gpu-bench.kf: W1-W5).
    #[arg(long, value_name = "BENCH.kmod")]
    bench: Option<PathBuf>,
    /// N = M of the timed runs.
    #[arg(long, num_args = 1.., default_values_t = [100_000usize, 1_000_000])]
    sizes: Vec<usize>,
    /// Timed runs per kernel, size and dtype (the best is reported).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Time the CPU code too, at sizes up to this N (the GPU machine's cores).
    #[arg(long, default_value_t = 100_000)]
    cpu_up_to: usize,
    /// A size whose run would take longer than this, judged from the previous size, is
    /// skipped (and said so).
    #[arg(long, default_value_t = 15.0)]
    longest_run: f64,
    /// Fail (exit 1) when there is no GPU, instead of skipping.
    #[arg(long)]
    require_gpu: bool,
}

/// Random inputs of a kernel's shapes: uniform in [0, 1), parameters 0.5 (the bench's
/// bandwidth).
fn inputs(kernel: &Kernel, n: usize, m: usize, dtype: DType, seed: u64) -> Vec<HostArray> {
    let mut rng = SplitMix(seed);
    kernel
        .signature()
        .args
        .iter()
        .map(|a| {
            let (shape, param) = match a.category {
                Category::I => (vec![n, a.dim], false),
                Category::J => (vec![m, a.dim], false),
                Category::Param => (vec![a.dim], true),
            };
            let len = shape.iter().product();
            let values: Vec<f64> = (0..len)
                .map(|_| if param { 0.5 } else { rng.next_f64() })
                .collect();
            keops_examples::array_of(dtype, shape, values)
        })
        .collect()
}

/// How far the GPU's output is from the CPU's: the largest difference relative to the
/// output's scale over value columns, and the share of index columns that differ (a tie
/// broken by values that differ in their last bit may pick another index).
fn compare(kernel: &Kernel, gpu: &HostArray, cpu: &HostArray) -> (f64, f64) {
    let width = cpu.shape.get(1).copied().unwrap_or(1).max(1);
    let indices = index_columns(&kernel.signature().reduction).unwrap_or(0..0);
    let (g, c) = (gpu.to_f64(), cpu.to_f64());
    let scale = c
        .iter()
        .enumerate()
        .filter(|(k, v)| !indices.contains(&(k % width)) && v.is_finite())
        .fold(f64::MIN_POSITIVE, |s, (_, v)| s.max(v.abs()));
    let (mut worst, mut moved, mut counted) = (0.0f64, 0usize, 0usize);
    for (k, (a, b)) in g.iter().zip(&c).enumerate() {
        if indices.contains(&(k % width)) {
            counted += 1;
            moved += usize::from(a != b);
        } else if a.is_finite() || b.is_finite() {
            let d = if a == b { 0.0 } else { (a - b).abs() / scale };
            worst = worst.max(if d.is_nan() { f64::INFINITY } else { d });
        }
    }
    (worst, moved as f64 / counted.max(1) as f64)
}

/// What a report line says of the share of index columns that differ (none: nothing).
fn indices_note(moved: f64) -> String {
    if moved > 0.0 {
        format!(", {:.2}% of the indices differ", moved * 100.0)
    } else {
        String::new()
    }
}

fn check_module(device: &CudaDevice, path: &PathBuf) -> Result<(usize, usize), String> {
    let module = Module::load(path).map_err(|e| e.to_string())?;
    let (mut passed, mut failed) = (0, 0);
    for kernel in module.kernels() {
        for dtype in kernel.dtypes() {
            if kernel.gpu_code(dtype).is_none() {
                println!(
                    "  {} {dtype}: no GPU code (built without --gpu)",
                    kernel.name()
                );
                continue;
            }
            let gpu = CudaKernel::from_kernel(device, kernel, dtype).map_err(|e| e.to_string())?;
            let tol = if dtype == DType::F32 { 2e-5 } else { 1e-12 };
            for (case, &(n, m)) in [(1, 1), (7, 300), (1000, 1537), (4099, 257), (3, 20_000)]
                .iter()
                .enumerate()
            {
                let arrays = inputs(kernel, n, m, dtype, 1 + case as u64);
                let views: Vec<ArrayRef> = arrays.iter().map(|a| a.view()).collect();
                let want = kernel.call(&views).map_err(|e| e.to_string())?;
                let got = gpu.run(&views).map_err(|e| e.to_string())?;
                let (worst, moved) = compare(kernel, &got, &want);
                // The same inputs read in place from device memory: the same launch, so the
                // same bits.
                let resident = run_resident(device, &gpu, &views)?;
                let same_in_place = resident
                    .to_f64()
                    .iter()
                    .zip(got.to_f64())
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                let ok = got.shape == want.shape && worst <= tol && moved <= 0.002 && same_in_place;
                if ok {
                    passed += 1;
                } else {
                    failed += 1;
                }
                println!(
                    "  {:<6} {} {dtype} N = {n}, M = {m}: largest difference {worst:.2e} of the scale{}{}{}",
                    if ok { "ok" } else { "FAILED" },
                    kernel.name(),
                    indices_note(moved),
                    if got.shape == want.shape {
                        String::new()
                    } else {
                        format!(", shape {:?} instead of {:?}", got.shape, want.shape)
                    },
                    if same_in_place {
                        ""
                    } else {
                        ", the run on device-resident inputs differs"
                    }
                );
            }
            let (p, f) = check_ranges(device, kernel, dtype, tol)?;
            passed += p;
            failed += f;
        }
    }
    Ok((passed, failed))
}

/// A block-sparsity pattern over `rows` output rows and `inner` reduced indices: a cluster of
/// half the rows (cut into several blocks from 600 rows on), an empty cluster, a cluster with
/// no inner range, one-index ranges, an empty range and rows no cluster covers (which keep the
/// reduction's initial value).
fn test_ranges(rows: usize, inner: usize) -> Ranges {
    let (a, b, c) = (rows / 2, 5 * rows / 8, 3 * rows / 4);
    Ranges {
        rows: vec![(0, a), (a, a), (a, b), (c, rows)],
        slices: vec![2, 3, 3, 6],
        inner: vec![
            (0, inner / 3),
            (inner / 2, inner),
            (1.min(inner), 2.min(inner)),
            (2.min(inner), 3.min(inner)),
            (3.min(inner), 3.min(inner)),
            (3.min(inner), inner),
        ],
    }
}

/// The kernel's block-sparse GPU code against its CPU code on [`test_ranges`].
fn check_ranges(
    device: &CudaDevice,
    kernel: &Kernel,
    dtype: DType,
    tol: f64,
) -> Result<(usize, usize), String> {
    if kernel.gpu_ranges_code(dtype).is_none() {
        // Modules built with --gpu carry both kernels: one missing is a failure, not a skip.
        println!(
            "  FAILED {} {dtype}: the 1-D GPU code without the block-sparse one",
            kernel.name()
        );
        return Ok((0, 1));
    }
    let gpu = CudaKernel::from_kernel_ranges(device, kernel, dtype).map_err(|e| e.to_string())?;
    let (mut passed, mut failed) = (0, 0);
    for (case, &(n, m)) in [(9, 300), (5000, 1537), (257, 20_000)].iter().enumerate() {
        let arrays = inputs(kernel, n, m, dtype, 100 + case as u64);
        let views: Vec<ArrayRef> = arrays.iter().map(|a| a.view()).collect();
        let (rows, inner) = match kernel.signature().axis {
            Axis::I => (n, m),
            Axis::J => (m, n),
        };
        let ranges = test_ranges(rows, inner);
        let want = kernel
            .call_ranges(&views, &ranges)
            .map_err(|e| e.to_string())?;
        let got = gpu.run_ranges(&views, &ranges).map_err(|e| e.to_string())?;
        let (worst, moved) = compare(kernel, &got, &want);
        let ok = got.shape == want.shape && worst <= tol && moved <= 0.002;
        if ok {
            passed += 1;
        } else {
            failed += 1;
        }
        println!(
            "  {:<6} {} {dtype} ranges N = {n}, M = {m} ({ranges}): largest difference {worst:.2e} of the scale{}",
            if ok { "ok" } else { "FAILED" },
            kernel.name(),
            indices_note(moved),
        );
    }
    Ok((passed, failed))
}

/// Every array of `views` copied to the device.
fn upload_all(device: &CudaDevice, views: &[ArrayRef]) -> Result<Vec<DeviceArray>, String> {
    views
        .iter()
        .map(|v| device.upload(*v))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())
}

/// `views` copied to the device once, then the kernel run on them in place
/// ([`CudaKernel::run_device`]).
fn run_resident(
    device: &CudaDevice,
    gpu: &CudaKernel,
    views: &[ArrayRef],
) -> Result<HostArray, String> {
    let resident = upload_all(device, views)?;
    let args: Vec<DeviceArg> = resident.iter().map(DeviceArray::arg).collect();
    // SAFETY: every pointer is a buffer this runtime allocated and filled with the array of
    // the argument's shape and dtype; they live until the call returns.
    unsafe { gpu.run_device(&args) }.map_err(|e| e.to_string())
}

fn best_of(repeat: usize, mut run: impl FnMut() -> Result<(), String>) -> Result<f64, String> {
    let mut best = f64::INFINITY;
    for _ in 0..repeat.max(1) {
        let start = Instant::now();
        run()?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn bench(device: &CudaDevice, args: &Args, path: &PathBuf) -> Result<(), String> {
    let module = Module::load(path).map_err(|e| e.to_string())?;
    println!(
        "benchmark: {} (seconds include the copies to and from the GPU)",
        path.display()
    );
    for kernel in module.kernels() {
        for dtype in kernel.dtypes() {
            let Ok(gpu) = CudaKernel::from_kernel(device, kernel, dtype) else {
                continue;
            };
            let launch = gpu.launch();
            println!(
                "  {} {dtype}: blocks of {} threads, {} registers (the driver's compilation), {} blocks resident per multiprocessor",
                kernel.name(),
                launch.block,
                gpu.registers().map_err(|e| e.to_string())?,
                gpu.resident_blocks().map_err(|e| e.to_string())?
            );
            let mut previous: Option<(usize, f64)> = None;
            for &n in &args.sizes {
                if let Some((p, t)) = previous {
                    let estimate = t * (n as f64 / p as f64).powi(2);
                    if estimate > args.longest_run {
                        println!(
                            "  {} {dtype} N = M = {n}: skipped (about {estimate:.0} s a run, more than --longest-run)",
                            kernel.name()
                        );
                        continue;
                    }
                }
                let arrays = inputs(kernel, n, n, dtype, 7);
                let views: Vec<ArrayRef> = arrays.iter().map(|a| a.view()).collect();
                // The first run loads the code on the device: not timed.
                gpu.run(&views).map_err(|e| e.to_string())?;
                let seconds = best_of(args.repeat, || {
                    gpu.run(&views).map(|_| ()).map_err(|e| e.to_string())
                })?;
                previous = Some((n, seconds));
                let pairs = (n as f64) * (n as f64);
                // The inputs already on the device: the kernel alone (and the accumulators'
                // copy back).
                let resident = upload_all(device, &views)?;
                let resident_args: Vec<DeviceArg> = resident.iter().map(DeviceArray::arg).collect();
                let in_place = best_of(args.repeat, || {
                    // SAFETY: buffers this runtime filled with the arguments, alive here.
                    unsafe { gpu.run_device(&resident_args) }
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })?;
                let mut line = format!(
                    "  {} {dtype} N = M = {n}: GPU {seconds:.4} s, {:.3e} pairs/s; inputs on the device {in_place:.4} s, {:.3e} pairs/s",
                    kernel.name(),
                    pairs / seconds,
                    pairs / in_place
                );
                if n <= args.cpu_up_to {
                    let cpu = best_of(1, || {
                        kernel.call(&views).map(|_| ()).map_err(|e| e.to_string())
                    })?;
                    line += &format!(
                        "; CPU ({} threads) {cpu:.4} s, {:.3e} pairs/s: GPU {:.1}x",
                        rayon_threads(),
                        pairs / cpu,
                        cpu / seconds
                    );
                }
                println!("{line}");
            }
        }
    }
    Ok(())
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn main() {
    let args = Args::parse();
    let device = if driver_present() {
        CudaDevice::new(0)
    } else {
        Err(keops_runtime::cuda::CudaError::NoDriver)
    };
    let device = match device {
        Ok(d) => d,
        Err(e) => {
            println!("SKIPPED: the GPU checks need a GPU: {e}");
            std::process::exit(i32::from(args.require_gpu));
        }
    };
    let (mut passed, mut failed) = (0, 0);
    for path in &args.modules {
        println!("check: {}", path.display());
        match check_module(&device, path) {
            Ok((p, f)) => {
                passed += p;
                failed += f;
            }
            Err(e) => {
                println!("  FAILED: {e}");
                failed += 1;
            }
        }
    }
    println!("GPU against CPU: {passed} passed, {failed} failed");
    if let Some(path) = &args.bench {
        if let Err(e) = bench(&device, &args, path) {
            println!("benchmark FAILED: {e}");
            failed += 1;
        }
    }
    if failed > 0 {
        std::process::exit(1);
    }
}
