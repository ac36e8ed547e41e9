//! Gradients of whole reductions: for a kernel `out = Red(F(x_i, y_j, p))` and one of its
//! inputs `v`, the backward kernel(s) that compute `dv = d/dv sum(G * out)` for a cotangent `G`
//! shaped like the output, and how to combine their outputs. Every backward kernel is an
//! ordinary [`CheckedKernel`] built in the formula IR (a `Grad` node over the forward formula,
//! expanded by the same symbolic rules as a user's `Grad`), so it can be evaluated by any
//! backend, printed, and differentiated again.
//!
//! Two shapes of backward pass cover every differentiable reduction:
//!
//! - **dense** (Sum and the LogSumExp family): every pair contributes. One `Sum_Reduction` of
//!   `Grad(F, v, e_ij)` over the other index: over j for an i-variable, over i for a
//!   j-variable; for a parameter, over the forward's inner index, whose rows the caller sums in
//!   f64. The LogSumExp family's `e_ij` holds the softmax weight `exp(F_ij - L_i)`, read from
//!   the saved forward output ([`SavedForward`], KeOps's `Grad_WithSavedForward`).
//! - **selected** (Min, Max, KMin, the value part of Min_ArgMin, Max_ArgMax, KMin_ArgKMin, and
//!   the maximum `m` of Max_SumShiftExp): the gradient flows through the selected entries only.
//!   A forward pass with indices finds them (ties: the first index, as the forward returns);
//!   the backward kernel then evaluates `Grad(F, v, g)` on one gathered row per selected entry
//!   (every variable becomes a row variable of that table, so there is no inner loop: O(N K)
//!   work), and the caller adds each row into the row of `v` it came from (a scatter-add for a
//!   j-variable).

use crate::opt;
use egg::Id;
use keops_front::check::CheckedKernel;
use keops_front::formula::{Formula, Node, Op};
pub use keops_runtime::backward::SelectedCotangent;
use keops_runtime::backward::{Saved, SelectedPass};
use keops_runtime::{ArgSpec, Axis, BackwardShape, Category, Reduction, ReductionKind, Signature};
use std::fmt;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VjpError {
    #[error("kernel `{kernel}` has no input `{name}` to differentiate with respect to; its inputs are {inputs}")]
    UnknownInput {
        kernel: String,
        name: String,
        inputs: String,
    },
    #[error("kernel `{kernel}` ends with {kind}, which returns indices only: indices are piecewise constant and have no gradient (use the value-and-index form, e.g. Min_ArgMin, to differentiate the values)")]
    NotDifferentiable { kernel: String, kind: ReductionKind },
    #[error("kernel `{kernel}`: no input to differentiate with respect to")]
    NoInput { kernel: String },
    #[error("kernel `{kernel}`: `{name}` is asked for twice")]
    DuplicateInput { kernel: String, name: String },
    #[error("internal error while building the backward kernel of `{kernel}`: {message}")]
    Internal { kernel: String, message: String },
}

/// The forward values a dense backward kernel reads, one row per output row.
#[derive(Clone, Debug)]
pub enum SavedForward {
    /// Nothing (Sum).
    None,
    /// The forward output row itself: `L` (LogSumExp), `log sum exp(F) V` (LogSumExpWeight),
    /// `(m, s)` (Max_SumShiftExp), `(m, sw)` (Max_SumShiftExpWeight); `kernel` is the
    /// forward kernel.
    Output { kernel: CheckedKernel },
    /// SumSoftMaxWeight: `(out, L)` with `L = m + log s`, from one pass of `kernel`, a
    /// Max_SumShiftExpWeight of `F` weighted by `(1, V)` whose output row is `(m, s, sw)`:
    /// `out = sw / s`.
    SoftMax { kernel: CheckedKernel },
}

/// The selected-entries part of a backward pass.
#[derive(Clone, Debug)]
pub struct SelectedBackward {
    /// A forward pass that returns the selected entries' values and indices (Min_ArgMin,
    /// Max_ArgMax or KMin_ArgKMin of the value part of `F`): values `K n`, then indices `K n`.
    pub indices: CheckedKernel,
    /// `Grad(F, v, g)` over the table of selected entries: every variable is a row variable
    /// (`Vi`) of that table, or stays a parameter; the last argument is `g` (dimension `n`).
    pub kernel: CheckedKernel,
    pub k: usize,
    /// The dimension `n` of the reduced values.
    pub n: usize,
    pub cotangent: SelectedCotangent,
    /// The inputs (positions in the forward's arguments) whose gradients `kernel` computes,
    /// its output columns concatenated in this order.
    pub outputs: Vec<usize>,
}

impl SelectedBackward {
    /// The per-entry kernel's signature as it runs: one row per selected entry, every variable
    /// a row of that table, no inner index (its `Sum_Reduction` sums over nothing). The
    /// kernel's own signature would say `(N, d) ... over j`, which reads as a pass over j.
    pub fn per_entry_signature(&self, forward: &Signature) -> String {
        let sig = &self.kernel.signature;
        let args: Vec<String> = sig
            .args
            .iter()
            .enumerate()
            .map(|(k, a)| match forward.args.get(k).map(|f| f.category) {
                Some(Category::I) => format!("{} = Vi({}) at the entry's i", a.name, a.dim),
                Some(Category::J) => format!("{} = Vj({}) at the entry's j", a.name, a.dim),
                Some(Category::Param) => a.to_string(),
                None => format!("{} = the entry's cotangent ({})", a.name, a.dim),
            })
            .collect();
        let rows = match forward.axis {
            Axis::I => "N",
            Axis::J => "M",
        };
        let per_row = self.k * self.n;
        let bound = if per_row == 1 {
            rows.to_string()
        } else {
            format!("{per_row} {rows}")
        };
        format!(
            "kernel {}({}) -> (E, {}), one row per selected entry (E <= {bound}), no inner index",
            sig.name,
            args.join(", "),
            sig.output_dim()
        )
    }
}

/// One dense backward pass of a [`VjpManyPlan`]: the gradients of the inputs at `outputs`
/// (positions in the forward's arguments), all on the kernel's axis, concatenated in that
/// order in its output row.
#[derive(Clone, Debug)]
pub struct DensePass {
    pub kernel: CheckedKernel,
    pub outputs: Vec<usize>,
}

/// Everything needed to compute `d/dv sum(G * out)` for one input `v` of a kernel.
#[derive(Clone, Debug)]
pub struct VjpPlan {
    /// The forward kernel's signature.
    pub forward: Signature,
    /// The input differentiated, by position.
    pub wrt: usize,
    pub saved: SavedForward,
    /// The dense part: arguments are the forward's, then `G`, then the saved rows (if any).
    /// Axis: the category of `v` (a parameter: the forward axis, rows to be summed).
    pub dense: Option<CheckedKernel>,
    pub selected: Option<SelectedBackward>,
}

impl VjpPlan {
    pub fn wrt_spec(&self) -> &ArgSpec {
        &self.forward.args[self.wrt]
    }
}

/// Everything needed to compute the gradients of `sum(G * out)` with respect to several
/// inputs of a kernel at once ([`plan_many`]).
#[derive(Clone, Debug)]
pub struct VjpManyPlan {
    /// The forward kernel's signature.
    pub forward: Signature,
    /// The inputs differentiated, by position, in the order asked (the order of the results).
    pub wrt: Vec<usize>,
    pub saved: SavedForward,
    /// At most two passes: the inputs on the i axis, those on the j axis (a parameter goes
    /// with the forward's own axis, its rows summed).
    pub dense: Vec<DensePass>,
    /// When there are two dense passes: both in one walk over the pairs (the CPU backend runs
    /// it in their place).
    pub cross: Option<CrossPass>,
    pub selected: Option<SelectedBackward>,
}

/// The two dense passes of a [`VjpManyPlan`] as one walk over the pairs (a cross pass,
/// `keops_runtime::cross`): `kernel` is the dense kernel of all their inputs over j (axis i,
/// the i pass's gradients first), whose last `columns` components, the j pass's gradients,
/// are summed over i instead. The formula is simplified as a whole, so what the two passes
/// share per pair (the kernel's value, the differences) is computed once.
#[derive(Clone, Debug)]
pub struct CrossPass {
    pub kernel: CheckedKernel,
    pub columns: usize,
    /// Which of the plan's dense passes give the rows and the columns.
    pub rows_pass: usize,
    pub columns_pass: usize,
}

impl SavedForward {
    /// As the runtime's combination reads it.
    pub fn as_saved(&self) -> Saved<&CheckedKernel> {
        match self {
            SavedForward::None => Saved::None,
            SavedForward::Output { kernel } => Saved::Output(kernel),
            SavedForward::SoftMax { kernel } => Saved::SoftMax(kernel),
        }
    }

    /// The width of the saved rows a dense pass reads (one row per output row), if any:
    /// the forward output's own width, or `wdim + 1` for SumSoftMaxWeight's `(out, L)`.
    pub fn dim(&self, forward: &Signature) -> Option<usize> {
        self.as_saved().dim(forward)
    }
}

impl SelectedBackward {
    /// As the runtime's combination reads it.
    pub fn as_pass(&self) -> SelectedPass<'_, CheckedKernel> {
        SelectedPass {
            indices: &self.indices,
            kernel: &self.kernel,
            k: self.k,
            n: self.n,
            cotangent: self.cotangent,
            outputs: &self.outputs,
        }
    }
}

impl fmt::Display for VjpPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.wrt_spec();
        writeln!(
            f,
            "vjp of `{}` with respect to `{}` ({}({})):",
            self.forward.name, v.name, v.category, v.dim
        )?;
        match &self.saved {
            SavedForward::None => {}
            SavedForward::Output { .. } => writeln!(f, "  saved forward: the output row")?,
            SavedForward::SoftMax { kernel } => writeln!(
                f,
                "  saved forward: (out, L) from {}\n    formula: {}",
                kernel.signature,
                kernel.formula.to_text(kernel.formula.root())
            )?,
        }
        if let Some(dense) = &self.dense {
            writeln!(
                f,
                "  dense pass: {}\n    formula: {}",
                dense.signature,
                dense.formula.to_text(dense.formula.root())
            )?;
            if v.category == Category::Param {
                writeln!(f, "    then its rows summed (f64)")?;
            }
        }
        if let Some(selected) = &self.selected {
            writeln!(f, "  selected entries from: {}", selected.indices.signature)?;
            writeln!(
                f,
                "  per selected entry: {}\n    formula: {}",
                selected.per_entry_signature(&self.forward),
                selected
                    .kernel
                    .formula
                    .to_text(selected.kernel.formula.root())
            )?;
            writeln!(
                f,
                "    then each row added to {}",
                match v.category {
                    Category::I => "the row i it came from",
                    Category::J => "the row j it came from (scatter-add)",
                    Category::Param => "the sum (f64)",
                }
            )?;
        }
        Ok(())
    }
}

impl VjpManyPlan {
    /// Every kernel the backward computation runs, in order, with what it is for.
    pub fn kernels(&self) -> Vec<(String, &CheckedKernel)> {
        let mut out = Vec::new();
        match &self.saved {
            SavedForward::None => {}
            SavedForward::Output { kernel } => {
                out.push(("saved forward (the forward itself)".to_string(), kernel))
            }
            SavedForward::SoftMax { kernel } => {
                out.push(("saved forward (out, L)".to_string(), kernel))
            }
        }
        for pass in &self.dense {
            out.push((
                format!("dense pass: d{}", self.names(&pass.outputs).join(", d")),
                &pass.kernel,
            ));
        }
        if let Some(selected) = &self.selected {
            out.push(("the selected entries".to_string(), &selected.indices));
            out.push((
                format!(
                    "per selected entry: d{}",
                    self.names(&selected.outputs).join(", d")
                ),
                &selected.kernel,
            ));
        }
        out
    }

    fn names(&self, positions: &[usize]) -> Vec<&str> {
        positions
            .iter()
            .map(|&w| self.forward.args[w].name.as_str())
            .collect()
    }
}

impl fmt::Display for VjpManyPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "vjp of `{}` with respect to `{}`:",
            self.forward.name,
            self.names(&self.wrt).join("`, `")
        )?;
        if let SavedForward::Output { .. } = &self.saved {
            writeln!(f, "  saved forward: the output rows (or passed in)")?;
        }
        if let SavedForward::SoftMax { kernel } = &self.saved {
            writeln!(f, "  saved forward: (out, L) from {}", kernel.signature)?;
        }
        for pass in &self.dense {
            writeln!(f, "  dense pass: {}", pass.kernel.signature)?;
            let mut column = 0;
            for &w in &pass.outputs {
                let spec = &self.forward.args[w];
                let cols = if spec.dim == 1 {
                    format!("column {column}")
                } else {
                    format!("columns {column}..{}", column + spec.dim)
                };
                let what = match spec.category {
                    Category::Param => "its rows summed (f64)",
                    _ => "row by row",
                };
                writeln!(f, "    {cols}: d{} ({what})", spec.name)?;
                column += spec.dim;
            }
        }
        if let Some(cross) = &self.cross {
            writeln!(
                f,
                "  on the CPU, both dense passes in one walk over the pairs: {}, its last {} columns summed over i",
                cross.kernel.signature, cross.columns
            )?;
        }
        if let Some(selected) = &self.selected {
            writeln!(f, "  selected entries from: {}", selected.indices.signature)?;
            writeln!(
                f,
                "  per selected entry: {}, each row added to the row of each input it came from",
                selected.per_entry_signature(&self.forward)
            )?;
        }
        Ok(())
    }
}

/// Builds the backward pass of `kernel` with respect to its input `wrt` (a name, or the
/// position of an inline `Vi(pos, dim)` variable).
pub fn plan(kernel: &CheckedKernel, wrt: &str) -> Result<VjpPlan, VjpError> {
    let wrt_index = input_position(kernel, wrt)?;
    let parts = build_parts(kernel, &[wrt_index])?;
    let mut dense = parts.dense.into_iter().map(|pass| pass.kernel);
    Ok(VjpPlan {
        forward: kernel.signature.clone(),
        wrt: wrt_index,
        saved: parts.saved,
        dense: dense.next(),
        selected: parts.selected,
    })
}

/// Builds the backward pass of `kernel` with respect to several inputs at once: the
/// gradients that share an axis come out of one pass (their columns concatenated), so a
/// dense backward costs two passes at most (one per axis that has inputs; a parameter goes
/// with the forward's own axis), the saved forward and the selected entries are found once,
/// and every selected-entry gradient comes from one per-entry kernel.
pub fn plan_many(kernel: &CheckedKernel, wrt: &[&str]) -> Result<VjpManyPlan, VjpError> {
    if wrt.is_empty() {
        return Err(VjpError::NoInput {
            kernel: kernel.name.clone(),
        });
    }
    let mut positions = Vec::with_capacity(wrt.len());
    for name in wrt {
        let at = input_position(kernel, name)?;
        if positions.contains(&at) {
            return Err(VjpError::DuplicateInput {
                kernel: kernel.name.clone(),
                name: name.to_string(),
            });
        }
        positions.push(at);
    }
    let parts = build_parts(kernel, &positions)?;
    Ok(VjpManyPlan {
        forward: kernel.signature.clone(),
        wrt: positions,
        saved: parts.saved,
        dense: parts.dense,
        cross: parts.cross,
        selected: parts.selected,
    })
}

fn input_position(kernel: &CheckedKernel, wrt: &str) -> Result<usize, VjpError> {
    let sig = &kernel.signature;
    sig.args.iter().position(|a| a.name == wrt).ok_or_else(|| {
        let names: Vec<String> = sig.args.iter().map(|a| format!("`{}`", a.name)).collect();
        VjpError::UnknownInput {
            kernel: kernel.name.clone(),
            name: wrt.to_string(),
            inputs: if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            },
        }
    })
}

/// The pieces of a backward pass for the inputs at `wrt` (positions, all distinct).
struct Parts {
    saved: SavedForward,
    dense: Vec<DensePass>,
    cross: Option<CrossPass>,
    selected: Option<SelectedBackward>,
}

fn build_parts(kernel: &CheckedKernel, wrt: &[usize]) -> Result<Parts, VjpError> {
    let sig = &kernel.signature;
    let internal = |message: String| VjpError::Internal {
        kernel: kernel.name.clone(),
        message,
    };
    let builder = Builder { kernel };
    let red = sig.reduction;
    // The dense passes: one per axis, in the order of the first input that needs it.
    let dense_passes = |saved_dim: Option<usize>| -> Result<Vec<DensePass>, VjpError> {
        let mut axes: Vec<Axis> = Vec::new();
        for &w in wrt {
            let axis = builder.dense_axis(w);
            if !axes.contains(&axis) {
                axes.push(axis);
            }
        }
        axes.into_iter()
            .map(|axis| {
                let outputs: Vec<usize> = wrt
                    .iter()
                    .copied()
                    .filter(|&w| builder.dense_axis(w) == axis)
                    .collect();
                let kernel = builder.dense(saved_dim, &outputs, axis)?;
                Ok(DensePass { kernel, outputs })
            })
            .collect()
    };
    let (saved, dense, selected) = match red.kind.backward() {
        BackwardShape::None => {
            return Err(VjpError::NotDifferentiable {
                kernel: kernel.name.clone(),
                kind: red.kind,
            })
        }
        BackwardShape::Dense { saved, shifted_max } => {
            let saved = match saved {
                Saved::None => SavedForward::None,
                Saved::Output(()) => SavedForward::Output {
                    kernel: kernel.clone(),
                },
                Saved::SoftMax(()) => SavedForward::SoftMax {
                    kernel: builder.softmax_forward().map_err(internal)?,
                },
            };
            let dense = dense_passes(saved.dim(sig))?;
            let selected = if shifted_max {
                Some(builder.selected(1, SelectedCotangent::ShiftedMax, wrt)?)
            } else {
                None
            };
            (saved, dense, selected)
        }
        BackwardShape::Selected => (
            SavedForward::None,
            Vec::new(),
            Some(builder.selected(red.k, SelectedCotangent::Values, wrt)?),
        ),
    };
    let cross = match dense.as_slice() {
        [a, b] => {
            let (rows_pass, columns_pass) = match builder.dense_axis(a.outputs[0]) {
                Axis::I => (0, 1),
                Axis::J => (1, 0),
            };
            let saved_dim = saved.dim(sig);
            let outputs: Vec<usize> = [a, b][rows_pass]
                .outputs
                .iter()
                .chain(&[a, b][columns_pass].outputs)
                .copied()
                .collect();
            Some(CrossPass {
                kernel: builder.dense(saved_dim, &outputs, Axis::I)?,
                columns: builder.total_dim(&[a, b][columns_pass].outputs),
                rows_pass,
                columns_pass,
            })
        }
        _ => None,
    };
    Ok(Parts {
        saved,
        dense,
        cross,
        selected,
    })
}

/// A name for a new argument that no argument of `args` has.
pub(crate) fn fresh_name(args: &[ArgSpec], base: &str) -> String {
    let taken = |name: &str| args.iter().any(|a| a.name == name);
    if !taken(base) {
        return base.to_string();
    }
    (1..)
        .map(|k| format!("{base}_{k}"))
        .find(|name| !taken(name))
        .expect("an unbounded supply of names")
}

/// A copy of `formula` over other variables (same count and dimensions, any categories):
/// every node re-pushed, so that dependences follow the new categories.
fn recategorize(formula: &Formula, vars: Vec<ArgSpec>) -> Result<(Formula, Vec<Id>), String> {
    let mut out = Formula::new(vars);
    let mut map = Vec::with_capacity(formula.len());
    for (k, node) in formula.nodes.as_ref().iter().enumerate() {
        let children = node.children.iter().map(|&c| map[usize::from(c)]).collect();
        let id = out.push(
            Node::new(node.op.clone(), children),
            formula.info[k].span.clone(),
        )?;
        map.push(id);
    }
    Ok((out, map))
}

/// Formula construction helpers: each node is checked by [`Formula::push`].
struct Build {
    formula: Formula,
}

impl Build {
    fn op(&mut self, op: Op, children: &[Id]) -> Result<Id, String> {
        self.formula.push(Node::new(op, children.to_vec()), None)
    }

    fn var(&mut self, k: usize) -> Result<Id, String> {
        self.op(Op::Var(k as u32), &[])
    }

    fn dim(&self, id: Id) -> usize {
        self.formula.info(id).dim
    }

    /// `Extract(a, start, len)`, or `a` itself when it is the whole of `a`.
    fn extract(&mut self, a: Id, start: usize, len: usize) -> Result<Id, String> {
        if start == 0 && len == self.dim(a) {
            Ok(a)
        } else if len == 1 {
            self.op(Op::Elem(start), &[a])
        } else {
            self.op(Op::Extract(start, len), &[a])
        }
    }

    /// `Concat(Grad(f, v1, e), Grad(f, v2, e), ...)` for the variables at `wrt`: one formula,
    /// so that the optimiser shares what the gradients have in common.
    fn grads(&mut self, f: Id, wrt: &[usize], e: Id) -> Result<Id, String> {
        let mut out: Option<Id> = None;
        for &w in wrt {
            let v = self.var(w)?;
            let grad = self.op(Op::Grad, &[f, v, e])?;
            out = Some(match out {
                None => grad,
                Some(left) => self.op(Op::Concat, &[left, grad])?,
            });
        }
        out.ok_or_else(|| "no input to differentiate".to_string())
    }

    /// The formula with `root` as its last node, derivatives expanded.
    fn finish(self, root: Id) -> Result<Formula, String> {
        let formula = self.formula.extract(root);
        opt::expand_derivatives(&formula).map_err(|d| d.message)
    }
}

struct Builder<'k> {
    kernel: &'k CheckedKernel,
}

impl Builder<'_> {
    fn sig(&self) -> &Signature {
        &self.kernel.signature
    }

    fn internal(&self, message: String) -> VjpError {
        VjpError::Internal {
            kernel: self.kernel.name.clone(),
            message,
        }
    }

    /// The category of the forward's output rows.
    fn row_category(&self) -> Category {
        match self.sig().axis {
            Axis::I => Category::I,
            Axis::J => Category::J,
        }
    }

    fn named(
        &self,
        suffix: &str,
        args: Vec<ArgSpec>,
        reduction: Reduction,
        axis: Axis,
        formula: Formula,
    ) -> CheckedKernel {
        let name = format!("{}_{suffix}", self.kernel.name);
        CheckedKernel {
            name: name.clone(),
            span: self.kernel.span.clone(),
            signature: Signature {
                name,
                args,
                reduction,
                axis,
            },
            formula,
        }
    }

    /// The axis of the dense pass that computes the gradient of input `w`: its own rows, or
    /// for a parameter the forward's rows (summed afterwards).
    fn dense_axis(&self, w: usize) -> Axis {
        match self.sig().args[w].category {
            Category::I => Axis::I,
            Category::J => Axis::J,
            Category::Param => self.sig().axis,
        }
    }

    /// The dense backward kernel of the inputs at `outputs` (all of them on `axis`), their
    /// gradients concatenated in that order: arguments are the forward's, `G` and (when
    /// `saved_dim` is given) the saved forward rows.
    fn dense(
        &self,
        saved_dim: Option<usize>,
        outputs: &[usize],
        axis: Axis,
    ) -> Result<CheckedKernel, VjpError> {
        let sig = self.sig();
        let red = sig.reduction;
        let rows = self.row_category();
        let mut args = sig.args.clone();
        let g_index = args.len();
        args.push(ArgSpec {
            name: fresh_name(&args, "G"),
            category: rows,
            dim: red.output_dim(),
        });
        let saved_index = args.len();
        if let Some(dim) = saved_dim {
            args.push(ArgSpec {
                name: fresh_name(&args, "saved"),
                category: rows,
                dim,
            });
        }
        let build = || -> Result<Formula, String> {
            let (formula, map) = recategorize(&self.kernel.formula, args.clone())?;
            let mut b = Build { formula };
            let root = map[usize::from(self.kernel.formula.root())];
            let g = b.var(g_index)?;
            let e = self.dense_gradin(&mut b, root, g, saved_index)?;
            let grads = b.grads(root, outputs, e)?;
            b.finish(grads)
        };
        let formula = build().map_err(|m| self.internal(m))?;
        Ok(self.named(
            &format!("vjp_{}", self.names(outputs)),
            args,
            Reduction::new(ReductionKind::Sum, self.total_dim(outputs)),
            axis,
            formula,
        ))
    }

    /// The names of the inputs at `outputs`, joined by `_`.
    fn names(&self, outputs: &[usize]) -> String {
        let names: Vec<&str> = outputs
            .iter()
            .map(|&w| self.sig().args[w].name.as_str())
            .collect();
        names.join("_")
    }

    fn total_dim(&self, outputs: &[usize]) -> usize {
        outputs.iter().map(|&w| self.sig().args[w].dim).sum()
    }

    /// The gradient input `e_ij` of the dense part, of the dimension of the forward formula's
    /// root (`F`, or `Concat(F, V)` for a weighted reduction). `L`, `m`: saved rows.
    fn dense_gradin(&self, b: &mut Build, root: Id, g: Id, saved: usize) -> Result<Id, String> {
        let red = self.sig().reduction;
        let wdim = red.wdim;
        use ReductionKind as K;
        let weighted = |b: &mut Build| -> Result<(Id, Id), String> {
            Ok((b.extract(root, 0, 1)?, b.extract(root, 1, wdim)?))
        };
        match red.kind {
            // d out_i = sum_j dF_ij
            K::Sum => Ok(g),
            // d L_i = sum_j exp(F_ij - L_i) dF_ij
            K::LogSumExp => {
                let s = b.var(saved)?;
                let d = b.op(Op::Sub, &[root, s])?;
                let w = b.op(Op::Exp, &[d])?;
                b.op(Op::Mul, &[g, w])
            }
            // out_c = log sum_j exp(F) V_c: d out_c = sum_j exp(F - out_c) (V_c dF + dV_c)
            K::LogSumExpWeight => {
                let (f, v) = weighted(b)?;
                let s = b.var(saved)?;
                let d = b.op(Op::Sub, &[f, s])?;
                let t = b.op(Op::Exp, &[d])?;
                let gt = b.op(Op::Mul, &[g, t])?;
                let gtv = b.op(Op::Mul, &[gt, v])?;
                let ef = b.op(Op::Sum, &[gtv])?;
                b.op(Op::Concat, &[ef, gt])
            }
            // (m, s = sum exp(F - m)): the shifted terms, with m held; the maximum's entry
            // carries the rest (selected part).
            K::MaxSumShiftExp => {
                let s = b.var(saved)?;
                let m = b.extract(s, 0, 1)?;
                let d = b.op(Op::Sub, &[root, m])?;
                let w = b.op(Op::Exp, &[d])?;
                let gs = b.extract(g, 1, 1)?;
                b.op(Op::Mul, &[gs, w])
            }
            // (m, sw = sum exp(F - m) V): w (V dF + dV), m held as above.
            K::MaxSumShiftExpWeight => {
                let (f, v) = weighted(b)?;
                let s = b.var(saved)?;
                let m = b.extract(s, 0, 1)?;
                let d = b.op(Op::Sub, &[f, m])?;
                let w = b.op(Op::Exp, &[d])?;
                let gsw = b.extract(g, 1, wdim)?;
                let gv = b.op(Op::Mul, &[gsw, v])?;
                let sgv = b.op(Op::Sum, &[gv])?;
                let ef = b.op(Op::Mul, &[w, sgv])?;
                let ev = b.op(Op::Mul, &[w, gsw])?;
                b.op(Op::Concat, &[ef, ev])
            }
            // out = sum_j w_ij V_ij, w = softmax_j F: d<G, out> = sum_j w_ij (<G, dV_ij> +
            // <G, V_ij - out_i> dF_ij).
            K::SumSoftMaxWeight => {
                let (f, v) = weighted(b)?;
                let s = b.var(saved)?;
                let out = b.extract(s, 0, wdim)?;
                let l = b.extract(s, wdim, 1)?;
                let d = b.op(Op::Sub, &[f, l])?;
                let w = b.op(Op::Exp, &[d])?;
                let centered = b.op(Op::Sub, &[v, out])?;
                let gc = b.op(Op::Mul, &[g, centered])?;
                let sgc = b.op(Op::Sum, &[gc])?;
                let ef = b.op(Op::Mul, &[w, sgc])?;
                let ev = b.op(Op::Mul, &[w, g])?;
                b.op(Op::Concat, &[ef, ev])
            }
            kind => Err(format!("{kind} has no dense backward pass")),
        }
    }

    /// SumSoftMaxWeight's saved forward: `Max_SumShiftExpWeight(F, Concat(1, V))`, whose output
    /// row `(m, s, sw)` gives `out = sw / s` and `L = m + log s` in one pass.
    fn softmax_forward(&self) -> Result<CheckedKernel, String> {
        let sig = self.sig();
        let red = sig.reduction;
        let (formula, map) = recategorize(&self.kernel.formula, sig.args.clone())?;
        let mut b = Build { formula };
        let root = map[usize::from(self.kernel.formula.root())];
        let f = b.extract(root, 0, 1)?;
        let v = b.extract(root, 1, red.wdim)?;
        let one = b.op(Op::IntCst(1), &[])?;
        let weight = b.op(Op::Concat, &[one, v])?;
        let new_root = b.op(Op::Concat, &[f, weight])?;
        let formula = b.finish(new_root)?;
        Ok(self.named(
            "softmax_saved",
            sig.args.clone(),
            Reduction::with_weight(ReductionKind::MaxSumShiftExpWeight, 1, red.wdim + 1),
            sig.axis,
            formula,
        ))
    }

    /// The selected-entries part: the forward pass that finds them, and the per-entry kernel.
    fn selected(
        &self,
        k: usize,
        cotangent: SelectedCotangent,
        outputs: &[usize],
    ) -> Result<SelectedBackward, VjpError> {
        let sig = self.sig();
        let red = sig.reduction;
        // `fdim` is the dimension of the reduced values (a weight `V` comes after them).
        let n = red.fdim;
        let index_kind = red
            .kind
            .with_indices()
            .ok_or_else(|| self.internal(format!("{} selects no entries", red.kind)))?;
        let build_indices = || -> Result<Formula, String> {
            let (formula, map) = recategorize(&self.kernel.formula, sig.args.clone())?;
            let mut b = Build { formula };
            let root = map[usize::from(self.kernel.formula.root())];
            let f = b.extract(root, 0, n)?;
            b.finish(f)
        };
        let indices = self.named(
            "selected",
            sig.args.clone(),
            Reduction::with_k(index_kind, k, n),
            sig.axis,
            build_indices().map_err(|m| self.internal(m))?,
        );
        // The table of selected entries: one row each, every i- and j-variable gathered.
        let mut args: Vec<ArgSpec> = sig
            .args
            .iter()
            .map(|a| ArgSpec {
                category: match a.category {
                    Category::Param => Category::Param,
                    _ => Category::I,
                },
                ..a.clone()
            })
            .collect();
        let g_index = args.len();
        args.push(ArgSpec {
            name: fresh_name(&args, "G"),
            category: Category::I,
            dim: n,
        });
        let build = || -> Result<Formula, String> {
            let (formula, map) = recategorize(&self.kernel.formula, args.clone())?;
            let mut b = Build { formula };
            let root = map[usize::from(self.kernel.formula.root())];
            let f = b.extract(root, 0, n)?;
            let g = b.var(g_index)?;
            let grads = b.grads(f, outputs, g)?;
            b.finish(grads)
        };
        let formula = build().map_err(|m| self.internal(m))?;
        let kernel = self.named(
            &format!("vjp_{}_selected", self.names(outputs)),
            args,
            Reduction::new(ReductionKind::Sum, self.total_dim(outputs)),
            Axis::I,
            formula,
        );
        Ok(SelectedBackward {
            indices,
            kernel,
            k,
            n,
            cotangent,
            outputs: outputs.to_vec(),
        })
    }
}
