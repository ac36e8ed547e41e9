//! Tests as files: `tests/kf/run/*.kf` run their kernel on every backend and compare each with
//! the reference interpreter. A file holds one kernel and any number of directive lines:
//!
//! ```text
//! # run: n=3 m=40 dtype=f32,f64 schedule=3x5 h=ints+inf@3,11
//! # sweep: h m=37
//! ```
//!
//! - `# run:` evaluates once per dtype (`dtype=`, both by default), on the interpreter and on
//!   the compiled CPU backend for every vector width this host can run (the host's own and each
//!   lower x86-64 level), each with the scheduler's own choice and with forced schedules
//!   (`schedule=ROWSxCHUNKS,...`: row blocks and inner splits; `1x1` and `3x5` by default),
//!   and on the GPU kernel's host twin (the generated NVPTX kernel's code run on the CPU, blocks
//!   of [`TWIN_BLOCK`] threads) with the 1-D schedule and the inner range split in two and in
//!   three parts (the 2-D schedule, parts merged as on a GPU).
//!   Every other `NAME=DATA` gives a variable's data: a base (`uniform` in [-1, 1] by default,
//!   `ints` in -3..3, `nat` in 0..3, `pos` in [0.5, 1.5]) followed by overlays `+KIND@ROWS`, where KIND is a
//!   special value (`inf -inf nan huge -huge tiny denormal zero -zero`) and ROWS a list of row
//!   numbers and ranges `a..b`.
//! - `# sweep: NAME [base=DATA] [m=M] [n=N] [OTHER=DATA]` places each special value, alone and
//!   in pairs (in the same SIMD lane, in neighbouring lanes), at every row position of `NAME`
//!   in turn, with `ints` data (or `base`) elsewhere, and runs it as `# run:` does. Where M exceeds the compiled inner tile, the
//!   pairs also straddle the tile boundary and the forced inner splits.
//!
//! - `# near-ties: REL`: an index output may differ from the interpreter's where the formula's
//!   values at the two indices (as the interpreter computes them) are within REL of each other,
//!   relative to the larger: the rule of lang-spec/reductions.md ("Which index") for values
//!   that are equal in exact arithmetic but rounded differently by each backend's math.
//!
//! Outputs must match the interpreter: NaN where it gives NaN, the same infinities, the same
//! indices, and finite values within the dtype's tolerance.

use keops_runtime::gpu::{merge_parts, InnerSplit};
use keops_runtime::{run_tiles, Axis, DType, HostArray, TileSchedule};
use keopsc::codegen::nvptx::HostTwin;
use keopsc::codegen::{CpuTarget, JitKernel};
use keopsc::driver::{self, Backend};
use keopsc::opt::{self, OptBudget};
use keopsc::source::SourceFile;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::Path;

const SPECIALS: &[&str] = &[
    "inf", "-inf", "nan", "huge", "-huge", "tiny", "denormal", "zero", "-zero",
];

fn special(kind: &str) -> Result<f64, String> {
    Ok(match kind {
        "inf" => f64::INFINITY,
        "-inf" => f64::NEG_INFINITY,
        "nan" => f64::NAN,
        // Far from overflow in both dtypes; sums of a few stay finite.
        "huge" => 1e30,
        "-huge" => -1e30,
        "tiny" => 1e-30,
        // Subnormal in f32 (and tiny in f64).
        "denormal" => 1e-40,
        "zero" => 0.0,
        "-zero" => -0.0,
        other => return Err(format!("unknown special value `{other}`")),
    })
}

/// Rows of one overlay: `3,11`, `0..4`, `5,8..10`.
fn rows(text: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in text.split(',') {
        let parse = |t: &str| {
            t.trim()
                .parse::<usize>()
                .map_err(|_| format!("bad row `{t}`"))
        };
        match part.split_once("..") {
            Some((a, b)) => out.extend(parse(a)?..parse(b)?),
            None => out.push(parse(part)?),
        }
    }
    Ok(out)
}

/// How one variable's data is made.
#[derive(Clone, Debug)]
struct DataSpec {
    base: String,
    overlays: Vec<(f64, Vec<usize>)>,
}

impl DataSpec {
    fn parse(text: &str) -> Result<DataSpec, String> {
        let mut parts = text.split('+');
        let base = parts.next().unwrap_or("uniform").to_string();
        if !["uniform", "ints", "nat", "pos"].contains(&base.as_str()) {
            return Err(format!("unknown data `{base}`"));
        }
        let mut overlays = Vec::new();
        for overlay in parts {
            let (kind, at) = overlay
                .split_once('@')
                .ok_or_else(|| format!("overlay `{overlay}`: expected KIND@ROWS"))?;
            overlays.push((special(kind)?, rows(at)?));
        }
        Ok(DataSpec { base, overlays })
    }

    fn make(&self, rows: usize, dim: usize, rng: &mut StdRng) -> Vec<f64> {
        let mut data: Vec<f64> = (0..rows * dim)
            .map(|_| match self.base.as_str() {
                "ints" => rng.random_range(-3i32..=3) as f64,
                "nat" => rng.random_range(0i32..=3) as f64,
                "pos" => rng.random_range(0.5..1.5),
                _ => rng.random_range(-1.0..1.0),
            })
            .collect();
        for (value, at) in &self.overlays {
            for &r in at.iter().filter(|&&r| r < rows) {
                data[r * dim..(r + 1) * dim].fill(*value);
            }
        }
        data
    }
}

/// One `# run:` line.
#[derive(Clone, Debug)]
struct RunSpec {
    n: usize,
    m: usize,
    dtypes: Vec<DType>,
    schedules: Vec<TileSchedule>,
    seed: u64,
    data: Vec<(String, DataSpec)>,
}

impl RunSpec {
    fn parse(text: &str) -> Result<RunSpec, String> {
        let mut spec = RunSpec {
            n: 3,
            m: 40,
            dtypes: vec![DType::F64, DType::F32],
            schedules: vec![
                TileSchedule {
                    row_block: 1,
                    inner_chunks: 1,
                },
                TileSchedule {
                    row_block: 3,
                    inner_chunks: 5,
                },
            ],
            seed: 1,
            data: Vec::new(),
        };
        for word in text.split_whitespace() {
            let (key, value) = word
                .split_once('=')
                .ok_or_else(|| format!("`{word}`: expected KEY=VALUE"))?;
            let number = |v: &str| v.parse::<usize>().map_err(|_| format!("`{word}`"));
            match key {
                "n" => spec.n = number(value)?,
                "m" => spec.m = number(value)?,
                "seed" => spec.seed = number(value)? as u64,
                "dtype" => {
                    spec.dtypes = value
                        .split(',')
                        .map(|d| match d {
                            "f32" => Ok(DType::F32),
                            "f64" => Ok(DType::F64),
                            _ => Err(format!("unknown dtype `{d}`")),
                        })
                        .collect::<Result<_, _>>()?
                }
                "schedule" => {
                    spec.schedules = value
                        .split(',')
                        .map(|s| {
                            let (r, c) = s
                                .split_once('x')
                                .ok_or_else(|| format!("schedule `{s}`: expected RxC"))?;
                            Ok(TileSchedule {
                                row_block: number(r)?,
                                inner_chunks: number(c)?,
                            })
                        })
                        .collect::<Result<_, String>>()?
                }
                name => spec.data.push((name.to_string(), DataSpec::parse(value)?)),
            }
        }
        Ok(spec)
    }
}

/// Threads per block of the GPU kernel's host twin: small, so that a few dozen inner indices
/// already cross tile and part boundaries (37 is three tiles).
const TWIN_BLOCK: u32 = 16;

/// The longest swept range the host twin runs: each of its runs costs a thread switch per
/// thread and tile (OS threads at a barrier), and a few tiles hold every kind of cut.
const TWIN_SWEEP_MAX: usize = 8 * TWIN_BLOCK as usize;

/// A kernel compiled for every width this host runs, and as the GPU kernel's host twin, in one
/// dtype.
struct Compiled {
    dtype: DType,
    widths: Vec<(String, JitKernel)>,
    twin: HostTwin,
}

/// The host's own CPU, then each lower x86-64 level the host can run whose vector width differs.
fn targets() -> Vec<CpuTarget> {
    let mut out = vec![keopsc::codegen::host_cpu()];
    for level in keopsc::target::cpu::LEVELS.iter().rev() {
        let Some(t) = keopsc::codegen::cpu_level(level) else {
            continue;
        };
        let runs_here = t
            .required_features
            .iter()
            .all(|f| keops_runtime::module::cpu_has(f));
        if runs_here && out.iter().all(|o| o.vector_bits != t.vector_bits) {
            out.push(t);
        }
    }
    out
}

struct RunFile {
    name: String,
    kernel: keopsc::check::CheckedKernel,
    compiled: Vec<Compiled>,
    /// `# near-ties: REL`, when the file has it.
    near_ties: Option<f64>,
}

impl RunFile {
    fn load(path: &Path) -> RunFile {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(path).expect("readable");
        let file = match driver::compile(SourceFile::new(name.clone(), text.clone())) {
            Ok(f) => f,
            Err((s, d)) => panic!(
                "{name} does not compile:\n{}",
                keopsc::diagnostic::render_all(&d, &s, false)
            ),
        };
        assert_eq!(file.kernels.len(), 1, "{name}: one kernel per run file");
        let kernel = file.kernels.into_iter().next().unwrap();
        let optimized = opt::optimize(&kernel, &OptBudget::default()).expect("optimises");
        let compiled = [DType::F64, DType::F32]
            .into_iter()
            .map(|dtype| Compiled {
                dtype,
                widths: targets()
                    .into_iter()
                    .map(|t| {
                        let jit =
                            JitKernel::compile(&optimized.formula, &kernel.signature, dtype, &t)
                                .unwrap_or_else(|e| panic!("{name}: {e}"));
                        (format!("{} ({} lanes)", t.cpu, jit.schedule.lanes), jit)
                    })
                    .collect(),
                twin: HostTwin::compile(
                    &optimized.formula,
                    &kernel.signature,
                    dtype,
                    Some(TWIN_BLOCK),
                )
                .unwrap_or_else(|e| panic!("{name}: host twin: {e}")),
            })
            .collect();
        let near_ties = text.lines().find_map(|l| {
            let rel = l.trim().strip_prefix("# near-ties:")?.trim();
            Some(
                rel.parse::<f64>()
                    .unwrap_or_else(|_| panic!("{name}: `# near-ties: {rel}`")),
            )
        });
        RunFile {
            name,
            kernel,
            compiled,
            near_ties,
        }
    }

    fn inputs(&self, spec: &RunSpec, dtype: DType) -> Vec<(String, HostArray)> {
        let mut rng = StdRng::seed_from_u64(spec.seed);
        self.kernel
            .signature
            .args
            .iter()
            .map(|arg| {
                let rows = match arg.category {
                    keops_runtime::Category::I => spec.n,
                    keops_runtime::Category::J => spec.m,
                    keops_runtime::Category::Param => 1,
                };
                let data = spec
                    .data
                    .iter()
                    .find(|(n, _)| *n == arg.name)
                    .map_or_else(|| DataSpec::parse("uniform").unwrap(), |(_, d)| d.clone())
                    .make(rows, arg.dim, &mut rng);
                let shape = vec![rows, arg.dim];
                let array = match dtype {
                    DType::F64 => HostArray::from_f64(shape, data),
                    DType::F32 => {
                        HostArray::from_f32(shape, data.iter().map(|&x| x as f32).collect())
                    }
                };
                (arg.name.clone(), array)
            })
            .collect()
    }

    /// Runs one spec everywhere; returns the first mismatch.
    fn run(&self, spec: &RunSpec, what: &str) -> Result<(), String> {
        self.run_on(spec, what, true)
    }

    /// Runs one spec on the interpreter and the CPU, and on the GPU's host twin when `twin`.
    fn run_on(&self, spec: &RunSpec, what: &str, twin: bool) -> Result<(), String> {
        for &dtype in &spec.dtypes {
            let inputs = self.inputs(spec, dtype);
            let want = driver::evaluate(&self.kernel, &inputs, Backend::Interp)
                .map(|done| done.output)
                .map_err(|e| format!("{what}: interpreter: {e}"))?
                .to_f64();
            let views: Vec<_> = inputs.iter().map(|(_, a)| a.view()).collect();
            let compiled = self.compiled.iter().find(|c| c.dtype == dtype).unwrap();
            for (width, jit) in &compiled.widths {
                let schedules =
                    std::iter::once(None).chain(spec.schedules.iter().map(|&s| Some(s)));
                for schedule in schedules {
                    let got = run_tiles(&jit.tile_kernel(), &views, schedule)
                        .map_err(|e| format!("{what}: {e}"))?
                        .to_f64();
                    let place = format!("{what}, {dtype}, {width}, schedule {schedule:?}");
                    self.compare(&inputs, &got, &want, dtype, &place)?;
                }
            }
            for parts in [1, 2, 3].into_iter().filter(|_| twin) {
                let got = self.run_twin(&compiled.twin, &inputs, dtype, parts);
                let place = format!("{what}, {dtype}, GPU host twin, {parts} part(s)");
                self.compare(&inputs, &got, &want, dtype, &place)?;
            }
        }
        Ok(())
    }

    /// The GPU kernel's host twin on `inputs`, the inner range in `parts` parts of whole tiles
    /// merged as the GPU's host code merges them; the finalized output.
    fn run_twin(
        &self,
        twin: &HostTwin,
        inputs: &[(String, HostArray)],
        dtype: DType,
        parts: usize,
    ) -> Vec<f64> {
        let sig = &self.kernel.signature;
        let red = sig.reduction;
        let arrays = driver::bind_arguments(&self.kernel, inputs).expect("run inputs bind");
        let rows_of = |c| {
            sig.args
                .iter()
                .zip(&arrays)
                .find(|(a, _)| a.category == c)
                .map_or(1, |(_, x)| x.shape[0])
        };
        let (n, m) = (
            rows_of(keops_runtime::Category::I),
            rows_of(keops_runtime::Category::J),
        );
        let (rows, inner) = match sig.axis {
            Axis::I => (n, m),
            Axis::J => (m, n),
        };
        let wide: Vec<Vec<f64>> = arrays.iter().map(|a| a.to_f64()).collect();
        let narrow: Vec<Vec<f32>> = wide
            .iter()
            .map(|a| a.iter().map(|&x| x as f32).collect())
            .collect();
        let pointers: Vec<*const u8> = match dtype {
            DType::F32 => narrow.iter().map(|a| a.as_ptr().cast()).collect(),
            DType::F64 => wide.iter().map(|a| a.as_ptr().cast()).collect(),
        };
        let split = InnerSplit::with_parts(inner, parts, TWIN_BLOCK as usize);
        // SAFETY: one row-major buffer per argument in the twin's dtype, for n and m rows.
        let partial = unsafe { twin.run_split(&pointers, rows, inner, red.acc_dim(), split) };
        let acc = merge_parts(&red, &partial, split.parts, rows);
        let out_dim = red.output_dim().max(1);
        let mut out = vec![0.0; rows * out_dim];
        for (a, o) in acc.chunks(red.acc_dim()).zip(out.chunks_mut(out_dim)) {
            red.finalize(a, o);
        }
        out
    }

    /// [`compare`], with the file's near-tie rule for index outputs.
    fn compare(
        &self,
        inputs: &[(String, HostArray)],
        got: &[f64],
        want: &[f64],
        dtype: DType,
        what: &str,
    ) -> Result<(), String> {
        let Some(rel) = self.near_ties else {
            return compare(got, want, dtype, what);
        };
        let out_dim = self.kernel.signature.reduction.output_dim().max(1);
        let indices = keops_tests::fuzzing::differential::index_slots(&self.kernel);
        let mut got = got.to_vec();
        for (e, g) in got.iter_mut().enumerate() {
            let (row, slot) = (e / out_dim, e % out_dim);
            let w = want[e];
            if indices[slot]
                && *g != w
                && keops_tests::fuzzing::differential::values_within(
                    &self.kernel,
                    inputs,
                    row,
                    slot,
                    *g,
                    w,
                    rel,
                )
            {
                // Another index of a near-tie: as good an answer as the interpreter's.
                *g = w;
            }
        }
        compare(&got, want, dtype, what)
    }
}

fn compare(got: &[f64], want: &[f64], dtype: DType, what: &str) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} outputs, interpreter {}",
            got.len(),
            want.len()
        ));
    }
    let tol = match dtype {
        DType::F32 => 1e-5,
        DType::F64 => 1e-12,
    };
    for (k, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_nan() || g.is_nan() {
            w.is_nan() && g.is_nan()
        } else if w.is_infinite() || g.is_infinite() {
            g == w
        } else if w == 0.0 && g == 0.0 {
            // the sign of a zero is part of the answer (a Min of -0 and +0)
            g.is_sign_negative() == w.is_sign_negative()
        } else {
            (g - w).abs() <= tol * w.abs().max(1.0)
        };
        if !ok {
            return Err(format!(
                "{what}: output {k}: cpu {g:?}, interpreter {w:?}\n  cpu:         {got:?}\n  interpreter: {want:?}"
            ));
        }
    }
    Ok(())
}

/// The placements of one sweep: rows holding the special value.
fn placements(m: usize, lanes: usize, tile: usize, chunks: &[usize]) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = (0..m.min(3 * lanes + 1)).map(|p| vec![p]).collect();
    for p in 0..lanes {
        out.push(vec![p, p + lanes]); // the same lane
        out.push(vec![p, p + 1]); // neighbouring lanes
    }
    let mut boundaries = vec![tile];
    boundaries.extend_from_slice(chunks);
    for b in boundaries.into_iter().filter(|&b| b > 0 && b < m) {
        for d in [1, lanes] {
            if b >= d {
                out.push(vec![b - d, b]);
                out.push(vec![b - d]);
            }
        }
        out.push(vec![b]);
        out.push(vec![b, m - 1]);
    }
    out.retain(|rows| rows.iter().all(|&r| r < m));
    out
}

fn sweep(file: &RunFile, line: &str) -> Result<usize, String> {
    let mut words = line.split_whitespace();
    let var = words.next().ok_or("`# sweep:` needs a variable name")?;
    let rest: Vec<&str> = words.collect();
    let sweep_base = rest
        .iter()
        .find_map(|w| w.strip_prefix("base="))
        .unwrap_or("ints");
    let rest: Vec<&str> = rest
        .into_iter()
        .filter(|w| !w.starts_with("base="))
        .collect();
    let base = RunSpec::parse(&rest.join(" "))?;
    let arg = file
        .kernel
        .signature
        .args
        .iter()
        .find(|a| a.name == var)
        .ok_or_else(|| format!("no variable `{var}`"))?;
    let len = match arg.category {
        keops_runtime::Category::I => base.n,
        keops_runtime::Category::J => base.m,
        keops_runtime::Category::Param => 1,
    };
    let mut runs = 0;
    let widest = file
        .compiled
        .iter()
        .flat_map(|c| c.widths.iter())
        .map(|(_, j)| (j.schedule.lanes as usize, j.schedule.inner_tile))
        .collect::<Vec<_>>();
    let mut all: Vec<Vec<usize>> = Vec::new();
    let cuts: Vec<(usize, usize, Vec<usize>)> = widest
        .iter()
        .map(|&(lanes, tile)| {
            // where the forced 3x5 schedule splits the inner range
            let chunk = len.div_ceil(5).div_ceil(lanes) * lanes;
            (lanes, tile, (1..5).map(|c| c * chunk).collect())
        })
        .collect();
    // the host twin: a thread per row, tiles of TWIN_BLOCK, the inner range in 2 and 3 parts
    let twin_chunks: Vec<usize> = [2, 3]
        .iter()
        .flat_map(|&parts| {
            let chunk = InnerSplit::with_parts(len, parts, TWIN_BLOCK as usize).chunk;
            (1..parts).map(move |c| c * chunk)
        })
        .collect();
    for (lanes, tile, chunks) in &cuts {
        for p in placements(len, *lanes, *tile, chunks) {
            if !all.contains(&p) {
                all.push(p);
            }
        }
    }
    // The host twin's threads are rows, each folding a tile's inner indices in order: its cuts
    // are the tile and part boundaries, and it runs (slowly: see TWIN_SWEEP_MAX) only on the
    // placements that touch them, in short ranges.
    let twin_placements = placements(len, 1, TWIN_BLOCK as usize, &twin_chunks);
    for p in &twin_placements {
        if !all.contains(p) {
            all.push(p.clone());
        }
    }
    for kind in SPECIALS {
        for rows in &all {
            let at: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
            let data = format!("{sweep_base}+{kind}@{}", at.join(","));
            let mut spec = base.clone();
            spec.data.retain(|(n, _)| n != var);
            spec.data.push((var.to_string(), DataSpec::parse(&data)?));
            for (name, d) in spec.data.iter_mut() {
                if name != var && d.base == "uniform" && d.overlays.is_empty() {
                    d.base = "ints".into();
                }
            }
            let twin = len <= TWIN_SWEEP_MAX && twin_placements.contains(rows);
            file.run_on(&spec, &format!("{}: sweep {var}={data}", file.name), twin)?;
            runs += 1;
        }
    }
    Ok(runs)
}

#[test]
fn run_files_agree_with_the_interpreter_on_every_backend() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("kf/run");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/kf/run exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "kf"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no run files in {}", dir.display());
    let mut failures = Vec::new();
    for path in &paths {
        let file = RunFile::load(path);
        let text = std::fs::read_to_string(path).unwrap();
        let mut directives = 0;
        for (line_no, line) in text.lines().enumerate() {
            let at = format!("{}:{}", file.name, line_no + 1);
            let result = if let Some(rest) = line.trim().strip_prefix("# run:") {
                RunSpec::parse(rest).and_then(|spec| file.run(&spec, &at))
            } else if let Some(rest) = line.trim().strip_prefix("# sweep:") {
                sweep(&file, rest).map(|_| ())
            } else {
                continue;
            };
            directives += 1;
            if let Err(e) = result {
                failures.push(format!("{at}: {e}"));
            }
        }
        assert!(
            directives > 0,
            "{}: no `# run:` or `# sweep:` line",
            file.name
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
