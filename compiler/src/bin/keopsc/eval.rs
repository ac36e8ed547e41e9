//! `keopsc eval`: a kernel run on `.npy` files. The order of the steps is the point: what the
//! user can get wrong is found before any long work starts. The output paths are opened first
//! (milliseconds), then the source is checked, then every argument is read and checked (all
//! problems listed together), and only then is the kernel compiled and run.

use crate::inputs::{parse_files, parse_same, read_inputs};
use crate::{fail, load, Reported};
use keops_runtime::{index_columns, HostArray, ReductionKind};
use keopsc::batch::BatchShape;
use keopsc::check::CheckedKernel;
use keopsc::driver::{self, Backend, EvalTimings};
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What `keopsc eval` was asked to do.
pub struct EvalRequest<'a> {
    pub file: &'a Path,
    pub kernel: Option<&'a str>,
    pub args: &'a [String],
    /// `--same J=I` flags: the j-variable J reads the data of the i-variable I.
    pub same: &'a [String],
    pub output: &'a Path,
    pub indices_out: Option<&'a Path>,
    pub index_dtype: Option<&'a str>,
    pub backend: Option<&'a str>,
    /// `--ranges ROWS SLICES INNER`: a block-sparse reduction.
    pub ranges: Option<&'a [PathBuf]>,
    pub timings: bool,
}

/// How indices are written: as floats in the input dtype (KeOps's convention, the default) or
/// as int64.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IndexDType {
    Float,
    Int64,
}

impl IndexDType {
    fn parse(text: &str) -> Option<IndexDType> {
        match text {
            "float" => Some(IndexDType::Float),
            "int64" | "i64" => Some(IndexDType::Int64),
            _ => None,
        }
    }
}

/// Where each part of the output goes, decided from the reduction and the options.
enum OutputPlan {
    /// The whole output row, as computed, into `-o`.
    Whole,
    /// An arg-only reduction's indices as int64 into `-o`.
    IndicesAsInt64,
    /// A combined reduction's values into `-o`, its indices (columns `columns`) into
    /// `--indices-out`.
    Apart {
        columns: Range<usize>,
        dtype: IndexDType,
    },
}

/// Decides where values and indices go, or says why the options do not fit the reduction.
fn plan_output(
    kernel: &CheckedKernel,
    indices_out: Option<&Path>,
    index_dtype: Option<IndexDType>,
) -> Result<OutputPlan, String> {
    let reduction = &kernel.signature.reduction;
    let kind: ReductionKind = reduction.kind;
    let columns = index_columns(reduction);
    let arg_only = columns
        .as_ref()
        .is_some_and(|c| c.start == 0 && c.end == reduction.output_dim());
    match (columns, indices_out, index_dtype) {
        (None, Some(_), _) => Err(format!(
            "`--indices-out`: kernel `{}` ends with {kind}, which returns no indices",
            kernel.name
        )),
        // Reductions without indices have nothing for --index-dtype to change.
        (None, None, _) => Ok(OutputPlan::Whole),
        (Some(_), Some(_), _) if arg_only => Err(format!(
            "`--indices-out`: kernel `{}` ends with {kind}, which returns indices only: they \
             are written to -o (add --index-dtype int64 to write them as int64)",
            kernel.name
        )),
        (Some(_), None, Some(IndexDType::Int64)) if arg_only => Ok(OutputPlan::IndicesAsInt64),
        (Some(_), None, Some(IndexDType::Int64)) => Err(format!(
            "`--index-dtype int64`: kernel `{}` ends with {kind}, which returns values and \
             indices side by side, and one .npy array has one dtype: add --indices-out IDX.npy \
             to write the indices apart",
            kernel.name
        )),
        (Some(_), None, _) => Ok(OutputPlan::Whole),
        (Some(columns), Some(_), dtype) => Ok(OutputPlan::Apart {
            columns,
            dtype: dtype.unwrap_or(IndexDType::Int64),
        }),
    }
}

pub fn eval(request: &EvalRequest) -> Result<(), Reported> {
    let started = Instant::now();
    // Options and output paths first: a typo there must not cost a whole computation.
    let backend = parse_backend(request.backend)?;
    let index_dtype = match request.index_dtype {
        None => None,
        Some(text) => Some(IndexDType::parse(text).ok_or_else(|| {
            fail(format!(
                "`--index-dtype {text}`: expected float (the input dtype, as KeOps) or int64"
            ))
        })?),
    };
    let output = PendingOutput::open(request.output, "-o")?;
    let indices_output = match request.indices_out {
        Some(path) if same_file(path, request.output) => {
            return Err(fail(format!(
                "`--indices-out {}` is the same file as -o",
                path.display()
            )))
        }
        Some(path) => Some(PendingOutput::open(path, "--indices-out")?),
        None => None,
    };

    let start = Instant::now();
    let compiled = load(request.file)?;
    let kernel = pick_kernel(&compiled, request.kernel, request.file)?;
    let front_end = start.elapsed();

    // Every problem with the arguments and the output options, listed together.
    let mut problems: Vec<String> = Vec::new();
    let plan = plan_output(kernel, request.indices_out, index_dtype)
        .map_err(|message| problems.push(message))
        .ok();
    let files = parse_files(request.args, &mut problems);
    let same = parse_same(kernel, request.same, &files, &mut problems);
    let start = Instant::now();
    let inputs = read_inputs(kernel, &files, &same, &mut problems);
    let read = start.elapsed();
    let (Some(plan), Some(inputs), true) = (plan, inputs, problems.is_empty()) else {
        return Err(argument_problems(&problems, &kernel.name));
    };
    let ranges = match request.ranges {
        None => None,
        Some(paths) => Some(read_ranges(
            paths,
            kernel,
            backend,
            !inputs.layout.batch.is_empty(),
        )?),
    };

    let bound = inputs.bound();
    // With `--same`, a Sum on the CPU walks each unordered pair once (lang-spec/cli.md).
    let pairs: Vec<(usize, usize)> = same.iter().map(|s| (s.j, s.i)).collect();
    let options = driver::EvalOptions::on(backend).compiled_anew();
    let options = match &ranges {
        Some(ranges) => options.ranges(ranges),
        None => options.pairs(driver::Pairs::Same(&pairs)),
    };
    let driver::Evaluation {
        output: out,
        timings,
    } = driver::evaluate(kernel, &bound, options).map_err(fail)?;

    let start = Instant::now();
    let written = write_output(plan, &out, output, indices_output)?;
    let write = start.elapsed();

    if request.timings {
        let report = TimingReport {
            kernel: &kernel.name,
            backend,
            eval: timings,
            batch: inputs.layout.batch.clone(),
            read,
            read_bytes: inputs.read_bytes(),
            front_end,
            write,
            written_bytes: written,
            total: started.elapsed(),
        };
        eprint!("{report}");
    }
    Ok(())
}

/// `--ranges`: the block-sparsity pattern of KeOps's six int64 arrays (of which the three
/// of the kernel's axis are read), for the cpu or cuda backend and arrays without batch axes.
fn read_ranges(
    paths: &[PathBuf],
    kernel: &CheckedKernel,
    backend: Backend,
    batched: bool,
) -> Result<keops_runtime::Ranges, Reported> {
    if batched {
        return Err(fail(
            "--ranges: not with batch axes (one block-sparsity pattern per call)",
        ));
    }
    if backend == driver::Backend::Interp {
        return Err(fail(format!(
            "--ranges runs on the cpu or cuda backend, not {backend}"
        )));
    }
    let names = keops_runtime::Ranges::names(kernel.signature.axis);
    let mut read = Vec::new();
    for (path, name) in paths.iter().zip(names) {
        read.push(keops_runtime::IndexArray::read_npy(path).map_err(|e| {
            fail(format!(
                "--ranges {name} `{}`: {e} (an int64 array)",
                path.display()
            ))
        })?);
    }
    keops_runtime::Ranges::from_arrays(kernel.signature.axis, &read[0], &read[1], &read[2])
        .map_err(|e| fail(format!("--ranges: {e}")))
}

/// Writes the output as `plan` says (indices apart into `indices_output`); the bytes written.
fn write_output(
    plan: OutputPlan,
    out: &HostArray,
    output: PendingOutput,
    indices_output: Option<PendingOutput>,
) -> Result<u64, Reported> {
    Ok(match plan {
        OutputPlan::Whole => output.commit(|f| out.write_npy_to(f))?,
        OutputPlan::IndicesAsInt64 => output.commit(|f| out.to_indices().write_npy_to(f))?,
        OutputPlan::Apart { columns, dtype } => {
            let (indices, values) = split_last_axis(out, columns);
            let indices_output = indices_output.expect("--indices-out was opened");
            let a = output.commit(|f| values.write_npy_to(f))?;
            let b = match dtype {
                IndexDType::Int64 => {
                    indices_output.commit(|f| indices.to_indices().write_npy_to(f))?
                }
                IndexDType::Float => indices_output.commit(|f| indices.write_npy_to(f))?,
            };
            a + b
        }
    })
}

/// `--backend NAME`, or the fastest available when left out.
pub(crate) fn parse_backend(name: Option<&str>) -> Result<Backend, Reported> {
    match name {
        None => Ok(Backend::fastest()),
        Some(name) => Backend::parse(name).ok_or_else(|| {
            fail(format!(
                "unknown backend `{name}`: choose interp, cpu or cuda"
            ))
        }),
    }
}

/// Reports every problem found with a kernel's arguments, then their count: nothing runs.
pub(crate) fn argument_problems(problems: &[String], kernel: &str) -> Reported {
    for problem in problems {
        eprintln!("error: {problem}");
    }
    let n = problems.len();
    eprintln!(
        "error: {n} problem{} with the arguments of `{kernel}`: nothing was computed",
        if n == 1 { "" } else { "s" },
    );
    Reported
}

/// Columns `columns` of the last axis of an output (batched or not), and the array of the
/// other columns, each with the output's leading axes.
fn split_last_axis(out: &HostArray, columns: Range<usize>) -> (HostArray, HostArray) {
    let width = out.shape.last().copied().unwrap_or(1);
    let leading = &out.shape[..out.shape.len().saturating_sub(1)];
    let rows: usize = leading.iter().product();
    let flat = HostArray {
        shape: vec![rows, width],
        data: out.data.clone(),
    };
    let count = columns.len();
    let (mut inside, mut outside) = flat.split_columns(columns);
    inside.shape = leading.iter().copied().chain([count]).collect();
    outside.shape = leading.iter().copied().chain([width - count]).collect();
    (inside, outside)
}

pub(crate) fn pick_kernel<'a>(
    compiled: &'a driver::CompiledFile,
    name: Option<&str>,
    path: &Path,
) -> Result<&'a CheckedKernel, Reported> {
    let names = || -> String {
        let names: Vec<String> = compiled
            .kernels
            .iter()
            .map(|k| format!("`{}`", k.name))
            .collect();
        names.join(", ")
    };
    match name {
        Some(name) => compiled.kernel(name).ok_or_else(|| {
            fail(format!(
                "no kernel `{name}` in `{}`; it defines {}",
                path.display(),
                names()
            ))
        }),
        None => match compiled.kernels.as_slice() {
            [only] => Ok(only),
            many => Err(fail(format!(
                "`{}` defines {} kernels ({}): choose one with --kernel NAME",
                path.display(),
                many.len(),
                names()
            ))),
        },
    }
}

/// Whether two paths name the same file (by their text, or by the file when both exist).
fn same_file(a: &Path, b: &Path) -> bool {
    if a == b {
        return true;
    }
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// An output opened before any work, so that a path that cannot be written fails at once.
/// The array is written to a temporary file beside it and renamed over the destination once
/// complete: a failed run leaves neither an empty nor a half-written file, and whatever the
/// path held before is kept. A destination that is not a regular file (`/dev/null`, a pipe)
/// is written directly.
pub(crate) struct PendingOutput {
    path: PathBuf,
    flag: &'static str,
    file: File,
    /// The temporary file, renamed over `path` by [`PendingOutput::commit`]; removed if the
    /// run fails before.
    temp: Option<PathBuf>,
}

impl PendingOutput {
    pub(crate) fn open(path: &Path, flag: &'static str) -> Result<PendingOutput, Reported> {
        let named = |why: String| {
            fail(format!(
                "`{flag} {}`: cannot write the output: {why}",
                path.display()
            ))
        };
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.is_dir() {
                return Err(named("is a directory; give a file name".into()));
            }
            if !meta.is_file() {
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| named(format!("cannot write: {e}")))?;
                return Ok(PendingOutput {
                    path: path.to_path_buf(),
                    flag,
                    file,
                    temp: None,
                });
            }
            if meta.permissions().readonly() {
                return Err(named("the file is read-only".into()));
            }
        }
        // A link to a regular file (`/dev/stdout` redirected to a file, say) is replaced at
        // its target, never as a link.
        let resolved;
        let path = match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                resolved = path
                    .canonicalize()
                    .map_err(|e| named(format!("cannot follow the link: {e}")))?;
                resolved.as_path()
            }
            _ => path,
        };
        let Some(name) = path.file_name() else {
            return Err(named("not a file name".into()));
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            return Err(named(format!(
                "the directory `{}` does not exist",
                dir.display()
            )));
        }
        let temp = dir.join(format!(
            ".{}.keopsc-{}.tmp",
            name.to_string_lossy(),
            std::process::id()
        ));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(|e| named(format!("cannot write in `{}`: {e}", dir.display())))?;
        Ok(PendingOutput {
            path: path.to_path_buf(),
            flag,
            file,
            temp: Some(temp),
        })
    }

    /// Writes the array with `write` and puts the file in place; returns the bytes written.
    pub(crate) fn commit(
        mut self,
        write: impl FnOnce(&mut File) -> Result<(), keops_runtime::NpyError>,
    ) -> Result<u64, Reported> {
        let named = |why: String| fail(format!("`{} {}`: {why}", self.flag, self.path.display()));
        write(&mut self.file).map_err(|e| named(e.to_string()))?;
        self.file.flush().map_err(|e| named(e.to_string()))?;
        let bytes = self.file.metadata().map_or(0, |m| m.len());
        if let Some(temp) = self.temp.take() {
            if let Err(e) = std::fs::rename(&temp, &self.path) {
                let _ = std::fs::remove_file(&temp);
                return Err(named(format!("cannot put the file in place: {e}")));
            }
        }
        Ok(bytes)
    }
}

impl Drop for PendingOutput {
    fn drop(&mut self) {
        if let Some(temp) = &self.temp {
            let _ = std::fs::remove_file(temp);
        }
    }
}

/// `--timings`: where the time went, and the speed in pairs per second.
struct TimingReport<'a> {
    kernel: &'a str,
    backend: Backend,
    eval: EvalTimings,
    /// The batch axes (empty without batches): the timings add up every batch.
    batch: BatchShape,
    read: Duration,
    read_bytes: usize,
    front_end: Duration,
    write: Duration,
    written_bytes: u64,
    total: Duration,
}

impl fmt::Display for TimingReport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let mb = |b: f64| b / 1e6;
        let size = self.eval.size;
        write!(
            f,
            "kernel `{}` on {} ({}), N = {}, M = {}",
            self.kernel, self.backend, size.dtype, size.n, size.m
        )?;
        if self.batch.is_empty() {
            writeln!(f)?;
        } else {
            writeln!(
                f,
                ", batch axes {} ({} batches, {})",
                self.batch,
                self.batch.count(),
                if self.backend == Backend::Cpu {
                    "in one parallel region"
                } else {
                    "one after another"
                }
            )?;
        }
        writeln!(
            f,
            "  front end {:>10.1} ms   (parse, check)",
            ms(self.front_end)
        )?;
        writeln!(
            f,
            "  read      {:>10.1} ms   ({:.1} MB)",
            ms(self.read),
            mb(self.read_bytes as f64)
        )?;
        writeln!(
            f,
            "  compile   {:>10.1} ms   (simplify, generate machine code)",
            ms(self.eval.compile)
        )?;
        writeln!(
            f,
            "  run       {:>10.1} ms   {:.3e} pairs/s",
            ms(self.eval.run),
            self.eval.pairs_per_second() * self.batch.count() as f64
        )?;
        writeln!(
            f,
            "  write     {:>10.1} ms   ({:.1} MB)",
            ms(self.write),
            mb(self.written_bytes as f64)
        )?;
        writeln!(f, "  total     {:>10.1} ms", ms(self.total))
    }
}
