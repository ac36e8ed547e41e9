//! The inputs of `keopsc eval` and `keopsc vjp`: `--arg NAME=FILE.npy` and `--same J=I`
//! matched to the kernel's arguments, each file read once, and the arrays checked together
//! with their batch axes ([`keopsc::batch`]). Every problem is listed, none stops the others.

use keops_runtime::module::bind_all_named;
use keops_runtime::{ArgSpec, ArgumentError, ArrayRef, Category, HostArray, NpyError, ProblemSize};
use keopsc::batch::{check_batched_arguments, BatchLayout};
use keopsc::check::CheckedKernel;
use std::fmt;
use std::path::{Path, PathBuf};

/// `--same J=I`: the j-variable `j` reads the data of the i-variable `i` (a self-kernel: M = N).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SameData {
    /// Positions of the two variables in the kernel's arguments.
    pub j: usize,
    pub i: usize,
    /// The flag as written, for messages.
    pub text: String,
}

impl fmt::Display for SameData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`--same {}`", self.text)
    }
}

/// Parses `--arg NAME=FILE.npy` flags; a flag without `=` is a problem.
pub fn parse_files(args: &[String], problems: &mut Vec<String>) -> Vec<(String, PathBuf)> {
    let mut files = Vec::new();
    for arg in args {
        match arg.split_once('=') {
            Some((name, file)) => files.push((name.to_string(), PathBuf::from(file))),
            None => problems.push(format!("`--arg {arg}`: expected NAME=FILE.npy")),
        }
    }
    files
}

/// Parses and checks the `--same J=I` flags against the kernel and the `--arg` names: `J` a
/// j-variable, `I` an i-variable of the same dimension, `J` neither passed with `--arg` nor
/// named by two `--same`. The flags that pass are returned; the others are problems.
pub fn parse_same(
    kernel: &CheckedKernel,
    same: &[String],
    files: &[(String, PathBuf)],
    problems: &mut Vec<String>,
) -> Vec<SameData> {
    let args = &kernel.signature.args;
    let names: Vec<String> = args.iter().map(|a| format!("`{}`", a.name)).collect();
    let spec_text = |a: &ArgSpec| format!("{}({})", a.category, a.dim);
    let mut accepted: Vec<SameData> = Vec::new();
    for text in same {
        let flag = format!("`--same {text}`");
        let Some((j_name, i_name)) = text.split_once('=') else {
            problems.push(format!(
                "{flag}: expected J=I, a j-variable then the i-variable whose data it takes"
            ));
            continue;
        };
        let position = |name: &str| args.iter().position(|a| a.name == name);
        let (j, i) = match (position(j_name), position(i_name)) {
            (Some(j), Some(i)) => (j, i),
            (j, i) => {
                for (name, found) in [(j_name, j), (i_name, i)] {
                    if found.is_none() {
                        problems.push(format!(
                            "{flag}: kernel `{}` has no argument `{name}`; its arguments are {}",
                            kernel.name,
                            names.join(", ")
                        ));
                    }
                }
                continue;
            }
        };
        let (j_spec, i_spec) = (&args[j], &args[i]);
        if j_spec.category != Category::J || i_spec.category != Category::I {
            let swapped = j_spec.category == Category::I && i_spec.category == Category::J;
            let wrong = if j_spec.category != Category::J {
                format!("`{j_name}` is {}, not a j-variable", spec_text(j_spec))
            } else {
                format!("`{i_name}` is {}, not an i-variable", spec_text(i_spec))
            };
            problems.push(format!(
                "{flag}: {wrong}: `--same J=I` gives a j-variable (Vj) the data of an \
                 i-variable (Vi){}",
                if swapped {
                    format!("; did you mean `--same {i_name}={j_name}`?")
                } else {
                    String::new()
                }
            ));
            continue;
        }
        if j_spec.dim != i_spec.dim {
            problems.push(format!(
                "{flag}: `{j_name}` is {} but `{i_name}` is {}: the dimensions differ",
                spec_text(j_spec),
                spec_text(i_spec)
            ));
            continue;
        }
        if let Some((_, path)) = files.iter().find(|(name, _)| name == j_name) {
            problems.push(format!(
                "{flag}: `{j_name}` is also given with `--arg {j_name}={}`: its data comes \
                 from one or the other",
                path.display()
            ));
            continue;
        }
        if let Some(earlier) = accepted.iter().find(|s| s.j == j) {
            problems.push(format!(
                "{flag}: `{j_name}` already takes the data of `{}` ({earlier})",
                args[earlier.i].name
            ));
            continue;
        }
        accepted.push(SameData {
            j,
            i,
            text: text.clone(),
        });
    }
    accepted
}

/// A kernel's inputs, read and checked.
pub struct Inputs {
    /// The arrays read, by argument position: `None` for an argument that reads another's
    /// data (`--same`).
    arrays: Vec<Option<HostArray>>,
    /// For each argument, the position of the argument whose array it reads (itself, or the
    /// i-variable of its `--same`).
    pub sources: Vec<usize>,
    pub layout: BatchLayout,
    /// The size of one batch.
    pub size: ProblemSize,
}

impl Inputs {
    /// The arrays in argument order (an argument of `--same` reads its i-variable's).
    pub fn bound(&self) -> Vec<&HostArray> {
        self.sources
            .iter()
            .map(|&s| {
                self.arrays[s]
                    .as_ref()
                    .expect("a source argument holds its array")
            })
            .collect()
    }

    /// Bytes read from the files.
    pub fn read_bytes(&self) -> usize {
        self.arrays
            .iter()
            .flatten()
            .map(|a| {
                a.len()
                    * match a.dtype() {
                        keops_runtime::DType::F32 => 4,
                        keops_runtime::DType::F64 => 8,
                    }
            })
            .sum()
    }
}

/// Reads the files of `--arg` once each, gives each `--same` variable its i-variable's data,
/// and checks every array against the kernel with batch axes: every unknown, duplicate or
/// missing name, unreadable file, wrong shape or dtype and batch axes that do not broadcast
/// is added to `problems`.
pub fn read_inputs(
    kernel: &CheckedKernel,
    files: &[(String, PathBuf)],
    same: &[SameData],
    problems: &mut Vec<String>,
) -> Option<Inputs> {
    let sig = &kernel.signature;
    let named: Vec<(&str, &Path)> = files
        .iter()
        .map(|(n, p)| (n.as_str(), p.as_path()))
        .collect();
    let (bound, errors) = bind_all_named(sig, &named);
    let mut sources: Vec<usize> = (0..sig.args.len()).collect();
    for s in same {
        sources[s.j] = s.i;
    }
    let mut failed = false;
    for error in errors {
        // A variable of `--same` has no `--arg`: it is not missing.
        let covered = matches!(&error, ArgumentError::Missing { name, .. }
            if same.iter().any(|s| sig.args[s.j].name == *name));
        if !covered {
            problems.push(match &error {
                ArgumentError::Missing { name, .. } => {
                    format!("{error}: pass it with --arg {name}=FILE.npy")
                }
                _ => error.to_string(),
            });
            failed = true;
        }
    }
    let arrays: Vec<Option<HostArray>> = bound
        .iter()
        .zip(&sig.args)
        .enumerate()
        .map(|(k, (path, spec))| {
            if sources[k] != k {
                return None;
            }
            let path = (*path)?;
            HostArray::read_npy(path)
                .map_err(|error| {
                    problems.push(
                        ArgumentError::File {
                            name: spec.name.clone(),
                            error: NpyError::Io(format!("`{}`: {error}", path.display())),
                        }
                        .to_string(),
                    );
                    failed = true;
                })
                .ok()
        })
        .collect();
    let views: Vec<Option<ArrayRef>> = sources
        .iter()
        .map(|&s| arrays[s].as_ref().map(HostArray::view))
        .collect();
    match check_batched_arguments(sig, &views) {
        Ok((layout, size)) if !failed => Some(Inputs {
            arrays,
            sources,
            layout,
            size,
        }),
        Ok(_) => None,
        Err(errors) => {
            problems.extend(errors.iter().map(ToString::to_string));
            None
        }
    }
}
