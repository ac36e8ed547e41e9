//! The gradients `keopsc build --grad` stores in a module: for every kernel of the file, the
//! backward plan of each input alone and of all its inputs at once (`vjp::plan_many`), written
//! into the manifest by the names of their kernels, and those kernels themselves, each once.
//! The runtime reads them back (`keops_runtime::gradient`) and runs them without the compiler.

use crate::check::CheckedKernel;
use crate::driver::pipeline::CompiledFile;
use crate::vjp::{plan_many, SavedForward, VjpError, VjpManyPlan};
use keops_runtime::manifest::{ManifestGradient, ManifestPass, ManifestSelected};
use std::collections::{HashMap, HashSet};

/// What a module stores for the gradients of a file's kernels.
pub struct StoredGradients {
    /// Every backward kernel, once, under the name the manifest gives it.
    pub kernels: Vec<CheckedKernel>,
    /// The gradients of each kernel of the file, in the file's order.
    pub gradients: Vec<Vec<ManifestGradient>>,
    /// The kernels that have none: their reduction returns indices only.
    pub not_differentiable: Vec<String>,
}

/// The backward kernels, each stored once: the same kernel (same name, signature and formula)
/// met in several plans is stored once; another kernel under a name already taken gets a
/// suffix.
#[derive(Default)]
struct Store {
    kernels: Vec<CheckedKernel>,
    by_content: HashMap<String, String>,
    names: HashSet<String>,
}

impl Store {
    fn add(&mut self, kernel: &CheckedKernel) -> String {
        let content = format!("{}\n{}", kernel.signature, kernel.formula);
        if let Some(name) = self.by_content.get(&content) {
            return name.clone();
        }
        let mut name = kernel.name.clone();
        let mut k = 2;
        while self.names.contains(&name) {
            name = format!("{}_{k}", kernel.name);
            k += 1;
        }
        let mut stored = kernel.clone();
        stored.name = name.clone();
        stored.signature.name = name.clone();
        self.kernels.push(stored);
        self.names.insert(name.clone());
        self.by_content.insert(content, name.clone());
        name
    }
}

pub fn collect(file: &CompiledFile) -> Result<StoredGradients, VjpError> {
    collect_kernels(&file.kernels)
}

/// [`collect`] for the kernels given.
pub fn collect_kernels(kernels: &[CheckedKernel]) -> Result<StoredGradients, VjpError> {
    let mut store = Store::default();
    let mut gradients = Vec::new();
    let mut not_differentiable = Vec::new();
    for kernel in kernels {
        let names: Vec<&str> = kernel
            .signature
            .args
            .iter()
            .map(|a| a.name.as_str())
            .collect();
        let mut sets: Vec<Vec<&str>> = names.iter().map(|&n| vec![n]).collect();
        if names.len() > 1 {
            sets.push(names.clone());
        }
        let mut described = Vec::new();
        for set in sets {
            match plan_many(kernel, &set) {
                Ok(plan) => described.push(describe(&plan, &mut store)),
                Err(VjpError::NotDifferentiable { .. }) => {
                    not_differentiable.push(kernel.name.clone());
                    described.clear();
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        gradients.push(described);
    }
    Ok(StoredGradients {
        kernels: store.kernels,
        gradients,
        not_differentiable,
    })
}

fn describe(plan: &VjpManyPlan, store: &mut Store) -> ManifestGradient {
    let names = |positions: &[usize]| -> Vec<String> {
        positions
            .iter()
            .map(|&w| plan.forward.args[w].name.clone())
            .collect()
    };
    let (saved, saved_kernel) = match &plan.saved {
        SavedForward::None => ("none", None),
        SavedForward::Output { .. } => ("output", None),
        SavedForward::SoftMax { kernel } => ("softmax", Some(store.add(kernel))),
    };
    ManifestGradient {
        wrt: names(&plan.wrt),
        saved: saved.to_string(),
        saved_kernel,
        dense: plan
            .dense
            .iter()
            .map(|pass| ManifestPass {
                kernel: store.add(&pass.kernel),
                outputs: names(&pass.outputs),
            })
            .collect(),
        selected: plan.selected.as_ref().map(|s| ManifestSelected {
            indices: store.add(&s.indices),
            kernel: store.add(&s.kernel),
            k: s.k,
            n: s.n,
            cotangent: s.cotangent.name().to_string(),
            outputs: names(&s.outputs),
        }),
    }
}
