//! `keopsc vjp`: the gradient of a kernel's output with respect to one input, on `.npy` files.
//! The same order of steps as `eval`: the output path first, then the source, then every
//! argument and the cotangent (all problems listed together), and only then the computation.

use crate::eval::{pick_kernel, PendingOutput};
use crate::{fail, load, Reported};
use keops_runtime::{ArgumentError, HostArray};
use keopsc::driver::{self, Backend};
use keopsc::vjp::{self as backward, VjpRunError};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What `keopsc vjp` was asked to do.
pub struct VjpRequest<'a> {
    pub file: &'a Path,
    pub kernel: Option<&'a str>,
    pub wrt: &'a str,
    pub args: &'a [String],
    pub cotangent: &'a Path,
    pub output: &'a Path,
    pub backend: Option<&'a str>,
    pub timings: bool,
}

pub fn vjp(request: &VjpRequest) -> Result<(), Reported> {
    let started = Instant::now();
    let backend = match request.backend {
        None => Backend::fastest(),
        Some(name) => Backend::parse(name).ok_or_else(|| {
            fail(format!(
                "unknown backend `{name}`: choose interp, cpu or cuda"
            ))
        })?,
    };
    let output = PendingOutput::open(request.output, "-o")?;
    let compiled = load(request.file)?;
    let kernel = pick_kernel(&compiled, request.kernel, request.file)?;
    // What cannot be differentiated is known from the source alone: before reading any data.
    let plan = backward::plan(kernel, request.wrt)
        .map_err(|e| fail(format!("`--wrt {}`: {e}", request.wrt)))?;

    let mut problems: Vec<String> = Vec::new();
    let mut files = Vec::new();
    for arg in request.args {
        match arg.split_once('=') {
            Some((name, file)) => files.push((name.to_string(), PathBuf::from(file))),
            None => problems.push(format!("`--arg {arg}`: expected NAME=FILE.npy")),
        }
    }
    let arrays = driver::read_arguments(kernel, &files)
        .map_err(|errors| problems.extend(errors.iter().map(ArgumentError::to_string)))
        .ok();
    let cotangent_flag = format!("`--cotangent {}`", request.cotangent.display());
    let cotangent = HostArray::read_npy(request.cotangent)
        .map_err(|e| problems.push(format!("{cotangent_flag}: {e}")))
        .ok();
    if let (Some(arrays), Some(cotangent)) = (&arrays, &cotangent) {
        let views: Vec<_> = arrays.iter().map(|a| a.view()).collect();
        if let Ok(size) = keops_runtime::check_arguments(&kernel.signature, &views) {
            if let Err(e) = backward::check_cotangent(&plan, size, cotangent) {
                problems.push(format!("{cotangent_flag}: {e}"));
            }
        }
    }
    let (Some(arrays), Some(cotangent), true) = (arrays, cotangent, problems.is_empty()) else {
        for problem in &problems {
            eprintln!("error: {problem}");
        }
        let n = problems.len();
        eprintln!(
            "error: {n} problem{} with the arguments of `{}`: nothing was computed",
            if n == 1 { "" } else { "s" },
            kernel.name
        );
        return Err(Reported);
    };

    let bound: Vec<&HostArray> = arrays.iter().collect();
    let start = Instant::now();
    let grad = backward::run_plan(&plan, &bound, &cotangent, backend).map_err(|e| match e {
        VjpRunError::Cotangent(_) => fail(format!("{cotangent_flag}: {e}")),
        e => fail(e),
    })?;
    let run = start.elapsed();
    output.commit(|f| grad.write_npy_to(f))?;
    if request.timings {
        eprintln!(
            "vjp of `{}` with respect to `{}` on {backend}: {:.1} ms computing, {:.1} ms in all",
            kernel.name,
            request.wrt,
            run.as_secs_f64() * 1e3,
            started.elapsed().as_secs_f64() * 1e3
        );
    }
    Ok(())
}
