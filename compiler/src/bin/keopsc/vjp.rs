//! `keopsc vjp`: the gradient of a kernel's output with respect to one input or several
//! (`--wrt` repeated, one `-o` each), on `.npy` files. The same order of steps as `eval`: the
//! output paths first, then the source, then every argument and the cotangent (all problems
//! listed together), and only then the computation. `--saved` passes the forward output
//! already computed, so that the LogSumExp family's backward is one pass.

use crate::eval::{argument_problems, parse_backend, pick_kernel, PendingOutput};
use crate::{fail, load, Reported};
use keops_runtime::{ArgumentError, HostArray};
use keopsc::driver;
use keopsc::vjp::{self as backward, VjpError, VjpRunError};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What `keopsc vjp` was asked to do.
pub struct VjpRequest<'a> {
    pub file: &'a Path,
    pub kernel: Option<&'a str>,
    /// The inputs to differentiate, each written to the output at the same position.
    pub wrt: &'a [String],
    pub args: &'a [String],
    pub cotangent: &'a Path,
    /// The saved forward rows, already computed (the forward output for the LogSumExp family).
    pub saved: Option<&'a Path>,
    pub outputs: &'a [PathBuf],
    pub backend: Option<&'a str>,
    pub timings: bool,
}

pub fn vjp(request: &VjpRequest) -> Result<(), Reported> {
    let started = Instant::now();
    let backend = parse_backend(request.backend)?;
    if request.wrt.len() != request.outputs.len() {
        return Err(fail(format!(
            "`--wrt` is given {} time{} and `-o` {}: give one `-o` per `--wrt`, in the same order",
            request.wrt.len(),
            if request.wrt.len() == 1 { "" } else { "s" },
            request.outputs.len()
        )));
    }
    for (k, path) in request.outputs.iter().enumerate() {
        if request.outputs[..k].contains(path) {
            return Err(fail(format!(
                "`-o {}` is given twice: each gradient needs its own file",
                path.display()
            )));
        }
    }
    let outputs = request
        .outputs
        .iter()
        .map(|path| PendingOutput::open(path, "-o"))
        .collect::<Result<Vec<_>, _>>()?;
    let compiled = load(request.file)?;
    let kernel = pick_kernel(&compiled, request.kernel, request.file)?;
    // What cannot be differentiated is known from the source alone: before reading any data.
    let wrt: Vec<&str> = request.wrt.iter().map(String::as_str).collect();
    let plan = backward::plan_many(kernel, &wrt).map_err(|e| {
        let flag = match &e {
            VjpError::UnknownInput { name, .. } | VjpError::DuplicateInput { name, .. } => {
                format!("`--wrt {name}`")
            }
            _ if wrt.len() == 1 => format!("`--wrt {}`", wrt[0]),
            _ => "`--wrt`".to_string(),
        };
        fail(format!("{flag}: {e}"))
    })?;

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
            if let Err(e) = backward::check_output_rows(&plan.forward, size, cotangent) {
                problems.push(format!("{cotangent_flag}: {e}"));
            }
        }
    }
    let saved = request.saved.and_then(|path| {
        let flag = format!("`--saved {}`", path.display());
        let rows = HostArray::read_npy(path)
            .map_err(|e| problems.push(format!("{flag}: {e}")))
            .ok()?;
        let views: Vec<_> = arrays.as_ref()?.iter().map(|a| a.view()).collect();
        let size = keops_runtime::check_arguments(&kernel.signature, &views).ok()?;
        match backward::check_saved_rows(&plan.saved, &plan.forward, size, &rows) {
            Ok(true) => Some(rows),
            Ok(false) => {
                eprintln!(
                    "note: {flag} is ignored: the backward pass of {} reads no saved forward",
                    plan.forward.reduction.kind
                );
                None
            }
            Err(e) => {
                problems.push(format!("{flag}: {e}"));
                None
            }
        }
    });
    let (Some(arrays), Some(cotangent), true) = (arrays, cotangent, problems.is_empty()) else {
        return Err(argument_problems(&problems, &kernel.name));
    };

    let bound: Vec<&HostArray> = arrays.iter().collect();
    let start = Instant::now();
    let grads = backward::run_many(&plan, &bound, &cotangent, saved.as_ref(), backend).map_err(
        |e| match e {
            VjpRunError::Cotangent(_) => fail(format!("{cotangent_flag}: {e}")),
            VjpRunError::Saved(_) => fail(format!("`--saved`: {e}")),
            e => fail(e),
        },
    )?;
    let run = start.elapsed();
    for (output, grad) in outputs.into_iter().zip(&grads) {
        output.commit(|f| grad.write_npy_to(f))?;
    }
    if request.timings {
        eprintln!(
            "vjp of `{}` with respect to `{}` on {backend}: {:.1} ms computing, {:.1} ms in all",
            kernel.name,
            wrt.join("`, `"),
            run.as_secs_f64() * 1e3,
            started.elapsed().as_secs_f64() * 1e3
        );
    }
    Ok(())
}
