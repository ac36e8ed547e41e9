//! The split of a formula by loop level, and the loop sizes: the *schedule* of a kernel, apart
//! from its algorithm (the formula). A schedule changes results only by the rounding of a
//! reordered sum.

use keops_front::formula::{Formula, Op};
use keops_runtime::{Axis, Signature};
use std::fmt;

/// The outermost loop at which a subformula can be computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Constants and parameters: once per call.
    Call,
    /// Depends on the output row only (i for axis 0): once per row.
    Row,
    /// Depends on the reduced index only: once per inner index and inner tile.
    Inner,
    /// Depends on both: once per pair.
    Pair,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Call => "per call",
            Level::Row => "per row",
            Level::Inner => "per inner index",
            Level::Pair => "per pair",
        })
    }
}

/// Where each node is computed and how the loops are cut.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// SIMD lanes of the inner loop.
    pub lanes: u32,
    /// Inner indices per tile (a multiple of `lanes`).
    pub inner_tile: usize,
    pub levels: Vec<Level>,
    /// Computed at a narrower level and read by wider code (broadcast, or stored per tile).
    pub needed_wide: Vec<bool>,
    /// For inner-level parts read by pair code: their first row in the tile's stack buffer.
    pub scratch_slots: Vec<Option<usize>>,
    /// Rows of the tile's stack buffer (the sum of the stored parts' dimensions).
    pub scratch_dim: usize,
    /// Products of a row variable with an inner variable of many components, computed for a
    /// block of rows against a whole inner tile at once (see [`GramProduct`]).
    pub gram: Vec<GramProduct>,
    /// A `Sum` of a pair-level scalar times a many-component inner variable, accumulated as
    /// a matrix product (see [`WideProduct`]).
    pub wide: Option<WideProduct>,
    /// Rows per block of the Gram products and of the wide product (when there are some).
    pub gram_rows: usize,
    /// Nodes the generated code computes: those the root reads, except what only Gram
    /// products read.
    pub live: Vec<bool>,
}

/// What a Gram product computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GramKind {
    /// `SqDist(x, y)`, as `|x'|^2 + |y'|^2 - 2 <x', y'>` on points moved by a centre (the
    /// tile's first inner point), recomputed as `sum (x - y)^2` for the pairs where that form
    /// could lose accuracy (see `codegen::cpu::gram`).
    SqDist,
    /// `(x | y)`.
    Dot,
    /// A sum over the components of element-wise formulas of variables
    /// ([`GramProduct::components`]): `Sum(e)`, `SqNorm2(e)`, `(a | b)`, `SqDist(a, b)` with
    /// `e = Abs(x - y)`, `x * w`, ...: evaluated component by component for the block's rows,
    /// the same operations as the unrolled code's, in a loop.
    Components,
}

/// The element-wise formulas a [`GramKind::Components`] product sums over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ComponentSum {
    /// The product's operator: `Sum`, `SqNorm2`, `Scalprod` or `SqDist`.
    pub op: Op,
    /// Its operands' nodes (one or two).
    pub operands: Vec<usize>,
    /// Every node of the operands' subformulas, in order.
    pub nodes: Vec<usize>,
}

/// A pair-level `SqDist` or scalar product of a row variable and an inner variable of at least
/// [`GRAM_MIN_DIM`] components: a matrix product of a block of rows with an inner tile,
/// register-tiled so that each loaded component feeds several rows' FMAs, and looped over
/// the components (compile time independent of the dimension). Pair code reads its values
/// from a buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GramProduct {
    pub node: usize,
    pub kind: GramKind,
    /// Index of the row variable in the formula's variables.
    pub row_var: usize,
    /// Index of the inner variable.
    pub inner_var: usize,
    pub dim: usize,
    /// For [`GramKind::Components`], what is summed (the variables above are then unused).
    pub components: Option<ComponentSum>,
    /// A `Dot` whose row operand is a subformula depending on the row only (`Normalize(x)` of
    /// a cosine similarity) rather than a variable: its nodes, in order, the operand last,
    /// computed for each row of a block before the product.
    pub row_operand: Option<Vec<usize>>,
    /// A `Dot` whose inner operand is a subformula depending on the inner index only: that
    /// node, computed per inner index into the tile's stack buffer.
    pub inner_operand: Option<usize>,
    /// The computed operands are evaluated in loops over their components (see
    /// [`loopable`]) rather than unrolled: the row operand per row of a block, the inner one
    /// per inner tile, before the product.
    pub looped: bool,
}

/// `Sum_Reduction(s * v)` with `s` a pair-level scalar and `v` a vector of at least
/// [`WIDE_MIN_DIM`] components, an inner variable `b` or an element-wise formula of variables
/// (`x - y`, the gradient of a radial kernel): `out[i] += sum_j s[i, j] v[i, j]`. The pair code
/// stores `s` for a block of rows against the inner tile; then a register-tiled loop over the
/// block's rows, `v`'s components and the tile adds into the rows' accumulators: no per-lane
/// accumulator per component (whose size would bound the dimension) and no code per
/// component. With `v = b` the loop is a matrix product.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WideProduct {
    /// The formula's root, `s * v`.
    pub node: usize,
    /// The scalar factor's node.
    pub scalar: usize,
    /// The vector factor's node.
    pub vector: usize,
    pub dim: usize,
    pub kind: WideKind,
    /// The softmax family (`SumSoftMaxWeight`, `LogSumExpWeight`, `Max_SumShiftExpWeight`):
    /// the root is `Concat(s, v)`, the stored scalars become `exp(s - m)` against the rows'
    /// running maximum before the product, and the rows' sums are rescaled as it moves.
    pub shifted: bool,
}

/// The vector factor of a [`WideProduct`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WideKind {
    /// An inner variable (its index in the formula's variables).
    Variable(usize),
    /// Element-wise operators over variables (of the vector's dimension or 1) and constants:
    /// the subformula's nodes, in order, evaluated one component at a time.
    Elementwise(Vec<usize>),
}

/// Dimension from which a `Sum` of a scalar times an inner variable is a [`WideProduct`].
pub const WIDE_MIN_DIM: usize = 16;

/// Dimension from which `SqDist` and scalar products of variables are computed as Gram
/// products. Measured on W2-like Gaussian sums (see `keopsc bench --workload W2`).
pub const GRAM_MIN_DIM: usize = 16;
/// Rows of a Gram block: each loaded inner vector feeds this many FMAs.
pub const GRAM_ROWS: usize = 12;
/// Bound on the buffers of a block's values (one per Gram product and wide product, each
/// `GRAM_ROWS x inner_tile` numbers), on the stack with the others above.
const BLOCK_VALUES_BYTES: usize = 256 * 1024;
/// Bound on the centred copy of a tile's inner points for `SqDist` products (stack), exceeded
/// up to twice for tiles of 64 indices.
const GRAM_INNER_BYTES: usize = 128 * 1024;

/// Bytes of inner data a tile aims to keep in cache: within L2 (512 KiB to 1 MiB per core on
/// the machines targeted), and large enough that the per-row work of a tile (row-only parts,
/// merging the lanes) is amortised over at least 1024 pairs. Measured: 32 KiB tiles ran W2 and
/// W4 (D = 32) 1.5 to 1.8x slower.
const TILE_BYTES: usize = 128 * 1024;
/// Bound on the tile's stack buffer (threads have 2 MiB stacks).
const SCRATCH_BYTES: usize = 256 * 1024;

/// Bound on a cross tile function's stack buffer of column sums (see `codegen::cpu`). Full
/// 4096-index tiles ran fastest on W1's backward (4 columns, 64 KiB: 2.25x the forward's
/// time, against 2.3-2.5x with 4 to 16 KiB tiles that stay in L1).
const COLUMN_TILE_BYTES: usize = 128 * 1024;

impl Schedule {
    /// The schedule of a cross tile function that also sums `columns` components over the
    /// rows: inner tiles small enough for its buffer of column sums to stay bounded.
    pub fn with_columns(mut self, columns: usize, elem_bytes: usize) -> Schedule {
        if columns > 0 {
            let bytes = COLUMN_TILE_BYTES;
            let lanes = self.lanes as usize;
            let tile = (bytes / (columns * elem_bytes)).min(self.inner_tile);
            self.inner_tile = (tile / lanes * lanes).max(lanes);
        }
        self
    }

    /// The schedule of the GPU kernels and of `explain`'s levels: no Gram products.
    pub fn new(
        formula: &Formula,
        signature: &Signature,
        lanes: u32,
        elem_bytes: usize,
    ) -> Schedule {
        Schedule::build(formula, signature, lanes, elem_bytes, None)
    }

    /// The schedule of CPU tile functions: large `SqDist` and scalar products of variables
    /// become Gram products, and the sum of a scalar times a large inner variable a wide
    /// product (except in cross tile functions, `columns > 0`, whose formula has more).
    pub fn cpu(
        formula: &Formula,
        signature: &Signature,
        lanes: u32,
        elem_bytes: usize,
        columns: usize,
    ) -> Schedule {
        Schedule::build(formula, signature, lanes, elem_bytes, Some(columns))
    }

    fn build(
        formula: &Formula,
        signature: &Signature,
        lanes: u32,
        elem_bytes: usize,
        cpu_columns: Option<usize>,
    ) -> Schedule {
        let levels = levels_of(formula, signature);
        let gram = if cpu_columns.is_some() {
            gram_products(formula, &levels, lanes, elem_bytes)
        } else {
            Vec::new()
        };
        let wide = match cpu_columns {
            Some(0) => wide_product(formula, signature, &levels),
            _ => None,
        };
        let live = live_nodes(formula, &gram, wide.as_ref());
        let needed_wide = needed_wide(formula, &levels, &live, &gram, wide.as_ref());
        let (scratch_slots, scratch_dim) =
            scratch_layout(formula, &levels, &live, &needed_wide, &gram);
        let inner_tile = inner_tile(
            signature,
            lanes,
            elem_bytes,
            scratch_dim,
            &gram,
            wide.is_some(),
        );
        Schedule {
            lanes,
            inner_tile,
            levels,
            needed_wide,
            scratch_slots,
            scratch_dim,
            gram_rows: GRAM_ROWS,
            gram,
            wide,
            live,
        }
    }
}

/// Each node's loop level: where its inputs are fixed.
fn levels_of(formula: &Formula, signature: &Signature) -> Vec<Level> {
    formula
        .info
        .iter()
        .map(|info| {
            let (row, inner) = match signature.axis {
                Axis::I => (info.deps.i, info.deps.j),
                Axis::J => (info.deps.j, info.deps.i),
            };
            match (row, inner) {
                (false, false) => Level::Call,
                (true, false) => Level::Row,
                (false, true) => Level::Inner,
                (true, true) => Level::Pair,
            }
        })
        .collect()
}

/// The nodes the tile computes: those the root (or a wide product's scalar factor) reads,
/// but not the operands of Gram products, which are computed by the products' own loops.
fn live_nodes(formula: &Formula, gram: &[GramProduct], wide: Option<&WideProduct>) -> Vec<bool> {
    let is_gram = |k: usize| gram.iter().any(|g| g.node == k);
    let nodes = formula.nodes.as_ref();
    let mut live = vec![false; formula.len()];
    match wide {
        // The root is not computed: its scalar factor is.
        Some(w) => live[w.scalar] = true,
        None => live[usize::from(formula.root())] = true,
    }
    for k in (0..nodes.len()).rev() {
        if live[k] && !is_gram(k) {
            for &c in &nodes[k].children {
                live[usize::from(c)] = true;
            }
        }
        // A computed inner operand unrolled is an inner part like any other (a looped one is
        // computed by the Gram product's own loops).
        if live[k] {
            if let Some(n) = gram
                .iter()
                .find(|g| g.node == k && !g.looped)
                .and_then(|g| g.inner_operand)
            {
                live[n] = true;
            }
        }
    }
    live
}

/// The nodes whose values a deeper level reads on the loop's lanes (broadcast or loaded).
fn needed_wide(
    formula: &Formula,
    levels: &[Level],
    live: &[bool],
    gram: &[GramProduct],
    wide: Option<&WideProduct>,
) -> Vec<bool> {
    let is_gram = |k: usize| gram.iter().any(|g| g.node == k);
    let mut needed_wide = vec![false; formula.len()];
    for (k, node) in formula.nodes.as_ref().iter().enumerate() {
        if !live[k] || is_gram(k) {
            continue;
        }
        for &c in &node.children {
            let c = usize::from(c);
            let reads_wide = match levels[c] {
                Level::Call => matches!(levels[k], Level::Inner | Level::Pair),
                Level::Row | Level::Inner => levels[k] == Level::Pair,
                Level::Pair => false,
            };
            needed_wide[c] |= reads_wide;
        }
    }
    let root = usize::from(formula.root());
    needed_wide[root] |= wide.is_none() && levels[root] != Level::Pair;
    needed_wide
}

/// The slots of the inner tile's stack buffer: computed inner-only parts the pair code reads,
/// and the computed inner operands of Gram products; and the numbers per index they take.
fn scratch_layout(
    formula: &Formula,
    levels: &[Level],
    live: &[bool],
    needed_wide: &[bool],
    gram: &[GramProduct],
) -> (Vec<Option<usize>>, usize) {
    let mut scratch_slots = vec![None; formula.len()];
    let mut scratch_dim = 0;
    for (k, node) in formula.nodes.as_ref().iter().enumerate() {
        // Computed inner operands of Gram products are stored for them, not read by the
        // pair code.
        let gram_operand = gram.iter().any(|g| g.inner_operand == Some(k));
        if (live[k] || gram_operand)
            && levels[k] == Level::Inner
            && (needed_wide[k] || gram_operand)
            && !matches!(node.op, Op::Var(_))
        {
            scratch_slots[k] = Some(scratch_dim);
            scratch_dim += formula.info[k].dim;
        }
    }
    (scratch_slots, scratch_dim)
}

/// Inner indices per tile: the tile's inner data within [`TILE_BYTES`] (1024 to 4096
/// indices), then within the bounds of its stack buffers, a multiple of the lanes.
fn inner_tile(
    signature: &Signature,
    lanes: u32,
    elem_bytes: usize,
    scratch_dim: usize,
    gram: &[GramProduct],
    has_wide: bool,
) -> usize {
    let inner_category = match signature.axis {
        Axis::I => keops_runtime::Category::J,
        Axis::J => keops_runtime::Category::I,
    };
    let inner_input_dim: usize = signature
        .args
        .iter()
        .filter(|a| a.category == inner_category)
        .map(|a| a.dim)
        .sum();
    let bytes_per_index = ((inner_input_dim + scratch_dim) * elem_bytes).max(1);
    let mut tile = (TILE_BYTES / bytes_per_index).clamp(1024, 4096);
    if scratch_dim > 0 {
        tile = tile.min(SCRATCH_BYTES / (scratch_dim * elem_bytes));
    }
    let centred_dims: usize = gram
        .iter()
        .filter(|g| g.kind == GramKind::SqDist)
        .map(|g| g.dim)
        .sum();
    if centred_dims > 0 {
        // Within GRAM_INNER_BYTES, or up to twice that for tiles of at least 64 indices
        // (measured at dimension 1024: 32-index tiles ran 10% slower than 64; at
        // dimension 64, 1024-index tiles 12% slower than 512).
        let bytes = centred_dims * elem_bytes;
        let fit = GRAM_INNER_BYTES / bytes;
        tile = tile.min(fit.max((2 * GRAM_INNER_BYTES / bytes).min(64)));
    }
    let block_buffers = gram.len() + usize::from(has_wide);
    if block_buffers > 0 {
        tile = tile.min(BLOCK_VALUES_BYTES / (block_buffers * GRAM_ROWS * elem_bytes));
    }
    let lanes_usize = lanes as usize;
    (tile / lanes_usize * lanes_usize).max(lanes_usize)
}

/// The formula as a [`WideProduct`], if it is one: a `Sum` of `s * v` or `v * s`.
fn wide_product(formula: &Formula, signature: &Signature, levels: &[Level]) -> Option<WideProduct> {
    let red = &signature.reduction;
    let shifted = match red.kind.summed_vector(red.fdim)? {
        keops_runtime::SummedVector::Formula => false,
        keops_runtime::SummedVector::Weight => true,
    };
    let nodes = formula.nodes.as_ref();
    let root = usize::from(formula.root());
    let shape = if shifted { Op::Concat } else { Op::Mul };
    if nodes[root].op != shape || levels[root] != Level::Pair {
        return None;
    }
    let (a, b) = (
        usize::from(nodes[root].children[0]),
        usize::from(nodes[root].children[1]),
    );
    let factors = |scalar: usize, vector: usize| {
        let dim = formula.info[vector].dim;
        if levels[scalar] != Level::Pair || formula.info[scalar].dim != 1 || dim < WIDE_MIN_DIM {
            return None;
        }
        let kind = match nodes[vector].op {
            Op::Var(v) if levels[vector] == Level::Inner => WideKind::Variable(v as usize),
            _ => WideKind::Elementwise(elementwise_subformula(formula, vector, dim)?),
        };
        Some(WideProduct {
            node: root,
            scalar,
            vector,
            dim,
            kind,
            shifted,
        })
    };
    if shifted {
        // Concat(F, V): the order is the reduction's.
        return factors(a, b);
    }
    factors(a, b).or_else(|| factors(b, a))
}

/// Whether the subformula `nodes` (in order, its top last) can be evaluated with loops over
/// its `dim` components: nodes of `dim` components are variables, element-wise operators
/// and `Normalize`; nodes of one component are variables, constants, element-wise operators
/// of such nodes, and `Sum`, `SqNorm2`, `Norm2`, `Scalprod`, `SqDist` of `dim`-component ones.
pub fn loopable(formula: &Formula, nodes: &[usize], dim: usize) -> bool {
    let all = formula.nodes.as_ref();
    nodes.iter().all(|&k| {
        let node = &all[k];
        let d = formula.info[k].dim;
        let child_dims = || {
            node.children
                .iter()
                .map(|&c| formula.info[usize::from(c)].dim)
        };
        match &node.op {
            Op::Var(_) | Op::Const(_) | Op::IntCst(_) => d == dim || d == 1,
            Op::Normalize => d == dim,
            Op::Sum | Op::SqNorm2 | Op::Norm2 | Op::Scalprod | Op::SqDist => {
                d == 1 && child_dims().all(|cd| cd == dim)
            }
            op if op.is_elementwise() => {
                (d == dim && child_dims().all(|cd| cd == dim || cd == 1))
                    || (d == 1 && child_dims().all(|cd| cd == 1))
            }
            _ => false,
        }
    })
}

/// Every node of the subformula at `top`, in order.
pub fn subformula(formula: &Formula, top: usize) -> Vec<usize> {
    let nodes = formula.nodes.as_ref();
    let mut inside = vec![false; top + 1];
    inside[top] = true;
    for k in (0..=top).rev() {
        if inside[k] {
            for &c in &nodes[k].children {
                inside[usize::from(c)] = true;
            }
        }
    }
    (0..=top).filter(|&k| inside[k]).collect()
}

/// The nodes of the subformula at `top`, in order, when it is made of element-wise operators
/// over variables and constants, every node of dimension `dim` or 1.
fn elementwise_subformula(formula: &Formula, top: usize, dim: usize) -> Option<Vec<usize>> {
    let nodes = subformula(formula, top);
    let fits = |&k: &usize| {
        let allowed = match formula.nodes.as_ref()[k].op {
            Op::Var(_) | Op::Const(_) | Op::IntCst(_) => true,
            ref op => op.is_elementwise(),
        };
        allowed && (formula.info[k].dim == dim || formula.info[k].dim == 1)
    };
    nodes.iter().all(fits).then_some(nodes)
}

/// The pair-level `SqDist` and scalar products of a row variable with an inner variable of at
/// least [`GRAM_MIN_DIM`] components, while the centred inner points of one vector of lanes
/// fit twice [`GRAM_INNER_BYTES`].
fn gram_products(
    formula: &Formula,
    levels: &[Level],
    lanes: u32,
    elem_bytes: usize,
) -> Vec<GramProduct> {
    let nodes = formula.nodes.as_ref();
    let var_at = |c: egg::Id, level: Level| {
        let c = usize::from(c);
        match nodes[c].op {
            Op::Var(v) if levels[c] == level => Some(v as usize),
            _ => None,
        }
    };
    let mut products = Vec::new();
    let mut centred = 0;
    for (k, node) in nodes.iter().enumerate() {
        let kind = match node.op {
            Op::SqDist => GramKind::SqDist,
            Op::Scalprod => GramKind::Dot,
            Op::Sum | Op::SqNorm2 => GramKind::Components,
            _ => continue,
        };
        let dim = formula.info[usize::from(node.children[0])].dim;
        if levels[k] != Level::Pair || dim < GRAM_MIN_DIM {
            continue;
        }
        let (a, b) = (node.children[0], *node.children.last().expect("an operand"));
        let vars = match (var_at(a, Level::Row), var_at(b, Level::Inner)) {
            (Some(r), Some(i)) => Some((r, i)),
            _ => match (var_at(b, Level::Row), var_at(a, Level::Inner)) {
                (Some(r), Some(i)) => Some((r, i)),
                _ => None,
            },
        };
        // A scalar product of a row-only and an inner-only subformula (Normalize(x) and
        // Normalize(y)): a Gram product reading them computed.
        let level_of = |c: egg::Id| levels[usize::from(c)];
        if vars.is_none() && kind == GramKind::Dot {
            let (row, inner) = match (level_of(a), level_of(b)) {
                (Level::Row, Level::Inner) => (a, b),
                (Level::Inner, Level::Row) => (b, a),
                _ => (a, a),
            };
            if row != inner {
                let (row, inner) = (usize::from(row), usize::from(inner));
                let row_nodes = subformula(formula, row);
                let inner_var = match nodes[inner].op {
                    Op::Var(v) => Some(v as usize),
                    _ => None,
                };
                let row_var = match nodes[row].op {
                    Op::Var(v) => Some(v as usize),
                    _ => None,
                };
                let looped = loopable(formula, &row_nodes, dim)
                    && loopable(formula, &subformula(formula, inner), dim);
                products.push(GramProduct {
                    node: k,
                    kind,
                    row_var: row_var.unwrap_or(0),
                    inner_var: inner_var.unwrap_or(0),
                    dim,
                    components: None,
                    row_operand: row_var.is_none().then_some(row_nodes),
                    inner_operand: inner_var.is_none().then_some(inner),
                    looped,
                });
                continue;
            }
        }
        let (kind, (row_var, inner_var), components) = match vars {
            Some(vars) if kind != GramKind::Components => (kind, vars, None),
            // Element-wise operands: summed component by component.
            _ => {
                let operands: Vec<usize> = node.children.iter().map(|&c| usize::from(c)).collect();
                let mut inside = Vec::new();
                for &operand in &operands {
                    match elementwise_subformula(formula, operand, dim) {
                        Some(sub) => inside.extend(sub),
                        None => break,
                    }
                }
                if inside.is_empty() || operands.iter().any(|o| !inside.contains(o)) {
                    continue;
                }
                inside.sort_unstable();
                inside.dedup();
                let sum = ComponentSum {
                    op: node.op.clone(),
                    operands,
                    nodes: inside,
                };
                (GramKind::Components, (0, 0), Some(sum))
            }
        };
        if kind == GramKind::SqDist {
            if (centred + dim) * lanes as usize * elem_bytes > 2 * GRAM_INNER_BYTES {
                continue;
            }
            centred += dim;
        }
        products.push(GramProduct {
            node: k,
            kind,
            row_var,
            inner_var,
            dim,
            components,
            row_operand: None,
            inner_operand: None,
            looped: false,
        });
    }
    products
}

/// A formula with its schedule, printed as the loop nest the CPU code runs.
pub struct ScheduledFormula<'f> {
    pub formula: &'f Formula,
    pub schedule: &'f Schedule,
}

impl fmt::Display for ScheduledFormula<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.schedule;
        writeln!(
            f,
            "{} lanes, inner tiles of {} indices, {} numbers stored per inner index",
            s.lanes, s.inner_tile, s.scratch_dim
        )?;
        for level in [Level::Call, Level::Row, Level::Inner, Level::Pair] {
            let parts: Vec<String> = self
                .formula
                .nodes
                .as_ref()
                .iter()
                .enumerate()
                .filter(|(k, node)| {
                    s.levels[*k] == level
                        && s.live[*k]
                        && !s.gram.iter().any(|g| g.node == *k)
                        && !node.children.is_empty()
                        && (s.needed_wide[*k]
                            || *k == usize::from(self.formula.root())
                            || s.wide.as_ref().is_some_and(|w| w.scalar == *k)
                            || s.gram.iter().any(|g| g.inner_operand == Some(*k)))
                })
                .map(|(k, _)| self.formula.to_text(egg::Id::from(k)))
                .collect();
            if !parts.is_empty() {
                writeln!(f, "{level}: {}", parts.join("; "))?;
            }
            if let (Level::Pair, Some(w)) = (level, &s.wide) {
                let how = match &w.kind {
                    WideKind::Variable(b) => format!(
                        "accumulated as a matrix product with {}",
                        self.formula.vars[*b].name
                    ),
                    WideKind::Elementwise(_) => format!(
                        "accumulated component by component, {} computed in the loop",
                        self.formula.to_text(egg::Id::from(w.vector))
                    ),
                };
                writeln!(
                    f,
                    "per block of {} rows x inner tile: {} {how} ({} components)",
                    s.gram_rows,
                    self.formula.to_text(egg::Id::from(w.node)),
                    w.dim
                )?;
            }
            if level == Level::Inner && !s.gram.is_empty() {
                let products: Vec<String> = s
                    .gram
                    .iter()
                    .map(|g| {
                        let text = self.formula.to_text(egg::Id::from(g.node));
                        match g.kind {
                            GramKind::SqDist => format!(
                                "{text} (centred scalar-product form, exact where pairs are close)"
                            ),
                            GramKind::Dot if g.looped => {
                                format!("{text} (operands computed in loops over components)")
                            }
                            GramKind::Dot => text,
                            GramKind::Components => {
                                format!("{text} (component by component)")
                            }
                        }
                    })
                    .collect();
                writeln!(
                    f,
                    "per block of {} rows x inner tile, looped over components: {}",
                    s.gram_rows,
                    products.join("; ")
                )?;
            }
        }
        Ok(())
    }
}
