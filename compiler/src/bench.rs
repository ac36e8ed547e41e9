//! `keopsc bench`: the CPU backend on the reference workloads, in pairs per second (N*M over
//! the wall time of one call, median of several calls), with the baselines measured in the
//! same run: the hand-written C program for W1 (built with gcc when present) and pykeops when
//! it is installed. Machines here are noisy, so only ratios within one run mean much.

use crate::check::CheckedKernel;
use crate::driver::{self, compile_cpu};
use crate::source::SourceFile;
use keops_runtime::{check_arguments, run_tiles, DType, HostArray};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// One reference workload.
pub struct Workload {
    pub id: &'static str,
    pub title: &'static str,
    /// `.kf` text with `{D}` standing for the dimension.
    pub source: &'static str,
    pub dims: &'static [usize],
    /// The value of every `Pm` argument (the bandwidth factor `g` of the Gaussian workloads).
    pub param: f64,
    /// The largest N = M measured (larger `--size`s are cut to it), so that a default run of
    /// every workload stays short.
    pub max_n: usize,
    /// `(D, operations per pair)` where the workload has a bound: the FMA-pipe operations
    /// (multiplies, adds, FMAs, the exponential's share) one pair costs at that dimension, so
    /// that the machine's peak FMA rate over them bounds the pairs/s ([`FmaPeak`]).
    pub fma_ops_per_pair: &'static [(usize, f64)],
}

/// The Gaussian kernel sum of W1 and W2.
const GAUSSIAN_SUM: &str = "kernel w {\n x = Vi({D})\n y = Vj({D})\n b = Vj(1)\n g = Pm(1)\n Sum_Reduction(Exp(-SqDist(x, y) * g) * b, 0)\n}\n";

pub const WORKLOADS: &[Workload] = &[
    Workload {
        id: "W1",
        title: "Gaussian kernel sum",
        source: GAUSSIAN_SUM,
        dims: &[3],
        param: 0.5,
        max_n: usize::MAX,
        fma_ops_per_pair: &[(3, 13.0)],
    },
    // W1 with a small bandwidth (sigma = 0.01 in the unit cube), as in density estimation and
    // diffusion operators: most exponentials underflow to 0 (about 99% in f32, 80% in f64) and
    // a few are denormal. It should run at W1's speed.
    Workload {
        id: "W1s",
        title: "Gaussian sum, g=5000",
        source: GAUSSIAN_SUM,
        dims: &[3],
        param: 5000.0,
        max_n: usize::MAX,
        fma_ops_per_pair: &[(3, 13.0)],
    },
    Workload {
        id: "W2",
        title: "Gaussian kernel sum",
        source: GAUSSIAN_SUM,
        dims: &[64],
        param: 0.5,
        max_n: usize::MAX,
        fma_ops_per_pair: &[(64, 66.0)],
    },
    // W2 at large dimensions: pairs/s and compile time (which does not grow with D: the
    // squared distance is a Gram product, looped over components).
    Workload {
        id: "W2L",
        title: "Gaussian sum, large D",
        source: GAUSSIAN_SUM,
        dims: &[256, 1024],
        param: 0.5,
        max_n: 10_000,
        fma_ops_per_pair: &[],
    },
    Workload {
        id: "W3",
        title: "LogSumExp",
        source: "kernel w {\n x = Vi({D})\n y = Vj({D})\n h = Vj(1)\n g = Pm(1)\n LogSumExp_Reduction(-SqDist(x, y) * g + h, 0)\n}\n",
        dims: &[3],
        param: 0.5,
        max_n: usize::MAX,
        fma_ops_per_pair: &[],
    },
    Workload {
        id: "W4",
        title: "ArgKMin K=10",
        source: "kernel w {\n x = Vi({D})\n y = Vj({D})\n ArgKMin_Reduction(SqDist(x, y), 10, 0)\n}\n",
        dims: &[3, 32],
        param: 0.5,
        max_n: usize::MAX,
        fma_ops_per_pair: &[],
    },
    Workload {
        id: "W5",
        title: "gradient of W1 in x",
        source: "kernel w {\n x = Vi({D})\n y = Vj({D})\n b = Vj(1)\n g = Pm(1)\n e = Vi(1)\n Sum_Reduction(Grad(Exp(-SqDist(x, y) * g) * b, x, e), 0)\n}\n",
        dims: &[3],
        param: 0.5,
        max_n: usize::MAX,
        fma_ops_per_pair: &[],
    },
];

/// A backward workload: the gradients of a forward workload's output (`keopsc::vjp`), each set
/// of inputs differentiated together, measured beside that forward in the same run.
pub struct BackwardWorkload {
    pub id: &'static str,
    /// The forward workload's id.
    pub forward: &'static str,
    /// The sets of inputs, one measurement each.
    pub wrt: &'static [&'static [&'static str]],
}

pub const BACKWARD_WORKLOADS: &[BackwardWorkload] = &[
    BackwardWorkload {
        id: "W1v",
        forward: "W1",
        // Then each of the two passes of the whole backward alone.
        wrt: &[
            &["x"],
            &["y"],
            &["b"],
            &["x", "y", "b", "g"],
            &["x", "g"],
            &["y", "b"],
        ],
    },
    // LogSumExp's backward reads the forward output: measured with it passed in, as a caller
    // that ran the forward holds it (the forward's time is not counted).
    BackwardWorkload {
        id: "W3v",
        forward: "W3",
        wrt: &[&["x"], &["y"], &["h"], &["x", "y", "h", "g"]],
    },
];

/// The symmetric workload: W1 on one point cloud against itself (`y` holds `x`'s data, the
/// diffusion step), each unordered pair once, against the full evaluation in the same run.
pub const SYMMETRIC_WORKLOAD: &str = "W1sym";

/// The bandwidth sweep: W1 at each factor of [`BANDWIDTHS`] in turn, each beside g = 1 in
/// the same run. Small bandwidths (large g) are where density estimation and diffusion
/// operators live: most exponentials underflow, some to subnormal numbers, which cost a
/// microcode assist per operation on some x86 cores. The speed should not depend on g.
pub const BANDWIDTH_WORKLOAD: &str = "W1g";

/// The factors `g` of `Exp(-SqDist(x, y) * g)` the bandwidth sweep measures (points in the
/// unit cube): from every pair counting (g = 1) to almost none (g = 5000).
pub const BANDWIDTHS: [f64; 5] = [1.0, 30.0, 100.0, 500.0, 5000.0];

/// The data-dependent cliffs: each kernel on adversarial data against the same kernel on the
/// uniform data of the other workloads, alternating in the same run ([`CLIFFS`]).
pub const CLIFF_WORKLOAD: &str = "C1";

/// A kernel whose speed may depend on its data, and the data that would make it slowest.
pub struct Cliff {
    pub title: &'static str,
    pub source: &'static str,
    /// The value of every `Pm` argument.
    pub param: f64,
    /// Rewrites the uniform inputs (by argument name, `n` points of `dim` numbers, for the
    /// dtype of the run) into the adversarial ones.
    pub adversarial: fn(name: &str, n: usize, data: &mut [f64], dim: usize, dtype: DType),
}

pub const CLIFFS: &[Cliff] = &[
    // The running maximum grows at every pair: every term rescales the lane's sum.
    Cliff {
        title: "LSE, max grows each j",
        source: "kernel w {\n x = Vi(3)\n y = Vj(3)\n h = Vj(1)\n g = Pm(1)\n LogSumExp_Reduction(-SqDist(x, y) * g + h, 0)\n}\n",
        param: 0.5,
        adversarial: |name, _, data, _, _| {
            if name == "h" {
                // Steps of 2 exceed the spread of -SqDist * g (at most 1.5 in the unit cube).
                for (j, h) in data.iter_mut().enumerate() {
                    *h = 2.0 * j as f64;
                }
            }
        },
    },
    // Every j is nearer to every x than the j before it: each pair enters the K-list.
    Cliff {
        title: "ArgKMin, all j enter",
        source: "kernel w {\n x = Vi(3)\n y = Vj(3)\n ArgKMin_Reduction(SqDist(x, y), 10, 0)\n}\n",
        param: 0.5,
        adversarial: |name, n, data, dim, _| {
            if name == "y" {
                // On the diagonal beyond (1, 1, 1), coming closer to the unit cube with j.
                for (j, point) in data.chunks_mut(dim).enumerate() {
                    point.fill(2.0 + 1e-3 * (n - j) as f64);
                }
            }
        },
    },
    // Products below the smallest normal number, read by `Log`.
    Cliff {
        title: "Log of tiny products",
        source: "kernel w {\n x = Vi(1)\n y = Vj(1)\n g = Pm(1)\n Sum_Reduction(Log(x * y * g), 0)\n}\n",
        param: 1.0,
        adversarial: |name, _, data, _, dtype| {
            // Most products (and some of the y) below the smallest normal number.
            let tiny = match dtype {
                DType::F32 => 1e-37,
                DType::F64 => 1e-307,
            };
            if name == "y" {
                data.iter_mut().for_each(|v| *v *= tiny);
            }
        },
    },
];

/// The batch workload: W1 on 1000 problems of N = M = 200 (f32 or f64), in one batched call
/// against a loop of calls, in the same run.
pub const BATCH_WORKLOAD: &str = "B1";

/// The block-sparse workload: W1 on points sorted into grid cells, only the pairs of cells
/// whose centres are close (about 2% of the blocks), against the dense evaluation.
pub const RANGES_WORKLOAD: &str = "R1";

/// W1 at N = M = n on points uniform in the unit cube, sorted by cell of a grid of side 1/20
/// (8000 cells), keeping the pairs of cells whose centres lie within 0.16 of each other
/// (KeOps's `ranges`, `keops_runtime::Ranges`): (ranged seconds, dense seconds, the fraction
/// of the pairs kept), medians, alternating, compiled once (untimed). The dense evaluation is
/// timed once when it would take long.
pub fn measure_ranges(
    source: &str,
    n: usize,
    dtype: DType,
    repeats: usize,
    param: f64,
) -> Result<(f64, f64, f64), String> {
    const CELLS: usize = 20;
    const CUTOFF: f64 = 0.16;
    let compiled = driver::compile(SourceFile::new("<bench>", source))
        .map_err(|_| "workload does not compile".to_string())?;
    let kernel = &compiled.kernels[0];
    let mut inputs = uniform_inputs(source, n, dtype, 1, param)?;
    let cell_of = |p: &[f64]| -> usize {
        let c = |v: f64| ((v * CELLS as f64) as usize).min(CELLS - 1);
        (c(p[0]) * CELLS + c(p[1])) * CELLS + c(p[2])
    };
    // Sort both clouds by cell; the cells' ranges.
    let mut cell_ranges = |name: &str| -> Result<Vec<(usize, usize)>, String> {
        let (_, array) = inputs
            .iter_mut()
            .find(|(n, _)| n == name)
            .ok_or_else(|| format!("the workload has no `{name}`"))?;
        let points = array.to_f64();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| cell_of(&points[i * 3..i * 3 + 3]));
        let sorted: Vec<f64> = order
            .iter()
            .flat_map(|&i| points[i * 3..i * 3 + 3].to_vec())
            .collect();
        let mut ranges = vec![(0, 0); CELLS * CELLS * CELLS];
        let mut start = 0;
        for (cell, range) in ranges.iter_mut().enumerate() {
            let mut end = start;
            while end < n && cell_of(&sorted[end * 3..end * 3 + 3]) == cell {
                end += 1;
            }
            *range = (start, end);
            start = end;
        }
        *array = match dtype {
            DType::F32 => {
                HostArray::from_f32(vec![n, 3], sorted.iter().map(|&v| v as f32).collect())
            }
            DType::F64 => HostArray::from_f64(vec![n, 3], sorted),
        };
        Ok(ranges)
    };
    let (x_cells, y_cells) = (cell_ranges("x")?, cell_ranges("y")?);
    let centre = |cell: usize| -> [f64; 3] {
        let (a, b, c) = (cell / (CELLS * CELLS), (cell / CELLS) % CELLS, cell % CELLS);
        [a, b, c].map(|k| (k as f64 + 0.5) / CELLS as f64)
    };
    let mut ranges = keops_runtime::Ranges {
        rows: Vec::new(),
        slices: Vec::new(),
        inner: Vec::new(),
    };
    for (cx, &rows) in x_cells.iter().enumerate() {
        if rows.0 == rows.1 {
            continue;
        }
        let p = centre(cx);
        for (cy, &cols) in y_cells.iter().enumerate() {
            let q = centre(cy);
            let d2: f64 = (0..3).map(|k| (p[k] - q[k]).powi(2)).sum();
            if d2 <= CUTOFF * CUTOFF && cols.0 < cols.1 {
                // Adjacent cells of one row cluster: one range.
                let own = ranges.inner.len() > ranges.slices.last().copied().unwrap_or(0);
                match ranges.inner.last_mut() {
                    Some(last) if own && last.1 == cols.0 => last.1 = cols.1,
                    _ => ranges.inner.push(cols),
                }
            }
        }
        ranges.rows.push(rows);
        ranges.slices.push(ranges.inner.len());
    }
    let kept = ranges.kept_pairs() as f64 / (n as f64 * n as f64);
    let code = driver::jit_kernel(kernel, &[dtype]).map_err(|e| e.to_string())?;
    let arrays: Vec<keops_runtime::ArrayRef> = inputs.iter().map(|(_, a)| a.view()).collect();
    let ranged = || {
        code.call_ranges(&arrays, &ranges)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let dense = || code.call(&arrays).map(|_| ()).map_err(|e| e.to_string());
    ranged()?;
    let start = Instant::now();
    dense()?;
    let once = start.elapsed().as_secs_f64();
    if once > 20.0 {
        let start = Instant::now();
        ranged()?;
        return Ok((start.elapsed().as_secs_f64(), once, kept));
    }
    let (r, d) = alternate(repeats, ranged, dense)?;
    Ok((r, d, kept))
}

/// W1, its dimension and its source: what the symmetric, batch, ranges and vjp-latency
/// measurements run.
fn w1_source() -> (&'static Workload, usize, String) {
    let w1 = WORKLOADS
        .iter()
        .find(|w| w.id == "W1")
        .expect("W1 is a workload");
    let d = w1.dims[0];
    (w1, d, w1.source.replace("{D}", &d.to_string()))
}

/// Every workload id `keopsc bench --workload` accepts.
pub fn workload_ids() -> Vec<&'static str> {
    WORKLOADS
        .iter()
        .map(|w| w.id)
        .chain(BACKWARD_WORKLOADS.iter().map(|w| w.id))
        .chain([
            BANDWIDTH_WORKLOAD,
            SYMMETRIC_WORKLOAD,
            BATCH_WORKLOAD,
            RANGES_WORKLOAD,
            CLIFF_WORKLOAD,
        ])
        .collect()
}

/// W1 on `count` problems of N = M = `n`, their arrays stacked as `(count, n, D)`: one call of
/// the batched evaluation (`driver::evaluate`'s runner for batch axes, every problem in one
/// parallel region) against a loop of `count` calls of the compiled kernel
/// (`keops_runtime::Kernel::call`, what a program without batch axes does), alternating,
/// compiled once (untimed). Returns (batched seconds, loop seconds), medians.
pub fn measure_batches(
    source: &str,
    count: usize,
    n: usize,
    dtype: DType,
    repeats: usize,
    param: f64,
) -> Result<(f64, f64), String> {
    let compiled = driver::compile(SourceFile::new("<bench>", source))
        .map_err(|_| "workload does not compile".to_string())?;
    let kernel = &compiled.kernels[0];
    let inputs = uniform_inputs(source, count * n, dtype, 1, param)?;
    let sig = &kernel.signature;
    // (count, n, D) per point array: the uniform inputs of count x n points, regrouped.
    let stacked: Vec<HostArray> = inputs
        .iter()
        .zip(&sig.args)
        .map(|((_, a), spec)| match spec.category {
            keops_runtime::Category::Param => a.clone(),
            _ => HostArray {
                shape: vec![count, n, spec.dim],
                data: a.data.clone(),
            },
        })
        .collect();
    let refs: Vec<&HostArray> = stacked.iter().collect();
    let views: Vec<Option<keops_runtime::ArrayRef>> = refs.iter().map(|a| Some(a.view())).collect();
    let layout = crate::batch::check_batched_arguments(sig, &views)
        .map_err(|e| {
            e.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })?
        .0;
    let code = driver::jit_kernel(kernel, &[dtype]).map_err(|e| e.to_string())?;
    let tile = driver::compile_cpu(kernel, dtype).map_err(|e| e.to_string())?;
    let tiles = tile.tile_kernel();
    let problems: Vec<Vec<keops_runtime::ArrayRef>> =
        (0..count).map(|k| layout.views(&refs, k)).collect();
    let batched = || keops_runtime::run_tiles_batched(&tiles, &problems).map_err(|e| e.to_string());
    let looped = || -> Result<Vec<HostArray>, String> {
        problems
            .iter()
            .map(|p| code.call(p).map_err(|e| e.to_string()))
            .collect()
    };
    let (a, b) = (batched()?, looped()?);
    if a.iter().zip(&b).any(|(x, y)| x.to_f64() != y.to_f64()) {
        return Err("the batched outputs differ from the looped ones".into());
    }
    alternate(
        repeats,
        || batched().map(|o| drop(std::hint::black_box(o))),
        || looped().map(|o| drop(std::hint::black_box(o))),
    )
}

/// W1 with `y` holding `x`'s data at N = M = n: the symmetric evaluation
/// (`Pairs::Symmetric` with the plan `Pairs::Same` would choose) and the full one, alternating, compiled once (untimed).
/// Returns (symmetric seconds, full seconds), medians.
pub fn measure_symmetric(
    source: &str,
    n: usize,
    dtype: DType,
    repeats: usize,
    param: f64,
) -> Result<(f64, f64), String> {
    let compiled = driver::compile(SourceFile::new("<bench>", source))
        .map_err(|_| "workload does not compile".to_string())?;
    let kernel = &compiled.kernels[0];
    let mut inputs = uniform_inputs(source, n, dtype, 1, param)?;
    let position = |name: &str| {
        inputs
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| format!("the workload has no `{name}`"))
    };
    let (x, y) = (position("x")?, position("y")?);
    inputs[y].1 = inputs[x].1.clone();
    let arrays: Vec<&HostArray> = inputs.iter().map(|(_, a)| a).collect();
    // The plan is chosen once (what `Pairs::Same` does on each call), the pass timed.
    let plan = crate::symmetric::plan_if_it_pays(kernel, &[(y, x)]).map_err(|e| e.to_string())?;
    let cpu = driver::EvalOptions::on(driver::Backend::Cpu);
    let run_same = || driver::evaluate(kernel, &arrays, cpu.pairs(driver::Pairs::Symmetric(&plan)));
    let run_full = || driver::evaluate(kernel, &arrays, cpu);
    run_same().map_err(|e| e.to_string())?;
    run_full().map_err(|e| e.to_string())?;
    alternate(
        repeats,
        || run_same().map(|_| ()).map_err(|e| e.to_string()),
        || run_full().map(|_| ()).map_err(|e| e.to_string()),
    )
}

/// Runs `a` and `b` in turn `repeats` times: their median seconds, each measured under the
/// load the other met.
fn alternate(
    repeats: usize,
    mut a: impl FnMut() -> Result<(), String>,
    mut b: impl FnMut() -> Result<(), String>,
) -> Result<(f64, f64), String> {
    let (mut a_times, mut b_times) = (Vec::new(), Vec::new());
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        std::hint::black_box(a()?);
        a_times.push(start.elapsed().as_secs_f64());
        let start = Instant::now();
        std::hint::black_box(b()?);
        b_times.push(start.elapsed().as_secs_f64());
    }
    Ok((median(a_times), median(b_times)))
}

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub workloads: Vec<String>,
    pub sizes: Vec<usize>,
    pub dtypes: Vec<DType>,
    pub repeats: usize,
    /// The C baseline's source; skipped when absent or when gcc is missing.
    pub c_baseline: Option<std::path::PathBuf>,
    pub pykeops: bool,
    /// Also measure the compile cache: cold (empty) and warm latency per workload; and a vjp
    /// call on a tiny problem, compiling its kernels or taking them from the JIT cache.
    pub cache: bool,
    /// Where the forward workloads run: the CPU (every workload, with the C baseline), or
    /// another backend beside the CPU ([`run_beside_cpu`]).
    pub backend: driver::Backend,
}

/// One measurement.
#[derive(Clone, Debug)]
pub struct BenchResult {
    pub label: String,
    pub dtype: DType,
    pub n: usize,
    pub pairs_per_second: f64,
    pub compile_ms: f64,
    pub baseline: Option<(String, f64)>,
}

/// Points uniform in the unit cube (every `Vi`/`Vj` argument), and `param` for every `Pm`.
fn uniform_inputs(
    source: &str,
    n: usize,
    dtype: DType,
    seed: u64,
    param: f64,
) -> Result<Vec<(String, HostArray)>, String> {
    let compiled = driver::compile(SourceFile::new("<bench>", source))
        .map_err(|_| "workload does not compile".to_string())?;
    let kernel = &compiled.kernels[0];
    // A small linear congruential generator: reproducible without a dependency.
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 11) as f64) / ((1u64 << 53) as f64)
    };
    Ok(kernel
        .signature
        .args
        .iter()
        .map(|a| {
            let rows = if a.category == keops_runtime::Category::Param {
                1
            } else {
                n
            };
            let data: Vec<f64> = (0..rows * a.dim)
                .map(|_| {
                    if a.category == keops_runtime::Category::Param {
                        param
                    } else {
                        next()
                    }
                })
                .collect();
            let shape = vec![rows, a.dim];
            let array = match dtype {
                DType::F32 => HostArray::from_f32(shape, data.iter().map(|&x| x as f32).collect()),
                DType::F64 => HostArray::from_f64(shape, data),
            };
            (a.name.clone(), array)
        })
        .collect())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Compiles (timed, from text) and runs one workload on the CPU, with `param` for every `Pm`
/// argument; returns (pairs/s, compile ms).
pub fn measure(
    source: &str,
    n: usize,
    dtype: DType,
    repeats: usize,
    param: f64,
) -> Result<(f64, f64), String> {
    measure_on(source, n, dtype, repeats, param, driver::Backend::Cpu)
}

/// [`measure`] on `backend`'s executor ([`driver::executor`]): compiled (and, on a GPU,
/// loaded) timed, then `repeats` calls, each from host arrays to the host output (a GPU call
/// copies the inputs in and the output back; one untimed call first, where the driver
/// finishes its set-up).
pub fn measure_on(
    source: &str,
    n: usize,
    dtype: DType,
    repeats: usize,
    param: f64,
    backend: driver::Backend,
) -> Result<(f64, f64), String> {
    let start = Instant::now();
    let compiled = driver::compile(SourceFile::new("<bench>", source))
        .map_err(|_| "workload does not compile".to_string())?;
    let kernel = &compiled.kernels[0];
    let executor = driver::executor(kernel, dtype, backend).map_err(|e| e.to_string())?;
    let compile_ms = start.elapsed().as_secs_f64() * 1e3;
    let inputs = uniform_inputs(source, n, dtype, 1, param)?;
    let arrays: Vec<_> = inputs.iter().map(|(_, a)| a.view()).collect();
    check_arguments(&kernel.signature, &arrays).map_err(|e| e.to_string())?;
    if backend != driver::Backend::Cpu {
        executor.reduce(&arrays).map_err(|e| e.to_string())?;
    }
    let mut rates = Vec::new();
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        let out = executor.reduce(&arrays).map_err(|e| e.to_string())?;
        let seconds = start.elapsed().as_secs_f64();
        std::hint::black_box(out);
        rates.push((n as f64) * (n as f64) / seconds);
    }
    Ok((median(rates), compile_ms))
}

/// The machine the figures belong to: the CPU's model (from `/proc/cpuinfo` where there is
/// one), the CPU LLVM compiles for, its x86-64 level and vector width, and the threads used.
pub fn machine_line() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, m)| m.trim().to_string())
            })
        })
        .unwrap_or_else(|| "unknown model".to_string());
    let host = crate::codegen::host_cpu();
    let level = crate::codegen::host_cpu_level();
    format!(
        "machine: {model}; code for {} ({}, {}-bit vectors), {} threads",
        host.cpu,
        level.cpu,
        host.vector_bits,
        rayon::current_num_threads()
    )
}

/// The table's header, after the machine's line and the bound's, if any.
fn write_header(out: &mut dyn std::io::Write, bound: Option<&str>) {
    writeln!(out, "{}", machine_line()).ok();
    if let Some(bound) = bound {
        writeln!(out, "{bound}").ok();
    }
    writeln!(
        out,
        "{:<4} {:<22} {:>3} {:>4} {:>8} {:>10} {:>10}  baseline",
        "", "workload", "D", "type", "N=M", "pairs/s", "compile"
    )
    .ok();
}

/// The forward measurements `options` asks for: each selected workload at each of its
/// dimensions (its source), dtype and size (capped at the workload's largest).
fn forward_cases(options: &BenchOptions) -> Vec<(&'static Workload, usize, String, DType, usize)> {
    let mut cases = Vec::new();
    for w in WORKLOADS
        .iter()
        .filter(|w| options.workloads.is_empty() || options.workloads.iter().any(|s| s == w.id))
    {
        for &d in w.dims {
            let source = w.source.replace("{D}", &d.to_string());
            for &dtype in &options.dtypes {
                let mut sizes: Vec<usize> = options.sizes.iter().map(|&n| n.min(w.max_n)).collect();
                sizes.dedup();
                for n in sizes {
                    cases.push((w, d, source.clone(), dtype, n));
                }
            }
        }
    }
    cases
}

/// The cliffs ([`CLIFF_WORKLOAD`]): each of [`CLIFFS`] compiled once, its uniform and its
/// adversarial inputs timed alternately, `repeats` calls each (medians).
fn run_cliffs(
    options: &BenchOptions,
    out: &mut dyn std::io::Write,
) -> Result<Vec<BenchResult>, String> {
    let mut results = Vec::new();
    for cliff in CLIFFS {
        let compiled = driver::compile(SourceFile::new("<bench>", cliff.source))
            .map_err(|_| "a cliff's kernel does not compile".to_string())?;
        let kernel = &compiled.kernels[0];
        for &dtype in &options.dtypes {
            let executor =
                driver::executor(kernel, dtype, driver::Backend::Cpu).map_err(|e| e.to_string())?;
            for &n in &options.sizes {
                let plain = uniform_inputs(cliff.source, n, dtype, 1, cliff.param)?;
                let adversarial: Vec<HostArray> = plain
                    .iter()
                    .map(|(name, array)| {
                        let mut data = array.to_f64();
                        let dim = array.shape.last().copied().unwrap_or(1);
                        (cliff.adversarial)(name, n, &mut data, dim, dtype);
                        let shape = array.shape.to_vec();
                        match dtype {
                            DType::F32 => {
                                HostArray::from_f32(shape, data.iter().map(|&v| v as f32).collect())
                            }
                            DType::F64 => HostArray::from_f64(shape, data),
                        }
                    })
                    .collect();
                let plain: Vec<_> = plain.iter().map(|(_, a)| a.view()).collect();
                let adversarial: Vec<_> = adversarial.iter().map(HostArray::view).collect();
                let (mut plain_s, mut adversarial_s) = (Vec::new(), Vec::new());
                for _ in 0..options.repeats.max(1) {
                    for (arrays, times) in
                        [(&plain, &mut plain_s), (&adversarial, &mut adversarial_s)]
                    {
                        let start = Instant::now();
                        let result = executor.reduce(arrays).map_err(|e| e.to_string())?;
                        times.push(start.elapsed().as_secs_f64());
                        std::hint::black_box(result);
                    }
                }
                let (plain_s, adversarial_s) = (median(plain_s), median(adversarial_s));
                let rate = (n as f64) * (n as f64) / adversarial_s;
                writeln!(
                    out,
                    "{:<4} {:<22} {:>3} {:>4} {:>8} {:>10.3e} {:>10}  {:.2}x the time on uniform data ({:.3e} pairs/s, alternating)",
                    CLIFF_WORKLOAD,
                    cliff.title,
                    kernel.signature.args[0].dim,
                    dtype_name(dtype),
                    n,
                    rate,
                    "",
                    adversarial_s / plain_s,
                    (n as f64) * (n as f64) / plain_s
                )
                .ok();
                results.push(BenchResult {
                    label: format!("{CLIFF_WORKLOAD} {}", cliff.title),
                    dtype,
                    n,
                    pairs_per_second: rate,
                    compile_ms: 0.0,
                    baseline: Some((
                        "uniform data".to_string(),
                        (n as f64) * (n as f64) / plain_s,
                    )),
                });
            }
        }
    }
    Ok(results)
}

/// The bandwidth sweep ([`BANDWIDTH_WORKLOAD`]): W1 at every g of [`BANDWIDTHS`], each row
/// with its time against g = 1's, measured just before in the same run.
fn run_bandwidth_sweep(
    options: &BenchOptions,
    out: &mut dyn std::io::Write,
) -> Result<Vec<BenchResult>, String> {
    let (_, d, source) = w1_source();
    let mut results = Vec::new();
    for &dtype in &options.dtypes {
        for &n in &options.sizes {
            let mut widest = None;
            for g in BANDWIDTHS {
                let (rate, compile_ms) = measure(&source, n, dtype, options.repeats, g)?;
                let base = *widest.get_or_insert(rate);
                writeln!(
                    out,
                    "{:<4} {:<22} {:>3} {:>4} {:>8} {:>10.3e} {:>8.1}ms  {:.2}x the time of g = {}",
                    BANDWIDTH_WORKLOAD,
                    format!("W1, g = {g}"),
                    d,
                    dtype_name(dtype),
                    n,
                    rate,
                    compile_ms,
                    base / rate,
                    BANDWIDTHS[0]
                )
                .ok();
                results.push(BenchResult {
                    label: format!("{BANDWIDTH_WORKLOAD} D={d} g={g}"),
                    dtype,
                    n,
                    pairs_per_second: rate,
                    compile_ms,
                    baseline: Some((format!("W1 g={}", BANDWIDTHS[0]), base)),
                });
            }
        }
    }
    Ok(results)
}

/// Largest N = M at which `bench --backend cuda` measures the CPU beside the GPU: past it the
/// CPU's pairs/s no longer change, and its run would take minutes.
pub const CPU_BESIDE_GPU_MAX_N: usize = 20_000;

/// `keopsc bench --backend cuda` (or any backend but the CPU): the forward workloads on that
/// backend, each beside the CPU's pairs/s on the same workload in the same run (at N = M up
/// to [`CPU_BESIDE_GPU_MAX_N`]). The backward, symmetric, batched and block-sparse workloads
/// run on the CPU only and are left out.
fn run_beside_cpu(
    options: &BenchOptions,
    out: &mut dyn std::io::Write,
) -> Result<Vec<BenchResult>, String> {
    let backend = options.backend;
    let mut results = Vec::new();
    write_header(out, None);
    for (w, d, source, dtype, n) in forward_cases(options) {
        let (rate, compile_ms) = measure_on(&source, n, dtype, options.repeats, w.param, backend)?;
        let cpu_n = n.min(CPU_BESIDE_GPU_MAX_N);
        let (cpu, _) = measure(&source, cpu_n, dtype, options.repeats, w.param)?;
        writeln!(
                        out,
                        "{:<4} {:<22} {:>3} {:>4} {:>8} {:>10.3e} {:>8.1}ms  {:.1}x the cpu at {cpu:.3e} (N=M={cpu_n})",
                        w.id,
                        w.title,
                        d,
                        dtype_name(dtype),
                        n,
                        rate,
                        compile_ms,
                        rate / cpu
                    )
                    .ok();
        results.push(BenchResult {
            label: format!("{} D={d} {backend}", w.id),
            dtype,
            n,
            pairs_per_second: rate,
            compile_ms,
            baseline: Some((format!("cpu at N=M={cpu_n}"), cpu)),
        });
    }
    Ok(results)
}

/// Runs the backward pass of a workload with respect to `wrt` (together, one plan) at
/// N = M = n: every backward kernel compiled once (untimed), then `repeats` whole backward
/// computations (the passes and the combination of their rows), each right after a call of
/// the forward, so that both see the same load on a shared machine; medians in pairs/s.
/// The saved forward, when the reduction needs one, is computed before and passed in.
/// Returns (backward pairs/s, forward pairs/s, number of passes over the pairs).
pub fn measure_backward(
    source: &str,
    n: usize,
    dtype: DType,
    repeats: usize,
    param: f64,
    wrt: &[&str],
) -> Result<(f64, f64, usize), String> {
    let compiled = driver::compile(SourceFile::new("<bench>", source))
        .map_err(|_| "workload does not compile".to_string())?;
    let kernel = &compiled.kernels[0];
    let plan = crate::vjp::plan_many(kernel, wrt).map_err(|e| e.to_string())?;
    let inputs = uniform_inputs(source, n, dtype, 1, param)?;
    let arrays: Vec<&HostArray> = inputs.iter().map(|(_, a)| a).collect();
    let rows = n * kernel.signature.output_dim();
    let g: Vec<f64> = (0..rows)
        .map(|k| ((k * 7919) % 1000) as f64 / 1000.0)
        .collect();
    let shape = vec![n, kernel.signature.output_dim()];
    let cotangent = match dtype {
        DType::F32 => HostArray::from_f32(shape, g.iter().map(|&x| x as f32).collect()),
        DType::F64 => HostArray::from_f64(shape, g),
    };
    let saved = crate::vjp::saved_rows(&plan.saved, &plan.forward, &arrays, driver::Backend::Cpu)
        .map_err(|e| e.to_string())?;
    // The library's own runner: kernels compiled once (the process-wide JIT table), the two
    // dense passes as one cross pass where the plan has one.
    let run = || {
        crate::vjp::run_many(
            &plan,
            &arrays,
            &cotangent,
            saved.as_ref(),
            driver::Backend::Cpu,
        )
        .map_err(|e| e.to_string())
    };
    // The first call compiles.
    run()?;
    let forward = compile_cpu(kernel, dtype).map_err(|e| e.to_string())?;
    let views: Vec<_> = arrays.iter().map(|a| a.view()).collect();
    let mut rates = Vec::new();
    let mut forward_rates = Vec::new();
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        let out = run_tiles(&forward.tile_kernel(), &views, None).map_err(|e| e.to_string())?;
        let seconds = start.elapsed().as_secs_f64();
        std::hint::black_box(out);
        forward_rates.push((n as f64) * (n as f64) / seconds);
        let start = Instant::now();
        let grads = run()?;
        let seconds = start.elapsed().as_secs_f64();
        std::hint::black_box(grads);
        rates.push((n as f64) * (n as f64) / seconds);
    }
    let dense_passes = if plan.cross.is_some() {
        1
    } else {
        plan.dense.len()
    };
    let passes = dense_passes + usize::from(plan.selected.is_some());
    Ok((median(rates), median(forward_rates), passes))
}

/// The time of one whole vjp call (`vjp::run_many` with respect to `wrt`) on a tiny problem
/// (N = M = n), where compiling the backward kernels is most of it: with every kernel
/// compiled at each call (what every call cost before the [`JitCache`]), and with the default
/// runner, which takes them from the process-wide [`JitCache`] after the first call. Medians
/// of `repeats` calls each, in milliseconds.
///
/// [`JitCache`]: crate::jit_cache::JitCache
pub fn measure_vjp_latency(
    source: &str,
    n: usize,
    repeats: usize,
    param: f64,
    wrt: &[&str],
) -> Result<(f64, f64), String> {
    let compiled = driver::compile(SourceFile::new("<bench>", source))
        .map_err(|_| "workload does not compile".to_string())?;
    let kernel = &compiled.kernels[0];
    let plan = crate::vjp::plan_many(kernel, wrt).map_err(|e| e.to_string())?;
    let inputs = uniform_inputs(source, n, DType::F32, 1, param)?;
    let arrays: Vec<&HostArray> = inputs.iter().map(|(_, a)| a).collect();
    let dim = kernel.signature.output_dim();
    let cotangent = HostArray::from_f32(vec![n, dim], vec![1.0; n * dim]);
    let mut compile_each_call = |k: &CheckedKernel, args: &[&HostArray]| {
        let anew = driver::EvalOptions::on(driver::Backend::Cpu).compiled_anew();
        Ok(driver::evaluate(k, args, anew)?.output)
    };
    let mut uncached = Vec::new();
    let mut cached = Vec::new();
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        crate::vjp::run_many_with(&plan, &arrays, &cotangent, None, &mut compile_each_call)
            .map_err(|e| e.to_string())?;
        uncached.push(start.elapsed().as_secs_f64() * 1e3);
        let start = Instant::now();
        crate::vjp::run_many(&plan, &arrays, &cotangent, None, driver::Backend::Cpu)
            .map_err(|e| e.to_string())?;
        cached.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok((median(uncached), median(cached)))
}

/// Builds the C baseline (gcc -O3 -march=native -ffast-math -fopenmp) into a temporary
/// directory; `None` with the reason when it cannot.
pub fn build_c_baseline(source: &Path) -> Result<std::path::PathBuf, String> {
    build_c_program(source, "gauss_c", &["-ffast-math"])
}

/// `gcc -O3 -march=native -fopenmp EXTRA SOURCE -lm` into a temporary directory.
fn build_c_program(
    source: &Path,
    name: &str,
    extra: &[&str],
) -> Result<std::path::PathBuf, String> {
    if !source.exists() {
        return Err(format!("{} not found", source.display()));
    }
    let dir = std::env::temp_dir().join(format!("keopsc-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let exe = dir.join(name);
    let status = Command::new("gcc")
        .args(["-O3", "-march=native", "-fopenmp"])
        .args(extra)
        .arg(source)
        .arg("-o")
        .arg(&exe)
        .arg("-lm")
        .status()
        .map_err(|e| format!("gcc: {e}"))?;
    if !status.success() {
        return Err("gcc failed".into());
    }
    Ok(exe)
}

/// The machine's peak FMA rate, measured by `examples/bench/fma_peak.c` (beside the C
/// baseline) on vectors as wide as the generated code's, all threads: the bound of the
/// workloads that state their operations per pair (`Workload::fma_ops_per_pair`).
#[derive(Clone, Copy, Debug)]
pub struct FmaPeak {
    /// f32 lane-operations per second (one FMA on one lane is one).
    pub f32_lane_ops: f64,
    pub lanes: u32,
}

impl FmaPeak {
    /// Builds and runs the program; its source is `fma_peak.c` in the C baseline's folder.
    pub fn measure(c_baseline: &Path) -> Result<FmaPeak, String> {
        let lanes = crate::codegen::host_cpu().vector_bits / 32;
        let exe = build_c_program(
            &c_baseline.with_file_name("fma_peak.c"),
            "fma_peak",
            &[&format!("-DLANES={lanes}")],
        )?;
        let out = Command::new(exe).output().map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout);
        let f32_lane_ops = text
            .split_whitespace()
            .find_map(|w| w.strip_prefix("lane-ops/s="))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("unexpected output: {text}"))?;
        Ok(FmaPeak {
            f32_lane_ops,
            lanes,
        })
    }

    /// The pairs/s bound of a workload of `ops` FMA-pipe operations per pair: an f64 lane
    /// costs two f32 lanes.
    pub fn pairs_bound(&self, ops: f64, dtype: DType) -> f64 {
        let per_lane = match dtype {
            DType::F32 => 1.0,
            DType::F64 => 2.0,
        };
        self.f32_lane_ops / (ops * per_lane)
    }

    /// The line printed under the machine's.
    pub fn describe(&self) -> String {
        format!(
            "bound: {:.3e} f32 lane-ops/s (peak FMA rate of examples/bench/fma_peak.c, {}-lane vectors, all threads; half in f64); a workload's bound is that over its FMA-pipe operations per pair ({})",
            self.f32_lane_ops,
            self.lanes,
            WORKLOADS
                .iter()
                .flat_map(|w| w.fma_ops_per_pair.iter().map(move |(d, ops)| format!("{} D={d}: {ops}", w.id)))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// Runs the C baseline at N = M = n (it prints `pairs/s=...`, best of 3).
pub fn run_c_baseline(exe: &Path, n: usize) -> Result<f64, String> {
    let out = Command::new(exe)
        .arg(n.to_string())
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("pairs/s="))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("unexpected output: {text}"))
}

/// pykeops on W1 f32 at N = M = n through `python3`, if it imports: (pairs/s, seconds of its
/// first call, which compiles the formula unless pykeops's cache has it).
pub fn run_pykeops(n: usize) -> Result<(f64, f64), String> {
    let script = format!(
        "import time, numpy as np\nfrom pykeops.numpy import Genred\n\
         n={n}\nx=np.random.rand(n,3).astype('float32'); y=np.random.rand(n,3).astype('float32'); b=np.random.rand(n,1).astype('float32'); g=np.array([0.5],dtype='float32')\n\
         f=Genred('Exp(-SqDist(x,y)*g)*b',['x=Vi(3)','y=Vj(3)','b=Vj(1)','g=Pm(1)'],reduction_op='Sum',axis=1)\n\
         t=time.time(); f(x,y,b,g,backend='CPU'); first=time.time()-t\nts=[]\nfor _ in range(3):\n    t=time.time(); f(x,y,b,g,backend='CPU'); ts.append(time.time()-t)\n\
         print('pairs/s=%g first-call-s=%g' % (n*n/min(ts), first))\n"
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err("pykeops is not installed or failed (pip install pykeops)".into());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| format!("unexpected output: {text}"))
    };
    Ok((field("pairs/s=")?, field("first-call-s=")?))
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::F64 => "f64",
    }
}

/// Runs the selected workloads and prints one line each as it goes.
pub fn run(
    options: &BenchOptions,
    out: &mut dyn std::io::Write,
) -> Result<Vec<BenchResult>, String> {
    if options.backend != driver::Backend::Cpu {
        return run_beside_cpu(options, out);
    }
    let c_exe = match &options.c_baseline {
        Some(path) => match build_c_baseline(path) {
            Ok(exe) => Some(exe),
            Err(e) => {
                writeln!(out, "C baseline: skipped ({e})").ok();
                None
            }
        },
        None => None,
    };
    let peak = options.c_baseline.as_deref().map(FmaPeak::measure);
    let bound_line = match &peak {
        Some(Ok(peak)) => Some(peak.describe()),
        Some(Err(e)) => Some(format!("bound: not measured ({e})")),
        None => None,
    };
    write_header(out, bound_line.as_deref());
    let peak = peak.and_then(Result::ok);
    let mut results = run_forward(options, out, c_exe.as_deref(), peak.as_ref())?;
    let selected =
        |id: &str| options.workloads.is_empty() || options.workloads.iter().any(|s| s == id);
    results.extend(run_backward(options, out, &selected)?);
    if selected(BANDWIDTH_WORKLOAD) {
        results.extend(run_bandwidth_sweep(options, out)?);
    }
    if selected(CLIFF_WORKLOAD) {
        results.extend(run_cliffs(options, out)?);
    }
    if selected(SYMMETRIC_WORKLOAD) {
        results.extend(run_symmetric(options, out)?);
    }
    if selected(BATCH_WORKLOAD) {
        results.extend(run_batched(options, out)?);
    }
    if selected(RANGES_WORKLOAD) {
        results.extend(run_ranges(options, out)?);
    }
    if options.cache {
        run_cache_latency(options, out)?;
    }
    if options.pykeops {
        run_pykeops_beside(options, out, &results);
    }
    Ok(results)
}

/// The forward workloads, each beside the C baseline (W1 f32) and its share of the bound.
fn run_forward(
    options: &BenchOptions,
    out: &mut dyn std::io::Write,
    c_exe: Option<&Path>,
    peak: Option<&FmaPeak>,
) -> Result<Vec<BenchResult>, String> {
    let mut results = Vec::new();
    for (w, d, source, dtype, n) in forward_cases(options) {
        let (rate, compile_ms) = measure(&source, n, dtype, options.repeats, w.param)?;
        let mut baseline = None;
        if w.id == "W1" && dtype == DType::F32 {
            if let Some(exe) = c_exe {
                if let Ok(c) = run_c_baseline(exe, n) {
                    baseline = Some(("C (gcc -O3 -ffast-math, libmvec)".to_string(), c));
                }
            }
        }
        let mut base_text = match &baseline {
            Some((name, b)) => format!("{:.2}x {name} at {b:.3e}", rate / b),
            None => String::new(),
        };
        let ops = w.fma_ops_per_pair.iter().find(|(dim, _)| *dim == d);
        if let (Some(peak), Some(&(_, ops))) = (peak, ops) {
            let bound = peak.pairs_bound(ops, dtype);
            if !base_text.is_empty() {
                base_text.push_str("; ");
            }
            base_text.push_str(&format!(
                "{:.0}% of the bound {bound:.3e}",
                100.0 * rate / bound
            ));
        }
        writeln!(
            out,
            "{:<4} {:<22} {:>3} {:>4} {:>8} {:>10.3e} {:>8.1}ms  {base_text}",
            w.id,
            w.title,
            d,
            dtype_name(dtype),
            n,
            rate,
            compile_ms
        )
        .ok();
        results.push(BenchResult {
            label: format!("{} D={d}", w.id),
            dtype,
            n,
            pairs_per_second: rate,
            compile_ms,
            baseline,
        });
    }
    Ok(results)
}

/// The backward workloads, each set of inputs alternating with the forward.
fn run_backward(
    options: &BenchOptions,
    out: &mut dyn std::io::Write,
    selected: &dyn Fn(&str) -> bool,
) -> Result<Vec<BenchResult>, String> {
    let mut results = Vec::new();
    for bw in BACKWARD_WORKLOADS.iter().filter(|w| selected(w.id)) {
        let forward = WORKLOADS
            .iter()
            .find(|w| w.id == bw.forward)
            .expect("a backward workload names a forward workload");
        let d = forward.dims[0];
        let source = forward.source.replace("{D}", &d.to_string());
        for &dtype in &options.dtypes {
            for &n in &options.sizes {
                for wrt in bw.wrt {
                    // The forward's calls alternate with the backward's: the ratio is
                    // against the forward under the same load.
                    let (rate, fwd, passes) =
                        measure_backward(&source, n, dtype, options.repeats, forward.param, wrt)?;
                    writeln!(
                        out,
                        "{:<4} {:<22} {:>3} {:>4} {:>8} {:>10.3e}  {:.2}x the forward's pairs/s ({fwd:.3e}, alternating), {:.2}x its time ({passes} pass{})",
                        bw.id,
                        format!("vjp {}", wrt.join(",")),
                        d,
                        dtype_name(dtype),
                        n,
                        rate,
                        rate / fwd,
                        fwd / rate,
                        if passes == 1 { "" } else { "es" }
                    )
                    .ok();
                    results.push(BenchResult {
                        label: format!("{} D={d} vjp {}", bw.id, wrt.join(",")),
                        dtype,
                        n,
                        pairs_per_second: rate,
                        compile_ms: 0.0,
                        baseline: Some((format!("{} forward", forward.id), fwd)),
                    });
                }
            }
        }
    }
    Ok(results)
}

/// W1 on one cloud against itself, each unordered pair once, against the full evaluation.
fn run_symmetric(
    options: &BenchOptions,
    out: &mut dyn std::io::Write,
) -> Result<Vec<BenchResult>, String> {
    let mut results = Vec::new();
    let (w1, d, source) = w1_source();
    for &dtype in &options.dtypes {
        for &n in &options.sizes {
            let (same, full) = measure_symmetric(&source, n, dtype, options.repeats, w1.param)?;
            let rate = (n as f64) * (n as f64) / same;
            writeln!(
                out,
                "{:<4} {:<22} {:>3} {:>4} {:>8} {:>10.3e}  {:.2}x the full evaluation's time ({:.1} ms against {:.1} ms, alternating; pairs/s counts every ordered pair)",
                SYMMETRIC_WORKLOAD,
                "W1, y = x, pairs once",
                d,
                dtype_name(dtype),
                n,
                rate,
                same / full,
                same * 1e3,
                full * 1e3
            )
            .ok();
            results.push(BenchResult {
                label: format!("{SYMMETRIC_WORKLOAD} D={d}"),
                dtype,
                n,
                pairs_per_second: rate,
                compile_ms: 0.0,
                baseline: Some(("W1 full".to_string(), (n as f64) * (n as f64) / full)),
            });
        }
    }
    Ok(results)
}

/// Many small W1 problems in one call, against a loop of calls.
fn run_batched(
    options: &BenchOptions,
    out: &mut dyn std::io::Write,
) -> Result<Vec<BenchResult>, String> {
    let mut results = Vec::new();
    let (w1, d, source) = w1_source();
    let (count, n) = (1000, 200);
    for &dtype in &options.dtypes {
        let (batched, looped) =
            measure_batches(&source, count, n, dtype, options.repeats.max(5), w1.param)?;
        let rate = (count * n * n) as f64 / batched;
        writeln!(
            out,
            "{:<4} {:<22} {:>3} {:>4} {:>8} {:>10.3e}  {:.1}x faster than a loop of {count} calls ({:.2} ms against {:.2} ms, alternating)",
            BATCH_WORKLOAD,
            format!("W1, {count} x N=M={n}"),
            d,
            dtype_name(dtype),
            n,
            rate,
            looped / batched,
            batched * 1e3,
            looped * 1e3
        )
        .ok();
        results.push(BenchResult {
            label: format!("{BATCH_WORKLOAD} D={d}"),
            dtype,
            n,
            pairs_per_second: rate,
            compile_ms: 0.0,
            baseline: Some((
                format!("a loop of {count} calls"),
                (count * n * n) as f64 / looped,
            )),
        });
    }
    Ok(results)
}

/// W1 over the pairs of block-sparse ranges, against the dense evaluation.
fn run_ranges(
    options: &BenchOptions,
    out: &mut dyn std::io::Write,
) -> Result<Vec<BenchResult>, String> {
    let mut results = Vec::new();
    let (w1, d, source) = w1_source();
    for &dtype in &options.dtypes {
        for &n in &options.sizes {
            let (ranged, dense, kept) =
                measure_ranges(&source, n, dtype, options.repeats, w1.param)?;
            let rate = kept * (n as f64) * (n as f64) / ranged;
            writeln!(
                out,
                "{:<4} {:<22} {:>3} {:>4} {:>8} {:>10.3e}  {:.4}x the dense time ({:.1} ms against {:.1} ms) for {:.2}% of the pairs: {:.2}x the kept fraction; pairs/s counts the kept pairs",
                RANGES_WORKLOAD,
                "W1, grid cells, ranges",
                d,
                dtype_name(dtype),
                n,
                rate,
                ranged / dense,
                ranged * 1e3,
                dense * 1e3,
                kept * 100.0,
                ranged / dense / kept
            )
            .ok();
            results.push(BenchResult {
                label: format!("{RANGES_WORKLOAD} D={d}"),
                dtype,
                n,
                pairs_per_second: rate,
                compile_ms: 0.0,
                baseline: Some(("W1 dense".to_string(), (n as f64) * (n as f64) / dense)),
            });
        }
    }
    Ok(results)
}

/// The on-disk compile cache's cold and warm latency, and a vjp call's with and without the
/// process's compiled backward kernels.
fn run_cache_latency(options: &BenchOptions, out: &mut dyn std::io::Write) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("keopsc-bench-cache-{}", std::process::id()));
    for w in WORKLOADS
        .iter()
        .filter(|w| options.workloads.is_empty() || options.workloads.iter().any(|s| s == w.id))
    {
        let source = w.source.replace("{D}", &w.dims[0].to_string());
        let (cold, warm) =
            crate::artifact::cache::measure_latency(&dir, &source, 3).map_err(|e| e.to_string())?;
        writeln!(
            out,
            "compile cache {} D={}: cold {:.1} ms (compile f32 + f64, link, store), warm {:.2} ms (hash, check, load)",
            w.id,
            w.dims[0],
            cold.as_secs_f64() * 1e3,
            warm.as_secs_f64() * 1e3
        )
        .ok();
    }
    let (w1, _, source) = w1_source();
    let n = 16;
    let (uncached, cached) =
        measure_vjp_latency(&source, n, options.repeats.max(5), w1.param, &["x"])?;
    writeln!(
        out,
        "vjp per call W1 dx, f32, N=M={n}: {uncached:.2} ms compiling the backward kernel at each call, {cached:.3} ms from the process's compiled kernels ({:.0}x)",
        uncached / cached
    )
    .ok();
    Ok(())
}

/// pykeops on W1 f32 at each size, beside this run's figures.
fn run_pykeops_beside(
    options: &BenchOptions,
    out: &mut dyn std::io::Write,
    results: &[BenchResult],
) {
    for &n in &options.sizes {
        match run_pykeops(n) {
            Ok((rate, first_call)) => {
                let ours = results
                    .iter()
                    .find(|r| r.label == "W1 D=3" && r.dtype == DType::F32 && r.n == n);
                let ratio = ours
                    .map(|r| format!("keops-rs is {:.1}x", r.pairs_per_second / rate))
                    .unwrap_or_default();
                writeln!(
                    out,
                    "pykeops W1 f32 N={n}: {rate:.3e} pairs/s, first call {first_call:.2} s  {ratio}"
                )
                .ok();
            }
            Err(e) => {
                writeln!(out, "pykeops: skipped ({e})").ok();
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(id: &str) -> &'static Workload {
        WORKLOADS
            .iter()
            .find(|w| w.id == id)
            .expect("a listed workload")
    }

    /// Fraction of the pairs of a Gaussian workload's inputs (D = 3, N = M = 400) whose
    /// exponential underflows to 0 in `dtype`: its argument is below ln of half the smallest
    /// denormal.
    fn underflowing_fraction(w: &Workload, dtype: DType) -> f64 {
        let source = w.source.replace("{D}", "3");
        let inputs = uniform_inputs(&source, 400, DType::F64, 1, w.param).expect("inputs");
        let points = |name: &str| {
            inputs
                .iter()
                .find(|(n, _)| n == name)
                .expect("x, y")
                .1
                .to_f64()
        };
        let (x, y) = (points("x"), points("y"));
        let threshold = match dtype {
            DType::F32 => -103.972_077_083_991_8,
            DType::F64 => -745.133_219_101_941_1,
        };
        let mut under = 0usize;
        for xi in x.chunks(3) {
            for yj in y.chunks(3) {
                let d2: f64 = xi.iter().zip(yj).map(|(a, b)| (a - b) * (a - b)).sum();
                if -d2 * w.param < threshold {
                    under += 1;
                }
            }
        }
        under as f64 / (x.len() / 3 * (y.len() / 3)) as f64
    }

    #[test]
    fn the_small_bandwidth_workload_mostly_underflows() {
        assert!(underflowing_fraction(workload("W1s"), DType::F32) > 0.95);
        assert!(underflowing_fraction(workload("W1s"), DType::F64) > 0.6);
        assert_eq!(underflowing_fraction(workload("W1"), DType::F32), 0.0);
        assert_eq!(workload("W1s").source, workload("W1").source);
    }
}
