//! Block-sparse reductions (KeOps's `ranges`): the rows in clusters, and for each cluster the
//! ranges of inner indices to visit. A truncated kernel (a Gaussian beyond a few bandwidths,
//! neighbours after clustering) then costs the pairs it keeps, not N x M.
//!
//! [`Ranges`] is KeOps's triple for the reduction's axis: for axis 0, `ranges_i` (the row
//! clusters `[start, end)`), `slices_i` (cluster `c` visits the inner ranges
//! `redranges_j[slices_i[c - 1] .. slices_i[c]]`, `slices_i[-1] = 0`) and `redranges_j` (inner
//! ranges `[start, end)`); for axis 1 the same with i and j exchanged. Rows in no cluster reduce
//! over nothing (a sum is 0, as in KeOps).
//!
//! The tile functions read inner vectors from an index that is a multiple of their lanes, and
//! a cluster of points starts anywhere: each distinct inner range is therefore copied once into
//! a gathered layout where it starts on a vector boundary (zeros between, never read as pairs:
//! every call stops at its range's end), and the index slots of arg-reductions are mapped back
//! afterwards. Ranges visited in increasing order keep ties on the first index.

use crate::abi::{Axis, Category, Signature};
use crate::arrays::{
    check_arguments, ArgumentError, ArrayData, ArrayRef, DType, DataRef, HostArray,
};
use crate::tiles::{TileInputs, TileKernel};
use rayon::prelude::*;
use std::fmt;

/// The block-sparsity pattern of one reduction, in the reduction's own terms: output rows and
/// reduced (inner) indices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ranges {
    /// Row clusters `[start, end)`, increasing and disjoint.
    pub rows: Vec<(usize, usize)>,
    /// Cluster `c` visits `inner[slices[c - 1]..slices[c]]` (from 0 for the first).
    pub slices: Vec<usize>,
    /// Inner ranges `[start, end)`; within each cluster's slice increasing and disjoint.
    pub inner: Vec<(usize, usize)>,
}

/// A malformed range, named as KeOps names its arrays for the axis (`ranges_i`, `slices_i`,
/// `redranges_j` for axis 0).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{array}[{index}]: {problem}")]
pub struct RangesError {
    pub array: String,
    pub index: usize,
    pub problem: String,
}

impl fmt::Display for Ranges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} row clusters, {} inner ranges, {} pairs kept",
            self.rows.len(),
            self.inner.len(),
            self.kept_pairs()
        )
    }
}

impl Ranges {
    /// The names of the three arrays for a reduction over `axis` (KeOps's).
    pub fn names(axis: Axis) -> [&'static str; 3] {
        match axis {
            Axis::I => ["ranges_i", "slices_i", "redranges_j"],
            Axis::J => ["ranges_j", "slices_j", "redranges_i"],
        }
    }

    /// The ranges from KeOps's three integer arrays for a reduction over `axis` (`(C, 2)`,
    /// `(C,)`, `(R, 2)`, int64 as numpy writes them); the error names the array.
    pub fn from_arrays(
        axis: Axis,
        rows: &crate::arrays::IndexArray,
        slices: &crate::arrays::IndexArray,
        inner: &crate::arrays::IndexArray,
    ) -> Result<Ranges, RangesError> {
        let names = Ranges::names(axis);
        let pairs = |a: &crate::arrays::IndexArray,
                     name: &str|
         -> Result<Vec<(usize, usize)>, RangesError> {
            if a.shape.len() != 2 || a.shape[1] != 2 {
                return Err(RangesError {
                    array: name.to_string(),
                    index: 0,
                    problem: format!("shape {:?}; expected (n, 2)", a.shape),
                });
            }
            a.data
                .chunks(2)
                .enumerate()
                .map(
                    |(k, p)| match (usize::try_from(p[0]), usize::try_from(p[1])) {
                        (Ok(s), Ok(e)) => Ok((s, e)),
                        _ => Err(RangesError {
                            array: name.to_string(),
                            index: k,
                            problem: format!("[{}, {}) holds a negative index", p[0], p[1]),
                        }),
                    },
                )
                .collect()
        };
        let slices_list = slices
            .data
            .iter()
            .enumerate()
            .map(|(k, &v)| {
                usize::try_from(v).map_err(|_| RangesError {
                    array: names[1].to_string(),
                    index: k,
                    problem: format!("{v} is negative"),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if slices.shape.len() != 1 {
            return Err(RangesError {
                array: names[1].to_string(),
                index: 0,
                problem: format!("shape {:?}; expected (n,)", slices.shape),
            });
        }
        Ok(Ranges {
            rows: pairs(rows, names[0])?,
            slices: slices_list,
            inner: pairs(inner, names[2])?,
        })
    }

    /// The pairs the ranges keep.
    pub fn kept_pairs(&self) -> usize {
        self.clusters()
            .map(|(rows, inner)| {
                let len: usize = inner.iter().map(|(a, b)| b - a).sum();
                (rows.1 - rows.0) * len
            })
            .sum()
    }

    /// Each row cluster with its inner ranges (assumes [`Ranges::check`] passed).
    pub(crate) fn clusters(
        &self,
    ) -> impl Iterator<Item = ((usize, usize), &[(usize, usize)])> + '_ {
        self.rows.iter().enumerate().map(|(c, &r)| {
            let from = if c == 0 { 0 } else { self.slices[c - 1] };
            (r, &self.inner[from..self.slices[c]])
        })
    }

    /// Checks the ranges against `rows` output rows and `inner` reduced indices; the error
    /// names the array and the entry.
    pub fn check(&self, axis: Axis, rows: usize, inner: usize) -> Result<(), RangesError> {
        let [ranges, slices, reduced] = Ranges::names(axis);
        let error = |array: &str, index: usize, problem: String| RangesError {
            array: array.to_string(),
            index,
            problem,
        };
        if self.slices.len() != self.rows.len() {
            return Err(error(
                slices,
                self.slices.len(),
                format!(
                    "{} entries for {} row clusters in {ranges}: one end per cluster",
                    self.slices.len(),
                    self.rows.len()
                ),
            ));
        }
        let mut previous_end = 0;
        for (c, &(a, b)) in self.rows.iter().enumerate() {
            if a > b || b > rows {
                return Err(error(
                    ranges,
                    c,
                    format!("[{a}, {b}) is not a range of the {rows} output rows"),
                ));
            }
            if a < previous_end {
                return Err(error(
                    ranges,
                    c,
                    format!("[{a}, {b}) starts before the previous cluster ends ({previous_end}): the clusters must be sorted and disjoint"),
                ));
            }
            previous_end = b;
        }
        let mut previous = 0;
        for (c, &s) in self.slices.iter().enumerate() {
            if s < previous || s > self.inner.len() {
                return Err(error(
                    slices,
                    c,
                    format!(
                        "{s} is not an end between {previous} and the {} entries of {reduced}",
                        self.inner.len()
                    ),
                ));
            }
            previous = s;
        }
        for (index, &(a, b)) in self.inner.iter().enumerate() {
            if a > b || b > inner {
                return Err(error(
                    reduced,
                    index,
                    format!("[{a}, {b}) is not a range of the {inner} reduced indices"),
                ));
            }
        }
        for c in 0..self.rows.len() {
            let from = if c == 0 { 0 } else { self.slices[c - 1] };
            for k in from + 1..self.slices[c] {
                let ((_, end), (start, _)) = (self.inner[k - 1], self.inner[k]);
                if start < end {
                    return Err(error(
                        reduced,
                        k,
                        format!("starts at {start}, before the previous range of cluster {c} ends ({end}): each cluster's ranges must be sorted and disjoint"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// KeOps's 6-tuple `(ranges_i, slices_i, redranges_j, ranges_j, slices_j, redranges_i)`: one
/// block-sparsity pattern written for both reductions, over j and over i. A gradient needs
/// both: the backward pass of an input indexed like the output reduces over the forward's
/// axis, that of an input indexed like the reduced index over the other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangesPair {
    /// For a reduction over j (axis 0): `(ranges_i, slices_i, redranges_j)`.
    pub over_j: Ranges,
    /// For a reduction over i (axis 1): `(ranges_j, slices_j, redranges_i)`.
    pub over_i: Ranges,
}

impl RangesPair {
    /// KeOps's names of the six arrays, in order.
    pub const NAMES: [&'static str; 6] = [
        "ranges_i",
        "slices_i",
        "redranges_j",
        "ranges_j",
        "slices_j",
        "redranges_i",
    ];

    /// The six arrays in KeOps's order; the error names the array.
    pub fn from_arrays(arrays: [&crate::arrays::IndexArray; 6]) -> Result<RangesPair, RangesError> {
        Ok(RangesPair {
            over_j: Ranges::from_arrays(Axis::I, arrays[0], arrays[1], arrays[2])?,
            over_i: Ranges::from_arrays(Axis::J, arrays[3], arrays[4], arrays[5])?,
        })
    }

    /// The ranges of a reduction over `axis`.
    pub fn for_axis(&self, axis: Axis) -> &Ranges {
        match axis {
            Axis::I => &self.over_j,
            Axis::J => &self.over_i,
        }
    }

    /// Checks both halves against `n` i-indices and `m` j-indices, and that they keep as many
    /// pairs (two halves of one pattern keep the same pairs; a count that differs shows they
    /// do not).
    pub fn check(&self, n: usize, m: usize) -> Result<(), RangesError> {
        self.over_j.check(Axis::I, n, m)?;
        self.over_i.check(Axis::J, m, n)?;
        let (a, b) = (self.over_j.kept_pairs(), self.over_i.kept_pairs());
        if a != b {
            return Err(RangesError {
                array: "ranges_j".to_string(),
                index: 0,
                problem: format!(
                    "(ranges_j, slices_j, redranges_i) keep {b} pairs and (ranges_i, slices_i, redranges_j) {a}: the two halves must describe the same pairs"
                ),
            });
        }
        Ok(())
    }
}

/// Where each distinct inner range sits in the gathered layout: `(original start, length,
/// gathered start)`, sorted by original start.
struct Gathered {
    places: Vec<(usize, usize, usize)>,
    len: usize,
}

impl Gathered {
    fn new(ranges: &Ranges, lanes: usize) -> Gathered {
        let mut distinct: Vec<(usize, usize)> = ranges
            .inner
            .iter()
            .copied()
            .filter(|(a, b)| a < b)
            .collect();
        distinct.sort_unstable();
        distinct.dedup();
        // Index 0 stays outside every range, so that an index slot left at its initial 0 (a
        // row that met no pair) maps to itself.
        let mut at = lanes;
        let places = distinct
            .into_iter()
            .map(|(a, b)| {
                let place = (a, b - a, at);
                at += (b - a).div_ceil(lanes) * lanes;
                place
            })
            .collect();
        Gathered { places, len: at }
    }

    fn place(&self, range: (usize, usize)) -> usize {
        let k = self
            .places
            .binary_search_by(|p| (p.0, p.1).cmp(&(range.0, range.1 - range.0)))
            .expect("every non-empty range was gathered");
        self.places[k].2
    }

    /// The original index of gathered index `g` (itself outside every range).
    fn original(&self, g: usize) -> usize {
        let k = self.places.partition_point(|p| p.2 <= g);
        match k.checked_sub(1).map(|k| self.places[k]) {
            Some((a, len, at)) if g < at + len => a + (g - at),
            _ => g,
        }
    }

    /// `array` (`inner x dim`, row-major) in the gathered layout.
    fn gather(&self, data: DataRef, dim: usize) -> ArrayData {
        fn go<T: Copy + Default>(
            v: &[T],
            places: &[(usize, usize, usize)],
            len: usize,
            dim: usize,
        ) -> Vec<T> {
            let mut out = vec![T::default(); len * dim];
            for &(a, n, at) in places {
                out[at * dim..(at + n) * dim].copy_from_slice(&v[a * dim..(a + n) * dim]);
            }
            out
        }
        match data {
            DataRef::F32(v) => ArrayData::F32(go(v, &self.places, self.len, dim)),
            DataRef::F64(v) => ArrayData::F64(go(v, &self.places, self.len, dim)),
        }
    }
}

/// Runs a tiled kernel over the pairs `ranges` keeps (checked against the arrays first): the
/// output is the full evaluation's with every other pair left out, `(rows, output_dim)` in
/// the kernel's dtype. Row clusters (in blocks of at most 256 rows) spread over the threads.
pub fn run_tiles_ranges(
    kernel: &TileKernel,
    arrays: &[ArrayRef],
    ranges: &Ranges,
) -> Result<HostArray, RangesRunError> {
    let sig: &Signature = kernel.signature();
    let size = check_arguments(sig, arrays)?;
    size.check_compiled_dtype(sig, kernel.dtype())?;
    let (rows, inner) = size.rows_and_inner(sig.axis);
    ranges.check(sig.axis, rows, inner)?;
    let lanes = kernel.lanes().max(1);
    let gathered = Gathered::new(ranges, lanes);
    let inner_category = match sig.axis {
        Axis::I => Category::J,
        Axis::J => Category::I,
    };
    let copies: Vec<Option<(Vec<usize>, ArrayData)>> = sig
        .args
        .iter()
        .zip(arrays)
        .map(|(spec, a)| {
            (spec.category == inner_category).then(|| {
                (
                    vec![gathered.len, spec.dim],
                    gathered.gather(a.data, spec.dim),
                )
            })
        })
        .collect();
    let views: Vec<ArrayRef> = arrays
        .iter()
        .zip(&copies)
        .map(|(a, c)| match c {
            Some((shape, ArrayData::F32(v))) => ArrayRef::f32(shape, v),
            Some((shape, ArrayData::F64(v))) => ArrayRef::f64(shape, v),
            None => *a,
        })
        .collect();
    let inputs = TileInputs::new(sig, &views, gathered.len, lanes);
    let red = &sig.reduction;
    let (acc_dim, out_dim) = (red.acc_dim(), red.output_dim());
    // Tasks: blocks of at most 256 rows of a cluster, each with the cluster's ranges.
    let tasks: Vec<Task> = ranges
        .clusters()
        .flat_map(|((a, b), inner)| {
            (a..b)
                .step_by(256)
                .map(move |s| ((s, (s + 256).min(b)), inner))
        })
        .collect();
    let tile = kernel.tile();
    let blocks: Vec<Vec<f64>> = tasks
        .par_iter()
        .map(|&((start, end), inner)| {
            let mut acc = vec![0.0f64; (end - start) * acc_dim];
            for row in acc.chunks_mut(acc_dim.max(1)) {
                red.init(row);
            }
            let args = inputs.args();
            for &(a, b) in inner.iter().filter(|(a, b)| a < b) {
                let at = gathered.place((a, b));
                // SAFETY: the TileFn contract: the arrays were checked, the inner-indexed ones
                // gathered, transposed and padded for the kernel's lanes; `acc` holds the rows
                // `start..end`; `at` is a multiple of the lanes and `at + (b - a)` within the
                // gathered length.
                unsafe {
                    tile(
                        args.as_ptr(),
                        inputs.inner_stride as i64,
                        start as i64,
                        end as i64,
                        at as i64,
                        (at + b - a) as i64,
                        acc.as_mut_ptr(),
                    )
                };
            }
            for row in acc.chunks_mut(acc_dim.max(1)) {
                for (k, x) in row.iter_mut().enumerate() {
                    if red.is_index_slot(k) && x.is_finite() && *x >= 0.0 {
                        *x = gathered.original(*x as usize) as f64;
                    }
                }
            }
            acc
        })
        .collect();
    // Rows in no cluster reduce over nothing.
    let mut empty = vec![0.0f64; acc_dim];
    red.init(&mut empty);
    let mut out = vec![0.0f64; rows * out_dim];
    let mut covered = vec![false; rows];
    for (&((start, end), _), acc) in tasks.iter().zip(&blocks) {
        for (r, row) in (start..end).enumerate() {
            red.finalize(
                &acc[r * acc_dim..(r + 1) * acc_dim],
                &mut out[row * out_dim..(row + 1) * out_dim],
            );
            covered[row] = true;
        }
    }
    for row in (0..rows).filter(|&r| !covered[r]) {
        red.finalize(&empty, &mut out[row * out_dim..(row + 1) * out_dim]);
    }
    let shape = vec![rows, out_dim];
    Ok(match kernel.dtype() {
        DType::F64 => HostArray::from_f64(shape, out),
        DType::F32 => HostArray::from_f32(shape, out.iter().map(|&x| x as f32).collect()),
    })
}

/// A block of at most 256 rows of a cluster, with the cluster's inner ranges.
type Task<'r> = ((usize, usize), &'r [(usize, usize)]);

/// Why a block-sparse run cannot go ahead: the arrays, or the ranges.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RangesRunError {
    #[error(transparent)]
    Argument(#[from] ArgumentError),
    #[error(transparent)]
    Ranges(#[from] RangesError),
}
